//! The checks of the `auth` fuzz target (`fuzz/fuzz_targets/auth.rs`): the
//! decoders a client reaches before it is authenticated (the
//! `authorization` and `x-mq-date-time` headers) and the users file. Here so
//! that `cargo test` replays its committed corpus (`fuzz/corpus/auth/`).
//!
//! An input is split by its first byte: 0, the rest as an `authorization`
//! value and a date-time; 1, as a users file; else an [`Exchange`] (via
//! `arbitrary`) that is signed and verified, which must succeed with its own
//! secret and fail with any other or a signature of another time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arbitrary::{Arbitrary, Unstructured};
use dduomq_proto::Credentials;
use dduomq_proto::signature::{self, SignatureError};

use super::sealed::SealingKey;
use super::users;

/// One signed request, as `arbitrary` builds it.
#[derive(Debug, Arbitrary)]
struct Exchange {
    access_key: String,
    secret_key: String,
    other_secret: String,
    /// Seconds since the Unix epoch it was signed at.
    signed_at: u32,
    /// How far the broker's clock is from it.
    skew: i32,
}

/// Runs every check on one fuzz input; panics on a violation.
pub fn check_auth_input(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode {
        0 => check_headers(rest),
        1 => check_users_file(rest),
        _ => {
            if let Ok(e) = Exchange::arbitrary_take_rest(Unstructured::new(rest)) {
                check_exchange(&e);
            }
        }
    }
}

fn check_headers(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let (authorization, date_time) = text.split_once('\n').unwrap_or((&text, ""));
    if let Ok(claim) = signature::parse_authorization(authorization) {
        assert_eq!(claim.signature.len(), 20);
        assert!(!claim.access_key.is_empty());
        assert!(authorization.len() <= signature::MAX_AUTHORIZATION_LEN);
        assert!(!signature::verify(
            &claim,
            date_time,
            b"a secret nobody signed with"
        ));
    }
    let now = SystemTime::now();
    match signature::check_date_time(date_time, now, Duration::from_secs(900)) {
        Ok(()) | Err(SignatureError::BadDateTime | SignatureError::ClockSkew { .. }) => {}
        Err(SignatureError::Malformed) => panic!("a date-time is never malformed"),
    }
}

fn check_users_file(bytes: &[u8]) {
    let key = fuzz_key();
    match users::parse(bytes, &key) {
        Ok(loaded) => {
            // Every user found by name has its primary key.
            for line in String::from_utf8_lossy(bytes).lines() {
                if let Some(name) = line
                    .strip_prefix("name = \"")
                    .and_then(|r| r.strip_suffix('"'))
                    && loaded.named(name).is_some()
                {
                    assert!(
                        loaded.credentials_of(name).is_some(),
                        "{name} has no primary key"
                    );
                }
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

fn check_exchange(e: &Exchange) {
    let at = UNIX_EPOCH + Duration::from_secs(u64::from(e.signed_at));
    let credentials = Credentials {
        access_key: e.access_key.clone(),
        secret_key: e.secret_key.clone(),
    };
    let signed = credentials.sign(at);
    let claim = match signature::parse_authorization(&signed.authorization) {
        Ok(claim) => claim,
        // Keys the header cannot carry (empty, ',', '=', spaces, too long)
        // are refused by the users file; their headers need not parse.
        Err(_) => return,
    };
    assert!(signature::verify(
        &claim,
        &signed.date_time,
        e.secret_key.as_bytes()
    ));
    // Secret keys are never stored with control characters (HMAC pads keys
    // with zero bytes, so "k" and "k\0" sign alike).
    let storable = |s: &str| super::sealed::valid_secret(s);
    if e.other_secret != e.secret_key && storable(&e.secret_key) && storable(&e.other_secret) {
        assert!(!signature::verify(
            &claim,
            &signed.date_time,
            e.other_secret.as_bytes()
        ));
    }
    let later = credentials.sign(at + Duration::from_secs(1));
    assert!(!signature::verify(
        &claim,
        &later.date_time,
        e.secret_key.as_bytes()
    ));
    let clock = if e.skew >= 0 {
        at + Duration::from_secs(e.skew.unsigned_abs().into())
    } else {
        at - Duration::from_secs(e.skew.unsigned_abs().into())
    };
    if clock < UNIX_EPOCH {
        return; // a broker's clock is never before 1970
    }
    let allowed = Duration::from_secs(900);
    let accepted = signature::check_date_time(&signed.date_time, clock, allowed).is_ok();
    assert_eq!(accepted, e.skew.unsigned_abs() <= 900, "skew {}", e.skew);
}

/// The sealing key the users-file checks open secrets with.
fn fuzz_key() -> SealingKey {
    SealingKey::from_text(&"5a".repeat(32)).expect("a valid key")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed seed corpus of the fuzz target, replayed.
    #[test]
    fn the_fuzz_corpus_replays_cleanly() {
        crate::fuzz_corpus::replay("auth", 6, check_auth_input);
    }
}
