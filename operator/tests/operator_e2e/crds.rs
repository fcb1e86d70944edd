//! CRD upgrades against the real API server: an operator applies its CRDs over
//! an older schema revision (a field the old CRD lacked becomes usable) and
//! leaves a newer revision alone.

use std::collections::BTreeMap;
use std::time::Duration;

use dduomq_operator::crd::Topic;
use dduomq_operator::crdgen::{self, SCHEMA_REVISION, SCHEMA_REVISION_ANNOTATION};
use dduomq_testkit::eventually_every;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client, ResourceExt};

use crate::env::*;

const TOPIC_CRD: &str = "topics.dduomq.io";

/// The generated Topic CRD.
fn generated() -> CustomResourceDefinition {
    crdgen::crds()
        .into_iter()
        .find(|c| c.name_any() == TOPIC_CRD)
        .expect("the Topic CRD")
}

/// Whether the installed Topic schema has `spec.maxMessageBytes`.
fn has_max_message_bytes(crd: &CustomResourceDefinition) -> bool {
    crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| s.properties.as_ref())
        .and_then(|p| p.get("spec"))
        .and_then(|s| s.properties.as_ref())
        .is_some_and(|p| p.contains_key("maxMessageBytes"))
}

/// Replaces the installed Topic CRD (as `kubectl replace` would) with the
/// generated one without `spec.maxMessageBytes`, marked with `revision`.
async fn install_without_max_message_bytes(crds: &Api<CustomResourceDefinition>, revision: u32) {
    let mut crd = generated();
    let spec = crd.spec.versions[0]
        .schema
        .as_mut()
        .and_then(|s| s.open_api_v3_schema.as_mut())
        .and_then(|s| s.properties.as_mut())
        .and_then(|p| p.get_mut("spec"))
        .and_then(|s| s.properties.as_mut())
        .expect("spec properties");
    spec.remove("maxMessageBytes").expect("the field to strip");
    crd.metadata.annotations = Some(BTreeMap::from([(
        SCHEMA_REVISION_ANNOTATION.to_string(),
        revision.to_string(),
    )]));
    crd.metadata.resource_version = crds.get(TOPIC_CRD).await.unwrap().resource_version();
    crds.replace(TOPIC_CRD, &PostParams::default(), &crd)
        .await
        .unwrap();
}

fn revision(crd: &CustomResourceDefinition) -> u32 {
    crdgen::schema_revision(crd)
}

/// A Topic with `maxMessageBytes: 1024`, as the API server stored it.
async fn stored_max_message_bytes(env: &Env, topics: &Api<Topic>, name: &str) -> Option<u32> {
    let out = env.kubectl(
        &["apply", "-f", "-"],
        Some(&topic_yaml(name, 1, "  maxMessageBytes: 1024\n")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    topics.get(name).await.unwrap().spec.max_message_bytes
}

/// Runs with no operator running and no broker ready; leaves the generated
/// CRDs installed and no operator running.
pub(crate) async fn the_operator_upgrades_older_crds_and_keeps_newer_ones(
    env: &Env,
    client: &Client,
) {
    step("CRD upgrade: the operator applies its CRDs over an older revision");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let topics: Api<Topic> = Api::namespaced(client.clone(), APP_NS);
    install_without_max_message_bytes(&crds, SCHEMA_REVISION - 1).await;
    let old = crds.get(TOPIC_CRD).await.unwrap();
    assert!(!has_max_message_bytes(&old));
    let mut operator = env.start_operator("operator-crd-upgrade");
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "the Topic CRD upgraded",
        async || {
            let crd = crds.get(TOPIC_CRD).await.ok()?;
            (has_max_message_bytes(&crd) && revision(&crd) == SCHEMA_REVISION).then_some(())
        },
    )
    .await;
    assert_eq!(
        stored_max_message_bytes(env, &topics, "sized").await,
        Some(1024),
        "the new field is accepted and kept"
    );
    terminate(env, "operator-crd-upgrade", &mut operator).await;

    step("CRD upgrade: an operator never applies its CRDs over a newer revision");
    install_without_max_message_bytes(&crds, SCHEMA_REVISION + 1).await;
    let mut operator = env.start_operator("operator-crd-older");
    // The controllers start only after the CRD step: a finalizer on a new
    // Topic shows that step is over.
    env.kubectl(&["apply", "-f", "-"], Some(&topic_yaml("probe", 1, "")));
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "the controllers run",
        async || {
            let t = topics.get("probe").await.ok()?;
            t.finalizers()
                .iter()
                .any(|f| f == "dduomq.io/topic-cleanup")
                .then_some(())
        },
    )
    .await;
    let kept = crds.get(TOPIC_CRD).await.unwrap();
    assert_eq!(revision(&kept), SCHEMA_REVISION + 1);
    assert!(!has_max_message_bytes(&kept), "the newer CRD is left as is");

    // Back to the generated CRD; with no broker ready the finalizers go at once.
    let mut crd = generated();
    crd.metadata.resource_version = kept.resource_version();
    crds.replace(TOPIC_CRD, &PostParams::default(), &crd)
        .await
        .unwrap();
    for name in ["sized", "probe"] {
        topics.delete(name, &DeleteParams::default()).await.unwrap();
    }
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "sized and probe deleted",
        async || {
            for name in ["sized", "probe"] {
                topics.get_opt(name).await.ok()?.is_none().then_some(())?;
            }
            Some(())
        },
    )
    .await;
    terminate(env, "operator-crd-older", &mut operator).await;
}
