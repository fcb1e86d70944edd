//! The whole system on a real cluster (run by `e2e/run cluster`, inside the
//! network namespace it creates, with `--test-threads=1 --nocapture`).
//!
//! Before this test starts, the runner has started etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler, the test kubelet (node
//! `dduomq-e2e-node`, pods as local processes, each with its own pod IP reachable
//! from here, PVCs of the default StorageClass provisioned by the kubelet) and
//! installed the CRDs. The test drives the cluster the way a user would: the Helm
//! chart, `kubectl apply`, the SDK, the `dduomq` CLI, pod deletion and SIGKILL.
//!
//! The scenarios run in order, each building on the previous one:
//!
//! 1. `helm install` → 3 brokers and the operator Ready; `helm test` passes.
//! 2. A Topic and a ConsumerGroup → Ready; 100,000 messages produced, every one
//!    consumed exactly once, byte-exact.
//! 3. Scale 3 → 5: the operator places write queues on the new brokers and a
//!    producer writes to them.
//! 4. Under continuous produce and consume: broker pods deleted and broker
//!    processes SIGKILLed → each comes back on its volume, producers route around
//!    it, every acknowledged message is consumed.
//! 5. Drain broker 4, then scale 5 → 4: no unconsumed message is lost.
//! 6. A `helm upgrade` that changes the broker pod template (rolling restart)
//!    under load: every acknowledged message is consumed.
//! 7. Delete the operator, then the Topics and ConsumerGroups: nothing hangs;
//!    `helm uninstall` cleans up; the retained PVCs and the namespace are deleted.
//!
//! Every message body encodes its index and a payload derived from it, so the
//! consumer checks each delivery byte for byte. A ledger records every
//! acknowledged send, every failed send and every delivery; the final check of
//! each scenario is "every acknowledged message was delivered with identical
//! bytes". Duplicates are tolerated from scenario 4 on only: a crashed or
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

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dduomq_client::proto as pb;
use dduomq_client::{
    Admin, ClientError, Message, Producer, ProducerBuilder, PushConsumer, PushConsumerBuilder,
    ReceivedMessage, SendReceipt,
};
use dduomq_operator::crd::{ConsumerGroup, Topic};
use dduomq_testkit::{
    Ledger, Load, LoadRate, Report, Step, acks_flowing, all_acked_consumed, body_of, broker_of,
    eventually, secs,
};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client, ResourceExt};
use parking_lot::Mutex;
use serde_json::{Value, json};

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

/// The topic and group every scenario uses.
const TOPIC: &str = "e2e-orders";
const GROUP: &str = "e2e-billing";
const QUEUES: u32 = 8;

/// Messages of scenario 2.
const BULK: u64 = 100_000;
/// Sends in flight while producing them.
const BULK_CONCURRENCY: usize = 2048;
/// The continuous load of scenarios 4–6.
const LOAD: LoadRate = LoadRate {
    messages_per_second: 400,
    max_in_flight: 4096,
};

/// Values beyond the `--set`s of the issue. Persistence stays on (PVCs from the
/// default StorageClass).
const VALUES: &str = r#"# Extra values of the e2e cluster scenarios (e2e/tests/cluster.rs).
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

// ---- environment, commands, diagnostics ------------------------------------------

#[derive(Debug, Clone)]
struct Env {
    helm: PathBuf,
    kubectl: PathBuf,
    chart: PathBuf,
    bin: PathBuf,
    work: PathBuf,
}

impl Env {
    fn load() -> Env {
        let var = |k: &str| {
            std::env::var(k)
                .unwrap_or_else(|_| panic!("{k} is not set: run this test with `e2e/run cluster`"))
        };
        var("KUBECONFIG");
        let env = Env {
            helm: var("DDUOMQ_E2E_HELM").into(),
            kubectl: var("DDUOMQ_E2E_KUBECTL").into(),
            chart: var("DDUOMQ_E2E_CHART").into(),
            bin: var("DDUOMQ_E2E_BIN_DIR").into(),
            work: var("DDUOMQ_E2E_WORK").into(),
        };
        for (what, path) in [
            ("DDUOMQ_E2E_HELM", &env.helm),
            ("DDUOMQ_E2E_KUBECTL", &env.kubectl),
            ("DDUOMQ_E2E_BIN_DIR/dduomq", &env.bin.join("dduomq")),
        ] {
            assert!(path.is_file(), "{what}: {} is not a file", path.display());
        }
        assert!(
            env.chart.join("Chart.yaml").is_file(),
            "DDUOMQ_E2E_CHART: {} holds no Chart.yaml",
            env.chart.display()
        );
        std::fs::create_dir_all(&env.work).expect("create DDUOMQ_E2E_WORK");
        env
    }

    fn chart(&self) -> String {
        self.chart.display().to_string()
    }

    /// Helm keeps its cache and settings in the work dir, not in $HOME.
    fn helm_env(&self) -> Vec<(&'static str, String)> {
        let dir = |d: &str| self.work.join("helm").join(d).display().to_string();
        vec![
            ("HELM_CACHE_HOME", dir("cache")),
            ("HELM_CONFIG_HOME", dir("config")),
            ("HELM_DATA_HOME", dir("data")),
        ]
    }

    async fn helm(&self, args: &[&str]) -> CmdOut {
        run_command(self, &self.helm, args, &self.helm_env(), None).await
    }

    /// Runs helm; panics with its output if it fails.
    async fn helm_ok(&self, args: &[&str]) -> CmdOut {
        self.helm(args).await.ok()
    }

    async fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> CmdOut {
        run_command(self, &self.kubectl, args, &[], stdin).await
    }

    async fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> CmdOut {
        self.kubectl(args, stdin).await.ok()
    }

    /// The `dduomq` CLI.
    async fn cli(&self, args: &[&str]) -> CmdOut {
        run_command(self, &self.bin.join("dduomq"), args, &[], None).await
    }

    /// Appends to `cluster-commands.log`.
    fn log_command(&self, text: &str) {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.work.join("cluster-commands.log"))
        {
            let _ = writeln!(f, "{text}");
        }
    }
}

/// A finished command.
#[derive(Debug)]
struct CmdOut {
    line: String,
    success: bool,
    status: String,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl CmdOut {
    fn describe(&self) -> String {
        format!(
            "`{}` {} after {:.1}s\n--- stdout\n{}\n--- stderr\n{}",
            self.line,
            self.status,
            self.took.as_secs_f64(),
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }

    /// Panics unless the command succeeded.
    #[track_caller]
    fn ok(self) -> CmdOut {
        assert!(self.success, "command failed: {}", self.describe());
        self
    }
}

/// Runs a command without blocking the runtime (the load keeps running).
async fn run_command(
    env: &Env,
    program: &std::path::Path,
    args: &[&str],
    vars: &[(&str, String)],
    stdin: Option<&str>,
) -> CmdOut {
    let line = std::iter::once(program.display().to_string())
        .chain(args.iter().map(|a| a.to_string()))
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{line}`: {e}"));
    if let Some(input) = stdin {
        use tokio::io::AsyncWriteExt;
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(input.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("writing the stdin of `{line}`: {e}"));
        drop(pipe);
    }
    let out = child
        .wait_with_output()
        .await
        .unwrap_or_else(|e| panic!("waiting for `{line}`: {e}"));
    let result = CmdOut {
        line,
        success: out.status.success(),
        status: out.status.to_string(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: started.elapsed(),
    };
    env.log_command(&format!("==== {}\n", result.describe()));
    result
}

/// On the first panic (of the test or of any of its tasks): the cluster's state
/// to stderr and to `cluster-diagnostics.log`.
fn install_panic_hook(env: Env) {
    let default = std::panic::take_hook();
    let dumped = AtomicBool::new(false);
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        if !dumped.swap(true, Ordering::SeqCst) {
            dump_diagnostics(&env, &info.to_string());
        }
    }));
}

/// Blocking on purpose: it runs in the panic hook.
fn dump_diagnostics(env: &Env, why: &str) {
    let kubectl = |args: &[&str]| -> String {
        match std::process::Command::new(&env.kubectl)
            .arg("--request-timeout=15s")
            .args(args)
            .stdin(Stdio::null())
            .output()
        {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("cannot run kubectl: {e}\n"),
        }
    };
    let tail = |text: String, n: usize| -> String {
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    };
    let mut out = format!("==== cluster diagnostics after: {why}\n");
    for (title, args) in [
        ("nodes", vec!["get", "nodes", "-o", "wide"]),
        ("pods", vec!["get", "pods", "-A", "-o", "wide"]),
        (
            "release objects",
            vec![
                "get",
                "statefulsets,deployments,services,endpointslices,pvc,pdb",
                "-n",
                NS,
                "-o",
                "wide",
            ],
        ),
        ("volumes", vec!["get", "pv", "-o", "wide"]),
        (
            "topics and groups",
            vec!["get", "topics,consumergroups", "-A", "-o", "yaml"],
        ),
        (
            "broker statefulset status",
            vec![
                "get",
                "statefulset",
                STS,
                "-n",
                NS,
                "-o",
                "jsonpath={.status}",
            ],
        ),
    ] {
        out.push_str(&format!("---- {title}\n{}\n", kubectl(&args)));
    }
    out.push_str(&format!(
        "---- events (last 80)\n{}\n",
        tail(
            kubectl(&["get", "events", "-A", "--sort-by=.lastTimestamp"]),
            80
        )
    ));
    for selector in [BROKER_SELECTOR, OPERATOR_SELECTOR] {
        out.push_str(&format!(
            "---- logs of {selector} (last 40 lines each)\n{}\n",
            kubectl(&[
                "logs",
                "-n",
                NS,
                "-l",
                selector,
                "--tail=40",
                "--prefix",
                "--all-containers",
                "--max-log-requests=10",
            ])
        ));
    }
    out.push_str(&format!(
        "---- helm test pod log\n{}\n",
        tail(
            kubectl(&["logs", "-n", NS, "dduomq-helm-test", "--tail=40"]),
            40
        )
    ));
    eprintln!("{out}");
    let _ = std::fs::write(env.work.join("cluster-diagnostics.log"), &out);
}

fn ready_condition(conditions: &[Condition]) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

// ---- brokers as Kubernetes sees them ------------------------------------------------------

/// A broker pod.
#[derive(Debug, Clone)]
struct BrokerPod {
    name: String,
    ordinal: u32,
    uid: String,
    ip: Option<String>,
    ready: bool,
    terminating: bool,
    restarts: i32,
    container_id: Option<String>,
    claim: Option<String>,
    revision: Option<String>,
    rollme: Option<String>,
}

impl BrokerPod {
    fn of(p: &Pod) -> BrokerPod {
        let name = p.name_any();
        let ordinal = p
            .labels()
            .get("apps.kubernetes.io/pod-index")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| ordinal_of(&name));
        let status = p.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let container = status
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.name == "broker"));
        BrokerPod {
            ordinal,
            uid: p.uid().unwrap_or_default(),
            ip: status.and_then(|s| s.pod_ip.clone()),
            ready,
            terminating: p.metadata.deletion_timestamp.is_some(),
            restarts: container.map_or(0, |c| c.restart_count),
            container_id: container.and_then(|c| c.container_id.clone()),
            claim: p
                .spec
                .as_ref()
                .and_then(|s| s.volumes.as_ref())
                .and_then(|v| v.iter().find(|v| v.name == "data"))
                .and_then(|v| v.persistent_volume_claim.as_ref())
                .map(|c| c.claim_name.clone()),
            revision: p.labels().get("controller-revision-hash").cloned(),
            rollme: p.annotations().get("rollme").cloned(),
            name,
        }
    }

    /// Ready and not being deleted: where clients may go.
    fn serving(&self) -> bool {
        self.ready && !self.terminating && self.ip.is_some()
    }

    fn addr(&self) -> Option<String> {
        self.ip.as_ref().map(|ip| addr(ip))
    }

    /// The host pid of the broker process, from `containerID: dduomq-e2e://<pid>`.
    fn pid(&self) -> i32 {
        let id = self
            .container_id
            .as_deref()
            .unwrap_or_else(|| panic!("{} has no containerID: {self:?}", self.name));
        let pid: i32 = id
            .strip_prefix("dduomq-e2e://")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "{}: containerID {id:?} is not dduomq-e2e://<pid>",
                    self.name
                )
            });
        assert!(
            pid > 1,
            "{}: containerID {id:?} names no process",
            self.name
        );
        pid
    }
}

fn ordinal_of(name: &str) -> u32 {
    name.rsplit('-')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(u32::MAX)
}

fn addr(ip: &str) -> String {
    format!("{ip}:{GRPC_PORT}")
}

fn pod_name(ordinal: u32) -> String {
    format!("{STS}-{ordinal}")
}

fn claim_name(ordinal: u32) -> String {
    format!("data-{STS}-{ordinal}")
}

async fn broker_pods(client: &Client) -> kube::Result<Vec<BrokerPod>> {
    let list = Api::<Pod>::namespaced(client.clone(), NS)
        .list(&ListParams::default().labels(BROKER_SELECTOR))
        .await?;
    let mut pods: Vec<BrokerPod> = list.items.iter().map(BrokerPod::of).collect();
    pods.sort_by_key(|p| p.ordinal);
    Ok(pods)
}

async fn broker_pod(client: &Client, ordinal: u32) -> Option<BrokerPod> {
    Api::<Pod>::namespaced(client.clone(), NS)
        .get_opt(&pod_name(ordinal))
        .await
        .ok()
        .flatten()
        .map(|p| BrokerPod::of(&p))
}

/// The broker pods, refreshed every 500 ms in the background.
#[derive(Debug, Default)]
struct View {
    pods: Mutex<Vec<BrokerPod>>,
    stop: AtomicBool,
}

impl View {
    async fn start(client: Client) -> Arc<View> {
        let view = Arc::new(View::default());
        *view.pods.lock() = broker_pods(&client).await.expect("listing the broker pods");
        let v = view.clone();
        tokio::spawn(async move {
            while !v.stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if let Ok(pods) = broker_pods(&client).await {
                    *v.pods.lock() = pods;
                }
            }
        });
        view
    }

    fn pods(&self) -> Vec<BrokerPod> {
        self.pods.lock().clone()
    }

    /// `ip:port` of the serving brokers, by ordinal.
    fn serving(&self) -> Vec<String> {
        self.pods
            .lock()
            .iter()
            .filter(|p| p.serving())
            .filter_map(BrokerPod::addr)
            .collect()
    }

    fn ordinal_of_addr(&self, address: &str) -> Option<u32> {
        self.pods
            .lock()
            .iter()
            .find(|p| p.addr().as_deref() == Some(address))
            .map(|p| p.ordinal)
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

// ---- routes -------------------------------------------------------------------

/// A topic route as queue sets per broker address.
#[derive(Debug, Clone, Default, PartialEq)]
struct RouteView {
    epoch: u64,
    writable: BTreeMap<String, BTreeSet<u32>>,
    readable: BTreeMap<String, BTreeSet<u32>>,
    /// Writable entries per queue id (each queue should be written on one broker).
    writers_per_queue: BTreeMap<u32, usize>,
}

impl RouteView {
    fn of(r: &pb::QueryRouteResponse) -> RouteView {
        let mut v = RouteView {
            epoch: r.epoch,
            ..RouteView::default()
        };
        for q in &r.queues {
            if q.writable {
                v.writable
                    .entry(q.broker_address.clone())
                    .or_default()
                    .insert(q.queue_id);
                *v.writers_per_queue.entry(q.queue_id).or_default() += 1;
            }
            if q.readable {
                v.readable
                    .entry(q.broker_address.clone())
                    .or_default()
                    .insert(q.queue_id);
            }
        }
        v
    }

    /// Published by the operator, every queue written on exactly one broker, and
    /// the writers exactly `brokers`.
    fn balanced_over(&self, brokers: &[String]) -> bool {
        let writers: BTreeSet<&String> = self.writable.keys().collect();
        let expected: BTreeSet<&String> = brokers.iter().collect();
        self.epoch > 0
            && writers == expected
            && self.writers_per_queue.len() == QUEUES as usize
            && self.writers_per_queue.values().all(|n| *n == 1)
    }

    fn writes_on(&self, address: &str) -> usize {
        self.writable.get(address).map_or(0, BTreeSet::len)
    }
}

/// QueryRoute for the topic, as a client asks it.
async fn query_route(address: &str) -> Result<RouteView, String> {
    let call = async {
        let mut c = pb::messaging_service_client::MessagingServiceClient::connect(format!(
            "http://{address}"
        ))
        .await
        .map_err(|e| format!("connect: {e}"))?;
        c.query_route(pb::QueryRouteRequest {
            topic: TOPIC.into(),
        })
        .await
        .map(|r| RouteView::of(&r.into_inner()))
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    };
    tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .unwrap_or_else(|_| Err("no answer within 5s".into()))
}

/// Waits until exactly `n` brokers serve and every one of them answers a route
/// that spreads the write queues over exactly those `n`. Returns that route, how
/// long it took, and the QueryRoute errors seen meanwhile.
async fn wait_balanced(
    view: &View,
    n: usize,
    timeout: Duration,
) -> (RouteView, Duration, Vec<String>) {
    let started = Instant::now();
    let mut errors: Vec<String> = Vec::new();
    let mut last: Option<RouteView> = None;
    loop {
        let pods = view.pods();
        let serving = view.serving();
        if serving.len() == n && pods.len() == n {
            let mut all = true;
            for a in &serving {
                match query_route(a).await {
                    Ok(r) => {
                        all &= r.balanced_over(&serving);
                        last = Some(r);
                    }
                    Err(e) => {
                        if errors.len() < 20 {
                            errors
                                .push(format!("{:.1}s {a}: {e}", started.elapsed().as_secs_f64()));
                        }
                        all = false;
                    }
                }
            }
            if all && let Some(r) = last.clone() {
                return (r, started.elapsed(), errors);
            }
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for a route balanced over {n} serving brokers; \
             serving {serving:?}; pods {pods:#?}; last route {last:?}; route errors {errors:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Messages of the topic stored on a broker (all queues).
async fn stored_on(address: &str) -> u64 {
    let d = Admin::connect(address)
        .expect("admin client")
        .describe_topic(TOPIC)
        .await
        .unwrap_or_else(|e| panic!("DescribeTopic {TOPIC} on {address}: {e}"));
    d.queues.iter().map(|q| q.max_offset).sum()
}

// ---- clients that follow the cluster -------------------------------------------------

fn build_producer(bootstrap: &str) -> Producer {
    ProducerBuilder::new(bootstrap)
        // Follow route changes (a broker leaving or joining) within a second.
        .route_ttl(Duration::from_secs(1))
        .send_timeout(Duration::from_secs(10))
        .build()
        .expect("producer")
}

/// The client Service's address (`<ClusterIP>:6086`). Clients bootstrap
/// through it, as an application in the cluster would: the test kubelet
/// proxies the ClusterIP to the ready brokers, so a new connection never lands
/// on a broker that is gone.
async fn service_address(client: &Client) -> String {
    let service = Api::<Service>::namespaced(client.clone(), NS)
        .get(CLIENT_SERVICE)
        .await
        .expect("the client Service");
    let cluster_ip = service
        .spec
        .and_then(|s| s.cluster_ip)
        .filter(|ip| !ip.is_empty() && ip != "None")
        .expect("the client Service has a ClusterIP");
    addr(&cluster_ip)
}

async fn start_consumer(
    bootstrap: &str,
    ledger: &Arc<Ledger>,
) -> dduomq_client::Result<PushConsumer> {
    let sink = ledger.clone();
    PushConsumerBuilder::new(bootstrap, GROUP, TOPIC)
        .concurrency(64)
        .max_in_flight(1024)
        .start(move |m: ReceivedMessage| {
            let sink = sink.clone();
            async move {
                sink.deliver(&m);
                Ok::<(), std::convert::Infallible>(())
            }
        })
        .await
}

/// The group's push consumer (one stream per broker, following the route).
async fn group_consumer(bootstrap: &str, ledger: Arc<Ledger>) -> PushConsumer {
    eventually(
        Duration::from_secs(60),
        "the push consumer to start",
        async || match start_consumer(bootstrap, &ledger).await {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("    consumer not started yet: {e}");
                None
            }
        },
    )
    .await
}

// ---- the scenarios ------------------------------------------------------------------

struct Cluster {
    env: Env,
    client: Client,
    report: Report,
    ledger: Arc<Ledger>,
}

impl Cluster {
    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), NS)
    }

    async fn statefulset(&self) -> StatefulSet {
        Api::<StatefulSet>::namespaced(self.client.clone(), NS)
            .get(STS)
            .await
            .expect("the broker StatefulSet")
    }

    async fn claim(&self, ordinal: u32) -> Option<PersistentVolumeClaim> {
        Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), NS)
            .get_opt(&claim_name(ordinal))
            .await
            .expect("get PVC")
    }

    async fn helm_upgrade(&self, sets: &[&str]) -> CmdOut {
        let chart = self.env.chart();
        let mut args = vec![
            "upgrade",
            RELEASE,
            &chart,
            "-n",
            NS,
            "--reuse-values",
            "--wait",
            "--timeout",
            "5m",
        ];
        args.extend_from_slice(sets);
        self.env.helm_ok(&args).await
    }

    /// Scenario 1.
    async fn install(&self) {
        let step = Step::start(
            &self.report,
            "1-install",
            "helm install → 3 brokers and the operator Ready; helm test passes",
        );
        let values = self.env.work.join("cluster-values.yaml");
        std::fs::write(&values, VALUES).expect("write the values file");
        let values = values.display().to_string();
        let chart = self.env.chart();
        let t = Instant::now();
        self.env
            .helm_ok(&[
                "install",
                RELEASE,
                &chart,
                "-n",
                NS,
                "--create-namespace",
                "--set",
                "broker.flush=sync",
                "--set",
                "operator.resync=5s",
                "-f",
                &values,
                "--wait",
                "--timeout",
                "5m",
            ])
            .await;
        let to_ready = t.elapsed();

        let pods = broker_pods(&self.client).await.expect("broker pods");
        assert_eq!(
            pods.iter().map(|p| p.ordinal).collect::<Vec<_>>(),
            vec![0, 1, 2],
            "{pods:#?}"
        );
        assert!(pods.iter().all(BrokerPod::serving), "{pods:#?}");
        let sts = self.statefulset().await;
        assert_eq!(sts.status.as_ref().and_then(|s| s.ready_replicas), Some(3));
        let operator = Api::<Deployment>::namespaced(self.client.clone(), NS)
            .get(OPERATOR)
            .await
            .expect("the operator Deployment");
        assert_eq!(
            operator.status.as_ref().and_then(|s| s.available_replicas),
            Some(1),
            "operator status {:?}",
            operator.status
        );
        let operator_pods = self
            .pods()
            .list(&ListParams::default().labels(OPERATOR_SELECTOR))
            .await
            .expect("operator pods");
        assert_eq!(operator_pods.items.len(), 1);
        for p in &pods {
            let claim = self.claim(p.ordinal).await.expect("the broker's PVC");
            assert_eq!(
                claim.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Bound"),
                "{}",
                claim.name_any()
            );
            assert_eq!(p.claim.as_deref(), Some(claim_name(p.ordinal).as_str()));
            // The broker id comes from the pod-index label through the downward API.
            let info = Admin::connect(&p.addr().expect("pod IP"))
                .expect("admin client")
                .broker_info()
                .await
                .unwrap_or_else(|e| panic!("BrokerInfo of {}: {e}", p.name));
            assert_eq!(info.broker_id, p.ordinal, "{}", p.name);
            assert_eq!(info.flush_mode, "sync", "{}", p.name);
        }
        step.set("helm_install_to_ready_s", secs(to_ready));

        let t = Instant::now();
        let out = self
            .env
            .helm(&["test", RELEASE, "-n", NS, "--timeout", "5m"])
            .await;
        if !out.success {
            let logs = self
                .env
                .kubectl(&["logs", "-n", NS, "dduomq-helm-test", "--tail=50"], None)
                .await;
            panic!(
                "helm test failed: {}\n--- test pod log\n{}{}",
                out.describe(),
                logs.stdout,
                logs.stderr
            );
        }
        step.set("helm_test_s", secs(t.elapsed()));
        step.done();
    }

    /// Scenario 2. Returns the group's consumer, which runs until scenario 7.
    async fn bulk(&self, view: &Arc<View>) -> PushConsumer {
        let key = "2-topic-and-100k";
        let step = Step::start(
            &self.report,
            key,
            "kubectl apply a Topic and a ConsumerGroup → Ready; 100k messages produced and consumed byte-exact",
        );
        let manifest = format!(
            "apiVersion: dduomq.io/v1alpha1\nkind: Topic\nmetadata:\n  name: {TOPIC}\n  namespace: {NS}\n\
             spec:\n  queues: {QUEUES}\n  messageType: Normal\n  deletionPolicy: Delete\n---\n\
             apiVersion: dduomq.io/v1alpha1\nkind: ConsumerGroup\nmetadata:\n  name: {GROUP}\n  namespace: {NS}\n\
             spec:\n  subscriptions:\n    - topic: {TOPIC}\n  consumeMode: Clustering\n  maxDeliveryAttempts: 16\n  retryBackoff: [\"1s\"]\n"
        );
        let t = Instant::now();
        self.env
            .kubectl_ok(&["apply", "-f", "-"], Some(&manifest))
            .await;
        let topics: Api<Topic> = Api::namespaced(self.client.clone(), NS);
        let groups: Api<ConsumerGroup> = Api::namespaced(self.client.clone(), NS);
        let status = eventually(
            Duration::from_secs(60),
            "the Topic Ready on 3 brokers",
            async || {
                let s = topics.get(TOPIC).await.ok()?.status?;
                (ready_condition(&s.conditions) && s.broker_count == 3).then_some(s)
            },
        )
        .await;
        assert_eq!(status.assignment.len(), QUEUES as usize, "{status:?}");
        eventually(
            Duration::from_secs(60),
            "the ConsumerGroup Ready",
            async || {
                let s = groups.get(GROUP).await.ok()?.status?;
                ready_condition(&s.conditions).then_some(())
            },
        )
        .await;
        let (route, _, _) = wait_balanced(view, 3, Duration::from_secs(60)).await;
        let ready_s = t.elapsed();
        step.set("topic_and_group_ready_s", secs(ready_s));
        step.set("route", format!("{:?}", route.writable));

        let consumer =
            group_consumer(&service_address(&self.client).await, self.ledger.clone()).await;

        let producer = build_producer(&service_address(&self.client).await);
        let first = self.ledger.allocated();
        assert_eq!(first, 0);
        let t = Instant::now();
        let ledger = &self.ledger;
        let sends = futures::stream::iter(0..BULK)
            .map(|_| {
                let index = ledger.allocate();
                let producer = producer.clone();
                async move {
                    let result = producer.send(Message::new(TOPIC, body_of(index))).await;
                    (index, result)
                }
            })
            .buffer_unordered(BULK_CONCURRENCY)
            .for_each(|(index, result)| {
                ledger.record(index, &result, None);
                async {}
            });
        tokio::time::timeout(Duration::from_secs(600), sends)
            .await
            .expect("100k sends within 10 minutes");
        let produce = t.elapsed();
        let failed = self.ledger.failed_in(0..BULK);
        assert!(
            failed.is_empty(),
            "{} of {BULK} sends failed; first: {:?}",
            failed.len(),
            failed.iter().take(5).map(|f| &f.error).collect::<Vec<_>>()
        );
        all_acked_consumed(&self.ledger, "the 100k messages", Duration::from_secs(600)).await;
        let consumed = t.elapsed();
        // No failure happened: exactly once.
        let wrong: Vec<(u64, u32)> = (0..BULK)
            .filter_map(|i| {
                let n = self.ledger.deliveries(i);
                (n != 1).then_some((i, n))
            })
            .take(20)
            .collect();
        assert!(
            wrong.is_empty(),
            "every message delivered exactly once; (index, deliveries): {wrong:?}"
        );
        let per_broker = self.ledger.acked_per_broker();
        assert_eq!(
            per_broker.keys().copied().collect::<Vec<_>>(),
            vec![0, 1, 2],
            "every broker took writes: {per_broker:?}"
        );
        step.set("produce_s", secs(produce));
        step.set(
            "produce_msgs_per_s",
            (BULK as f64 / produce.as_secs_f64()).round(),
        );
        step.set("all_consumed_after_s", secs(consumed));
        step.set("acked_per_broker_id", json!(per_broker));
        step.done();
        consumer
    }

    /// Scenario 3.
    async fn scale_out(&self, view: &Arc<View>) {
        let key = "3-scale-out";
        let step = Step::start(
            &self.report,
            key,
            "scale 3 → 5: write queues placed on the new brokers, and producers use them",
        );
        let t = Instant::now();
        let env = self.env.clone();
        let chart = env.chart();
        let helm = tokio::spawn(async move {
            env.helm_ok(&[
                "upgrade",
                RELEASE,
                &chart,
                "-n",
                NS,
                "--reuse-values",
                "--set",
                "broker.replicas=5",
                "--wait",
                "--timeout",
                "5m",
            ])
            .await
        });
        let (route, _, errors) = wait_balanced(view, 5, Duration::from_secs(300)).await;
        // From the scale command to a route that writes on all five brokers.
        let rebalance = t.elapsed();
        let helm_took = helm.await.expect("helm upgrade task").took;
        let per_ordinal: BTreeMap<u32, usize> = route
            .writable
            .iter()
            .map(|(a, qs)| (view.ordinal_of_addr(a).unwrap_or(u32::MAX), qs.len()))
            .collect();
        assert_eq!(
            per_ordinal.keys().copied().collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4],
            "{route:?}"
        );
        let topics: Api<Topic> = Api::namespaced(self.client.clone(), NS);
        let status = eventually(
            Duration::from_secs(60),
            "the Topic status to assign queues to brokers 3 and 4",
            async || {
                let s = topics.get(TOPIC).await.ok()?.status?;
                let owners: BTreeSet<&str> =
                    s.assignment.iter().map(|a| a.broker.as_str()).collect();
                (s.broker_count == 5
                    && owners.contains(pod_name(3).as_str())
                    && owners.contains(pod_name(4).as_str()))
                .then_some(s)
            },
        )
        .await;
        assert!(ready_condition(&status.conditions), "{status:?}");
        for p in view.pods() {
            let claim = self.claim(p.ordinal).await.expect("PVC of a new broker");
            assert_eq!(
                claim.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Bound")
            );
        }

        // A producer writes to the new brokers.
        let new: Vec<String> = view
            .pods()
            .iter()
            .filter(|p| p.ordinal >= 3)
            .filter_map(BrokerPod::addr)
            .collect();
        let before: Vec<u64> = futures::future::join_all(new.iter().map(|a| stored_on(a))).await;
        let producer = build_producer(&service_address(&self.client).await);
        let ledger = &self.ledger;
        let receipts: Vec<(u64, Result<SendReceipt, ClientError>)> = futures::stream::iter(0..400)
            .map(|_| {
                let index = ledger.allocate();
                let producer = producer.clone();
                async move {
                    (
                        index,
                        producer.send(Message::new(TOPIC, body_of(index))).await,
                    )
                }
            })
            .buffer_unordered(64)
            .collect()
            .await;
        let mut per_broker: BTreeMap<u32, usize> = BTreeMap::new();
        for (index, r) in &receipts {
            ledger.record(*index, r, None);
            let receipt = r
                .as_ref()
                .unwrap_or_else(|e| panic!("a send after the scale-out failed: {e}"));
            *per_broker
                .entry(broker_of(&receipt.message_id).unwrap_or(u32::MAX))
                .or_default() += 1;
        }
        assert_eq!(
            per_broker.keys().copied().collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4],
            "sends spread over all five brokers: {per_broker:?}"
        );
        let after: Vec<u64> = futures::future::join_all(new.iter().map(|a| stored_on(a))).await;
        for ((a, b), address) in after.iter().zip(&before).zip(&new) {
            assert!(
                a > b,
                "broker {address} stored none of the sends ({b} → {a})"
            );
        }
        let consumed = all_acked_consumed(
            &self.ledger,
            "messages on the new brokers",
            Duration::from_secs(120),
        )
        .await;
        assert_eq!(self.ledger.duplicates(), 0, "no failure, no redelivery");

        step.set("rebalance_s", secs(rebalance));
        step.set("helm_upgrade_s", secs(helm_took));
        step.set("write_queues_per_broker_id", json!(per_ordinal));
        step.set("sends_per_broker_id", json!(per_broker));
        step.set("consumed_after_s", secs(consumed));
        step.set("route_errors_during_rebalance", json!(errors));
        step.done();
    }

    /// Scenario 4.
    async fn disruptions(&self, view: &Arc<View>, producer: &Producer) {
        let key = "4-pod-delete-and-sigkill";
        let step = Step::start(
            &self.report,
            key,
            "under load: broker pods deleted and broker processes SIGKILLed → back on the same volume, nothing acknowledged lost",
        );
        #[derive(Debug, Clone, Copy, PartialEq)]
        enum Disruption {
            Delete,
            Kill,
        }
        let plan = [
            (Disruption::Delete, 1),
            (Disruption::Kill, 2),
            (Disruption::Delete, 3),
            (Disruption::Kill, 0),
        ];
        let load = Load::start(producer.clone(), self.ledger.clone(), LOAD);
        acks_flowing(&self.ledger, 200).await;
        let mut rounds = Vec::new();
        for (round, (what, ordinal)) in plan.into_iter().enumerate() {
            let before = broker_pod(&self.client, ordinal)
                .await
                .unwrap_or_else(|| panic!("{} is missing", pod_name(ordinal)));
            assert!(before.serving(), "{before:?}");
            let victim = before.addr().expect("pod IP");
            let claim_before = self.claim(ordinal).await.expect("the broker's PVC");
            let observer = view
                .serving()
                .into_iter()
                .find(|a| *a != victim)
                .expect("another serving broker");

            eprintln!(
                "    round {}: {what:?} {} ({victim}, pid {:?})",
                round + 1,
                before.name,
                before.container_id
            );
            let t = Instant::now();
            match what {
                Disruption::Delete => {
                    self.pods()
                        .delete(&before.name, &DeleteParams::default())
                        .await
                        .unwrap_or_else(|e| panic!("deleting {}: {e}", before.name));
                }
                Disruption::Kill => sigkill(&before),
            }
            let mut left_route = false;
            let mut ips = BTreeSet::new();
            let after = loop {
                if let Ok(r) = query_route(&observer).await
                    && r.epoch > 0
                    && r.writes_on(&victim) == 0
                {
                    left_route = true;
                }
                if let Some(p) = broker_pod(&self.client, ordinal).await {
                    let back = match what {
                        Disruption::Delete => p.uid != before.uid,
                        Disruption::Kill => p.uid == before.uid && p.restarts > before.restarts,
                    };
                    if let Some(ip) = &p.ip {
                        ips.insert(ip.clone());
                    }
                    if back && p.serving() {
                        break p;
                    }
                }
                assert!(
                    t.elapsed() < Duration::from_secs(180),
                    "{} did not come back Ready within 180s after {what:?}",
                    before.name
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            let downtime = t.elapsed();
            // Same volume: the same claim object, bound to the same volume.
            let claim_after = self.claim(ordinal).await.expect("the broker's PVC");
            assert_eq!(
                claim_after.uid(),
                claim_before.uid(),
                "{} got a new claim",
                after.name
            );
            assert_eq!(
                claim_after
                    .spec
                    .as_ref()
                    .and_then(|s| s.volume_name.clone()),
                claim_before
                    .spec
                    .as_ref()
                    .and_then(|s| s.volume_name.clone()),
                "{}'s claim was bound to another volume",
                after.name
            );
            assert_eq!(after.claim.as_deref(), Some(claim_name(ordinal).as_str()));
            if what == Disruption::Kill {
                assert_ne!(
                    after.container_id, before.container_id,
                    "a new process after SIGKILL"
                );
            }
            // Producers kept going while the broker was down.
            let acks_meanwhile = self.ledger.acks_between(t, t + downtime);
            if downtime >= Duration::from_secs(2) {
                assert!(
                    acks_meanwhile > 0,
                    "no send was acknowledged in the {downtime:?} {} was down",
                    after.name
                );
            }
            let (_, healed, _) = wait_balanced(view, 5, Duration::from_secs(120)).await;
            eprintln!(
                "    back Ready after {:.1}s (IP {:?}), route balanced again after {:.1}s, {acks_meanwhile} acks meanwhile, left the write route: {left_route}",
                downtime.as_secs_f64(),
                after.ip,
                healed.as_secs_f64()
            );
            rounds.push(json!({
                "disruption": format!("{what:?}"),
                "broker": after.name,
                "back_ready_s": secs(downtime),
                "route_balanced_after_s": secs(healed),
                "acks_while_down": acks_meanwhile,
                "left_write_route": left_route,
                "pod_ips": ips,
                "restart_count": after.restarts,
            }));
            // Let the load run on the healed cluster before the next disruption.
            acks_flowing(&self.ledger, 400).await;
        }
        let stats = load.stop(&self.ledger).await;
        let consumed = all_acked_consumed(
            &self.ledger,
            "every acknowledged message after the disruptions",
            Duration::from_secs(300),
        )
        .await;
        stats.record(&step);
        step.set("consumed_after_stop_s", secs(consumed));
        step.set("duplicates_so_far", self.ledger.duplicates() as u64);
        step.set(
            "delivered_unacked_so_far",
            self.ledger.delivered_unacked() as u64,
        );
        step.set("rounds", json!(rounds));
        step.done();
    }

    /// `dduomq broker drain ARGS` against `broker`; its JSON answer.
    async fn drain(&self, broker: &str, args: &[&str]) -> Value {
        let mut cli = vec!["--server", broker, "-o", "json", "broker", "drain"];
        cli.extend_from_slice(args);
        let out = self.env.cli(&cli).await.ok();
        serde_json::from_str(out.stdout.trim()).expect("drain JSON")
    }

    /// Scenario 5.
    async fn drain_and_scale_in(&self, view: &Arc<View>, producer: &Producer) {
        let key = "5-drain-scale-in";
        let step = Step::start(
            &self.report,
            key,
            "drain broker 4, then scale 5 → 4: no unconsumed message lost",
        );
        let draining = broker_pod(&self.client, 4)
            .await
            .expect("dduomq-broker-4")
            .addr()
            .expect("pod IP");
        let load = Load::start(producer.clone(), self.ledger.clone(), LOAD);
        acks_flowing(&self.ledger, 400).await;

        let t = Instant::now();
        let answer = self.drain(&draining, &["--no-wait"]).await;
        assert_eq!(answer["draining"], true, "{answer}");
        // The operator moves the write queues off the draining broker.
        let others: Vec<String> = view
            .serving()
            .into_iter()
            .filter(|a| *a != draining)
            .collect();
        let observer = others[0].clone();
        let route = eventually(
            Duration::from_secs(60),
            "the write queues to leave the draining broker",
            async || {
                let r = query_route(&observer).await.ok()?;
                (r.writes_on(&draining) == 0 && r.balanced_over(&others)).then_some(r)
            },
        )
        .await;
        let moved = t.elapsed();
        // Producers refresh their routes every second; sends to broker 4 already
        // in flight finish within moments.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let stored_drained = stored_on(&draining).await;
        let answer = self.drain(&draining, &["--timeout", "180s"]).await;
        assert_eq!(answer["drained"], true, "{answer}");
        assert_eq!(answer["unconsumed_messages"], 0, "{answer}");
        let drained = t.elapsed();
        let info = Admin::connect(&draining)
            .expect("admin client")
            .broker_info()
            .await
            .expect("BrokerInfo of the drained broker");
        assert!(info.draining);
        assert_eq!(info.unconsumed_messages, 0);
        assert_eq!(
            stored_on(&draining).await,
            stored_drained,
            "a draining broker takes no writes"
        );

        let t_scale = Instant::now();
        self.helm_upgrade(&["--set", "broker.replicas=4"]).await;
        eventually(
            Duration::from_secs(120),
            "dduomq-broker-4 gone",
            async || broker_pod(&self.client, 4).await.is_none().then_some(()),
        )
        .await;
        let scaled = t_scale.elapsed();
        assert!(
            self.claim(4).await.is_some(),
            "whenScaled: Retain keeps data-dduomq-broker-4"
        );
        let (_, balanced, _) = wait_balanced(view, 4, Duration::from_secs(120)).await;
        acks_flowing(&self.ledger, 400).await;
        let stats = load.stop(&self.ledger).await;
        let consumed = all_acked_consumed(
            &self.ledger,
            "every acknowledged message after the scale-in",
            Duration::from_secs(180),
        )
        .await;
        stats.record(&step);
        step.set("write_route_moved_after_s", secs(moved));
        step.set("drained_after_s", secs(drained));
        step.set("stored_on_drained_broker", stored_drained);
        step.set("scale_in_s", secs(scaled));
        step.set("route_over_4_after_s", secs(balanced));
        step.set("consumed_after_stop_s", secs(consumed));
        step.set("route_while_draining", format!("{:?}", route.writable));
        step.done();
    }

    /// Scenario 6.
    async fn rolling_upgrade(&self, view: &Arc<View>, producer: &Producer) {
        let key = "6-rolling-upgrade";
        let step = Step::start(
            &self.report,
            key,
            "helm upgrade changing the broker pod template under load (rolling restart): nothing acknowledged lost",
        );
        let before = broker_pods(&self.client).await.expect("broker pods");
        assert_eq!(before.len(), 4);
        let revision_before = self
            .statefulset()
            .await
            .status
            .and_then(|s| s.update_revision)
            .expect("updateRevision");
        let mut claims_before = BTreeMap::new();
        for p in &before {
            claims_before.insert(p.ordinal, self.claim(p.ordinal).await.expect("PVC").uid());
        }
        let load = Load::start(producer.clone(), self.ledger.clone(), LOAD);
        acks_flowing(&self.ledger, 400).await;

        let rollme = format!("e2e-{}", chrono::Utc::now().timestamp());
        let t = Instant::now();
        let set = format!("broker.podAnnotations.rollme={rollme}");
        let helm = self.helm_upgrade(&["--set-string", &set]).await;
        let sts = eventually(
            Duration::from_secs(300),
            "the rollout to finish",
            async || {
                let sts = self.statefulset().await;
                let generation = sts.metadata.generation;
                let s = sts.status.clone()?;
                let done = s.observed_generation >= generation
                    && s.replicas == 4
                    && s.updated_replicas == Some(4)
                    && s.ready_replicas == Some(4)
                    && s.current_revision.is_some()
                    && s.current_revision == s.update_revision
                    && s.update_revision.as_deref() != Some(revision_before.as_str());
                done.then_some(sts)
            },
        )
        .await;
        let revision = sts
            .status
            .and_then(|s| s.update_revision)
            .expect("updateRevision");
        let after = eventually(
            Duration::from_secs(120),
            "every broker pod restarted with the new template and Ready",
            async || {
                let pods = broker_pods(&self.client).await.ok()?;
                let done = pods.len() == 4
                    && pods.iter().all(|p| {
                        p.serving()
                            && p.revision.as_deref() == Some(revision.as_str())
                            && p.rollme.as_deref() == Some(rollme.as_str())
                    });
                done.then_some(pods)
            },
        )
        .await;
        let rollout = t.elapsed();
        for (b, a) in before.iter().zip(&after) {
            assert_eq!(b.ordinal, a.ordinal);
            assert_ne!(b.uid, a.uid, "{} was not replaced", a.name);
            assert_eq!(
                self.claim(a.ordinal).await.expect("PVC").uid(),
                claims_before[&a.ordinal],
                "{} keeps its claim",
                a.name
            );
        }
        let (_, balanced, _) = wait_balanced(view, 4, Duration::from_secs(120)).await;
        acks_flowing(&self.ledger, 400).await;
        let stats = load.stop(&self.ledger).await;
        let consumed = all_acked_consumed(
            &self.ledger,
            "every acknowledged message after the rolling restart",
            Duration::from_secs(300),
        )
        .await;
        stats.record(&step);
        step.set("rollout_s", secs(rollout));
        step.set("helm_upgrade_s", secs(helm.took));
        step.set("route_balanced_after_s", secs(balanced));
        step.set("consumed_after_stop_s", secs(consumed));
        step.set("duplicates_so_far", self.ledger.duplicates() as u64);
        step.set(
            "delivered_unacked_so_far",
            self.ledger.delivered_unacked() as u64,
        );
        step.done();
    }

    /// Scenario 7.
    async fn teardown(&self) {
        let key = "7-teardown";
        let step = Step::start(
            &self.report,
            key,
            "delete the operator, then the Topics and ConsumerGroups (nothing hangs); helm uninstall (its hook releases a Topic left behind) cleans up",
        );
        let t = Instant::now();
        Api::<Deployment>::namespaced(self.client.clone(), NS)
            .delete(OPERATOR, &DeleteParams::background())
            .await
            .expect("deleting the operator Deployment");
        eventually(
            Duration::from_secs(120),
            "the operator pod gone",
            async || {
                let pods = self
                    .pods()
                    .list(&ListParams::default().labels(OPERATOR_SELECTOR))
                    .await
                    .ok()?;
                pods.items.is_empty().then_some(())
            },
        )
        .await;
        let operator_gone = t.elapsed();

        let topics: Api<Topic> = Api::namespaced(self.client.clone(), NS);
        let groups: Api<ConsumerGroup> = Api::namespaced(self.client.clone(), NS);
        let t = Instant::now();
        let topic_names: Vec<String> = topics
            .list(&ListParams::default())
            .await
            .expect("list Topics")
            .items
            .iter()
            .map(|t| t.name_any())
            .collect();
        let group_names: Vec<String> = groups
            .list(&ListParams::default())
            .await
            .expect("list ConsumerGroups")
            .items
            .iter()
            .map(|g| g.name_any())
            .collect();
        assert!(topic_names.contains(&TOPIC.to_string()), "{topic_names:?}");
        assert!(group_names.contains(&GROUP.to_string()), "{group_names:?}");
        for name in &group_names {
            groups
                .delete(name, &DeleteParams::default())
                .await
                .unwrap_or_else(|e| panic!("deleting ConsumerGroup {name}: {e}"));
        }
        for name in &topic_names {
            topics
                .delete(name, &DeleteParams::default())
                .await
                .unwrap_or_else(|e| panic!("deleting Topic {name}: {e}"));
        }
        let deleted = loop {
            let t_left = with_finalizers(&topics).await;
            let g_left = with_finalizers(&groups).await;
            if t_left.is_empty() && g_left.is_empty() {
                break t.elapsed();
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "Topics/ConsumerGroups still there 60s after their deletion with the operator gone \
                 (finalizer escape hatch): topics {t_left:?}, groups {g_left:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        };

        // `helm uninstall` with the operator running and a Topic left behind
        // (with its finalizer): the chart's pre-delete hook stops the operator
        // and releases the finalizer, so the Topic stays deletable.
        self.helm_upgrade(&[]).await; // brings the operator Deployment back
        let orphan = "e2e-left-behind";
        self.env
            .kubectl_ok(
                &["apply", "-f", "-"],
                Some(&format!(
                    "apiVersion: dduomq.io/v1alpha1\nkind: Topic\nmetadata:\n  name: {orphan}\n  namespace: {NS}\nspec:\n  queues: 1\n"
                )),
            )
            .await;
        let finalizer = "dduomq.io/topic-cleanup";
        eventually(
            Duration::from_secs(60),
            "the operator adds its finalizer",
            async || {
                let t = topics.get(orphan).await.ok()?;
                t.finalizers().iter().any(|f| f == finalizer).then_some(())
            },
        )
        .await;

        let out = self
            .env
            .helm_ok(&["uninstall", RELEASE, "-n", NS, "--wait", "--timeout", "5m"])
            .await;
        let uninstall = out.took;
        let left_behind = topics
            .get(orphan)
            .await
            .expect("the Topic outlives the release");
        assert!(
            !left_behind.finalizers().iter().any(|f| f == finalizer),
            "the uninstall hook released the finalizer: {:?}",
            left_behind.finalizers()
        );
        topics
            .delete(orphan, &DeleteParams::default())
            .await
            .expect("deleting the Topic left behind");
        eventually(
            Duration::from_secs(10),
            "the Topic left behind deleted",
            async || topics.get_opt(orphan).await.ok()?.is_none().then_some(()),
        )
        .await;
        let t = Instant::now();
        eventually(
            Duration::from_secs(180),
            "the release's objects gone",
            async || self.release_leftovers().await.is_empty().then_some(()),
        )
        .await;
        let gone = t.elapsed();
        let releases = self.env.helm_ok(&["list", "-n", NS, "-a", "-q"]).await;
        assert!(
            releases.stdout.trim().is_empty(),
            "helm still lists {:?}",
            releases.stdout
        );

        // The chart retains the brokers' claims (whenDeleted/whenScaled: Retain).
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), NS);
        let mut names: Vec<String> = claims
            .list(&ListParams::default())
            .await
            .expect("list PVCs")
            .items
            .iter()
            .map(|c| c.name_any())
            .collect();
        names.sort();
        assert_eq!(
            names,
            (0..5).map(claim_name).collect::<Vec<_>>(),
            "the brokers' claims are retained"
        );
        for name in &names {
            claims
                .delete(name, &DeleteParams::default())
                .await
                .unwrap_or_else(|e| panic!("deleting PVC {name}: {e}"));
        }
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let t_ns = Instant::now();
        namespaces
            .delete(NS, &DeleteParams::default())
            .await
            .expect("deleting the namespace");
        eventually(Duration::from_secs(180), "the namespace gone", async || {
            namespaces.get_opt(NS).await.ok()?.is_none().then_some(())
        })
        .await;
        let ns_gone = t_ns.elapsed();

        step.set("operator_gone_s", secs(operator_gone));
        step.set("topics_and_groups_deleted_s", secs(deleted));
        step.set("helm_uninstall_s", secs(uninstall));
        step.set("release_objects_gone_after_s", secs(gone));
        step.set("namespace_deleted_s", secs(ns_gone));
        step.done();
    }

    /// What is left of the release in the namespace and the cluster.
    async fn release_leftovers(&self) -> Vec<String> {
        let c = &self.client;
        let all = ListParams::default();
        let release = ListParams::default().labels(RELEASE_SELECTOR);
        let helm_secrets = ListParams::default().labels("owner=helm");
        let keep_none = |_: &str| false;
        let mut left = Vec::new();
        left.extend(names_in::<Pod>(c, "pod", &all, keep_none).await);
        left.extend(names_in::<StatefulSet>(c, "statefulset", &all, keep_none).await);
        left.extend(names_in::<Deployment>(c, "deployment", &all, keep_none).await);
        left.extend(names_in::<Service>(c, "service", &all, keep_none).await);
        left.extend(names_in::<PodDisruptionBudget>(c, "pdb", &all, keep_none).await);
        // Every namespace has kube-root-ca.crt and the default ServiceAccount.
        left.extend(names_in::<ConfigMap>(c, "configmap", &all, |n| n == "kube-root-ca.crt").await);
        left.extend(
            names_in::<ServiceAccount>(c, "serviceaccount", &all, |n| n == "default").await,
        );
        left.extend(names_in::<EndpointSlice>(c, "endpointslice", &release, keep_none).await);
        left.extend(names_in::<Secret>(c, "secret", &helm_secrets, keep_none).await);
        for (kind, gone) in [
            (
                "clusterrole/dduomq-operator",
                Api::<ClusterRole>::all(self.client.clone())
                    .get_opt(OPERATOR)
                    .await
                    .map(|o| o.is_none()),
            ),
            (
                "clusterrolebinding/dduomq-operator",
                Api::<ClusterRoleBinding>::all(self.client.clone())
                    .get_opt(OPERATOR)
                    .await
                    .map(|o| o.is_none()),
            ),
        ] {
            match gone {
                Ok(true) => {}
                Ok(false) => left.push(kind.to_string()),
                Err(e) => left.push(format!("{kind}: {e}")),
            }
        }
        left.sort();
        left
    }
}

/// `kind/name` of the objects in the namespace, but those `keep` accepts.
async fn names_in<K>(
    client: &Client,
    kind: &str,
    params: &ListParams,
    keep: impl Fn(&str) -> bool,
) -> Vec<String>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    match Api::<K>::namespaced(client.clone(), NS).list(params).await {
        Ok(list) => list
            .items
            .iter()
            .map(|o| o.name_any())
            .filter(|n| !keep(n))
            .map(|n| format!("{kind}/{n}"))
            .collect(),
        Err(e) => vec![format!("{kind}: listing failed: {e}")],
    }
}

/// SIGKILL to a broker pod's container process.
/// The objects of `api` still there, with their finalizers.
async fn with_finalizers<K>(api: &Api<K>) -> Vec<String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .iter()
                .map(|o| format!("{} finalizers {:?}", o.name_any(), o.finalizers()))
                .collect()
        })
        .unwrap_or_else(|e| vec![format!("listing failed: {e}")])
}

fn sigkill(pod: &BrokerPod) {
    let pid = pod.pid();
    // Guard against killing anything else than the broker.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_else(|e| panic!("{}: reading /proc/{pid}/cmdline: {e}", pod.name));
    assert!(
        String::from_utf8_lossy(&cmdline).contains("dduomq-broker"),
        "{}: pid {pid} is not a broker: {:?}",
        pod.name,
        String::from_utf8_lossy(&cmdline)
    );
    // SAFETY: kill(2) takes no pointers; the pid (> 1) was checked to be a broker.
    let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(
        rc,
        0,
        "kill -9 {pid} ({}): {}",
        pod.name,
        std::io::Error::last_os_error()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_scenarios() {
    let env = Env::load();
    install_panic_hook(env.clone());
    let client = Client::try_default()
        .await
        .expect("admin kubeconfig (KUBECONFIG)");
    let cluster = Cluster {
        report: Report::new(env.work.join("cluster-report.json")),
        env,
        client: client.clone(),
        ledger: Arc::new(Ledger::new(TOPIC)),
    };
    let suite = Instant::now();

    cluster.install().await;
    let view = View::start(client.clone()).await;
    let consumer = cluster.bulk(&view).await;
    cluster.scale_out(&view).await;
    // The continuous load's producer, bootstrapping through the Service.
    let producer = build_producer(&service_address(&client).await);
    cluster.disruptions(&view, &producer).await;
    cluster.drain_and_scale_in(&view, &producer).await;
    cluster.rolling_upgrade(&view, &producer).await;

    // Every acknowledged message was consumed (checked after each scenario);
    // the consumer stops before the topic goes.
    consumer.shutdown().await;
    let ledger = &cluster.ledger;
    let totals = json!({
        "messages_sent": ledger.allocated(),
        "acked": ledger.acked_count(),
        "failed_sends": ledger.failed_count(),
        "duplicate_deliveries": ledger.duplicates(),
        "delivered_although_send_failed": ledger.delivered_unacked(),
    });
    cluster.report.set("totals", "messages", totals);
    view.stop();
    cluster.teardown().await;

    cluster
        .report
        .set("totals", "suite_s", secs(suite.elapsed()));
    cluster.report.save();
    cluster.report.print_summary();
    eprintln!(
        "cluster scenarios passed in {:.1}s",
        suite.elapsed().as_secs_f64()
    );
}
