//! `dduomq-broker`: runs a broker. With no flags it is a standalone broker on
//! `./data`, gRPC on 127.0.0.1:6086 and HTTP on 127.0.0.1:7654.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use dduomq_broker::auth::Auth;
use dduomq_broker::config::BrokerConfig;
use dduomq_broker::connections::{Gate, GatedListener, Listener};
use dduomq_broker::grpc::GrpcListeners;
use dduomq_broker::http::Readiness;
use dduomq_broker::messaging::Broker;
use dduomq_broker::metrics::Metrics;
use dduomq_broker::replication::{Peering, Replication};
use dduomq_broker::store::{FlushMode, NoObserver, Store, StoreObserver};
use dduomq_broker::tls::{SecuredHttp, TlsServer};
use dduomq_proto::signature::Signer;
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// mimalloc: glibc's malloc and free were a fifth of the broker's CPU under load
/// (many small, short-lived allocations per message across threads).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The DduoMQ broker.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file overriding the built-in defaults (config/dduomq.toml).
    #[arg(long, env = "DDUOMQ_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory for the commit log, consume queues, index and metadata.
    #[arg(long, env = "DDUOMQ_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// When sends are acknowledged: async (page cache) or sync (after fdatasync).
    #[arg(long, env = "DDUOMQ_FLUSH")]
    flush: Option<FlushMode>,
    /// gRPC listen address.
    #[arg(long, env = "DDUOMQ_GRPC_ADDR")]
    grpc_addr: Option<SocketAddr>,
    /// HTTP listen address (/healthz, /readyz).
    #[arg(long, env = "DDUOMQ_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    /// Address clients are told to dial (default: the gRPC address).
    #[arg(long, env = "DDUOMQ_ADVERTISED_ADDRESS")]
    advertised_address: Option<String>,
    /// Create unknown topics and groups on first use.
    #[arg(long, env = "DDUOMQ_AUTO_CREATE_TOPICS")]
    auto_create_topics: Option<bool>,
    /// Record and serve metrics (`--metrics false` to measure their cost).
    #[arg(long, env = "DDUOMQ_METRICS")]
    metrics: Option<bool>,
    /// Numeric broker id (part of message ids).
    #[arg(long, env = "DDUOMQ_BROKER_ID")]
    broker_id: Option<u32>,
    /// Log format: text or json. Filter with RUST_LOG.
    #[arg(long, env = "DDUOMQ_LOG_FORMAT", default_value = "text")]
    log_format: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Seals a secret key (read from stdin) for the users file, so that it is
    /// never stored in plain text: prints the `secret_key` value.
    ///
    /// Example: `openssl rand -hex 20 | dduomq-broker seal-secret --key-file sealing.key --access-key orders-app`
    SealSecret {
        /// The sealing key file ([auth] sealing_key_file): 64 hex digits.
        #[arg(long)]
        key_file: PathBuf,
        /// The access key the secret belongs to (sealed secrets are bound to it).
        #[arg(long)]
        access_key: String,
    },
}

/// Prints the sealed form of the secret key on stdin.
fn seal_secret(key_file: &std::path::Path, access_key: &str) -> anyhow::Result<()> {
    let key = dduomq_broker::auth::sealed::SealingKey::from_file(key_file)?;
    let mut secret = String::new();
    std::io::stdin().read_line(&mut secret)?;
    println!(
        "{}",
        key.seal(access_key, secret.trim_end_matches(['\r', '\n']))?
    );
    Ok(())
}

impl Args {
    fn apply(self, config: &mut BrokerConfig) {
        let (b, s) = (&mut config.broker, &mut config.store);
        if let Some(v) = self.data_dir {
            s.data_dir = v;
        }
        if let Some(v) = self.flush {
            s.flush = v;
        }
        if let Some(v) = self.broker_id {
            s.broker_id = v;
        }
        if let Some(v) = self.grpc_addr {
            b.grpc_addr = v;
        }
        if let Some(v) = self.http_addr {
            b.http_addr = v;
        }
        if let Some(v) = self.advertised_address {
            b.advertised_address = v;
        }
        if let Some(v) = self.auto_create_topics {
            b.auto_create_topics = v;
        }
        if let Some(v) = self.metrics {
            b.metrics = v;
        }
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Resolves on SIGTERM (`term`) or Ctrl-C.
async fn terminated(mut term: Signal) {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if let Some(Command::SealSecret {
        key_file,
        access_key,
    }) = args.command.take()
    {
        return seal_secret(&key_file, &access_key);
    }
    init_logging(&args.log_format);
    let mut config = BrokerConfig::load(args.config.as_deref())?;
    args.apply(&mut config);
    config.broker.validate()?;
    config.replication.validate()?;
    config.auth.validate()?;
    config.tls.validate()?;
    if config.tls.enabled
        && config.replication.enabled()
        && config.tls.ca_file.as_os_str().is_empty()
    {
        anyhow::bail!("invalid config: [tls] ca_file is required to replicate over TLS");
    }
    let tls = match config.tls.enabled {
        true => Some(TlsServer::open(&config.tls).context("starting TLS")?),
        false => None,
    };

    // Bind first, so a taken port fails fast, before recovery.
    let grpc_listener = TcpListener::bind(config.broker.grpc_addr)
        .await
        .with_context(|| format!("binding gRPC {}", config.broker.grpc_addr))?;
    let http_listener = TcpListener::bind(config.broker.http_addr)
        .await
        .with_context(|| format!("binding HTTP {}", config.broker.http_addr))?;
    let rocketmq_listener = match config.broker.rocketmq_addr {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding RocketMQ {addr}"))?,
        ),
        None => None,
    };
    let metrics = config.broker.metrics.then(|| {
        Metrics::new(
            env!("CARGO_PKG_VERSION"),
            config.store.broker_id,
            &format!("{:?}", config.store.flush).to_lowercase(),
        )
    });
    let auth = Auth::open(&config.auth, metrics.clone()).context("starting authentication")?;
    if config.auth.protect_metrics && !config.tls.enabled {
        tracing::warn!(
            "[auth] protect_metrics sends secret keys as HTTP basic authentication over plaintext: turn [tls] on"
        );
    }
    if config.replication.enabled() && auth.enabled() && auth.own_credentials().is_none() {
        anyhow::bail!(
            "invalid config: [auth] broker_user is required to replicate with authentication on"
        );
    }
    let ready = Arc::new(Readiness::default());
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http_listener = SecuredHttp::new(
        GatedListener {
            listener: http_listener,
            gate: Gate::new(
                Listener::Http,
                config.broker.max_http_connections,
                config.broker.connection_idle_timeout,
                metrics.clone(),
            ),
        },
        tls.clone(),
    )?;
    let http = tokio::spawn(dduomq_broker::http::serve(
        http_listener,
        ready.clone(),
        auth.clone(),
        async move {
            let _ = http_stopped.await;
        },
    ));

    let mut store_config = config.store.clone();
    let ordinal = config.store.broker_id;
    if config.replication.enabled() {
        // Message ids name the group: an id is valid on every member.
        store_config.broker_id = config.replication.layout().placement(ordinal).group;
    }
    let observer: Arc<dyn StoreObserver> = match &metrics {
        Some(m) => m.clone(),
        None => Arc::new(NoObserver),
    };
    let store = tokio::task::spawn_blocking(move || Store::open_observed(store_config, observer))
        .await?
        .context("opening the store")?;
    let store = Arc::new(store);
    // A member of a replicated group starts as a replica; it is promoted
    // when it is made master (AssignRole, or at once as a static master).
    let broker = Arc::new(if config.replication.enabled() {
        Broker::open_replica(config.broker.clone(), store.clone(), metrics)?
    } else {
        Broker::open(config.broker.clone(), store.clone(), metrics)?
    });
    ready.attach(broker.clone());
    // Attached before any background work appends: on a replica nothing may.
    let replication = if config.replication.enabled() {
        let r = Replication::start(
            config.replication.clone(),
            ordinal,
            store.clone(),
            broker.metrics().cloned(),
            Peering {
                signer: {
                    // Asked at each connection: the brokers' user's keys rotate.
                    let auth = auth.clone();
                    Signer::current(move || auth.own_credentials())
                },
                tls: config.tls.clone(),
            },
        )
        .await
        .context("starting replication")?;
        broker.attach_replication(r.clone());
        broker
            .follow_replication_role()
            .await
            .context("taking the static role")?;
        Some(tokio::spawn(r.run(broker.shutdown_signal())))
    } else {
        None
    };
    let maintenance = tokio::spawn(broker.clone().run_maintenance());
    let users = tokio::spawn(auth.clone().watch_users(broker.shutdown_signal()));
    let certificates = tls
        .clone()
        .map(|tls| tokio::spawn(tls.watch(broker.shutdown_signal())));

    tracing::info!(
        grpc = %config.broker.grpc_addr,
        http = %config.broker.http_addr,
        rocketmq = ?config.broker.rocketmq_addr,
        data_dir = %config.store.data_dir.display(),
        flush = ?config.store.flush,
        "broker ready"
    );
    // Handled before readiness is reported: a SIGTERM right after would
    // otherwise kill the process without a clean shutdown.
    let term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    ready.set(true);
    let (term_tx, mut term_rx) = tokio::sync::watch::channel(false);
    let stopping = broker.clone();
    let ready_flag = ready.clone();
    let listeners = GrpcListeners {
        main: grpc_listener,
        rocketmq: rocketmq_listener,
    };
    let serve = dduomq_broker::grpc::serve(broker.clone(), auth, tls, listeners, async move {
        terminated(term).await;
        tracing::info!("shutting down: no new requests; finishing in-flight ones");
        ready_flag.set(false);
        stopping.begin_shutdown();
        term_tx.send_replace(true);
    });
    let grace = config.broker.shutdown_grace;
    tokio::select! {
        served = serve => served?,
        _ = async {
            let _ = term_rx.wait_for(|t| *t).await;
            tokio::time::sleep(grace).await;
        } => tracing::warn!(?grace, "grace period over; closing the remaining connections"),
    }

    maintenance.await?;
    users.await?;
    if let Some(certificates) = certificates {
        certificates.await?;
    }
    if let Some(replication) = replication {
        replication.await?;
    }
    broker.persist_offsets()?;
    // A master's last progress record (nothing without replication).
    broker.flush_metadata_log().await?;
    drop(broker);
    // Stops the writer after queued appends, flushes and checkpoints; what still
    // holds the store (the HTTP state) only reads.
    tokio::task::spawn_blocking(move || store.close()).await??;
    let _ = stop_http.send(());
    http.await??;
    tracing::info!("stopped cleanly");
    Ok(())
}
