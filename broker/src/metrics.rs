//! Broker metrics (catalogue: docs/metrics.md), in a registry of their own served
//! at `/metrics`. Counters and histograms are updated where things happen; group,
//! queue and storage gauges are computed at scrape time from live state.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::store::{DeleteReason, StoreObserver};

/// Latency buckets from 50µs to 30s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
];
/// Message age buckets from 1ms to 1h.
const AGE_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 3600.0,
];

/// Every broker metric.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub messages_in: IntCounterVec,
    pub bytes_in: IntCounterVec,
    pub messages_out: IntCounterVec,
    pub bytes_out: IntCounterVec,
    pub produce_latency: Histogram,
    pub consume_latency: Histogram,
    pub append_latency: Histogram,
    pub flush_latency: Histogram,
    pub commit_log_bytes: IntGauge,
    pub segments: IntGauge,
    pub disk_usage_ratio: prometheus::Gauge,
    pub corrupt_records: IntCounter,
    pub store_repairs: IntCounter,
    pub refusing_writes: IntGauge,
    pub segments_deleted: IntCounterVec,
    pub queue_max_offset: IntGaugeVec,
    pub group_committed: IntGaugeVec,
    pub group_lag: IntGaugeVec,
    pub group_in_flight: IntGaugeVec,
    pub retries: IntCounterVec,
    pub dead_lettered: IntCounterVec,
    pub delayed_pending: IntGauge,
    pub transactions_pending: IntGauge,
    pub grpc_requests: IntCounterVec,
    pub grpc_duration: HistogramVec,
    pub grpc_connections: IntGauge,
    pub grpc_streams: IntGauge,
    pub connections_closed: IntCounterVec,
    pub auth_refusals: IntCounterVec,
    pub admin_actions: IntCounterVec,
    pub quota_throttled_seconds: prometheus::CounterVec,
    pub replication: crate::replication::ReplicationMetrics,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

impl Metrics {
    /// Creates and registers every metric, plus the process collector.
    pub fn new(version: &str, broker_id: u32, flush: &str) -> Arc<Metrics> {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(opts(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(opts(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::with_opts(opts(name, help)).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
                .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let info = gauge_vec(
            "dduomq_broker_info",
            "Identity of the running broker (always 1).",
            &["version", "broker_id", "flush"],
        );
        info.with_label_values(&[version, &broker_id.to_string(), flush])
            .set(1);
        let disk_usage_ratio = prometheus::Gauge::with_opts(opts(
            "dduomq_store_disk_usage_ratio",
            "Used fraction of the data volume.",
        ))
        .expect("valid metric");
        registry
            .register(Box::new(disk_usage_ratio.clone()))
            .expect("unique metric");
        let corrupt_records = IntCounter::with_opts(opts(
            "dduomq_store_corrupt_records_total",
            "Corrupt records detected; never returned as data.",
        ))
        .expect("valid metric");
        registry
            .register(Box::new(corrupt_records.clone()))
            .expect("unique metric");
        let grpc_duration = HistogramVec::new(
            HistogramOpts::new(
                "dduomq_grpc_request_duration_seconds",
                "Time to the gRPC response (Receive: to the stream's start).",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["method"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(grpc_duration.clone()))
            .expect("unique metric");
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process collector");
        let replication = crate::replication::ReplicationMetrics::register(&registry);
        Arc::new(Metrics {
            replication,
            messages_in: counter_vec(
                "dduomq_messages_in_total",
                "Messages stored by sends.",
                &["topic"],
            ),
            bytes_in: counter_vec(
                "dduomq_bytes_in_total",
                "Body bytes stored by sends.",
                &["topic"],
            ),
            messages_out: counter_vec(
                "dduomq_messages_out_total",
                "Messages delivered to consumers.",
                &["topic", "group"],
            ),
            bytes_out: counter_vec(
                "dduomq_bytes_out_total",
                "Body bytes delivered to consumers.",
                &["topic", "group"],
            ),
            produce_latency: histogram(
                "dduomq_produce_latency_seconds",
                "Time to handle a Send request.",
                LATENCY_BUCKETS,
            ),
            consume_latency: histogram(
                "dduomq_consume_latency_seconds",
                "Age of a message when delivered.",
                AGE_BUCKETS,
            ),
            append_latency: histogram(
                "dduomq_store_append_latency_seconds",
                "From an append entering the writer queue to its acknowledgement.",
                LATENCY_BUCKETS,
            ),
            flush_latency: histogram(
                "dduomq_store_flush_latency_seconds",
                "Duration of one commit-log flush.",
                LATENCY_BUCKETS,
            ),
            commit_log_bytes: gauge(
                "dduomq_store_commit_log_bytes",
                "Bytes of commit log retained.",
            ),
            segments: gauge("dduomq_store_segments", "Commit-log segment files."),
            disk_usage_ratio,
            corrupt_records,
            store_repairs: {
                let c = IntCounter::with_opts(opts(
                    "dduomq_store_repairs_total",
                    "Damaged files found at startup (rebuilt from the commit log, or data lost).",
                ))
                .expect("valid metric");
                registry
                    .register(Box::new(c.clone()))
                    .expect("unique metric");
                c
            },
            refusing_writes: gauge(
                "dduomq_store_refusing_writes",
                "1 while the data volume is above disk_usage_limit and new messages are refused.",
            ),
            segments_deleted: counter_vec(
                "dduomq_store_segments_deleted_total",
                "Commit-log segments deleted by retention, by reason (expired, disk_usage).",
                &["reason"],
            ),
            queue_max_offset: gauge_vec(
                "dduomq_queue_max_offset",
                "Next offset to be written to a queue.",
                &["topic", "queue"],
            ),
            group_committed: gauge_vec(
                "dduomq_group_committed_offset",
                "Committed progress of a group.",
                &["group", "topic", "queue"],
            ),
            group_lag: gauge_vec(
                "dduomq_group_lag_messages",
                "Max offset minus committed offset.",
                &["group", "topic", "queue"],
            ),
            group_in_flight: gauge_vec(
                "dduomq_group_in_flight_messages",
                "Messages leased and not yet acked.",
                &["group", "topic"],
            ),
            retries: counter_vec(
                "dduomq_retries_total",
                "Leases ended without an ack and scheduled for redelivery.",
                &["group", "topic"],
            ),
            dead_lettered: counter_vec(
                "dduomq_dead_lettered_total",
                "Messages moved to the dead-letter topic.",
                &["group", "topic"],
            ),
            delayed_pending: gauge(
                "dduomq_delayed_messages_pending",
                "Messages scheduled for later delivery: delayed messages and redeliveries.",
            ),
            transactions_pending: gauge(
                "dduomq_transactions_pending",
                "Transactional (half) messages neither committed nor rolled back.",
            ),
            grpc_requests: counter_vec(
                "dduomq_grpc_requests_total",
                "gRPC requests by method and status code.",
                &["method", "code"],
            ),
            grpc_duration,
            grpc_connections: gauge("dduomq_grpc_connections", "Open client connections."),
            grpc_streams: gauge("dduomq_grpc_streams", "Open Receive streams."),
            connections_closed: counter_vec(
                "dduomq_connections_closed_total",
                "Connections the broker closed: over the listener's limit, or idle.",
                &["listener", "reason"],
            ),
            auth_refusals: counter_vec(
                "dduomq_auth_refusals_total",
                "Requests refused by authentication or authorization, by reason code.",
                &["reason"],
            ),
            admin_actions: counter_vec(
                "dduomq_admin_actions_total",
                "Admin actions allowed (drain, role and route changes, resets, deletes), by method.",
                &["method"],
            ),
            quota_throttled_seconds: {
                let c = prometheus::CounterVec::new(
                    opts(
                        "dduomq_quota_throttled_seconds_total",
                        "Time requests waited under users' byte-rate quotas, by direction.",
                    ),
                    &["direction"],
                )
                .expect("valid metric");
                registry
                    .register(Box::new(c.clone()))
                    .expect("unique metric");
                c
            },
            registry,
        })
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding");
        String::from_utf8(buf).expect("UTF-8 exposition")
    }
}

impl StoreObserver for Metrics {
    fn flushed(&self, took: Duration) {
        self.flush_latency.observe(took.as_secs_f64());
    }
    fn appended(&self, took: Duration) {
        self.append_latency.observe(took.as_secs_f64());
    }
    fn corrupt(&self, count: u64) {
        self.corrupt_records.inc_by(count);
    }
    fn repaired(&self, count: u64) {
        self.store_repairs.inc_by(count);
    }
    fn refusing_writes(&self, refusing: bool) {
        self.refusing_writes.set(refusing as i64);
    }
    fn segment_deleted(&self, reason: DeleteReason) {
        self.segments_deleted
            .with_label_values(&[reason.as_str()])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_names_from_the_catalogue() {
        let m = Metrics::new("0.1.0", 3, "sync");
        m.messages_in.with_label_values(&["t"]).inc();
        m.flushed(Duration::from_millis(2));
        let text = m.render();
        assert!(
            text.contains("dduomq_broker_info{broker_id=\"3\",flush=\"sync\",version=\"0.1.0\"} 1")
        );
        assert!(text.contains("dduomq_messages_in_total{topic=\"t\"} 1"));
        assert!(text.contains("dduomq_store_flush_latency_seconds_count 1"));
        let catalogue = include_str!("../../docs/metrics.md");
        for line in text.lines().filter(|l| l.starts_with("# TYPE dduomq_")) {
            let name = line.split_whitespace().nth(2).unwrap();
            assert!(
                catalogue.contains(&format!("`{name}`")),
                "{name} is not documented in docs/metrics.md"
            );
        }
    }
}
