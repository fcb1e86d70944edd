//! A container's environment and command line, as the kubelet computes them:
//! image defaults, `KUBERNETES_SERVICE_*`, then `env` in order (values,
//! downward-API fields, ConfigMap and Secret keys), with `$(VAR)` expansion in
//! values, command and args.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Container, ObjectFieldSelector, Pod, Secret};
use kube::{Api, Client};

use crate::images::Image;

/// Resolves the environment of `c` in `pod`, in definition order.
pub async fn environment(
    client: &Client,
    pod: &Pod,
    c: &Container,
    image: &Image,
    apiserver: (&str, u16),
) -> Result<Vec<(String, String)>> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut env: Vec<(String, String)> = image
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    set(&mut env, "HOSTNAME", pod_hostname(pod));
    set(&mut env, "KUBERNETES_SERVICE_HOST", apiserver.0.to_string());
    set(&mut env, "KUBERNETES_SERVICE_PORT", apiserver.1.to_string());
    set(
        &mut env,
        "KUBERNETES_SERVICE_PORT_HTTPS",
        apiserver.1.to_string(),
    );
    for var in c.env.iter().flatten() {
        let value = if let Some(from) = &var.value_from {
            if let Some(f) = &from.field_ref {
                field(pod, f)?
            } else if let Some(r) = &from.config_map_key_ref {
                let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
                    .get(&r.name)
                    .await
                    .with_context(|| format!("ConfigMap {} for env {}", r.name, var.name))?;
                match cm.data.and_then(|d| d.get(&r.key).cloned()) {
                    Some(v) => v,
                    None if r.optional == Some(true) => continue,
                    None => bail!("ConfigMap {} has no key {}", r.name, r.key),
                }
            } else if let Some(r) = &from.secret_key_ref {
                let s = Api::<Secret>::namespaced(client.clone(), ns)
                    .get(&r.name)
                    .await
                    .with_context(|| format!("Secret {} for env {}", r.name, var.name))?;
                match s.data.and_then(|d| d.get(&r.key).cloned()) {
                    Some(v) => String::from_utf8(v.0)?,
                    None if r.optional == Some(true) => continue,
                    None => bail!("Secret {} has no key {}", r.name, r.key),
                }
            } else {
                bail!(
                    "env {}: only fieldRef, configMapKeyRef and secretKeyRef are supported",
                    var.name
                );
            }
        } else {
            let defined: BTreeMap<_, _> = env.iter().cloned().collect();
            expand(var.value.as_deref().unwrap_or(""), &defined)
        };
        set(&mut env, &var.name, value);
    }
    Ok(env)
}

/// The argv: `command` (else the image's entrypoint) followed by `args` (else,
/// when `command` is not set, the image's cmd), expanded against `env`.
pub fn argv(c: &Container, image: &Image, env: &[(String, String)]) -> Vec<String> {
    let defined: BTreeMap<_, _> = env.iter().cloned().collect();
    let (cmd, args) = match (&c.command, &c.args) {
        (Some(cmd), args) => (cmd.clone(), args.clone().unwrap_or_default()),
        (None, Some(args)) => (image.entrypoint.clone(), args.clone()),
        (None, None) => (image.entrypoint.clone(), image.cmd.clone()),
    };
    cmd.iter()
        .chain(&args)
        .map(|a| expand(a, &defined))
        .collect()
}

fn set(env: &mut Vec<(String, String)>, name: &str, value: String) {
    match env.iter_mut().find(|(k, _)| k == name) {
        Some(e) => e.1 = value,
        None => env.push((name.to_string(), value)),
    }
}

pub fn pod_hostname(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default()
}

/// A downward-API field of the pod.
pub fn field(pod: &Pod, f: &ObjectFieldSelector) -> Result<String> {
    let m = &pod.metadata;
    let path = f.field_path.as_str();
    let labelled = |prefix: &str, map: &Option<BTreeMap<String, String>>| {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?.to_string();
        Some(
            map.as_ref()
                .and_then(|m| m.get(&key).cloned())
                .unwrap_or_default(),
        )
    };
    if let Some(v) = labelled("metadata.labels['", &m.labels) {
        return Ok(v);
    }
    if let Some(v) = labelled("metadata.annotations['", &m.annotations) {
        return Ok(v);
    }
    let status = pod.status.as_ref();
    let spec = pod.spec.as_ref();
    Ok(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" => status.and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
        "status.hostIP" => status.and_then(|s| s.host_ip.clone()).unwrap_or_default(),
        other => bail!("unsupported downward-API field {other}"),
    })
}

/// Kubernetes' `$(VAR)` expansion: defined variables are replaced, `$$` is a
/// literal `$`, anything else is left as written.
pub fn expand(s: &str, defined: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i + 1..];
        if let Some(t) = tail.strip_prefix('$') {
            out.push('$');
            rest = t;
        } else if let Some(inner) = tail.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some(v) = defined.get(&inner[..end])
        {
            out.push_str(v);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let d: BTreeMap<String, String> = [("POD_IP".into(), "10.0.0.7".into())].into();
        assert_eq!(expand("--a=$(POD_IP):6086", &d), "--a=10.0.0.7:6086");
        assert_eq!(expand("$$(POD_IP)", &d), "$(POD_IP)");
        assert_eq!(expand("$(NOPE) $x $", &d), "$(NOPE) $x $");
    }
}
