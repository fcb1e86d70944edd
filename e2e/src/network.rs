//! Pod networking: one network namespace per pod, joined to the node's bridge.
//!
//! ```text
//!   test namespace (node)                         pod namespace <prefix>-p<n>
//!   ┌───────────────────────────────┐             ┌──────────────────────┐
//!   │ cbr0 10.244.1.1/24 (bridge)   │── vp<n> ─── │ eth0 10.244.1.<n>/24 │
//!   │ ClusterIPs /32 (service proxy)│   (veth)    │ default via .1       │
//!   └───────────────────────────────┘             └──────────────────────┘
//! ```
//! Every pod binds its ports on its own address, as in a real cluster; pods
//! reach each other over the bridge and the apiserver and ClusterIPs through the
//! gateway, which is a local address of the node's namespace. Nothing is routed
//! anywhere else.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};
use std::sync::Mutex;

pub const BRIDGE: &str = "cbr0";

#[derive(Debug)]
pub struct Network {
    /// First three octets of the pod subnet; the bridge is `.1`.
    prefix: [u8; 3],
    netns_prefix: String,
    addresses: Mutex<Addresses>,
}

/// Pod addresses in use, and where the next search starts: addresses are
/// handed out round robin, so a recreated pod does not get the address its
/// predecessor had while peers still hold that address's old neighbour (ARP)
/// entry.
#[derive(Debug, Default)]
struct Addresses {
    used: BTreeSet<u8>,
    last: u8,
}

/// A pod's network namespace and address; `Network::release` tears it down.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub index: u8,
    pub ip: Ipv4Addr,
    pub netns: String,
}

impl Network {
    /// Creates the bridge (idempotent).
    pub async fn new(subnet: Ipv4Addr, netns_prefix: String) -> Result<Network> {
        let o = subnet.octets();
        let net = Network {
            prefix: [o[0], o[1], o[2]],
            netns_prefix,
            addresses: Mutex::new(Addresses::default()),
        };
        if ip(&["link", "show", BRIDGE]).await.is_err() {
            ip(&["link", "add", BRIDGE, "type", "bridge"]).await?;
            ip(&[
                "addr",
                "add",
                &format!("{}/24", net.gateway()),
                "dev",
                BRIDGE,
            ])
            .await?;
        }
        ip(&["link", "set", BRIDGE, "up"]).await?;
        Ok(net)
    }

    pub fn gateway(&self) -> Ipv4Addr {
        let [a, b, c] = self.prefix;
        Ipv4Addr::new(a, b, c, 1)
    }

    /// A new namespace with `lo`, `eth0` (its own address) and a default route.
    pub async fn create(&self) -> Result<Sandbox> {
        let index = {
            let mut a = self.addresses.lock().unwrap();
            let Some(i) = (a.last + 1..=254)
                .chain(2..=a.last)
                .find(|i| *i >= 2 && !a.used.contains(i))
            else {
                bail!("no free pod address");
            };
            a.used.insert(i);
            a.last = i;
            i
        };
        let [a, b, c] = self.prefix;
        let sandbox = Sandbox {
            index,
            ip: Ipv4Addr::new(a, b, c, index),
            netns: format!("{}-p{index}", self.netns_prefix),
        };
        if let Err(e) = self.setup(&sandbox).await {
            self.release(&sandbox).await;
            return Err(e);
        }
        Ok(sandbox)
    }

    async fn setup(&self, s: &Sandbox) -> Result<()> {
        let veth = format!("vp{}", s.index);
        ip(&["netns", "add", &s.netns]).await?;
        ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &s.netns,
        ])
        .await?;
        ip(&["link", "set", &veth, "master", BRIDGE, "up"]).await?;
        let n = ["-n", s.netns.as_str()];
        let cmds: [&[&str]; 4] = [
            &["link", "set", "lo", "up"],
            &["addr", "add", &format!("{}/24", s.ip), "dev", "eth0"],
            &["link", "set", "eth0", "up"],
            &[
                "route",
                "add",
                "default",
                "via",
                &self.gateway().to_string(),
            ],
        ];
        for cmd in cmds {
            ip(&[&n[..], cmd].concat()).await?;
        }
        Ok(())
    }

    /// Kills whatever still runs in the namespace, deletes it (and so the veth
    /// pair) and frees the address.
    pub async fn release(&self, s: &Sandbox) {
        if let Ok(pids) = ip(&["netns", "pids", &s.netns]).await {
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: plain kill(2).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if let Err(e) = ip(&["netns", "del", &s.netns]).await {
            tracing::warn!(netns = %s.netns, "delete network namespace: {e:#}");
        }
        self.addresses.lock().unwrap().used.remove(&s.index);
    }

    /// Adds `addr/32` to the bridge (a ClusterIP the service proxy listens on).
    pub async fn add_local_address(&self, addr: Ipv4Addr) -> Result<()> {
        let shown = ip(&["-4", "addr", "show", "dev", BRIDGE]).await?;
        if !shown.contains(&format!("inet {addr}/32")) {
            ip(&["addr", "add", &format!("{addr}/32"), "dev", BRIDGE]).await?;
        }
        Ok(())
    }
}

/// Runs `ip ARGS`, returning its stdout.
async fn ip(args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .context("run ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
