//! The operator as the replication controller against the real API server:
//! three brokers form one group (replication factor 3, quorum acks); the
//! operator elects a master (its ConfigMap record shows it), sends are
//! acknowledged; the master is SIGKILLed (and its endpoint turns not ready,
//! as the kubelet would report) → a new master with a higher epoch, sends are
//! acknowledged again; the operator is replaced by another one, which renews
//! the master without an election while sends go on; every acknowledged
//! message is consumed exactly.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dduomq_client::{Message, ProducerBuilder};
use dduomq_testkit::eventually_every;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};

use crate::env::*;

const TOPIC: &str = "replicated";
const READERS: &str = "replicated-readers";
const FACTOR: u32 = 3;
/// The group's record (the operator's default broker StatefulSet name).
const RECORD: &str = "dduomq-broker-group-0";

/// Broker `i` as member `i` of group 0, on a fresh data dir.
fn start_member(env: &Env, i: usize) -> Child {
    let ip = &env.ips[i];
    let config = env.work.join("broker-replicated.toml");
    std::fs::write(
        &config,
        format!("[store]\ndisk_usage_limit = 1.0\n[replication]\nfactor = {FACTOR}\n"),
    )
    .unwrap();
    Command::new(env.bin.join("dduomq-broker"))
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(env.work.join(format!("replicated-{i}")))
        .args(["--grpc-addr", &format!("{ip}:6086")])
        .args(["--http-addr", &format!("{ip}:7654")])
        .args(["--advertised-address", &format!("{ip}:6086")])
        .args(["--broker-id", &i.to_string()])
        .args(["--auto-create-topics", "false"])
        .stdout(env.log(&format!("replicated-{i}")))
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start broker")
}

/// The operator as the groups' controller.
fn start_controller(env: &Env, name: &str) -> Child {
    Command::new(env.bin.join("dduomq-operator"))
        .env("KUBECONFIG", &env.operator_kubeconfig)
        .env("RUST_LOG", "info,kube=warn")
        .args(["--namespace", SYSTEM_NS, "--identity", name])
        .args(["--resync", "3s", "--http-addr", "127.0.0.1:0"])
        .args(["--replication-factor", &FACTOR.to_string()])
        .stdout(env.log(name))
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start operator")
}

/// The group's recorded master and epoch, once it has one.
async fn recorded(client: &Client) -> Option<(u32, u64)> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), SYSTEM_NS)
        .get(RECORD)
        .await
        .ok()?;
    let data = cm.data?;
    Some((
        data.get("master")?.parse().ok()?,
        data.get("epoch")?.parse().ok()?,
    ))
}

/// Waits until broker `via` routes every write of the topic to `master`.
async fn routed_to(env: &Env, via: usize, master: usize, queues: usize) {
    eventually_every(
        POLL,
        Duration::from_secs(30),
        &format!("writes routed to broker {master}"),
        async || {
            let route = route_via(env, via, APP_NS, TOPIC).await?;
            (route.get(&env.grpc(master))?.0 == queues).then_some(())
        },
    )
    .await;
}

/// Sends `bodies` through broker `via`'s route; every one must be acknowledged.
async fn send_all(env: &Env, via: usize, bodies: &[String]) {
    let producer = ProducerBuilder::new(env.grpc(via))
        .namespace(APP_NS)
        .build()
        .unwrap();
    for body in bodies {
        producer
            .send(Message::new(TOPIC, body.clone()))
            .await
            .unwrap_or_else(|e| panic!("{body} not acknowledged: {e}"));
    }
}

pub(crate) async fn a_group_fails_over_to_a_new_master_without_losing_acknowledged_messages(
    env: &Env,
    client: &Client,
) {
    step("replication: a group of 3 elects a master; SIGKILL it → a new master, nothing lost");
    let mut members: Vec<Child> = (0..3).map(|i| start_member(env, i)).collect();
    publish_slice(client, env, &[true, true, true]).await;
    let mut operator = start_controller(env, "operator-r");
    kubectl_apply(env, &topic_yaml(TOPIC, 4, ""));
    kubectl_apply(
        env,
        &format!(
            "apiVersion: dduomq.io/v1alpha1\nkind: ConsumerGroup\nmetadata:\n  name: {READERS}\n  namespace: {APP_NS}\nspec:\n  subscriptions:\n  - topic: {TOPIC}\n"
        ),
    );
    // A new group: the first master is whichever reported member is lowest
    // (all logs empty) when the controller first elects, so under load not
    // always member 0.
    let (first, epoch) = eventually_every(
        POLL,
        Duration::from_secs(60),
        "the group's first master recorded",
        async || recorded(client).await,
    )
    .await;
    assert_eq!(epoch, 1);
    // Sends go through a member that is not killed.
    let via = (first as usize + 1) % 3;
    routed_to(env, via, first as usize, 4).await;
    let before: Vec<String> = (0..20).map(|i| format!("before-{i}")).collect();
    send_all(env, via, &before).await;

    let killed = Instant::now();
    members[first as usize].kill().unwrap();
    members[first as usize].wait().unwrap();
    let ready: Vec<bool> = (0..3).map(|m| m != first as usize).collect();
    publish_slice(client, env, &ready).await;
    let (master, epoch) = eventually_every(
        POLL,
        Duration::from_secs(60),
        "a new master recorded",
        async || recorded(client).await.filter(|(m, _)| *m != first),
    )
    .await;
    assert!(epoch > 1, "the new master's epoch {epoch} is not above 1");
    routed_to(env, via, master as usize, 4).await;
    let after: Vec<String> = (0..20).map(|i| format!("after-{i}")).collect();
    send_all(env, via, &after).await;
    eprintln!(
        "    member {first} was the first master; member {master} master of epoch {epoch}; sends acknowledged again {:?} after the kill",
        killed.elapsed()
    );

    // An operator handover: the new leader finds the master acting and
    // renews it; no election, and sends keep being acknowledged throughout
    // (longer than a lease and the new leader's wait).
    terminate(env, "operator-r", &mut operator).await;
    let mut operator = start_controller(env, "operator-s");
    let producer = ProducerBuilder::new(env.grpc(via))
        .namespace(APP_NS)
        .build()
        .unwrap();
    let window = Instant::now();
    let mut handover = Vec::new();
    while window.elapsed() < Duration::from_secs(8) {
        let body = format!("handover-{}", handover.len());
        producer
            .send(Message::new(TOPIC, body.clone()))
            .await
            .unwrap_or_else(|e| panic!("{body} not acknowledged during the handover: {e}"));
        handover.push(body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        recorded(client).await,
        Some((master, epoch)),
        "the new leader elected"
    );

    let total = before.len() + after.len() + handover.len();
    let consumed = consume_via(env, via, APP_NS, READERS, TOPIC, total).await;
    let expected: BTreeSet<String> = before
        .iter()
        .chain(&after)
        .chain(&handover)
        .cloned()
        .collect();
    assert_eq!(consumed.len(), total, "duplicates: {consumed:?}");
    assert_eq!(consumed.into_iter().collect::<BTreeSet<_>>(), expected);

    terminate(env, "operator-s", &mut operator).await;
    for m in &mut members {
        let _ = m.kill();
        let _ = m.wait();
    }
}
