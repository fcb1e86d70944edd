//! Authentication and authorization through the SDK, against real broker
//! processes with a users file: signed users do exactly what their grants
//! allow; the users file is re-read without a restart; `/metrics` can ask
//! for credentials; replicas follow their master with the brokers' own user.

#[path = "auth/users.rs"]
#[allow(dead_code)] // shared with the other auth suites
mod users;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::time::Duration;

use base64::Engine;
use dduomq_client::proto as pb;
use dduomq_client::{
    Admin, ClientError, Credentials, Message, ProducerBuilder, PushConsumerBuilder, Reason,
};
use dduomq_testkit::{Broker, bodies_received, eventually, http_get, sibling_binary};
use users::{ADMIN, BROKER, CONSUMER, EVERYONE, NOBODY, PUBLISHER, Secrets, TestUser};

fn admin_of(b: &Broker, user: Option<Credentials>) -> Admin {
    b.admin().with_credentials(user).expect("admin client")
}

fn producer(b: &Broker, user: Option<Credentials>) -> dduomq_client::Producer {
    let builder = ProducerBuilder::new(&b.grpc).send_timeout(Duration::from_secs(3));
    match user {
        Some(c) => builder.credentials(c),
        None => builder,
    }
    .build()
    .expect("producer")
}

async fn send_refusal(b: &Broker, user: Option<Credentials>, topic: &str) -> Reason {
    let err = producer(b, user)
        .send(Message::new(topic, b"refused".to_vec()))
        .await
        .expect_err("the send is refused");
    reason(&err)
}

fn reason(err: &ClientError) -> Reason {
    err.reason()
        .unwrap_or_else(|| panic!("no reason in {err:?}"))
}

async fn topic_names(admin: &Admin) -> BTreeSet<String> {
    admin
        .list_topics()
        .await
        .expect("list topics")
        .into_iter()
        .map(|t| t.name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_users_publish_and_consume_only_what_they_are_granted() {
    let secrets = Secrets::new(EVERYONE);
    let b = secrets.start_broker("");
    let admin = admin_of(&b, Some(ADMIN.credentials()));
    for topic in ["orders", "payroll"] {
        admin
            .create_topic(topic, 4, pb::MessageType::Normal)
            .await
            .expect("create topic");
    }

    // Who may not send, and why.
    assert_eq!(
        send_refusal(&b, None, "orders").await,
        Reason::MissingCredentials
    );
    assert_eq!(
        send_refusal(&b, Some(PUBLISHER.with_wrong_secret()), "orders").await,
        Reason::BadCredentials
    );
    assert_eq!(
        send_refusal(&b, Some(PUBLISHER.credentials()), "payroll").await,
        Reason::PermissionDenied
    );
    assert_eq!(
        send_refusal(&b, Some(CONSUMER.credentials()), "orders").await,
        Reason::PermissionDenied
    );

    let publisher = producer(&b, Some(PUBLISHER.credentials()));
    let sent: BTreeSet<Vec<u8>> = (0..50).map(|i| format!("order-{i}").into_bytes()).collect();
    for body in &sent {
        publisher
            .send(Message::new("orders", body.clone()))
            .await
            .expect("the publisher may publish to orders");
    }
    let payroll = admin.describe_topic("payroll").await.expect("describe");
    assert!(
        payroll.queues.iter().all(|q| q.max_offset == 0),
        "{payroll:?}"
    );

    // The consumer consumes orders as billing, and nothing else.
    for (user, group, topic) in [
        (CONSUMER, "thieves", "orders"),
        (CONSUMER, "billing", "payroll"),
        (PUBLISHER, "billing", "orders"),
    ] {
        let refused = PushConsumerBuilder::new(&b.grpc, group, topic)
            .credentials(user.credentials())
            .start(|_| async { Ok::<(), String>(()) })
            .await
            .expect_err("the subscription is refused");
        assert_eq!(
            reason(&refused),
            Reason::PermissionDenied,
            "{user:?} {group} {topic}"
        );
    }
    let consumer =
        PushConsumerBuilder::new(&b.grpc, "billing", "orders").credentials(CONSUMER.credentials());
    let got = bodies_received(consumer, sent.len(), Duration::from_secs(20)).await;
    assert_eq!(got.len(), sent.len(), "a message delivered twice");
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), sent);

    // Lists show what the caller may describe; admin actions need admin.
    let all = topic_names(&admin).await;
    assert!(all.contains("orders") && all.contains("payroll"), "{all:?}");
    assert!(
        topic_names(&admin_of(&b, Some(NOBODY.credentials())))
            .await
            .is_empty()
    );
    let nobody = admin_of(&b, Some(NOBODY.credentials()));
    let refused = nobody.set_draining(true).await.expect_err("not an admin");
    assert_eq!(reason(&refused), Reason::PermissionDenied);
    let refused = nobody
        .delete_topic("orders")
        .await
        .expect_err("not an admin");
    assert_eq!(reason(&refused), Reason::PermissionDenied);
    let info = admin.broker_info().await.expect("broker info");
    assert!(!info.draining);
    assert!(topic_names(&admin).await.contains("orders"));

    // Refusals are counted by reason.
    for reason in [
        "MISSING_CREDENTIALS",
        "BAD_CREDENTIALS",
        "PERMISSION_DENIED",
    ] {
        let sample = format!("dduomq_auth_refusals_total{{reason=\"{reason}\"}}");
        assert!(b.metric(&sample).is_some_and(|n| n >= 1.0), "{sample}");
    }
}

async fn sends(b: &Broker, user: Credentials) -> Result<(), Reason> {
    producer(b, Some(user))
        .send(Message::new("orders", b"x".to_vec()))
        .await
        .map(drop)
        .map_err(|e| reason(&e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_file_changes_apply_without_a_restart() {
    let secrets = Secrets::new(EVERYONE);
    let b = secrets.start_broker("");
    let old = PUBLISHER.credentials();
    let new = Credentials {
        access_key: "orders-pub-key-2".into(),
        secret_key: "rotated-secret-0123456789".into(),
    };
    assert_eq!(sends(&b, old.clone()).await, Ok(()));
    assert_eq!(sends(&b, new.clone()).await, Err(Reason::BadCredentials));

    // Rotation: a second key beside the first, then the first removed.
    let others: String = [ADMIN, CONSUMER, NOBODY, BROKER]
        .iter()
        .map(|u| secrets.entry(u, &[]))
        .collect();
    secrets.write_users_text(&format!("{others}{}", secrets.entry(&PUBLISHER, &[&new])));
    eventually(
        Duration::from_secs(10),
        "the second key accepted",
        async || (sends(&b, new.clone()).await == Ok(())).then_some(()),
    )
    .await;
    assert_eq!(sends(&b, old.clone()).await, Ok(()));
    let rotated = TestUser {
        access_key: "orders-pub-key-2",
        secret_key: "rotated-secret-0123456789",
        ..PUBLISHER
    };
    secrets.write_users_text(&format!("{others}{}", secrets.entry(&rotated, &[])));
    eventually(
        Duration::from_secs(10),
        "the first key refused",
        async || (sends(&b, old.clone()).await == Err(Reason::BadCredentials)).then_some(()),
    )
    .await;
    assert_eq!(sends(&b, new.clone()).await, Ok(()));

    // A file that does not load leaves the users as they were.
    secrets.write_users_text("[[users]]\nname = \"broken\"\n");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sends(&b, new.clone()).await, Ok(()));

    // The user removed: its access ends.
    secrets.write_users_text(&others);
    eventually(
        Duration::from_secs(10),
        "the removed user refused",
        async || (sends(&b, new.clone()).await == Err(Reason::BadCredentials)).then_some(()),
    )
    .await;
}

/// An HTTP/1.0 GET with basic authentication; the status code.
fn get_with_basic(addr: &str, path: &str, user: &TestUser) -> u16 {
    let token = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", user.access_key, user.secret_key));
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Basic {token}\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status line")
}

#[tokio::test]
async fn metrics_ask_for_credentials_when_protected() {
    let secrets = Secrets::new(EVERYONE);
    let b = secrets.start_broker("protect_metrics = true");
    assert_eq!(
        http_get(&b.http, "/healthz").map(|(code, _)| code),
        Some(200)
    );
    assert_eq!(
        http_get(&b.http, "/readyz").map(|(code, _)| code),
        Some(200)
    );
    assert_eq!(
        http_get(&b.http, "/metrics").map(|(code, _)| code),
        Some(401)
    );
    assert_eq!(get_with_basic(&b.http, "/metrics", &NOBODY), 403);
    let wrong = TestUser {
        secret_key: "wrong",
        ..ADMIN
    };
    assert_eq!(get_with_basic(&b.http, "/metrics", &wrong), 401);
    assert_eq!(get_with_basic(&b.http, "/metrics", &ADMIN), 200);
}

#[test]
fn a_broker_will_not_start_on_users_it_cannot_read() {
    let secrets = Secrets::new(EVERYONE);
    let plain = "[[users]]\nname = \"a\"\naccess_key = \"ak\"\nsecret_key = \"in plain text\"\n";
    let other_key = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(other_key.path(), "ab".repeat(32)).unwrap();
    let config = tempfile::NamedTempFile::new().unwrap();
    for (users, key_file, expected) in [
        (Some(plain), None, "must start with v1:"),
        (None, Some(other_key.path()), "does not open"),
        (Some("[[users]]\nname = 1"), None, "users file"),
    ] {
        if let Some(text) = users {
            secrets.write_users_text(text);
        } else {
            secrets.write_users(EVERYONE);
        }
        let key_file = key_file.unwrap_or(&secrets.key_file);
        std::fs::write(
            config.path(),
            format!(
                "[auth]\nenabled = true\nusers_file = {:?}\nsealing_key_file = {:?}\n",
                secrets.users_file, key_file
            ),
        )
        .unwrap();
        let data = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(sibling_binary("dduomq-broker"))
            .arg("--config")
            .arg(config.path())
            .arg("--data-dir")
            .arg(data.path())
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .output()
            .expect("run the broker");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started with {users:?}");
        assert!(stderr.contains(expected), "{expected:?} not in {stderr}");
        assert!(
            stderr.contains(&secrets.users_file.display().to_string()),
            "the file is not named: {stderr}"
        );
    }
}

/// Members of a replicated group sign their Follow streams with the brokers'
/// own user: quorum sends (the default ack policy) are acknowledged only
/// when replicas follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_follow_their_master_with_the_brokers_own_user() {
    let secrets = Secrets::new(EVERYONE);
    let members = users::static_group(&secrets.auth_table("broker_user = \"broker\""), None);
    let master = &members[0];
    admin_of(master, Some(ADMIN.credentials()))
        .create_topic("orders", 2, pb::MessageType::Normal)
        .await
        .expect("create topic");
    let publisher = producer(master, Some(PUBLISHER.credentials()));
    for i in 0..20 {
        publisher
            .send(Message::new(
                "orders",
                format!("replicated-{i}").into_bytes(),
            ))
            .await
            .expect("a quorum send is acknowledged");
    }
    let report = admin_of(master, Some(ADMIN.credentials()))
        .broker_info()
        .await
        .expect("broker info")
        .replication
        .expect("a replication report");
    assert_eq!(report.in_sync, vec![0, 1, 2], "{report:?}");
}

const METERED: TestUser = TestUser {
    name: "metered",
    access_key: "metered-key",
    secret_key: "metered-secret-0123456789",
    grants: r#"[{ actions = ["publish", "subscribe"], resources = ["topic:metered", "group:metered"] }]
quotas = { produce_bytes_per_second = 20000, consume_bytes_per_second = 20000 }"#,
};
const ONE_CONNECTION: TestUser = TestUser {
    name: "one-connection",
    access_key: "one-connection-key",
    secret_key: "one-connection-secret-0123456789",
    grants: r#"[{ actions = ["describe"], resources = ["topic:*"] }]
quotas = { connections = 1 }"#,
};

/// Byte rates shape a user's traffic to them (never faster; a send larger
/// than 30 s of its rate is refused), and a connection quota bounds its
/// connections until one closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_shape_a_users_bytes_and_bound_its_connections() {
    let secrets = Secrets::new(&[ADMIN, METERED, ONE_CONNECTION]);
    let b = secrets.start_broker("");
    admin_of(&b, Some(ADMIN.credentials()))
        .create_topic("metered", 2, pb::MessageType::Normal)
        .await
        .unwrap();
    // 100 KB at 20 KB/s with a second's burst: at least 4 s.
    let publisher = producer(&b, Some(METERED.credentials()));
    let sent: BTreeSet<Vec<u8>> = (0..100u8).map(|i| vec![i; 1000]).collect();
    let started = std::time::Instant::now();
    for body in &sent {
        publisher
            .send(Message::new("metered", body.clone()))
            .await
            .expect("a send within the quota is delayed, not refused");
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(3500),
        "100 KB sent in {took:?}"
    );
    // Incompressible: the quota counts the bytes sent (compressed, if they compress).
    let incompressible: Vec<u8> = (0..700_000).map(|_| rand::random::<u8>()).collect();
    let huge = publisher
        .send(Message::new("metered", incompressible))
        .await
        .expect_err("more than 30 s of the rate");
    assert_eq!(reason(&huge), Reason::QuotaExceeded);

    let started = std::time::Instant::now();
    let consumer =
        PushConsumerBuilder::new(&b.grpc, "metered", "metered").credentials(METERED.credentials());
    let got = bodies_received(consumer, sent.len(), Duration::from_secs(30)).await;
    let took = started.elapsed();
    // Rounds of at most a second's worth, each paid for before the next:
    // the first two come at once, the other 60 KB take 3 s.
    assert!(
        took >= Duration::from_millis(2500),
        "100 KB consumed in {took:?}"
    );
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), sent);
    for direction in ["produce", "consume"] {
        let sample = format!("dduomq_quota_throttled_seconds_total{{direction=\"{direction}\"}}");
        assert!(b.metric(&sample).is_some_and(|s| s > 0.5), "{sample}");
    }

    // One connection: a second is refused until the first closes.
    let first = admin_of(&b, Some(ONE_CONNECTION.credentials()));
    first.list_topics().await.expect("the first connection");
    let second = admin_of(&b, Some(ONE_CONNECTION.credentials()));
    let refused = second.list_topics().await.expect_err("a second connection");
    assert_eq!(reason(&refused), Reason::QuotaExceeded);
    first
        .list_topics()
        .await
        .expect("the first connection still serves");
    drop(first);
    eventually(
        Duration::from_secs(10),
        "the place given back",
        async || second.list_topics().await.ok(),
    )
    .await;
}

const CREATOR: TestUser = TestUser {
    name: "creator",
    access_key: "creator-key",
    secret_key: "creator-secret-0123456789",
    grants: r#"[{ actions = ["create", "describe"], resources = ["topic:*", "group:*"] }]"#,
};
const CHECKER: TestUser = TestUser {
    name: "checker",
    access_key: "checker-key",
    secret_key: "checker-secret-0123456789",
    grants: r#"[{ actions = ["publish"], resources = ["topic:orders", "group:shared"] }]"#,
};

/// Creating what exists changes it: that needs `update` too.
#[tokio::test]
async fn create_rights_do_not_change_what_exists() {
    let secrets = Secrets::new(&[ADMIN, CREATOR]);
    let b = secrets.start_broker("");
    let creator = admin_of(&b, Some(CREATOR.credentials()));
    creator
        .create_topic("fresh", 2, pb::MessageType::Normal)
        .await
        .expect("a new topic");
    let refused = creator
        .create_topic("fresh", 8, pb::MessageType::Normal)
        .await
        .expect_err("growing it is an update");
    assert_eq!(reason(&refused), Reason::PermissionDenied);
    let group = |attempts| pb::Group {
        name: "fresh".into(),
        max_delivery_attempts: attempts,
        ..Default::default()
    };
    creator.create_group(group(5)).await.expect("a new group");
    let refused = creator.create_group(group(1)).await.expect_err("an update");
    assert_eq!(reason(&refused), Reason::PermissionDenied);
    let admin = admin_of(&b, Some(ADMIN.credentials()));
    assert_eq!(admin.describe_topic("fresh").await.unwrap().queues.len(), 2);
    let described = admin.describe_group("fresh").await.unwrap().group.unwrap();
    assert_eq!(described.max_delivery_attempts, 5);
}

/// A transaction check carries its half message: a checker of the producer
/// group receives only checks of topics it may publish to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_checks_reach_only_checkers_of_their_topic() {
    use dduomq_client::proto::messaging_service_client::MessagingServiceClient;
    use dduomq_proto::signature::Signer;
    let secrets = Secrets::new(&[ADMIN, CHECKER]);
    let b = Broker::start_with(dduomq_testkit::Options {
        config: Some(format!(
            "[broker]\ntransaction_check_after = \"500ms\"\ntransaction_check_interval = \"500ms\"\n{}",
            secrets.auth_table("")
        )),
        ..Default::default()
    });
    admin_of(&b, Some(ADMIN.credentials()))
        .create_topic("payroll", 1, pb::MessageType::Transaction)
        .await
        .unwrap();
    let client = |user: &TestUser| {
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", b.grpc))
            .unwrap()
            .connect_lazy();
        MessagingServiceClient::with_interceptor(channel, Signer::new(Some(user.credentials())))
    };
    let checks = |user: &TestUser, client_id: &str| {
        let mut c = client(user);
        let request = pb::TransactionChecksRequest {
            producer_group: "shared".into(),
            client_id: client_id.into(),
        };
        async move { c.transaction_checks(request).await.unwrap().into_inner() }
    };
    let mut foreign = checks(&CHECKER, "foreign").await;
    client(&ADMIN)
        .send(pb::SendRequest {
            messages: vec![pb::OutgoingMessage {
                topic: "payroll".into(),
                body: b"salaries".to_vec().into(),
                transactional: true,
                producer_group: "shared".into(),
                ..Default::default()
            }],
        })
        .await
        .expect("a half message");
    let nothing = tokio::time::timeout(Duration::from_secs(3), foreign.message()).await;
    assert!(nothing.is_err(), "a foreign checker got {nothing:?}");
    let mut own = checks(&ADMIN, "own").await;
    let check = tokio::time::timeout(Duration::from_secs(20), own.message())
        .await
        .expect("the topic's checker is asked")
        .unwrap()
        .unwrap();
    assert_eq!(check.message.unwrap().body.as_ref(), b"salaries");
}
