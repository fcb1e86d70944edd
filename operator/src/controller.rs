//! What the Topic and ConsumerGroup controllers share: the controller loop, the
//! finalizer split into apply/cleanup, reconcile metrics and the retry policy.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Error as FinalizerError, Event, finalizer};
use kube::runtime::watcher;
use kube::{Api, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::context::{
    BrokerNamespaced, Context, MANAGER, Previous, ReconcileError, Verdict, backoff_key,
    broker_namespace,
};

/// A resource the operator reconciles into the brokers.
pub trait Reconciled:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + BrokerNamespaced
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// Kind, for metrics and logs.
    const KIND: &'static str;
    /// The finalizer that guards broker-side cleanup.
    const FINALIZER: &'static str;
    /// Status fields another task applies under its own field manager; the
    /// controller's status applies leave them out so they never take them over.
    const STATUS_OWNED_ELSEWHERE: &'static [&'static str] = &[];
    /// Makes the brokers match the resource and writes its status.
    fn apply<'a>(
        &'a self,
        api: &'a Api<Self>,
        ctx: &'a Context,
    ) -> impl Future<Output = Result<Action, ReconcileError>> + Send + 'a;
    /// Removes the resource's broker-side state before it is deleted.
    fn cleanup<'a>(
        &'a self,
        ctx: &'a Context,
    ) -> impl Future<Output = Result<Action, ReconcileError>> + Send + 'a;
}

/// Runs the controller for `K` until `shutdown` is cancelled and its running
/// reconciles finish, or `grace` after `shutdown` at the latest: a controller
/// whose initial LIST has not completed never finishes its graceful shutdown,
/// and the operator must still release its lease before the kubelet kills it.
pub async fn run<K: Reconciled>(ctx: Context, shutdown: CancellationToken, grace: Duration) {
    let api: Api<K> = Api::all(ctx.client.clone());
    // A broker that joins (or returns) gets every topic and group at once,
    // not at the next resync.
    let registry_changes = futures::stream::unfold(ctx.brokers.clone(), |mut rx| async move {
        rx.changed().await.ok()?;
        Some(((), rx))
    });
    let controller = Controller::new(api, watcher::Config::default())
        .reconcile_all_on(registry_changes)
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(reconcile::<K>, error_policy::<K>, Arc::new(ctx))
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(kind = K::KIND, error = %e, "reconcile failed");
            }
        });
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        () = controller => tracing::info!(kind = K::KIND, "controller stopped"),
        () = deadline => tracing::warn!(
            kind = K::KIND,
            ?grace,
            "controller did not stop within the grace period; stopping anyway"
        ),
    }
}

/// One reconcile of `obj`: the finalizer first, then apply or cleanup. A
/// failure is reported on the resource (`Ready=False` and an Event) before the
/// controller retries it.
pub(crate) async fn reconcile<K: Reconciled>(
    obj: Arc<K>,
    ctx: Arc<Context>,
) -> Result<Action, FinalizerError<ReconcileError>> {
    let started = Instant::now();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let result = finalizer(&api, K::FINALIZER, obj.clone(), |event| async {
        match event {
            Event::Apply(o) => o.apply(&api, &ctx).await,
            Event::Cleanup(o) => o.cleanup(&ctx).await,
        }
    })
    .await;
    match &result {
        Err(e) => report_failure(&*obj, &api, &ctx, failure_verdict(e)).await,
        Ok(_) if obj.meta().deletion_timestamp.is_some() => {
            ctx.backoff.succeeded(&backoff_key(&*obj));
        }
        Ok(_) => {}
    }
    ctx.metrics
        .reconciled(K::KIND, result.is_ok(), started.elapsed().as_secs_f64());
    result
}

/// How a failed reconcile reads in the `Ready` condition.
fn failure_verdict(err: &FinalizerError<ReconcileError>) -> Verdict {
    match err {
        FinalizerError::ApplyFailed(e) | FinalizerError::CleanupFailed(e) => {
            Verdict::failed(e.reason(), e.to_string())
        }
        FinalizerError::AddFinalizer(e) => Verdict::failed(
            "KubernetesApiError",
            format!("adding the finalizer failed: {e}"),
        ),
        FinalizerError::RemoveFinalizer(e) => Verdict::failed(
            "KubernetesApiError",
            format!("removing the finalizer failed: {e}"),
        ),
        other => Verdict::failed("KubernetesApiError", other.to_string()),
    }
}

/// Writes `Ready=False` for a failed reconcile, keeping the rest of the status
/// as last written (server-side apply drops fields the patch leaves out), and
/// publishes an Event when the failure is news. Best effort: when the API
/// server itself is failing, this is logged and the retry tries again.
async fn report_failure<K: Reconciled>(obj: &K, api: &Api<K>, ctx: &Context, verdict: Verdict) {
    let object = serde_json::to_value(obj).unwrap_or_default();
    let mut status = match &object["status"] {
        serde_json::Value::Object(fields) => fields.clone(),
        _ => serde_json::Map::new(),
    };
    let conditions: Vec<Condition> = status
        .get("conditions")
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default();
    let previous = Previous {
        conditions: &conditions,
        observed_generation: status.get("observedGeneration").and_then(|g| g.as_i64()),
    };
    let condition = ctx.conclude(obj, previous, verdict).await;
    for field in K::STATUS_OWNED_ELSEWHERE {
        status.remove(*field);
    }
    status.insert("conditions".into(), serde_json::json!([condition]));
    status.insert(
        "observedGeneration".into(),
        serde_json::json!(obj.meta().generation),
    );
    // The record that tells this operator's resources from a pre-namespace
    // one's: written with every status, failures included.
    status.insert(
        "brokerNamespace".into(),
        serde_json::json!(broker_namespace(obj)),
    );
    let patch = serde_json::json!({
        "apiVersion": object["apiVersion"],
        "kind": K::KIND,
        "status": status,
    });
    if let Err(e) = api
        .patch_status(
            &obj.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        tracing::warn!(kind = K::KIND, error = %e, "writing the failure into the status failed");
    }
}

/// Retries a failed reconcile after the resource's next backoff delay.
fn error_policy<K: Reconciled>(
    obj: Arc<K>,
    err: &FinalizerError<ReconcileError>,
    ctx: Arc<Context>,
) -> Action {
    let delay = ctx.backoff.failed(&backoff_key(&*obj));
    tracing::warn!(kind = K::KIND, error = %err, ?delay, "reconcile failed; retrying");
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Topic;
    use crate::test_support::context;
    use crate::test_support::fake_api::stalled_client;

    /// A controller whose initial LIST never completes still returns after the
    /// grace period, so the operator gets to release its lease.
    #[tokio::test]
    async fn a_controller_stuck_in_its_initial_list_stops_after_the_grace_period() {
        let grace = Duration::from_millis(300);
        let shutdown = CancellationToken::new();
        let controller = tokio::spawn(run::<Topic>(
            context(stalled_client(), Vec::new()),
            shutdown.clone(),
            grace,
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!controller.is_finished(), "ran before shutdown");
        let cancelled = Instant::now();
        shutdown.cancel();
        tokio::time::timeout(grace + Duration::from_secs(2), controller)
            .await
            .expect("the controller stops after the grace period")
            .expect("the controller task");
        assert!(
            cancelled.elapsed() >= grace,
            "stopped before the grace period"
        );
    }
}
