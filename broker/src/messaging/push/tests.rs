//! A joining consumer against a CreateGroup that changes the group's declared
//! filter after [`Broker::subscribe`] checked the consumer's filter and
//! before the stream was registered: the interleaving is driven through the
//! `join` step, not timing.

use std::sync::Arc;

use crate::config::BrokerConfig;
use crate::filter::FilterSpec;
use crate::messaging::Broker;
use crate::messaging::groups::{ConsumeMode, GroupConfig, GroupSubscription};
use crate::store::{MessageType, Store, StoreConfig};

const TOPIC: &str = "events";
const GROUP: &str = "audit";

/// [`GROUP`] declaring the tag filter `tags` on [`TOPIC`].
fn declaring(broker: &Broker, tags: &str) -> GroupConfig {
    GroupConfig {
        subscriptions: vec![GroupSubscription {
            topic: TOPIC.into(),
            filter: FilterSpec::tags(tags),
        }],
        ..broker.default_group(GROUP, ConsumeMode::Clustering)
    }
}

#[test]
fn a_declaration_changed_between_the_check_and_the_join_is_the_filter_installed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(StoreConfig::for_tests(dir.path())).unwrap());
    let config = BrokerConfig::load(None).unwrap().broker;
    let broker = Broker::open(config, store, None).unwrap();
    broker.create_topic(TOPIC, 1, MessageType::Normal).unwrap();
    broker.upsert_group(declaring(&broker, "A")).unwrap();
    let group = broker.groups.get(GROUP).unwrap();

    let sub = broker
        .subscribe(GROUP, TOPIC, &FilterSpec::tags("A"), |checked| {
            // Accepted with A; the group now declares B.
            assert!(broker.upsert_group(declaring(&broker, "B")).unwrap());
            broker.join_stream(&group, TOPIC, "c1", 1, String::new(), checked)
        })
        .unwrap();
    let installed = sub.state.lock().filter.clone();
    assert_eq!(*installed, FilterSpec::tags("B").parse().unwrap());
}

/// A broker with one message on [`TOPIC`] and one consumer stream of
/// [`GROUP`] registered on it.
async fn one_message_and_a_consumer(
    dir: &std::path::Path,
) -> (Arc<Broker>, crate::messaging::ReceiveStream) {
    let store = Arc::new(Store::open(StoreConfig::for_tests(dir)).unwrap());
    let config = BrokerConfig::load(None).unwrap().broker;
    let broker = Arc::new(Broker::open(config, store, None).unwrap());
    broker.create_topic(TOPIC, 1, MessageType::Normal).unwrap();
    broker
        .send(vec![crate::messaging::SendMessage {
            topic: TOPIC.into(),
            body: bytes::Bytes::from_static(b"m"),
            ..Default::default()
        }])
        .await
        .unwrap();
    let stream = broker
        .open_receive(
            GROUP,
            TOPIC,
            "c1",
            ConsumeMode::Clustering,
            &FilterSpec::all(),
            String::new(),
        )
        .unwrap();
    (broker, stream)
}

fn limits() -> crate::messaging::ReceiveLimits {
    crate::messaging::ReceiveLimits {
        max_messages: 10,
        max_bytes: 1 << 20,
        invisible: std::time::Duration::from_secs(30),
    }
}

async fn lease_round(
    broker: &Broker,
    s: &crate::messaging::ReceiveStream,
) -> crate::messaging::LeaseRound {
    broker
        .lease(&s.subscription, s.consumer, limits(), 8)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_detached_consumer_leaves_its_leases_to_their_deadline_and_leases_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, s) = one_message_and_a_consumer(dir.path()).await;
    let round = lease_round(&broker, &s).await;
    assert_eq!(round.deliveries.len(), 1);
    broker.detach_receive(&s.subscription, s.consumer);
    assert!(!s.subscription.state.lock().has_consumers());
    // Still leased: its client may ack it.
    let handle = round.deliveries[0].receipt_handle.clone();
    let again = lease_round(&broker, &s).await;
    assert!(
        again.deliveries.is_empty(),
        "a detached consumer leases nothing"
    );
    assert!(
        !s.subscription.state.lock().has_consumers(),
        "nor comes back"
    );
    assert!(broker.ack(GROUP, TOPIC, &[handle])[0].is_ok());
}

#[tokio::test]
async fn a_closed_consumer_releases_what_it_held_and_leases_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, s) = one_message_and_a_consumer(dir.path()).await;
    let round = lease_round(&broker, &s).await;
    let handle = round.deliveries[0].receipt_handle.clone();
    broker.close_receive(&s.subscription, s.consumer).await;
    assert!(broker.ack(GROUP, TOPIC, &[handle])[0].is_err(), "released");
    let again = lease_round(&broker, &s).await;
    assert!(again.deliveries.is_empty());
    assert!(!s.subscription.state.lock().has_consumers());
}
