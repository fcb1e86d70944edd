//! `dduomq produce`

use std::io::BufRead;
use std::time::Duration;

use clap::{Args, ValueEnum};
use dduomq_client::{Message, SendReceipt, TransactionProducer, TransactionResolution};
use serde_json::json;

use super::output::{Format, json_line};
use super::target::Target;
use super::{parse_duration, parse_rfc3339_ms};

#[derive(Debug, Args)]
pub struct ProduceArgs {
    #[arg(long)]
    pub topic: String,
    /// Send this many generated messages instead of reading stdin.
    #[arg(long)]
    pub count: Option<u64>,
    /// Body size of generated messages, in bytes.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    #[arg(long)]
    pub key: Option<String>,
    #[arg(long)]
    pub tag: Option<String>,
    /// A user property, `name=value` (repeatable).
    #[arg(long = "property", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
    /// Messages with the same sharding key go to the same queue, in order.
    #[arg(long)]
    pub sharding_key: Option<String>,
    /// Deliver this long after the broker stores it, e.g. `30s`, `2h` (Delay topics).
    #[arg(long, value_parser = parse_duration, conflicts_with = "deliver_at")]
    pub delay: Option<Duration>,
    /// Deliver at this time: RFC 3339 (`2026-11-25T12:00:00Z`) or ms since the
    /// Unix epoch (Delay topics).
    #[arg(long, value_parser = parse_time)]
    pub deliver_at: Option<i64>,
    /// Send each message as a transaction (Transaction topics), then commit it,
    /// roll it back, or leave it open (`none`: the broker checks with the
    /// producer group and rolls it back if nobody answers).
    #[arg(long, value_enum)]
    pub transaction: Option<TransactionEnd>,
    /// Producer group of transactional messages.
    #[arg(long, default_value = "dduomq-cli")]
    pub producer_group: String,
    /// Gray-release lane, e.g. `canary`.
    #[arg(long)]
    pub lane: Option<String>,
}

/// How `produce --transaction` ends each transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransactionEnd {
    Commit,
    Rollback,
    None,
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?}: expected name=value"))
}

fn parse_time(s: &str) -> Result<i64, String> {
    s.parse::<i64>()
        .or_else(|_| parse_rfc3339_ms(s))
        .map_err(|e| format!("{e}: expected RFC 3339 or ms since the epoch"))
}

fn build(args: &ProduceArgs, body: Vec<u8>) -> Message {
    let mut m = Message::new(args.topic.clone(), body);
    if let Some(k) = &args.key {
        m = m.with_key(k.clone());
    }
    if let Some(t) = &args.tag {
        m = m.with_tag(t.clone());
    }
    if let Some(s) = &args.sharding_key {
        m = m.with_sharding_key(s.clone());
    }
    if let Some(d) = args.delay {
        m = m.with_delay(d);
    }
    if let Some(at) = args.deliver_at {
        m = m.with_deliver_at_ms(at);
    }
    if let Some(l) = &args.lane {
        m = m.with_lane(l.clone());
    }
    for (k, v) in &args.properties {
        m = m.with_property(k.clone(), v.clone());
    }
    m
}

fn report(format: Format, r: &SendReceipt, transaction: Option<TransactionEnd>) {
    match format {
        Format::Json => {
            let mut v = json!({"id": r.message_id, "topic": r.topic, "queue": r.queue_id, "offset": r.offset});
            if r.deliver_at_ms != 0 {
                v["deliver_at_ms"] = json!(r.deliver_at_ms);
            }
            if let Some(end) = transaction {
                v["transaction_id"] = json!(r.transaction_id);
                v["transaction"] = json!(match end {
                    TransactionEnd::Commit => "committed",
                    TransactionEnd::Rollback => "rolled_back",
                    TransactionEnd::None => "open",
                });
            }
            json_line(&v)
        }
        Format::Table => {
            let place = if r.deliver_at_ms != 0 {
                format!("for delivery at {} ms", r.deliver_at_ms)
            } else if !r.transaction_id.is_empty() {
                format!("as transaction {}", r.transaction_id)
            } else {
                format!("at offset {}", r.offset)
            };
            println!(
                "sent {} to {}/{} {place}",
                r.message_id, r.topic, r.queue_id
            )
        }
    }
}

/// The bodies to send: generated (`--count`) or one per stdin line.
fn bodies(args: &ProduceArgs) -> Box<dyn Iterator<Item = std::io::Result<Vec<u8>>>> {
    match args.count {
        Some(n) => {
            let size = args.size;
            Box::new((0..n).map(move |i| {
                let mut body = format!("message {i} ").into_bytes();
                body.resize(size.max(body.len()), b'.');
                body.truncate(size);
                Ok(body)
            }))
        }
        None => Box::new(
            std::io::stdin()
                .lock()
                .lines()
                .map(|l| l.map(String::into_bytes)),
        ),
    }
}

pub async fn run(server: &Target, format: Format, args: ProduceArgs) -> anyhow::Result<()> {
    if let Some(end) = args.transaction {
        // The CLI cannot answer checks about its transactions: it says Unknown.
        let producer = TransactionProducer::new(
            server.producer(),
            args.producer_group.clone(),
            |_: &dduomq_client::ReceivedMessage| TransactionResolution::Unknown,
        )?;
        for body in bodies(&args) {
            let tx = producer.begin(build(&args, body?)).await?;
            let receipt = tx.receipt.clone();
            match end {
                TransactionEnd::Commit => tx.commit().await?,
                TransactionEnd::Rollback => tx.rollback().await?,
                TransactionEnd::None => {}
            }
            report(format, &receipt, Some(end));
        }
        return Ok(());
    }
    let producer = server.producer().build()?;
    if args.count.is_some() {
        // Sends run concurrently (the producer batches them); receipts print in order.
        let mut pending = std::collections::VecDeque::new();
        for body in bodies(&args) {
            pending.push_back(producer.send_async(build(&args, body?)));
            if pending.len() >= 1024 {
                report(
                    format,
                    &pending.pop_front().expect("non-empty").await??,
                    None,
                );
            }
        }
        for p in pending {
            report(format, &p.await??, None);
        }
    } else {
        for body in bodies(&args) {
            let r = producer.send(build(&args, body?)).await?;
            report(format, &r, None);
        }
    }
    Ok(())
}
