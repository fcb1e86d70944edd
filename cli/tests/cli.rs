//! The `dduomq` CLI against a real broker: the command forms and JSON output that
//! users' scripts rely on.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use dduomq_testkit::Broker;
use serde_json::Value;

fn dduomq(b: &Broker, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dduomq"))
        .args(["--server", &b.grpc])
        .args(args)
        .output()
        .expect("run dduomq")
}

fn ok(b: &Broker, args: &[&str]) -> String {
    let out = dduomq(b, args);
    assert!(
        out.status.success(),
        "dduomq {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs the CLI (which must succeed) and parses its JSON lines.
fn ok_json(b: &Broker, args: &[&str]) -> Vec<Value> {
    json_lines(&ok(b, args))
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn topics_produce_consume_lookup_and_reset() {
    let b = Broker::start();
    let out = ok(
        &b,
        &["topic", "create", "orders", "--queues", "3", "-o", "json"],
    );
    assert_eq!(json_lines(&out)[0]["queues"], 3);
    assert!(ok(&b, &["topic", "list"]).contains("orders"));

    // --count / --size, with key, tag and properties.
    let sent = ok_json(
        &b,
        &[
            "produce",
            "--topic",
            "orders",
            "--count",
            "6",
            "--size",
            "32",
            "--key",
            "K",
            "--tag",
            "T",
            "--property",
            "a=1",
            "--property",
            "b=2",
            "-o",
            "json",
        ],
    );
    assert_eq!(sent.len(), 6);
    for s in &sent {
        assert_eq!(s["topic"], "orders");
        assert!(s["id"].as_str().unwrap().len() == 32);
        assert!(s["queue"].as_u64().unwrap() < 3);
    }
    // Lines from stdin, one message each.
    let mut child = Command::new(env!("CARGO_BIN_EXE_dduomq"))
        .args([
            "--server", &b.grpc, "produce", "--topic", "orders", "-o", "json",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"alpha\nbeta\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(json_lines(&String::from_utf8(out.stdout).unwrap()).len(), 2);

    let got = ok_json(
        &b,
        &[
            "consume",
            "--topic",
            "orders",
            "--group",
            "cli",
            "--count",
            "8",
            "--timeout",
            "5s",
            "-o",
            "json",
        ],
    );
    assert_eq!(got.len(), 8);
    let mut bodies: Vec<&str> = got.iter().map(|m| m["body"].as_str().unwrap()).collect();
    bodies.sort();
    assert_eq!(&bodies[..2], ["alpha", "beta"]);
    for m in got.iter().filter(|m| m["key"] == "K") {
        assert_eq!(m["tag"], "T");
        assert_eq!(m["properties"]["a"], "1");
        assert_eq!(m["properties"]["b"], "2");
        assert_eq!(m["delivery_attempt"], 1);
        assert_eq!(m["body"].as_str().unwrap().len(), 32);
        for field in ["id", "topic", "queue", "offset"] {
            assert!(!m[field].is_null(), "{field}");
        }
    }
    // Nothing left: the consumer exits after --timeout with nothing new.
    assert_eq!(
        ok(
            &b,
            &[
                "consume",
                "--topic",
                "orders",
                "--group",
                "cli",
                "--timeout",
                "1s",
                "-o",
                "json"
            ]
        ),
        ""
    );

    // Lookup by id and key.
    let id = sent[0]["id"].as_str().unwrap();
    let found = ok_json(&b, &["lookup", "--id", id, "-o", "json"]);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["id"], id);
    assert_eq!(
        ok_json(
            &b,
            &["lookup", "--key", "K", "--topic", "orders", "-o", "json"]
        )
        .len(),
        6
    );

    // Group describe and reset; pull mode re-reads after a reset to earliest.
    let d = ok_json(&b, &["group", "describe", "cli", "-o", "json"]);
    let lag: u64 = d[0]["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["lag"].as_u64().unwrap())
        .sum();
    assert_eq!(lag, 0);
    ok(
        &b,
        &[
            "group", "reset", "cli", "--topic", "orders", "--to", "earliest",
        ],
    );
    let again = ok_json(
        &b,
        &[
            "consume",
            "--topic",
            "orders",
            "--group",
            "cli",
            "--mode",
            "pull",
            "--timeout",
            "2s",
            "-o",
            "json",
        ],
    );
    assert_eq!(again.len(), 8);
    ok(
        &b,
        &[
            "group",
            "reset",
            "cli",
            "--topic",
            "orders",
            "--to",
            "2026-01-01T00:00:00Z",
        ],
    );
    assert!(ok(&b, &["group", "list"]).contains("cli"));

    // Bad input: clear error, non-zero exit.
    let out = dduomq(
        &b,
        &["group", "reset", "cli", "--topic", "orders", "--to", "-1"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("INVALID_ARGUMENT"));
    let out = dduomq(&b, &["topic", "create", "bad name"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("INVALID_ARGUMENT"));

    ok(&b, &["topic", "delete", "orders"]);
    assert!(!ok(&b, &["topic", "list"]).contains("orders"));
}

#[test]
fn broadcast_mode_and_bench_summary() {
    let b = Broker::start();
    ok(
        &b,
        &["produce", "--topic", "news", "--count", "5", "--size", "8"],
    );
    for member in ["m1", "m2"] {
        let got = ok_json(
            &b,
            &[
                "consume",
                "--topic",
                "news",
                "--group",
                "fans",
                "--mode",
                "broadcast",
                "--client-id",
                member,
                "--count",
                "5",
                "--timeout",
                "5s",
                "-o",
                "json",
            ],
        );
        assert_eq!(got.len(), 5, "{member}");
    }
    let summary = ok_json(
        &b,
        &[
            "bench",
            "produce",
            "--topic",
            "bench",
            "--duration",
            "1s",
            "--size",
            "128",
            "-o",
            "json",
        ],
    );
    assert_eq!(summary.len(), 1);
    let s = &summary[0];
    assert_eq!(s["mode"], "produce");
    assert_eq!(s["errors"], 0);
    assert!(s["messages"].as_u64().unwrap() > 0);
    assert!(s["latency_us"]["p99"].as_u64().unwrap() >= s["latency_us"]["p50"].as_u64().unwrap());
    let stored: u64 =
        ok_json(&b, &["topic", "describe", "bench", "-o", "json"])[0]["queue_offsets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| q["max_offset"].as_u64().unwrap())
            .sum();
    assert_eq!(
        stored,
        s["messages"].as_u64().unwrap(),
        "every acknowledged send is stored"
    );
}

#[test]
fn delayed_and_transactional_produce_and_lanes() {
    let b = Broker::start();
    ok(&b, &["topic", "create", "later", "--type", "delay"]);
    ok(&b, &["topic", "create", "pay", "--type", "transaction"]);

    let sent = ok_json(
        &b,
        &[
            "produce", "--topic", "later", "--count", "2", "--delay", "400ms", "-o", "json",
        ],
    );
    assert_eq!(sent.len(), 2);
    // An RFC 3339 time in the past is delivered at once.
    let past = ok_json(
        &b,
        &[
            "produce",
            "--topic",
            "later",
            "--count",
            "1",
            "--deliver-at",
            "2020-01-01T00:00:00Z",
            "-o",
            "json",
        ],
    );
    assert!(past[0].get("deliver_at_ms").is_none(), "{:?}", past[0]);
    let got = ok_json(
        &b,
        &[
            "consume", "--topic", "later", "--group", "g", "--count", "3", "-o", "json",
        ],
    );
    assert_eq!(got.len(), 3);
    let delayed: Vec<&Value> = got
        .iter()
        .filter(|m| m.get("deliver_at_ms").is_some())
        .collect();
    assert_eq!(delayed.len(), 2, "{got:?}");
    // Each delivered with the due time its send was given.
    let mut delivered: Vec<i64> = delayed
        .iter()
        .map(|m| m["deliver_at_ms"].as_i64().unwrap())
        .collect();
    delivered.sort();
    let mut scheduled: Vec<i64> = sent
        .iter()
        .map(|s| s["deliver_at_ms"].as_i64().unwrap())
        .collect();
    scheduled.sort();
    assert_eq!(delivered, scheduled);
    // Refused with its reason: a delay on a transaction topic.
    let out = dduomq(
        &b,
        &["produce", "--topic", "pay", "--count", "1", "--delay", "1s"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("MESSAGE_TYPE_MISMATCH"));

    // Transactions: committed, rolled back.
    for (end, state) in [("commit", "committed"), ("rollback", "rolled_back")] {
        let r = ok_json(
            &b,
            &[
                "produce",
                "--topic",
                "pay",
                "--count",
                "1",
                "--transaction",
                end,
                "-o",
                "json",
            ],
        );
        assert_eq!(r[0]["transaction"], state);
        assert_eq!(r[0]["transaction_id"], r[0]["id"]);
    }
    let got = ok_json(
        &b,
        &[
            "consume",
            "--topic",
            "pay",
            "--group",
            "g",
            "--count",
            "2",
            "--timeout",
            "1s",
            "-o",
            "json",
        ],
    );
    assert_eq!(got.len(), 1, "only the committed one: {got:?}");

    // Lanes: with a canary consumer online... none here, so the base consumer
    // gets the canary message (fallback).
    ok(
        &b,
        &[
            "produce", "--topic", "orders", "--count", "1", "--lane", "canary",
        ],
    );
    let got = ok_json(
        &b,
        &[
            "consume", "--topic", "orders", "--group", "g", "--count", "1", "-o", "json",
        ],
    );
    assert_eq!(got.len(), 1);
    let got = ok_json(
        &b,
        &[
            "consume", "--topic", "orders", "--group", "g2", "--count", "1", "--lane", "canary",
            "-o", "json",
        ],
    );
    assert_eq!(got.len(), 1, "a canary consumer gets its lane's message");
}

#[test]
fn topic_settings_are_applied_and_shown() {
    let b = Broker::start();
    let created = ok_json(
        &b,
        &[
            "topic",
            "create",
            "capped",
            "--queues",
            "1",
            "--max-message-bytes",
            "1024",
            "--retention",
            "1h",
            "--ack-policy",
            "master",
            "-o",
            "json",
        ],
    );
    assert_eq!(created[0]["max_message_bytes"], 1024);
    assert_eq!(created[0]["retention_ms"], 3_600_000);
    assert_eq!(created[0]["ack_policy"], "master");
    let described = ok_json(&b, &["topic", "describe", "capped", "-o", "json"]);
    assert_eq!(described[0]["max_message_bytes"], 1024);
    assert_eq!(described[0]["retention_ms"], 3_600_000);
    assert_eq!(described[0]["ack_policy"], "master");
    let listed = ok_json(&b, &["topic", "list", "-o", "json"]);
    let capped = listed[0]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "capped");
    assert_eq!(capped.unwrap()["ack_policy"], "master", "{listed:?}");
    let text = ok(&b, &["topic", "describe", "capped"]);
    assert!(
        text.contains("max message size: 1024 bytes; retention: 1h; ack policy: master"),
        "{text}"
    );
    let out = dduomq(&b, &["topic", "create", "capped", "--ack-policy", "all"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid value 'all' for '--ack-policy"),
        "{stderr}"
    );
    let out = dduomq(
        &b,
        &[
            "produce", "--topic", "capped", "--count", "1", "--size", "2000",
        ],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("MESSAGE_TOO_LARGE"), "{stderr}");
    assert!(stderr.contains("takes at most 1024"), "{stderr}");
    ok(
        &b,
        &[
            "produce", "--topic", "capped", "--count", "1", "--size", "500",
        ],
    );
    // Created again without them: the broker's own limits, but its own ack
    // policy stays (leaving it out must not weaken a topic) until reset.
    let plain = ok_json(
        &b,
        &["topic", "create", "capped", "--queues", "1", "-o", "json"],
    );
    assert_eq!(plain[0].get("max_message_bytes"), None);
    assert_eq!(plain[0]["ack_policy"], "master");
    let args = ["topic", "create", "capped", "--ack-policy", "default"];
    let reset = ok_json(&b, &[&args[..], &["--queues", "1", "-o", "json"]].concat());
    assert_eq!(reset[0].get("ack_policy"), None);
    assert!(ok(&b, &["topic", "describe", "capped"]).contains(
        "max message size: broker default; retention: broker default; ack policy: broker default"
    ));
}

#[test]
fn group_create_declares_subscriptions_that_consumers_must_match() {
    let b = Broker::start();
    ok(&b, &["topic", "create", "orders"]);
    let created = ok_json(
        &b,
        &[
            "group",
            "create",
            "billing",
            "--subscription",
            "orders:paid",
            "--ordered",
            "-o",
            "json",
        ],
    );
    let declared =
        serde_json::json!([{"topic": "orders", "filter_type": "tag", "filter_expression": "paid"}]);
    assert_eq!(created[0]["created"], true);
    assert_eq!(created[0]["ordered"], true);
    assert_eq!(created[0]["subscriptions"], declared);
    let described = ok_json(&b, &["group", "describe", "billing", "-o", "json"]);
    assert_eq!(described[0]["ordered"], true);
    assert_eq!(described[0]["subscriptions"], declared);
    assert!(ok(&b, &["group", "describe", "billing"]).contains("subscription orders (tag: paid)"));

    let refused = dduomq(
        &b,
        &[
            "consume",
            "--topic",
            "orders",
            "--group",
            "billing",
            "--filter-tag",
            "refund",
            "--count",
            "1",
        ],
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("[SUBSCRIPTION_MISMATCH]"), "{stderr}");
    assert!(stderr.contains("the tag filter \"paid\""), "{stderr}");
    let bad = dduomq(
        &b,
        &[
            "group",
            "create",
            "billing",
            "--sql-subscription",
            "orders:a =",
        ],
    );
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("[INVALID_FILTER]"), "{stderr}");
    assert!(
        stderr.contains("(subscription on topic \"orders\")"),
        "{stderr}"
    );
}

/// The namespace comes from `--namespace`/`-n` or `DDUOMQ_NAMESPACE`; each
/// namespace sees only its own topics and messages.
#[test]
fn namespaces_by_flag_and_environment() {
    let b = Broker::start();
    let in_env = |namespace: &str, args: &[&str]| -> Vec<Value> {
        let out = Command::new(env!("CARGO_BIN_EXE_dduomq"))
            .env("DDUOMQ_NAMESPACE", namespace)
            .args(["--server", &b.grpc, "-o", "json"])
            .args(args)
            .output()
            .expect("run dduomq");
        assert!(
            out.status.success(),
            "dduomq {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        json_lines(&String::from_utf8(out.stdout).unwrap())
    };
    let names = |listed: &[Value]| -> Vec<String> {
        listed[0]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect()
    };
    ok(
        &b,
        &["-n", "shop", "topic", "create", "orders", "--queues", "1"],
    );
    ok(
        &b,
        &[
            "--namespace",
            "billing",
            "topic",
            "create",
            "orders",
            "--queues",
            "1",
        ],
    );
    assert_eq!(names(&in_env("shop", &["topic", "list"])), ["orders"]);
    assert_eq!(
        names(&ok_json(&b, &["topic", "list", "-o", "json"])),
        Vec::<String>::new()
    );

    ok(
        &b,
        &[
            "-n", "shop", "produce", "--topic", "orders", "--count", "2", "--size", "8",
        ],
    );
    let got = in_env(
        "billing",
        &[
            "consume",
            "--topic",
            "orders",
            "--group",
            "g",
            "--count",
            "1",
            "--timeout",
            "2s",
        ],
    );
    assert_eq!(got, Vec::<Value>::new(), "billing's orders is empty");
    let got = in_env(
        "shop",
        &[
            "consume",
            "--topic",
            "orders",
            "--group",
            "g",
            "--count",
            "2",
            "--timeout",
            "10s",
        ],
    );
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|m| m["topic"] == "orders"), "{got:?}");

    let out = dduomq(&b, &["-n", "not valid", "topic", "list"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("namespace \"not valid\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
