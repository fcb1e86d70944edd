//! Reads assigned queues from committed offsets and commits:
//! `cargo run -p dduomq-client --example pull_consumer`.

use std::time::Duration;

use dduomq_client::PullConsumerBuilder;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let server = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:6086".into());
    let consumer = PullConsumerBuilder::new(server, "example-pullers", vec!["example".into()])
        .build()
        .await?;
    let (generation, queues) = consumer.assignment().await;
    println!("generation {generation}, assigned {queues:?}");
    loop {
        let batch = consumer.poll(100, Duration::from_secs(5)).await?;
        if batch.is_empty() {
            break;
        }
        for m in &batch {
            println!(
                "{}/{}@{}: {}",
                m.topic,
                m.queue_id,
                m.offset,
                String::from_utf8_lossy(&m.body)
            );
        }
        consumer.commit().await?;
    }
    Ok(())
}
