//! The DduoMQ Rust SDK.
//!
//! * [`Producer`] — send, send_async, send_oneway, send_batch; concurrent sends are
//!   coalesced into batches.
//! * [`PushConsumer`] — an async handler per message; `Ok` acks, `Err` nacks.
//! * [`PullConsumer`] — explicit offsets and commits, with rebalanced assignments.
//! * [`TransactionProducer`] — half messages committed or rolled back, with a
//!   checker the broker asks about transactions left unresolved.
//! * [`Admin`] — topics, groups, offsets, lookups.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use dduomq_client::{Message, ProducerBuilder, PushConsumerBuilder};
//! let producer = ProducerBuilder::new("127.0.0.1:6086").build()?;
//! producer.send(Message::new("orders", "hello")).await?;
//! let consumer = PushConsumerBuilder::new("127.0.0.1:6086", "billing", "orders")
//!     .start(|m| async move {
//!         println!("{}", String::from_utf8_lossy(&m.body));
//!         Ok::<(), anyhow::Error>(())
//!     })
//!     .await?;
//! consumer.shutdown().await;
//! # Ok(()) }
//! ```

mod admin;
mod connection;
mod error;
mod message;
mod producer;
mod pull_consumer;
mod push_consumer;
mod route;
mod transaction;

pub use admin::{Admin, AdminTimeouts, ResetTo, TopicSettings};
pub use connection::{Access, ClientIdentity, TlsOptions};
pub use error::{ClientError, Result};
pub use message::{DECODE_ERROR_PROPERTY, Message, ReceivedMessage, SendReceipt, now_millis};
pub use producer::{Producer, ProducerBuilder};
pub use pull_consumer::{PullConsumer, PullConsumerBuilder};
pub use push_consumer::{
    ConsumeMode, Filter, PushConsumer, PushConsumerBuilder, default_client_id,
};
pub use transaction::{
    Transaction, TransactionChecker, TransactionProducer, TransactionResolution,
};

/// Why a broker refused a request (docs/errors.md).
pub use dduomq_proto::Reason;
pub use dduomq_proto::signature::Credentials;
/// The protobuf types of the gRPC contract.
pub use dduomq_proto::v1 as proto;
