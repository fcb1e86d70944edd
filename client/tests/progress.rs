//! Consumer progress against a real broker: replay by time for online consumers,
//! progress kept across a restart, pull-consumer rebalancing with generations.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use dduomq_client::Reason;
use dduomq_client::proto as pb;
use dduomq_client::{
    Admin, Message, ProducerBuilder, PullConsumerBuilder, PushConsumerBuilder, ResetTo,
};
use dduomq_testkit::{Broker, Options, eventually};
use parking_lot::Mutex;

type Bodies = Arc<Mutex<Vec<String>>>;

async fn collector(
    b: &Broker,
    group: &str,
    topic: &str,
    bodies: Bodies,
) -> dduomq_client::PushConsumer {
    PushConsumerBuilder::new(&b.grpc, group, topic)
        .start(move |m| {
            let bodies = bodies.clone();
            async move {
                bodies
                    .lock()
                    .push(String::from_utf8(m.body.to_vec()).unwrap());
                Ok::<(), String>(())
            }
        })
        .await
        .unwrap()
}

async fn send_all(b: &Broker, topic: &str, bodies: impl IntoIterator<Item = String>) {
    let producer = ProducerBuilder::new(&b.grpc).build().unwrap();
    for body in bodies {
        producer.send(Message::new(topic, body)).await.unwrap();
    }
}

fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v
}

#[tokio::test]
async fn replay_from_a_timestamp_reaches_online_consumers() {
    let b = Broker::start();
    let admin = Admin::connect(&b.grpc).unwrap();
    admin
        .create_topic("events", 3, pb::MessageType::Normal)
        .await
        .unwrap();
    send_all(&b, "events", (0..30).map(|i| format!("old-{i:02}"))).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cut = dduomq_client::now_millis();
    tokio::time::sleep(Duration::from_millis(50)).await;
    send_all(&b, "events", (0..20).map(|i| format!("new-{i:02}"))).await;

    let seen: Bodies = Arc::default();
    let consumer = collector(&b, "replayer", "events", seen.clone()).await;
    eventually(Duration::from_secs(10), "50 messages", async || {
        (seen.lock().len() == 50).then_some(())
    })
    .await;
    let before = seen.lock().len();
    assert_eq!(before, 50);

    // The consumer stays online; the reset reaches it.
    admin
        .reset_offset("replayer", "events", ResetTo::Timestamp(cut))
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the replay", async || {
        (seen.lock().len() == 70).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    consumer.shutdown().await;
    let seen = seen.lock().clone();
    assert_eq!(seen.len(), 70, "exactly the 20 newer messages again");
    assert_eq!(
        sorted(&seen[50..]),
        (0..20).map(|i| format!("new-{i:02}")).collect::<Vec<_>>()
    );

    // Earliest and latest.
    let q = admin
        .reset_offset("replayer", "events", ResetTo::Earliest)
        .await
        .unwrap();
    assert!(q.iter().all(|q| q.committed_offset == 0));
    let q = admin
        .reset_offset("replayer", "events", ResetTo::Latest)
        .await
        .unwrap();
    assert!(
        q.iter()
            .all(|q| q.committed_offset == q.max_offset && q.lag == 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_survives_a_restart_without_redelivering_acked_messages() {
    let mut b = Broker::start();
    let admin = Admin::connect(&b.grpc).unwrap();
    admin
        .create_topic("orders", 2, pb::MessageType::Normal)
        .await
        .unwrap();
    send_all(&b, "orders", (0..40).map(|i| format!("first-{i:02}"))).await;
    let seen: Bodies = Arc::default();
    let consumer = collector(&b, "shipping", "orders", seen.clone()).await;
    eventually(Duration::from_secs(10), "40 messages", async || {
        (seen.lock().len() == 40).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    consumer.shutdown().await;

    b.restart(); // SIGTERM: a clean restart
    send_all(&b, "orders", (0..10).map(|i| format!("second-{i:02}"))).await;
    let after: Bodies = Arc::default();
    let consumer = collector(&b, "shipping", "orders", after.clone()).await;
    eventually(Duration::from_secs(10), "10 messages", async || {
        (after.lock().len() >= 10).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    consumer.shutdown().await;
    assert_eq!(
        sorted(&after.lock()),
        (0..10)
            .map(|i| format!("second-{i:02}"))
            .collect::<Vec<_>>()
    );
    let d = admin.describe_group("shipping").await.unwrap();
    assert_eq!(d.queues.iter().map(|q| q.committed_offset).sum::<u64>(), 50);
}

#[tokio::test]
async fn pull_consumers_split_queues_rebalance_and_stale_members_cannot_commit() {
    let b = Broker::start_with(Options {
        config: Some("[broker]\nsession_timeout = \"1s\"\n".into()),
        ..Options::default()
    });
    let admin = Admin::connect(&b.grpc).unwrap();
    admin
        .create_topic("ledger", 4, pb::MessageType::Normal)
        .await
        .unwrap();
    send_all(&b, "ledger", (0..40).map(|i| format!("{i:02}"))).await;

    let a = PullConsumerBuilder::new(&b.grpc, "auditors", vec!["ledger".into()])
        .client_id("a")
        .build()
        .await
        .unwrap();
    let (_, alone) = a.assignment().await;
    assert_eq!(alone.len(), 4);

    // A second member joins through the raw API, so the test controls its heartbeats.
    let mut raw =
        pb::messaging_service_client::MessagingServiceClient::connect(format!("http://{}", b.grpc))
            .await
            .unwrap();
    let hb = pb::HeartbeatRequest {
        group: "auditors".into(),
        client_id: "b".into(),
        kind: pb::ConsumerKind::Pull as i32,
        topics: vec!["ledger".into()],
    };
    let joined = raw.heartbeat(hb.clone()).await.unwrap().into_inner();
    let b_queues: BTreeSet<u32> = joined.assignments.iter().map(|q| q.queue_id).collect();
    assert_eq!(b_queues.len(), 2);
    a.refresh().await.unwrap();
    let (generation, a_queues) = a.assignment().await;
    assert_eq!(generation, joined.generation);
    let a_set: BTreeSet<u32> = a_queues.iter().map(|(_, q)| *q).collect();
    assert!(
        a_set.is_disjoint(&b_queues) && a_set.len() == 2,
        "{a_set:?} vs {b_queues:?}"
    );

    // a consumes its half and commits.
    let mut got = Vec::new();
    while got.len() < 20 {
        let batch = a.poll(100, Duration::from_secs(2)).await.unwrap();
        assert!(!batch.is_empty(), "ran dry at {}", got.len());
        got.extend(batch.into_iter().map(|m| (m.queue_id, m.offset)));
    }
    assert_eq!(got.len(), 20);
    assert!(got.iter().all(|(q, _)| a_set.contains(q)));
    a.commit().await.unwrap();

    // b goes silent; after the session timeout a owns every queue again.
    eventually(Duration::from_secs(10), "a rebalance", async || {
        a.refresh().await.unwrap();
        let (g, q) = a.assignment().await;
        (q.len() == 4).then_some(g)
    })
    .await;
    // b's commit from its old generation is refused, and changes nothing.
    let stale_queue = *b_queues.iter().next().unwrap();
    let e = raw
        .commit_offset(pb::CommitOffsetRequest {
            group: "auditors".into(),
            topic: "ledger".into(),
            queue_id: stale_queue,
            offset: 10,
            client_id: "b".into(),
            generation: joined.generation,
        })
        .await
        .unwrap_err();
    assert_eq!(
        dduomq_client::ClientError::from(e).reason(),
        Some(Reason::StaleGeneration)
    );
    let committed = raw
        .query_offset(pb::QueryOffsetRequest {
            group: "auditors".into(),
            topic: "ledger".into(),
            queue_id: stale_queue,
        })
        .await
        .unwrap()
        .into_inner()
        .committed_offset;
    assert_eq!(committed, 0);

    // a now reads b's former queues from their committed offsets (0) — all 20 left.
    let mut rest = Vec::new();
    while rest.len() < 20 {
        let batch = a.poll(100, Duration::from_secs(2)).await.unwrap();
        assert!(!batch.is_empty(), "ran dry at {}", rest.len());
        rest.extend(
            batch
                .into_iter()
                .map(|m| String::from_utf8(m.body.to_vec()).unwrap()),
        );
    }
    a.commit().await.unwrap();
    let d = admin.describe_group("auditors").await.unwrap();
    assert_eq!(
        d.queues.iter().map(|q| q.lag).sum::<u64>(),
        0,
        "{:?}",
        d.queues
    );
    assert_eq!(rest.len(), 20);
}
