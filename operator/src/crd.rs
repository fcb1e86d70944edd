//! The custom resources: `Topic` and `ConsumerGroup` (group `dduomq.io`, version
//! `v1alpha1`). The CRD YAML in `crds/` is generated from these types by the
//! `crdgen` binary; every field's doc comment becomes its `kubectl explain` text,
//! and CEL rules (`x-kubernetes-validations`) refuse invalid specs in the API
//! server with a readable message.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// What a topic carries.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, Default,
)]
pub enum MessageType {
    /// Plain messages, spread over queues.
    #[default]
    Normal,
    /// Ordered per sharding key.
    #[serde(rename = "FIFO")]
    Fifo,
    /// Delivered at a chosen time.
    Delay,
    /// Visible only once their transaction commits.
    Transaction,
}

/// What happens to the broker-side topic when the resource is deleted.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, Default,
)]
pub enum DeletionPolicy {
    /// Delete the topic and its queues on every broker.
    #[default]
    Delete,
    /// Keep the topic and its messages on the brokers.
    Retain,
}

// `kubectl explain` shows this doc for `spec.ackPolicy` (an optional enum field
// takes its type's description).
/// When a send to the topic is acknowledged in a replicated broker group:
/// `Master` once the group's master stored it (a failover can lose what the
/// replicas had not received yet), `Quorum` once a quorum of the group did.
/// Empty means the brokers' configured `[replication] ack_policy` (default
/// `quorum`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum AckPolicy {
    /// Once the group's master stored it: sends go on while the replicas are
    /// away, and a failover can lose what they had not received yet.
    Master,
    /// Once a quorum of the group stored it: no acknowledged send is lost on
    /// failover; sends fail with QUORUM_TIMEOUT while no quorum is reachable.
    Quorum,
}

/// A DduoMQ topic: a named stream of messages split over queues, placed on the
/// brokers by the operator.
#[derive(CustomResource, KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "dduomq.io",
    version = "v1alpha1",
    kind = "Topic",
    namespaced,
    status = "TopicStatus",
    shortname = "dtopic",
    category = "dduomq",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","priority":1}"#,
    printcolumn = r#"{"name":"Queues","type":"integer","jsonPath":".spec.queues"}"#,
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.messageType"}"#,
    printcolumn = r#"{"name":"Brokers","type":"integer","jsonPath":".status.brokerCount","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("self.metadata.name.size() <= 127").message("a topic name has at most 127 characters"),
)]
#[serde(rename_all = "camelCase")]
pub struct TopicSpec {
    /// Number of queues (write slots) the topic is split into; they are spread
    /// evenly over the ready brokers. Queues can be added, never removed; at
    /// most 1,024 (the brokers' default `max_queues_per_topic`).
    #[schemars(range(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("self >= oldSelf").message("queues cannot be decreased"))]
    pub queues: u32,
    /// What the topic carries; fixed once created.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("messageType is immutable"))]
    pub message_type: MessageType,
    /// How long messages are kept, as a duration such as `72h` or `30m`. Empty
    /// means the broker's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"), length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('[1-9]')").message("retention must be longer than 0"))]
    pub retention: Option<String>,
    /// Largest message accepted, in bytes. Empty means the broker's limit; at
    /// most 4,194,304 (4 MiB, the brokers' default `max_record_size_bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4194304))]
    pub max_message_bytes: Option<u32>,
    /// When a send is acknowledged: see [`AckPolicy`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_policy: Option<AckPolicy>,
    /// Whether deleting the resource deletes the topic on the brokers.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// One queue and the broker it is written to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueAssignment {
    /// Queue id.
    pub queue: u32,
    /// Name of the broker (pod) that takes writes for the queue.
    pub broker: String,
}

/// Observed state of a Topic.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopicStatus {
    /// `Ready`: `True` (reason `Reconciled` or `Unmanaged`) once the topic
    /// exists on every ready broker; otherwise `False` with the reason and a
    /// message: `InvalidSpec`, `NoBrokers`, `BrokerError`, `NameTooLong`,
    /// `CleanupFailed`, `KubernetesApiError`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The namespace on the brokers that holds this resource's names, as the
    /// operator decided on its first reconcile: its Kubernetes namespace, or
    /// `default` for a resource an operator from before namespaces reconciled
    /// (its names were stored unqualified). Written only by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_namespace: Option<String>,
    /// Which broker takes writes for each queue.
    #[serde(default)]
    pub assignment: Vec<QueueAssignment>,
    /// Ready brokers the topic is on.
    #[serde(default)]
    pub broker_count: u32,
}

/// How a group shares messages among its members.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, Default,
)]
pub enum ConsumeMode {
    /// Each message goes to one member.
    #[default]
    Clustering,
    /// Every member receives every message.
    Broadcast,
}

/// A topic the group consumes, optionally filtered.
#[derive(KubeSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.tag) && has(self.sql))").message("a subscription filters by tag or by SQL, not both"))]
pub struct Subscription {
    /// Topic name.
    #[schemars(length(min = 1, max = 127))]
    pub topic: String,
    /// Tag expression, e.g. `TagA || TagB` (`*` = everything); 1 to 4,096
    /// characters (the brokers take expressions of up to 16 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub tag: Option<String>,
    /// SQL92 filter over message properties and the tag; 1 to 4,096
    /// characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub sql: Option<String>,
}

/// Where a requested offset reset moves the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum ResetTarget {
    /// The oldest stored message.
    Earliest,
    /// After the newest message.
    Latest,
    /// The first message stored at or after `timestamp`.
    Timestamp,
}

/// A declarative replay: applied once per `requestId`.
#[derive(KubeSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.to != 'Timestamp' || has(self.timestamp)").message("offsetReset.to Timestamp needs offsetReset.timestamp"))]
pub struct OffsetReset {
    /// Any unique string; a new value requests a new reset.
    #[schemars(length(min = 1, max = 253))]
    pub request_id: String,
    /// Earliest, Latest or Timestamp.
    pub to: ResetTarget,
    /// RFC 3339 time, for `to: Timestamp`, such as `2026-01-02T15:04:05Z`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new(RFC3339_RULE).message("offsetReset.timestamp must be an RFC 3339 time such as 2026-01-02T15:04:05Z"))]
    pub timestamp: Option<String>,
}

/// A DduoMQ consumer group: who consumes which topics, how, and how failures are
/// retried.
#[derive(CustomResource, KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "dduomq.io",
    version = "v1alpha1",
    kind = "ConsumerGroup",
    namespaced,
    status = "ConsumerGroupStatus",
    shortname = "dgroup",
    category = "dduomq",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.consumeMode"}"#,
    printcolumn = r#"{"name":"Members","type":"integer","jsonPath":".status.memberCount"}"#,
    printcolumn = r#"{"name":"Lag","type":"integer","jsonPath":".status.totalLag"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("self.metadata.name.size() <= 122").message("a group name has at most 122 characters"),
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.ordered || self.consumeMode == 'Clustering'").message("ordered needs consumeMode Clustering: brokers order deliveries only within a clustering group"))]
pub struct ConsumerGroupSpec {
    /// Topics the group consumes.
    #[schemars(length(min = 1, max = 64))]
    pub subscriptions: Vec<Subscription>,
    /// Clustering (each message to one member) or Broadcast (to every member);
    /// fixed once created.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("consumeMode is immutable"))]
    pub consume_mode: ConsumeMode,
    /// Deliveries must be in sharding-key order; only with `consumeMode:
    /// Clustering`.
    #[serde(default)]
    pub ordered: bool,
    /// Deliveries before a message is dead-lettered.
    #[serde(default = "default_attempts")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_delivery_attempts: u32,
    /// Delays before redeliveries, as durations such as `500ms`, `10s` or
    /// `1m30s` (units ms, s, m, h), each from 1ms to 24h; the last repeats. At
    /// most 64 (the brokers' limit). Empty means the broker's default schedule.
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(min = 1, max = 32)))]
    #[x_kube(validation = Rule::new(RETRY_BACKOFF_RULE).message("each retryBackoff item must be a duration from 1ms to 24h such as 500ms, 10s or 1m30s"))]
    pub retry_backoff: Vec<String>,
    /// Move messages that used up their attempts to `%DLQ%<group>` (otherwise
    /// they are dropped after the last attempt).
    #[serde(default = "default_true")]
    pub dead_letter: bool,
    /// A requested replay; applied once per `requestId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset_reset: Option<OffsetReset>,
}

/// CEL: every `retryBackoff` item is a duration both the API server (CEL's
/// `duration`) and the operator (humantime) read, within the brokers' bounds.
const RETRY_BACKOFF_RULE: &str = "self.all(d, d.matches('^([0-9]+(ms|s|m|h))+$') && duration(d) >= duration('1ms') && duration(d) <= duration('24h'))";

/// CEL: an RFC 3339 time (the shape, then CEL's own parse for the ranges of
/// its parts), no earlier than the Unix epoch that offsets count from. At most
/// 9 fractional digits: CEL would take more, the operator's parser does not.
const RFC3339_RULE: &str = "self.matches('^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}([.][0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})$') && timestamp(self) >= timestamp('1970-01-01T00:00:00Z')";

fn default_attempts() -> u32 {
    16
}

fn default_true() -> bool {
    true
}

/// The last offset reset the operator applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppliedReset {
    /// The `requestId` it answered.
    pub request_id: String,
    /// When it was applied (RFC 3339).
    pub applied_at: String,
}

/// Lag of the group on one topic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopicLag {
    /// Subscribed topic.
    pub topic: String,
    /// Messages not yet consumed, summed over queues and brokers.
    pub lag: u64,
}

/// Observed state of a ConsumerGroup.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerGroupStatus {
    /// `Ready`: `True` (reason `Reconciled` or `Unmanaged`) once the group
    /// exists on every ready broker; otherwise `False` with the reason and a
    /// message: `InvalidSpec`, `NoBrokers`, `BrokerError`, `NameTooLong`,
    /// `CleanupFailed`, `KubernetesApiError`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The namespace on the brokers that holds this resource's names, as the
    /// operator decided on its first reconcile: its Kubernetes namespace, or
    /// `default` for a resource an operator from before namespaces reconciled
    /// (its names were stored unqualified). Written only by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_namespace: Option<String>,
    /// Client ids of live members, over all brokers.
    #[serde(default)]
    pub members: Vec<String>,
    /// Number of live members.
    #[serde(default)]
    pub member_count: u32,
    /// Lag per subscribed topic.
    #[serde(default)]
    pub lag: Vec<TopicLag>,
    /// Messages not yet consumed over every subscribed topic: the sum of
    /// `lag` (the `Lag` column).
    #[serde(default)]
    pub total_lag: u64,
    /// The last applied offset reset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_reset: Option<AppliedReset>,
}
