//! Authentication and authorization (docs/security.md).
//!
//! Every gRPC request passes [`layer::AuthLayer`]: it finds the request's
//! rule ([`rules`]), authenticates the caller from the RocketMQ access-key
//! signature ([`dduomq_proto::signature`]) or, unsigned, from its verified
//! client certificate (mutual TLS: the common name is the user's name),
//! checks cluster-level rights, and
//! hands the [`Caller`] to the handler in the request's extensions. Handlers
//! check rights on the topics and groups a request names with
//! [`Caller::require`] before they change or show anything. Refusals and
//! admin actions are logged (target `dduomq::audit`) and counted.

mod config;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod layer;
pub mod policy;
pub mod quota;
pub mod rules;
pub mod sealed;
pub mod users;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dduomq_proto::Reason;
use dduomq_proto::signature::{self, SignatureError};
use parking_lot::RwLock;
use tonic::codegen::http::HeaderMap;

pub use config::AuthConfig;
pub use policy::{Action, Resource};

use crate::messaging::error::brief;
use crate::metrics::Metrics;
use quota::{ConnectionPlace, Direction, Meter, Meters, QuotaError};
use sealed::SealingKey;
use users::{User, Users};

/// Why a request was refused by authentication or authorization.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error(
        "this request carries no credentials: sign it with an access key (the authorization and x-mq-date-time headers)"
    )]
    Missing,
    #[error("unknown access key or wrong signature")]
    BadCredentials,
    #[error("the client certificate's common name is no user")]
    UnknownCertificate,
    #[error("{0}")]
    Signature(SignatureError),
    #[error("{0}")]
    Quota(QuotaError),
    #[error("user {} may not {actions} {resource}", brief(.user))]
    Denied {
        user: String,
        /// The actions any of which would have been allowed ("publish or subscribe").
        actions: String,
        resource: String,
    },
}

impl AuthError {
    pub fn code(&self) -> Reason {
        match self {
            AuthError::Missing => Reason::MissingCredentials,
            AuthError::BadCredentials
            | AuthError::UnknownCertificate
            | AuthError::Signature(SignatureError::Malformed) => Reason::BadCredentials,
            AuthError::Signature(_) => Reason::RequestExpired,
            AuthError::Denied { .. } => Reason::PermissionDenied,
            AuthError::Quota(_) => Reason::QuotaExceeded,
        }
    }
}

/// Who sent a request.
#[derive(Debug, Clone)]
pub struct Caller {
    who: Who,
    auth: Arc<Auth>,
}

#[derive(Debug, Clone)]
enum Who {
    /// Authentication is off: anyone may do anything.
    Anyone,
    User {
        user: Arc<User>,
        meter: Arc<Meter>,
    },
}

impl Caller {
    /// Whether the caller may `action` on `resource` (no audit: for lists
    /// that show only what the caller may see).
    pub fn may(&self, action: Action, resource: Resource<'_>) -> bool {
        match &self.who {
            Who::Anyone => true,
            Who::User { user, .. } => policy::allowed(&user.grants, action, resource),
        }
    }

    /// Refuses, audits and counts unless the caller may `action` on `resource`.
    pub fn require(&self, action: Action, resource: Resource<'_>) -> Result<(), AuthError> {
        self.require_any(&[action], resource)
    }

    /// [`Caller::require`] where any of `actions` will do.
    pub fn require_any(&self, actions: &[Action], resource: Resource<'_>) -> Result<(), AuthError> {
        if actions.iter().any(|&a| self.may(a, resource)) {
            return Ok(());
        }
        let names: Vec<&str> = actions.iter().map(|a| a.as_str()).collect();
        let actions = match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
            _ => names.concat(),
        };
        let err = AuthError::Denied {
            user: self.name().to_string(),
            actions,
            resource: resource.to_string(),
        };
        Err(self.auth.refused(err, self.name()))
    }

    /// Waits before a send of `bytes` under the user's produce rate; refused
    /// (audited and counted) when the wait would be too long.
    pub async fn pace_send(&self, bytes: u64) -> Result<(), AuthError> {
        let Who::User { meter, .. } = &self.who else {
            return Ok(());
        };
        let wait = meter
            .throttle_send(bytes)
            .map_err(|e| self.auth.refused(AuthError::Quota(e), self.name()))?;
        self.waited(Direction::Produce, wait).await;
        Ok(())
    }

    /// How long a consumer waits before it is given more, under the user's
    /// consume rate.
    pub fn delivery_debt(&self) -> Duration {
        match &self.who {
            Who::User { meter, .. } => meter.consume_debt(),
            Who::Anyone => Duration::ZERO,
        }
    }

    /// Waits out [`Caller::delivery_debt`] (before a one-shot receive or pull
    /// reads anything).
    pub async fn pace_delivery(&self) {
        self.waited(Direction::Consume, self.delivery_debt()).await;
    }

    /// Counts `bytes` delivered to the user against its consume rate.
    pub fn charge_delivery(&self, bytes: u64) {
        if let Who::User { meter, .. } = &self.who {
            meter.charge_delivery(bytes);
        }
    }

    /// Sleeps `wait` (nothing when zero: a zero sleep still waits for the
    /// timer's next tick) and counts it.
    pub async fn waited(&self, direction: Direction, wait: Duration) {
        if wait.is_zero() {
            return;
        }
        if let Some(m) = &self.auth.metrics {
            m.quota_throttled_seconds
                .with_label_values(&[direction.label()])
                .inc_by(wait.as_secs_f64());
        }
        tokio::time::sleep(wait).await;
    }

    /// The bytes a consumer stream may hold leased at once: `max`, or one
    /// second of the user's consume rate if that is less (so deliveries
    /// come in rounds the rate paces, rather than in one burst).
    pub fn delivery_window(&self, max: u64) -> u64 {
        match &self.who {
            Who::User { meter, .. } => meter.consume_rate().map_or(max, |rate| max.min(rate)),
            Who::Anyone => max,
        }
    }

    /// Counts the connection a request came on among the user's (the first
    /// user of a connection holds its place until it closes).
    pub fn hold_connection(
        &self,
        place: &parking_lot::Mutex<Option<ConnectionPlace>>,
    ) -> Result<(), AuthError> {
        let Who::User { meter, .. } = &self.who else {
            return Ok(());
        };
        // Held across the check: a connection's concurrent first requests
        // take one place between them.
        let mut place = place.lock();
        if place.is_none() {
            let held = meter
                .connect()
                .map_err(|e| self.auth.refused(AuthError::Quota(e), self.name()))?;
            *place = Some(held);
        }
        Ok(())
    }

    /// Which topics' transaction checks this caller's checkers are shown:
    /// those it may publish to.
    pub fn sees_topic(&self) -> crate::messaging::staged::SeesTopic {
        let caller = self.clone();
        Arc::new(move |topic| caller.may(Action::Publish, Resource::Topic(topic)))
    }

    /// Logs and counts an admin action this caller was allowed (nothing when
    /// authentication is off).
    pub fn admin_action(&self, method: &'static str) {
        if !self.auth.enabled {
            return;
        }
        tracing::info!(target: "dduomq::audit", user = %brief(self.name()), method, "admin action");
        if let Some(m) = &self.auth.metrics {
            m.admin_actions.with_label_values(&[method]).inc();
        }
    }

    /// The user's name ("" when authentication is off).
    pub fn name(&self) -> &str {
        match &self.who {
            Who::Anyone => "",
            Who::User { user, .. } => &user.name,
        }
    }
}

#[cfg(test)]
impl Caller {
    /// A caller of a broker without authentication.
    pub(crate) fn anyone() -> Caller {
        Caller {
            who: Who::Anyone,
            auth: Auth::disabled(),
        }
    }
}

/// The extension every request carries past the layer; a request without it
/// (never expected) is refused.
pub fn caller(extensions: &tonic::Extensions) -> Result<&Caller, AuthError> {
    extensions.get::<Caller>().ok_or(AuthError::Missing)
}

/// The broker's users and how it checks requests.
#[derive(Debug)]
pub struct Auth {
    enabled: bool,
    max_clock_skew: Duration,
    protect_metrics: bool,
    users: RwLock<Arc<Users>>,
    meters: Meters,
    /// What [`Auth::reload`] needs; `None` when authentication is off.
    source: Option<UsersSource>,
    metrics: Option<Arc<Metrics>>,
}

#[derive(Debug)]
struct UsersSource {
    config: AuthConfig,
    key: SealingKey,
    /// The file's contents when it was last loaded.
    seen: parking_lot::Mutex<Option<Vec<u8>>>,
}

/// Why authentication cannot start; the file at fault is named.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Key(#[from] sealed::SealError),
    #[error("users file {path}: {source}")]
    Users {
        path: String,
        source: users::UsersError,
    },
    #[error("[auth] broker_user {0:?} is not in the users file")]
    UnknownBrokerUser(String),
}

impl Auth {
    /// Authentication off: every request is let through as [`Who::Anyone`].
    pub fn disabled() -> Arc<Auth> {
        Arc::new(Auth {
            enabled: false,
            max_clock_skew: Duration::ZERO,
            protect_metrics: false,
            users: RwLock::new(Arc::default()),
            meters: Meters::default(),
            source: None,
            metrics: None,
        })
    }

    /// Loads the sealing key and the users file of `config`.
    pub fn open(
        config: &AuthConfig,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Arc<Auth>, StartError> {
        if !config.enabled {
            return Ok(Auth::disabled());
        }
        let source = UsersSource {
            key: SealingKey::from_file(&config.sealing_key_file)?,
            config: config.clone(),
            seen: parking_lot::Mutex::new(None),
        };
        let users = source
            .load_if_changed()?
            .expect("nothing was loaded before, so the file counts as changed");
        Ok(Arc::new(Auth {
            enabled: true,
            max_clock_skew: config.max_clock_skew,
            protect_metrics: config.protect_metrics,
            users: RwLock::new(Arc::new(users)),
            meters: Meters::default(),
            source: Some(source),
            metrics,
        }))
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn protects_metrics(&self) -> bool {
        self.protect_metrics
    }

    /// The credentials this broker signs its requests to other brokers with.
    pub fn own_credentials(&self) -> Option<dduomq_proto::Credentials> {
        let source = self.source.as_ref()?;
        self.users.read().credentials_of(&source.config.broker_user)
    }

    /// Re-reads the users file every `reload_interval` until `stop`; a file
    /// that no longer loads leaves the users as they were (and is logged).
    pub async fn watch_users(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let Some(source) = &self.source else { return };
        let mut tick = tokio::time::interval(source.config.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let auth = self.clone();
            let reloaded = tokio::task::spawn_blocking(move || auth.reload()).await;
            if let Ok(Err(e)) = reloaded {
                tracing::error!(target: "dduomq::audit", error = %e, "users file not reloaded; the previous users stay");
            }
        }
    }

    /// Loads the users file if it changed since it was last loaded.
    pub fn reload(&self) -> Result<bool, StartError> {
        let Some(source) = &self.source else {
            return Ok(false);
        };
        let Some(users) = source.load_if_changed()? else {
            return Ok(false);
        };
        *self.users.write() = Arc::new(users);
        tracing::info!(target: "dduomq::audit", file = %source.config.users_file.display(), "users file reloaded");
        Ok(true)
    }

    /// Authenticates a request from its signature headers or, unsigned, from
    /// the verified client certificate of its connection (`client_name`).
    pub fn authenticate(
        self: &Arc<Self>,
        headers: &HeaderMap,
        client_name: Option<&str>,
    ) -> Result<Caller, AuthError> {
        if !self.enabled {
            return Ok(Caller {
                who: Who::Anyone,
                auth: self.clone(),
            });
        }
        let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("\u{0}"));
        let Some(authorization) = header(signature::AUTHORIZATION) else {
            let users = self.users.read().clone();
            return match client_name {
                Some(name) => match users.named(name) {
                    Some(user) => Ok(self.caller_of(user)),
                    None => Err(self.refused(AuthError::UnknownCertificate, name)),
                },
                None => Err(self.refused(AuthError::Missing, "")),
            };
        };
        let claim = signature::parse_authorization(authorization)
            .map_err(|e| self.refused(AuthError::Signature(e), ""))?;
        let date_time = header(signature::DATE_TIME).unwrap_or_default();
        signature::check_date_time(date_time, SystemTime::now(), self.max_clock_skew)
            .map_err(|e| self.refused(AuthError::Signature(e), &claim.access_key))?;
        let users = self.users.read().clone();
        match users.key(&claim.access_key) {
            Some(key) if signature::verify(&claim, date_time, key.secret_key.as_bytes()) => {
                Ok(self.caller_of(&key.user))
            }
            _ => Err(self.refused(AuthError::BadCredentials, &claim.access_key)),
        }
    }

    /// Audits and counts a request that came without credentials.
    pub fn refuse_missing(&self) -> AuthError {
        self.refused(AuthError::Missing, "")
    }

    /// Authenticates HTTP basic credentials (access key and secret key).
    pub fn authenticate_basic(
        self: &Arc<Self>,
        access_key: &str,
        secret_key: &str,
    ) -> Result<Caller, AuthError> {
        let users = self.users.read().clone();
        match users.key(access_key) {
            Some(key) if constant_time_eq(key.secret_key.as_bytes(), secret_key.as_bytes()) => {
                Ok(self.caller_of(&key.user))
            }
            _ => Err(self.refused(AuthError::BadCredentials, access_key)),
        }
    }

    fn caller_of(self: &Arc<Self>, user: &Arc<User>) -> Caller {
        Caller {
            who: Who::User {
                user: user.clone(),
                meter: self.meters.of(&user.name, user.quotas),
            },
            auth: self.clone(),
        }
    }

    /// Logs and counts a refusal; `who` is the user or access key, if known.
    fn refused(&self, err: AuthError, who: &str) -> AuthError {
        let reason = err.code().as_str();
        tracing::warn!(target: "dduomq::audit", reason, who = %brief(who), error = %err, "request refused");
        if let Some(m) = &self.metrics {
            m.auth_refusals.with_label_values(&[reason]).inc();
        }
        err
    }
}

impl UsersSource {
    /// Loads the file unless its bytes are those loaded last (`None` then).
    /// The bytes are remembered even when they do not load, so they are not
    /// re-parsed and re-logged every interval until they change again.
    fn load_if_changed(&self) -> Result<Option<Users>, StartError> {
        let path = &self.config.users_file;
        let failed = |source| StartError::Users {
            path: path.display().to_string(),
            source,
        };
        let bytes = users::read(path).map_err(failed)?;
        if self.seen.lock().as_deref() == Some(bytes.as_slice()) {
            return Ok(None);
        }
        let loaded = users::parse(&bytes, &self.key).map_err(failed);
        *self.seen.lock() = Some(bytes);
        let users = loaded?;
        // The brokers' own user must stay: replicas sign with it.
        let own = &self.config.broker_user;
        if !own.is_empty() && users.credentials_of(own).is_none() {
            return Err(StartError::UnknownBrokerUser(own.clone()));
        }
        Ok(Some(users))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
