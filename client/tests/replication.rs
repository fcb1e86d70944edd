//! Replication of a broker group over real broker processes, with the test
//! as the controller (AssignRole): a replica catches up from empty and ends
//! byte-identical; a former master's divergent tail is truncated after an
//! epoch change; a lagging replica leaves and rejoins the in-sync set while
//! sends go on; with the quorum unreachable, sends fail with QUORUM_TIMEOUT
//! and nothing is acknowledged (an idempotent retry is stored once).

#[path = "replication/group.rs"]
#[allow(dead_code)] // shared with the other replication suites
mod group;

use std::time::{Duration, Instant};

use dduomq_client::Reason;
use dduomq_client::proto as pb;
use dduomq_testkit::{eventually, stored};
use group::{
    TOPIC, body_on, make_master, make_replica, record_proposal, send, start_group_of_three,
    start_member, state, wait_log_end, wait_same_log,
};

fn body(i: usize) -> Vec<u8> {
    format!("message {i} {}", "x".repeat(i % 300)).into_bytes()
}

/// Sends `range`'s bodies one by one; every one must be acknowledged.
async fn send_all(
    b: &dduomq_testkit::Broker,
    range: std::ops::Range<usize>,
) -> Vec<(String, Vec<u8>)> {
    let mut acked = Vec::new();
    for i in range {
        let receipt = send(b, &body(i)).await.expect("acknowledged");
        acked.push((receipt.message_id, body(i)));
    }
    acked
}

async fn assert_serves(b: &dduomq_testkit::Broker, acked: &[(String, Vec<u8>)]) {
    for (id, body) in acked {
        assert_eq!(body_on(b, id).await.as_ref(), Some(body), "message {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_master_with_a_valid_lease_takes_writes() {
    let a = start_member(0, "");
    let b = start_member(1, "");
    let refused = send(&a, b"early").await.unwrap_err();
    assert_eq!(refused.reason(), Some(Reason::NotMaster), "{refused}");
    assert!(
        refused.to_string().contains("no master is assigned yet"),
        "{refused}"
    );

    make_replica(&b, 1, 0, &a.grpc).await;
    let lease = group::master_assignment(&a.grpc, 0, 1, &[0, 1], 1);
    let short = pb::AssignRoleRequest {
        lease_ms: 1000,
        ..lease.clone()
    };
    group::assign(&a.grpc, short.clone()).await.expect("master");
    send(&a, b"in time").await.expect("acknowledged");
    let refused = send(&b, b"to a replica").await.unwrap_err();
    assert_eq!(refused.reason(), Some(Reason::NotMaster), "{refused}");
    assert!(
        refused
            .to_string()
            .contains(&format!("the master is at {}", a.grpc)),
        "{refused}"
    );

    // Not renewed: it stops acknowledging when the lease lapses.
    let lapsed = eventually(Duration::from_secs(5), "the lease to lapse", async || {
        send(&a, b"late").await.err()
    })
    .await;
    assert_eq!(lapsed.reason(), Some(Reason::NotMaster), "{lapsed}");
    assert!(lapsed.to_string().contains("lease lapsed"), "{lapsed}");
    assert_eq!(state(&a).await.lease_remaining_ms, 0);
    // Renewed: it takes writes again.
    group::assign(&a.grpc, short).await.expect("renewal");
    send(&a, b"renewed").await.expect("acknowledged");

    // An older epoch than the member knows is refused and changes nothing.
    group::assign(&a.grpc, pb::AssignRoleRequest { epoch: 2, ..lease })
        .await
        .expect("epoch 2");
    let stale = group::assign(
        &b.grpc,
        pb::AssignRoleRequest {
            role: pb::ReplicaRole::Replica as i32,
            ..group::master_assignment(&a.grpc, 0, 1, &[], 0)
        },
    )
    .await;
    assert!(stale.is_ok(), "b still knows only epoch 1: {stale:?}");
    make_replica(&b, 2, 0, &a.grpc).await;
    let stale = group::assign(
        &b.grpc,
        pb::AssignRoleRequest {
            role: pb::ReplicaRole::Replica as i32,
            ..group::master_assignment(&a.grpc, 0, 1, &[], 0)
        },
    )
    .await
    .unwrap_err();
    assert_eq!(stale.code(), tonic::Code::InvalidArgument, "{stale:?}");
    assert_eq!(state(&b).await.epoch, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_replica_catches_up_byte_for_byte() {
    let a = start_member(0, "");
    let b = start_member(1, "");
    make_replica(&b, 1, 0, &a.grpc).await;
    make_master(&a.grpc, 0, 1, &[0, 1], 1).await;
    // Past a segment boundary (64 KiB segments), so fillers are copied too.
    let acked = send_all(&a, 0..400).await;
    let master = state(&a).await;
    assert!(master.log_end > 65536, "{}", master.log_end);
    assert_eq!(master.committed_end, master.log_end);

    let c = start_member(2, "");
    make_replica(&c, 1, 0, &a.grpc).await;
    let log = wait_same_log(&a, &[&b, &c]).await;
    assert!(log.len() as u64 >= master.log_end);
    assert_serves(&c, &acked).await;
    // Caught up, it joins the set the master waits for and is proposed.
    let master = state(&a).await;
    assert_eq!(master.in_sync, vec![0, 1, 2]);
    assert_eq!(master.proposed_in_sync, vec![0, 1, 2]);
    assert_eq!(master.proposal_based_on, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_former_master_truncates_its_divergent_tail() {
    let policy = "ack_policy = \"master\"";
    let mut a = start_member(0, policy);
    let mut b = start_member(1, policy);
    let mut c = start_member(2, policy);
    for replica in [&b, &c] {
        make_replica(replica, 1, 0, &a.grpc).await;
    }
    make_master(&a.grpc, 0, 1, &[0, 1, 2], 1).await;
    let mut acked = send_all(&a, 0..50).await;
    let end = state(&a).await.log_end;
    wait_log_end(&b, end).await;
    wait_log_end(&c, end).await;

    // A tail only the master gets (acknowledged: policy master). The
    // replicas are killed, not stopped: a stopped process still receives
    // what its socket buffers hold when it continues.
    b.kill();
    c.kill();
    let tail = send_all(&a, 50..70).await;
    assert!(state(&a).await.log_end > end);
    a.kill();
    b.start_again();
    c.start_again();

    make_master(&b.grpc, 1, 2, &[1, 2], 2).await;
    make_replica(&c, 2, 1, &b.grpc).await;
    acked.extend(send_all(&b, 70..100).await);
    a.start_again();
    make_replica(&a, 2, 1, &b.grpc).await;
    wait_same_log(&b, &[&a, &c]).await;
    assert_serves(&a, &acked).await;
    for (id, body) in &tail {
        assert_ne!(
            body_on(&a, id).await.as_ref(),
            Some(body),
            "tail message {id} survived"
        );
    }
    assert_eq!(stored(&a, TOPIC).await, 80);
    let former = state(&a).await;
    assert_eq!(former.role, pb::ReplicaRole::Replica as i32);
    assert_eq!(former.epoch, 2);
    assert_eq!(former.last_record_epoch, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_leaves_and_rejoins_the_in_sync_set() {
    let settings = "replica_lag_max = \"400ms\"\nack_timeout = \"5s\"";
    let a = start_member(0, settings);
    let b = start_member(1, settings);
    let c = start_member(2, settings);
    for replica in [&b, &c] {
        make_replica(replica, 1, 0, &a.grpc).await;
    }
    make_master(&a.grpc, 0, 1, &[0, 1, 2], 1).await;
    let mut acked = send_all(&a, 0..20).await;

    // The controller: records the master's proposals as they come.
    let master = a.grpc.clone();
    let recorder = tokio::spawn(async move {
        let mut recorded = Vec::new();
        loop {
            let s = group::state_at(&master).await;
            if !s.proposed_in_sync.is_empty() {
                make_master(&master, 0, 1, &s.proposed_in_sync, s.proposal_based_on + 1).await;
                recorded.push(s.proposed_in_sync);
            }
            if recorded.len() == 2 {
                return recorded;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    c.pause();
    let started = Instant::now();
    acked.extend(send_all(&a, 20..60).await);
    assert!(started.elapsed() < Duration::from_secs(5));
    eventually(
        Duration::from_secs(5),
        "the lagging replica out of the set",
        async || (state(&a).await.in_sync == vec![0, 1]).then_some(()),
    )
    .await;
    acked.extend(send_all(&a, 60..80).await);
    c.resume();
    let recorded = recorder.await.unwrap();
    assert_eq!(recorded, vec![vec![0, 1], vec![0, 1, 2]]);
    let master = state(&a).await;
    assert_eq!(master.in_sync, vec![0, 1, 2]);
    assert_eq!(master.in_sync_version, 3);
    acked.extend(send_all(&a, 80..90).await);
    wait_same_log(&a, &[&c]).await;
    assert_serves(&c, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_quorum_sends_fail_and_nothing_is_acknowledged() {
    let settings = "ack_timeout = \"1s\"";
    let [a, mut b, mut c] = start_group_of_three(settings).await;
    let acked = send_all(&a, 0..5).await;
    let committed = state(&a).await.committed_end;
    b.kill();
    c.kill();

    let idempotent = |i: u64| pb::OutgoingMessage {
        topic: TOPIC.into(),
        body: body(i as usize).into(),
        producer_id: "p-1".into(),
        sequence: i,
        ..Default::default()
    };
    for i in 5..8 {
        let started = Instant::now();
        let refused = group::send_message(&a, idempotent(i)).await.unwrap_err();
        assert_eq!(refused.reason(), Some(Reason::QuorumTimeout), "{refused}");
        assert!(refused.is_retryable());
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
    }
    assert_eq!(
        state(&a).await.committed_end,
        committed,
        "nothing acknowledged"
    );

    // One member back: the controller records the master's proposal, and
    // the producer's retries are stored once.
    b.start_again();
    make_replica(&b, 1, 0, &a.grpc).await;
    record_proposal(&a, &[0, 1]).await;
    let mut retried = Vec::new();
    for i in 5..8 {
        let receipt = group::send_message(&a, idempotent(i))
            .await
            .expect("acknowledged");
        retried.push((receipt.message_id, body(i as usize)));
    }
    assert_eq!(stored(&a, TOPIC).await, 8, "each retry stored once");
    assert_serves(&a, &acked).await;
    assert_serves(&a, &retried).await;
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_group_replicates_without_a_controller() {
    let ports: Vec<u16> = (0..group::FACTOR)
        .map(|_| dduomq_testkit::free_port())
        .collect();
    let peers: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    let settings = format!(
        "peers = [{}]\nstatic_master = 0\nreplica_lag_max = \"300ms\"",
        peers.join(", ")
    );
    let members: Vec<dduomq_testkit::Broker> = (0..group::FACTOR)
        .map(|ordinal| group::start_static_member(ordinal, &settings, ports[ordinal as usize]))
        .collect();
    let [a, b, mut c] = <[_; 3]>::try_from(members).expect("three members");
    let mut acked = send_all(&a, 0..100).await;
    assert_eq!(state(&a).await.in_sync, vec![0, 1, 2]);

    // A member down: the master records its own proposal and goes on.
    c.kill();
    acked.extend(send_all(&a, 100..150).await);
    assert_eq!(state(&a).await.in_sync, vec![0, 1]);
    c.start_again();
    eventually(
        Duration::from_secs(20),
        "the member back in the set",
        async || (state(&a).await.in_sync == vec![0, 1, 2]).then_some(()),
    )
    .await;
    acked.extend(send_all(&a, 150..160).await);
    wait_same_log(&a, &[&b, &c]).await;
    assert_serves(&c, &acked).await;
    let refused = group::assign(
        &a.grpc,
        group::master_assignment(&a.grpc, 0, 2, &[0, 1, 2], 2),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
}

/// Review finding 4: a restarted static master continued epoch 1, so a
/// replica holding bytes the master lost (an unflushed tail) would have been
/// streamed on after them. It begins a new epoch at its log end on each start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_static_master_begins_a_new_epoch() {
    let ports: Vec<u16> = (0..group::FACTOR)
        .map(|_| dduomq_testkit::free_port())
        .collect();
    let peers: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    let settings = format!("peers = [{}]\nstatic_master = 0", peers.join(", "));
    let members: Vec<dduomq_testkit::Broker> = (0..group::FACTOR)
        .map(|ordinal| group::start_static_member(ordinal, &settings, ports[ordinal as usize]))
        .collect();
    let [mut a, b, c] = <[_; 3]>::try_from(members).expect("three members");
    assert_eq!(state(&a).await.epoch, 1);
    let mut acked = send_all(&a, 0..50).await;

    a.kill();
    a.start_again();
    assert_eq!(state(&a).await.epoch, 2);
    acked.extend(send_all(&a, 50..80).await);
    wait_same_log(&a, &[&b, &c]).await;
    for replica in [&b, &c] {
        assert_eq!(state(replica).await.last_record_epoch, 2);
        assert_serves(replica, &acked).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_replica_heals_from_its_master() {
    let a = start_member(0, "");
    let mut b = start_member(1, "");
    make_replica(&b, 1, 0, &a.grpc).await;
    make_master(&a.grpc, 0, 1, &[0, 1], 1).await;
    let acked = send_all(&a, 0..100).await;
    let end = state(&a).await.log_end;
    wait_log_end(&b, end).await;

    // A flipped byte in the body of a record in the middle of b's log, and
    // no checkpoint, so recovery scans the whole log and finds it.
    b.stop();
    group::flip_byte(&b, group::position_of(&acked[40].0) + 60);
    std::fs::remove_file(b.data_dir().join("checkpoint")).expect("remove the checkpoint");
    b.start_again();
    assert_eq!(
        body_on(&b, &acked[40].0).await,
        None,
        "the damaged record is not served"
    );
    make_replica(&b, 1, 0, &a.grpc).await;
    eventually(
        Duration::from_secs(20),
        "the damaged record healed",
        async || {
            body_on(&b, &acked[40].0)
                .await
                .filter(|body| *body == acked[40].1)
        },
    )
    .await;
    wait_same_log(&a, &[&b]).await;
    assert_serves(&b, &acked).await;
}
