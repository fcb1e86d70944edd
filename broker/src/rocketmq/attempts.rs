//! What a consumer's recent receives answered, by the request's
//! `attempt_id`: a client whose answer was lost (its deadline passed, the
//! connection broke) receives again with the same attempt id, and gets the
//! messages of that answer it still holds, under the same receipt handles,
//! rather than new ones while the first wait out their invisible duration.
//! Only the handles are kept: the messages are read again, and a handle
//! whose lease ended (acked, nacked, run out, released) is left out.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Longest attempt id taken (clients send a UUID).
pub const MAX_ATTEMPT_ID_LEN: usize = 128;
/// Most answers one consumer keeps (as many as receives may wait at once).
const MAX_KEPT: usize = super::clients::MAX_CONCURRENT_RECEIVES;

/// One consumer's kept answers, oldest first.
#[derive(Debug, Default)]
pub struct Attempts {
    kept: Mutex<VecDeque<Answer>>,
}

#[derive(Debug)]
struct Answer {
    attempt_id: String,
    deliveries: Vec<Answered>,
    /// When the leases it handed out end, unless changed: kept no longer.
    leased_until: Instant,
}

/// One message of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    pub receipt_handle: String,
    /// The delivery attempt it was answered as.
    pub attempt: u32,
}

impl Attempts {
    /// The messages answered to `attempt_id`, if the answer is kept.
    pub fn answered(&self, attempt_id: &str) -> Option<Vec<Answered>> {
        let now = Instant::now();
        let mut kept = self.kept.lock();
        kept.retain(|a| a.leased_until > now);
        kept.iter()
            .find(|a| a.attempt_id == attempt_id)
            .map(|a| a.deliveries.clone())
    }

    /// Keeps what was answered to `attempt_id`, leased for `invisible`.
    pub fn keep(&self, attempt_id: String, deliveries: Vec<Answered>, invisible: Duration) {
        let now = Instant::now();
        let mut kept = self.kept.lock();
        kept.retain(|a| a.leased_until > now && a.attempt_id != attempt_id);
        while kept.len() >= MAX_KEPT {
            kept.pop_front();
        }
        kept.push_back(Answer {
            attempt_id,
            deliveries,
            leased_until: now + invisible,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(handle: &str) -> Vec<Answered> {
        vec![Answered {
            receipt_handle: handle.into(),
            attempt: 1,
        }]
    }

    #[test]
    fn an_attempt_finds_its_answer_while_leased() {
        let a = Attempts::default();
        a.keep("one".into(), answered("h1"), Duration::from_secs(30));
        assert_eq!(a.answered("one"), Some(answered("h1")));
        assert_eq!(a.answered("two"), None);
        a.keep("one".into(), answered("h2"), Duration::from_secs(30));
        assert_eq!(a.answered("one"), Some(answered("h2")), "the last answer");
        a.keep("short".into(), answered("h3"), Duration::ZERO);
        assert_eq!(a.answered("short"), None, "its leases ended");
    }

    #[test]
    fn kept_answers_are_bounded() {
        let a = Attempts::default();
        for i in 0..=MAX_KEPT {
            a.keep(i.to_string(), answered("h"), Duration::from_secs(30));
        }
        assert_eq!(a.answered("0"), None, "the oldest made room");
        assert!(a.answered(&MAX_KEPT.to_string()).is_some());
    }
}
