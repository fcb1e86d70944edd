//! Runs the real `dduomq-broker` binary on free loopback ports with a temporary
//! data directory, waits for `/readyz`, and can stop it gracefully, SIGKILL it
//! and start it again on the same directory and ports.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::ops::Range;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A workspace binary built alongside this test (`make test` builds every
/// binary of the workspace before running tests).
pub fn sibling_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build --workspace --bins` (make test does)",
        bin.display()
    );
    bin
}

/// A free loopback port outside the kernel's ephemeral range, so that no
/// client connection (which takes ephemeral ports) can occupy it, or connect to
/// itself on it, while a broker restarts there.
pub fn free_port() -> u16 {
    // Handed out in turn from a random start, so tests running at once in one
    // process never pick the same port between this check and their bind.
    static NEXT: LazyLock<AtomicU32> =
        LazyLock::new(|| AtomicU32::new(rand::random_range(0..10000)));
    let window = test_ports();
    loop {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % window.len() as u32;
        let port = (window.start + offset) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// At least this many ports to pick from on one side of the ephemeral range.
const MIN_TEST_PORTS: u32 = 2000;

/// The ports tests pick from: 10000 up to the ephemeral range's start, or
/// above its end when it starts lower. A range leaving neither side room has
/// them picked from 10000 up, inside it: a restart may then race a client.
fn test_ports() -> Range<u32> {
    let ephemeral: Vec<u32> = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let (start, end) = match ephemeral[..] {
        [start, end] => (start, end),
        _ => (32768, 60999),
    };
    if start >= 10000 + MIN_TEST_PORTS {
        10000..start
    } else if end + MIN_TEST_PORTS <= 65535 {
        end + 1..65536
    } else {
        10000..10000 + MIN_TEST_PORTS
    }
}

/// How to start a broker.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `async` (default) or `sync`.
    pub flush: Option<&'static str>,
    /// Extra TOML merged over the defaults (e.g. `[broker]\nsession_timeout = "1s"`).
    pub config: Option<String>,
    pub auto_create_topics: Option<bool>,
    /// The address clients are told to dial (routes).
    pub advertised_address: Option<String>,
    /// The gRPC port, when the test must know it before the broker starts
    /// (e.g. members of a static replicated group list each other); else a
    /// free one.
    pub grpc_port: Option<u16>,
    /// The CA (PEM) of the broker's certificate, when its listeners have TLS:
    /// readiness is then checked over TLS.
    pub tls_ca: Option<Vec<u8>>,
}

/// Runs blocking process control without stalling an async test's runtime (tests
/// that stop or restart brokers use the multi-threaded runtime).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// A running broker process.
#[derive(Debug)]
pub struct Broker {
    child: Option<Child>,
    pub grpc: String,
    pub http: String,
    dir: tempfile::TempDir,
    options: Options,
}

impl Broker {
    pub fn start() -> Broker {
        Broker::start_with(Options::default())
    }

    pub fn start_with(options: Options) -> Broker {
        let mut b = Broker {
            child: None,
            grpc: format!("127.0.0.1:{}", options.grpc_port.unwrap_or_else(free_port)),
            http: format!("127.0.0.1:{}", free_port()),
            dir: tempfile::tempdir().expect("temp dir"),
            options,
        };
        b.spawn();
        b
    }

    /// An admin client of this broker.
    pub fn admin(&self) -> dduomq_client::Admin {
        dduomq_client::Admin::connect(&self.grpc).expect("admin client")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The broker process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("broker running").id()
    }

    /// The broker's resident memory (`VmRSS` of /proc/<pid>/status), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    /// The broker's configuration: the test's own, with the disk-usage refusal
    /// lifted unless the test sets it, so a broker under test does not refuse
    /// writes because the shared machine's disk happens to be nearly full.
    fn config_text(&self) -> String {
        let mut config: toml::Table = self
            .options
            .config
            .as_deref()
            .map(|text| text.parse().expect("test config is TOML"))
            .unwrap_or_default();
        let store = config
            .entry("store")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .expect("[store] is a table");
        store
            .entry("disk_usage_limit")
            .or_insert(toml::Value::Float(1.0));
        config.to_string()
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(sibling_binary("dduomq-broker"));
        cmd.arg("--data-dir")
            .arg(self.data_dir())
            .args(["--grpc-addr", &self.grpc, "--http-addr", &self.http])
            .env(
                "RUST_LOG",
                std::env::var("BROKER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stderr(Stdio::inherit());
        // Broker logs go to stdout; show them when BROKER_LOG asks for them.
        if std::env::var_os("BROKER_LOG").is_none() {
            cmd.stdout(Stdio::null());
        }
        if let Some(flush) = self.options.flush {
            cmd.args(["--flush", flush]);
        }
        if let Some(addr) = &self.options.advertised_address {
            cmd.args(["--advertised-address", addr]);
        }
        if let Some(auto) = self.options.auto_create_topics {
            cmd.args(["--auto-create-topics", &auto.to_string()]);
        }
        let path = self.dir.path().join("broker.toml");
        std::fs::write(&path, self.config_text()).expect("write config");
        cmd.arg("--config").arg(path);
        self.child = Some(cmd.spawn().expect("spawn dduomq-broker"));
        blocking(|| self.wait_ready(Duration::from_secs(30)));
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().expect("try_wait"))
            {
                panic!("broker exited during startup: {status}");
            }
            let ready = match &self.options.tls_ca {
                Some(ca) => https_get(&self.http, "/readyz", ca, None),
                None => http_get(&self.http, "/readyz"),
            };
            if ready.is_some_and(|(code, _)| code == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "broker not ready within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: plain syscall on a child we own.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let status = blocking(|| child.wait()).expect("wait");
            assert!(status.success(), "broker did not stop cleanly: {status}");
        }
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = blocking(|| child.wait());
        }
    }

    /// SIGSTOP: the process stands still (a hung or partitioned broker)
    /// until [`Broker::resume`].
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`Broker::pause`].
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: i32) {
        // SAFETY: plain syscall on a child we own.
        let sent = unsafe { libc::kill(self.pid() as i32, signal) };
        assert_eq!(sent, 0, "signal {signal} to the broker");
    }

    /// Starts the broker again on the same data directory and ports.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Starts it again after [`Broker::kill`].
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "broker still running");
        self.spawn();
    }

    /// The value of one sample of its `/metrics` (`name{labels}` as written
    /// there; 0 when absent), or `None` while its HTTP port does not answer.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        let (_, text) = http_get(&self.http, "/metrics")?;
        Some(
            text.lines()
                .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or(0.0),
        )
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A minimal HTTP/1.0 GET; `(status code, body)`.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    status_and_body(&text)
}

/// The status code and body of an HTTP/1 response.
fn status_and_body(text: &str) -> Option<(u16, String)> {
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    Some((code, body.to_string()))
}

/// [`http_get`] over TLS, verifying the server with `ca_pem` (for
/// `localhost`), with an `Authorization` header if given.
pub fn https_get(
    addr: &str,
    path: &str,
    ca_pem: &[u8],
    authorization: Option<&str>,
) -> Option<(u16, String)> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.ok()?).ok()?;
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .ok()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").ok()?;
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).ok()?;
    let tcp = TcpStream::connect(addr).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n{auth}\r\n").ok()?;
    let mut text = String::new();
    // A server closing without close_notify still gave its answer.
    let _ = s.read_to_string(&mut text);
    status_and_body(&text)
}

/// Creates topics on a broker: `(name, queues, type)` each.
pub async fn create_topics(b: &Broker, topics: &[(&str, u32, dduomq_client::proto::MessageType)]) {
    let admin = dduomq_client::Admin::connect(&b.grpc).expect("admin client");
    for (name, queues, kind) in topics {
        admin
            .create_topic(name, *queues, *kind)
            .await
            .expect("create topic");
    }
}

/// Messages stored in a topic: the sum of its queues' max offsets.
pub async fn stored(b: &Broker, topic: &str) -> u64 {
    dduomq_client::Admin::connect(&b.grpc)
        .expect("admin client")
        .describe_topic(topic)
        .await
        .expect("describe topic")
        .queues
        .iter()
        .map(|q| q.max_offset)
        .sum()
}
