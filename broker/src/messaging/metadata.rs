//! Small JSON metadata files (topics, groups, consumer progress), replaced
//! atomically: write a temporary file, fsync it, rename it over the old one.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::store::{StoreError, sync_dir};

/// Reads `path`, or returns the default when it does not exist yet.
pub fn load<T: DeserializeOwned + Default>(path: &Path) -> Result<T, StoreError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            offset: 0,
            reason: format!("{}: {e}", path.display()),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(StoreError::io(format!("reading {}", path.display()), e)),
    }
}

/// [`load`] for a file derived from the commit log (its state is rebuilt by
/// scanning the log from the position it saved): a damaged one counts as
/// missing, so the scan starts at the oldest segment and rebuilds all of it.
pub fn load_derived<T: DeserializeOwned + Default>(path: &Path) -> Result<T, StoreError> {
    match load(path) {
        Err(StoreError::Corrupt { reason, .. }) => {
            tracing::error!(%reason, "damaged; rebuilding it from the commit log");
            Ok(T::default())
        }
        other => other,
    }
}

/// Atomically replaces `path` with `value` as JSON.
pub fn save<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    save_bytes(path, &to_json(value))
}

/// `value` as the JSON [`save_bytes`] writes. Callers holding a lock serialize
/// under it and write after releasing it: the write ends with two fsyncs.
pub fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec_pretty(value).expect("metadata serializes")
}

/// Atomically replaces `path` with `bytes`.
pub fn save_bytes(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().expect("metadata files live in a directory");
    std::fs::create_dir_all(dir)
        .map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
    let tmp = path.with_extension("json.tmp");
    let ctx = |e| StoreError::io(format!("writing {}", tmp.display()), e);
    let mut f = File::create(&tmp).map_err(ctx)?;
    f.write_all(bytes).map_err(ctx)?;
    f.sync_data().map_err(ctx)?;
    std::fs::rename(&tmp, path).map_err(ctx)?;
    sync_dir(dir)
}
