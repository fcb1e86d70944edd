//! `dduomq-operator`: reconciles Topic and ConsumerGroup resources into the
//! brokers, using the brokers' EndpointSlices as the registry, and pushes the
//! route table. Serves `/healthz` and `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use clap::Parser;
use dduomq_operator::brokers::BrokerPool;
use dduomq_operator::context::Context;
use dduomq_operator::crd::{ConsumerGroup, Topic};
use dduomq_operator::{
    controller, crd_upgrade, fleet, leader, metrics, registry, replication, route_epoch, routes,
    uninstall,
};
use dduomq_replication::GroupLayout;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// How long the controllers get to finish their running reconciles after
/// SIGTERM; well below the pod's 30 s termination grace period, so the
/// finalizer check and the lease release still run before the kubelet kills it.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The DduoMQ operator.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// HTTP listen address (/healthz, /metrics).
    #[arg(
        long,
        env = "DDUOMQ_OPERATOR_HTTP_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    http_addr: SocketAddr,
    /// Namespace of the operator (its leader-election Lease lives there).
    #[arg(long, env = "POD_NAMESPACE", default_value = "dduomq-system")]
    namespace: String,
    /// This replica's identity for leader election.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Label selector of the brokers' EndpointSlices.
    #[arg(
        long,
        env = "DDUOMQ_BROKER_SELECTOR",
        default_value = "app.kubernetes.io/name=dduomq,app.kubernetes.io/component=broker"
    )]
    broker_selector: String,
    /// Namespace of the brokers' EndpointSlices (default: the operator's).
    #[arg(long, env = "DDUOMQ_BROKER_NAMESPACE")]
    broker_namespace: Option<String>,
    /// Broker gRPC port when the EndpointSlice names no `grpc` port.
    #[arg(long, default_value_t = 6086)]
    broker_port: u16,
    /// The operator's own Deployment. When it is gone or being deleted at
    /// SIGTERM, the operator is being uninstalled and releases its finalizers
    /// on every Topic and ConsumerGroup, so none is left undeletable.
    #[arg(long, env = "DDUOMQ_OPERATOR_DEPLOYMENT")]
    deployment: Option<String>,
    /// Run as the chart's pre-delete hook instead: scale `--deployment` to 0,
    /// wait for the pods selected by `--operator-pods` to go, release every
    /// Topic and ConsumerGroup finalizer, exit.
    #[arg(long, requires_all = ["deployment", "operator_pods"])]
    uninstall: bool,
    /// Label selector of the operator's pods (with `--uninstall`).
    #[arg(long)]
    operator_pods: Option<String>,
    /// The broker StatefulSet (in the brokers' namespace) whose replicas the
    /// operator owns: it grows it and drains departing brokers before shrinking
    /// it to the count in its `dduomq.io/desired-replicas` annotation.
    #[arg(long, env = "DDUOMQ_BROKER_STATEFULSET")]
    broker_statefulset: Option<String>,
    /// Brokers per replication group (the chart's broker.replicationFactor).
    /// Above 1 the operator is the groups' controller: it records each
    /// group in ConfigMap `<broker statefulset>-group-<g>` (default
    /// statefulset name `dduomq-broker`), elects masters, and routes each
    /// group's queues to its master.
    #[arg(long, env = "DDUOMQ_REPLICATION_FACTOR", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    replication_factor: u32,
    /// The access key the operator signs its broker calls with, when the
    /// brokers have authentication on (a user with admin on cluster).
    #[arg(long, env = "DDUOMQ_ACCESS_KEY", requires = "secret_key")]
    access_key: Option<String>,
    /// Its secret key (from a Secret, through the environment).
    #[arg(
        long,
        env = "DDUOMQ_SECRET_KEY",
        hide_env_values = true,
        requires = "access_key"
    )]
    secret_key: Option<String>,
    /// Periodic resync, which repairs drift on the brokers.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    resync: Duration,
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
    if args.uninstall {
        let client = Client::try_default().await?;
        let (deployment, pods) = (
            args.deployment.as_deref().unwrap_or_default(),
            args.operator_pods.as_deref().unwrap_or_default(),
        );
        let n = uninstall::uninstall(
            &client,
            &args.namespace,
            deployment,
            pods,
            Duration::from_secs(120),
        )
        .await?;
        tracing::info!(released = n, "operator stopped; finalizers released");
        return Ok(());
    }
    // Before anything that waits; the uninstall hook above keeps the default
    // SIGTERM action.
    let shutdown = shutdown_on_signal()?;
    let m = Arc::new(metrics::Metrics::new());
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(render))
        .with_state(m.clone());
    let listener = tokio::net::TcpListener::bind(args.http_addr).await?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    // Keep serving health and metrics while the API server is unreachable.
    let connected = async {
        loop {
            match Client::try_default().await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::error!(error = %e, "cannot reach the Kubernetes API; retrying in 5s");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        }
    };
    let Some(client) = shutdown.run_until_cancelled(connected).await else {
        return Ok(());
    };
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()));
    let Some(leadership) = leader::lead(
        client.clone(),
        &args.namespace,
        "dduomq-operator",
        &identity,
        &shutdown,
    )
    .await
    else {
        return Ok(());
    };
    m.leader.set(1);
    if shutdown
        .run_until_cancelled(crd_upgrade::ensure(&client))
        .await
        .is_none()
    {
        // A signal during startup is still a stop: an uninstalled operator
        // releases its finalizers here too.
        release_if_uninstalled(&client, &args).await;
        leadership.release().await;
        return Ok(());
    }

    let (tx, brokers) = watch::channel(Vec::new());
    let broker_namespace = args
        .broker_namespace
        .clone()
        .unwrap_or_else(|| args.namespace.clone());
    tokio::spawn(registry::run(
        client.clone(),
        Some(broker_namespace.clone()),
        args.broker_selector.clone(),
        args.broker_port,
        tx,
    ));
    let ctx = Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "dduomq-operator".into(),
                instance: Some(identity),
            },
        ),
        client,
        brokers,
        pool: BrokerPool::signing_with(args.access_key.clone().zip(args.secret_key.clone()).map(
            |(access_key, secret_key)| dduomq_client::Credentials {
                access_key,
                secret_key,
            },
        )),
        metrics: m,
        resync: args.resync,
        routes_changed: Arc::new(Notify::new()),
        backoff: Arc::default(),
    };
    tracing::info!(selector = %args.broker_selector, "operator running");
    // Before the controllers, whose status applies would drop an assignment
    // recorded by an older operator under their field manager.
    let placed = routes::recorded_placements(&ctx.client).await;
    let layout = GroupLayout::new(args.replication_factor);
    let (group_states, groups) = watch::channel(replication::GroupStates::new());
    let replication = (layout.factor() > 1).then(|| {
        let settings = replication::ReplicationSettings {
            layout,
            namespace: broker_namespace.clone(),
            statefulset: args
                .broker_statefulset
                .clone()
                .unwrap_or_else(|| "dduomq-broker".into()),
        };
        let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
        tokio::spawn(replication::run(ctx, settings, group_states, shutdown))
    });
    let units = if layout.factor() > 1 {
        replication::WriteUnits::Groups {
            layout,
            states: groups,
        }
    } else {
        replication::WriteUnits::Brokers
    };
    // Stopped and awaited before the lease is released, so a successor never
    // publishes routes while this one still does.
    let routes = tokio::spawn({
        let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
        let epochs = route_epoch::RouteEpochCounter::new(ctx.client.clone(), &args.namespace);
        let units = units.clone();
        async move {
            shutdown
                .run_until_cancelled(routes::run(ctx, placed, epochs, units))
                .await
        }
    });
    let fleet = args.broker_statefulset.clone().map(|sts| {
        tokio::spawn(fleet::run(
            ctx.clone(),
            broker_namespace,
            sts,
            units.clone(),
            shutdown.clone(),
        ))
    });
    let client = ctx.client.clone();
    tokio::join!(
        controller::run::<Topic>(ctx.clone(), shutdown.clone(), SHUTDOWN_GRACE),
        controller::run::<ConsumerGroup>(ctx, shutdown, SHUTDOWN_GRACE)
    );
    if let Some(fleet) = fleet {
        let _ = fleet.await;
    }
    if let Some(replication) = replication {
        let _ = replication.await;
    }
    let _ = routes.await;
    release_if_uninstalled(&client, &args).await;
    leadership.release().await;
    Ok(())
}

/// On the way out: when the operator's Deployment (`--deployment`) is gone
/// or being deleted, no operator will run again, so its finalizers go.
async fn release_if_uninstalled(client: &Client, args: &Args) {
    let Some(deployment) = &args.deployment else {
        return;
    };
    match uninstall::deployment_removed(client, &args.namespace, deployment).await {
        Ok(true) => match uninstall::release_finalizers(client).await {
            Ok(n) => tracing::info!(
                released = n,
                "Deployment {deployment} removed: finalizers released"
            ),
            Err(e) => tracing::error!(error = %e, "releasing finalizers failed"),
        },
        Ok(false) => tracing::info!("stopping; Deployment {deployment} stays, finalizers kept"),
        Err(e) => {
            tracing::error!(error = %e, "cannot tell whether Deployment {deployment} is being deleted; finalizers kept")
        }
    }
}

/// The operator's one shutdown signal, cancelled on SIGTERM or Ctrl-C. Installed
/// first, so a signal is never missed (or left to its default action) whatever
/// the operator is waiting for.
fn shutdown_on_signal() -> std::io::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let shutdown = CancellationToken::new();
    let mut terminate = signal(SignalKind::terminate())?;
    let cancel = shutdown.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "Ctrl-C",
        };
        tracing::info!(signal = name, "shutting down");
        cancel.cancel();
    });
    Ok(shutdown)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "dduomq-operator".into())
}
