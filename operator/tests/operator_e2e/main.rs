//! The operator against a real kube-apiserver (run by `e2e/run operator`, inside
//! the network namespace it creates). Real broker processes listen on the
//! namespace's addresses; the test publishes their EndpointSlice; the operator
//! runs with the ServiceAccount token bound to the shipped ClusterRole.

mod crds;
mod env;
mod fields;
mod group_fields;
mod placement;
mod replication;
mod status;
mod subscriptions;
mod tenants;
mod upgrade;

use env::*;
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use dduomq_client::{Message, ProducerBuilder};
use dduomq_operator::crd::{ConsumerGroup, Topic};
use dduomq_testkit::eventually_every;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_scenarios() {
    let env = Env::load();
    let client = Client::try_default().await.expect("admin kubeconfig");
    let mut brokers: Vec<Child> = (0..env.ips.len()).map(|i| env.start_broker(i)).collect();
    publish_slice(&client, &env, &[true, true, true]).await;
    let mut operator = env.start_operator("operator-a");
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": APP_NS}})).unwrap(),
        )
        .await
        .unwrap();
    let topics: Api<Topic> = Api::namespaced(client.clone(), APP_NS);
    let groups: Api<ConsumerGroup> = Api::namespaced(client.clone(), APP_NS);
    let suite = Instant::now();

    let t = step("kubectl apply a Topic → Ready, on every broker, queues spread");
    kubectl_apply(&env, &topic_yaml("orders", 6, ""));
    // Readiness is the Topic controller's; the placement, the route publisher's.
    let status = eventually_every(
        POLL,
        Duration::from_secs(30),
        "orders Ready and placed",
        async || {
            let t = topics.get("orders").await.ok()?;
            let placed = t.status.as_ref()?.assignment.len() == 6;
            (ready(t.status.as_ref()) && placed).then(|| t.status.clone().unwrap())
        },
    )
    .await;
    assert_eq!(status.broker_count, 3);
    assert_eq!(status.assignment.len(), 6);
    let per: BTreeMap<&str, usize> = status.assignment.iter().fold(BTreeMap::new(), |mut m, a| {
        *m.entry(a.broker.as_str()).or_default() += 1;
        m
    });
    assert_eq!(
        per.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2],
        "{per:?}"
    );
    for i in 0..3 {
        assert_eq!(queues_on(&env, i, "orders").await, Some(6), "broker {i}");
    }
    let route = eventually_every(
        POLL,
        Duration::from_secs(20),
        "the route table",
        async || route_on(&env, "orders").await,
    )
    .await;
    assert_eq!(route.len(), 3);
    assert!(route.values().all(|(w, _)| *w == 2), "{route:?}");
    eprintln!("    ready in {:?}", t.elapsed());

    step("kubectl get topics shows the printer columns");
    status::topic_columns(&env).await;

    step("kubectl get consumergroups shows the lag of unconsumed messages");
    status::group_lag_column(&env, &topics, &groups).await;

    step("produce across brokers; a ConsumerGroup consumes everything");
    let out = env.kubectl(
        &["apply", "-f", "-"],
        Some(&format!("apiVersion: dduomq.io/v1alpha1\nkind: ConsumerGroup\nmetadata:\n  name: billing\n  namespace: {APP_NS}\nspec:\n  subscriptions:\n  - topic: orders\n  maxDeliveryAttempts: 5\n  retryBackoff: [\"200ms\"]\n")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually_every(POLL, Duration::from_secs(30), "billing Ready", async || {
        let g = groups.get("billing").await.ok()?;
        g.status
            .as_ref()
            .is_some_and(|s| s.conditions.iter().any(|c| c.status == "True"))
            .then_some(())
    })
    .await;
    let producer = ProducerBuilder::new(env.grpc(0))
        .namespace(APP_NS)
        .build()
        .unwrap();
    let mut used = BTreeSet::new();
    for i in 0..60 {
        let r = producer
            .send(Message::new("orders", format!("order-{i}")))
            .await
            .unwrap();
        used.insert(r.queue_id);
    }
    assert_eq!(used.len(), 6, "every queue took writes");
    for i in 0..3 {
        assert_eq!(
            messages_on(&env, i, "orders").await,
            Some(20),
            "broker {i} holds its share"
        );
    }
    let got: BTreeSet<String> = consume(&env, "billing", "orders", 60)
        .await
        .into_iter()
        .collect();
    assert_eq!(got.len(), 60);
    assert_eq!(total_lag(&env, "billing").await, 0);
    subscriptions::a_declared_tag_filter_takes_effect(&env, &client).await;

    step("draining a broker moves its writes away until its data is consumed");
    let drain = |args: &[&str]| {
        Command::new(env.bin.join("dduomq"))
            .args(["--server", &env.grpc(1), "-o", "json", "broker"])
            .args(args)
            .output()
            .unwrap()
    };
    let out = drain(&["drain", "--no-wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let draining = env.grpc(1);
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "broker 1 out of the write route",
        async || {
            let r = route_on(&env, "orders").await?;
            (r.get(&draining).is_some_and(|(w, rd)| *w == 0 && *rd == 2)
                && r.values().map(|(w, _)| w).sum::<usize>() == 6)
                .then_some(())
        },
    )
    .await;
    let before = messages_on(&env, 1, "orders").await;
    let producer = ProducerBuilder::new(env.grpc(0))
        .namespace(APP_NS)
        .route_ttl(Duration::ZERO)
        .build()
        .unwrap();
    for i in 0..30 {
        producer
            .send(Message::new("orders", format!("late-{i}")))
            .await
            .unwrap();
    }
    assert_eq!(
        messages_on(&env, 1, "orders").await,
        before,
        "a draining broker takes no writes"
    );
    consume(&env, "billing", "orders", 30).await;
    let out = drain(&["drain", "--timeout", "30s"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["drained"], true, "{report}");
    assert_eq!(report["unconsumed_messages"], 0);
    assert!(drain(&["undrain"]).status.success());
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "broker 1 writable again",
        async || {
            let r = route_on(&env, "orders").await?;
            r.get(&draining).is_some_and(|(w, _)| *w == 2).then_some(())
        },
    )
    .await;

    step("invalid specs are refused by the API server with the CEL message");
    status::invalid_specs_are_refused(&env, &topics).await;

    step("changing queues updates the brokers");
    topics
        .patch(
            "orders",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"queues": 9}})),
        )
        .await
        .unwrap();
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "9 queues everywhere",
        async || {
            if !queues_everywhere(&env, "orders", 9).await {
                return None;
            }
            let t = topics.get("orders").await.ok()?;
            (t.status?.assignment.len() == 9).then_some(())
        },
    )
    .await;

    fields::topic_fields_reach_the_brokers(&env, &client).await;
    group_fields::an_sql_subscription_filters_deliveries(&env, &client).await;
    group_fields::an_ordered_group_holds_the_queue_until_the_ack(&env, &client).await;
    group_fields::a_broadcast_group_gives_every_member_everything(&env, &client).await;
    group_fields::failed_messages_are_retried_then_dead_lettered_or_dropped(&env, &client).await;
    group_fields::a_fifo_topic_is_fifo_on_every_broker(&env, &client).await;

    step("a broker turning not-ready leaves the write route, and returns");
    publish_slice(&client, &env, &[true, true, false]).await;
    let gone = env.grpc(2);
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "broker 2 out of the write route",
        async || {
            let r = route_on(&env, "orders").await?;
            (!r.contains_key(&gone) && r.values().map(|(w, _)| w).sum::<usize>() == 9).then_some(())
        },
    )
    .await;
    eventually_every(POLL, Duration::from_secs(30), "brokerCount 2", async || {
        (topics.get("orders").await.ok()?.status?.broker_count == 2).then_some(())
    })
    .await;
    publish_slice(&client, &env, &[true, true, true]).await;
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "broker 2 back in the write route",
        async || {
            let r = route_on(&env, "orders").await?;
            (r.get(&gone).is_some_and(|(w, _)| *w == 3)).then_some(())
        },
    )
    .await;

    placement::a_joining_broker_moves_only_what_balance_needs(&env, &client).await;

    step("drift is repaired: a topic deleted on a broker comes back");
    assert_eq!(
        messages_on(&env, 1, "orders").await,
        Some(20),
        "broker 1 holds its share before the deletion"
    );
    env.admin(1).delete_topic("orders").await.unwrap();
    // A reconcile already under way may re-create the topic at once, so the
    // deletion shows in what comes back: the re-created topic is empty.
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "orders back on broker 1, empty",
        async || {
            let back = queues_on(&env, 1, "orders").await == Some(9)
                && messages_on(&env, 1, "orders").await == Some(0);
            back.then_some(())
        },
    )
    .await;

    step("a paused Topic is not reconciled until the annotation goes");
    let annotate = |args: &[&str]| {
        let mut all = vec!["annotate", "topic", "-n", APP_NS];
        all.extend_from_slice(args);
        let out = env.kubectl(&all, None);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    annotate(&["orders", "dduomq.io/paused=true"]);
    topics
        .patch(
            "orders",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"queues": 10}})),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(7)).await; // two resync periods
    for i in 0..3 {
        assert_eq!(
            queues_on(&env, i, "orders").await,
            Some(9),
            "paused, yet broker {i} changed"
        );
    }
    annotate(&["orders", "dduomq.io/paused-"]);
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "10 queues once unpaused",
        async || queues_everywhere(&env, "orders", 10).await.then_some(()),
    )
    .await;

    tenants::same_name_in_two_namespaces(&env, &client).await;
    tenants::too_long_with_the_namespace(&env, &client).await;
    upgrade::resources_of_a_pre_namespace_operator_keep_their_names(&env, &client).await;

    step("a ConsumerGroup offsetReset is applied exactly once per requestId");
    let reset = |id: &str| json!({"spec": {"offsetReset": {"requestId": id, "to": "Earliest"}}});
    groups
        .patch(
            "billing",
            &PatchParams::default(),
            &Patch::Merge(reset("r1")),
        )
        .await
        .unwrap();
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "reset r1 applied",
        async || {
            let g = groups.get("billing").await.ok()?;
            (g.status?.last_applied_reset?.request_id == "r1").then_some(())
        },
    )
    .await;
    // Broker 1 lost its copy of the messages when the topic was deleted on it.
    let mut expected = 0;
    for i in 0..3 {
        expected += messages_on(&env, i, "orders").await.unwrap();
    }
    assert_eq!(
        expected, 70,
        "20 + 30 late messages on brokers 0 and 2, none left on broker 1"
    );
    assert_eq!(total_lag(&env, "billing").await, expected);
    consume(&env, "billing", "orders", expected as usize).await;
    assert_eq!(total_lag(&env, "billing").await, 0);
    // More resyncs pass; the same request is not applied again.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(total_lag(&env, "billing").await, 0, "r1 re-applied");
    groups
        .patch(
            "billing",
            &PatchParams::default(),
            &Patch::Merge(reset("r2")),
        )
        .await
        .unwrap();
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "reset r2 applied",
        async || {
            let lag = total_lag(&env, "billing").await;
            (lag == expected).then_some(())
        },
    )
    .await;

    step("operator restart resumes from the resources");
    let _ = operator.kill();
    let _ = operator.wait();
    operator = env.start_operator("operator-b");
    topics
        .patch(
            "orders",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"queues": 12}})),
        )
        .await
        .unwrap();
    eventually_every(
        POLL,
        Duration::from_secs(60),
        "12 queues after the restart",
        async || queues_everywhere(&env, "orders", 12).await.then_some(()),
    )
    .await;

    step("a second operator replica waits for the leader lease");
    let mut standby = env.start_operator("operator-c");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let lease =
        Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(client.clone(), SYSTEM_NS)
            .get("dduomq-operator")
            .await
            .unwrap();
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some("operator-b")
    );
    let _ = standby.kill();
    let _ = standby.wait();

    step("deletionPolicy Retain and managed=false keep the broker topic; Delete removes it");
    env.kubectl(
        &["apply", "-f", "-"],
        Some(&topic_yaml("keep", 2, "  deletionPolicy: Retain\n")),
    );
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "keep on the brokers",
        async || (queues_on(&env, 0, "keep").await == Some(2)).then_some(()),
    )
    .await;
    topics
        .delete("keep", &DeleteParams::default())
        .await
        .unwrap();
    eventually_every(POLL, Duration::from_secs(30), "keep deleted", async || {
        topics.get_opt("keep").await.ok()?.is_none().then_some(())
    })
    .await;
    assert_eq!(queues_on(&env, 0, "keep").await, Some(2), "Retain kept it");
    env.kubectl(&["apply", "-f", "-"], Some(&topic_yaml("hands-off", 1, "")));
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "hands-off on the brokers",
        async || (queues_on(&env, 0, "hands-off").await == Some(1)).then_some(()),
    )
    .await;
    annotate(&["hands-off", "dduomq.io/managed=false"]);
    topics
        .delete("hands-off", &DeleteParams::default())
        .await
        .unwrap();
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "hands-off deleted",
        async || {
            topics
                .get_opt("hands-off")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        queues_on(&env, 0, "hands-off").await,
        Some(1),
        "managed=false left the brokers alone"
    );
    groups
        .delete("billing", &DeleteParams::default())
        .await
        .unwrap();
    topics
        .delete("orders", &DeleteParams::default())
        .await
        .unwrap();
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "orders gone from k8s and brokers",
        async || {
            if topics.get_opt("orders").await.ok()?.is_some() {
                return None;
            }
            for i in 0..3 {
                if queues_on(&env, i, "orders").await.is_some() {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;

    step("finalizer escape hatch: deletion completes when no broker is left");
    env.kubectl(&["apply", "-f", "-"], Some(&topic_yaml("orphan", 1, "")));
    eventually_every(POLL, Duration::from_secs(30), "orphan Ready", async || {
        ready(topics.get("orphan").await.ok()?.status.as_ref()).then_some(())
    })
    .await;
    publish_slice(&client, &env, &[false, false, false]).await;
    for b in &mut brokers {
        let _ = b.kill();
        let _ = b.wait();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    topics
        .delete("orphan", &DeleteParams::default())
        .await
        .unwrap();
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "orphan deleted without brokers",
        async || topics.get_opt("orphan").await.ok()?.is_none().then_some(()),
    )
    .await;

    step("SIGTERM: finalizers stay while the operator's Deployment exists, go once it is deleted");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), SYSTEM_NS);
    deployments
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": OPERATOR_DEPLOYMENT},
                "spec": {
                    "replicas": 0,
                    "selector": {"matchLabels": {"app": "op"}},
                    "template": {"metadata": {"labels": {"app": "op"}},
                                 "spec": {"containers": [{"name": "op", "image": "ghcr.io/dduomq/dduomq-operator"}]}},
                },
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    env.kubectl(
        &["apply", "-f", "-"],
        Some(&topic_yaml("left-behind", 1, "")),
    );
    let finalized = async || {
        topics
            .get("left-behind")
            .await
            .unwrap()
            .finalizers()
            .iter()
            .any(|f| f == "dduomq.io/topic-cleanup")
    };
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "left-behind gets the finalizer",
        async || finalized().await.then_some(()),
    )
    .await;
    terminate(&env, "operator-b", &mut operator).await;
    assert!(
        finalized().await,
        "a rolling restart must not release finalizers"
    );
    // The stopped leader emptied its lease: the next replica leads at once,
    // not after the 15 s lease.
    let t = Instant::now();
    operator = env.start_operator("operator-d");
    eventually_every(
        POLL,
        Duration::from_secs(8),
        "operator-d leads",
        async || {
            let lease = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
                client.clone(),
                SYSTEM_NS,
            )
            .get("dduomq-operator")
            .await
            .ok()?;
            (lease.spec?.holder_identity.as_deref() == Some("operator-d")).then_some(())
        },
    )
    .await;
    eprintln!("    leadership handed over in {:?}", t.elapsed());
    deployments
        .delete(OPERATOR_DEPLOYMENT, &DeleteParams::default())
        .await
        .unwrap();
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "the Deployment is gone",
        async || {
            deployments
                .get_opt(OPERATOR_DEPLOYMENT)
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
    terminate(&env, "operator-d", &mut operator).await;
    assert!(
        !finalized().await,
        "uninstalled operator released its finalizer"
    );
    topics
        .delete("left-behind", &DeleteParams::default())
        .await
        .unwrap();
    eventually_every(
        POLL,
        Duration::from_secs(10),
        "left-behind deleted with no operator running",
        async || {
            topics
                .get_opt("left-behind")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
    crds::the_operator_upgrades_older_crds_and_keeps_newer_ones(&env, &client).await;
    replication::a_group_fails_over_to_a_new_master_without_losing_acknowledged_messages(
        &env, &client,
    )
    .await;
    eprintln!("operator scenarios passed in {:?}", suite.elapsed());
}
