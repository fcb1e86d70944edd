//! Raw requests to the RocketMQ door (no official client), for the suites
//! that check what the clients do not send or do not use.

use dduomq_proto::rocketmq::v2 as rmq;
use tonic::Request;

/// A resource of the default namespace.
pub fn resource(name: &str) -> Option<rmq::Resource> {
    Some(rmq::Resource {
        resource_namespace: String::new(),
        name: name.to_string(),
    })
}

/// A request from one client, named in its header as the clients name
/// themselves.
pub fn request<T>(body: T) -> Request<T> {
    let mut r = Request::new(body);
    r.metadata_mut()
        .insert("x-mq-client-id", "raw-test-client".parse().unwrap());
    r
}

/// The protocol code of a status.
pub fn code(s: &rmq::Status) -> rmq::Code {
    rmq::Code::try_from(s.code).unwrap()
}
