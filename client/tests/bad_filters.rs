//! Filters built to exhaust the broker (issue #13, item 1: deep nesting, long
//! NOT chains, huge AND runs) sent over real gRPC on Receive and Pull: each is
//! refused with INVALID_ARGUMENT and the INVALID_FILTER reason and a short
//! message, and the broker keeps serving. Before the parser had limits, the
//! first of them aborted the broker with a stack overflow.

use dduomq_client::Reason;
use dduomq_client::proto as pb;
use dduomq_client::proto::messaging_service_client::MessagingServiceClient;
use dduomq_client::{Message, ProducerBuilder};
use dduomq_testkit::{Broker, create_topics, http_get};
use tonic::transport::Channel;
use tonic_types::StatusExt;

/// What a refusal may weigh: a position and a short excerpt, never the input.
const MAX_MESSAGE_BYTES: usize = 1024;

/// The audit's inputs, and ones far larger than any limit.
fn hostile_filters() -> Vec<(&'static str, pb::FilterType, String)> {
    use pb::FilterType::{Sql, Tag};
    vec![
        (
            "2,000 nested parentheses",
            Sql,
            format!("{}a = 1{}", "(".repeat(2_000), ")".repeat(2_000)),
        ),
        (
            "18,500 NOTs",
            Sql,
            format!("{}a = 1", "NOT ".repeat(18_500)),
        ),
        ("32,000 AND terms", Sql, vec!["a = 1"; 32_000].join(" AND ")),
        ("1 MiB of parentheses", Sql, "(".repeat(1 << 20)),
        ("100,000 tags", Tag, vec!["T"; 100_000].join(" || ")),
    ]
}

fn assert_refused(what: &str, rpc: &str, status: tonic::Status) {
    assert_eq!(
        status.code(),
        tonic::Code::InvalidArgument,
        "{what} on {rpc}: {status:?}"
    );
    let reason = status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone());
    assert_eq!(
        reason.as_deref(),
        Some(Reason::InvalidFilter.as_str()),
        "{what} on {rpc}"
    );
    assert!(
        status.message().len() < MAX_MESSAGE_BYTES,
        "{what} on {rpc}: a {}-byte message",
        status.message().len()
    );
    assert!(
        status.message().contains("position "),
        "{what} on {rpc}: {}",
        status.message()
    );
}

async fn pull(
    client: &mut MessagingServiceClient<Channel>,
    filter_type: pb::FilterType,
    filter: &str,
) -> Result<pb::PullResponse, tonic::Status> {
    let request = pb::PullRequest {
        group: "auditors".into(),
        topic: "orders".into(),
        queue_id: 0,
        offset: 0,
        max_messages: 10,
        filter_type: filter_type as i32,
        filter_expression: filter.into(),
        ..Default::default()
    };
    client.pull(request).await.map(|r| r.into_inner())
}

#[tokio::test]
async fn hostile_filters_are_refused_and_the_broker_keeps_serving() {
    let b = Broker::start();
    create_topics(&b, &[("orders", 1, pb::MessageType::Normal)]).await;
    let producer = ProducerBuilder::new(&b.grpc).build().unwrap();
    producer
        .send(Message::new("orders", "first").with_property("a", "1"))
        .await
        .unwrap();
    let mut client = MessagingServiceClient::connect(format!("http://{}", b.grpc))
        .await
        .unwrap();

    for (what, filter_type, filter) in hostile_filters() {
        let receive = pb::ReceiveRequest {
            group: "watchers".into(),
            topic: "orders".into(),
            client_id: "c1".into(),
            filter_type: filter_type as i32,
            filter_expression: filter.clone(),
            ..Default::default()
        };
        let status = client.receive(receive).await.unwrap_err();
        assert_refused(what, "Receive", status);
        let status = pull(&mut client, filter_type, &filter).await.unwrap_err();
        assert_refused(what, "Pull", status);
    }
    // The first refusal names where the nesting passed its limit.
    let (_, _, parens) = &hostile_filters()[0];
    let status = pull(&mut client, pb::FilterType::Sql, parens)
        .await
        .unwrap_err();
    assert_eq!(
        status.message(),
        "invalid SQL filter at position 64: nested deeper than 64 levels \
         (each parenthesis or NOT is one)"
    );

    // Still alive and serving: ready, and a sound filter pulls the message.
    assert_eq!(
        http_get(&b.http, "/readyz").map(|(code, _)| code),
        Some(200)
    );
    let pulled = pull(&mut client, pb::FilterType::Sql, "a = 1")
        .await
        .unwrap();
    assert_eq!(pulled.messages.len(), 1);
    assert_eq!(&pulled.messages[0].body[..], b"first");
    let second = producer.send(Message::new("orders", "second")).await;
    assert!(second.is_ok(), "{second:?}");
}
