//! Table and JSON output.

use clap::ValueEnum;
use dduomq_client::ReceivedMessage;
use dduomq_client::proto as pb;
use serde_json::{Value, json};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// Prints rows as an aligned table under `headers`.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Prints one JSON value on a line.
pub fn json_line(v: &Value) {
    println!("{v}");
}

/// A message as JSON: the body as UTF-8 text when valid, else base64.
pub fn message_json(m: &ReceivedMessage) -> Value {
    let mut v = json!({
        "id": m.message_id,
        "topic": m.topic,
        "queue": m.queue_id,
        "offset": m.offset,
        "key": m.keys.first(),
        "tag": if m.tag.is_empty() { Value::Null } else { json!(m.tag) },
        "properties": m.properties,
        "delivery_attempt": m.delivery_attempt,
    });
    if m.deliver_at_ms != 0 {
        v["deliver_at_ms"] = json!(m.deliver_at_ms);
    }
    match std::str::from_utf8(&m.body) {
        Ok(text) => v["body"] = json!(text),
        Err(_) => {
            use base64::Engine;
            v["body_base64"] = json!(base64::engine::general_purpose::STANDARD.encode(&m.body));
        }
    }
    v
}

/// Prints received messages in the chosen format.
pub fn print_message(format: Format, m: &ReceivedMessage) {
    match format {
        Format::Json => json_line(&message_json(m)),
        Format::Table => println!(
            "{}  {}/{}@{}  attempt={}  tag={}  keys={}  {}",
            m.message_id,
            m.topic,
            m.queue_id,
            m.offset,
            m.delivery_attempt,
            m.tag,
            m.keys.join(","),
            String::from_utf8_lossy(&m.body)
        ),
    }
}

pub fn type_name(t: i32) -> &'static str {
    match pb::MessageType::try_from(t).unwrap_or(pb::MessageType::Unspecified) {
        pb::MessageType::Fifo => "fifo",
        pb::MessageType::Delay => "delay",
        pb::MessageType::Transaction => "transaction",
        _ => "normal",
    }
}
