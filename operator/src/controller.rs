//! What the Topic and ConsumerGroup controllers share: the controller loop, the
//! finalizer split into apply/cleanup, reconcile metrics and the retry policy.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Error as FinalizerError, Event, finalizer};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::context::{Context, ReconcileError};

/// A resource the operator reconciles into the brokers.
pub trait Reconciled:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
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

/// One reconcile of `obj`: the finalizer first, then apply or cleanup.
pub(crate) async fn reconcile<K: Reconciled>(
    obj: Arc<K>,
    ctx: Arc<Context>,
) -> Result<Action, FinalizerError<ReconcileError>> {
    let started = Instant::now();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let result = finalizer(&api, K::FINALIZER, obj, |event| async {
        match event {
            Event::Apply(o) => o.apply(&api, &ctx).await,
            Event::Cleanup(o) => o.cleanup(&ctx).await,
        }
    })
    .await;
    ctx.metrics
        .reconciled(K::KIND, result.is_ok(), started.elapsed().as_secs_f64());
    result
}

fn error_policy<K: Reconciled>(
    _: Arc<K>,
    err: &FinalizerError<ReconcileError>,
    _: Arc<Context>,
) -> Action {
    tracing::warn!(kind = K::KIND, error = %err, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
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
