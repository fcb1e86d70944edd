//! The HTTP endpoint: `/healthz` (the process is alive), `/readyz` (recovery is
//! done and the gRPC API is serving) and `/metrics` (Prometheus text format).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::connections::GatedListener;
use crate::messaging::Broker;

/// What the HTTP endpoint reports on: readiness, and the broker once it is open.
#[derive(Debug, Default)]
pub struct Readiness {
    ready: AtomicBool,
    broker: OnceLock<Arc<Broker>>,
}

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
    pub fn get(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
    /// Hands over the opened broker, whose metrics `/metrics` then serves.
    pub fn attach(&self, broker: Arc<Broker>) {
        let _ = self.broker.set(broker);
    }
}

async fn metrics(State(state): State<Arc<Readiness>>) -> (StatusCode, String) {
    let Some(broker) = state.broker.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting\n".into());
    };
    let Some(m) = broker.metrics() else {
        return (
            StatusCode::NOT_FOUND,
            "metrics are disabled ([broker] metrics = false)\n".into(),
        );
    };
    broker.update_gauges();
    (StatusCode::OK, m.render())
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(ready): State<Arc<Readiness>>) -> (StatusCode, &'static str) {
    if ready.get() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Serves HTTP on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: GatedListener,
    ready: Arc<Readiness>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(ready);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
