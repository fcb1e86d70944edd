//! Producer failover over real brokers: two broker processes share one topic
//! through a pushed route table (as the operator pushes it); a draining broker
//! refuses sends with a typed status, a dead broker's batches go to the other,
//! and sends go on with the bootstrap broker down.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use dduomq_client::Reason;
use dduomq_client::proto as pb;
use dduomq_client::proto::admin_service_client::AdminServiceClient;
use dduomq_client::proto::messaging_service_client::MessagingServiceClient;
use dduomq_client::{Admin, ClientError, Message, Producer, ProducerBuilder};
use dduomq_testkit::{Broker, create_topics, stored};

const TOPIC: &str = "payments";

/// The route table of `epoch`: queues 0 and 1 on `low` (broker id 0), 2 and
/// 3 on `high` (broker id 1, or 0 when it is `low` too).
fn route_table(epoch: u64, low: &Broker, high: &Broker) -> pb::UpdateRoutesRequest {
    let high_id = if high.grpc == low.grpc { 0 } else { 1 };
    let route = |q: u32, on: &Broker, id: u32| pb::QueueRoute {
        queue_id: q,
        broker_id: id,
        broker_address: on.grpc.clone(),
        writable: true,
        readable: true,
    };
    pb::UpdateRoutesRequest {
        epoch,
        topics: vec![pb::TopicRoute {
            topic: TOPIC.into(),
            message_type: pb::MessageType::Normal as i32,
            queues: vec![
                route(0, low, 0),
                route(1, low, 0),
                route(2, high, high_id),
                route(3, high, high_id),
            ],
        }],
    }
}

async fn push_routes(to: &Broker, table: pb::UpdateRoutesRequest) {
    AdminServiceClient::connect(format!("http://{}", to.grpc))
        .await
        .unwrap()
        .update_routes(table)
        .await
        .unwrap();
}

/// Two brokers; queues 0 and 1 written on `a`, 2 and 3 on `b`.
async fn two_brokers() -> (Broker, Broker) {
    let (a, b) = (Broker::start(), Broker::start());
    for broker in [&a, &b] {
        create_topics(broker, &[(TOPIC, 4, pb::MessageType::Normal)]).await;
        push_routes(broker, route_table(1, &a, &b)).await;
    }
    (a, b)
}

async fn raw_send(b: &Broker, queue: u32) -> Result<pb::SendResponse, ClientError> {
    let mut client = MessagingServiceClient::connect(format!("http://{}", b.grpc))
        .await
        .unwrap();
    let message = pb::OutgoingMessage {
        topic: TOPIC.into(),
        body: "direct".into(),
        queue_id: Some(queue),
        ..Default::default()
    };
    client
        .send(pb::SendRequest {
            messages: vec![message],
        })
        .await
        .map(|r| r.into_inner())
        .map_err(ClientError::from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_broker_refuses_sends_and_producers_fail_over() {
    let (a, b) = two_brokers().await;
    Admin::connect(&a.grpc)
        .unwrap()
        .set_draining(true)
        .await
        .unwrap();

    let refused = raw_send(&a, 0).await.unwrap_err();
    assert_eq!(refused.reason(), Some(Reason::BrokerDraining), "{refused}");
    assert!(refused.is_retryable(), "{refused}");

    // The route still says queues 0 and 1 are on `a` (as it does until the
    // operator moves them): every send lands on `b` all the same.
    let producer = ProducerBuilder::new(&a.grpc).build().unwrap();
    for i in 0..40 {
        let r = producer
            .send(Message::new(TOPIC, format!("m-{i}")))
            .await
            .unwrap();
        assert!(
            r.queue_id >= 2,
            "sent to queue {} of the draining broker",
            r.queue_id
        );
    }
    assert_eq!(
        stored(&a, TOPIC).await,
        0,
        "a draining broker stores nothing new"
    );
    assert_eq!(stored(&b, TOPIC).await, 40);

    // Atomic batches fail over too (and so do transactional half messages,
    // which take the same path).
    let batch: Vec<Message> = (0..10)
        .map(|i| Message::new(TOPIC, format!("b-{i}")))
        .collect();
    for _ in 0..4 {
        let receipts = producer.send_batch(batch.clone()).await.unwrap();
        assert!(receipts.iter().all(|r| r.queue_id >= 2));
    }
    assert_eq!(stored(&a, TOPIC).await, 0);

    Admin::connect(&a.grpc)
        .unwrap()
        .set_draining(false)
        .await
        .unwrap();
    raw_send(&a, 0).await.expect("writable again after undrain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharding_key_keeps_its_queue_and_fails_by_its_deadline_when_its_broker_is_down() {
    let (a, mut b) = two_brokers().await;
    let timeout = Duration::from_secs(3);
    let producer = ProducerBuilder::new(&a.grpc)
        .send_timeout(timeout)
        .build()
        .unwrap();
    // A key whose queue is on `b`.
    let mut key = None;
    for i in 0..64 {
        let k = format!("order-{i}");
        let probe = Message::new(TOPIC, "probe").with_sharding_key(&k);
        let r = producer.send(probe).await.unwrap();
        if r.queue_id >= 2 {
            key = Some((k, r.queue_id));
            break;
        }
    }
    let (key, queue) = key.expect("a key hashing to b's queues");
    b.kill();
    let started = Instant::now();
    let sends: Vec<_> = (0..20)
        .map(|i| producer.send_async(Message::new(TOPIC, format!("k-{i}")).with_sharding_key(&key)))
        .collect();
    for s in sends {
        let e = s.await.unwrap().expect_err("its queue's broker is down");
        assert!(e.is_retryable(), "{e}");
    }
    let took = started.elapsed();
    assert!(
        took < timeout + Duration::from_secs(2),
        "failed after {took:?}"
    );
    // Unkeyed sends meanwhile go to `a`.
    let r = producer.send(Message::new(TOPIC, "unkeyed")).await.unwrap();
    assert!(r.queue_id <= 1);

    b.start_again();
    let back = Message::new(TOPIC, "back").with_sharding_key(&key);
    let r = producer.send(back).await.expect("the key's broker is back");
    assert_eq!(r.queue_id, queue, "the key kept its queue");
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_fail_over_from_a_dead_broker_and_outlive_the_bootstrap_broker() {
    let (mut a, mut b) = two_brokers().await;
    let producer = ProducerBuilder::new(&a.grpc)
        .send_timeout(Duration::from_secs(6))
        .route_ttl(Duration::from_millis(200))
        .build()
        .unwrap();
    let mut queues = BTreeSet::new();
    for i in 0..20 {
        let r = producer
            .send(Message::new(TOPIC, format!("warm-{i}")))
            .await
            .unwrap();
        queues.insert(r.queue_id);
    }
    assert_eq!(
        queues,
        BTreeSet::from([0, 1, 2, 3]),
        "round robin over both brokers"
    );

    b.kill();
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..100 {
        let t = Instant::now();
        let r = producer
            .send(Message::new(TOPIC, format!("after-kill-{i}")))
            .await
            .unwrap_or_else(|e| panic!("send {i} with broker b down: {e}"));
        slowest = slowest.max(t.elapsed());
        assert!(
            r.queue_id <= 1,
            "queue {} is on the dead broker",
            r.queue_id
        );
    }
    eprintln!(
        "100 sends with b dead in {:?}; slowest {slowest:?}",
        started.elapsed()
    );
    assert_eq!(
        stored(&a, TOPIC).await,
        10 + 100,
        "every send after the kill is on a"
    );

    // Now the bootstrap broker goes: the cached route carries the producer.
    b.start_again();
    a.kill();
    // `b` stays avoided for a few seconds after its failure; sends wait for
    // the failover from `a` meanwhile, within the send timeout.
    for i in 0..50 {
        let r = producer
            .send(Message::new(TOPIC, format!("no-bootstrap-{i}")))
            .await
            .unwrap_or_else(|e| panic!("send {i} with the bootstrap broker down: {e}"));
        assert!(
            r.queue_id >= 2,
            "queue {} is on the dead broker",
            r.queue_id
        );
    }
    assert_eq!(stored(&b, TOPIC).await, 10 + 50);
}

/// A broker that stops answering (SIGSTOP: its sockets still take the
/// requests) is not failed over from for the batches it holds: they may be
/// stored once it goes on, so they are sent to their queue again (the dedupe
/// window answers the repeat), while sends not yet made go to the other
/// broker. Every message is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_a_stalled_broker_holds_keep_their_queue_and_are_stored_once() {
    let (a, b) = two_brokers().await;
    let producer = ProducerBuilder::new(&b.grpc)
        .send_timeout(Duration::from_secs(10))
        .route_ttl(Duration::from_millis(200))
        .build()
        .unwrap();
    // Connections to both brokers are open before `a` stalls.
    for i in 0..8 {
        producer
            .send(Message::new(TOPIC, format!("warm-{i}")))
            .await
            .unwrap();
    }
    a.pause();
    let sends = (0..40).map(|i| {
        let producer = producer.clone();
        async move {
            producer
                .send(Message::new(TOPIC, format!("stalled-{i}")))
                .await
        }
    });
    let resume = async {
        // Past the producer's time per broker (a fifth of the send timeout).
        tokio::time::sleep(Duration::from_secs(4)).await;
        a.resume();
    };
    let (receipts, ()) = tokio::join!(futures::future::join_all(sends), resume);
    let on_a = receipts
        .iter()
        .map(|r| r.as_ref().unwrap_or_else(|e| panic!("send failed: {e}")))
        .filter(|r| r.queue_id <= 1)
        .count() as u64;
    assert_eq!(
        stored(&a, TOPIC).await + stored(&b, TOPIC).await,
        8 + 40,
        "every message stored exactly once"
    );
    assert_eq!(stored(&a, TOPIC).await, 4 + on_a);
    assert!(
        on_a > 0,
        "the batches the stalled broker held were stored there"
    );
}

/// A restarted broker has lost the pushed route table and, until the operator
/// pushes it again, answers routes as a standalone broker (every queue on
/// itself). A producer whose bootstrap broker died must keep its cached
/// (newer) route rather than send the dead broker's queues there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_brokers_standalone_route_does_not_replace_the_pushed_one() {
    let (mut a, mut b) = two_brokers().await;
    let producer = ProducerBuilder::new(&a.grpc)
        .send_timeout(Duration::from_secs(6))
        .route_ttl(Duration::from_millis(200))
        .build()
        .unwrap();
    for i in 0..4 {
        producer
            .send(Message::new(TOPIC, format!("warm-{i}")))
            .await
            .unwrap();
    }
    b.restart();
    a.kill();
    for i in 0..20 {
        let r = producer
            .send(Message::new(TOPIC, format!("after-restart-{i}")))
            .await
            .unwrap_or_else(|e| panic!("send {i} with the bootstrap broker down: {e}"));
        assert!(
            r.queue_id >= 2,
            "queue {} is on the dead broker",
            r.queue_id
        );
    }
    assert_eq!(stored(&b, TOPIC).await, 2 + 20);
}

/// A route republished while a broker is avoided reaches sends at once: the
/// cached route names the avoided broker, so it is fetched again in the
/// background while sends go on. (Before, the route fetched when the broker
/// died was used for the whole route TTL, and the queues it named there got
/// no sends until the avoidance ended and a send failed there again: about 6
/// s of a 12 s failover in the soak.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_republished_while_a_broker_is_avoided_is_used_at_once() {
    let (a, mut b) = two_brokers().await;
    let producer = ProducerBuilder::new(&a.grpc).build().unwrap();
    for i in 0..8 {
        producer
            .send(Message::new(TOPIC, format!("warm-{i}")))
            .await
            .unwrap();
    }
    b.kill();
    for i in 0..8 {
        let r = producer
            .send(Message::new(TOPIC, format!("after-kill-{i}")))
            .await
            .unwrap();
        assert!(
            r.queue_id <= 1,
            "queue {} is on the dead broker",
            r.queue_id
        );
    }
    // The operator moves the dead broker's queues to `a`.
    push_routes(&a, route_table(2, &a, &a)).await;
    // The avoidance lasts 5 s from the kill: well after this bound.
    let took = sends_reach_queues_2_and_3(&producer, "moved").await;
    eprintln!("the moved queues were used {took:?} after the route changed");
}

/// A failed send expires every cached route at once; the sends that then
/// need the route share one fetch instead of each asking the bootstrap broker.
/// (Each asked before: under a busy machine's load, that herd of route queries
/// stalled every send for 6 s while a broker drained for a scale-in.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_waiting_for_an_expired_route_share_one_fetch() {
    const SENDERS: usize = 200;
    const EACH: usize = 10;
    let (a, b) = two_brokers().await;
    let producer = ProducerBuilder::new(&a.grpc).build().unwrap();
    let route_queries =
        || a.metric(r#"dduomq_grpc_request_duration_seconds_count{method="QueryRoute"}"#);
    let before = route_queries().expect("metrics");
    Admin::connect(&b.grpc)
        .unwrap()
        .set_draining(true)
        .await
        .unwrap();
    // Senders that each await their sends, as request handlers do: every
    // next send after a failure at `b` finds the routes expired.
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let producer = producer.clone();
            tokio::spawn(async move {
                for i in 0..EACH {
                    let r = producer
                        .send(Message::new(TOPIC, format!("s{s}-{i}")))
                        .await
                        .unwrap();
                    assert!(r.queue_id <= 1, "stored on the draining broker");
                }
            })
        })
        .collect();
    for s in senders {
        s.await.unwrap();
    }
    let asked = route_queries().expect("metrics") - before;
    assert_eq!(stored(&a, TOPIC).await, (SENDERS * EACH) as u64);
    // One shared fetch per expiry, and a background one every 500 ms while
    // `b` is avoided: a handful (each send asking made it about 200).
    assert!(
        asked <= 50.0,
        "{asked} route queries for {} sends",
        SENDERS * EACH
    );
}

/// A broker avoided after it refused sends is used as soon as a newer route
/// names it a queue's writer, not when its avoidance ends: a replica refuses
/// sends until it is elected master, and the route of its election must
/// reach sends at once. (Avoided on, the new master got no sends for up to
/// 5 s: half of a 12 s failover in the soak.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_route_naming_an_avoided_broker_a_writer_ends_the_avoidance() {
    let (a, b) = two_brokers().await;
    let producer = ProducerBuilder::new(&a.grpc).build().unwrap();
    let b_admin = Admin::connect(&b.grpc).unwrap();
    b_admin.set_draining(true).await.unwrap();
    // Those that reach `b` are refused there and fail over: `b` is avoided.
    for i in 0..8 {
        let r = producer
            .send(Message::new(TOPIC, format!("refused-{i}")))
            .await
            .unwrap();
        assert!(r.queue_id <= 1, "stored on the draining broker");
    }
    b_admin.set_draining(false).await.unwrap();
    // The operator republishes, `b` writing queues 2 and 3 again.
    push_routes(&a, route_table(2, &a, &b)).await;
    // The avoidance lasts 5 s from the last refusal: well after this bound.
    sends_reach_queues_2_and_3(&producer, "after").await;
}

/// Sends until one lands on queue 2 or 3, which must happen within 3 s of
/// the route change just pushed; returns how long it took.
async fn sends_reach_queues_2_and_3(producer: &Producer, prefix: &str) -> Duration {
    let pushed = Instant::now();
    for i in 0.. {
        let r = producer
            .send(Message::new(TOPIC, format!("{prefix}-{i}")))
            .await
            .unwrap();
        if r.queue_id >= 2 {
            break;
        }
        assert!(
            pushed.elapsed() < Duration::from_secs(3),
            "queues 2 and 3 unused {:?} after the route change",
            pushed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pushed.elapsed()
}
