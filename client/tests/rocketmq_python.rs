//! The official RocketMQ 5 Python client (`rocketmq-python-client` 5.1.2 from
//! PyPI, installed by `rocketmq-clients/setup`) against a real broker, through
//! the broker's RocketMQ door. `rocketmq-clients/python/scenarios.py` runs the
//! scenarios with the client's public API and prints what it sent, received
//! and acknowledged; this test checks every line against what it expects, byte
//! for byte, and exchanges messages with our own SDK both ways.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use dduomq_client::proto as pb;
use dduomq_client::{Message, ProducerBuilder, PushConsumerBuilder};
use dduomq_testkit::Options;
use dduomq_testkit::{Broker, eventually};
use parking_lot::Mutex;
use serde_json::Value;

/// The Python with the client installed: `$DDUOMQ_ROCKETMQ_PYTHON`, else
/// where `rocketmq-clients/setup` puts it. Missing, the test fails: CI and
/// `make test` install it.
fn python() -> PathBuf {
    let path = std::env::var_os("DDUOMQ_ROCKETMQ_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                .join(".cache/dduomq-rocketmq/python/bin/python")
        });
    assert!(
        path.exists(),
        "{} is missing: run rocketmq-clients/setup (make test does) to install the official RocketMQ Python client",
        path.display()
    );
    path
}

/// Runs the scenarios; their output lines, each checked to be JSON.
fn run_scenarios(endpoint: &str, run_id: &str, scenarios: &[&str]) -> Vec<Value> {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../rocketmq-clients/python/scenarios.py");
    let out = Command::new(python())
        .arg(script)
        .arg(endpoint)
        .arg(run_id)
        .args(scenarios)
        .output()
        .expect("run the Python scenarios");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scenarios failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    for s in scenarios {
        assert!(
            lines
                .iter()
                .any(|l| l["event"] == "done" && l["scenario"] == *s),
            "scenario {s} did not finish:\n{stdout}"
        );
    }
    lines
}

/// The lines of one event and scenario.
fn of<'a>(lines: &'a [Value], event: &str, scenario: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| l["event"] == event && l["scenario"] == scenario)
        .collect()
}

/// Message id → body (hex) of lines.
fn bodies(lines: &[&Value]) -> BTreeMap<String, String> {
    lines
        .iter()
        .map(|l| (id(l), l["body"].as_str().unwrap().to_string()))
        .collect()
}

fn id(l: &Value) -> String {
    l["id"].as_str().unwrap().to_string()
}

/// A message our SDK received from the Python client.
#[derive(Debug, Clone)]
struct Seen {
    body: String,
    tag: String,
    keys: Vec<String>,
    lang: Option<String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_runs_every_scenario_against_the_broker() {
    let b = Broker::start_with(Options {
        auto_create_topics: Some(false),
        config: Some(
            "[broker]\ntransaction_check_after = \"1s\"\ntransaction_check_interval = \"1s\"\n"
                .into(),
        ),
        ..Default::default()
    });
    let run = "py";
    let admin = b.admin();
    let topics = [
        ("normal", pb::MessageType::Normal),
        ("fifo", pb::MessageType::Fifo),
        ("delay", pb::MessageType::Delay),
        ("transaction", pb::MessageType::Transaction),
        ("redeliver", pb::MessageType::Normal),
        ("filters", pb::MessageType::Normal),
        ("interop-send", pb::MessageType::Normal),
        ("interop-receive", pb::MessageType::Normal),
    ];
    for (name, kind) in topics {
        admin
            .create_topic(&format!("{name}-{run}"), 4, kind)
            .await
            .unwrap();
    }
    for group in [
        "normal",
        "delay",
        "transaction",
        "redeliver",
        "filters-tag",
        "filters-sql",
        "interop-receive",
    ] {
        let name = match group {
            "filters-tag" | "filters-sql" => format!("filters-{run}{}", &group[7..]),
            g => format!("{g}-{run}"),
        };
        admin
            .create_group(pb::Group {
                name,
                max_delivery_attempts: 16,
                retry_backoff_ms: vec![100],
                ..Default::default()
            })
            .await
            .unwrap();
    }
    admin
        .create_group(pb::Group {
            name: format!("fifo-{run}"),
            max_delivery_attempts: 16,
            retry_backoff_ms: vec![100],
            ordered: true,
            ..Default::default()
        })
        .await
        .unwrap();

    // Our SDK sends first what the Python consumer is to receive.
    let producer = ProducerBuilder::new(&b.grpc).build().unwrap();
    let mut from_sdk = BTreeMap::new();
    for i in 0..5u8 {
        let body: Vec<u8> = (0..=255u8).map(|x| x ^ i).collect();
        let receipt = producer
            .send(
                Message::new(format!("interop-receive-{run}"), body.clone())
                    .with_tag("FromRust")
                    .with_key(format!("rs-{i}"))
                    .with_property("lang", "rust"),
            )
            .await
            .unwrap();
        from_sdk.insert(receipt.message_id, hex(&body));
    }

    let scenarios = [
        "normal",
        "fifo",
        "delay",
        "transaction",
        "redeliver",
        "filters",
        "interop-send",
        "interop-receive",
        "bad-input",
    ];
    let endpoint = b.grpc.clone();
    let lines = tokio::task::spawn_blocking(move || run_scenarios(&endpoint, run, &scenarios))
        .await
        .unwrap();

    // Normal: every message received and acked once, byte-exact, with its tag,
    // key and property.
    let sent = of(&lines, "sent", "normal");
    let received = of(&lines, "received", "normal");
    assert_eq!(sent.len(), 20);
    assert_eq!(bodies(&received), bodies(&sent));
    assert_eq!(received.len(), 20, "each once");
    assert_eq!(bodies(&of(&lines, "acked", "normal")), bodies(&sent));
    for r in &received {
        let n: usize = r["properties"]["n"].as_str().unwrap().parse().unwrap();
        assert_eq!(r["tag"], "TagA");
        assert_eq!(r["keys"], serde_json::json!([format!("key-{n}")]));
        assert_eq!(r["attempt"], 1);
    }

    // FIFO: each message group in send order.
    let sent = of(&lines, "sent", "fifo");
    let seq_of: HashMap<String, (String, u64)> = sent
        .iter()
        .map(|l| {
            let group = l["group"].as_str().unwrap().to_string();
            (id(l), (group, l["seq"].as_u64().unwrap()))
        })
        .collect();
    let received = of(&lines, "received", "fifo");
    assert_eq!(bodies(&received), bodies(&sent));
    let mut per_group: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in &received {
        let (group, seq) = &seq_of[&id(r)];
        assert_eq!(r["group"], group.as_str(), "the message group is delivered");
        per_group.entry(group.clone()).or_default().push(*seq);
    }
    assert_eq!(per_group.len(), 3);
    for (group, seqs) in per_group {
        assert_eq!(seqs, (0..5).collect::<Vec<_>>(), "group {group} in order");
    }

    // Delay: delivered once due, not before.
    let sent = of(&lines, "sent", "delay");
    let received = of(&lines, "received", "delay");
    assert_eq!(bodies(&received), bodies(&sent));
    let due = sent[0]["due_ms"].as_i64().unwrap();
    for r in &received {
        let at = r["at_ms"].as_i64().unwrap();
        assert!(at >= due, "delivered {} ms early", due - at);
    }

    // Transactions: the committed one and the one committed when checked
    // back; never the rolled-back one.
    let sent = of(&lines, "sent", "transaction");
    let outcome = |o: &str| {
        sent.iter()
            .find(|l| l["outcome"] == o)
            .map(|l| id(l))
            .unwrap()
    };
    let received: BTreeSet<String> = of(&lines, "received", "transaction")
        .iter()
        .map(|l| id(l))
        .collect();
    assert_eq!(
        received,
        BTreeSet::from([outcome("commit"), outcome("check")])
    );
    let checked: BTreeSet<String> = of(&lines, "checked", "transaction")
        .iter()
        .map(|l| id(l))
        .collect();
    assert!(checked.contains(&outcome("check")), "{checked:?}");
    assert!(!checked.contains(&outcome("commit")));

    // Redelivery after ChangeInvisibleDuration: the same message, attempt 2.
    let sent = of(&lines, "sent", "redeliver");
    let received = of(&lines, "received", "redeliver");
    assert_eq!(received.len(), 2);
    for (r, attempt) in received.iter().zip([1, 2]) {
        assert_eq!(id(r), id(sent[0]));
        assert_eq!(r["body"], sent[0]["body"]);
        assert_eq!(r["attempt"], attempt);
    }
    assert_eq!(of(&lines, "acked", "redeliver").len(), 1);

    // Filters: the tag filter selects TagB, the SQL one n > 3.
    let sent = of(&lines, "sent", "filters");
    let select = |keep: &dyn Fn(&Value) -> bool| {
        let picked: Vec<&Value> = sent.iter().copied().filter(|l| keep(l)).collect();
        bodies(&picked)
    };
    assert_eq!(
        bodies(&of(&lines, "received", "filters-tag")),
        select(&|l| l["tag"] == "TagB")
    );
    assert_eq!(
        bodies(&of(&lines, "received", "filters-sql")),
        select(&|l| l["n"].as_u64().unwrap() > 3)
    );

    // Our SDK's messages, received by the Python client as sent.
    let received = of(&lines, "received", "interop-receive");
    assert_eq!(
        bodies(&received).into_values().collect::<BTreeSet<_>>(),
        from_sdk.values().cloned().collect()
    );
    for r in &received {
        assert_eq!(r["tag"], "FromRust");
        assert_eq!(r["properties"], serde_json::json!({"lang": "rust"}));
        assert_eq!(r["keys"].as_array().unwrap().len(), 1);
    }

    // The Python client's messages, received by our SDK as sent.
    let sent = of(&lines, "sent", "interop-send");
    let expected: BTreeSet<String> = bodies(&sent).into_values().collect();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    admin
        .create_group(pb::Group {
            name: format!("rust-{run}"),
            max_delivery_attempts: 16,
            retry_backoff_ms: vec![100],
            ..Default::default()
        })
        .await
        .unwrap();
    let sink = seen.clone();
    let consumer = PushConsumerBuilder::new(
        &b.grpc,
        format!("rust-{run}"),
        format!("interop-send-{run}"),
    )
    .start(move |m| {
        let sink = sink.clone();
        async move {
            sink.lock().push(Seen {
                body: hex(&m.body),
                tag: m.tag.clone(),
                keys: m.keys.clone(),
                lang: m.properties.get("lang").cloned(),
            });
            Ok::<(), String>(())
        }
    })
    .await
    .unwrap();
    eventually(
        Duration::from_secs(20),
        "our SDK to receive the Python client's messages",
        async || (seen.lock().len() >= expected.len()).then_some(()),
    )
    .await;
    consumer.shutdown().await;
    let seen = seen.lock().clone();
    assert_eq!(seen.len(), expected.len(), "each once");
    assert_eq!(
        seen.iter().map(|s| s.body.clone()).collect::<BTreeSet<_>>(),
        expected
    );
    for s in &seen {
        assert_eq!(s.tag, "FromPython");
        assert_eq!(s.keys.len(), 1);
        assert!(s.keys[0].starts_with("py-"));
        assert_eq!(s.lang.as_deref(), Some("python"));
    }

    // Bad input the client checks itself: a body over the broker's limit.
    let refused = of(&lines, "refused", "bad-input");
    assert!(
        refused.iter().any(|l| l["what"] == "oversize-body"),
        "{refused:?}"
    );
    assert!(
        refused.iter().any(|l| l["what"] == "unknown-topic"),
        "{refused:?}"
    );
}
