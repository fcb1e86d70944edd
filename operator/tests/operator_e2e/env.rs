//! Shared parts of the operator e2e: the environment `e2e/run operator` sets up,
//! broker and operator processes, and observations of the brokers.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dduomq_client::proto as pb;
use dduomq_client::{Admin, PushConsumerBuilder};
use dduomq_testkit::eventually_every;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use parking_lot::Mutex;
use serde_json::json;

pub(crate) const SYSTEM_NS: &str = "dduomq-system";
pub(crate) const APP_NS: &str = "apps";
/// The Deployment the operator checks at SIGTERM (`--deployment`).
pub(crate) const OPERATOR_DEPLOYMENT: &str = "dduomq-operator";

pub(crate) struct Env {
    pub(crate) bin: PathBuf,
    pub(crate) kubectl: PathBuf,
    pub(crate) work: PathBuf,
    pub(crate) operator_kubeconfig: String,
    pub(crate) ips: Vec<String>,
}

impl Env {
    pub(crate) fn load() -> Env {
        let var = |k: &str| {
            std::env::var(k)
                .unwrap_or_else(|_| panic!("{k} is not set: run this test with `e2e/run operator`"))
        };
        Env {
            bin: var("DDUOMQ_E2E_BIN_DIR").into(),
            kubectl: var("DDUOMQ_E2E_KUBECTL").into(),
            work: var("DDUOMQ_E2E_WORK").into(),
            operator_kubeconfig: var("DDUOMQ_E2E_OPERATOR_KUBECONFIG"),
            ips: var("DDUOMQ_E2E_BROKER_IPS")
                .split_whitespace()
                .map(String::from)
                .collect(),
        }
    }

    pub(crate) fn log(&self, name: &str) -> std::fs::File {
        std::fs::File::create(self.work.join(format!("{name}.log"))).unwrap()
    }

    pub(crate) fn start_broker(&self, i: usize) -> Child {
        let ip = &self.ips[i];
        // The brokers share the CI machine's disk: they must not refuse writes
        // because it happens to be nearly full.
        let config = self.work.join("broker.toml");
        std::fs::write(&config, "[store]\ndisk_usage_limit = 1.0\n").unwrap();
        Command::new(self.bin.join("dduomq-broker"))
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(self.work.join(format!("broker-{i}")))
            .args([
                "--grpc-addr",
                &format!("{ip}:6086"),
                "--http-addr",
                &format!("{ip}:7654"),
            ])
            .args([
                "--advertised-address",
                &format!("{ip}:6086"),
                "--broker-id",
                &i.to_string(),
            ])
            .args(["--auto-create-topics", "false"])
            .stdout(self.log(&format!("broker-{i}")))
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start broker")
    }

    pub(crate) fn start_operator(&self, name: &str) -> Child {
        Command::new(self.bin.join("dduomq-operator"))
            .env("KUBECONFIG", &self.operator_kubeconfig)
            // kube_runtime at info shows the controllers' shutdown progress.
            .env("RUST_LOG", "info,kube=warn,kube_runtime=info")
            .args([
                "--namespace",
                SYSTEM_NS,
                "--identity",
                name,
                "--resync",
                "3s",
            ])
            .args(["--http-addr", "127.0.0.1:0"])
            .args(["--deployment", OPERATOR_DEPLOYMENT])
            .stdout(self.log(name))
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start operator")
    }

    pub(crate) fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new(&self.kubectl)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        drop(child.stdin.take());
        child.wait_with_output().unwrap()
    }

    pub(crate) fn grpc(&self, i: usize) -> String {
        format!("{}:6086", self.ips[i])
    }

    /// An admin client of broker `i` in `namespace` (the broker namespace of
    /// the resources in that Kubernetes namespace).
    pub(crate) fn admin_in(&self, i: usize, namespace: &str) -> Admin {
        Admin::connect(&self.grpc(i))
            .unwrap()
            .in_namespace(namespace)
            .unwrap()
    }

    /// An admin client of broker `i` in [`APP_NS`], where the scenario's
    /// resources live.
    pub(crate) fn admin(&self, i: usize) -> Admin {
        self.admin_in(i, APP_NS)
    }
}

/// How often the waits check: the API server and the operator get time to act
/// between two checks.
pub(crate) const POLL: Duration = Duration::from_millis(200);

pub(crate) fn step(name: &str) -> Instant {
    eprintln!("=== {name}");
    Instant::now()
}

/// Publishes the brokers' EndpointSlice with the given readiness.
pub(crate) async fn publish_slice(client: &Client, env: &Env, ready: &[bool]) {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), SYSTEM_NS);
    let endpoints: Vec<_> = env
        .ips
        .iter()
        .zip(ready)
        .enumerate()
        .map(|(i, (ip, r))| json!({"addresses": [ip], "hostname": format!("dduomq-broker-{i}"), "conditions": {"ready": r}}))
        .collect();
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "dduomq-broker-e2e", "labels": {
            "kubernetes.io/service-name": "dduomq-broker",
            "app.kubernetes.io/name": "dduomq", "app.kubernetes.io/component": "broker"}},
        "addressType": "IPv4",
        "ports": [{"name": "grpc", "port": 6086, "protocol": "TCP"}],
        "endpoints": endpoints,
    });
    api.patch(
        "dduomq-broker-e2e",
        &PatchParams::apply("e2e").force(),
        &Patch::Apply(&slice),
    )
    .await
    .unwrap();
}

/// How long an operator may take to exit after SIGTERM: its controllers' 10 s
/// grace period, then the finalizer check and the lease release.
pub(crate) const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// SIGTERM (a graceful stop, as the kubelet sends) to operator `name`, then
/// waits for its exit without blocking the runtime; one that does not exit in
/// time is killed and its log shown.
pub(crate) async fn terminate(env: &Env, name: &str, child: &mut Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + EXIT_TIMEOUT;
    let code = loop {
        if let Some(code) = child.try_wait().unwrap() {
            break code;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(env.work.join(format!("{name}.log")))
                .unwrap_or_else(|e| format!("(no log: {e})"));
            panic!("{name} did not exit within {EXIT_TIMEOUT:?} of SIGTERM; its log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(code.success(), "{name} exited with {code}");
}

pub(crate) fn topic_yaml(name: &str, queues: u32, extra: &str) -> String {
    format!(
        "apiVersion: dduomq.io/v1alpha1\nkind: Topic\nmetadata:\n  name: {name}\n  namespace: {APP_NS}\nspec:\n  queues: {queues}\n{extra}"
    )
}

pub(crate) fn ready(status: Option<&dduomq_operator::crd::TopicStatus>) -> bool {
    status.is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// Queue count of a topic on broker `i` (None: not there).
pub(crate) async fn queues_on(env: &Env, i: usize, topic: &str) -> Option<u32> {
    let d = env.admin(i).describe_topic(topic).await.ok()?;
    Some(d.queues.len() as u32)
}

/// Whether every broker hosts `topic` with `n` queues.
pub(crate) async fn queues_everywhere(env: &Env, topic: &str, n: u32) -> bool {
    for i in 0..env.ips.len() {
        if queues_on(env, i, topic).await != Some(n) {
            return false;
        }
    }
    true
}

/// Messages ever written to `topic` on broker `i`: the sum of its queues' max
/// offsets (None: not there).
pub(crate) async fn messages_on(env: &Env, i: usize, topic: &str) -> Option<u64> {
    let d = env.admin(i).describe_topic(topic).await.ok()?;
    Some(d.queues.iter().map(|q| q.max_offset).sum())
}

/// `(writable, readable)` queue counts per broker address in broker 0's route.
pub(crate) async fn route_on(env: &Env, topic: &str) -> Option<BTreeMap<String, (usize, usize)>> {
    route_in(env, APP_NS, topic).await
}

/// Waits until broker 0 routes writes of `topic` in `namespace`: a Topic is
/// Ready once it is on every broker, and the route publisher's next round
/// (moments later, longer on a loaded machine) makes it routable.
pub(crate) async fn wait_routed(env: &Env, namespace: &str, topic: &str) {
    eventually_every(
        POLL,
        Duration::from_secs(30),
        &format!("a route for {topic} in {namespace}"),
        async || {
            let route = route_in(env, namespace, topic).await?;
            route
                .values()
                .any(|(writable, _)| *writable > 0)
                .then_some(())
        },
    )
    .await;
}

/// [`route_on`] for a topic of `namespace`.
pub(crate) async fn route_in(
    env: &Env,
    namespace: &str,
    topic: &str,
) -> Option<BTreeMap<String, (usize, usize)>> {
    route_via(env, 0, namespace, topic).await
}

/// [`route_in`] as broker `broker` answers it.
pub(crate) async fn route_via(
    env: &Env,
    broker: usize,
    namespace: &str,
    topic: &str,
) -> Option<BTreeMap<String, (usize, usize)>> {
    let mut c = pb::messaging_service_client::MessagingServiceClient::connect(format!(
        "http://{}",
        env.grpc(broker)
    ))
    .await
    .ok()?;
    let mut request = tonic::Request::new(pb::QueryRouteRequest {
        topic: topic.into(),
    });
    request.metadata_mut().insert(
        dduomq_proto::namespace::NAMESPACE_METADATA,
        namespace.parse().unwrap(),
    );
    let r = c.query_route(request).await.ok()?.into_inner();
    if r.epoch == 0 {
        return None;
    }
    let mut out: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for q in r.queues {
        let e = out.entry(q.broker_address).or_default();
        e.0 += q.writable as usize;
        e.1 += q.readable as usize;
    }
    Some(out)
}

pub(crate) async fn total_lag(env: &Env, group: &str) -> u64 {
    let mut lag = 0;
    for i in 0..env.ips.len() {
        if let Ok(d) = env.admin(i).describe_group(group).await {
            lag += d.queues.iter().map(|q| q.lag).sum::<u64>();
        }
    }
    lag
}

/// Consumes `n` messages of `topic` for `group` from every broker.
pub(crate) async fn consume(env: &Env, group: &str, topic: &str, n: usize) -> Vec<String> {
    consume_in(env, APP_NS, group, topic, n).await
}

/// Consumes `n` messages of `topic` of broker namespace `namespace` for
/// `group` from every broker.
pub(crate) async fn consume_in(
    env: &Env,
    namespace: &str,
    group: &str,
    topic: &str,
    n: usize,
) -> Vec<String> {
    consume_via(env, 0, namespace, group, topic, n).await
}

/// [`consume_in`], bootstrapped from broker `broker`.
pub(crate) async fn consume_via(
    env: &Env,
    broker: usize,
    namespace: &str,
    group: &str,
    topic: &str,
    n: usize,
) -> Vec<String> {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = seen.clone();
    let consumer = PushConsumerBuilder::new(env.grpc(broker), group, topic)
        .namespace(namespace)
        .start(move |m| {
            let sink = sink.clone();
            async move {
                sink.lock()
                    .push(String::from_utf8(m.body.to_vec()).unwrap());
                Ok::<(), String>(())
            }
        })
        .await
        .unwrap();
    eventually_every(
        POLL,
        Duration::from_secs(30),
        &format!("{n} messages of {topic}"),
        async || (seen.lock().len() >= n).then_some(()),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    consumer.shutdown().await;
    seen.lock().clone()
}

/// `kubectl apply -f -` of `yaml`; panics with kubectl's stderr if it fails.
pub(crate) fn kubectl_apply(env: &Env, yaml: &str) {
    let out = env.kubectl(&["apply", "-f", "-"], Some(yaml));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
