//! Idempotent producers: a producer id plus a per-producer sequence number on
//! each message. A retried send whose sequence is still in the window gets the
//! original receipt instead of being stored again.
//!
//! The window survives restarts: both values are stored with the message (as
//! the reserved properties `__PRODUCER_ID` and `__SEQUENCE`), a snapshot with the commit-log position it
//! covers is saved periodically and at shutdown, and on startup the records after
//! that position are scanned back in — so a crash loses nothing. The position is
//! exact: a send still in flight when the snapshot is taken records the
//! commit-log end when it began (its records can only land after it), and the
//! snapshot covers no further than the earliest of those.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use super::SendReceipt;
use super::error::Result;
use super::metadata;

/// Sequences remembered per producer.
pub const WINDOW: usize = 10_000;
/// Producers remembered (the least recently used are forgotten first).
const MAX_PRODUCERS: usize = 10_000;

/// What the window says about a sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    New,
    /// Stored before: here is its receipt.
    Stored(SendReceipt),
    /// A send with this sequence is being stored right now.
    InFlight,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ProducerWindow {
    receipts: BTreeMap<u64, SendReceipt>,
    /// In-flight sequences and the commit-log end when their send began.
    #[serde(skip)]
    in_flight: HashMap<u64, u64>,
    /// Logical clock of the last use, for eviction.
    last_used: u64,
    /// Changed since the last snapshot.
    #[serde(skip)]
    dirty: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Snapshot {
    /// Commit-log position the snapshot covers.
    scanned_to: u64,
    producers: HashMap<String, ProducerWindow>,
}

/// One producer's window behind its own lock: sends of different producers,
/// and the periodic snapshot, do not wait for each other.
type Window = Arc<Mutex<ProducerWindow>>;

/// The dedupe windows of every producer.
#[derive(Debug)]
pub struct Dedupe {
    path: PathBuf,
    producers: RwLock<HashMap<String, Window>>,
    /// Each window as last saved: only changed windows are serialized again.
    saved: Mutex<HashMap<String, serde_json::Value>>,
    last_save: Mutex<Option<std::time::Instant>>,
    /// Logical clock of uses, for evicting the least recently used producer.
    clock: AtomicU64,
    /// Only records of a replicated log add receipts (a replica): a demoted
    /// master's send finishing late must not leave a receipt its log may no
    /// longer hold. Read under the window's lock, set before windows go.
    follows_log: AtomicBool,
}

impl Dedupe {
    /// Loads the snapshot; returns the window and the commit-log position from
    /// which records must be scanned back in with [`Dedupe::record`].
    pub fn open(path: PathBuf) -> Result<(Dedupe, u64)> {
        let snapshot: Snapshot = metadata::load_derived(&path)?;
        let from = snapshot.scanned_to;
        let clock = snapshot
            .producers
            .values()
            .map(|w| w.last_used)
            .max()
            .unwrap_or(0);
        let producers = snapshot
            .producers
            .into_iter()
            .map(|(id, w)| (id, Arc::new(Mutex::new(w))))
            .collect();
        Ok((
            Dedupe {
                path,
                producers: RwLock::new(producers),
                saved: Mutex::new(HashMap::new()),
                last_save: Mutex::new(None),
                clock: AtomicU64::new(clock),
                follows_log: AtomicBool::new(false),
            },
            from,
        ))
    }

    /// The window of `producer`, created on first use.
    fn window(&self, producer: &str) -> Window {
        if let Some(w) = self.producers.read().get(producer) {
            return w.clone();
        }
        let mut producers = self.producers.write();
        let w = producers
            .entry(producer.to_string())
            .or_insert_with(|| {
                Arc::new(Mutex::new(ProducerWindow {
                    last_used: self.clock.fetch_add(1, Ordering::Relaxed) + 1,
                    ..Default::default()
                }))
            })
            .clone();
        evict(&mut producers, producer);
        w
    }

    /// Looks a sequence up, marking a new one in flight; `log_end` is the
    /// commit-log end before the send is appended.
    pub fn check(&self, producer: &str, sequence: u64, log_end: u64) -> Seen {
        let window = self.window(producer);
        let mut w = window.lock();
        w.last_used = self.clock.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(r) = w.receipts.get(&sequence) {
            return Seen::Stored(r.clone());
        }
        if w.in_flight.contains_key(&sequence) {
            return Seen::InFlight;
        }
        w.in_flight.insert(sequence, log_end);
        Seen::New
    }

    /// Ends an in-flight sequence: stored (with its receipt) or failed.
    pub fn finish(&self, producer: &str, sequence: u64, receipt: Option<&SendReceipt>) {
        let Some(window) = self.producers.read().get(producer).cloned() else {
            return;
        };
        let mut w = window.lock();
        w.in_flight.remove(&sequence);
        if let Some(r) = receipt
            && !self.follows_log.load(Ordering::SeqCst)
        {
            remember(&mut w, sequence, r.clone());
        }
    }

    /// Forgets every window and from now on takes receipts only from
    /// [`Dedupe::record`] (a replica derives them from its log).
    pub fn follow_log(&self) {
        self.follows_log.store(true, Ordering::SeqCst);
        self.producers.write().clear();
        self.saved.lock().clear();
    }

    /// Takes the broker's own receipts again (a replica promoted to master).
    pub fn keep_own_writes(&self) {
        self.follows_log.store(false, Ordering::SeqCst);
    }

    /// Adds a stored message found in the commit log (startup scan, or a
    /// replica's derive pass); the producer counts as used now, as it did
    /// on the master that stored it.
    pub fn record(&self, producer: &str, sequence: u64, receipt: &SendReceipt) {
        let window = self.window(producer);
        let mut w = window.lock();
        w.last_used = self.clock.fetch_add(1, Ordering::Relaxed) + 1;
        remember(&mut w, sequence, receipt.clone());
    }

    /// Saves the windows as covering the commit log up to `log_end` (or less,
    /// while sends that began earlier are still in flight). Each window is
    /// locked only while it is serialized; the file is written after.
    pub fn save(&self, log_end: u64) -> Result<()> {
        *self.last_save.lock() = Some(std::time::Instant::now());
        let windows: Vec<(String, Window)> = self
            .producers
            .read()
            .iter()
            .map(|(id, w)| (id.clone(), w.clone()))
            .collect();
        let mut scanned_to = log_end;
        let mut saved = self.saved.lock();
        let mut producers = serde_json::Map::with_capacity(windows.len());
        for (id, window) in windows {
            // Copied under the window's lock, serialized after it.
            let changed = {
                let mut w = window.lock();
                scanned_to = w.in_flight.values().copied().fold(scanned_to, u64::min);
                (w.dirty || !saved.contains_key(&id)).then(|| {
                    w.dirty = false;
                    ProducerWindow {
                        receipts: w.receipts.clone(),
                        last_used: w.last_used,
                        ..Default::default()
                    }
                })
            };
            let value = match changed {
                Some(copy) => serde_json::to_value(&copy).expect("windows serialize"),
                None => saved.remove(&id).expect("saved before"),
            };
            producers.insert(id, value);
        }
        // Compact: thousands of receipts per producer.
        let json = serde_json::to_vec(&serde_json::json!({
            "scanned_to": scanned_to,
            "producers": &producers,
        }))
        .expect("windows serialize");
        // Keep what was saved (evicted producers drop out).
        *saved = producers.into_iter().collect();
        drop(saved);
        Ok(metadata::save_bytes(&self.path, &json)?)
    }
}

impl Dedupe {
    /// [`Dedupe::save`] unless it ran within `interval`: the snapshot only
    /// bounds the startup scan, and rewriting every window is not free.
    pub fn save_every(&self, log_end: u64, interval: std::time::Duration) -> Result<()> {
        if self
            .last_save
            .lock()
            .is_some_and(|t| t.elapsed() < interval)
        {
            return Ok(());
        }
        self.save(log_end)
    }
}

fn remember(w: &mut ProducerWindow, sequence: u64, receipt: SendReceipt) {
    w.dirty = true;
    w.receipts.insert(sequence, receipt);
    while w.receipts.len() > WINDOW {
        w.receipts.pop_first();
    }
}

/// Forgets the least recently used producers beyond [`MAX_PRODUCERS`] (never
/// `keep`, the one being added, nor one with a send in flight).
fn evict(producers: &mut HashMap<String, Window>, keep: &str) {
    while producers.len() > MAX_PRODUCERS {
        let Some(oldest) = producers
            .iter()
            .filter(|(k, _)| k.as_str() != keep)
            .filter_map(|(k, w)| {
                let w = w.try_lock()?;
                w.in_flight.is_empty().then(|| (w.last_used, k.clone()))
            })
            .min()
            .map(|(_, k)| k)
        else {
            break;
        };
        producers.remove(&oldest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(offset: u64) -> SendReceipt {
        SendReceipt {
            message_id: format!("id-{offset}"),
            topic: "t".into(),
            queue_id: 0,
            offset,
            store_timestamp: 1,
            deliver_at: 0,
            transaction_id: String::new(),
        }
    }

    #[test]
    fn retries_get_the_original_receipt_and_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("producers.json");
        let (d, from) = Dedupe::open(path.clone()).unwrap();
        assert_eq!(from, 0);
        assert_eq!(d.check("p", 1, 0), Seen::New);
        assert_eq!(d.check("p", 1, 0), Seen::InFlight);
        d.finish("p", 1, Some(&receipt(7)));
        assert_eq!(d.check("p", 1, 0), Seen::Stored(receipt(7)));
        assert_eq!(d.check("p", 2, 0), Seen::New);
        d.finish("p", 2, None);
        assert_eq!(
            d.check("p", 2, 0),
            Seen::New,
            "a failed send may be retried"
        );
        // Sequence 2 is in flight since position 100: the snapshot covers no further.
        d.finish("p", 2, None);
        assert_eq!(d.check("p", 2, 100), Seen::New);
        d.save(4096).unwrap();
        assert_eq!(Dedupe::open(path.clone()).unwrap().1, 100);
        d.finish("p", 2, Some(&receipt(8)));
        d.save(4096).unwrap();
        let (d, from) = Dedupe::open(path).unwrap();
        assert_eq!(from, 4096);
        assert_eq!(d.check("p", 1, 0), Seen::Stored(receipt(7)));
        d.record("q", 9, &receipt(9));
        assert_eq!(d.check("q", 9, 0), Seen::Stored(receipt(9)));
    }

    /// A replica's windows hold what its log says: a send of its days as
    /// master that finishes after its demotion leaves no receipt.
    #[test]
    fn a_replica_takes_receipts_only_from_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let (d, _) = Dedupe::open(dir.path().join("producers.json")).unwrap();
        assert_eq!(d.check("p", 1, 0), Seen::New);
        d.follow_log();
        d.record("p", 2, &receipt(2));
        d.finish("p", 1, Some(&receipt(1)));
        d.keep_own_writes();
        assert_eq!(
            d.check("p", 1, 0),
            Seen::New,
            "its late receipt was not kept"
        );
        assert_eq!(d.check("p", 2, 0), Seen::Stored(receipt(2)));
    }

    /// Producers a replica reads in its log count as used in log order, so
    /// it forgets about the least recently used ones its master did (the
    /// master also counts sends that stored nothing).
    #[test]
    fn records_from_the_log_count_as_uses() {
        let dir = tempfile::tempdir().unwrap();
        let (d, _) = Dedupe::open(dir.path().join("producers.json")).unwrap();
        d.record("old", 1, &receipt(1));
        d.record("busy", 1, &receipt(2));
        d.record("old", 2, &receipt(3));
        let last_used = |p: &str| d.producers.read()[p].lock().last_used;
        assert!(last_used("old") > last_used("busy"));
    }
}
