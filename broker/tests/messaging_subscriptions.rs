//! A group's one subscription per topic (declared by the group, or held by its
//! first subscriber while it has consumers) and ordered groups: a consumer
//! with another filter is refused and changes nothing; an ordered group gets
//! one message in flight per queue of any topic.

mod common;

use common::api::{
    LONG_LEASE, ack, ack_one_at_a_time, bodies, create_group, create_topic, declare_group,
    group_config, heartbeat, lease_all, lease_exactly, message, nack_for_retry, send, send_bodies,
    subscribe_with, try_pull, try_subscribe, unsubscribe,
};
use common::broker::{Loops, Shutdown, TestBroker, messaging_config, wait_past};
use dduomq_broker::filter::FilterSpec;
use dduomq_broker::messaging::SendMessage;
use dduomq_broker::messaging::error::BrokerError;
use dduomq_broker::messaging::groups::GroupSubscription;
use dduomq_broker::store::{MessageType, now_millis};
use dduomq_proto::Reason;
use std::time::Duration;

const TOPIC: &str = "events";
const GROUP: &str = "audit";

/// Sends `(body, tag)` pairs to the one queue of [`TOPIC`], in order.
async fn send_tagged(b: &TestBroker, messages: &[(&str, &str)]) {
    for (body, tag) in messages {
        let m = SendMessage {
            tag: tag.to_string(),
            queue_id: Some(0),
            ..message(TOPIC, body)
        };
        send(&b.broker, m).await.unwrap();
    }
}

/// The refusal's reason and message.
fn refusal<T>(result: Result<T, BrokerError>) -> (Reason, String) {
    match result {
        Ok(_) => panic!("expected a refusal"),
        Err(e) => (e.code(), e.to_string()),
    }
}

fn declared_a() -> Vec<GroupSubscription> {
    vec![GroupSubscription {
        topic: TOPIC.into(),
        filter: FilterSpec::tags("A"),
    }]
}

#[tokio::test]
async fn a_declared_filter_refuses_other_filters_and_delivers_only_its_tags() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::open(dir.path(), messaging_config(), Loops::Stopped);
    create_topic(&b.broker, TOPIC, 1, MessageType::Normal);
    create_topic(&b.broker, "other", 1, MessageType::Normal);
    assert!(declare_group(&b.broker, GROUP, &[(TOPIC, FilterSpec::tags("A"))], false).unwrap());
    send_tagged(&b, &[("a1", "A"), ("b1", "B"), ("a2", "A"), ("b2", "B")]).await;

    let expected = format!(
        "group \"{GROUP}\" subscribes with the tag filter \"A\" on topic \"{TOPIC}\"; \
         its consumers must subscribe with that filter"
    );
    for other in [
        FilterSpec::tags("B"),
        FilterSpec::all(),
        FilterSpec::sql("TAGS = 'A'"),
    ] {
        let refused = try_subscribe(&b.broker, GROUP, TOPIC, "thief", &other, "");
        assert_eq!(
            refusal(refused),
            (Reason::SubscriptionMismatch, expected.clone())
        );
        let pulled = try_pull(&b.broker, GROUP, TOPIC, 0, 0, &other).await;
        assert_eq!(
            refusal(pulled),
            (Reason::SubscriptionMismatch, expected.clone())
        );
    }
    // A topic the group does not declare is refused for every kind of consumer.
    let undeclared = format!(
        "group \"{GROUP}\" declares no subscription on topic \"other\"; \
         its consumers must subscribe with that filter"
    );
    let refused = try_subscribe(&b.broker, GROUP, "other", "c1", &FilterSpec::all(), "");
    assert_eq!(
        refusal(refused),
        (Reason::SubscriptionMismatch, undeclared.clone())
    );
    let refused = heartbeat(&b.broker, GROUP, "m1", &["other"]);
    assert_eq!(refusal(refused), (Reason::SubscriptionMismatch, undeclared));
    assert_eq!(
        group_config(&b.broker, GROUP).unwrap().subscriptions,
        declared_a()
    );

    // The same filter written differently is the group's.
    let consumer = subscribe_with(&b.broker, GROUP, TOPIC, "c1", FilterSpec::tags(" A "), "");
    let leased = lease_all(&b.broker, &consumer).await;
    assert_eq!(bodies(&leased), ["a1", "a2"]);
    assert_eq!(
        leased
            .iter()
            .map(|d| d.record.body.as_ref())
            .collect::<Vec<_>>(),
        [b"a1".as_slice(), b"a2".as_slice()]
    );
    let pulled = try_pull(&b.broker, GROUP, TOPIC, 0, 0, &FilterSpec::tags("A")).await;
    assert_eq!(bodies(&pulled.unwrap().deliveries), ["a1", "a2"]);
    assert_eq!(
        group_config(&b.broker, GROUP).unwrap().subscriptions,
        declared_a()
    );
    b.close().await;
}

#[tokio::test]
async fn the_first_subscriber_sets_the_filter_until_its_consumers_leave() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = messaging_config();
    config.session_timeout = Duration::from_millis(300);
    let b = TestBroker::open(dir.path(), config, Loops::Stopped);
    create_topic(&b.broker, TOPIC, 1, MessageType::Normal);
    create_group(&b.broker, GROUP, 16, &[20]);
    send_tagged(&b, &[("a1", "A"), ("b1", "B"), ("a2", "A")]).await;

    let first = subscribe_with(&b.broker, GROUP, TOPIC, "c1", FilterSpec::tags("A"), "");
    let held_a = format!(
        "group \"{GROUP}\" subscribes with the tag filter \"A\" on topic \"{TOPIC}\"; \
         its consumers must subscribe with that filter"
    );
    let refused = try_subscribe(&b.broker, GROUP, TOPIC, "c2", &FilterSpec::tags("B"), "");
    assert_eq!(
        refusal(refused),
        (Reason::SubscriptionMismatch, held_a.clone())
    );
    let pulled = try_pull(&b.broker, GROUP, TOPIC, 0, 0, &FilterSpec::tags("B")).await;
    assert_eq!(refusal(pulled), (Reason::SubscriptionMismatch, held_a));
    let second = subscribe_with(&b.broker, GROUP, TOPIC, "c3", FilterSpec::tags("A"), "");
    let leased = lease_all(&b.broker, &first).await;
    assert_eq!(bodies(&leased), ["a1", "a2"]);
    for d in &leased {
        ack(&b.broker, &first, d).unwrap();
    }

    // When the last stream closes, the next first subscriber sets the filter.
    unsubscribe(&b.broker, first).await;
    let refused = try_subscribe(&b.broker, GROUP, TOPIC, "c2", &FilterSpec::tags("B"), "");
    assert_eq!(refusal(refused).0, Reason::SubscriptionMismatch);
    unsubscribe(&b.broker, second).await;
    let b_consumer = subscribe_with(&b.broker, GROUP, TOPIC, "c2", FilterSpec::tags("B"), "");
    send_tagged(&b, &[("a3", "A"), ("b2", "B")]).await;
    assert_eq!(bodies(&lease_all(&b.broker, &b_consumer).await), ["b2"]);
    unsubscribe(&b.broker, b_consumer).await;

    // A pull member holds the filter of its pulls while its heartbeats last.
    heartbeat(&b.broker, GROUP, "m1", &[TOPIC]).unwrap();
    let pulled = try_pull(
        &b.broker,
        GROUP,
        TOPIC,
        0,
        0,
        &FilterSpec::sql("TAGS = 'B'"),
    )
    .await;
    assert_eq!(bodies(&pulled.unwrap().deliveries), ["b1", "b2"]);
    let refused = try_subscribe(&b.broker, GROUP, TOPIC, "c4", &FilterSpec::tags("B"), "");
    assert_eq!(
        refusal(refused),
        (
            Reason::SubscriptionMismatch,
            format!(
                "group \"{GROUP}\" subscribes with the SQL filter \"TAGS = 'B'\" on topic \
                 \"{TOPIC}\"; its consumers must subscribe with that filter"
            )
        )
    );
    wait_past(now_millis() + 300).await;
    let c4 = subscribe_with(&b.broker, GROUP, TOPIC, "c4", FilterSpec::tags("B"), "");
    unsubscribe(&b.broker, c4).await;
    b.close().await;
}

#[tokio::test]
async fn an_ordered_group_has_one_message_in_flight_per_queue_of_a_normal_topic() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::open(dir.path(), messaging_config(), Loops::Stopped);
    create_topic(&b.broker, "jobs", 2, MessageType::Normal);
    declare_group(&b.broker, "ordered", &[], true).unwrap();
    create_group(&b.broker, "unordered", 16, &[20]);
    send_bodies(&b.broker, "jobs", 0, &["q0-1", "q0-2", "q0-3"]).await;
    send_bodies(&b.broker, "jobs", 1, &["q1-1", "q1-2"]).await;

    // The same topic without the flag: everything at once.
    let free = subscribe_with(&b.broker, "unordered", "jobs", "f", FilterSpec::all(), "");
    assert_eq!(lease_all(&b.broker, &free).await.len(), 5);

    let consumer = subscribe_with(&b.broker, "ordered", "jobs", "c1", FilterSpec::all(), "");
    let mut first = lease_all(&b.broker, &consumer).await;
    first.sort_by_key(|d| d.record.queue_id);
    assert_eq!(bodies(&first), ["q0-1", "q1-1"]);
    assert!(lease_all(&b.broker, &consumer).await.is_empty());
    // A nacked head comes back before anything behind it in its queue.
    let (q0, q1) = (&first[0], &first[1]);
    ack(&b.broker, &consumer, q1).unwrap();
    let q1_next = lease_all(&b.broker, &consumer).await;
    assert_eq!(bodies(&q1_next), ["q1-2"]);
    nack_for_retry(&b.broker, &consumer, q0).await;
    let again = lease_exactly(&b.broker, &consumer, LONG_LEASE, 1).await;
    assert_eq!(
        (bodies(&again), again[0].attempt),
        (vec!["q0-1".to_string()], 2)
    );
    ack(&b.broker, &consumer, &q1_next[0]).unwrap();
    let head = again.into_iter().next().unwrap();
    let order = ack_one_at_a_time(&b.broker, &consumer, head).await;
    assert_eq!(order, ["q0-1", "q0-2", "q0-3"]);
    b.close().await;
}

#[tokio::test]
async fn declared_subscriptions_survive_a_restart_and_changes_reach_live_streams() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::open(dir.path(), messaging_config(), Loops::Stopped);
    create_topic(&b.broker, TOPIC, 1, MessageType::Normal);
    declare_group(&b.broker, GROUP, &[(TOPIC, FilterSpec::tags("A"))], true).unwrap();
    let b = b
        .restart(Shutdown::WithoutSaving, messaging_config(), Loops::Stopped)
        .await;
    let config = group_config(&b.broker, GROUP).unwrap();
    assert_eq!((config.subscriptions, config.ordered), (declared_a(), true));
    let refused = try_subscribe(&b.broker, GROUP, TOPIC, "c1", &FilterSpec::tags("B"), "");
    assert_eq!(refusal(refused).0, Reason::SubscriptionMismatch);

    // Redeclared, the group's live streams deliver by the new filter and new
    // streams must use it.
    let consumer = subscribe_with(&b.broker, GROUP, TOPIC, "c1", FilterSpec::tags("A"), "");
    assert!(declare_group(&b.broker, GROUP, &[(TOPIC, FilterSpec::tags("B"))], true).unwrap());
    send_tagged(&b, &[("a1", "A"), ("b1", "B")]).await;
    assert_eq!(bodies(&lease_all(&b.broker, &consumer).await), ["b1"]);
    let refused = try_subscribe(&b.broker, GROUP, TOPIC, "c2", &FilterSpec::tags("A"), "");
    assert_eq!(refusal(refused).0, Reason::SubscriptionMismatch);

    // Declaring none, the live stream keeps the former filter until it leaves.
    assert!(declare_group(&b.broker, GROUP, &[], true).unwrap());
    let refused = try_subscribe(&b.broker, GROUP, TOPIC, "c2", &FilterSpec::tags("A"), "");
    assert_eq!(refusal(refused).0, Reason::SubscriptionMismatch);
    unsubscribe(&b.broker, consumer).await;
    let a = subscribe_with(&b.broker, GROUP, TOPIC, "c2", FilterSpec::tags("A"), "");
    unsubscribe(&b.broker, a).await;
    b.close().await;
}

#[tokio::test]
async fn bad_declarations_are_refused_with_a_position_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::open(dir.path(), messaging_config(), Loops::Stopped);
    declare_group(&b.broker, GROUP, &[(TOPIC, FilterSpec::tags("A"))], false).unwrap();
    let long_sql = format!("a = 1 AND ({}", "b".repeat(1000));
    let refused = declare_group(
        &b.broker,
        GROUP,
        &[(TOPIC, FilterSpec::sql(&long_sql))],
        false,
    );
    let (reason, text) = refusal(refused);
    assert_eq!(reason, Reason::InvalidFilter);
    assert!(
        text.starts_with("invalid SQL filter at position "),
        "{text}"
    );
    assert!(
        text.ends_with(&format!("(subscription on topic \"{TOPIC}\")")),
        "{text}"
    );
    assert!(text.len() < 300, "input echoed at length: {text}");
    let twice = [
        (TOPIC, FilterSpec::tags("A")),
        (TOPIC, FilterSpec::tags("B")),
    ];
    let refused = declare_group(&b.broker, GROUP, &twice, false);
    assert_eq!(
        refusal(refused),
        (
            Reason::InvalidArgument,
            format!("invalid subscriptions: topic \"{TOPIC}\" is declared twice")
        )
    );
    assert_eq!(
        group_config(&b.broker, GROUP).unwrap().subscriptions,
        declared_a()
    );
    b.close().await;
}
