//! `dduomq topic …`

use std::time::Duration;

use clap::{Subcommand, ValueEnum};
use dduomq_client::TopicSettings;
use dduomq_client::proto as pb;
use serde_json::json;

use super::output::{Format, json_line, table, type_name};
use super::parse_duration;
use super::target::Target;

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic, or update one (grow its queues, replace its maximum
    /// message size, retention and ack policy).
    Create {
        name: String,
        #[arg(long, default_value_t = 4)]
        queues: u32,
        #[arg(long = "type", value_enum, default_value = "normal")]
        message_type: TopicType,
        /// Largest message the topic takes, counted as the broker's
        /// max_record_size_bytes counts (the encoded record); default: the broker's.
        #[arg(long)]
        max_message_bytes: Option<u32>,
        /// Messages stored longer ago than this (e.g. 1h, 30m) are no longer
        /// delivered; default: the broker's retention.
        #[arg(long, value_parser = parse_duration)]
        retention: Option<Duration>,
        /// When a send is acknowledged in a replicated group: once the
        /// master stored it, once a quorum did, or per the brokers'
        /// ack_policy (default). Left out, an existing topic keeps its own
        /// (a new one follows the brokers'), so adding queues never weakens
        /// a quorum topic.
        #[arg(long, value_enum)]
        ack_policy: Option<AckPolicy>,
    },
    /// List topics.
    List,
    /// Show a topic's queues and offsets.
    Describe { name: String },
    /// Delete a topic and its progress.
    Delete { name: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TopicType {
    Normal,
    Fifo,
    Delay,
    Transaction,
}

impl TopicType {
    fn to_proto(self) -> pb::MessageType {
        match self {
            TopicType::Normal => pb::MessageType::Normal,
            TopicType::Fifo => pb::MessageType::Fifo,
            TopicType::Delay => pb::MessageType::Delay,
            TopicType::Transaction => pb::MessageType::Transaction,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AckPolicy {
    Master,
    Quorum,
    /// The brokers' ack_policy: clears a topic's own.
    Default,
}

impl AckPolicy {
    fn to_proto(self) -> pb::AckPolicy {
        match self {
            AckPolicy::Master => pb::AckPolicy::Master,
            AckPolicy::Quorum => pb::AckPolicy::Quorum,
            AckPolicy::Default => pb::AckPolicy::BrokerDefault,
        }
    }
}

/// A topic's own ack policy by name (`None`: the brokers').
fn ack_policy_name(t: &pb::Topic) -> Option<&'static str> {
    match t.ack_policy() {
        pb::AckPolicy::Master => Some("master"),
        pb::AckPolicy::Quorum => Some("quorum"),
        pb::AckPolicy::Unspecified | pb::AckPolicy::BrokerDefault => None,
    }
}

/// A topic as JSON; its own settings only when it has them.
fn topic_json(t: &pb::Topic) -> serde_json::Value {
    let mut v = json!({"name": t.name, "queues": t.queues, "type": type_name(t.message_type)});
    if t.max_message_bytes != 0 {
        v["max_message_bytes"] = json!(t.max_message_bytes);
    }
    if t.retention_ms != 0 {
        v["retention_ms"] = json!(t.retention_ms);
    }
    if let Some(policy) = ack_policy_name(t) {
        v["ack_policy"] = json!(policy);
    }
    v
}

/// The topic's own settings as `describe` prints them.
fn settings_text(t: &pb::Topic) -> String {
    let max = match t.max_message_bytes {
        0 => "broker default".to_string(),
        n => format!("{n} bytes"),
    };
    let retention = match t.retention_ms {
        0 => "broker default".to_string(),
        ms => humantime::format_duration(Duration::from_millis(ms)).to_string(),
    };
    let ack = ack_policy_name(t).unwrap_or("broker default");
    format!("max message size: {max}; retention: {retention}; ack policy: {ack}")
}

pub async fn run(server: &Target, format: Format, cmd: TopicCommand) -> anyhow::Result<()> {
    let admin = server.admin()?;
    match cmd {
        TopicCommand::Create {
            name,
            queues,
            message_type,
            max_message_bytes,
            retention,
            ack_policy,
        } => {
            let mut settings = TopicSettings::new(&name, queues, message_type.to_proto());
            settings.max_message_bytes = max_message_bytes;
            settings.retention = retention;
            settings.ack_policy = ack_policy.map(AckPolicy::to_proto);
            let r = admin.create_topic_with(settings).await?;
            let t = r.topic.unwrap_or_default();
            match format {
                Format::Json => {
                    let mut v = topic_json(&t);
                    v["created"] = json!(r.created);
                    json_line(&v);
                }
                Format::Table => println!(
                    "topic {} {} with {} queues ({}; {})",
                    t.name,
                    if r.created { "created" } else { "unchanged" },
                    t.queues,
                    type_name(t.message_type),
                    settings_text(&t)
                ),
            }
        }
        TopicCommand::List => {
            let topics = admin.list_topics().await?;
            match format {
                Format::Json => {
                    json_line(&json!(topics.iter().map(topic_json).collect::<Vec<_>>()))
                }
                Format::Table => table(
                    &["NAME", "QUEUES", "TYPE"],
                    &topics
                        .iter()
                        .map(|t| {
                            vec![
                                t.name.clone(),
                                t.queues.to_string(),
                                type_name(t.message_type).into(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                ),
            }
        }
        TopicCommand::Describe { name } => {
            let r = admin.describe_topic(&name).await?;
            let t = r.topic.unwrap_or_default();
            match format {
                Format::Json => {
                    let mut v = topic_json(&t);
                    v["queue_offsets"] = json!(r
                        .queues
                        .iter()
                        .map(|q| json!({"queue": q.queue_id, "min_offset": q.min_offset, "max_offset": q.max_offset}))
                        .collect::<Vec<_>>());
                    json_line(&v);
                }
                Format::Table => {
                    println!(
                        "topic {} ({} queues, {}; {})",
                        t.name,
                        t.queues,
                        type_name(t.message_type),
                        settings_text(&t)
                    );
                    table(
                        &["QUEUE", "MIN", "MAX"],
                        &r.queues
                            .iter()
                            .map(|q| {
                                vec![
                                    q.queue_id.to_string(),
                                    q.min_offset.to_string(),
                                    q.max_offset.to_string(),
                                ]
                            })
                            .collect::<Vec<_>>(),
                    );
                }
            }
        }
        TopicCommand::Delete { name } => {
            admin.delete_topic(&name).await?;
            match format {
                Format::Json => json_line(&json!({"deleted": name})),
                Format::Table => println!("topic {name} deleted"),
            }
        }
    }
    Ok(())
}
