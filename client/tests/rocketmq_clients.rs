//! The official RocketMQ 5 clients against a real broker, through the
//! broker's RocketMQ door: Python (`rocketmq-python-client` 5.1.2 from PyPI),
//! Java (`rocketmq-client-java` 5.0.8 from Maven Central), Node.js
//! (`rocketmq-client-nodejs` 1.0.8 from npm) and Rust (crate `rocketmq` 5.0.0
//! from crates.io), installed by `rocketmq-clients/setup`. Each language's program in `rocketmq-clients/`
//! runs the scenarios with the client's public API and prints what it sent,
//! received and acknowledged; this test checks every line against what it
//! expects, byte for byte, and exchanges messages with our own SDK both ways.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use dduomq_client::proto as pb;
use dduomq_client::{Message, ProducerBuilder, PushConsumerBuilder};
use dduomq_testkit::{Broker, Options, eventually, rocketmq};
use parking_lot::Mutex;
use serde_json::Value;

/// An official client and its scenario program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    Python,
    Java,
    Node,
    /// The `rocketmq` crate: a producer and a simple consumer without
    /// ChangeInvisibleDuration (no redelivery scenario).
    Rust,
}

/// Every language runs these; see each program for what they do.
const COMMON: [&str; 8] = [
    "normal",
    "fifo",
    "delay",
    "transaction",
    "redeliver",
    "filters",
    "interop-send",
    "interop-receive",
];

impl Client {
    fn name(self) -> &'static str {
        match self {
            Client::Python => "python",
            Client::Java => "java",
            Client::Node => "node",
            Client::Rust => "rust",
        }
    }

    /// The tag its interop messages carry.
    fn tag(self) -> &'static str {
        match self {
            Client::Python => "FromPython",
            Client::Java => "FromJava",
            Client::Node => "FromNode",
            Client::Rust => "FromRustCrate",
        }
    }

    fn key_prefix(self) -> &'static str {
        match self {
            Client::Python => "py-",
            Client::Java => "java-",
            Client::Node => "node-",
            Client::Rust => "crate-",
        }
    }

    /// Its scenarios: the common ones and its own.
    fn scenarios(self) -> Vec<&'static str> {
        let own: &[&str] = match self {
            Client::Python => &["push-dlq", "bad-input"],
            Client::Java | Client::Node => &["push-dlq"],
            // The crate has no push consumer.
            Client::Rust => &[],
        };
        COMMON
            .iter()
            .filter(|s| self != Client::Rust || **s != "redeliver")
            .chain(own)
            .copied()
            .collect()
    }

    /// The command that runs its program (the Java one compiled into
    /// `work` first).
    fn command(self, work: &Path) -> Command {
        match self {
            Client::Python => rocketmq::python_scenarios(),
            Client::Java => rocketmq::java_scenarios(work),
            Client::Node => rocketmq::node_scenarios(),
            Client::Rust => rocketmq::rust_scenarios(),
        }
    }
}

/// Runs a client's scenarios; their output lines, each checked to be JSON.
fn run_scenarios(client: Client, endpoint: &str, run_id: &str) -> Vec<Value> {
    let work = tempfile::tempdir().unwrap();
    let scenarios = client.scenarios();
    let out = client
        .command(work.path())
        .arg(endpoint)
        .arg(run_id)
        .args(&scenarios)
        .output()
        .expect("run the scenarios");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} scenarios failed ({}):\n{stdout}\n{}",
        client.name(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    for s in scenarios {
        assert!(
            lines
                .iter()
                .any(|l| l["event"] == "done" && l["scenario"] == s),
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A message our SDK received.
#[derive(Debug, Clone)]
struct Seen {
    body: String,
    tag: String,
    keys: Vec<String>,
    lang: Option<String>,
}

fn group(name: String, max_delivery_attempts: u32, ordered: bool) -> pb::Group {
    pb::Group {
        name,
        max_delivery_attempts,
        retry_backoff_ms: vec![100],
        ordered,
        ..Default::default()
    }
}

/// A broker with the topics and groups of one client's scenarios (named
/// `<scenario>-<run>`); transactions are checked back after a second.
async fn broker_for(run: &str) -> Broker {
    let b = Broker::start_with(Options {
        auto_create_topics: Some(false),
        config: Some(
            "[broker]\ntransaction_check_after = \"1s\"\ntransaction_check_interval = \"1s\"\n"
                .into(),
        ),
        ..Default::default()
    });
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
        ("push-dlq", pb::MessageType::Normal),
        ("bad-input", pb::MessageType::Normal),
    ];
    for (name, kind) in topics {
        let name = format!("{name}-{run}");
        admin.create_topic(&name, 4, kind).await.unwrap();
    }
    let groups = [
        group(format!("fifo-{run}"), 16, true),
        // Dead-lettered on the third failure.
        group(format!("push-dlq-{run}"), 3, false),
    ]
    .into_iter()
    .chain(
        [
            "normal",
            "delay",
            "transaction",
            "redeliver",
            "filters-tag",
            "filters-sql",
            "interop-receive",
            "sdk",
        ]
        .map(|g| match g.strip_prefix("filters-") {
            Some(kind) => group(format!("filters-{run}-{kind}"), 16, false),
            None => group(format!("{g}-{run}"), 16, false),
        }),
    );
    for g in groups {
        admin.create_group(g).await.unwrap();
    }
    b
}

/// What our SDK receives of `topic` as group `sdk-<run>`: `count` messages.
async fn sdk_receive(b: &Broker, run: &str, topic: &str, count: usize) -> Vec<Seen> {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let sink = seen.clone();
    let consumer = PushConsumerBuilder::new(&b.grpc, format!("sdk-{run}"), topic)
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
        "our SDK to receive the client's messages",
        async || (seen.lock().len() >= count).then_some(()),
    )
    .await;
    // Anything extra (a duplicate) would arrive now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    consumer.shutdown().await;
    let seen = seen.lock().clone();
    assert_eq!(seen.len(), count, "each once: {seen:?}");
    seen
}

/// Runs one client's scenarios and checks every line.
async fn check_client(client: Client) {
    let run = client.name();
    let b = broker_for(run).await;

    // Our SDK sends first what the client's consumer is to receive.
    let producer = ProducerBuilder::new(&b.grpc).build().unwrap();
    let mut from_sdk = BTreeSet::new();
    for i in 0..5u8 {
        let body: Vec<u8> = (0..=255u8).map(|x| x ^ i).collect();
        producer
            .send(
                Message::new(format!("interop-receive-{run}"), body.clone())
                    .with_tag("FromRust")
                    .with_key(format!("rs-{i}"))
                    .with_property("lang", "rust"),
            )
            .await
            .unwrap();
        from_sdk.insert(hex(&body));
    }

    let endpoint = b.grpc.clone();
    let lines = tokio::task::spawn_blocking(move || run_scenarios(client, &endpoint, run))
        .await
        .unwrap();

    check_normal(&lines);
    check_fifo(&lines);
    check_delay(&lines);
    check_transactions(&lines);
    if client.scenarios().contains(&"redeliver") {
        check_redelivery(&lines);
    }
    check_filters(&lines);

    // Our SDK's messages, received by the client as sent.
    let received = of(&lines, "received", "interop-receive");
    assert_eq!(
        bodies(&received).into_values().collect::<BTreeSet<_>>(),
        from_sdk
    );
    assert_eq!(received.len(), 5, "each once");
    for r in &received {
        assert_eq!(r["tag"], "FromRust");
        assert_eq!(r["properties"], serde_json::json!({"lang": "rust"}));
        assert_eq!(r["keys"].as_array().unwrap().len(), 1);
    }

    // The client's messages, received by our SDK as sent.
    let sent = of(&lines, "sent", "interop-send");
    let expected: BTreeSet<String> = bodies(&sent).into_values().collect();
    let seen = sdk_receive(&b, run, &format!("interop-send-{run}"), expected.len()).await;
    assert_eq!(
        seen.iter().map(|s| s.body.clone()).collect::<BTreeSet<_>>(),
        expected
    );
    for s in &seen {
        assert_eq!(s.tag, client.tag());
        assert_eq!(s.keys.len(), 1);
        assert!(s.keys[0].starts_with(client.key_prefix()), "{:?}", s.keys);
        assert_eq!(s.lang.as_deref(), Some(run));
    }

    if client.scenarios().contains(&"push-dlq") {
        check_dead_letter(&b, run, &lines).await;
    }
    if client == Client::Python {
        // Bad input the client checks itself: a body over the broker's
        // limit (taken from the Settings reply), and an unknown topic.
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
}

/// Every message received and acked once, byte-exact, with its tag, key and
/// property.
fn check_normal(lines: &[Value]) {
    let sent = of(lines, "sent", "normal");
    let received = of(lines, "received", "normal");
    assert_eq!(sent.len(), 20);
    assert_eq!(bodies(&received), bodies(&sent));
    assert_eq!(received.len(), 20, "each once");
    assert_eq!(bodies(&of(lines, "acked", "normal")), bodies(&sent));
    for r in &received {
        let n: usize = r["properties"]["n"].as_str().unwrap().parse().unwrap();
        assert_eq!(r["tag"], "TagA");
        assert_eq!(r["keys"], serde_json::json!([format!("key-{n}")]));
        assert_eq!(r["attempt"], 1);
    }
}

/// Each message group in send order, with its group.
fn check_fifo(lines: &[Value]) {
    let sent = of(lines, "sent", "fifo");
    let seq_of: HashMap<String, (String, u64)> = sent
        .iter()
        .map(|l| {
            let group = l["group"].as_str().unwrap().to_string();
            (id(l), (group, l["seq"].as_u64().unwrap()))
        })
        .collect();
    let received = of(lines, "received", "fifo");
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
}

/// Delivered once due, not before.
fn check_delay(lines: &[Value]) {
    let sent = of(lines, "sent", "delay");
    let received = of(lines, "received", "delay");
    assert_eq!(sent.len(), 3);
    assert_eq!(bodies(&received), bodies(&sent));
    let due = sent[0]["due_ms"].as_i64().unwrap();
    for r in &received {
        let at = r["at_ms"].as_i64().unwrap();
        assert!(at >= due, "delivered {} ms early", due - at);
    }
}

/// The committed one and the one committed when checked back; never the
/// rolled-back one.
fn check_transactions(lines: &[Value]) {
    let sent = of(lines, "sent", "transaction");
    let outcome = |o: &str| {
        sent.iter()
            .find(|l| l["outcome"] == o)
            .map(|l| id(l))
            .unwrap()
    };
    let ids = |event| -> BTreeSet<String> {
        of(lines, event, "transaction")
            .iter()
            .map(|l| id(l))
            .collect()
    };
    assert_eq!(
        ids("received"),
        BTreeSet::from([outcome("commit"), outcome("check")])
    );
    assert_eq!(of(lines, "received", "transaction").len(), 2, "each once");
    let checked = ids("checked");
    assert!(checked.contains(&outcome("check")), "{checked:?}");
    assert!(!checked.contains(&outcome("commit")));
}

/// After ChangeInvisibleDuration: the same message again, attempt 2.
fn check_redelivery(lines: &[Value]) {
    let sent = of(lines, "sent", "redeliver");
    let received = of(lines, "received", "redeliver");
    assert_eq!(received.len(), 2);
    for (r, attempt) in received.iter().zip([1, 2]) {
        assert_eq!(id(r), id(sent[0]));
        assert_eq!(r["body"], sent[0]["body"]);
        assert_eq!(r["attempt"], attempt);
    }
    assert_eq!(of(lines, "acked", "redeliver").len(), 1);
}

/// The tag filter selects TagB, the SQL one n > 3.
fn check_filters(lines: &[Value]) {
    let sent = of(lines, "sent", "filters");
    let select = |keep: &dyn Fn(&Value) -> bool| {
        let picked: Vec<&Value> = sent.iter().copied().filter(|l| keep(l)).collect();
        bodies(&picked)
    };
    let tagged = of(lines, "received", "filters-tag");
    assert_eq!(bodies(&tagged), select(&|l| l["tag"] == "TagB"));
    assert_eq!(tagged.len(), 3, "each once");
    let selected = of(lines, "received", "filters-sql");
    assert_eq!(bodies(&selected), select(&|l| l["n"].as_u64().unwrap() > 3));
    assert_eq!(selected.len(), 2, "each once");
}

/// A push consumer's failing message: delivered three times (the group's
/// attempts), then in the group's dead-letter topic, byte-exact; the other
/// one consumed once.
async fn check_dead_letter(b: &Broker, run: &str, lines: &[Value]) {
    let sent = of(lines, "sent", "push-dlq");
    let failing = sent.iter().find(|l| l["fails"] == true).unwrap();
    let fine = sent.iter().find(|l| l["fails"] == false).unwrap();
    let received = of(lines, "received", "push-dlq");
    let attempts: Vec<i64> = received
        .iter()
        .filter(|r| id(r) == id(failing))
        .map(|r| r["attempt"].as_i64().unwrap())
        .collect();
    assert_eq!(attempts, [1, 2, 3]);
    assert_eq!(
        received.iter().filter(|r| id(r) == id(fine)).count(),
        1,
        "the good one once"
    );
    let dead = sdk_receive(b, run, &format!("%DLQ%push-dlq-{run}"), 1).await;
    assert_eq!(dead[0].body, failing["body"].as_str().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_runs_every_scenario_against_the_broker() {
    check_client(Client::Python).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_java_client_runs_every_scenario_against_the_broker() {
    check_client(Client::Java).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nodejs_client_runs_every_scenario_against_the_broker() {
    check_client(Client::Node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_crate_runs_every_scenario_it_has_against_the_broker() {
    check_client(Client::Rust).await;
}
