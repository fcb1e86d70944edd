//! `dduomq group …`

use clap::Subcommand;
use dduomq_client::ResetTo;
use dduomq_client::proto as pb;
use serde_json::json;

use super::output::{Format, json_line, table};
use super::target::Target;

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create a consumer group, or update it (its subscriptions are replaced).
    Create(CreateArgs),
    /// List consumer groups.
    List,
    /// Show a group's progress and lag per queue, and its members.
    Describe { name: String },
    /// Move a group's progress on a topic.
    Reset {
        name: String,
        #[arg(long)]
        topic: String,
        /// earliest | latest | an RFC 3339 time | an offset
        #[arg(long, allow_hyphen_values = true)]
        to: String,
    },
}

/// `dduomq group create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    name: String,
    /// Every member gets every message (default: each message to one member).
    #[arg(long)]
    broadcast: bool,
    /// The group's subscription on a topic, with a tag expression
    /// (`orders:TagA || TagB`; just `orders` for everything). Repeatable.
    /// Consumers must then use exactly these filters and topics.
    #[arg(long = "subscription", value_name = "TOPIC[:TAG-EXPR]")]
    subscriptions: Vec<String>,
    /// The group's subscription on a topic, with a SQL92 filter
    /// (`orders:region = 'eu'`). Repeatable.
    #[arg(long = "sql-subscription", value_name = "TOPIC:SQL")]
    sql_subscriptions: Vec<String>,
    /// Deliver in queue order, one message in flight per queue, on every topic.
    #[arg(long)]
    ordered: bool,
    /// Deliveries before a message is dead-lettered (0 = the broker's default).
    #[arg(long, default_value_t = 0)]
    max_attempts: u32,
}

/// Parses `TOPIC[:EXPR]` of a `--subscription` (tag) or, with `sql`, a
/// `--sql-subscription` (the expression is required). Topic names hold no `:`.
pub fn parse_subscription(text: &str, sql: bool) -> anyhow::Result<pb::GroupSubscription> {
    let (topic, expression) = match text.split_once(':') {
        Some((topic, expression)) => (topic, expression),
        None if sql => anyhow::bail!("--sql-subscription {text:?}: expected TOPIC:SQL"),
        None => (text, ""),
    };
    if topic.is_empty() {
        anyhow::bail!("subscription {text:?}: the topic is missing");
    }
    Ok(pb::GroupSubscription {
        topic: topic.to_string(),
        filter_type: if sql {
            pb::FilterType::Sql
        } else {
            pb::FilterType::Tag
        } as i32,
        filter_expression: expression.to_string(),
    })
}

fn filter_text(s: &pb::GroupSubscription) -> String {
    match pb::FilterType::try_from(s.filter_type) {
        Ok(pb::FilterType::Sql) => format!("sql: {}", s.filter_expression),
        _ if s.filter_expression.trim().is_empty() => "tag: *".to_string(),
        _ => format!("tag: {}", s.filter_expression),
    }
}

fn subscriptions_json(g: &pb::Group) -> serde_json::Value {
    json!(
        g.subscriptions
            .iter()
            .map(|s| json!({
                "topic": s.topic,
                "filter_type": match pb::FilterType::try_from(s.filter_type) {
                    Ok(pb::FilterType::Sql) => "sql",
                    _ => "tag",
                },
                "filter_expression": s.filter_expression,
            }))
            .collect::<Vec<_>>()
    )
}

/// Prints a group's settings: mode, order and subscriptions.
fn print_settings(g: &pb::Group) {
    println!("ordered: {}", if g.ordered { "yes" } else { "no" });
    if g.subscriptions.is_empty() {
        println!("subscriptions: none declared (each topic's first subscriber sets its filter)");
    }
    for s in &g.subscriptions {
        println!("subscription {} ({})", s.topic, filter_text(s));
    }
}

fn mode_name(m: i32) -> &'static str {
    match pb::ConsumeMode::try_from(m).unwrap_or(pb::ConsumeMode::Unspecified) {
        pb::ConsumeMode::Broadcast => "broadcast",
        _ => "clustering",
    }
}

/// Parses `--to`: earliest, latest, RFC 3339 time, or an integer offset.
pub fn parse_reset(to: &str) -> anyhow::Result<ResetTo> {
    Ok(match to {
        "earliest" => ResetTo::Earliest,
        "latest" => ResetTo::Latest,
        s => match s.parse::<i64>() {
            Ok(o) => ResetTo::Offset(o),
            Err(_) => ResetTo::Timestamp(super::parse_rfc3339_ms(s).map_err(|e| {
                anyhow::anyhow!("--to {e}: not earliest, latest, an offset or an RFC 3339 time")
            })?),
        },
    })
}

fn progress_rows(queues: &[pb::GroupQueueStatus]) -> Vec<Vec<String>> {
    queues
        .iter()
        .map(|q| {
            vec![
                q.topic.clone(),
                q.queue_id.to_string(),
                q.client_id.clone(),
                q.committed_offset.to_string(),
                q.max_offset.to_string(),
                q.lag.to_string(),
                q.in_flight.to_string(),
            ]
        })
        .collect()
}

fn progress_json(q: &pb::GroupQueueStatus) -> serde_json::Value {
    json!({"topic": q.topic, "queue": q.queue_id, "member": q.client_id, "committed_offset": q.committed_offset,
           "max_offset": q.max_offset, "lag": q.lag, "in_flight": q.in_flight})
}

const PROGRESS_HEADERS: [&str; 7] = [
    "TOPIC",
    "QUEUE",
    "MEMBER",
    "COMMITTED",
    "MAX",
    "LAG",
    "IN-FLIGHT",
];

pub async fn run(server: &Target, format: Format, cmd: GroupCommand) -> anyhow::Result<()> {
    let admin = server.admin()?;
    match cmd {
        GroupCommand::Create(a) => {
            let mut subscriptions = Vec::new();
            for s in &a.subscriptions {
                subscriptions.push(parse_subscription(s, false)?);
            }
            for s in &a.sql_subscriptions {
                subscriptions.push(parse_subscription(s, true)?);
            }
            let mode = if a.broadcast {
                pb::ConsumeMode::Broadcast
            } else {
                pb::ConsumeMode::Clustering
            };
            let r = admin
                .create_group(pb::Group {
                    name: a.name,
                    mode: mode as i32,
                    max_delivery_attempts: a.max_attempts,
                    subscriptions,
                    ordered: a.ordered,
                    ..Default::default()
                })
                .await?;
            let g = r.group.unwrap_or_default();
            match format {
                Format::Json => json_line(&json!({
                    "name": g.name, "created": r.created, "mode": mode_name(g.mode),
                    "ordered": g.ordered, "subscriptions": subscriptions_json(&g),
                })),
                Format::Table => {
                    println!(
                        "group {} {} ({})",
                        g.name,
                        if r.created { "created" } else { "unchanged" },
                        mode_name(g.mode)
                    );
                    print_settings(&g);
                }
            }
        }
        GroupCommand::List => {
            let groups = admin.list_groups().await?;
            match format {
                Format::Json => json_line(&json!(groups
                    .iter()
                    .map(|g| json!({"name": g.name, "mode": mode_name(g.mode), "max_delivery_attempts": g.max_delivery_attempts}))
                    .collect::<Vec<_>>())),
                Format::Table => table(
                    &["NAME", "MODE", "MAX-ATTEMPTS"],
                    &groups
                        .iter()
                        .map(|g| vec![g.name.clone(), mode_name(g.mode).into(), g.max_delivery_attempts.to_string()])
                        .collect::<Vec<_>>(),
                ),
            }
        }
        GroupCommand::Describe { name } => {
            let d = admin.describe_group(&name).await?;
            let g = d.group.unwrap_or_default();
            match format {
                Format::Json => json_line(&json!({
                    "name": g.name, "mode": mode_name(g.mode), "generation": d.generation,
                    "max_delivery_attempts": g.max_delivery_attempts, "retry_backoff_ms": g.retry_backoff_ms,
                    "ordered": g.ordered, "subscriptions": subscriptions_json(&g),
                    "queues": d.queues.iter().map(progress_json).collect::<Vec<_>>(),
                    "members": d.members.iter().map(|m| json!({"client_id": m.client_id, "topics": m.topics})).collect::<Vec<_>>(),
                })),
                Format::Table => {
                    println!(
                        "group {} ({}, generation {}, {} members)",
                        g.name,
                        mode_name(g.mode),
                        d.generation,
                        d.members.len()
                    );
                    print_settings(&g);
                    table(&PROGRESS_HEADERS, &progress_rows(&d.queues));
                }
            }
        }
        GroupCommand::Reset { name, topic, to } => {
            let queues = admin.reset_offset(&name, &topic, parse_reset(&to)?).await?;
            match format {
                Format::Json => {
                    json_line(&json!(queues.iter().map(progress_json).collect::<Vec<_>>()))
                }
                Format::Table => table(&PROGRESS_HEADERS, &progress_rows(&queues)),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_targets_parse() {
        assert_eq!(parse_reset("earliest").unwrap(), ResetTo::Earliest);
        assert_eq!(parse_reset("latest").unwrap(), ResetTo::Latest);
        assert_eq!(parse_reset("42").unwrap(), ResetTo::Offset(42));
        assert_eq!(parse_reset("-3").unwrap(), ResetTo::Offset(-3));
        assert_eq!(
            parse_reset("2026-11-25T10:00:00Z").unwrap(),
            ResetTo::Timestamp(1_795_600_800_000)
        );
        assert!(parse_reset("yesterday").is_err());
    }

    #[test]
    fn subscriptions_parse() {
        let tag = |topic: &str, e: &str| pb::GroupSubscription {
            topic: topic.into(),
            filter_type: pb::FilterType::Tag as i32,
            filter_expression: e.into(),
        };
        assert_eq!(
            parse_subscription("orders", false).unwrap(),
            tag("orders", "")
        );
        assert_eq!(
            parse_subscription("orders:A || B", false).unwrap(),
            tag("orders", "A || B")
        );
        assert_eq!(
            parse_subscription("orders:a = 'x:y'", true).unwrap(),
            pb::GroupSubscription {
                filter_type: pb::FilterType::Sql as i32,
                ..tag("orders", "a = 'x:y'")
            }
        );
        assert!(parse_subscription("orders", true).is_err());
        assert!(parse_subscription(":A", false).is_err());
    }
}
