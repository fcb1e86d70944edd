//! Rounds against the fake API server (records are compare-and-swapped as the
//! real one does) with members that cannot be reached (nothing listens on
//! their port): the master is never renewed, so these tests show the fence
//! wait, what a lost compare-and-swap does and what a stalled record read
//! does. The clock is the test's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::Method;
use serde_json::json;

use super::*;
use crate::replication::timing::RECORD_CALL_TIMEOUT;
use crate::test_support::NAMESPACE;
use crate::test_support::fake_api::FakeApi;

const LEASE: Duration = Duration::from_millis(6000);
const MARGIN: Duration = Duration::from_millis(1000);

fn timing() -> RoundTiming {
    RoundTiming {
        election: ElectionTiming {
            leader_since: Duration::ZERO,
            lease: LEASE,
            margin: MARGIN,
        },
        call_timeout: Duration::from_millis(300),
    }
}

/// Three ready members nobody answers for (port 1 refuses connections).
fn members() -> Vec<Member> {
    (0..3)
        .map(|member| Member {
            member,
            endpoint: BrokerEndpoint {
                name: format!("dduomq-broker-{member}"),
                address: "127.0.0.1:1".into(),
                ready: true,
                broker_id: member,
            },
        })
        .collect()
}

/// A controller that has each member's BrokerInfo (empty members on stores
/// `0x100 + member`, as a new group's report before the first election),
/// since nobody answers it here: only members that reported are elected.
fn controller(api: &FakeApi) -> GroupController {
    let store = RecordStore::new(api.client(), NAMESPACE, "dduomq-broker", 0, 3);
    let mut group = GroupController::new(0, 3, store, BrokerPool::default());
    for member in 0..3 {
        let state = pb::ReplicaState {
            member,
            store_id: 0x100 + u64::from(member),
            ..Default::default()
        };
        group.reports.insert(member, report(&state));
    }
    group
}

fn record_data(api: &FakeApi) -> serde_json::Value {
    let path = format!("/api/v1/namespaces/{NAMESPACE}/configmaps/dduomq-broker-group-0");
    api.object(&path).expect("the group's ConfigMap")["data"].clone()
}

#[tokio::test]
async fn a_silent_master_is_replaced_only_after_its_fencing_deadline() {
    let api = FakeApi::new(Vec::new());
    let mut group = controller(&api);
    let clock = Arc::new(AtomicU64::new(0));
    let now = {
        let clock = clock.clone();
        move || Duration::from_millis(clock.load(Ordering::SeqCst))
    };
    let (members, timing) = (members(), timing());
    let at = |ms: u64| clock.store(ms, Ordering::SeqCst);

    // A new group: the first election needs no fence (nobody was master).
    let first = group.round(&members, &timing, &now).await.unwrap();
    let elected = GroupRecord {
        master: Some(0),
        epoch: 1,
        in_sync: vec![0, 1, 2],
        in_sync_version: 1,
        master_store: Some(0x100),
        in_sync_stores: BTreeMap::from([(0, 0x100), (1, 0x101), (2, 0x102)]),
    };
    assert_eq!(first, RoundOutcome::Elected(elected));
    assert_eq!(
        record_data(&api),
        json!({
            "master": "0",
            "epoch": "1",
            "inSync": "0,1,2",
            "inSyncVersion": "1",
            "masterStore": "0000000000000100",
            "inSyncStores": "0:0000000000000100,1:0000000000000101,2:0000000000000102"
        })
    );
    assert_eq!(
        group.state(),
        &GroupState::Serving {
            master: 0,
            epoch: 1
        }
    );

    // No answer of the new epoch from it yet: a controller that just took
    // over does not call it before one full lease (and margin) after it
    // started leading (its predecessor may have granted a lease).
    at(1000);
    assert_eq!(
        group.round(&members, &timing, &now).await.unwrap(),
        RoundOutcome::Fenced {
            elect_at: Duration::from_millis(7000)
        }
    );
    // Then it is renewed for a lease; the attempt, unanswered, ends at
    // 7000 ms and moves the fencing deadline to 7000 + lease + margin.
    at(7000);
    assert_eq!(
        group.round(&members, &timing, &now).await.unwrap(),
        RoundOutcome::Renewed
    );
    // It never answered within that lease: fenced, no longer called, and
    // nobody elected before 14000 ms.
    for ms in [13000, 13500, 13999] {
        at(ms);
        assert_eq!(
            group.round(&members, &timing, &now).await.unwrap(),
            RoundOutcome::Fenced {
                elect_at: Duration::from_millis(14000)
            },
            "at {ms} ms"
        );
        assert_eq!(group.state(), &GroupState::Masterless);
        assert_eq!(record_data(&api)["epoch"], "1", "at {ms} ms");
    }
    at(14000);
    let next = GroupRecord {
        master: Some(1),
        epoch: 2,
        in_sync: vec![1, 2],
        in_sync_version: 2,
        master_store: Some(0x101),
        in_sync_stores: BTreeMap::from([(1, 0x101), (2, 0x102)]),
    };
    assert_eq!(
        group.round(&members, &timing, &now).await.unwrap(),
        RoundOutcome::Elected(next)
    );
    assert_eq!(
        record_data(&api),
        json!({
            "master": "1",
            "epoch": "2",
            "inSync": "1,2",
            "inSyncVersion": "2",
            "masterStore": "0000000000000101",
            "inSyncStores": "1:0000000000000101,2:0000000000000102"
        })
    );
}

#[tokio::test]
async fn a_lost_compare_and_swap_rereads_and_decides_from_the_winner() {
    let api = FakeApi::new(Vec::new());
    let mut group = controller(&api);
    // Another operator records master 2 of epoch 7 between this round's read
    // and its write.
    api.before_next_write(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "dduomq-broker-group-0", "namespace": NAMESPACE},
        "data": {"master": "2", "epoch": "7", "inSync": "0,2", "inSyncVersion": "9"},
    }));
    let outcome = group
        .round(&members(), &timing(), &|| Duration::ZERO)
        .await
        .unwrap();
    // The winner's master has not answered as master of epoch 7 yet: this
    // controller, just started, does not call it before a full lease.
    assert_eq!(
        outcome,
        RoundOutcome::Fenced {
            elect_at: LEASE + MARGIN
        }
    );
    assert_eq!(
        record_data(&api),
        json!({"master": "2", "epoch": "7", "inSync": "0,2", "inSyncVersion": "9"}),
        "the losing write changed nothing"
    );
    assert_eq!(group.state(), &GroupState::Masterless);
    let writes: Vec<String> = api
        .sent()
        .iter()
        .filter(|s| s.method != axum::http::Method::GET)
        .map(|s| format!("{} {}", s.method, s.target))
        .collect();
    assert_eq!(
        writes,
        vec![format!("POST /api/v1/namespaces/{NAMESPACE}/configmaps?")],
        "one create, lost; the winner's record is not overwritten"
    );
}

#[tokio::test]
async fn a_hung_record_read_renews_the_last_record_within_the_read_timeout() {
    let api = FakeApi::new(Vec::new());
    let mut group = controller(&api);
    let now = || Duration::ZERO;
    let (members, timing) = (members(), timing());
    let elected = group.round(&members, &timing, &now).await.unwrap();
    assert!(matches!(elected, RoundOutcome::Elected(_)), "{elected:?}");

    // The API server stops answering GETs of the record.
    let path = format!("/api/v1/namespaces/{NAMESPACE}/configmaps/dduomq-broker-group-0");
    api.hold_reads(&path);
    let started = std::time::Instant::now();
    assert_eq!(
        group.round(&members, &timing, &now).await.unwrap(),
        RoundOutcome::RenewedLastKnown
    );
    let took = started.elapsed();
    // The read's bound, then the assignments (refused at once here, bounded
    // by the call timeout).
    assert!(
        took >= RECORD_CALL_TIMEOUT && took < RECORD_CALL_TIMEOUT + timing.call_timeout,
        "the round took {took:?}"
    );
    let last = api.sent().pop().expect("a request");
    assert_eq!((last.method, last.target), (Method::GET, path));
    assert_eq!(
        group.state(),
        &GroupState::Serving {
            master: 0,
            epoch: 1
        }
    );
    assert_eq!(
        record_data(&api),
        json!({
            "master": "0",
            "epoch": "1",
            "inSync": "0,1,2",
            "inSyncVersion": "1",
            "masterStore": "0000000000000100",
            "inSyncStores": "0:0000000000000100,1:0000000000000101,2:0000000000000102"
        })
    );
}
