//! `dduomq-operator`: the Kubernetes operator. The controllers arrive with the
//! operator issue; today the process serves its health and metrics endpoints so
//! that the chart, dashboards and alerts can be wired and tested against it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use clap::Parser;
use dduomq_operator::metrics;
use tokio::signal::unix::{SignalKind, signal};

/// The DduoMQ operator.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// HTTP listen address (/healthz, /metrics).
    #[arg(
        long,
        env = "DDUOMQ_OPERATOR_HTTP_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    http_addr: SocketAddr,
}

async fn render(State(m): State<Arc<metrics::Metrics>>) -> String {
    m.render()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let m = Arc::new(metrics::Metrics::new());
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(render))
        .with_state(m);
    let listener = tokio::net::TcpListener::bind(args.http_addr).await?;
    tracing::info!(http = %args.http_addr, "operator serving health and metrics");
    let mut term = signal(SignalKind::terminate())?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .await?;
    Ok(())
}
