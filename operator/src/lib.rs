//! The DduoMQ operator: the `Topic` and `ConsumerGroup` custom resources, the
//! broker registry (EndpointSlices), queue placement and the route table, the
//! controllers that make the brokers match the resources, and the fleet loop
//! that owns the broker count (safe scale-in).

pub mod backoff;
pub mod brokers;
pub mod cas;
pub mod context;
pub mod controller;
pub mod crd;
pub mod crd_upgrade;
pub mod crdgen;
pub mod fleet;
pub mod group;
pub mod leader;
pub mod metrics;
pub mod placement;
pub mod registry;
pub mod replication;
pub mod route_epoch;
pub mod routes;
pub mod topic;
pub mod uninstall;

#[cfg(test)]
mod test_support;
