//! Consuming in tests: a push consumer that keeps every body it is given.

use std::sync::Arc;
use std::time::Duration;

use dduomq_client::PushConsumerBuilder;
use parking_lot::Mutex;

use crate::eventually;

/// Starts `consumer`, waits (up to `within`) until it has been given at
/// least `count` messages, stops it, and returns every body it was given, in
/// the order they came. Panics when it cannot start.
pub async fn bodies_received(
    consumer: PushConsumerBuilder,
    count: usize,
    within: Duration,
) -> Vec<Vec<u8>> {
    let got: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let sink = got.clone();
    let consumer = consumer
        .start(move |m| {
            let sink = sink.clone();
            async move {
                sink.lock().push(m.body.to_vec());
                Ok::<(), String>(())
            }
        })
        .await
        .expect("the consumer starts");
    eventually(within, "every message", async || {
        (got.lock().len() >= count).then_some(())
    })
    .await;
    consumer.shutdown().await;
    got.lock().clone()
}
