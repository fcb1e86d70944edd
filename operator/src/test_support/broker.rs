//! A real `dduomq-broker` process on loopback for the reconcile tests: a minimal
//! launcher (start, wait until it answers, kill on drop); the client tests'
//! harness has the full one.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use dduomq_client::Admin;

/// How long a broker may take to start answering.
const STARTUP: Duration = Duration::from_secs(30);

/// A running broker with its own data directory.
#[derive(Debug)]
pub struct Broker {
    child: Child,
    /// `127.0.0.1:<port>` of its gRPC API.
    pub address: String,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// Starts a broker and waits until it answers admin calls.
    pub async fn start() -> Broker {
        let dir = tempfile::tempdir().expect("temp dir");
        let address = format!("127.0.0.1:{}", free_port());
        let child = Command::new(broker_binary())
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--grpc-addr", &address])
            .args(["--http-addr", &format!("127.0.0.1:{}", free_port())])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn dduomq-broker");
        let mut broker = Broker {
            child,
            address,
            _dir: dir,
        };
        broker.wait_until_answering().await;
        broker
    }

    /// An admin client of this broker.
    pub fn admin(&self) -> Admin {
        Admin::connect(&self.address).expect("admin client")
    }

    async fn wait_until_answering(&mut self) {
        let admin = self.admin();
        let deadline = Instant::now() + STARTUP;
        while admin.broker_info().await.is_err() {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("broker exited during startup: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "broker not answering within {STARTUP:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The workspace's broker binary, next to this test executable's directory.
fn broker_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .join("dduomq-broker");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p dduomq-broker --bins`",
        bin.display()
    );
    bin
}

/// A free loopback port below the kernel's ephemeral range, so no outgoing
/// connection can take it between this check and the broker's bind. Ports are
/// handed out in turn from a random start, so tests running at once never pick
/// the same one.
pub fn free_port() -> u16 {
    static NEXT: LazyLock<AtomicU16> =
        LazyLock::new(|| AtomicU16::new(rand::random_range(0..10000)));
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768)
        .max(12000);
    loop {
        let port = 10000 + NEXT.fetch_add(1, Ordering::Relaxed) % (low - 10000);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
