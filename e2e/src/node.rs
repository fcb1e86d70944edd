//! The Node object: registration (capacity, allocatable, addresses, node
//! info), the `Ready` condition refreshed every minute, and the heartbeat Lease
//! in `kube-node-lease` renewed every 10 s, which is what the node lifecycle
//! controller watches.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::Result;
use chrono::Utc;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

const MANAGER: &str = "dduomq-test-kubelet";
pub const KUBELET_VERSION: &str = "v1.35.4";

pub async fn register(client: &Client, name: &str, ip: Ipv4Addr) -> Result<Node> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
        }},
    });
    let pp = PatchParams::apply(MANAGER).force();
    let node = nodes.patch(name, &pp, &Patch::Apply(&node)).await?;
    update_status(client, name, ip).await?;
    Ok(node)
}

async fn update_status(client: &Client, name: &str, ip: Ipv4Addr) -> Result<()> {
    let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let resources =
        json!({"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "100Gi"});
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({"type": type_, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let status = json!({
        "apiVersion": "v1", "kind": "Node",
        "status": {
            "capacity": resources, "allocatable": resources,
            "conditions": [
                condition("Ready", "True", "KubeletReady", "dduomq test kubelet is posting ready status"),
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            ],
            "addresses": [{"type": "InternalIP", "address": ip.to_string()}, {"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "architecture": "amd64", "operatingSystem": "linux", "osImage": "dduomq e2e",
                "kernelVersion": kernel.trim(), "bootID": boot_id.trim(), "machineID": name, "systemUUID": name,
                "containerRuntimeVersion": "dduomq-e2e://0.1.0", "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": "",
            },
        },
    });
    Api::<Node>::all(client.clone())
        .patch_status(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&status),
        )
        .await?;
    Ok(())
}

/// Renews the Lease every 10 s and the node status every 60 s, forever.
pub async fn heartbeat(client: Client, node: Node, ip: Ipv4Addr) {
    let name = node.metadata.name.clone().unwrap_or_default();
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let mut tick = 0u64;
    loop {
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "ownerReferences": [{
                "apiVersion": "v1", "kind": "Node", "name": name, "uid": node.metadata.uid,
            }]},
            "spec": {
                "holderIdentity": name, "leaseDurationSeconds": 40,
                "renewTime": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            },
        });
        if let Err(e) = leases
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&lease),
            )
            .await
        {
            tracing::warn!("renew node lease: {e}");
        }
        if tick % 6 == 5
            && let Err(e) = update_status(&client, &name, ip).await
        {
            tracing::warn!("node status: {e:#}");
        }
        tick += 1;
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}
