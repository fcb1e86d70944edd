//! The authorization matrix, generated from the service descriptors: every
//! method of every service the broker serves (`dduomq.v1` and RocketMQ's
//! `apache.rocketmq.v2`, plus health and reflection) is called unsigned,
//! with a wrong secret, with an expired signature, by a user with no grants
//! and by an admin. Each refusal must be exactly the right one, and the
//! refused calls must change nothing. A method without a sample request here
//! fails the test, so a new RPC cannot be left out.

#[path = "auth/users.rs"]
#[allow(dead_code)] // shared with the other auth suites
mod users;

use std::time::{Duration, SystemTime};

use bytes::{Buf, BufMut};
use dduomq_client::proto as pb;
use dduomq_client::{Credentials, Message, ProducerBuilder, Reason};
use dduomq_proto::rocketmq::v2 as rmq;
use dduomq_proto::signature::{self, Signer};
use dduomq_testkit::Broker;
use prost::Message as _;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;
use users::{ADMIN, EVERYONE, NOBODY, Secrets};

/// Passes request and response bytes through as they are.
#[derive(Debug, Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

/// How a call was answered.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    /// A gRPC error status and its reason code.
    Grpc(Code, Option<String>),
    /// A RocketMQ response's own status (the gRPC status OK).
    RocketMq(i32, String),
    /// Anything else: an answer, or none yet (a stream still open).
    Served,
}

/// A response's `Status` (field 1 of every RocketMQ response).
#[derive(Clone, PartialEq, prost::Message)]
struct FirstStatus {
    #[prost(message, optional, tag = "1")]
    status: Option<rmq::Status>,
}

/// How a call is signed.
#[derive(Debug, Clone)]
enum Signing {
    Unsigned,
    With(Credentials),
    /// Signed an hour ago.
    Expired(Credentials),
}

async fn call(channel: &Channel, path: &str, body: Vec<u8>, signing: &Signing) -> Answer {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("channel ready");
    let mut req = tonic::Request::new(tokio_stream::once(body));
    let md = req.metadata_mut();
    md.insert("x-mq-client-id", "matrix-client".parse().unwrap());
    match signing {
        Signing::Unsigned => {}
        Signing::With(c) => Signer::new(Some(c.clone())).sign(md).unwrap(),
        Signing::Expired(c) => {
            let signed = c.sign(SystemTime::now() - Duration::from_secs(3600));
            md.insert(
                signature::AUTHORIZATION,
                signed.authorization.parse().unwrap(),
            );
            md.insert(signature::DATE_TIME, signed.date_time.parse().unwrap());
        }
    }
    let rocketmq = is_rocketmq(path);
    let path = path.parse().expect("a method path");
    let answered = tokio::time::timeout(Duration::from_secs(3), async {
        let mut stream = grpc.streaming(req, path, Raw).await?.into_inner();
        stream.message().await
    })
    .await;
    match answered {
        Err(_) | Ok(Ok(None)) => Answer::Served,
        Ok(Err(status)) => Answer::Grpc(
            status.code(),
            status
                .get_error_details()
                .error_info()
                .map(|i| i.reason.clone()),
        ),
        Ok(Ok(Some(bytes))) if rocketmq => match FirstStatus::decode(bytes.as_slice()) {
            Ok(FirstStatus { status: Some(s) }) if s.code != rmq::Code::Ok as i32 => {
                Answer::RocketMq(s.code, s.message)
            }
            _ => Answer::Served,
        },
        Ok(Ok(Some(_))) => Answer::Served,
    }
}

fn topic() -> Option<rmq::Resource> {
    Some(rmq::Resource {
        name: "orders".into(),
        ..Default::default()
    })
}

fn group() -> Option<rmq::Resource> {
    Some(rmq::Resource {
        name: "billing".into(),
        ..Default::default()
    })
}

fn queue() -> Option<rmq::MessageQueue> {
    Some(rmq::MessageQueue {
        topic: topic(),
        id: 0,
        ..Default::default()
    })
}

/// A method's only sample request.
fn one(m: impl prost::Message) -> Vec<Vec<u8>> {
    vec![m.encode_to_vec()]
}

/// Requests to each method that name the topic `orders` and the group
/// `billing` (some methods have several); `message_id` is a stored message's.
fn samples(method: &str, message_id: &str) -> Vec<Vec<u8>> {
    let (t, g) = ("orders".to_string(), "billing".to_string());
    match method {
        "/grpc.health.v1.Health/Check" | "/grpc.health.v1.Health/Watch" => {
            one(tonic_health::pb::HealthCheckRequest::default())
        }
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo" => {
            one(tonic_reflection::pb::v1::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(
                    tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                        String::new(),
                    ),
                ),
            })
        }
        "/dduomq.v1.MessagingService/QueryRoute" => one(pb::QueryRouteRequest { topic: t }),
        "/dduomq.v1.MessagingService/Send" => one(pb::SendRequest {
            messages: vec![pb::OutgoingMessage {
                topic: t,
                body: b"matrix".to_vec().into(),
                ..Default::default()
            }],
        }),
        "/dduomq.v1.MessagingService/Receive" => one(pb::ReceiveRequest {
            group: g,
            topic: t,
            client_id: "matrix-client".into(),
            ..Default::default()
        }),
        "/dduomq.v1.MessagingService/Ack" => one(pb::AckRequest {
            group: g,
            topic: t,
            receipt_handles: vec!["x".into()],
        }),
        "/dduomq.v1.MessagingService/ChangeInvisibleDuration" => {
            one(pb::ChangeInvisibleDurationRequest {
                group: g,
                topic: t,
                receipt_handle: "x".into(),
                invisible_duration_ms: 1000,
            })
        }
        "/dduomq.v1.MessagingService/Nack" => one(pb::NackRequest {
            group: g,
            topic: t,
            receipt_handle: "x".into(),
        }),
        "/dduomq.v1.MessagingService/Pull" => one(pb::PullRequest {
            group: g,
            topic: t,
            max_messages: 1,
            ..Default::default()
        }),
        "/dduomq.v1.MessagingService/CommitOffset" => one(pb::CommitOffsetRequest {
            group: g,
            topic: t,
            offset: 0,
            client_id: "matrix-client".into(),
            ..Default::default()
        }),
        "/dduomq.v1.MessagingService/QueryOffset" => one(pb::QueryOffsetRequest {
            group: g,
            topic: t,
            queue_id: 0,
        }),
        "/dduomq.v1.MessagingService/Heartbeat" => vec![
            pb::HeartbeatRequest {
                group: g.clone(),
                client_id: "matrix-client".into(),
                kind: pb::ConsumerKind::Push as i32,
                topics: vec![t.clone()],
            }
            .encode_to_vec(),
            pb::HeartbeatRequest {
                group: g,
                client_id: "matrix-client".into(),
                kind: pb::ConsumerKind::Producer as i32,
                topics: vec![t],
            }
            .encode_to_vec(),
        ],
        "/dduomq.v1.MessagingService/EndTransaction" => one(pb::EndTransactionRequest {
            topic: t,
            transaction_id: "x".into(),
            producer_group: g,
            resolution: pb::TransactionResolution::Commit as i32,
            from_check: false,
        }),
        "/dduomq.v1.MessagingService/TransactionChecks" => one(pb::TransactionChecksRequest {
            producer_group: g,
            client_id: "matrix-client".into(),
        }),
        "/dduomq.v1.AdminService/CreateTopic" => one(pb::CreateTopicRequest {
            name: "created-by-matrix".into(),
            queues: 1,
            ..Default::default()
        }),
        "/dduomq.v1.AdminService/DeleteTopic" => one(pb::DeleteTopicRequest { name: t }),
        "/dduomq.v1.AdminService/ListTopics" => one(pb::ListTopicsRequest::default()),
        "/dduomq.v1.AdminService/DescribeTopic" => one(pb::DescribeTopicRequest { name: t }),
        "/dduomq.v1.AdminService/CreateGroup" => one(pb::CreateGroupRequest {
            group: Some(pb::Group {
                name: "created-by-matrix".into(),
                ..Default::default()
            }),
        }),
        "/dduomq.v1.AdminService/DeleteGroup" => one(pb::DeleteGroupRequest { name: g }),
        "/dduomq.v1.AdminService/ListGroups" => one(pb::ListGroupsRequest::default()),
        "/dduomq.v1.AdminService/DescribeGroup" => one(pb::DescribeGroupRequest { name: g }),
        "/dduomq.v1.AdminService/ResetOffset" => one(pb::ResetOffsetRequest {
            group: g,
            topic: t,
            to: Some(pb::reset_offset_request::To::Earliest(true)),
        }),
        "/dduomq.v1.AdminService/LookupMessage" => vec![
            pb::LookupMessageRequest {
                by: Some(pb::lookup_message_request::By::Key("k".into())),
                topic: t,
                ..Default::default()
            }
            .encode_to_vec(),
            pb::LookupMessageRequest {
                by: Some(pb::lookup_message_request::By::MessageId(message_id.into())),
                ..Default::default()
            }
            .encode_to_vec(),
        ],
        "/dduomq.v1.AdminService/BrokerInfo" => one(pb::BrokerInfoRequest::default()),
        "/dduomq.v1.AdminService/UpdateRoutes" => one(pb::UpdateRoutesRequest {
            epoch: u64::MAX,
            ..Default::default()
        }),
        "/dduomq.v1.AdminService/SetDraining" => one(pb::SetDrainingRequest { draining: true }),
        "/dduomq.v1.AdminService/AssignRole" => one(pb::AssignRoleRequest::default()),
        "/dduomq.v1.ReplicationService/Follow" => one(pb::FollowRequest::default()),
        "/dduomq.v1.ReplicationService/ReadLog" => one(pb::ReadLogRequest::default()),
        "/apache.rocketmq.v2.MessagingService/QueryRoute" => one(rmq::QueryRouteRequest {
            topic: topic(),
            ..Default::default()
        }),
        "/apache.rocketmq.v2.MessagingService/Heartbeat" => one(rmq::HeartbeatRequest {
            group: group(),
            client_type: rmq::ClientType::PushConsumer as i32,
        }),
        "/apache.rocketmq.v2.MessagingService/SendMessage" => one(rmq::SendMessageRequest {
            messages: vec![rmq::Message {
                topic: topic(),
                body: b"matrix".to_vec().into(),
                ..Default::default()
            }],
        }),
        "/apache.rocketmq.v2.MessagingService/QueryAssignment" => {
            one(rmq::QueryAssignmentRequest {
                topic: topic(),
                group: group(),
                ..Default::default()
            })
        }
        "/apache.rocketmq.v2.MessagingService/ReceiveMessage" => {
            one(rmq::ReceiveMessageRequest {
                group: group(),
                message_queue: queue(),
                batch_size: 1,
                ..Default::default()
            })
        }
        "/apache.rocketmq.v2.MessagingService/AckMessage" => one(rmq::AckMessageRequest {
            group: group(),
            topic: topic(),
            entries: vec![rmq::AckMessageEntry {
                message_id: "x".into(),
                receipt_handle: "x".into(),
                ..Default::default()
            }],
        }),
        "/apache.rocketmq.v2.MessagingService/ForwardMessageToDeadLetterQueue" => {
            one(rmq::ForwardMessageToDeadLetterQueueRequest {
                group: group(),
                topic: topic(),
                receipt_handle: "x".into(),
                message_id: "x".into(),
                ..Default::default()
            })
        }
        "/apache.rocketmq.v2.MessagingService/PullMessage" => one(rmq::PullMessageRequest {
            group: group(),
            message_queue: queue(),
            batch_size: 1,
            ..Default::default()
        }),
        "/apache.rocketmq.v2.MessagingService/UpdateOffset" => one(rmq::UpdateOffsetRequest {
            group: group(),
            message_queue: queue(),
            offset: 0,
        }),
        "/apache.rocketmq.v2.MessagingService/GetOffset" => one(rmq::GetOffsetRequest {
            group: group(),
            message_queue: queue(),
        }),
        "/apache.rocketmq.v2.MessagingService/QueryOffset" => one(rmq::QueryOffsetRequest {
            message_queue: queue(),
            ..Default::default()
        }),
        "/apache.rocketmq.v2.MessagingService/EndTransaction" => {
            one(rmq::EndTransactionRequest {
                topic: topic(),
                message_id: "x".into(),
                transaction_id: "x".into(),
                resolution: rmq::TransactionResolution::Commit as i32,
                ..Default::default()
            })
        }
        "/apache.rocketmq.v2.MessagingService/Telemetry" => vec![
            rmq::TelemetryCommand {
                command: Some(rmq::telemetry_command::Command::Settings(rmq::Settings {
                    client_type: Some(rmq::ClientType::Producer as i32),
                    pub_sub: Some(rmq::settings::PubSub::Publishing(rmq::Publishing {
                        topics: topic().into_iter().collect(),
                        ..Default::default()
                    })),
                    ..Default::default()
                })),
                ..Default::default()
            }
            .encode_to_vec(),
            rmq::TelemetryCommand {
                command: Some(rmq::telemetry_command::Command::Settings(rmq::Settings {
                    client_type: Some(rmq::ClientType::PushConsumer as i32),
                    pub_sub: Some(rmq::settings::PubSub::Subscription(rmq::Subscription {
                        group: group(),
                        ..Default::default()
                    })),
                    ..Default::default()
                })),
                ..Default::default()
            }
            .encode_to_vec(),
        ],
        "/apache.rocketmq.v2.MessagingService/NotifyClientTermination" => {
            one(rmq::NotifyClientTerminationRequest { group: group() })
        }
        "/apache.rocketmq.v2.MessagingService/ChangeInvisibleDuration" => {
            one(rmq::ChangeInvisibleDurationRequest {
                group: group(),
                topic: topic(),
                receipt_handle: "x".into(),
                message_id: "x".into(),
                ..Default::default()
            })
        }
        "/apache.rocketmq.v2.MessagingService/RecallMessage" => {
            one(rmq::RecallMessageRequest {
                topic: topic(),
                ..Default::default()
            })
        }
        "/apache.rocketmq.v2.MessagingService/SyncLiteSubscription" => {
            one(rmq::SyncLiteSubscriptionRequest::default())
        }
        other => panic!("{other} has no sample request in auth_matrix.rs: add one"),
    }
}

/// Methods open to anyone.
const OPEN: &[&str] = &[
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
];
/// Methods any signed user may call (lists show only what the caller may
/// see; the rest touch nothing of anyone else's).
const SIGNED: &[&str] = &[
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/dduomq.v1.AdminService/ListTopics",
    "/dduomq.v1.AdminService/ListGroups",
    "/apache.rocketmq.v2.MessagingService/NotifyClientTermination",
    "/apache.rocketmq.v2.MessagingService/RecallMessage",
    "/apache.rocketmq.v2.MessagingService/SyncLiteSubscription",
];

fn is_rocketmq(path: &str) -> bool {
    path.starts_with("/apache.rocketmq.v2.")
}

/// Asserts `answer` is the refusal `reason` in the protocol of `path`.
fn assert_refused(path: &str, answer: &Answer, reason: Reason, who: &str) {
    let grpc = Answer::Grpc(reason.grpc_code(), Some(reason.as_str().to_string()));
    if *answer == grpc {
        return;
    }
    // The RocketMQ door answers authorization in its own status.
    if is_rocketmq(path)
        && reason == Reason::PermissionDenied
        && let Answer::RocketMq(code, message) = answer
    {
        assert_eq!(
            *code,
            rmq::Code::Forbidden as i32,
            "{who} {path}: {message}"
        );
        assert!(
            message.starts_with("PERMISSION_DENIED: "),
            "{who} {path}: {message}"
        );
        return;
    }
    panic!("{who} {path}: expected {reason}, got {answer:?}");
}

fn is_auth_refusal(answer: &Answer) -> bool {
    match answer {
        Answer::Grpc(code, _) => matches!(code, Code::Unauthenticated | Code::PermissionDenied),
        Answer::RocketMq(code, _) => {
            *code == rmq::Code::Forbidden as i32 || *code == rmq::Code::Unauthorized as i32
        }
        Answer::Served => false,
    }
}

/// What a refused call could have changed.
async fn state(b: &Broker) -> String {
    let admin = b
        .admin()
        .with_credentials(Some(ADMIN.credentials()))
        .unwrap();
    let info = admin.broker_info().await.unwrap();
    let mut groups = Vec::new();
    for g in admin.list_groups().await.unwrap() {
        groups.push(format!(
            "{:?}",
            admin.describe_group(&g.name).await.unwrap().queues
        ));
    }
    format!(
        "topics {:?}\ngroups {groups:?}\ndraining {} epoch {} log {}..{}",
        admin.list_topics().await.unwrap(),
        info.draining,
        info.route_epoch,
        info.commit_log_min,
        info.commit_log_max
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_refuses_exactly_who_it_must_and_refusals_change_nothing() {
    let secrets = Secrets::new(EVERYONE);
    let b = secrets.start_broker("");
    let admin = b
        .admin()
        .with_credentials(Some(ADMIN.credentials()))
        .unwrap();
    admin
        .create_topic("orders", 2, pb::MessageType::Normal)
        .await
        .unwrap();
    admin
        .create_group(pb::Group {
            name: "billing".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let receipt = ProducerBuilder::new(&b.grpc)
        .credentials(ADMIN.credentials())
        .build()
        .unwrap()
        .send(Message::new("orders", b"stored".to_vec()).with_key("k"))
        .await
        .unwrap();
    let channel = Channel::from_shared(format!("http://{}", b.grpc))
        .unwrap()
        .connect_lazy();
    let methods = dduomq_proto::served_methods();
    assert!(methods.len() > 40, "{methods:?}");

    let before = state(&b).await;
    let refusals = [
        ("unsigned", Signing::Unsigned, Reason::MissingCredentials),
        (
            "wrong secret",
            Signing::With(NOBODY.with_wrong_secret()),
            Reason::BadCredentials,
        ),
        (
            "expired",
            Signing::Expired(ADMIN.credentials()),
            Reason::RequestExpired,
        ),
    ];
    for (who, signing, reason) in &refusals {
        for path in &methods {
            for body in samples(path, &receipt.message_id) {
                let answer = call(&channel, path, body, signing).await;
                if OPEN.contains(&path.as_str()) {
                    assert!(!is_auth_refusal(&answer), "{who} {path}: {answer:?}");
                } else {
                    assert_refused(path, &answer, *reason, who);
                }
            }
        }
    }
    let nobody = Signing::With(NOBODY.credentials());
    for path in &methods {
        for body in samples(path, &receipt.message_id) {
            let by_id = path.ends_with("/LookupMessage")
                && pb::LookupMessageRequest::decode(body.as_slice()).is_ok_and(|r| {
                    matches!(r.by, Some(pb::lookup_message_request::By::MessageId(_)))
                });
            let answer = call(&channel, path, body, &nobody).await;
            if by_id {
                // A message the caller may not read is not found (its topic
                // is not revealed).
                assert_refused(path, &answer, Reason::MessageNotFound, "nobody");
            } else if OPEN.contains(&path.as_str()) || SIGNED.contains(&path.as_str()) {
                assert!(!is_auth_refusal(&answer), "nobody {path}: {answer:?}");
            } else {
                assert_refused(path, &answer, Reason::PermissionDenied, "nobody");
            }
        }
    }
    assert_eq!(state(&b).await, before, "a refused call changed the broker");

    // An admin is refused nothing.
    let root = Signing::With(ADMIN.credentials());
    for path in &methods {
        for body in samples(path, &receipt.message_id) {
            let answer = call(&channel, path, body, &root).await;
            assert!(!is_auth_refusal(&answer), "admin {path}: {answer:?}");
        }
    }
}
