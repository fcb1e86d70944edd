//! `dduomq-loadgen`: drives DduoMQ, NATS JetStream and Kafka with the same
//! workloads (see `workloads.rs`), measures the machine's ceilings, and writes
//! the report. `bench/run` orchestrates it.

mod ceilings;
mod cpu;
mod drivers;
mod replication_report;
mod report;
mod rocketmq;
mod workloads;

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One workload against one system; prints one JSON line.
    Run(workloads::RunArgs),
    /// The machine's ceilings, measured in DIR; prints one JSON line.
    Ceilings {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Waits until the Kafka cluster at ADDR lists BROKERS brokers.
    KafkaReady {
        #[arg(long)]
        addr: String,
        #[arg(long)]
        brokers: usize,
    },
    /// The median acked rate of LABEL for SYSTEM in a results file.
    MedianRate {
        #[arg(long)]
        results: PathBuf,
        #[arg(long)]
        label: String,
        #[arg(long)]
        system: String,
    },
    /// Fails unless there are RUNS runs, each without errors and with every
    /// message it sent consumed.
    Check {
        #[arg(long)]
        results: PathBuf,
        #[arg(long)]
        runs: usize,
    },
    /// Writes RESULTS.md and results.json from the runs and ceilings.
    Report {
        #[arg(long)]
        results: PathBuf,
        #[arg(long)]
        ceilings: PathBuf,
        #[arg(long)]
        machine: String,
        #[arg(long)]
        date: String,
        #[arg(long)]
        markdown: PathBuf,
        #[arg(long)]
        json: PathBuf,
    },
}

fn read_lines(path: &PathBuf) -> Result<Vec<serde_json::Value>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    std::io::BufReader::new(f)
        .lines()
        .filter(|l| l.as_ref().map_or(true, |l| !l.trim().is_empty()))
        .map(|l| Ok(serde_json::from_str(&l?)?))
        .collect()
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Run(args) => println!("{}", workloads::run(args).await?),
        Command::Ceilings { dir } => println!("{}", ceilings::measure(&dir)?),
        Command::KafkaReady { addr, brokers } => {
            drivers::wait_for_kafka_brokers(&addr, brokers, std::time::Duration::from_secs(60))
                .await?
        }
        Command::MedianRate {
            results,
            label,
            system,
        } => {
            let rate = report::median_rate(&read_lines(&results)?, &label, &system)
                .with_context(|| format!("no {label} result for {system}"))?;
            println!("{rate:.0}");
        }
        Command::Check { results, runs } => {
            let all = read_lines(&results)?;
            anyhow::ensure!(all.len() == runs, "expected {runs} runs, got {}", all.len());
            for r in &all {
                let n = |k: &str| r[k].as_u64().unwrap_or_default();
                anyhow::ensure!(
                    n("errors") == 0 && n("produced") > 0 && n("consumed") >= n("produced"),
                    "a run with errors or undelivered messages: {r}"
                );
            }
            println!("{runs} runs, every message delivered");
        }
        Command::Report {
            results,
            ceilings,
            machine,
            date,
            markdown,
            json,
        } => {
            let (md, summary) = report::render(
                &read_lines(&results)?,
                &read_lines(&ceilings)?,
                &machine,
                &date,
            )?;
            std::fs::write(&markdown, md)?;
            std::fs::write(&json, serde_json::to_string_pretty(&summary)?)?;
        }
    }
    Ok(())
}
