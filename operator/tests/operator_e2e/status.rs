//! Steps about what the resources tell and refuse: printer columns (`kubectl
//! get` with the Ready reason and the group's lag) and specs the API server
//! refuses with a readable message because the brokers could not honour them.

use std::time::Duration;

use dduomq_client::{Message, ProducerBuilder};
use dduomq_operator::crd::{ConsumerGroup, Topic};
use dduomq_testkit::eventually_every;
use kube::Api;
use kube::api::DeleteParams;

use crate::env::*;

/// The whitespace-separated cells of line `line` of `kubectl get` output.
fn cells(text: &str, line: usize) -> Vec<&str> {
    text.lines()
        .nth(line)
        .unwrap_or_default()
        .split_whitespace()
        .collect()
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// `kubectl get topics` shows Ready, Queues and Type; `-o wide` adds the
/// Ready condition's reason and the broker count. Expects Topic `orders` (6
/// NORMAL queues, Ready on 3 brokers) to be the only topic.
pub(crate) async fn topic_columns(env: &Env) {
    let text = ok(&env.kubectl(&["get", "topics", "-n", APP_NS], None));
    assert_eq!(
        cells(&text, 0),
        ["NAME", "READY", "QUEUES", "TYPE", "AGE"],
        "{text}"
    );
    assert_eq!(
        &cells(&text, 1)[..4],
        ["orders", "True", "6", "Normal"],
        "{text}"
    );
    let text = ok(&env.kubectl(&["get", "topics", "-n", APP_NS, "-o", "wide"], None));
    assert_eq!(
        cells(&text, 0),
        [
            "NAME", "READY", "REASON", "QUEUES", "TYPE", "BROKERS", "AGE"
        ],
        "{text}"
    );
    assert_eq!(
        &cells(&text, 1)[..6],
        ["orders", "True", "Reconciled", "6", "Normal", "3"],
        "{text}"
    );
    let out = ok(&env.kubectl(&["get", "dduomq", "-n", APP_NS, "-o", "name"], None));
    assert!(out.contains("topic.dduomq.io/orders"), "{out}");
    let out = ok(&env.kubectl(&["explain", "topics.spec.queues"], None));
    assert!(out.contains("Number of queues"), "{out}");
}

/// `kubectl get consumergroups` shows the group's lag: a group of its own
/// (`audit` on topic `ledger`) with 7 messages produced since it last
/// consumed. Both are deleted again.
pub(crate) async fn group_lag_column(env: &Env, topics: &Api<Topic>, groups: &Api<ConsumerGroup>) {
    ok(&env.kubectl(&["apply", "-f", "-"], Some(&topic_yaml("ledger", 3, ""))));
    let group = format!(
        "apiVersion: dduomq.io/v1alpha1\nkind: ConsumerGroup\nmetadata:\n  name: audit\n  namespace: {APP_NS}\nspec:\n  subscriptions:\n  - topic: ledger\n"
    );
    ok(&env.kubectl(&["apply", "-f", "-"], Some(&group)));
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "ledger and audit Ready, ledger routed",
        async || {
            let t = topics.get("ledger").await.ok()?;
            let g = groups.get("audit").await.ok()?;
            let group_ready = g.status?.conditions.iter().any(|c| c.status == "True");
            route_on(env, "ledger").await?;
            (ready(t.status.as_ref()) && group_ready).then_some(())
        },
    )
    .await;
    // The brokers count lag from a group's progress: a member consumes the
    // first 3 messages and leaves, then 7 more wait.
    let producer = ProducerBuilder::new(env.grpc(0))
        .namespace(APP_NS)
        .build()
        .unwrap();
    let send = async |range: std::ops::Range<usize>| {
        for i in range {
            producer
                .send(Message::new("ledger", format!("entry-{i}")))
                .await
                .unwrap();
        }
    };
    send(0..3).await;
    assert_eq!(consume(env, "audit", "ledger", 3).await.len(), 3);
    send(3..10).await;
    let text = eventually_every(
        POLL,
        Duration::from_secs(30),
        "LAG 7 and no member in kubectl get consumergroups",
        async || {
            let text = ok(&env.kubectl(&["get", "consumergroups", "audit", "-n", APP_NS], None));
            let row = cells(&text, 1);
            (row.get(..5) == Some(&["audit", "True", "Clustering", "0", "7"][..])).then_some(text)
        },
    )
    .await;
    assert_eq!(
        cells(&text, 0),
        ["NAME", "READY", "MODE", "MEMBERS", "LAG", "AGE"],
        "{text}"
    );
    assert_eq!(total_lag(env, "audit").await, 7, "the brokers agree");
    groups
        .delete("audit", &DeleteParams::default())
        .await
        .unwrap();
    topics
        .delete("ledger", &DeleteParams::default())
        .await
        .unwrap();
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "audit and ledger deleted",
        async || {
            let gone = groups.get_opt("audit").await.ok()?.is_none()
                && topics.get_opt("ledger").await.ok()?.is_none();
            gone.then_some(())
        },
    )
    .await;
}

/// A ConsumerGroup `name` in the apps namespace with `spec` (YAML lines
/// indented by two spaces) after one subscription to `orders`.
fn group_yaml(name: &str, subscription: &str, spec: &str) -> String {
    format!(
        "apiVersion: dduomq.io/v1alpha1\nkind: ConsumerGroup\nmetadata:\n  name: {name}\n  namespace: {APP_NS}\nspec:\n  subscriptions:\n  - topic: orders\n{subscription}{spec}"
    )
}

/// Specs the brokers (or the operator) could not honour are refused by the API
/// server, each with its message; nothing changes. Expects Topic `orders` with
/// 6 NORMAL queues.
pub(crate) async fn invalid_specs_are_refused(env: &Env, topics: &Api<Topic>) {
    const BACKOFF: &str =
        "each retryBackoff item must be a duration from 1ms to 24h such as 500ms, 10s or 1m30s";
    let long_sql = format!("    sql: \"{}\"\n", "a".repeat(4097));
    let many_steps = format!("  retryBackoff: [{}]\n", vec!["1s"; 65].join(", "));
    for (yaml, message) in [
        (topic_yaml("bad", 0, ""), "spec.queues".to_string()),
        (
            topic_yaml("bad", 1025, ""),
            "spec.queues: Invalid value: 1025: spec.queues in body should be less than or equal to 1024".into(),
        ),
        (
            topic_yaml("bad", 1, "  maxMessageBytes: 4194305\n"),
            "spec.maxMessageBytes: Invalid value: 4194305: spec.maxMessageBytes in body should be less than or equal to 4194304".into(),
        ),
        (topic_yaml("orders", 3, ""), "queues cannot be decreased".into()),
        (
            topic_yaml("orders", 6, "  messageType: FIFO\n"),
            "messageType is immutable".into(),
        ),
        (
            group_yaml("both", "    tag: A\n    sql: \"a > 1\"\n", ""),
            "a subscription filters by tag or by SQL, not both".into(),
        ),
        (
            group_yaml("bad", "    tag: \"\"\n", ""),
            "spec.subscriptions[0].tag: Invalid value: \"\": spec.subscriptions[0].tag in body should be at least 1 chars long".into(),
        ),
        (
            group_yaml("bad", &long_sql, ""),
            "spec.subscriptions[0].sql: Too long: may not be more than 4096 bytes".into(),
        ),
        (group_yaml("bad", "", "  retryBackoff: [\"soon\"]\n"), BACKOFF.into()),
        (group_yaml("bad", "", "  retryBackoff: [\"1s\", \"48h\"]\n"), BACKOFF.into()),
        (group_yaml("bad", "", "  retryBackoff: [\"0ms\"]\n"), BACKOFF.into()),
        (
            group_yaml("bad", "", &many_steps),
            "spec.retryBackoff: Too many: 65: must have at most 64 items".into(),
        ),
        (
            group_yaml(
                "bad",
                "",
                "  offsetReset:\n    requestId: r1\n    to: Timestamp\n    timestamp: yesterday\n",
            ),
            "offsetReset.timestamp must be an RFC 3339 time such as 2026-01-02T15:04:05Z".into(),
        ),
        (
            group_yaml(
                "bad",
                "",
                "  offsetReset:\n    requestId: r1\n    to: Timestamp\n    timestamp: \"2026-13-01T00:00:00Z\"\n",
            ),
            "offsetReset.timestamp must be an RFC 3339 time such as 2026-01-02T15:04:05Z".into(),
        ),
        (
            group_yaml(
                "bad",
                "",
                "  offsetReset:\n    requestId: r1\n    to: Timestamp\n    timestamp: \"2026-01-01T00:00:00.0000000001Z\"\n",
            ),
            "offsetReset.timestamp must be an RFC 3339 time such as 2026-01-02T15:04:05Z".into(),
        ),
        (
            group_yaml("bad", "", "  consumeMode: Broadcast\n  ordered: true\n"),
            "ordered needs consumeMode Clustering: brokers order deliveries only within a clustering group".into(),
        ),
    ] {
        let out = env.kubectl(&["apply", "-f", "-"], Some(&yaml));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted:\n{yaml}");
        assert!(
            stderr.contains(&message),
            "expected {message:?} in: {stderr}"
        );
    }
    assert_eq!(
        topics.get("orders").await.unwrap().spec.queues,
        6,
        "nothing changed"
    );
}
