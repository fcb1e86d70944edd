//! TLS on the broker's listeners, against real broker processes with
//! certificates made here: plaintext and a wrong CA are refused; a client
//! certificate authenticates its user (mutual TLS); a renewed certificate is
//! served without a restart; replicas follow their master over mutual TLS.

#[path = "auth/pki.rs"]
#[allow(dead_code)] // shared with the other TLS suites
mod pki;
#[path = "auth/users.rs"]
#[allow(dead_code)] // shared with the other auth suites
mod users;

use std::time::Duration;

use dduomq_client::proto as pb;
use dduomq_client::{
    Access, Admin, AdminTimeouts, ClientError, Message, ProducerBuilder, Reason, TlsOptions,
};
use dduomq_testkit::{Broker, Options, eventually, http_get, https_get};
use pki::{Ca, TlsFiles, replace};
use users::{ADMIN, BROKER, EVERYONE, PUBLISHER, Secrets};

fn broker(config: String, ca: &Ca) -> Broker {
    Broker::start_with(Options {
        config: Some(config),
        tls_ca: Some(ca.pem().into_bytes()),
        ..Options::default()
    })
}

async fn send(b: &Broker, access: Access, topic: &str) -> Result<(), ClientError> {
    ProducerBuilder::new(&b.grpc)
        .access(access)
        .send_timeout(Duration::from_secs(3))
        .build()?
        .send(Message::new(topic, b"over tls".to_vec()))
        .await
        .map(drop)
}

fn over(tls: TlsOptions) -> Access {
    Access {
        tls: Some(tls),
        ..Access::default()
    }
}

fn admin(b: &Broker, access: &Access) -> Admin {
    Admin::connect_as(&b.grpc, AdminTimeouts::default(), access).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_and_a_wrong_ca_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cluster CA");
    let files = TlsFiles::write(dir.path(), &ca, &ca.server());
    let b = broker(files.table("none"), &ca);

    send(&b, over(ca.trusted_by(None)), "orders")
        .await
        .expect("a send over TLS");
    let plain = send(&b, Access::default(), "orders")
        .await
        .expect_err("plaintext");
    assert!(plain.is_retryable() || plain.is_unreachable(), "{plain:?}");
    let stranger = Ca::new("another CA");
    let wrong = send(&b, over(stranger.trusted_by(None)), "orders")
        .await
        .expect_err("wrong CA");
    assert!(wrong.is_retryable() || wrong.is_unreachable(), "{wrong:?}");
    let topics = admin(&b, &over(ca.trusted_by(None)))
        .list_topics()
        .await
        .unwrap();
    assert_eq!(topics.len(), 1, "{topics:?}");

    // HTTP too: over TLS only.
    let ca_pem = ca.pem().into_bytes();
    assert_eq!(
        https_get(&b.http, "/healthz", &ca_pem, None).map(|r| r.0),
        Some(200)
    );
    assert_ne!(http_get(&b.http, "/healthz").map(|r| r.0), Some(200));
    let stranger_pem = stranger.pem().into_bytes();
    assert_eq!(https_get(&b.http, "/healthz", &stranger_pem, None), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_authenticates_its_user() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cluster CA");
    let files = TlsFiles::write(dir.path(), &ca, &ca.server());
    let secrets = Secrets::new(EVERYONE);
    let b = broker(
        format!("{}{}", files.table("required"), secrets.auth_table("")),
        &ca,
    );
    let as_admin = over(ca.trusted_by(Some(&ca.client(ADMIN.name))));
    for topic in ["orders", "payroll"] {
        admin(&b, &as_admin)
            .create_topic(topic, 2, pb::MessageType::Normal)
            .await
            .expect("the admin's certificate is the admin");
    }
    let publisher = over(ca.trusted_by(Some(&ca.client(PUBLISHER.name))));
    send(&b, publisher.clone(), "orders")
        .await
        .expect("the publisher's certificate may publish");
    let refused = send(&b, publisher, "payroll")
        .await
        .expect_err("not granted");
    assert_eq!(
        refused.reason(),
        Some(Reason::PermissionDenied),
        "{refused:?}"
    );
    let unknown = over(ca.trusted_by(Some(&ca.client("nobody-we-know"))));
    let refused = send(&b, unknown, "orders").await.expect_err("no such user");
    assert_eq!(
        refused.reason(),
        Some(Reason::BadCredentials),
        "{refused:?}"
    );
    // Required: no certificate, no connection.
    let refused = send(&b, over(ca.trusted_by(None)), "orders")
        .await
        .expect_err("no certificate");
    assert!(
        refused.is_retryable() || refused.is_unreachable(),
        "{refused:?}"
    );
    let other_ca = Ca::new("another CA");
    let foreign = TlsOptions {
        identity: other_ca
            .trusted_by(Some(&other_ca.client(PUBLISHER.name)))
            .identity,
        ..ca.trusted_by(None)
    };
    let refused = send(&b, over(foreign), "orders")
        .await
        .expect_err("a foreign certificate");
    assert!(
        refused.is_retryable() || refused.is_unreachable(),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let files = TlsFiles::write(dir.path(), &old_ca, &old_ca.server());
    let b = broker(files.table("none"), &old_ca);
    send(&b, over(old_ca.trusted_by(None)), "orders")
        .await
        .expect("the old certificate");

    // Renewed from another CA: a new key first (the pair does not load until
    // the certificate follows), then the certificate.
    let renewed = new_ca.server();
    replace(&files.key, &renewed.key_pem);
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(&b, over(old_ca.trusted_by(None)), "orders")
        .await
        .expect("a half-written pair is not used");
    replace(&files.cert, &renewed.cert_pem);
    eventually(
        Duration::from_secs(10),
        "the renewed certificate served",
        async || send(&b, over(new_ca.trusted_by(None)), "orders").await.ok(),
    )
    .await;
    let stale = send(&b, over(old_ca.trusted_by(None)), "orders")
        .await
        .expect_err("old CA");
    assert!(stale.is_retryable() || stale.is_unreachable(), "{stale:?}");
}

/// Replicas dial their master over mutual TLS with their own certificate and
/// sign with the brokers' user: quorum sends are acknowledged only when they
/// follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_follow_their_master_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cluster CA");
    let files = TlsFiles::write(dir.path(), &ca, &ca.server());
    let secrets = Secrets::new(EVERYONE);
    let config = format!(
        "{}{}",
        files.table("required"),
        secrets.auth_table(&format!("broker_user = {:?}", BROKER.name)),
    );
    let members = users::static_group(&config, Some(ca.pem().as_bytes()));
    let as_admin = over(ca.trusted_by(Some(&ca.client(ADMIN.name))));
    let master = admin(&members[0], &as_admin);
    master
        .create_topic("orders", 2, pb::MessageType::Normal)
        .await
        .unwrap();
    let publisher = over(ca.trusted_by(Some(&ca.client(PUBLISHER.name))));
    for _ in 0..10 {
        send(&members[0], publisher.clone(), "orders")
            .await
            .expect("a quorum send");
    }
    let report = master.broker_info().await.unwrap().replication.unwrap();
    assert_eq!(report.in_sync, vec![0, 1, 2], "{report:?}");
}
