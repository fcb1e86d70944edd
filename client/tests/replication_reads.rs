//! Under quorum acks consumers see acknowledged records only (review finding
//! 8): a record the quorum did not store may be cut by a failover, and its
//! send failed. The master serves reads up to its committed end, a replica
//! up to the committed end its master told it; both wake waiting pulls when
//! that end moves.

#[path = "replication/group.rs"]
#[allow(dead_code)]
mod group;

use std::time::{Duration, Instant};

use dduomq_client::Reason;
use dduomq_client::proto as pb;
use dduomq_client::proto::messaging_service_client::MessagingServiceClient;
use dduomq_testkit::{Broker, eventually};
use group::{
    TOPIC, make_master, make_replica, send_message, start_group_of_three, state, wait_same_log,
};

const GROUP: &str = "billing";

/// A message for queue 0 of the topic.
fn to_queue_0(body: &str) -> pb::OutgoingMessage {
    pb::OutgoingMessage {
        topic: TOPIC.into(),
        body: body.as_bytes().to_vec().into(),
        queue_id: Some(0),
        ..Default::default()
    }
}

/// One Pull of queue 0 from `offset`, waiting up to `wait` for a message.
async fn pull(b: &Broker, offset: u64, wait: Duration) -> pb::PullResponse {
    MessagingServiceClient::connect(format!("http://{}", b.grpc))
        .await
        .expect("messaging connection")
        .pull(pb::PullRequest {
            group: GROUP.into(),
            topic: TOPIC.into(),
            queue_id: 0,
            offset,
            max_messages: 32,
            max_bytes: 1 << 20,
            wait_ms: wait.as_millis() as u32,
            ..Default::default()
        })
        .await
        .expect("pull")
        .into_inner()
}

fn bodies(pulled: &pb::PullResponse) -> Vec<&[u8]> {
    pulled.messages.iter().map(|m| m.body.as_ref()).collect()
}

/// The queue's end as the group's offset query reports it.
async fn max_offset(b: &Broker) -> u64 {
    MessagingServiceClient::connect(format!("http://{}", b.grpc))
        .await
        .expect("messaging connection")
        .query_offset(pb::QueryOffsetRequest {
            group: GROUP.into(),
            topic: TOPIC.into(),
            queue_id: 0,
        })
        .await
        .expect("query offset")
        .into_inner()
        .max_offset
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_see_only_acknowledged_records() {
    let settings = "ack_timeout = \"1s\"";
    let [a, mut b, mut c] = start_group_of_three(settings).await;
    dduomq_client::Admin::connect(&a.grpc)
        .expect("admin client")
        .create_group(pb::Group {
            name: GROUP.into(),
            ..Default::default()
        })
        .await
        .expect("group created");
    for body in ["one", "two"] {
        send_message(&a, to_queue_0(body))
            .await
            .expect("acknowledged");
    }
    assert_eq!(
        bodies(&pull(&a, 0, Duration::ZERO).await),
        [b"one".as_slice(), b"two"]
    );

    // Without its quorum the master stores the record but does not
    // acknowledge it: its consumers do not see it.
    b.kill();
    c.kill();
    let refused = send_message(&a, to_queue_0("three")).await.unwrap_err();
    assert_eq!(refused.reason(), Some(Reason::QuorumTimeout), "{refused}");
    assert!(state(&a).await.log_end > state(&a).await.committed_end);
    let unseen = pull(&a, 2, Duration::ZERO).await;
    assert_eq!(bodies(&unseen), Vec::<&[u8]>::new());
    assert_eq!((unseen.next_offset, unseen.max_offset), (2, 2));
    assert_eq!(max_offset(&a).await, 2);

    // A member back stores it, but the recorded in-sync set still waits for
    // the dead one: the replica does not show it either.
    b.start_again();
    make_replica(&b, 1, 0, &a.grpc).await;
    let master_end = state(&a).await.log_end;
    let proposal = eventually(
        Duration::from_secs(20),
        "the replica holding the master's log and a proposal without the dead member",
        async || {
            let s = state(&a).await;
            let caught_up = state(&b).await.log_end == master_end;
            (caught_up && s.proposed_in_sync == vec![0, 1]).then_some(s.proposal_based_on)
        },
    )
    .await;
    assert_eq!(bodies(&pull(&b, 0, Duration::ZERO).await).len(), 2);
    assert_eq!(max_offset(&b).await, 2);

    // Recording the smaller set acknowledges it: a pull already waiting on
    // the master and one on the replica get it then.
    let (master_pull, replica_pull) = {
        let (a, b) = (&a, &b);
        let waiting = Duration::from_secs(30);
        let started = Instant::now();
        let (on_a, on_b, _) = tokio::join!(pull(a, 2, waiting), pull(b, 2, waiting), async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            make_master(&a.grpc, 0, 1, &[0, 1], proposal + 1).await;
        });
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the pulls waited {:?}",
            started.elapsed()
        );
        (on_a, on_b)
    };
    assert_eq!(bodies(&master_pull), [b"three".as_slice()]);
    assert_eq!(bodies(&replica_pull), [b"three".as_slice()]);
    assert_eq!(max_offset(&a).await, 3);
    assert_eq!(max_offset(&b).await, 3);
    drop(c);
}

/// Opens a Receive stream on `b` and returns its first answer: messages, or
/// the refusal.
async fn first_receive(b: &Broker) -> Result<Vec<Vec<u8>>, tonic::Status> {
    let mut stream = MessagingServiceClient::connect(format!("http://{}", b.grpc))
        .await
        .expect("messaging connection")
        .receive(pb::ReceiveRequest {
            group: GROUP.into(),
            topic: TOPIC.into(),
            client_id: "reader-1".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let answer = tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("an answer within 20 s")?
        .expect("the stream answers before it ends");
    Ok(answer
        .messages
        .into_iter()
        .map(|m| m.body.to_vec())
        .collect())
}

/// `refused` is a NOT_MASTER refusal whose message says `says`.
fn assert_not_master(refused: &tonic::Status, says: &str) {
    assert_eq!(
        dduomq_client::ClientError::from(refused.clone()).reason(),
        Some(Reason::NotMaster),
        "{refused:?}"
    );
    assert!(refused.message().contains(says), "{}", refused.message());
}

/// A replica that follows a live master leases nothing (a consumer of both
/// would get every message twice, and its acks there count nowhere); once
/// its master stops answering, it serves the group's consumers (reads
/// without a master).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_serve_consumers_only_while_no_master_answers() {
    let [mut a, b, mut c] = start_group_of_three("").await;
    dduomq_client::Admin::connect(&a.grpc)
        .expect("admin client")
        .create_group(pb::Group {
            name: GROUP.into(),
            ..Default::default()
        })
        .await
        .expect("group created");
    send_message(&a, to_queue_0("one"))
        .await
        .expect("acknowledged");
    let refused = eventually(
        Duration::from_secs(20),
        "the replica refusing a consumer while it follows the master",
        async || first_receive(&b).await.err(),
    )
    .await;
    assert_not_master(&refused, "serves no consumers while it follows the master");

    // Restarted, a member serves no consumers until a master tells it what
    // is acknowledged: a master may be serving, and it hides its records
    // until then (a restarted member of the soak answered a consumer that
    // its group did not exist).
    c.restart();
    let unassigned = first_receive(&c)
        .await
        .expect_err("a restarted member refuses consumers");
    assert_not_master(
        &unassigned,
        "serves no consumers until a master tells it which records are acknowledged",
    );
    // Nor does it take writes, with the reason producers retry elsewhere on
    // (not, say, that a topic its hidden records hold does not exist).
    let write = send_message(&c, to_queue_0("two"))
        .await
        .expect_err("a restarted member refuses writes");
    assert_eq!(write.reason(), Some(Reason::NotMaster), "{write}");

    // The replica shows what it knows was acknowledged.
    let acknowledged = state(&a).await.committed_end;
    eventually(
        Duration::from_secs(20),
        "the replica told the master's committed end",
        async || (state(&b).await.committed_end >= acknowledged).then_some(()),
    )
    .await;
    a.kill();
    let served = eventually(
        Duration::from_secs(30),
        "the replica serving the consumer once the master is gone",
        async || first_receive(&b).await.ok(),
    )
    .await;
    assert_eq!(served, vec![b"one".to_vec()]);
    drop(c);
}

/// Receives from `b` until `n` messages came, acks them all there, and
/// returns their bodies.
async fn receive_and_ack(b: &Broker, n: usize) -> Vec<Vec<u8>> {
    let mut client = MessagingServiceClient::connect(format!("http://{}", b.grpc))
        .await
        .expect("messaging connection");
    let mut stream = client
        .receive(pb::ReceiveRequest {
            group: GROUP.into(),
            topic: TOPIC.into(),
            client_id: "reader-2".into(),
            ..Default::default()
        })
        .await
        .expect("receive")
        .into_inner();
    let (mut bodies, mut handles) = (Vec::new(), Vec::new());
    while bodies.len() < n {
        let batch = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("messages within 20 s")
            .expect("receive stream")
            .expect("the stream answers before it ends");
        for m in batch.messages {
            bodies.push(m.body.to_vec());
            handles.push(m.receipt_handle);
        }
    }
    let acked = client
        .ack(pb::AckRequest {
            group: GROUP.into(),
            topic: TOPIC.into(),
            receipt_handles: handles,
        })
        .await
        .expect("ack")
        .into_inner();
    assert!(
        acked.results.iter().all(|r| r.error_reason.is_empty()),
        "{acked:?}"
    );
    bodies
}

/// A replica that served consumers while its group had no master forgets
/// what it leased then once the master's progress reaches it: at the next
/// gap it serves from the master's progress, not from its own old cursor
/// (the soak redelivered up to 19,000 messages per failover from such
/// cursors).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_serving_again_without_a_master_starts_from_the_masters_progress() {
    let settings = "[broker]\noffsets_persist_interval = \"300ms\"\n";
    let [mut a, mut b, c] = start_group_of_three(settings).await;
    dduomq_client::Admin::connect(&a.grpc)
        .expect("admin client")
        .create_group(pb::Group {
            name: GROUP.into(),
            ..Default::default()
        })
        .await
        .expect("group created");
    let early: Vec<Vec<u8>> = (0..10).map(|i| format!("m{i}").into_bytes()).collect();
    for body in &early {
        send_message(&a, to_queue_0(std::str::from_utf8(body).unwrap()))
            .await
            .expect("acknowledged");
    }
    wait_same_log(&a, &[&b, &c]).await;

    // Gap 1: `c` serves the group and leases everything; the stream ends
    // without acks (its leases go back).
    a.kill();
    let leased = eventually(
        Duration::from_secs(30),
        "the replica serving the consumer once the master is gone",
        async || first_receive(&c).await.ok(),
    )
    .await;
    assert_eq!(leased.first(), Some(&early[0]));

    // `b` becomes master, its consumer acks every message there, and one
    // more is acknowledged; `c` follows it and gets its progress.
    make_replica(&c, 2, 1, &b.grpc).await;
    make_master(&b.grpc, 1, 2, &[1, 2], 2).await;
    let mut consumed = receive_and_ack(&b, early.len()).await;
    consumed.sort();
    let mut expected = early.clone();
    expected.sort();
    assert_eq!(consumed, expected);
    send_message(&b, to_queue_0("m10"))
        .await
        .expect("acknowledged");
    // A progress record follows the acks within the persist interval.
    tokio::time::sleep(Duration::from_secs(1)).await;
    wait_same_log(&b, &[&c]).await;
    // Applying what arrived is prompt; leave it ample time.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Gap 2: `c` serves from `b`'s progress: only the message `b` did not
    // deliver.
    b.kill();
    let served = eventually(
        Duration::from_secs(30),
        "the replica serving the consumer again once its new master is gone",
        async || first_receive(&c).await.ok(),
    )
    .await;
    assert_eq!(served, vec![b"m10".to_vec()]);
}
