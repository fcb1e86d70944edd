//! Replication metrics (docs/metrics.md): the member's role, epoch, in-sync
//! set size and, on the master, each follower's lag; set at scrape time from
//! live state, except the role-change counter.

use prometheus::{GaugeVec, IntCounter, IntGauge, IntGaugeVec, Opts, Registry};

/// The replication metrics of one broker.
#[derive(Debug, Clone)]
pub struct ReplicationMetrics {
    /// 0 = no role assigned, 1 = master, 2 = replica (the wire's ReplicaRole
    /// numbers).
    pub role: IntGauge,
    pub epoch: IntGauge,
    pub in_sync_members: IntGauge,
    pub lag_bytes: IntGaugeVec,
    pub lag_seconds: GaugeVec,
    pub elections: IntCounter,
}

impl ReplicationMetrics {
    /// Creates the metrics in `registry`.
    pub fn register(registry: &Registry) -> ReplicationMetrics {
        let register = |c: Box<dyn prometheus::core::Collector>| {
            registry.register(c).expect("unique metric");
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::with_opts(Opts::new(name, help)).expect("valid metric");
            register(Box::new(g.clone()));
            g
        };
        let lag_bytes = IntGaugeVec::new(
            Opts::new(
                "dduomq_replication_lag_bytes",
                "Master only: bytes of the master's log a follower has not stored yet.",
            ),
            &["member"],
        )
        .expect("valid metric");
        register(Box::new(lag_bytes.clone()));
        let lag_seconds = GaugeVec::new(
            Opts::new(
                "dduomq_replication_lag_seconds",
                "Master only: time since a follower last held everything the master had.",
            ),
            &["member"],
        )
        .expect("valid metric");
        register(Box::new(lag_seconds.clone()));
        let elections = IntCounter::with_opts(Opts::new(
            "dduomq_replication_elections_total",
            "Role changes this broker went through (became master, or followed a new master).",
        ))
        .expect("valid metric");
        register(Box::new(elections.clone()));
        ReplicationMetrics {
            role: gauge(
                "dduomq_replication_role",
                "This broker's role in its group: 0 none assigned, 1 master, 2 replica.",
            ),
            epoch: gauge(
                "dduomq_replication_epoch",
                "The newest epoch this broker knows of.",
            ),
            in_sync_members: gauge(
                "dduomq_replication_in_sync_members",
                "Master only: members of the in-sync set it waits for, itself included.",
            ),
            lag_bytes,
            lag_seconds,
            elections,
        }
    }
}
