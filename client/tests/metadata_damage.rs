//! Damaged metadata files (`<data_dir>/metadata/`): each file flipped,
//! truncated, zeroed and deleted. The broker either starts and every
//! unconsumed message is still delivered, byte-exact, to its group, or it
//! refuses to start with a message naming the file, and `dduomq-storetool
//! verify` reports the file too. Files derived from the commit log (staged
//! messages, producer windows) are always rebuilt; losing topic metadata
//! brings the topic back from the store.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dduomq_client::proto as pb;
use dduomq_client::{Admin, Message, ProducerBuilder, PushConsumerBuilder};
use dduomq_testkit::{Broker, Options, copy_dir, eventually, free_port, http_get, sibling_binary};
use parking_lot::Mutex;

const CONSUMED: usize = 30;
/// Small segments keep the copies of the data directory small.
const CONFIG: &str = "[store]\nsegment_size_bytes = 8388608\nmax_record_size_bytes = 1048576\n";
const UNCONSUMED: usize = 20;

/// How a damaged copy of the data directory fared.
enum Outcome {
    Started(Child),
    Refused(String),
}

/// Runs the broker binary on `data_dir` until it is ready or exits.
fn run_broker(data_dir: &Path, grpc: &str, http: &str, config: &Path, log: &Path) -> Outcome {
    let out = std::fs::File::create(log).unwrap();
    let mut child = Command::new(sibling_binary("dduomq-broker"))
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--config")
        .arg(config)
        .args(["--grpc-addr", grpc, "--http-addr", http])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().unwrap().is_some() {
            return Outcome::Refused(std::fs::read_to_string(log).unwrap());
        }
        if http_get(http, "/readyz").is_some_and(|(code, _)| code == 200) {
            return Outcome::Started(child);
        }
        assert!(Instant::now() < deadline, "broker neither ready nor exited");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    Flip,
    Truncate,
    Zero,
    Delete,
}

impl Damage {
    fn apply(self, path: &Path) {
        let len = std::fs::metadata(path).unwrap().len();
        let f = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .unwrap()
        };
        match self {
            Damage::Flip => {
                let at = len / 2;
                let mut b = [0u8];
                f().read_exact_at(&mut b, at).unwrap();
                f().write_all_at(&[b[0] ^ 0x5A], at).unwrap();
            }
            Damage::Truncate => f().set_len(len / 2).unwrap(),
            Damage::Zero => f().write_all_at(&vec![0u8; len as usize], 0).unwrap(),
            Damage::Delete => std::fs::remove_file(path).unwrap(),
        }
    }
}

/// Files rebuilt from the commit log: the broker must always start.
fn derived(name: &str) -> bool {
    matches!(name, "staged.json" | "producers.json")
}

/// Receives from `group` until `expected` arrived (and a little longer, to
/// catch extras); returns every body received.
async fn receive(grpc: &str, group: &str, expected: &BTreeSet<String>) -> Vec<String> {
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = got.clone();
    let consumer = PushConsumerBuilder::new(grpc, group, "orders")
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
    eventually(
        Duration::from_secs(20),
        "the unconsumed messages",
        async || {
            let seen: BTreeSet<String> = got.lock().iter().cloned().collect();
            expected.is_subset(&seen).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    consumer.shutdown().await;
    got.lock().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_metadata_is_rebuilt_or_refused_by_name() {
    let mut b = Broker::start_with(Options {
        config: Some(CONFIG.into()),
        ..Options::default()
    });
    let admin = Admin::connect(&b.grpc).unwrap();
    admin
        .create_topic("orders", 2, pb::MessageType::Normal)
        .await
        .unwrap();
    let producer = ProducerBuilder::new(&b.grpc).build().unwrap();
    let consumed: BTreeSet<String> = (0..CONSUMED).map(|i| format!("old-{i:02}")).collect();
    for body in &consumed {
        producer
            .send(Message::new("orders", body.clone()).with_key(body.clone()))
            .await
            .unwrap();
    }
    let first = receive(&b.grpc, "billing", &consumed).await;
    assert_eq!(first.len(), CONSUMED, "{first:?}");
    let unconsumed: BTreeSet<String> = (0..UNCONSUMED).map(|i| format!("new-{i:02}")).collect();
    for body in &unconsumed {
        producer
            .send(Message::new("orders", body.clone()))
            .await
            .unwrap();
    }
    drop(producer);
    b.stop();

    let backup = tempfile::tempdir().unwrap();
    copy_dir(&b.data_dir(), backup.path());
    let mut files: Vec<PathBuf> = std::fs::read_dir(backup.path().join("metadata"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for needed in ["offsets.json", "topics.log", "groups.log"] {
        assert!(names.iter().any(|n| n == needed), "{needed} in {names:?}");
    }

    let mut summary = Vec::new();
    for name in &names {
        for damage in [Damage::Flip, Damage::Truncate, Damage::Zero, Damage::Delete] {
            let case = tempfile::tempdir().unwrap();
            let (grpc, http) = (
                format!("127.0.0.1:{}", free_port()),
                format!("127.0.0.1:{}", free_port()),
            );
            let data = case.path().join("data");
            copy_dir(backup.path(), &data);
            damage.apply(&data.join("metadata").join(name));
            let config = case.path().join("broker.toml");
            std::fs::write(&config, CONFIG).unwrap();
            let verify = Command::new(sibling_binary("dduomq-storetool"))
                .args(["verify", "--data-dir"])
                .arg(&data)
                .arg("--config")
                .arg(&config)
                .output()
                .unwrap();
            let verified = String::from_utf8_lossy(&verify.stdout).into_owned();
            // A fresh copy: verify repairs what it can.
            std::fs::remove_dir_all(&data).unwrap();
            copy_dir(backup.path(), &data);
            damage.apply(&data.join("metadata").join(name));
            match run_broker(
                &data,
                &grpc,
                &http,
                &config,
                &case.path().join("broker.log"),
            ) {
                Outcome::Refused(output) => {
                    assert!(
                        !derived(name),
                        "{name} {damage:?}: derived files are rebuilt, never refused:\n{output}"
                    );
                    assert!(
                        output.contains(name.as_str()),
                        "{name} {damage:?}: the refusal does not name the file:\n{output}"
                    );
                    assert_eq!(verify.status.code(), Some(1), "{verified}");
                    assert!(
                        verified
                            .lines()
                            .any(|l| l.starts_with("damage: metadata") && l.contains(name.as_str())),
                        "{name} {damage:?}: verify does not report it:\n{verified}"
                    );
                    summary.push(format!("{name} {damage:?}: refused, naming the file"));
                }
                Outcome::Started(mut child) => {
                    let got = receive(&grpc, "billing", &unconsumed).await;
                    child.kill().unwrap();
                    child.wait().unwrap();
                    let all: BTreeSet<String> = consumed.union(&unconsumed).cloned().collect();
                    for body in &got {
                        assert!(all.contains(body), "{name} {damage:?}: unknown body {body}");
                    }
                    let redelivered = got.iter().filter(|b| consumed.contains(*b)).count();
                    if name != "offsets.json" {
                        assert_eq!(
                            redelivered, 0,
                            "{name} {damage:?}: progress was kept, nothing acked comes back"
                        );
                    }
                    summary.push(format!(
                        "{name} {damage:?}: started, {} unconsumed delivered, {redelivered} redelivered",
                        UNCONSUMED
                    ));
                }
            }
        }
    }
    for line in &summary {
        println!("{line}");
    }
}
