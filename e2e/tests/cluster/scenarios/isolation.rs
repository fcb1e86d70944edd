//! Scenario 11: a master cut off from the API server, its replicas and the
//! operators (nftables rules in its pod's network namespace drop that
//! traffic; clients and the kubelet's probes still reach it, so it stays
//! Ready) under quorum-acked load. It stops acknowledging, a new master is
//! elected, and no send is acknowledged by the isolated master once the new
//! epoch is recorded. Healed, the old master follows the new one (truncating
//! what it wrote and never got acknowledged) and rejoins the in-sync set.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dduomq_client::Producer;
use dduomq_client::proto as pb;
use dduomq_operator::replication::timing::LEASE;
use dduomq_testkit::{
    Load, Step, acks_flowing, all_acked_consumed, body_of, eventually_every, secs,
};
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use serde_json::json;

use super::Cluster;
use crate::groups::{FACTOR, replica_state, wait_healthy, wait_routed_to_masters, wait_succession};
use crate::pods::{BrokerPod, View, broker_pod};
use crate::{LOAD, NS, POLL, TOPIC};

/// The nftables table the scenario adds to the pod's network namespace.
const TABLE: &str = "dduomq_e2e_isolation";

/// Runs `nft` in the network namespace of `pod`'s process.
async fn nft_in_pod(pod: &BrokerPod, script: &str) {
    let netns = format!("--net=/proc/{}/ns/net", pod.pid());
    let mut child = tokio::process::Command::new("nsenter")
        .args([netns.as_str(), "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run nsenter … nft (install nftables): {e}"));
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(script.as_bytes())
            .await
            .expect("nft script");
    }
    let status = child.wait().await.expect("nft");
    assert!(
        status.success(),
        "nft in {} failed ({status}):\n{script}",
        pod.name
    );
}

/// One message sent straight to `address` (no routing), to queue 0 of the
/// suite's topic; the broker's refusal if it refuses.
async fn send_straight_to(address: &str, body: Vec<u8>) -> Result<(), tonic::Status> {
    let mut client =
        pb::messaging_service_client::MessagingServiceClient::connect(format!("http://{address}"))
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut request = tonic::Request::new(pb::SendRequest {
        messages: vec![pb::OutgoingMessage {
            topic: TOPIC.into(),
            body: body.into(),
            queue_id: Some(0),
            ..Default::default()
        }],
    });
    request.metadata_mut().insert(
        dduomq_proto::namespace::NAMESPACE_METADATA,
        NS.parse().expect("a namespace is a header value"),
    );
    client.send(request).await.map(drop)
}

/// Rules that drop the pod's traffic with the API server and every other pod,
/// but not with the node (the gateway: the test's clients and the probes).
fn isolation_rules(pod_ip: Ipv4Addr, apiserver: &str) -> String {
    let [a, b, c, _] = pod_ip.octets();
    let subnet = format!("{a}.{b}.{c}.0/24");
    let gateway = format!("{a}.{b}.{c}.1");
    format!(
        "table inet {TABLE} {{\n\
         \tchain input {{\n\t\ttype filter hook input priority 0; policy accept;\n\
         \t\tip saddr {subnet} ip saddr != {gateway} drop\n\t}}\n\
         \tchain output {{\n\t\ttype filter hook output priority 0; policy accept;\n\
         \t\tip daddr {apiserver} drop\n\
         \t\tip daddr {subnet} ip daddr != {gateway} drop\n\t}}\n}}\n"
    )
}

impl Cluster {
    /// Scenario 11, on group `group`.
    pub async fn isolate_master(&self, view: &Arc<View>, producer: &Producer, group: u32) {
        let step = Step::start(
            &self.report,
            "11-master-isolated",
            "cut a master off from the API server and its replicas under load → it stops acknowledging, a new master is elected; healed, it follows; nothing acknowledged by it in the new epoch",
        );
        let groups = view.pods().len() as u32 / FACTOR;
        let before = wait_healthy(&self.client, view, group, Duration::from_secs(120)).await;
        let old = before
            .master_ordinal()
            .expect("a healthy group has a master");
        let pod = broker_pod(&self.client, old)
            .await
            .expect("the master's pod");
        let ip: Ipv4Addr = pod
            .ip
            .as_deref()
            .expect("pod IP")
            .parse()
            .expect("an IPv4 pod IP");
        let apiserver = Api::<Service>::namespaced(self.client.clone(), "default")
            .get("kubernetes")
            .await
            .expect("the kubernetes Service")
            .spec
            .and_then(|s| s.cluster_ip)
            .expect("the API server's ClusterIP");

        let load = Load::start(producer.clone(), self.ledger.clone(), LOAD);
        acks_flowing(&self.ledger, 200).await;
        let t = Instant::now();
        nft_in_pod(&pod, &isolation_rules(ip, &apiserver)).await;
        eprintln!(
            "    isolated master {} of group {group} (epoch {})",
            pod.name, before.epoch
        );
        // Clients still reach the isolated broker: it must stop acting as
        // master (refusing sends) once its lease has lapsed.
        let isolated = eventually_every(
            POLL,
            Duration::from_secs(30),
            "the isolated broker to stop acting as master",
            async || {
                let s = replica_state(&pod.addr()?).await?;
                (s.lease_remaining_ms == 0 || s.role != pb::ReplicaRole::Master as i32).then_some(s)
            },
        )
        .await;
        let stopped_after = t.elapsed();
        assert!(
            stopped_after < LEASE + Duration::from_secs(1),
            "the isolated master still acted as master {stopped_after:?} after it was cut off (lease {LEASE:?})"
        );
        // A client that still reaches it is refused.
        let index = self.ledger.allocate();
        let refusal = send_straight_to(&pod.addr().expect("pod IP"), body_of(index))
            .await
            .expect_err("the isolated master must refuse a send");
        assert!(
            refusal.message().contains("takes no writes"),
            "the isolated master refused with {refusal:?}"
        );
        // The isolated master's lease lapsed before the election.
        let next = wait_succession(&self.client, &self.ledger, &before).await;
        let elected = &next.record;
        let elected_after = next.seen - t;
        let new_master = next.master_ordinal();
        // Nothing more is acknowledged on the isolated side in the new epoch:
        // its acknowledged end stays where it was (what it wrote beyond that is
        // cut when it follows; every acknowledged message is checked consumed).
        let acknowledged_end = || async {
            replica_state(&pod.addr().expect("pod IP"))
                .await
                .expect("the isolated broker answers its clients")
                .committed_end
        };
        let end_at_election = acknowledged_end().await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let end_later = acknowledged_end().await;
        assert_eq!(
            end_later, end_at_election,
            "the isolated master acknowledged more after epoch {} was recorded",
            elected.epoch
        );

        let healed_at = Instant::now();
        nft_in_pod(&pod, &format!("delete table inet {TABLE}\n")).await;
        let state = eventually_every(
            POLL,
            Duration::from_secs(120),
            "the old master to follow the new one",
            async || {
                let s = replica_state(&pod.addr()?).await?;
                (s.role == pb::ReplicaRole::Replica as i32 && s.epoch >= elected.epoch).then_some(s)
            },
        )
        .await;
        wait_healthy(&self.client, view, group, Duration::from_secs(120)).await;
        let rejoined = healed_at.elapsed();
        wait_routed_to_masters(&self.client, view, groups, Duration::from_secs(60)).await;
        acks_flowing(&self.ledger, 400).await;
        let stats = load.stop(&self.ledger).await;
        let consumed = all_acked_consumed(
            &self.ledger,
            "every acknowledged message after the isolation",
            Duration::from_secs(300),
        )
        .await;
        stats.record(&step);
        step.set("isolated_master", old);
        step.set("new_master", new_master);
        step.set("epochs", json!([before.epoch, elected.epoch]));
        step.set("elected_after_s", secs(elected_after));
        step.set(
            "isolation_to_first_ack_by_new_master_s",
            secs(next.first_ack - t),
        );
        step.set(
            "new_epoch_seen_to_first_ack_s",
            secs(next.first_ack - next.seen),
        );
        step.set("stopped_acting_as_master_after_s", secs(stopped_after));
        step.set("isolated_role_then", isolated.role);
        step.set("isolated_acknowledged_end", end_at_election);
        step.set("healed_to_in_sync_s", secs(rejoined));
        step.set("old_master_log_end_after_rejoin", state.log_end);
        step.set("consumed_after_stop_s", secs(consumed));
        step.done();
    }
}
