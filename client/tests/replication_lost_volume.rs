//! The master of a group's first epoch loses its volume (pod and disk gone)
//! and comes back empty before any election, over real broker processes with
//! the test as the controller. Named master of epoch 1 again with the store
//! identity the controller recorded, it refuses; named master by a record
//! from before identities (nothing to check), it is made master, but its
//! followers refuse to cut the records of its own epoch it no longer holds.
//! Either way the replicas keep every acknowledged message. A replica that
//! loses its volume after the master's retention deleted the log's first
//! segments copies the master from its oldest segment, and follows again
//! after a restart.

#[path = "replication/group.rs"]
#[allow(dead_code)]
mod group;

use std::time::Duration;

use dduomq_client::proto as pb;
use dduomq_testkit::{Broker, eventually, stored};
use group::{
    TOPIC, body_on, make_master, make_replica, master_assignment, send, start_group_of_three,
    start_member_with_store, state, wait_log_end,
};

/// Messages acknowledged by the first master before it loses its volume.
const ACKED: usize = 60;
/// Long enough for a replica's reconnect attempts (at most 1 s apart) to
/// reach the empty master several times.
const SETTLE: Duration = Duration::from_secs(3);

fn body(i: usize) -> Vec<u8> {
    format!("acknowledged {i} {}", "v".repeat(i * 7 % 500)).into_bytes()
}

async fn assert_keeps(replica: &Broker, acked: &[(String, Vec<u8>)], log_end: u64) {
    assert_eq!(
        state(replica).await.log_end,
        log_end,
        "the replica's log was cut"
    );
    assert_eq!(stored(replica, TOPIC).await, ACKED as u64);
    for (id, body) in acked {
        assert_eq!(
            body_on(replica, id).await.as_ref(),
            Some(body),
            "message {id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_epoch_master_back_on_an_empty_volume_cuts_no_replica() {
    let [mut first, b, c] = start_group_of_three("").await;
    let recorded_store = state(&first).await.store_id;
    assert_ne!(recorded_store, 0, "a broker reports its store identity");
    let mut acked = Vec::with_capacity(ACKED);
    for i in 0..ACKED {
        let receipt = send(&first, &body(i)).await.expect("acknowledged");
        acked.push((receipt.message_id, body(i)));
    }
    let log_end = state(&first).await.log_end;
    for replica in [&b, &c] {
        wait_log_end(replica, log_end).await;
        // The master's committed end reaches a replica after the records.
        eventually(
            Duration::from_secs(20),
            "the replica to show every acknowledged message",
            async || (stored(replica, TOPIC).await == ACKED as u64).then_some(()),
        )
        .await;
    }

    // The pod and its volume are deleted; the pod comes back at once on an
    // empty volume, on the same address.
    first.kill();
    std::fs::remove_dir_all(first.data_dir()).expect("remove the data directory");
    first.start_again();
    let empty = state(&first).await;
    assert_ne!(
        empty.store_id, recorded_store,
        "a new volume, a new identity"
    );
    assert_eq!((empty.epoch, empty.log_end), (0, 0));

    // The controller still records member 0 as master of epoch 1 on its old
    // store, and renews it: refused.
    let renewal = pb::AssignRoleRequest {
        master_store: recorded_store,
        ..master_assignment(&first.grpc, 0, 1, &[0, 1, 2], 1)
    };
    let refused = group::assign(&first.grpc, renewal).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("volume was replaced"),
        "{refused:?}"
    );
    let after = state(&first).await;
    assert_eq!(after.role, pb::ReplicaRole::Unspecified as i32);
    assert_eq!(after.epoch, 0, "a refused assignment begins no epoch");
    tokio::time::sleep(SETTLE).await;
    assert_keeps(&b, &acked, log_end).await;
    assert_keeps(&c, &acked, log_end).await;

    // A record from before store identities checks nothing: the empty
    // member becomes master of epoch 1 again. Its followers, told to cut
    // records of epoch 1 (the master's own), refuse and keep them.
    let unchecked = master_assignment(&first.grpc, 0, 1, &[0, 1, 2], 1);
    let master = group::assign(&first.grpc, unchecked)
        .await
        .expect("unchecked");
    assert_eq!(master.role, pb::ReplicaRole::Master as i32);
    tokio::time::sleep(SETTLE).await;
    assert_keeps(&b, &acked, log_end).await;
    assert_keeps(&c, &acked, log_end).await;
    let lonely = state(&first).await;
    assert!(
        lonely.followers.iter().all(|f| f.acked_end == 0),
        "no replica streams from the empty master: {:?}",
        lonely.followers
    );
}

/// A replica on an empty volume starts at the master's oldest segment, in
/// the middle of epoch 1 once retention deleted the epoch's start. It must
/// record that epoch for its first records: without it, its log looked
/// written without replication after a restart, and it refused to follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_emptied_after_retention_copies_the_master_from_its_oldest_segment() {
    // The master acknowledges alone: a member that is gone delays nothing.
    // Only the master deletes its oldest segments soon.
    let acks_alone = "ack_policy = \"master\"";
    let master = start_member_with_store(
        0,
        "retention = \"1s\"\nretention_check_interval = \"200ms\"",
        acks_alone,
    );
    let [b, mut c] = [1, 2].map(|ordinal| start_member_with_store(ordinal, "", acks_alone));
    for replica in [&b, &c] {
        make_replica(replica, 1, 0, &master.grpc).await;
    }
    make_master(&master.grpc, 0, 1, &[0, 1, 2], 1).await;
    // About five 64 KiB segments, then the oldest are deleted.
    for i in 0..1000 {
        send(&master, &body(i)).await.expect("acknowledged");
    }
    let admin = dduomq_client::Admin::connect(&master.grpc).unwrap();
    let oldest = eventually(
        Duration::from_secs(20),
        "the master's retention to delete its oldest segments",
        async || {
            let min = admin.broker_info().await.ok()?.commit_log_min;
            (min > 0).then_some(min)
        },
    )
    .await;

    c.kill();
    std::fs::remove_dir_all(c.data_dir()).expect("remove the data directory");
    c.start_again();
    make_replica(&c, 1, 0, &master.grpc).await;
    let mut acked = Vec::new();
    for i in 0..20 {
        let receipt = send(&master, &body(i)).await.expect("acknowledged");
        acked.push((receipt.message_id, body(i)));
    }
    wait_log_end(&c, state(&master).await.log_end).await;
    let copied = dduomq_client::Admin::connect(&c.grpc)
        .unwrap()
        .broker_info()
        .await
        .unwrap();
    assert!(
        copied.commit_log_min >= oldest,
        "the empty replica starts at the master's oldest segment ({oldest}), not at {}",
        copied.commit_log_min
    );

    // Restarted, it follows again from where it ends.
    c.restart();
    make_replica(&c, 1, 0, &master.grpc).await;
    for i in 20..40 {
        let receipt = send(&master, &body(i)).await.expect("acknowledged");
        acked.push((receipt.message_id, body(i)));
    }
    wait_log_end(&c, state(&master).await.log_end).await;
    // Made master, it serves every message acknowledged since it emptied.
    drop(master);
    make_master(&c.grpc, 2, 2, &[1, 2], 2).await;
    for (id, body) in &acked {
        assert_eq!(body_on(&c, id).await.as_ref(), Some(body), "message {id}");
    }
}
