//! The workloads, identical for every system:
//!
//! * `throughput` — producers send as fast as a window of unacknowledged sends
//!   allows while a consumer drains; rates are counted after the warm-up.
//! * `latency` — sends on a fixed timetable (`--rate`), open loop (a send does
//!   not wait for earlier acks, up to the window); end-to-end latency is
//!   measured from when each message was handed to the client library (the
//!   time is carried in the payload) to its consumer.
//! * `roundtrip` — one message at a time: send, wait until the consumer has it,
//!   send the next.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::{Notify, Semaphore};

use crate::cpu::{CpuReading, Processes};
use crate::drivers::{Driver, System};

/// What a run was asked to do.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    #[arg(long, value_enum)]
    pub system: System,
    #[arg(long)]
    pub addr: String,
    /// throughput, latency or roundtrip.
    #[arg(long)]
    pub workload: String,
    /// Free-form label carried into the result (e.g. `T1`).
    #[arg(long, default_value = "")]
    pub label: String,
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    #[arg(long, default_value_t = 4)]
    pub queues: u32,
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Unacknowledged sends per producer (throughput).
    #[arg(long, default_value_t = 512)]
    pub window: usize,
    /// Messages per second (latency).
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Whether the system acknowledges after fsync (recorded; the system is
    /// configured for it by bench/run).
    #[arg(long)]
    pub sync: bool,
    /// Copies of each message the system keeps: the topic's replication
    /// factor (Kafka, with `min.insync.replicas` a majority) or the stream's
    /// replicas (JetStream); recorded for DduoMQ, whose group size is a broker
    /// setting made by bench/run.
    #[arg(long, default_value_t = 1)]
    pub replicas: u32,
    /// A server process whose CPU time the run reports (repeat for each).
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("bounds")
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A payload of `size` bytes starting with the time in ns.
fn payload(size: usize, stamp_ns: u64) -> Vec<u8> {
    let mut p = stamp_ns.to_le_bytes().to_vec();
    p.resize(size.max(8), b'x');
    p
}

fn stamp(payload: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(payload.get(..8)?.try_into().ok()?))
}

/// Counts and e2e latencies seen by the consumer during the measurement.
struct Seen {
    /// Every message consumed, measured or not.
    arrivals: AtomicU64,
    /// Messages sent after the warm-up and consumed.
    consumed: AtomicU64,
    latency: Mutex<Histogram<u64>>,
    measuring_from_ns: AtomicU64,
    arrived: Notify,
}

pub async fn run(a: RunArgs) -> Result<serde_json::Value> {
    let topic = format!(
        "b{}{}",
        a.label
            .to_lowercase()
            .replace(|c: char| !c.is_ascii_alphanumeric(), ""),
        now_ns() / 1000
    );
    Driver::create_topic(a.system, &a.addr, &topic, a.queues, a.replicas, a.sync).await?;
    let seen = Arc::new(Seen {
        arrivals: AtomicU64::new(0),
        consumed: AtomicU64::new(0),
        latency: Mutex::new(histogram()),
        measuring_from_ns: AtomicU64::new(u64::MAX),
        arrived: Notify::new(),
    });
    let s = seen.clone();
    let consumer = Driver::consume(
        a.system,
        &a.addr,
        &topic,
        &format!("g{topic}"),
        Arc::new(move |p: &[u8]| {
            if let Some(sent) = stamp(p)
                && sent >= s.measuring_from_ns.load(Ordering::Relaxed)
            {
                s.consumed.fetch_add(1, Ordering::Relaxed);
                let _ = s
                    .latency
                    .lock()
                    .record((now_ns().saturating_sub(sent) / 1000).max(1));
            }
            s.arrivals.fetch_add(1, Ordering::Relaxed);
            s.arrived.notify_waiters();
        }),
    )
    .await?;
    let drivers: Vec<Driver> = {
        let mut v = Vec::new();
        for _ in 0..a.producers.max(1) {
            v.push(Driver::connect(a.system, &a.addr).await?);
        }
        v
    };
    // Give consumers a moment to attach (Kafka group join).
    tokio::time::sleep(Duration::from_millis(if a.system == System::Kafka {
        3000
    } else {
        300
    }))
    .await;

    let produced = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let send_latency = Arc::new(Mutex::new(histogram()));
    let start = Instant::now();
    let warmup = Duration::from_secs_f64(a.warmup);
    let total = warmup + Duration::from_secs_f64(a.seconds);
    let measure_from = now_ns() + warmup.as_nanos() as u64;
    seen.measuring_from_ns
        .store(measure_from, Ordering::Relaxed);
    let processes = Processes {
        servers: a.server_pids.clone(),
    };
    let cpu_at_measure_start = {
        let processes = processes.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until((start + warmup).into()).await;
            processes.read()
        })
    };

    match a.workload.as_str() {
        "throughput" | "latency" => {
            let mut tasks = Vec::new();
            for (p, driver) in drivers.into_iter().enumerate() {
                let (a, topic) = (a.clone(), topic.clone());
                let (produced, errors, send_latency) =
                    (produced.clone(), errors.clone(), send_latency.clone());
                tasks.push(tokio::spawn(async move {
                    let window = Arc::new(Semaphore::new(a.window));
                    let interval = Duration::from_secs_f64(a.producers as f64 / a.rate as f64);
                    let mut i: u64 = 0;
                    while start.elapsed() < total {
                        if a.workload == "latency" {
                            let at = start
                                + interval.mul_f64(i as f64)
                                + interval.mul_f64(p as f64 / a.producers as f64);
                            tokio::time::sleep_until(at.into()).await;
                        }
                        // Stamped when handed to the client library: the timer
                        // wakes up to 1 ms late, which would otherwise count as
                        // the system's latency. Sends do not wait for acks
                        // (open loop), so a stalled system still shows.
                        let permit = window.clone().acquire_owned().await.expect("open");
                        let scheduled = Instant::now();
                        let stamp_ns = now_ns();
                        let (driver, topic) = (driver.clone(), topic.clone());
                        let (produced, errors, send_latency) =
                            (produced.clone(), errors.clone(), send_latency.clone());
                        let n = i * a.producers as u64 + p as u64;
                        let body = payload(a.size, stamp_ns);
                        let queues = a.queues;
                        tokio::spawn(async move {
                            match driver.send(&topic, queues, n, body).await {
                                Ok(()) if stamp_ns >= measure_from => {
                                    produced.fetch_add(1, Ordering::Relaxed);
                                    let us = scheduled.elapsed().as_micros().max(1) as u64;
                                    let _ = send_latency.lock().record(us);
                                }
                                Ok(()) => {}
                                Err(e) => {
                                    if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                                        eprintln!("send failed: {e:#}");
                                    }
                                }
                            }
                            drop(permit);
                        });
                        i += 1;
                    }
                    let _ = window.acquire_many(a.window as u32).await;
                }));
            }
            for t in tasks {
                t.await?;
            }
        }
        "roundtrip" => {
            let driver = &drivers[0];
            let mut i = 0u64;
            while start.elapsed() < total {
                let before = seen.arrivals.load(Ordering::Relaxed);
                let sent = Instant::now();
                let stamp_ns = now_ns();
                if let Err(e) = driver
                    .send(&topic, a.queues, i, payload(a.size, stamp_ns))
                    .await
                {
                    errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("send failed: {e:#}");
                    continue;
                }
                if stamp_ns >= measure_from {
                    produced.fetch_add(1, Ordering::Relaxed);
                    let _ = send_latency
                        .lock()
                        .record(sent.elapsed().as_micros().max(1) as u64);
                }
                // The next message only once the consumer has this one.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                loop {
                    let arrived = seen.arrived.notified();
                    tokio::pin!(arrived);
                    arrived.as_mut().enable();
                    if seen.arrivals.load(Ordering::Relaxed) > before
                        || tokio::time::timeout_at(deadline, arrived).await.is_err()
                    {
                        break;
                    }
                }
                i += 1;
            }
        }
        other => anyhow::bail!("unknown workload {other:?}"),
    }
    let send_done = start.elapsed().saturating_sub(warmup).as_secs_f64();
    // Let the tail drain (bounded).
    let expected = produced.load(Ordering::Relaxed);
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    while seen.consumed.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let consume_secs = start.elapsed().saturating_sub(warmup).as_secs_f64();
    // CPU over the measurement: from the end of the warm-up until the consumer
    // has every measured message (or the drain gave up).
    let cpu = cpu_used(&processes, cpu_at_measure_start.await??)?;
    consumer.stop().await;
    let produced = produced.load(Ordering::Relaxed);
    let consumed = seen.consumed.load(Ordering::Relaxed);
    let lat = seen.latency.lock().clone();
    let send = send_latency.lock().clone();
    let q = |h: &Histogram<u64>, p: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(p)
        }
    };
    Ok(json!({
        "system": a.system, "workload": a.workload, "label": a.label, "size": a.size,
        "queues": a.queues, "producers": a.producers, "sync": a.sync,
        "rate_target": if a.workload == "latency" { Some(a.rate) } else { None },
        "seconds": a.seconds,
        "produced": produced, "consumed": consumed, "errors": errors.load(Ordering::Relaxed),
        "produce_msgs_per_sec": produced as f64 / send_done,
        "consume_msgs_per_sec": consumed as f64 / consume_secs.max(send_done),
        "mb_per_sec": produced as f64 * a.size as f64 / send_done / 1e6,
        "e2e_latency_us": {"p50": q(&lat, 0.5), "p99": q(&lat, 0.99), "p999": q(&lat, 0.999), "max": lat.max()},
        "send_latency_us": {"p50": q(&send, 0.5), "p99": q(&send, 0.99), "p999": q(&send, 0.999), "max": send.max()},
        "replicas": a.replicas, "servers": a.server_pids.len(),
        "server_cpu_seconds": cpu.servers,
        "load_generator_cpu_seconds": cpu.load_generator,
        "server_cpu_s_per_million": per_million(cpu.servers, produced),
        "load_generator_cpu_s_per_million": per_million(cpu.load_generator, produced),
    }))
}

/// CPU-seconds used since `before`.
fn cpu_used(processes: &Processes, before: CpuReading) -> Result<CpuReading> {
    let after = processes.read()?;
    Ok(CpuReading {
        servers: after.servers - before.servers,
        load_generator: after.load_generator - before.load_generator,
    })
}

/// CPU-seconds per million acknowledged messages; none without servers to
/// measure or messages to divide by.
fn per_million(cpu_seconds: f64, messages: u64) -> Option<f64> {
    (cpu_seconds > 0.0 && messages > 0).then(|| cpu_seconds * 1e6 / messages as f64)
}
