//! `dduomq consume`

use std::time::Duration;

use clap::Args;
use dduomq_client::{ConsumeMode, Filter, ReceivedMessage};
use tokio::sync::{mpsc, oneshot};

use super::output::{Format, print_message};
use super::target::Target;
use super::{Mode, parse_duration};

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    #[arg(long)]
    pub topic: String,
    #[arg(long)]
    pub group: String,
    /// Exit after this many messages.
    #[arg(long)]
    pub count: Option<u64>,
    /// Exit when nothing new arrives for this long.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub timeout: Duration,
    #[arg(long, value_enum, default_value = "push")]
    pub mode: Mode,
    /// Client id (progress key of a broadcast member).
    #[arg(long)]
    pub client_id: Option<String>,
    /// Only messages whose tag matches, e.g. `TagA || TagB`.
    #[arg(long, conflicts_with = "filter_sql")]
    pub filter_tag: Option<String>,
    /// Only messages for which this SQL92 expression over properties and TAGS holds.
    #[arg(long)]
    pub filter_sql: Option<String>,
    /// Consume on a gray-release lane (push modes).
    #[arg(long)]
    pub lane: Option<String>,
}

impl ConsumeArgs {
    fn filter(&self) -> Filter {
        match (&self.filter_tag, &self.filter_sql) {
            (Some(t), _) => Filter::Tag(t.clone()),
            (None, Some(s)) => Filter::Sql(s.clone()),
            (None, None) => Filter::All,
        }
    }
}

pub async fn run(server: &Target, format: Format, args: ConsumeArgs) -> anyhow::Result<()> {
    let limit = args.count.unwrap_or(u64::MAX);
    match args.mode {
        Mode::Pull => pull(server, format, &args, limit).await,
        Mode::Push | Mode::Broadcast => push(server, format, &args, limit).await,
    }
}

/// Each message is printed, then acked; messages past `--count` are handed back.
async fn push(
    server: &Target,
    format: Format,
    args: &ConsumeArgs,
    limit: u64,
) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::channel::<(ReceivedMessage, oneshot::Sender<bool>)>(64);
    let mut builder = server
        .push_consumer(args.group.clone(), args.topic.clone())
        .mode(if args.mode == Mode::Broadcast {
            ConsumeMode::Broadcast
        } else {
            ConsumeMode::Clustering
        })
        .concurrency(64)
        .filter(args.filter())
        .max_in_flight(limit.min(256) as u32);
    if let Some(id) = &args.client_id {
        builder = builder.client_id(id.clone());
    }
    if let Some(lane) = &args.lane {
        builder = builder.lane(lane.clone());
    }
    let consumer = builder
        .start(move |m| {
            let tx = tx.clone();
            async move {
                let (done, taken) = oneshot::channel();
                tx.send((m, done)).await.map_err(|_| "stopping")?;
                match taken.await {
                    Ok(true) => Ok(()),
                    _ => Err("not consumed"),
                }
            }
        })
        .await?;
    let mut seen = 0;
    while seen < limit {
        match tokio::time::timeout(args.timeout, rx.recv()).await {
            Ok(Some((m, done))) => {
                print_message(format, &m);
                let _ = done.send(true);
                seen += 1;
            }
            _ => break,
        }
    }
    rx.close();
    while let Some((_, done)) = rx.recv().await {
        let _ = done.send(false);
    }
    consumer.shutdown().await;
    Ok(())
}

async fn pull(
    server: &Target,
    format: Format,
    args: &ConsumeArgs,
    limit: u64,
) -> anyhow::Result<()> {
    let mut builder = server.pull_consumer(args.group.clone(), vec![args.topic.clone()]);
    if let Some(id) = &args.client_id {
        builder = builder.client_id(id.clone());
    }
    let consumer = builder.build().await?;
    let mut seen = 0u64;
    let mut last = tokio::time::Instant::now();
    while seen < limit && last.elapsed() < args.timeout {
        let want = (limit - seen).min(256) as u32;
        let batch = consumer
            .poll(want, args.timeout.saturating_sub(last.elapsed()))
            .await?;
        if !batch.is_empty() {
            last = tokio::time::Instant::now();
        }
        for m in batch.iter().take((limit - seen) as usize) {
            print_message(format, m);
            seen += 1;
            consumer.seek(&m.topic, m.queue_id, m.offset + 1).await;
        }
    }
    consumer.commit().await?;
    Ok(())
}
