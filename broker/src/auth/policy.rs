//! What a user may do: grants of actions on resources, default deny.
//!
//! A grant names actions, resource patterns and the namespace (tenant) its
//! names are in:
//!
//! ```toml
//! grants = [
//!   { actions = ["publish"], resources = ["topic:orders", "topic:audit-*"], namespace = "shop" },
//!   { actions = ["subscribe"], resources = ["topic:orders", "group:billing"], namespace = "shop" },
//!   { actions = ["admin"], resources = ["cluster"] },
//! ]
//! ```
//!
//! A pattern is `cluster`, or `topic:` or `group:` and a name, where a trailing
//! `*` matches any rest (`topic:*` is every topic of the namespace). `admin`
//! on a topic or group allows every action on it; `admin` on `cluster` allows
//! everything everywhere (the operator's and the brokers' own users).

use std::fmt;

use dduomq_proto::Namespace;
use serde::{Deserialize, Deserializer};

/// What a request does to a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Send to a topic; resolve and check its transactions.
    Publish,
    /// Consume a topic as a group: receive, pull, ack, commit, look up.
    Subscribe,
    /// Create a topic or group.
    Create,
    /// Change a topic's or group's settings.
    Update,
    /// Delete a topic or group.
    Delete,
    /// Read a topic's, group's or the cluster's description and routes.
    Describe,
    /// Everything, including drain, reset, role and route changes.
    Admin,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::Describe => "describe",
            Action::Admin => "admin",
        }
    }
}

/// Who may read a topic's route: its producers, its consumers, and those who
/// may describe it.
pub const ROUTE_READERS: &[Action] = &[Action::Publish, Action::Subscribe, Action::Describe];

/// A resource a request acts on, by stored (namespace-qualified) name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource<'a> {
    Cluster,
    Topic(&'a str),
    Group(&'a str),
}

impl fmt::Display for Resource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Cluster => f.write_str("cluster"),
            Resource::Topic(name) => write!(f, "topic {name:?}"),
            Resource::Group(name) => write!(f, "group {name:?}"),
        }
    }
}

/// Which resources a pattern covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourcePattern {
    Cluster,
    Topic(NamePattern),
    Group(NamePattern),
}

/// A name, or a prefix (written with a trailing `*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamePattern {
    Exact(String),
    Prefix(String),
}

impl NamePattern {
    fn matches(&self, name: &str) -> bool {
        match self {
            NamePattern::Exact(exact) => name == exact,
            NamePattern::Prefix(prefix) => name.starts_with(prefix.as_str()),
        }
    }
}

impl std::str::FromStr for ResourcePattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "cluster" {
            return Ok(ResourcePattern::Cluster);
        }
        let name = |rest: &str| -> Result<NamePattern, String> {
            let pattern = match rest.strip_suffix('*') {
                Some(prefix) => NamePattern::Prefix(prefix.to_string()),
                None => NamePattern::Exact(rest.to_string()),
            };
            match &pattern {
                NamePattern::Exact(n) | NamePattern::Prefix(n) if n.contains('*') => {
                    Err(format!("{s:?}: '*' may only end a pattern"))
                }
                NamePattern::Exact(n) if n.is_empty() => Err(format!("{s:?} names nothing")),
                _ => Ok(pattern),
            }
        };
        if let Some(rest) = s.strip_prefix("topic:") {
            return Ok(ResourcePattern::Topic(name(rest)?));
        }
        if let Some(rest) = s.strip_prefix("group:") {
            return Ok(ResourcePattern::Group(name(rest)?));
        }
        Err(format!(
            "{s:?} is not a resource: use cluster, topic:NAME or group:NAME (a trailing * matches any rest)"
        ))
    }
}

impl<'de> Deserialize<'de> for ResourcePattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Actions allowed on resources of one namespace.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub actions: Vec<Action>,
    pub resources: Vec<ResourcePattern>,
    /// The tenant namespace the resource names are in; "" is the default one.
    #[serde(default, deserialize_with = "namespace")]
    pub namespace: Namespace,
}

fn namespace<'de, D: Deserializer<'de>>(d: D) -> Result<Namespace, D::Error> {
    Namespace::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
}

impl Grant {
    /// Whether this grant allows `action` on `resource`.
    pub fn allows(&self, action: Action, resource: Resource<'_>) -> bool {
        self.resources.iter().any(|pattern| {
            let acts = |admin_implies: bool| {
                self.actions
                    .iter()
                    .any(|&a| a == action || (admin_implies && a == Action::Admin))
            };
            match (pattern, resource) {
                (ResourcePattern::Cluster, _) if self.actions.contains(&Action::Admin) => true,
                (ResourcePattern::Cluster, Resource::Cluster) => acts(false),
                (ResourcePattern::Topic(p), Resource::Topic(stored))
                | (ResourcePattern::Group(p), Resource::Group(stored)) => {
                    self.namespace
                        .strip(stored)
                        .is_some_and(|name| p.matches(&name))
                        && acts(true)
                }
                _ => false,
            }
        })
    }
}

/// Whether any of `grants` allows `action` on `resource` (default deny).
pub fn allowed(grants: &[Grant], action: Action, resource: Resource<'_>) -> bool {
    grants.iter().any(|g| g.allows(action, resource))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(actions: &[Action], resources: &[&str], namespace: &str) -> Grant {
        Grant {
            actions: actions.to_vec(),
            resources: resources.iter().map(|r| r.parse().unwrap()).collect(),
            namespace: Namespace::parse(namespace).unwrap(),
        }
    }

    #[test]
    fn names_and_prefixes_match_in_their_namespace_only() {
        let g = grant(
            &[Action::Publish],
            &["topic:orders", "topic:audit-*"],
            "shop",
        );
        assert!(g.allows(Action::Publish, Resource::Topic("shop%orders")));
        assert!(g.allows(Action::Publish, Resource::Topic("shop%audit-eu")));
        assert!(!g.allows(Action::Publish, Resource::Topic("orders")));
        assert!(!g.allows(Action::Publish, Resource::Topic("other%orders")));
        assert!(!g.allows(Action::Publish, Resource::Topic("shop%orders2")));
        assert!(!g.allows(Action::Subscribe, Resource::Topic("shop%orders")));
        assert!(!g.allows(Action::Publish, Resource::Group("shop%orders")));
        assert!(!g.allows(Action::Publish, Resource::Cluster));
    }

    #[test]
    fn the_default_namespace_holds_plain_names_and_dead_letters() {
        let g = grant(&[Action::Subscribe], &["topic:%DLQ%billing", "group:*"], "");
        assert!(g.allows(Action::Subscribe, Resource::Topic("%DLQ%billing")));
        assert!(g.allows(Action::Subscribe, Resource::Group("billing")));
        assert!(!g.allows(Action::Subscribe, Resource::Group("shop%billing")));
    }

    #[test]
    fn admin_implies_every_action_on_its_resources_and_cluster_admin_everything() {
        let g = grant(&[Action::Admin], &["group:billing"], "");
        assert!(g.allows(Action::Delete, Resource::Group("billing")));
        assert!(!g.allows(Action::Delete, Resource::Group("other")));
        assert!(!g.allows(Action::Admin, Resource::Cluster));
        let root = grant(&[Action::Admin], &["cluster"], "");
        assert!(root.allows(Action::Publish, Resource::Topic("shop%orders")));
        assert!(root.allows(Action::Admin, Resource::Cluster));
        let viewer = grant(&[Action::Describe], &["cluster"], "");
        assert!(viewer.allows(Action::Describe, Resource::Cluster));
        assert!(!viewer.allows(Action::Admin, Resource::Cluster));
        assert!(!viewer.allows(Action::Describe, Resource::Topic("orders")));
    }

    #[test]
    fn bad_patterns_are_refused_with_the_pattern_named() {
        for bad in ["topic", "queue:x", "topic:", "topic:a*b", "group:**"] {
            let err = bad.parse::<ResourcePattern>().unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
        assert_eq!(
            "topic:*".parse::<ResourcePattern>().unwrap(),
            ResourcePattern::Topic(NamePattern::Prefix(String::new()))
        );
    }
}
