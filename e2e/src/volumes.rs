//! A pod's volumes as host directories, which `exec` bind-mounts at the mount
//! paths: emptyDir (a fresh dir), persistentVolumeClaim (its bound PV's
//! hostPath or local path), hostPath, and files written from ConfigMaps,
//! Secrets, the downward API and ServiceAccount tokens (projected; this is how
//! `kube-api-access-*` gives pods their credentials).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod,
    Secret, ServiceAccount, Volume, VolumeProjection,
};
use kube::api::PostParams;
use kube::{Api, Client, ResourceExt};

use crate::env;

/// Prepares every volume of `pod` under `dir`; returns name → host path.
pub async fn prepare(client: &Client, pod: &Pod, dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let path = prepare_one(client, pod, v, &dir.join(&v.name))
            .await
            .with_context(|| format!("volume {}", v.name))?;
        out.insert(v.name.clone(), path);
    }
    Ok(out)
}

async fn prepare_one(client: &Client, pod: &Pod, v: &Volume, dir: &Path) -> Result<PathBuf> {
    let ns = pod.namespace().unwrap_or_default();
    if v.empty_dir.is_some() {
        std::fs::create_dir_all(dir)?;
        return Ok(dir.to_path_buf());
    }
    if let Some(h) = &v.host_path {
        if h.type_.as_deref() == Some("DirectoryOrCreate") {
            std::fs::create_dir_all(&h.path)?;
        }
        return Ok(PathBuf::from(&h.path));
    }
    if let Some(c) = &v.persistent_volume_claim {
        let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
            .get(&c.claim_name)
            .await?;
        let Some(pv_name) = pvc.spec.and_then(|s| s.volume_name) else {
            bail!("claim {} is not bound yet", c.claim_name);
        };
        let pv = Api::<PersistentVolume>::all(client.clone())
            .get(&pv_name)
            .await?;
        let spec = pv.spec.unwrap_or_default();
        let path = spec
            .host_path
            .map(|h| h.path)
            .or(spec.local.map(|l| l.path))
            .with_context(|| format!("PV {pv_name} is neither hostPath nor local"))?;
        std::fs::create_dir_all(&path)?;
        return Ok(PathBuf::from(path));
    }
    // File-based volumes: written afresh at every (re)start of the pod.
    std::fs::create_dir_all(dir)?;
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    if let Some(c) = &v.config_map {
        files.extend(config_map(client, &ns, &c.name, c.items.as_deref(), c.optional).await?);
    } else if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        files.extend(secret(client, &ns, &name, s.items.as_deref(), s.optional).await?);
    } else if let Some(d) = &v.downward_api {
        files.extend(downward(pod, d.items.as_deref())?);
    } else if let Some(p) = &v.projected {
        for source in p.sources.iter().flatten() {
            files.extend(projection(client, pod, source).await?);
        }
    } else {
        bail!("unsupported volume type");
    }
    for (path, bytes) in files {
        let target = dir.join(&path);
        std::fs::create_dir_all(target.parent().unwrap())?;
        std::fs::write(&target, bytes)?;
    }
    Ok(dir.to_path_buf())
}

async fn projection(
    client: &Client,
    pod: &Pod,
    p: &VolumeProjection,
) -> Result<Vec<(String, Vec<u8>)>> {
    let ns = pod.namespace().unwrap_or_default();
    if let Some(c) = &p.config_map {
        return config_map(client, &ns, &c.name, c.items.as_deref(), c.optional).await;
    }
    if let Some(s) = &p.secret {
        return secret(client, &ns, &s.name, s.items.as_deref(), s.optional).await;
    }
    if let Some(d) = &p.downward_api {
        return downward(pod, d.items.as_deref());
    }
    if let Some(t) = &p.service_account_token {
        let sa = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: t.audience.iter().cloned().collect(),
                expiration_seconds: t.expiration_seconds,
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: pod.metadata.name.clone(),
                    uid: pod.metadata.uid.clone(),
                }),
            },
            ..Default::default()
        };
        let token = Api::<ServiceAccount>::namespaced(client.clone(), &ns)
            .create_token_request(&sa, &PostParams::default(), &request)
            .await
            .with_context(|| format!("token for ServiceAccount {sa}"))?;
        let token = token.status.context("TokenRequest without status")?.token;
        return Ok(vec![(t.path.clone(), token.into_bytes())]);
    }
    bail!("unsupported projected volume source")
}

/// Downward-API files: each item's field of the pod.
fn downward(pod: &Pod, items: Option<&[DownwardAPIVolumeFile]>) -> Result<Vec<(String, Vec<u8>)>> {
    items
        .into_iter()
        .flatten()
        .map(|item| {
            let f = item
                .field_ref
                .as_ref()
                .context("downwardAPI: only fieldRef")?;
            Ok((item.path.clone(), env::field(pod, f)?.into_bytes()))
        })
        .collect()
}

/// `items` selects and renames keys; without it every key becomes a file.
fn select(
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
) -> Result<Vec<(String, Vec<u8>)>> {
    match items {
        None => Ok(data.into_iter().collect()),
        Some(items) => items
            .iter()
            .map(|i| {
                let bytes = data
                    .get(&i.key)
                    .with_context(|| format!("no key {}", i.key))?;
                Ok((i.path.clone(), bytes.clone()))
            })
            .collect(),
    }
}

/// A ConfigMap or Secret a volume reads; `None` when it is missing and optional.
async fn source<K>(
    client: &Client,
    ns: &str,
    name: &str,
    optional: Option<bool>,
) -> Result<Option<K>>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    match Api::<K>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?
    {
        Some(obj) => Ok(Some(obj)),
        None if optional == Some(true) => Ok(None),
        None => bail!("{} {name} not found", K::kind(&())),
    }
}

async fn config_map(
    client: &Client,
    ns: &str,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
) -> Result<Vec<(String, Vec<u8>)>> {
    let Some(cm) = source::<ConfigMap>(client, ns, name, optional).await? else {
        return Ok(Vec::new());
    };
    let mut data: BTreeMap<String, Vec<u8>> = cm
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    data.extend(
        cm.binary_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0)),
    );
    select(data, items)
}

async fn secret(
    client: &Client,
    ns: &str,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
) -> Result<Vec<(String, Vec<u8>)>> {
    let Some(s) = source::<Secret>(client, ns, name, optional).await? else {
        return Ok(Vec::new());
    };
    let data = s
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    select(data, items)
}
