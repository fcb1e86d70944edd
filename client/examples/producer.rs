//! Sends messages in every mode: `cargo run -p dduomq-client --example producer`
//! (with a broker on 127.0.0.1:6086, e.g. `cargo run --release -p dduomq-broker`).

use dduomq_client::{Message, ProducerBuilder};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let server = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:6086".into());
    let producer = ProducerBuilder::new(server).build()?;

    let r = producer
        .send(Message::new("example", "sync send").with_key("order-1"))
        .await?;
    println!(
        "sync:   {} -> queue {} offset {}",
        r.message_id, r.queue_id, r.offset
    );

    let pending = producer.send_async(Message::new("example", "async send"));
    producer
        .send_oneway(Message::new("example", "one-way send"))
        .await?;
    let r = pending.await??;
    println!(
        "async:  {} -> queue {} offset {}",
        r.message_id, r.queue_id, r.offset
    );

    let batch = (0..3)
        .map(|i| Message::new("example", format!("batch {i}")).with_sharding_key("customer-7"));
    for r in producer.send_batch(batch.collect()).await? {
        println!(
            "batch:  {} -> queue {} offset {}",
            r.message_id, r.queue_id, r.offset
        );
    }
    Ok(())
}
