//! RocketMQ 5's access-key signature, which both gRPC front doors accept so
//! that one credential works for RocketMQ clients and ours.
//!
//! A signed request carries two metadata entries:
//!
//! ```text
//! x-mq-date-time: 20261202T151500Z            (UTC, second precision)
//! authorization:  MQv2-HMAC-SHA1 Credential=<access key>, SignedHeaders=x-mq-date-time, Signature=<hex>
//! ```
//!
//! where the signature is HMAC-SHA1 over the date-time's bytes, keyed with the
//! secret key. Clients differ in details the broker tolerates: some append
//! `//Rocketmq` to the access key, some write the hex digits in upper case.
//! The signature covers only the time, so a captured header is replayable
//! until the broker's clock-skew window closes: use TLS.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, NaiveDateTime, Utc};
use hmac::{Hmac, Mac};
use sha1::Sha1;
use tonic::metadata::MetadataMap;
use tonic::service::Interceptor;

/// The metadata entry holding the signature.
pub const AUTHORIZATION: &str = "authorization";
/// The metadata entry holding the signed time.
pub const DATE_TIME: &str = "x-mq-date-time";
/// The only algorithm of the scheme.
const ALGORITHM: &str = "MQv2-HMAC-SHA1";
/// The date-time format (`yyyyMMdd'T'HHmmss'Z'`).
const DATE_TIME_FORMAT: &str = "%Y%m%dT%H%M%SZ";
/// What some clients append to the access key.
const CREDENTIAL_SUFFIX: &str = "//Rocketmq";
/// Longest `authorization` value looked at (an access key and a signature).
pub const MAX_AUTHORIZATION_LEN: usize = 512;

type HmacSha1 = Hmac<Sha1>;

/// An access key and its secret key. The secret is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<hidden>")
            .finish()
    }
}

/// The two metadata values of a request signed at one time.
#[derive(Debug, Clone)]
pub struct SignedHeaders {
    pub date_time: String,
    pub authorization: String,
}

impl Credentials {
    /// The headers of a request signed at `now`.
    pub fn sign(&self, now: SystemTime) -> SignedHeaders {
        let date_time = format_date_time(now);
        let signature = hex::encode(hmac(self.secret_key.as_bytes(), date_time.as_bytes()));
        SignedHeaders {
            authorization: format!(
                "{ALGORITHM} Credential={}, SignedHeaders={DATE_TIME}, Signature={signature}",
                self.access_key
            ),
            date_time,
        }
    }
}

/// Signs every request of a client (nothing without credentials): the
/// interceptor of our SDK, CLI, operator and of brokers talking to brokers.
#[derive(Clone, Default)]
pub struct Signer {
    source: Source,
}

/// Where a signer's credentials come from.
#[derive(Clone, Default)]
enum Source {
    #[default]
    Unsigned,
    Fixed(Arc<Credentials>),
    /// Asked at each request (a broker's own user, whose keys rotate).
    Current(Arc<dyn Fn() -> Option<Credentials> + Send + Sync>),
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match &self.source {
            Source::Unsigned => "unsigned",
            Source::Fixed(_) => "fixed credentials",
            Source::Current(_) => "current credentials",
        };
        f.debug_tuple("Signer").field(&source).finish()
    }
}

impl Signer {
    pub fn new(credentials: Option<Credentials>) -> Signer {
        Signer {
            source: match credentials {
                Some(c) => Source::Fixed(Arc::new(c)),
                None => Source::Unsigned,
            },
        }
    }

    /// A signer asking `current` for the credentials at each request.
    pub fn current(current: impl Fn() -> Option<Credentials> + Send + Sync + 'static) -> Signer {
        Signer {
            source: Source::Current(Arc::new(current)),
        }
    }

    /// Puts the signature headers of a request signed now on `metadata`.
    pub fn sign(&self, metadata: &mut MetadataMap) -> Result<(), tonic::Status> {
        let signed = match &self.source {
            Source::Unsigned => return Ok(()),
            Source::Fixed(c) => c.sign(SystemTime::now()),
            Source::Current(current) => match current() {
                Some(c) => c.sign(SystemTime::now()),
                None => return Ok(()),
            },
        };
        let authorization = signed.authorization.parse().map_err(|_| {
            tonic::Status::invalid_argument(
                "the access key is not a valid header value (printable ASCII)",
            )
        })?;
        let date_time = signed.date_time.parse().expect("a date-time is ASCII");
        metadata.insert(AUTHORIZATION, authorization);
        metadata.insert(DATE_TIME, date_time);
        Ok(())
    }
}

impl Interceptor for Signer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        self.sign(request.metadata_mut())?;
        Ok(request)
    }
}

/// What a request's `authorization` value claims: who signed and the digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub access_key: String,
    pub signature: Vec<u8>,
}

/// Why a request's signature headers cannot be checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error(
        "the authorization header is not {ALGORITHM} Credential=…, SignedHeaders={DATE_TIME}, Signature=…"
    )]
    Malformed,
    #[error("the {DATE_TIME} header is missing or not yyyyMMddTHHmmssZ")]
    BadDateTime,
    #[error(
        "the request was signed {skew:?} away from the broker's clock (at most {allowed:?} allowed)"
    )]
    ClockSkew { skew: Duration, allowed: Duration },
}

/// Parses an `authorization` value.
pub fn parse_authorization(value: &str) -> Result<Claim, SignatureError> {
    if value.len() > MAX_AUTHORIZATION_LEN {
        return Err(SignatureError::Malformed);
    }
    let rest = value
        .strip_prefix(ALGORITHM)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or(SignatureError::Malformed)?;
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (key, value) = part
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed)?;
        let slot = match key {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed_headers,
            "Signature" => &mut signature,
            _ => return Err(SignatureError::Malformed),
        };
        if slot.replace(value).is_some() {
            return Err(SignatureError::Malformed);
        }
    }
    let (Some(credential), Some(DATE_TIME), Some(signature)) =
        (credential, signed_headers, signature)
    else {
        return Err(SignatureError::Malformed);
    };
    let access_key = credential
        .strip_suffix(CREDENTIAL_SUFFIX)
        .unwrap_or(credential);
    let signature = hex::decode(signature).map_err(|_| SignatureError::Malformed)?;
    if access_key.is_empty() || signature.len() != 20 {
        return Err(SignatureError::Malformed);
    }
    Ok(Claim {
        access_key: access_key.to_string(),
        signature,
    })
}

/// Checks a `x-mq-date-time` value against `now`, allowing `allowed` either way.
pub fn check_date_time(
    value: &str,
    now: SystemTime,
    allowed: Duration,
) -> Result<(), SignatureError> {
    let signed = NaiveDateTime::parse_from_str(value, DATE_TIME_FORMAT)
        .map_err(|_| SignatureError::BadDateTime)?
        .and_utc()
        .timestamp();
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let skew = Duration::from_secs(signed.abs_diff(now));
    if skew > allowed {
        return Err(SignatureError::ClockSkew { skew, allowed });
    }
    Ok(())
}

/// Whether `claim` is the signature of `date_time` with `secret_key`
/// (compared in constant time).
pub fn verify(claim: &Claim, date_time: &str, secret_key: &[u8]) -> bool {
    let mut mac = HmacSha1::new_from_slice(secret_key).expect("HMAC takes keys of any length");
    mac.update(date_time.as_bytes());
    mac.verify_slice(&claim.signature).is_ok()
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 20] {
    let mut mac = HmacSha1::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn format_date_time(now: SystemTime) -> String {
    DateTime::<Utc>::from(now)
        .format(DATE_TIME_FORMAT)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn a_signed_request_verifies_with_its_secret_only() {
        let creds = Credentials {
            access_key: "orders-app".into(),
            secret_key: "s3cret".into(),
        };
        let signed = creds.sign(at(1_796_000_000));
        assert_eq!(signed.date_time.len(), 16);
        let claim = parse_authorization(&signed.authorization).unwrap();
        assert_eq!(claim.access_key, "orders-app");
        assert!(verify(&claim, &signed.date_time, b"s3cret"));
        assert!(!verify(&claim, &signed.date_time, b"s3cre"));
        assert!(!verify(&claim, "20261202T151501Z", b"s3cret"));
    }

    #[test]
    fn the_scheme_matches_a_known_vector() {
        // HMAC-SHA1("key", "The quick brown fox jumps over the lazy dog").
        assert_eq!(
            hex::encode(hmac(b"key", b"The quick brown fox jumps over the lazy dog")),
            "de7c9b85b8b78aa6bc8a7a36f70a90701c9db4d9"
        );
    }

    #[test]
    fn client_variants_parse() {
        let sig = "DE7C9B85B8B78AA6BC8A7A36F70A90701C9DB4D9";
        let claim = parse_authorization(&format!(
            "MQv2-HMAC-SHA1 Credential=ak//Rocketmq, SignedHeaders=x-mq-date-time, Signature={sig}"
        ))
        .unwrap();
        assert_eq!(claim.access_key, "ak");
        assert_eq!(hex::encode_upper(&claim.signature), sig);
    }

    #[test]
    fn malformed_values_are_refused() {
        let sig = "de7c9b85b8b78aa6bc8a7a36f70a90701c9db4d9";
        for bad in [
            String::new(),
            "Basic abc".into(),
            format!("MQv2-HMAC-SHA1 Credential=ak, SignedHeaders=host, Signature={sig}"),
            format!("MQv2-HMAC-SHA1 Credential=, SignedHeaders=x-mq-date-time, Signature={sig}"),
            "MQv2-HMAC-SHA1 Credential=ak, SignedHeaders=x-mq-date-time, Signature=zz".into(),
            "MQv2-HMAC-SHA1 Credential=ak, SignedHeaders=x-mq-date-time, Signature=abcd".into(),
            format!(
                "MQv2-HMAC-SHA1 Credential=ak, Credential=b, SignedHeaders=x-mq-date-time, Signature={sig}"
            ),
            format!(
                "MQv2-HMAC-SHA1 Credential=ak, SignedHeaders=x-mq-date-time, Signature={sig}, X=1"
            ),
            "x".repeat(MAX_AUTHORIZATION_LEN + 1),
        ] {
            assert_eq!(
                parse_authorization(&bad),
                Err(SignatureError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_date_time_must_be_near_the_clock() {
        let signed = Credentials {
            access_key: "a".into(),
            secret_key: "b".into(),
        }
        .sign(at(1_796_000_000));
        let window = Duration::from_secs(900);
        assert_eq!(
            check_date_time(&signed.date_time, at(1_796_000_900), window),
            Ok(())
        );
        assert_eq!(
            check_date_time(&signed.date_time, at(1_795_999_100), window),
            Ok(())
        );
        assert!(matches!(
            check_date_time(&signed.date_time, at(1_796_000_901), window),
            Err(SignatureError::ClockSkew { .. })
        ));
        for bad in [
            "",
            "2026-12-02T15:15:00Z",
            "20261302T151500Z",
            "20261202T151500",
        ] {
            assert_eq!(
                check_date_time(bad, at(0), window),
                Err(SignatureError::BadDateTime)
            );
        }
    }
}
