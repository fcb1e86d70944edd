//! The RocketMQ clients this broker serves. A RocketMQ consumer receives with
//! one request at a time and holds what it received between requests, so each
//! (client, group, topic) gets one consumer of the messaging core that lives
//! as long as the client:
//!
//! - NotifyClientTermination closes it, and what it held is redelivered now;
//! - once it has not received for [`IDLE_WITHOUT_TELEMETRY`] while its client
//!   has no Telemetry stream open (official clients keep one open while they
//!   run, and open another when it breaks), or for [`IDLE`] in any case, it
//!   is detached: what it held stays leased to its deadline. A client that
//!   reconnects before finds its consumer, and its leases, as they were.
//!
//! Leases of receives that asked for `auto_renew` (push consumers) are renewed
//! while the client has a Telemetry stream open (see `LeaseEnd` for those
//! that are not).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::attempts::Attempts;
use crate::filter::FilterSpec;
use crate::grpc::receive_streams::{ReceiveStreams, StreamSlot};
use crate::messaging::error::Result;
use crate::messaging::groups::ConsumeMode;
use crate::messaging::{Broker, ReceiveStream};

/// How long a consumer of a client without a Telemetry stream stays after its
/// last receive.
const IDLE_WITHOUT_TELEMETRY: Duration = Duration::from_secs(120);
/// How long any consumer stays after its last receive.
const IDLE: Duration = Duration::from_secs(600);
/// How often leases are renewed (at most; a third of the lease when that is
/// shorter) and idle consumers looked for.
const MAINTAIN_EVERY: Duration = Duration::from_secs(10);
/// Receives one consumer may have waiting at once.
pub const MAX_CONCURRENT_RECEIVES: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SessionKey {
    client: ClientRef,
    group: String,
    topic: String,
}

/// A client as its user names it: the same client id under two users is two
/// clients, so no user can end or keep alive another's consumers by naming
/// its id ("" is the user when authentication is off).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientRef {
    pub owner: String,
    pub id: String,
}

/// One client's consumer on one group and topic.
#[derive(Debug)]
pub struct Session {
    pub stream: ReceiveStream,
    filter: FilterSpec,
    last_used: Mutex<Instant>,
    /// Set when the consumer is closed or detached: receives under way stop.
    closed: AtomicBool,
    /// Its receives asked for their leases to be renewed: for how long each
    /// time (ms; 0: not asked).
    renew_ms: AtomicU64,
    receiving: AtomicUsize,
    /// Its recent answers, for receives that try an attempt again.
    pub attempts: Attempts,
    /// Its place under the broker's limits on consumer streams.
    _slot: StreamSlot,
}

impl Session {
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Marks the session as renewing its leases, by `invisible` at least,
    /// while the client is connected.
    pub fn renew_leases(&self, invisible: Duration) {
        self.renew_ms
            .fetch_max(invisible.as_millis() as u64, Ordering::Relaxed);
    }

    /// A place for one more waiting receive; `None` past
    /// [`MAX_CONCURRENT_RECEIVES`].
    pub fn begin_receive(self: &Arc<Self>) -> Option<ReceiveSlot> {
        if self.receiving.fetch_add(1, Ordering::AcqRel) >= MAX_CONCURRENT_RECEIVES {
            self.receiving.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ReceiveSlot(self.clone()))
    }
}

/// One receive's place under [`MAX_CONCURRENT_RECEIVES`], held while it waits.
#[derive(Debug)]
pub struct ReceiveSlot(Arc<Session>);

impl Drop for ReceiveSlot {
    fn drop(&mut self) {
        self.0.receiving.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How a client's consumer ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leaving {
    /// The client said it terminates: what it held is redelivered now.
    Terminated,
    /// The client went away or stopped receiving: what it held stays leased
    /// to its deadline.
    Gone,
}

/// Every RocketMQ client's consumers and Telemetry streams.
#[derive(Debug)]
pub struct Clients {
    sessions: Mutex<HashMap<SessionKey, Arc<Session>>>,
    telemetry: Mutex<HashMap<ClientRef, usize>>,
    streams: Arc<ReceiveStreams>,
}

impl Clients {
    pub fn new(streams: Arc<ReceiveStreams>) -> Arc<Clients> {
        Arc::new(Clients {
            sessions: Mutex::default(),
            telemetry: Mutex::default(),
            streams,
        })
    }

    /// The consumer of `client` on `group` and `topic`, opened on first use
    /// (concurrent first receives share one); one opened with another filter
    /// is closed and replaced.
    pub async fn consumer(
        &self,
        broker: &Broker,
        client: &ClientRef,
        group: &str,
        topic: &str,
        filter: FilterSpec,
    ) -> Result<Arc<Session>> {
        let key = SessionKey {
            client: client.clone(),
            group: group.to_string(),
            topic: topic.to_string(),
        };
        let (session, replaced) = {
            let mut sessions = self.sessions.lock();
            match sessions.get(&key) {
                Some(s) if s.filter == filter => {
                    *s.last_used.lock() = Instant::now();
                    return Ok(s.clone());
                }
                _ => {}
            }
            // Another filter: the old consumer leaves its group's
            // subscription before the new one joins it, then (below) what it
            // held is redelivered (also when the new one cannot open: its
            // receive is refused, and the client receives again).
            let replaced = sessions.remove(&key);
            if let Some(old) = &replaced {
                detach(broker, old);
            }
            let opened = self.open(broker, &key, filter);
            if let Ok(s) = &opened {
                sessions.insert(key, s.clone());
            }
            (opened, replaced)
        };
        if let Some(old) = replaced {
            end(broker, &old, Leaving::Terminated).await;
        }
        session
    }

    fn open(&self, broker: &Broker, key: &SessionKey, filter: FilterSpec) -> Result<Arc<Session>> {
        let slot = self.streams.open(&key.group, &key.client.id)?;
        let stream = broker.open_receive(
            &key.group,
            &key.topic,
            &key.client.id,
            ConsumeMode::Clustering,
            &filter,
            String::new(),
        )?;
        Ok(Arc::new(Session {
            stream,
            filter,
            last_used: Mutex::new(Instant::now()),
            closed: AtomicBool::new(false),
            renew_ms: AtomicU64::new(0),
            receiving: AtomicUsize::new(0),
            attempts: Attempts::default(),
            _slot: slot,
        }))
    }

    /// Closes every consumer of `client`, which said it terminates: what it
    /// held is redelivered now.
    pub async fn close_client(&self, broker: &Broker, client: &ClientRef) {
        let gone = self.remove(|k, _| k.client == *client);
        for s in gone {
            end(broker, &s, Leaving::Terminated).await;
        }
    }

    fn remove(&self, pick: impl Fn(&SessionKey, &Session) -> bool) -> Vec<Arc<Session>> {
        let mut sessions = self.sessions.lock();
        let keys: Vec<_> = sessions
            .iter()
            .filter(|(k, s)| pick(k, s))
            .map(|(k, _)| k.clone())
            .collect();
        keys.into_iter()
            .filter_map(|k| sessions.remove(&k))
            .collect()
    }

    pub fn telemetry_opened(&self, client: &ClientRef) {
        *self.telemetry.lock().entry(client.clone()).or_default() += 1;
    }

    /// Records a Telemetry stream's end.
    pub fn telemetry_closed(&self, client: &ClientRef) {
        let mut open = self.telemetry.lock();
        if let Some(n) = open.get_mut(client) {
            *n -= 1;
            if *n == 0 {
                open.remove(client);
            }
        }
    }

    /// Until the broker shuts down: renews the leases of connected clients
    /// that asked for it, and detaches idle consumers.
    pub async fn maintain(self: Arc<Self>, broker: Arc<Broker>) {
        let mut stop = broker.shutdown_signal();
        let invisible = broker.config().default_invisible_duration;
        let every = MAINTAIN_EVERY
            .min(invisible / 3)
            .max(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let renewing: Vec<(Arc<Session>, Duration)> = {
                let live = self.telemetry.lock();
                self.sessions
                    .lock()
                    .iter()
                    .filter(|(k, _)| live.contains_key(&k.client))
                    .filter_map(|(_, s)| match s.renew_ms.load(Ordering::Relaxed) {
                        0 => None,
                        // Renewed at least a third of the default ahead of the
                        // next pass.
                        ms => Some((s.clone(), Duration::from_millis(ms).max(invisible))),
                    })
                    .collect()
            };
            for (s, by) in renewing {
                broker.renew_leases(&s.stream.subscription, s.stream.consumer, by);
            }
            let idle = {
                let live = self.telemetry.lock();
                self.remove(|k, s| {
                    let idle = s.last_used.lock().elapsed();
                    idle > IDLE || (!live.contains_key(&k.client) && idle > IDLE_WITHOUT_TELEMETRY)
                })
            };
            for s in idle {
                end(&broker, &s, Leaving::Gone).await;
            }
        }
    }
}

/// Unregisters a session's consumer, its leases left to their deadlines.
fn detach(broker: &Broker, s: &Session) {
    s.closed.store(true, Ordering::Release);
    broker.detach_receive(&s.stream.subscription, s.stream.consumer);
}

async fn end(broker: &Broker, s: &Session, leaving: Leaving) {
    match leaving {
        Leaving::Terminated => {
            s.closed.store(true, Ordering::Release);
            broker
                .close_receive(&s.stream.subscription, s.stream.consumer)
                .await
        }
        Leaving::Gone => detach(broker, s),
    }
}
