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
