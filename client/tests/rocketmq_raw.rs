//! What the official clients' released versions do not exercise, with raw
//! requests to the RocketMQ door:
//!
//! - consuming by offset (PullMessage, UpdateOffset, GetOffset, QueryOffset):
//!   messages our SDK sent are pulled byte-exact; a group's progress stored
//!   through the door is the one our SDK consumes from, and survives a
//!   restart; bad input changes nothing;
//! - a receive that repeats an `attempt_id` gets the same messages again;
//! - the protocol on a listener of its own (`rocketmq_addr`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dduomq_client::proto::{self as pb, MessageType};
use dduomq_client::{Message, ProducerBuilder, PushConsumerBuilder, SendReceipt};
use dduomq_proto::rocketmq::v2 as rmq;
use dduomq_proto::rocketmq::v2::messaging_service_client::MessagingServiceClient;
use dduomq_testkit::{Broker, Options, create_topics, eventually, free_port, stored};
use parking_lot::Mutex;
use rmq::pull_message_response::Content;
use tonic::transport::Channel;

#[path = "rocketmq/raw.rs"]
mod raw;

use raw::{code, request, resource};

const TOPIC: &str = "ledger";
const GROUP: &str = "auditors";

fn body(i: usize) -> Vec<u8> {
    (0..64u8).map(|x| x.wrapping_mul(i as u8 + 3)).collect()
}

/// The tag of message `i`.
fn parity(i: usize) -> &'static str {
    if i.is_multiple_of(2) { "even" } else { "odd" }
}

fn queue(id: i32) -> Option<rmq::MessageQueue> {
    Some(rmq::MessageQueue {
        topic: resource(TOPIC),
        id,
        ..Default::default()
    })
}

fn tag(expression: &str) -> Option<rmq::FilterExpression> {
    Some(rmq::FilterExpression {
        r#type: rmq::FilterType::Tag as i32,
        expression: expression.into(),
    })
}

fn pull_request(offset: i64, batch_size: i32, polling_ms: i32) -> rmq::PullMessageRequest {
    rmq::PullMessageRequest {
        group: resource(GROUP),
        message_queue: queue(0),
        offset,
        batch_size,
        filter_expression: tag("*"),
        long_polling_timeout: Some(prost_types::Duration {
            seconds: 0,
            nanos: polling_ms * 1_000_000,
        }),
    }
}

/// A message our SDK consumed.
#[derive(Debug, Clone)]
struct Consumed {
    offset: u64,
    body: Vec<u8>,
}

/// What one PullMessage answered.
#[derive(Debug)]
struct Pull {
    status: rmq::Status,
    messages: Vec<rmq::Message>,
    next_offset: Option<i64>,
}

/// Pulls once; the answer must be a status first, then messages, then at most
/// one next offset, last.
async fn pull(c: &mut MessagingServiceClient<Channel>, r: rmq::PullMessageRequest) -> Pull {
    let mut stream = c.pull_message(request(r)).await.unwrap().into_inner();
    let mut status = None;
    let mut messages = Vec::new();
    let mut next_offset = None;
    while let Some(answer) = stream.message().await.unwrap() {
        assert!(next_offset.is_none(), "the next offset comes last");
        match answer.content.expect("a content") {
            Content::Status(s) => {
                assert!(status.is_none() && messages.is_empty(), "one status, first");
                status = Some(s);
            }
            Content::Message(m) => messages.push(m),
            Content::NextOffset(o) => next_offset = Some(o),
        }
    }
    Pull {
        status: status.expect("a status"),
        messages,
        next_offset,
    }
}

async fn get_offset(
    c: &mut MessagingServiceClient<Channel>,
    group: &str,
) -> rmq::GetOffsetResponse {
    c.get_offset(request(rmq::GetOffsetRequest {
        group: resource(group),
        message_queue: queue(0),
    }))
    .await
    .unwrap()
    .into_inner()
}

async fn update_offset(
    c: &mut MessagingServiceClient<Channel>,
    group: &str,
    queue_id: i32,
    offset: i64,
) -> rmq::Status {
    c.update_offset(request(rmq::UpdateOffsetRequest {
        group: resource(group),
        message_queue: queue(queue_id),
        offset,
    }))
    .await
    .unwrap()
    .into_inner()
    .status
    .unwrap()
}

async fn query_offset(
    c: &mut MessagingServiceClient<Channel>,
    id: i32,
    policy: rmq::QueryOffsetPolicy,
    timestamp_ms: Option<i64>,
) -> rmq::QueryOffsetResponse {
    c.query_offset(request(rmq::QueryOffsetRequest {
        message_queue: queue(id),
        query_offset_policy: policy as i32,
        timestamp: timestamp_ms.map(|ms| prost_types::Timestamp {
            seconds: ms.div_euclid(1000),
            nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
        }),
    }))
    .await
    .unwrap()
    .into_inner()
}

async fn create_group(b: &Broker, name: &str, mode: pb::ConsumeMode) {
    b.admin()
        .create_group(pb::Group {
            name: name.into(),
            mode: mode as i32,
            max_delivery_attempts: 16,
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Checks a pulled message against what our SDK sent as message `i`.
fn assert_sent(m: &rmq::Message, i: usize, receipt: &SendReceipt) {
    let sys = m.system_properties.as_ref().unwrap();
    assert_eq!(&m.body[..], &body(i)[..], "message {i}'s bytes");
    assert_eq!(sys.message_id, receipt.message_id);
    assert_eq!(sys.queue_offset, Some(i as i64));
    assert_eq!(sys.tag.as_deref(), Some(parity(i)));
    assert_eq!(sys.keys, vec![format!("key-{i}")]);
    assert_eq!(
        m.user_properties,
        HashMap::from([("n".to_string(), i.to_string())])
    );
    assert_eq!(sys.receipt_handle, None, "a pull leases nothing");
}

#[tokio::test]
async fn pulls_and_offsets_through_the_door() {
    let mut b = Broker::start_with(Options {
        auto_create_topics: Some(false),
        ..Default::default()
    });
    create_topics(&b, &[(TOPIC, 1, MessageType::Normal)]).await;
    create_group(&b, GROUP, pb::ConsumeMode::Clustering).await;
    create_group(&b, "fans", pb::ConsumeMode::Broadcast).await;
    let producer = ProducerBuilder::new(&b.grpc).build().unwrap();
    let mut receipts = Vec::new();
    for i in 0..10 {
        let m = Message::new(TOPIC, body(i))
            .with_tag(parity(i))
            .with_key(format!("key-{i}"))
            .with_property("n", i.to_string());
        receipts.push(producer.send(m).await.unwrap());
    }
    let mut c = MessagingServiceClient::connect(format!("http://{}", b.grpc))
        .await
        .unwrap();

    // Offsets by position and by time.
    use rmq::QueryOffsetPolicy::{Beginning, End, Timestamp};
    let offset = |r: rmq::QueryOffsetResponse| {
        assert_eq!(code(r.status.as_ref().unwrap()), rmq::Code::Ok, "{r:?}");
        r.offset
    };
    assert_eq!(offset(query_offset(&mut c, 0, Beginning, None).await), 0);
    assert_eq!(offset(query_offset(&mut c, 0, End, None).await), 10);
    let at = receipts[5].store_timestamp_ms;
    let first_at = receipts
        .iter()
        .position(|r| r.store_timestamp_ms >= at)
        .unwrap();
    assert_eq!(
        offset(query_offset(&mut c, 0, Timestamp, Some(at)).await),
        first_at as i64
    );
    let later = receipts[9].store_timestamp_ms + 60_000;
    assert_eq!(
        offset(query_offset(&mut c, 0, Timestamp, Some(later)).await),
        10
    );
    for (r, expected) in [
        (
            query_offset(&mut c, 0, Timestamp, None).await,
            rmq::Code::BadRequest,
        ),
        (
            query_offset(&mut c, 7, End, None).await,
            rmq::Code::NotFound,
        ),
        (
            query_offset(&mut c, -1, End, None).await,
            rmq::Code::BadRequest,
        ),
    ] {
        assert_eq!(code(r.status.as_ref().unwrap()), expected, "{r:?}");
    }

    // Pulls: the messages as sent, then where to go on from.
    let p = pull(&mut c, pull_request(0, 4, 0)).await;
    assert_eq!(code(&p.status), rmq::Code::Ok, "{p:?}");
    assert_eq!(p.messages.len(), 4);
    for (i, m) in p.messages.iter().enumerate() {
        assert_sent(m, i, &receipts[i]);
    }
    assert_eq!(p.next_offset, Some(4));
    // A tag filter skips the others; the next offset moves past them.
    let p = pull(
        &mut c,
        rmq::PullMessageRequest {
            filter_expression: tag("odd"),
            ..pull_request(4, 32, 0)
        },
    )
    .await;
    assert_eq!(code(&p.status), rmq::Code::Ok, "{p:?}");
    let offsets: Vec<usize> = p
        .messages
        .iter()
        .map(|m| m.system_properties.as_ref().unwrap().queue_offset.unwrap() as usize)
        .collect();
    assert_eq!(offsets, [5, 7, 9]);
    for (m, i) in p.messages.iter().zip(offsets) {
        assert_sent(m, i, &receipts[i]);
    }
    assert_eq!(p.next_offset, Some(10));
    // At the end: MESSAGE_NOT_FOUND once the long poll ends.
    let p = pull(&mut c, pull_request(10, 32, 200)).await;
    assert_eq!(code(&p.status), rmq::Code::MessageNotFound, "{p:?}");
    assert!(p.messages.is_empty());
    assert_eq!(p.next_offset, Some(10));
    // A long poll answers as soon as a message arrives.
    let waiting = {
        let mut c = c.clone();
        tokio::spawn(async move { pull(&mut c, pull_request(10, 32, 900)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let late = producer
        .send(
            Message::new(TOPIC, body(10))
                .with_tag("even")
                .with_key("key-10")
                .with_property("n", "10"),
        )
        .await
        .unwrap();
    let p = waiting.await.unwrap();
    if p.messages.is_empty() {
        // The poll ended first (a slow machine): the message is there now.
        assert_eq!(code(&p.status), rmq::Code::MessageNotFound, "{p:?}");
        let p = pull(&mut c, pull_request(10, 32, 0)).await;
        assert_sent(&p.messages[0], 10, &late);
    } else {
        assert_sent(&p.messages[0], 10, &late);
        assert_eq!(p.next_offset, Some(11));
    }
    // Outside the queue: ILLEGAL_OFFSET and the nearest offset it holds.
    let p = pull(&mut c, pull_request(50, 32, 0)).await;
    assert_eq!(code(&p.status), rmq::Code::IllegalOffset, "{p:?}");
    assert_eq!(p.next_offset, Some(11));
    let p = pull(&mut c, pull_request(-1, 32, 0)).await;
    assert_eq!(code(&p.status), rmq::Code::IllegalOffset, "{p:?}");
    assert_eq!(p.next_offset, Some(0), "the oldest offset");
    for (r, expected) in [
        (pull_request(0, 0, 0), rmq::Code::BadRequest),
        (
            rmq::PullMessageRequest {
                group: resource("nobody"),
                ..pull_request(0, 32, 0)
            },
            rmq::Code::ConsumerGroupNotFound,
        ),
        (
            rmq::PullMessageRequest {
                filter_expression: Some(rmq::FilterExpression {
                    r#type: rmq::FilterType::Sql as i32,
                    expression: "n >".into(),
                }),
                ..pull_request(0, 32, 0)
            },
            rmq::Code::IllegalFilterExpression,
        ),
    ] {
        let p = pull(&mut c, r).await;
        assert_eq!(code(&p.status), expected, "{p:?}");
        assert!(p.messages.is_empty() && p.next_offset.is_none(), "{p:?}");
    }

    // A group's progress: none yet, then what the client stored.
    let r = get_offset(&mut c, GROUP).await;
    assert_eq!(
        code(r.status.as_ref().unwrap()),
        rmq::Code::OffsetNotFound,
        "{r:?}"
    );
    let s = update_offset(&mut c, GROUP, 0, 6).await;
    assert_eq!(code(&s), rmq::Code::Ok, "{s:?}");
    assert_eq!(get_offset(&mut c, GROUP).await.offset, 6);
    // Refused, and nothing changes.
    for (group, offset, expected) in [
        (GROUP, 12, rmq::Code::IllegalOffset),
        (GROUP, -3, rmq::Code::IllegalOffset),
        ("fans", 2, rmq::Code::BadRequest),
        ("nobody", 2, rmq::Code::ConsumerGroupNotFound),
    ] {
        let s = update_offset(&mut c, group, 0, offset).await;
        assert_eq!(code(&s), expected, "{group} {offset}: {s:?}");
    }
    let r = get_offset(&mut c, GROUP).await;
    assert_eq!(code(r.status.as_ref().unwrap()), rmq::Code::Ok, "{r:?}");
    assert_eq!(r.offset, 6);
    let r = get_offset(&mut c, "fans").await;
    assert_eq!(
        code(r.status.as_ref().unwrap()),
        rmq::Code::BadRequest,
        "{r:?}"
    );

    // The stored progress is the group's: it survives a restart, and our SDK
    // consumes from it, exactly messages 6 to 10.
    drop(c);
    b.restart();
    let mut c = MessagingServiceClient::connect(format!("http://{}", b.grpc))
        .await
        .unwrap();
    assert_eq!(get_offset(&mut c, GROUP).await.offset, 6);
    let seen: Arc<Mutex<Vec<Consumed>>> = Arc::default();
    let sink = seen.clone();
    let consumer = PushConsumerBuilder::new(&b.grpc, GROUP, TOPIC)
        .start(move |m| {
            let sink = sink.clone();
            async move {
                sink.lock().push(Consumed {
                    offset: m.offset,
                    body: m.body.to_vec(),
                });
                Ok::<(), String>(())
            }
        })
        .await
        .unwrap();
    eventually(
        Duration::from_secs(20),
        "our SDK to consume from the stored offset",
        async || (seen.lock().len() >= 5).then_some(()),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    consumer.shutdown().await;
    let mut seen = seen.lock().clone();
    seen.sort_unstable_by_key(|c| c.offset);
    let offsets: Vec<u64> = seen.iter().map(|c| c.offset).collect();
    assert_eq!(
        offsets,
        [6, 7, 8, 9, 10],
        "each once, none before the offset"
    );
    for c in seen {
        assert_eq!(
            c.body,
            body(c.offset as usize),
            "message {}'s bytes",
            c.offset
        );
    }
    // Its acks move the same progress the door reads.
    eventually(
        Duration::from_secs(10),
        "the door to see the SDK's progress",
        async || (get_offset(&mut c, GROUP).await.offset == 11).then_some(()),
    )
    .await;
}

fn receive_request(attempt_id: Option<String>, batch_size: i32) -> rmq::ReceiveMessageRequest {
    rmq::ReceiveMessageRequest {
        group: resource(GROUP),
        message_queue: Some(rmq::MessageQueue {
            topic: resource(TOPIC),
            ..Default::default()
        }),
        filter_expression: tag("*"),
        batch_size,
        invisible_duration: Some(prost_types::Duration {
            seconds: 30,
            nanos: 0,
        }),
        auto_renew: false,
        long_polling_timeout: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
        attempt_id,
    }
}

/// The messages of one receive, or the status that refused it.
async fn receive(
    c: &mut MessagingServiceClient<Channel>,
    r: rmq::ReceiveMessageRequest,
) -> Result<Vec<rmq::Message>, rmq::Status> {
    use rmq::receive_message_response::Content as Received;
    let mut stream = c.receive_message(request(r)).await.unwrap().into_inner();
    let mut messages = Vec::new();
    while let Some(answer) = stream.message().await.unwrap() {
        match answer.content.expect("a content") {
            Received::Message(m) => messages.push(m),
            Received::Status(s) if code(&s) == rmq::Code::Ok => {}
            Received::Status(s) if code(&s) == rmq::Code::MessageNotFound => {}
            Received::Status(s) => return Err(s),
            Received::DeliveryTimestamp(_) => {}
        }
    }
    Ok(messages)
}

/// What names a received message for an ack.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    message_id: String,
    receipt_handle: String,
}

fn held(messages: &[rmq::Message]) -> Vec<Held> {
    messages
        .iter()
        .map(|m| {
            let sys = m.system_properties.as_ref().unwrap();
            Held {
                message_id: sys.message_id.clone(),
                receipt_handle: sys.receipt_handle.clone().unwrap(),
            }
        })
        .collect()
}

#[tokio::test]
async fn a_repeated_attempt_gets_the_same_messages() {
    let b = Broker::start_with(Options {
        auto_create_topics: Some(false),
        ..Default::default()
    });
    create_topics(&b, &[(TOPIC, 1, MessageType::Normal)]).await;
    create_group(&b, GROUP, pb::ConsumeMode::Clustering).await;
    let producer = ProducerBuilder::new(&b.grpc).build().unwrap();
    for i in 0..3 {
        producer.send(Message::new(TOPIC, body(i))).await.unwrap();
    }
    let mut c = MessagingServiceClient::connect(format!("http://{}", b.grpc))
        .await
        .unwrap();

    let first = receive(&mut c, receive_request(Some("attempt-1".into()), 2))
        .await
        .unwrap();
    assert_eq!(first.len(), 2);
    // The answer was "lost": the same attempt gets the same messages, still
    // leased under the same handles, with the time they have left.
    let again = receive(&mut c, receive_request(Some("attempt-1".into()), 2))
        .await
        .unwrap();
    assert_eq!(held(&again), held(&first));
    for (a, f) in again.iter().zip(&first) {
        assert_eq!(a.body, f.body);
        let left = a
            .system_properties
            .as_ref()
            .unwrap()
            .invisible_duration
            .unwrap();
        assert!((1..=30).contains(&left.seconds), "{left:?}");
    }
    // One acked since: the attempt gets the other only.
    let ack = |messages: Vec<Held>| rmq::AckMessageRequest {
        group: resource(GROUP),
        topic: resource(TOPIC),
        entries: messages
            .into_iter()
            .map(|h| rmq::AckMessageEntry {
                message_id: h.message_id,
                receipt_handle: h.receipt_handle,
                lite_topic: None,
            })
            .collect(),
    };
    let acked = c
        .ack_message(request(ack(held(&first[..1]))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        code(acked.status.as_ref().unwrap()),
        rmq::Code::Ok,
        "{acked:?}"
    );
    let partial = receive(&mut c, receive_request(Some("attempt-1".into()), 2))
        .await
        .unwrap();
    assert_eq!(held(&partial), held(&first[1..]));
    // Another attempt gets the rest.
    let next = receive(&mut c, receive_request(Some("attempt-2".into()), 2))
        .await
        .unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(&next[0].body[..], &body(2)[..]);
    // The handles are the leases': acks of them succeed.
    let acked = c
        .ack_message(request(ack(held(&partial)
            .into_iter()
            .chain(held(&next))
            .collect())))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        code(acked.status.as_ref().unwrap()),
        rmq::Code::Ok,
        "{acked:?}"
    );
    // Nothing of the first attempt is held any more: repeated, it receives
    // anew, and nothing is left.
    assert!(
        receive(&mut c, receive_request(Some("attempt-1".into()), 2))
            .await
            .unwrap()
            .is_empty()
    );
    // An attempt id over the limit is refused.
    let refused = receive(&mut c, receive_request(Some("x".repeat(300)), 2)).await;
    assert_eq!(code(&refused.unwrap_err()), rmq::Code::BadRequest);
}

async fn query_route(
    c: &mut MessagingServiceClient<Channel>,
) -> Result<rmq::QueryRouteResponse, tonic::Status> {
    let r = c
        .query_route(request(rmq::QueryRouteRequest {
            topic: resource(TOPIC),
            endpoints: None,
        }))
        .await?;
    Ok(r.into_inner())
}

#[tokio::test]
async fn the_protocol_can_have_a_listener_of_its_own() {
    let port = free_port();
    let mut b = Broker::start_with(Options {
        auto_create_topics: Some(false),
        // A grace far longer than a clean stop takes: a listener that did not
        // stop would show.
        config: Some(format!(
            "[broker]\nrocketmq_addr = \"127.0.0.1:{port}\"\nshutdown_grace = \"60s\"\n"
        )),
        ..Default::default()
    });
    create_topics(&b, &[(TOPIC, 2, MessageType::Normal)]).await;
    let mut door = MessagingServiceClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .unwrap();
    // Routes name the listener the clients are to use.
    let route = query_route(&mut door).await.unwrap();
    assert_eq!(
        code(route.status.as_ref().unwrap()),
        rmq::Code::Ok,
        "{route:?}"
    );
    assert_eq!(route.message_queues.len(), 2);
    for q in &route.message_queues {
        let endpoints = q.broker.as_ref().unwrap().endpoints.as_ref().unwrap();
        assert_eq!(endpoints.addresses[0].port, i32::from(port), "{q:?}");
    }
    let sent = door
        .send_message(request(rmq::SendMessageRequest {
            messages: vec![rmq::Message {
                topic: resource(TOPIC),
                user_properties: Default::default(),
                system_properties: Some(rmq::SystemProperties {
                    message_id: "01OWNLISTENER".into(),
                    message_type: rmq::MessageType::Normal as i32,
                    ..Default::default()
                }),
                body: body(1).into(),
            }],
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        code(sent.status.as_ref().unwrap()),
        rmq::Code::Ok,
        "{sent:?}"
    );
    assert_eq!(stored(&b, TOPIC).await, 1);
    // The gRPC port serves ours only.
    let mut main = MessagingServiceClient::connect(format!("http://{}", b.grpc))
        .await
        .unwrap();
    let refused = query_route(&mut main).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unimplemented);

    // A graceful stop ends both listeners while a receive waits on the
    // door's.
    create_group(&b, GROUP, pb::ConsumeMode::Clustering).await;
    let door_wait = {
        let mut door = door.clone();
        tokio::spawn(async move {
            door.receive_message(request(rmq::ReceiveMessageRequest {
                filter_expression: tag("nothing-has-this-tag"),
                long_polling_timeout: Some(prost_types::Duration {
                    seconds: 20,
                    nanos: 0,
                }),
                ..receive_request(None, 32)
            }))
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = std::time::Instant::now();
    // Exits cleanly (asserted by `stop`), well within the grace.
    tokio::task::spawn_blocking(move || b.stop()).await.unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(30),
        "{:?}",
        stopping.elapsed()
    );
    // The waiting receive was answered (or cut off, had it not reached the
    // broker yet).
    if let Ok(answer) = door_wait.await.unwrap() {
        let mut stream = answer.into_inner();
        if let Ok(Some(first)) = stream.message().await {
            match first.content {
                Some(rmq::receive_message_response::Content::Status(s)) => {
                    assert_eq!(code(&s), rmq::Code::MessageNotFound, "{s:?}")
                }
                other => panic!("expected a status, got {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn refused_requests_create_no_group() {
    // Groups are created on first use (the default).
    let b = Broker::start();
    create_topics(&b, &[(TOPIC, 1, MessageType::Normal)]).await;
    let mut c = MessagingServiceClient::connect(format!("http://{}", b.grpc))
        .await
        .unwrap();
    let r = get_offset(&mut c, "ghost-read").await;
    assert_eq!(
        code(r.status.as_ref().unwrap()),
        rmq::Code::OffsetNotFound,
        "{r:?}"
    );
    let s = update_offset(&mut c, "ghost-past-end", 0, 99).await;
    assert_eq!(code(&s), rmq::Code::IllegalOffset, "{s:?}");
    let s = update_offset(&mut c, "ghost-no-queue", 7, 0).await;
    assert_eq!(code(&s), rmq::Code::NotFound, "{s:?}");
    let p = pull(
        &mut c,
        rmq::PullMessageRequest {
            group: resource("ghost-pull"),
            ..pull_request(0, 32, 0)
        },
    )
    .await;
    assert_eq!(code(&p.status), rmq::Code::MessageNotFound, "{p:?}");
    let groups: Vec<String> = b
        .admin()
        .list_groups()
        .await
        .unwrap()
        .into_iter()
        .map(|g| g.name)
        .collect();
    assert!(groups.iter().all(|g| !g.starts_with("ghost")), "{groups:?}");
    // A stored offset is a first use: the group is created.
    let s = update_offset(&mut c, "ghost-stored", 0, 0).await;
    assert_eq!(code(&s), rmq::Code::Ok, "{s:?}");
    let r = get_offset(&mut c, "ghost-stored").await;
    assert_eq!(code(r.status.as_ref().unwrap()), rmq::Code::Ok, "{r:?}");
    assert_eq!(r.offset, 0);
}
