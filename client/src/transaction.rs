//! Transactional messages: [`TransactionProducer::begin`] stores a half message
//! that consumers cannot see; [`Transaction::commit`] makes it visible,
//! [`Transaction::rollback`] discards it. If the producer goes away first, the
//! broker asks the producer group's checkers (any live [`TransactionProducer`]
//! of the same group) what became of it, and rolls it back when no check
//! resolves it.
//!
//! ```no_run
//! # async fn demo() -> dduomq_client::Result<()> {
//! use dduomq_client::{Message, ProducerBuilder, TransactionProducer, TransactionResolution};
//! let producer = TransactionProducer::new(
//!     ProducerBuilder::new("127.0.0.1:6086"),
//!     "payments",
//!     |m: &dduomq_client::ReceivedMessage| {
//!         // Look the order up in the local database.
//!         if m.keys.iter().any(|k| k == "order-1") {
//!             TransactionResolution::Commit
//!         } else {
//!             TransactionResolution::Unknown
//!         }
//!     },
//! )?;
//! let tx = producer.begin(Message::new("orders", "paid").with_key("order-1")).await?;
//! // ... update the local database ...
//! tx.commit().await?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dduomq_proto::v1 as pb;
use parking_lot::Mutex;
use tokio::task::JoinHandle;

use crate::connection::{Access, client};
use crate::error::Result;
use crate::message::{Message, ReceivedMessage, SendReceipt};
use crate::producer::{Producer, ProducerBuilder, retry};

/// What a checker says about a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionResolution {
    Commit,
    Rollback,
    /// Not known yet: the broker asks again later (up to its check limit).
    Unknown,
}

/// Decides the outcome of a transaction the broker asks about.
pub trait TransactionChecker: Send + Sync + 'static {
    fn check(&self, message: &ReceivedMessage) -> TransactionResolution;
}

impl<F> TransactionChecker for F
where
    F: Fn(&ReceivedMessage) -> TransactionResolution + Send + Sync + 'static,
{
    fn check(&self, message: &ReceivedMessage) -> TransactionResolution {
        self(message)
    }
}

/// Pause before reopening a broken check stream.
const RECONNECT_AFTER: Duration = Duration::from_millis(500);

/// Sends transactional messages and answers the broker's checks for its
/// producer group (on every broker it has sent to, and the bootstrap broker).
pub struct TransactionProducer {
    producer: Producer,
    group: String,
    checker: Arc<dyn TransactionChecker>,
    /// One check stream per broker address.
    checks: Mutex<HashMap<String, JoinHandle<()>>>,
}

impl std::fmt::Debug for TransactionProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionProducer")
            .field("group", &self.group)
            .finish()
    }
}

impl TransactionProducer {
    /// A producer of `group` that answers checks with `checker`. Must be called
    /// inside a Tokio runtime (the check streams run as tasks).
    pub fn new(
        builder: ProducerBuilder,
        group: impl Into<String>,
        checker: impl TransactionChecker,
    ) -> Result<TransactionProducer> {
        let producer = builder.build()?;
        let this = TransactionProducer {
            group: group.into(),
            checker: Arc::new(checker),
            checks: Mutex::new(HashMap::new()),
            producer,
        };
        this.answer_checks_from(this.producer.endpoint());
        Ok(this)
    }

    /// Stores `message` as a half message: invisible to consumers until the
    /// returned transaction is committed.
    pub async fn begin(&self, message: Message) -> Result<Transaction> {
        let topic = message.topic.clone();
        for address in self.producer.brokers_of(&topic).await? {
            self.answer_checks_from(&address);
        }
        let group = self.group.clone();
        let (receipt, address) = self
            .producer
            .send_direct(message, |wire| {
                wire.transactional = true;
                wire.producer_group = group;
            })
            .await?;
        Ok(Transaction {
            receipt,
            address,
            topic,
            group: self.group.clone(),
            access: self.producer.access().clone(),
            timeout: self.producer.send_timeout(),
        })
    }

    /// Starts a check stream to `address` unless one runs.
    fn answer_checks_from(&self, address: &str) {
        let mut checks = self.checks.lock();
        if checks.contains_key(address) {
            return;
        }
        let task = tokio::spawn(run_checks(
            address.to_string(),
            self.group.clone(),
            self.producer.access().clone(),
            self.checker.clone(),
            self.producer.send_timeout(),
        ));
        checks.insert(address.to_string(), task);
    }
}

impl Drop for TransactionProducer {
    fn drop(&mut self) {
        for (_, task) in self.checks.lock().drain() {
            task.abort();
        }
    }
}

/// A transaction begun by [`TransactionProducer::begin`].
#[derive(Debug)]
pub struct Transaction {
    pub receipt: SendReceipt,
    address: String,
    topic: String,
    group: String,
    access: Access,
    timeout: Duration,
}

impl Transaction {
    pub fn id(&self) -> &str {
        &self.receipt.transaction_id
    }

    /// Makes the message visible to consumers.
    pub async fn commit(self) -> Result<()> {
        self.end(pb::TransactionResolution::Commit).await
    }

    /// Discards the message.
    pub async fn rollback(self) -> Result<()> {
        self.end(pb::TransactionResolution::Rollback).await
    }

    async fn end(self, resolution: pb::TransactionResolution) -> Result<()> {
        end_transaction(
            &self.address,
            &self.access,
            pb::EndTransactionRequest {
                topic: self.topic,
                transaction_id: self.receipt.transaction_id,
                producer_group: self.group,
                resolution: resolution as i32,
                from_check: false,
            },
            self.timeout,
        )
        .await
    }
}

async fn end_transaction(
    address: &str,
    access: &Access,
    request: pb::EndTransactionRequest,
    timeout: Duration,
) -> Result<()> {
    let client = client(address, access)?;
    retry(timeout, || {
        let (mut client, request) = (client.clone(), request.clone());
        async move { client.end_transaction(request).await }
    })
    .await
    .map(|_| ())
}

/// Answers one broker's checks for `group`, reconnecting when the stream breaks.
async fn run_checks(
    address: String,
    group: String,
    access: Access,
    checker: Arc<dyn TransactionChecker>,
    timeout: Duration,
) {
    let client_id = crate::push_consumer::default_client_id();
    loop {
        let request = pb::TransactionChecksRequest {
            producer_group: group.clone(),
            client_id: client_id.clone(),
        };
        let opened = match client(&address, &access) {
            Ok(mut c) => c
                .transaction_checks(request)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match opened {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                while let Ok(Some(check)) = stream.message().await {
                    let Some(message) = check.message else {
                        continue;
                    };
                    let topic = message.topic.clone();
                    let resolution = match checker.check(&ReceivedMessage::from(message)) {
                        TransactionResolution::Commit => pb::TransactionResolution::Commit,
                        TransactionResolution::Rollback => pb::TransactionResolution::Rollback,
                        TransactionResolution::Unknown => continue,
                    };
                    let request = pb::EndTransactionRequest {
                        topic,
                        transaction_id: check.transaction_id,
                        producer_group: group.clone(),
                        resolution: resolution as i32,
                        from_check: true,
                    };
                    let (address, access) = (address.clone(), access.clone());
                    tokio::spawn(async move {
                        if let Err(e) = end_transaction(&address, &access, request, timeout).await {
                            tracing::warn!(error = %e, "answering a transaction check failed");
                        }
                    });
                }
            }
            Err(e) => tracing::debug!(address, error = %e, "transaction check stream failed"),
        }
        tokio::time::sleep(RECONNECT_AFTER).await;
    }
}
