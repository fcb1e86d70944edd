//! The official RocketMQ clients' scenario programs (`rocketmq-clients/`), as
//! the compatibility tests and the cluster scenarios run them: each client
//! installed by `rocketmq-clients/setup`, nothing vendored.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository's `rocketmq-clients/`.
fn programs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../rocketmq-clients")
}

/// A file `rocketmq-clients/setup` installed (under
/// `$DDUOMQ_ROCKETMQ_CLIENTS`, else `~/.cache/dduomq-rocketmq`). Missing, the
/// test fails: CI and `make test` install the clients.
pub fn installed(relative: &str) -> PathBuf {
    let root = std::env::var_os("DDUOMQ_ROCKETMQ_CLIENTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/dduomq-rocketmq")
        });
    let path = root.join(relative);
    assert!(
        path.exists(),
        "{} is missing: run rocketmq-clients/setup (make test does) to install the official RocketMQ clients",
        path.display()
    );
    path
}

/// The Python program, run by the installed client's Python.
pub fn python_scenarios() -> Command {
    let mut c = Command::new(installed("python/bin/python"));
    c.arg(programs().join("python/scenarios.py"));
    c
}

/// The Node.js program, with the installed client on its module path.
pub fn node_scenarios() -> Command {
    let mut c = Command::new("node");
    c.env("NODE_PATH", installed("node/node_modules"))
        .arg(programs().join("node/scenarios.js"));
    c
}

/// The Java program, compiled into `work` against the installed client.
pub fn java_scenarios(work: &Path) -> Command {
    let classpath = std::fs::read_to_string(installed("java/classpath")).expect("classpath");
    let classpath = classpath.trim();
    let source = programs().join("java/src/main/java/io/dduomq/compat/Scenarios.java");
    let out = Command::new("javac")
        .args(["-d".as_ref(), work.as_os_str(), "-cp".as_ref()])
        .arg(classpath)
        .arg(source)
        .output()
        .expect("javac (a JDK 17) is required");
    assert!(
        out.status.success(),
        "javac: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut c = Command::new("java");
    c.arg("-cp")
        .arg(format!("{}:{classpath}", work.display()))
        .arg("io.dduomq.compat.Scenarios");
    c
}

/// The Rust program, built by `rocketmq-clients/setup` (its own Cargo
/// project, with the `rocketmq` crate's dependencies).
pub fn rust_scenarios() -> Command {
    Command::new(installed("rust-target/debug/rocketmq-scenarios"))
}
