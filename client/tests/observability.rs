//! Observability proven on a real Prometheus: it scrapes a loaded broker and the
//! operator, then every PromQL expression of every shipped Grafana dashboard panel
//! must return at least one series, every alert rule must evaluate without error,
//! and `promtool` must accept the rule file and both `/metrics` outputs.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dduomq_client::proto as pb;
use dduomq_client::{Admin, Message, ProducerBuilder, PullConsumerBuilder, PushConsumerBuilder};
use dduomq_testkit::{Broker, eventually, free_port, http_get, sibling_binary};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A tool the test cannot run without: CI installs it (.ci/run); a missing one
/// fails the test loudly.
fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.exists());
    found.unwrap_or_else(|| {
        panic!("`{name}` is required (Debian package `prometheus`; .ci/run installs it)")
    })
}

/// Kills a child process when dropped.
struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn api(prom: &str, path: &str) -> Value {
    let (code, body) =
        http_get(prom, path).unwrap_or_else(|| panic!("no answer from Prometheus for {path}"));
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    assert_eq!(code, 200, "{path}: {body}");
    v
}

/// Every `expr` of every panel target, rows' nested panels included.
fn dashboard_exprs(v: &Value, out: &mut Vec<(String, String)>, title: &str) {
    match v {
        Value::Object(map) => {
            let title = map.get("title").and_then(Value::as_str).unwrap_or(title);
            if let Some(Value::Array(targets)) = map.get("targets") {
                for t in targets {
                    if let Some(e) = t.get("expr").and_then(Value::as_str) {
                        out.push((title.to_string(), e.to_string()));
                    }
                }
            }
            for (k, child) in map {
                if k != "targets" {
                    dashboard_exprs(child, out, title);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| dashboard_exprs(i, out, title)),
        _ => {}
    }
}

async fn load(b: &Broker) {
    let admin = Admin::connect(&b.grpc).unwrap();
    admin
        .create_topic("orders", 2, pb::MessageType::Normal)
        .await
        .unwrap();
    admin
        .create_topic("audit", 2, pb::MessageType::Normal)
        .await
        .unwrap();
    admin
        .create_group(pb::Group {
            name: "billing".into(),
            max_delivery_attempts: 2,
            retry_backoff_ms: vec![50],
            ..Default::default()
        })
        .await
        .unwrap();
    let producer = ProducerBuilder::new(&b.grpc).build().unwrap();
    for i in 0..100 {
        producer
            .send(Message::new("orders", format!("order-{i}")))
            .await
            .unwrap();
        producer
            .send(Message::new("audit", format!("entry-{i}")))
            .await
            .unwrap();
    }
    producer
        .send(Message::new("orders", "poison"))
        .await
        .unwrap();
    // Push consumption with nacks (retries) and one dead letter.
    let consumer = PushConsumerBuilder::new(&b.grpc, "billing", "orders")
        .start(|m| async move {
            if &m.body[..] == b"poison" {
                Err("refused")
            } else {
                Ok(())
            }
        })
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "a dead letter", async || {
        let d = admin.describe_topic("%DLQ%billing").await.unwrap();
        (d.queues.iter().map(|q| q.max_offset).sum::<u64>() == 1).then_some(())
    })
    .await;
    // Pull consumption with commits.
    let puller = PullConsumerBuilder::new(&b.grpc, "auditors", vec!["audit".into()])
        .build()
        .await
        .unwrap();
    let mut n = 0;
    while n < 100 {
        n += puller.poll(50, Duration::from_secs(2)).await.unwrap().len();
    }
    puller.commit().await.unwrap();
    // Keep the push consumer (and its stream) open while Prometheus scrapes.
    std::mem::forget(consumer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alerts_work_on_a_real_prometheus() {
    let (prometheus, promtool) = (tool("prometheus"), tool("promtool"));
    let b = Broker::start();
    let operator_http = format!("127.0.0.1:{}", free_port());
    let _operator = Killed(
        Command::new(sibling_binary("dduomq-operator"))
            .args(["--http-addr", &operator_http])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    load(&b).await;

    let rules = repo().join("helm/dduomq/rules/dduomq-alerts.yaml");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: dduomq-broker\n    static_configs:\n      - targets: ['{}']\n  - job_name: dduomq-operator\n    static_configs:\n      - targets: ['{}']\n",
            rules.display(),
            b.http,
            operator_http
        ),
    )
    .unwrap();
    let prom = format!("127.0.0.1:{}", free_port());
    let _prometheus = Killed(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={prom}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    eventually(Duration::from_secs(30), "Prometheus ready", async || {
        http_get(&prom, "/-/ready").filter(|(c, _)| *c == 200)
    })
    .await;
    // Both targets scraped at least 4 times: enough samples for rate() over 1m.
    let query = percent_encode("count(count_over_time(up[1m]) >= 4)");
    eventually(
        Duration::from_secs(60),
        "four scrapes of both targets",
        async || {
            let v = api(&prom, &format!("/api/v1/query?query={query}"));
            (v["data"]["result"][0]["value"][1] == "2").then_some(())
        },
    )
    .await;

    let mut exprs = Vec::new();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(repo().join("helm/dduomq/dashboards")).unwrap() {
        let path = entry.unwrap().path();
        let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let mut found = Vec::new();
        dashboard_exprs(&json, &mut found, "");
        assert!(!found.is_empty(), "{name} has no queries");
        exprs.extend(found.into_iter().map(|(t, e)| (format!("{name}: {t}"), e)));
        files.push(name);
    }
    let files: BTreeSet<String> = files.into_iter().collect();
    for expected in [
        "overview.json",
        "topics.json",
        "consumer-groups.json",
        "storage.json",
        "operator.json",
    ] {
        assert!(files.contains(expected), "dashboard {expected} missing");
    }
    let mut empty = Vec::new();
    for (panel, expr) in &exprs {
        let q = expr
            .replace("$__rate_interval", "1m")
            .replace("$topic", ".*")
            .replace("$group", ".*");
        let v = api(
            &prom,
            &format!("/api/v1/query?query={}", percent_encode(&q)),
        );
        assert_eq!(v["status"], "success", "{panel}: {q}: {v}");
        if v["data"]["result"].as_array().is_none_or(|r| r.is_empty()) {
            empty.push(format!("{panel}: {q}"));
        }
    }
    assert!(
        empty.is_empty(),
        "panels without data:\n{}",
        empty.join("\n")
    );
    eprintln!(
        "{} dashboard queries over {} dashboards returned data",
        exprs.len(),
        files.len()
    );

    // Every rule evaluated, none with an error.
    let rules_state = eventually(Duration::from_secs(20), "rules evaluated", async || {
        let v = api(&prom, "/api/v1/rules");
        let rules: Vec<Value> = v["data"]["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        (!rules.is_empty() && rules.iter().all(|r| r["health"] != "unknown")).then_some(rules)
    })
    .await;
    for r in &rules_state {
        assert_eq!(
            r["health"], "ok",
            "rule {} failed: {}",
            r["name"], r["lastError"]
        );
    }
    assert!(
        rules_state.len() >= 6,
        "only {} alert rules",
        rules_state.len()
    );

    let out = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    for (what, addr) in [("broker", &b.http), ("operator", &operator_http)] {
        let (code, body) = http_get(addr, "/metrics").unwrap();
        assert_eq!(code, 200);
        let mut check = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        check
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let out = check.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics ({what}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
