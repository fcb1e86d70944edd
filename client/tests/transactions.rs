//! Transactional messages: invisible until committed, discarded on rollback,
//! resolved by another producer of the group when the first is killed
//! mid-transaction, rolled back after the last unanswered check, and intact
//! across a broker crash.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use dduomq_client::Reason;
use dduomq_client::proto as pb;
use dduomq_client::proto::messaging_service_client::MessagingServiceClient;
use dduomq_client::{
    Message, ProducerBuilder, PushConsumer, PushConsumerBuilder, ReceivedMessage,
    TransactionProducer, TransactionResolution,
};
use dduomq_testkit::{Broker, Options, create_topics, eventually, stored};
use parking_lot::Mutex;

/// Checks start 500 ms after a half message is stored, repeat every 250 ms,
/// and 8 unanswered checks roll it back.
const CHECKS: &str = "[broker]\ntransaction_check_after = \"500ms\"\ntransaction_check_interval = \"250ms\"\ntransaction_max_checks = 8\n";

async fn broker(config: &str) -> Broker {
    let b = Broker::start_with(Options {
        config: Some(config.into()),
        ..Default::default()
    });
    create_topics(
        &b,
        &[
            ("payments", 2, pb::MessageType::Transaction),
            ("plain", 1, pb::MessageType::Normal),
        ],
    )
    .await;
    b
}

/// A consumer recording `(body, message id)` of every delivery.
async fn consumer(b: &Broker) -> (PushConsumer, Arc<Mutex<Vec<(String, String)>>>) {
    let got: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let log = got.clone();
    let c = PushConsumerBuilder::new(&b.grpc, "ledger", "payments")
        .start(move |m| {
            let log = log.clone();
            async move {
                let body = String::from_utf8(m.body.to_vec()).unwrap();
                log.lock().push((body, m.message_id.clone()));
                Ok::<(), String>(())
            }
        })
        .await
        .unwrap();
    (c, got)
}

async fn end(
    b: &Broker,
    id: &str,
    group: &str,
    resolution: pb::TransactionResolution,
) -> Result<(), Option<Reason>> {
    let mut c = MessagingServiceClient::connect(format!("http://{}", b.grpc))
        .await
        .unwrap();
    c.end_transaction(pb::EndTransactionRequest {
        topic: "payments".into(),
        transaction_id: id.into(),
        producer_group: group.into(),
        resolution: resolution as i32,
        from_check: false,
    })
    .await
    .map(|_| ())
    .map_err(|s| dduomq_client::ClientError::from(s).reason())
}

/// Waits until the broker holds no unresolved transaction (its gauge, read
/// without touching any transaction).
async fn all_resolved(b: &Broker) {
    eventually(Duration::from_secs(20), "no open transaction", async || {
        (b.metric("dduomq_transactions_pending")? == 0.0).then_some(())
    })
    .await;
}

fn bodies(got: &Mutex<Vec<(String, String)>>) -> Vec<String> {
    let mut v: Vec<String> = got.lock().iter().map(|(b, _)| b.clone()).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_rollback_and_expiry_after_the_last_check() {
    let b = broker(CHECKS).await;
    use pb::TransactionResolution::{Commit, Rollback};
    // Type checks both ways.
    let plain = ProducerBuilder::new(&b.grpc).build().unwrap();
    let e = plain
        .send(Message::new("payments", "not transactional"))
        .await
        .unwrap_err();
    assert_eq!(e.reason(), Some(Reason::MessageTypeMismatch), "{e}");
    let checks = Arc::new(AtomicU32::new(0));
    let asked = checks.clone();
    let producer = TransactionProducer::new(
        ProducerBuilder::new(&b.grpc),
        "shop",
        move |m: &ReceivedMessage| {
            if &m.body[..] == b"abandoned" {
                asked.fetch_add(1, Ordering::SeqCst);
            }
            TransactionResolution::Unknown
        },
    )
    .unwrap();
    let e = producer
        .begin(Message::new("plain", "x"))
        .await
        .unwrap_err();
    assert_eq!(e.reason(), Some(Reason::MessageTypeMismatch), "{e}");

    let (c, got) = consumer(&b).await;
    let committed = producer
        .begin(Message::new("payments", "committed"))
        .await
        .unwrap();
    let rolled_back = producer
        .begin(Message::new("payments", "rolled back"))
        .await
        .unwrap();
    let abandoned = producer
        .begin(Message::new("payments", "abandoned"))
        .await
        .unwrap();
    let (committed_id, rolled_back_id, abandoned_id) = (
        committed.id().to_string(),
        rolled_back.id().to_string(),
        abandoned.id().to_string(),
    );
    assert_eq!(committed.receipt.message_id, committed_id);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(got.lock().is_empty(), "half messages are invisible");
    assert_eq!(stored(&b, "payments").await, 0);

    committed.commit().await.unwrap();
    rolled_back.rollback().await.unwrap();
    eventually(
        Duration::from_secs(10),
        "the committed message",
        async || (!got.lock().is_empty()).then_some(()),
    )
    .await;
    assert_eq!(
        got.lock()[0],
        ("committed".to_string(), committed_id.clone()),
        "delivered with the id the producer got"
    );
    // Ending again: the same way is fine, the other way is refused.
    assert_eq!(end(&b, &committed_id, "shop", Commit).await, Ok(()));
    assert_eq!(
        end(&b, &committed_id, "shop", Rollback).await,
        Err(Some(Reason::TransactionResolved))
    );
    assert_eq!(
        end(&b, &rolled_back_id, "shop", Commit).await,
        Err(Some(Reason::TransactionResolved))
    );
    assert_eq!(
        end(&b, &abandoned_id, "another-group", Commit).await,
        Err(Some(Reason::TransactionNotFound)),
        "only its own producer group ends a transaction"
    );
    assert_eq!(
        end(&b, "00000000000000000000000000000000", "shop", Commit).await,
        Err(Some(Reason::TransactionNotFound))
    );

    // The abandoned one is checked 8 times (the checker says Unknown), then
    // rolled back: committing it afterwards is refused.
    all_resolved(&b).await;
    assert_eq!(
        end(&b, &abandoned_id, "shop", Commit).await,
        Err(Some(Reason::TransactionResolved))
    );
    assert_eq!(end(&b, &abandoned_id, "shop", Rollback).await, Ok(()));
    assert_eq!(
        checks.load(Ordering::SeqCst),
        8,
        "one check of the abandoned transaction per attempt"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(bodies(&got), vec!["committed"]);
    assert_eq!(stored(&b, "payments").await, 1);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_producers_transactions_are_resolved_by_another_of_its_group() {
    let b = broker(CHECKS).await;
    use pb::TransactionResolution::{Commit, Rollback};
    // A CLI producer of group `shop` leaves six transactions open and is
    // SIGKILLed while still running (waiting for more input).
    let mut cli = Command::new(dduomq_testkit::sibling_binary("dduomq"))
        .args(["--server", &b.grpc, "-o", "json", "produce"])
        .args(["--topic", "payments", "--transaction", "none"])
        .args(["--producer-group", "shop"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = cli.stdin.take().unwrap();
    let mut lines = BufReader::new(cli.stdout.take().unwrap()).lines();
    let mut ids: HashMap<String, String> = HashMap::new();
    for i in 0..6 {
        writeln!(stdin, "order {i}").unwrap();
        let line = lines.next().unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["transaction"], "open", "{line}");
        ids.insert(
            format!("order {i}"),
            v["transaction_id"].as_str().unwrap().to_string(),
        );
    }
    cli.kill().unwrap();
    cli.wait().unwrap();
    drop(stdin);

    let (c, got) = consumer(&b).await;
    // Another producer of the group commits even orders and rolls back odd ones.
    let asked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let seen = asked.clone();
    let _resolver = TransactionProducer::new(
        ProducerBuilder::new(&b.grpc),
        "shop",
        move |m: &ReceivedMessage| {
            let body = String::from_utf8(m.body.to_vec()).unwrap();
            seen.lock().insert(body.clone());
            let n: u32 = body.trim_start_matches("order ").parse().unwrap();
            if n.is_multiple_of(2) {
                TransactionResolution::Commit
            } else {
                TransactionResolution::Rollback
            }
        },
    )
    .unwrap();
    all_resolved(&b).await;
    for (body, id) in &ids {
        let n: u32 = body.trim_start_matches("order ").parse().unwrap();
        let (same, other) = if n.is_multiple_of(2) {
            (Commit, Rollback)
        } else {
            (Rollback, Commit)
        };
        assert_eq!(end(&b, id, "shop", same).await, Ok(()), "{body}");
        assert_eq!(
            end(&b, id, "shop", other).await,
            Err(Some(Reason::TransactionResolved)),
            "{body}"
        );
    }
    eventually(
        Duration::from_secs(10),
        "the committed orders",
        async || (got.lock().len() >= 3).then_some(()),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(bodies(&got), vec!["order 0", "order 2", "order 4"]);
    for (body, id) in got.lock().iter() {
        assert_eq!(&ids[body], id, "{body} keeps its transaction's id");
    }
    assert_eq!(asked.lock().len(), 6, "every open transaction was checked");
    assert_eq!(stored(&b, "payments").await, 3);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_transactions_survive_a_broker_crash() {
    // No checks during this test: only the producer resolves.
    let mut b = broker("[broker]\ntransaction_check_after = \"1h\"\n").await;
    let producer = TransactionProducer::new(
        ProducerBuilder::new(&b.grpc),
        "shop",
        |_: &ReceivedMessage| TransactionResolution::Unknown,
    )
    .unwrap();
    let keep = producer
        .begin(Message::new("payments", "keep"))
        .await
        .unwrap();
    let drop_it = producer
        .begin(Message::new("payments", "drop"))
        .await
        .unwrap();
    let keep_id = keep.id().to_string();
    b.kill();
    b.start_again();
    keep.commit().await.unwrap();
    drop_it.rollback().await.unwrap();
    let (c, got) = consumer(&b).await;
    eventually(
        Duration::from_secs(10),
        "the committed message",
        async || (!got.lock().is_empty()).then_some(()),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(*got.lock(), vec![("keep".to_string(), keep_id)]);
    assert_eq!(stored(&b, "payments").await, 1);
    c.shutdown().await;
}
