//! `dduomq produce`

use std::io::BufRead;

use clap::Args;
use dduomq_client::{Message, ProducerBuilder, SendReceipt};
use serde_json::json;

use super::output::{Format, json_line};

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
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?}: expected name=value"))
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
    for (k, v) in &args.properties {
        m = m.with_property(k.clone(), v.clone());
    }
    m
}

fn report(format: Format, r: &SendReceipt) {
    match format {
        Format::Json => json_line(
            &json!({"id": r.message_id, "topic": r.topic, "queue": r.queue_id, "offset": r.offset}),
        ),
        Format::Table => println!(
            "sent {} to {}/{} at offset {}",
            r.message_id, r.topic, r.queue_id, r.offset
        ),
    }
}

pub async fn run(server: &str, format: Format, args: ProduceArgs) -> anyhow::Result<()> {
    let producer = ProducerBuilder::new(server).build()?;
    match args.count {
        Some(n) => {
            // Sends run concurrently (the producer batches them); receipts print in order.
            let mut pending = std::collections::VecDeque::new();
            for i in 0..n {
                let mut body = format!("message {i} ").into_bytes();
                body.resize(args.size.max(body.len()), b'.');
                body.truncate(args.size);
                pending.push_back(producer.send_async(build(&args, body)));
                if pending.len() >= 1024 {
                    report(format, &pending.pop_front().expect("non-empty").await??);
                }
            }
            for p in pending {
                report(format, &p.await??);
            }
        }
        None => {
            let stdin = std::io::stdin();
            for line in stdin.lock().lines() {
                let r = producer.send(build(&args, line?.into_bytes())).await?;
                report(format, &r);
            }
        }
    }
    Ok(())
}
