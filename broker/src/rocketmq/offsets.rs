//! Consuming by offset through the RocketMQ door, for clients that keep their
//! own position: PullMessage reads a queue from an offset (nothing is leased,
//! nothing moves the group's progress), UpdateOffset and GetOffset store and
//! read a group's progress on a queue, QueryOffset finds an offset by
//! position or time. Offsets are queue offsets, as everywhere in DduoMQ; a
//! committed offset is the next one the group consumes.

use dduomq_proto::Reason;
use dduomq_proto::rocketmq::v2 as rmq;
use rmq::pull_message_response::Content;

use super::RocketMqApi;
use super::consume::{batch_size, filter, long_polling};
use super::message;
use super::names::Scope;
use super::status::{self, Refusal, ok, refusal};
use crate::auth::Action;
use crate::grpc::namespace::Names;
use crate::messaging::error::BrokerError;
use crate::messaging::{Claim, PullSpec, Pulled, ResetTarget};
use crate::store::StoreError;

/// The reason that starts ILLEGAL_OFFSET messages (see docs/errors.md).
const OUT_OF_RANGE: Reason = Reason::OffsetOutOfRange;

/// Most bytes one pull answers with (at least one message, whatever its size).
const MAX_PULL_BYTES: usize = 4 << 20;

/// A queue a request names, as stored.
struct NamedQueue {
    topic: String,
    queue_id: u32,
}

impl RocketMqApi {
    /// Reads up to the asked batch from the offset, waiting up to the
    /// long-polling timeout for a first message: a status, the messages, then
    /// the offset to pull from next. MESSAGE_NOT_FOUND when none came (the
    /// next offset may still move, past messages the filter skipped), also
    /// while the broker shuts down; an offset outside the queue is
    /// ILLEGAL_OFFSET with the nearest offset the queue holds (a negative one
    /// too); a message that cannot be read is INTERNAL_SERVER_ERROR with the
    /// offset after it.
    pub(super) async fn pull(
        &self,
        mut scope: Scope,
        r: rmq::PullMessageRequest,
    ) -> Vec<rmq::PullMessageResponse> {
        let answer = |content: Content| rmq::PullMessageResponse {
            content: Some(content),
        };
        let status = |s: Option<rmq::Status>| rmq::PullMessageResponse {
            content: s.map(Content::Status),
        };
        let asked = r.offset;
        scope.caller.pace_delivery().await;
        match self.pull_messages(&mut scope, r).await {
            Ok(PullAnswer {
                messages,
                next_offset,
                refusal,
            }) => {
                let bytes = messages.iter().map(|m| m.body.len() as u64).sum();
                scope.caller.charge_delivery(bytes);
                let first = match refusal {
                    Some(refused) => Some(refused),
                    None if messages.is_empty() => {
                        status::status(rmq::Code::MessageNotFound, "no new message")
                    }
                    None => ok(),
                };
                [status(first)]
                    .into_iter()
                    .chain(messages.into_iter().map(|m| answer(Content::Message(m))))
                    .chain([answer(Content::NextOffset(next_offset as i64))])
                    .collect()
            }
            Err(Refusal::Broker(BrokerError::Store(StoreError::OffsetOutOfRange {
                topic,
                queue_id,
                offset,
                min,
                max,
            }))) => {
                let nearest = offset.clamp(min, max);
                let shown = scope.ns.shown_message(format!(
                    "{OUT_OF_RANGE}: offset {offset} is outside queue {queue_id} of {topic}, which holds [{min}, {max}); pull from {nearest}"
                ));
                vec![
                    status(status::status(rmq::Code::IllegalOffset, shown)),
                    answer(Content::NextOffset(nearest as i64)),
                ]
            }
            // Shutting down: nothing now; the client pulls again elsewhere
            // or later, from where it was.
            Err(Refusal::Broker(BrokerError::Store(StoreError::Closed))) => vec![
                status(status::status(
                    rmq::Code::MessageNotFound,
                    "the broker is shutting down",
                )),
                answer(Content::NextOffset(asked)),
            ],
            Err(e) => vec![status(e.status(&scope.ns))],
        }
    }

    async fn pull_messages(
        &self,
        scope: &mut Scope,
        r: rmq::PullMessageRequest,
    ) -> Result<PullAnswer, Refusal> {
        let group = scope.group(r.group.as_ref(), &[Action::Subscribe])?;
        let queue = named_queue(scope, r.message_queue.as_ref())?;
        let filter = filter(r.filter_expression.as_ref())?;
        let batch = batch_size(r.batch_size)?;
        let wait = long_polling(r.long_polling_timeout.as_ref())?;
        // Known, or to be created on first use (a pull creates nothing).
        self.broker.group_known(&group)?;
        let Ok(offset) = u64::try_from(r.offset) else {
            let oldest =
                self.broker
                    .locate_offset(&queue.topic, queue.queue_id, ResetTarget::Earliest)?;
            return Ok(PullAnswer {
                messages: Vec::new(),
                next_offset: oldest,
                refusal: status::status(
                    rmq::Code::IllegalOffset,
                    format!(
                        "{OUT_OF_RANGE}: offset {} is negative; pull from {oldest}",
                        r.offset
                    ),
                ),
            });
        };
        let Pulled {
            deliveries,
            next_offset,
            ..
        } = self
            .broker
            .pull(PullSpec {
                group: &group,
                topic: &queue.topic,
                queue_id: queue.queue_id,
                offset,
                max_messages: batch,
                max_bytes: MAX_PULL_BYTES,
                wait,
                filter: &filter,
                // A RocketMQ pull is no member of its group: it holds nothing.
                claim: Claim::CheckOnly,
            })
            .await?;
        let message_type = self.broker.topic_type(&queue.topic)?;
        let host = self.broker.config().advertised_address();
        let max_body = self.max_body();
        let mut messages = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            let at = d.record.queue_offset;
            match message::to_rmq(scope, d, message_type, &host, max_body) {
                Ok(m) => messages.push(m),
                // A stored body that does not inflate: answered up to it; the
                // client that pulls from it is told, with where the next
                // message is (it decides whether to skip it).
                Err(e) if messages.is_empty() => {
                    return Ok(PullAnswer {
                        messages,
                        next_offset: at + 1,
                        refusal: status::status(
                            rmq::Code::InternalServerError,
                            format!(
                                "the message at offset {at} cannot be read ({e}); the next is at {}",
                                at + 1
                            ),
                        ),
                    });
                }
                Err(_) => {
                    return Ok(PullAnswer {
                        messages,
                        next_offset: at,
                        refusal: None,
                    });
                }
            }
        }
        Ok(PullAnswer {
            messages,
            next_offset,
            refusal: None,
        })
    }

    /// Stores the group's progress on the queue (see [`Broker::store_offset`]).
    ///
    /// [`Broker::store_offset`]: crate::messaging::Broker::store_offset
    pub(super) fn update_offset(
        &self,
        mut scope: Scope,
        r: rmq::UpdateOffsetRequest,
    ) -> Option<rmq::Status> {
        let stored = (|| -> Result<(), Refusal> {
            let group = scope.group(r.group.as_ref(), &[Action::Subscribe])?;
            let queue = named_queue(&mut scope, r.message_queue.as_ref())?;
            let offset = non_negative(r.offset)?;
            self.broker
                .store_offset(&group, &queue.topic, queue.queue_id, offset)?;
            Ok(())
        })();
        match stored {
            Ok(()) => ok(),
            Err(e) => e.status(&scope.ns),
        }
    }

    /// The group's committed offset on the queue; OFFSET_NOT_FOUND before the
    /// group has any progress there.
    pub(super) fn get_offset(
        &self,
        mut scope: Scope,
        r: rmq::GetOffsetRequest,
    ) -> rmq::GetOffsetResponse {
        let committed = (|| -> Result<u64, Refusal> {
            let group = scope.group(r.group.as_ref(), &[Action::Subscribe])?;
            let queue = named_queue(&mut scope, r.message_queue.as_ref())?;
            self.broker
                .committed_offset(&group, &queue.topic, queue.queue_id)?
                .ok_or_else(|| {
                    Refusal::Coded(
                        rmq::Code::OffsetNotFound,
                        "the group has no progress on this queue yet".to_string(),
                    )
                })
        })();
        match committed {
            Ok(offset) => rmq::GetOffsetResponse {
                status: ok(),
                offset: offset as i64,
            },
            Err(e) => rmq::GetOffsetResponse {
                status: e.status(&scope.ns),
                offset: 0,
            },
        }
    }

    /// The queue's first offset (BEGINNING), the offset its next message gets
    /// (END), or that of its first message stored at or after a time
    /// (TIMESTAMP; END when there is none).
    pub(super) fn query_offset(
        &self,
        mut scope: Scope,
        r: rmq::QueryOffsetRequest,
    ) -> rmq::QueryOffsetResponse {
        let found = (|| -> Result<u64, BrokerError> {
            let queue = named_queue(&mut scope, r.message_queue.as_ref())?;
            let to = match rmq::QueryOffsetPolicy::try_from(r.query_offset_policy) {
                Ok(rmq::QueryOffsetPolicy::Beginning) => ResetTarget::Earliest,
                Ok(rmq::QueryOffsetPolicy::End) => ResetTarget::Latest,
                Ok(rmq::QueryOffsetPolicy::Timestamp) => {
                    let at = r.timestamp.as_ref().ok_or_else(|| {
                        BrokerError::invalid("timestamp", "the TIMESTAMP policy needs one")
                    })?;
                    ResetTarget::Timestamp(message::millis(at))
                }
                Err(_) => {
                    return Err(BrokerError::invalid(
                        "query_offset_policy",
                        format!("unknown value {}", r.query_offset_policy),
                    ));
                }
            };
            self.broker.locate_offset(&queue.topic, queue.queue_id, to)
        })();
        match found {
            Ok(offset) => rmq::QueryOffsetResponse {
                status: ok(),
                offset: offset as i64,
            },
            Err(e) => rmq::QueryOffsetResponse {
                status: refusal(&scope.ns, e),
                offset: 0,
            },
        }
    }
}

/// What a pull answers with.
struct PullAnswer {
    messages: Vec<rmq::Message>,
    next_offset: u64,
    /// Why nothing was answered, when that is not simply that no message
    /// came: an offset before the queue, or a message that cannot be read.
    refusal: Option<rmq::Status>,
}

/// The stored topic and the queue id of a request's message queue.
fn named_queue(
    scope: &mut Scope,
    q: Option<&rmq::MessageQueue>,
) -> Result<NamedQueue, BrokerError> {
    let q = q.ok_or_else(|| BrokerError::invalid("message_queue", "missing"))?;
    let topic = scope.topic(q.topic.as_ref(), &[Action::Subscribe])?;
    let queue_id = u32::try_from(q.id)
        .map_err(|_| BrokerError::invalid("message_queue.id", format!("{}: not a queue", q.id)))?;
    Ok(NamedQueue { topic, queue_id })
}

/// A client's offset, which must not be negative.
fn non_negative(offset: i64) -> Result<u64, Refusal> {
    u64::try_from(offset).map_err(|_| {
        Refusal::Coded(
            rmq::Code::IllegalOffset,
            format!("{OUT_OF_RANGE}: offset {offset} is negative"),
        )
    })
}
