//! Leader election on a `coordination.k8s.io` Lease, so that two operator
//! replicas never reconcile at once. The leader renews every third of the lease
//! duration; a replica that fails to renew exits (its Deployment restarts it as a
//! follower) rather than risk two leaders. A leader that stops gracefully
//! releases the lease, so a follower (or the new pod of a rolling update) takes
//! over at once instead of after the lease duration.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

/// How long a lease is valid without renewal.
const LEASE_SECONDS: i32 = 15;

fn expired(spec: &LeaseSpec) -> bool {
    let (Some(renewed), Some(secs)) = (&spec.renew_time, spec.lease_duration_seconds) else {
        return true;
    };
    renewed.0.as_second() + secs as i64 <= Timestamp::now().as_second()
}

/// Tries once to take or renew the lease; true when `identity` holds it.
async fn try_hold(api: &Api<Lease>, name: &str, identity: &str) -> kube::Result<bool> {
    let now = MicroTime(Timestamp::now());
    match api.get_opt(name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(identity.into()),
                    lease_duration_seconds: Some(LEASE_SECONDS),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(Default::default);
            let mine = spec.holder_identity.as_deref() == Some(identity);
            if !mine && !expired(spec) {
                return Ok(false);
            }
            if !mine {
                spec.holder_identity = Some(identity.into());
                spec.acquire_time = Some(now.clone());
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            spec.lease_duration_seconds = Some(LEASE_SECONDS);
            spec.renew_time = Some(now);
            // The resourceVersion in `lease` makes this a compare-and-swap.
            match api.replace(name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Held leadership: renewed in the background until `release`.
#[derive(Debug)]
pub struct Leadership {
    renewal: tokio::task::JoinHandle<()>,
    api: Api<Lease>,
    name: String,
    identity: String,
}

impl Leadership {
    /// Stops renewing and empties the lease if this replica still holds it.
    pub async fn release(self) {
        self.renewal.abort();
        let _ = self.renewal.await;
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(&self.identity) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(lease = %self.name, "leader lease released"),
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
    let api: Api<Lease> = Api::namespaced(client, namespace);
    let period = Duration::from_secs(LEASE_SECONDS as u64 / 3);
    let acquired = async {
        loop {
            match try_hold(&api, name, identity).await {
                Ok(true) => break,
                Ok(false) => tracing::info!(lease = name, "another replica leads; waiting"),
                Err(e) => tracing::warn!(error = %e, "leader election failed; retrying"),
            }
            tokio::time::sleep(period).await;
        }
    };
    shutdown.run_until_cancelled(acquired).await?;
    tracing::info!(lease = name, identity, "leading");
    let (name, identity) = (name.to_string(), identity.to_string());
    let renewal = tokio::spawn({
        let (api, name, identity) = (api.clone(), name.clone(), identity.clone());
        async move {
            let mut failures = 0;
            loop {
                tokio::time::sleep(period).await;
                match try_hold(&api, &name, &identity).await {
                    Ok(true) => failures = 0,
                    Ok(false) => {
                        tracing::error!("lost the leader lease; exiting");
                        std::process::exit(1);
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(error = %e, failures, "renewing the leader lease failed");
                        if failures * period.as_secs() as i32 >= LEASE_SECONDS - 2 {
                            tracing::error!("could not renew the leader lease in time; exiting");
                            std::process::exit(1);
                        }
                    }
                }
            }
        }
    });
    Some(Leadership {
        renewal,
        api,
        name,
        identity,
    })
}
