//! RocketMQ resources to DduoMQ names. A `Resource`'s `resource_namespace` is
//! the DduoMQ namespace (the operator issue's tenant name; "" is the default
//! one); clients that set none in the resource may name it in the
//! `x-mq-namespace` header. Topic and group names then follow DduoMQ's rules.

use dduomq_proto::Namespace;
use dduomq_proto::rocketmq::v2 as rmq;
use tonic::metadata::MetadataMap;

use super::clients::ClientRef;
use crate::auth::{Action, Caller, Resource};
use crate::grpc::namespace::Names;
use crate::messaging::error::BrokerError;
use crate::messaging::limits;

/// The header official clients name their namespace in.
const NAMESPACE_HEADER: &str = "x-mq-namespace";
/// The header official clients name themselves in.
const CLIENT_ID_HEADER: &str = "x-mq-client-id";

/// One request's view of names: its namespace, its client's id, and who
/// sent it (every name is resolved together with the rights it needs).
#[derive(Debug, Clone)]
pub struct Scope {
    pub ns: Namespace,
    pub client_id: String,
    pub caller: Caller,
}

impl Scope {
    /// The scope of a request's headers; the namespace of the resources it
    /// names replaces the header's (see [`Scope::topic`]).
    pub fn of(metadata: &MetadataMap, caller: Caller) -> Result<Scope, BrokerError> {
        let header = |name: &str| {
            metadata
                .get(name)
                .map(|v| v.to_str().unwrap_or("\u{0}").to_string())
                .unwrap_or_default()
        };
        let client_id = header(CLIENT_ID_HEADER);
        limits::check_id(
            "x-mq-client-id",
            &client_id,
            limits::MAX_CLIENT_ID_LEN,
            true,
        )?;
        Ok(Scope {
            ns: namespace(&header(NAMESPACE_HEADER))?,
            client_id,
            caller,
        })
    }

    /// The client as its user names it (requests that hold state per
    /// client need its id).
    pub fn client(&self) -> Result<ClientRef, BrokerError> {
        Ok(ClientRef {
            owner: self.caller.name().to_string(),
            id: self.client_id()?.to_string(),
        })
    }

    /// The client id, which requests that hold state per client need.
    pub fn client_id(&self) -> Result<&str, BrokerError> {
        if self.client_id.is_empty() {
            return Err(BrokerError::invalid(
                "x-mq-client-id",
                "this request needs the client's id header",
            ));
        }
        Ok(&self.client_id)
    }

    /// The stored name of a topic resource, on which the caller may do any
    /// of `need`; its namespace becomes the scope's.
    pub fn topic(
        &mut self,
        r: Option<&rmq::Resource>,
        need: &[Action],
    ) -> Result<String, BrokerError> {
        let r = self.adopt("topic", r)?;
        let stored = self.ns.topic(&r.name)?;
        limits::check_topic_name(&stored)?;
        self.caller.require_any(need, Resource::Topic(&stored))?;
        Ok(stored)
    }

    /// The stored name of a group resource, on which the caller may do any of
    /// `need`; its namespace becomes the scope's.
    pub fn group(
        &mut self,
        r: Option<&rmq::Resource>,
        need: &[Action],
    ) -> Result<String, BrokerError> {
        let r = self.adopt("group", r)?;
        let stored = self.ns.group("group", &r.name)?;
        limits::check_group_name("group", &stored)?;
        self.caller.require_any(need, Resource::Group(&stored))?;
        Ok(stored)
    }

    /// A resource as this scope's clients see a stored name.
    pub fn resource(&self, stored: String) -> rmq::Resource {
        rmq::Resource {
            resource_namespace: self.ns.metadata_value().unwrap_or_default().to_string(),
            name: self.ns.shown(stored),
        }
    }

    fn adopt<'a>(
        &mut self,
        what: &'static str,
        r: Option<&'a rmq::Resource>,
    ) -> Result<&'a rmq::Resource, BrokerError> {
        let r = r.ok_or_else(|| BrokerError::invalid(what, "missing"))?;
        if !r.resource_namespace.is_empty() {
            self.ns = namespace(&r.resource_namespace)?;
        }
        Ok(r)
    }
}

fn namespace(value: &str) -> Result<Namespace, BrokerError> {
    Namespace::parse(value).map_err(|e| BrokerError::invalid("namespace", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(ns: &str, name: &str) -> rmq::Resource {
        rmq::Resource {
            resource_namespace: ns.to_string(),
            name: name.to_string(),
        }
    }

    #[test]
    fn the_resource_namespace_qualifies_names_and_shows_them_back() {
        let mut scope = Scope::of(&MetadataMap::new(), Caller::anyone()).unwrap();
        let stored = scope
            .topic(Some(&resource("shop", "orders")), &[Action::Publish])
            .unwrap();
        assert_ne!(stored, "orders");
        assert_eq!(scope.resource(stored), resource("shop", "orders"));
        let mut plain = Scope::of(&MetadataMap::new(), Caller::anyone()).unwrap();
        assert_eq!(
            plain
                .topic(Some(&resource("", "orders")), &[Action::Publish])
                .unwrap(),
            "orders"
        );
    }

    #[test]
    fn bad_names_and_missing_resources_are_refused() {
        let mut scope = Scope::of(&MetadataMap::new(), Caller::anyone()).unwrap();
        assert!(scope.topic(None, &[Action::Publish]).is_err());
        assert!(
            scope
                .topic(Some(&resource("", "a b")), &[Action::Publish])
                .is_err()
        );
        assert!(
            scope
                .topic(Some(&resource("bad ns", "t")), &[Action::Publish])
                .is_err()
        );
        assert!(scope.client_id().is_err());
    }
}
