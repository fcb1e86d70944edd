//! `ReplicationService`: a replica's Follow stream to its master, and
//! ReadLog (intact bytes of a range, for a member healing damage).

use std::pin::Pin;
use std::sync::Arc;

use dduomq_proto::v1 as pb;
use dduomq_proto::v1::replication_service_server::ReplicationService;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::observed;
use super::status::{invalid, to_status};
use crate::messaging::Broker;
use crate::replication::Replication;

/// The gRPC face of replication.
#[derive(Debug, Clone)]
pub struct ReplicationApi {
    pub broker: Arc<Broker>,
}

/// Largest ReadLog answer.
const MAX_READ_BYTES: u32 = 16 << 20;

impl ReplicationApi {
    fn replication(&self) -> Result<&Arc<Replication>, Status> {
        self.broker.replication().ok_or_else(|| {
            Status::failed_precondition(
                "this broker does not replicate ([replication] factor is 1)",
            )
        })
    }
}

type FollowStream = Pin<Box<dyn Stream<Item = Result<pb::FollowResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ReplicationService for ReplicationApi {
    type FollowStream = FollowStream;

    async fn follow(
        &self,
        req: Request<Streaming<pb::FollowRequest>>,
    ) -> Result<Response<FollowStream>, Status> {
        observed(self.broker.metrics(), "Follow", async move {
            let replication = self.replication()?;
            let mut requests = req.into_inner();
            let start = match requests.message().await? {
                Some(pb::FollowRequest {
                    kind: Some(pb::follow_request::Kind::Start(start)),
                }) => start,
                _ => return Err(invalid("follow", "the first request must be FollowStart")),
            };
            let responses = replication
                .serve_follow(start, requests)
                .map_err(to_status)?;
            Ok(Response::new(
                Box::pin(ReceiverStream::new(responses)) as FollowStream
            ))
        })
        .await
    }

    async fn read_log(
        &self,
        req: Request<pb::ReadLogRequest>,
    ) -> Result<Response<pb::LogChunk>, Status> {
        observed(self.broker.metrics(), "ReadLog", async move {
            let replication = self.replication()?;
            let r = req.into_inner();
            if r.group != replication.placement().group {
                return Err(invalid("group", "this broker is in another group"));
            }
            let raw = self
                .broker
                .store()
                .read_log(r.start, r.max_bytes.min(MAX_READ_BYTES) as usize)
                .map_err(|e| to_status(e.into()))?;
            Ok(Response::new(pb::LogChunk {
                start: raw.start,
                data: raw.data,
                epoch_starts: Vec::new(),
                committed_end: replication.report().committed_end,
            }))
        })
        .await
    }
}
