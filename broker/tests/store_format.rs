//! The data-format version file (`FORMAT`): a fresh directory is stamped with
//! the current format, a directory from before format versioning is read as
//! format 1 and stamped (but not by an open refused for its configuration),
//! and a newer or unreadable version file is refused with the file named and
//! nothing written.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{config, message, read_all, verify};
use dduomq_broker::store::{DATA_FORMAT, OpenedFormat, Store};
use dduomq_proto::Reason;

const CURRENT: &str = "dduomq-data-format 2\n";

fn format_file(dir: &Path) -> PathBuf {
    dir.join("FORMAT")
}

/// A closed store in `dir` holding one message.
fn store_with_a_message(dir: &Path) {
    let store = Store::open(config(dir)).unwrap();
    store
        .append_blocking(vec![message("t", 0, b"kept", &["k"], "tag")])
        .unwrap();
    store.close().unwrap();
}

/// Every file under `dir` (but the lock) with its bytes.
fn contents(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.file_name().unwrap() != "LOCK" {
                out.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, &mut out);
    out
}

#[test]
fn a_fresh_directory_is_stamped_with_the_current_format() {
    assert_eq!(CURRENT, format!("dduomq-data-format {DATA_FORMAT}\n"));
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    assert_eq!(store.opened_format(), OpenedFormat::Fresh);
    assert_eq!(
        std::fs::read(format_file(dir.path())).unwrap(),
        CURRENT.as_bytes()
    );
    assert!(!dir.path().join("FORMAT.tmp").exists());
    drop(store);
    let store = Store::open(config(dir.path())).unwrap();
    assert_eq!(store.opened_format(), OpenedFormat::Versioned(DATA_FORMAT));
}

#[test]
fn a_directory_without_a_version_file_is_format_1_and_is_stamped() {
    let dir = tempfile::tempdir().unwrap();
    store_with_a_message(dir.path());
    std::fs::remove_file(format_file(dir.path())).unwrap();

    let store = Store::open(config(dir.path())).unwrap();
    assert_eq!(store.opened_format(), OpenedFormat::Unversioned);
    assert_eq!(store.opened_format().version(), Some(1));
    assert_eq!(
        std::fs::read(format_file(dir.path())).unwrap(),
        CURRENT.as_bytes()
    );
    let records = read_all(&store, "t", 0);
    assert_eq!(records.len(), 1);
    assert_eq!(&records[0].body[..], b"kept");
    drop(store);

    let store = Store::open(config(dir.path())).unwrap();
    assert_eq!(store.opened_format(), OpenedFormat::Versioned(DATA_FORMAT));
}

#[test]
fn an_older_version_file_is_read_and_stamped() {
    let dir = tempfile::tempdir().unwrap();
    store_with_a_message(dir.path());
    std::fs::write(format_file(dir.path()), "dduomq-data-format 1\n").unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    assert_eq!(store.opened_format(), OpenedFormat::Versioned(1));
    assert_eq!(
        std::fs::read(format_file(dir.path())).unwrap(),
        CURRENT.as_bytes()
    );
}

#[test]
fn an_unversioned_directory_whose_open_is_refused_stays_unstamped() {
    let dir = tempfile::tempdir().unwrap();
    store_with_a_message(dir.path());
    std::fs::remove_file(format_file(dir.path())).unwrap();
    let before = contents(dir.path());

    let mut other_segment_size = config(dir.path());
    other_segment_size.segment_size_bytes *= 2;
    let err = Store::open(other_segment_size).unwrap_err();
    assert_eq!(err.code(), Reason::InvalidConfig);
    assert!(err.to_string().contains("segment_size_bytes"), "{err}");
    assert!(
        !format_file(dir.path()).exists(),
        "stamped by a refused open"
    );
    assert_eq!(contents(dir.path()), before, "the refused open wrote");

    let store = Store::open(config(dir.path())).unwrap();
    assert_eq!(store.opened_format(), OpenedFormat::Unversioned);
}

#[test]
fn a_newer_format_is_refused_naming_the_file_and_both_versions_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    store_with_a_message(dir.path());
    let newer = DATA_FORMAT + 1;
    std::fs::write(
        format_file(dir.path()),
        format!("dduomq-data-format {newer}\n"),
    )
    .unwrap();
    let before = contents(dir.path());

    let err = Store::open(config(dir.path())).unwrap_err();
    assert_eq!(err.code(), Reason::InvalidConfig);
    let text = err.to_string();
    let file = format_file(dir.path()).display().to_string();
    assert!(text.contains(&file), "{text:?} does not name {file}");
    assert!(
        text.contains(&format!("data format {newer}"))
            && text.contains(&format!("up to {DATA_FORMAT}")),
        "{text:?} does not give both versions"
    );
    assert_eq!(contents(dir.path()), before, "the refused open wrote");

    let (code, out) = verify(dir.path(), &config(dir.path()));
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("FORMAT") && out.contains(&format!("data format {newer}")),
        "{out}"
    );
}

#[test]
fn an_unreadable_version_file_is_refused_naming_the_file_and_nothing_is_written() {
    for damaged in [
        &b""[..],
        b"dduomq-data-format 2",
        b"dduomq-data-format two\n",
        b"dduomq-data-format 0\n",
        b"dduomq-data-format 2\ngarbage",
        b"\0\0\0\0\0\0\0\0",
        b"\xff\xfe",
    ] {
        let dir = tempfile::tempdir().unwrap();
        store_with_a_message(dir.path());
        std::fs::write(format_file(dir.path()), damaged).unwrap();
        let before = contents(dir.path());

        let err = Store::open(config(dir.path())).unwrap_err().to_string();
        let file = format_file(dir.path()).display().to_string();
        assert!(
            err.contains(&file),
            "{damaged:?}: {err:?} does not name {file}"
        );
        assert!(err.contains("unreadable"), "{damaged:?}: {err:?}");
        assert_eq!(
            contents(dir.path()),
            before,
            "{damaged:?}: the refused open wrote"
        );
    }
}

#[test]
fn verify_reports_the_data_format_and_the_one_found() {
    let dir = tempfile::tempdir().unwrap();
    store_with_a_message(dir.path());
    let (code, out) = verify(dir.path(), &config(dir.path()));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("data format: {DATA_FORMAT}\n")),
        "{out}"
    );

    std::fs::remove_file(format_file(dir.path())).unwrap();
    let (code, out) = verify(dir.path(), &config(dir.path()));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "data format: {DATA_FORMAT} (was 1, written before format versioning; upgraded)"
        )),
        "{out}"
    );
}
