//! What a draining broker reports before it may leave the fleet (the operator
//! lowers the replicas only on 0 unconsumed and 0 staged): a delayed message
//! not yet due counts as staged until it is released into its topic, then as
//! unconsumed until its group acknowledges it.

mod common;

use common::api::{
    LONG_LEASE, ack, create_group, create_topic, declare_group, lease_exactly, message, send,
    subscribe,
};
use common::broker::{Loops, TestBroker, messaging_config, poll_until};
use dduomq_broker::filter::FilterSpec;
use dduomq_broker::messaging::{DrainState, Schedule, SendMessage};
use dduomq_broker::store::MessageType;

const TOPIC: &str = "reminders";
const GROUP: &str = "notifier";

#[tokio::test]
async fn a_staged_delayed_message_keeps_a_draining_broker_from_being_drained() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::open(dir.path(), messaging_config(), Loops::Running);
    create_topic(&b.broker, TOPIC, 1, MessageType::Delay);
    create_group(&b.broker, GROUP, 16, &[20]);
    send(
        &b.broker,
        SendMessage {
            schedule: Schedule::After(500),
            ..message(TOPIC, "later")
        },
    )
    .await
    .unwrap();
    b.broker.set_draining(true);
    assert_eq!(
        b.broker.drain_state(),
        DrainState {
            draining: true,
            unconsumed: 0,
            staged: 1
        }
    );
    let consumer = subscribe(&b.broker, GROUP, TOPIC, "c1");
    let got = lease_exactly(&b.broker, &consumer, LONG_LEASE, 1).await;
    // The release appends the copy, then forgets the staged record.
    poll_until("the staged record to be released", async || {
        (b.broker.drain_state().staged == 0).then_some(())
    })
    .await;
    assert_eq!(
        b.broker.drain_state(),
        DrainState {
            draining: true,
            unconsumed: 1,
            staged: 0
        },
        "released into its topic, leased, not yet acknowledged"
    );
    ack(&b.broker, &consumer, &got[0]).unwrap();
    poll_until("the acknowledgement to be committed", async || {
        (b.broker.drain_state().unconsumed == 0).then_some(())
    })
    .await;
    assert_eq!(
        b.broker.drain_state(),
        DrainState {
            draining: true,
            unconsumed: 0,
            staged: 0
        }
    );
    b.close().await;
}

/// A group that declares a subscription but never consumed on this broker
/// still has the topic's messages to consume: they keep the broker from
/// being drained (a scale-in must wait for them).
#[tokio::test]
async fn a_declared_group_that_never_consumed_keeps_a_draining_broker_from_being_drained() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::open(dir.path(), messaging_config(), Loops::Running);
    create_topic(&b.broker, "orders", 2, MessageType::Normal);
    declare_group(
        &b.broker,
        "billing",
        &[("orders", FilterSpec::all())],
        false,
    )
    .unwrap();
    for i in 0..5 {
        send(&b.broker, message("orders", &format!("order-{i}")))
            .await
            .unwrap();
    }
    b.broker.set_draining(true);
    assert_eq!(
        b.broker.drain_state(),
        DrainState {
            draining: true,
            unconsumed: 5,
            staged: 0
        }
    );
    b.close().await;
}
