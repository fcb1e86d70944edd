//! Turns the runs (one JSON line each) and the ceilings into `RESULTS.md` and a
//! JSON summary: medians with their spread over repetitions, and ratios of
//! DduoMQ to each peer and to the machine's ceilings.

use std::collections::BTreeMap;
use std::fmt::Write;

use anyhow::Result;
use serde_json::{Value, json};

/// Median, minimum and maximum.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stat {
    pub(crate) median: f64,
    min: f64,
    max: f64,
}

fn stat(mut v: Vec<f64>) -> Option<Stat> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(Stat {
        median: v[v.len() / 2],
        min: v[0],
        max: v[v.len() - 1],
    })
}

fn get(run: &Value, path: &str) -> Option<f64> {
    path.split('.').try_fold(run, |v, k| v.get(k))?.as_f64()
}

/// The systems of the replication section: DduoMQ and its peers.
pub(crate) const SYSTEMS: [&str; 3] = ["dduomq", "nats", "kafka"];
/// The single-server sections add DduoMQ through its RocketMQ protocol door
/// (`rocketmq`), next to our SDK, so the door's cost shows.
const SINGLE_SERVER_SYSTEMS: [&str; 4] = ["dduomq", "rocketmq", "nats", "kafka"];

pub(crate) struct Runs<'a>(&'a [Value]);

impl Runs<'_> {
    /// Whether any system ran `label` (a narrowed run leaves sections out).
    fn has(&self, label: &str) -> bool {
        self.0.iter().any(|r| r["label"] == label)
    }

    pub(crate) fn stat(&self, label: &str, system: &str, metric: &str) -> Option<Stat> {
        stat(
            self.0
                .iter()
                .filter(|r| r["label"] == label && r["system"] == system)
                .filter_map(|r| get(r, metric))
                .collect(),
        )
    }
}

pub(crate) fn fmt_stat(s: Option<Stat>, scale: f64, digits: usize) -> String {
    match s {
        Some(s) => format!(
            "{:.d$} [{:.d$}–{:.d$}]",
            s.median / scale,
            s.min / scale,
            s.max / scale,
            d = digits
        ),
        None => "—".into(),
    }
}

pub(crate) fn ratio(
    ours: Option<Stat>,
    theirs: Option<Stat>,
    higher_is_better: bool,
) -> Option<f64> {
    let (o, t) = (ours?.median, theirs?.median);
    if o <= 0.0 || t <= 0.0 {
        return None;
    }
    Some(if higher_is_better { o / t } else { t / o })
}

/// Each system that ran `label`: its `metric`, and the cell comparing it with
/// DduoMQ's (the ratio is also recorded in `summary` under `key(system)`).
fn compared(
    runs: &Runs,
    label: &str,
    metric: &str,
    higher_is_better: bool,
    summary: &mut BTreeMap<String, Value>,
    key: impl Fn(&str) -> String,
) -> Vec<(&'static str, Option<Stat>, String)> {
    let ours = runs.stat(label, "dduomq", metric);
    let mut rows = Vec::new();
    for sys in SINGLE_SERVER_SYSTEMS {
        let theirs = runs.stat(label, sys, metric);
        if theirs.is_none() {
            continue;
        }
        let cell = if sys == "dduomq" {
            "1.00×".to_string()
        } else {
            let r = ratio(ours, theirs, higher_is_better);
            summary.insert(key(sys), json!(r));
            fmt_ratio(r)
        };
        rows.push((sys, theirs, cell));
    }
    rows
}

pub(crate) fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or("—".into(), |r| format!("{r:.2}×"))
}

/// A throughput table (T1 family, T5): acked and consumed rates, MB/s, the
/// server's CPU per message, ratios.
fn throughput_table(
    md: &mut String,
    runs: &Runs,
    label: &str,
    summary: &mut BTreeMap<String, Value>,
) {
    let _ = writeln!(
        md,
        "| system | acked msg/s | MB/s | consumed msg/s | e2e p99 ms | server CPU-s / M msgs | DduoMQ ÷ system (acked msg/s) |\n|---|---|---|---|---|---|---|"
    );
    let rows = compared(runs, label, "produce_msgs_per_sec", true, summary, |sys| {
        format!("{label} dduomq/{sys} throughput")
    });
    for (sys, acked, ratio_cell) in rows {
        let _ = writeln!(
            md,
            "| {sys} | {} | {} | {} | {} | {} | {} |",
            fmt_stat(acked, 1.0, 0),
            fmt_stat(runs.stat(label, sys, "mb_per_sec"), 1.0, 1),
            fmt_stat(runs.stat(label, sys, "consume_msgs_per_sec"), 1.0, 0),
            fmt_stat(runs.stat(label, sys, "e2e_latency_us.p99"), 1000.0, 1),
            fmt_stat(runs.stat(label, sys, "server_cpu_s_per_million"), 1.0, 1),
            ratio_cell,
        );
    }
    md.push('\n');
}

/// A latency table (T2 levels, T3): percentiles and ratios (>1: DduoMQ lower).
fn latency_table(md: &mut String, runs: &Runs, label: &str, summary: &mut BTreeMap<String, Value>) {
    let _ = writeln!(
        md,
        "| system | target msg/s | achieved msg/s | e2e p50 ms | e2e p99 ms | e2e p99.9 ms | system p99 ÷ DduoMQ p99 |\n|---|---|---|---|---|---|---|"
    );
    let rows = compared(runs, label, "e2e_latency_us.p99", false, summary, |sys| {
        format!("{label} {sys}/dduomq p99")
    });
    for (sys, p99, ratio_cell) in rows {
        let _ = writeln!(
            md,
            "| {sys} | {} | {} | {} | {} | {} | {} |",
            runs.stat(label, sys, "rate_target")
                .map_or("—".into(), |s| format!("{:.0}", s.median)),
            fmt_stat(runs.stat(label, sys, "consume_msgs_per_sec"), 1.0, 0),
            fmt_stat(runs.stat(label, sys, "e2e_latency_us.p50"), 1000.0, 2),
            fmt_stat(p99, 1000.0, 2),
            fmt_stat(runs.stat(label, sys, "e2e_latency_us.p999"), 1000.0, 2),
            ratio_cell,
        );
    }
    md.push('\n');
}

pub fn render(
    runs: &[Value],
    ceilings: &[Value],
    machine: &str,
    date: &str,
) -> Result<(String, Value)> {
    let runs = Runs(runs);
    let mut summary = BTreeMap::new();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# DduoMQ vs NATS JetStream vs Kafka\n\nGenerated by `bench/run` on {date}.\n\n**Machine:** {machine}\n\n\
         Each figure is the median of the repetitions, with [min–max]. Single node, replication 1 \
         (except the replication-factor-3 section), broker pinned to core 0 and the load generator (one Rust binary, a driver per system: the DduoMQ SDK, \
         DduoMQ's RocketMQ 5 protocol (row `rocketmq`), `async-nats`, `rdkafka`) to core 1. Each server is warmed up first and each run's first seconds are \
         discarded. Latency is end to end, from the time a message was handed to the client library (carried \
         in the payload) to its consumer; fixed-rate sends are open loop (see bench/README.md).\n"
    );

    let c = |k: &str| stat(ceilings.iter().filter_map(|v| v[k].as_f64()).collect());
    let seq = c("seq_write_fdatasync_mb_s");
    let cache = c("page_cache_write_mb_s");
    let _ = writeln!(
        md,
        "## Ceilings (same run)\n\n| what | value |\n|---|---|\n\
         | sequential write + fdatasync (512 MiB, 1 MiB writes) | {} MB/s |\n\
         | page-cache write (1 GiB, 1 MiB writes) | {} MB/s |\n\
         | 4 KiB write + fdatasync (median of 500) | {} µs |\n\
         | loopback TCP (1 MiB writes, 3 s) | {} MB/s |\n",
        fmt_stat(seq, 1.0, 0),
        fmt_stat(cache, 1.0, 0),
        fmt_stat(c("write_4k_fdatasync_us"), 1.0, 0),
        fmt_stat(c("loopback_tcp_mb_s"), 1.0, 0),
    );

    let sections = [
        (
            "T1",
            "T1 — max throughput, 1 KiB, 1 producer + 1 consumer, 4 queues, ack after page cache",
        ),
        (
            "T1-sync",
            "T1' — the same with fsync before the acknowledgement",
        ),
        ("T1-100B", "T1 with 100 B messages"),
        ("T1-16KiB", "T1 with 16 KiB messages"),
        ("T5-4", "T5 — 4 queues at a fixed 50 MB/s"),
        ("T5-1024", "T5 — 1,024 queues at a fixed 50 MB/s"),
    ];
    for (label, title) in sections.into_iter().filter(|(l, _)| runs.has(l)) {
        let _ = writeln!(md, "## {title}\n");
        throughput_table(&mut md, &runs, label, &mut summary);
        if label.starts_with("T1") {
            let mbs = runs.stat(label, "dduomq", "mb_per_sec");
            if let (Some(m), Some(cl), Some(s)) = (mbs, cache, seq) {
                let _ = write!(
                    md,
                    "DduoMQ: {:.0}% of the sequential-write-with-fdatasync ceiling",
                    100.0 * m.median / s.median
                );
                let _ = if label == "T1-sync" {
                    writeln!(md, ".\n")
                } else {
                    writeln!(
                        md,
                        ", {:.0}% of the page-cache write ceiling.\n",
                        100.0 * m.median / cl.median
                    )
                };
                summary.insert(
                    format!("{label} dduomq/seq_write_ceiling"),
                    json!(m.median / s.median),
                );
            }
        }
    }
    crate::replication_report::section(&mut md, &runs, &mut summary);
    for (label, title) in [
        (
            "T2-10",
            "T2 — end-to-end latency at 10% of each system's own T1 maximum",
        ),
        ("T2-50", "T2 — at 50%"),
        ("T2-80", "T2 — at 80%"),
        ("T3", "T3 — synchronous round trip, one message at a time"),
    ]
    .into_iter()
    .filter(|(l, _)| runs.has(l))
    {
        let _ = writeln!(md, "## {title}\n");
        latency_table(&mut md, &runs, label, &mut summary);
    }
    let json = json!({"date": date, "machine": machine, "ratios": summary, "runs": runs.0, "ceilings": ceilings});
    Ok((md, json))
}

/// The median acked rate of a label and system (for T2's fixed rates).
pub fn median_rate(runs: &[Value], label: &str, system: &str) -> Option<f64> {
    Runs(runs)
        .stat(label, system, "produce_msgs_per_sec")
        .map(|s| s.median)
}
