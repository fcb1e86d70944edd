//! Unit tests of the staged-message bookkeeping: the startup scan, claims,
//! checks and the scan floor.

use super::*;
use crate::messaging::properties::{
    DELIVER_AT, ORIGIN_ID, PRODUCER_GROUP, PRODUCER_ID, REAL_QUEUE, REAL_TOPIC, RESOLUTION,
    SEQUENCE,
};
use crate::store::RecordFlags;

fn props(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A record of the startup scan at `physical` in `topic`.
fn record(topic: &str, physical: u64, properties: &[(&str, &str)]) -> Record {
    Record {
        topic: topic.to_string(),
        queue_id: 0,
        queue_offset: 0,
        physical_offset: physical,
        born_timestamp: 1,
        store_timestamp: 1_000,
        flags: RecordFlags(0),
        tag: String::new(),
        keys: Vec::new(),
        properties: props(properties),
        body: Default::default(),
        crc: physical as u32 + 7,
        size: 100,
    }
}

fn position(physical: u64) -> Position {
    Position {
        physical,
        crc: physical as u32 + 7,
    }
}

fn origin(physical: u64) -> String {
    MessageId {
        broker_id: 1,
        physical_offset: physical,
        crc: physical as u32 + 7,
    }
    .to_string()
}

fn staged() -> (tempfile::TempDir, Staged) {
    let dir = tempfile::tempdir().unwrap();
    let (staged, scan_from) = Staged::open(dir.path().join("staged.json")).unwrap();
    assert_eq!(scan_from, 0, "nothing saved yet");
    (dir, staged)
}

fn half_record(physical: u64) -> Record {
    record(
        HALF_TOPIC,
        physical,
        &[
            (REAL_TOPIC.name, "t"),
            (REAL_QUEUE.name, "2"),
            (PRODUCER_GROUP.name, "pg"),
        ],
    )
}

#[test]
fn properties_name_the_target_and_the_delivery_time() {
    let p = props(&[
        (REAL_TOPIC.name, "orders"),
        (REAL_QUEUE.name, "3"),
        (DELIVER_AT.name, "99"),
    ]);
    assert_eq!(properties::staged_target(&p), Some(("orders", 3)));
    assert_eq!(properties::deliver_at(&p), 99);
    assert_eq!(
        properties::staged_target(&props(&[(REAL_TOPIC.name, "orders")])),
        None
    );
    assert_eq!(
        properties::staged_target(&props(&[
            (REAL_TOPIC.name, "orders"),
            (REAL_QUEUE.name, "x")
        ])),
        None
    );
    assert_eq!(
        properties::deliver_at(&props(&[(DELIVER_AT.name, "soon")])),
        0
    );
    assert_eq!(properties::deliver_at(&[]), 0);
}

#[test]
fn a_released_copy_keeps_the_producers_properties_and_names_its_origin() {
    let rec = record(
        DELAY_TOPIC,
        64,
        &[
            ("color", "red"),
            (REAL_TOPIC.name, "t"),
            (REAL_QUEUE.name, "0"),
            (DELIVER_AT.name, "5"),
            (PRODUCER_GROUP.name, "pg"),
            (PRODUCER_ID.name, "p"),
            (SEQUENCE.name, "1"),
        ],
    );
    let id = origin(64).parse().unwrap();
    assert_eq!(
        released_properties(&rec, &id),
        props(&[
            ("color", "red"),
            (DELIVER_AT.name, "5"),
            (ORIGIN_ID.name, &origin(64))
        ])
    );
    let m = marker(&id, "rollback");
    assert_eq!(m.topic, RESOLVED_TOPIC);
    assert_eq!(m.keys, [origin(64)], "the key index finds it by its origin");
    assert_eq!(
        m.properties,
        props(&[(ORIGIN_ID.name, &origin(64)), (RESOLUTION.name, "rollback")])
    );
}

#[test]
fn the_scan_keeps_only_delayed_messages_without_a_copy() {
    let (_dir, staged) = staged();
    staged.recover(&record(DELAY_TOPIC, 100, &[(DELIVER_AT.name, "50")]), 0);
    staged.recover(&record(DELAY_TOPIC, 200, &[(DELIVER_AT.name, "40")]), 0);
    // 100 was released before the restart.
    staged.recover(&record("t", 300, &[(ORIGIN_ID.name, &origin(100))]), 0);
    assert_eq!(staged.delayed_pending(), 1);
    assert_eq!(staged.take_due(39), []);
    // The wheel still fires 100's time; only 200 is due.
    assert_eq!(staged.take_due(60), [position(200)]);
    staged.delivered(200);
    assert_eq!(staged.delayed_pending(), 0);
    assert_eq!(staged.sleep_until(), None);
}

/// A replica feeds every record but releases nothing: fed twice, a delayed
/// message is due once; entries whose release arrived leave the wheel, the
/// one still pending stays due; its own calls (a demoted master's release
/// failing late) change nothing.
#[test]
fn a_replica_schedules_a_message_fed_twice_once_and_prunes_released_ones() {
    let (_dir, staged) = staged();
    staged.follow_log();
    for physical in [100, 200, 100] {
        staged.recover(
            &record(DELAY_TOPIC, physical, &[(DELIVER_AT.name, "50")]),
            0,
        );
    }
    staged.recover(&record("t", 300, &[(ORIGIN_ID.name, &origin(100))]), 0);
    staged.prune_released(60);
    assert_eq!(staged.take_due(60), [], "a replica releases nothing");
    assert_eq!(
        staged.delayed_pending(),
        0,
        "nothing for a replica to release"
    );
    staged.retry_delayed(position(200), 65);
    staged.add_delayed(position(400), 65);
    staged.delivered(200);
    assert_eq!(
        staged.state.lock().wheel.len(),
        1,
        "only 200's entry is left"
    );
    // Promoted: the pending one is released, once.
    staged.keep_own_writes();
    assert_eq!(staged.delayed_pending(), 1);
    assert_eq!(staged.take_due(70), [position(200)]);
    assert_eq!(staged.take_due(80), []);
}

/// A replica resolves no transaction: a claim finds it being resolved (by
/// the master), and a half added or given back by a demoted master's late
/// work is not kept, so a commit that arrives through the log ends it.
#[test]
fn a_replica_claims_no_transaction_and_keeps_only_what_its_log_says() {
    let (_dir, staged) = staged();
    staged.follow_log();
    staged.recover(&half_record(100), 0);
    assert!(matches!(staged.claim(position(100)), Claim::Resolving));
    staged.unclaim(Half::new(position(500), "t", "pg", 0));
    staged.add_half(Half::new(position(600), "t", "pg", 0));
    assert_eq!(staged.due_checks(i64::MAX, 1, 3), (vec![], vec![]));
    staged.recover(&record("t", 300, &[(ORIGIN_ID.name, &origin(100))]), 0);
    staged.keep_own_writes();
    assert_eq!(staged.halves_pending(), 0);
    assert!(matches!(
        staged.claim(position(100)),
        Claim::Resolved(Resolution::Commit)
    ));
    assert!(matches!(staged.claim(position(500)), Claim::Unknown));
}

#[test]
fn the_scan_restores_pending_halves_and_remembers_resolved_ones() {
    let (_dir, staged) = staged();
    for physical in [100, 200, 300] {
        staged.recover(&half_record(physical), 5_000);
    }
    staged.recover(&record("t", 400, &[(ORIGIN_ID.name, &origin(100))]), 5_000);
    staged.recover(
        &record(
            RESOLVED_TOPIC,
            500,
            &[
                (ORIGIN_ID.name, &origin(200)),
                (RESOLUTION.name, "rollback"),
            ],
        ),
        5_000,
    );
    assert_eq!(staged.halves_pending(), 1);
    assert!(matches!(
        staged.claim(position(100)),
        Claim::Resolved(Resolution::Commit)
    ));
    assert!(matches!(
        staged.claim(position(200)),
        Claim::Resolved(Resolution::Rollback)
    ));
    let Claim::Pending(half) = staged.claim(position(300)) else {
        panic!("300 is unresolved");
    };
    assert_eq!(half, Half::new(position(300), "t", "pg", 6_000));
}

#[test]
fn a_claim_is_exclusive_until_resolved_or_given_back() {
    let (_dir, staged) = staged();
    staged.add_half(Half::new(position(100), "t", "pg", 0));
    let wrong_crc = Position {
        physical: 100,
        crc: 1,
    };
    assert!(matches!(staged.claim(wrong_crc), Claim::Unknown));
    let Claim::Pending(half) = staged.claim(position(100)) else {
        panic!("pending");
    };
    assert!(matches!(staged.claim(position(100)), Claim::Resolving));
    staged.unclaim(half);
    assert!(matches!(staged.claim(position(100)), Claim::Pending(_)));
    staged.resolved(position(100), Resolution::Commit);
    assert!(matches!(
        staged.claim(position(100)),
        Claim::Resolved(Resolution::Commit)
    ));
    assert!(matches!(staged.claim(wrong_crc), Claim::Unknown));
}

#[test]
fn checks_are_numbered_and_the_last_one_leads_to_rollback() {
    let (_dir, staged) = staged();
    staged.add_half(Half::new(position(100), "t", "pg", 1_000));
    staged.add_half(Half::new(position(200), "t", "pg", 5_000));
    assert_eq!(staged.due_checks(999, 100, 2), (vec![], vec![]));
    let (checks, expired) = staged.due_checks(1_000, 100, 2);
    assert_eq!(
        checks
            .iter()
            .map(|(h, a)| (h.position, *a))
            .collect::<Vec<_>>(),
        [(position(100), 1)]
    );
    assert!(expired.is_empty());
    // Not again before the interval.
    assert_eq!(staged.due_checks(1_099, 100, 2), (vec![], vec![]));
    let (checks, _) = staged.due_checks(1_100, 100, 2);
    assert_eq!(checks[0].1, 2);
    let (checks, expired) = staged.due_checks(1_200, 100, 2);
    assert!(checks.is_empty());
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].position, position(100));
    assert_eq!(expired[0].checks, 2);
    // Claimed for the rollback: the position stays under the floor.
    assert!(matches!(staged.claim(position(100)), Claim::Resolving));
    assert_eq!(staged.floor(10_000), 100);
    assert_eq!(staged.halves_pending(), 1);
}

#[test]
fn the_floor_stays_below_everything_unresolved_and_is_saved_when_it_moves() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("staged.json");
    let (staged, _) = Staged::open(path.clone()).unwrap();
    assert_eq!(staged.floor(1_000), 1_000);
    staged.begin_append(900);
    staged.add_delayed(position(950), 10);
    assert_eq!(staged.floor(1_000), 900);
    staged.end_append(900);
    assert_eq!(staged.floor(1_000), 950);
    staged.add_half(Half::new(position(920), "t", "pg", 0));
    assert_eq!(staged.floor(1_000), 920);
    staged.save(1_000).unwrap();
    assert_eq!(Staged::open(path.clone()).unwrap().1, 920);
    let Claim::Pending(_) = staged.claim(position(920)) else {
        panic!("pending");
    };
    staged.resolved(position(920), Resolution::Rollback);
    staged.delivered(950);
    assert_eq!(staged.floor(1_000), 1_000);
    staged.save(1_000).unwrap();
    assert_eq!(Staged::open(path).unwrap().1, 1_000);
}
