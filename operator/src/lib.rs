//! The DduoMQ operator library: metrics today; the Topic and ConsumerGroup
//! controllers, the broker registry and placement arrive with the operator issue.

pub mod metrics;
