//! The broker registry: the brokers' EndpointSlices (selected by label) are the
//! source of truth for which brokers exist and which are ready. No name server,
//! no ZooKeeper: Kubernetes already knows.

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use tokio::sync::watch;

/// A broker as its EndpointSlice describes it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct BrokerEndpoint {
    /// Pod name (the endpoint's hostname or target), e.g. `dduomq-broker-2`.
    pub name: String,
    /// `ip:port` of its gRPC API.
    pub address: String,
    pub ready: bool,
    /// The StatefulSet ordinal from the name, which is also the broker id.
    pub broker_id: u32,
}

/// The broker id of a pod name: its trailing StatefulSet ordinal (0 if none).
pub fn ordinal(name: &str) -> u32 {
    let digits: String = name
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits
        .chars()
        .rev()
        .collect::<String>()
        .parse()
        .unwrap_or(0)
}

/// Brokers listed by a set of EndpointSlices, sorted by name; a broker listed
/// twice counts as ready if any listing is.
pub fn brokers_of(
    slices: &[std::sync::Arc<EndpointSlice>],
    default_port: u16,
) -> Vec<BrokerEndpoint> {
    let mut out: Vec<BrokerEndpoint> = Vec::new();
    for slice in slices {
        let port = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some("grpc"))
            .and_then(|p| p.port)
            .map_or(default_port, |p| p as u16);
        for ep in &slice.endpoints {
            let Some(ip) = ep.addresses.first() else {
                continue;
            };
            let name = ep
                .hostname
                .clone()
                .or_else(|| ep.target_ref.as_ref().and_then(|t| t.name.clone()))
                .unwrap_or_else(|| ip.clone());
            // Kubernetes: an unknown readiness is to be treated as ready.
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            let address = if ip.contains(':') {
                format!("[{ip}]:{port}")
            } else {
                format!("{ip}:{port}")
            };
            match out.iter_mut().find(|b| b.name == name) {
                Some(b) => b.ready |= ready,
                None => out.push(BrokerEndpoint {
                    broker_id: ordinal(&name),
                    name,
                    address,
                    ready,
                }),
            }
        }
    }
    out.sort();
    out
}

/// Watches the brokers' EndpointSlices and publishes the broker list on `tx`.
pub async fn run(
    client: Client,
    namespace: Option<String>,
    selector: String,
    default_port: u16,
    tx: watch::Sender<Vec<BrokerEndpoint>>,
) {
    let api: Api<EndpointSlice> = match &namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let (reader, writer) = reflector::store();
    let events = reflector(
        writer,
        watcher(api, watcher::Config::default().labels(&selector)),
    )
    .default_backoff();
    futures::pin_mut!(events);
    while let Some(event) = events.next().await {
        if let Err(e) = event {
            tracing::warn!(error = %e, "watching broker EndpointSlices failed; retrying");
            continue;
        }
        let brokers = brokers_of(&reader.state(), default_port);
        tx.send_if_modified(|current| {
            let changed = *current != brokers;
            if changed {
                tracing::info!(
                    ready = brokers.iter().filter(|b| b.ready).count(),
                    total = brokers.len(),
                    "broker registry changed"
                );
                *current = brokers.clone();
            }
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};

    fn ep(ip: &str, host: &str, ready: Option<bool>) -> Endpoint {
        Endpoint {
            addresses: vec![ip.into()],
            hostname: Some(host.into()),
            conditions: Some(EndpointConditions {
                ready,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn slices_become_sorted_brokers_with_ids_and_ports() {
        let slice = EndpointSlice {
            address_type: "IPv4".into(),
            endpoints: vec![
                ep("10.0.0.3", "dduomq-broker-2", Some(false)),
                ep("10.0.0.1", "dduomq-broker-0", Some(true)),
                ep("10.0.0.2", "dduomq-broker-1", None),
            ],
            ports: Some(vec![EndpointPort {
                name: Some("grpc".into()),
                port: Some(7000),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let b = brokers_of(&[std::sync::Arc::new(slice)], 6086);
        assert_eq!(b.len(), 3);
        assert_eq!(b[0].name, "dduomq-broker-0");
        assert_eq!(b[0].address, "10.0.0.1:7000");
        assert!(b[1].ready, "unknown readiness counts as ready");
        assert!(!b[2].ready);
        assert_eq!(b[2].broker_id, 2);
        assert_eq!(ordinal("no-digits"), 0);
    }
}
