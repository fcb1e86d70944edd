//! A ledger of every send and delivery of a suite, so that the final check of
//! each scenario can be "every acknowledged message was delivered with
//! identical bytes".

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dduomq_client::{ClientError, ReceivedMessage, SendReceipt};
use parking_lot::Mutex;

/// The body of message `index`: `"<12-digit index>|"` and a payload derived from
/// the index (96 to 111 bytes in all, most of them not text).
pub fn body_of(index: u64) -> Vec<u8> {
    let len = 96 + (index % 16) as usize;
    let mut body = Vec::with_capacity(len);
    body.extend_from_slice(format!("{index:012}|").as_bytes());
    let mut x = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while body.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        body.push((x >> 32) as u8);
    }
    body
}

/// The index a body of [`body_of`] encodes.
pub fn index_of(body: &[u8]) -> Option<u64> {
    if body.len() < 13 || body[12] != b'|' || !body[..12].iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(&body[..12]).ok()?.parse().ok()
}

/// The broker id in a message id (its first 8 hex digits).
pub fn broker_of(message_id: &str) -> Option<u32> {
    u32::from_str_radix(message_id.get(..8)?, 16).ok()
}

/// A send that was not acknowledged.
#[derive(Debug, Clone)]
pub struct FailedSend {
    pub index: u64,
    pub at: Instant,
    pub error: String,
}

/// One acknowledged send: when, and the broker id of its message id.
#[derive(Debug, Clone, Copy)]
struct Ack {
    at: Instant,
    broker: u32,
}

/// Every send and every delivery of a suite on one topic; message bodies are
/// [`body_of`] their index, so each delivery is checked byte for byte.
#[derive(Debug)]
pub struct Ledger {
    topic: String,
    next: AtomicU64,
    /// Acknowledged: index → broker id of its message id.
    acked: Mutex<HashMap<u64, u32>>,
    /// Every acknowledgement, in the order they arrived.
    acks: Mutex<Vec<Ack>>,
    /// How long each acknowledged send of the continuous load waited.
    ack_latency: Mutex<HashMap<u64, Duration>>,
    failed: Mutex<Vec<FailedSend>>,
    /// Deliveries per index (only deliveries with the exact bytes sent).
    received: Mutex<HashMap<u64, u32>>,
    /// Where each index was first delivered from, to explain a repeat.
    first_seen: Mutex<HashMap<u64, Seen>>,
    /// The first repeated deliveries: the first and the repeat.
    repeats: Mutex<Vec<String>>,
    /// Repeats per second (Unix time), to tell which event caused them.
    repeat_seconds: Mutex<BTreeMap<u64, u32>>,
    /// Repeats of another stored copy (a send stored twice).
    stored_twice: AtomicU64,
    /// Repeats of the same stored message (a redelivery).
    redelivered: AtomicU64,
    /// Deliveries that are not exactly a message that was sent.
    corrupt: Mutex<Vec<String>>,
}

/// Which stored message a delivery was: a repeat with another message id is
/// a second copy stored by a retried send; with the same id, a redelivery.
#[derive(Debug, Clone)]
struct Seen {
    /// When (Unix seconds), to line up with the brokers' logs.
    at_s: f64,
    message_id: String,
    queue_id: u32,
    offset: u64,
    attempt: u32,
}

impl Seen {
    fn of(m: &ReceivedMessage) -> Seen {
        Seen {
            at_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64(),
            message_id: m.message_id.clone(),
            queue_id: m.queue_id,
            offset: m.offset,
            attempt: m.delivery_attempt,
        }
    }
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (queue {}, offset {}, attempt {}, at {:.3})",
            self.message_id, self.queue_id, self.offset, self.attempt, self.at_s
        )
    }
}

/// Repeated deliveries kept to explain a failure.
const KEPT_REPEATS: usize = 20;

impl Ledger {
    pub fn new(topic: &str) -> Ledger {
        Ledger {
            topic: topic.to_string(),
            next: AtomicU64::new(0),
            acked: Mutex::default(),
            acks: Mutex::default(),
            ack_latency: Mutex::default(),
            failed: Mutex::default(),
            received: Mutex::default(),
            first_seen: Mutex::default(),
            repeats: Mutex::default(),
            repeat_seconds: Mutex::default(),
            stored_twice: AtomicU64::new(0),
            redelivered: AtomicU64::new(0),
            corrupt: Mutex::default(),
        }
    }

    /// The topic every message goes to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// How many indexes were handed out (sends attempted).
    pub fn allocated(&self) -> u64 {
        self.next.load(Ordering::SeqCst)
    }

    /// The next message index.
    pub fn allocate(&self) -> u64 {
        self.next.fetch_add(1, Ordering::SeqCst)
    }

    /// `took`: how long the send waited (the continuous load measures it).
    pub fn record(
        &self,
        index: u64,
        result: &Result<SendReceipt, ClientError>,
        took: Option<Duration>,
    ) {
        match result {
            Ok(r) => {
                let broker = broker_of(&r.message_id).unwrap_or(u32::MAX);
                self.acked.lock().insert(index, broker);
                self.acks.lock().push(Ack {
                    at: Instant::now(),
                    broker,
                });
                if let Some(took) = took {
                    self.ack_latency.lock().insert(index, took);
                }
            }
            Err(e) => self.failed.lock().push(FailedSend {
                index,
                at: Instant::now(),
                error: e.to_string(),
            }),
        }
    }

    /// The consumer's handler: checks the delivery byte for byte.
    pub fn deliver(&self, m: &ReceivedMessage) {
        let corrupt = |why: String| {
            self.corrupt.lock().push(format!(
                "{} (queue {}, offset {}, attempt {}): {why}",
                m.message_id, m.queue_id, m.offset, m.delivery_attempt
            ))
        };
        let preview = || String::from_utf8_lossy(&m.body[..m.body.len().min(40)]).into_owned();
        if m.topic != self.topic {
            return corrupt(format!("topic {:?}", m.topic));
        }
        match index_of(&m.body) {
            None => corrupt(format!("unparseable body {:?}", preview())),
            Some(i) if i >= self.next.load(Ordering::SeqCst) => {
                corrupt(format!("index {i} was never produced"))
            }
            Some(i) if m.body[..] != body_of(i)[..] => corrupt(format!(
                "body of index {i} differs from what was sent ({} bytes, {:?}…)",
                m.body.len(),
                preview()
            )),
            Some(i) => {
                *self.received.lock().entry(i).or_default() += 1;
                let seen = Seen::of(m);
                match self.first_seen.lock().entry(i) {
                    Entry::Vacant(e) => {
                        e.insert(seen);
                    }
                    Entry::Occupied(e) => {
                        let kind = if e.get().message_id == seen.message_id {
                            &self.redelivered
                        } else {
                            &self.stored_twice
                        };
                        kind.fetch_add(1, Ordering::Relaxed);
                        *self
                            .repeat_seconds
                            .lock()
                            .entry(seen.at_s as u64)
                            .or_default() += 1;
                        let mut repeats = self.repeats.lock();
                        if repeats.len() < KEPT_REPEATS {
                            repeats.push(format!("index {i}: {} then {seen}", e.get()));
                        }
                    }
                }
            }
        }
    }

    /// Acknowledged indexes not delivered yet, sorted.
    pub fn missing(&self) -> Vec<u64> {
        let acked: Vec<u64> = self.acked.lock().keys().copied().collect();
        let received = self.received.lock();
        let mut missing: Vec<u64> = acked
            .into_iter()
            .filter(|i| !received.contains_key(i))
            .collect();
        missing.sort_unstable();
        missing
    }

    pub fn acked_count(&self) -> usize {
        self.acked.lock().len()
    }

    pub fn acked_in(&self, range: std::ops::Range<u64>) -> usize {
        self.acked
            .lock()
            .keys()
            .filter(|i| range.contains(i))
            .count()
    }

    pub fn failed_in(&self, range: std::ops::Range<u64>) -> Vec<FailedSend> {
        self.failed
            .lock()
            .iter()
            .filter(|f| range.contains(&f.index))
            .cloned()
            .collect()
    }

    /// The longest an acknowledged send in `range` waited for its ack.
    pub fn slowest_ack(&self, range: std::ops::Range<u64>) -> Duration {
        self.ack_latency
            .lock()
            .iter()
            .filter(|(i, _)| range.contains(i))
            .map(|(_, d)| *d)
            .max()
            .unwrap_or_default()
    }

    pub fn acks_between(&self, from: Instant, to: Instant) -> usize {
        self.acks
            .lock()
            .iter()
            .filter(|a| a.at >= from && a.at <= to)
            .count()
    }

    /// When broker id `broker` (of message ids) first acknowledged a send at
    /// or after `since`.
    pub fn first_ack_by(&self, broker: u32, since: Instant) -> Option<Instant> {
        self.acks
            .lock()
            .iter()
            .filter(|a| a.broker == broker && a.at >= since)
            .map(|a| a.at)
            .min()
    }

    /// The longest time without an acknowledgement within `[from, to]`.
    pub fn longest_stall(&self, from: Instant, to: Instant) -> Duration {
        let mut times: Vec<Instant> = self
            .acks
            .lock()
            .iter()
            .map(|a| a.at)
            .filter(|t| *t >= from && *t <= to)
            .collect();
        times.sort_unstable();
        let mut longest = Duration::ZERO;
        let mut previous = from;
        for t in times.into_iter().chain(std::iter::once(to)) {
            longest = longest.max(t.saturating_duration_since(previous));
            previous = t;
        }
        longest
    }

    /// How many sends failed.
    pub fn failed_count(&self) -> usize {
        self.failed.lock().len()
    }

    /// Asserts that every index in `range` was delivered exactly once (no
    /// failure happened, so nothing may be redelivered).
    #[track_caller]
    pub fn assert_exactly_once(&self, range: std::ops::Range<u64>) {
        let wrong: Vec<(u64, u32)> = range
            .filter_map(|i| {
                let n = self.deliveries(i);
                (n != 1).then_some((i, n))
            })
            .take(20)
            .collect();
        assert!(
            wrong.is_empty(),
            "every message delivered exactly once; (index, deliveries): {wrong:?}; first repeats: {:#?}",
            self.repeats.lock()
        );
    }

    /// How often `index` was delivered with the exact bytes sent.
    pub fn deliveries(&self, index: u64) -> u32 {
        self.received.lock().get(&index).copied().unwrap_or(0)
    }

    /// Acknowledged sends per broker id (of their message ids).
    pub fn acked_per_broker(&self) -> BTreeMap<u32, usize> {
        self.acked
            .lock()
            .values()
            .fold(BTreeMap::new(), |mut m, b| {
                *m.entry(*b).or_default() += 1;
                m
            })
    }

    /// Indexes delivered more than once.
    pub fn duplicates(&self) -> usize {
        self.received.lock().values().filter(|n| **n > 1).count()
    }

    /// Repeated deliveries by cause, for a step's report.
    pub fn repeats(&self) -> serde_json::Value {
        serde_json::json!({
            "stored_twice": self.stored_twice.load(Ordering::Relaxed),
            "redelivered": self.redelivered.load(Ordering::Relaxed),
            "first": self.repeats.lock().iter().take(3).collect::<Vec<_>>(),
            "per_second": self.repeat_seconds.lock().iter().map(|(s, n)| format!("{s}:{n}")).collect::<Vec<_>>(),
        })
    }

    /// Failed sends that were stored anyway (delivered although not acked).
    pub fn delivered_unacked(&self) -> usize {
        let acked = self.acked.lock();
        let received = self.received.lock();
        received.keys().filter(|i| !acked.contains_key(i)).count()
    }
}

/// Waits until every acknowledged message has been delivered with the bytes that
/// were sent; returns how long that took.
pub async fn all_acked_consumed(ledger: &Ledger, what: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    let mut progress = Instant::now();
    loop {
        let missing = ledger.missing();
        if missing.is_empty() {
            break;
        }
        if started.elapsed() > timeout {
            let acked = ledger.acked.lock();
            let first: Vec<String> = missing
                .iter()
                .take(20)
                .map(|i| {
                    format!(
                        "#{i} (broker {})",
                        acked.get(i).copied().unwrap_or(u32::MAX)
                    )
                })
                .collect();
            let mut per_broker: BTreeMap<u32, usize> = BTreeMap::new();
            for i in &missing {
                *per_broker
                    .entry(acked.get(i).copied().unwrap_or(u32::MAX))
                    .or_default() += 1;
            }
            panic!(
                "{what}: {} of {} acknowledged messages were never consumed within {timeout:?}; \
                 missing per broker id {per_broker:?}; first: {first:?}",
                missing.len(),
                acked.len()
            );
        }
        if progress.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "    {what}: {} acknowledged messages not consumed yet",
                missing.len()
            );
            progress = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let corrupt = ledger.corrupt.lock().clone();
    assert!(
        corrupt.is_empty(),
        "{what}: {} deliveries are not exactly a message that was sent: {:?}",
        corrupt.len(),
        &corrupt[..corrupt.len().min(10)]
    );
    started.elapsed()
}
