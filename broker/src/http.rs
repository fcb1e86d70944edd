//! The HTTP endpoint: `/healthz` (the process is alive), `/readyz` (recovery is
//! done and the gRPC API is serving) and `/metrics` (Prometheus text format;
//! with `[auth] protect_metrics`, only for a user allowed to describe the
//! cluster, by HTTP basic authentication with its access and secret keys).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::auth::{Action, Auth, Resource};
use crate::messaging::Broker;
use crate::tls::SecuredHttp;

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

/// What the routes share.
#[derive(Debug, Clone)]
struct Shared {
    ready: Arc<Readiness>,
    auth: Arc<Auth>,
}

/// Why `/metrics` refuses a request, if it does.
fn metrics_refusal(auth: &Arc<Auth>, headers: &HeaderMap) -> Option<Response> {
    if !auth.protects_metrics() {
        return None;
    }
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b64| STANDARD.decode(b64.trim()).ok())
        .and_then(|raw| String::from_utf8(raw).ok());
    let Some((access_key, secret_key)) = basic.as_deref().and_then(|b| b.split_once(':')) else {
        let _ = auth.refuse_missing();
        return Some(unauthorized());
    };
    match auth.authenticate_basic(access_key, secret_key) {
        Err(_) => Some(unauthorized()),
        Ok(caller) => match caller.require(Action::Describe, Resource::Cluster) {
            Ok(()) => None,
            Err(e) => Some((StatusCode::FORBIDDEN, format!("{}: {e}\n", e.code())).into_response()),
        },
    }
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic realm=\"dduomq\"")],
        "UNAUTHENTICATED: /metrics needs an access key and secret key (HTTP basic authentication)\n",
    )
        .into_response()
}

async fn metrics(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(refusal) = metrics_refusal(&state.auth, &headers) {
        return refusal;
    }
    let Some(broker) = state.ready.broker.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response();
    };
    let Some(m) = broker.metrics() else {
        return (
            StatusCode::NOT_FOUND,
            "metrics are disabled ([broker] metrics = false)\n",
        )
            .into_response();
    };
    broker.update_gauges();
    (StatusCode::OK, m.render()).into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Shared>) -> (StatusCode, &'static str) {
    if state.ready.get() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Serves HTTP on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: SecuredHttp,
    ready: Arc<Readiness>,
    auth: Arc<Auth>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Shared { ready, auth });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
