//! Per-user quotas, as Strimzi's KafkaUser has them: produce and consume byte
//! rates, and a number of connections.
//!
//! A rate is a bucket that holds at most one second of bytes and may go into
//! debt: a request takes its bytes at once and waits until the debt is paid
//! off (sends wait before they are stored; consumers before their next
//! messages), so a user's traffic is shaped to its rate rather than refused. A
//! send that would wait longer than [`MAX_THROTTLE`] is refused with
//! `QUOTA_EXCEEDED` (a batch larger than 30 seconds of the user's rate).
//! The meters of a user outlive reloads of the users file.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde::Deserialize;
use tokio::time::Instant;

/// Longest a request is held back by a rate.
pub const MAX_THROTTLE: Duration = Duration::from_secs(30);

/// A user's limits (`quotas` in the users file); none by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    /// Bytes of message bodies per second this user may send.
    pub produce_bytes_per_second: Option<u64>,
    /// Bytes of message bodies per second delivered to this user.
    pub consume_bytes_per_second: Option<u64>,
    /// Connections this user may have open on one broker.
    pub connections: Option<u32>,
}

/// Which rate a request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Produce,
    Consume,
}

impl Direction {
    pub fn label(self) -> &'static str {
        match self {
            Direction::Produce => "produce",
            Direction::Consume => "consume",
        }
    }
}

/// Why a quota refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    #[error(
        "{bytes} bytes would wait {wait:?} under this user's {} quota of {rate} bytes/s (at most {MAX_THROTTLE:?}): send smaller batches or raise the quota",
        .direction.label()
    )]
    Rate {
        direction: Direction,
        bytes: u64,
        rate: u64,
        wait: Duration,
    },
    #[error("this user has {limit} connections open on this broker, its quota")]
    Connections { limit: u32 },
}

/// A byte rate's bucket: tokens available (negative: debt) as of `at`.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket (one second of the rate, once it is known).
    fn new() -> Bucket {
        Bucket {
            tokens: f64::INFINITY,
            at: Instant::now(),
        }
    }

    /// Takes `bytes` at `rate`; how long the taker waits, or `None` when that
    /// would pass `max_wait` (then nothing is taken).
    fn take(
        &mut self,
        bytes: u64,
        rate: u64,
        now: Instant,
        max_wait: Duration,
    ) -> Option<Duration> {
        let rate = rate.max(1) as f64;
        let refilled = self.tokens + now.duration_since(self.at).as_secs_f64() * rate;
        let after = refilled.min(rate) - bytes as f64;
        let wait = Duration::from_secs_f64((-after).max(0.0) / rate);
        if wait > max_wait {
            return None;
        }
        self.tokens = after;
        self.at = now;
        Some(wait)
    }
}

/// The meters of one user.
#[derive(Debug)]
pub struct Meter {
    limits: Mutex<Quotas>,
    produce: Mutex<Bucket>,
    consume: Mutex<Bucket>,
    connections: AtomicU32,
}

impl Meter {
    fn new(limits: Quotas) -> Meter {
        Meter {
            limits: Mutex::new(limits),
            produce: Mutex::new(Bucket::new()),
            consume: Mutex::new(Bucket::new()),
            connections: AtomicU32::new(0),
        }
    }

    /// How long a request moving `bytes` in `direction` waits. Sends that
    /// would wait more than [`MAX_THROTTLE`] are refused; deliveries, already
    /// made when they are counted, only hold up the consumer's next ones.
    pub fn throttle(&self, direction: Direction, bytes: u64) -> Result<Duration, QuotaError> {
        let limits = *self.limits.lock();
        let (rate, bucket, max_wait) = match direction {
            Direction::Produce => (limits.produce_bytes_per_second, &self.produce, MAX_THROTTLE),
            Direction::Consume => (
                limits.consume_bytes_per_second,
                &self.consume,
                Duration::MAX,
            ),
        };
        let Some(rate) = rate else {
            return Ok(Duration::ZERO);
        };
        bucket
            .lock()
            .take(bytes, rate, Instant::now(), max_wait)
            .ok_or_else(|| QuotaError::Rate {
                direction,
                bytes,
                rate,
                wait: Duration::from_secs_f64(bytes as f64 / rate.max(1) as f64),
            })
    }

    /// The consume rate, if the user has one.
    pub fn consume_rate(&self) -> Option<u64> {
        self.limits.lock().consume_bytes_per_second
    }

    /// A place among the user's connections, given back when dropped.
    pub fn connect(self: &Arc<Self>) -> Result<ConnectionPlace, QuotaError> {
        let limit = self.limits.lock().connections;
        let open = self.connections.fetch_add(1, Ordering::SeqCst);
        if let Some(limit) = limit
            && open >= limit
        {
            self.connections.fetch_sub(1, Ordering::SeqCst);
            return Err(QuotaError::Connections { limit });
        }
        Ok(ConnectionPlace(self.clone()))
    }
}

/// One of a user's connections; dropping it frees the place.
#[derive(Debug)]
pub struct ConnectionPlace(Arc<Meter>);

impl Drop for ConnectionPlace {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Every user's meter, by name; limits follow the users file.
#[derive(Debug, Default)]
pub struct Meters {
    by_user: Mutex<HashMap<String, Arc<Meter>>>,
}

impl Meters {
    /// The meter of `user`, with `limits` from the current users file.
    pub fn of(&self, user: &str, limits: Quotas) -> Arc<Meter> {
        let mut by_user = self.by_user.lock();
        let meter = by_user
            .entry(user.to_string())
            .or_insert_with(|| Arc::new(Meter::new(limits)));
        *meter.limits.lock() = limits;
        meter.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_shapes_traffic_to_itself_with_a_second_of_burst() {
        let start = Instant::now();
        let mut bucket = Bucket {
            tokens: 1000.0,
            at: start,
        };
        // A second's worth at once, then debt.
        assert_eq!(
            bucket.take(1000, 1000, start, MAX_THROTTLE),
            Some(Duration::ZERO)
        );
        assert_eq!(
            bucket.take(500, 1000, start, MAX_THROTTLE),
            Some(Duration::from_millis(500))
        );
        // Half a second later the debt is paid; the next 1000 wait a second.
        let later = start + Duration::from_millis(500);
        assert_eq!(
            bucket.take(1000, 1000, later, MAX_THROTTLE),
            Some(Duration::from_secs(1))
        );
        // Idle time refills at most one second's worth.
        let much_later = later + Duration::from_secs(100);
        assert_eq!(
            bucket.take(1000, 1000, much_later, MAX_THROTTLE),
            Some(Duration::ZERO)
        );
        let one_byte = bucket.take(1, 1000, much_later, MAX_THROTTLE).unwrap();
        assert_eq!(one_byte.as_micros(), 1000);
    }

    #[test]
    fn more_than_the_longest_throttle_is_refused_and_takes_nothing() {
        let start = Instant::now();
        let mut bucket = Bucket {
            tokens: 0.0,
            at: start,
        };
        assert_eq!(bucket.take(31_000, 1000, start, MAX_THROTTLE), None);
        assert!(bucket.take(31_000, 1000, start, Duration::MAX).is_some());
        let mut bucket = Bucket {
            tokens: 0.0,
            at: start,
        };
        assert_eq!(
            bucket.take(1000, 1000, start, MAX_THROTTLE),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn connections_are_counted_and_given_back() {
        let meters = Meters::default();
        let quotas = Quotas {
            connections: Some(2),
            ..Quotas::default()
        };
        let meter = meters.of("a", quotas);
        let first = meter.connect().unwrap();
        let _second = meter.connect().unwrap();
        assert_eq!(
            meter.connect().unwrap_err(),
            QuotaError::Connections { limit: 2 }
        );
        drop(first);
        assert!(meters.of("a", quotas).connect().is_ok());
        // No limit: any number.
        let free = meters.of("b", Quotas::default());
        let places: Vec<_> = (0..10).map(|_| free.connect().unwrap()).collect();
        assert_eq!(places.len(), 10);
    }
}
