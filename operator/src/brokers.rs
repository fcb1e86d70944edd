//! The brokers' admin clients: the SDK's [`Admin`], one lazily connected client
//! per address, with short deadlines (a reconcile walks every broker in turn, so
//! a dead one must cost it little). Failures name the broker.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use dduomq_client::{
    Admin, AdminTimeouts, ClientError, Credentials, Reason, ResetTo, TopicSettings, proto as pb,
};
use parking_lot::Mutex;

use crate::context::{BrokerNamespaced, broker_namespace};

/// Deadlines of every admin call to a broker.
const TIMEOUTS: AdminTimeouts = AdminTimeouts {
    call: Duration::from_secs(5),
    connect: Duration::from_secs(2),
};

/// A failed admin call to the broker at `address`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("broker {address}: {error}")]
pub struct BrokerCallError {
    pub address: String,
    pub error: ClientError,
}

impl BrokerCallError {
    fn new(address: &str, error: ClientError) -> BrokerCallError {
        BrokerCallError {
            address: address.to_string(),
            error,
        }
    }

    /// Why the broker refused; `None` when it did not answer or sent a code
    /// this build does not know.
    pub fn reason(&self) -> Option<Reason> {
        self.error.reason()
    }
}

/// Admin clients by broker address, in one broker namespace.
#[derive(Debug, Clone, Default)]
pub struct BrokerPool {
    /// Connections, shared by the pools of every namespace.
    clients: Arc<Mutex<HashMap<String, Admin>>>,
    /// The namespace of the names this pool's calls use; the default one for
    /// calls that name nothing or carry qualified names (routes).
    namespace: String,
    /// What every call is signed with (brokers with authentication on).
    credentials: Option<Credentials>,
}

impl BrokerPool {
    /// An empty pool whose calls are signed with `credentials`.
    pub fn signing_with(credentials: Option<Credentials>) -> BrokerPool {
        BrokerPool {
            credentials,
            ..BrokerPool::default()
        }
    }

    /// This pool for the names of `obj`: calls use its broker namespace.
    pub fn for_resource<K: BrokerNamespaced>(&self, obj: &K) -> BrokerPool {
        BrokerPool {
            clients: self.clients.clone(),
            namespace: broker_namespace(obj),
            credentials: self.credentials.clone(),
        }
    }

    /// The client of `address` in this pool's namespace; the connection is
    /// made on first use.
    fn admin(&self, address: &str) -> dduomq_client::Result<Admin> {
        let mut clients = self.clients.lock();
        let admin = match clients.get(address) {
            Some(admin) => admin.clone(),
            None => {
                let admin = Admin::connect_with(address, TIMEOUTS)?
                    .with_credentials(self.credentials.clone())?;
                clients.insert(address.to_string(), admin.clone());
                admin
            }
        };
        admin.in_namespace(&self.namespace)
    }

    /// Runs `call` with the client of `address`; a failure names the broker.
    async fn on<T, Fut>(
        &self,
        address: &str,
        call: impl FnOnce(Admin) -> Fut,
    ) -> Result<T, BrokerCallError>
    where
        Fut: Future<Output = dduomq_client::Result<T>>,
    {
        let admin = self
            .admin(address)
            .map_err(|e| BrokerCallError::new(address, e))?;
        call(admin)
            .await
            .map_err(|e| BrokerCallError::new(address, e))
    }

    /// Creates the topic or brings it to `topic` (queues, maximum message
    /// size, retention).
    pub async fn create_topic(
        &self,
        address: &str,
        topic: &TopicSettings,
    ) -> Result<(), BrokerCallError> {
        self.on(address, |admin| async move {
            changed_or_replica(admin.create_topic_with(topic.clone()).await.map(|_| ()))
        })
        .await
    }

    /// Deletes a topic; one that is already gone counts as deleted.
    pub async fn delete_topic(&self, address: &str, name: &str) -> Result<(), BrokerCallError> {
        self.on(address, |admin| async move {
            match admin.delete_topic(name).await {
                Err(e) if e.reason() == Some(Reason::TopicNotFound) => Ok(()),
                other => changed_or_replica(other),
            }
        })
        .await
    }

    pub async fn describe_topic(
        &self,
        address: &str,
        name: &str,
    ) -> Result<pb::DescribeTopicResponse, BrokerCallError> {
        self.on(
            address,
            |admin| async move { admin.describe_topic(name).await },
        )
        .await
    }

    pub async fn create_group(
        &self,
        address: &str,
        group: pb::Group,
    ) -> Result<(), BrokerCallError> {
        self.on(address, |admin| async move {
            changed_or_replica(admin.create_group(group).await.map(|_| ()))
        })
        .await
    }

    /// Deletes a group; one that is already gone counts as deleted.
    pub async fn delete_group(&self, address: &str, name: &str) -> Result<(), BrokerCallError> {
        self.on(address, |admin| async move {
            match admin.delete_group(name).await {
                Err(e) if e.reason() == Some(Reason::GroupNotFound) => Ok(()),
                other => changed_or_replica(other),
            }
        })
        .await
    }

    pub async fn describe_group(
        &self,
        address: &str,
        name: &str,
    ) -> Result<pb::DescribeGroupResponse, BrokerCallError> {
        self.on(
            address,
            |admin| async move { admin.describe_group(name).await },
        )
        .await
    }

    pub async fn reset_offset(
        &self,
        address: &str,
        group: &str,
        topic: &str,
        to: ResetTo,
    ) -> Result<(), BrokerCallError> {
        self.on(address, |admin| async move {
            admin.reset_offset(group, topic, to).await.map(|_| ())
        })
        .await
    }

    pub async fn broker_info(
        &self,
        address: &str,
    ) -> Result<pb::BrokerInfoResponse, BrokerCallError> {
        self.on(address, |admin| async move { admin.broker_info().await })
            .await
    }

    /// Starts or stops draining the broker (it then refuses new messages).
    pub async fn set_draining(&self, address: &str, draining: bool) -> Result<(), BrokerCallError> {
        self.on(address, |admin| async move {
            admin.set_draining(draining).await
        })
        .await
    }

    /// Assigns a group member its role; `timeout` bounds the whole call (the
    /// controller's renewal round must not wait on a dead member).
    pub async fn assign_role(
        &self,
        address: &str,
        request: pb::AssignRoleRequest,
        timeout: Duration,
    ) -> Result<pb::ReplicaState, BrokerCallError> {
        self.on(address, |admin| async move {
            match tokio::time::timeout(timeout, admin.assign_role(request)).await {
                Ok(answer) => Ok(answer?.state.unwrap_or_default()),
                Err(_) => Err(ClientError::Timeout(timeout)),
            }
        })
        .await
    }

    pub async fn update_routes(
        &self,
        address: &str,
        epoch: u64,
        topics: Vec<pb::TopicRoute>,
    ) -> Result<pb::UpdateRoutesResponse, BrokerCallError> {
        self.on(address, |admin| async move {
            admin.update_routes(epoch, topics).await
        })
        .await
    }
}

/// A topic or group change a replica refused with `NOT_MASTER` counts as
/// done there: the replica takes it from its group's master through the
/// replicated log, which the same reconcile changes too.
fn changed_or_replica(result: dduomq_client::Result<()>) -> dduomq_client::Result<()> {
    match result {
        Err(e) if e.reason() == Some(Reason::NotMaster) => Ok(()),
        other => other,
    }
}
