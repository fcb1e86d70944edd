//! Consuming through the RocketMQ door: ReceiveMessage long-polls the
//! client's consumer (see `clients.rs`) for leased messages; AckMessage,
//! ChangeInvisibleDuration and ForwardMessageToDeadLetterQueue settle them by
//! receipt handle, as our own API does.

use std::time::Duration;

use dduomq_proto::rocketmq::v2 as rmq;
use tokio::time::Instant;

use super::RocketMqApi;
use super::attempts::{Answered, MAX_ATTEMPT_ID_LEN};
use super::clients::MAX_CONCURRENT_RECEIVES;
use super::message::{self, duration_millis};
use super::names::Scope;
use super::status::{self, Refusal, ok, refusal};
use crate::auth::Action;
use crate::filter::{FilterKind, FilterSpec};
use crate::messaging::error::BrokerError;
use crate::messaging::{Delivery, LeaseEnd, LeaseRound, ReceiveLimits, limits};

/// Most messages one receive returns, whatever the client asks for (with the
/// record limit, this bounds what one answer holds in memory).
const MAX_RECEIVE_BATCH: usize = 32;
/// Most entries one AckMessage may carry.
const MAX_ACK_ENTRIES: usize = 1024;
/// Long polling when the client names no timeout, and the longest allowed.
const DEFAULT_LONG_POLLING: Duration = Duration::from_secs(20);
const MAX_LONG_POLLING: Duration = Duration::from_secs(60);
/// Messages (and bytes) one client's consumer may hold unacknowledged.
const MAX_HELD_MESSAGES: u64 = 65_536;
const MAX_HELD_BYTES: u64 = 1 << 30;
/// Longest a waiting receive sleeps before it looks again.
const MAX_IDLE: Duration = Duration::from_secs(1);

impl RocketMqApi {
    /// Leases up to the asked batch, waiting up to the long-polling timeout;
    /// the messages, then when they were handed over (clients time
    /// deliveries by it; the Python push consumer fails without it), then one
    /// status (MESSAGE_NOT_FOUND when none came).
    pub(super) async fn receive(
        &self,
        mut scope: Scope,
        r: rmq::ReceiveMessageRequest,
    ) -> Vec<rmq::ReceiveMessageResponse> {
        use rmq::receive_message_response::Content;
        let answer = |content: Content| rmq::ReceiveMessageResponse {
            content: Some(content),
        };
        let status = |s: Option<rmq::Status>| rmq::ReceiveMessageResponse {
            content: s.map(Content::Status),
        };
        scope.caller.pace_delivery().await;
        match self.receive_messages(&mut scope, r).await {
            Ok(messages) if messages.is_empty() => vec![status(status::status(
                rmq::Code::MessageNotFound,
                "no new message",
            ))],
            Ok(messages) => {
                let bytes = messages.iter().map(|m| m.body.len() as u64).sum();
                scope.caller.charge_delivery(bytes);
                let handed_over = message::timestamp(crate::store::now_millis());
                messages
                    .into_iter()
                    .map(|m| answer(Content::Message(m)))
                    .chain([answer(Content::DeliveryTimestamp(handed_over))])
                    .chain([status(ok())])
                    .collect()
            }
            Err(e) => vec![status(e.status(&scope.ns))],
        }
    }

    async fn receive_messages(
        &self,
        scope: &mut Scope,
        r: rmq::ReceiveMessageRequest,
    ) -> Result<Vec<rmq::Message>, Refusal> {
        let client = scope.client()?;
        let group = scope.group(r.group.as_ref(), &[Action::Subscribe])?;
        let queue = r.message_queue.as_ref();
        let topic = scope.topic(queue.and_then(|q| q.topic.as_ref()), &[Action::Subscribe])?;
        let filter = filter(r.filter_expression.as_ref())?;
        let batch = batch_size(r.batch_size)?;
        let config = self.broker.config();
        let invisible = match &r.invisible_duration {
            None => config.default_invisible_duration,
            Some(d) => duration_millis("invisible_duration", d)
                .and_then(|ms| limits::check_invisible(ms.max(1), config.max_invisible_duration))
                .map_err(|e| Refusal::Coded(rmq::Code::IllegalInvisibleTime, e.to_string()))?,
        };
        let polling = long_polling(r.long_polling_timeout.as_ref())?;
        let attempt = r.attempt_id.filter(|id| !id.is_empty());
        if let Some(id) = &attempt {
            limits::check_id("attempt_id", id, MAX_ATTEMPT_ID_LEN, false)?;
        }
        let session = self
            .clients
            .consumer(&self.broker, &client, &group, &topic, filter)
            .await?;
        let Some(_waiting) = session.begin_receive() else {
            return Err(Refusal::Coded(
                rmq::Code::TooManyRequests,
                format!(
                    "at most {MAX_CONCURRENT_RECEIVES} receives of one client on one group and topic may wait at once"
                ),
            ));
        };
        if let Some(answered) = attempt
            .as_deref()
            .and_then(|id| session.attempts.answered(id))
        {
            // The attempt again (counted as a waiting receive): what it was
            // answered and still holds.
            let held: Vec<_> = answered
                .into_iter()
                .filter_map(|a| {
                    let held =
                        self.broker
                            .held_delivery(&session.stream, &a.receipt_handle, a.attempt);
                    held.ok()
                })
                .collect();
            if !held.is_empty() {
                return Ok(self.show(scope, &group, &topic, held).await?);
            }
        }
        if r.auto_renew {
            session.renew_leases(invisible);
        }
        let limits = ReceiveLimits {
            max_messages: MAX_HELD_MESSAGES,
            max_bytes: MAX_HELD_BYTES,
            invisible,
        };
        let deadline = Instant::now() + polling;
        let sub = &session.stream.subscription;
        let mut arrivals = self.broker.store().subscribe();
        let mut stop = self.broker.shutdown_signal();
        let deliveries = loop {
            let notified = sub.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            arrivals.borrow_and_update();
            let LeaseRound {
                deliveries,
                wake_at,
            } = self
                .broker
                .lease(sub, session.stream.consumer, limits, batch)
                .await?;
            if !deliveries.is_empty() || Instant::now() >= deadline || session.is_closed() {
                break deliveries;
            }
            let idle = LeaseRound::idle(wake_at, MAX_IDLE);
            tokio::select! {
                _ = &mut notified => {}
                _ = arrivals.changed() => {}
                _ = tokio::time::sleep(idle) => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = stop.wait_for(|s| *s) => break Vec::new(),
            }
        };
        let shown = self.show(scope, &group, &topic, deliveries).await?;
        if let Some(id) = attempt
            && !shown.is_empty()
        {
            let answered = shown
                .iter()
                .filter_map(|m| {
                    let sys = m.system_properties.as_ref()?;
                    Some(Answered {
                        receipt_handle: sys.receipt_handle.clone()?,
                        attempt: sys.delivery_attempt.unwrap_or(1) as u32,
                    })
                })
                .collect();
            session.attempts.keep(id, answered, invisible);
        }
        Ok(shown)
    }

    /// Leased messages as the client receives them. One the door cannot show
    /// (a stored body that does not inflate) is nacked: delivered again after
    /// the group's backoff, in the end dead-lettered. The others are answered.
    async fn show(
        &self,
        scope: &Scope,
        group: &str,
        topic: &str,
        deliveries: Vec<Delivery>,
    ) -> Result<Vec<rmq::Message>, BrokerError> {
        let message_type = self.broker.topic_type(topic)?;
        let host = self.broker.config().advertised_address();
        let max_body = self.max_body();
        let mut shown = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            let (id, handle) = (d.message_id.clone(), d.receipt_handle.clone());
            match message::to_rmq(scope, d, message_type, &host, max_body) {
                Ok(m) => shown.push(m),
                Err(e) => {
                    tracing::warn!(message_id = id, error = %e, "not delivered to a RocketMQ client");
                    let _ = self.broker.nack(group, topic, &handle).await;
                }
            }
        }
        Ok(shown)
    }

    /// Acks each entry; one status per entry, and OK overall only when all were.
    pub(super) fn ack(
        &self,
        mut scope: Scope,
        r: rmq::AckMessageRequest,
    ) -> rmq::AckMessageResponse {
        let names = scope
            .group(r.group.as_ref(), &[Action::Subscribe])
            .and_then(|g| Ok((g, scope.topic(r.topic.as_ref(), &[Action::Subscribe])?)));
        let (group, topic) = match names {
            Ok(n) => n,
            Err(e) => {
                return rmq::AckMessageResponse {
                    status: refusal(&scope.ns, e),
                    entries: Vec::new(),
                };
            }
        };
        if r.entries.len() > MAX_ACK_ENTRIES {
            return rmq::AckMessageResponse {
                status: status::status(
                    rmq::Code::BadRequest,
                    format!(
                        "{} entries; one AckMessage takes at most {MAX_ACK_ENTRIES}",
                        r.entries.len()
                    ),
                ),
                entries: Vec::new(),
            };
        }
        let handles: Vec<String> = r.entries.iter().map(|e| e.receipt_handle.clone()).collect();
        let results = self.broker.ack(&group, &topic, &handles);
        let mut all_ok = true;
        let entries = r
            .entries
            .into_iter()
            .zip(results)
            .map(|(e, result)| rmq::AckMessageResultEntry {
                message_id: e.message_id,
                receipt_handle: e.receipt_handle,
                status: match result {
                    Ok(()) => ok(),
                    Err(err) => {
                        all_ok = false;
                        refusal(&scope.ns, err)
                    }
                },
            })
            .collect::<Vec<_>>();
        let status = match (all_ok, entries.first()) {
            (true, _) | (false, None) => ok(),
            (false, Some(_)) if entries.len() == 1 => entries[0].status.clone(),
            (false, Some(_)) => status::status(rmq::Code::MultipleResults, "some acks failed"),
        };
        rmq::AckMessageResponse { status, entries }
    }

    pub(super) fn change_invisible(
        &self,
        mut scope: Scope,
        r: rmq::ChangeInvisibleDurationRequest,
    ) -> rmq::ChangeInvisibleDurationResponse {
        let changed = (|| {
            let group = scope.group(r.group.as_ref(), &[Action::Subscribe])?;
            let topic = scope.topic(r.topic.as_ref(), &[Action::Subscribe])?;
            let d = r
                .invisible_duration
                .as_ref()
                .ok_or_else(|| BrokerError::invalid("invisible_duration", "missing"))?;
            let ms = duration_millis("invisible_duration", d)?;
            // The client times it (its nack too): due when it runs out.
            self.broker.change_invisible(
                &group,
                &topic,
                &r.receipt_handle,
                ms.max(1),
                LeaseEnd::AtDeadline,
            )
        })();
        match changed {
            Ok(_) => rmq::ChangeInvisibleDurationResponse {
                status: ok(),
                receipt_handle: r.receipt_handle,
            },
            Err(e) => rmq::ChangeInvisibleDurationResponse {
                status: refusal(&scope.ns, e),
                receipt_handle: String::new(),
            },
        }
    }

    pub(super) async fn forward_to_dead_letter(
        &self,
        mut scope: Scope,
        r: rmq::ForwardMessageToDeadLetterQueueRequest,
    ) -> Option<rmq::Status> {
        let names = scope
            .group(r.group.as_ref(), &[Action::Subscribe])
            .and_then(|g| Ok((g, scope.topic(r.topic.as_ref(), &[Action::Subscribe])?)));
        let result = match names {
            Ok((group, topic)) => {
                self.broker
                    .dead_letter_now(&group, &topic, &r.receipt_handle)
                    .await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => ok(),
            Err(e) => refusal(&scope.ns, e),
        }
    }
}

/// How long a receive or pull may wait: the client's long-polling timeout,
/// bounded.
pub(super) fn long_polling(asked: Option<&prost_types::Duration>) -> Result<Duration, Refusal> {
    let Some(d) = asked else {
        return Ok(DEFAULT_LONG_POLLING);
    };
    let ms = duration_millis("long_polling_timeout", d)?;
    let asked = Duration::from_millis(ms);
    if asked > MAX_LONG_POLLING {
        return Err(Refusal::Coded(
            rmq::Code::IllegalPollingTime,
            format!(
                "long_polling_timeout {ms} ms is over the {} ms allowed",
                MAX_LONG_POLLING.as_millis()
            ),
        ));
    }
    Ok(asked)
}

/// The most messages one receive or pull returns: the client's batch size,
/// bounded.
pub(super) fn batch_size(asked: i32) -> Result<usize, Refusal> {
    if asked < 1 {
        return Err(Refusal::Coded(
            rmq::Code::BadRequest,
            format!("batch_size {asked} must be at least 1"),
        ));
    }
    Ok((asked as usize).min(MAX_RECEIVE_BATCH))
}

/// A RocketMQ filter expression as ours; none, or a TAG `*`, passes everything.
pub(super) fn filter(f: Option<&rmq::FilterExpression>) -> Result<FilterSpec, BrokerError> {
    let Some(f) = f else {
        return Ok(FilterSpec::all());
    };
    let kind = match rmq::FilterType::try_from(f.r#type) {
        Ok(rmq::FilterType::Tag | rmq::FilterType::Unspecified) => FilterKind::Tag,
        Ok(rmq::FilterType::Sql) => FilterKind::Sql,
        Err(_) => {
            return Err(BrokerError::invalid(
                "filter_expression.type",
                format!("unknown value {}", f.r#type),
            ));
        }
    };
    let spec = FilterSpec {
        kind,
        expression: f.expression.clone(),
    };
    spec.parse()?;
    Ok(spec)
}
