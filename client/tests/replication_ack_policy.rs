//! A topic's own acknowledgement policy over real broker processes (a group
//! of three, the test as its controller): under a `quorum` default, a
//! `master` topic's sends go on while both replicas stand still and its
//! consumers see them, while a quorum topic's sends fail with QUORUM_TIMEOUT
//! and nothing more is acknowledged; under a `master` default, a `quorum`
//! topic's sends wait for the replicas. The policy travels to the replicas
//! with the topic's metadata, and a new master keeps it. What the broker
//! writes about a quorum topic (a transaction's outcome, the topic's
//! metadata) waits for the replicas too, and an update that leaves the
//! policy out keeps it.

#[path = "replication/group.rs"]
#[allow(dead_code)] // shared with the other replication suites
mod group;

use std::time::{Duration, Instant};

use dduomq_client::proto as pb;
use dduomq_client::{ClientError, Reason, TopicSettings};
use dduomq_testkit::{Broker, eventually};
use group::{make_master, make_replica, start_group_of_three, state, wait_same_log};

/// Sends go to topics of one queue, so a queue's end counts its messages.
const FAST: &str = "fast";
const SAFE: &str = "safe";
const PAY: &str = "pay";

async fn send_to(b: &Broker, topic: &str, i: usize) -> Result<pb::SendReceipt, ClientError> {
    let message = pb::OutgoingMessage {
        topic: topic.into(),
        body: format!("{topic} {i}").into_bytes().into(),
        ..Default::default()
    };
    group::send_message(b, message).await
}

async fn create(b: &Broker, topic: &str, policy: Option<pb::AckPolicy>) -> pb::Topic {
    let mut settings = TopicSettings::new(topic, 1, pb::MessageType::Normal);
    settings.ack_policy = policy;
    let created = b.admin().create_topic_with(settings).await.expect("create");
    created.topic.expect("the topic")
}

/// Creates or grows the transaction topic PAY, its ack policy left out
/// unless `policy`.
async fn upsert_pay(
    grpc: &str,
    queues: u32,
    policy: Option<pb::AckPolicy>,
) -> Result<pb::Topic, ClientError> {
    let mut settings = TopicSettings::new(PAY, queues, pb::MessageType::Transaction);
    settings.ack_policy = policy;
    let admin = dduomq_client::Admin::connect(grpc)?;
    let created = admin.create_topic_with(settings).await?;
    Ok(created.topic.expect("the topic"))
}

/// Commits the transaction `id` on PAY through the master at `grpc`.
async fn commit(grpc: &str, id: &str) -> Result<(), tonic::Status> {
    pb::messaging_service_client::MessagingServiceClient::connect(format!("http://{grpc}"))
        .await
        .expect("messaging connection")
        .end_transaction(pb::EndTransactionRequest {
            topic: PAY.into(),
            transaction_id: id.into(),
            producer_group: "payers".into(),
            resolution: pb::TransactionResolution::Commit as i32,
            from_check: false,
        })
        .await
        .map(|_| ())
}

/// The topic's ack policy and its one queue's end, as `b` shows them to
/// consumers.
async fn described(b: &Broker, topic: &str) -> (pb::AckPolicy, u64) {
    let d = b.admin().describe_topic(topic).await.expect("describe");
    let policy = d.topic.expect("the topic").ack_policy();
    (policy, d.queues[0].max_offset)
}

/// Waits until `b` (a replica) applied the topic's metadata with `policy`.
async fn replica_knows(b: &Broker, topic: &str, policy: pb::AckPolicy) {
    eventually(
        Duration::from_secs(20),
        "the replica to apply the topic's metadata",
        async || {
            let topics = b.admin().list_topics().await.ok()?;
            topics
                .iter()
                .any(|t| t.name == topic && t.ack_policy() == policy)
                .then_some(())
        },
    )
    .await;
}

/// The master's committed end once the quorum holds its whole log.
async fn settled_committed_end(master: &Broker) -> u64 {
    eventually(
        Duration::from_secs(20),
        "the quorum to hold the master's log",
        async || {
            let s = state(master).await;
            (s.committed_end == s.log_end).then_some(s.committed_end)
        },
    )
    .await
}

/// A send refused with QUORUM_TIMEOUT after about `ack_timeout`.
fn assert_quorum_timeout(refused: ClientError, waited: Duration, ack_timeout: Duration) {
    assert_eq!(refused.reason(), Some(Reason::QuorumTimeout), "{refused}");
    assert!(
        waited >= ack_timeout - Duration::from_millis(100)
            && waited < ack_timeout + Duration::from_secs(3),
        "{waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_topic_acknowledges_without_its_replicas_a_quorum_topic_does_not() {
    let [mut a, b, c] = start_group_of_three("ack_timeout = \"1s\"").await;
    // Created under the default, then changed: an update replaces it.
    assert_eq!(
        create(&a, FAST, None).await.ack_policy(),
        pb::AckPolicy::Unspecified
    );
    let updated = create(&a, FAST, Some(pb::AckPolicy::Master)).await;
    assert_eq!(updated.ack_policy(), pb::AckPolicy::Master);
    assert_eq!(
        create(&a, SAFE, None).await.ack_policy(),
        pb::AckPolicy::Unspecified
    );
    for i in 0..3 {
        send_to(&a, FAST, i).await.expect("acknowledged");
        send_to(&a, SAFE, i).await.expect("acknowledged");
    }
    for replica in [&b, &c] {
        replica_knows(replica, FAST, pb::AckPolicy::Master).await;
    }
    let committed = settled_committed_end(&a).await;

    b.pause();
    c.pause();
    for i in 3..8 {
        let started = Instant::now();
        send_to(&a, FAST, i)
            .await
            .expect("acknowledged by the master alone");
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "{:?}",
            started.elapsed()
        );
    }
    for i in 3..5 {
        let started = Instant::now();
        let refused = send_to(&a, SAFE, i).await.unwrap_err();
        assert_quorum_timeout(refused, started.elapsed(), Duration::from_secs(1));
    }
    assert_eq!(
        state(&a).await.committed_end,
        committed,
        "no quorum: nothing"
    );
    // Consumers see what was acknowledged: every master-topic message, and
    // of the quorum topic only what a quorum stored.
    assert_eq!(described(&a, FAST).await, (pb::AckPolicy::Master, 8));
    assert_eq!(described(&a, SAFE).await, (pb::AckPolicy::Unspecified, 3));

    b.resume();
    c.resume();
    send_to(&a, SAFE, 5).await.expect("the quorum is back");
    wait_same_log(&a, &[&b, &c]).await;
    assert_eq!(described(&b, FAST).await, (pb::AckPolicy::Master, 8));

    // A new master (epoch 2, in-sync set {1, 2}) keeps the topics' policies:
    // with its one replica paused, the master topic is acknowledged, the
    // quorum topic is not.
    a.kill();
    make_master(&b.grpc, 1, 2, &[1, 2], 2).await;
    make_replica(&c, 2, 1, &b.grpc).await;
    eventually(
        Duration::from_secs(20),
        "the new master to take writes",
        async || send_to(&b, SAFE, 6).await.ok(),
    )
    .await;
    c.pause();
    let started = Instant::now();
    send_to(&b, FAST, 8)
        .await
        .expect("acknowledged by the new master alone");
    assert!(started.elapsed() < Duration::from_millis(900));
    let started = Instant::now();
    let refused = send_to(&b, SAFE, 7).await.unwrap_err();
    assert_quorum_timeout(refused, started.elapsed(), Duration::from_secs(1));
    assert_eq!(described(&b, FAST).await, (pb::AckPolicy::Master, 9));
    c.resume();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_topic_waits_for_its_replicas_under_a_master_default() {
    let settings = "ack_policy = \"master\"\nack_timeout = \"3s\"";
    let [a, b, c] = start_group_of_three(settings).await;
    create(&a, FAST, None).await;
    assert_eq!(
        create(&a, SAFE, Some(pb::AckPolicy::Quorum))
            .await
            .ack_policy(),
        pb::AckPolicy::Quorum
    );
    for i in 0..3 {
        send_to(&a, FAST, i).await.expect("acknowledged");
        send_to(&a, SAFE, i).await.expect("acknowledged");
    }
    for replica in [&b, &c] {
        replica_knows(replica, SAFE, pb::AckPolicy::Quorum).await;
    }
    let committed = settled_committed_end(&a).await;

    b.pause();
    c.pause();
    for i in 3..6 {
        send_to(&a, FAST, i)
            .await
            .expect("acknowledged by the master alone");
    }
    let started = Instant::now();
    let refused = send_to(&a, SAFE, 3).await.unwrap_err();
    assert_quorum_timeout(refused, started.elapsed(), Duration::from_secs(3));
    assert_eq!(
        state(&a).await.committed_end,
        committed,
        "no quorum: nothing"
    );
    assert_eq!(described(&a, FAST).await, (pb::AckPolicy::Unspecified, 6));
    assert_eq!(described(&a, SAFE).await, (pb::AckPolicy::Quorum, 3));

    // A send that waits while they stand still is acknowledged once they
    // are back (within the 3 s ack timeout).
    let master = a.grpc.clone();
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let message = pb::OutgoingMessage {
            topic: SAFE.into(),
            body: b"waits".to_vec().into(),
            ..Default::default()
        };
        let mut client = pb::messaging_service_client::MessagingServiceClient::connect(format!(
            "http://{master}"
        ))
        .await
        .expect("messaging connection");
        let sent = client
            .send(pb::SendRequest {
                messages: vec![message],
            })
            .await;
        (sent.map(|_| ()), started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "acknowledged without its replicas");
    b.resume();
    c.resume();
    let (sent, waited) = waiting.await.unwrap();
    sent.expect("acknowledged once the replicas stored it");
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(state(&a).await.committed_end > committed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_topics_commits_and_changes_wait_for_its_replicas_under_a_master_default() {
    let settings = "ack_policy = \"master\"\nack_timeout = \"3s\"";
    let [a, b, c] = start_group_of_three(settings).await;
    let quorum = Some(pb::AckPolicy::Quorum);
    upsert_pay(&a.grpc, 1, quorum).await.expect("create");
    // Growing it without a policy keeps quorum.
    let grown = upsert_pay(&a.grpc, 2, None).await.expect("grow");
    assert_eq!(
        (grown.queues, grown.ack_policy()),
        (2, pb::AckPolicy::Quorum)
    );
    let half = pb::OutgoingMessage {
        topic: PAY.into(),
        body: b"paid".to_vec().into(),
        transactional: true,
        producer_group: "payers".into(),
        ..Default::default()
    };
    let id = group::send_message(&a, half)
        .await
        .expect("half sent")
        .transaction_id;
    for replica in [&b, &c] {
        replica_knows(replica, PAY, pb::AckPolicy::Quorum).await;
    }
    settled_committed_end(&a).await;

    b.pause();
    c.pause();
    let master = a.grpc.clone();
    let committing = tokio::spawn(async move { commit(&master, &id).await });
    let master = a.grpc.clone();
    let growing = tokio::spawn(async move { upsert_pay(&master, 4, None).await });
    // A change to a topic under the `master` default does not wait.
    let started = Instant::now();
    create(&a, FAST, None).await;
    assert!(started.elapsed() < Duration::from_millis(900));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!committing.is_finished(), "committed without its replicas");
    assert!(!growing.is_finished(), "changed without its replicas");
    b.resume();
    c.resume();
    committing
        .await
        .unwrap()
        .expect("committed once the replicas stored it");
    let grown = growing.await.unwrap().expect("changed once they stored it");
    assert_eq!(
        (grown.queues, grown.ack_policy()),
        (4, pb::AckPolicy::Quorum)
    );
    // The operator's and the CLI's way back to the brokers' policy.
    let reset = upsert_pay(&a.grpc, 4, Some(pb::AckPolicy::BrokerDefault)).await;
    assert_eq!(
        reset.expect("reset").ack_policy(),
        pb::AckPolicy::Unspecified
    );
}
