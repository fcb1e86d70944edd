//! Leader election on a `coordination.k8s.io` Lease, so that two operator
//! replicas never reconcile at once. The leader renews every 2 s (15 s lease,
//! 10 s renew deadline: client-go's defaults); a leader that has not renewed within its renew deadline (on its
//! own clock) exits (its Deployment restarts it as a follower) rather than risk
//! two leaders. A leader that stops gracefully releases the lease, so a
//! follower (or the new pod of a rolling update) takes over at once instead of
//! after the lease duration.
//!
//! No decision compares two machines' wall clocks (their skew is unbounded): a
//! candidate takes over only after it has seen the lease's holder, renew time
//! and resourceVersion stay unchanged for the lease duration measured on its
//! own monotonic clock, as client-go does; the leader gives up after its renew
//! deadline, shorter than the lease duration, counted from before its last
//! successful renewal. Every write is a compare-and-swap on the
//! resourceVersion. Hand-written because the maintained crates that fit kube 5
//! decide expiry from the holder's `renewTime` against the local wall clock
//! (`kube-lease-manager` 0.13 tolerates a configured skew; `kube-leader-election`
//! documents itself as skew-sensitive).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a lease is valid without renewal.
const LEASE_DURATION: Duration = Duration::from_secs(15);
/// A leader that has not renewed for this long (from sending its last
/// successful renewal) stops: well before a candidate can take over.
const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often the leader renews and a candidate looks at the lease: a few
/// tries fit in the renew deadline.
const RETRY_PERIOD: Duration = Duration::from_secs(2);

/// What a candidate last saw of someone else's lease, and when (on its own
/// clock). Any change restarts the wait.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<Timestamp>,
    resource_version: Option<String>,
}

#[derive(Debug)]
struct Observed {
    record: Record,
    since: Instant,
}

/// Whether someone else's lease `record` has expired: true only once this
/// replica has seen it unchanged for `duration` on its own clock (`now`); a new
/// or changed record restarts the wait. The record's `renewTime`, written by
/// another machine's clock, only tells a change.
fn expired(
    observed: &mut Option<Observed>,
    record: Record,
    duration: Duration,
    now: Instant,
) -> bool {
    match observed {
        Some(o) if o.record == record => now.duration_since(o.since) >= duration,
        _ => {
            *observed = Some(Observed { record, since: now });
            false
        }
    }
}

/// One replica's view of the lease: tries to take or renew it.
#[derive(Debug, Clone)]
struct Candidate {
    api: Api<Lease>,
    name: String,
    identity: String,
}

impl Candidate {
    /// Tries once to take or renew the lease; true when this replica holds it.
    async fn try_hold(&self, observed: &mut Option<Observed>) -> kube::Result<bool> {
        let now = MicroTime(Timestamp::now());
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return conflict_is_false(self.api.create(&PostParams::default(), &lease).await);
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let mine = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        if !mine && spec.holder_identity.is_some() {
            let record = Record {
                holder: spec.holder_identity.clone(),
                renew_time: spec.renew_time.as_ref().map(|t| t.0),
                resource_version: lease.metadata.resource_version.clone(),
            };
            let duration = spec
                .lease_duration_seconds
                .map_or(LEASE_DURATION, |s| Duration::from_secs(s.max(0) as u64));
            if !expired(observed, record, duration, Instant::now()) {
                return Ok(false);
            }
        }
        if !mine {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.lease_duration_seconds = Some(LEASE_DURATION.as_secs() as i32);
        // Informational only: no replica decides anything from it.
        spec.renew_time = Some(now);
        // The resourceVersion in `lease` makes this a compare-and-swap.
        conflict_is_false(
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await,
        )
    }
}

/// A write that lost a compare-and-swap means another replica wrote first.
fn conflict_is_false(result: kube::Result<Lease>) -> kube::Result<bool> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Held leadership: renewed in the background until `release`.
#[derive(Debug)]
pub struct Leadership {
    renewal: tokio::task::JoinHandle<()>,
    candidate: Candidate,
}

impl Leadership {
    /// Stops renewing and empties the lease if this replica still holds it.
    pub async fn release(self) {
        self.renewal.abort();
        let _ = self.renewal.await;
        let Candidate {
            api,
            name,
            identity,
        } = &self.candidate;
        let Ok(Some(mut lease)) = api.get_opt(name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        match api.replace(name, &PostParams::default(), &lease).await {
            Ok(_) => tracing::info!(lease = %name, "leader lease released"),
            Err(e) => tracing::warn!(error = %e, "releasing the leader lease failed"),
        }
    }
}

/// Waits until this replica leads, then keeps renewing in the background;
/// `None` when `shutdown` comes first.
pub async fn lead(
    client: Client,
    namespace: &str,
    name: &str,
    identity: &str,
    shutdown: &CancellationToken,
) -> Option<Leadership> {
    let candidate = Candidate {
        api: Api::namespaced(client, namespace),
        name: name.to_string(),
        identity: identity.to_string(),
    };
    let acquired = async {
        let mut observed = None;
        loop {
            let attempt = Instant::now();
            match candidate.try_hold(&mut observed).await {
                Ok(true) => break attempt,
                Ok(false) => tracing::info!(lease = name, "another replica leads; waiting"),
                Err(e) => tracing::warn!(error = %e, "leader election failed; retrying"),
            }
            tokio::time::sleep(RETRY_PERIOD).await;
        }
    };
    let acquired_at = shutdown.run_until_cancelled(acquired).await?;
    tracing::info!(lease = name, identity, "leading");
    let renewal = tokio::spawn(renew(candidate.clone(), acquired_at));
    Some(Leadership { renewal, candidate })
}

/// Renews every retry period; exits the process when the lease is lost or
/// could not be renewed within the renew deadline (a renewal still under way
/// then is abandoned).
async fn renew(candidate: Candidate, mut renewed_at: Instant) {
    loop {
        tokio::time::sleep(RETRY_PERIOD).await;
        let attempt = Instant::now();
        let deadline = renewed_at + RENEW_DEADLINE;
        match tokio::time::timeout_at(deadline, candidate.try_hold(&mut None)).await {
            Ok(Ok(true)) => renewed_at = attempt,
            Ok(Ok(false)) => {
                tracing::error!("lost the leader lease; exiting");
                std::process::exit(1);
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "renewing the leader lease failed"),
            Err(_) => {
                tracing::error!("could not renew the leader lease in time; exiting");
                std::process::exit(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(holder: &str, renewed: &str, version: &str) -> Record {
        Record {
            holder: Some(holder.into()),
            renew_time: Some(renewed.parse().expect("a timestamp")),
            resource_version: Some(version.into()),
        }
    }

    #[test]
    fn a_lease_expires_after_its_duration_unchanged_on_the_candidates_clock() {
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        let mut observed = None;
        // The holder's clock is an hour behind: its renewTime looks long
        // expired, yet the candidate waits the full duration.
        let stale = record("a", "2026-01-01T08:00:00Z", "7");
        assert!(!expired(
            &mut observed,
            stale.clone(),
            LEASE_DURATION,
            at(0)
        ));
        assert!(!expired(
            &mut observed,
            stale.clone(),
            LEASE_DURATION,
            at(14)
        ));
        // A renewal (new resourceVersion) restarts the wait.
        let renewed = record("a", "2026-01-01T08:00:02Z", "8");
        assert!(!expired(
            &mut observed,
            renewed.clone(),
            LEASE_DURATION,
            at(15)
        ));
        assert!(!expired(
            &mut observed,
            renewed.clone(),
            LEASE_DURATION,
            at(29)
        ));
        assert!(expired(&mut observed, renewed, LEASE_DURATION, at(30)));
        // A holder whose clock is a day ahead does not hold the lease longer.
        let mut observed = None;
        let ahead = record("b", "2099-01-01T00:00:00Z", "9");
        assert!(!expired(
            &mut observed,
            ahead.clone(),
            LEASE_DURATION,
            at(0)
        ));
        assert!(expired(&mut observed, ahead, LEASE_DURATION, at(15)));
    }
}
