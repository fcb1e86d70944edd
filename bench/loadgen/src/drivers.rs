//! One driver per system (DduoMQ twice: through our SDK and through the
//! RocketMQ protocol), behind the same three operations: create a topic,
//! send a message and wait for its acknowledgement, and consume (calling back
//! with each payload). The workloads in `workloads.rs` only see these.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;

/// The systems under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    Dduomq,
    /// DduoMQ through its Apache RocketMQ 5 protocol door (`rocketmq.rs`),
    /// as RocketMQ clients use it: what the compatibility costs.
    Rocketmq,
    Nats,
    Kafka,
}

/// Called with each consumed payload.
pub type OnMessage = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// A connected producer of one system.
#[derive(Clone)]
pub enum Driver {
    Dduomq(dduomq_client::Producer),
    Rocketmq(crate::rocketmq::Producer),
    Nats(Box<async_nats::jetstream::Context>),
    Kafka(rdkafka::producer::FutureProducer),
}

/// A running consumer; dropping it stops it.
pub struct Consumer {
    task: tokio::task::JoinHandle<()>,
    dduomq: Option<dduomq_client::PushConsumer>,
}

impl Consumer {
    pub async fn stop(mut self) {
        if let Some(c) = self.dduomq.take() {
            c.shutdown().await;
        }
        self.task.abort();
    }
}

/// Subject of partition `i` of a NATS stream: one stream per topic, with
/// `queues` subjects standing in for partitions.
fn nats_subject(topic: &str, i: u64, queues: u32) -> String {
    format!("{topic}.{}", i % queues as u64)
}

fn kafka_config(addr: &str) -> rdkafka::ClientConfig {
    let mut c = rdkafka::ClientConfig::new();
    c.set("bootstrap.servers", addr);
    // TCP_NODELAY, as Kafka's Java clients and its brokers always set it.
    c.set("socket.nagle.disable", "true");
    c
}

impl Driver {
    pub async fn connect(system: System, addr: &str) -> Result<Driver> {
        Ok(match system {
            System::Dduomq => Driver::Dduomq(dduomq_client::ProducerBuilder::new(addr).build()?),
            System::Rocketmq => Driver::Rocketmq(crate::rocketmq::Producer::connect(addr).await?),
            System::Nats => {
                let client = async_nats::connect(addr)
                    .await
                    .context("connecting to NATS")?;
                Driver::Nats(Box::new(async_nats::jetstream::new(client)))
            }
            // The Java client's defaults (`linger.ms` since Kafka 4.0). librdkafka's own
            // (any number of requests in flight per connection, each for one
            // partition) keeps a replicated cluster in a flood of tiny
            // requests that each wait for the followers: 0.9–1.7k msg/s at
            // 0.9–1.8 server CPU-ms per message on three servers, against
            // 43k at 30 µs with these (bench/README.md).
            System::Kafka => Driver::Kafka(
                kafka_config(addr)
                    .set("acks", "all")
                    .set("linger.ms", "5")
                    .set("max.in.flight.requests.per.connection", "5")
                    .create()
                    .context("creating the Kafka producer")?,
            ),
        })
    }

    /// Creates `topic` with `queues` queues/partitions (NATS: subjects of one
    /// stream), kept on `replicas` servers where that is a per-topic setting
    /// (Kafka: replication factor with a majority as `min.insync.replicas`;
    /// JetStream: the stream's replicas; DduoMQ's group size is the brokers'
    /// configuration). `sync` asks the peers for a flush before each acknowledgement
    /// where that is a per-topic setting (Kafka `flush.messages=1`); DduoMQ and
    /// JetStream take it as a server setting.
    pub async fn create_topic(
        system: System,
        addr: &str,
        topic: &str,
        queues: u32,
        replicas: u32,
        sync: bool,
    ) -> Result<()> {
        match system {
            System::Dduomq | System::Rocketmq => {
                dduomq_client::Admin::connect(addr)?
                    .create_topic(topic, queues, dduomq_client::proto::MessageType::Normal)
                    .await?;
            }
            System::Nats => {
                let js = async_nats::jetstream::new(async_nats::connect(addr).await?);
                js.create_stream(async_nats::jetstream::stream::Config {
                    name: topic.to_string(),
                    subjects: vec![format!("{topic}.>")],
                    storage: async_nats::jetstream::stream::StorageType::File,
                    num_replicas: replicas as usize,
                    // About 30 s of data, as the other systems keep in bench/run.
                    max_age: Duration::from_secs(30),
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow::anyhow!("creating stream {topic}: {e}"))?;
            }
            System::Kafka => {
                use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
                let admin: AdminClient<rdkafka::client::DefaultClientContext> =
                    kafka_config(addr).create()?;
                let mut t = NewTopic::new(
                    topic,
                    queues as i32,
                    TopicReplication::Fixed(replicas as i32),
                );
                let majority = (replicas / 2 + 1).to_string();
                if replicas > 1 {
                    t = t.set("min.insync.replicas", &majority);
                }
                if sync {
                    t = t.set("flush.messages", "1");
                }
                for r in admin.create_topics(&[t], &AdminOptions::new()).await? {
                    r.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
                }
            }
        }
        Ok(())
    }

    /// Sends message number `i` and waits for its acknowledgement.
    pub async fn send(&self, topic: &str, queues: u32, i: u64, payload: Vec<u8>) -> Result<()> {
        match self {
            Driver::Dduomq(p) => {
                p.send(dduomq_client::Message::new(topic, payload)).await?;
            }
            Driver::Rocketmq(p) => p.send(topic, i, payload).await?,
            Driver::Nats(js) => {
                js.publish(nats_subject(topic, i, queues), payload.into())
                    .await
                    .map_err(|e| anyhow::anyhow!("publish: {e}"))?
                    .await
                    .map_err(|e| anyhow::anyhow!("publish ack: {e}"))?;
            }
            Driver::Kafka(p) => {
                let record = rdkafka::producer::FutureRecord::<(), [u8]>::to(topic)
                    .payload(&payload)
                    .partition((i % queues as u64) as i32);
                p.send(record, Duration::from_secs(30))
                    .await
                    .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
            }
        }
        Ok(())
    }

    /// Starts a consumer of a fresh group on `topic`, from its beginning.
    pub async fn consume(
        system: System,
        addr: &str,
        topic: &str,
        group: &str,
        on: OnMessage,
    ) -> Result<Consumer> {
        match system {
            System::Dduomq => {
                let consumer = dduomq_client::PushConsumerBuilder::new(addr, group, topic)
                    .concurrency(256)
                    .max_in_flight(4096)
                    .start(move |m| {
                        on(&m.body);
                        async { Ok::<(), String>(()) }
                    })
                    .await?;
                Ok(Consumer {
                    task: tokio::spawn(async {}),
                    dduomq: Some(consumer),
                })
            }
            System::Rocketmq => Ok(Consumer {
                task: crate::rocketmq::consume(addr, topic, group, on).await?,
                dduomq: None,
            }),
            System::Nats => {
                use async_nats::jetstream::consumer::{AckPolicy, pull};
                let js = async_nats::jetstream::new(async_nats::connect(addr).await?);
                let stream = js
                    .get_stream(topic)
                    .await
                    .map_err(|e| anyhow::anyhow!("stream {topic}: {e}"))?;
                let consumer = stream
                    .create_consumer(pull::Config {
                        durable_name: Some(group.to_string()),
                        ack_policy: AckPolicy::Explicit,
                        max_ack_pending: 65536,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| anyhow::anyhow!("consumer: {e}"))?;
                let mut messages = consumer
                    .stream()
                    .max_messages_per_batch(1000)
                    .messages()
                    .await
                    .map_err(|e| anyhow::anyhow!("messages: {e}"))?;
                let task = tokio::spawn(async move {
                    while let Some(Ok(m)) = messages.next().await {
                        on(&m.payload);
                        let _ = m.ack().await;
                    }
                });
                Ok(Consumer { task, dduomq: None })
            }
            System::Kafka => {
                use rdkafka::Message;
                use rdkafka::consumer::{Consumer as _, StreamConsumer};
                let consumer: StreamConsumer = kafka_config(addr)
                    .set("group.id", group)
                    .set("auto.offset.reset", "earliest")
                    .set("enable.auto.commit", "true")
                    .create()?;
                consumer.subscribe(&[topic])?;
                let task = tokio::spawn(async move {
                    let mut stream = consumer.stream();
                    while let Some(Ok(m)) = stream.next().await {
                        on(m.payload().unwrap_or_default());
                    }
                });
                Ok(Consumer { task, dduomq: None })
            }
        }
    }
}

/// Waits (up to `within`) until a Kafka cluster's metadata lists `brokers`
/// brokers: a topic with that replication factor cannot be created before
/// every broker has registered with the controllers.
pub async fn wait_for_kafka_brokers(addr: &str, brokers: usize, within: Duration) -> Result<()> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let client: BaseConsumer = kafka_config(addr).create()?;
    let deadline = std::time::Instant::now() + within;
    tokio::task::spawn_blocking(move || {
        loop {
            let listed = client
                .fetch_metadata(None, Duration::from_secs(2))
                .map_or(0, |m| m.brokers().len());
            if listed >= brokers {
                return Ok(());
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "Kafka lists {listed} of {brokers} brokers after {within:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await?
}
