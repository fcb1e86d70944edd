//! The checkpoint: where recovery may start scanning the commit log.
//!
//! ```text
//!  checkpoint (32 bytes, little-endian), replaced atomically (write tmp, fsync, rename)
//!  +-----------+-------------+--------------------------+--------------------+-----------+---------+
//!  | magic u32 | version u32 | commit_log_flushed u64   | recover_from u64   | crc32c u32| pad u32 |
//!  +-----------+-------------+--------------------------+--------------------+-----------+---------+
//! ```
//! `recover_from` is a record boundary below which the commit log, every consume
//! queue and the key index were durable when the checkpoint was written.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use super::error::{Result, StoreError};
use super::mapped_file::sync_dir;

const MAGIC: u32 = 0xDD0A_C4E0;
const VERSION: u32 = 1;
const SIZE: usize = 32;
const FILE: &str = "checkpoint";

/// Durable positions recorded by the last checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Checkpoint {
    pub commit_log_flushed: u64,
    pub recover_from: u64,
}

impl Checkpoint {
    fn encode(&self) -> [u8; SIZE] {
        let mut b = [0u8; SIZE];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&VERSION.to_le_bytes());
        b[8..16].copy_from_slice(&self.commit_log_flushed.to_le_bytes());
        b[16..24].copy_from_slice(&self.recover_from.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..24]);
        b[24..28].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Reads the checkpoint; `None` when there is none yet (a new store).
    pub fn load(dir: &Path) -> Result<Option<Checkpoint>> {
        let path = dir.join(FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(format!("reading {}", path.display()), e)),
        };
        let corrupt = |reason: &str| StoreError::Corrupt {
            offset: 0,
            reason: format!("{}: {reason}", path.display()),
        };
        if bytes.len() != SIZE {
            return Err(corrupt("wrong size"));
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4"));
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8"));
        if u32_at(0) != MAGIC || u32_at(4) != VERSION {
            return Err(corrupt("bad magic or version"));
        }
        if crc32c::crc32c(&bytes[0..24]) != u32_at(24) {
            return Err(corrupt("crc32c mismatch"));
        }
        Ok(Some(Checkpoint {
            commit_log_flushed: u64_at(8),
            recover_from: u64_at(16),
        }))
    }

    /// Atomically replaces the checkpoint file.
    pub fn store(&self, dir: &Path) -> Result<()> {
        let tmp = dir.join("checkpoint.tmp");
        let ctx = |e| StoreError::io(format!("writing {}", tmp.display()), e);
        let mut f = File::create(&tmp).map_err(ctx)?;
        f.write_all(&self.encode()).map_err(ctx)?;
        f.sync_data().map_err(ctx)?;
        std::fs::rename(&tmp, dir.join(FILE)).map_err(ctx)?;
        sync_dir(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_load_and_detect_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Checkpoint::load(dir.path()).unwrap(), None);
        let cp = Checkpoint {
            commit_log_flushed: 4096,
            recover_from: 2048,
        };
        cp.store(dir.path()).unwrap();
        assert_eq!(Checkpoint::load(dir.path()).unwrap(), Some(cp));
        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[9] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(
            Checkpoint::load(dir.path()).unwrap_err().code(),
            "CORRUPT_RECORD"
        );
    }
}
