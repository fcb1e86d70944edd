//! A fake Kubernetes API server for the reconcile tests, served in process: an
//! axum router is the `kube::Client`'s HTTP service. It holds a few objects and
//! answers what the operator asks the way the real one would: gets and lists from
//! them, a patch with the object as stored (patches are recorded, not applied:
//! each test reconciles one state), an event creation with the event. Creates
//! and replaces (PUT) are applied as the real one does, compare-and-swap on
//! `metadata.resourceVersion` (409 on a stale version or an existing name), so
//! the replication controller's writes can be tested. Anything else is 404.
//! GETs of chosen objects can be held unanswered, as a stalled API server.
//! Every request is recorded, in order, for the tests to check.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::{Json, Router};
use parking_lot::Mutex;
use serde_json::{Value, json};

use super::NAMESPACE;

/// A request the operator sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    pub method: Method,
    /// Path and query, as sent.
    pub target: String,
    pub content_type: Option<String>,
    /// The JSON body (`Null` when there is none).
    pub body: Value,
}

/// The fake server: its objects and what it was sent.
#[derive(Debug, Clone)]
pub struct FakeApi {
    objects: Arc<Mutex<Vec<Value>>>,
    sent: Arc<Mutex<Vec<Sent>>>,
    /// Another client's write, stored just before the next create or replace.
    interleaved: Arc<Mutex<Option<Value>>>,
    /// Paths whose GETs are never answered (a stalled API server).
    held: Arc<Mutex<Vec<String>>>,
}

impl FakeApi {
    pub fn new(objects: Vec<Value>) -> FakeApi {
        FakeApi {
            objects: Arc::new(Mutex::new(objects)),
            sent: Arc::default(),
            interleaved: Arc::default(),
            held: Arc::default(),
        }
    }

    /// A client whose requests this server answers.
    pub fn client(&self) -> kube::Client {
        let router = Router::new().fallback(answer).with_state(self.clone());
        kube::Client::new(router, NAMESPACE)
    }

    /// Every request so far, in order.
    pub fn sent(&self) -> Vec<Sent> {
        self.sent.lock().clone()
    }

    /// The object stored at `path`.
    pub fn object(&self, path: &str) -> Option<Value> {
        self.objects
            .lock()
            .iter()
            .find(|o| path_of(o) == path)
            .cloned()
    }

    /// Stores `object` as another client's write would: replaces the one at
    /// its path (or adds it) with the next resourceVersion.
    pub fn write(&self, mut object: Value) {
        let path = path_of(&object);
        let mut objects = self.objects.lock();
        let version = next_version(&objects);
        object["metadata"]["resourceVersion"] = json!(version);
        objects.retain(|o| path_of(o) != path);
        objects.push(object);
    }

    /// Makes another client [`write`](FakeApi::write) `object` just before the
    /// next create or replace is handled: a write that races the operator's.
    pub fn before_next_write(&self, object: Value) {
        *self.interleaved.lock() = Some(object);
    }

    /// Leaves every GET of `path` from now on unanswered, as an API server
    /// stalled on that object would (the request is still recorded).
    pub fn hold_reads(&self, path: &str) {
        self.held.lock().push(path.to_string());
    }

    /// Stores the racing write, if one is set.
    fn race(&self) {
        if let Some(object) = self.interleaved.lock().take() {
            self.write(object);
        }
    }

    /// A create: refused with 409 when the name is taken.
    fn create(&self, collection: &str, mut object: Value) -> (StatusCode, Value) {
        self.race();
        let mut objects = self.objects.lock();
        let (root, plural) = collection.rsplit_once('/').expect("collection path");
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let path = format!("{root}/{plural}/{name}");
        if objects.iter().any(|o| path_of(o) == path) {
            return failure(StatusCode::CONFLICT, "AlreadyExists", &path);
        }
        object["metadata"]["resourceVersion"] = json!(next_version(&objects));
        objects.push(object.clone());
        (StatusCode::CREATED, object)
    }

    /// A replace: applied only when the body carries the stored object's
    /// resourceVersion (409 otherwise), as the real API server does.
    fn replace(&self, path: &str, mut object: Value) -> (StatusCode, Value) {
        self.race();
        let mut objects = self.objects.lock();
        let Some(at) = objects.iter().position(|o| path_of(o) == path) else {
            return failure(StatusCode::NOT_FOUND, "NotFound", path);
        };
        if objects[at]["metadata"]["resourceVersion"] != object["metadata"]["resourceVersion"] {
            return failure(StatusCode::CONFLICT, "Conflict", path);
        }
        object["metadata"]["resourceVersion"] = json!(next_version(&objects));
        objects[at] = object.clone();
        (StatusCode::OK, object)
    }
}

/// A resourceVersion above every stored one.
fn next_version(objects: &[Value]) -> String {
    let highest = objects
        .iter()
        .filter_map(|o| {
            o["metadata"]["resourceVersion"]
                .as_str()?
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap_or(0);
    (highest + 1).to_string()
}

/// A `Status` failure answer.
fn failure(status: StatusCode, reason: &str, path: &str) -> (StatusCode, Value) {
    let body = json!({
        "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
        "reason": reason, "code": status.as_u16(), "message": format!("{path}: {reason}"),
    });
    (status, body)
}

/// A client whose every request the API server holds unanswered, like an API
/// server that stalls during the controllers' initial LIST.
pub fn stalled_client() -> kube::Client {
    let router = Router::new().fallback(std::future::pending::<StatusCode>);
    kube::Client::new(router, NAMESPACE)
}

/// Where the API serves the collection an object belongs to, across namespaces
/// (`/apis/dduomq.io/v1alpha1/topics`, `/api/v1/namespaces`).
fn collection_of(object: &Value) -> String {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let root = if api_version.contains('/') {
        "apis"
    } else {
        "api"
    };
    let kind = object["kind"].as_str().unwrap_or_default().to_lowercase();
    format!("/{root}/{api_version}/{kind}s")
}

/// Where the API serves an object.
fn path_of(object: &Value) -> String {
    let collection = collection_of(object);
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    match object["metadata"]["namespace"].as_str() {
        Some(ns) => {
            let (root, plural) = collection.rsplit_once('/').expect("collection path");
            format!("{root}/namespaces/{ns}/{plural}/{name}")
        }
        None => format!("{collection}/{name}"),
    }
}

async fn answer(
    State(api): State<FakeApi>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, Json<Value>) {
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).expect("a JSON request body")
    };
    api.sent.lock().push(Sent {
        method: method.clone(),
        target: uri.to_string(),
        content_type: headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body: body.clone(),
    });
    let path = uri.path();
    if method == Method::GET && api.held.lock().iter().any(|h| h == path) {
        std::future::pending::<()>().await;
    }
    let answer = match method {
        Method::GET => api
            .object(path)
            .map(|o| (StatusCode::OK, o))
            .or_else(|| list(&api, path, query.get("fieldSelector"))),
        Method::PATCH => api
            .object(path.strip_suffix("/status").unwrap_or(path))
            .map(|o| (StatusCode::OK, o)),
        Method::POST if path.ends_with("/events") => Some((StatusCode::CREATED, body)),
        Method::POST => Some(api.create(path, body)),
        Method::PUT => Some(api.replace(path, body)),
        _ => None,
    };
    let (status, object) =
        answer.unwrap_or_else(|| failure(StatusCode::NOT_FOUND, "NotFound", path));
    (status, Json(object))
}

/// The objects of the collection at `path`, filtered by a `metadata.name=`
/// field selector; `None` when no object belongs to such a collection.
fn list(api: &FakeApi, path: &str, fields: Option<&String>) -> Option<(StatusCode, Value)> {
    let name = fields.and_then(|f| f.strip_prefix("metadata.name="));
    let objects = api.objects.lock();
    let members: Vec<&Value> = objects
        .iter()
        .filter(|o| collection_of(o) == path)
        .collect();
    let first = members.first()?;
    let items: Vec<&Value> = members
        .iter()
        .copied()
        .filter(|o| name.is_none_or(|n| o["metadata"]["name"] == n))
        .collect();
    let list = json!({
        "apiVersion": first["apiVersion"],
        "kind": format!("{}List", first["kind"].as_str().unwrap_or_default()),
        "metadata": {"resourceVersion": "1"},
        "items": items,
    });
    Some((StatusCode::OK, list))
}
