//! Delayed messages: delivered at their time (never before), each released
//! into its topic exactly once although the broker is SIGKILLed while they
//! wait and some fall due while it is down; bad requests are refused with
//! their reasons.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dduomq_client::Reason;
use dduomq_client::proto as pb;
use dduomq_client::proto::messaging_service_client::MessagingServiceClient;
use dduomq_client::{Message, ProducerBuilder, PushConsumerBuilder, now_millis};
use dduomq_testkit::{Broker, Options, create_topics, eventually, stored};
use parking_lot::Mutex;

const MESSAGES: u64 = 300;

/// What the consumer saw of one message: id, when it was due, when it arrived.
#[derive(Debug, Clone)]
struct Seen {
    id: String,
    deliver_at: i64,
    arrived: i64,
}

async fn raw_send(b: &Broker, m: pb::OutgoingMessage) -> tonic::Status {
    let mut c = MessagingServiceClient::connect(format!("http://{}", b.grpc))
        .await
        .unwrap();
    c.send(pb::SendRequest { messages: vec![m] })
        .await
        .unwrap_err()
}

fn reason(s: &tonic::Status) -> Option<Reason> {
    dduomq_client::ClientError::from(s.clone()).reason()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_messages_arrive_on_time_and_once_across_a_crash() {
    let mut b = Broker::start_with(Options {
        config: Some("[broker]\nmax_delay = \"1h\"\n".into()),
        ..Default::default()
    });
    create_topics(
        &b,
        &[
            ("reminders", 4, pb::MessageType::Delay),
            ("plain", 1, pb::MessageType::Normal),
        ],
    )
    .await;
    let producer = ProducerBuilder::new(&b.grpc).build().unwrap();

    // Refusals, each with its reason, and nothing stored.
    let e = producer
        .send(Message::new("plain", "x").with_delay(Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert_eq!(e.reason(), Some(Reason::MessageTypeMismatch), "{e}");
    let e = producer
        .send(Message::new("reminders", "no time"))
        .await
        .unwrap_err();
    assert_eq!(e.reason(), Some(Reason::MessageTypeMismatch), "{e}");
    let e = producer
        .send(Message::new("reminders", "too far").with_delay(Duration::from_secs(2 * 3600)))
        .await
        .unwrap_err();
    assert_eq!(e.reason(), Some(Reason::DelayTooLong), "{e}");
    let both = raw_send(
        &b,
        pb::OutgoingMessage {
            topic: "reminders".into(),
            body: b"both".to_vec().into(),
            deliver_at_ms: now_millis() + 1000,
            delay_ms: 1000,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(reason(&both), Some(Reason::InvalidArgument), "{both:?}");
    assert_eq!(stored(&b, "reminders").await, 0);

    // Due between 0.3 s and 4 s from now; every tenth is already due (a
    // deliver-at time in the past is delivered at once).
    let mut expected: HashMap<String, (String, i64)> = HashMap::new();
    for i in 0..MESSAGES {
        let body = format!("reminder {i}");
        let m = Message::new("reminders", body.clone());
        let m = if i.is_multiple_of(10) {
            m.with_deliver_at_ms(now_millis() - 1000)
        } else {
            m.with_delay(Duration::from_millis(300 + (i * 37) % 3700))
        };
        let r = producer.send(m).await.unwrap();
        assert_eq!(r.topic, "reminders");
        let due = if i.is_multiple_of(10) {
            assert_eq!(r.deliver_at_ms, 0, "a message already due is not staged");
            r.store_timestamp_ms
        } else {
            assert!(r.deliver_at_ms > r.store_timestamp_ms);
            r.deliver_at_ms
        };
        expected.insert(body, (r.message_id, due));
    }

    let seen: Arc<Mutex<HashMap<String, Vec<Seen>>>> = Arc::default();
    let log = seen.clone();
    let consumer = PushConsumerBuilder::new(&b.grpc, "notifier", "reminders")
        .start(move |m| {
            let log = log.clone();
            async move {
                let body = String::from_utf8(m.body.to_vec()).unwrap();
                log.lock().entry(body).or_default().push(Seen {
                    id: m.message_id.clone(),
                    deliver_at: m.deliver_at_ms,
                    arrived: now_millis(),
                });
                Ok::<(), String>(())
            }
        })
        .await
        .unwrap();

    // Crash while most are waiting; some fall due while the broker is down.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    b.kill();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    b.start_again();

    eventually(
        Duration::from_secs(30),
        "every delayed message",
        async || (seen.lock().len() == MESSAGES as usize).then_some(()),
    )
    .await;
    // Released exactly once: the topic holds each message once, even though the
    // crash came between releases and the saving of their state.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stored(&b, "reminders").await, MESSAGES);
    consumer.shutdown().await;

    let seen = seen.lock();
    let mut lateness = Vec::new();
    for (body, (id, due)) in &expected {
        let s = &seen[body][0];
        assert_eq!(&s.id, id, "{body}: consumers see the id the producer got");
        if s.deliver_at != 0 {
            assert_eq!(s.deliver_at, *due, "{body}: its delivery time");
        }
        assert!(
            s.arrived >= *due,
            "{body} arrived {} ms early",
            due - s.arrived
        );
        lateness.push(s.arrived - due);
    }
    lateness.sort();
    println!(
        "lateness over {} messages (incl. 1 s of broker downtime): p50 {} ms, max {} ms",
        lateness.len(),
        lateness[lateness.len() / 2],
        lateness[lateness.len() - 1]
    );
}
