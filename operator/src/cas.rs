//! A ConfigMap written only by compare-and-swap on its `resourceVersion`: the
//! store of the operator's decisions that must never be lost to a concurrent
//! writer (a second operator that believes it leads, an older one still
//! running): the route table's epoch and the replication groups' records. A
//! write carries the version it read; the API server refuses it (409) when
//! anyone wrote in between, and the caller re-reads and decides again. Never
//! force-applied.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

/// One ConfigMap, by name, in one namespace.
#[derive(Debug, Clone)]
pub struct CasConfigMap {
    api: Api<ConfigMap>,
    namespace: String,
    name: String,
}

/// The data of the ConfigMap as read, and the version a write must match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Versioned {
    pub data: BTreeMap<String, String>,
    /// `None`: the ConfigMap does not exist (a write creates it).
    pub resource_version: Option<String>,
}

/// The outcome of a compare-and-swap write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Swap {
    /// Written; the new state.
    Written(Versioned),
    /// Someone else wrote since the read: read again and decide again.
    Conflict,
}

impl CasConfigMap {
    pub fn new(client: Client, namespace: &str, name: &str) -> CasConfigMap {
        CasConfigMap {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current data and version (empty and unversioned when absent).
    pub async fn read(&self) -> kube::Result<Versioned> {
        Ok(self
            .api
            .get_opt(&self.name)
            .await?
            .map(|cm| Versioned {
                data: cm.data.unwrap_or_default(),
                resource_version: cm.metadata.resource_version,
            })
            .unwrap_or_default())
    }

    /// Writes `data` if the ConfigMap is still as `read` saw it.
    pub async fn write(
        &self,
        read: &Versioned,
        data: BTreeMap<String, String>,
    ) -> kube::Result<Swap> {
        let object = ConfigMap {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                resource_version: read.resource_version.clone(),
                ..Default::default()
            },
            data: Some(data),
            ..Default::default()
        };
        let params = PostParams::default();
        let written = match &read.resource_version {
            None => self.api.create(&params, &object).await,
            Some(_) => self.api.replace(&self.name, &params, &object).await,
        };
        match written {
            Ok(cm) => Ok(Swap::Written(Versioned {
                data: cm.data.unwrap_or_default(),
                resource_version: cm.metadata.resource_version,
            })),
            // A stale version, or a create that lost to another one.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Swap::Conflict),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::NAMESPACE;
    use crate::test_support::fake_api::FakeApi;
    use serde_json::json;

    fn data(value: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("value".to_string(), value.to_string())])
    }

    #[tokio::test]
    async fn a_write_from_a_stale_read_conflicts_and_changes_nothing() {
        let api = FakeApi::new(Vec::new());
        let cell = CasConfigMap::new(api.client(), NAMESPACE, "cell");
        let absent = cell.read().await.unwrap();
        assert_eq!(absent, Versioned::default());
        let Swap::Written(first) = cell.write(&absent, data("1")).await.unwrap() else {
            panic!("the create conflicted");
        };
        assert_eq!(first.data, data("1"));
        // A second create from the same (absent) read loses.
        assert_eq!(
            cell.write(&absent, data("x")).await.unwrap(),
            Swap::Conflict
        );
        // Another writer replaces it: the first read is stale now.
        api.write(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "cell", "namespace": NAMESPACE},
            "data": {"value": "2"},
        }));
        assert_eq!(cell.write(&first, data("3")).await.unwrap(), Swap::Conflict);
        let now = cell.read().await.unwrap();
        assert_eq!(now.data, data("2"), "the conflicting write changed nothing");
        let Swap::Written(after) = cell.write(&now, data("3")).await.unwrap() else {
            panic!("a write from a fresh read conflicted");
        };
        assert_eq!(cell.read().await.unwrap(), after);
        assert_eq!(after.data, data("3"));
    }
}
