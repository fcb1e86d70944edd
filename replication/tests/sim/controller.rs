//! A simulated controller (the operator's role): renewal rounds that read the
//! group's record from the API server, run `decide`, write with
//! compare-and-swap and assign roles. Only the leader acts; a controller that
//! loses leadership stops at once (its messages in flight still arrive).

use std::collections::BTreeMap;
use std::time::Duration;

use dduomq_replication::{
    AssignedRole, Decision, ElectionTiming, GroupRecord, MasterContact, MemberId, MemberReport,
    MemberView, decide,
};

use super::net::{Assignment, Msg, Node, Outbox, Stored, Time, Timer};
use super::{GROUP_SIZE, Variant};

pub const LEASE: Duration = Duration::from_millis(1000);
/// At least the AssignRole call timeout: a new leader's wait must also cover
/// grants its predecessor had in flight.
pub const MARGIN: Duration = Duration::from_millis(200);
/// AssignRole calls give up after this; the model delivers them within it or
/// never (a broker acts on a grant only within the call's deadline).
pub const ASSIGN_TIMEOUT_MS: Time = 150;
const API_TIMEOUT_MS: Time = 300;
const ROUND_MS: Time = 100;

#[derive(Debug, Clone)]
enum Call {
    Read,
    /// A write of the in-sync set or the master's store identity.
    Record,
    /// A write electing a new master.
    Elect,
    /// `to_master`: the (member, epoch) of the master this assignment renews.
    Assign {
        member: MemberId,
        to_master: Option<(MemberId, u64)>,
    },
    Query {
        member: MemberId,
    },
}

/// The contact with the recorded master, and which master that is.
#[derive(Debug, Clone, Copy)]
struct Contact {
    master: MemberId,
    epoch: u64,
    contact: MasterContact,
}

#[derive(Debug)]
pub struct SimController {
    clock_offset: Time,
    pub leading: bool,
    /// Bumped when leadership changes: drops timers of an earlier term.
    pub term: u64,
    leader_since: Duration,
    calls: BTreeMap<u64, Call>,
    next_call: u64,
    stored: Option<Stored>,
    contact: Option<Contact>,
    reports: Vec<Option<MemberReport>>,
}

impl SimController {
    pub fn new(clock_offset: Time) -> Self {
        Self {
            clock_offset,
            leading: false,
            term: 0,
            leader_since: Duration::ZERO,
            calls: BTreeMap::new(),
            next_call: 0,
            stored: None,
            contact: None,
            reports: vec![None; GROUP_SIZE as usize],
        }
    }

    fn local(&self, now: Time) -> Duration {
        Duration::from_millis(now + self.clock_offset)
    }

    /// It became leader: a fresh process's view, nothing carried over.
    pub fn gain(&mut self, now: Time, out: &mut Outbox) {
        self.leading = true;
        self.term += 1;
        self.leader_since = self.local(now);
        self.calls.clear();
        self.stored = None;
        self.contact = None;
        self.reports = vec![None; GROUP_SIZE as usize];
        out.after(0, Timer::Round);
    }

    pub fn lose(&mut self) {
        self.leading = false;
        self.term += 1;
        self.calls.clear();
    }

    fn call(
        &mut self,
        to: Node,
        call: Call,
        msg: impl FnOnce(u64) -> Msg,
        timeout: Time,
        out: &mut Outbox,
    ) {
        let id = self.next_call;
        self.next_call += 1;
        self.calls.insert(id, call);
        out.send(to, msg(id));
        out.after(timeout, Timer::CallTimeout { call: id });
    }

    pub fn on_round(&mut self, out: &mut Outbox) {
        out.after(ROUND_MS, Timer::Round);
        if self.leading && self.calls.is_empty() {
            self.call(
                Node::Api,
                Call::Read,
                |call| Msg::ReadRecord { call },
                API_TIMEOUT_MS,
                out,
            );
        }
    }

    /// Track the master a (newly read or written) record names.
    fn adopt(&mut self, now: Time, stored: Stored) {
        let local = self.local(now);
        if let Some(master) = stored.record.master {
            let same = self
                .contact
                .is_some_and(|c| c.master == master && c.epoch == stored.record.epoch);
            if !same {
                let previous = self.contact.map(|c| c.contact);
                let contact = MasterContact::succeeding(previous.as_ref(), local, LEASE, MARGIN);
                self.contact = Some(Contact {
                    master,
                    epoch: stored.record.epoch,
                    contact,
                });
            }
        }
        self.stored = Some(stored);
    }

    pub fn on_message(
        &mut self,
        now: Time,
        msg: Msg,
        ready: &[bool],
        variant: Variant,
        out: &mut Outbox,
    ) {
        if !self.leading {
            return;
        }
        match msg {
            Msg::RecordRead { call, stored } if self.calls.remove(&call).is_some() => {
                self.adopt(now, stored);
                self.act(now, ready, variant, out);
            }
            Msg::RecordWritten { call, stored } => {
                if let Some(kind) = self.calls.remove(&call)
                    && let Some(stored) = stored
                {
                    self.adopt(now, stored);
                    if matches!(kind, Call::Elect)
                        && let Some(contact) = self.contact.as_mut()
                    {
                        contact.contact.election_written();
                    }
                    self.assign(None, out);
                }
            }
            Msg::State { call, report } => match self.calls.remove(&call) {
                Some(Call::Assign { member, to_master }) => {
                    self.reports[member as usize] = Some(report);
                    self.attempt_ended(now, to_master, true);
                }
                Some(Call::Query { member }) => self.reports[member as usize] = Some(report),
                _ => {}
            },
            _ => {}
        }
    }

    pub fn on_timeout(&mut self, now: Time, call: u64) {
        match self.calls.remove(&call) {
            Some(Call::Assign { to_master, .. }) => self.attempt_ended(now, to_master, false),
            Some(Call::Elect) => {
                if let Some(contact) = self.contact.as_mut() {
                    contact.contact.replacement_attempted();
                }
            }
            _ => {}
        }
    }

    fn attempt_ended(&mut self, now: Time, to_master: Option<(MemberId, u64)>, answered: bool) {
        let local = self.local(now);
        if let (Some((master, epoch)), Some(contact)) = (to_master, self.contact.as_mut())
            && contact.master == master
            && contact.epoch == epoch
        {
            contact.contact.attempt_ended(local, answered);
        }
    }

    fn act(&mut self, now: Time, ready: &[bool], variant: Variant, out: &mut Outbox) {
        let Some(stored) = self.stored.clone() else {
            return;
        };
        let mut members: Vec<MemberView> = (0..GROUP_SIZE)
            .map(|member| MemberView {
                member,
                ready: ready[member as usize],
                report: self.reports[member as usize].clone(),
            })
            .collect();
        if variant == Variant::IgnoreReplicaStores {
            // Broken on purpose: the replicas' stores are neither recorded
            // nor compared (only the master's is).
            let replicas = members
                .iter_mut()
                .filter(|view| Some(view.member) != stored.record.master);
            for report in replicas.filter_map(|view| view.report.as_mut()) {
                report.store_id = None;
            }
        }
        let local = self.local(now);
        let mut contact = self
            .contact
            .map_or(MasterContact::new(self.leader_since), |c| c.contact);
        let mut timing = ElectionTiming {
            leader_since: self.leader_since,
            lease: LEASE,
            margin: MARGIN,
        };
        if variant == Variant::ElectWithoutFence {
            // Broken on purpose: forget the attempts and the new-leader wait.
            contact.fence = Default::default();
            contact.promote_not_before = None;
            timing.leader_since = Duration::ZERO;
            timing.margin = Duration::ZERO;
        }
        match decide(&stored.record, &members, &contact, &timing, local) {
            Decision::Renew => self.assign(None, out),
            Decision::NoCandidate => {
                self.assign(None, out);
                self.query_unreported(out);
            }
            Decision::Fence { .. } => self.assign(stored.record.master, out),
            Decision::Record(record) => self.write(stored.version, record, Call::Record, out),
            Decision::Elect(record) => self.write(stored.version, record, Call::Elect, out),
        }
    }

    fn write(&mut self, expected: u64, record: GroupRecord, call: Call, out: &mut Outbox) {
        self.call(
            Node::Api,
            call,
            |call| Msg::WriteRecord {
                call,
                expected,
                record,
            },
            API_TIMEOUT_MS,
            out,
        );
    }

    /// Reads the state of every member that has not reported (no election
    /// before: a new group's members are assigned nothing until then).
    fn query_unreported(&mut self, out: &mut Outbox) {
        for member in 0..GROUP_SIZE {
            if self.reports[member as usize].is_none() {
                self.call(
                    Node::Broker(member),
                    Call::Query { member },
                    |call| Msg::QueryState { call },
                    ASSIGN_TIMEOUT_MS,
                    out,
                );
            }
        }
    }

    /// AssignRole to every member but `skip` (which only gets its state read).
    fn assign(&mut self, skip: Option<MemberId>, out: &mut Outbox) {
        let Some(stored) = self.stored.clone() else {
            return;
        };
        let record: &GroupRecord = &stored.record;
        let Some(master) = record.master else {
            return;
        };
        for member in 0..GROUP_SIZE {
            let to = Node::Broker(member);
            if Some(member) == skip {
                self.call(
                    to,
                    Call::Query { member },
                    |call| Msg::QueryState { call },
                    ASSIGN_TIMEOUT_MS,
                    out,
                );
                continue;
            }
            let role = if member == master {
                AssignedRole::Master
            } else {
                AssignedRole::Replica { master }
            };
            let assignment = Assignment {
                epoch: record.epoch,
                role,
                in_sync: record.in_sync.clone(),
                in_sync_version: record.in_sync_version,
                lease: LEASE,
                master_store: record.master_store,
            };
            let to_master = (member == master).then_some((master, record.epoch));
            self.call(
                to,
                Call::Assign { member, to_master },
                |call| Msg::AssignRole { call, assignment },
                ASSIGN_TIMEOUT_MS,
                out,
            );
        }
    }
}
