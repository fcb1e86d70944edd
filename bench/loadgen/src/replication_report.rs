//! The report's section on T1 with three copies of every message (label
//! `T1-RF3`): rates, the CPU-normalised figure, and the goals — DduoMQ
//! ≥ 1.2× Kafka and ≥ 1.5× JetStream on acked msg/s and on messages per
//! CPU-second, and its CPU per message at replication factor 3 at most 3× that
//! at replication factor 1 (label `T1`, same run).

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::{Value, json};

use crate::report::{Runs, SYSTEMS, Stat, fmt_ratio, fmt_stat, ratio};

const LABEL: &str = "T1-RF3";
const SINGLE: &str = "T1";
const SERVER_CPU: &str = "server_cpu_s_per_million";
const LOAD_GENERATOR_CPU: &str = "load_generator_cpu_s_per_million";
const ACKED: &str = "produce_msgs_per_sec";

/// The peers and the lead DduoMQ should have over each (both figures).
const GOALS: [(&str, &str, f64); 2] = [("kafka", "Kafka", 1.2), ("nats", "JetStream", 1.5)];
/// The most CPU per message replication factor 3 may cost, relative to 1.
const RF3_CPU_GOAL: f64 = 3.0;

/// Messages per CPU-second, from CPU-seconds per million messages.
fn per_cpu_second(cpu_per_million: Option<Stat>) -> Option<f64> {
    cpu_per_million
        .map(|s| s.median)
        .filter(|m| *m > 0.0)
        .map(|m| 1e6 / m)
}

fn met(value: Option<f64>, goal: impl Fn(f64) -> bool) -> &'static str {
    match value {
        Some(v) if goal(v) => "met",
        Some(_) => "not met",
        None => "not measured",
    }
}

/// Appends the section (nothing when no system ran `T1-RF3`) and records its
/// ratios in `summary`.
pub fn section(md: &mut String, runs: &Runs, summary: &mut BTreeMap<String, Value>) {
    if SYSTEMS.iter().all(|s| runs.stat(LABEL, s, ACKED).is_none()) {
        return;
    }
    let _ = writeln!(
        md,
        "## T1 with replication factor 3 — three servers per system, sharing both cores\n\n\
         DduoMQ: one group of three brokers (a static master), `quorum` acks; Kafka: three KRaft brokers \
         (each also a controller), topics with replication factor 3 and `min.insync.replicas=2`, `acks=all`; \
         JetStream: a three-node cluster, an R3 stream. One system runs at a time; its three servers and the \
         load generator are not pinned (the kernel spreads them over both cores; see bench/README.md). \
         CPU is user + system time of every server process (`/proc/<pid>/stat`) from the end of the warm-up \
         until the consumer has every measured message, per million acknowledged messages; the load \
         generator's own is beside it, as it shares the cores.\n\n\
         | system | acked msg/s | consumed msg/s | e2e p99 ms | server CPU-s / M msgs | msgs / server CPU-s | load generator CPU-s / M msgs | DduoMQ ÷ system (acked msg/s) | DduoMQ ÷ system (msgs / CPU-s) |\n\
         |---|---|---|---|---|---|---|---|---|"
    );
    let our_rate = runs.stat(LABEL, "dduomq", ACKED);
    let our_cpu = runs.stat(LABEL, "dduomq", SERVER_CPU);
    for sys in SYSTEMS {
        let rate = runs.stat(LABEL, sys, ACKED);
        if rate.is_none() {
            let _ = writeln!(md, "| {sys} | not measured in this run | | | | | | | |");
            continue;
        }
        let cpu = runs.stat(LABEL, sys, SERVER_CPU);
        let (rate_cell, cpu_cell) = if sys == "dduomq" {
            ("1.00×".to_string(), "1.00×".to_string())
        } else {
            let by_rate = ratio(our_rate, rate, true);
            let by_cpu = ratio(our_cpu, cpu, false);
            summary.insert(format!("{LABEL} dduomq/{sys} throughput"), json!(by_rate));
            summary.insert(
                format!("{LABEL} dduomq/{sys} msgs per cpu-s"),
                json!(by_cpu),
            );
            (fmt_ratio(by_rate), fmt_ratio(by_cpu))
        };
        let _ = writeln!(
            md,
            "| {sys} | {} | {} | {} | {} | {} | {} | {rate_cell} | {cpu_cell} |",
            fmt_stat(rate, 1.0, 0),
            fmt_stat(runs.stat(LABEL, sys, "consume_msgs_per_sec"), 1.0, 0),
            fmt_stat(runs.stat(LABEL, sys, "e2e_latency_us.p99"), 1000.0, 1),
            fmt_stat(cpu, 1.0, 1),
            per_cpu_second(cpu).map_or("—".into(), |m| format!("{m:.0}")),
            fmt_stat(runs.stat(LABEL, sys, LOAD_GENERATOR_CPU), 1.0, 1),
        );
    }

    let _ = writeln!(md, "\n| goal | result |\n|---|---|");
    for (sys, name, goal) in GOALS {
        let by_rate = ratio(our_rate, runs.stat(LABEL, sys, ACKED), true);
        let by_cpu = ratio(our_cpu, runs.stat(LABEL, sys, SERVER_CPU), false);
        let _ = writeln!(
            md,
            "| RF3 ≥ {goal}× {name} (acked msg/s; msgs per server CPU-s) | **{}**: {}; **{}**: {} |",
            met(by_rate, |r| r >= goal),
            fmt_ratio(by_rate),
            met(by_cpu, |r| r >= goal),
            fmt_ratio(by_cpu),
        );
    }
    let growth = |sys: &str| {
        let rf3 = runs.stat(LABEL, sys, SERVER_CPU)?.median;
        let rf1 = runs.stat(SINGLE, sys, SERVER_CPU)?.median;
        (rf1 > 0.0).then(|| rf3 / rf1)
    };
    let ours = growth("dduomq");
    summary.insert("dduomq cpu per msg rf3/rf1".into(), json!(ours));
    let peers: Vec<String> = SYSTEMS[1..]
        .iter()
        .map(|sys| {
            let r = growth(sys);
            summary.insert(format!("{sys} cpu per msg rf3/rf1"), json!(r));
            format!("{sys} {}", fmt_ratio(r))
        })
        .collect();
    let _ = writeln!(
        md,
        "| DduoMQ's server CPU per message, RF3 ÷ RF1 (T1 above) ≤ {RF3_CPU_GOAL}× | **{}**: {} (the peers, for comparison: {}) |\n",
        met(ours, |r| r <= RF3_CPU_GOAL),
        fmt_ratio(ours),
        peers.join(", "),
    );
}
