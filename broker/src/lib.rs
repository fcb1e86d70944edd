//! The DduoMQ broker: the storage engine ([`store`]), the messaging layer
//! ([`messaging`]), and the gRPC ([`grpc`]) and HTTP ([`http`]) servers. The
//! `dduomq-broker` binary wires them together. [`rocketmq`] serves the Apache
//! RocketMQ 5 protocol beside our own.

pub mod auth;
pub mod config;
pub mod connections;
pub mod filter;
#[cfg(test)]
mod fuzz_corpus;
pub mod grpc;
pub mod http;
pub mod messaging;
pub mod metrics;
pub mod replication;
pub mod rocketmq;
pub mod store;
pub mod tls;
