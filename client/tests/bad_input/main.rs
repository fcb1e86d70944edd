//! Hostile requests over real gRPC against the real broker binary (issue #13,
//! items 7, 10 and 13). Each is refused with its exact status code and reason,
//! a short message, and no state change; the broker's memory stays within a
//! stated bound, and it still serves a normal send and read afterwards.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use dduomq_client::Admin;
use dduomq_client::Reason;
use dduomq_client::proto as pb;
use dduomq_testkit::{Broker, Options, eventually};
use pb::admin_service_client::AdminServiceClient;
use pb::messaging_service_client::MessagingServiceClient;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};
use tonic_types::StatusExt;

mod leases;

/// Longest message a refusal may carry.
const MAX_MESSAGE_BYTES: usize = 1024;
/// The broker's `max_invisible_duration` (12 h).
const MAX_INVISIBLE_MS: u32 = 12 * 3600 * 1000;

async fn messaging(b: &Broker) -> MessagingServiceClient<Channel> {
    MessagingServiceClient::connect(format!("http://{}", b.grpc))
        .await
        .expect("connect")
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20)
}

async fn admin(b: &Broker) -> AdminServiceClient<Channel> {
    AdminServiceClient::connect(format!("http://{}", b.grpc))
        .await
        .expect("connect")
}

/// The first characters of a message, for failure output.
fn head(text: &str) -> String {
    text.chars().take(200).collect()
}

/// Asserts a refusal: its status code, its reason, a message shorter than
/// [`MAX_MESSAGE_BYTES`] that mentions `mentions` (the field).
#[track_caller]
fn assert_refused<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    reason: Reason,
    mentions: &str,
) {
    let status = match result {
        Ok(v) => panic!(
            "expected {code:?} {reason} ({mentions}), got OK: {}",
            head(&format!("{v:?}"))
        ),
        Err(s) => s,
    };
    let message = status.message();
    assert!(
        message.len() < MAX_MESSAGE_BYTES,
        "a message of {} bytes: {}",
        message.len(),
        head(message)
    );
    assert_eq!(status.code(), code, "{message}");
    let info = status.get_error_details().error_info().cloned();
    assert_eq!(
        info.map(|i| i.reason).as_deref(),
        Some(reason.as_str()),
        "{message}"
    );
    assert!(message.contains(mentions), "{mentions:?} not in {message}");
}

/// [`assert_refused`] with INVALID_ARGUMENT, the reason of most refusals.
#[track_caller]
fn assert_invalid<T: std::fmt::Debug>(result: Result<T, Status>, field: &str) {
    assert_refused(
        result,
        Code::InvalidArgument,
        Reason::InvalidArgument,
        field,
    );
}

fn outgoing(topic: &str, body: &str) -> pb::OutgoingMessage {
    pb::OutgoingMessage {
        topic: topic.into(),
        body: body.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

async fn send(
    m: &mut MessagingServiceClient<Channel>,
    messages: Vec<pb::OutgoingMessage>,
) -> Result<pb::SendResponse, Status> {
    m.send(pb::SendRequest { messages })
        .await
        .map(|r| r.into_inner())
}

/// What a refusal must not change: topics (with their stored messages),
/// groups, the commit log's end and the route epoch.
#[derive(Debug, PartialEq)]
struct State {
    topics: Vec<pb::DescribeTopicResponse>,
    groups: Vec<pb::Group>,
    commit_log_max: u64,
    route_epoch: u64,
}

async fn state(b: &Broker) -> State {
    let a = Admin::connect(&b.grpc).unwrap();
    let mut topics = Vec::new();
    for t in a.list_topics().await.unwrap() {
        topics.push(a.describe_topic(&t.name).await.unwrap());
    }
    let info = a.broker_info().await.unwrap();
    State {
        topics,
        groups: a.list_groups().await.unwrap(),
        commit_log_max: info.commit_log_max,
        route_epoch: info.route_epoch,
    }
}

/// The broker is alive and well: a message sent now reads back.
async fn assert_serves(b: &Broker) {
    let mut m = messaging(b).await;
    let receipt = send(&mut m, vec![outgoing("alive", "still serving")])
        .await
        .expect("a normal send")
        .receipts
        .remove(0);
    let pulled = m
        .pull(pb::PullRequest {
            group: "alive-check".into(),
            topic: "alive".into(),
            queue_id: receipt.queue_id,
            offset: receipt.offset,
            max_messages: 1,
            ..Default::default()
        })
        .await
        .expect("a normal pull")
        .into_inner();
    assert_eq!(&pulled.messages[0].body[..], b"still serving");
}

/// Waits until the broker's resident memory is within `limit_mib` of
/// `before_kib` (the allocator may return freed memory with a delay).
async fn assert_rss_within(b: &Broker, before_kib: u64, limit_mib: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let grown = b.rss_kib().saturating_sub(before_kib);
        if grown < limit_mib << 10 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "RSS grew by {} MiB (from {} MiB), more than {limit_mib} MiB",
            grown >> 10,
            before_kib >> 10
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---- item 7: names in heartbeats ----------------------------------------------

/// A Receive request of `group` on `topic` with a lease of `invisible_ms`.
fn receive_request(group: &str, topic: &str, invisible_ms: u32) -> pb::ReceiveRequest {
    pb::ReceiveRequest {
        group: group.into(),
        topic: topic.into(),
        client_id: "keeper-1".into(),
        invisible_duration_ms: invisible_ms,
        ..Default::default()
    }
}

#[tokio::test]
async fn heartbeats_with_huge_names_are_refused_and_leave_no_memory_behind() {
    let b = Broker::start_with(Options {
        config: Some("[broker]\nsession_timeout = \"1s\"\n".into()),
        ..Default::default()
    });
    assert_serves(&b).await; // connections and allocator warmed up
    let before = state(&b).await;
    let rss_before = b.rss_kib();
    let mut m = messaging(&b).await;
    // Answers are checked after the memory: a broker that accepts them shows
    // what they cost.
    let mut huge_groups = Vec::new();
    for i in 0..200 {
        let huge = format!("{i:03}{}", "g".repeat(1 << 20));
        let r = m
            .heartbeat(pb::HeartbeatRequest {
                group: huge,
                client_id: "producer-1".into(),
                kind: pb::ConsumerKind::Producer as i32,
                topics: Vec::new(),
            })
            .await;
        huge_groups.push(r.map(|_| ()));
    }
    let mut huge_clients = Vec::new();
    for kind in [
        pb::ConsumerKind::Producer,
        pb::ConsumerKind::Push,
        pb::ConsumerKind::Pull,
    ] {
        let r = m
            .heartbeat(pb::HeartbeatRequest {
                group: "members".into(),
                client_id: "c".repeat(1 << 20),
                kind: kind as i32,
                topics: Vec::new(),
            })
            .await;
        huge_clients.push(r.map(|_| ()));
    }
    // 200 MiB of names went in; at most 32 MiB may stay once members expired
    // (the original broker kept 239 MiB, the fixed one about 6).
    assert_rss_within(&b, rss_before, 32).await;
    for r in huge_groups {
        assert_invalid(r, "group");
    }
    for r in huge_clients {
        assert_invalid(r, "client_id");
    }
    let r = m
        .heartbeat(pb::HeartbeatRequest {
            group: "members".into(),
            client_id: "c-1".into(),
            kind: pb::ConsumerKind::Pull as i32,
            topics: (0..65).map(|i| format!("topic-{i}")).collect(),
        })
        .await;
    assert_invalid(r, "topics");
    assert_eq!(state(&b).await, before, "no group, topic or member created");
    assert_serves(&b).await;
}

// ---- item 13: echoed input, backoff, enums, system topics -----------------------

#[tokio::test]
async fn error_messages_show_huge_input_briefly() {
    let b = Broker::start();
    let before = state(&b).await;
    let rss_before = b.rss_kib();
    let huge = "t".repeat(10_000);
    let mut a = admin(&b).await;
    let mut m = messaging(&b).await;
    let r = a
        .create_topic(pb::CreateTopicRequest {
            name: huge.clone(),
            queues: 1,
            message_type: 0,
            ..Default::default()
        })
        .await;
    assert_invalid(r, "topic name");
    let r = a
        .describe_topic(pb::DescribeTopicRequest { name: huge.clone() })
        .await;
    assert_refused(r, Code::NotFound, Reason::TopicNotFound, "10000 bytes");
    let r = send(&mut m, vec![outgoing(&huge, "x")]).await;
    assert_invalid(r, "topic name");
    let r = a
        .create_group(pb::CreateGroupRequest {
            group: Some(pb::Group {
                name: huge.clone(),
                ..Default::default()
            }),
        })
        .await;
    assert_invalid(r, "group name");
    let r = a
        .describe_group(pb::DescribeGroupRequest { name: huge.clone() })
        .await;
    assert_refused(r, Code::NotFound, Reason::GroupNotFound, "10000 bytes");
    let r = m.receive(receive_request(&huge, "alive", 0)).await;
    assert_invalid(r, "group");
    let r = m
        .end_transaction(pb::EndTransactionRequest {
            transaction_id: huge.clone(),
            producer_group: "pg".into(),
            resolution: pb::TransactionResolution::Commit as i32,
            ..Default::default()
        })
        .await;
    assert_refused(
        r,
        Code::NotFound,
        Reason::TransactionNotFound,
        "10000 bytes",
    );
    let results = m
        .ack(pb::AckRequest {
            group: "g".into(),
            topic: "t".into(),
            receipt_handles: vec![huge.clone()],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(
        results[0].error_reason,
        Reason::InvalidReceiptHandle.as_str()
    );
    assert!(
        results[0].error_message.len() < MAX_MESSAGE_BYTES,
        "{}",
        head(&results[0].error_message)
    );
    assert_eq!(state(&b).await, before);
    assert_rss_within(&b, rss_before, 16).await;
    assert_serves(&b).await;
}

#[tokio::test]
async fn retry_backoff_steps_are_validated() {
    let b = Broker::start();
    let before = state(&b).await;
    let mut a = admin(&b).await;
    let group = |backoff: Vec<u64>| pb::CreateGroupRequest {
        group: Some(pb::Group {
            name: "backoff".into(),
            max_delivery_attempts: 3,
            retry_backoff_ms: backoff,
            ..Default::default()
        }),
    };
    for bad in [
        vec![i64::MAX as u64],
        vec![u64::MAX],
        vec![0],
        vec![1000, 24 * 3600 * 1000 + 1],
        vec![1000; 65],
    ] {
        let r = a.create_group(group(bad)).await;
        assert_invalid(r, "retry_backoff_ms");
    }
    assert_eq!(
        state(&b).await,
        before,
        "no group (nor dead-letter topic) created"
    );
    let created = a
        .create_group(group(vec![1, 24 * 3600 * 1000]))
        .await
        .unwrap()
        .into_inner();
    assert!(created.created);
    assert_serves(&b).await;
}

#[tokio::test]
async fn unknown_enum_values_are_refused() {
    let b = Broker::start();
    dduomq_testkit::create_topics(&b, &[("enums", 1, pb::MessageType::Normal)]).await;
    let before = state(&b).await;
    let mut a = admin(&b).await;
    let mut m = messaging(&b).await;
    let r = send(
        &mut m,
        vec![pb::OutgoingMessage {
            codec: 7,
            ..outgoing("enums", "x")
        }],
    )
    .await;
    assert_invalid(r, "codec");
    let r = a
        .create_topic(pb::CreateTopicRequest {
            name: "typed".into(),
            queues: 1,
            message_type: 99,
            ..Default::default()
        })
        .await;
    assert_invalid(r, "message_type");
    let r = a
        .create_topic(pb::CreateTopicRequest {
            name: "acked".into(),
            queues: 1,
            ack_policy: 7,
            ..Default::default()
        })
        .await;
    assert_invalid(r, "ack_policy");
    let r = a
        .create_group(pb::CreateGroupRequest {
            group: Some(pb::Group {
                name: "moded".into(),
                mode: 9,
                ..Default::default()
            }),
        })
        .await;
    assert_invalid(r, "mode");
    let r = m
        .receive(pb::ReceiveRequest {
            mode: 9,
            ..receive_request("moded", "enums", 0)
        })
        .await;
    assert_invalid(r, "mode");
    let r = m
        .receive(pb::ReceiveRequest {
            filter_type: 5,
            ..receive_request("filtered", "enums", 0)
        })
        .await;
    assert_invalid(r, "filter_type");
    let r = m
        .pull(pb::PullRequest {
            group: "filtered".into(),
            topic: "enums".into(),
            filter_type: 5,
            ..Default::default()
        })
        .await;
    assert_invalid(r, "filter_type");
    let r = a
        .update_routes(pb::UpdateRoutesRequest {
            epoch: 7,
            topics: vec![pb::TopicRoute {
                topic: "enums".into(),
                message_type: 42,
                ..Default::default()
            }],
        })
        .await;
    assert_invalid(r, "message_type");
    assert_eq!(state(&b).await, before, "nothing created, stored or routed");
    assert_serves(&b).await;
}

#[tokio::test]
async fn client_sends_to_system_topics_are_refused() {
    let b = Broker::start();
    let mut a = admin(&b).await;
    a.create_group(pb::CreateGroupRequest {
        group: Some(pb::Group {
            name: "billing".into(),
            ..Default::default()
        }),
    })
    .await
    .unwrap();
    let before = state(&b).await;
    assert!(
        before
            .topics
            .iter()
            .any(|t| t.topic.as_ref().unwrap().name == "%DLQ%billing")
    );
    let mut m = messaging(&b).await;
    for topic in ["%DLQ%billing", "%DELAY%", "%HALF%", "%RESOLVED%", "%SYS%x"] {
        let r = send(&mut m, vec![outgoing(topic, "forged")]).await;
        assert_refused(r, Code::InvalidArgument, Reason::ReservedTopic, "reserved");
    }
    assert_eq!(state(&b).await, before, "nothing stored");
    // Consumers still read dead-letter topics.
    m.receive(receive_request("dlq-reader", "%DLQ%billing", 0))
        .await
        .expect("a dead-letter topic can be consumed");
    assert_serves(&b).await;
}

#[tokio::test]
async fn oversized_strings_and_counts_are_refused() {
    let b = Broker::start();
    dduomq_testkit::create_topics(
        &b,
        &[
            ("strings", 1, pb::MessageType::Normal),
            ("txn", 1, pb::MessageType::Transaction),
        ],
    )
    .await;
    let before = state(&b).await;
    let mut m = messaging(&b).await;
    let long = |n: usize| "x".repeat(n);
    let with = |f: &dyn Fn(&mut pb::OutgoingMessage)| {
        let mut o = outgoing("strings", "body");
        f(&mut o);
        vec![o]
    };
    let cases: Vec<(&str, Vec<pb::OutgoingMessage>)> = vec![
        ("tag", with(&|o| o.tag = long(129))),
        (
            "keys",
            with(&|o| o.keys = (0..33).map(|i| format!("k{i}")).collect()),
        ),
        ("key", with(&|o| o.keys = vec![long(129)])),
        (
            "properties",
            with(&|o| o.properties = (0..129).map(|i| (format!("p{i}"), "v".into())).collect()),
        ),
        (
            "properties",
            with(&|o| o.properties = [("big".to_string(), long(17 << 10))].into()),
        ),
        ("sharding_key", with(&|o| o.sharding_key = long(129))),
        ("lane", with(&|o| o.lane = long(65))),
        ("producer_id", with(&|o| o.producer_id = long(129))),
        (
            "producer_group",
            vec![pb::OutgoingMessage {
                transactional: true,
                producer_group: long(1 << 20),
                ..outgoing("txn", "half")
            }],
        ),
        // A producer group is checked on a normal message too, where it is
        // unused.
        (
            "producer_group",
            with(&|o| o.producer_group = long(1 << 20)),
        ),
        (
            "producer_group",
            with(&|o| o.producer_group = "two words".into()),
        ),
    ];
    for (field, messages) in cases {
        let r = send(&mut m, messages).await;
        assert_invalid(r, field);
    }
    let r = m
        .receive(pb::ReceiveRequest {
            client_id: long(129),
            ..receive_request("reader", "strings", 0)
        })
        .await;
    assert_invalid(r, "client_id");
    let r = m
        .receive(pb::ReceiveRequest {
            client_id: "two\nlines".into(),
            ..receive_request("reader", "strings", 0)
        })
        .await;
    assert_invalid(r, "client_id");
    let r = m
        .receive(pb::ReceiveRequest {
            lane: long(65),
            ..receive_request("reader", "strings", 0)
        })
        .await;
    assert_invalid(r, "lane");
    let r = m
        .transaction_checks(pb::TransactionChecksRequest {
            producer_group: long(1 << 20),
            client_id: "checker-1".into(),
        })
        .await;
    assert_invalid(r, "producer_group");
    let r = m
        .pull(pb::PullRequest {
            group: long(1 << 20),
            topic: "strings".into(),
            ..Default::default()
        })
        .await;
    assert_invalid(r, "group");
    assert_eq!(state(&b).await, before, "nothing created or stored");
    assert_serves(&b).await;
}
