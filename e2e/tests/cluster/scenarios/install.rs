//! Scenario 1: `helm install` → 3 brokers and the operator Ready; `helm test` passes.

use std::time::Instant;

use dduomq_client::Admin;
use dduomq_testkit::{Step, secs};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::Cluster;
use crate::pods::{BrokerPod, broker_pods, claim_name};
use crate::{NS, OPERATOR, OPERATOR_SELECTOR, RELEASE, VALUES};

impl Cluster {
    /// Scenario 1.
    pub async fn install(&self) {
        let step = Step::start(
            &self.report,
            "1-install",
            "helm install → 3 brokers and the operator Ready; helm test passes",
        );
        let t = Instant::now();
        self.helm_install(
            VALUES,
            &[
                "--set",
                "broker.flush=sync",
                "--set",
                "broker.replicationFactor=1",
            ],
        )
        .await;
        let to_ready = t.elapsed();

        let pods = broker_pods(&self.client).await.expect("broker pods");
        assert_eq!(
            pods.iter().map(|p| p.ordinal).collect::<Vec<_>>(),
            vec![0, 1, 2],
            "{pods:#?}"
        );
        assert!(pods.iter().all(BrokerPod::serving), "{pods:#?}");
        let sts = self.statefulset().await;
        assert_eq!(sts.status.as_ref().and_then(|s| s.ready_replicas), Some(3));
        let operator = Api::<Deployment>::namespaced(self.client.clone(), NS)
            .get(OPERATOR)
            .await
            .expect("the operator Deployment");
        assert_eq!(
            operator.status.as_ref().and_then(|s| s.available_replicas),
            Some(1),
            "operator status {:?}",
            operator.status
        );
        let operator_pods = self
            .pods()
            .list(&ListParams::default().labels(OPERATOR_SELECTOR))
            .await
            .expect("operator pods");
        assert_eq!(operator_pods.items.len(), 1);
        for p in &pods {
            let claim = self.claim(p.ordinal).await.expect("the broker's PVC");
            assert_eq!(
                claim.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Bound"),
                "{}",
                claim.name_any()
            );
            assert_eq!(p.claim.as_deref(), Some(claim_name(p.ordinal).as_str()));
            // The broker id comes from the pod-index label through the downward API.
            let info = Admin::connect(&p.addr().expect("pod IP"))
                .expect("admin client")
                .broker_info()
                .await
                .unwrap_or_else(|e| panic!("BrokerInfo of {}: {e}", p.name));
            assert_eq!(info.broker_id, p.ordinal, "{}", p.name);
            assert_eq!(info.flush_mode, "sync", "{}", p.name);
        }
        step.set("helm_install_to_ready_s", secs(to_ready));

        let t = Instant::now();
        let out = self
            .env
            .helm(&["test", RELEASE, "-n", NS, "--timeout", "5m"])
            .await;
        if !out.success {
            let logs = self
                .env
                .kubectl(&["logs", "-n", NS, "dduomq-helm-test", "--tail=50"], None)
                .await;
            panic!(
                "helm test failed: {}\n--- test pod log\n{}{}",
                out.describe(),
                logs.stdout,
                logs.stderr
            );
        }
        step.set("helm_test_s", secs(t.elapsed()));
        step.done();
    }

    /// `helm install` of the release with the values file `values` and `sets`
    /// (the operator resyncs every 5 s); waits until everything is Ready.
    pub(super) async fn helm_install(&self, values: &str, sets: &[&str]) {
        let file = self.env.work.join("cluster-values.yaml");
        std::fs::write(&file, values).expect("write the values file");
        let file = file.display().to_string();
        let chart = self.env.chart();
        let mut args = vec![
            "install",
            RELEASE,
            &chart,
            "-n",
            NS,
            "--create-namespace",
            "--set",
            "operator.resync=5s",
            "-f",
            &file,
            "--wait",
            "--timeout",
            "5m",
        ];
        args.extend_from_slice(sets);
        self.env.helm_ok(&args).await;
    }
}
