//! Virtual time, the event queue and the messages the simulated processes
//! exchange. Delivery (delays, drops, partitions) is decided by the world.

use std::collections::BTreeMap;
use std::time::Duration;

use super::faults::Fault;
use dduomq_replication::{AssignedRole, EpochStart, GroupRecord, MemberId, MemberReport};

/// Virtual milliseconds since the start of a schedule.
pub type Time = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Node {
    Controller(usize),
    Broker(MemberId),
    Api,
    Client,
}

/// One log entry: the epoch it was written in and the client's write id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub epoch: u64,
    pub id: u64,
}

/// The group's record as the API server stores it, with its CAS version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub record: GroupRecord,
    pub version: u64,
}

/// Who called, to answer them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub node: Node,
    pub call: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub epoch: u64,
    pub role: AssignedRole,
    pub in_sync: Vec<MemberId>,
    pub in_sync_version: u64,
    pub lease: Duration,
    /// The recorded master's store identity (`GroupRecord::master_store`).
    pub master_store: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    pub member: MemberId,
    pub epoch: u64,
    pub log_end: u64,
    pub last_record_epoch: u64,
    /// How often the follower truncated: lets the checker tell whether the
    /// log it compares is the one the request described.
    pub truncations: u64,
    /// Answers carry it back: a follower acts only on the answer to its
    /// latest fetch, as it acts only on its current Follow stream (a stale
    /// Truncate applied after newer chunks would cut acknowledged records).
    pub seq: u64,
}

/// A fetch answer with the sequence number of the fetch it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub seq: u64,
    pub answer: FetchAnswer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchAnswer {
    Truncate {
        offset: u64,
        epoch: u64,
    },
    Chunk {
        start: u64,
        entries: Vec<Entry>,
        epoch_starts: Vec<EpochStart>,
    },
    NotMaster,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    ReadRecord {
        call: u64,
    },
    RecordRead {
        call: u64,
        stored: Stored,
    },
    WriteRecord {
        call: u64,
        expected: u64,
        record: GroupRecord,
    },
    /// `None`: the version did not match.
    RecordWritten {
        call: u64,
        stored: Option<Stored>,
    },
    AssignRole {
        call: u64,
        assignment: Assignment,
    },
    QueryState {
        call: u64,
    },
    State {
        call: u64,
        report: MemberReport,
    },
    Fetch(FetchRequest),
    Fetched {
        seq: u64,
        answer: FetchAnswer,
    },
    Write {
        id: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// A broker's periodic work (fetch, acknowledgement, long-poll answers).
    BrokerTick,
    /// A controller's renewal round.
    Round,
    /// A controller call that got no answer in time.
    CallTimeout {
        call: u64,
    },
    Client,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `to_incarnation`: a message to a broker that restarted since it was
    /// sent is lost with the old connection.
    Deliver {
        from: Node,
        to: Node,
        to_incarnation: u64,
        msg: Msg,
    },
    /// `incarnation` drops the timers of a process that crashed since.
    Timer {
        node: Node,
        incarnation: u64,
        timer: Timer,
    },
    Fault(Fault),
    Restart {
        member: MemberId,
    },
    LeaderGained {
        controller: usize,
    },
}

/// Events in time order (ties in the order they were scheduled).
#[derive(Debug, Default)]
pub struct Queue {
    events: BTreeMap<(Time, u64), Event>,
    next_seq: u64,
}

impl Queue {
    pub fn push(&mut self, at: Time, event: Event) {
        self.events.insert((at, self.next_seq), event);
        self.next_seq += 1;
    }

    pub fn pop(&mut self) -> Option<(Time, Event)> {
        self.events.pop_first().map(|((at, _), event)| (at, event))
    }
}

/// What a process wants done after handling an event.
#[derive(Debug, Default)]
pub struct Outbox {
    pub messages: Vec<(Node, Msg)>,
    pub timers: Vec<(Time, Timer)>,
}

impl Outbox {
    pub fn send(&mut self, to: Node, msg: Msg) {
        self.messages.push((to, msg));
    }

    /// A timer `after` virtual ms from now.
    pub fn after(&mut self, after: Time, timer: Timer) {
        self.timers.push((after, timer));
    }
}
