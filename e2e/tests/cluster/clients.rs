//! SDK clients that follow the cluster, bootstrapping through the client Service.

use std::sync::Arc;
use std::time::Duration;

use dduomq_client::{
    Producer, ProducerBuilder, PushConsumer, PushConsumerBuilder, ReceivedMessage,
};
use dduomq_testkit::{Ledger, eventually_every};
use k8s_openapi::api::core::v1::Service;
use kube::{Api, Client};

use crate::pods::addr;
use crate::{CLIENT_SERVICE, GROUP, NS, POLL, TOPIC};

pub fn build_producer(bootstrap: &str) -> Producer {
    ProducerBuilder::new(bootstrap)
        // The Topic's Kubernetes namespace is its namespace on the brokers.
        .namespace(NS)
        // Follow route changes (a broker leaving or joining) within a second.
        .route_ttl(Duration::from_secs(1))
        .send_timeout(Duration::from_secs(10))
        .build()
        .expect("producer")
}

/// The client Service's address (`<ClusterIP>:6086`). Clients bootstrap
/// through it, as an application in the cluster would: the test kubelet
/// proxies the ClusterIP to the ready brokers, so a new connection never lands
/// on a broker that is gone.
pub async fn service_address(client: &Client) -> String {
    let service = Api::<Service>::namespaced(client.clone(), NS)
        .get(CLIENT_SERVICE)
        .await
        .expect("the client Service");
    let cluster_ip = service
        .spec
        .and_then(|s| s.cluster_ip)
        .filter(|ip| !ip.is_empty() && ip != "None")
        .expect("the client Service has a ClusterIP");
    addr(&cluster_ip)
}

pub async fn start_consumer(
    bootstrap: &str,
    ledger: &Arc<Ledger>,
) -> dduomq_client::Result<PushConsumer> {
    let sink = ledger.clone();
    PushConsumerBuilder::new(bootstrap, GROUP, TOPIC)
        .namespace(NS)
        .concurrency(64)
        .max_in_flight(1024)
        .start(move |m: ReceivedMessage| {
            let sink = sink.clone();
            async move {
                sink.deliver(&m);
                Ok::<(), std::convert::Infallible>(())
            }
        })
        .await
}

/// The group's push consumer (one stream per broker, following the route).
pub async fn group_consumer(bootstrap: &str, ledger: Arc<Ledger>) -> PushConsumer {
    eventually_every(
        POLL,
        Duration::from_secs(60),
        "the push consumer to start",
        async || match start_consumer(bootstrap, &ledger).await {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("    consumer not started yet: {e}");
                None
            }
        },
    )
    .await
}
