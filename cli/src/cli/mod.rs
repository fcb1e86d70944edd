//! Command-line parsing and dispatch. The command forms are relied on by users'
//! scripts; see `dduomq --help`.

mod bench;
mod broker;
mod consume;
mod group;
mod lookup;
mod output;
mod produce;
mod target;
mod topic;

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use dduomq_client::{Access, Credentials, TlsOptions};

pub use output::Format;
pub use target::Target;

/// The DduoMQ command-line client.
#[derive(Debug, Parser)]
#[command(name = "dduomq", version, about)]
pub struct Cli {
    /// Broker gRPC address.
    #[arg(
        long,
        global = true,
        env = "DDUOMQ_SERVER",
        default_value = "127.0.0.1:6086"
    )]
    pub server: String,
    /// Namespace (tenant) of the topics and groups named; a Kubernetes
    /// resource's namespace is its broker namespace. Empty or `default`: the
    /// default namespace.
    #[arg(
        short = 'n',
        long,
        global = true,
        env = "DDUOMQ_NAMESPACE",
        default_value = ""
    )]
    pub namespace: String,
    /// Access key to sign requests with (brokers with authentication on).
    #[arg(long, global = true, env = "DDUOMQ_ACCESS_KEY")]
    pub access_key: Option<String>,
    /// Secret key of the access key; prefer the environment variable, which
    /// stays out of the shell history and the process list.
    #[arg(long, global = true, env = "DDUOMQ_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,
    /// Dial the broker over TLS, verifying it with the system's roots (or
    /// --ca-file).
    #[arg(long, global = true, env = "DDUOMQ_TLS")]
    pub tls: bool,
    /// The CA (PEM) that signs the brokers' certificates; implies --tls.
    #[arg(long, global = true, env = "DDUOMQ_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// A client certificate (PEM) for mutual TLS; implies --tls; needs --key-file.
    #[arg(long, global = true, env = "DDUOMQ_CERT_FILE")]
    pub cert_file: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, global = true, env = "DDUOMQ_KEY_FILE")]
    pub key_file: Option<std::path::PathBuf>,
    /// Output format.
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        default_value = "table"
    )]
    pub format: Format,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(topic::TopicCommand),
    /// List, describe and reset consumer groups.
    #[command(subcommand)]
    Group(group::GroupCommand),
    /// Send messages: --count N of --size bytes, or one per line of stdin.
    Produce(produce::ProduceArgs),
    /// Receive messages and print them.
    Consume(consume::ConsumeArgs),
    /// Find messages by id or key.
    Lookup(lookup::LookupArgs),
    /// Broker info and draining.
    #[command(subcommand)]
    Broker(broker::BrokerCommand),
    /// Measure throughput and latency.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// How `consume` receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Broker pushes leased messages; each one is acked after printing.
    Push,
    /// Reads assigned queues from offsets and commits.
    Pull,
    /// Push, but every consumer instance gets every message.
    Broadcast,
}

/// Parses a duration like `5s`, `300ms`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))
}

/// An RFC 3339 time as ms since the Unix epoch.
pub fn parse_rfc3339_ms(s: &str) -> Result<i64, String> {
    let t = humantime::parse_rfc3339_weak(s).map_err(|e| format!("{s:?}: {e}"))?;
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .map_err(|_| format!("{s:?}: before 1970"))
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let format = cli.format;
    // clap's `requires` does not see global arguments given before the
    // subcommand, so the pairs are checked here.
    let identity = match (cli.cert_file.as_deref(), cli.key_file.as_deref()) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => anyhow::bail!("--cert-file and --key-file go together"),
    };
    let tls = (cli.tls || cli.ca_file.is_some() || identity.is_some())
        .then(|| TlsOptions::from_files(cli.ca_file.as_deref(), identity))
        .transpose()?;
    let credentials = match (cli.access_key, cli.secret_key) {
        (Some(access_key), Some(secret_key)) => Some(Credentials {
            access_key,
            secret_key,
        }),
        (None, None) => None,
        _ => anyhow::bail!(
            "--access-key and its secret key (DDUOMQ_SECRET_KEY or --secret-key) go together"
        ),
    };
    let target = Target {
        server: cli.server,
        access: Access {
            namespace: cli.namespace,
            credentials,
            tls,
        },
    };
    let server = &target;
    match cli.command {
        Command::Topic(c) => topic::run(server, format, c).await,
        Command::Group(c) => group::run(server, format, c).await,
        Command::Produce(a) => produce::run(server, format, a).await,
        Command::Consume(a) => consume::run(server, format, a).await,
        Command::Lookup(a) => lookup::run(server, format, a).await,
        Command::Bench(c) => bench::run(server, format, c).await,
        Command::Broker(c) => broker::run(server, format, c).await,
    }
}
