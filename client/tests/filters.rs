//! Broker-side tag and SQL92 filters against a real broker: consumers get exactly
//! the matching messages, and filtered-out messages still advance the group.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use dduomq_client::Reason;
use dduomq_client::proto as pb;
use dduomq_client::{
    Admin, Filter, Message, ProducerBuilder, PullConsumerBuilder, PushConsumerBuilder,
};
use dduomq_testkit::{Broker, eventually};
use parking_lot::Mutex;

const N: u32 = 60;

fn tag(i: u32) -> &'static str {
    ["A", "B", "C"][(i % 3) as usize]
}
fn region(i: u32) -> &'static str {
    if i.is_multiple_of(2) { "eu" } else { "us" }
}

async fn setup(b: &Broker) {
    let admin = Admin::connect(&b.grpc).unwrap();
    admin
        .create_topic("payments", 2, pb::MessageType::Normal)
        .await
        .unwrap();
    let producer = ProducerBuilder::new(&b.grpc).build().unwrap();
    for i in 0..N {
        let m = Message::new("payments", format!("{i}"))
            .with_tag(tag(i))
            .with_property("amount", i.to_string())
            .with_property("region", region(i));
        producer.send(m).await.unwrap();
    }
}

async fn push_filtered(b: &Broker, group: &str, filter: Filter, expected: usize) -> BTreeSet<u32> {
    let seen: Arc<Mutex<Vec<u32>>> = Arc::default();
    let sink = seen.clone();
    let consumer = PushConsumerBuilder::new(&b.grpc, group, "payments")
        .filter(filter)
        .start(move |m| {
            let sink = sink.clone();
            async move {
                sink.lock()
                    .push(std::str::from_utf8(&m.body).unwrap().parse().unwrap());
                Ok::<(), String>(())
            }
        })
        .await
        .unwrap();
    let admin = Admin::connect(&b.grpc).unwrap();
    // Done when the whole topic is consumed (filtered-out messages included).
    eventually(
        Duration::from_secs(20),
        "the group to reach the end",
        async || {
            let d = admin.describe_group(group).await.unwrap();
            (!d.queues.is_empty()
                && d.queues.iter().all(|q| q.lag == 0 && q.in_flight == 0)
                && seen.lock().len() >= expected)
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    consumer.shutdown().await;
    let got = seen.lock().clone();
    assert_eq!(got.len(), expected, "no duplicates, nothing extra");
    got.into_iter().collect()
}

#[tokio::test]
async fn tag_and_sql_filters_deliver_exactly_the_matching_messages() {
    let b = Broker::start();
    setup(&b).await;
    let want: BTreeSet<u32> = (0..N).filter(|i| tag(*i) != "C").collect();
    let got = push_filtered(&b, "tagged", Filter::Tag("A || B".into()), want.len()).await;
    assert_eq!(got, want);

    let want: BTreeSet<u32> = (0..N).filter(|i| region(*i) == "eu" && *i >= 20).collect();
    let expr = "region = 'eu' AND amount >= 20";
    let got = push_filtered(&b, "sql", Filter::Sql(expr.into()), want.len()).await;
    assert_eq!(got, want);

    let want: BTreeSet<u32> = (0..N)
        .filter(|i| tag(*i) == "C" && !(10..50).contains(i))
        .collect();
    let expr = "TAGS = 'C' AND amount NOT BETWEEN 10 AND 49";
    let got = push_filtered(&b, "sql-tags", Filter::Sql(expr.into()), want.len()).await;
    assert_eq!(got, want);

    // Pull consumers filter too; positions move past what was filtered out.
    let puller = PullConsumerBuilder::new(&b.grpc, "pullers", vec!["payments".into()])
        .filter(Filter::Sql("amount IN (5, 6, 7) OR region IS NULL".into()))
        .build()
        .await
        .unwrap();
    let mut got = BTreeSet::new();
    for _ in 0..20 {
        for m in puller.poll(100, Duration::from_millis(200)).await.unwrap() {
            got.insert(
                std::str::from_utf8(&m.body)
                    .unwrap()
                    .parse::<u32>()
                    .unwrap(),
            );
        }
    }
    assert_eq!(got, BTreeSet::from([5, 6, 7]));
    puller.commit().await.unwrap();
    let d = Admin::connect(&b.grpc)
        .unwrap()
        .describe_group("pullers")
        .await
        .unwrap();
    assert_eq!(
        d.queues.iter().map(|q| q.lag).sum::<u64>(),
        0,
        "{:?}",
        d.queues
    );
}

#[tokio::test]
async fn a_bad_expression_is_refused_at_subscribe_time_naming_the_position() {
    let b = Broker::start();
    setup(&b).await;
    for (filter, position) in [
        (Filter::Sql("amount > ".into()), 9),
        (Filter::Sql("region = 'eu' AND (amount > 1".into()), 29),
        (Filter::Tag("A || || B".into()), 5),
    ] {
        let e = PushConsumerBuilder::new(&b.grpc, "bad", "payments")
            .filter(filter.clone())
            .start(|_| async { Ok::<(), String>(()) })
            .await
            .unwrap_err();
        assert_eq!(e.reason(), Some(Reason::InvalidFilter), "{filter:?}: {e}");
        assert!(
            e.to_string().contains(&format!("position {position}")),
            "{filter:?}: {e}"
        );
    }
}

#[tokio::test]
async fn a_consumer_with_another_filter_than_its_groups_is_refused_and_not_retried() {
    let b = Broker::start();
    setup(&b).await;
    let admin = Admin::connect(&b.grpc).unwrap();
    let declared = pb::Group {
        name: "only-a".into(),
        subscriptions: vec![pb::GroupSubscription {
            topic: "payments".into(),
            filter_type: pb::FilterType::Tag as i32,
            filter_expression: "A".into(),
        }],
        ..Default::default()
    };
    admin.create_group(declared.clone()).await.unwrap();
    for filter in [Filter::Tag("B".into()), Filter::Sql("TAGS = 'A'".into())] {
        let e = PushConsumerBuilder::new(&b.grpc, "only-a", "payments")
            .filter(filter.clone())
            .start(|_| async { Ok::<(), String>(()) })
            .await
            .unwrap_err();
        assert_eq!(
            e.reason(),
            Some(Reason::SubscriptionMismatch),
            "{filter:?}: {e}"
        );
        assert!(!e.is_retryable(), "{e}");
        assert!(e.to_string().contains("the tag filter \"A\""), "{e}");
    }
    let described = admin.describe_group("only-a").await.unwrap().group.unwrap();
    assert_eq!(described.subscriptions, declared.subscriptions);
    let a: BTreeSet<u32> = (0..N).filter(|i| tag(*i) == "A").collect();
    let got = push_filtered(&b, "only-a", Filter::Tag("A".into()), a.len()).await;
    assert_eq!(got, a);
}
