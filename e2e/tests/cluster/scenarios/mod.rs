//! The scenarios, one file each, as methods of [`Cluster`].

mod bulk;
mod disruptions;
mod install;
mod rolling_upgrade;
mod scale_in;
mod scale_out;
mod teardown;

use std::sync::Arc;

use dduomq_testkit::{Ledger, Report};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{Api, Client};

use crate::env::{CmdOut, Env};
use crate::pods::claim_name;
use crate::{NS, RELEASE, STS};

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

fn ready_condition(conditions: &[Condition]) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}
