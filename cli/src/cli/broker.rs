//! `dduomq broker …`

use std::time::Duration;

use clap::Subcommand;
use serde_json::json;

use dduomq_client::proto as pb;

use super::output::{Format, json_line};
use super::parse_duration;
use super::target::Target;

#[derive(Debug, Subcommand)]
pub enum BrokerCommand {
    /// Show the broker's identity, storage and drain state.
    Info,
    /// Stop new writes to this broker (once the operator updates the routes) and
    /// wait until every group has consumed what it holds, so it can be scaled in.
    Drain {
        /// Give up waiting after this long (the broker keeps draining).
        #[arg(long, value_parser = parse_duration, default_value = "10m")]
        timeout: Duration,
        /// Start draining and return at once.
        #[arg(long)]
        no_wait: bool,
    },
    /// Take writes again.
    Undrain,
}

pub async fn run(server: &Target, format: Format, cmd: BrokerCommand) -> anyhow::Result<()> {
    let admin = server.admin()?;
    match cmd {
        BrokerCommand::Info => {
            let i = admin.broker_info().await?;
            let mut v = json!({"version": i.version, "broker_id": i.broker_id, "flush": i.flush_mode, "uptime_ms": i.uptime_ms,
                "commit_log_min": i.commit_log_min, "commit_log_max": i.commit_log_max, "segments": i.segments,
                "topics": i.topics, "groups": i.groups, "draining": i.draining,
                "unconsumed_messages": i.unconsumed_messages, "staged_messages": i.staged_messages,
                "route_epoch": i.route_epoch});
            if let Some(r) = &i.replication {
                let fields = v.as_object_mut().expect("object");
                fields.extend(replication_fields(r));
            }
            match format {
                Format::Json => json_line(&v),
                Format::Table => {
                    for (k, val) in v.as_object().expect("object") {
                        println!("{k:<20} {val}");
                    }
                }
            }
        }
        BrokerCommand::Drain { timeout, no_wait } => {
            admin.set_draining(true).await?;
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let i = admin.broker_info().await?;
                // Staged (delayed, half) messages still have to reach their topic here.
                let drained = i.unconsumed_messages == 0 && i.staged_messages == 0;
                if no_wait || drained || tokio::time::Instant::now() >= deadline {
                    match format {
                        Format::Json => json_line(
                            &json!({"draining": true, "drained": drained, "unconsumed_messages": i.unconsumed_messages,
                                "staged_messages": i.staged_messages}),
                        ),
                        Format::Table if drained => {
                            println!("drained: every group has consumed what this broker holds")
                        }
                        Format::Table => println!(
                            "draining: {} messages left to consume, {} staged (delayed or half) messages waiting",
                            i.unconsumed_messages, i.staged_messages
                        ),
                    }
                    anyhow::ensure!(drained || no_wait, "not drained within {timeout:?}");
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        BrokerCommand::Undrain => {
            admin.set_draining(false).await?;
            match format {
                Format::Json => json_line(&json!({"draining": false})),
                Format::Table => println!("taking writes again"),
            }
        }
    }
    Ok(())
}

/// A replicated broker's group, role, epoch and (on a master) its followers'
/// lag, as `broker info` fields.
fn replication_fields(r: &pb::ReplicaState) -> serde_json::Map<String, serde_json::Value> {
    let role = match pb::ReplicaRole::try_from(r.role) {
        Ok(pb::ReplicaRole::Master) => "master",
        Ok(pb::ReplicaRole::Replica) => "replica",
        _ => "none assigned",
    };
    let lag: serde_json::Map<String, serde_json::Value> = r
        .followers
        .iter()
        .map(|f| {
            let lag = json!({"bytes": f.lag_bytes, "ms": f.lag_ms, "in_sync": f.in_sync});
            (format!("member {}", f.member), lag)
        })
        .collect();
    [
        ("group", json!(r.group)),
        ("member", json!(r.member)),
        ("role", json!(role)),
        ("epoch", json!(r.epoch)),
        ("committed_end", json!(r.committed_end)),
        ("in_sync", json!(r.in_sync)),
        ("lag", json!(lag)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}
