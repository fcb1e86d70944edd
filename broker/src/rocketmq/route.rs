//! Routes through the RocketMQ door. QueryRoute lists the topic's queues as
//! the operator placed them (or, standalone, this broker's), each with the
//! broker that serves it: writable where that broker is the master of its
//! group, readable where it serves consumers, so clients follow a failover
//! as soon as the operator's next route names the new master. Every broker
//! is listed with id 0, which official clients require of a broker they send
//! to or receive from; the permission tells what it takes.

use std::net::IpAddr;

use dduomq_proto::rocketmq::v2 as rmq;

use super::RocketMqApi;
use super::message::type_to_rmq;
use super::names::Scope;
use crate::auth::Action;
use crate::messaging::RouteAnswer;
use crate::messaging::error::BrokerError;
use crate::messaging::routes::QueueRoute;

impl RocketMqApi {
    pub(super) fn route(
        &self,
        scope: &mut Scope,
        topic: Option<&rmq::Resource>,
        need: &[Action],
    ) -> Result<Vec<rmq::MessageQueue>, BrokerError> {
        let stored = scope.topic(topic, need)?;
        let RouteAnswer { route, .. } = self.broker.route(&stored)?;
        let accepts = vec![type_to_rmq(route.message_type) as i32];
        Ok(route
            .queues
            .into_iter()
            .map(|q| rmq::MessageQueue {
                topic: Some(scope.resource(stored.clone())),
                id: q.queue_id as i32,
                permission: permission(&q) as i32,
                broker: Some(self.broker_of(&q)),
                accept_message_types: accepts.clone(),
            })
            .collect())
    }

    /// The queues a consumer of the topic receives from: one per broker that
    /// serves consumers (a receive takes from all of that broker's queues).
    pub(super) fn assignments(
        &self,
        scope: &mut Scope,
        r: &rmq::QueryAssignmentRequest,
    ) -> Result<Vec<rmq::Assignment>, BrokerError> {
        scope.group(r.group.as_ref(), &[Action::Subscribe])?;
        let mut queues = self.route(scope, r.topic.as_ref(), &[Action::Subscribe])?;
        queues.retain(|q| {
            matches!(
                rmq::Permission::try_from(q.permission),
                Ok(rmq::Permission::Read | rmq::Permission::ReadWrite)
            )
        });
        let mut seen = std::collections::HashSet::new();
        queues.retain(|q| seen.insert(q.broker.as_ref().map(|b| b.name.clone())));
        Ok(queues
            .into_iter()
            .map(|q| rmq::Assignment {
                message_queue: Some(q),
            })
            .collect())
    }

    /// The broker serving a queue, reached on its RocketMQ listener: the
    /// gRPC port, or this broker's `rocketmq_addr` port where the protocol
    /// has a listener of its own (the brokers of a cluster share one
    /// configuration).
    fn broker_of(&self, q: &QueueRoute) -> rmq::Broker {
        let mut endpoints = endpoints(&q.broker_address);
        if let Some(own) = self.broker.config().rocketmq_addr {
            for a in &mut endpoints.addresses {
                a.port = own.port().into();
            }
        }
        rmq::Broker {
            name: format!("broker-{}", q.broker_id),
            id: 0,
            endpoints: Some(endpoints),
        }
    }
}

fn permission(q: &QueueRoute) -> rmq::Permission {
    match (q.readable, q.writable) {
        (true, true) => rmq::Permission::ReadWrite,
        (true, false) => rmq::Permission::Read,
        (false, true) => rmq::Permission::Write,
        (false, false) => rmq::Permission::None,
    }
}

/// `host:port` as the protocol's endpoints.
pub fn endpoints(address: &str) -> rmq::Endpoints {
    let (host, port) = address.rsplit_once(':').unwrap_or((address, ""));
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let scheme = match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => rmq::AddressScheme::IPv4,
        Ok(IpAddr::V6(_)) => rmq::AddressScheme::IPv6,
        Err(_) => rmq::AddressScheme::DomainName,
    };
    rmq::Endpoints {
        scheme: scheme as i32,
        addresses: vec![rmq::Address {
            host: host.to_string(),
            port: port.parse().unwrap_or_default(),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_endpoints_of_their_scheme() {
        let e = endpoints("127.0.0.1:6086");
        assert_eq!(e.scheme, rmq::AddressScheme::IPv4 as i32);
        assert_eq!(e.addresses[0].host, "127.0.0.1");
        assert_eq!(e.addresses[0].port, 6086);
        let e = endpoints("dduomq-0.dduomq.ns.svc:6086");
        assert_eq!(e.scheme, rmq::AddressScheme::DomainName as i32);
        let e = endpoints("[::1]:6086");
        assert_eq!(e.scheme, rmq::AddressScheme::IPv6 as i32);
        assert_eq!(e.addresses[0].host, "::1");
    }
}
