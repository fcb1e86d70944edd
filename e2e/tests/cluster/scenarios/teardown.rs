//! Scenario 7: delete the operator, then the Topics and ConsumerGroups (nothing
//! hangs); `helm uninstall` cleans up; the retained claims and the namespace
//! are deleted.

use std::time::{Duration, Instant};

use dduomq_operator::crd::{ConsumerGroup, Topic};
use dduomq_testkit::{Step, eventually_every, secs};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client, ResourceExt};

use super::Cluster;
use crate::pods::claim_name;
use crate::{GROUP, NS, OPERATOR, OPERATOR_SELECTOR, POLL, RELEASE, RELEASE_SELECTOR, STS, TOPIC};

impl Cluster {
    /// Scenario 7.
    pub async fn teardown(&self) {
        let key = "7-teardown";
        let step = Step::start(
            &self.report,
            key,
            "delete the operator, then the Topics and ConsumerGroups (nothing hangs); helm uninstall (its hook releases a Topic left behind) cleans up",
        );
        let t = Instant::now();
        Api::<Deployment>::namespaced(self.client.clone(), NS)
            .delete(OPERATOR, &DeleteParams::background())
            .await
            .expect("deleting the operator Deployment");
        eventually_every(
            POLL,
            Duration::from_secs(120),
            "the operator pod gone",
            async || {
                let pods = self
                    .pods()
                    .list(&ListParams::default().labels(OPERATOR_SELECTOR))
                    .await
                    .ok()?;
                pods.items.is_empty().then_some(())
            },
        )
        .await;
        let operator_gone = t.elapsed();

        let topics: Api<Topic> = Api::namespaced(self.client.clone(), NS);
        let groups: Api<ConsumerGroup> = Api::namespaced(self.client.clone(), NS);
        let t = Instant::now();
        let topic_names: Vec<String> = topics
            .list(&ListParams::default())
            .await
            .expect("list Topics")
            .items
            .iter()
            .map(|t| t.name_any())
            .collect();
        let group_names: Vec<String> = groups
            .list(&ListParams::default())
            .await
            .expect("list ConsumerGroups")
            .items
            .iter()
            .map(|g| g.name_any())
            .collect();
        assert!(topic_names.contains(&TOPIC.to_string()), "{topic_names:?}");
        assert!(group_names.contains(&GROUP.to_string()), "{group_names:?}");
        for name in &group_names {
            groups
                .delete(name, &DeleteParams::default())
                .await
                .unwrap_or_else(|e| panic!("deleting ConsumerGroup {name}: {e}"));
        }
        for name in &topic_names {
            topics
                .delete(name, &DeleteParams::default())
                .await
                .unwrap_or_else(|e| panic!("deleting Topic {name}: {e}"));
        }
        let deleted = loop {
            let t_left = with_finalizers(&topics).await;
            let g_left = with_finalizers(&groups).await;
            if t_left.is_empty() && g_left.is_empty() {
                break t.elapsed();
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "Topics/ConsumerGroups still there 60s after their deletion with the operator gone \
                 (finalizer escape hatch): topics {t_left:?}, groups {g_left:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        };

        // `helm uninstall` with the operator running and a Topic left behind
        // (with its finalizer): the chart's pre-delete hook stops the operator
        // and releases the finalizer, so the Topic stays deletable.
        self.helm_upgrade(&[]).await; // brings the operator Deployment back
        let orphan = "e2e-left-behind";
        self.env
            .kubectl_ok(
                &["apply", "-f", "-"],
                Some(&format!(
                    "apiVersion: dduomq.io/v1alpha1\nkind: Topic\nmetadata:\n  name: {orphan}\n  namespace: {NS}\nspec:\n  queues: 1\n"
                )),
            )
            .await;
        let finalizer = "dduomq.io/topic-cleanup";
        eventually_every(
            POLL,
            Duration::from_secs(60),
            "the operator adds its finalizer",
            async || {
                let t = topics.get(orphan).await.ok()?;
                t.finalizers().iter().any(|f| f == finalizer).then_some(())
            },
        )
        .await;

        let out = self
            .env
            .helm_ok(&["uninstall", RELEASE, "-n", NS, "--wait", "--timeout", "5m"])
            .await;
        let uninstall = out.took;
        let left_behind = topics
            .get(orphan)
            .await
            .expect("the Topic outlives the release");
        assert!(
            !left_behind.finalizers().iter().any(|f| f == finalizer),
            "the uninstall hook released the finalizer: {:?}",
            left_behind.finalizers()
        );
        topics
            .delete(orphan, &DeleteParams::default())
            .await
            .expect("deleting the Topic left behind");
        eventually_every(
            POLL,
            Duration::from_secs(10),
            "the Topic left behind deleted",
            async || topics.get_opt(orphan).await.ok()?.is_none().then_some(()),
        )
        .await;
        let t = Instant::now();
        eventually_every(
            POLL,
            Duration::from_secs(180),
            "the release's objects gone",
            async || self.release_leftovers().await.is_empty().then_some(()),
        )
        .await;
        let gone = t.elapsed();
        let releases = self.env.helm_ok(&["list", "-n", NS, "-a", "-q"]).await;
        assert!(
            releases.stdout.trim().is_empty(),
            "helm still lists {:?}",
            releases.stdout
        );

        let ns_gone = self.delete_claims_and_namespace(5).await;

        step.set("operator_gone_s", secs(operator_gone));
        step.set("topics_and_groups_deleted_s", secs(deleted));
        step.set("helm_uninstall_s", secs(uninstall));
        step.set("release_objects_gone_after_s", secs(gone));
        step.set("namespace_deleted_s", secs(ns_gone));
        step.done();
    }

    /// Deletes the brokers' claims, which the chart retains (whenDeleted and
    /// whenScaled: Retain; exactly those of brokers `0..brokers` are left), and
    /// the namespace. Returns how long the namespace took to go.
    async fn delete_claims_and_namespace(&self, brokers: u32) -> Duration {
        // The chart retains the brokers' claims (whenDeleted/whenScaled: Retain).
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), NS);
        let mut names: Vec<String> = claims
            .list(&ListParams::default())
            .await
            .expect("list PVCs")
            .items
            .iter()
            .map(|c| c.name_any())
            .collect();
        names.sort();
        assert_eq!(
            names,
            (0..brokers).map(claim_name).collect::<Vec<_>>(),
            "the brokers' claims are retained"
        );
        for name in &names {
            claims
                .delete(name, &DeleteParams::default())
                .await
                .unwrap_or_else(|e| panic!("deleting PVC {name}: {e}"));
        }
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let t_ns = Instant::now();
        namespaces
            .delete(NS, &DeleteParams::default())
            .await
            .expect("deleting the namespace");
        eventually_every(
            POLL,
            Duration::from_secs(180),
            "the namespace gone",
            async || namespaces.get_opt(NS).await.ok()?.is_none().then_some(()),
        )
        .await;
        t_ns.elapsed()
    }

    /// Scenario 14: the replicated installation's Topic and ConsumerGroup
    /// deleted, `helm uninstall`, the claims and the namespace deleted.
    pub async fn replicated_teardown(&self, brokers: u32) {
        let step = Step::start(
            &self.report,
            "14-replicated-teardown",
            "delete the Topic and ConsumerGroup, helm uninstall, delete the claims and the namespace",
        );
        let t = Instant::now();
        Api::<Topic>::namespaced(self.client.clone(), NS)
            .delete(TOPIC, &DeleteParams::default())
            .await
            .expect("delete the Topic");
        Api::<ConsumerGroup>::namespaced(self.client.clone(), NS)
            .delete(GROUP, &DeleteParams::default())
            .await
            .expect("delete the ConsumerGroup");
        let out = self
            .env
            .helm_ok(&["uninstall", RELEASE, "-n", NS, "--wait", "--timeout", "5m"])
            .await;
        // The groups' records stay with the retained claims: a reinstall on
        // them continues from the recorded epochs.
        let record = format!("configmap/{STS}-group-");
        eventually_every(
            POLL,
            Duration::from_secs(180),
            "the release's objects gone, but the groups' records",
            async || {
                let left = self.release_leftovers().await;
                left.iter().all(|o| o.starts_with(&record)).then_some(())
            },
        )
        .await;
        let gone = t.elapsed();
        let ns_gone = self.delete_claims_and_namespace(brokers).await;
        step.set("helm_uninstall_s", secs(out.took));
        step.set("release_objects_gone_after_s", secs(gone));
        step.set("namespace_deleted_s", secs(ns_gone));
        step.done();
    }

    /// What is left of the release in the namespace and the cluster.
    async fn release_leftovers(&self) -> Vec<String> {
        let c = &self.client;
        let all = ListParams::default();
        let release = ListParams::default().labels(RELEASE_SELECTOR);
        let helm_secrets = ListParams::default().labels("owner=helm");
        let keep_none = |_: &str| false;
        let mut left = Vec::new();
        left.extend(names_in::<Pod>(c, "pod", &all, keep_none).await);
        left.extend(names_in::<StatefulSet>(c, "statefulset", &all, keep_none).await);
        left.extend(names_in::<Deployment>(c, "deployment", &all, keep_none).await);
        left.extend(names_in::<Service>(c, "service", &all, keep_none).await);
        left.extend(names_in::<PodDisruptionBudget>(c, "pdb", &all, keep_none).await);
        // Every namespace has kube-root-ca.crt and the default ServiceAccount.
        left.extend(names_in::<ConfigMap>(c, "configmap", &all, |n| n == "kube-root-ca.crt").await);
        left.extend(
            names_in::<ServiceAccount>(c, "serviceaccount", &all, |n| n == "default").await,
        );
        left.extend(names_in::<EndpointSlice>(c, "endpointslice", &release, keep_none).await);
        left.extend(names_in::<Secret>(c, "secret", &helm_secrets, keep_none).await);
        for (kind, gone) in [
            (
                "clusterrole/dduomq-operator",
                Api::<ClusterRole>::all(self.client.clone())
                    .get_opt(OPERATOR)
                    .await
                    .map(|o| o.is_none()),
            ),
            (
                "clusterrolebinding/dduomq-operator",
                Api::<ClusterRoleBinding>::all(self.client.clone())
                    .get_opt(OPERATOR)
                    .await
                    .map(|o| o.is_none()),
            ),
        ] {
            match gone {
                Ok(true) => {}
                Ok(false) => left.push(kind.to_string()),
                Err(e) => left.push(format!("{kind}: {e}")),
            }
        }
        left.sort();
        left
    }
}

/// `kind/name` of the objects in the namespace, but those `keep` accepts.
async fn names_in<K>(
    client: &Client,
    kind: &str,
    params: &ListParams,
    keep: impl Fn(&str) -> bool,
) -> Vec<String>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    match Api::<K>::namespaced(client.clone(), NS).list(params).await {
        Ok(list) => list
            .items
            .iter()
            .map(|o| o.name_any())
            .filter(|n| !keep(n))
            .map(|n| format!("{kind}/{n}"))
            .collect(),
        Err(e) => vec![format!("{kind}: listing failed: {e}")],
    }
}

/// The objects of `api` still there, with their finalizers.
async fn with_finalizers<K>(api: &Api<K>) -> Vec<String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .iter()
                .map(|o| format!("{} finalizers {:?}", o.name_any(), o.finalizers()))
                .collect()
        })
        .unwrap_or_else(|e| vec![format!("listing failed: {e}")])
}
