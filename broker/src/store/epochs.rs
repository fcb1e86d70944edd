//! The epoch history of this member's log: where each master's epoch began
//! (the rules are in `dduomq_replication::epochs`). It lives next to the log
//! because it describes it: a truncation drops the epochs it cut.
//!
//! ```text
//!  epochs   (little-endian; replaced atomically: tmp, fsync, rename, dir fsync)
//!  +-----------+-------------+-----------+-------------------------------------------+------------+
//!  | magic u32 | version u32 | count u32 | count × ( epoch u64 | start_offset u64 )  | crc32c u32 |
//!  +-----------+-------------+-----------+-------------------------------------------+------------+
//!  magic 0xDD0AE90C, version 1; crc32c covers everything before it
//! ```
//! No file is an empty history (a new store, or one never replicated). A
//! damaged file, or one whose epochs are out of order, stops the open with the
//! file named: the history cannot be rebuilt from the log, and a wrong one
//! could keep a divergent tail, so the member's data directory is rebuilt
//! from its group instead.

use std::path::{Path, PathBuf};

use dduomq_replication::{EpochHistory, EpochStart};
use parking_lot::Mutex;

use super::Store;
use super::error::{Result, StoreError};
use super::mapped_file::replace_file;

const FILE: &str = "epochs";
const MAGIC: u32 = 0xDD0A_E90C;
const VERSION: u32 = 1;
const HEADER: usize = 12;
const ENTRY: usize = 16;

/// The history and the file it is kept in.
#[derive(Debug)]
pub(crate) struct Epochs {
    dir: PathBuf,
    /// Held while the file is replaced, so the file follows the changes in order.
    history: Mutex<EpochHistory>,
}

fn encode(history: &EpochHistory) -> Vec<u8> {
    let starts = history.starts();
    let mut b = Vec::with_capacity(HEADER + starts.len() * ENTRY + 4);
    b.extend_from_slice(&MAGIC.to_le_bytes());
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&(starts.len() as u32).to_le_bytes());
    for start in starts {
        b.extend_from_slice(&start.epoch.to_le_bytes());
        b.extend_from_slice(&start.start_offset.to_le_bytes());
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> std::result::Result<EpochHistory, String> {
    let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4"));
    let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8"));
    if b.len() < HEADER + 4 || u32_at(0) != MAGIC || u32_at(4) != VERSION {
        return Err("bad magic, version or size".into());
    }
    let count = u32_at(8) as usize;
    if count
        .checked_mul(ENTRY)
        .and_then(|n| n.checked_add(HEADER + 4))
        != Some(b.len())
    {
        return Err(format!("{} bytes cannot hold {count} epochs", b.len()));
    }
    let covered = b.len() - 4;
    if crc32c::crc32c(&b[..covered]) != u32_at(covered) {
        return Err("crc32c mismatch".into());
    }
    let starts = (0..count)
        .map(|i| EpochStart {
            epoch: u64_at(HEADER + i * ENTRY),
            start_offset: u64_at(HEADER + i * ENTRY + 8),
        })
        .collect();
    EpochHistory::from_starts(starts).map_err(|e| e.to_string())
}

impl Epochs {
    /// Reads the history of the store in `dir`.
    pub fn load(dir: &Path) -> Result<Epochs> {
        let path = dir.join(FILE);
        let history = match std::fs::read(&path) {
            Ok(bytes) => decode(&bytes).map_err(|problem| StoreError::Corrupt {
                offset: 0,
                reason: format!(
                    "{} is damaged ({problem}): the epoch history cannot be rebuilt from the \
                     log; rebuild this member's data directory from its group",
                    path.display()
                ),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => EpochHistory::new(),
            Err(e) => return Err(StoreError::io(format!("reading {}", path.display()), e)),
        };
        Ok(Epochs {
            dir: dir.to_path_buf(),
            history: Mutex::new(history),
        })
    }

    pub fn history(&self) -> EpochHistory {
        self.history.lock().clone()
    }

    /// Applies `change` to the history and stores it when it changed.
    fn update(&self, change: impl FnOnce(&mut EpochHistory) -> Result<()>) -> Result<()> {
        let mut history = self.history.lock();
        let mut changed = history.clone();
        change(&mut changed)?;
        if changed != *history {
            replace_file(&self.dir, FILE, &encode(&changed))?;
            *history = changed;
        }
        Ok(())
    }

    /// Drops the epochs that start at or after `offset` (the log was cut there).
    pub fn truncate_from(&self, offset: u64) -> Result<()> {
        self.update(|history| {
            history.truncate_from(offset);
            Ok(())
        })
    }
}

impl Store {
    /// This log's epoch history.
    pub fn epochs(&self) -> EpochHistory {
        self.inner.epochs.history()
    }

    /// Records durably that `epoch` begins at log position `start_offset`: a
    /// new master at its log end, a follower applying its master's epoch
    /// starts (repeating the latest is a no-op). An epoch that is not newer,
    /// or starts before the latest, is refused.
    pub fn begin_epoch(&self, epoch: u64, start_offset: u64) -> Result<()> {
        self.inner
            .epochs
            .update(|history| Ok(history.begin(epoch, start_offset)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_damage() {
        let dir = tempfile::tempdir().unwrap();
        let epochs = Epochs::load(dir.path()).unwrap();
        assert_eq!(epochs.history(), EpochHistory::new());
        epochs.update(|h| Ok(h.begin(1, 0)?)).unwrap();
        epochs.update(|h| Ok(h.begin(3, 4096)?)).unwrap();
        assert!(epochs.update(|h| Ok(h.begin(2, 5000)?)).is_err());
        let expected = epochs.history();
        assert_eq!(Epochs::load(dir.path()).unwrap().history(), expected);
        epochs.truncate_from(4096).unwrap();
        let reloaded = Epochs::load(dir.path()).unwrap().history();
        assert_eq!(
            reloaded.starts(),
            &[EpochStart {
                epoch: 1,
                start_offset: 0
            }]
        );
        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        for at in [0, 9, 13, bytes.len() - 1] {
            bytes[at] ^= 1;
            std::fs::write(&path, &bytes).unwrap();
            let err = Epochs::load(dir.path()).unwrap_err().to_string();
            assert!(err.contains(&path.display().to_string()), "{err}");
            bytes[at] ^= 1;
        }
        std::fs::write(&path, &bytes[..bytes.len() - 2]).unwrap();
        assert!(Epochs::load(dir.path()).is_err());
    }

    #[test]
    fn out_of_order_epochs_are_damage() {
        let two = |second: u64| {
            let mut b = Vec::new();
            b.extend_from_slice(&MAGIC.to_le_bytes());
            b.extend_from_slice(&VERSION.to_le_bytes());
            b.extend_from_slice(&2u32.to_le_bytes());
            for (epoch, start) in [(5u64, 100u64), (second, 200)] {
                b.extend_from_slice(&epoch.to_le_bytes());
                b.extend_from_slice(&start.to_le_bytes());
            }
            let crc = crc32c::crc32c(&b);
            b.extend_from_slice(&crc.to_le_bytes());
            b
        };
        assert!(decode(&two(6)).is_ok());
        assert!(decode(&two(4)).is_err());
    }
}
