//! The `dduomq` CLI against a broker with TLS and authentication on: the
//! flags and environment variables a user signs and verifies with.

#[path = "../../client/tests/auth/pki.rs"]
#[allow(dead_code)] // shared with the SDK's TLS suites
mod pki;
#[path = "../../client/tests/auth/users.rs"]
#[allow(dead_code)] // shared with the SDK's auth suites
mod users;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use dduomq_testkit::{Broker, Options};
use pki::{Ca, TlsFiles};
use users::{ADMIN, PUBLISHER, Secrets};

/// Runs the CLI with `args`, signed by `secret_key` (from the environment)
/// when given, with `stdin` as its input.
fn dduomq(b: &Broker, args: &[&str], secret_key: Option<&str>, stdin: &str) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dduomq"));
    cmd.args(["--server", &b.grpc.replace("127.0.0.1", "localhost")])
        .args(args)
        .env_remove("DDUOMQ_SECRET_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(secret) = secret_key {
        cmd.env("DDUOMQ_SECRET_KEY", secret);
    }
    let mut child = cmd.spawn().expect("run dduomq");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_cli_signs_and_verifies_with_its_flags_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cluster CA");
    let files = TlsFiles::write(dir.path(), &ca, &ca.server());
    let secrets = Secrets::new(&[ADMIN, PUBLISHER]);
    let b = Broker::start_with(Options {
        config: Some(format!("{}{}", files.table("none"), secrets.auth_table(""))),
        tls_ca: Some(ca.pem().into_bytes()),
        ..Options::default()
    });
    let ca_file = files.ca.to_str().unwrap();
    let tls = ["--ca-file", ca_file];
    let admin = [&tls[..], &["--access-key", ADMIN.access_key]].concat();
    let out = dduomq(
        &b,
        &[&admin[..], &["topic", "create", "orders"]].concat(),
        Some(ADMIN.secret_key),
        "",
    );
    assert!(out.status.success(), "{}", text(&out));

    // Global flags before the subcommand, the secret from the environment.
    let publisher = [&tls[..], &["--access-key", PUBLISHER.access_key]].concat();
    let out = dduomq(
        &b,
        &[&publisher[..], &["produce", "--topic", "orders"]].concat(),
        Some(PUBLISHER.secret_key),
        "one\ntwo\n",
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(text(&out).matches("sent ").count(), 2, "{}", text(&out));

    // Refusals, each with its reason.
    let out = dduomq(&b, &[&tls[..], &["topic", "list"]].concat(), None, "");
    assert!(!out.status.success());
    assert!(text(&out).contains("MISSING_CREDENTIALS"), "{}", text(&out));
    let out = dduomq(
        &b,
        &[
            &publisher[..],
            &["produce", "--topic", "payroll", "--count", "1"],
        ]
        .concat(),
        Some(PUBLISHER.secret_key),
        "",
    );
    assert!(text(&out).contains("PERMISSION_DENIED"), "{}", text(&out));
    let out = dduomq(&b, &[&publisher[..], &["topic", "list"]].concat(), None, "");
    assert!(text(&out).contains("go together"), "{}", text(&out));
    let out = dduomq(
        &b,
        &["--access-key", PUBLISHER.access_key, "topic", "list"],
        Some(PUBLISHER.secret_key),
        "",
    );
    assert!(
        !out.status.success(),
        "plaintext to a TLS broker: {}",
        text(&out)
    );
}
