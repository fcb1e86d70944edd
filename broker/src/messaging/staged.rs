//! Staged messages: stored, but not yet in their topic. A delayed message waits
//! in `%DELAY%` for its time; a transactional (half) message waits in `%HALF%`
//! for a commit or rollback. Both are ordinary commit-log records; releasing
//! one appends a copy to the real topic (and, for a transaction, a marker to
//! `%RESOLVED%`; a rollback appends only the marker) that names its origin:
//!
//! ```text
//!   send ──► %DELAY% record ──(due)──────────────► copy in topic/queue   ─┐
//!            __REAL_TOPIC __REAL_QUEUE                __ORIGIN_ID = id   │ markers: the
//!            __DELIVER_AT                                                 │ origin is
//!   send ──► %HALF% record ──(commit)────────────► copy + marker "commit" ┤ resolved
//!            __REAL_TOPIC __REAL_QUEUE                __ORIGIN_ID = id   │
//!            __PRODUCER_GROUP  ──(rollback/expiry)► marker "rollback"    ─┘
//! ```
//!
//! Nothing but a commit-log position is saved: `staged.json` holds a position
//! below every unresolved staged record. On startup the log is scanned from
//! there; staged records are pending unless a copy or marker names them, so a
//! crash between a release and the next save neither loses nor repeats a
//! message. Retention never deletes a segment at or above that position.
//!
//! A repeated EndTransaction is answered with how the transaction ended,
//! whether or how the broker restarted since: recent resolutions are kept in
//! memory (a bounded window, refilled by the scan), and any other is read from
//! its marker, which carries the origin id as its key so the store's key index
//! finds it. The marker follows its half in the log, so it lives as long as
//! the half does.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};

use super::error::Result;
use super::metadata;
use super::timing_wheel::TimingWheel;
use super::{Delivery, properties};
use crate::store::{MessageId, Record};

/// Where delayed messages wait.
pub const DELAY_TOPIC: &str = "%DELAY%";
/// Where transactional messages wait for their outcome.
pub const HALF_TOPIC: &str = "%HALF%";
/// Markers of ended transactions and of delayed messages whose topic was
/// deleted before they were due.
pub const RESOLVED_TOPIC: &str = "%RESOLVED%";
/// Resolutions kept in memory for answering a repeated EndTransaction (older
/// ones are read from their marker).
const REMEMBERED_RESOLUTIONS: usize = 100_000;

/// Whether a record of `topic` is staged (waiting in a system topic).
pub fn is_staged(topic: &str) -> bool {
    topic == DELAY_TOPIC || topic == HALF_TOPIC
}

/// A staged record's place in the commit log (what a message id encodes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub physical: u64,
    pub crc: u32,
}

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    Commit,
    Rollback,
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Commit => "commit",
            Resolution::Rollback => "rollback",
        }
    }

    /// The resolution a marker records (`None` for a delayed message dropped
    /// with its topic).
    pub fn parse(s: &str) -> Option<Resolution> {
        [Resolution::Commit, Resolution::Rollback]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// An unresolved transactional message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Half {
    pub position: Position,
    pub topic: String,
    pub group: String,
    /// Checks sent so far.
    pub checks: u32,
    /// When the next check (or, after the last, the rollback) is due, ms.
    pub next_check: i64,
}

impl Half {
    pub fn new(position: Position, topic: &str, group: &str, first_check: i64) -> Half {
        Half {
            position,
            topic: topic.to_string(),
            group: group.to_string(),
            checks: 0,
            next_check: first_check,
        }
    }
}

/// A question to a producer group's checker.
#[derive(Debug, Clone)]
pub struct TransactionCheck {
    pub transaction_id: String,
    pub message: Delivery,
    pub attempt: u32,
}

/// What a transaction id names right now.
#[derive(Debug)]
pub enum Claim {
    /// Unresolved: it is now the caller's to resolve (or to give back).
    Pending(Half),
    /// Another request is resolving it right now.
    Resolving,
    Resolved(Resolution),
    Unknown,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    /// Every unresolved staged record is at or after this commit-log position.
    scan_from: u64,
}

/// What may change a broker's staged messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keeper {
    /// Its own sends, releases and resolutions (a master, or a broker
    /// without replication), besides its startup scan.
    OwnWrites,
    /// Only the records of its replicated log (a replica): what a demoted
    /// master still had in flight, or a request that raced a role change,
    /// changes nothing, so a later promotion holds exactly what the log says.
    Log,
}

#[derive(Debug)]
struct State {
    keeper: Keeper,
    wheel: TimingWheel<Position>,
    /// Pending delayed messages by position (the wheel holds their times).
    delayed: BTreeSet<u64>,
    halves: BTreeMap<u64, Half>,
    /// Halves claimed for resolving whose outcome is not stored yet (they still
    /// hold the scan floor down).
    resolving: BTreeSet<u64>,
    /// Recently resolved transactions: position → (crc, resolution).
    resolved: HashMap<u64, (u32, Resolution)>,
    resolved_order: VecDeque<u64>,
    /// Commit-log ends when in-flight staged appends began (a multiset).
    appending: BTreeMap<u64, usize>,
    /// The deadline the delivery loop sleeps until.
    sleeping_until: i64,
}

impl State {
    fn empty(keeper: Keeper) -> State {
        State {
            keeper,
            wheel: TimingWheel::new(0),
            delayed: BTreeSet::new(),
            halves: BTreeMap::new(),
            resolving: BTreeSet::new(),
            resolved: HashMap::new(),
            resolved_order: VecDeque::new(),
            appending: BTreeMap::new(),
            sleeping_until: i64::MAX,
        }
    }
}

/// Which topics' transactions a checker may be shown (a check carries its
/// message): those its user may publish to.
pub type SeesTopic = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// A connected checker stream of a producer group.
struct Checker {
    id: u64,
    queue: mpsc::Sender<TransactionCheck>,
    sees: SeesTopic,
}

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checker")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Staged messages of one broker.
#[derive(Debug)]
pub struct Staged {
    path: PathBuf,
    state: Mutex<State>,
    checkers: Mutex<HashMap<String, Vec<Checker>>>,
    next_checker: std::sync::atomic::AtomicU64,
    /// The scan position in the file: saved again only when it moves.
    saved_scan_from: Mutex<u64>,
    /// Wakes the delivery loop when something is due earlier than it thought.
    pub wake: Notify,
}

impl Staged {
    /// Loads the saved scan position; the caller replays the log from it
    /// through [`Staged::recover`].
    pub fn open(path: PathBuf) -> Result<(Staged, u64)> {
        let saved: Saved = metadata::load_derived(&path)?;
        let staged = Staged {
            path,
            state: Mutex::new(State::empty(Keeper::OwnWrites)),
            checkers: Mutex::new(HashMap::new()),
            next_checker: Default::default(),
            saved_scan_from: Mutex::new(saved.scan_from),
            wake: Notify::new(),
        };
        Ok((staged, saved.scan_from))
    }

    /// Forgets every staged message and from now on takes changes only from
    /// [`Staged::recover`] (a replica derives them from its log); checker
    /// streams stay.
    pub fn follow_log(&self) {
        *self.state.lock() = State::empty(Keeper::Log);
    }

    /// Takes the broker's own changes again (a replica promoted to master:
    /// what it derived is where the master starts).
    pub fn keep_own_writes(&self) {
        self.state.lock().keeper = Keeper::OwnWrites;
    }

    /// The state, unless only the log may change it.
    fn own_writes(&self) -> Option<parking_lot::MutexGuard<'_, State>> {
        let st = self.state.lock();
        (st.keeper == Keeper::OwnWrites).then_some(st)
    }

    /// Replays one record of the startup scan.
    pub fn recover(&self, rec: &Record, check_after_ms: i64) {
        let position = Position {
            physical: rec.physical_offset,
            crc: rec.crc,
        };
        let mut st = self.state.lock();
        if rec.topic == DELAY_TOPIC {
            let at = properties::deliver_at(&rec.properties);
            // A copy found later in the scan removes it from `delayed`; the
            // wheel entry then fires as a no-op. Fed twice (a replica's send
            // in flight as it was demoted), it is scheduled once.
            if st.delayed.insert(position.physical) {
                st.wheel.insert(at.max(0) as u64, position);
            }
        } else if rec.topic == HALF_TOPIC {
            let get = |p: properties::Reserved| p.get(&rec.properties).unwrap_or_default();
            let half = Half::new(
                position,
                get(properties::REAL_TOPIC),
                get(properties::PRODUCER_GROUP),
                rec.store_timestamp + check_after_ms,
            );
            st.halves.insert(position.physical, half);
        } else if let Some(origin) = properties::ORIGIN_ID
            .get(&rec.properties)
            .and_then(|id| id.parse::<MessageId>().ok())
        {
            let physical = origin.physical_offset;
            st.delayed.remove(&physical);
            if let Some(half) = st.halves.remove(&physical) {
                // A commit's copy (which comes first) carries no resolution.
                let resolution = properties::RESOLUTION
                    .get(&rec.properties)
                    .and_then(Resolution::parse)
                    .unwrap_or(Resolution::Commit);
                remember(&mut st, half.position, resolution);
            }
        }
    }

    /// Marks a staged append as started at commit-log end `log_end`; the saved
    /// scan position stays at or below it until [`Staged::end_append`].
    pub fn begin_append(&self, log_end: u64) {
        *self.state.lock().appending.entry(log_end).or_default() += 1;
    }

    pub fn end_append(&self, log_end: u64) {
        let mut st = self.state.lock();
        if let Some(n) = st.appending.get_mut(&log_end) {
            *n -= 1;
            if *n == 0 {
                st.appending.remove(&log_end);
            }
        }
    }

    /// Schedules a stored delayed message.
    pub fn add_delayed(&self, position: Position, deliver_at: i64) {
        let earlier = {
            let Some(mut st) = self.own_writes() else {
                return;
            };
            if st.delayed.insert(position.physical) {
                st.wheel.insert(deliver_at.max(0) as u64, position);
            }
            deliver_at < st.sleeping_until
        };
        if earlier {
            self.wake.notify_one();
        }
    }

    /// Takes the delayed messages due by `now`, each once, in time order.
    pub fn take_due(&self, now: i64) -> Vec<Position> {
        let Some(mut st) = self.own_writes() else {
            return Vec::new();
        };
        let mut taken = std::collections::HashSet::new();
        let fired = st.wheel.advance(now.max(0) as u64);
        fired
            .into_iter()
            .map(|(_, p)| p)
            .filter(|p| st.delayed.contains(&p.physical) && taken.insert(p.physical))
            .collect()
    }

    /// Drops the wheel entries due by `now` whose release is in the log (a
    /// replica's: the master released them), keeping the others due. A
    /// replica releases nothing itself, so its wheel would otherwise keep an
    /// entry for every delayed message it ever saw.
    pub fn prune_released(&self, now: i64) {
        let mut st = self.state.lock();
        for (when, position) in st.wheel.advance(now.max(0) as u64) {
            if st.delayed.contains(&position.physical) {
                st.wheel.insert(when, position);
            }
        }
    }

    /// When the delivery loop should look next (`None`: nothing pending); it
    /// sleeps until then.
    pub fn sleep_until(&self) -> Option<i64> {
        let mut st = self.state.lock();
        let next = st.wheel.next_deadline().map(|t| t as i64);
        st.sleeping_until = next.unwrap_or(i64::MAX);
        next
    }

    /// A due delayed message is in its topic now.
    pub fn delivered(&self, physical: u64) {
        if let Some(mut st) = self.own_writes() {
            st.delayed.remove(&physical);
        }
    }

    /// Tries a due message again at `at` (its release failed), unless it is
    /// no longer pending.
    pub fn retry_delayed(&self, position: Position, at: i64) {
        if let Some(mut st) = self.own_writes()
            && st.delayed.contains(&position.physical)
        {
            st.wheel.insert(at as u64, position);
        }
    }

    /// Delayed messages this broker is to release (none on a replica: its
    /// master releases them).
    pub fn delayed_pending(&self) -> usize {
        self.own_writes().map_or(0, |st| st.delayed.len())
    }

    /// Transactions this broker is to resolve (none on a replica).
    pub fn halves_pending(&self) -> usize {
        self.own_writes().map_or(0, |st| st.halves.len())
    }

    /// Delayed and half messages the log holds unreleased, whoever is to
    /// release them.
    pub fn unreleased(&self) -> usize {
        let st = self.state.lock();
        st.delayed.len() + st.halves.len()
    }

    /// Records a stored half message.
    pub fn add_half(&self, half: Half) {
        if let Some(mut st) = self.own_writes() {
            st.halves.insert(half.position.physical, half);
        }
    }

    /// Claims a transaction for resolving (on a replica, which resolves
    /// nothing, it is always being resolved elsewhere).
    pub fn claim(&self, position: Position) -> Claim {
        let Some(mut st) = self.own_writes() else {
            return Claim::Resolving;
        };
        let physical = position.physical;
        if st.halves.get(&physical).map(|h| h.position) == Some(position) {
            st.resolving.insert(physical);
            return Claim::Pending(st.halves.remove(&physical).expect("present"));
        }
        if st.resolving.contains(&physical) {
            return Claim::Resolving;
        }
        match st.resolved.get(&physical) {
            Some((crc, r)) if *crc == position.crc => Claim::Resolved(*r),
            _ => Claim::Unknown,
        }
    }

    /// Gives back a claimed transaction whose resolution could not be stored.
    pub fn unclaim(&self, half: Half) {
        let Some(mut st) = self.own_writes() else {
            return;
        };
        st.resolving.remove(&half.position.physical);
        st.halves.insert(half.position.physical, half);
    }

    pub fn resolved(&self, position: Position, resolution: Resolution) {
        let Some(mut st) = self.own_writes() else {
            return;
        };
        st.resolving.remove(&position.physical);
        remember(&mut st, position, resolution);
    }

    /// Halves whose check is due: those with checks left get one more (the
    /// returned attempt number), the others are claimed for rollback.
    pub fn due_checks(
        &self,
        now: i64,
        interval_ms: i64,
        max_checks: u32,
    ) -> (Vec<(Half, u32)>, Vec<Half>) {
        let Some(mut st) = self.own_writes() else {
            return Default::default();
        };
        let mut checks = Vec::new();
        let mut expired = Vec::new();
        for half in st.halves.values_mut() {
            if half.next_check > now {
                continue;
            }
            if half.checks >= max_checks {
                expired.push(half.clone());
            } else {
                half.checks += 1;
                half.next_check = now + interval_ms;
                checks.push((half.clone(), half.checks));
            }
        }
        for h in &expired {
            st.halves.remove(&h.position.physical);
            st.resolving.insert(h.position.physical);
        }
        (checks, expired)
    }

    /// Registers a checker stream of a producer group, shown the checks of
    /// the topics it `sees`.
    pub fn add_checker(
        &self,
        group: &str,
        sees: SeesTopic,
    ) -> (u64, mpsc::Receiver<TransactionCheck>) {
        let (tx, rx) = mpsc::channel(1024);
        let id = self
            .next_checker
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.checkers
            .lock()
            .entry(group.to_string())
            .or_default()
            .push(Checker {
                id,
                queue: tx,
                sees,
            });
        (id, rx)
    }

    pub fn remove_checker(&self, group: &str, id: u64) {
        let mut checkers = self.checkers.lock();
        if let Some(list) = checkers.get_mut(group) {
            list.retain(|c| c.id != id);
            if list.is_empty() {
                checkers.remove(group);
            }
        }
    }

    /// Hands a check to one of the group's checkers that may see its topic
    /// (round robin); false when none is online or all are full.
    pub fn send_check(&self, group: &str, check: TransactionCheck) -> bool {
        let checkers = self.checkers.lock();
        let topic = check.message.record.topic.as_str();
        let Some(list) = checkers.get(group) else {
            return false;
        };
        let eligible: Vec<&Checker> = list.iter().filter(|c| (c.sees)(topic)).collect();
        if eligible.is_empty() {
            return false;
        }
        let start = self
            .next_checker
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed) as usize;
        (0..eligible.len()).any(|i| {
            eligible[(start + i) % eligible.len()]
                .queue
                .try_send(check.clone())
                .is_ok()
        })
    }

    /// The lowest commit-log position an unresolved staged record (or one being
    /// appended) may have; `log_end` when there is none.
    pub fn floor(&self, log_end: u64) -> u64 {
        let st = self.state.lock();
        [
            st.delayed.first(),
            st.halves.keys().next(),
            st.resolving.first(),
            st.appending.keys().next(),
        ]
        .into_iter()
        .flatten()
        .copied()
        .fold(log_end, u64::min)
    }

    /// Saves the scan position, when it moved since the last save.
    pub fn save(&self, log_end: u64) -> Result<()> {
        let scan_from = self.floor(log_end);
        let mut saved = self.saved_scan_from.lock();
        if *saved == scan_from {
            return Ok(());
        }
        metadata::save(&self.path, &Saved { scan_from })?;
        *saved = scan_from;
        Ok(())
    }
}

fn remember(st: &mut State, position: Position, resolution: Resolution) {
    let physical = position.physical;
    if st
        .resolved
        .insert(physical, (position.crc, resolution))
        .is_none()
    {
        st.resolved_order.push_back(physical);
        if st.resolved_order.len() > REMEMBERED_RESOLUTIONS
            && let Some(old) = st.resolved_order.pop_front()
        {
            st.resolved.remove(&old);
        }
    }
}

/// The properties a released copy keeps: the producer's, minus staging and
/// idempotence (the copy is not the producer's send), plus its origin.
pub fn released_properties(rec: &Record, origin: &MessageId) -> Vec<(String, String)> {
    let mut properties: Vec<(String, String)> = rec
        .properties
        .iter()
        .filter(|(k, _)| {
            ![
                properties::REAL_TOPIC,
                properties::REAL_QUEUE,
                properties::PRODUCER_GROUP,
                properties::PRODUCER_ID,
                properties::SEQUENCE,
            ]
            .iter()
            .any(|p| p.is(k))
        })
        .cloned()
        .collect();
    properties.push(properties::ORIGIN_ID.with(origin));
    properties
}

/// The record of how a staged record was resolved: a transaction's commit
/// (after its copy) or rollback, or a delayed message whose topic was deleted
/// before its release (`"dropped"`). Its key is the origin id, so the key
/// index finds it.
pub fn marker(origin: &MessageId, resolution: &str) -> crate::store::Message {
    crate::store::Message {
        topic: RESOLVED_TOPIC.to_string(),
        queue_id: 0,
        born_timestamp: crate::store::now_millis(),
        keys: vec![origin.to_string()],
        properties: vec![
            properties::ORIGIN_ID.with(origin),
            properties::RESOLUTION.with(resolution),
        ],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
