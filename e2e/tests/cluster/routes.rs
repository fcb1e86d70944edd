//! The topic's route as the brokers answer it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use dduomq_client::Admin;
use dduomq_client::proto as pb;

use crate::pods::View;
use crate::{NS, QUEUES, TOPIC};

/// A topic route as queue sets per broker address.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteView {
    pub epoch: u64,
    pub writable: BTreeMap<String, BTreeSet<u32>>,
    pub readable: BTreeMap<String, BTreeSet<u32>>,
    /// Writable entries per queue id (each queue should be written on one broker).
    pub writers_per_queue: BTreeMap<u32, usize>,
}

impl RouteView {
    pub fn of(r: &pb::QueryRouteResponse) -> RouteView {
        let mut v = RouteView {
            epoch: r.epoch,
            ..RouteView::default()
        };
        for q in &r.queues {
            if q.writable {
                v.writable
                    .entry(q.broker_address.clone())
                    .or_default()
                    .insert(q.queue_id);
                *v.writers_per_queue.entry(q.queue_id).or_default() += 1;
            }
            if q.readable {
                v.readable
                    .entry(q.broker_address.clone())
                    .or_default()
                    .insert(q.queue_id);
            }
        }
        v
    }

    /// Published by the operator, every queue written on exactly one broker, and
    /// the writers exactly `brokers`.
    pub fn balanced_over(&self, brokers: &[String]) -> bool {
        let writers: BTreeSet<&String> = self.writable.keys().collect();
        let expected: BTreeSet<&String> = brokers.iter().collect();
        self.epoch > 0
            && writers == expected
            && self.writers_per_queue.len() == QUEUES as usize
            && self.writers_per_queue.values().all(|n| *n == 1)
    }

    pub fn writes_on(&self, address: &str) -> usize {
        self.writable.get(address).map_or(0, BTreeSet::len)
    }
}

/// QueryRoute for the topic, as a client asks it.
pub async fn query_route(address: &str) -> Result<RouteView, String> {
    let call = async {
        let mut c = pb::messaging_service_client::MessagingServiceClient::connect(format!(
            "http://{address}"
        ))
        .await
        .map_err(|e| format!("connect: {e}"))?;
        let mut request = tonic::Request::new(pb::QueryRouteRequest {
            topic: TOPIC.into(),
        });
        request.metadata_mut().insert(
            dduomq_proto::namespace::NAMESPACE_METADATA,
            NS.parse().expect("a namespace is a header value"),
        );
        c.query_route(request)
            .await
            .map(|r| RouteView::of(&r.into_inner()))
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    };
    tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .unwrap_or_else(|_| Err("no answer within 5s".into()))
}

/// Waits until exactly `n` brokers serve and every one of them answers a route
/// that spreads the write queues over exactly those `n`. Returns that route, how
/// long it took, and the QueryRoute errors seen meanwhile.
pub async fn wait_balanced(
    view: &View,
    n: usize,
    timeout: Duration,
) -> (RouteView, Duration, Vec<String>) {
    let started = Instant::now();
    let mut errors: Vec<String> = Vec::new();
    let mut last: Option<RouteView> = None;
    loop {
        let pods = view.pods();
        let serving = view.serving();
        if serving.len() == n && pods.len() == n {
            let mut all = true;
            for a in &serving {
                match query_route(a).await {
                    Ok(r) => {
                        all &= r.balanced_over(&serving);
                        last = Some(r);
                    }
                    Err(e) => {
                        if errors.len() < 20 {
                            errors
                                .push(format!("{:.1}s {a}: {e}", started.elapsed().as_secs_f64()));
                        }
                        all = false;
                    }
                }
            }
            if all && let Some(r) = last.clone() {
                return (r, started.elapsed(), errors);
            }
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for a route balanced over {n} serving brokers; \
             serving {serving:?}; pods {pods:#?}; last route {last:?}; route errors {errors:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Messages of the topic stored on a broker (all queues).
pub async fn stored_on(address: &str) -> u64 {
    let d = Admin::connect(address)
        .expect("admin client")
        .in_namespace(NS)
        .expect("the release namespace")
        .describe_topic(TOPIC)
        .await
        .unwrap_or_else(|e| panic!("DescribeTopic {TOPIC} on {address}: {e}"));
    d.queues.iter().map(|q| q.max_offset).sum()
}
