//! `dduomq bench produce|consume|e2e|delay`: throughput and latency percentiles
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
use dduomq_client::{Message, Reason, ResetTo};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::Semaphore;

use super::output::{Format, json_line};
use super::parse_duration;
use super::target::Target;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Send as fast as possible (or at --rate) and measure send latency.
    Produce(BenchArgs),
    /// Consume from a fresh group and measure throughput.
    Consume(BenchArgs),
    /// Produce at --rate and consume at once; measure end-to-end latency.
    E2e(BenchArgs),
    /// Schedule many delayed messages at once, consume them, and measure how
    /// late each arrives after its delivery time.
    Delay(DelayBenchArgs),
}

#[derive(Debug, Clone, Args)]
pub struct DelayBenchArgs {
    /// A Delay topic (created with 4 queues if missing).
    #[arg(long, default_value = "bench-delay")]
    pub topic: String,
    /// Delayed messages to schedule; all are pending at once when sending
    /// finishes within --lead.
    #[arg(long, default_value_t = 100_000)]
    pub messages: u64,
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// The first delivery time, after the start of sending.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub lead: Duration,
    /// Delivery times are spread evenly over this long.
    #[arg(long, value_parser = parse_duration, default_value = "20s")]
    pub spread: Duration,
    /// Sends in flight.
    #[arg(long, default_value_t = 1024)]
    pub window: usize,
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
    server: &Target,
    args: &BenchArgs,
    hist: Hist,
    sent: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for p in 0..args.producers {
        let producer = server
            .producer()
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

/// A push consumer (256 handlers, 4,096 in flight) that calls `record` with
/// each message and counts it in `received`.
async fn counting_consumer(
    server: &Target,
    group: String,
    topic: &str,
    received: Arc<AtomicU64>,
    record: impl Fn(&dduomq_client::ReceivedMessage) + Send + Sync + 'static,
) -> anyhow::Result<dduomq_client::PushConsumer> {
    let record = Arc::new(record);
    Ok(server
        .push_consumer(group, topic)
        .concurrency(256)
        .max_in_flight(4096)
        .start(move |m| {
            record(&m);
            received.fetch_add(1, Ordering::Relaxed);
            async { Ok::<(), String>(()) }
        })
        .await?)
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

async fn fresh_group(server: &Target, args: &BenchArgs) -> anyhow::Result<String> {
    let admin = server.admin()?;
    admin
        .create_topic(&args.topic, 4, pb::MessageType::Normal)
        .await
        .or_else(|e| {
            if e.reason() == Some(Reason::TopicConflict) {
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

pub async fn run(server: &Target, format: Format, cmd: BenchCommand) -> anyhow::Result<()> {
    let (mode, args) = match &cmd {
        BenchCommand::Produce(a) => ("produce", a.clone()),
        BenchCommand::Consume(a) => ("consume", a.clone()),
        BenchCommand::E2e(a) => ("e2e", a.clone()),
        BenchCommand::Delay(a) => return delay(server, format, a.clone()).await,
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
        BenchCommand::Delay(_) => unreachable!("handled above"),
        BenchCommand::Consume(a) | BenchCommand::E2e(a) => {
            let group = fresh_group(server, &a).await?;
            let e2e = mode == "e2e";
            if e2e {
                server
                    .admin()?
                    .reset_offset(&group, &a.topic, ResetTo::Latest)
                    .await?;
            }
            let h = hist.clone();
            let consumer = counting_consumer(server, group, &a.topic, received.clone(), move |m| {
                if e2e && m.body.len() >= 8 {
                    let sent_ns = u64::from_le_bytes(m.body[..8].try_into().expect("8"));
                    let _ = h
                        .lock()
                        .record((now_nanos().saturating_sub(sent_ns) / 1000).max(1));
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

/// `bench delay`: lateness (arrival minus delivery time) of delayed messages
/// while `messages` of them are pending.
async fn delay(server: &Target, format: Format, a: DelayBenchArgs) -> anyhow::Result<()> {
    let admin = server.admin()?;
    match admin
        .create_topic(&a.topic, 4, pb::MessageType::Delay)
        .await
    {
        Err(e) if e.reason() != Some(Reason::TopicConflict) => return Err(e.into()),
        _ => {}
    }
    let group = format!("bench-delay-{}", dduomq_client::now_millis());
    admin
        .create_group(pb::Group {
            name: group.clone(),
            ..Default::default()
        })
        .await?;
    admin
        .reset_offset(&group, &a.topic, ResetTo::Latest)
        .await?;
    let lateness = histogram();
    let received = Arc::new(AtomicU64::new(0));
    let h = lateness.clone();
    let consumer = counting_consumer(server, group, &a.topic, received.clone(), move |m| {
        let late_ms = (dduomq_client::now_millis() - m.deliver_at_ms).max(0) as u64;
        let _ = h.lock().record(late_ms * 1000 + 1);
    })
    .await?;
    let producer = server.producer().build()?;
    let first_due = dduomq_client::now_millis() + a.lead.as_millis() as i64;
    let step = a.spread.as_millis() as f64 / a.messages.max(1) as f64;
    let window = Arc::new(Semaphore::new(a.window));
    let errors = Arc::new(AtomicU64::new(0));
    let sending = Instant::now();
    for i in 0..a.messages {
        let permit = window.clone().acquire_owned().await.expect("open");
        let due = first_due + (i as f64 * step) as i64;
        let send = producer
            .send_async(Message::new(a.topic.clone(), vec![b'd'; a.size]).with_deliver_at_ms(due));
        let errors = errors.clone();
        tokio::spawn(async move {
            if !matches!(send.await, Ok(Ok(_))) {
                errors.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        });
    }
    let _ = window.acquire_many(a.window as u32).await;
    let send_secs = sending.elapsed().as_secs_f64();
    let all_pending = dduomq_client::now_millis() < first_due;
    let sent = a.messages - errors.load(Ordering::Relaxed);
    let deadline = Instant::now() + a.lead + a.spread + Duration::from_secs(30);
    while received.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    consumer.shutdown().await;
    let h = lateness.lock().clone();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let got = received.load(Ordering::Relaxed);
    match format {
        Format::Json => json_line(&json!({
            "mode": "delay", "topic": a.topic, "messages": a.messages, "sent": sent, "received": got,
            "send_seconds": send_secs, "all_pending_at_once": all_pending,
            "lateness_ms": {"p50": ms(0.5), "p99": ms(0.99), "p999": ms(0.999), "max": h.max() as f64 / 1000.0},
        })),
        Format::Table => {
            println!(
                "delay: {sent} scheduled in {send_secs:.2}s (all pending at once: {all_pending}), {got} delivered"
            );
            println!(
                "lateness: p50 {:.1} ms  p99 {:.1} ms  p99.9 {:.1} ms  max {:.1} ms",
                ms(0.5),
                ms(0.99),
                ms(0.999),
                h.max() as f64 / 1000.0
            );
        }
    }
    anyhow::ensure!(got == sent, "{} delayed messages not delivered", sent - got);
    Ok(())
}
