//! Idempotent producers: a retried send within the window is stored once, also
//! across a clean restart and a crash, and when the SDK retries sends whose
//! responses a broker crash swallowed.

use std::collections::BTreeSet;
use std::time::Duration;

use dduomq_client::proto as pb;
use dduomq_client::proto::messaging_service_client::MessagingServiceClient;
use dduomq_client::{Admin, Message, ProducerBuilder};
use dduomq_testkit::{Broker, stored};

fn batch(producer: &str, seqs: std::ops::Range<u64>) -> pb::SendRequest {
    pb::SendRequest {
        messages: seqs
            .map(|s| pb::OutgoingMessage {
                topic: "payments".into(),
                body: format!("payment {s}").into_bytes().into(),
                producer_id: producer.into(),
                sequence: s,
                queue_id: Some((s % 2) as u32),
                ..Default::default()
            })
            .collect(),
    }
}

async fn send(b: &Broker, req: pb::SendRequest) -> Vec<pb::SendReceipt> {
    let mut c = MessagingServiceClient::connect(format!("http://{}", b.grpc))
        .await
        .unwrap();
    c.send(req).await.unwrap().into_inner().receipts
}

/// A broker with the two-queue topic `payments`.
async fn broker_with_payments() -> Broker {
    let b = Broker::start();
    Admin::connect(&b.grpc)
        .unwrap()
        .create_topic("payments", 2, pb::MessageType::Normal)
        .await
        .unwrap();
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_stored_once_across_restart_and_crash() {
    let mut b = broker_with_payments().await;
    let first = send(&b, batch("p1", 0..10)).await;
    assert_eq!(
        send(&b, batch("p1", 0..10)).await,
        first,
        "a retry gets the original receipts"
    );
    assert_eq!(stored(&b, "payments").await, 10);
    // Part new, part retried: only the new ones are stored.
    let mixed = send(&b, batch("p1", 5..15)).await;
    assert_eq!(&mixed[..5], &first[5..]);
    assert_eq!(stored(&b, "payments").await, 15);
    // Another producer with the same sequences is another producer.
    send(&b, batch("p2", 0..5)).await;
    assert_eq!(stored(&b, "payments").await, 20);

    b.restart();
    assert_eq!(
        send(&b, batch("p1", 0..10)).await,
        first,
        "after a clean restart"
    );
    assert_eq!(stored(&b, "payments").await, 20);

    // Stored right before a crash (no snapshot yet): found again by the scan.
    let late = send(&b, batch("p1", 15..25)).await;
    b.kill();
    b.start_again();
    assert_eq!(send(&b, batch("p1", 15..25)).await, late, "after a crash");
    assert_eq!(send(&b, batch("p1", 0..10)).await, first);
    assert_eq!(stored(&b, "payments").await, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_retries_across_broker_crashes_store_each_message_once() {
    let mut b = broker_with_payments().await;
    let producer = ProducerBuilder::new(&b.grpc)
        .send_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut pending = Vec::new();
    for round in 0..3 {
        for i in 0..200 {
            pending.push(producer.send_async(Message::new("payments", format!("r{round}-m{i}"))));
            if i % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        // Crash with sends in flight: their responses are lost, the SDK retries.
        b.kill();
        b.start_again();
    }
    let mut ids = BTreeSet::new();
    for p in pending {
        let r = p.await.unwrap().expect("every send succeeds eventually");
        ids.insert(r.message_id);
    }
    assert_eq!(ids.len(), 600, "600 distinct receipts");
    assert_eq!(
        stored(&b, "payments").await,
        600,
        "each message stored exactly once"
    );
}
