//! The users file: who may connect, with which access key, and what each may
//! do. Secret keys in it are sealed ([`super::sealed`]); the broker re-reads
//! the file when it changes, so users are added, rotated and removed without
//! a restart.
//!
//! ```toml
//! [[users]]
//! name = "orders-app"
//! access_key = "orders-app"
//! secret_key = "v1:…"          # dduomq-broker seal-secret --access-key orders-app
//! grants = [{ actions = ["publish"], resources = ["topic:orders"], namespace = "shop" }]
//! ```
//!
//! A user may have a second access key while its first is rotated out
//! (`keys = [{ access_key, secret_key }]`), and quotas (`quotas = {
//! produce_bytes_per_second, consume_bytes_per_second, connections }`, see
//! [`super::quota`]).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use super::policy::Grant;
use super::quota::Quotas;
use super::sealed::{SealError, SealingKey};

/// Most users in the file, and most keys, grants and resources each.
pub const MAX_USERS: usize = 10_000;
pub const MAX_KEYS_PER_USER: usize = 4;
pub const MAX_GRANTS_PER_USER: usize = 256;
pub const MAX_RESOURCES_PER_GRANT: usize = 256;
/// Largest users file read.
pub const MAX_FILE_BYTES: u64 = 16 << 20;
/// Longest user name or access key.
pub const MAX_NAME_LEN: usize = 128;

/// One user as the broker checks it: secret keys opened, grants parsed.
pub struct User {
    pub name: String,
    /// The first key listed: the one the user signs with itself (the
    /// brokers' own user).
    pub primary_access_key: String,
    pub grants: Vec<Grant>,
    pub quotas: Quotas,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// An access key's user and opened secret key.
pub struct Key {
    pub user: Arc<User>,
    pub secret_key: String,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("user", &self.user.name)
            .finish_non_exhaustive()
    }
}

/// Every user of the file, by access key.
#[derive(Debug, Default)]
pub struct Users {
    by_access_key: HashMap<String, Key>,
    by_name: HashMap<String, Arc<User>>,
}

impl Users {
    /// The user a client certificate's common name names (mutual TLS).
    pub fn named(&self, name: &str) -> Option<&Arc<User>> {
        self.by_name.get(name)
    }

    pub fn key(&self, access_key: &str) -> Option<&Key> {
        self.by_access_key.get(access_key)
    }

    /// The primary access key of the user `name` with its secret (the
    /// brokers' own user signs its requests to other brokers with it). A
    /// rotation adds the new key beside it, lets every broker load it, and
    /// only then makes it the primary one.
    pub fn credentials_of(&self, name: &str) -> Option<dduomq_proto::Credentials> {
        let access_key = &self.by_name.get(name)?.primary_access_key;
        let key = self.by_access_key.get(access_key)?;
        Some(dduomq_proto::Credentials {
            access_key: access_key.clone(),
            secret_key: key.secret_key.clone(),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    users: Vec<UserEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    name: String,
    #[serde(default)]
    access_key: Option<String>,
    #[serde(default)]
    secret_key: Option<String>,
    #[serde(default)]
    keys: Vec<KeyEntry>,
    #[serde(default)]
    grants: Vec<Grant>,
    #[serde(default)]
    quotas: Quotas,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    access_key: String,
    secret_key: String,
}

/// Why the users file cannot be used; the file is named by the caller.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("cannot read it: {0}")]
    Read(#[from] std::io::Error),
    #[error("it is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge,
    #[error("it is not UTF-8")]
    NotUtf8,
    #[error("{0}")]
    Parse(#[from] toml::de::Error),
    #[error("user {user:?}: {reason}")]
    Invalid { user: String, reason: String },
    #[error("user {user:?}, access key {access_key:?}: {source}")]
    Secret {
        user: String,
        access_key: String,
        source: SealError,
    },
}

/// Reads the users file at `path`: its bytes, to be checked with [`parse`].
pub fn read(path: &Path) -> Result<Vec<u8>, UsersError> {
    if std::fs::metadata(path)?.len() > MAX_FILE_BYTES {
        return Err(UsersError::TooLarge);
    }
    Ok(std::fs::read(path)?)
}

/// Checks the contents of a users file.
pub fn parse(bytes: &[u8], key: &SealingKey) -> Result<Users, UsersError> {
    let text = std::str::from_utf8(bytes).map_err(|_| UsersError::NotUtf8)?;
    parse_text(text, key)
}

fn parse_text(text: &str, key: &SealingKey) -> Result<Users, UsersError> {
    let file: UsersFile = toml::from_str(text)?;
    let invalid = |user: &str, reason: String| UsersError::Invalid {
        user: brief(user),
        reason,
    };
    if file.users.len() > MAX_USERS {
        return Err(invalid("", format!("at most {MAX_USERS} users")));
    }
    let mut users = Users::default();
    let mut names = std::collections::HashSet::new();
    for entry in file.users {
        let name = entry.name;
        if !valid_id(&name) {
            return Err(invalid(
                &name,
                format!("a name is 1 to {MAX_NAME_LEN} printable ASCII characters without spaces"),
            ));
        }
        if !names.insert(name.clone()) {
            return Err(invalid(&name, "is listed twice".into()));
        }
        let mut keys = entry.keys;
        match (entry.access_key, entry.secret_key) {
            (Some(access_key), Some(secret_key)) => keys.insert(
                0,
                KeyEntry {
                    access_key,
                    secret_key,
                },
            ),
            (None, None) => {}
            _ => {
                return Err(invalid(
                    &name,
                    "access_key and secret_key go together".into(),
                ));
            }
        }
        if keys.is_empty() || keys.len() > MAX_KEYS_PER_USER {
            return Err(invalid(
                &name,
                format!("needs 1 to {MAX_KEYS_PER_USER} access keys"),
            ));
        }
        if entry.grants.len() > MAX_GRANTS_PER_USER
            || entry
                .grants
                .iter()
                .any(|g| g.resources.len() > MAX_RESOURCES_PER_GRANT)
        {
            return Err(invalid(
                &name,
                format!(
                    "at most {MAX_GRANTS_PER_USER} grants of {MAX_RESOURCES_PER_GRANT} resources each"
                ),
            ));
        }
        let user = Arc::new(User {
            name: name.clone(),
            primary_access_key: keys[0].access_key.clone(),
            grants: entry.grants,
            quotas: entry.quotas,
        });
        users.by_name.insert(name.clone(), user.clone());
        for k in keys {
            if !valid_id(&k.access_key) || k.access_key.contains([',', '=']) {
                return Err(invalid(
                    &name,
                    format!(
                        "access key {} is not 1 to {MAX_NAME_LEN} printable ASCII characters without spaces, ',' or '='",
                        brief(&k.access_key)
                    ),
                ));
            }
            let secret_key =
                key.open(&k.access_key, &k.secret_key)
                    .map_err(|source| UsersError::Secret {
                        user: name.clone(),
                        access_key: k.access_key.clone(),
                        source,
                    })?;
            if users.by_access_key.contains_key(&k.access_key) {
                return Err(invalid(
                    &name,
                    format!(
                        "access key {} belongs to another user too",
                        brief(&k.access_key)
                    ),
                ));
            }
            users.by_access_key.insert(
                k.access_key,
                Key {
                    user: user.clone(),
                    secret_key,
                },
            );
        }
    }
    Ok(users)
}

fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME_LEN && s.bytes().all(|b| b.is_ascii_graphic())
}

fn brief(s: &str) -> String {
    crate::messaging::error::brief(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::policy::{Action, Resource};

    fn key() -> SealingKey {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, hex::encode([3u8; 32])).unwrap();
        SealingKey::from_file(&path).unwrap()
    }

    #[test]
    fn users_load_with_their_keys_and_grants() {
        let key = key();
        let text = format!(
            r#"
            [[users]]
            name = "orders-app"
            access_key = "ak1"
            secret_key = "{}"
            keys = [{{ access_key = "ak2", secret_key = "{}" }}]
            grants = [{{ actions = ["publish"], resources = ["topic:orders"], namespace = "shop" }}]
            "#,
            key.seal("ak1", "one").unwrap(),
            key.seal("ak2", "two").unwrap()
        );
        let users = parse_text(&text, &key).unwrap();
        let k = users.key("ak2").unwrap();
        assert_eq!(k.secret_key, "two");
        assert_eq!(k.user.name, "orders-app");
        assert!(crate::auth::policy::allowed(
            &k.user.grants,
            Action::Publish,
            Resource::Topic("shop%orders")
        ));
        assert_eq!(
            users.credentials_of("orders-app").unwrap().secret_key,
            "one"
        );
        assert!(users.key("orders-app").is_none());
    }

    #[test]
    fn every_mistake_names_its_user() {
        let key = key();
        let sealed = key.seal("ak", "s").unwrap();
        let cases = [
            (
                format!(
                    "[[users]]\nname = \"a\"\naccess_key = \"ak\"\nsecret_key = \"{sealed}\"\n[[users]]\nname = \"a\"\naccess_key = \"ak\"\nsecret_key = \"{sealed}\""
                ),
                "listed twice",
            ),
            (
                format!(
                    "[[users]]\nname = \"a\"\naccess_key = \"ak\"\nsecret_key = \"{sealed}\"\n[[users]]\nname = \"b\"\naccess_key = \"ak\"\nsecret_key = \"{sealed}\""
                ),
                "another user",
            ),
            (
                "[[users]]\nname = \"a\"\naccess_key = \"ak\"\nsecret_key = \"plain\"".to_string(),
                "must start with v1:",
            ),
            (
                format!(
                    "[[users]]\nname = \"a\"\naccess_key = \"other\"\nsecret_key = \"{sealed}\""
                ),
                "does not open",
            ),
            ("[[users]]\nname = \"a\"".to_string(), "access keys"),
            ("[[users]]\nname = \"a b\"".to_string(), "printable"),
            (
                "[[users]]\nname = \"a\"\ngrants = [{ actions = [\"fly\"], resources = [] }]"
                    .to_string(),
                "fly",
            ),
        ];
        for (text, expected) in cases {
            let err = parse_text(&text, &key).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
    }
}
