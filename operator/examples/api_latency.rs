//! Measures what sizes the replication controller's leases: the latency of the
//! API server calls in one controller round (a GET of a group's record and a
//! compare-and-swap replace of it), as percentiles over many rounds. Run it
//! against the e2e control plane, with and without CPU load on the machine
//! (docs/architecture.md, "Replication: the controller", gives the command
//! and the figures):
//!
//! `api_latency [ROUNDS]` with KUBECONFIG pointing at the API server.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dduomq_operator::cas::{CasConfigMap, Swap};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(2000);
    let client = kube::Client::try_default().await?;
    let cell = CasConfigMap::new(client, "default", "dduomq-api-latency");
    let (mut reads, mut writes) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let started = Instant::now();
        let read = cell.read().await?;
        reads.push(started.elapsed());
        let data = BTreeMap::from([("round".to_string(), round.to_string())]);
        let started = Instant::now();
        match cell.write(&read, data).await? {
            Swap::Written(_) => writes.push(started.elapsed()),
            Swap::Conflict => anyhow::bail!("nobody else writes {}", cell.name()),
        }
    }
    report("GET", &mut reads);
    report("CAS replace", &mut writes);
    Ok(())
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "{what}: n={} p50={:?} p99={:?} p99.9={:?} max={:?}",
        samples.len(),
        at(0.5),
        at(0.99),
        at(0.999),
        samples[samples.len() - 1]
    );
}
