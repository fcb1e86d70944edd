//! The DduoMQ Rust SDK.
