//! `dduomq-broker`: runs a standalone broker on a local data directory.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use dduomq_broker::config::BrokerConfig;
use dduomq_broker::store::{FlushMode, Store};
use tokio::signal::unix::{SignalKind, signal};

/// The DduoMQ broker.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file overriding the built-in defaults (config/dduomq.toml).
    #[arg(long, env = "DDUOMQ_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory for the commit log, consume queues and index.
    #[arg(long, env = "DDUOMQ_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// When sends are acknowledged: async (page cache) or sync (after fdatasync).
    #[arg(long, env = "DDUOMQ_FLUSH")]
    flush: Option<FlushMode>,
    /// Log format: text or json. Filter with RUST_LOG.
    #[arg(long, env = "DDUOMQ_LOG_FORMAT", default_value = "text")]
    log_format: String,
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(&args.log_format);
    let mut config = BrokerConfig::load(args.config.as_deref())?;
    if let Some(dir) = args.data_dir {
        config.store.data_dir = dir;
    }
    if let Some(flush) = args.flush {
        config.store.flush = flush;
    }
    let store_config = config.store.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(store_config))
        .await?
        .context("opening the store")?;
    tracing::info!(
        data_dir = %config.store.data_dir.display(),
        flush = ?config.store.flush,
        "broker store open; waiting for SIGTERM or Ctrl-C"
    );
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    tokio::task::spawn_blocking(move || store.close()).await??;
    Ok(())
}
