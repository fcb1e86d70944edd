//! The official RocketMQ Java client (rocketmq-client-java from Maven Central)
//! against a broker with authentication on: with an access key and secret key
//! (its `StaticSessionCredentialsProvider`, RocketMQ's MQv2-HMAC-SHA1
//! signature) it produces and consumes; with a wrong secret it is refused
//! and nothing is stored.

#[path = "auth/users.rs"]
#[allow(dead_code)] // shared with the other auth suites
mod users;

use std::collections::BTreeMap;

use dduomq_client::proto as pb;
use dduomq_testkit::{Broker, rocketmq};
use serde_json::Value;
use users::{ADMIN, Secrets, TestUser};

const JAVA_APP: TestUser = TestUser {
    name: "java-app",
    access_key: "java-app-key",
    secret_key: "java-app-secret-0123456789",
    grants: r#"[{ actions = ["publish", "subscribe"], resources = ["topic:normal-*", "group:normal-*"] }]"#,
};

/// Runs the Java program's `scenario` signed with `access_key` and `secret_key`.
fn run_java(
    b: &Broker,
    run: &str,
    scenario: &str,
    access_key: &str,
    secret_key: &str,
) -> Vec<Value> {
    let work = tempfile::tempdir().unwrap();
    let out = rocketmq::java_scenarios(work.path())
        .arg(&b.grpc)
        .arg(run)
        .arg(scenario)
        .env("DDUOMQ_ACCESS_KEY", access_key)
        .env("DDUOMQ_SECRET_KEY", secret_key)
        .output()
        .expect("run the Java scenarios");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "java {scenario} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Message id → body of the lines of `event`.
fn bodies(lines: &[Value], event: &str) -> BTreeMap<String, String> {
    lines
        .iter()
        .filter(|l| l["event"] == event)
        .map(|l| {
            (
                l["id"].as_str().unwrap().into(),
                l["body"].as_str().unwrap().into(),
            )
        })
        .collect()
}

/// Signed, but granted other topics only.
const JAVA_OTHER: TestUser = TestUser {
    name: "java-other",
    access_key: "java-other-key",
    secret_key: "java-other-secret-0123456789",
    grants: r#"[{ actions = ["publish", "subscribe"], resources = ["topic:other-*"] }]"#,
};

/// The one `refused` line of a run, and its error.
fn refusal(lines: &[Value]) -> String {
    let refused: Vec<&Value> = lines.iter().filter(|l| l["event"] == "refused").collect();
    assert_eq!(refused.len(), 1, "the send was not refused: {lines:?}");
    refused[0]["error"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_java_client_signs_with_its_access_key_and_a_wrong_secret_is_refused() {
    let secrets = Secrets::new(&[ADMIN, JAVA_APP, JAVA_OTHER]);
    let b = secrets.start_broker("");
    let run = format!("auth{}", std::process::id());
    let topic = format!("normal-{run}");
    let admin = b
        .admin()
        .with_credentials(Some(ADMIN.credentials()))
        .unwrap();
    admin
        .create_topic(&topic, 4, pb::MessageType::Normal)
        .await
        .unwrap();
    admin
        .create_group(pb::Group {
            name: topic.clone(),
            ..Default::default()
        })
        .await
        .unwrap();

    let lines = run_java(&b, &run, "normal", JAVA_APP.access_key, JAVA_APP.secret_key);
    let sent = bodies(&lines, "sent");
    assert_eq!(sent.len(), 20, "{lines:?}");
    assert_eq!(bodies(&lines, "received"), sent);
    assert_eq!(bodies(&lines, "acked"), sent);

    let lines = run_java(&b, &run, "refused", JAVA_APP.access_key, "not-the-secret");
    let error = refusal(&lines);
    assert!(error.contains("UNAUTHENTICATED"), "{error}");
    // Signed, without a right on the topic: the protocol's FORBIDDEN.
    let lines = run_java(
        &b,
        &run,
        "refused",
        JAVA_OTHER.access_key,
        JAVA_OTHER.secret_key,
    );
    let error = refusal(&lines);
    assert!(error.contains("PERMISSION_DENIED"), "{error}");
    let stored: u64 = admin
        .describe_topic(&topic)
        .await
        .unwrap()
        .queues
        .iter()
        .map(|q| q.max_offset - q.min_offset)
        .sum();
    assert_eq!(stored, 20, "a refused send was stored");
}
