//! `dduomq-storetool`: offline tools for a broker data directory.
//!
//! * `verify` opens the store as the broker would (crash recovery, which also
//!   rebuilds damaged derived files; stamping the data format), prints the
//!   data format (and the one found), reads every message of every queue, and
//!   prints one `damage:` line per finding: files repaired or rebuilt, corrupt
//!   commit-log ranges, lost bytes, consume-queue entries that did not lead to
//!   their record, corrupt records, and metadata files (topics, groups,
//!   progress) the broker would refuse to open. It exits 1 when it found any.
//! * `append-stress` appends random batches from several threads and prints one
//!   line per acknowledged message (`ack <queue> <offset> <crc32c of body> <len>`);
//!   the crash tests kill it at random moments and check every printed ack.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use dduomq_broker::config::BrokerConfig;
use dduomq_broker::messaging::Broker;
use dduomq_broker::store::{
    DATA_FORMAT, FlushMode, Message, OpenedFormat, Store, StoreConfig, UNVERSIONED_FORMAT,
};
use rand::Rng;

#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Recover the store and read back every message, reporting corruption.
    Verify {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Append random batches forever, printing each acknowledged message.
    AppendStress {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value = "async")]
        flush: FlushMode,
        #[arg(long, default_value = "stress")]
        topic: String,
        #[arg(long, default_value_t = 4)]
        queues: u32,
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// Largest batch, in messages.
        #[arg(long, default_value_t = 8)]
        max_batch: usize,
        /// Largest body, in bytes.
        #[arg(long, default_value_t = 2048)]
        max_body: usize,
        /// Segment size in bytes (small values exercise segment rolls).
        #[arg(long, default_value_t = 65536)]
        segment_size: u64,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Args::parse().command {
        Command::Verify { data_dir, config } => verify(data_dir, config),
        Command::AppendStress {
            data_dir,
            flush,
            topic,
            queues,
            threads,
            max_batch,
            max_body,
            segment_size,
        } => {
            let mut config = StoreConfig::for_tests(data_dir);
            config.flush = flush;
            config.segment_size_bytes = segment_size;
            config.max_record_size_bytes = (max_body as u32 + 1024).min(segment_size as u32 / 2);
            let store = Store::open(config).context("opening the store")?;
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(|| stress(&store, &topic, queues, max_batch, max_body));
                }
            });
            Ok(())
        }
    }
}

fn verify(data_dir: PathBuf, config: Option<PathBuf>) -> anyhow::Result<()> {
    let config = BrokerConfig::load(config.as_deref())?;
    let mut cfg = config.store;
    cfg.data_dir = data_dir;
    let store = Arc::new(Store::open(cfg)?);
    println!("{}", format_line(store.opened_format()));
    let report = store.recovery_report().clone();
    println!(
        "recovery: scanned from {} to {}, {} records replayed, {} torn bytes zeroed",
        report.scanned_from, report.end, report.records_replayed, report.torn_bytes
    );
    let mut damage = Vec::new();
    damage.extend(report.repairs.iter().cloned());
    damage.extend(
        report
            .corrupt_ranges
            .iter()
            .map(|(start, end)| format!("corrupt commit-log bytes {start}..{end} skipped")),
    );
    if report.lost_bytes > 0 {
        damage.push(format!(
            "{} bytes the last checkpoint recorded as durable are gone from the commit log",
            report.lost_bytes
        ));
    }
    for topic in store.topics() {
        for queue_id in store.queue_ids(&topic) {
            let (min, max) = store.queue_offsets(&topic, queue_id);
            let mut offset = min;
            let mut messages = 0u64;
            while offset < max {
                let r = store.read(&topic, queue_id, offset, 1024, 16 << 20)?;
                messages += r.records.len() as u64;
                for o in &r.corrupt_offsets {
                    damage.push(format!(
                        "{topic}/{queue_id} offset {o}: corrupt or lost record"
                    ));
                }
                for o in &r.repaired_offsets {
                    damage.push(format!(
                        "{topic}/{queue_id} offset {o}: damaged consume-queue entry (record found in the commit log)"
                    ));
                }
                anyhow::ensure!(
                    r.next_offset > offset,
                    "{topic}/{queue_id}: reading stopped at offset {offset} of {max}"
                );
                offset = r.next_offset;
            }
            println!("{topic}/{queue_id}: offsets {min}..{max}, {messages} readable");
        }
    }
    // The broker's own metadata (topics, groups, progress, staged messages),
    // opened as the broker would: what it refuses, verify reports.
    if let Err(e) = Broker::open(config.broker, store.clone(), None) {
        damage.push(format!("metadata: {e}"));
    }
    for line in &damage {
        println!("damage: {line}");
    }
    if !damage.is_empty() {
        println!("{} findings", damage.len());
        std::process::exit(1);
    }
    println!("no damage found");
    Ok(())
}

/// The data format, and what the directory was in before this open stamped it.
fn format_line(opened: OpenedFormat) -> String {
    match opened {
        OpenedFormat::Versioned(DATA_FORMAT) => format!("data format: {DATA_FORMAT}"),
        OpenedFormat::Versioned(v) => format!("data format: {DATA_FORMAT} (was {v}; upgraded)"),
        OpenedFormat::Unversioned => format!(
            "data format: {DATA_FORMAT} (was {UNVERSIONED_FORMAT}, written before format \
             versioning; upgraded)"
        ),
        OpenedFormat::Fresh => format!("data format: {DATA_FORMAT} (new directory)"),
    }
}

fn stress(store: &Store, topic: &str, queues: u32, max_batch: usize, max_body: usize) {
    let mut rng = rand::rng();
    loop {
        let batch: Vec<Message> = (0..rng.random_range(1..=max_batch))
            .map(|_| {
                let len = rng.random_range(0..=max_body);
                let body: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                Message {
                    topic: topic.to_string(),
                    queue_id: rng.random_range(0..queues),
                    born_timestamp: 0,
                    body: Bytes::from(body),
                    ..Message::default()
                }
            })
            .collect();
        let sums: Vec<(u32, usize)> = batch
            .iter()
            .map(|m| (crc32c::crc32c(&m.body), m.body.len()))
            .collect();
        let acks = store.append_blocking(batch).expect("append");
        let mut out = std::io::stdout().lock();
        for (ack, (sum, len)) in acks.iter().zip(sums) {
            writeln!(out, "ack {} {} {sum} {len}", ack.queue_id, ack.queue_offset).expect("stdout");
        }
        out.flush().expect("stdout");
    }
}
