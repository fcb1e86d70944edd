//! The finalizer escape hatch for an uninstalled operator.
//!
//! Topics and ConsumerGroups carry finalizers that only a running operator
//! removes. Once the operator is uninstalled (`helm uninstall`, or its
//! Deployment deleted), nothing would remove them and every later delete of a
//! Topic would hang. So on SIGTERM the operator asks whether its own Deployment
//! (`--deployment`) is gone or being deleted; if so — and only then, not on a
//! rolling update, an eviction or a node drain — it removes its finalizers
//! from every Topic and ConsumerGroup before exiting. Broker data is left
//! alone: it goes with the brokers' volumes.

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::controller::Reconciled;
use crate::crd::{ConsumerGroup, Topic};

/// Whether the Deployment `namespace/name` is gone or being deleted.
pub async fn deployment_removed(
    client: &Client,
    namespace: &str,
    name: &str,
) -> kube::Result<bool> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    Ok(match api.get_opt(name).await? {
        None => true,
        Some(d) => d.metadata.deletion_timestamp.is_some(),
    })
}

/// Removes the operator's finalizers from every Topic and ConsumerGroup;
/// returns how many resources it released.
pub async fn release_finalizers(client: &Client) -> kube::Result<usize> {
    Ok(release::<Topic>(client).await? + release::<ConsumerGroup>(client).await?)
}

async fn release<K: Reconciled>(client: &Client) -> kube::Result<usize> {
    let mut released = 0;
    for obj in Api::<K>::all(client.clone())
        .list(&ListParams::default())
        .await?
    {
        if !obj.finalizers().iter().any(|f| f == K::FINALIZER) {
            continue;
        }
        let rest: Vec<&String> = obj
            .finalizers()
            .iter()
            .filter(|f| *f != K::FINALIZER)
            .collect();
        // resourceVersion: fails (and is retried on the next SIGTERM) if the
        // finalizers changed meanwhile, instead of dropping someone else's.
        let patch =
            json!({"metadata": {"finalizers": rest, "resourceVersion": obj.resource_version()}});
        let api: Api<K> = Api::namespaced(client.clone(), &obj.namespace().unwrap_or_default());
        api.patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
        tracing::info!(kind = K::KIND, namespace = ?obj.namespace(), name = %obj.name_any(), "operator uninstalled: finalizer released");
        released += 1;
    }
    Ok(released)
}
