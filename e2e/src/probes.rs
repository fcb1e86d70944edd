//! Readiness and liveness probes: `httpGet` (2xx/3xx is success) and
//! `tcpSocket`, sent from the node's namespace to the pod's address.

use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// One probe of one container and its consecutive-result counters.
#[derive(Debug)]
pub struct ProbeState {
    probe: Probe,
    port: Option<u16>,
    next: Instant,
    successes: i32,
    failures: i32,
}

/// What a due probe concluded.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Unchanged,
    Passed,
    Failed,
}

impl ProbeState {
    pub fn new(probe: &Probe, container: &Container, started: Instant) -> ProbeState {
        let port = probe
            .http_get
            .as_ref()
            .map(|h| &h.port)
            .or(probe.tcp_socket.as_ref().map(|t| &t.port))
            .and_then(|p| resolve_port(p, container));
        ProbeState {
            probe: probe.clone(),
            port,
            next: started + secs(probe.initial_delay_seconds, 0),
            successes: 0,
            failures: 0,
        }
    }

    pub fn due(&self, now: Instant) -> bool {
        now >= self.next
    }

    /// Runs the probe (when due) and applies success/failure thresholds.
    pub async fn run(&mut self, ip: Ipv4Addr) -> Verdict {
        let p = &self.probe;
        self.next = Instant::now() + secs(p.period_seconds, 10);
        let timeout = secs(p.timeout_seconds, 1);
        let ok = match self.port {
            None => false,
            Some(port) => tokio::time::timeout(timeout, attempt(p, ip, port))
                .await
                .unwrap_or(false),
        };
        if ok {
            self.failures = 0;
            self.successes += 1;
            if self.successes >= p.success_threshold.unwrap_or(1) {
                return Verdict::Passed;
            }
        } else {
            self.successes = 0;
            self.failures += 1;
            if self.failures >= p.failure_threshold.unwrap_or(3) {
                return Verdict::Failed;
            }
        }
        Verdict::Unchanged
    }
}

fn secs(v: Option<i32>, default: i32) -> Duration {
    Duration::from_secs(v.unwrap_or(default).max(0) as u64)
}

fn resolve_port(p: &IntOrString, c: &Container) -> Option<u16> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(name))
            .and_then(|cp| u16::try_from(cp.container_port).ok()),
    }
}

async fn attempt(p: &Probe, ip: Ipv4Addr, port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect((ip, port)).await else {
        return false;
    };
    let Some(h) = &p.http_get else {
        return true; // tcpSocket: connecting is the check
    };
    let path = h.path.as_deref().unwrap_or("/");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nUser-Agent: kube-probe/1.35\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 32];
    let mut n = 0;
    while n < 12 {
        match stream.read(&mut head[n..]).await {
            Ok(0) | Err(_) => return false,
            Ok(k) => n += k,
        }
    }
    // "HTTP/1.1 200 ..."
    let status = std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|s| s.parse::<u16>().ok());
    matches!(status, Some(200..=399))
}
