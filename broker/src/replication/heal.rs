//! Healing from the master: a replica whose recovery skipped damaged records
//! in the middle of its log fetches their intact bytes from its master with
//! ReadLog and writes them back (`Store::heal`), once the master's first
//! answer on a Follow stream showed the replica's log is a prefix of the
//! master's (so the master holds the same bytes at those positions).

use dduomq_proto::signature::Signer;
use dduomq_proto::v1 as pb;
use dduomq_proto::v1::replication_service_client::ReplicationServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::Replication;
use super::follower::StreamEnd;

/// A replica's client of its master's replication service, its requests signed.
pub(super) type MasterClient = ReplicationServiceClient<InterceptedService<Channel, Signer>>;

/// Most bytes one ReadLog of a damaged range asks for: the range (up to a
/// segment) heals in pieces of about this size, never held whole.
const HEAL_PIECE_BYTES: u32 = 1 << 20;

impl Replication {
    /// Heals every damaged range this member's store reported, from the
    /// master behind `client`.
    pub(super) async fn heal_from(&self, client: &mut MasterClient) -> Result<(), StreamEnd> {
        for range in self.store.damaged_ranges() {
            let mut start = range.start;
            while start < range.end {
                // Whole frames: a piece ends where a frame does.
                let piece = client
                    .read_log(pb::ReadLogRequest {
                        group: self.placement.group,
                        start,
                        max_bytes: HEAL_PIECE_BYTES.min((range.end - start) as u32),
                    })
                    .await?
                    .into_inner();
                let end = start + piece.data.len() as u64;
                if piece.data.is_empty() || piece.start != start || end > range.end {
                    return Err(StreamEnd::Ended);
                }
                self.store.heal(start, piece.data).await?;
                start = end;
            }
            tracing::warn!(
                start = range.start,
                end = range.end,
                "healed a damaged range of the log from the master"
            );
        }
        Ok(())
    }
}
