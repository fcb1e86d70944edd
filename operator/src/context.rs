//! State shared by the controllers and the route publisher.

use std::sync::Arc;
use std::time::Duration;

use dduomq_proto::Namespace as BrokerNamespace;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::{Notify, watch};

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

/// A resource's namespace on the brokers: its Kubernetes namespace (the
/// Kubernetes namespace `default` is the brokers' default namespace).
pub fn broker_namespace<K: ResourceExt>(obj: &K) -> String {
    obj.namespace().unwrap_or_default()
}

/// A resource's name as the brokers store it (namespace included), or why it
/// cannot be stored: with its namespace it is longer than `max` characters.
/// CEL at the CRD's root cannot see `metadata.namespace`, so this is checked
/// here.
pub fn stored_name<K: ResourceExt>(obj: &K, max: usize) -> Result<String, String> {
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

/// The `Ready` verdict of a reconcile: `(ok, reason, message)`.
pub fn readiness(
    name_problem: Option<&str>,
    managed: bool,
    no_brokers: bool,
    problems: &[String],
    success: impl FnOnce() -> String,
) -> (bool, &'static str, String) {
    if let Some(problem) = name_problem {
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
    }
}

/// Errors of a reconcile (retried after a short delay).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReconcileError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Other(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_reasons_in_priority_order() {
        let ok = || "fine".to_string();
        assert_eq!(
            readiness(Some("too long"), true, false, &[], ok),
            (false, "NameTooLong", "too long".into())
        );
        assert_eq!(readiness(None, false, true, &[], ok).1, "Unmanaged");
        assert_eq!(readiness(None, true, true, &[], ok).1, "NoBrokers");
        assert_eq!(
            readiness(None, true, false, &["x".into()], ok),
            (false, "BrokerError", "x".into())
        );
        assert_eq!(
            readiness(None, true, false, &[], ok),
            (true, "Reconciled", "fine".into())
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
}
