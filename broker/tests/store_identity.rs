//! The store identity (`STORE_ID`): drawn once, kept across restarts, given
//! to a directory from before identities at its next open, and a damaged
//! file stops the open with the file named (it cannot be rebuilt).

mod common;

use common::{config, message};
use dduomq_broker::store::Store;

#[test]
fn an_identity_is_drawn_once_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    let id = store.store_id();
    assert_ne!(id, 0);
    store
        .append_blocking(vec![message("t", 0, b"kept", &["k"], "tag")])
        .unwrap();
    store.close().unwrap();
    drop(store);
    let reopened = Store::open(config(dir.path())).unwrap();
    assert_eq!(reopened.store_id(), id);
    reopened.close().unwrap();
    drop(reopened);

    // A directory from before identities (no file) gets a new one.
    std::fs::remove_file(dir.path().join("STORE_ID")).unwrap();
    let upgraded = Store::open(config(dir.path())).unwrap();
    let new = upgraded.store_id();
    assert_ne!(new, id);
    assert_ne!(new, 0);
    upgraded.close().unwrap();
    drop(upgraded);
    assert_eq!(Store::open(config(dir.path())).unwrap().store_id(), new);
}

#[test]
fn a_damaged_identity_is_refused_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    Store::open(config(dir.path())).unwrap().close().unwrap();
    let path = dir.path().join("STORE_ID");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[10] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let err = Store::open(config(dir.path())).unwrap_err().to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("crc32c mismatch"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "left as it was");
}
