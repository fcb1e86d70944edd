//! The store identity: a random 64-bit number drawn once, when the data
//! directory is first initialised (or, for a directory from before identities,
//! at its next open). It tells the controller whether a member still runs on
//! the data directory it was elected with: a member whose volume was replaced
//! comes back with a new identity, and must not be made master of an epoch
//! whose messages it no longer holds (its log would make the replicas cut
//! them).
//!
//! ```text
//!  STORE_ID   (little-endian; written once atomically: tmp, fsync, rename, dir fsync)
//!  +-----------+-------------+--------+------------+
//!  | magic u32 | version u32 | id u64 | crc32c u32 |
//!  +-----------+-------------+--------+------------+
//!  magic 0xDD0A_1D5E, version 1; crc32c covers everything before it; id != 0
//! ```
//! A damaged file stops the open with the file named: the identity derives
//! from nothing, and drawing a new one would hide that the directory is not
//! the one the controller recorded (nor would keeping a guessed one be true).

use std::path::Path;

use super::error::{Result, StoreError};
use super::mapped_file::replace_file;

const FILE: &str = "STORE_ID";
const MAGIC: u32 = 0xDD0A_1D5E;
const VERSION: u32 = 1;
const SIZE: usize = 20;

fn encode(id: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(SIZE);
    b.extend_from_slice(&MAGIC.to_le_bytes());
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&id.to_le_bytes());
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> std::result::Result<u64, String> {
    if b.len() != SIZE {
        return Err(format!("{} bytes, not {SIZE}", b.len()));
    }
    let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4"));
    if u32_at(0) != MAGIC || u32_at(4) != VERSION {
        return Err("bad magic or version".into());
    }
    if crc32c::crc32c(&b[..16]) != u32_at(16) {
        return Err("crc32c mismatch".into());
    }
    match u64::from_le_bytes(b[8..16].try_into().expect("8")) {
        0 => Err("identity 0".into()),
        id => Ok(id),
    }
}

/// The identity stored in `dir`, if any, read without writing; a damaged
/// file is refused with its name.
pub(crate) fn read(dir: &Path) -> Result<Option<u64>> {
    let path = dir.join(FILE);
    match std::fs::read(&path) {
        Ok(bytes) => decode(&bytes)
            .map(Some)
            .map_err(|problem| StoreError::Corrupt {
                offset: 0,
                reason: format!(
                    "{} is damaged ({problem}): a store identity cannot be rebuilt; rebuild \
                     this member's data directory from its group",
                    path.display()
                ),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io(format!("reading {}", path.display()), e)),
    }
}

/// `read`'s identity, or a new one drawn and stored durably (0 is never
/// drawn: it means "not checked" on the wire).
pub(crate) fn establish(dir: &Path, read: Option<u64>) -> Result<u64> {
    if let Some(id) = read {
        return Ok(id);
    }
    let id = loop {
        match rand::random::<u64>() {
            0 => continue,
            id => break id,
        }
    };
    replace_file(dir, FILE, &encode(id))?;
    tracing::info!(dir = %dir.display(), store_id = %format!("{id:016x}"), "new store identity");
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drawn_once_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let id = establish(dir.path(), None).unwrap();
        assert_ne!(id, 0);
        assert_eq!(read(dir.path()).unwrap(), Some(id));
        assert_eq!(establish(dir.path(), Some(id)).unwrap(), id);
        assert_eq!(read(dir.path()).unwrap(), Some(id));
    }

    #[test]
    fn a_damaged_file_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        establish(dir.path(), None).unwrap();
        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        for at in [0, 5, 9, SIZE - 1] {
            bytes[at] ^= 1;
            std::fs::write(&path, &bytes).unwrap();
            let err = read(dir.path()).unwrap_err().to_string();
            assert!(err.contains(&path.display().to_string()), "{err}");
            bytes[at] ^= 1;
        }
        std::fs::write(&path, &bytes[..SIZE - 1]).unwrap();
        assert!(read(dir.path()).is_err());
        assert_eq!(decode(&encode(0)), Err("identity 0".to_string()));
    }
}
