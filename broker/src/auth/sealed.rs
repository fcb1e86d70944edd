//! Secret keys at rest. The broker must recover a user's secret key to check
//! HMAC signatures, so it is stored encrypted, not hashed: XChaCha20-Poly1305
//! with a 256-bit key read from a file (in Kubernetes, a mounted Secret), the
//! access key as associated data so a sealed secret cannot be moved to
//! another user.
//!
//! ```text
//! sealed secret = "v1:" base64( nonce (24 bytes) | ciphertext | tag (16 bytes) )
//! key file      = 64 hex digits, or the base64 of 32 bytes (surrounding whitespace ignored)
//! ```

use std::fmt;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

const VERSION: &str = "v1:";
const NONCE_LEN: usize = 24;
/// Longest secret key accepted.
pub const MAX_SECRET_LEN: usize = 256;

/// The key that seals and opens secret keys. Never printed.
#[derive(Clone)]
pub struct SealingKey(XChaCha20Poly1305);

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealingKey(<hidden>)")
    }
}

/// Why a key or a sealed secret cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cannot read the key file {path}: {source}")]
    ReadKey {
        path: String,
        source: std::io::Error,
    },
    #[error("the key file {path} must hold 32 bytes as 64 hex digits or base64")]
    BadKey { path: String },
    #[error("a sealed secret must start with {VERSION} and be base64")]
    Malformed,
    #[error(
        "the secret does not open with this key (another key, or sealed for another access key)"
    )]
    WrongKey,
    #[error("a secret key must be 1 to {MAX_SECRET_LEN} bytes of UTF-8 without control characters")]
    BadSecret,
}

impl SealingKey {
    /// Reads the key from `path`.
    pub fn from_file(path: &Path) -> Result<SealingKey, SealError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SealError::ReadKey {
            path: shown.clone(),
            source,
        })?;
        SealingKey::from_text(text.trim()).ok_or(SealError::BadKey { path: shown })
    }

    /// A key from its text: 64 hex digits, or the base64 of 32 bytes.
    pub fn from_text(text: &str) -> Option<SealingKey> {
        let bytes = match text.len() {
            64 => hex::decode(text).ok()?,
            _ => STANDARD.decode(text).ok()?,
        };
        let key: [u8; 32] = bytes.try_into().ok()?;
        Some(SealingKey(XChaCha20Poly1305::new(&key.into())))
    }

    /// Seals `secret` for the user with `access_key`.
    pub fn seal(&self, access_key: &str, secret: &str) -> Result<String, SealError> {
        if !valid_secret(secret) {
            return Err(SealError::BadSecret);
        }
        let nonce: [u8; NONCE_LEN] = rand::random();
        let sealed = self
            .0
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad: access_key.as_bytes(),
                },
            )
            .expect("encrypting into memory cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(format!("{VERSION}{}", STANDARD.encode(out)))
    }

    /// Opens a secret sealed for `access_key`.
    pub fn open(&self, access_key: &str, sealed: &str) -> Result<String, SealError> {
        let bytes = sealed
            .strip_prefix(VERSION)
            .and_then(|b64| STANDARD.decode(b64).ok())
            .filter(|b| b.len() > NONCE_LEN)
            .ok_or(SealError::Malformed)?;
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let secret = self
            .0
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: access_key.as_bytes(),
                },
            )
            .map_err(|_| SealError::WrongKey)?;
        String::from_utf8(secret)
            .ok()
            .filter(|s| valid_secret(s))
            .ok_or(SealError::BadSecret)
    }
}

/// Whether `secret` may be a secret key. No control characters: HMAC pads a
/// key with zero bytes, so "k" and "k\0" would sign alike.
pub fn valid_secret(secret: &str) -> bool {
    !secret.is_empty() && secret.len() <= MAX_SECRET_LEN && !secret.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SealingKey {
        SealingKey::from_text(&hex::encode([byte; 32])).unwrap()
    }

    #[test]
    fn a_sealed_secret_opens_with_its_key_and_access_key_only() {
        let sealed = key(1).seal("orders-app", "s3cret").unwrap();
        assert!(!sealed.contains("s3cret"));
        assert_eq!(key(1).open("orders-app", &sealed).unwrap(), "s3cret");
        assert!(matches!(
            key(2).open("orders-app", &sealed),
            Err(SealError::WrongKey)
        ));
        assert!(matches!(
            key(1).open("billing", &sealed),
            Err(SealError::WrongKey)
        ));
        // A fresh nonce each time.
        assert_ne!(sealed, key(1).seal("orders-app", "s3cret").unwrap());
    }

    #[test]
    fn damaged_and_malformed_secrets_are_refused() {
        let sealed = key(1).seal("a", "s").unwrap();
        let mut bytes = STANDARD.decode(&sealed[3..]).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        let flipped = format!("v1:{}", STANDARD.encode(bytes));
        assert!(matches!(
            key(1).open("a", &flipped),
            Err(SealError::WrongKey)
        ));
        for bad in ["", "s3cret", "v1:", "v1:!!", "v2:AAAA"] {
            assert!(
                matches!(key(1).open("a", bad), Err(SealError::Malformed)),
                "{bad}"
            );
        }
        assert!(matches!(key(1).seal("a", ""), Err(SealError::BadSecret)));
        assert!(matches!(key(1).seal("a", "k\0"), Err(SealError::BadSecret)));
    }

    #[test]
    fn keys_are_hex_or_base64_of_32_bytes() {
        assert!(SealingKey::from_text(&STANDARD.encode([7u8; 32])).is_some());
        assert!(SealingKey::from_text(&hex::encode([7u8; 31])).is_none());
        assert!(SealingKey::from_text("not a key").is_none());
    }
}
