//! Admin gRPC clients to the brokers, one lazily connected channel per address,
//! every call with a deadline.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dduomq_proto::Reason;
use dduomq_proto::v1 as pb;
use dduomq_proto::v1::admin_service_client::AdminServiceClient;
use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};
use tonic_types::StatusExt;

/// Deadline of one admin call.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A failed admin call: the broker's reason code (empty when unreachable).
#[derive(Debug, Clone, thiserror::Error)]
#[error("broker {address}: {message} [{reason}]")]
pub struct BrokerCallError {
    pub address: String,
    /// The raw reason code as the broker sent it; see [`BrokerCallError::reason`].
    pub reason: String,
    pub message: String,
}

impl BrokerCallError {
    /// Why the broker refused; `None` when it was unreachable or sent a code
    /// this build does not know.
    pub fn reason(&self) -> Option<Reason> {
        Reason::from_code(&self.reason)
    }
}

/// Admin clients by broker address.
#[derive(Debug, Clone, Default)]
pub struct BrokerPool {
    clients: Arc<Mutex<HashMap<String, AdminServiceClient<Channel>>>>,
}

impl BrokerPool {
    fn client(&self, address: &str) -> Result<AdminServiceClient<Channel>, BrokerCallError> {
        let mut clients = self.clients.lock();
        if let Some(c) = clients.get(address) {
            return Ok(c.clone());
        }
        let endpoint =
            Endpoint::from_shared(format!("http://{address}")).map_err(|e| BrokerCallError {
                address: address.to_string(),
                reason: String::new(),
                message: e.to_string(),
            })?;
        let c = AdminServiceClient::new(
            endpoint
                .connect_timeout(Duration::from_secs(2))
                .connect_lazy(),
        );
        clients.insert(address.to_string(), c.clone());
        Ok(c)
    }

    /// Runs one admin call against `address`.
    pub async fn call<T, F, Fut>(&self, address: &str, f: F) -> Result<T, BrokerCallError>
    where
        F: FnOnce(AdminServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.client(address)?;
        match tokio::time::timeout(CALL_TIMEOUT, f(client)).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => Err(BrokerCallError {
                address: address.to_string(),
                reason: status
                    .get_error_details()
                    .error_info()
                    .map(|i| i.reason.clone())
                    .unwrap_or_default(),
                message: status.message().to_string(),
            }),
            Err(_) => Err(BrokerCallError {
                address: address.to_string(),
                reason: String::new(),
                message: format!("no answer within {CALL_TIMEOUT:?}"),
            }),
        }
    }

    pub async fn create_topic(
        &self,
        address: &str,
        name: &str,
        queues: u32,
        message_type: pb::MessageType,
    ) -> Result<(), BrokerCallError> {
        let req = pb::CreateTopicRequest {
            name: name.to_string(),
            queues,
            message_type: message_type as i32,
        };
        self.call(address, |mut c| async move { c.create_topic(req).await })
            .await
            .map(|_| ())
    }

    /// Deletes a topic; one that is already gone counts as deleted.
    pub async fn delete_topic(&self, address: &str, name: &str) -> Result<(), BrokerCallError> {
        let req = pb::DeleteTopicRequest {
            name: name.to_string(),
        };
        match self
            .call(address, |mut c| async move { c.delete_topic(req).await })
            .await
        {
            Err(e) if e.reason() == Some(Reason::TopicNotFound) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    pub async fn describe_topic(
        &self,
        address: &str,
        name: &str,
    ) -> Result<pb::DescribeTopicResponse, BrokerCallError> {
        let req = pb::DescribeTopicRequest {
            name: name.to_string(),
        };
        self.call(address, |mut c| async move { c.describe_topic(req).await })
            .await
    }

    pub async fn create_group(
        &self,
        address: &str,
        group: pb::Group,
    ) -> Result<(), BrokerCallError> {
        let req = pb::CreateGroupRequest { group: Some(group) };
        self.call(address, |mut c| async move { c.create_group(req).await })
            .await
            .map(|_| ())
    }

    /// Deletes a group; one that is already gone counts as deleted.
    pub async fn delete_group(&self, address: &str, name: &str) -> Result<(), BrokerCallError> {
        let req = pb::DeleteGroupRequest {
            name: name.to_string(),
        };
        match self
            .call(address, |mut c| async move { c.delete_group(req).await })
            .await
        {
            Err(e) if e.reason() == Some(Reason::GroupNotFound) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    pub async fn describe_group(
        &self,
        address: &str,
        name: &str,
    ) -> Result<pb::DescribeGroupResponse, BrokerCallError> {
        let req = pb::DescribeGroupRequest {
            name: name.to_string(),
        };
        self.call(address, |mut c| async move { c.describe_group(req).await })
            .await
    }

    pub async fn reset_offset(
        &self,
        address: &str,
        req: pb::ResetOffsetRequest,
    ) -> Result<(), BrokerCallError> {
        self.call(address, |mut c| async move { c.reset_offset(req).await })
            .await
            .map(|_| ())
    }

    pub async fn broker_info(
        &self,
        address: &str,
    ) -> Result<pb::BrokerInfoResponse, BrokerCallError> {
        self.call(address, |mut c| async move {
            c.broker_info(pb::BrokerInfoRequest {}).await
        })
        .await
    }

    pub async fn update_routes(
        &self,
        address: &str,
        req: pb::UpdateRoutesRequest,
    ) -> Result<pb::UpdateRoutesResponse, BrokerCallError> {
        self.call(address, |mut c| async move { c.update_routes(req).await })
            .await
    }
}
