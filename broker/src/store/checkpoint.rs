//! The checkpoint: where recovery may start scanning the commit log, and what
//! the derived files held at that point, so that recovery can tell a damaged
//! consume queue from an intact one.
//!
//! ```text
//!  checkpoint (little-endian), replaced atomically (write tmp, fsync, rename)
//!  +-----------+-------------+------------------------+------------------+--------------------+
//!  | magic u32 | version u32 | commit_log_flushed u64 | recover_from u64 | segment_size u64   |
//!  +-----------+-------------+------------------------+------------------+--------------------+
//!  | index_file u64 | index_entries u64 | queue_count u32 | queue_count × ( topic_len u16 | topic | queue_id u32 | end u64 ) | crc32c u32 |
//!  +-----------------+--------------------------------------------------------+------------+
//! ```
//! `recover_from` is a record boundary below which the commit log, every consume
//! queue and the key index were durable when the checkpoint was written;
//! `index_file` / `index_entries` name the newest key-index file with entries
//! for records below it (sequence + 1, 0 for none) and how many it had there;
//! `end` is how many entries each consume queue had for records below it.
//! Version 1 (32 bytes: magic, version, the two offsets, crc32c, pad) is still
//! read; it carries no segment size and no queue ends.

use std::collections::HashMap;
use std::path::Path;

use super::error::{Result, StoreError};
use super::index::IndexTip;
use super::mapped_file::replace_file;

const MAGIC: u32 = 0xDD0A_C4E0;
const VERSION_1: u32 = 1;
const VERSION: u32 = 2;
const V1_SIZE: usize = 32;
const FIXED_SIZE: usize = 52;
const FILE: &str = "checkpoint";

/// A consume queue, by topic and queue id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueName {
    pub topic: String,
    pub queue_id: u32,
}

/// Durable positions recorded by the last checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Checkpoint {
    pub commit_log_flushed: u64,
    pub recover_from: u64,
    /// The segment size the store was written with (0: unknown, version 1).
    pub segment_size: u64,
    /// The key index's newest file and entries below `recover_from`.
    pub index_tip: IndexTip,
    /// Entries of each consume queue below `recover_from` (`None`: version 1).
    pub queue_ends: Option<HashMap<QueueName, u64>>,
}

impl Checkpoint {
    fn encode(&self) -> Vec<u8> {
        let ends = self.queue_ends.as_ref();
        let mut b = Vec::with_capacity(FIXED_SIZE + 4 + ends.map_or(0, |e| e.len() * 32));
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&self.commit_log_flushed.to_le_bytes());
        b.extend_from_slice(&self.recover_from.to_le_bytes());
        b.extend_from_slice(&self.segment_size.to_le_bytes());
        b.extend_from_slice(&self.index_tip.file.to_le_bytes());
        b.extend_from_slice(&self.index_tip.entries.to_le_bytes());
        let mut queues: Vec<_> = ends.into_iter().flatten().collect();
        queues.sort();
        b.extend_from_slice(&(queues.len() as u32).to_le_bytes());
        for (name, end) in queues {
            b.extend_from_slice(&(name.topic.len() as u16).to_le_bytes());
            b.extend_from_slice(name.topic.as_bytes());
            b.extend_from_slice(&name.queue_id.to_le_bytes());
            b.extend_from_slice(&end.to_le_bytes());
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
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
        Self::decode(&bytes)
            .map(Some)
            .map_err(|reason| StoreError::Corrupt {
                offset: 0,
                reason: format!("{}: {reason}", path.display()),
            })
    }

    fn decode(bytes: &[u8]) -> std::result::Result<Checkpoint, &'static str> {
        let mut r = Reader(bytes);
        if r.u32()? != MAGIC {
            return Err("bad magic");
        }
        let version = r.u32()?;
        let crc_ok = |covered: usize| {
            bytes.len() >= covered + 4
                && crc32c::crc32c(&bytes[..covered])
                    == u32::from_le_bytes(bytes[covered..covered + 4].try_into().expect("4"))
        };
        match version {
            VERSION_1 if bytes.len() == V1_SIZE && crc_ok(24) => Ok(Checkpoint {
                commit_log_flushed: r.u64()?,
                recover_from: r.u64()?,
                ..Checkpoint::default()
            }),
            VERSION if bytes.len() >= FIXED_SIZE + 4 && crc_ok(bytes.len() - 4) => {
                let commit_log_flushed = r.u64()?;
                let recover_from = r.u64()?;
                let segment_size = r.u64()?;
                let index_tip = IndexTip {
                    file: r.u64()?,
                    entries: r.u64()?,
                };
                let count = r.u32()?;
                let mut ends = HashMap::new();
                for _ in 0..count {
                    let len = r.u16()? as usize;
                    let topic = std::str::from_utf8(r.take(len)?).map_err(|_| "bad topic name")?;
                    let name = QueueName {
                        topic: topic.to_string(),
                        queue_id: r.u32()?,
                    };
                    ends.insert(name, r.u64()?);
                }
                if r.0.len() != 4 {
                    return Err("wrong size");
                }
                Ok(Checkpoint {
                    commit_log_flushed,
                    recover_from,
                    segment_size,
                    index_tip,
                    queue_ends: Some(ends),
                })
            }
            VERSION_1 | VERSION => Err("wrong size or crc32c mismatch"),
            _ => Err("unknown version"),
        }
    }

    /// Atomically replaces the checkpoint file.
    pub fn store(&self, dir: &Path) -> Result<()> {
        replace_file(dir, FILE, &self.encode())
    }
}

/// Reads little-endian fields off the front of a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err("truncated");
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u16(&mut self) -> std::result::Result<u16, &'static str> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> std::result::Result<u32, &'static str> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> std::result::Result<u64, &'static str> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dduomq_proto::Reason;

    #[test]
    fn store_load_and_detect_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Checkpoint::load(dir.path()).unwrap(), None);
        let cp = Checkpoint {
            commit_log_flushed: 4096,
            recover_from: 2048,
            segment_size: 65536,
            index_tip: IndexTip {
                file: 1,
                entries: 9,
            },
            queue_ends: Some(HashMap::from([(
                QueueName {
                    topic: "orders".into(),
                    queue_id: 3,
                },
                17,
            )])),
        };
        cp.store(dir.path()).unwrap();
        assert_eq!(Checkpoint::load(dir.path()).unwrap(), Some(cp));
        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[9] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(
            Checkpoint::load(dir.path()).unwrap_err().code(),
            Reason::CorruptRecord
        );
        std::fs::write(&path, &bytes[..20]).unwrap();
        assert!(Checkpoint::load(dir.path()).is_err());
    }

    #[test]
    fn reads_version_1() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = [0u8; V1_SIZE];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&VERSION_1.to_le_bytes());
        b[8..16].copy_from_slice(&4096u64.to_le_bytes());
        b[16..24].copy_from_slice(&2048u64.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..24]);
        b[24..28].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(dir.path().join(FILE), b).unwrap();
        assert_eq!(
            Checkpoint::load(dir.path()).unwrap(),
            Some(Checkpoint {
                commit_log_flushed: 4096,
                recover_from: 2048,
                segment_size: 0,
                index_tip: IndexTip::default(),
                queue_ends: None,
            })
        );
    }
}
