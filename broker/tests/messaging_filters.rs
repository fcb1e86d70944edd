//! Tag and SQL filters of push subscriptions and pulls: only matching messages
//! are delivered, in order, and the others count as done for the group.

mod common;

use common::api::{
    ack_all, bodies, create_group, create_topic, lease_all, message, pull_filtered, query_offset,
    send, subscribe_with,
};
use common::broker::{Loops, TestBroker, messaging_config};
use dduomq_broker::filter::FilterSpec;
use dduomq_broker::messaging::SendMessage;
use dduomq_broker::store::MessageType;

const TOPIC: &str = "events";
const GROUP: &str = "audit";

/// A message's `(name, value)` properties.
type Properties<'a> = &'a [(&'a str, &'a str)];

/// A broker with a one-queue topic holding `(body, tag, properties)` in order.
async fn broker_holding(
    dir: &std::path::Path,
    messages: &[(&str, &str, Properties<'_>)],
) -> TestBroker {
    let b = TestBroker::open(dir, messaging_config(), Loops::Stopped);
    create_topic(&b.broker, TOPIC, 1, MessageType::Normal);
    create_group(&b.broker, GROUP, 16, &[20]);
    for (body, tag, properties) in messages {
        let m = SendMessage {
            tag: tag.to_string(),
            properties: properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..message(TOPIC, body)
        };
        send(&b.broker, m).await.unwrap();
    }
    b
}

#[tokio::test]
async fn a_tag_filter_delivers_only_its_tags_and_passes_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let none: Properties = &[];
    let b = broker_holding(
        dir.path(),
        &[
            ("1", "created", none),
            ("2", "updated", none),
            ("3", "deleted", none),
            ("4", "created", none),
            ("5", "", none),
            ("6", "Created", none),
        ],
    )
    .await;
    let filter = FilterSpec::tags("created || deleted");
    let consumer = subscribe_with(&b.broker, GROUP, TOPIC, "c1", filter, "");
    let leased = lease_all(&b.broker, &consumer).await;
    assert_eq!(bodies(&leased), ["1", "3", "4"]);
    assert!(leased.iter().all(|d| d.attempt == 1));
    ack_all(&b.broker, &consumer, &leased);
    // The filtered-out messages are done for the group.
    let offsets = query_offset(&b.broker, GROUP, TOPIC, 0);
    assert_eq!((offsets.committed, offsets.max_offset), (6, 6));
    assert!(lease_all(&b.broker, &consumer).await.is_empty());
    b.close().await;
}

#[tokio::test]
async fn a_sql_filter_matches_properties_and_tags() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker_holding(
        dir.path(),
        &[
            ("eu-big", "order", &[("region", "eu"), ("amount", "120")]),
            ("eu-small", "order", &[("region", "eu"), ("amount", "9")]),
            ("us-big", "order", &[("region", "us"), ("amount", "500")]),
            ("eu-no-amount", "order", &[("region", "eu")]),
            (
                "eu-big-refund",
                "refund",
                &[("region", "eu"), ("amount", "11")],
            ),
            ("eu-edge", "order", &[("region", "eu"), ("amount", "10.5")]),
        ],
    )
    .await;
    let filter = FilterSpec::sql("region = 'eu' AND amount > 10 AND TAGS <> 'refund'");
    let consumer = subscribe_with(&b.broker, GROUP, TOPIC, "c1", filter, "");
    let leased = lease_all(&b.broker, &consumer).await;
    assert_eq!(bodies(&leased), ["eu-big", "eu-edge"]);
    ack_all(&b.broker, &consumer, &leased);
    assert_eq!(query_offset(&b.broker, GROUP, TOPIC, 0).committed, 6);
    b.close().await;
}

#[tokio::test]
async fn messages_sent_after_subscribing_are_filtered_too() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker_holding(dir.path(), &[]).await;
    let filter = FilterSpec::sql("priority IN ('high', 'urgent')");
    let consumer = subscribe_with(&b.broker, GROUP, TOPIC, "c1", filter, "");
    assert!(lease_all(&b.broker, &consumer).await.is_empty());
    for (body, priority) in [("a", "low"), ("b", "urgent"), ("c", "high"), ("d", "")] {
        let m = SendMessage {
            properties: vec![("priority".into(), priority.into())],
            ..message(TOPIC, body)
        };
        send(&b.broker, m).await.unwrap();
    }
    assert_eq!(bodies(&lease_all(&b.broker, &consumer).await), ["b", "c"]);
    b.close().await;
}

#[tokio::test]
async fn a_filtered_pull_skips_non_matching_messages_and_moves_past_them() {
    let dir = tempfile::tempdir().unwrap();
    let none: Properties = &[];
    let b = broker_holding(
        dir.path(),
        &[
            ("1", "a", none),
            ("2", "b", none),
            ("3", "a", none),
            ("4", "b", none),
        ],
    )
    .await;
    let pulled = pull_filtered(&b.broker, TOPIC, 0, 0, &FilterSpec::tags("b")).await;
    assert_eq!(bodies(&pulled.deliveries), ["2", "4"]);
    assert_eq!(pulled.next_offset, 4);
    let none_match = pull_filtered(&b.broker, TOPIC, 0, 0, &FilterSpec::tags("c")).await;
    assert!(none_match.deliveries.is_empty());
    assert_eq!(none_match.next_offset, 4);
    b.close().await;
}
