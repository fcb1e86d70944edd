//! The broker pods as Kubernetes sees them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use parking_lot::Mutex;

use crate::{BROKER_SELECTOR, GRPC_PORT, NS, STS};

/// A broker pod.
#[derive(Debug, Clone)]
pub struct BrokerPod {
    pub name: String,
    pub ordinal: u32,
    pub uid: String,
    pub ip: Option<String>,
    pub ready: bool,
    pub terminating: bool,
    pub restarts: i32,
    pub container_id: Option<String>,
    pub claim: Option<String>,
    pub revision: Option<String>,
    pub rollme: Option<String>,
}

impl BrokerPod {
    pub fn of(p: &Pod) -> BrokerPod {
        let name = p.name_any();
        let ordinal = p
            .labels()
            .get("apps.kubernetes.io/pod-index")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| ordinal_of(&name));
        let status = p.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let container = status
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.name == "broker"));
        BrokerPod {
            ordinal,
            uid: p.uid().unwrap_or_default(),
            ip: status.and_then(|s| s.pod_ip.clone()),
            ready,
            terminating: p.metadata.deletion_timestamp.is_some(),
            restarts: container.map_or(0, |c| c.restart_count),
            container_id: container.and_then(|c| c.container_id.clone()),
            claim: p
                .spec
                .as_ref()
                .and_then(|s| s.volumes.as_ref())
                .and_then(|v| v.iter().find(|v| v.name == "data"))
                .and_then(|v| v.persistent_volume_claim.as_ref())
                .map(|c| c.claim_name.clone()),
            revision: p.labels().get("controller-revision-hash").cloned(),
            rollme: p.annotations().get("rollme").cloned(),
            name,
        }
    }

    /// Ready and not being deleted: where clients may go.
    pub fn serving(&self) -> bool {
        self.ready && !self.terminating && self.ip.is_some()
    }

    pub fn addr(&self) -> Option<String> {
        self.ip.as_ref().map(|ip| addr(ip))
    }

    /// The host pid of the broker process, from `containerID: dduomq-e2e://<pid>`.
    pub fn pid(&self) -> i32 {
        let id = self
            .container_id
            .as_deref()
            .unwrap_or_else(|| panic!("{} has no containerID: {self:?}", self.name));
        let pid: i32 = id
            .strip_prefix("dduomq-e2e://")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "{}: containerID {id:?} is not dduomq-e2e://<pid>",
                    self.name
                )
            });
        assert!(
            pid > 1,
            "{}: containerID {id:?} names no process",
            self.name
        );
        pid
    }
}

pub fn ordinal_of(name: &str) -> u32 {
    name.rsplit('-')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(u32::MAX)
}

pub fn addr(ip: &str) -> String {
    format!("{ip}:{GRPC_PORT}")
}

pub fn pod_name(ordinal: u32) -> String {
    format!("{STS}-{ordinal}")
}

pub fn claim_name(ordinal: u32) -> String {
    format!("data-{STS}-{ordinal}")
}

pub async fn broker_pods(client: &Client) -> kube::Result<Vec<BrokerPod>> {
    let list = Api::<Pod>::namespaced(client.clone(), NS)
        .list(&ListParams::default().labels(BROKER_SELECTOR))
        .await?;
    let mut pods: Vec<BrokerPod> = list.items.iter().map(BrokerPod::of).collect();
    pods.sort_by_key(|p| p.ordinal);
    Ok(pods)
}

pub async fn broker_pod(client: &Client, ordinal: u32) -> Option<BrokerPod> {
    Api::<Pod>::namespaced(client.clone(), NS)
        .get_opt(&pod_name(ordinal))
        .await
        .ok()
        .flatten()
        .map(|p| BrokerPod::of(&p))
}

/// The broker pods, refreshed every 500 ms in the background.
#[derive(Debug, Default)]
pub struct View {
    pods: Mutex<Vec<BrokerPod>>,
    stop: AtomicBool,
}

impl View {
    pub async fn start(client: Client) -> Arc<View> {
        let view = Arc::new(View::default());
        *view.pods.lock() = broker_pods(&client).await.expect("listing the broker pods");
        let v = view.clone();
        tokio::spawn(async move {
            while !v.stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if let Ok(pods) = broker_pods(&client).await {
                    *v.pods.lock() = pods;
                }
            }
        });
        view
    }

    pub fn pods(&self) -> Vec<BrokerPod> {
        self.pods.lock().clone()
    }

    /// `ip:port` of the serving brokers, by ordinal.
    pub fn serving(&self) -> Vec<String> {
        self.pods
            .lock()
            .iter()
            .filter(|p| p.serving())
            .filter_map(BrokerPod::addr)
            .collect()
    }

    pub fn ordinal_of_addr(&self, address: &str) -> Option<u32> {
        self.pods
            .lock()
            .iter()
            .find(|p| p.addr().as_deref() == Some(address))
            .map(|p| p.ordinal)
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// SIGKILL to a broker pod's container process.
pub fn sigkill(pod: &BrokerPod) {
    let pid = pod.pid();
    // Guard against killing anything else than the broker.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_else(|e| panic!("{}: reading /proc/{pid}/cmdline: {e}", pod.name));
    assert!(
        String::from_utf8_lossy(&cmdline).contains("dduomq-broker"),
        "{}: pid {pid} is not a broker: {:?}",
        pod.name,
        String::from_utf8_lossy(&cmdline)
    );
    // SAFETY: kill(2) takes no pointers; the pid (> 1) was checked to be a broker.
    let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(
        rc,
        0,
        "kill -9 {pid} ({}): {}",
        pod.name,
        std::io::Error::last_os_error()
    );
}
