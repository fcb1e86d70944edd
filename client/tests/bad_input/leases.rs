//! Item 10 of issue #13: lease lengths a client asks for are capped, and the
//! saved consumer progress stays bounded by the leases held.

use super::*;

/// Messages from a Receive stream until `n` arrived (bounded in time).
async fn next_messages(stream: &mut Streaming<pb::ReceiveResponse>, n: usize) -> Vec<pb::Message> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while out.len() < n {
        let r = tokio::time::timeout_at(deadline, stream.message())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} messages within 60 s", out.len()))
            .expect("stream")
            .expect("stream open");
        out.extend(r.messages);
    }
    out
}

#[tokio::test]
async fn invisible_durations_above_the_cap_are_refused() {
    let b = Broker::start();
    let mut m = messaging(&b).await;
    send(&mut m, vec![outgoing("leases", "one")]).await.unwrap();
    let before = state(&b).await;
    for ms in [MAX_INVISIBLE_MS + 1, u32::MAX] {
        let r = m.receive(receive_request("lessee", "leases", ms)).await;
        assert_invalid(r, "invisible_duration_ms");
    }
    assert_eq!(state(&b).await, before, "no group created by a refusal");
    // The cap itself is allowed.
    let mut stream = m
        .receive(receive_request("lessee", "leases", MAX_INVISIBLE_MS))
        .await
        .unwrap()
        .into_inner();
    let leased = next_messages(&mut stream, 1).await.remove(0);
    let extend = |ms: u32| pb::ChangeInvisibleDurationRequest {
        group: "lessee".into(),
        topic: "leases".into(),
        receipt_handle: leased.receipt_handle.clone(),
        invisible_duration_ms: ms,
    };
    let r = m.change_invisible_duration(extend(u32::MAX)).await;
    assert_invalid(r, "invisible_duration_ms");
    let until = m
        .change_invisible_duration(extend(MAX_INVISIBLE_MS))
        .await
        .unwrap()
        .into_inner()
        .invisible_until_ms;
    assert!(until > leased.invisible_until_ms - 1000);
    assert_serves(&b).await;
}

fn offsets_file(b: &Broker) -> PathBuf {
    b.data_dir().join("metadata/offsets.json")
}

/// The saved progress of `group`, as JSON.
fn saved_entry(b: &Broker, group: &str) -> Option<serde_json::Value> {
    let text = std::fs::read(offsets_file(b)).ok()?;
    let json: serde_json::Value = serde_json::from_slice(&text).ok()?;
    json["entries"]
        .as_array()?
        .iter()
        .find(|e| e["group"] == group)
        .cloned()
}

async fn ack(
    m: &mut MessagingServiceClient<Channel>,
    group: &str,
    topic: &str,
    handles: Vec<String>,
) {
    let results = m
        .ack(pb::AckRequest {
            group: group.into(),
            topic: topic.into(),
            receipt_handles: handles,
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    for r in results {
        assert_eq!(r.error_reason, "", "{}", r.error_message);
    }
}

async fn committed(b: &Broker, group: &str) -> (u64, u32) {
    let a = Admin::connect(&b.grpc).unwrap();
    let d = a.describe_group(group).await.unwrap();
    let q = &d.queues[0];
    (q.committed_offset, q.in_flight)
}

#[tokio::test]
async fn saved_progress_is_bounded_by_leases_and_rewritten_only_on_change() {
    const ACKED: u64 = 5_000;
    let mut b = Broker::start_with(Options {
        config: Some("[broker]\noffsets_persist_interval = \"100ms\"\n".into()),
        ..Default::default()
    });
    dduomq_testkit::create_topics(&b, &[("held", 1, pb::MessageType::Normal)]).await;
    let mut m = messaging(&b).await;
    for chunk in 0..=ACKED / 500 {
        let n = if chunk == ACKED / 500 { 1 } else { 500 };
        let batch = (0..n)
            .map(|i| outgoing("held", &format!("m{chunk}-{i}")))
            .collect();
        send(&mut m, batch).await.unwrap();
    }
    // One lease held for 12 hours (offset 0), the other 5,000 acked.
    let mut stream = m
        .receive(receive_request("keeper", "held", MAX_INVISIBLE_MS))
        .await
        .unwrap()
        .into_inner();
    let mut acked = 0;
    while acked < ACKED {
        let handles: Vec<String> = next_messages(&mut stream, 1)
            .await
            .into_iter()
            .filter(|d| d.offset != 0)
            .map(|d| d.receipt_handle)
            .collect();
        acked += handles.len() as u64;
        ack(&mut m, "keeper", "held", handles).await;
    }
    // Saved once the acks are in (the earlier format listed each acked offset).
    let entry = eventually(Duration::from_secs(15), "the acks saved", async || {
        saved_entry(&b, "keeper").filter(|e| {
            let open = e["open"].as_array().map(Vec::len);
            (e["high"] == ACKED + 1 && open == Some(1))
                || e["extras"]["done"].as_array().map(Vec::len) == Some(ACKED as usize)
        })
    })
    .await;
    let size = std::fs::metadata(offsets_file(&b)).unwrap().len();
    assert!(
        size < 4096,
        "offsets.json is {size} bytes: {}",
        head(&entry.to_string())
    );
    assert_eq!(entry["committed"], 0);
    assert_eq!(entry["open"][0]["offset"], 0);
    // Nothing changes: 10 save intervals pass without a rewrite (a save
    // replaces the file, so its inode would change).
    let inode = std::fs::metadata(offsets_file(&b)).unwrap().ino();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        std::fs::metadata(offsets_file(&b)).unwrap().ino(),
        inode,
        "offsets.json rewritten although no progress moved"
    );
    drop(stream);

    // After a restart only the held message comes again, as a second attempt.
    b.restart();
    let mut m = messaging(&b).await;
    let mut stream = m
        .receive(receive_request("keeper", "held", 30_000))
        .await
        .unwrap()
        .into_inner();
    let again = next_messages(&mut stream, 1).await.remove(0);
    assert_eq!((again.offset, again.delivery_attempt), (0, 2));
    ack(&mut m, "keeper", "held", vec![again.receipt_handle]).await;
    eventually(
        Duration::from_secs(15),
        "everything committed",
        async || (committed(&b, "keeper").await == (ACKED + 1, 0)).then_some(()),
    )
    .await;
    drop(stream);

    // A file in the earlier form (done marks) still loads: offset 0 (three
    // deliveries so far) is open, 1..4999 done, 5000 never delivered.
    b.stop();
    let done: Vec<u64> = (1..ACKED).collect();
    let legacy = serde_json::json!({"entries": [{
        "group": "keeper", "topic": "held", "member": "", "queue_id": 0, "committed": 0,
        "extras": {"done": done, "attempts": [[0, 3]]}
    }]});
    std::fs::write(offsets_file(&b), legacy.to_string()).unwrap();
    b.start_again();
    let mut m = messaging(&b).await;
    let mut stream = m
        .receive(receive_request("keeper", "held", 30_000))
        .await
        .unwrap()
        .into_inner();
    let mut redelivered: Vec<(u64, u32)> = next_messages(&mut stream, 2)
        .await
        .iter()
        .map(|d| (d.offset, d.delivery_attempt))
        .collect();
    redelivered.sort_unstable();
    assert_eq!(redelivered, vec![(0, 4), (ACKED, 1)]);
    assert_serves(&b).await;
}
