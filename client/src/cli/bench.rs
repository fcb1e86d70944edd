//! `dduomq bench produce|consume|e2e`: throughput and latency percentiles
//! (HdrHistogram), a live progress bar, and a JSON summary with `-o json`.
//!
//! At a fixed `--rate`, sends are scheduled on a timetable and latency is measured
//! from the scheduled time, so a stalled broker shows up as latency instead of
//! silently lowering the rate (no coordinated omission).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use dduomq_client::proto as pb;
use dduomq_client::{Admin, Message, ProducerBuilder, PushConsumerBuilder, ResetTo};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::Semaphore;

use super::output::{Format, json_line};
use super::parse_duration;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Send as fast as possible (or at --rate) and measure send latency.
    Produce(BenchArgs),
    /// Consume from a fresh group and measure throughput.
    Consume(BenchArgs),
    /// Produce at --rate and consume at once; measure end-to-end latency.
    E2e(BenchArgs),
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[arg(long)]
    pub topic: String,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Total messages per second across producers (default: unlimited).
    #[arg(long)]
    pub rate: Option<u64>,
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Concurrent producers, each with its own connection.
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Sends in flight per producer when the rate is unlimited.
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// Consumer group (default: a fresh one per run).
    #[arg(long)]
    pub group: Option<String>,
    /// Bodies of at least this many bytes are zstd-compressed (0: off).
    #[arg(long, default_value_t = 4096)]
    pub compress_from: usize,
}

type Hist = Arc<Mutex<Histogram<u64>>>;

fn histogram() -> Hist {
    Arc::new(Mutex::new(
        Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("bounds"),
    ))
}

fn progress(duration: Duration, format: Format) -> ProgressBar {
    let bar = if format == Format::Json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(duration.as_secs().max(1))
    };
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {msg}")
            .expect("template")
            .progress_chars("=> "),
    );
    bar
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Runs `producers` senders for `duration`; each acked send records its latency
/// in `hist` (µs). Bodies start with the send time in ns (for e2e).
async fn produce(
    server: &str,
    args: &BenchArgs,
    hist: Hist,
    sent: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for p in 0..args.producers {
        let producer = ProducerBuilder::new(server)
            .compress_from(args.compress_from)
            .build()?;
        let (args, hist, sent, errors) = (args.clone(), hist.clone(), sent.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let window = Arc::new(Semaphore::new(args.window));
            let start = Instant::now();
            let interval = args
                .rate
                .map(|r| Duration::from_secs_f64(args.producers as f64 / r.max(1) as f64));
            let mut i: u64 = 0;
            while start.elapsed() < args.duration {
                let scheduled = match interval {
                    Some(iv) => {
                        let at = start
                            + iv.mul_f64(i as f64)
                            + iv.mul_f64(p as f64 / args.producers as f64);
                        tokio::time::sleep_until(at.into()).await;
                        at
                    }
                    None => Instant::now(),
                };
                i += 1;
                let permit = window.clone().acquire_owned().await.expect("open");
                let mut body = now_nanos().to_le_bytes().to_vec();
                body.resize(args.size.max(8), b'x');
                let send = producer.send_async(Message::new(args.topic.clone(), body));
                let (hist, sent, errors) = (hist.clone(), sent.clone(), errors.clone());
                tokio::spawn(async move {
                    match send.await {
                        Ok(Ok(_)) => {
                            let us = scheduled.elapsed().as_micros().max(1) as u64;
                            let _ = hist.lock().record(us);
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    drop(permit);
                });
            }
            // Wait for the window to drain.
            let _ = window.acquire_many(args.window as u32).await;
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(())
}

fn summary(
    format: Format,
    mode: &str,
    args: &BenchArgs,
    messages: u64,
    errors: u64,
    elapsed: Duration,
    hist: &Histogram<u64>,
) {
    let secs = elapsed.as_secs_f64();
    let rate = messages as f64 / secs;
    let mbps = rate * args.size as f64 / 1e6;
    let q = |p: f64| {
        if hist.is_empty() {
            0
        } else {
            hist.value_at_quantile(p)
        }
    };
    match format {
        Format::Json => json_line(&json!({
            "mode": mode, "topic": args.topic, "size": args.size, "producers": args.producers, "rate": args.rate,
            "messages": messages, "errors": errors, "seconds": secs,
            "msgs_per_sec": rate, "mb_per_sec": mbps,
            "latency_us": {"p50": q(0.5), "p99": q(0.99), "p999": q(0.999), "max": hist.max()},
        })),
        Format::Table => {
            println!(
                "{mode}: {messages} messages ({errors} errors) in {secs:.2}s = {rate:.0} msg/s, {mbps:.1} MB/s"
            );
            if !hist.is_empty() {
                println!(
                    "latency: p50 {}µs  p99 {}µs  p99.9 {}µs  max {}µs",
                    q(0.5),
                    q(0.99),
                    q(0.999),
                    hist.max()
                );
            }
        }
    }
}

async fn fresh_group(server: &str, args: &BenchArgs) -> anyhow::Result<String> {
    let admin = Admin::connect(server)?;
    admin
        .create_topic(&args.topic, 4, pb::MessageType::Normal)
        .await
        .or_else(|e| {
            if e.reason() == "TOPIC_CONFLICT" {
                Ok(Default::default())
            } else {
                Err(e)
            }
        })?;
    let group = args
        .group
        .clone()
        .unwrap_or_else(|| format!("bench-{}", dduomq_client::now_millis()));
    admin
        .create_group(pb::Group {
            name: group.clone(),
            ..Default::default()
        })
        .await?;
    Ok(group)
}

pub async fn run(server: &str, format: Format, cmd: BenchCommand) -> anyhow::Result<()> {
    let (mode, args) = match &cmd {
        BenchCommand::Produce(a) => ("produce", a.clone()),
        BenchCommand::Consume(a) => ("consume", a.clone()),
        BenchCommand::E2e(a) => ("e2e", a.clone()),
    };
    let bar = progress(args.duration, format);
    let hist = histogram();
    let (sent, received, errors) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let ticker = {
        let (bar, sent, received) = (bar.clone(), sent.clone(), received.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                bar.inc(1);
                bar.set_message(format!(
                    "sent {}  received {}",
                    sent.load(Ordering::Relaxed),
                    received.load(Ordering::Relaxed)
                ));
            }
        })
    };
    let start = Instant::now();
    let count = match cmd {
        BenchCommand::Produce(a) => {
            produce(server, &a, hist.clone(), sent.clone(), errors.clone()).await?;
            sent.load(Ordering::Relaxed)
        }
        BenchCommand::Consume(a) | BenchCommand::E2e(a) => {
            let group = fresh_group(server, &a).await?;
            let e2e = mode == "e2e";
            if e2e {
                Admin::connect(server)?
                    .reset_offset(&group, &a.topic, ResetTo::Latest)
                    .await?;
            }
            let (h, r) = (hist.clone(), received.clone());
            let consumer = PushConsumerBuilder::new(server, group, a.topic.clone())
                .concurrency(256)
                .max_in_flight(4096)
                .start(move |m| {
                    let (h, r) = (h.clone(), r.clone());
                    async move {
                        if e2e && m.body.len() >= 8 {
                            let sent_ns = u64::from_le_bytes(m.body[..8].try_into().expect("8"));
                            let _ = h
                                .lock()
                                .record((now_nanos().saturating_sub(sent_ns) / 1000).max(1));
                        }
                        r.fetch_add(1, Ordering::Relaxed);
                        Ok::<(), String>(())
                    }
                })
                .await?;
            if e2e {
                let discard = histogram();
                produce(server, &a, discard, sent.clone(), errors.clone()).await?;
                // Let the tail arrive.
                let deadline = Instant::now() + Duration::from_secs(5);
                while received.load(Ordering::Relaxed) < sent.load(Ordering::Relaxed)
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            } else {
                tokio::time::sleep(a.duration).await;
            }
            consumer.shutdown().await;
            received.load(Ordering::Relaxed)
        }
    };
    let elapsed = start.elapsed();
    ticker.abort();
    bar.finish_and_clear();
    let h = hist.lock().clone();
    summary(
        format,
        mode,
        &args,
        count,
        errors.load(Ordering::Relaxed),
        elapsed,
        &h,
    );
    Ok(())
}
