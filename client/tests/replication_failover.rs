//! Failover of a replicated broker group over real broker processes, with
//! the test as the controller (AssignRole): the master of a group of three is
//! killed and an in-sync replica promoted in a new epoch. Everything the old
//! master acknowledged is there on the new one: topics and groups with their
//! settings, consumer progress, idempotent producers' windows, a delayed
//! message and a half message. The old master returns as a replica and ends
//! with the new master's log byte for byte.

#[path = "replication/group.rs"]
#[allow(dead_code)]
mod group;

use std::time::{Duration, Instant};

use dduomq_client::Admin;
use dduomq_client::proto as pb;
use dduomq_client::proto::messaging_service_client::MessagingServiceClient;
use dduomq_testkit::{Broker, eventually, stored};
use group::{TOPIC, make_master, make_replica, send_message, start_member, state, whole_log};
use tonic::transport::Channel;

/// Progress is saved (and travels in the log) this often.
const PERSIST: Duration = Duration::from_millis(300);
const EXTRA: &str = "\n[broker]\noffsets_persist_interval = \"300ms\"\n\
                     transaction_check_after = \"1h\"\n";
const GROUP: &str = "billing";
const FILTER: &str = "paid";
const PRODUCER: &str = "producer-1";
/// Messages sent before the failover.
const BEFORE: u64 = 40;
/// Of those, the ones consumed and acknowledged before the failover.
const CONSUMED: u64 = 20;
const AFTER: u64 = 10;

fn tag(seq: u64) -> &'static str {
    if seq.is_multiple_of(3) {
        "draft"
    } else {
        FILTER
    }
}

/// Message `seq` of the idempotent producer.
fn order(seq: u64) -> pb::OutgoingMessage {
    pb::OutgoingMessage {
        topic: TOPIC.into(),
        body: format!("order {seq} {}", "o".repeat((seq % 50) as usize))
            .into_bytes()
            .into(),
        tag: tag(seq).into(),
        queue_id: Some((seq % 2) as u32),
        producer_id: PRODUCER.into(),
        sequence: seq,
        ..Default::default()
    }
}

/// A consumer of one topic in one group over a Receive stream.
struct Reader {
    client: MessagingServiceClient<Channel>,
    stream: tonic::Streaming<pb::ReceiveResponse>,
    group: String,
    topic: String,
    buffered: Vec<pb::Message>,
}

impl Reader {
    async fn open(b: &Broker, group: &str, topic: &str, filter: &str) -> Reader {
        let mut client = MessagingServiceClient::connect(format!("http://{}", b.grpc))
            .await
            .expect("messaging connection");
        let stream = client
            .receive(pb::ReceiveRequest {
                group: group.into(),
                topic: topic.into(),
                client_id: format!("reader-{group}-{topic}"),
                mode: pb::ConsumeMode::Clustering as i32,
                invisible_duration_ms: 120_000,
                max_in_flight_messages: 1000,
                max_in_flight_bytes: 64 << 20,
                filter_type: pb::FilterType::Tag as i32,
                filter_expression: filter.into(),
                batched: true,
                ..Default::default()
            })
            .await
            .expect("receive")
            .into_inner();
        Reader {
            client,
            stream,
            group: group.into(),
            topic: topic.into(),
            buffered: Vec::new(),
        }
    }

    /// The next `n` deliveries (within 30 s).
    async fn next(&mut self, n: usize) -> Vec<pb::Message> {
        while self.buffered.len() < n {
            let got = tokio::time::timeout(Duration::from_secs(30), self.stream.message())
                .await
                .unwrap_or_else(|_| panic!("{} of {n} deliveries", self.buffered.len()))
                .expect("receive stream")
                .expect("stream open");
            self.buffered.extend(got.messages);
        }
        assert_eq!(self.buffered.len(), n, "more deliveries than expected");
        std::mem::take(&mut self.buffered)
    }

    /// No further delivery within `wait`.
    async fn nothing_more(&mut self, wait: Duration) {
        if let Ok(got) = tokio::time::timeout(wait, self.stream.message()).await {
            let got = got.expect("receive stream").expect("stream open");
            panic!("unexpected deliveries: {:?}", got.messages);
        }
    }

    async fn ack(&mut self, messages: &[pb::Message]) {
        let results = self
            .client
            .ack(pb::AckRequest {
                group: self.group.clone(),
                topic: self.topic.clone(),
                receipt_handles: messages.iter().map(|m| m.receipt_handle.clone()).collect(),
            })
            .await
            .expect("ack")
            .into_inner()
            .results;
        assert!(
            results.iter().all(|r| r.error_reason.is_empty()),
            "{results:?}"
        );
    }
}

/// `(message id, body)` of the paid messages among `range` (`receipts` in
/// sequence order), in id order.
fn paid(receipts: &[pb::SendReceipt], range: std::ops::Range<u64>) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = range
        .filter(|&s| tag(s) == FILTER)
        .map(|s| {
            (
                receipts[s as usize].message_id.clone(),
                order(s).body.to_vec(),
            )
        })
        .collect();
    v.sort();
    v
}

/// `(message id, body)` of deliveries, in id order.
fn identities(messages: &[pb::Message]) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = messages
        .iter()
        .map(|m| (m.message_id.clone(), m.body.to_vec()))
        .collect();
    v.sort();
    v
}

async fn end_transaction(b: &Broker, id: &str) -> Result<(), tonic::Status> {
    MessagingServiceClient::connect(format!("http://{}", b.grpc))
        .await
        .expect("messaging connection")
        .end_transaction(pb::EndTransactionRequest {
            topic: "payments".into(),
            transaction_id: id.into(),
            producer_group: "payers".into(),
            resolution: pb::TransactionResolution::Commit as i32,
            from_check: false,
        })
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_replica_serves_everything_the_master_acknowledged() {
    let mut a = start_member(0, EXTRA);
    let b = start_member(1, EXTRA);
    let c = start_member(2, EXTRA);
    make_replica(&b, 1, 0, &a.grpc).await;
    make_replica(&c, 1, 0, &a.grpc).await;
    make_master(&a.grpc, 0, 1, &[0, 1, 2], 1).await;

    let admin = Admin::connect(&a.grpc).expect("admin");
    admin
        .create_topic(TOPIC, 2, pb::MessageType::Normal)
        .await
        .expect("orders");
    admin
        .create_topic("later", 1, pb::MessageType::Delay)
        .await
        .expect("later");
    admin
        .create_topic("payments", 1, pb::MessageType::Transaction)
        .await
        .expect("payments");
    let group = admin
        .create_group(pb::Group {
            name: GROUP.into(),
            mode: pb::ConsumeMode::Clustering as i32,
            max_delivery_attempts: 7,
            subscriptions: vec![pb::GroupSubscription {
                topic: TOPIC.into(),
                filter_type: pb::FilterType::Tag as i32,
                filter_expression: FILTER.into(),
            }],
            ..Default::default()
        })
        .await
        .expect("group")
        .group
        .expect("group in the reply");
    let topic = admin.describe_topic(TOPIC).await.expect("topic").topic;

    let mut receipts = Vec::new();
    for seq in 0..BEFORE {
        receipts.push(send_message(&a, order(seq)).await.expect("acknowledged"));
    }
    // Consume every paid message, acknowledge those sent first (a prefix of
    // each queue), and let a progress save record it.
    let mut reader = Reader::open(&a, GROUP, TOPIC, FILTER).await;
    let delivered = reader.next(paid(&receipts, 0..BEFORE).len()).await;
    assert_eq!(identities(&delivered), paid(&receipts, 0..BEFORE));
    let consumed: Vec<_> = delivered
        .into_iter()
        .filter(|m| {
            paid(&receipts, 0..CONSUMED)
                .iter()
                .any(|(id, _)| *id == m.message_id)
        })
        .collect();
    reader.ack(&consumed).await;
    tokio::time::sleep(PERSIST * 3).await;

    let delayed = send_message(
        &a,
        pb::OutgoingMessage {
            topic: "later".into(),
            body: b"due after the failover".to_vec().into(),
            delay_ms: 4000,
            ..Default::default()
        },
    )
    .await
    .expect("delayed acknowledged");
    let half = send_message(
        &a,
        pb::OutgoingMessage {
            topic: "payments".into(),
            body: b"half".to_vec().into(),
            transactional: true,
            producer_group: "payers".into(),
            ..Default::default()
        },
    )
    .await
    .expect("half acknowledged");

    // A tail only the master stores: the replicas stand still meanwhile.
    let end = state(&a).await.log_end;
    b.pause();
    c.pause();
    let unacknowledged = tokio::spawn({
        let a_grpc = a.grpc.clone();
        async move {
            let mut client = MessagingServiceClient::connect(format!("http://{a_grpc}"))
                .await
                .expect("messaging connection");
            client
                .send(pb::SendRequest {
                    messages: vec![pb::OutgoingMessage {
                        topic: TOPIC.into(),
                        body: b"never acknowledged".to_vec().into(),
                        tag: "draft".into(),
                        ..Default::default()
                    }],
                })
                .await
        }
    });
    eventually(
        Duration::from_secs(10),
        "the master's own tail",
        async || (state(&a).await.log_end > end).then_some(()),
    )
    .await;

    let killed = Instant::now();
    a.kill();
    b.resume();
    c.resume();
    assert!(
        unacknowledged.await.expect("send task").is_err(),
        "a send the replicas never stored is not acknowledged"
    );
    make_replica(&c, 2, 1, &b.grpc).await;
    make_master(&b.grpc, 1, 2, &[1, 2], 2).await;
    let first = send_message(&b, order(BEFORE))
        .await
        .expect("acknowledged by the new master");
    let failover = killed.elapsed();
    println!("failover: kill to first acknowledged send on the new master {failover:?}");
    receipts.push(first);
    for seq in BEFORE + 1..BEFORE + AFTER {
        receipts.push(send_message(&b, order(seq)).await.expect("acknowledged"));
    }

    // Metadata with its settings.
    let admin = Admin::connect(&b.grpc).expect("admin");
    assert_eq!(
        admin.describe_topic(TOPIC).await.expect("topic").topic,
        topic
    );
    assert_eq!(
        admin.describe_group(GROUP).await.expect("group").group,
        Some(group)
    );

    // An idempotent retry gets its original receipt and is stored once.
    let orders = stored(&b, TOPIC).await;
    assert_eq!(
        send_message(&b, order(5))
            .await
            .expect("retry acknowledged"),
        receipts[5]
    );
    assert_eq!(stored(&b, TOPIC).await, orders);

    // Every acknowledged, not consumed message, exactly, with its bytes.
    let mut reader = Reader::open(&b, GROUP, TOPIC, FILTER).await;
    let expected = paid(&receipts, CONSUMED..BEFORE + AFTER);
    let delivered = reader.next(expected.len()).await;
    assert_eq!(identities(&delivered), expected);
    reader.ack(&delivered).await;
    reader.nothing_more(Duration::from_secs(1)).await;

    // The delayed message, due after the failover, once.
    let mut later = Reader::open(&b, "late-readers", "later", "").await;
    let due = later.next(1).await;
    assert_eq!(due[0].body.as_ref(), b"due after the failover");
    assert_eq!(due[0].deliver_at_ms, delayed.deliver_at_ms);
    later.ack(&due).await;
    later.nothing_more(Duration::from_secs(1)).await;
    assert_eq!(stored(&b, "later").await, 1);

    // The half message commits on the new master and is delivered once.
    end_transaction(&b, &half.transaction_id)
        .await
        .expect("commit on the new master");
    let mut payments = Reader::open(&b, "settlers", "payments", "").await;
    let committed = payments.next(1).await;
    assert_eq!(committed[0].body.as_ref(), b"half");
    payments.ack(&committed).await;
    payments.nothing_more(Duration::from_secs(1)).await;
    assert_eq!(stored(&b, "payments").await, 1);

    send_message(&b, order(BEFORE + AFTER))
        .await
        .expect("sends keep being acknowledged");

    // The old master returns as a replica: its own tail is cut and its log
    // becomes the new master's.
    a.start_again();
    make_replica(&a, 2, 1, &b.grpc).await;
    eventually(
        Duration::from_secs(30),
        "the old master's log to equal the new master's",
        async || {
            let master = whole_log(&b).await?;
            (whole_log(&a).await? == master).then_some(())
        },
    )
    .await;
    assert_eq!(state(&a).await.epoch, 2);
    // A replica applies the metadata records it stored at its own pace, and
    // shows what the master's committed end covers: wait for both.
    for topic in [TOPIC, "later", "payments"] {
        let expected = stored(&b, topic).await;
        eventually(
            Duration::from_secs(30),
            &format!("the former master to hold {topic} as the master does"),
            async || {
                let admin = dduomq_client::Admin::connect(&a.grpc).ok()?;
                let described = admin.describe_topic(topic).await.ok()?;
                let held: u64 = described.queues.iter().map(|q| q.max_offset).sum();
                (held == expected).then_some(())
            },
        )
        .await;
    }
    let (id, body) = &paid(&receipts, 0..BEFORE + AFTER)[0];
    assert_eq!(group::body_on(&a, id).await.as_ref(), Some(body));
}
