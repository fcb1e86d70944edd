//! Namespaces (tenants): the one encoding of a namespaced name, shared by the
//! broker (which qualifies request names and strips response names), the SDK
//! (which validates what it sends) and the operator (which publishes routes
//! under qualified names).
//!
//! A stored name is `name` in the default namespace and `{namespace}%{name}`
//! otherwise; a system name keeps its `%PREFIX%` first and carries the
//! namespace after it (`%DLQ%shop%billing`). So data written before namespaces
//! existed is in the default namespace without any rewrite.

use std::borrow::Cow;
use std::fmt;

/// The gRPC metadata key that carries a request's namespace.
pub const NAMESPACE_METADATA: &str = "x-dduomq-namespace";
/// Separates a namespace from a name, and marks system prefixes (`%DLQ%`).
pub const SEPARATOR: char = '%';
/// Longest namespace: a Kubernetes namespace (a DNS label) always fits.
pub const MAX_NAMESPACE_LEN: usize = 63;
/// Longest stored topic name (the store's rule), namespace included.
pub const MAX_STORED_TOPIC_LEN: usize = 127;
/// Longest stored group name, namespace included: its dead-letter topic
/// (`%DLQ%` first) must fit [`MAX_STORED_TOPIC_LEN`].
pub const MAX_STORED_GROUP_LEN: usize = MAX_STORED_TOPIC_LEN - "%DLQ%".len();
/// The spelling of the default namespace besides the empty string, so the
/// Kubernetes namespace `default` is the broker's default namespace.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A namespace, validated; the default one holds every pre-namespace name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Namespace {
    /// `None` for the default namespace.
    name: Option<String>,
}

/// Why a namespace or a name cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NamespaceError {
    #[error(
        "namespace {0:?} must be 1 to {MAX_NAMESPACE_LEN} characters of A-Z a-z 0-9 _ - (\"\" or \"default\" is the default namespace)"
    )]
    BadNamespace(String),
    #[error("{name:?} contains '%', which only separates a namespace from a name")]
    Separator { name: String },
    #[error(
        "{name:?} in namespace {namespace:?} is stored as {qualified_len} characters ({namespace}%{name}); at most {max} are allowed"
    )]
    TooLong {
        name: String,
        namespace: String,
        qualified_len: usize,
        max: usize,
    },
}

impl Namespace {
    /// A namespace from its spelling: `""` and `"default"` are the default one.
    pub fn parse(value: &str) -> Result<Namespace, NamespaceError> {
        if value.is_empty() || value == DEFAULT_NAMESPACE {
            return Ok(Namespace::default());
        }
        let valid = value.len() <= MAX_NAMESPACE_LEN
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
        if !valid {
            return Err(NamespaceError::BadNamespace(value.to_string()));
        }
        Ok(Namespace {
            name: Some(value.to_string()),
        })
    }

    pub fn is_default(&self) -> bool {
        self.name.is_none()
    }

    /// The value sent as [`NAMESPACE_METADATA`]; `None` for the default
    /// namespace, which is what a request without it means.
    pub fn metadata_value(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The stored name of a user-supplied `name`, at most `max` characters
    /// long. A system name (`%DLQ%billing`) keeps its prefix first. A `%`
    /// anywhere else is refused: it would make the name ambiguous.
    /// An empty name stays empty (an absent optional field, or one the broker
    /// refuses as it always did).
    pub fn qualify(&self, name: &str, max: usize) -> Result<String, NamespaceError> {
        if name.is_empty() {
            return Ok(String::new());
        }
        let (prefix, plain) = split_system_prefix(name);
        if plain.contains(SEPARATOR) {
            return Err(NamespaceError::Separator {
                name: name.to_string(),
            });
        }
        let qualified = match &self.name {
            None => return Ok(name.to_string()),
            Some(ns) => format!("{prefix}{ns}{SEPARATOR}{plain}"),
        };
        if qualified.len() > max {
            return Err(NamespaceError::TooLong {
                name: name.to_string(),
                namespace: self.to_string(),
                qualified_len: qualified.len(),
                max,
            });
        }
        Ok(qualified)
    }

    /// The name as this namespace's clients spell it; `None` when `qualified`
    /// is in another namespace.
    pub fn strip<'a>(&self, qualified: &'a str) -> Option<Cow<'a, str>> {
        let (prefix, rest) = split_system_prefix(qualified);
        let plain = match &self.name {
            None => rest,
            Some(ns) => rest.strip_prefix(ns.as_str())?.strip_prefix(SEPARATOR)?,
        };
        if plain.contains(SEPARATOR) {
            return None;
        }
        Some(match (&self.name, prefix) {
            (None, _) => Cow::Borrowed(qualified),
            (Some(_), "") => Cow::Borrowed(plain),
            (Some(_), prefix) => Cow::Owned(format!("{prefix}{plain}")),
        })
    }
}

/// Splits `%PREFIX%rest` into its system prefix (with both `%`) and the rest;
/// a name without a complete prefix has an empty one.
fn split_system_prefix(name: &str) -> (&str, &str) {
    if let Some(after) = name.strip_prefix(SEPARATOR)
        && let Some(end) = after.find(SEPARATOR)
    {
        return name.split_at(end + 2);
    }
    ("", name)
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name.as_deref().unwrap_or(DEFAULT_NAMESPACE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(value: &str) -> Namespace {
        Namespace::parse(value).unwrap()
    }

    #[test]
    fn default_namespace_keeps_names_as_they_are() {
        for spelling in ["", "default"] {
            let d = ns(spelling);
            assert!(d.is_default());
            assert_eq!(d.metadata_value(), None);
            assert_eq!(d.qualify("orders", 127).unwrap(), "orders");
            assert_eq!(d.qualify("%DLQ%billing", 127).unwrap(), "%DLQ%billing");
            assert_eq!(d.strip("orders").as_deref(), Some("orders"));
            assert_eq!(d.strip("%DLQ%billing").as_deref(), Some("%DLQ%billing"));
            assert_eq!(d.strip("shop%orders"), None);
            assert_eq!(d.strip("%DLQ%shop%billing"), None);
        }
    }

    #[test]
    fn namespaced_names_carry_the_namespace_after_system_prefixes() {
        let shop = ns("shop");
        assert_eq!(shop.metadata_value(), Some("shop"));
        assert_eq!(shop.qualify("orders", 127).unwrap(), "shop%orders");
        assert_eq!(
            shop.qualify("%DLQ%billing", 127).unwrap(),
            "%DLQ%shop%billing"
        );
        assert_eq!(shop.strip("shop%orders").as_deref(), Some("orders"));
        assert_eq!(
            shop.strip("%DLQ%shop%billing").as_deref(),
            Some("%DLQ%billing")
        );
        for foreign in ["orders", "%DLQ%billing", "shopx%orders", "billing%orders"] {
            assert_eq!(shop.strip(foreign), None, "{foreign}");
        }
    }

    #[test]
    fn bad_namespaces_and_names_are_refused() {
        for bad in ["a%b", "has space", "a.b", &"n".repeat(64)] {
            assert_eq!(
                Namespace::parse(bad),
                Err(NamespaceError::BadNamespace(bad.to_string()))
            );
        }
        assert!(Namespace::parse(&"n".repeat(63)).is_ok());
        for bad in ["a%b", "%system", "%DLQ%a%b"] {
            assert!(matches!(
                ns("shop").qualify(bad, 127),
                Err(NamespaceError::Separator { .. })
            ));
            assert!(ns("").qualify(bad, 127).is_err(), "{bad}");
        }
    }

    #[test]
    fn qualified_names_fit_the_limit() {
        let shop = ns("shop");
        assert_eq!(shop.qualify(&"x".repeat(122), 127).unwrap().len(), 127);
        let e = shop.qualify(&"x".repeat(123), 127).unwrap_err();
        assert_eq!(
            e,
            NamespaceError::TooLong {
                name: "x".repeat(123),
                namespace: "shop".into(),
                qualified_len: 128,
                max: 127
            }
        );
        assert!(e.to_string().contains("at most 127"), "{e}");
    }
}
