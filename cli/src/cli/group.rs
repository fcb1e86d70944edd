//! `dduomq group …`

use clap::Subcommand;
use dduomq_client::ResetTo;
use dduomq_client::proto as pb;
use serde_json::json;

use super::output::{Format, json_line, table};
use super::target::Target;

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
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
}
