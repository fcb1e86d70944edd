//! Tables over a temporary directory: replay, compaction, damage, concurrency.

use super::*;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    name: String,
    value: u32,
}

impl Named for Entry {
    fn name(&self) -> &str {
        &self.name
    }
}

fn put(table: &Table<Entry>, name: &str, value: u32) {
    let entry = Entry {
        name: name.into(),
        value,
    };
    table
        .update(|_| Ok(Decision::change(Change::Put(entry), ())))
        .unwrap();
}

fn delete(table: &Table<Entry>, name: &str) {
    table
        .update(|_| Ok(Decision::change(Change::Delete(name.to_string()), ())))
        .unwrap();
}

fn values(table: &Table<Entry>) -> Vec<(String, u32)> {
    table
        .list()
        .into_iter()
        .map(|e| (e.name, e.value))
        .collect()
}

#[test]
fn changes_replay_after_reopen_and_write_one_record_each() {
    let dir = tempfile::tempdir().unwrap();
    let table = Table::<Entry>::open(dir.path(), "t").unwrap();
    for i in 0..100 {
        put(&table, &format!("e{i:03}"), i);
    }
    put(&table, "e000", 7);
    delete(&table, "e001");
    drop(table);
    let log = std::fs::metadata(dir.path().join("t.log")).unwrap().len();
    assert!(
        log < 102 * 64,
        "journal of 102 small changes is {log} bytes"
    );
    assert!(!dir.path().join("t.json").exists());
    let table = Table::<Entry>::open(dir.path(), "t").unwrap();
    assert_eq!(table.count(), 99);
    assert_eq!(table.get("e000").unwrap().value, 7);
    assert_eq!(table.get("e001"), None);
    assert_eq!(table.get("e099").unwrap().value, 99);
}

#[test]
fn a_snapshot_without_journal_loads_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("t.json"),
        r#"[{"name":"a","value":1},{"name":"b","value":2}]"#,
    )
    .unwrap();
    let table = Table::<Entry>::open(dir.path(), "t").unwrap();
    assert_eq!(values(&table), vec![("a".into(), 1), ("b".into(), 2)]);
    put(&table, "c", 3);
    delete(&table, "a");
    drop(table);
    let table = Table::<Entry>::open(dir.path(), "t").unwrap();
    assert_eq!(values(&table), vec![("b".into(), 2), ("c".into(), 3)]);
}

#[test]
fn compaction_moves_the_journal_into_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let table = Table::<Entry>::open_compacting_at(dir.path(), "t", 1024).unwrap();
    for i in 0..200 {
        put(&table, &format!("e{i:03}"), i);
        put(&table, &format!("e{i:03}"), i + 1);
    }
    let log = std::fs::metadata(dir.path().join("t.log")).unwrap().len();
    let snapshot = std::fs::metadata(dir.path().join("t.json")).unwrap().len();
    assert!(
        log <= snapshot.max(1024) + 64,
        "log {log}, snapshot {snapshot}"
    );
    assert!(!dir.path().join("t.log.old").exists());
    drop(table);
    let table = Table::<Entry>::open(dir.path(), "t").unwrap();
    assert_eq!(table.count(), 200);
    assert_eq!(table.get("e199").unwrap().value, 200);
}

#[test]
fn an_interrupted_compaction_is_finished_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let table = Table::<Entry>::open(dir.path(), "t").unwrap();
    put(&table, "a", 1);
    put(&table, "b", 2);
    drop(table);
    // A crash after the rotation, before the snapshot was written.
    std::fs::rename(dir.path().join("t.log"), dir.path().join("t.log.old")).unwrap();
    let table = Table::<Entry>::open(dir.path(), "t").unwrap();
    put(&table, "c", 3);
    assert!(!dir.path().join("t.log.old").exists());
    drop(table);
    let table = Table::<Entry>::open(dir.path(), "t").unwrap();
    assert_eq!(
        values(&table),
        vec![("a".into(), 1), ("b".into(), 2), ("c".into(), 3)]
    );
}

#[test]
fn a_torn_tail_is_dropped_and_appends_continue_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let table = Table::<Entry>::open(dir.path(), "t").unwrap();
    put(&table, "a", 1);
    put(&table, "b", 2);
    drop(table);
    let path = dir.path().join("t.log");
    let full = std::fs::read(&path).unwrap();
    // The last record cut in the middle, then the same with a zeroed tail.
    for torn in [
        full[..full.len() - 5].to_vec(),
        [&full[..full.len() - 5], &[0u8; 64][..]].concat(),
    ] {
        std::fs::write(&path, &torn).unwrap();
        let table = Table::<Entry>::open(dir.path(), "t").unwrap();
        assert_eq!(values(&table), vec![("a".into(), 1)]);
        put(&table, "c", 3);
        drop(table);
        let table = Table::<Entry>::open(dir.path(), "t").unwrap();
        assert_eq!(values(&table), vec![("a".into(), 1), ("c".into(), 3)]);
        drop(table);
        std::fs::write(&path, &full).unwrap();
    }
}

#[test]
fn a_damaged_middle_record_refuses_to_open_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let table = Table::<Entry>::open(dir.path(), "t").unwrap();
    put(&table, "a", 1);
    put(&table, "b", 2);
    put(&table, "c", 3);
    drop(table);
    let path = dir.path().join("t.log");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[MAGIC.len() + RECORD_HEADER + 3] ^= 0x55; // in the first payload
    std::fs::write(&path, &bytes).unwrap();
    let err = Table::<Entry>::open(dir.path(), "t")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("t.log") && err.contains("valid records follow"),
        "{err}"
    );
    std::fs::write(&path, b"not a journal at all").unwrap();
    let err = Table::<Entry>::open(dir.path(), "t")
        .unwrap_err()
        .to_string();
    assert!(err.contains("t.log") && err.contains("bad magic"), "{err}");
}

#[test]
fn an_entry_too_large_to_replay_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let table = Table::<Entry>::open(dir.path(), "t").unwrap();
    let huge = Entry {
        name: "x".repeat(MAX_RECORD),
        value: 1,
    };
    let err = table
        .update(|_| Ok(Decision::change(Change::Put(huge), ())))
        .unwrap_err();
    assert_eq!(err.code(), dduomq_proto::Reason::InvalidArgument);
    assert!(err.to_string().len() < 200, "{err}");
    assert_eq!(table.count(), 0);
}

#[test]
fn concurrent_changes_share_syncs_and_all_survive() {
    let dir = tempfile::tempdir().unwrap();
    let table = Arc::new(Table::<Entry>::open(dir.path(), "t").unwrap());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let table = table.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    put(&table, &format!("t{t}-{i}"), i);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(table);
    assert_eq!(Table::<Entry>::open(dir.path(), "t").unwrap().count(), 400);
}
