//! Topic and group changes in a replicated group of real broker processes,
//! with the test as the controller: only the master changes them (a replica
//! refuses changes and auto-creates nothing, its tables follow the master's
//! `%META%` records), and the master answers a change only once its record
//! is acknowledged by the in-sync set.

#[path = "replication/group.rs"]
#[allow(dead_code)] // shared with the other replication suites
mod group;

use std::time::Duration;

use dduomq_client::proto as pb;
use dduomq_client::proto::admin_service_client::AdminServiceClient;
use dduomq_client::proto::messaging_service_client::MessagingServiceClient;
use dduomq_client::{ClientError, Reason};
use dduomq_testkit::{Broker, eventually};
use group::{
    make_master, make_replica, record_proposal, start_group_of_three, start_member, state,
};

type AdminClient = AdminServiceClient<tonic::transport::Channel>;

async fn admin(b: &Broker) -> AdminClient {
    AdminServiceClient::connect(format!("http://{}", b.grpc))
        .await
        .expect("admin connection")
}

async fn create_topic(b: &Broker, name: &str) -> Result<(), ClientError> {
    admin(b)
        .await
        .create_topic(pb::CreateTopicRequest {
            name: name.into(),
            queues: 2,
            ..Default::default()
        })
        .await
        .map(drop)
        .map_err(ClientError::from)
}

async fn delete_topic(b: &Broker, name: &str) -> Result<(), ClientError> {
    admin(b)
        .await
        .delete_topic(pb::DeleteTopicRequest { name: name.into() })
        .await
        .map(drop)
        .map_err(ClientError::from)
}

async fn create_group(b: &Broker, name: &str) -> Result<(), ClientError> {
    let group = pb::Group {
        name: name.into(),
        ..Default::default()
    };
    admin(b)
        .await
        .create_group(pb::CreateGroupRequest { group: Some(group) })
        .await
        .map(drop)
        .map_err(ClientError::from)
}

async fn delete_group(b: &Broker, name: &str) -> Result<(), ClientError> {
    admin(b)
        .await
        .delete_group(pb::DeleteGroupRequest { name: name.into() })
        .await
        .map(drop)
        .map_err(ClientError::from)
}

async fn topics(b: &Broker) -> Vec<String> {
    let mut names: Vec<String> = admin(b)
        .await
        .list_topics(pb::ListTopicsRequest {})
        .await
        .expect("topics")
        .into_inner()
        .topics
        .into_iter()
        .map(|t| t.name)
        .collect();
    names.sort();
    names
}

async fn groups(b: &Broker) -> Vec<String> {
    let mut names: Vec<String> = admin(b)
        .await
        .list_groups(pb::ListGroupsRequest {})
        .await
        .expect("groups")
        .into_inner()
        .groups
        .into_iter()
        .map(|g| g.name)
        .collect();
    names.sort();
    names
}

fn assert_not_master(result: Result<(), ClientError>, what: &str) {
    let refused = result.expect_err(what);
    assert_eq!(
        refused.reason(),
        Some(Reason::NotMaster),
        "{what}: {refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_refuse_topic_and_group_changes() {
    let a = start_member(0, "");
    let b = start_member(1, "");
    make_replica(&b, 1, 0, &a.grpc).await;
    make_master(&a.grpc, 0, 1, &[0, 1], 1).await;
    create_topic(&a, "orders").await.expect("created");
    create_group(&a, "billing").await.expect("created");
    let expected_topics = vec!["%DLQ%billing".to_string(), "orders".to_string()];
    eventually(
        Duration::from_secs(20),
        "the replica to apply the master's changes",
        async || {
            (topics(&b).await == expected_topics && groups(&b).await == ["billing"]).then_some(())
        },
    )
    .await;

    assert_not_master(create_topic(&b, "local").await, "create on a replica");
    assert_not_master(delete_topic(&b, "orders").await, "delete on a replica");
    assert_not_master(create_group(&b, "local").await, "group on a replica");
    assert_not_master(
        delete_group(&b, "billing").await,
        "group delete on a replica",
    );
    // Nothing auto-created by a send or a route query either.
    let send = group::send_message(
        &b,
        pb::OutgoingMessage {
            topic: "unknown".into(),
            body: b"x".to_vec().into(),
            ..Default::default()
        },
    )
    .await
    .map(drop);
    assert_not_master(send, "send to a replica");
    let route = MessagingServiceClient::connect(format!("http://{}", b.grpc))
        .await
        .expect("messaging connection")
        .query_route(pb::QueryRouteRequest {
            topic: "unknown".into(),
        })
        .await
        .map(drop)
        .map_err(ClientError::from);
    assert_not_master(route, "route query on a replica");
    assert_eq!(topics(&b).await, expected_topics);
    assert_eq!(groups(&b).await, ["billing"]);
    assert_eq!(topics(&a).await, expected_topics);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_is_answered_once_the_quorum_stored_it() {
    let settings = "ack_timeout = \"1s\"";
    let [a, mut b, mut c] = start_group_of_three(settings).await;
    create_topic(&a, "orders").await.expect("acknowledged");
    create_group(&a, "billing").await.expect("acknowledged");
    let committed = state(&a).await.committed_end;
    b.kill();
    c.kill();

    for (what, result) in [
        ("create topic", create_topic(&a, "later").await),
        ("delete topic", delete_topic(&a, "orders").await),
        ("create group", create_group(&a, "audit").await),
        ("delete group", delete_group(&a, "billing").await),
    ] {
        let refused = result.expect_err(what);
        assert_eq!(
            refused.reason(),
            Some(Reason::QuorumTimeout),
            "{what}: {refused}"
        );
        assert!(refused.is_retryable(), "{what}");
    }
    assert_eq!(
        state(&a).await.committed_end,
        committed,
        "nothing acknowledged"
    );

    // One member back and recorded in sync: the retried changes are answered.
    b.start_again();
    make_replica(&b, 1, 0, &a.grpc).await;
    record_proposal(&a, &[0, 1]).await;
    // The refused changes were made on the master (not acknowledged, they
    // might have been lost in a failover); a retry answers once they are.
    create_topic(&a, "later").await.expect("acknowledged");
    create_group(&a, "audit").await.expect("acknowledged");
    let expected_topics: Vec<String> = ["%DLQ%audit", "%DLQ%billing", "later"]
        .map(String::from)
        .into();
    assert_eq!(topics(&a).await, expected_topics);
    assert_eq!(groups(&a).await, ["audit"]);
    eventually(
        Duration::from_secs(20),
        "the replica to hold the acknowledged changes",
        async || {
            (topics(&b).await == expected_topics && groups(&b).await == ["audit"]).then_some(())
        },
    )
    .await;
    drop(c);
}
