//! Consumes with a handler until Ctrl-C: `cargo run -p dduomq-client --example push_consumer`.

use dduomq_client::PushConsumerBuilder;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let server = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:6086".into());
    let consumer = PushConsumerBuilder::new(server, "example-group", "example")
        .concurrency(8)
        .start(|m| async move {
            println!(
                "{} {}/{}@{} attempt {}: {}",
                m.message_id,
                m.topic,
                m.queue_id,
                m.offset,
                m.delivery_attempt,
                String::from_utf8_lossy(&m.body)
            );
            // Returning an error would nack the message: it comes back after the
            // group's retry backoff, and goes to %DLQ%example-group at the end.
            Ok::<(), anyhow::Error>(())
        })
        .await?;
    tokio::signal::ctrl_c().await?;
    consumer.shutdown().await;
    Ok(())
}
