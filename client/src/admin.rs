//! Administration: topics, groups, offsets, lookups, broker info. Results are the
//! protobuf messages of `dduomq.v1` (re-exported as `dduomq_client::proto`).

use std::time::Duration;

use dduomq_proto::signature::Credentials;
use dduomq_proto::v1 as pb;
use dduomq_proto::v1::admin_service_client::AdminServiceClient;
use tonic::transport::Channel;

use crate::connection::{
    Access, CONNECT_TIMEOUT, MAX_GRPC_MESSAGE, RequestHeaders, Transport,
    channel_with_connect_timeout, with_deadline,
};
use crate::error::Result;

/// Where to move a group's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    Earliest,
    Latest,
    /// Milliseconds since the Unix epoch: the first message stored at or after it.
    Timestamp(i64),
    /// An explicit offset on every queue.
    Offset(i64),
}

/// A topic as [`Admin::create_topic_with`] creates or updates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSettings {
    pub name: String,
    pub queues: u32,
    pub message_type: pb::MessageType,
    /// Largest message the topic takes, counted as the broker's
    /// `max_record_size_bytes` counts (the encoded record: body, properties,
    /// keys, tag, topic name and a 72-byte header); at most the broker's.
    pub max_message_bytes: Option<u32>,
    /// Messages stored longer ago than this are no longer delivered (at
    /// most ten years; zero, like `None`, means the broker's retention).
    pub retention: Option<Duration>,
    /// When a send to the topic is acknowledged in a replicated group
    /// (`BrokerDefault`: the brokers' `ack_policy`). `None` keeps an existing
    /// topic's (a new one follows the brokers'): an update that leaves it out
    /// does not weaken the topic.
    pub ack_policy: Option<pb::AckPolicy>,
}

impl TopicSettings {
    /// A topic with the broker's maximum message size and retention.
    pub fn new(name: &str, queues: u32, message_type: pb::MessageType) -> TopicSettings {
        TopicSettings {
            name: name.to_string(),
            queues,
            message_type,
            max_message_bytes: None,
            retention: None,
            ack_policy: None,
        }
    }

    pub fn max_message_bytes(mut self, max: u32) -> TopicSettings {
        self.max_message_bytes = Some(max);
        self
    }

    pub fn retention(mut self, retention: Duration) -> TopicSettings {
        self.retention = Some(retention);
        self
    }

    pub fn ack_policy(mut self, policy: pb::AckPolicy) -> TopicSettings {
        self.ack_policy = Some(policy);
        self
    }
}

/// Deadlines of an [`Admin`] client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminTimeouts {
    /// Deadline of each call, connecting included (a call past it fails with
    /// [`ClientError::Timeout`](crate::ClientError::Timeout)).
    pub call: Duration,
    /// Limit on establishing the connection to the broker.
    pub connect: Duration,
}

impl Default for AdminTimeouts {
    fn default() -> Self {
        AdminTimeouts {
            call: Duration::from_secs(10),
            connect: CONNECT_TIMEOUT,
        }
    }
}

/// The administration client.
#[derive(Debug, Clone)]
pub struct Admin {
    /// The connection, shared by the clients of every namespace.
    channel: Channel,
    headers: RequestHeaders,
    client: AdminServiceClient<Transport>,
    timeout: Duration,
}

/// An administration client on `channel` whose requests carry `namespace`.
fn admin_client(channel: Channel, headers: RequestHeaders) -> AdminServiceClient<Transport> {
    AdminServiceClient::with_interceptor(channel, headers)
        .max_decoding_message_size(MAX_GRPC_MESSAGE)
        .max_encoding_message_size(MAX_GRPC_MESSAGE)
}

impl Admin {
    /// A client of the broker at `endpoint` (lazily connected) with the default
    /// [`AdminTimeouts`].
    pub fn connect(endpoint: &str) -> Result<Admin> {
        Admin::connect_with(endpoint, AdminTimeouts::default())
    }

    /// [`Admin::connect`] with other deadlines: a controller that walks many
    /// brokers in turn wants a dead one to cost it little.
    pub fn connect_with(endpoint: &str, timeouts: AdminTimeouts) -> Result<Admin> {
        Admin::connect_as(endpoint, timeouts, &Access::default())
    }

    /// [`Admin::connect_with`] in `access`'s namespace, signed with its
    /// credentials, over TLS if it has TLS options.
    pub fn connect_as(endpoint: &str, timeouts: AdminTimeouts, access: &Access) -> Result<Admin> {
        let channel =
            channel_with_connect_timeout(endpoint, timeouts.connect, access.tls.as_ref())?;
        let headers = access.headers()?;
        Ok(Admin {
            client: admin_client(channel.clone(), headers.clone()),
            headers,
            channel,
            timeout: timeouts.call,
        })
    }

    /// This client signing every request with `credentials`, on the same
    /// connection and in the same namespace.
    pub fn with_credentials(&self, credentials: Option<Credentials>) -> Result<Admin> {
        let headers = RequestHeaders::new(self.headers.namespace(), credentials)?;
        Ok(Admin {
            client: admin_client(self.channel.clone(), headers.clone()),
            headers,
            channel: self.channel.clone(),
            timeout: self.timeout,
        })
    }

    /// This client in `namespace` (`""` or `"default"`: the default one), on
    /// the same connection: cheap, so a caller serving many namespaces makes
    /// one per call.
    pub fn in_namespace(&self, namespace: &str) -> Result<Admin> {
        let headers = self.headers.in_namespace(namespace)?;
        Ok(Admin {
            client: admin_client(self.channel.clone(), headers.clone()),
            headers,
            channel: self.channel.clone(),
            timeout: self.timeout,
        })
    }

    /// Creates a topic, or grows an existing one; the topic takes the broker's
    /// maximum message size and retention (an existing topic's own settings
    /// are cleared: see [`Admin::create_topic_with`]).
    pub async fn create_topic(
        &self,
        name: &str,
        queues: u32,
        message_type: pb::MessageType,
    ) -> Result<pb::CreateTopicResponse> {
        self.create_topic_with(TopicSettings::new(name, queues, message_type))
            .await
    }

    /// Creates a topic, or updates an existing one to `topic`: queues may grow,
    /// the maximum message size, retention and ack policy are replaced (unset:
    /// the broker's), the message type never changes.
    pub async fn create_topic_with(&self, topic: TopicSettings) -> Result<pb::CreateTopicResponse> {
        let req = pb::CreateTopicRequest {
            name: topic.name,
            queues: topic.queues,
            message_type: topic.message_type as i32,
            max_message_bytes: topic.max_message_bytes.unwrap_or(0),
            retention_ms: topic.retention.map_or(0, |d| d.as_millis() as u64),
            ack_policy: topic.ack_policy.unwrap_or(pb::AckPolicy::Unspecified) as i32,
        };
        with_deadline(self.timeout, self.client.clone().create_topic(req)).await
    }

    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let req = pb::DeleteTopicRequest { name: name.into() };
        with_deadline(self.timeout, self.client.clone().delete_topic(req))
            .await
            .map(|_| ())
    }

    pub async fn list_topics(&self) -> Result<Vec<pb::Topic>> {
        Ok(with_deadline(
            self.timeout,
            self.client.clone().list_topics(pb::ListTopicsRequest {}),
        )
        .await?
        .topics)
    }

    pub async fn describe_topic(&self, name: &str) -> Result<pb::DescribeTopicResponse> {
        let req = pb::DescribeTopicRequest { name: name.into() };
        with_deadline(self.timeout, self.client.clone().describe_topic(req)).await
    }

    /// Creates or updates a group; zero / empty settings take the broker defaults.
    pub async fn create_group(&self, group: pb::Group) -> Result<pb::CreateGroupResponse> {
        let req = pb::CreateGroupRequest { group: Some(group) };
        with_deadline(self.timeout, self.client.clone().create_group(req)).await
    }

    pub async fn delete_group(&self, name: &str) -> Result<()> {
        let req = pb::DeleteGroupRequest { name: name.into() };
        with_deadline(self.timeout, self.client.clone().delete_group(req))
            .await
            .map(|_| ())
    }

    pub async fn list_groups(&self) -> Result<Vec<pb::Group>> {
        Ok(with_deadline(
            self.timeout,
            self.client.clone().list_groups(pb::ListGroupsRequest {}),
        )
        .await?
        .groups)
    }

    pub async fn describe_group(&self, name: &str) -> Result<pb::DescribeGroupResponse> {
        let req = pb::DescribeGroupRequest { name: name.into() };
        with_deadline(self.timeout, self.client.clone().describe_group(req)).await
    }

    /// Moves the group's progress on `topic`; online consumers follow at once.
    pub async fn reset_offset(
        &self,
        group: &str,
        topic: &str,
        to: ResetTo,
    ) -> Result<Vec<pb::GroupQueueStatus>> {
        use pb::reset_offset_request::To;
        let to = match to {
            ResetTo::Earliest => To::Earliest(true),
            ResetTo::Latest => To::Latest(true),
            ResetTo::Timestamp(ms) => To::TimestampMs(ms),
            ResetTo::Offset(o) => To::Offset(o),
        };
        let req = pb::ResetOffsetRequest {
            group: group.into(),
            topic: topic.into(),
            to: Some(to),
        };
        Ok(
            with_deadline(self.timeout, self.client.clone().reset_offset(req))
                .await?
                .queues,
        )
    }

    pub async fn lookup_by_id(&self, id: &str) -> Result<Vec<pb::Message>> {
        let req = pb::LookupMessageRequest {
            by: Some(pb::lookup_message_request::By::MessageId(id.into())),
            ..Default::default()
        };
        Ok(
            with_deadline(self.timeout, self.client.clone().lookup_message(req))
                .await?
                .messages,
        )
    }

    pub async fn lookup_by_key(&self, topic: &str, key: &str) -> Result<Vec<pb::Message>> {
        let req = pb::LookupMessageRequest {
            by: Some(pb::lookup_message_request::By::Key(key.into())),
            topic: topic.into(),
            ..Default::default()
        };
        Ok(
            with_deadline(self.timeout, self.client.clone().lookup_message(req))
                .await?
                .messages,
        )
    }

    /// Starts (true) or stops draining the broker.
    pub async fn set_draining(&self, draining: bool) -> Result<()> {
        let req = pb::SetDrainingRequest { draining };
        with_deadline(self.timeout, self.client.clone().set_draining(req))
            .await
            .map(|_| ())
    }

    pub async fn broker_info(&self) -> Result<pb::BrokerInfoResponse> {
        with_deadline(
            self.timeout,
            self.client.clone().broker_info(pb::BrokerInfoRequest {}),
        )
        .await
    }

    /// Pushes the cluster route table (the operator's job). The broker keeps it
    /// only if `epoch` is newer than the one it holds; the answer says which
    /// epoch it holds now and whether this table was applied.
    pub async fn update_routes(
        &self,
        epoch: u64,
        topics: Vec<pb::TopicRoute>,
    ) -> Result<pb::UpdateRoutesResponse> {
        let req = pb::UpdateRoutesRequest { epoch, topics };
        with_deadline(self.timeout, self.client.clone().update_routes(req)).await
    }

    /// Assigns the broker its role in its replication group (the operator's
    /// job, as the groups' controller); the answer is what the broker knows of
    /// its group.
    pub async fn assign_role(
        &self,
        request: pb::AssignRoleRequest,
    ) -> Result<pb::AssignRoleResponse> {
        with_deadline(self.timeout, self.client.clone().assign_role(request)).await
    }
}
