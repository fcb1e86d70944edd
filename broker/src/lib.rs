//! The DduoMQ broker library: the storage engine ([`store`]) and configuration.
//! The `dduomq-broker` binary wires them to the network.

pub mod config;
pub mod store;
