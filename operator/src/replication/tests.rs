//! The groups' tasks against the fake API server, with members nobody
//! answers for: one group's stalled record read must not hold up another
//! group's rounds, and shutdown stops every task.

use std::time::Instant;

use super::*;
use crate::replication::timing::RECORD_CALL_TIMEOUT;
use crate::test_support::fake_api::FakeApi;
use crate::test_support::{NAMESPACE, context, ready_broker};

#[tokio::test]
async fn a_stalled_record_read_in_one_group_does_not_delay_another_groups_round() {
    let api = FakeApi::new(Vec::new());
    api.hold_reads(&format!(
        "/api/v1/namespaces/{NAMESPACE}/configmaps/dduomq-broker-group-0"
    ));
    // Brokers 0-2 form group 0, 3-5 group 1 (port 1 refuses connections).
    let brokers = (0..6).map(|id| ready_broker(id, "127.0.0.1:1")).collect();
    let settings = ReplicationSettings {
        layout: GroupLayout::new(3),
        namespace: NAMESPACE.into(),
        statefulset: "dduomq-broker".into(),
    };
    let (states, mut published) = watch::channel(GroupStates::new());
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let controller = tokio::spawn(run(
        context(api.client(), brokers),
        settings,
        states,
        shutdown.clone(),
    ));

    // Group 1 decides while group 0's first read still hangs (no election:
    // its members never report, and only members that reported are elected).
    let first = published
        .wait_for(|s| s.contains_key(&1))
        .await
        .unwrap()
        .clone();
    let took = started.elapsed();
    assert!(took < RECORD_CALL_TIMEOUT, "group 1 waited {took:?}");
    assert_eq!(first, GroupStates::from([(1, GroupState::Masterless)]));
    // Group 0's read times out; with no record ever read it has no master.
    let both = published
        .wait_for(|s| s.contains_key(&0))
        .await
        .unwrap()
        .clone();
    assert_eq!(
        both,
        GroupStates::from([(0, GroupState::Masterless), (1, GroupState::Masterless)])
    );

    // Shutdown returns once no group task runs: every task's sender of the
    // states is gone with it.
    shutdown.cancel();
    controller.await.unwrap();
    assert!(
        published.has_changed().is_err(),
        "a group task still holds the states"
    );
}
