//! The route table's epoch: a counter kept in a ConfigMap
//! (`dduomq-route-epoch` in the operator's namespace) and advanced by
//! compare-and-swap, so no wall clock decides which table is newer (brokers
//! keep a table only when its epoch is higher than the one they hold). Two
//! operators that both believe they lead can never publish two tables under
//! one epoch: only one of them wins each value.
//!
//! Compatibility: operators before this one used wall-clock milliseconds as
//! epochs. The counter never goes below the highest epoch the brokers report
//! holding (`BrokerInfo.route_epoch`), so its first value exceeds any such
//! epoch and brokers keep accepting tables.

use std::collections::BTreeMap;

use kube::Client;

use crate::cas::{CasConfigMap, Swap};

/// The counter's ConfigMap.
pub const ROUTE_EPOCH_CONFIGMAP: &str = "dduomq-route-epoch";
/// Its data key.
const KEY: &str = "epoch";
/// Compare-and-swap attempts per advance before giving up for this round.
const ATTEMPTS: usize = 5;

/// Why the epoch could not be advanced.
#[derive(Debug, thiserror::Error)]
pub enum RouteEpochError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("ConfigMap {0}: {KEY} is not a number: {1:?}")]
    Corrupt(String, String),
    #[error("ConfigMap {0}: lost {ATTEMPTS} compare-and-swaps in a row")]
    Contended(String),
}

/// The route epoch counter.
#[derive(Debug, Clone)]
pub struct RouteEpochCounter {
    cell: CasConfigMap,
}

impl RouteEpochCounter {
    pub fn new(client: Client, namespace: &str) -> RouteEpochCounter {
        RouteEpochCounter {
            cell: CasConfigMap::new(client, namespace, ROUTE_EPOCH_CONFIGMAP),
        }
    }

    /// Takes the next epoch: above the stored one and above `floor` (the
    /// highest epoch a broker or this operator already used).
    pub async fn advance(&self, floor: u64) -> Result<u64, RouteEpochError> {
        for _ in 0..ATTEMPTS {
            let read = self.cell.read().await?;
            let stored = match read.data.get(KEY) {
                None => 0,
                Some(v) => v.parse::<u64>().map_err(|_| {
                    RouteEpochError::Corrupt(self.cell.name().to_string(), v.clone())
                })?,
            };
            let next = stored.max(floor) + 1;
            let data = BTreeMap::from([(KEY.to_string(), next.to_string())]);
            match self.cell.write(&read, data).await? {
                Swap::Written(_) => return Ok(next),
                Swap::Conflict => continue,
            }
        }
        Err(RouteEpochError::Contended(self.cell.name().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::NAMESPACE;
    use crate::test_support::fake_api::FakeApi;
    use serde_json::json;

    #[tokio::test]
    async fn the_epoch_counts_up_from_above_the_brokers_epochs() {
        let api = FakeApi::new(Vec::new());
        let counter = RouteEpochCounter::new(api.client(), NAMESPACE);
        // A broker still holds a wall-clock epoch from an older operator.
        let wall_clock = 1_780_000_000_000;
        assert_eq!(counter.advance(wall_clock).await.unwrap(), wall_clock + 1);
        assert_eq!(counter.advance(0).await.unwrap(), wall_clock + 2);
        // Another operator advanced it meanwhile: this one goes above it.
        api.write(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": ROUTE_EPOCH_CONFIGMAP, "namespace": NAMESPACE},
            "data": {"epoch": (wall_clock + 10).to_string()},
        }));
        assert_eq!(
            counter.advance(wall_clock + 2).await.unwrap(),
            wall_clock + 11
        );
        let path = format!("/api/v1/namespaces/{NAMESPACE}/configmaps/{ROUTE_EPOCH_CONFIGMAP}");
        assert_eq!(
            api.object(&path).unwrap()["data"]["epoch"],
            (wall_clock + 11).to_string()
        );
    }
}
