//! What each gRPC method needs, by its path. One table for every service the
//! broker serves; a test walks the services' descriptors so that a new RPC
//! cannot be left out, and a path not in the table needs cluster admin.

use super::policy::Action;

/// What a method needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Anyone, signed or not (health checks).
    Open,
    /// Any authenticated user; the handler shows only what the caller may
    /// see, or the method touches nothing of anyone else's.
    Authenticated,
    /// `action` on the cluster, checked before the handler runs.
    Cluster(Action),
    /// Rights on the topics and groups the request names, checked by the
    /// handler once it has read them.
    Resources,
}

use Rule::*;

const MESSAGING: &str = "/dduomq.v1.MessagingService/";
const ADMIN: &str = "/dduomq.v1.AdminService/";
const REPLICATION: &str = "/dduomq.v1.ReplicationService/";
const ROCKETMQ: &str = "/apache.rocketmq.v2.MessagingService/";

/// Every method served, by service prefix and method name.
pub const RULES: &[(&str, &str, Rule)] = &[
    ("/grpc.health.v1.Health/", "Check", Open),
    ("/grpc.health.v1.Health/", "Watch", Open),
    (
        "/grpc.reflection.v1.ServerReflection/",
        "ServerReflectionInfo",
        Authenticated,
    ),
    (MESSAGING, "QueryRoute", Resources),
    (MESSAGING, "Send", Resources),
    (MESSAGING, "Receive", Resources),
    (MESSAGING, "Ack", Resources),
    (MESSAGING, "ChangeInvisibleDuration", Resources),
    (MESSAGING, "Nack", Resources),
    (MESSAGING, "Pull", Resources),
    (MESSAGING, "CommitOffset", Resources),
    (MESSAGING, "QueryOffset", Resources),
    (MESSAGING, "Heartbeat", Resources),
    (MESSAGING, "EndTransaction", Resources),
    (MESSAGING, "TransactionChecks", Resources),
    (ADMIN, "CreateTopic", Resources),
    (ADMIN, "DeleteTopic", Resources),
    (ADMIN, "ListTopics", Authenticated),
    (ADMIN, "DescribeTopic", Resources),
    (ADMIN, "CreateGroup", Resources),
    (ADMIN, "DeleteGroup", Resources),
    (ADMIN, "ListGroups", Authenticated),
    (ADMIN, "DescribeGroup", Resources),
    (ADMIN, "ResetOffset", Resources),
    (ADMIN, "LookupMessage", Resources),
    (ADMIN, "BrokerInfo", Cluster(Action::Describe)),
    (ADMIN, "UpdateRoutes", Cluster(Action::Admin)),
    (ADMIN, "SetDraining", Cluster(Action::Admin)),
    (ADMIN, "AssignRole", Cluster(Action::Admin)),
    (REPLICATION, "Follow", Cluster(Action::Admin)),
    (REPLICATION, "ReadLog", Cluster(Action::Admin)),
    (ROCKETMQ, "QueryRoute", Resources),
    (ROCKETMQ, "Heartbeat", Resources),
    (ROCKETMQ, "SendMessage", Resources),
    (ROCKETMQ, "QueryAssignment", Resources),
    (ROCKETMQ, "ReceiveMessage", Resources),
    (ROCKETMQ, "AckMessage", Resources),
    (ROCKETMQ, "ForwardMessageToDeadLetterQueue", Resources),
    (ROCKETMQ, "PullMessage", Resources),
    (ROCKETMQ, "UpdateOffset", Resources),
    (ROCKETMQ, "GetOffset", Resources),
    (ROCKETMQ, "QueryOffset", Resources),
    (ROCKETMQ, "EndTransaction", Resources),
    // Settings name the client's topics and group; the transaction checks it
    // then receives are for topics it was allowed to publish to.
    (ROCKETMQ, "Telemetry", Resources),
    // Releases only what this client id holds.
    (ROCKETMQ, "NotifyClientTermination", Authenticated),
    (ROCKETMQ, "ChangeInvisibleDuration", Resources),
    // Not implemented: answered NOT_IMPLEMENTED to anyone signed.
    (ROCKETMQ, "RecallMessage", Authenticated),
    (ROCKETMQ, "SyncLiteSubscription", Authenticated),
];

/// The rule of the method at `path` and its name (for audit and metrics);
/// an unknown path needs cluster admin.
pub fn rule(path: &str) -> (Rule, &'static str) {
    RULES
        .iter()
        .find(|(service, method, _)| path.strip_prefix(service) == Some(method))
        .map_or((Cluster(Action::Admin), "unknown"), |&(_, method, rule)| {
            (rule, method)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every method of every service in the descriptors has a rule, and every
    /// rule names a served method.
    #[test]
    fn every_served_method_has_a_rule() {
        let paths = dduomq_proto::served_methods();
        for path in &paths {
            assert!(
                RULES
                    .iter()
                    .any(|(s, m, _)| path.strip_prefix(s) == Some(m)),
                "{path} has no rule in auth::rules::RULES"
            );
        }
        for (service, method, _) in RULES {
            assert!(
                paths.contains(&format!("{service}{method}")),
                "{service}{method} is not served"
            );
        }
        assert_eq!(paths.len(), RULES.len());
        assert_eq!(
            rule("/dduomq.v1.AdminService/Nope"),
            (Cluster(Action::Admin), "unknown")
        );
        assert_eq!(
            rule("/dduomq.v1.AdminService/SetDraining"),
            (Cluster(Action::Admin), "SetDraining")
        );
    }
}
