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
//!
//! `helm uninstall` deletes the Deployment and the operator's RBAC in the same
//! instant, so by the time the operator gets SIGTERM it may no longer be
//! allowed to do that. The chart therefore runs `dduomq-operator --uninstall`
//! as a pre-delete hook, with RBAC of its own: it scales the operator to zero,
//! waits until its pods are gone (nothing re-adds a finalizer after that) and
//! releases the finalizers ([`uninstall`]).

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::controller::Reconciled;
use crate::crd::{ConsumerGroup, Topic};
use crate::route_epoch::ROUTE_EPOCH_CONFIGMAP;

/// The pre-delete hook: stops the operator (Deployment `name` to 0 replicas,
/// then waits up to `wait` for pods matching `pods` to go) and releases the
/// finalizers. A Deployment that is already gone is fine.
pub async fn uninstall(
    client: &Client,
    namespace: &str,
    name: &str,
    pods: &str,
    wait: Duration,
) -> anyhow::Result<usize> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let scale = serde_json::json!({"spec": {"replicas": 0}});
    match deployments
        .patch(name, &PatchParams::default(), &Patch::Merge(&scale))
        .await
    {
        Ok(_) => tracing::info!("scaled Deployment {name} to 0"),
        Err(kube::Error::Api(e)) if e.code == 404 => tracing::info!("Deployment {name} is gone"),
        Err(e) => return Err(e.into()),
    }
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = api
            .list(&ListParams::default().labels(pods))
            .await?
            .items
            .len();
        if left == 0 {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{left} operator pods ({pods}) still running after {wait:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // No operator runs any more: its route-epoch counter goes with the
    // release (a reinstalled operator starts above the brokers' epochs).
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    match config_maps
        .delete(ROUTE_EPOCH_CONFIGMAP, &DeleteParams::default())
        .await
    {
        Ok(_) => tracing::info!("deleted ConfigMap {ROUTE_EPOCH_CONFIGMAP}"),
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(release_finalizers(client).await?)
}

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

/// Releases `K`'s finalizer on every object that has it. A conflict (the
/// object changed meanwhile) is retried on a fresh read; any other failure is
/// logged and the others are still released — there is no second chance
/// after an uninstall.
async fn release<K: Reconciled>(client: &Client) -> kube::Result<usize> {
    let mut released = 0;
    for obj in Api::<K>::all(client.clone())
        .list(&ListParams::default())
        .await?
    {
        let api: Api<K> = Api::namespaced(client.clone(), &obj.namespace().unwrap_or_default());
        let name = obj.name_any();
        let mut current = Some(obj);
        for _attempt in 0..5 {
            let Some(obj) = current.take() else { break };
            if !obj.finalizers().iter().any(|f| f == K::FINALIZER) {
                break;
            }
            let rest: Vec<&String> = obj
                .finalizers()
                .iter()
                .filter(|f| *f != K::FINALIZER)
                .collect();
            // resourceVersion: never drops a finalizer someone else added meanwhile.
            let patch = json!({"metadata": {"finalizers": rest, "resourceVersion": obj.resource_version()}});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    tracing::info!(kind = K::KIND, namespace = ?obj.namespace(), %name, "operator uninstalled: finalizer released");
                    released += 1;
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    current = api.get_opt(&name).await.ok().flatten()
                }
                Err(e) => {
                    tracing::error!(kind = K::KIND, %name, error = %e, "releasing the finalizer failed")
                }
            }
        }
    }
    Ok(released)
}
