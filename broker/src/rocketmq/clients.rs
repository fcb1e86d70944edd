//! The RocketMQ clients this broker serves. A RocketMQ consumer receives with
//! one request at a time and holds what it received between requests, so each
//! (client, group, topic) gets one consumer of the messaging core that lives
//! as long as the client: until it says it terminates, or its last Telemetry
//! stream ends (official clients keep one open while they run), or, for a
//! client that never opened one, until it has not received for
//! [`IDLE_WITHOUT_TELEMETRY`]. Its leases end then and are redelivered.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::filter::FilterSpec;
use crate::grpc::receive_streams::{ReceiveStreams, StreamSlot};
use crate::messaging::error::Result;
use crate::messaging::groups::ConsumeMode;
use crate::messaging::{Broker, ReceiveStream};

/// How long a consumer of a client without a Telemetry stream stays after its
/// last receive.
const IDLE_WITHOUT_TELEMETRY: Duration = Duration::from_secs(120);
/// How often idle consumers are looked for.
const REAP_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SessionKey {
    client_id: String,
    group: String,
    topic: String,
}

/// One client's consumer on one group and topic.
#[derive(Debug)]
pub struct Session {
    pub stream: ReceiveStream,
    filter: FilterSpec,
    last_used: Mutex<Instant>,
    /// Its place under the broker's limits on consumer streams.
    _slot: StreamSlot,
}

/// Every RocketMQ client's consumers and Telemetry streams.
#[derive(Debug)]
pub struct Clients {
    sessions: Mutex<HashMap<SessionKey, Arc<Session>>>,
    telemetry: Mutex<HashMap<String, usize>>,
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

    /// The consumer of `client_id` on `group` and `topic`, opened on first use;
    /// one opened with another filter is closed and replaced.
    pub async fn consumer(
        &self,
        broker: &Broker,
        client_id: &str,
        group: &str,
        topic: &str,
        filter: FilterSpec,
    ) -> Result<Arc<Session>> {
        let key = SessionKey {
            client_id: client_id.to_string(),
            group: group.to_string(),
            topic: topic.to_string(),
        };
        let replaced = {
            let mut sessions = self.sessions.lock();
            match sessions.get(&key) {
                Some(s) if s.filter == filter => {
                    *s.last_used.lock() = Instant::now();
                    return Ok(s.clone());
                }
                Some(_) => sessions.remove(&key),
                None => None,
            }
        };
        if let Some(old) = replaced {
            close(broker, &old).await;
        }
        let slot = self.streams.open(group, client_id)?;
        let stream = broker.open_receive(
            group,
            topic,
            client_id,
            ConsumeMode::Clustering,
            &filter,
            String::new(),
        )?;
        let session = Arc::new(Session {
            stream,
            filter,
            last_used: Mutex::new(Instant::now()),
            _slot: slot,
        });
        let raced = self.sessions.lock().insert(key, session.clone());
        if let Some(other) = raced {
            close(broker, &other).await;
        }
        Ok(session)
    }

    /// Closes every consumer of `client_id`.
    pub async fn close_client(&self, broker: &Broker, client_id: &str) {
        let gone: Vec<_> = {
            let mut sessions = self.sessions.lock();
            let keys: Vec<_> = sessions
                .keys()
                .filter(|k| k.client_id == client_id)
                .cloned()
                .collect();
            keys.into_iter()
                .filter_map(|k| sessions.remove(&k))
                .collect()
        };
        for s in gone {
            close(broker, &s).await;
        }
    }

    pub fn telemetry_opened(&self, client_id: &str) {
        *self
            .telemetry
            .lock()
            .entry(client_id.to_string())
            .or_default() += 1;
    }

    /// Records a Telemetry stream's end; true when it was the client's last.
    pub fn telemetry_closed(&self, client_id: &str) -> bool {
        let mut open = self.telemetry.lock();
        let Some(n) = open.get_mut(client_id) else {
            return true;
        };
        *n -= 1;
        if *n == 0 {
            open.remove(client_id);
            return true;
        }
        false
    }

    /// Closes, every [`REAP_EVERY`] until the broker shuts down, the consumers
    /// of clients without a Telemetry stream that stopped receiving.
    pub async fn reap_idle(self: Arc<Self>, broker: Arc<Broker>) {
        let mut stop = broker.shutdown_signal();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(REAP_EVERY) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let idle: Vec<_> = {
                let live = self.telemetry.lock();
                let mut sessions = self.sessions.lock();
                let keys: Vec<_> = sessions
                    .iter()
                    .filter(|(k, s)| {
                        !live.contains_key(&k.client_id)
                            && s.last_used.lock().elapsed() > IDLE_WITHOUT_TELEMETRY
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                keys.into_iter()
                    .filter_map(|k| sessions.remove(&k))
                    .collect()
            };
            for s in idle {
                close(&broker, &s).await;
            }
        }
    }
}

async fn close(broker: &Broker, s: &Session) {
    broker
        .close_receive(&s.stream.subscription, s.stream.consumer)
        .await;
}
