//! Transactional messages: a half message waits in `%HALF%` (see
//! [`super::staged`]) until the producer commits it (a copy goes to its topic,
//! then a marker) or rolls it back (a marker). One left unresolved is checked
//! with its producer group's checkers, repeatedly, and rolled back after the
//! last check. A repeated end is answered from memory or, for an older
//! resolution, from the marker.

use std::sync::Arc;
use std::time::Duration;

use super::error::{BrokerError, Result};
use super::staged::{self, Claim, Half, Resolution, TransactionCheck};
use super::{Broker, Delivery, properties};
use crate::store::{MessageId, TransactionState, now_millis};

/// Index hits read when looking up a transaction's marker: the marker and any
/// records whose key hashes collide with its id.
const MARKER_LOOKUP_HITS: usize = 8;

/// The answer to ending again a transaction that ended `ended`: the same way
/// is a no-op, the other way is refused.
fn repeated_end(transaction_id: &str, ended: Resolution, asked: Resolution) -> Result<()> {
    if ended == asked {
        return Ok(());
    }
    Err(BrokerError::TransactionResolved {
        id: transaction_id.to_string(),
        resolution: ended.as_str().to_string(),
    })
}

/// How often the check loop looks for due checks: a quarter of the shorter
/// of the first-check delay and the check interval (so a check is late by at
/// most that), between 20 ms and 1 s.
fn check_tick(check_after: Duration, interval: Duration) -> Duration {
    (check_after.min(interval) / 4).clamp(Duration::from_millis(20), Duration::from_secs(1))
}

impl Broker {
    /// Commits or rolls back a transaction. Ending it again the same way is a
    /// no-op; the other way is refused.
    pub async fn end_transaction(
        self: &Arc<Self>,
        topic: &str,
        transaction_id: &str,
        producer_group: &str,
        resolution: Resolution,
    ) -> Result<()> {
        // A replica resolves nothing (its master does, and the outcome
        // arrives through the log): NOT_MASTER sends the producer there.
        self.write_term()?;
        let not_found = || BrokerError::TransactionNotFound(transaction_id.to_string());
        let id: MessageId = transaction_id.parse().map_err(|_| not_found())?;
        if id.broker_id != self.store.config().broker_id {
            return Err(not_found());
        }
        let position = staged::Position {
            physical: id.physical_offset,
            crc: id.crc,
        };
        let owned = |group: &str, half_topic: &str| {
            group == producer_group && (topic.is_empty() || half_topic == topic)
        };
        let claim = self.staged.claim(position);
        // Only the owner learns how (or whether) a transaction ended: anyone
        // else gets "not found", as for an unknown id.
        if !matches!(claim, Claim::Pending(_)) {
            match self.store.lookup_by_id(&id) {
                Ok(rec)
                    if rec.topic == staged::HALF_TOPIC
                        && owned(
                            properties::PRODUCER_GROUP
                                .get(&rec.properties)
                                .unwrap_or_default(),
                            properties::REAL_TOPIC
                                .get(&rec.properties)
                                .unwrap_or_default(),
                        ) => {}
                _ => return Err(not_found()),
            }
        }
        let half = match claim {
            Claim::Pending(h) => h,
            Claim::Resolving => {
                return Err(BrokerError::TransactionInProgress(
                    transaction_id.to_string(),
                ));
            }
            Claim::Resolved(ended) => return repeated_end(transaction_id, ended, resolution),
            // Resolved longer ago than memory holds (or before a restart):
            // its marker tells how.
            Claim::Unknown => {
                return match self.marked_resolution(&id)? {
                    Some(ended) => repeated_end(transaction_id, ended, resolution),
                    // Ended by an earlier version, which wrote no commit
                    // markers and indexed none, or a crash kept the copy of a
                    // commit but not its marker.
                    None => Err(BrokerError::TransactionResolved {
                        id: transaction_id.to_string(),
                        resolution: "resolved (its outcome was not recorded)".into(),
                    }),
                };
            }
        };
        if !owned(&half.group, &half.topic) {
            self.staged.unclaim(half);
            return Err(not_found());
        }
        // In its own task: a client that gives up must not leave the claim
        // half done.
        let this = self.clone();
        super::run_to_completion(async move { this.resolve(half, resolution, "producer").await })
            .await
    }

    /// How a transaction ended, as its marker in `%RESOLVED%` records (`None`
    /// when no marker names it).
    fn marked_resolution(&self, id: &MessageId) -> Result<Option<Resolution>> {
        // One marker per transaction, keyed by its id. The store counts index
        // hits towards the limit before it compares topic and key, so a few
        // are asked for: a colliding key's record cannot hide the marker.
        let markers = self.store.lookup_by_key(
            staged::RESOLVED_TOPIC,
            &id.to_string(),
            i64::MIN,
            i64::MAX,
            MARKER_LOOKUP_HITS,
        )?;
        Ok(markers
            .iter()
            .find_map(|m| properties::RESOLUTION.get(&m.properties))
            .and_then(Resolution::parse))
    }

    /// Stores a claimed transaction's outcome; gives the claim back on failure.
    async fn resolve(&self, half: Half, resolution: Resolution, by: &str) -> Result<()> {
        let id = self.staged_id(half.position);
        // The copy first: a crash between the two leaves the half committed
        // (the scan reads the copy), never marked without its copy.
        let marker = staged::marker(&id, resolution.as_str());
        let outcome = match resolution {
            Resolution::Commit => match self.store.lookup_by_id(&id) {
                Ok(rec) => Ok(vec![
                    self.released_copy(rec, &id, TransactionState::Committed),
                    marker,
                ]),
                Err(e) => Err(e),
            },
            Resolution::Rollback => Ok(vec![marker]),
        };
        // Either outcome is as safe as a send to its topic: a commit lost in
        // a failover would leave the half to be rolled back, a rollback lost
        // would leave it to be checked and maybe committed.
        let policy = self.strictest_ack_policy(&half.topic);
        let stored = match outcome {
            Ok(records) => self.append_acknowledged(records, policy).await,
            Err(e) => Err(e.into()),
        };
        match stored {
            Ok(()) => {
                self.staged.resolved(half.position, resolution);
                tracing::info!(id = %id, group = half.group, resolution = resolution.as_str(), by, "transaction ended");
                Ok(())
            }
            Err(e) => {
                self.staged.unclaim(half);
                Err(e)
            }
        }
    }

    /// Sends due checks and rolls back transactions past their last check,
    /// until shutdown.
    pub async fn run_transaction_checks(self: Arc<Self>) {
        let interval = self.config.transaction_check_interval;
        let tick = check_tick(self.config.transaction_check_after, interval);
        let mut stop = self.shutdown_signal();
        let mut ticks = tokio::time::interval(tick);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if !self.writes_log() {
                continue; // the master checks; its outcomes arrive through the log
            }
            let (checks, expired) = self.staged.due_checks(
                now_millis(),
                interval.as_millis() as i64,
                self.config.transaction_max_checks,
            );
            for half in expired {
                tracing::warn!(id = %self.staged_id(half.position), group = half.group, checks = half.checks, "transaction unresolved after its last check; rolling back");
                if let Err(e) = self.resolve(half, Resolution::Rollback, "expiry").await {
                    tracing::error!(error = %e, "rolling back an expired transaction failed; will retry");
                }
            }
            for (half, attempt) in checks {
                let id = self.staged_id(half.position);
                let Ok(rec) = self.store.lookup_by_id(&id) else {
                    continue;
                };
                let message: Delivery = self.plain_delivery(rec);
                let check = TransactionCheck {
                    transaction_id: id.to_string(),
                    message,
                    attempt,
                };
                if !self.staged.send_check(&half.group, check) {
                    tracing::debug!(id = %id, group = half.group, attempt, "no checker of the producer group is online");
                }
            }
        }
    }

    /// Registers a checker of a producer group, shown the checks of the
    /// topics it `sees`; checks arrive on the receiver until
    /// [`Broker::remove_checker`].
    pub fn add_checker(
        &self,
        group: &str,
        client_id: &str,
        sees: super::staged::SeesTopic,
    ) -> Result<(u64, tokio::sync::mpsc::Receiver<TransactionCheck>)> {
        use super::limits;
        limits::check_group_name("producer_group", group)?;
        limits::check_id("client_id", client_id, limits::MAX_CLIENT_ID_LEN, true)?;
        Ok(self.staged.add_checker(group, sees))
    }

    /// Unregisters a transaction checker stream of a producer group.
    pub fn remove_checker(&self, group: &str, id: u64) {
        self.staged.remove_checker(group, id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_loop_ticks_at_a_quarter_of_the_shorter_delay_within_bounds() {
        let ms = Duration::from_millis;
        assert_eq!(check_tick(ms(400), ms(2_000)), ms(100));
        assert_eq!(check_tick(ms(2_000), ms(400)), ms(100));
        assert_eq!(check_tick(ms(40), ms(10_000)), ms(20), "at least 20 ms");
        assert_eq!(check_tick(Duration::ZERO, ms(10_000)), ms(20));
        assert_eq!(check_tick(ms(6_000), ms(10_000)), ms(1_000), "at most 1 s");
    }
}
