//! Bad input through the RocketMQ door gets the protocol's own status code,
//! a short message, and changes nothing (raw requests, no official client:
//! they check much of this themselves before sending).

use dduomq_client::proto::MessageType;
use dduomq_proto::rocketmq::v2 as rmq;
use dduomq_proto::rocketmq::v2::messaging_service_client::MessagingServiceClient;
use dduomq_testkit::{Broker, Options, create_topics, stored};
use tonic::transport::Channel;

#[path = "rocketmq/raw.rs"]
mod raw;

use raw::{code, request, resource};

fn message(topic: &str, body: Vec<u8>) -> rmq::Message {
    rmq::Message {
        topic: resource(topic),
        user_properties: Default::default(),
        system_properties: Some(rmq::SystemProperties {
            message_id: "01TEST".into(),
            message_type: rmq::MessageType::Normal as i32,
            ..Default::default()
        }),
        body: body.into(),
    }
}

async fn send(c: &mut MessagingServiceClient<Channel>, m: rmq::Message) -> rmq::Status {
    c.send_message(request(rmq::SendMessageRequest { messages: vec![m] }))
        .await
        .expect("a protocol status, not a gRPC error")
        .into_inner()
        .status
        .unwrap()
}

#[tokio::test]
async fn bad_input_gets_the_protocols_status_and_changes_nothing() {
    let b = Broker::start_with(Options {
        auto_create_topics: Some(false),
        ..Default::default()
    });
    create_topics(
        &b,
        &[
            ("orders", 2, MessageType::Normal),
            ("ledger", 2, MessageType::Fifo),
        ],
    )
    .await;
    let mut c = MessagingServiceClient::connect(format!("http://{}", b.grpc))
        .await
        .unwrap();

    let s = send(&mut c, message("no-such-topic", b"x".to_vec())).await;
    assert_eq!(code(&s), rmq::Code::TopicNotFound, "{s:?}");
    // A FIFO topic takes messages with a message group only.
    let s = send(&mut c, message("ledger", b"x".to_vec())).await;
    assert_eq!(
        code(&s),
        rmq::Code::MessagePropertyConflictWithType,
        "{s:?}"
    );
    // Over the broker's record size (4 MiB by default).
    let s = send(&mut c, message("orders", vec![7; 5 << 20])).await;
    assert_eq!(code(&s), rmq::Code::MessageBodyTooLarge, "{s:?}");
    assert!(s.message.len() < 600, "short: {}", s.message.len());
    // A body that does not match its digest.
    let mut corrupt = message("orders", b"hello".to_vec());
    corrupt.system_properties.as_mut().unwrap().body_digest = Some(rmq::Digest {
        r#type: rmq::DigestType::Crc32 as i32,
        checksum: "DEADBEEF".into(),
    });
    let s = send(&mut c, corrupt).await;
    assert_eq!(code(&s), rmq::Code::BadRequest, "{s:?}");
    // A message without its id.
    let mut anonymous = message("orders", b"x".to_vec());
    anonymous
        .system_properties
        .as_mut()
        .unwrap()
        .message_id
        .clear();
    let s = send(&mut c, anonymous).await;
    assert_eq!(code(&s), rmq::Code::BadRequest, "{s:?}");
    assert_eq!(stored(&b, "orders").await, 0, "nothing was stored");
    assert_eq!(stored(&b, "ledger").await, 0);

    // A receipt handle that names no lease.
    let ack = c
        .ack_message(request(rmq::AckMessageRequest {
            group: resource("workers"),
            topic: resource("orders"),
            entries: vec![rmq::AckMessageEntry {
                message_id: "01TEST".into(),
                receipt_handle: "forged".into(),
                lite_topic: None,
            }],
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        code(ack.entries[0].status.as_ref().unwrap()),
        rmq::Code::InvalidReceiptHandle
    );

    // A filter that does not parse, an invisible duration and a long poll
    // over the limits: refused before anything is received.
    let receive = |filter: rmq::FilterExpression, invisible_s: i64, polling_s: i64| {
        rmq::ReceiveMessageRequest {
            group: resource("workers"),
            message_queue: Some(rmq::MessageQueue {
                topic: resource("orders"),
                ..Default::default()
            }),
            filter_expression: Some(filter),
            batch_size: 8,
            invisible_duration: Some(prost_types::Duration {
                seconds: invisible_s,
                nanos: 0,
            }),
            auto_renew: false,
            long_polling_timeout: Some(prost_types::Duration {
                seconds: polling_s,
                nanos: 0,
            }),
            attempt_id: None,
        }
    };
    let sql = |e: &str| rmq::FilterExpression {
        r#type: rmq::FilterType::Sql as i32,
        expression: e.into(),
    };
    for (req, expected) in [
        (
            receive(sql("a >"), 10, 1),
            rmq::Code::IllegalFilterExpression,
        ),
        (
            receive(sql("a > 1"), 13 * 3600, 1),
            rmq::Code::IllegalInvisibleTime,
        ),
        (
            receive(sql("a > 1"), 10, 3600),
            rmq::Code::IllegalPollingTime,
        ),
    ] {
        let mut stream = c.receive_message(request(req)).await.unwrap().into_inner();
        let first = stream.message().await.unwrap().unwrap();
        match first.content {
            Some(rmq::receive_message_response::Content::Status(s)) => {
                assert_eq!(code(&s), expected, "{s:?}")
            }
            other => panic!("expected a status, got {other:?}"),
        }
        assert!(
            stream.message().await.unwrap().is_none(),
            "one status ends it"
        );
    }

    // An empty topic: MESSAGE_NOT_FOUND once the long poll ends.
    b.admin()
        .create_group(dduomq_client::proto::Group {
            name: "workers".into(),
            max_delivery_attempts: 16,
            ..Default::default()
        })
        .await
        .unwrap();
    let all = rmq::FilterExpression {
        r#type: rmq::FilterType::Tag as i32,
        expression: "*".into(),
    };
    let mut stream = c
        .receive_message(request(receive(all, 10, 1)))
        .await
        .unwrap()
        .into_inner();
    match stream.message().await.unwrap().unwrap().content {
        Some(rmq::receive_message_response::Content::Status(s)) => {
            assert_eq!(code(&s), rmq::Code::MessageNotFound, "{s:?}")
        }
        other => panic!("expected a status, got {other:?}"),
    }

    // Unsupported RPCs say so in the protocol's terms.
    let s = c
        .recall_message(request(rmq::RecallMessageRequest {
            topic: resource("orders"),
            recall_handle: "h".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(code(&s), rmq::Code::NotImplemented);
}
