//! Limits on what clients can hold open or create (issue 13, items 8 and 12),
//! over real gRPC against the real broker binary: connections per listener,
//! idle connections, Receive streams per group and per client, queues per
//! topic, topics and groups per broker; and the metadata journal that makes
//! creating topics cost one small record each, which survives restarts, a
//! SIGKILL and a torn tail.

use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dduomq_client::Reason;
use dduomq_client::proto as pb;
use dduomq_client::proto::messaging_service_client::MessagingServiceClient;
use dduomq_client::{Admin, ClientError};
use dduomq_testkit::{Broker, Options, eventually};
use tonic::Code;
use tonic::transport::Channel;

/// What a raw connection's peer did within `wait`.
#[derive(Debug, PartialEq, Eq)]
enum Peer {
    /// Closed it (end of input or reset).
    Closed,
    /// Kept it open.
    Open,
}

/// Reads (discarding what the server sends, e.g. HTTP/2 SETTINGS) until the
/// server closes the connection or `wait` passes.
fn watch(conn: &mut TcpStream, wait: Duration) -> Peer {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Peer::Open;
        }
        conn.set_read_timeout(Some(left)).unwrap();
        match conn.read(&mut buf) {
            Ok(0) => return Peer::Closed,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Peer::Open;
            }
            Err(_) => return Peer::Closed, // reset
        }
    }
}

/// The value of one sample of the broker's metrics (0 when absent).
fn metric(b: &Broker, sample: &str) -> f64 {
    b.metric(sample).expect("metrics answer")
}

fn broker_with(config: &str) -> Broker {
    Broker::start_with(Options {
        config: Some(format!("[broker]\n{config}")),
        ..Options::default()
    })
}

async fn messaging(b: &Broker) -> MessagingServiceClient<Channel> {
    MessagingServiceClient::connect(format!("http://{}", b.grpc))
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_closed_and_the_broker_still_serves() {
    const MAX: usize = 50;
    const MAX_HTTP: usize = 8;
    let b = broker_with(&format!(
        "max_connections = {MAX}\nmax_http_connections = {MAX_HTTP}\nconnection_idle_timeout = \"10m\"\n"
    ));
    let mut held: Vec<TcpStream> = (0..MAX)
        .map(|_| TcpStream::connect(&b.grpc).unwrap())
        .collect();
    eventually(
        Duration::from_secs(20),
        "50 connections admitted",
        async || (metric(&b, "dduomq_grpc_connections") == MAX as f64).then_some(()),
    )
    .await;
    for i in 0..10 {
        let mut extra = TcpStream::connect(&b.grpc).unwrap();
        assert_eq!(
            watch(&mut extra, Duration::from_secs(10)),
            Peer::Closed,
            "connection {} over the limit of {MAX} was not closed",
            MAX + i + 1
        );
    }
    let refused = r#"dduomq_connections_closed_total{listener="grpc",reason="limit"}"#;
    assert_eq!(metric(&b, refused), 10.0);
    for (i, conn) in held.iter_mut().enumerate() {
        assert_eq!(
            watch(conn, Duration::from_millis(20)),
            Peer::Open,
            "admitted connection {i} was closed"
        );
    }
    // A freed place is taken by the next client, which is served.
    held.pop();
    eventually(
        Duration::from_secs(20),
        "a connection released",
        async || (metric(&b, "dduomq_grpc_connections") < MAX as f64).then_some(()),
    )
    .await;
    let info = Admin::connect(&b.grpc).unwrap().broker_info().await;
    assert!(info.is_ok(), "{info:?}");
    drop(held);

    // The HTTP port: the same rule with its own limit.
    let mut held: Vec<TcpStream> = (0..MAX_HTTP)
        .map(|_| TcpStream::connect(&b.http).unwrap())
        .collect();
    let mut extra = TcpStream::connect(&b.http).unwrap();
    assert_eq!(watch(&mut extra, Duration::from_secs(10)), Peer::Closed);
    for conn in &mut held {
        assert_eq!(watch(conn, Duration::from_millis(20)), Peer::Open);
    }
    drop(held);
    let refused = r#"dduomq_connections_closed_total{listener="http",reason="limit"}"#;
    let count = eventually(Duration::from_secs(20), "HTTP served again", async || {
        b.metric(refused)
    })
    .await;
    assert!(count >= 1.0, "{count}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_streaming_ones_kept() {
    let b = broker_with("connection_idle_timeout = \"1s\"\n");
    let started = Instant::now();
    let mut idle_grpc = TcpStream::connect(&b.grpc).unwrap();
    let mut idle_http = TcpStream::connect(&b.http).unwrap();
    assert_eq!(
        watch(&mut idle_grpc, Duration::from_secs(30)),
        Peer::Closed,
        "an idle gRPC connection was not closed within 30 s"
    );
    println!("idle gRPC connection closed after {:?}", started.elapsed());
    assert_eq!(
        watch(&mut idle_http, Duration::from_secs(30)),
        Peer::Closed,
        "an idle HTTP connection was not closed within 30 s"
    );
    println!("idle HTTP connection closed after {:?}", started.elapsed());
    let idle = r#"dduomq_connections_closed_total{listener="grpc",reason="idle"}"#;
    assert!(metric(&b, idle) >= 1.0);

    // A Receive stream on an empty topic sends nothing for a while: its
    // connection is not idle, and the stream still delivers afterwards.
    let mut client = messaging(&b).await;
    let mut stream = client
        .receive(pb::ReceiveRequest {
            group: "waiters".into(),
            topic: "quiet".into(),
            client_id: "waiter-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // Time must pass here: three idle timeouts without traffic on the stream.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut producer = messaging(&b).await;
    producer
        .send(pb::SendRequest {
            messages: vec![pb::OutgoingMessage {
                topic: "quiet".into(),
                body: "after the wait".into(),
                ..Default::default()
            }],
        })
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("delivery within 20 s")
        .expect("the stream is intact")
        .expect("a response");
    let bodies: Vec<_> = got.messages.into_iter().map(|m| m.body).collect();
    assert_eq!(bodies, vec![bytes::Bytes::from("after the wait")]);
}

async fn open_stream(
    client: &mut MessagingServiceClient<Channel>,
    group: &str,
    client_id: &str,
) -> Result<tonic::Streaming<pb::ReceiveResponse>, ClientError> {
    client
        .receive(pb::ReceiveRequest {
            group: group.into(),
            topic: "streams".into(),
            client_id: client_id.into(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(ClientError::from)
}

fn assert_exhausted(
    result: Result<impl std::fmt::Debug, ClientError>,
    reason: Reason,
    setting: &str,
) {
    let err = result.expect_err("refused");
    let ClientError::Broker { code, .. } = &err else {
        panic!("not a broker refusal: {err}");
    };
    assert_eq!(*code, Code::ResourceExhausted, "{err}");
    assert_eq!(err.reason(), Some(reason), "{err}");
    assert!(err.to_string().contains(setting), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_streams_over_the_limits_are_refused() {
    let b = broker_with("max_receive_streams_per_group = 4\nmax_receive_streams_per_client = 2\n");
    let mut client = messaging(&b).await;
    let mut open = Vec::new();
    for id in ["a", "a", "b", "b"] {
        open.push(open_stream(&mut client, "g", id).await.unwrap());
    }
    // A third stream of client a, on another group: the per-client limit.
    assert_exhausted(
        open_stream(&mut client, "other", "a").await,
        Reason::TooManyStreams,
        "max_receive_streams_per_client",
    );
    // A fifth stream of group g: the per-group limit.
    assert_exhausted(
        open_stream(&mut client, "g", "c").await,
        Reason::TooManyStreams,
        "max_receive_streams_per_group",
    );
    // Other groups and clients are not affected.
    open.push(open_stream(&mut client, "other", "c").await.unwrap());
    // A closed stream makes room.
    drop(open.remove(0));
    let reopened = eventually(Duration::from_secs(20), "a place freed", async || {
        open_stream(&mut client, "g", "c").await.ok()
    })
    .await;
    open.push(reopened);
    assert_eq!(open.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_and_groups_over_the_limits_are_refused() {
    let b = broker_with("max_topics = 5\nmax_groups = 2\n");
    let admin = Admin::connect(&b.grpc).unwrap();
    for g in ["g1", "g2"] {
        let group = pb::Group {
            name: g.into(),
            ..Default::default()
        };
        admin.create_group(group).await.unwrap();
    }
    let g3 = pb::Group {
        name: "g3".into(),
        ..Default::default()
    };
    assert_exhausted(
        admin.create_group(g3).await,
        Reason::TooManyGroups,
        "max_groups",
    );
    // Two dead-letter topics so far; three more topics fit.
    for t in ["t1", "t2", "t3"] {
        admin
            .create_topic(t, 1, pb::MessageType::Normal)
            .await
            .unwrap();
    }
    assert_exhausted(
        admin.create_topic("t4", 1, pb::MessageType::Normal).await,
        Reason::TooManyTopics,
        "max_topics",
    );
    // Auto-creation obeys the same limit.
    let mut client = messaging(&b).await;
    let sent = client
        .send(pb::SendRequest {
            messages: vec![pb::OutgoingMessage {
                topic: "t5".into(),
                body: "x".into(),
                ..Default::default()
            }],
        })
        .await
        .map_err(ClientError::from);
    assert_exhausted(sent, Reason::TooManyTopics, "max_topics");
    assert_eq!(admin.list_topics().await.unwrap().len(), 5);
    assert_eq!(admin.list_groups().await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_with_more_than_the_maximum_queues_is_refused() {
    let b = Broker::start(); // default: max_queues_per_topic = 1024
    let admin = Admin::connect(&b.grpc).unwrap();
    let err = admin
        .create_topic("wide", 1025, pb::MessageType::Normal)
        .await
        .expect_err("1025 queues refused");
    assert_eq!(err.reason(), Some(Reason::InvalidArgument), "{err}");
    assert!(err.to_string().contains("1 to 1024"), "{err}");
    assert!(admin.list_topics().await.unwrap().is_empty());
    admin
        .create_topic("wide", 1024, pb::MessageType::Normal)
        .await
        .unwrap();
}

/// Bytes the process has passed to write(2) and friends (`wchar`). The commit
/// log and consume queues are written through memory maps and do not count.
fn written_bytes(b: &Broker) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{}/io", b.pid())).unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("wchar: ")?.parse().ok())
        .unwrap()
}

/// Sends one tiny message and returns how long it took.
async fn send_one(client: &mut MessagingServiceClient<Channel>, topic: &str) -> Duration {
    let started = Instant::now();
    client
        .send(pb::SendRequest {
            messages: vec![pb::OutgoingMessage {
                topic: topic.into(),
                body: "tick".into(),
                ..Default::default()
            }],
        })
        .await
        .expect("send");
    started.elapsed()
}

fn p99(mut latencies: Vec<Duration>) -> Duration {
    latencies.sort();
    latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_many_topics_writes_each_once_while_sends_flow() {
    const TOPICS: usize = 2000;
    const CREATORS: usize = 16;
    let b = Broker::start();
    let admin = Admin::connect(&b.grpc).unwrap();
    admin
        .create_topic("flowing", 4, pb::MessageType::Normal)
        .await
        .unwrap();
    let mut client = messaging(&b).await;
    // Send latency with nothing else going on, for comparison.
    let mut alone = Vec::new();
    for _ in 0..300 {
        alone.push(send_one(&mut client, "flowing").await);
    }
    let before = written_bytes(&b);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let sender = tokio::spawn(async move {
        let mut latencies = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(300);
        while !*stopped.borrow() && Instant::now() < deadline {
            latencies.push(send_one(&mut client, "flowing").await);
        }
        latencies
    });
    let started = Instant::now();
    let creators: Vec<_> = (0..CREATORS)
        .map(|c| {
            let admin = admin.clone();
            tokio::spawn(async move {
                for i in (c..TOPICS).step_by(CREATORS) {
                    admin
                        .create_topic(&format!("many-{i:05}"), 1, pb::MessageType::Normal)
                        .await
                        .expect("create topic");
                }
            })
        })
        .collect();
    for c in creators {
        c.await.unwrap();
    }
    let creating = started.elapsed();
    stop.send_replace(true);
    let latencies = sender.await.unwrap();
    let written = written_bytes(&b) - before;
    let journal = std::fs::metadata(b.data_dir().join("metadata/topics.log"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "{TOPICS} topics in {creating:?}; {} sends meanwhile, p99 {:?} (alone: {:?}); \
         {written} bytes written, journal {journal} bytes",
        latencies.len(),
        p99(latencies.clone()),
        p99(alone),
    );
    assert!(!latencies.is_empty());
    // Rewriting the whole table per create would write ~160 MB; each create
    // and each tiny send (commit-log pwrite) writes well under 1 KiB.
    let bound = (TOPICS + latencies.len()) as u64 * 1024;
    assert!(
        written < bound,
        "{written} bytes written for {TOPICS} topic creates and {} sends",
        latencies.len()
    );
    assert!(
        journal > 0 && journal < TOPICS as u64 * 1024,
        "journal of {journal} bytes for {TOPICS} topics"
    );
    assert_eq!(admin.list_topics().await.unwrap().len(), TOPICS + 1);
}

fn journal_path(b: &Broker, table: &str) -> std::path::PathBuf {
    b.data_dir().join(format!("metadata/{table}.log"))
}

async fn names(admin: &Admin) -> (Vec<String>, Vec<String>) {
    let topics = admin.list_topics().await.unwrap();
    let groups = admin.list_groups().await.unwrap();
    (
        topics.into_iter().map(|t| t.name).collect(),
        groups.into_iter().map(|g| g.name).collect(),
    )
}

/// Starts the broker binary on `b`'s data directory (`b` stopped) and returns
/// its exit status and output, or kills it after 60 s.
fn start_expecting_refusal(b: &Broker) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(dduomq_testkit::sibling_binary("dduomq-broker"))
        .arg("--data-dir")
        .arg(b.data_dir())
        .args(["--grpc-addr", &b.grpc, "--http-addr", &b.http])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the broker started on a damaged journal");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    (out.status, text.into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_survives_restarts_sigkill_and_a_torn_journal_tail() {
    let mut b = Broker::start();
    let admin = Admin::connect(&b.grpc).unwrap();
    for i in 0..30 {
        admin
            .create_topic(&format!("kept-{i:02}"), 2, pb::MessageType::Normal)
            .await
            .unwrap();
    }
    for i in 0..10 {
        let group = pb::Group {
            name: format!("group-{i:02}"),
            ..Default::default()
        };
        admin.create_group(group).await.unwrap();
    }
    admin.delete_topic("kept-00").await.unwrap();
    admin.delete_group("group-00").await.unwrap();
    let expected = names(&admin).await;
    assert_eq!((expected.0.len(), expected.1.len()), (29 + 10, 9));

    b.kill();
    b.start_again();
    assert_eq!(names(&Admin::connect(&b.grpc).unwrap()).await, expected);
    b.restart();
    assert_eq!(names(&Admin::connect(&b.grpc).unwrap()).await, expected);

    // A record cut short at the end (a crash during its write) is dropped.
    b.stop();
    let journal = journal_path(&b, "topics");
    let intact = std::fs::read(&journal).expect("topics journal");
    let mut torn = intact.clone();
    torn.extend_from_slice(&200u32.to_le_bytes());
    torn.extend_from_slice(&[0xAB; 4]);
    torn.extend_from_slice(br#"{"put":{"name":"torn""#);
    std::fs::write(&journal, &torn).unwrap();
    b.start_again();
    let admin = Admin::connect(&b.grpc).unwrap();
    assert_eq!(names(&admin).await, expected);
    admin
        .create_topic("after-torn", 1, pb::MessageType::Normal)
        .await
        .unwrap();
    b.restart();
    let (topics, _) = names(&Admin::connect(&b.grpc).unwrap()).await;
    assert!(topics.contains(&"after-torn".to_string()));
    assert_eq!(topics.len(), expected.0.len() + 1);

    // A damaged record followed by intact ones stops the broker, naming the file.
    b.stop();
    let mut damaged = std::fs::read(&journal).unwrap();
    damaged[8 + 8 + 2] ^= 0xFF; // the first record's payload
    std::fs::write(&journal, &damaged).unwrap();
    let (status, output) = start_expecting_refusal(&b);
    assert!(!status.success());
    assert!(
        output.contains("topics.log") && output.contains("valid records follow"),
        "{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dirs_with_only_json_snapshots_load_unchanged() {
    let mut b = Broker::start();
    b.stop();
    // Metadata as brokers wrote it before the journal existed.
    let meta = b.data_dir().join("metadata");
    for table in ["topics", "groups"] {
        let _ = std::fs::remove_file(meta.join(format!("{table}.log")));
    }
    std::fs::write(
        meta.join("topics.json"),
        r#"[{"name":"legacy","queues":3,"message_type":"fifo"},
            {"name":"%DLQ%old-group","queues":1,"message_type":"normal"}]"#,
    )
    .unwrap();
    std::fs::write(
        meta.join("groups.json"),
        r#"[{"name":"old-group","mode":"broadcast","max_delivery_attempts":3,"retry_backoff_ms":[100]}]"#,
    )
    .unwrap();
    b.start_again();
    let admin = Admin::connect(&b.grpc).unwrap();
    let topics = admin.list_topics().await.unwrap();
    let legacy = topics
        .iter()
        .find(|t| t.name == "legacy")
        .expect("legacy topic");
    assert_eq!(legacy.queues, 3);
    assert_eq!(legacy.message_type, pb::MessageType::Fifo as i32);
    assert_eq!(topics.len(), 2);
    let groups = admin.list_groups().await.unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].name, "old-group");
    assert_eq!(groups[0].max_delivery_attempts, 3);
    // Changes go to the journal and survive with the snapshot.
    admin.delete_topic("legacy").await.unwrap();
    b.restart();
    let admin = Admin::connect(&b.grpc).unwrap();
    let (topics, groups) = names(&admin).await;
    assert_eq!(topics, vec!["%DLQ%old-group".to_string()]);
    assert_eq!(groups, vec!["old-group".to_string()]);
}
