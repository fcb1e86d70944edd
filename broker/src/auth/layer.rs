//! The tower layer in front of every gRPC service: authenticates, checks
//! cluster-level rules, and passes the [`Caller`] on to the handler.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::{Service, http};

use super::rules::{self, Rule};
use super::{Auth, AuthError, Caller, Resource};
use crate::connections::ConnectionInfo;
use crate::grpc::status::to_status;
use crate::messaging::error::BrokerError;

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    pub auth: Arc<Auth>,
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = Authenticated<S>;
    fn layer(&self, inner: S) -> Authenticated<S> {
        Authenticated {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct Authenticated<S> {
    inner: S,
    auth: Arc<Auth>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for Authenticated<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let (rule, method) = rules::rule(req.uri().path());
        if rule != Rule::Open {
            let connection = req.extensions().get::<ConnectionInfo>().cloned();
            match self.admit(rule, method, req.headers(), connection.as_ref()) {
                Ok(caller) => {
                    req.extensions_mut().insert(caller);
                }
                Err(e) => {
                    let refusal = to_status(BrokerError::Auth(e)).into_http();
                    return Box::pin(async move { Ok(refusal) });
                }
            }
        }
        Box::pin(self.inner.call(req))
    }
}

impl<S> Authenticated<S> {
    fn admit(
        &self,
        rule: Rule,
        method: &'static str,
        headers: &http::HeaderMap,
        connection: Option<&ConnectionInfo>,
    ) -> Result<Caller, AuthError> {
        let client_name = connection.and_then(|c| c.client_name.as_deref());
        let caller = self.auth.authenticate(headers, client_name)?;
        if let Some(connection) = connection {
            caller.hold_connection(connection.user_place())?;
        }
        if let Rule::Cluster(action) = rule {
            caller.require(action, Resource::Cluster)?;
            if action == super::Action::Admin {
                caller.admin_action(method);
            }
        }
        Ok(caller)
    }
}
