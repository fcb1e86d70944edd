//! Test support shared by the SDK and CLI tests, the operator e2e and the cluster
//! e2e: real broker processes, one way of waiting for a condition, and (for the
//! cluster scenarios) a ledger of sends and deliveries, a steady load and a
//! report of timings; the official RocketMQ clients' scenario programs.

mod broker;
mod consume;
mod eventually;
mod fs;
mod ledger;
mod load;
mod report;
pub mod rocketmq;

pub use broker::{
    Broker, Options, create_topics, free_port, http_get, https_get, sibling_binary, stored,
};
pub use consume::bodies_received;
pub use eventually::{eventually, eventually_every};
pub use fs::copy_dir;
pub use ledger::{FailedSend, Ledger, all_acked_consumed, body_of, broker_of, index_of};
pub use load::{Load, LoadRate, LoadStats, acks_flowing};
pub use report::{Report, Step, secs};
