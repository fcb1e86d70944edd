//! The operator applies its own CRDs at startup, because `helm upgrade` never
//! upgrades a chart's `crds/`: a new field reaches an existing cluster with the
//! operator that understands it. Server-side apply (field manager
//! `dduomq-operator`, forced) from the same types `crdgen` writes, guarded by
//! the schema revision annotation so an older operator (a rollback, or the old
//! pod of a rolling update) never downgrades newer CRDs. The controllers start
//! once every CRD is `Established`.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};

use crate::context::MANAGER;
use crate::crdgen::{self, SCHEMA_REVISION};

/// How often the API server is asked whether a CRD is established.
const ESTABLISHED_POLL: Duration = Duration::from_millis(200);
/// Retry interval after an API error.
const RETRY: Duration = Duration::from_secs(5);

/// What happened to one CRD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CrdOutcome {
    /// Applied (created, upgraded, or already the same).
    Applied,
    /// Left alone: the cluster has a newer schema revision.
    NewerInstalled { revision: u32 },
    /// Left alone: this operator may not manage CRDs (RBAC without them).
    Forbidden,
}

/// Applies every CRD as the module doc says and waits until each is
/// `Established`; retries API errors until it succeeds (the caller bounds it
/// with its shutdown signal).
pub async fn ensure(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crdgen::crds() {
        let name = crd.metadata.name.clone().expect("CRDs are named");
        let outcome = loop {
            match apply(&api, &name, &crd).await {
                Ok(outcome) => break outcome,
                Err(e) => {
                    tracing::warn!(crd = %name, error = %e, "applying the CRD failed; retrying");
                    tokio::time::sleep(RETRY).await;
                }
            }
        };
        match outcome {
            CrdOutcome::Applied => {
                tracing::info!(crd = %name, revision = SCHEMA_REVISION, "CRD applied")
            }
            CrdOutcome::NewerInstalled { revision } => tracing::warn!(
                crd = %name,
                installed = revision,
                ours = SCHEMA_REVISION,
                "a newer CRD is installed; left as is"
            ),
            CrdOutcome::Forbidden => {
                tracing::warn!(
                    crd = %name,
                    "not allowed to manage CRDs; using the installed one"
                );
                continue;
            }
        }
        wait_established(&api, &name).await;
    }
}

async fn apply(
    api: &Api<CustomResourceDefinition>,
    name: &str,
    crd: &CustomResourceDefinition,
) -> kube::Result<CrdOutcome> {
    let installed = match api.get_opt(name).await {
        Ok(installed) => installed,
        Err(kube::Error::Api(e)) if e.code == 403 => return Ok(CrdOutcome::Forbidden),
        Err(e) => return Err(e),
    };
    if let Some(revision) = installed
        .as_ref()
        .map(crdgen::schema_revision)
        .filter(|r| *r > SCHEMA_REVISION)
    {
        return Ok(CrdOutcome::NewerInstalled { revision });
    }
    match api
        .patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(crd),
        )
        .await
    {
        Ok(_) => Ok(CrdOutcome::Applied),
        Err(kube::Error::Api(e)) if e.code == 403 => Ok(CrdOutcome::Forbidden),
        Err(e) => Err(e),
    }
}

/// Waits until the CRD exists with `Established=True` (errors are retried).
async fn wait_established(api: &Api<CustomResourceDefinition>, name: &str) {
    loop {
        match api.get_opt(name).await {
            Ok(Some(crd)) if established(&crd) => return,
            Ok(_) => {}
            Err(e) => tracing::warn!(crd = %name, error = %e, "reading the CRD failed"),
        }
        tokio::time::sleep(ESTABLISHED_POLL).await;
    }
}

fn established(crd: &CustomResourceDefinition) -> bool {
    crd.status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .any(|c| c.type_ == "Established" && c.status == "True")
}
