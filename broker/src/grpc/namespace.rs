//! The namespace of a request (metadata `x-dduomq-namespace`, see
//! `dduomq_proto::namespace`): every topic and group name a client sends is
//! qualified with it here, and every name the broker answers with is shown as
//! the client spells it, so the messaging core and the store keep working on
//! plain (qualified) names. `UpdateRoutes` carries qualified names as they are.

use dduomq_proto::namespace::{NAMESPACE_METADATA, Namespace, NamespaceError};
use dduomq_proto::v1 as pb;
use tonic::{Request, Status};

use super::status::{to_status, to_status_shown};
use crate::messaging::error::BrokerError;
use crate::messaging::limits::{MAX_GROUP_NAME_LEN, MAX_TOPIC_LEN};
use crate::messaging::properties::DLQ_ORIGIN_TOPIC;

/// The namespace a request names; the default one when it names none.
pub fn of_request<T>(req: &Request<T>) -> Result<Namespace, Status> {
    let Some(value) = req.metadata().get(NAMESPACE_METADATA) else {
        return Ok(Namespace::default());
    };
    let value = value.to_str().map_err(|_| {
        refusal(
            "namespace",
            NamespaceError::BadNamespace(String::from_utf8_lossy(value.as_bytes()).into_owned()),
        )
    })?;
    Namespace::parse(value).map_err(|e| refusal("namespace", e))
}

fn refusal(what: &'static str, e: NamespaceError) -> Status {
    to_status(invalid(what, e))
}

fn invalid(what: &'static str, e: NamespaceError) -> BrokerError {
    BrokerError::invalid(what, e.to_string())
}

/// Request names in, response names out, for one request's namespace.
pub trait Names {
    /// The stored name of a topic a client named.
    fn topic(&self, name: &str) -> Result<String, BrokerError>;
    /// The stored name of a (consumer or producer) group a client named.
    fn group(&self, what: &'static str, name: &str) -> Result<String, BrokerError>;
    /// A stored name as this namespace's clients spell it; one of another
    /// namespace (never expected where this is used) stays as stored.
    fn shown(&self, stored: String) -> String;
    /// Whether a stored name is in this namespace (for lists).
    fn holds(&self, stored: &str) -> bool;
    /// An error message with the stored names in it spelt as this
    /// namespace's clients spell them (`%` is in no name a client sends, so
    /// `"shop%` and `%shop%` only ever start a qualified name; names in
    /// messages are quoted for this).
    fn shown_message(&self, message: String) -> String;
    /// The refusal of `e`, its message as [`Names::shown_message`] shows it.
    fn refusal(&self, e: BrokerError) -> Status;
    /// A message as this namespace's clients see it: its topic and, for a
    /// dead-lettered copy, its origin topic.
    fn message(&self, m: pb::Message) -> pb::Message;
}

impl Names for Namespace {
    fn topic(&self, name: &str) -> Result<String, BrokerError> {
        self.qualify(name, MAX_TOPIC_LEN)
            .map_err(|e| invalid("topic name", e))
    }

    fn group(&self, what: &'static str, name: &str) -> Result<String, BrokerError> {
        self.qualify(name, MAX_GROUP_NAME_LEN)
            .map_err(|e| invalid(what, e))
    }

    fn shown(&self, stored: String) -> String {
        match self.strip(&stored) {
            Some(name) => name.into_owned(),
            None => stored,
        }
    }

    fn holds(&self, stored: &str) -> bool {
        self.strip(stored).is_some()
    }

    fn shown_message(&self, message: String) -> String {
        let Some(ns) = self.metadata_value() else {
            return message;
        };
        message
            .replace(&format!("\"{ns}%"), "\"")
            .replace(&format!("%{ns}%"), "%")
    }

    fn refusal(&self, e: BrokerError) -> Status {
        to_status_shown(e, |message| self.shown_message(message))
    }

    fn message(&self, mut m: pb::Message) -> pb::Message {
        if self.is_default() {
            return m;
        }
        m.topic = self.shown(m.topic);
        if let Some(origin) = m.properties.get_mut(DLQ_ORIGIN_TOPIC.name) {
            *origin = self.shown(std::mem::take(origin));
        }
        m
    }
}
