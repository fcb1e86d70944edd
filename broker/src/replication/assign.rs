//! AssignRole: the controller's decision for this member, applied with the
//! pure rule `role_change`. Renewals of a master (the common case, every
//! renewal interval) only extend the lease and apply the recorded in-sync
//! set; a role switch first stops every append of the old role.

use std::time::Duration;

use dduomq_proto::v1 as pb;
use dduomq_replication::{
    AckTracker, AssignedRole, MasterLease, MemberId, MemberRole, Monotonic, Role, RoleChange,
    StoreCheck, role_change,
};

use super::follower::FollowTarget;
use super::{Acks, Mastership, Replication, STATIC_LEASE, State};
use crate::messaging::error::BrokerError;
use crate::store::StoreError;

/// The epoch a static group's replica follows in: any master epoch at least
/// this (the master begins a new one on each start).
const STATIC_REPLICA_EPOCH: u64 = 1;

/// A validated AssignRole.
#[derive(Debug, Clone)]
struct Assignment {
    epoch: u64,
    role: AssignedRole,
    master_address: String,
    in_sync: Vec<MemberId>,
    in_sync_version: u64,
    lease: Duration,
    /// The store identity the record names for the master (0: unchecked).
    master_store: u64,
}

impl Replication {
    /// Applies the controller's AssignRole received at `received` (this
    /// process's monotonic clock; a master's lease counts from it) and
    /// answers with this member's state.
    pub async fn assign_role(
        &self,
        req: pb::AssignRoleRequest,
        received: Monotonic,
    ) -> Result<pb::ReplicaState, BrokerError> {
        if self.config.static_master.is_some() {
            return Err(BrokerError::invalid(
                "role",
                "this broker is in a static group ([replication] static_master): its roles are fixed",
            ));
        }
        let assignment = self.validate(req)?;
        // A renewal, or a replica told again what it does, needs no switch.
        {
            let mut state = self.state.lock();
            match self.change_for(&state, &assignment)? {
                RoleChange::RenewMaster => {
                    self.renew(&mut state, &assignment, received);
                    return Ok(self.report_of(&state));
                }
                RoleChange::Follow { master }
                    if state.role
                        == (MemberRole {
                            epoch: assignment.epoch,
                            role: Role::Replica { master },
                        })
                        && self.following(&assignment.master_address) =>
                {
                    return Ok(self.report_of(&state));
                }
                _ => {}
            }
        }
        let _switching = self.gate.write().await;
        let mut state = self.state.lock();
        let change = self.change_for(&state, &assignment)?;
        match change {
            RoleChange::RenewMaster => self.renew(&mut state, &assignment, received),
            RoleChange::BecomeMaster => {
                self.become_master(&mut state, &assignment, received)?;
            }
            RoleChange::Follow { master } => self.step_to_replica(&mut state, &assignment, master),
            RoleChange::Stale
            | RoleChange::RefuseMaster
            | RoleChange::RefuseMasterWithoutHistory
            | RoleChange::RefuseMasterOfReplacedStore => unreachable!("refused above"),
        }
        state.role = change.apply(state.role, assignment.epoch);
        Ok(self.report_of(&state))
    }

    /// The rule's answer; stale and refused assignments are errors.
    fn change_for(&self, state: &State, a: &Assignment) -> Result<RoleChange, BrokerError> {
        let store = StoreCheck::of(a.master_store, self.store.store_id());
        match role_change(state.role, &self.store.epochs(), a.epoch, a.role, store) {
            RoleChange::Stale => Err(BrokerError::invalid(
                "epoch",
                format!(
                    "epoch {} is older than epoch {} this member knows (or it is master of it)",
                    a.epoch, state.role.epoch
                ),
            )),
            RoleChange::RefuseMaster => Err(BrokerError::invalid(
                "epoch",
                format!(
                    "this member already began epoch {} (it restarted since); elect with a new epoch",
                    a.epoch
                ),
            )),
            RoleChange::RefuseMasterWithoutHistory => Err(BrokerError::invalid(
                "epoch",
                format!(
                    "this member has no history: it lost its volume; elect another for epoch {}",
                    a.epoch
                ),
            )),
            RoleChange::RefuseMasterOfReplacedStore => Err(BrokerError::invalid(
                "master_store",
                format!(
                    "this member's store is {:016x}, the record's master ran on store {:016x}: its \
                     volume was replaced and it lacks epoch {}'s messages; elect another",
                    self.store.store_id(),
                    a.master_store,
                    a.epoch
                ),
            )),
            change => Ok(change),
        }
    }

    fn following(&self, address: &str) -> bool {
        self.target
            .borrow()
            .as_ref()
            .is_some_and(|t| t.address == address)
    }

    fn validate(&self, req: pb::AssignRoleRequest) -> Result<Assignment, BrokerError> {
        let size = self.config.factor;
        let me = self.placement.member;
        if req.group != self.placement.group {
            return Err(BrokerError::invalid(
                "group",
                format!(
                    "this broker is member {me} of group {}, not of group {}",
                    self.placement.group, req.group
                ),
            ));
        }
        if req.group_size != size {
            return Err(BrokerError::invalid(
                "group_size",
                format!(
                    "{} differs from this broker's factor {size}",
                    req.group_size
                ),
            ));
        }
        if req.epoch == 0 {
            return Err(BrokerError::invalid("epoch", "must be at least 1"));
        }
        if let Some(m) = req.in_sync.iter().find(|&&m| m >= size) {
            return Err(BrokerError::invalid(
                "in_sync",
                format!("member {m} is not below the group size {size}"),
            ));
        }
        let role = match pb::ReplicaRole::try_from(req.role) {
            Ok(pb::ReplicaRole::Master) if req.master_member != me => {
                return Err(BrokerError::invalid(
                    "master_member",
                    format!(
                        "role MASTER names member {}, not this member {me}",
                        req.master_member
                    ),
                ));
            }
            Ok(pb::ReplicaRole::Master) if req.lease_ms == 0 => {
                return Err(BrokerError::invalid("lease_ms", "a master needs a lease"));
            }
            Ok(pb::ReplicaRole::Master) if !req.in_sync.contains(&me) => {
                return Err(BrokerError::invalid(
                    "in_sync",
                    "the master belongs to its in-sync set",
                ));
            }
            Ok(pb::ReplicaRole::Master) => AssignedRole::Master,
            Ok(pb::ReplicaRole::Replica)
                if req.master_member == me || req.master_member >= size =>
            {
                return Err(BrokerError::invalid(
                    "master_member",
                    format!("a replica's master must be another member below {size}"),
                ));
            }
            Ok(pb::ReplicaRole::Replica) if req.master_address.is_empty() => {
                return Err(BrokerError::invalid(
                    "master_address",
                    "a replica needs its master's address",
                ));
            }
            Ok(pb::ReplicaRole::Replica) => AssignedRole::Replica {
                master: req.master_member,
            },
            _ => return Err(BrokerError::invalid("role", "must be MASTER or REPLICA")),
        };
        Ok(Assignment {
            epoch: req.epoch,
            role,
            master_address: req.master_address,
            in_sync: req.in_sync,
            in_sync_version: req.in_sync_version,
            lease: Duration::from_millis(req.lease_ms),
            master_store: req.master_store,
        })
    }

    /// Extends the lease and applies the recorded in-sync set if newer.
    fn renew(&self, state: &mut State, a: &Assignment, received: Monotonic) {
        let epoch = state.role.epoch;
        let master_end = self.store.log_end();
        let Some(m) = state.master.as_mut() else {
            return;
        };
        m.lease.grant(received, a.lease);
        m.tracker.apply_recorded(&a.in_sync, a.in_sync_version);
        let committed = m.advance(master_end);
        let lease_until = self.lease_until(m);
        self.publish_open(epoch, committed, lease_until);
    }

    /// Begins the epoch at the log end, then takes writes.
    fn become_master(
        &self,
        state: &mut State,
        a: &Assignment,
        received: Monotonic,
    ) -> Result<(), StoreError> {
        // The follower task stops at its next chunk (it checks its target
        // under the gate this switch holds).
        self.target.send_replace(None);
        self.streaming_from_master.send_replace(false);
        state.upstream_committed = None;
        let log_end = self.store.log_end();
        if self.store.epochs().latest_epoch() < a.epoch {
            self.store.begin_epoch(a.epoch, log_end)?;
        }
        let mut lease = MasterLease::default();
        lease.grant(received, a.lease);
        let mut master = Mastership {
            tracker: AckTracker::new(
                self.placement.member,
                self.config.factor,
                self.config.min_in_sync(),
                &a.in_sync,
                a.in_sync_version,
                self.now(),
            ),
            lease,
            committed_end: 0,
        };
        let committed = master.advance(log_end);
        self.publish_open(a.epoch, committed, self.lease_until(&master));
        state.master = Some(master);
        self.count_role_change();
        tracing::info!(
            group = self.placement.group,
            member = self.placement.member,
            epoch = a.epoch,
            log_end,
            in_sync = ?a.in_sync,
            "became master"
        );
        Ok(())
    }

    /// Stops acknowledging (pending waits fail with NOT_MASTER) and follows
    /// the master.
    fn step_to_replica(&self, state: &mut State, a: &Assignment, master: MemberId) {
        let was = state.role;
        if state.master.take().is_some() {
            // Under the gate and the state lock, before following anyone.
            if let Some(observer) = self.stepping_down.get().and_then(|o| o.upgrade()) {
                observer.stepping_down();
            }
            tracing::warn!(
                group = self.placement.group,
                epoch = was.epoch,
                new_epoch = a.epoch,
                "stepped down as master"
            );
        }
        self.acks.send_replace(Acks::Closed);
        state.upstream_committed = None;
        self.target.send_replace(Some(FollowTarget {
            epoch: a.epoch,
            master,
            address: a.master_address.clone(),
        }));
        if was.role != (Role::Replica { master }) || was.epoch != a.epoch {
            self.count_role_change();
            tracing::info!(
                group = self.placement.group,
                member = self.placement.member,
                epoch = a.epoch,
                master,
                address = a.master_address,
                "following"
            );
        }
    }

    /// A static group: the configured master begins a new epoch (the newest
    /// its history knows + 1) at its log end on every start, with every
    /// member recorded in sync and a lease that never lapses; the others
    /// follow it. A new epoch on each start makes a replica holding bytes the
    /// master lost at a restart (an unflushed tail) cut them rather than
    /// continue after them. Epochs the lost tail held are dropped first.
    pub(super) async fn assign_static(&self, master: MemberId) -> Result<(), StoreError> {
        let role = if master == self.placement.member {
            AssignedRole::Master
        } else {
            AssignedRole::Replica { master }
        };
        let epoch = match role {
            AssignedRole::Master => {
                let newest = self.store.epochs().latest_epoch();
                self.store.truncate_log(self.store.log_end()).await?;
                newest + 1
            }
            AssignedRole::Replica { .. } => STATIC_REPLICA_EPOCH,
        };
        let assignment = Assignment {
            epoch,
            role,
            master_address: self.config.peers[master as usize].clone(),
            in_sync: (0..self.config.factor).collect(),
            in_sync_version: 1,
            lease: STATIC_LEASE,
            master_store: self.store.store_id(),
        };
        let mut state = self.state.lock();
        match assignment.role {
            AssignedRole::Master => {
                self.become_master(&mut state, &assignment, self.now())?;
                state.role = MemberRole {
                    epoch,
                    role: Role::Master,
                };
            }
            AssignedRole::Replica { master } => {
                self.step_to_replica(&mut state, &assignment, master);
                state.role = MemberRole {
                    epoch,
                    role: Role::Replica { master },
                };
            }
        }
        Ok(())
    }

    /// A static group has no controller: its master records its own
    /// proposals (a lagging replica leaves the set it waits for, a caught-up
    /// one returns).
    pub(super) fn record_own_proposal(&self) {
        let now = self.now();
        let master_end = self.store.log_end();
        let mut state = self.state.lock();
        let epoch = state.role.epoch;
        let Some(m) = state.master.as_mut() else {
            return;
        };
        if let Some(p) = m.tracker.proposal(now, self.config.replica_lag_max) {
            tracing::info!(in_sync = ?p.members, "static group: in-sync set changed");
            m.tracker.apply_recorded(&p.members, p.based_on + 1);
            let committed = m.advance(master_end);
            let lease_until = self.lease_until(m);
            self.publish_open(epoch, committed, lease_until);
        }
    }
}
