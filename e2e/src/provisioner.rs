//! A dynamic provisioner for the node's local disk (provisioner name
//! `dduomq.io/e2e-hostpath`): a claim of a StorageClass with this provisioner
//! gets a hostPath PV under `<work>/volumes/`, pre-bound to the claim (the PV
//! controller completes the binding). Released volumes with reclaim policy
//! `Delete` are removed with their directory.

use std::path::PathBuf;

use anyhow::Result;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

pub const PROVISIONER: &str = "dduomq.io/e2e-hostpath";
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

pub async fn run(client: Client, root: PathBuf) {
    let claims = watcher(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        watcher::Config::default(),
    )
    .applied_objects();
    let volumes = watcher(
        Api::<PersistentVolume>::all(client.clone()),
        watcher::Config::default(),
    )
    .applied_objects();
    let c = client.clone();
    let provision = claims.for_each(move |claim| {
        let (c, root) = (c.clone(), root.clone());
        async move {
            if let Ok(claim) = claim
                && let Err(e) = provision(&c, &root, &claim).await
            {
                tracing::warn!(claim = %claim.name_any(), "provision: {e:#}");
            }
        }
    });
    let reclaim = volumes.for_each(move |pv| {
        let c = client.clone();
        async move {
            if let Ok(pv) = pv
                && let Err(e) = reclaim(&c, &pv).await
            {
                tracing::warn!(pv = %pv.name_any(), "reclaim: {e:#}");
            }
        }
    });
    tokio::join!(provision, reclaim);
}

async fn provision(
    client: &Client,
    root: &std::path::Path,
    claim: &PersistentVolumeClaim,
) -> Result<()> {
    let Some(spec) = &claim.spec else {
        return Ok(());
    };
    if spec.volume_name.is_some() || claim.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    if claim
        .annotations()
        .get("volume.kubernetes.io/storage-provisioner")
        .map(String::as_str)
        != Some(PROVISIONER)
    {
        return Ok(());
    }
    let Some(class_name) = &spec.storage_class_name else {
        return Ok(());
    };
    let class = Api::<StorageClass>::all(client.clone())
        .get(class_name)
        .await?;
    let uid = claim.uid().unwrap_or_default();
    let name = format!("pvc-{uid}");
    let path = root.join(&name);
    std::fs::create_dir_all(&path)?;
    let storage = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage").cloned())
        .map(|q| q.0)
        .unwrap_or_else(|| "1Gi".into());
    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {PROVISIONED_BY: PROVISIONER}},
        "spec": {
            "capacity": {"storage": storage},
            "accessModes": spec.access_modes.clone().unwrap_or_default(),
            "persistentVolumeReclaimPolicy": class.reclaim_policy.unwrap_or_else(|| "Delete".into()),
            "storageClassName": class_name,
            "volumeMode": spec.volume_mode.clone().unwrap_or_else(|| "Filesystem".into()),
            "hostPath": {"path": path.to_string_lossy(), "type": "Directory"},
            "claimRef": {
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "namespace": claim.namespace(), "name": claim.name_any(), "uid": uid,
            },
        },
    }))?;
    match Api::<PersistentVolume>::all(client.clone())
        .create(&PostParams::default(), &pv)
        .await
    {
        Ok(_) => {
            tracing::info!(claim = %claim.name_any(), pv = %name, "provisioned {}", path.display());
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn reclaim(client: &Client, pv: &PersistentVolume) -> Result<()> {
    if pv.annotations().get(PROVISIONED_BY).map(String::as_str) != Some(PROVISIONER)
        || pv.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Released")
        || pv
            .spec
            .as_ref()
            .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
            != Some("Delete")
    {
        return Ok(());
    }
    if let Some(h) = pv.spec.as_ref().and_then(|s| s.host_path.as_ref()) {
        std::fs::remove_dir_all(&h.path).ok();
    }
    Api::<PersistentVolume>::all(client.clone())
        .delete(&pv.name_any(), &DeleteParams::default())
        .await?;
    tracing::info!(pv = %pv.name_any(), "deleted released volume");
    Ok(())
}
