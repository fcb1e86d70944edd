//! The DduoMQ operator: the `Topic` and `ConsumerGroup` custom resources, the
//! broker registry (EndpointSlices), queue placement and the route table, and
//! the controllers that make the brokers match the resources.

pub mod crd;
pub mod crdgen;
pub mod metrics;
