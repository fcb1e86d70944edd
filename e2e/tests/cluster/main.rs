//! The whole system on a real cluster (run by `e2e/run cluster`, inside the
//! network namespace it creates, with `--test-threads=1 --nocapture`).
//!
//! Each scenario is a test of its own, `scenario_<nn>_<name>` (one file each in
//! `scenarios/`); all of them share one installation. A scenario runs after
//! those it builds on (see `Scenario::builds_on`), which run first when they
//! have not: `e2e/run cluster scale_in` (a test-name filter, as for `cargo test`)
//! runs install, bulk, scale-out, then the scale-in. Without a filter every
//! scenario runs, in order.
//!
//! Before this test starts, the runner has started etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler, the test kubelet (node
//! `dduomq-e2e-node`, pods as local processes, each with its own pod IP reachable
//! from here, PVCs of the default StorageClass provisioned by the kubelet) and
//! installed the CRDs. The test drives the cluster the way a user would: the Helm
//! chart, `kubectl apply`, the SDK, the `dduomq` CLI, pod deletion and SIGKILL.
//!
//! The scenarios, in order:
//!
//! 1. `helm install` → 3 brokers and the operator Ready; `helm test` passes.
//! 2. A Topic and a ConsumerGroup → Ready; 100,000 messages produced, every one
//!    consumed exactly once, byte-exact.
//! 3. Scale 3 → 5: the operator places write queues on the new brokers and a
//!    producer writes to them.
//! 4. Under continuous produce and consume: broker pods deleted and broker
//!    processes SIGKILLed → each comes back on its volume, producers route around
//!    it, every acknowledged message is consumed.
//! 5. A plain `helm upgrade` 5 → 4 under 2,000 msg/s (no drain command): the
//!    operator drains broker 4 before it lowers the replicas; no acknowledged
//!    message is lost.
//! 6. A `helm upgrade` that changes the broker pod template (rolling restart)
//!    under load: every acknowledged message is consumed.
//! 7. Delete the operator, then the Topics and ConsumerGroups: nothing hangs;
//!    `helm uninstall` cleans up; the retained PVCs and the namespace are deleted.
//!
//! Scenarios 1 to 7 run with replication factor 1. The second installation has
//! the chart's default, replication factor 3: groups of 3 brokers, each with one
//! master acknowledging sends once a quorum of its group has them, and 2
//! operators as the groups' controller; its scenarios run under continuous
//! produce and consume:
//!
//! 8. `helm install` with 6 brokers → 2 groups, each with a master and 3
//!    members in sync; the route writes on the 2 masters; sends consumed exactly
//!    once.
//! 9. SIGKILL a master → a new master; the time from the kill to its first
//!    acknowledged send is reported; the old master returns as a replica.
//!    Then (9b) the official RocketMQ Java client, through its RocketMQ 5
//!    protocol, sends through a master SIGKILL on a Topic made with
//!    `kubectl apply`, then receives every message it saw acknowledged.
//! 10. Delete a master's pod and its PVC → failover; the member returns empty,
//!     copies the log from the new master and rejoins the in-sync set.
//! 11. Cut a master off from the API server and its replicas (nftables in its
//!     pod's network namespace) → it stops acknowledging, a new master is
//!     elected; healed, it follows the new master.
//! 12. A rolling upgrade of every group: no send fails.
//! 13. Add a group (6 → 9 brokers) and remove it again (safe scale-in).
//! 14. Delete the Topic and ConsumerGroup, `helm uninstall`, the claims and the
//!     namespace.
//!
//! Every message body encodes its index and a payload derived from it, so the
//! consumer checks each delivery byte for byte. A ledger records every
//! acknowledged send, every failed send and every delivery; the final check of
//! each scenario is "every acknowledged message was delivered with identical
//! bytes" (each installation has a ledger of its own). Duplicates are
//! tolerated from scenario 4 on only: a crashed or
//! restarted broker redelivers what was acked since its last progress save
//! (at-least-once, docs/architecture.md); scenarios 2 and 3 have no failure and
//! must deliver exactly once.
//!
//! Clients bootstrap through the client Service (`dduomq`, its ClusterIP: the
//! test kubelet proxies it to the ready brokers, as kube-proxy would; DNS names
//! resolve only inside pods), then follow the route table to the brokers' pod
//! IPs, like an application in the cluster.
//!
//! Timings go to stdout and to `$DDUOMQ_E2E_WORK/cluster-report.json`; helm and
//! kubectl commands and their output to `cluster-commands.log`; on a failure the
//! cluster's state (pods, events, logs) to `cluster-diagnostics.log`.

mod clients;
mod env;
mod groups;
mod pods;
mod routes;
mod scenarios;
mod suite;

use std::time::Duration;

use dduomq_testkit::LoadRate;

use suite::Scenario;

/// Namespace and Helm release.
const NS: &str = "dduomq";
const RELEASE: &str = "dduomq";
/// Names the chart gives the release's objects.
const STS: &str = "dduomq-broker";
const OPERATOR: &str = "dduomq-operator";
const CLIENT_SERVICE: &str = "dduomq";
const BROKER_SELECTOR: &str =
    "app.kubernetes.io/instance=dduomq,app.kubernetes.io/component=broker";
const OPERATOR_SELECTOR: &str =
    "app.kubernetes.io/instance=dduomq,app.kubernetes.io/component=operator";
const RELEASE_SELECTOR: &str = "app.kubernetes.io/instance=dduomq";
const GRPC_PORT: u16 = 6086;

/// How often the waits check the cluster.
const POLL: Duration = Duration::from_millis(250);

/// The topic and group every scenario uses.
const TOPIC: &str = "e2e-orders";
const GROUP: &str = "e2e-billing";
const QUEUES: u32 = 8;

/// Replication groups of the second installation (scenarios 8 to 14).
const REPLICATED_GROUPS: u32 = 2;
const REPLICATED_BROKERS: u32 = REPLICATED_GROUPS * groups::FACTOR;

/// Messages of scenario 2.
const BULK: u64 = 100_000;
/// Sends in flight while producing them.
const BULK_CONCURRENCY: usize = 2048;
/// The continuous load of scenarios 4 and 6.
const LOAD: LoadRate = LoadRate {
    messages_per_second: 400,
    max_in_flight: 4096,
};
/// The load while scenario 5 scales in.
const SCALE_IN_LOAD: LoadRate = LoadRate {
    messages_per_second: 2000,
    max_in_flight: 8192,
};

/// Values beyond the `--set`s of the issue. Persistence stays on (PVCs from the
/// default StorageClass).
const VALUES: &str = r#"# Extra values of the e2e cluster scenarios (e2e/tests/cluster/).
broker:
  # Small preallocated files: up to five brokers share the CI machine's disk
  # (the defaults preallocate a 1 GiB segment and a 132 MiB key index per
  # broker). Retention never deletes by disk usage, so unconsumed messages of
  # the test are never removed because the CI disk happens to be full.
  config: |
    [store]
    segment_size_bytes = 67108864
    consume_queue_entries_per_file = 65536
    index_slots = 65536
    index_entries = 262144
    disk_usage_limit = 1.0
  # Five brokers, the operator and the helm test pod on one small node.
  resources:
    requests:
      cpu: 50m
      memory: 64Mi
"#;

#[test]
fn scenario_01_install() {
    suite::run(Scenario::Install);
}

#[test]
fn scenario_02_bulk() {
    suite::run(Scenario::Bulk);
}

#[test]
fn scenario_03_scale_out() {
    suite::run(Scenario::ScaleOut);
}

#[test]
fn scenario_04_disruptions() {
    suite::run(Scenario::Disruptions);
}

#[test]
fn scenario_05_scale_in() {
    suite::run(Scenario::ScaleIn);
}

#[test]
fn scenario_06_rolling_upgrade() {
    suite::run(Scenario::RollingUpgrade);
}

#[test]
fn scenario_07_teardown() {
    suite::run(Scenario::Teardown);
}

#[test]
fn scenario_08_replicated_install() {
    suite::run(Scenario::ReplicatedInstall);
}

#[test]
fn scenario_09_master_sigkill() {
    suite::run(Scenario::MasterKill);
}

#[test]
fn scenario_09b_rocketmq_java_failover() {
    suite::run(Scenario::RocketMqFailover);
}

#[test]
fn scenario_10_master_pod_and_volume_lost() {
    suite::run(Scenario::MasterVolumeLoss);
}

#[test]
fn scenario_11_master_isolated() {
    suite::run(Scenario::MasterIsolated);
}

#[test]
fn scenario_12_replicated_rolling_upgrade() {
    suite::run(Scenario::ReplicatedRollingUpgrade);
}

#[test]
fn scenario_13_group_scale_out_and_in() {
    suite::run(Scenario::GroupScale);
}

#[test]
fn scenario_14_replicated_teardown() {
    suite::run(Scenario::ReplicatedTeardown);
}

/// `make soak`: not part of `make test` (it runs for half an hour by default).
#[test]
#[ignore = "the soak runs for DDUOMQ_SOAK_MINUTES (default 30): make soak"]
fn soak() {
    suite::run(Scenario::Soak);
}
