//! A simulated group member: a log of entries, its epoch history, and the
//! crate's rules for roles, acknowledgement and leases. Its log and history
//! survive a crash (everything stored is kept); its role, tracker, lease and
//! pending writes do not.

use std::collections::BTreeMap;
use std::time::Duration;

use dduomq_replication::{
    AckTracker, EpochHistory, FollowFrom, MasterLease, MemberId, MemberReport, MemberRole, Role,
    RoleChange, StoreCheck, role_change,
};

use super::checker::Checker;
use super::net::{
    Answer, Assignment, Caller, Entry, FetchAnswer, FetchRequest, Msg, Node, Outbox, Time, Timer,
};
use super::{GROUP_SIZE, Variant};

const MIN_IN_SYNC: u32 = 2;
pub const LAG_MAX: Duration = Duration::from_millis(500);
pub const TICK_MS: Time = 25;
const CHUNK_ENTRIES: usize = 64;
/// A parked fetch is answered (empty) after this long, so an idle follower
/// keeps proving it is caught up.
const LONG_POLL_MS: Time = 100;
/// A fetch with no answer after this long is sent again.
const FETCH_RETRY_MS: Time = 200;

#[derive(Debug)]
struct Parked {
    request: FetchRequest,
    since: Time,
}

#[derive(Debug)]
pub struct SimBroker {
    pub member: MemberId,
    pub up: bool,
    pub incarnation: u64,
    clock_offset: Time,
    pub log: Vec<Entry>,
    history: EpochHistory,
    /// The identity of its volume: a new one when the volume is replaced.
    store_id: u64,
    pub truncations: u64,
    pub role: MemberRole,
    tracker: Option<AckTracker>,
    lease: MasterLease,
    /// Appended, not yet acknowledged: (offset, write id).
    pending: Vec<(u64, u64)>,
    committed: u64,
    parked: BTreeMap<MemberId, Parked>,
    fetch_sent_at: Option<Time>,
    fetch_seq: u64,
}

impl SimBroker {
    pub fn new(member: MemberId, clock_offset: Time) -> Self {
        let history = EpochHistory::new();
        Self {
            member,
            up: true,
            incarnation: 0,
            clock_offset,
            log: Vec::new(),
            role: MemberRole::at_start(&history),
            history,
            store_id: u64::from(member) + 1,
            truncations: 0,
            tracker: None,
            lease: MasterLease::default(),
            pending: Vec::new(),
            committed: 0,
            parked: BTreeMap::new(),
            fetch_sent_at: None,
            fetch_seq: 0,
        }
    }

    fn local(&self, now: Time) -> Duration {
        Duration::from_millis(now + self.clock_offset)
    }

    pub fn is_master(&self) -> bool {
        self.up && self.role.role == Role::Master
    }

    fn log_end(&self) -> u64 {
        self.log.len() as u64
    }

    /// The process dies: what is volatile is gone.
    pub fn crash(&mut self) {
        self.up = false;
        self.incarnation += 1;
        self.role = MemberRole::at_start(&self.history);
        self.tracker = None;
        self.lease.revoke();
        self.pending.clear();
        self.parked.clear();
        self.fetch_sent_at = None;
    }

    /// The process dies and its volume is replaced by an empty one.
    pub fn lose_volume(&mut self) {
        self.log.clear();
        self.history = EpochHistory::new();
        // Unique among the group's volumes, past and present.
        self.store_id += u64::from(GROUP_SIZE);
        self.committed = 0;
        self.crash();
    }

    pub fn restart(&mut self, out: &mut Outbox) {
        self.up = true;
        out.after(TICK_MS, Timer::BrokerTick);
    }

    fn report(&mut self, now: Time, variant: Variant) -> MemberReport {
        let local = self.local(now);
        let proposal = self.tracker.as_mut().and_then(|tracker| {
            let proposal = tracker.proposal(local, LAG_MAX)?;
            if variant == Variant::AckBeforeRecorded {
                // Broken on purpose: wait only for the members it proposes,
                // whatever the controller recorded (or will).
                tracker.apply_recorded(&proposal.members, u64::MAX);
            }
            Some(proposal)
        });
        MemberReport {
            is_master: self.role.role == Role::Master,
            epoch: self.role.epoch,
            log_end: self.log_end(),
            proposal,
            store_id: Some(self.store_id),
        }
    }

    pub fn on_assign(
        &mut self,
        now: Time,
        caller: Caller,
        assignment: Assignment,
        variant: Variant,
        checker: &mut Checker,
        out: &mut Outbox,
    ) {
        let local = self.local(now);
        let before = self.role;
        let store = match variant {
            // Broken on purpose: the rules before store identities.
            Variant::IgnoreStoreIdentity => StoreCheck::Unchecked,
            _ => StoreCheck::of(assignment.master_store.unwrap_or(0), self.store_id),
        };
        let change = role_change(
            self.role,
            &self.history,
            assignment.epoch,
            assignment.role,
            store,
        );
        match change {
            RoleChange::Stale
            | RoleChange::RefuseMaster
            | RoleChange::RefuseMasterWithoutHistory
            | RoleChange::RefuseMasterOfReplacedStore => {}
            RoleChange::RenewMaster => {
                if let Some(tracker) = self.tracker.as_mut() {
                    tracker.apply_recorded(&assignment.in_sync, assignment.in_sync_version);
                }
                self.lease.grant(local, assignment.lease);
            }
            RoleChange::BecomeMaster => {
                if let Err(error) = self.history.begin(assignment.epoch, self.log_end()) {
                    checker.broken(
                        now,
                        format!("member {} cannot begin its epoch: {error}", self.member),
                    );
                }
                checker.master_begins(now, self.member, assignment.epoch, &self.log);
                self.tracker = Some(AckTracker::new(
                    self.member,
                    GROUP_SIZE,
                    MIN_IN_SYNC,
                    &assignment.in_sync,
                    assignment.in_sync_version,
                    local,
                ));
                self.lease.revoke();
                self.lease.grant(local, assignment.lease);
                self.committed = 0;
                self.fetch_sent_at = None;
            }
            RoleChange::Follow { .. } => {
                if self.role.role == Role::Master {
                    self.tracker = None;
                    self.lease.revoke();
                    self.pending.clear();
                    self.parked.clear();
                }
            }
        }
        self.role = change.apply(self.role, assignment.epoch);
        let report = self.report(now, variant);
        out.send(
            caller.node,
            Msg::State {
                call: caller.call,
                report,
            },
        );
        let newly_following = matches!(change, RoleChange::Follow { .. }) && self.role != before;
        if newly_following || self.fetch_sent_at.is_none() {
            self.fetch(now, out);
        }
    }

    pub fn on_query(&mut self, now: Time, caller: Caller, variant: Variant, out: &mut Outbox) {
        let report = self.report(now, variant);
        out.send(
            caller.node,
            Msg::State {
                call: caller.call,
                report,
            },
        );
    }

    pub fn on_write(
        &mut self,
        now: Time,
        id: u64,
        variant: Variant,
        checker: &mut Checker,
        out: &mut Outbox,
    ) {
        if self.role.role != Role::Master || !self.lease.valid(self.local(now)) {
            return;
        }
        let offset = self.log_end();
        self.log.push(Entry {
            epoch: self.role.epoch,
            id,
        });
        self.pending.push((offset, id));
        let parked = std::mem::take(&mut self.parked);
        for (_, parked) in parked {
            self.answer_fetch(now, parked.request, variant, checker, out);
        }
        self.acknowledge(now, checker);
    }

    /// Acknowledge what the waiting set stored; fail everything pending once
    /// the lease lapsed.
    fn acknowledge(&mut self, now: Time, checker: &mut Checker) {
        let Some(tracker) = self.tracker.as_ref() else {
            return;
        };
        if !self.lease.valid(self.local(now)) {
            self.pending.clear();
            return;
        }
        if let Some(end) = tracker.committed_end(self.log_end()) {
            self.committed = self.committed.max(end);
        }
        let committed = self.committed;
        let (acked, pending): (Vec<_>, Vec<_>) = self
            .pending
            .iter()
            .partition(|(offset, _)| *offset < committed);
        self.pending = pending;
        for (offset, id) in acked {
            checker.acknowledged(now, self.member, self.role.epoch, offset, id);
        }
    }

    /// Master side of a fetch; returns the stream start when it streams (for
    /// the checker's invariant 3).
    pub fn answer_fetch(
        &mut self,
        now: Time,
        request: FetchRequest,
        variant: Variant,
        checker: &mut Checker,
        out: &mut Outbox,
    ) -> Option<u64> {
        let follower = Node::Broker(request.member);
        let seq = request.seq;
        if self.role.role != Role::Master || request.epoch != self.role.epoch {
            out.send(
                follower,
                Msg::Fetched {
                    seq,
                    answer: FetchAnswer::NotMaster,
                },
            );
            return None;
        }
        let log_end = self.log_end();
        let answer = if variant == Variant::SkipDivergenceCheck {
            // Broken on purpose: trust the follower's log as a prefix.
            FollowFrom::Stream {
                from: request.log_end.min(log_end),
            }
        } else {
            self.history
                .follow_from(request.last_record_epoch, request.log_end, log_end)
        };
        match answer {
            FollowFrom::Truncate { offset, epoch } => {
                out.send(
                    follower,
                    Msg::Fetched {
                        seq,
                        answer: FetchAnswer::Truncate { offset, epoch },
                    },
                );
                None
            }
            FollowFrom::Stream { from } => {
                let local = self.local(now);
                if let Some(tracker) = self.tracker.as_mut() {
                    tracker.follower_stored(request.member, from, log_end, local);
                }
                if from == log_end {
                    self.parked.insert(
                        request.member,
                        Parked {
                            request,
                            since: now,
                        },
                    );
                } else {
                    let end = (from as usize + CHUNK_ENTRIES).min(self.log.len());
                    let chunk = FetchAnswer::Chunk {
                        start: from,
                        entries: self.log[from as usize..end].to_vec(),
                        epoch_starts: self.history.starts_within(from, end as u64),
                    };
                    out.send(follower, Msg::Fetched { seq, answer: chunk });
                }
                self.acknowledge(now, checker);
                Some(from)
            }
        }
    }

    pub fn on_tick(&mut self, now: Time, checker: &mut Checker, out: &mut Outbox) {
        out.after(TICK_MS, Timer::BrokerTick);
        match self.role.role {
            Role::Master => {
                self.acknowledge(now, checker);
                let expired: Vec<MemberId> = self
                    .parked
                    .iter()
                    .filter(|(_, parked)| now - parked.since >= LONG_POLL_MS)
                    .map(|(&member, _)| member)
                    .collect();
                for member in expired {
                    let Some(parked) = self.parked.remove(&member) else {
                        continue;
                    };
                    let from = parked.request.log_end;
                    let empty = FetchAnswer::Chunk {
                        start: from,
                        entries: Vec::new(),
                        epoch_starts: self.history.starts_within(from, from),
                    };
                    let seq = parked.request.seq;
                    out.send(Node::Broker(member), Msg::Fetched { seq, answer: empty });
                }
            }
            Role::Replica { .. } => {
                if self
                    .fetch_sent_at
                    .is_none_or(|sent| now - sent >= FETCH_RETRY_MS)
                {
                    self.fetch(now, out);
                }
            }
            Role::Unassigned => {}
        }
    }

    fn fetch(&mut self, now: Time, out: &mut Outbox) {
        let Role::Replica { master } = self.role.role else {
            return;
        };
        let request = FetchRequest {
            member: self.member,
            epoch: self.role.epoch,
            log_end: self.log_end(),
            last_record_epoch: self.history.last_record_epoch(self.log_end()),
            truncations: self.truncations,
            seq: self.fetch_seq + 1,
        };
        self.fetch_seq += 1;
        out.send(Node::Broker(master), Msg::Fetch(request));
        self.fetch_sent_at = Some(now);
    }

    /// Follower side: apply the master's answer and ask again.
    pub fn on_fetched(
        &mut self,
        now: Time,
        answer: Answer,
        checker: &mut Checker,
        out: &mut Outbox,
    ) {
        if !matches!(self.role.role, Role::Replica { .. }) || answer.seq != self.fetch_seq {
            return;
        }
        self.fetch_sent_at = None;
        match answer.answer {
            FetchAnswer::NotMaster => return,
            FetchAnswer::Truncate { offset, epoch } => {
                let end = self.history.truncation_end(offset, epoch, self.log_end());
                self.log.truncate(end as usize);
                self.history.truncate_from(end);
                self.truncations += 1;
            }
            FetchAnswer::Chunk {
                start,
                entries,
                epoch_starts,
            } => {
                if start != self.log_end() {
                    return;
                }
                self.history.truncate_from(start);
                self.log.extend(entries);
                for epoch_start in epoch_starts {
                    if let Err(error) = self
                        .history
                        .begin(epoch_start.epoch, epoch_start.start_offset)
                    {
                        checker.broken(
                            now,
                            format!(
                                "member {} rejects the master's epochs: {error}",
                                self.member
                            ),
                        );
                    }
                }
            }
        }
        self.fetch(now, out);
    }
}
