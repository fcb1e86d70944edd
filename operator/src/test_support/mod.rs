//! What the reconcile tests share: a fake Kubernetes API server that records the
//! operator's requests, real brokers on loopback, and a [`Context`] wired to both.

pub mod fake_api;

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::api::ObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::finalizer::Error as FinalizerError;
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

use crate::brokers::BrokerPool;
use crate::context::{Context, MANAGER, ReconcileError};
use crate::controller::{Reconciled, reconcile};
use crate::metrics::Metrics;
use crate::registry::BrokerEndpoint;
use fake_api::{FakeApi, Sent};

/// Namespace of the resources under test.
pub const NAMESPACE: &str = "shop";
/// The periodic resync of the test context.
pub const RESYNC: Duration = Duration::from_secs(30);

/// A ready broker `dduomq-broker-<id>` at `address`, as the registry lists it.
pub fn ready_broker(id: u32, address: &str) -> BrokerEndpoint {
    BrokerEndpoint {
        name: format!("dduomq-broker-{id}"),
        address: address.to_string(),
        ready: true,
        broker_id: id,
    }
}

/// A reconcile context over `client` whose registry lists `brokers`.
pub fn context(client: Client, brokers: Vec<BrokerEndpoint>) -> Context {
    let (_, registry) = watch::channel(brokers);
    Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: None,
            },
        ),
        client,
        brokers: registry,
        pool: BrokerPool::default(),
        metrics: Arc::new(Metrics::new()),
        resync: RESYNC,
        routes_changed: Arc::new(Notify::new()),
        backoff: Arc::default(),
    }
}

/// An admin client of `broker` in the broker namespace of the resources under
/// test (their Kubernetes namespace).
pub fn tenant_admin(broker: &dduomq_testkit::Broker) -> dduomq_client::Admin {
    broker
        .admin()
        .in_namespace(NAMESPACE)
        .expect("a valid namespace")
}

/// How far along its life a resource under test is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Just created: the operator has not added its finalizer yet.
    New,
    /// Carries the operator's finalizer.
    Finalized,
    /// Deleted by the user, held by the operator's finalizer.
    Deleting,
}

/// Metadata of a resource `name` in [`NAMESPACE`] at generation 1.
pub fn metadata(name: &str, finalizer: &str, stage: Stage) -> ObjectMeta {
    let created = "2026-01-01T00:00:00Z".parse().expect("timestamp");
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(NAMESPACE.into()),
        uid: Some(format!("uid-{name}")),
        generation: Some(1),
        resource_version: Some("1".into()),
        creation_timestamp: Some(Time(created)),
        finalizers: (stage != Stage::New).then(|| vec![finalizer.to_string()]),
        deletion_timestamp: (stage == Stage::Deleting).then_some(Time(created)),
        ..Default::default()
    }
}

/// The API requests a reconcile sends about one resource, as the
/// `METHOD path?query` lines of [`Outcome::request_lines`].
#[derive(Debug)]
pub struct Requests {
    /// The resource's path.
    object: String,
}

impl Requests {
    /// Requests about `name` of the operator's kind `plural` (`topics`, ...).
    pub fn new(plural: &str, name: &str) -> Requests {
        Requests {
            object: format!("/apis/dduomq.io/v1alpha1/namespaces/{NAMESPACE}/{plural}/{name}"),
        }
    }

    /// Publishes an event.
    pub fn event(&self) -> String {
        format!("POST /apis/events.k8s.io/v1/namespaces/{NAMESPACE}/events?")
    }

    /// Writes the status (server-side apply).
    pub fn status(&self) -> String {
        format!(
            "PATCH {}/status?&force=true&fieldManager={MANAGER}",
            self.object
        )
    }

    /// Adds or removes the finalizer (a JSON patch).
    pub fn finalizers(&self) -> String {
        format!("PATCH {}?", self.object)
    }

    /// Reads the namespace (is it terminating?).
    pub fn namespace(&self) -> String {
        format!("GET /api/v1/namespaces/{NAMESPACE}")
    }
}

/// The JSON patch that releases `finalizer`, the resource's only one.
pub fn release(finalizer: &str) -> Value {
    json!([
        {"op": "test", "path": "/metadata/finalizers/0", "value": finalizer},
        {"op": "remove", "path": "/metadata/finalizers/0"},
    ])
}

/// A Kubernetes event as the operator published it.
#[derive(Debug, PartialEq, Eq)]
pub struct Published {
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

impl Published {
    pub fn normal(reason: &str, note: &str) -> Published {
        Published {
            warning: false,
            reason: reason.into(),
            note: note.into(),
        }
    }

    pub fn warning(reason: &str, note: &str) -> Published {
        Published {
            warning: true,
            ..Published::normal(reason, note)
        }
    }
}

/// What one reconcile did.
#[derive(Debug)]
pub struct Outcome {
    pub result: Result<Action, FinalizerError<ReconcileError>>,
    /// The requests it sent to the API server, in order.
    pub sent: Vec<Sent>,
    pub ctx: Context,
}

impl Outcome {
    /// The action of a reconcile that succeeded.
    pub fn action(&self) -> &Action {
        match &self.result {
            Ok(action) => action,
            Err(e) => panic!("the reconcile failed: {e:?}"),
        }
    }

    /// The requests as `METHOD path?query` lines.
    pub fn request_lines(&self) -> Vec<String> {
        self.sent
            .iter()
            .map(|s| format!("{} {}", s.method, s.target))
            .collect()
    }

    /// The event published by request `index`.
    pub fn event(&self, index: usize) -> Published {
        let body = &self.sent[index].body;
        let text = |field: &str| body[field].as_str().unwrap_or_default().to_string();
        Published {
            warning: text("type") == "Warning",
            reason: text("reason"),
            note: text("note"),
        }
    }

    /// The body of request `index`, with the conditions' transition times (the
    /// clock's) taken out so that the rest can be compared exactly.
    pub fn status_patch(&self, index: usize) -> Value {
        let mut body = self.sent[index].body.clone();
        for condition in body["status"]["conditions"]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            let removed = condition
                .as_object_mut()
                .and_then(|c| c.remove("lastTransitionTime"));
            assert!(removed.is_some(), "a condition without a transition time");
        }
        body
    }

    /// Whether the reconcile woke the route publisher.
    pub fn woke_routes(&self) -> bool {
        self.ctx.routes_changed.notified().now_or_never().is_some()
    }
}

/// Reconciles `obj` once, as the controller does, against a fake API server
/// holding `obj` and `others`, with `brokers` in the registry.
pub async fn reconcile_once<K: Reconciled>(
    obj: &K,
    others: Vec<Value>,
    brokers: Vec<BrokerEndpoint>,
) -> Outcome {
    let mut objects = vec![serde_json::to_value(obj).expect("object as JSON")];
    objects.extend(others);
    reconcile_against(obj, objects, brokers).await
}

/// Reconciles `obj` once against a fake API server holding only `objects`
/// (without `obj` itself: a resource deleted after the watch saw it, whose
/// every write fails).
pub async fn reconcile_against<K: Reconciled>(
    obj: &K,
    objects: Vec<Value>,
    brokers: Vec<BrokerEndpoint>,
) -> Outcome {
    let api = FakeApi::new(objects);
    let ctx = context(api.client(), brokers);
    let result = reconcile(Arc::new(obj.clone()), Arc::new(ctx.clone())).await;
    Outcome {
        result,
        sent: api.sent(),
        ctx,
    }
}
