//! Pods bound to this node, run as local processes: one worker task per pod.
//!
//! A worker creates the pod's network namespace, writes its volumes, starts
//! each container through `exec-container` (own mount namespace and root),
//! then loops every 500 ms: reaps exited containers and restarts them per
//! `restartPolicy` (back-off 0 s, 1 s, 2 s … 10 s; reset after 60 s running),
//! runs probes, keeps `/etc/hosts` current and writes the pod status when it
//! changed. On deletion it sends SIGTERM to every container's process group,
//! SIGKILL after the grace period, removes the namespace and deletes the pod
//! with grace period 0 — the kubelet's half of graceful deletion.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use chrono::Utc;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::exec::{ContainerSpec, Mount};
use crate::images::Images;
use crate::network::{Network, Sandbox};
use crate::probes::{ProbeState, Verdict};
use crate::services::{CLUSTER_DOMAIN, Services};
use crate::{env, volumes};

pub struct Kubelet {
    pub client: Client,
    pub node: String,
    pub node_ip: Ipv4Addr,
    pub network: Arc<Network>,
    pub services: Services,
    pub images: Images,
    /// `<work>/pods`: one dir per pod (volumes, container roots, logs).
    pub pods_dir: PathBuf,
    pub self_exe: PathBuf,
    /// `KUBERNETES_SERVICE_HOST` / `_PORT` (the `kubernetes` Service).
    pub apiserver: (String, u16),
}

impl std::fmt::Debug for Kubelet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubelet").field("node", &self.node).finish()
    }
}

/// Watches the pods bound to this node and keeps one worker per pod.
pub async fn run(k: Arc<Kubelet>) {
    let api: Api<Pod> = Api::all(k.client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", k.node));
    let mut events = watcher(api, cfg).boxed();
    let mut workers: HashMap<String, watch::Sender<Option<Pod>>> = HashMap::new();
    // Pods listed by a (re)list: a worker whose pod is not among them lost its
    // pod while the watch was down (a forced deletion sends no event then).
    let mut listed: std::collections::HashSet<String> = Default::default();
    while let Some(event) = events.next().await {
        workers.retain(|_, tx| !tx.is_closed());
        let (pod, gone) = match event {
            Ok(Event::Apply(p)) => (p, false),
            Ok(Event::InitApply(p)) => {
                listed.insert(p.uid().unwrap_or_default());
                (p, false)
            }
            Ok(Event::Delete(p)) => (p, true),
            Ok(Event::Init) => {
                listed.clear();
                continue;
            }
            Ok(Event::InitDone) => {
                for (uid, tx) in &workers {
                    if !listed.contains(uid) {
                        let _ = tx.send(None);
                    }
                }
                continue;
            }
            Err(e) => {
                tracing::warn!("pod watch: {e}");
                continue;
            }
        };
        let uid = pod.uid().unwrap_or_default();
        if let Some(tx) = workers.get(&uid) {
            let _ = tx.send(if gone { None } else { Some(pod) });
            continue;
        }
        if gone {
            continue;
        }
        if pod.metadata.deletion_timestamp.is_some() {
            // Never started here: nothing to stop.
            delete_now(&k.client, &pod).await;
            continue;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            continue;
        }
        let (tx, rx) = watch::channel(Some(pod));
        workers.insert(uid, tx);
        let k = k.clone();
        tokio::spawn(async move { PodWorker::run(k, rx).await });
    }
}

async fn delete_now(client: &Client, pod: &Pod) {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.uid(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&pod.name_any(), &dp).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
        Err(e) => tracing::warn!(pod = %pod.name_any(), "delete: {e}"),
    }
}

fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[derive(Debug)]
struct Running {
    child: tokio::process::Child,
    pid: i32,
    since: Instant,
    started_at: String,
    /// SIGKILL deadline once SIGTERM was sent (liveness failure).
    kill_at: Option<Instant>,
}

#[derive(Debug, Clone)]
struct Exited {
    code: i32,
    started_at: String,
    finished_at: String,
    container_id: String,
}

#[derive(Debug)]
struct ContainerRun {
    spec: Container,
    running: Option<Running>,
    /// Set when it exited for good (no restart per policy).
    terminated: Option<Exited>,
    last: Option<Exited>,
    restarts: i32,
    restart_at: Option<Instant>,
    backoff: Duration,
    ready: bool,
    readiness: Option<ProbeState>,
    liveness: Option<ProbeState>,
    waiting: Option<(String, String)>,
}

struct PodWorker {
    k: Arc<Kubelet>,
    pod: Pod,
    dir: PathBuf,
    sandbox: Option<Sandbox>,
    /// Volume name → host path, once prepared.
    volumes: Option<std::collections::BTreeMap<String, PathBuf>>,
    containers: Vec<ContainerRun>,
    hosts: String,
    last_status: Value,
    start_time: String,
}

impl PodWorker {
    async fn run(k: Arc<Kubelet>, mut rx: watch::Receiver<Option<Pod>>) {
        let Some(pod) = rx.borrow().clone() else {
            return;
        };
        let dir = k.pods_dir.join(format!(
            "{}_{}_{}",
            pod.namespace().unwrap_or_default(),
            pod.name_any(),
            &pod.uid().unwrap_or_default()[..8]
        ));
        let containers = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .map(|c| ContainerRun {
                spec: c.clone(),
                running: None,
                terminated: None,
                last: None,
                restarts: 0,
                restart_at: Some(Instant::now()),
                backoff: Duration::ZERO,
                ready: false,
                readiness: None,
                liveness: None,
                waiting: Some(("ContainerCreating".into(), String::new())),
            })
            .collect();
        let mut w = PodWorker {
            k,
            pod,
            dir,
            sandbox: None,
            volumes: None,
            containers,
            hosts: String::new(),
            last_status: Value::Null,
            start_time: now_rfc3339(),
        };
        let name = w.pod.name_any();
        tracing::info!(pod = %name, "starting");
        loop {
            tokio::select! {
                changed = rx.changed() => {
                    let latest = if changed.is_ok() { rx.borrow_and_update().clone() } else { None };
                    match latest {
                        None => {
                            w.kill_all(Duration::ZERO).await;
                            break;
                        }
                        Some(p) if p.metadata.deletion_timestamp.is_some() => {
                            w.pod = p;
                            w.terminate().await;
                            break;
                        }
                        Some(p) => w.pod = p,
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            if let Err(e) = w.step().await {
                tracing::warn!(pod = %name, "{e:#}");
            }
            w.write_status().await;
        }
        tracing::info!(pod = %name, "stopped");
    }

    /// One round: sandbox and volumes (until they exist), reaping, restarts,
    /// probes, /etc/hosts.
    async fn step(&mut self) -> Result<()> {
        if matches!(self.phase(), "Succeeded" | "Failed") {
            return Ok(()); // done; waits for deletion
        }
        if self.sandbox.is_none() {
            let sandbox = self.k.network.create().await.context("pod network")?;
            let status = self.pod.status.get_or_insert_with(Default::default);
            status.pod_ip = Some(sandbox.ip.to_string());
            self.sandbox = Some(sandbox);
            std::fs::create_dir_all(&self.dir)?;
            self.refresh_etc()?;
        }
        if self.volumes.is_none() {
            self.volumes = Some(
                volumes::prepare(&self.k.client, &self.pod, &self.dir.join("volumes"))
                    .await
                    .context("volumes")?,
            );
        }
        let ip = self.sandbox.as_ref().unwrap().ip;
        let policy = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into());
        let grace = self.grace();
        for i in 0..self.containers.len() {
            self.reap(i, &policy);
            let now = Instant::now();
            let c = &mut self.containers[i];
            if c.running.is_none()
                && c.terminated.is_none()
                && c.restart_at.is_some_and(|t| now >= t)
            {
                c.restart_at = None;
                if let Err(e) = self.start(i).await {
                    let c = &mut self.containers[i];
                    c.waiting = Some(("CreateContainerError".into(), format!("{e:#}")));
                    c.restart_at = Some(Instant::now() + Duration::from_secs(2));
                    tracing::warn!(pod = %self.pod.name_any(), container = %c.spec.name, "start: {e:#}");
                }
                continue;
            }
            let c = &mut self.containers[i];
            let Some(r) = &mut c.running else { continue };
            if r.kill_at.is_some_and(|t| now >= t) {
                signal(r.pid, libc::SIGKILL);
            }
            if let Some(p) = &mut c.liveness
                && p.due(now)
                && p.run(ip).await == Verdict::Failed
                && r.kill_at.is_none()
            {
                tracing::info!(pod = %self.pod.name_any(), container = %c.spec.name, "liveness probe failed; restarting");
                signal(r.pid, libc::SIGTERM);
                r.kill_at = Some(now + grace);
            }
            match &mut c.readiness {
                None => c.ready = true,
                Some(p) if p.due(now) => match p.run(ip).await {
                    Verdict::Passed => c.ready = true,
                    Verdict::Failed => c.ready = false,
                    Verdict::Unchanged => {}
                },
                Some(_) => {}
            }
        }
        self.refresh_etc()?;
        Ok(())
    }

    fn grace(&self) -> Duration {
        let secs = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or(self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds))
            .unwrap_or(30);
        Duration::from_secs(secs.max(0) as u64)
    }

    /// Notes an exited container and schedules its restart per policy.
    fn reap(&mut self, i: usize, policy: &str) {
        let c = &mut self.containers[i];
        let Some(r) = &mut c.running else { return };
        let Ok(Some(status)) = r.child.try_wait() else {
            return;
        };
        use std::os::unix::process::ExitStatusExt;
        let code = status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        let exited = Exited {
            code,
            started_at: r.started_at.clone(),
            finished_at: now_rfc3339(),
            container_id: format!("dduomq-e2e://{}", r.pid),
        };
        let ran = r.since.elapsed();
        tracing::info!(pod = %self.pod.name_any(), container = %c.spec.name, code, "container exited");
        // Whatever the command left behind in its process group goes with it.
        signal(r.pid, libc::SIGKILL);
        c.running = None;
        c.ready = false;
        let restart = match policy {
            "Never" => false,
            "OnFailure" => code != 0,
            _ => true,
        };
        if restart {
            c.backoff = if ran >= Duration::from_secs(60) || c.restarts == 0 {
                Duration::ZERO
            } else {
                (c.backoff * 2).clamp(Duration::from_secs(1), Duration::from_secs(10))
            };
            c.restarts += 1;
            c.restart_at = Some(Instant::now() + c.backoff);
            c.waiting = Some((
                "CrashLoopBackOff".into(),
                format!("back-off {:?} restarting failed container", c.backoff),
            ));
            c.last = Some(exited);
        } else {
            c.terminated = Some(exited);
            c.waiting = None;
        }
    }

    async fn start(&mut self, i: usize) -> Result<()> {
        let spec = self.containers[i].spec.clone();
        let image_ref = spec.image.clone().unwrap_or_default();
        let image = self.k.images.get(&image_ref)?.clone();
        // The downward API's status.podIP: this pod's address, even when the
        // latest object from the API server predates the status that says so.
        let ip = self.sandbox.as_ref().context("no pod network")?.ip;
        self.pod.status.get_or_insert_with(Default::default).pod_ip = Some(ip.to_string());
        let apiserver = (self.k.apiserver.0.as_str(), self.k.apiserver.1);
        let env = env::environment(&self.k.client, &self.pod, &spec, &image, apiserver).await?;
        let argv = env::argv(&spec, &image, &env);
        let mut mounts = Vec::new();
        for m in spec.volume_mounts.iter().flatten() {
            let mut source = self
                .volumes
                .as_ref()
                .and_then(|v| v.get(&m.name))
                .with_context(|| format!("no volume {}", m.name))?
                .clone();
            if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                source = source.join(sub);
            }
            mounts.push(Mount {
                source,
                target: m.mount_path.clone(),
                read_only: m.read_only.unwrap_or(false),
            });
        }
        let cdir = self.dir.join("containers").join(&spec.name);
        if cdir.exists() {
            // A restart gets a fresh root file system, as a new container would.
            std::fs::remove_dir_all(&cdir).ok();
        }
        std::fs::create_dir_all(&cdir)?;
        let sandbox = self.sandbox.as_ref().unwrap();
        let container = ContainerSpec {
            netns: Path::new("/run/netns").join(&sandbox.netns),
            dir: cdir.clone(),
            argv,
            env,
            working_dir: spec
                .working_dir
                .clone()
                .unwrap_or(image.working_dir.clone()),
            binaries: self.k.images.binaries(&image),
            etc_files: ["hosts", "resolv.conf", "hostname"]
                .iter()
                .map(|f| (f.to_string(), self.dir.join(f)))
                .collect(),
            mounts,
        };
        let spec_path = self.dir.join(format!("{}.json", spec.name));
        std::fs::write(&spec_path, serde_json::to_vec_pretty(&container)?)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", spec.name)))?;
        let child = tokio::process::Command::new(&self.k.self_exe)
            .arg("exec-container")
            .arg(&spec_path)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("spawn")?;
        let pid = child.id().context("no pid")? as i32;
        let now = Instant::now();
        let c = &mut self.containers[i];
        c.readiness = spec
            .readiness_probe
            .as_ref()
            .map(|p| ProbeState::new(p, &spec, now));
        c.liveness = spec
            .liveness_probe
            .as_ref()
            .map(|p| ProbeState::new(p, &spec, now));
        c.ready = false;
        c.waiting = None;
        c.running = Some(Running {
            child,
            pid,
            since: now,
            started_at: now_rfc3339(),
            kill_at: None,
        });
        tracing::info!(pod = %self.pod.name_any(), container = %spec.name, pid, "container started");
        Ok(())
    }

    /// Writes `/etc/hosts` (in place: it is bind-mounted), `resolv.conf`, `hostname`.
    fn refresh_etc(&mut self) -> Result<()> {
        let Some(s) = &self.sandbox else {
            return Ok(());
        };
        let hosts = self.k.services.hosts_file(&self.pod, s.ip);
        if hosts != self.hosts {
            std::fs::write(self.dir.join("hosts"), &hosts)?;
            self.hosts = hosts;
        }
        let resolv = self.dir.join("resolv.conf");
        if !resolv.exists() {
            let ns = self.pod.namespace().unwrap_or_default();
            // No DNS server: every name a pod needs is in /etc/hosts, and the
            // resolver fails at once instead of leaving the namespace.
            std::fs::write(
                &resolv,
                format!(
                    "nameserver 127.0.0.1\nsearch {ns}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\noptions ndots:5\n"
                ),
            )?;
            std::fs::write(
                self.dir.join("hostname"),
                format!("{}\n", env::pod_hostname(&self.pod)),
            )?;
        }
        Ok(())
    }

    /// Graceful deletion: not ready, SIGTERM, grace period, SIGKILL, delete.
    async fn terminate(&mut self) {
        let grace = self.grace();
        tracing::info!(pod = %self.pod.name_any(), ?grace, "terminating");
        for c in &mut self.containers {
            c.ready = false;
        }
        self.write_status().await;
        self.kill_all(grace).await;
        delete_now(&self.k.client, &self.pod).await;
    }

    /// SIGTERM to every container, SIGKILL to what is left after `grace`; then
    /// the network namespace goes.
    async fn kill_all(&mut self, grace: Duration) {
        for c in &self.containers {
            if let Some(r) = &c.running {
                signal(
                    r.pid,
                    if grace.is_zero() {
                        libc::SIGKILL
                    } else {
                        libc::SIGTERM
                    },
                );
            }
        }
        let deadline = Instant::now() + grace;
        for c in &mut self.containers {
            if let Some(r) = &mut c.running {
                if tokio::time::timeout_at(deadline, r.child.wait())
                    .await
                    .is_err()
                {
                    signal(r.pid, libc::SIGKILL);
                    let _ = r.child.wait().await;
                }
                c.running = None;
            }
        }
        if let Some(s) = self.sandbox.take() {
            self.k.network.release(&s).await;
        }
        std::fs::remove_dir_all(self.dir.join("containers")).ok();
    }

    fn phase(&self) -> &'static str {
        let cs = &self.containers;
        if cs.iter().any(|c| c.running.is_some()) {
            "Running"
        } else if !cs.is_empty() && cs.iter().all(|c| c.terminated.is_some()) {
            if cs
                .iter()
                .all(|c| c.terminated.as_ref().is_some_and(|t| t.code == 0))
            {
                "Succeeded"
            } else {
                "Failed"
            }
        } else if cs.iter().any(|c| c.restarts > 0) {
            "Running"
        } else {
            "Pending"
        }
    }

    /// Patches `status` when it differs from what was last written.
    async fn write_status(&mut self) {
        let phase = self.phase();
        if matches!(phase, "Succeeded" | "Failed")
            && let Some(s) = self.sandbox.take()
        {
            self.k.network.release(&s).await;
        }
        let terminating = self.pod.metadata.deletion_timestamp.is_some();
        let all_ready = self
            .containers
            .iter()
            .all(|c| c.ready && c.running.is_some());
        let ready = if all_ready && !terminating {
            "True"
        } else {
            "False"
        };
        let image = |c: &ContainerRun| c.spec.image.clone().unwrap_or_default();
        let terminated = |e: &Exited| {
            json!({"terminated": {
                "exitCode": e.code, "reason": if e.code == 0 { "Completed" } else { "Error" },
                "startedAt": e.started_at, "finishedAt": e.finished_at, "containerID": e.container_id,
            }})
        };
        let statuses: Vec<Value> = self
            .containers
            .iter()
            .map(|c| {
                let (state, id) = if let Some(r) = &c.running {
                    (json!({"running": {"startedAt": r.started_at}}), Some(format!("dduomq-e2e://{}", r.pid)))
                } else if let Some(t) = &c.terminated {
                    (terminated(t), Some(t.container_id.clone()))
                } else {
                    let (reason, message) = c.waiting.clone().unwrap_or_default();
                    (json!({"waiting": {"reason": reason, "message": message}}), None)
                };
                json!({
                    "name": c.spec.name, "image": image(c), "imageID": format!("dduomq-e2e://{}", image(c)),
                    "ready": c.ready && c.running.is_some(), "started": c.running.is_some(),
                    "restartCount": c.restarts, "state": state,
                    "lastState": c.last.as_ref().map(terminated).unwrap_or(json!({})),
                    "containerID": id,
                })
            })
            .collect();
        let ip = self
            .sandbox
            .as_ref()
            .map(|s| s.ip.to_string())
            .or_else(|| self.pod.status.as_ref().and_then(|s| s.pod_ip.clone()));
        let cond = |t: &str, s: &str| json!({"type": t, "status": s});
        let status = json!({
            "phase": phase,
            "hostIP": self.k.node_ip.to_string(), "hostIPs": [{"ip": self.k.node_ip.to_string()}],
            "podIP": ip, "podIPs": ip.as_ref().map(|ip| json!([{"ip": ip}])),
            "startTime": self.start_time,
            "conditions": [
                cond("PodScheduled", "True"), cond("Initialized", "True"),
                cond("ContainersReady", ready), cond("Ready", ready),
            ],
            "containerStatuses": statuses,
        });
        if status == self.last_status {
            return;
        }
        let api: Api<Pod> = Api::namespaced(
            self.k.client.clone(),
            &self.pod.namespace().unwrap_or_default(),
        );
        let patch = json!({"status": status});
        match api
            .patch_status(
                &self.pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => self.last_status = status,
            Err(kube::Error::Api(s)) if s.code == 404 => self.last_status = status,
            Err(e) => tracing::warn!(pod = %self.pod.name_any(), "status: {e}"),
        }
    }
}

/// Signals a container's process group (its pid leads the group).
fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: plain kill(2) on a process group we created.
    unsafe { libc::kill(-pid, sig) };
}
