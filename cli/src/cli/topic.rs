//! `dduomq topic …`

use clap::{Subcommand, ValueEnum};
use dduomq_client::proto as pb;
use serde_json::json;

use super::output::{Format, json_line, table, type_name};
use super::target::Target;

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic (or grow its queues).
    Create {
        name: String,
        #[arg(long, default_value_t = 4)]
        queues: u32,
        #[arg(long = "type", value_enum, default_value = "normal")]
        message_type: TopicType,
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

fn topic_json(t: &pb::Topic) -> serde_json::Value {
    json!({"name": t.name, "queues": t.queues, "type": type_name(t.message_type)})
}

pub async fn run(server: &Target, format: Format, cmd: TopicCommand) -> anyhow::Result<()> {
    let admin = server.admin()?;
    match cmd {
        TopicCommand::Create {
            name,
            queues,
            message_type,
        } => {
            let r = admin
                .create_topic(&name, queues, message_type.to_proto())
                .await?;
            let t = r.topic.unwrap_or_default();
            match format {
                Format::Json => {
                    let mut v = topic_json(&t);
                    v["created"] = json!(r.created);
                    json_line(&v);
                }
                Format::Table => println!(
                    "topic {} {} with {} queues ({})",
                    t.name,
                    if r.created { "created" } else { "unchanged" },
                    t.queues,
                    type_name(t.message_type)
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
                        "topic {} ({} queues, {})",
                        t.name,
                        t.queues,
                        type_name(t.message_type)
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
