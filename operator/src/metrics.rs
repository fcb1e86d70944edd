//! Operator metrics (catalogue: docs/metrics.md): reconciles, errors and durations
//! per kind, ready brokers in the registry, leadership, scale-in progress.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// The kinds the operator reconciles.
pub const KINDS: [&str; 2] = ["Topic", "ConsumerGroup"];

/// Every operator metric.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub reconciles: IntCounterVec,
    pub reconcile_duration: HistogramVec,
    pub brokers_ready: IntGauge,
    pub leader: IntGauge,
    /// Departing write units not drained yet (0 when no scale-in is under way).
    pub scale_in_pending: IntGauge,
    /// Unconsumed and staged messages left on the departing write units.
    pub scale_in_remaining_messages: IntGauge,
    /// Masters elected by this replica (replication groups).
    pub elections: IntCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "dduomq_operator_reconciles_total",
                "Reconciles by kind and result (success or error).",
            ),
            &["kind", "result"],
        )
        .expect("valid metric");
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new(
                "dduomq_operator_reconcile_duration_seconds",
                "Duration of one reconcile.",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let brokers_ready = IntGauge::with_opts(Opts::new(
            "dduomq_operator_brokers_ready",
            "Ready brokers in the registry.",
        ))
        .expect("valid metric");
        let leader = IntGauge::with_opts(Opts::new(
            "dduomq_operator_leader",
            "1 while this replica holds the leader lease.",
        ))
        .expect("valid metric");
        let scale_in_pending = IntGauge::with_opts(Opts::new(
            "dduomq_operator_scale_in_pending",
            "Departing write units (brokers) of a scale-in that are not drained yet.",
        ))
        .expect("valid metric");
        let scale_in_remaining_messages = IntGauge::with_opts(Opts::new(
            "dduomq_operator_scale_in_remaining_messages",
            "Unconsumed and staged messages left on the departing write units.",
        ))
        .expect("valid metric");
        let elections = IntCounter::with_opts(Opts::new(
            "dduomq_operator_elections_total",
            "Replication group masters this replica elected (recorded by compare-and-swap).",
        ))
        .expect("valid metric");
        for c in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reconcile_duration.clone()),
            Box::new(brokers_ready.clone()),
            Box::new(leader.clone()),
            Box::new(scale_in_pending.clone()),
            Box::new(scale_in_remaining_messages.clone()),
            Box::new(elections.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process collector");
        // Every series exists from the start, so dashboards and alerts see zeros
        // rather than nothing.
        for kind in KINDS {
            for result in ["success", "error"] {
                reconciles.with_label_values(&[kind, result]);
            }
            reconcile_duration.with_label_values(&[kind]);
        }
        Metrics {
            registry,
            reconciles,
            reconcile_duration,
            brokers_ready,
            leader,
            scale_in_pending,
            scale_in_remaining_messages,
            elections,
        }
    }

    /// Records one reconcile.
    pub fn reconciled(&self, kind: &str, ok: bool, seconds: f64) {
        let result = if ok { "success" } else { "error" };
        self.reconciles.with_label_values(&[kind, result]).inc();
        self.reconcile_duration
            .with_label_values(&[kind])
            .observe(seconds);
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding");
        String::from_utf8(buf).expect("UTF-8 exposition")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_and_result_is_exported_from_the_start() {
        let m = Metrics::new();
        m.reconciled("Topic", false, 0.2);
        let text = m.render();
        assert!(
            text.contains("dduomq_operator_reconciles_total{kind=\"Topic\",result=\"error\"} 1")
        );
        assert!(text.contains(
            "dduomq_operator_reconciles_total{kind=\"ConsumerGroup\",result=\"success\"} 0"
        ));
        assert!(
            text.contains("dduomq_operator_reconcile_duration_seconds_count{kind=\"Topic\"} 1")
        );
        assert!(text.contains("dduomq_operator_brokers_ready 0"));
        assert!(text.contains("dduomq_operator_scale_in_pending 0"));
    }
}
