//! Brokers with authentication on: a sealing key, a users file of test users
//! (secret keys sealed by `dduomq-broker seal-secret`), and their credentials.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use dduomq_client::Credentials;
use dduomq_testkit::{Broker, Options, sibling_binary};

/// A test user: its name, access key, secret key and grants (TOML).
#[derive(Debug, Clone, Copy)]
pub struct TestUser {
    pub name: &'static str,
    pub access_key: &'static str,
    pub secret_key: &'static str,
    pub grants: &'static str,
}

impl TestUser {
    pub fn credentials(&self) -> Credentials {
        Credentials {
            access_key: self.access_key.into(),
            secret_key: self.secret_key.into(),
        }
    }

    /// This user's credentials with another secret key.
    pub fn with_wrong_secret(&self) -> Credentials {
        Credentials {
            access_key: self.access_key.into(),
            secret_key: format!("{}-wrong", self.secret_key),
        }
    }
}

pub const ADMIN: TestUser = TestUser {
    name: "admin",
    access_key: "admin-key",
    secret_key: "admin-secret-0123456789",
    grants: r#"[{ actions = ["admin"], resources = ["cluster"] }]"#,
};
pub const PUBLISHER: TestUser = TestUser {
    name: "orders-pub",
    access_key: "orders-pub-key",
    secret_key: "pub-secret-0123456789",
    grants: r#"[{ actions = ["publish"], resources = ["topic:orders"] }]"#,
};
pub const CONSUMER: TestUser = TestUser {
    name: "billing-app",
    access_key: "billing-key",
    secret_key: "billing-secret-0123456789",
    grants: r#"[{ actions = ["subscribe"], resources = ["topic:orders", "group:billing"] }]"#,
};
pub const NOBODY: TestUser = TestUser {
    name: "nobody",
    access_key: "nobody-key",
    secret_key: "nobody-secret-0123456789",
    grants: "[]",
};
/// The brokers' own user (replication).
pub const BROKER: TestUser = TestUser {
    name: "broker",
    access_key: "broker-key",
    secret_key: "broker-secret-0123456789",
    grants: r#"[{ actions = ["admin"], resources = ["cluster"] }]"#,
};

pub const EVERYONE: &[TestUser] = &[ADMIN, PUBLISHER, CONSUMER, NOBODY, BROKER];

/// A sealing key and a users file in a directory of their own.
#[derive(Debug)]
pub struct Secrets {
    _dir: tempfile::TempDir,
    pub key_file: PathBuf,
    pub users_file: PathBuf,
}

impl Secrets {
    /// A fresh key, and a users file of `users`.
    pub fn new(users: &[TestUser]) -> Secrets {
        let dir = tempfile::tempdir().expect("temp dir");
        let key_file = dir.path().join("sealing.key");
        let key: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11));
        std::fs::write(
            &key_file,
            key.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        )
        .expect("write key");
        let secrets = Secrets {
            users_file: dir.path().join("users.toml"),
            _dir: dir,
            key_file,
        };
        secrets.write_users(users);
        secrets
    }

    /// Replaces the users file with `users` (atomically, as a Secret
    /// volume's update is).
    pub fn write_users(&self, users: &[TestUser]) {
        self.write_users_text(&users.iter().map(|u| self.entry(u, &[])).collect::<String>());
    }

    /// The users file entry of `user`, with `extra_keys` beside its own.
    pub fn entry(&self, user: &TestUser, extra_keys: &[&Credentials]) -> String {
        let keys: Vec<String> = extra_keys
            .iter()
            .map(|c| {
                format!(
                    "{{ access_key = \"{}\", secret_key = \"{}\" }}",
                    c.access_key,
                    self.seal(&c.access_key, &c.secret_key)
                )
            })
            .collect();
        format!(
            "[[users]]\nname = \"{}\"\naccess_key = \"{}\"\nsecret_key = \"{}\"\nkeys = [{}]\ngrants = {}\n\n",
            user.name,
            user.access_key,
            self.seal(user.access_key, user.secret_key),
            keys.join(", "),
            user.grants
        )
    }

    pub fn write_users_text(&self, text: &str) {
        let staged = self.users_file.with_extension("staged");
        std::fs::write(&staged, text).expect("write users");
        std::fs::rename(&staged, &self.users_file).expect("replace users");
    }

    /// The sealed form of `secret`, by the broker binary's own command.
    pub fn seal(&self, access_key: &str, secret: &str) -> String {
        let mut child = Command::new(sibling_binary("dduomq-broker"))
            .args(["seal-secret", "--access-key", access_key, "--key-file"])
            .arg(&self.key_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run seal-secret");
        writeln!(child.stdin.take().expect("stdin"), "{secret}").expect("write secret");
        let out = child.wait_with_output().expect("seal-secret output");
        assert!(out.status.success(), "seal-secret failed: {out:?}");
        let sealed = String::from_utf8(out.stdout)
            .expect("UTF-8")
            .trim()
            .to_string();
        assert!(
            sealed.starts_with("v1:") && !sealed.contains(secret),
            "{sealed}"
        );
        sealed
    }

    /// The `[auth]` table turning authentication on with these files.
    pub fn auth_table(&self, extra: &str) -> String {
        format!(
            "[auth]\nenabled = true\nusers_file = {:?}\nsealing_key_file = {:?}\nreload_interval = \"100ms\"\n{extra}\n",
            self.users_file, self.key_file
        )
    }

    /// A standalone broker with authentication on.
    pub fn start_broker(&self, extra_auth: &str) -> Broker {
        Broker::start_with(Options {
            config: Some(self.auth_table(extra_auth)),
            ..Options::default()
        })
    }
}

/// A static replicated group of three brokers (member 0 its master), each
/// with the TOML tables `config` beside `[store]` and `[replication]`; their
/// readiness is checked over TLS when `tls_ca` is given.
pub fn static_group(config: &str, tls_ca: Option<&[u8]>) -> Vec<Broker> {
    let ports: Vec<u16> = (0..3).map(|_| dduomq_testkit::free_port()).collect();
    let peers: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    (0..3u32)
        .map(|ordinal| {
            Broker::start_with(Options {
                grpc_port: Some(ports[ordinal as usize]),
                tls_ca: tls_ca.map(<[u8]>::to_vec),
                config: Some(format!(
                    "[store]\nbroker_id = {ordinal}\n[replication]\nfactor = 3\npeers = [{}]\nstatic_master = 0\n{config}",
                    peers.join(", ")
                )),
                ..Options::default()
            })
        })
        .collect()
}
