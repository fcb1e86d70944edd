//! The DduoMQ gRPC contract (generated code lands here with the messaging API).
