//! Replication groups (scenarios 8 to 14): each group's record as the operator
//! keeps it (ConfigMap `<broker statefulset>-group-<g>`) and what its members
//! report of themselves (BrokerInfo's replication state).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use dduomq_client::Admin;
use dduomq_client::proto as pb;
use dduomq_testkit::{Ledger, eventually_every};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};

use crate::pods::{BrokerPod, View, pod_name};
use crate::routes::query_route;
use crate::{NS, POLL, QUEUES, STS};

/// Brokers per group: the chart's default replication factor.
pub const FACTOR: u32 = 3;

/// A group's record: its master (a member index), epoch and in-sync set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    pub group: u32,
    pub master: Option<u32>,
    pub epoch: u64,
    pub in_sync: BTreeSet<u32>,
}

impl GroupRecord {
    /// The master's broker ordinal (= broker id).
    pub fn master_ordinal(&self) -> Option<u32> {
        self.master.map(|m| member_ordinal(self.group, m))
    }

    /// Every member in sync, under a master.
    pub fn whole(&self) -> bool {
        self.master.is_some() && self.in_sync == (0..FACTOR).collect()
    }
}

/// The broker ordinal of member `member` of group `group`.
pub fn member_ordinal(group: u32, member: u32) -> u32 {
    group * FACTOR + member
}

/// Group `group`'s record, once the operator has written one.
pub async fn group_record(client: &Client, group: u32) -> Option<GroupRecord> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), NS)
        .get_opt(&format!("{STS}-group-{group}"))
        .await
        .ok()??;
    let data = cm.data?;
    let in_sync = data
        .get("inSync")?
        .split(',')
        .filter(|m| !m.is_empty())
        .map(|m| m.parse().ok())
        .collect::<Option<BTreeSet<u32>>>()?;
    Some(GroupRecord {
        group,
        master: data.get("master").and_then(|m| m.parse().ok()),
        epoch: data.get("epoch")?.parse().ok()?,
        in_sync,
    })
}

/// What a broker reports of its place in its group.
pub async fn replica_state(address: &str) -> Option<pb::ReplicaState> {
    let call = async {
        Admin::connect(address)
            .ok()?
            .broker_info()
            .await
            .ok()?
            .replication
    };
    tokio::time::timeout(Duration::from_secs(3), call)
        .await
        .ok()
        .flatten()
}

/// A group whose master is recorded, every member in sync and serving, and the
/// master reporting itself master of the recorded epoch.
pub async fn healthy_group(client: &Client, view: &View, group: u32) -> Option<GroupRecord> {
    let record = group_record(client, group).await?;
    if !record.whole() {
        return None;
    }
    let pods = view.pods();
    let members: Vec<&BrokerPod> = pods
        .iter()
        .filter(|p| p.ordinal / FACTOR == group)
        .collect();
    if members.len() != FACTOR as usize || !members.iter().all(|p| p.serving()) {
        return None;
    }
    let master = pods
        .iter()
        .find(|p| Some(p.ordinal) == record.master_ordinal())?;
    let state = replica_state(&master.addr()?).await?;
    (state.role == pb::ReplicaRole::Master as i32 && state.epoch == record.epoch).then_some(record)
}

/// Waits until group `group` is healthy (see [`healthy_group`]).
pub async fn wait_healthy(
    client: &Client,
    view: &View,
    group: u32,
    timeout: Duration,
) -> GroupRecord {
    let started = Instant::now();
    loop {
        if let Some(r) = healthy_group(client, view, group).await {
            return r;
        }
        assert!(
            started.elapsed() < timeout,
            "group {group} not healthy within {timeout:?}: record {:?}, pods {:#?}",
            group_record(client, group).await,
            view.pods()
                .iter()
                .filter(|p| p.ordinal / FACTOR == group)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until every serving broker answers a route whose write queues are
/// spread over exactly the masters of `groups` (each queue written on one).
pub async fn wait_routed_to_masters(
    client: &Client,
    view: &View,
    groups: u32,
    timeout: Duration,
) -> Vec<String> {
    let started = Instant::now();
    loop {
        let mut masters = Vec::new();
        for g in 0..groups {
            if let Some(o) = group_record(client, g)
                .await
                .and_then(|r| r.master_ordinal())
            {
                masters.push(o);
            }
        }
        let pods = view.pods();
        let addresses: Vec<String> = masters
            .iter()
            .filter_map(|o| pods.iter().find(|p| p.ordinal == *o)?.addr())
            .collect();
        let serving = view.serving();
        let mut routed = addresses.len() == groups as usize && !serving.is_empty();
        for a in &serving {
            if !routed {
                break;
            }
            routed = match query_route(a).await {
                Ok(r) => {
                    let writers: BTreeSet<&String> = r.writable.keys().collect();
                    r.epoch > 0
                        && writers == addresses.iter().collect()
                        && r.writers_per_queue.len() == QUEUES as usize
                        && r.writers_per_queue.values().all(|n| *n == 1)
                }
                Err(_) => false,
            };
        }
        if routed {
            return addresses;
        }
        assert!(
            started.elapsed() < timeout,
            "the route did not name the masters {:?} of {groups} groups within {timeout:?}",
            masters.iter().map(|o| pod_name(*o)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A group's next master: the record naming it, when the test saw that
/// record, and the group's first acknowledged send after that.
pub struct Succession {
    pub record: GroupRecord,
    pub seen: Instant,
    pub first_ack: Instant,
}

impl Succession {
    pub fn master_ordinal(&self) -> u32 {
        self.record
            .master_ordinal()
            .expect("a successor names a master")
    }
}

/// Waits for a record naming another master than `before` at a higher epoch,
/// then for the group's first acknowledged send once that record was seen (at
/// most one poll late). Message ids of a replicated group carry the group, not
/// the member: callers make sure the old master can no longer acknowledge (it
/// is dead, or its lease lapsed before the election).
pub async fn wait_succession(client: &Client, ledger: &Ledger, before: &GroupRecord) -> Succession {
    let group = before.group;
    let record = eventually_every(POLL, Duration::from_secs(60), "a new master", async || {
        let r = group_record(client, group).await?;
        (r.epoch > before.epoch && r.master.is_some() && r.master != before.master).then_some(r)
    })
    .await;
    let seen = Instant::now();
    let first_ack = eventually_every(
        POLL,
        Duration::from_secs(60),
        "the new master to acknowledge a send",
        async || ledger.first_ack_by(group, seen),
    )
    .await;
    Succession {
        record,
        seen,
        first_ack,
    }
}
