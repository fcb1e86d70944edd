//! ClusterIP Services without kube-proxy, and names without a DNS server.
//!
//! * **Proxy**: every ClusterIP becomes a `/32` address of the node's bridge;
//!   for each TCP port a listener forwards connections to a ready endpoint
//!   (round robin) from the Service's EndpointSlices — kube-proxy's old
//!   userspace mode. Pods reach ClusterIPs through their default route.
//! * **Names**: each pod's `/etc/hosts` lists `<svc>.<ns>.svc.cluster.local`
//!   (and the shorter forms) for every ClusterIP Service, and for headless
//!   Services the ready pods' `<hostname>.<svc>...` names. It is rewritten in
//!   place as Services and endpoints change.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::network::Network;

pub const CLUSTER_DOMAIN: &str = "cluster.local";

#[derive(Clone)]
pub struct Services {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Services")
    }
}

impl Services {
    /// Starts the reflectors and the proxy loop.
    pub async fn start(client: Client, network: Arc<Network>) -> Services {
        let (services, svc_writer) = reflector::store();
        let (slices, slice_writer) = reflector::store();
        let svc_stream = reflector::reflector(
            svc_writer,
            watcher(
                Api::<Service>::all(client.clone()),
                watcher::Config::default(),
            ),
        )
        .applied_objects()
        .for_each(|_| async {});
        let slice_stream = reflector::reflector(
            slice_writer,
            watcher(
                Api::<EndpointSlice>::all(client),
                watcher::Config::default(),
            ),
        )
        .applied_objects()
        .for_each(|_| async {});
        tokio::spawn(svc_stream);
        tokio::spawn(slice_stream);
        services.wait_until_ready().await.ok();
        slices.wait_until_ready().await.ok();
        let me = Services { services, slices };
        tokio::spawn(me.clone().proxy_loop(network));
        me
    }

    /// `/etc/hosts` of a pod.
    pub fn hosts_file(&self, pod: &Pod, pod_ip: Ipv4Addr) -> String {
        let ns = pod.namespace().unwrap_or_default();
        let mut out =
            String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
        let hostname = crate::env::pod_hostname(pod);
        match pod.spec.as_ref().and_then(|s| s.subdomain.as_ref()) {
            Some(sub) => out.push_str(&format!(
                "{pod_ip}\t{hostname}.{sub}.{ns}.svc.{CLUSTER_DOMAIN}\t{hostname}\n"
            )),
            None => out.push_str(&format!("{pod_ip}\t{hostname}\n")),
        }
        let mut lines = Vec::new();
        for svc in self.services.state() {
            let (sns, name) = (svc.namespace().unwrap_or_default(), svc.name_any());
            let names = |prefix: &str| {
                let mut n = format!(
                    "{prefix}{name}.{sns}.svc.{CLUSTER_DOMAIN} {prefix}{name}.{sns}.svc {prefix}{name}.{sns}"
                );
                if sns == ns {
                    n.push_str(&format!(" {prefix}{name}"));
                }
                n
            };
            match svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) {
                Some("None") => {
                    for (ip, _, host) in self.endpoints_with_port(&sns, &name, None) {
                        if let Some(h) = host {
                            lines.push(format!("{ip}\t{}", names(&format!("{h}."))));
                        }
                    }
                }
                Some(ip) if !ip.is_empty() => lines.push(format!("{ip}\t{}", names(""))),
                _ => {}
            }
        }
        lines.sort();
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
        out
    }

    /// Ready endpoint addresses of a Service, with the target port of its
    /// port named `port` (0 when no port is asked for), and their hostnames.
    fn endpoints_with_port(
        &self,
        ns: &str,
        svc: &str,
        port: Option<&str>,
    ) -> Vec<(String, u16, Option<String>)> {
        let mut out = Vec::new();
        for slice in self.slices.state() {
            if slice.namespace().as_deref() != Some(ns)
                || slice
                    .labels()
                    .get("kubernetes.io/service-name")
                    .map(String::as_str)
                    != Some(svc)
            {
                continue;
            }
            let target = match port {
                None => Some(0),
                Some(name) => slice
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref().unwrap_or("") == name)
                    .and_then(|p| p.port)
                    .and_then(|p| u16::try_from(p).ok()),
            };
            let Some(target) = target else { continue };
            for ep in &slice.endpoints {
                if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                    continue;
                }
                for a in &ep.addresses {
                    out.push((a.clone(), target, ep.hostname.clone()));
                }
            }
        }
        out.sort();
        out
    }

    /// Keeps one listener per ClusterIP Service port (re-checked every second).
    async fn proxy_loop(self, network: Arc<Network>) {
        let mut listeners: HashMap<(Ipv4Addr, u16), JoinHandle<()>> = HashMap::new();
        loop {
            let mut wanted = BTreeMap::new();
            for svc in self.services.state() {
                let Some(spec) = svc.spec.as_ref() else {
                    continue;
                };
                let Some(ip) = spec
                    .cluster_ip
                    .as_deref()
                    .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
                else {
                    continue;
                };
                for p in spec.ports.iter().flatten() {
                    if p.protocol.as_deref().unwrap_or("TCP") != "TCP" {
                        continue;
                    }
                    let key = (ip, p.port as u16);
                    let target = Target {
                        ns: svc.namespace().unwrap_or_default(),
                        svc: svc.name_any(),
                        port: p.name.clone().unwrap_or_default(),
                    };
                    wanted.insert(key, target);
                }
            }
            listeners.retain(|k, task| {
                let keep = wanted.contains_key(k);
                if !keep {
                    task.abort();
                }
                keep
            });
            for (key, target) in wanted {
                if listeners.contains_key(&key) {
                    continue;
                }
                if let Err(e) = network.add_local_address(key.0).await {
                    tracing::warn!("service address {}: {e:#}", key.0);
                    continue;
                }
                match TcpListener::bind(key).await {
                    Ok(l) => {
                        tracing::debug!(
                            "proxying {}:{} for {}/{}",
                            key.0,
                            key.1,
                            target.ns,
                            target.svc
                        );
                        listeners.insert(key, tokio::spawn(self.clone().serve(l, target)));
                    }
                    Err(e) => tracing::warn!("listen on {}:{}: {e}", key.0, key.1),
                }
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }

    async fn serve(self, listener: TcpListener, target: Target) {
        let next = Arc::new(AtomicUsize::new(0));
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                // Out of file descriptors and the like: do not spin.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            };
            let endpoints = self.endpoints_with_port(&target.ns, &target.svc, Some(&target.port));
            let next = next.clone();
            tokio::spawn(async move {
                if endpoints.is_empty() {
                    return; // no ready endpoint: the connection is closed, as kube-proxy rejects it
                }
                let i = next.fetch_add(1, Ordering::Relaxed) % endpoints.len();
                let (ip, port, _) = &endpoints[i];
                if let Ok(mut outbound) = TcpStream::connect((ip.as_str(), *port)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    }
}

/// A Service port a listener forwards to.
#[derive(Debug, Clone)]
struct Target {
    ns: String,
    svc: String,
    port: String,
}
