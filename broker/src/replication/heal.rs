//! Healing from the master: a replica whose recovery skipped damaged records
//! in the middle of its log fetches their intact bytes from its master with
//! ReadLog and writes them back (`Store::heal`), once the master's first
//! answer on a Follow stream showed the replica's log is a prefix of the
//! master's (so the master holds the same bytes at those positions).

use bytes::BytesMut;
use dduomq_proto::v1 as pb;
use dduomq_proto::v1::replication_service_client::ReplicationServiceClient;
use tonic::transport::Channel;

use super::Replication;
use super::follower::StreamEnd;

/// Most bytes one ReadLog of a damaged range asks for.
const HEAL_READ_BYTES: u32 = 4 << 20;

impl Replication {
    /// Heals every damaged range this member's store reported, from the
    /// master behind `client`.
    pub(super) async fn heal_from(
        &self,
        client: &mut ReplicationServiceClient<Channel>,
    ) -> Result<(), StreamEnd> {
        for range in self.store.damaged_ranges() {
            let mut intact = BytesMut::with_capacity((range.end - range.start) as usize);
            while (intact.len() as u64) < range.end - range.start {
                let start = range.start + intact.len() as u64;
                let chunk = client
                    .read_log(pb::ReadLogRequest {
                        group: self.placement.group,
                        start,
                        max_bytes: HEAL_READ_BYTES.min((range.end - start) as u32),
                    })
                    .await?
                    .into_inner();
                if chunk.data.is_empty() || chunk.start != start {
                    return Err(StreamEnd::Ended);
                }
                intact.extend_from_slice(&chunk.data);
            }
            self.store.heal(range.start, intact.freeze()).await?;
            tracing::warn!(
                start = range.start,
                end = range.end,
                "healed a damaged range of the log from the master"
            );
        }
        Ok(())
    }
}
