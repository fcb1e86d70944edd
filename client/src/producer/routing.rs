//! Where a producer sends: each topic's cached route, refreshed when it
//! expires or a send fails, and in the background while it names a broker
//! avoided as faulty.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use dduomq_proto::v1 as pb;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use super::{Inner, retry};
use crate::connection::{MessagingClient, client};
use crate::error::{ClientError, Result};
use crate::route::Route;

/// How often a cached route naming a broker avoided as faulty is fetched
/// again (the controller republishes it once it elects a successor).
const SUSPECT_ROUTE_TTL: Duration = Duration::from_millis(500);

/// A route fetch that every send waiting for that route awaits.
pub(super) type SharedFetch = Shared<BoxFuture<'static, Result<Route>>>;

/// A shared fetch's entry in `Inner::fetching`, removed when the fetch ends
/// however it ends.
struct FetchSlot {
    inner: Arc<Inner>,
    topic: String,
}

impl Drop for FetchSlot {
    fn drop(&mut self) {
        self.inner.fetching.lock().remove(&self.topic);
    }
}

/// Who asks for a route: a send that waits for it, or a refresh in the
/// background while sends use the cached one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refresh {
    Foreground,
    Background,
}

impl Inner {
    /// The topic's route: cached for `route_ttl`; when refreshing fails, the
    /// stale one (if any) after a short try, so sends go on while the
    /// bootstrap broker is down.
    ///
    /// A cached route naming a broker avoided as faulty is also fetched again
    /// in the background every [`SUSPECT_ROUTE_TTL`] while it is used: after
    /// a master dies, the route fetched before the controller elected its
    /// successor named the dead master for a whole `route_ttl`, and its
    /// queues got no sends until the fault isolation ended and a send failed
    /// there again (about 6 s of a failover's 12 in the soak).
    pub(super) async fn route(self: &Arc<Self>, topic: &str) -> Result<Route> {
        let cached = {
            let mut routes = self.routes.lock();
            match routes.get_mut(topic) {
                Some(r) if !r.expired && r.fetched.elapsed() < self.config.route_ttl => {
                    if r.revalidated.elapsed() >= SUSPECT_ROUTE_TTL
                        && self.names_faulty(r)
                        && !self.revalidating.swap(true, Ordering::AcqRel)
                    {
                        r.revalidated = Instant::now();
                        let (producer, topic) = (Arc::downgrade(self), topic.to_string());
                        tokio::spawn(async move {
                            if let Some(inner) = producer.upgrade() {
                                let cached = inner.routes.lock().get(&topic).cloned();
                                let _ =
                                    inner.fetch_route(&topic, cached, Refresh::Background).await;
                                inner.revalidating.store(false, Ordering::Release);
                            }
                        });
                    }
                    return Ok(r.clone());
                }
                other => other.cloned(),
            }
        };
        self.shared_fetch(topic, cached).await
    }

    /// The foreground fetch of `topic`'s route that sends waiting for it
    /// share, started if none runs. A fault expires every route at once, and
    /// one fetch per waiting send (thousands a second under load) would crowd
    /// the broker that answers them while every send waits. The fetch is a
    /// task of its own: it ends (and leaves the map) even when every send
    /// waiting for it gave up, so none later joins a stale one.
    async fn shared_fetch(self: &Arc<Self>, topic: &str, cached: Option<Route>) -> Result<Route> {
        let fetch = self
            .fetching
            .lock()
            .entry(topic.to_string())
            .or_insert_with(|| {
                let slot = FetchSlot {
                    inner: self.clone(),
                    topic: topic.to_string(),
                };
                let task = tokio::spawn(async move {
                    slot.inner
                        .fetch_route(&slot.topic, cached, Refresh::Foreground)
                        .await
                });
                async move { task.await.unwrap_or(Err(ClientError::Closed)) }
                    .boxed()
                    .shared()
            })
            .clone();
        fetch.await
    }

    /// Whether `route` has a writable queue on a broker avoided as faulty.
    fn names_faulty(&self, route: &Route) -> bool {
        let mut faulty = self.faulty.lock();
        if faulty.is_empty() {
            return false;
        }
        let now = Instant::now();
        faulty.retain(|_, f| f.until > now);
        route
            .queues
            .iter()
            .any(|q| q.writable && faulty.contains_key(&q.broker_address))
    }

    /// Asks for the topic's route (replacing `cached` unless the answer is
    /// older) and caches it. A background refresh leaves the cache alone
    /// unless it got an answer at least as new as what the cache holds by
    /// then: a send may have marked it expired, or stored a newer route,
    /// meanwhile.
    async fn fetch_route(
        &self,
        topic: &str,
        cached: Option<Route>,
        refresh: Refresh,
    ) -> Result<Route> {
        let timeout = match cached {
            Some(_) => self.config.send_timeout.min(Duration::from_secs(1)),
            None => self.config.send_timeout,
        };
        let query = |client: MessagingClient| {
            retry(timeout, move || {
                let mut client = client.clone();
                let request = pb::QueryRouteRequest {
                    topic: topic.to_string(),
                };
                async move { client.query_route(request).await }
            })
        };
        // An answer older than the cached route is no refresh: a broker that
        // restarted has lost the pushed route table until the operator pushes
        // it again, and meanwhile answers as a standalone broker (epoch 0)
        // with every queue on itself, queues other brokers hold included.
        // Only for a while, though: epochs can go back for good.
        let (grace, asked) = (
            Route::lower_epoch_grace(self.config.route_ttl),
            Instant::now(),
        );
        let current = |r: &pb::QueryRouteResponse| {
            cached
                .as_ref()
                .is_none_or(|c| c.accepts(r.epoch, grace, asked))
        };
        let mut fetched = query(self.bootstrap.clone()).await;
        // The bootstrap broker is down (or restarted): any healthy broker of
        // the old route holds the same route table.
        let unanswered = match &fetched {
            Ok(r) => !current(r),
            Err(e) => e.is_retryable(),
        };
        if let Some(stale) = &cached
            && unanswered
        {
            let faulty = self.faulty.lock().clone();
            let mut others: Vec<&str> = stale
                .queues
                .iter()
                .map(|q| q.broker_address.as_str())
                .filter(|a| !faulty.contains_key(*a))
                .collect();
            others.sort_unstable();
            others.dedup();
            for address in others {
                if let Ok(c) = client(address, &self.config.access)
                    && let Ok(r) = query(c).await
                    && current(&r)
                {
                    fetched = Ok(r);
                    break;
                }
            }
        }
        let older = matches!(&fetched, Ok(r) if !current(r));
        let response = match (fetched, cached) {
            (Ok(r), Some(stale)) if older => {
                tracing::debug!(
                    epoch = r.epoch,
                    cached = stale.epoch,
                    topic,
                    "only older routes answered; using the cached route"
                );
                return Ok(self.keep_stale(topic, stale, refresh));
            }
            (Ok(r), _) => r,
            (Err(e), Some(stale)) if e.is_retryable() => {
                tracing::debug!(error = %e, topic, "route refresh failed; using the cached route");
                return Ok(self.keep_stale(topic, stale, refresh));
            }
            (Err(e), _) => return Err(e),
        };
        if response.queues.is_empty() {
            return Err(ClientError::InvalidArgument(format!(
                "topic {topic:?} has no queues"
            )));
        }
        let now = Instant::now();
        let route = Route {
            fetched: now,
            confirmed: now,
            revalidated: now,
            expired: false,
            epoch: response.epoch,
            queues: response.queues,
        };
        let mut routes = self.routes.lock();
        if refresh == Refresh::Background
            && routes.get(topic).is_some_and(|r| r.epoch > route.epoch)
        {
            return Ok(route);
        }
        routes.insert(topic.to_string(), route.clone());
        drop(routes);
        self.forgive_named_writers(&route);
        Ok(route)
    }

    /// Ends the avoidance of every broker that `route`, newer than the
    /// failure, names a queue's writer. A replica refuses sends (NOT_MASTER)
    /// until it is elected, and the route that elects it must be used at
    /// once: avoided on, the new master got no new sends for up to
    /// [`super::FAULT_ISOLATION`]. A broker named by mistake fails the next
    /// send and is avoided again.
    fn forgive_named_writers(&self, route: &Route) {
        let mut faulty = self.faulty.lock();
        if faulty.is_empty() {
            return;
        }
        faulty.retain(|address, fault| {
            fault.route_epoch >= route.epoch
                || !route
                    .queues
                    .iter()
                    .any(|q| q.writable && q.broker_address == *address)
        });
    }

    /// Keeps a route that could not be refreshed for another `route_ttl`, so
    /// sends do not each wait for an unreachable bootstrap broker (it stays
    /// unconfirmed: see [`Route::accepts`]). A background refresh keeps
    /// nothing: the cache stays as it is.
    fn keep_stale(&self, topic: &str, mut stale: Route, refresh: Refresh) -> Route {
        if refresh == Refresh::Background {
            return stale;
        }
        stale.fetched = Instant::now();
        stale.expired = false;
        self.routes.lock().insert(topic.to_string(), stale.clone());
        stale
    }
}
