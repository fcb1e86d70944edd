//! One installed cluster shared by the scenario tests. Each test runs its
//! scenario after the scenarios it builds on (those not run yet), so any one of
//! them can be selected by name; a full run goes through all of them in order.

use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

use dduomq_client::{Producer, PushConsumer};
use dduomq_testkit::{Ledger, Report, secs};
use kube::Client;
use serde_json::json;

use crate::clients::{build_producer, service_address};
use crate::env::{Env, install_panic_hook};
use crate::groups::FACTOR;
use crate::pods::View;
use crate::scenarios::{Cluster, Layout, MasterLoss, SoakSettings};
use crate::{REPLICATED_GROUPS, TOPIC};

/// The scenarios, in suite order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Install,
    Bulk,
    ScaleOut,
    Disruptions,
    ScaleIn,
    RollingUpgrade,
    Teardown,
    ReplicatedInstall,
    MasterKill,
    RocketMqFailover,
    MasterVolumeLoss,
    MasterIsolated,
    ReplicatedRollingUpgrade,
    GroupScale,
    ReplicatedTeardown,
    Soak,
}

impl Scenario {
    const ALL: [Scenario; 16] = [
        Scenario::Install,
        Scenario::Bulk,
        Scenario::ScaleOut,
        Scenario::Disruptions,
        Scenario::ScaleIn,
        Scenario::RollingUpgrade,
        Scenario::Teardown,
        Scenario::ReplicatedInstall,
        Scenario::MasterKill,
        Scenario::RocketMqFailover,
        Scenario::MasterVolumeLoss,
        Scenario::MasterIsolated,
        Scenario::ReplicatedRollingUpgrade,
        Scenario::GroupScale,
        Scenario::ReplicatedTeardown,
        Scenario::Soak,
    ];

    /// The scenarios whose outcome this one starts from: the release (install),
    /// the Topic, the group's consumer and an unused ledger (bulk), five brokers
    /// (scale-out; teardown expects their five claims), four brokers
    /// (scale-in); the replicated installation, which has the release and the
    /// namespace to itself (so it runs after the teardown when the first
    /// installation is there, see [`run`]); nine claims (the group scale).
    fn builds_on(self) -> &'static [Scenario] {
        match self {
            Scenario::Install | Scenario::ReplicatedInstall => &[],
            Scenario::Bulk => &[Scenario::Install],
            Scenario::ScaleOut => &[Scenario::Bulk],
            Scenario::Disruptions | Scenario::ScaleIn | Scenario::Teardown => &[Scenario::ScaleOut],
            Scenario::RollingUpgrade => &[Scenario::ScaleIn],
            Scenario::MasterKill
            | Scenario::RocketMqFailover
            | Scenario::MasterVolumeLoss
            | Scenario::MasterIsolated
            | Scenario::ReplicatedRollingUpgrade
            | Scenario::GroupScale
            | Scenario::Soak => &[Scenario::ReplicatedInstall],
            Scenario::ReplicatedTeardown => &[Scenario::GroupScale],
        }
    }

    /// This scenario and everything it builds on, transitively, in suite order.
    fn with_prerequisites(self) -> Vec<Scenario> {
        let mut wanted = vec![self];
        let mut i = 0;
        while i < wanted.len() {
            for s in wanted[i].builds_on() {
                if !wanted.contains(s) {
                    wanted.push(*s);
                }
            }
            i += 1;
        }
        Scenario::ALL
            .into_iter()
            .filter(|s| wanted.contains(s))
            .collect()
    }
}

/// The tests run one after the other (`--test-threads=1`) on this runtime, so
/// the consumer, the pod view and the load's producer live from one test to the
/// next.
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
});

/// Poisoned when a scenario panics: the cluster is then in an unknown state and
/// the scenarios after it do not run.
static SUITE: Mutex<Option<Suite>> = Mutex::new(None);

/// Runs `scenario`, after those it builds on that have not run yet.
pub fn run(scenario: Scenario) {
    let mut suite = SUITE.lock().unwrap_or_else(|_| {
        panic!("an earlier scenario failed, so the cluster is in an unknown state: {scenario:?} does not run")
    });
    RUNTIME.block_on(async {
        if suite.is_none() {
            *suite = Some(Suite::start().await);
        }
        let suite = suite.as_mut().expect("started");
        let mut order = scenario.with_prerequisites();
        let first_installed = suite.passed.contains(&Scenario::Install);
        if order.contains(&Scenario::ReplicatedInstall)
            && first_installed
            && !suite.passed.contains(&Scenario::Teardown)
        {
            let mut teardown = Scenario::Teardown.with_prerequisites();
            teardown.append(&mut order);
            order = teardown;
        }
        for s in order {
            if !suite.passed.contains(&s) {
                suite.run(s).await;
                suite.passed.push(s);
            }
        }
    });
}

/// What the scenarios hand on to the ones after them.
struct Suite {
    cluster: Cluster,
    started: Instant,
    passed: Vec<Scenario>,
    /// From scenario 2 on.
    view: Option<Arc<View>>,
    /// The group's consumer, from scenario 2 until scenario 7.
    consumer: Option<PushConsumer>,
    /// The continuous load's producer, bootstrapping through the Service.
    load_producer: Option<Producer>,
}

impl Suite {
    async fn start() -> Suite {
        let env = Env::load();
        install_panic_hook(env.clone());
        // The SDK's warnings (a stream broke, an ack failed) explain a
        // redelivery; they go to the test's stderr, which the CI log keeps.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("DDUOMQ_E2E_CLIENT_LOG")
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_writer(std::io::stderr)
            .try_init();
        let client = Client::try_default()
            .await
            .expect("admin kubeconfig (KUBECONFIG)");
        Suite {
            cluster: Cluster {
                report: Report::new(env.work.join("cluster-report.json")),
                env,
                client,
                ledger: Arc::new(Ledger::new(TOPIC)),
            },
            started: Instant::now(),
            passed: Vec::new(),
            view: None,
            consumer: None,
            load_producer: None,
        }
    }

    fn view(&self) -> &Arc<View> {
        self.view
            .as_ref()
            .expect("the pod view (scenario 2 starts it)")
    }

    async fn load_producer(&mut self) -> Producer {
        if self.load_producer.is_none() {
            let address = service_address(&self.cluster.client).await;
            self.load_producer = Some(build_producer(&address));
        }
        self.load_producer.clone().expect("built")
    }

    async fn run(&mut self, scenario: Scenario) {
        match scenario {
            Scenario::Install => self.cluster.install().await,
            Scenario::Bulk => {
                let view = View::start(self.cluster.client.clone()).await;
                self.consumer = Some(self.cluster.bulk(&view).await);
                self.view = Some(view);
            }
            Scenario::ScaleOut => self.cluster.scale_out(self.view()).await,
            Scenario::Disruptions => {
                let producer = self.load_producer().await;
                self.cluster.disruptions(self.view(), &producer).await;
            }
            Scenario::ScaleIn => {
                let producer = self.load_producer().await;
                self.cluster.scale_in(self.view(), &producer).await;
            }
            Scenario::RollingUpgrade => {
                let producer = self.load_producer().await;
                let layout = Layout::Unreplicated { brokers: 4 };
                self.cluster
                    .rolling_upgrade(self.view(), &producer, layout)
                    .await;
            }
            Scenario::Teardown => {
                self.stop_clients("totals").await;
                self.cluster.teardown().await;
                self.finish();
            }
            Scenario::ReplicatedInstall => {
                // A ledger, a view and clients of its own.
                self.cluster.ledger = Arc::new(Ledger::new(TOPIC));
                self.load_producer = None;
                let (view, consumer) = self.cluster.replicated_install().await;
                self.view = Some(view);
                self.consumer = Some(consumer);
            }
            Scenario::MasterKill => {
                let producer = self.load_producer().await;
                let loss = MasterLoss::Process;
                self.cluster
                    .lose_master(self.view(), &producer, 0, loss)
                    .await;
            }
            Scenario::RocketMqFailover => {
                self.cluster.rocketmq_java_failover(self.view(), 1).await;
            }
            Scenario::MasterVolumeLoss => {
                let producer = self.load_producer().await;
                let loss = MasterLoss::PodAndVolume;
                self.cluster
                    .lose_master(self.view(), &producer, 1, loss)
                    .await;
            }
            Scenario::MasterIsolated => {
                let producer = self.load_producer().await;
                self.cluster.isolate_master(self.view(), &producer, 0).await;
            }
            Scenario::ReplicatedRollingUpgrade => {
                let producer = self.load_producer().await;
                let layout = Layout::Replicated {
                    groups: REPLICATED_GROUPS,
                };
                self.cluster
                    .rolling_upgrade(self.view(), &producer, layout)
                    .await;
            }
            Scenario::GroupScale => {
                let producer = self.load_producer().await;
                self.cluster
                    .group_scale(self.view(), &producer, REPLICATED_GROUPS)
                    .await;
            }
            Scenario::Soak => {
                let producer = self.load_producer().await;
                let settings = SoakSettings::from_env();
                self.cluster
                    .soak(self.view(), &producer, REPLICATED_GROUPS, settings)
                    .await;
            }
            Scenario::ReplicatedTeardown => {
                self.stop_clients("replicated_totals").await;
                // The group scale left nine claims.
                self.cluster
                    .replicated_teardown((REPLICATED_GROUPS + 1) * FACTOR)
                    .await;
                self.finish();
            }
        }
    }

    /// Every acknowledged message was consumed (checked after each scenario);
    /// the consumer stops before the topic goes. The ledger's totals go to the
    /// report under `key`.
    async fn stop_clients(&mut self, key: &str) {
        self.consumer
            .take()
            .expect("the group's consumer (scenario 2 or 8 starts it)")
            .shutdown()
            .await;
        self.load_producer = None;
        let cluster = &self.cluster;
        let ledger = &cluster.ledger;
        let totals = json!({
            "messages_sent": ledger.allocated(),
            "acked": ledger.acked_count(),
            "failed_sends": ledger.failed_count(),
            "duplicate_deliveries": ledger.duplicates(),
            "delivered_although_send_failed": ledger.delivered_unacked(),
        });
        cluster.report.set(key, "messages", totals);
        self.view().stop();
    }

    fn finish(&self) {
        let cluster = &self.cluster;
        cluster
            .report
            .set("totals", "suite_s", secs(self.started.elapsed()));
        cluster.report.save();
        cluster.report.print_summary();
        eprintln!(
            "cluster scenarios passed in {:.1}s",
            self.started.elapsed().as_secs_f64()
        );
    }
}
