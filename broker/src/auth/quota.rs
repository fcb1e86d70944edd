//! Per-user quotas, as Strimzi's KafkaUser has them: produce and consume byte
//! rates, and a number of connections.
//!
//! A rate is a bucket that holds at most one second of bytes and may go into
//! debt. A send takes its bytes and waits until the debt is paid off before
//! it is stored; one that would wait longer than [`MAX_THROTTLE`] (its bytes
//! and the debt of sends before it) is refused with `QUOTA_EXCEEDED`. A
//! consumer is given nothing while the user is in debt, and what it is given
//! is charged after: so traffic is shaped to the rate rather than refused.
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

    fn refill(&mut self, rate: f64, now: Instant) {
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * rate).min(rate);
        self.at = now;
    }

    /// How long until the debt is paid off.
    fn debt(&mut self, rate: u64, now: Instant) -> Duration {
        let rate = rate.max(1) as f64;
        self.refill(rate, now);
        Duration::from_secs_f64((-self.tokens).max(0.0) / rate)
    }

    /// Takes `bytes` at `rate`: how long the taker waits; when that would be
    /// more than `max_wait`, nothing is taken and the wait is the error.
    fn take(
        &mut self,
        bytes: u64,
        rate: u64,
        now: Instant,
        max_wait: Duration,
    ) -> Result<Duration, Duration> {
        let rate = rate.max(1) as f64;
        self.refill(rate, now);
        let after = self.tokens - bytes as f64;
        let wait = Duration::from_secs_f64((-after).max(0.0) / rate);
        if wait > max_wait {
            return Err(wait);
        }
        self.tokens = after;
        Ok(wait)
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

    /// How long a send of `bytes` waits before it is stored; refused when
    /// more than [`MAX_THROTTLE`] (its bytes and the debt before them).
    pub fn throttle_send(&self, bytes: u64) -> Result<Duration, QuotaError> {
        let Some(rate) = self.limits.lock().produce_bytes_per_second else {
            return Ok(Duration::ZERO);
        };
        self.produce
            .lock()
            .take(bytes, rate, Instant::now(), MAX_THROTTLE)
            .map_err(|wait| QuotaError::Rate {
                direction: Direction::Produce,
                bytes,
                rate,
                wait,
            })
    }

    /// How long a consumer waits before it is given more: until what it
    /// was given is paid for.
    pub fn consume_debt(&self) -> Duration {
        match self.limits.lock().consume_bytes_per_second {
            Some(rate) => self.consume.lock().debt(rate, Instant::now()),
            None => Duration::ZERO,
        }
    }

    /// Counts `bytes` delivered to the user (paid for before its next ones).
    pub fn charge_delivery(&self, bytes: u64) {
        if let Some(rate) = self.limits.lock().consume_bytes_per_second {
            let _ = self
                .consume
                .lock()
                .take(bytes, rate, Instant::now(), Duration::MAX);
        }
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
        let meter = match by_user.get(user) {
            Some(meter) => meter.clone(),
            None => by_user
                .entry(user.to_string())
                .or_insert_with(|| Arc::new(Meter::new(limits)))
                .clone(),
        };
        drop(by_user);
        let mut current = meter.limits.lock();
        if *current != limits {
            *current = limits;
        }
        drop(current);
        meter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(tokens: f64, at: Instant) -> Bucket {
        Bucket { tokens, at }
    }

    #[test]
    fn a_rate_shapes_traffic_to_itself_with_a_second_of_burst() {
        let start = Instant::now();
        let mut b = bucket(f64::INFINITY, start);
        // A second's worth at once, then debt.
        assert_eq!(b.take(1000, 1000, start, MAX_THROTTLE), Ok(Duration::ZERO));
        assert_eq!(
            b.take(500, 1000, start, MAX_THROTTLE),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(b.debt(1000, start), Duration::from_millis(500));
        // Half a second later the debt is paid; the next 1000 wait a second.
        let later = start + Duration::from_millis(500);
        assert_eq!(b.debt(1000, later), Duration::ZERO);
        assert_eq!(
            b.take(1000, 1000, later, MAX_THROTTLE),
            Ok(Duration::from_secs(1))
        );
        // Idle time refills at most one second's worth.
        let much_later = later + Duration::from_secs(100);
        assert_eq!(
            b.take(1000, 1000, much_later, MAX_THROTTLE),
            Ok(Duration::ZERO)
        );
        let one_byte = b.take(1, 1000, much_later, MAX_THROTTLE).unwrap();
        assert_eq!(one_byte.as_micros(), 1000);
    }

    #[test]
    fn more_than_the_longest_throttle_is_refused_and_takes_nothing() {
        let start = Instant::now();
        let mut b = bucket(0.0, start);
        assert_eq!(
            b.take(31_000, 1000, start, MAX_THROTTLE),
            Err(Duration::from_secs(31))
        );
        assert_eq!(
            b.take(1000, 1000, start, MAX_THROTTLE),
            Ok(Duration::from_secs(1))
        );
        // The debt of earlier sends counts too.
        assert_eq!(
            b.take(29_500, 1000, start, MAX_THROTTLE),
            Err(Duration::from_millis(30_500))
        );
    }

    #[test]
    fn deliveries_are_charged_after_and_paid_before_the_next() {
        let meter = Meter::new(Quotas {
            consume_bytes_per_second: Some(1000),
            ..Quotas::default()
        });
        assert_eq!(meter.consume_debt(), Duration::ZERO);
        meter.charge_delivery(3000);
        let debt = meter.consume_debt();
        assert!(
            debt > Duration::from_millis(1900) && debt <= Duration::from_secs(2),
            "{debt:?}"
        );
        let free = Meter::new(Quotas::default());
        free.charge_delivery(u64::MAX);
        assert_eq!(free.consume_debt(), Duration::ZERO);
        assert_eq!(free.throttle_send(u64::MAX), Ok(Duration::ZERO));
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
