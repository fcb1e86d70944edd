//! State shared by the controllers and the route publisher.

use std::sync::Arc;
use std::time::Duration;

use dduomq_proto::Namespace as BrokerNamespace;
use dduomq_proto::namespace::DEFAULT_NAMESPACE;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::{Notify, watch};

use crate::backoff::Backoff;
use crate::brokers::BrokerPool;
use crate::metrics::Metrics;
use crate::registry::BrokerEndpoint;

/// Annotation: `"true"` stops reconciling the resource.
pub const PAUSED: &str = "dduomq.io/paused";
/// Annotation: `"false"` leaves broker state alone (also on delete).
pub const MANAGED: &str = "dduomq.io/managed";
/// The operator's field manager and finalizer prefix.
pub const MANAGER: &str = "dduomq-operator";

/// Everything a reconcile needs.
#[derive(Clone)]
pub struct Context {
    pub client: Client,
    pub brokers: watch::Receiver<Vec<BrokerEndpoint>>,
    pub pool: BrokerPool,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// Periodic resync: drift on the brokers is repaired within this.
    pub resync: Duration,
    /// Wakes the route publisher.
    pub routes_changed: Arc<Notify>,
    /// Requeue delays of resources that keep failing.
    pub backoff: Arc<Backoff>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("resync", &self.resync)
            .finish()
    }
}

impl Context {
    /// The ready brokers.
    pub fn ready_brokers(&self) -> Vec<BrokerEndpoint> {
        self.brokers
            .borrow()
            .iter()
            .filter(|b| b.ready)
            .cloned()
            .collect()
    }

    /// Publishes a Kubernetes Event about `obj` (failures are only logged).
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_string(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, "publishing an event failed");
        }
    }

    /// The `Ready` condition of a reconcile's verdict. Publishes an Event only
    /// when the verdict is news (a new generation or another reason than the
    /// last status shows), so a failure retried every few seconds is one Event.
    pub async fn conclude<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        previous: Previous<'_>,
        verdict: Verdict,
    ) -> Condition {
        let generation = obj.meta().generation;
        let message = truncated(&verdict.message, MAX_MESSAGE_BYTES);
        if previous.observed_generation != generation
            || previous
                .conditions
                .iter()
                .all(|c| c.reason != verdict.reason)
        {
            self.event(obj, !verdict.ok, verdict.reason, message.clone())
                .await;
        }
        ready_condition(
            previous.conditions,
            verdict.ok,
            verdict.reason,
            message,
            generation,
        )
    }

    /// When to reconcile `obj` again after a verdict: at the periodic resync
    /// when ready, otherwise after the object's next backoff delay.
    pub fn requeue<K: Resource>(&self, obj: &K, ok: bool) -> Action {
        let key = backoff_key(obj);
        if ok {
            self.backoff.succeeded(&key);
            Action::requeue(self.resync)
        } else {
            Action::requeue(self.backoff.failed(&key))
        }
    }

    /// Whether the object's namespace is being deleted.
    pub async fn namespace_terminating<K: ResourceExt>(&self, obj: &K) -> bool {
        let Some(ns) = obj.namespace() else {
            return false;
        };
        match Api::<Namespace>::all(self.client.clone())
            .get_opt(&ns)
            .await
        {
            Ok(Some(n)) => n.metadata.deletion_timestamp.is_some(),
            Ok(None) => true,
            Err(_) => false,
        }
    }
}

/// What a resource's status records about its names on the brokers. Only the
/// operator writes a status (tenants cannot), so a tenant cannot point its
/// resource at another namespace's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRecord<'a> {
    /// Set once any operator reconciled the resource.
    pub observed_generation: Option<i64>,
    /// The broker namespace the operator decided on; absent when the resource
    /// was never reconciled, or only by an operator from before namespaces.
    pub broker_namespace: Option<&'a str>,
}

/// A resource whose names live in a broker namespace.
pub trait BrokerNamespaced: ResourceExt {
    fn status_record(&self) -> StatusRecord<'_>;
}

/// A resource's namespace on the brokers. The one the status records if any;
/// `default` for a resource an operator from before namespaces reconciled
/// (status without the record: its names were stored unqualified, with their
/// backlog and progress); otherwise its Kubernetes namespace (the Kubernetes
/// namespace `default` is the brokers' default namespace). A default-namespace
/// name is never taken over just because it exists on a broker.
pub fn broker_namespace<K: BrokerNamespaced>(obj: &K) -> String {
    let record = obj.status_record();
    match (record.broker_namespace, record.observed_generation) {
        (Some(recorded), _) => recorded.to_string(),
        (None, Some(_)) => DEFAULT_NAMESPACE.to_string(),
        (None, None) => obj.namespace().unwrap_or_default(),
    }
}

/// A resource's name as the brokers store it (namespace included), or why it
/// cannot be stored: with its namespace it is longer than `max` characters.
/// CEL at the CRD's root cannot see `metadata.namespace`, so this is checked
/// here.
pub fn stored_name<K: BrokerNamespaced>(obj: &K, max: usize) -> Result<String, String> {
    BrokerNamespace::parse(&broker_namespace(obj))
        .and_then(|ns| ns.qualify(&obj.name_any(), max))
        .map_err(|e| e.to_string())
}

/// Whether a resource carries `annotation: value`.
pub fn annotated<K: ResourceExt>(obj: &K, annotation: &str, value: &str) -> bool {
    obj.annotations().get(annotation).map(String::as_str) == Some(value)
}

/// A `Ready` condition, keeping the transition time when the status is unchanged.
pub fn ready_condition(
    previous: &[Condition],
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last = previous
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == status)
        .map(|c| c.last_transition_time.clone());
    Condition {
        type_: "Ready".into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: last.unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now())),
    }
}

/// Longest condition message and Event note, in bytes: `events.k8s.io/v1`
/// refuses notes over 1 KiB, and a status should stay readable in `kubectl`.
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// Longest echo of a spec value in an `InvalidSpec` message, in bytes.
const MAX_VALUE_BYTES: usize = 64;

/// `text` cut to at most `max` bytes on a character boundary, marked with `…`.
pub fn truncated(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mark = "…";
    let mut end = max - mark.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{mark}", &text[..end])
}

/// What the last written status said, for deciding whether a verdict is news.
#[derive(Debug, Clone, Copy)]
pub struct Previous<'a> {
    pub conditions: &'a [Condition],
    pub observed_generation: Option<i64>,
}

/// The outcome of a reconcile as the `Ready` condition states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub ok: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Verdict {
    /// A failed reconcile.
    pub fn failed(reason: &'static str, message: String) -> Verdict {
        Verdict {
            ok: false,
            reason,
            message,
        }
    }
}

/// The key of `obj` in the backoff table: its uid, unique across kinds.
pub fn backoff_key<K: Resource>(obj: &K) -> String {
    obj.meta()
        .uid
        .clone()
        .unwrap_or_else(|| obj.meta().name.clone().unwrap_or_default())
}

/// The `Ready` verdict of a reconcile that reached the brokers (or chose not to).
pub fn readiness(
    name_problem: Option<&str>,
    managed: bool,
    no_brokers: bool,
    problems: &[String],
    success: impl FnOnce() -> String,
) -> Verdict {
    let (ok, reason, message) = if let Some(problem) = name_problem {
        (false, "NameTooLong", problem.to_string())
    } else if !managed {
        (
            true,
            "Unmanaged",
            "dduomq.io/managed is false: broker state is left alone".into(),
        )
    } else if no_brokers {
        (false, "NoBrokers", "no ready broker in the registry".into())
    } else if !problems.is_empty() {
        (false, "BrokerError", problems.join("; "))
    } else {
        (true, "Reconciled", success())
    };
    Verdict {
        ok,
        reason,
        message,
    }
}

/// Errors of a reconcile. Each sets `Ready=False` with its own reason (see
/// [`ReconcileError::reason`]) and is retried with backoff.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReconcileError {
    /// A request to the Kubernetes API failed.
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// The spec passed the API server's validation but cannot be applied; it
    /// is found before any broker is touched.
    #[error("spec.{field} {value:?}: {problem}")]
    InvalidSpec {
        field: String,
        /// The offending value, truncated.
        value: String,
        problem: String,
    },
    /// Deleting the resource's broker-side state failed on some brokers.
    #[error("cleanup on the brokers failed: {0}")]
    Cleanup(String),
}

impl ReconcileError {
    /// A spec value the operator cannot apply: `field` (as in the spec, e.g.
    /// `retryBackoff[1]`), the value (shown briefly) and what is wrong with it.
    pub fn invalid_spec(
        field: impl Into<String>,
        value: &str,
        problem: impl std::fmt::Display,
    ) -> ReconcileError {
        ReconcileError::InvalidSpec {
            field: field.into(),
            value: truncated(value, MAX_VALUE_BYTES),
            problem: problem.to_string(),
        }
    }

    /// The `Ready` condition's reason for this failure.
    pub fn reason(&self) -> &'static str {
        match self {
            ReconcileError::Kube(_) => "KubernetesApiError",
            ReconcileError::InvalidSpec { .. } => "InvalidSpec",
            ReconcileError::Cleanup(_) => "CleanupFailed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_reasons_in_priority_order() {
        let ok = || "fine".to_string();
        assert_eq!(
            readiness(Some("too long"), true, false, &[], ok),
            Verdict::failed("NameTooLong", "too long".into())
        );
        assert_eq!(readiness(None, false, true, &[], ok).reason, "Unmanaged");
        assert_eq!(readiness(None, true, true, &[], ok).reason, "NoBrokers");
        assert_eq!(
            readiness(None, true, false, &["x".into()], ok),
            Verdict::failed("BrokerError", "x".into())
        );
        assert_eq!(
            readiness(None, true, false, &[], ok),
            Verdict {
                ok: true,
                reason: "Reconciled",
                message: "fine".into()
            }
        );
    }

    #[test]
    fn transition_time_is_kept_while_the_status_holds() {
        let first = ready_condition(&[], true, "Reconciled", "ok".into(), Some(1));
        let again = ready_condition(
            std::slice::from_ref(&first),
            true,
            "Reconciled",
            "ok".into(),
            Some(2),
        );
        assert_eq!(again.last_transition_time, first.last_transition_time);
        assert_eq!(again.observed_generation, Some(2));
        let flipped = ready_condition(&[again], false, "NoBrokers", "none".into(), Some(2));
        assert_eq!(flipped.status, "False");
        assert_eq!(flipped.reason, "NoBrokers");
    }

    #[tokio::test]
    async fn a_resource_that_stays_not_ready_is_retried_later_each_time() {
        let ctx = crate::test_support::context(
            crate::test_support::fake_api::stalled_client(),
            Vec::new(),
        );
        let obj = k8s_openapi::api::core::v1::ConfigMap {
            metadata: kube::api::ObjectMeta {
                uid: Some("uid-1".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            ctx.requeue(&obj, false),
            Action::requeue(Duration::from_secs(5))
        );
        assert_eq!(
            ctx.requeue(&obj, false),
            Action::requeue(Duration::from_secs(10))
        );
        assert_eq!(ctx.requeue(&obj, true), Action::requeue(ctx.resync));
        assert_eq!(
            ctx.requeue(&obj, false),
            Action::requeue(Duration::from_secs(5)),
            "a success starts over"
        );
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        assert_eq!(truncated("short", 8), "short");
        assert_eq!(truncated("abcdefgh", 8), "abcdefgh");
        assert_eq!(truncated("abcdefghi", 8), "abcde…");
        // `é` is 2 bytes: the cut backs off to the boundary before it.
        assert_eq!(truncated("abcdéfghi", 8), "abcd…");
        let long = "x".repeat(5000);
        assert_eq!(truncated(&long, MAX_MESSAGE_BYTES).len(), MAX_MESSAGE_BYTES);
    }

    #[test]
    fn an_invalid_spec_names_the_field_and_shows_the_value_briefly() {
        let err = ReconcileError::invalid_spec("retryBackoff[0]", "soon", "expected a number");
        assert_eq!(err.reason(), "InvalidSpec");
        assert_eq!(
            err.to_string(),
            "spec.retryBackoff[0] \"soon\": expected a number"
        );
        let long = ReconcileError::invalid_spec("offsetReset.timestamp", &"9".repeat(500), "bad");
        assert_eq!(
            long.to_string(),
            format!("spec.offsetReset.timestamp \"{}…\": bad", "9".repeat(61))
        );
    }
}
