//! `dduomq-test-kubelet`: a kubelet for the end-to-end tests that runs pods as
//! local processes (no container runtime, no images), inside the network
//! namespace `e2e/run cluster` creates. See e2e/README.md for what it does and
//! does not implement.

mod env;
mod exec;
mod images;
mod network;
mod node;
mod pods;
mod probes;
mod provisioner;
mod services;
mod volumes;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use k8s_openapi::api::core::v1::Service;
use kube::{Api, Client};

#[derive(Debug, Parser)]
#[command(about = "A kubelet for DduoMQ's end-to-end tests: pods as local processes")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Register the node and run the pods bound to it (KUBECONFIG: admin).
    Run {
        #[arg(long, default_value = "dduomq-e2e-node")]
        node_name: String,
        /// Pod subnet (a /24): the bridge takes .1, pods .2 to .254.
        #[arg(long, default_value = "10.244.1.0")]
        pod_subnet: Ipv4Addr,
        /// Pod network namespaces are named `<prefix>-p<n>`.
        #[arg(long)]
        netns_prefix: String,
        /// Image table (e2e/images.json).
        #[arg(long)]
        images: PathBuf,
        /// Where the images' binaries are (the cargo target dir).
        #[arg(long)]
        bin_dir: PathBuf,
        /// Pod dirs and provisioned volumes.
        #[arg(long)]
        work_dir: PathBuf,
    },
    /// Internal: set up a container process and exec its command.
    #[command(hide = true)]
    ExecContainer { spec: PathBuf },
}

fn main() -> Result<()> {
    let args = Args::parse();
    match args.command {
        // Before any runtime thread exists: setns/unshare act on this thread.
        Command::ExecContainer { spec } => exec::exec_container(&spec),
        Command::Run {
            node_name,
            pod_subnet,
            netns_prefix,
            images,
            bin_dir,
            work_dir,
        } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info,kube=warn".into()),
                )
                .init();
            let images = images::Images::load(&images, bin_dir)?;
            tokio::runtime::Runtime::new()?.block_on(run(
                node_name,
                pod_subnet,
                netns_prefix,
                images,
                work_dir,
            ))
        }
    }
}

async fn run(
    node_name: String,
    pod_subnet: Ipv4Addr,
    netns_prefix: String,
    images: images::Images,
    work_dir: PathBuf,
) -> Result<()> {
    let client = Client::try_default().await.context("kube client")?;
    let network = Arc::new(network::Network::new(pod_subnet, netns_prefix).await?);
    let node_ip = network.gateway();
    let node = node::register(&client, &node_name, node_ip).await?;
    tokio::spawn(node::heartbeat(client.clone(), node, node_ip));
    tokio::spawn(provisioner::run(client.clone(), work_dir.join("volumes")));
    let services = services::Services::start(client.clone(), network.clone()).await;
    let apiserver = Api::<Service>::namespaced(client.clone(), "default")
        .get("kubernetes")
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .context("Service default/kubernetes has no ClusterIP")?;
    let kubelet = Arc::new(pods::Kubelet {
        client,
        node: node_name.clone(),
        node_ip,
        network: network.clone(),
        services,
        images,
        pods_dir: work_dir.join("pods"),
        self_exe: std::env::current_exe()?,
        apiserver: (apiserver, 443),
    });
    tracing::info!(node = %node_name, %node_ip, "node registered; running pods");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = pods::run(kubelet) => {}
        _ = term.recv() => tracing::info!("SIGTERM: exiting (e2e/run removes pod namespaces)"),
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
