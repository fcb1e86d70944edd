//! Consumers' view of a replicated store under quorum acks (review finding
//! 8): reads and queue ends stop at the acknowledged end; internal reads and
//! topics acknowledged by the master alone see everything; without a limit
//! (standalone) nothing changes.

mod common;

use common::{config, message};
use dduomq_broker::store::{Appended, Store, Visibility};

const TOPIC: &str = "orders";

async fn append(store: &Store, body: &[u8]) -> Appended {
    let mut appended = store
        .append(vec![message(TOPIC, 0, body, &[], "")])
        .await
        .unwrap();
    appended.remove(0)
}

fn bodies(store: &Store, offset: u64) -> Vec<Vec<u8>> {
    let read = store
        .read_visible(TOPIC, 0, offset, 100, 1 << 20, Visibility::Acknowledged)
        .unwrap();
    read.records.iter().map(|r| r.body.to_vec()).collect()
}

#[tokio::test]
async fn consumers_read_below_the_acknowledged_end_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    let first = append(&store, b"one").await;
    assert_eq!(bodies(&store, 0), [b"one".to_vec()], "no limit: all");

    store.hide_unacknowledged();
    let second = append(&store, b"two").await;
    let third = append(&store, b"three").await;
    assert_eq!(bodies(&store, 0), Vec::<Vec<u8>>::new());
    assert_eq!(
        store.visible_offsets(TOPIC, 0, Visibility::Acknowledged),
        (0, 0)
    );
    assert_eq!(store.queue_offsets(TOPIC, 0), (0, 3), "internal view");
    assert_eq!(
        store.visible_offsets(TOPIC, 0, Visibility::Stored),
        (0, 3),
        "a topic under ack policy master"
    );
    let stored = store
        .read_visible(TOPIC, 0, 0, 100, 1 << 20, Visibility::Stored)
        .unwrap();
    assert_eq!(stored.records.len(), 3);

    store.acknowledged_to(second.physical_offset);
    assert_eq!(bodies(&store, 0), [b"one".to_vec()]);
    let read = store
        .read_visible(TOPIC, 0, 1, 100, 1 << 20, Visibility::Acknowledged)
        .unwrap();
    assert_eq!(
        (read.records.len(), read.next_offset, read.max_offset),
        (0, 1, 1)
    );
    assert!(
        store
            .read_visible(TOPIC, 0, 2, 1, 1 << 20, Visibility::Acknowledged)
            .is_err()
    );

    let arrivals = store.subscribe();
    store.acknowledged_to(third.physical_offset);
    assert!(arrivals.has_changed().unwrap(), "waiting readers are woken");
    assert_eq!(bodies(&store, 1), [b"two".to_vec()]);
    store.acknowledged_to(first.physical_offset);
    assert_eq!(
        store.visible_offsets(TOPIC, 0, Visibility::Acknowledged),
        (0, 2),
        "never back"
    );

    // A truncation cuts what lay past it; re-appended records wait for
    // their acknowledgement again.
    store.truncate_log(second.physical_offset).await.unwrap();
    let again = append(&store, b"two again").await;
    assert_eq!(again.physical_offset, second.physical_offset);
    assert_eq!(bodies(&store, 0), [b"one".to_vec()]);
    store.acknowledged_to(store.log_end());
    assert_eq!(bodies(&store, 1), [b"two again".to_vec()]);
}
