//! The test environment `e2e/run cluster` sets up; helm, kubectl and the `dduomq`
//! CLI run as commands (each logged to `cluster-commands.log`); the cluster's
//! state dumped on the first panic.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::{BROKER_SELECTOR, NS, OPERATOR_SELECTOR, STS};

#[derive(Debug, Clone)]
pub struct Env {
    pub helm: PathBuf,
    pub kubectl: PathBuf,
    pub chart: PathBuf,
    pub bin: PathBuf,
    pub work: PathBuf,
}

impl Env {
    pub fn load() -> Env {
        let var = |k: &str| {
            std::env::var(k)
                .unwrap_or_else(|_| panic!("{k} is not set: run this test with `e2e/run cluster`"))
        };
        var("KUBECONFIG");
        let env = Env {
            helm: var("DDUOMQ_E2E_HELM").into(),
            kubectl: var("DDUOMQ_E2E_KUBECTL").into(),
            chart: var("DDUOMQ_E2E_CHART").into(),
            bin: var("DDUOMQ_E2E_BIN_DIR").into(),
            work: var("DDUOMQ_E2E_WORK").into(),
        };
        for (what, path) in [
            ("DDUOMQ_E2E_HELM", &env.helm),
            ("DDUOMQ_E2E_KUBECTL", &env.kubectl),
            ("DDUOMQ_E2E_BIN_DIR/dduomq", &env.bin.join("dduomq")),
        ] {
            assert!(path.is_file(), "{what}: {} is not a file", path.display());
        }
        assert!(
            env.chart.join("Chart.yaml").is_file(),
            "DDUOMQ_E2E_CHART: {} holds no Chart.yaml",
            env.chart.display()
        );
        std::fs::create_dir_all(&env.work).expect("create DDUOMQ_E2E_WORK");
        env
    }

    pub fn chart(&self) -> String {
        self.chart.display().to_string()
    }

    /// Helm keeps its cache and settings in the work dir, not in $HOME.
    pub fn helm_env(&self) -> Vec<(&'static str, String)> {
        let dir = |d: &str| self.work.join("helm").join(d).display().to_string();
        vec![
            ("HELM_CACHE_HOME", dir("cache")),
            ("HELM_CONFIG_HOME", dir("config")),
            ("HELM_DATA_HOME", dir("data")),
        ]
    }

    pub async fn helm(&self, args: &[&str]) -> CmdOut {
        run_command(self, &self.helm, args, &self.helm_env(), None).await
    }

    /// Runs helm; panics with its output if it fails.
    pub async fn helm_ok(&self, args: &[&str]) -> CmdOut {
        self.helm(args).await.ok()
    }

    pub async fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> CmdOut {
        run_command(self, &self.kubectl, args, &[], stdin).await
    }

    pub async fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> CmdOut {
        self.kubectl(args, stdin).await.ok()
    }

    /// The `dduomq` CLI.
    pub async fn cli(&self, args: &[&str]) -> CmdOut {
        run_command(self, &self.bin.join("dduomq"), args, &[], None).await
    }

    /// Appends to `cluster-commands.log`.
    pub fn log_command(&self, text: &str) {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.work.join("cluster-commands.log"))
        {
            let _ = writeln!(f, "{text}");
        }
    }
}

/// A finished command.
#[derive(Debug)]
pub struct CmdOut {
    pub line: String,
    pub success: bool,
    pub status: String,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl CmdOut {
    pub fn describe(&self) -> String {
        format!(
            "`{}` {} after {:.1}s\n--- stdout\n{}\n--- stderr\n{}",
            self.line,
            self.status,
            self.took.as_secs_f64(),
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }

    /// Panics unless the command succeeded.
    #[track_caller]
    pub fn ok(self) -> CmdOut {
        assert!(self.success, "command failed: {}", self.describe());
        self
    }
}

/// Runs a command without blocking the runtime (the load keeps running).
pub async fn run_command(
    env: &Env,
    program: &std::path::Path,
    args: &[&str],
    vars: &[(&str, String)],
    stdin: Option<&str>,
) -> CmdOut {
    let line = std::iter::once(program.display().to_string())
        .chain(args.iter().map(|a| a.to_string()))
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{line}`: {e}"));
    if let Some(input) = stdin {
        use tokio::io::AsyncWriteExt;
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(input.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("writing the stdin of `{line}`: {e}"));
        drop(pipe);
    }
    let out = child
        .wait_with_output()
        .await
        .unwrap_or_else(|e| panic!("waiting for `{line}`: {e}"));
    let result = CmdOut {
        line,
        success: out.status.success(),
        status: out.status.to_string(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: started.elapsed(),
    };
    env.log_command(&format!("==== {}\n", result.describe()));
    result
}

/// On the first panic (of the test or of any of its tasks): the cluster's state
/// to stderr and to `cluster-diagnostics.log`.
pub fn install_panic_hook(env: Env) {
    let default = std::panic::take_hook();
    let dumped = AtomicBool::new(false);
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        if !dumped.swap(true, Ordering::SeqCst) {
            dump_diagnostics(&env, &info.to_string());
        }
    }));
}

/// Blocking on purpose: it runs in the panic hook.
pub fn dump_diagnostics(env: &Env, why: &str) {
    let kubectl = |args: &[&str]| -> String {
        match std::process::Command::new(&env.kubectl)
            .arg("--request-timeout=15s")
            .args(args)
            .stdin(Stdio::null())
            .output()
        {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("cannot run kubectl: {e}\n"),
        }
    };
    let tail = |text: String, n: usize| -> String {
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    };
    let mut out = format!("==== cluster diagnostics after: {why}\n");
    for (title, args) in [
        ("nodes", vec!["get", "nodes", "-o", "wide"]),
        ("pods", vec!["get", "pods", "-A", "-o", "wide"]),
        (
            "release objects",
            vec![
                "get",
                "statefulsets,deployments,services,endpointslices,pvc,pdb",
                "-n",
                NS,
                "-o",
                "wide",
            ],
        ),
        ("volumes", vec!["get", "pv", "-o", "wide"]),
        (
            "topics and groups",
            vec!["get", "topics,consumergroups", "-A", "-o", "yaml"],
        ),
        (
            "broker statefulset status",
            vec![
                "get",
                "statefulset",
                STS,
                "-n",
                NS,
                "-o",
                "jsonpath={.status}",
            ],
        ),
    ] {
        out.push_str(&format!("---- {title}\n{}\n", kubectl(&args)));
    }
    out.push_str(&format!(
        "---- events (last 80)\n{}\n",
        tail(
            kubectl(&["get", "events", "-A", "--sort-by=.lastTimestamp"]),
            80
        )
    ));
    for selector in [BROKER_SELECTOR, OPERATOR_SELECTOR] {
        out.push_str(&format!(
            "---- logs of {selector} (last 40 lines each)\n{}\n",
            kubectl(&[
                "logs",
                "-n",
                NS,
                "-l",
                selector,
                "--tail=40",
                "--prefix",
                "--all-containers",
                "--max-log-requests=10",
            ])
        ));
    }
    out.push_str(&format!(
        "---- helm test pod log\n{}\n",
        tail(
            kubectl(&["logs", "-n", NS, "dduomq-helm-test", "--tail=40"]),
            40
        )
    ));
    eprintln!("{out}");
    let _ = std::fs::write(env.work.join("cluster-diagnostics.log"), &out);
}
