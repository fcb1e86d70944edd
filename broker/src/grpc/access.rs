//! Rights checks in `dduomq.v1` handlers, on the stored names a request's
//! namespace gives (see `crate::auth`).

use dduomq_proto::Namespace;
use tonic::{Request, Status};

use super::namespace::Names;
use super::status::to_status;
use crate::auth::{self, Action, Caller, Resource};

/// The caller the auth layer identified.
pub(crate) fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    auth::caller(req.extensions())
        .cloned()
        .map_err(|e| to_status(e.into()))
}

/// Refuses unless the caller may `action` on `resource`.
pub(crate) fn require(
    caller: &Caller,
    ns: &Namespace,
    action: Action,
    resource: Resource<'_>,
) -> Result<(), Status> {
    require_any(caller, ns, &[action], resource)
}

/// Refuses unless the caller may do any of `actions` on `resource`.
pub(crate) fn require_any(
    caller: &Caller,
    ns: &Namespace,
    actions: &[Action],
    resource: Resource<'_>,
) -> Result<(), Status> {
    caller
        .require_any(actions, resource)
        .map_err(|e| ns.refusal(e.into()))
}

/// Refuses unless the caller may consume `topic` as `group` (both stored).
pub(crate) fn consume(
    caller: &Caller,
    ns: &Namespace,
    group: &str,
    topic: &str,
) -> Result<(), Status> {
    require(caller, ns, Action::Subscribe, Resource::Group(group))?;
    require(caller, ns, Action::Subscribe, Resource::Topic(topic))
}
