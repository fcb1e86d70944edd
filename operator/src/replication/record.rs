//! Where a group's record lives: ConfigMap `<broker statefulset>-group-<g>` in
//! the brokers' namespace, keys `master` (absent before the first election),
//! `epoch`, `inSync` (comma-separated members), `inSyncVersion` and
//! `masterStore` (the master's store identity, 16 hex digits; absent in
//! records written before identities, or while the master's release reports
//! none) and `inSyncStores` (`member:identity,...`, the store each in-sync
//! member was recorded in sync on; members without one, or the whole key in
//! older records, are unchecked). Read and written only through [`CasConfigMap`], so two controllers can never both
//! win a decision taken from the same record.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use dduomq_replication::{GroupRecord, MemberId};
use kube::Client;

use crate::cas::{CasConfigMap, Swap, Versioned};
use crate::replication::timing::RECORD_CALL_TIMEOUT;

const MASTER: &str = "master";
const EPOCH: &str = "epoch";
const IN_SYNC: &str = "inSync";
const IN_SYNC_VERSION: &str = "inSyncVersion";
const MASTER_STORE: &str = "masterStore";
const IN_SYNC_STORES: &str = "inSyncStores";

/// A group's record as read, with the version its next write must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRecord {
    pub record: GroupRecord,
    pub stored: Versioned,
}

/// A record that cannot be decoded (edited by hand, or by a newer operator).
#[derive(Debug, thiserror::Error)]
#[error("ConfigMap {configmap}: {key} {value:?} is not valid")]
pub struct CorruptRecord {
    pub configmap: String,
    pub key: &'static str,
    pub value: String,
}

/// Why a record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Corrupt(#[from] CorruptRecord),
    /// The API server did not answer in time; a write may still land.
    #[error("the API server did not answer within {0:?}")]
    TimedOut(Duration),
}

/// Bounds one API call, so a stalled API server costs a round a known time
/// (the kube client itself waits for an answer without limit).
async fn bounded<T>(call: impl Future<Output = kube::Result<T>>) -> Result<T, RecordError> {
    match tokio::time::timeout(RECORD_CALL_TIMEOUT, call).await {
        Ok(answer) => Ok(answer?),
        Err(_) => Err(RecordError::TimedOut(RECORD_CALL_TIMEOUT)),
    }
}

/// The name of group `group`'s ConfigMap.
pub fn configmap_name(statefulset: &str, group: u32) -> String {
    format!("{statefulset}-group-{group}")
}

/// The record store of one group.
#[derive(Debug, Clone)]
pub struct RecordStore {
    cell: CasConfigMap,
    group_size: u32,
}

impl RecordStore {
    pub fn new(
        client: Client,
        namespace: &str,
        statefulset: &str,
        group: u32,
        group_size: u32,
    ) -> RecordStore {
        RecordStore {
            cell: CasConfigMap::new(client, namespace, &configmap_name(statefulset, group)),
            group_size,
        }
    }

    /// The record (a new group's initial one when the ConfigMap is absent);
    /// bounded by [`RECORD_CALL_TIMEOUT`].
    pub async fn read(&self) -> Result<ReadRecord, RecordError> {
        let stored = bounded(self.cell.read()).await?;
        let record = if stored.resource_version.is_none() {
            GroupRecord::initial(self.group_size)
        } else {
            decode(self.cell.name(), &stored.data)?
        };
        Ok(ReadRecord { record, stored })
    }

    /// Writes `record` if the ConfigMap is still as `read` saw it; bounded by
    /// [`RECORD_CALL_TIMEOUT`] (a timed-out write may still land).
    pub async fn write(
        &self,
        read: &ReadRecord,
        record: &GroupRecord,
    ) -> Result<Option<ReadRecord>, RecordError> {
        Ok(
            match bounded(self.cell.write(&read.stored, encode(record))).await? {
                Swap::Written(stored) => Some(ReadRecord {
                    record: record.clone(),
                    stored,
                }),
                Swap::Conflict => None,
            },
        )
    }
}

fn encode(record: &GroupRecord) -> BTreeMap<String, String> {
    let in_sync: Vec<String> = record.in_sync.iter().map(u32::to_string).collect();
    let mut data = BTreeMap::from([
        (EPOCH.to_string(), record.epoch.to_string()),
        (IN_SYNC.to_string(), in_sync.join(",")),
        (
            IN_SYNC_VERSION.to_string(),
            record.in_sync_version.to_string(),
        ),
    ]);
    if let Some(master) = record.master {
        data.insert(MASTER.to_string(), master.to_string());
    }
    if let Some(store) = record.master_store {
        data.insert(MASTER_STORE.to_string(), format!("{store:016x}"));
    }
    if !record.in_sync_stores.is_empty() {
        let stores: Vec<String> = record
            .in_sync_stores
            .iter()
            .map(|(member, store)| format!("{member}:{store:016x}"))
            .collect();
        data.insert(IN_SYNC_STORES.to_string(), stores.join(","));
    }
    data
}

fn decode(configmap: &str, data: &BTreeMap<String, String>) -> Result<GroupRecord, CorruptRecord> {
    let corrupt = |key: &'static str, value: &str| CorruptRecord {
        configmap: configmap.to_string(),
        key,
        value: value.to_string(),
    };
    let number = |key: &'static str| -> Result<u64, CorruptRecord> {
        let value = data.get(key).map(String::as_str).unwrap_or_default();
        value.parse().map_err(|_| corrupt(key, value))
    };
    let master = match data.get(MASTER) {
        None => None,
        Some(m) => Some(m.parse::<MemberId>().map_err(|_| corrupt(MASTER, m))?),
    };
    let in_sync_text = data.get(IN_SYNC).map(String::as_str).unwrap_or_default();
    let in_sync = in_sync_text
        .split(',')
        .filter(|m| !m.is_empty())
        .map(|m| {
            m.parse::<MemberId>()
                .map_err(|_| corrupt(IN_SYNC, in_sync_text))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let master_store = match data.get(MASTER_STORE) {
        None => None,
        Some(s) => Some(store_id(s).ok_or_else(|| corrupt(MASTER_STORE, s))?),
    };
    let stores_text = data
        .get(IN_SYNC_STORES)
        .map(String::as_str)
        .unwrap_or_default();
    let entries: Vec<&str> = stores_text.split(',').filter(|e| !e.is_empty()).collect();
    let in_sync_stores = entries
        .iter()
        .map(|entry| {
            let (member, store) = entry.split_once(':')?;
            Some((member.parse::<MemberId>().ok()?, store_id(store)?))
        })
        .collect::<Option<BTreeMap<_, _>>>()
        .filter(|stores| stores.len() == entries.len())
        .ok_or_else(|| corrupt(IN_SYNC_STORES, stores_text))?;
    Ok(GroupRecord {
        master,
        epoch: number(EPOCH)?,
        in_sync,
        in_sync_version: number(IN_SYNC_VERSION)?,
        master_store,
        in_sync_stores,
    })
}

/// A store identity as written: exactly 16 hex digits, never 0 (the
/// brokers' "none").
fn store_id(text: &str) -> Option<u64> {
    u64::from_str_radix(text, 16)
        .ok()
        .filter(|&store| store != 0 && text.len() == 16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::NAMESPACE;
    use crate::test_support::fake_api::FakeApi;
    use serde_json::json;

    #[tokio::test]
    async fn records_round_trip_and_a_stale_write_is_refused() {
        let api = FakeApi::new(Vec::new());
        let store = RecordStore::new(api.client(), NAMESPACE, "dduomq-broker", 1, 3);
        let first = store.read().await.unwrap();
        assert_eq!(first.record, GroupRecord::initial(3));
        let elected = GroupRecord {
            master: Some(2),
            epoch: 1,
            in_sync: vec![0, 1, 2],
            in_sync_version: 1,
            master_store: Some(0x00c0_ffee_0000_0001),
            in_sync_stores: BTreeMap::from([(0, 0xa), (2, 0x00c0_ffee_0000_0001)]),
        };
        let written = store.write(&first, &elected).await.unwrap().unwrap();
        assert_eq!(written.record, elected);
        let path = format!("/api/v1/namespaces/{NAMESPACE}/configmaps/dduomq-broker-group-1");
        assert_eq!(
            api.object(&path).unwrap()["data"],
            json!({
                "master": "2",
                "epoch": "1",
                "inSync": "0,1,2",
                "inSyncVersion": "1",
                "masterStore": "00c0ffee00000001",
                "inSyncStores": "0:000000000000000a,2:00c0ffee00000001"
            })
        );
        assert_eq!(store.read().await.unwrap(), written);
        // A decision taken from the first read loses: nothing changes.
        let other = GroupRecord {
            master: Some(0),
            ..elected.clone()
        };
        assert!(store.write(&first, &other).await.unwrap().is_none());
        assert_eq!(store.read().await.unwrap().record, elected);
    }

    #[test]
    fn a_record_edited_into_nonsense_is_reported_not_guessed() {
        let data = BTreeMap::from([
            (EPOCH.to_string(), "3".to_string()),
            (IN_SYNC.to_string(), "0,x".to_string()),
            (IN_SYNC_VERSION.to_string(), "4".to_string()),
        ]);
        let err = decode("g", &data).unwrap_err();
        assert_eq!(err.to_string(), "ConfigMap g: inSync \"0,x\" is not valid");
        let data = BTreeMap::from([(IN_SYNC.to_string(), String::new())]);
        assert_eq!(decode("g", &data).unwrap_err().key, EPOCH);
        let with_store = |store: &str| {
            BTreeMap::from([
                (MASTER.to_string(), "1".to_string()),
                (EPOCH.to_string(), "3".to_string()),
                (IN_SYNC.to_string(), "0,1".to_string()),
                (IN_SYNC_VERSION.to_string(), "4".to_string()),
                (MASTER_STORE.to_string(), store.to_string()),
            ])
        };
        for bad in ["xyz", "", "0000000000000000", "1", "00000000000000001"] {
            let err = decode("g", &with_store(bad)).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("ConfigMap g: masterStore {bad:?} is not valid")
            );
        }
        assert_eq!(
            decode("g", &with_store("ffffffffffffffff"))
                .unwrap()
                .master_store,
            Some(u64::MAX)
        );
    }

    #[test]
    fn in_sync_stores_are_read_back_and_nonsense_is_reported() {
        let with_stores = |stores: &str| {
            BTreeMap::from([
                (MASTER.to_string(), "1".to_string()),
                (EPOCH.to_string(), "3".to_string()),
                (IN_SYNC.to_string(), "0,1".to_string()),
                (IN_SYNC_VERSION.to_string(), "4".to_string()),
                (IN_SYNC_STORES.to_string(), stores.to_string()),
            ])
        };
        let data = with_stores("0:00000000000000ff,1:ffffffffffffffff");
        let record = decode("g", &data).unwrap();
        assert_eq!(
            record.in_sync_stores,
            BTreeMap::from([(0, 0xff), (1, u64::MAX)])
        );
        assert_eq!(encode(&record), data);
        let partial = decode("g", &with_stores("1:00000000000000ff")).unwrap();
        assert_eq!(
            partial.in_sync_stores,
            BTreeMap::from([(1, 0xff)]),
            "member 0 is unchecked"
        );
        for bad in [
            "0",
            "0:ff",
            "x:00000000000000ff",
            "0:0000000000000000",
            "0:00000000000000ff,0:00000000000000fe",
            "0:00000000000000ff;1:00000000000000fe",
        ] {
            let err = decode("g", &with_stores(bad)).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("ConfigMap g: inSyncStores {bad:?} is not valid")
            );
        }
    }

    #[test]
    fn a_record_from_before_store_identities_names_none() {
        let data = BTreeMap::from([
            (MASTER.to_string(), "1".to_string()),
            (EPOCH.to_string(), "3".to_string()),
            (IN_SYNC.to_string(), "0,1".to_string()),
            (IN_SYNC_VERSION.to_string(), "4".to_string()),
        ]);
        let record = decode("g", &data).unwrap();
        assert_eq!(
            record,
            GroupRecord {
                master: Some(1),
                epoch: 3,
                in_sync: vec![0, 1],
                in_sync_version: 4,
                master_store: None,
                in_sync_stores: BTreeMap::new(),
            }
        );
        assert_eq!(encode(&record), data, "and writes none back");
    }
}
