//! What this member reports about its group: the `ReplicaState` of
//! BrokerInfo and AssignRole replies (the controller reads the master's
//! proposed in-sync set there), and the replication gauges.

use dduomq_proto::v1 as pb;
use dduomq_replication::Role;

use super::{Replication, State};

impl Replication {
    /// This member's state now.
    pub fn report(&self) -> pb::ReplicaState {
        self.report_of(&self.state.lock())
    }

    pub(super) fn report_of(&self, state: &State) -> pb::ReplicaState {
        let now = self.now();
        let log_end = self.store.log_end();
        let mut report = pb::ReplicaState {
            group: self.placement.group,
            member: self.placement.member,
            role: wire_role(state.role.role) as i32,
            epoch: state.role.epoch,
            log_end,
            last_record_epoch: self.store.epochs().last_record_epoch(log_end),
            store_id: self.store.store_id(),
            ack_policy: crate::grpc::convert::ack_policy_to_pb(self.config.ack_policy) as i32,
            ..Default::default()
        };
        if let Some(committed) = state.upstream_committed {
            report.committed_end = committed;
        }
        let Some(m) = &state.master else {
            return report;
        };
        let waiting = m.tracker.waiting();
        let recorded = m.tracker.recorded();
        report.committed_end = m.committed_end;
        report.in_sync = waiting;
        report.in_sync_version = m.tracker.recorded_version();
        report.lease_remaining_ms = m.lease.remaining(now).as_millis() as u64;
        report.followers = m
            .tracker
            .followers()
            .map(|(member, progress)| pb::FollowerState {
                member,
                acked_end: progress.stored_end,
                lag_bytes: log_end.saturating_sub(progress.stored_end),
                lag_ms: now.saturating_sub(progress.caught_up_at).as_millis() as u64,
                in_sync: recorded.contains(&member),
            })
            .collect();
        if let Some(p) = m.tracker.proposal(now, self.config.replica_lag_max) {
            report.proposed_in_sync = p.members;
            report.proposal_based_on = p.based_on;
        }
        report
    }

    /// Sets the gauges from the state now (at scrape time).
    pub fn update_gauges(&self) {
        let Some(metrics) = &self.metrics else { return };
        let m = &metrics.replication;
        let report = self.report();
        m.role.set(report.role.into());
        m.epoch.set(report.epoch as i64);
        m.in_sync_members.set(report.in_sync.len() as i64);
        m.lag_bytes.reset();
        m.lag_seconds.reset();
        for f in &report.followers {
            let member = f.member.to_string();
            m.lag_bytes
                .with_label_values(&[&member])
                .set(f.lag_bytes as i64);
            m.lag_seconds
                .with_label_values(&[&member])
                .set(f.lag_ms as f64 / 1000.0);
        }
    }

    pub(super) fn count_role_change(&self) {
        if let Some(metrics) = &self.metrics {
            metrics.replication.elections.inc();
        }
    }
}

fn wire_role(role: Role) -> pb::ReplicaRole {
    match role {
        Role::Unassigned => pb::ReplicaRole::Unspecified,
        Role::Master => pb::ReplicaRole::Master,
        Role::Replica { .. } => pb::ReplicaRole::Replica,
    }
}
