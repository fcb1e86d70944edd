//! Namespaces as tenants, through the SDK against a real broker process: the
//! same names in two namespaces are separate topics and groups (exact bytes
//! each side), lists and lookups see only the caller's namespace, a namespaced
//! group's dead letters stay in its namespace, and names too long with their
//! namespace, names with `%` and bad namespaces are refused. No namespace is
//! the namespace `default`. Transactions and their checks stay in their
//! namespace. Refusals name topics and groups as the namespace does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use dduomq_client::proto as pb;
use dduomq_client::{
    Admin, ClientError, Message, ProducerBuilder, PushConsumerBuilder, Reason, ReceivedMessage,
    TopicSettings, TransactionProducer, TransactionResolution, now_millis,
};
use dduomq_testkit::{Broker, Options, eventually};
use parking_lot::Mutex;

const WAIT: Duration = Duration::from_secs(30);

fn admin(b: &Broker, namespace: &str) -> Admin {
    Admin::connect(&b.grpc)
        .unwrap()
        .in_namespace(namespace)
        .unwrap()
}

async fn send(b: &Broker, namespace: &str, topic: &str, bodies: &[&str]) {
    let producer = ProducerBuilder::new(&b.grpc)
        .namespace(namespace)
        .build()
        .unwrap();
    for body in bodies {
        let receipt = producer
            .send(Message::new(topic, body.to_string()))
            .await
            .unwrap();
        assert_eq!(receipt.topic, topic, "receipts name the topic as sent");
    }
}

/// Consumes `count` messages of `topic` as group `group` of `namespace`, one
/// handler at a time (in delivery order); `fail` nacks every delivery.
async fn consume(
    b: &Broker,
    namespace: &str,
    group: &str,
    topic: &str,
    count: usize,
    fail: bool,
) -> Vec<ReceivedMessage> {
    let seen: Arc<Mutex<Vec<ReceivedMessage>>> = Arc::default();
    let log = seen.clone();
    let consumer = PushConsumerBuilder::new(&b.grpc, group, topic)
        .namespace(namespace)
        .concurrency(1)
        .start(move |m| {
            let log = log.clone();
            async move {
                log.lock().push(m);
                if fail { Err("fails") } else { Ok(()) }
            }
        })
        .await
        .unwrap();
    eventually(WAIT, &format!("{count} messages of {topic}"), async || {
        (seen.lock().len() >= count).then_some(())
    })
    .await;
    consumer.shutdown().await;
    seen.lock().clone()
}

fn bodies(messages: &[ReceivedMessage]) -> Vec<String> {
    messages
        .iter()
        .map(|m| String::from_utf8(m.body.to_vec()).unwrap())
        .collect()
}

fn names_of_topics(topics: &[pb::Topic]) -> Vec<&str> {
    topics.iter().map(|t| t.name.as_str()).collect()
}

fn names_of_groups(groups: &[pb::Group]) -> Vec<&str> {
    groups.iter().map(|g| g.name.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_names_in_two_namespaces_are_separate() {
    let b = Broker::start();
    for ns in ["shop", "billing"] {
        admin(&b, ns)
            .create_topic("orders", 1, pb::MessageType::Normal)
            .await
            .unwrap();
    }
    assert_eq!(
        names_of_topics(&admin(&b, "shop").list_topics().await.unwrap()),
        ["orders"]
    );
    assert_eq!(admin(&b, "").list_topics().await.unwrap(), []);
    assert_eq!(
        admin(&b, "")
            .describe_topic("orders")
            .await
            .unwrap_err()
            .reason(),
        Some(Reason::TopicNotFound),
        "the default namespace has no orders"
    );

    send(&b, "shop", "orders", &["shop-0", "shop-1", "shop-2"]).await;
    send(&b, "billing", "orders", &["billing-0", "billing-1"]).await;
    let shop = consume(&b, "shop", "readers", "orders", 3, false).await;
    let billing = consume(&b, "billing", "readers", "orders", 2, false).await;
    assert_eq!(bodies(&shop), ["shop-0", "shop-1", "shop-2"]);
    assert_eq!(bodies(&billing), ["billing-0", "billing-1"]);
    assert!(
        shop.iter().chain(&billing).all(|m| m.topic == "orders"),
        "deliveries name the topic as the namespace spells it"
    );

    for ns in ["shop", "billing"] {
        let a = admin(&b, ns);
        let described = a.describe_group("readers").await.unwrap();
        assert_eq!(described.group.unwrap().name, "readers");
        assert!(described.queues.iter().all(|q| q.topic == "orders"));
        assert_eq!(
            names_of_groups(&a.list_groups().await.unwrap()),
            ["readers"]
        );
        let found = a.lookup_by_id(&shop[0].message_id).await;
        if ns == "shop" {
            assert_eq!(bodies(&[found.unwrap()[0].clone().into()]), ["shop-0"]);
        } else {
            assert_eq!(
                found.unwrap_err().reason(),
                Some(Reason::MessageNotFound),
                "another namespace's message is not found"
            );
        }
    }
    assert_eq!(admin(&b, "").list_groups().await.unwrap(), []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespaced_groups_dead_letters_stay_in_its_namespace() {
    let b = Broker::start();
    let shop = admin(&b, "shop");
    shop.create_topic("orders", 1, pb::MessageType::Normal)
        .await
        .unwrap();
    shop.create_group(pb::Group {
        name: "strict".into(),
        max_delivery_attempts: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    send(&b, "shop", "orders", &["poison"]).await;
    consume(&b, "shop", "strict", "orders", 1, true).await;

    eventually(WAIT, "the dead letter", async || {
        let d = shop.describe_topic("%DLQ%strict").await.ok()?;
        (d.queues.iter().map(|q| q.max_offset).sum::<u64>() == 1).then_some(())
    })
    .await;
    assert!(
        names_of_topics(&shop.list_topics().await.unwrap()).contains(&"%DLQ%strict"),
        "the DLQ topic is listed in its namespace"
    );
    assert_eq!(
        admin(&b, "")
            .describe_topic("%DLQ%strict")
            .await
            .unwrap_err()
            .reason(),
        Some(Reason::TopicNotFound),
        "the default namespace has no such dead-letter topic"
    );
    let dead = consume(&b, "shop", "dlq-reader", "%DLQ%strict", 1, false).await;
    assert_eq!(bodies(&dead), ["poison"]);
    assert_eq!(dead[0].topic, "%DLQ%strict");
    assert_eq!(dead[0].properties["__DLQ_ORIGIN_TOPIC"], "orders");
}

fn assert_invalid(e: ClientError, needle: &str) {
    assert_eq!(e.reason(), Some(Reason::InvalidArgument), "{e}");
    assert!(e.to_string().contains(needle), "{e} should say {needle:?}");
}

#[tokio::test]
async fn bad_namespaces_and_names_are_refused() {
    let b = Broker::start();
    let shop = admin(&b, "shop");
    // "shop%" + 122 characters is the longest topic; a group's DLQ topic
    // ("%DLQ%shop%" + name) must fit too.
    shop.create_topic(&"t".repeat(122), 1, pb::MessageType::Normal)
        .await
        .unwrap();
    let e = shop
        .create_topic(&"t".repeat(123), 1, pb::MessageType::Normal)
        .await
        .unwrap_err();
    assert_invalid(e, "at most 127");
    let e = shop
        .create_group(pb::Group {
            name: "g".repeat(118),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_invalid(e, "at most 122");
    for bad in ["a%b", "%x"] {
        let e = shop
            .create_topic(bad, 1, pb::MessageType::Normal)
            .await
            .unwrap_err();
        assert_invalid(e, "'%'");
    }
    assert_eq!(
        names_of_topics(&shop.list_topics().await.unwrap()),
        [&"t".repeat(122)[..]],
        "nothing else created"
    );

    // A bad namespace: the SDK refuses it before sending, the broker too.
    for bad in ["a%b", "has space", &"n".repeat(64)] {
        let e = Admin::connect(&b.grpc)
            .unwrap()
            .in_namespace(bad)
            .unwrap_err();
        assert!(matches!(e, ClientError::InvalidArgument(_)), "{e}");
    }
    let mut raw =
        pb::admin_service_client::AdminServiceClient::connect(format!("http://{}", b.grpc))
            .await
            .unwrap();
    let mut request = tonic::Request::new(pb::ListTopicsRequest {});
    request
        .metadata_mut()
        .insert("x-dduomq-namespace", "a.b".parse().unwrap());
    let status = raw.list_topics(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("namespace \"a.b\""), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_namespace_is_the_namespace_default() {
    let b = Broker::start();
    Admin::connect(&b.grpc)
        .unwrap()
        .create_topic("plain", 1, pb::MessageType::Normal)
        .await
        .unwrap();
    assert_eq!(
        admin(&b, "default").list_topics().await.unwrap(),
        Admin::connect(&b.grpc)
            .unwrap()
            .list_topics()
            .await
            .unwrap()
    );
    send(&b, "default", "plain", &["one"]).await;
    send(&b, "", "plain", &["two"]).await;
    let got = consume(&b, "", "readers", "plain", 2, false).await;
    assert_eq!(bodies(&got), ["one", "two"]);
    assert_eq!(
        names_of_groups(&admin(&b, "default").list_groups().await.unwrap()),
        ["readers"]
    );
    assert_eq!(admin(&b, "shop").list_topics().await.unwrap(), []);
}

/// Transactions in a namespace: a commit and a check-back commit are
/// consumed there, the checker sees the topic as the namespace names it, and
/// the same producer group in another namespace is never asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_and_their_checks_stay_in_their_namespace() {
    let b = Broker::start_with(Options {
        config: Some(
            "[broker]\ntransaction_check_after = \"500ms\"\ntransaction_check_interval = \"250ms\"\n"
                .into(),
        ),
        ..Default::default()
    });
    for ns in ["shop", ""] {
        admin(&b, ns)
            .create_topic("payments", 1, pb::MessageType::Transaction)
            .await
            .unwrap();
    }
    let asked_elsewhere = Arc::new(AtomicU32::new(0));
    let counter = asked_elsewhere.clone();
    let _bystander = TransactionProducer::new(
        ProducerBuilder::new(&b.grpc),
        "tx",
        move |_: &ReceivedMessage| {
            counter.fetch_add(1, Ordering::SeqCst);
            TransactionResolution::Unknown
        },
    )
    .unwrap();
    let checked_topics: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = checked_topics.clone();
    let producer = TransactionProducer::new(
        ProducerBuilder::new(&b.grpc).namespace("shop"),
        "tx",
        move |m: &ReceivedMessage| {
            log.lock().push(m.topic.clone());
            TransactionResolution::Commit
        },
    )
    .unwrap();
    producer
        .begin(Message::new("payments", "committed"))
        .await
        .unwrap()
        .commit()
        .await
        .unwrap();
    let unresolved = producer
        .begin(Message::new("payments", "checked"))
        .await
        .unwrap();
    assert_eq!(unresolved.receipt.topic, "payments");
    drop(unresolved);

    let got = consume(&b, "shop", "ledger", "payments", 2, false).await;
    assert_eq!(bodies(&got), ["committed", "checked"]);
    assert_eq!(checked_topics.lock().clone(), ["payments"]);
    assert_eq!(asked_elsewhere.load(Ordering::SeqCst), 0);
    assert_eq!(
        admin(&b, "")
            .describe_topic("payments")
            .await
            .unwrap()
            .queues[0]
            .max_offset,
        0,
        "nothing reached the default namespace's payments"
    );
}

/// `inner` as a request of namespace `namespace`, sent without the SDK so
/// the broker's own words reach the test.
fn in_namespace<T>(namespace: &str, inner: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(inner);
    request
        .metadata_mut()
        .insert("x-dduomq-namespace", namespace.parse().unwrap());
    request
}

/// Refusals name topics and groups as the namespace's clients do: a pull
/// below a queue's minimum (its message expired) and an ack of a lease the
/// group does not hold, both in namespace `shop`.
#[tokio::test]
async fn errors_name_topics_and_groups_as_the_namespace_does() {
    const RETENTION: Duration = Duration::from_millis(50);
    let b = Broker::start();
    admin(&b, "shop")
        .create_topic_with(
            TopicSettings::new("orders", 1, pb::MessageType::Normal).retention(RETENTION),
        )
        .await
        .unwrap();
    let receipt = ProducerBuilder::new(&b.grpc)
        .namespace("shop")
        .build()
        .unwrap()
        .send(Message::new("orders", "gone"))
        .await
        .unwrap();
    // The message expires once its retention has passed; a pull expires it.
    let expired_at = receipt.store_timestamp_ms + RETENTION.as_millis() as i64 + 1;
    let wait = expired_at - now_millis();
    tokio::time::sleep(Duration::from_millis(wait.max(0) as u64 + 1)).await;

    let mut raw =
        pb::messaging_service_client::MessagingServiceClient::connect(format!("http://{}", b.grpc))
            .await
            .unwrap();
    let pull = pb::PullRequest {
        group: "readers".into(),
        topic: "orders".into(),
        queue_id: 0,
        offset: 0,
        max_messages: 1,
        max_bytes: 1 << 20,
        ..Default::default()
    };
    let status = raw.pull(in_namespace("shop", pull)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange);
    assert_eq!(
        status.message(),
        "offset 0 is out of range for \"orders\"/0: valid offsets are 1..=1 (1 means 'next')"
    );

    // A well-formed handle ("1|0|0|1|": queue 0, offset 0, delivery 1) of a
    // group with no lease on the topic.
    let handle = "MXwwfDB8MXw".to_string();
    let ack = pb::AckRequest {
        group: "readers".into(),
        topic: "orders".into(),
        receipt_handles: vec![handle.clone()],
    };
    let results = raw
        .ack(in_namespace("shop", ack))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(
        results,
        [pb::AckResult {
            receipt_handle: handle,
            error_reason: "INVALID_RECEIPT_HANDLE".into(),
            error_message:
                "invalid receipt handle: no lease of group \"readers\" on topic \"orders\"".into(),
        }]
    );
}
