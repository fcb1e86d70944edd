//! What a failed send makes the producer avoid.

use std::collections::HashMap;
use std::time::Instant;

use dduomq_proto::Reason;
use tonic::Status;
use tonic_types::{ErrorDetails, StatusExt};

use super::{ProducerBuilder, avoided};
use crate::error::ClientError;

/// A broker's refusal with `reason`, as the SDK receives it.
fn refusal(reason: Reason) -> ClientError {
    ClientError::from(Status::with_error_details(
        reason.grpc_code(),
        "refused",
        ErrorDetails::with_error_info(reason.as_str(), "dduomq.io", HashMap::new()),
    ))
}

/// A member the route names master that is still taking over is the right
/// broker: avoiding it would keep sends away for seconds after it took over.
/// A replica's refusal is the route's fault: that broker is avoided.
#[tokio::test]
async fn a_master_taking_over_is_not_avoided_and_a_replica_is() {
    // Connections are lazy: nothing is sent anywhere.
    let producer = ProducerBuilder::new("http://127.0.0.1:1").build().unwrap();
    let inner = &producer.inner;
    let member = "127.0.0.1:2";
    inner.mark_faulty(member, &refusal(Reason::MasterTakingOver));
    assert!(inner.faulty.lock().is_empty());
    inner.mark_faulty(member, &refusal(Reason::NotMaster));
    assert!(avoided(&inner.faulty.lock(), member, Instant::now()));
}
