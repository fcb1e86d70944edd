//! The scenarios, one file each, as methods of [`Cluster`].

mod bulk;
mod disruptions;
mod group_scale;
mod install;
mod isolation;
mod master_loss;
mod replicated_install;
mod rocketmq_failover;
mod rolling_upgrade;
mod scale_in;
mod scale_out;
mod soak;
mod teardown;

use std::sync::Arc;
use std::time::Duration;

use dduomq_operator::crd::Topic;
use dduomq_testkit::{Ledger, Report, eventually_every};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{Api, Client};

pub use master_loss::MasterLoss;
pub use soak::SoakSettings;

use crate::env::{CmdOut, Env};
use crate::groups::FACTOR;
use crate::pods::claim_name;
use crate::{NS, POLL, RELEASE, STS};

/// What every scenario works on: the environment, the API client, the report
/// and the ledger of every send and delivery.
pub struct Cluster {
    pub env: Env,
    pub client: Client,
    pub report: Report,
    pub ledger: Arc<Ledger>,
}

impl Cluster {
    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), NS)
    }

    async fn statefulset(&self) -> StatefulSet {
        Api::<StatefulSet>::namespaced(self.client.clone(), NS)
            .get(STS)
            .await
            .expect("the broker StatefulSet")
    }

    async fn claim(&self, ordinal: u32) -> Option<PersistentVolumeClaim> {
        Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), NS)
            .get_opt(&claim_name(ordinal))
            .await
            .expect("get PVC")
    }

    /// Applies `manifest` (a Topic `topic`, and what goes with it) and waits
    /// until the operator placed its `queues` queues on every one of `groups`
    /// broker groups.
    async fn apply_placed(&self, manifest: &str, topic: &str, queues: usize, groups: u32) {
        self.env
            .kubectl_ok(&["apply", "-f", "-"], Some(manifest))
            .await;
        let topics: Api<Topic> = Api::namespaced(self.client.clone(), NS);
        eventually_every(
            POLL,
            Duration::from_secs(60),
            &format!("topic {topic} placed on every group"),
            async || {
                let s = topics.get(topic).await.ok()?.status?;
                let owners: std::collections::BTreeSet<&str> =
                    s.assignment.iter().map(|a| a.broker.as_str()).collect();
                (s.assignment.len() == queues && owners.len() as u32 == groups).then_some(())
            },
        )
        .await;
    }

    async fn helm_upgrade(&self, sets: &[&str]) -> CmdOut {
        let chart = self.env.chart();
        let mut args = vec![
            "upgrade",
            RELEASE,
            &chart,
            "-n",
            NS,
            "--reuse-values",
            "--wait",
            "--timeout",
            "5m",
        ];
        args.extend_from_slice(sets);
        self.env.helm_ok(&args).await
    }
}

/// The installation a scenario both installations run works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Replication factor 1: every broker takes writes.
    Unreplicated { brokers: u32 },
    /// Groups of [`FACTOR`] brokers, each with one master taking writes.
    Replicated { groups: u32 },
}

impl Layout {
    pub fn brokers(self) -> u32 {
        match self {
            Layout::Unreplicated { brokers } => brokers,
            Layout::Replicated { groups } => groups * FACTOR,
        }
    }
}

fn ready_condition(conditions: &[Condition]) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}
