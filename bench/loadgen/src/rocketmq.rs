//! The RocketMQ 5 protocol driver: DduoMQ's `apache.rocketmq.v2` door spoken
//! directly with its generated client, the way the official clients do: one
//! SendMessage per message (a client-made id, an MD5-free body), and
//! consumers that receive batches with long polling and ack them.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use dduomq_proto::rocketmq::v2 as rmq;
use rmq::messaging_service_client::MessagingServiceClient;
use tonic::Request;
use tonic::transport::Channel;

use crate::drivers::OnMessage;

/// Receives in flight per consumer, as a push consumer keeps several.
const RECEIVERS: usize = 8;
const RECEIVE_BATCH: i32 = 32;

/// A request with the client id header the door keeps consumers by.
fn request<T>(client_id: &str, body: T) -> Request<T> {
    let mut r = Request::new(body);
    r.metadata_mut().insert(
        "x-mq-client-id",
        client_id.parse().expect("an ASCII client id"),
    );
    r
}

fn resource(name: &str) -> Option<rmq::Resource> {
    Some(rmq::Resource {
        resource_namespace: String::new(),
        name: name.to_string(),
    })
}

async fn connect(addr: &str) -> Result<MessagingServiceClient<Channel>> {
    Ok(MessagingServiceClient::connect(format!("http://{addr}"))
        .await?
        .max_decoding_message_size(64 << 20))
}

fn check(status: Option<rmq::Status>) -> Result<()> {
    match status {
        Some(s) if s.code == rmq::Code::Ok as i32 => Ok(()),
        Some(s) => bail!("status {}: {}", s.code, s.message),
        None => bail!("no status"),
    }
}

/// A producer: one gRPC channel (HTTP/2 multiplexes the sends).
#[derive(Clone)]
pub struct Producer {
    client: MessagingServiceClient<Channel>,
    client_id: Arc<str>,
}

impl Producer {
    pub async fn connect(addr: &str) -> Result<Producer> {
        Ok(Producer {
            client: connect(addr).await?,
            client_id: format!("loadgen-producer-{}", std::process::id()).into(),
        })
    }

    /// Sends message `i` and waits for its acknowledgement.
    pub async fn send(&self, topic: &str, i: u64, body: Vec<u8>) -> Result<()> {
        let message = rmq::Message {
            topic: resource(topic),
            user_properties: Default::default(),
            system_properties: Some(rmq::SystemProperties {
                message_id: format!("{:08X}{i:016X}", std::process::id()),
                message_type: rmq::MessageType::Normal as i32,
                body_encoding: rmq::Encoding::Identity as i32,
                ..Default::default()
            }),
            body: body.into(),
        };
        let r = self
            .client
            .clone()
            .send_message(request(
                &self.client_id,
                rmq::SendMessageRequest {
                    messages: vec![message],
                },
            ))
            .await?
            .into_inner();
        check(r.status)
    }
}

/// Starts [`RECEIVERS`] receive loops of `group` on `topic`; the task ends
/// them when aborted.
pub async fn consume(
    addr: &str,
    topic: &str,
    group: &str,
    on: OnMessage,
) -> Result<tokio::task::JoinHandle<()>> {
    let client = connect(addr).await?;
    let client_id: Arc<str> = format!("loadgen-consumer-{group}").into();
    let mut loops = tokio::task::JoinSet::new();
    for _ in 0..RECEIVERS {
        let (mut client, client_id, on) = (client.clone(), client_id.clone(), on.clone());
        let (topic, group) = (topic.to_string(), group.to_string());
        loops.spawn(async move {
            loop {
                if let Err(e) = receive_and_ack(&mut client, &client_id, &topic, &group, &on).await
                {
                    eprintln!("rocketmq receive: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
    }
    Ok(tokio::spawn(async move {
        // Aborting this task drops the set, which aborts the loops.
        while loops.join_next().await.is_some() {}
    }))
}

/// One receive (long polling) and the ack of what it brought.
async fn receive_and_ack(
    client: &mut MessagingServiceClient<Channel>,
    client_id: &str,
    topic: &str,
    group: &str,
    on: &OnMessage,
) -> Result<()> {
    let mut stream = client
        .receive_message(request(
            client_id,
            rmq::ReceiveMessageRequest {
                group: resource(group),
                message_queue: Some(rmq::MessageQueue {
                    topic: resource(topic),
                    ..Default::default()
                }),
                filter_expression: None,
                batch_size: RECEIVE_BATCH,
                invisible_duration: Some(prost_types::Duration {
                    seconds: 30,
                    nanos: 0,
                }),
                auto_renew: false,
                long_polling_timeout: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
                attempt_id: None,
            },
        ))
        .await?
        .into_inner();
    let mut entries = Vec::new();
    while let Some(r) = stream.message().await? {
        match r.content {
            Some(rmq::receive_message_response::Content::Message(m)) => {
                on(&m.body);
                let sys = m.system_properties.unwrap_or_default();
                entries.push(rmq::AckMessageEntry {
                    message_id: sys.message_id,
                    receipt_handle: sys.receipt_handle.unwrap_or_default(),
                    lite_topic: None,
                });
            }
            Some(rmq::receive_message_response::Content::Status(s))
                if s.code == rmq::Code::Ok as i32
                    || s.code == rmq::Code::MessageNotFound as i32 => {}
            Some(rmq::receive_message_response::Content::Status(s)) => {
                bail!("receive status {}: {}", s.code, s.message)
            }
            _ => {}
        }
    }
    if !entries.is_empty() {
        let r = client
            .ack_message(request(
                client_id,
                rmq::AckMessageRequest {
                    group: resource(group),
                    topic: resource(topic),
                    entries,
                },
            ))
            .await?
            .into_inner();
        check(r.status)?;
    }
    Ok(())
}
