//! Sealing of PII at rest: AES-256-GCM with a fresh random 96-bit nonce per value and the key id
//! written beside every sealed value, so keys can be rotated (architecture invariant 10).
//!
//! Guarantee: a sealed value opens only with the key it names and only under the associated data
//! (AAD) it was sealed with, so a value cannot be tampered with or moved to another column
//! unnoticed. Key material never appears in `Debug` output or in errors.
//!
//! Two envelopes:
//! - text, for column values: `enc:v1:<key id>:<base64 (standard alphabet, no padding) of
//!   nonce || ciphertext>`;
//! - binary, for raw payloads and dead letters: `b"SFE1"`, one byte key id length, the key id,
//!   the 12-byte nonce, the ciphertext (with its 16-byte tag).
//!
//! AAD conventions used by the stores: curated and history values `"<object>.<column>"`, raw
//! payloads `"raw.<entity>"`, dead letters `"dead.<channel>"` (the audit trail holds no values,
//! so nothing of it is sealed). A column value is sealed as the JSON of its [`crate::Value`], so
//! its type survives.

use std::collections::HashMap;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use sfsync_core::ErrorClass;

use crate::error::{Result, StoreError};

/// Prefix of the text envelope.
pub const TEXT_PREFIX: &str = "enc:v1:";
/// Magic bytes of the binary envelope.
pub const BYTES_MAGIC: &[u8; 4] = b"SFE1";

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// AAD of a curated or history column value.
pub fn column_aad(object: &str, column: &str) -> String {
    format!("{object}.{column}")
}

/// AAD of a raw change payload.
pub fn raw_aad(entity: &str) -> String {
    format!("raw.{entity}")
}

/// AAD of an archived raw payload of `entity` (the Avro bytes, sealed; see
/// [`crate::retention`]).
pub fn archive_aad(entity: &str) -> String {
    format!("archive.{entity}")
}

/// AAD of a dead-letter payload.
pub fn dead_letter_aad(channel: &str) -> String {
    format!("dead.{channel}")
}

/// AES-256-GCM keys by id: one current key that seals, older keys that still open.
#[derive(Clone)]
pub struct Keyring {
    current: String,
    keys: HashMap<String, Aes256Gcm>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        ids.sort_unstable();
        f.debug_struct("Keyring")
            .field("current_key_id", &self.current)
            .field("key_ids", &ids)
            .field("keys", &"<redacted>")
            .finish()
    }
}

fn pii_error(op: &'static str, key_id: &str, reason: impl Into<String>) -> StoreError {
    StoreError::Pii {
        op,
        key_id: key_id.to_string(),
        reason: reason.into(),
        class: ErrorClass::User,
    }
}

fn corrupt(op: &'static str, key_id: &str, reason: impl Into<String>) -> StoreError {
    StoreError::Pii {
        op,
        key_id: key_id.to_string(),
        reason: reason.into(),
        class: ErrorClass::Internal,
    }
}

/// Why a key id cannot be used, if it cannot: 1 to 255 bytes of printable ASCII, no `:`.
fn key_id_problem(key_id: &str) -> Option<&'static str> {
    if key_id.is_empty() {
        Some("key id must not be empty")
    } else if key_id.len() > 255 {
        Some("key id must be at most 255 bytes")
    } else if !key_id.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        Some("key id must be printable ASCII without spaces or ':'")
    } else {
        None
    }
}

fn cipher(key: &[u8; 32]) -> Aes256Gcm {
    Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key))
}

fn parse_hex_key(key_id: &str, hex_key: &str) -> Result<[u8; 32]> {
    let hex_key = hex_key.trim();
    if hex_key.len() != 64 {
        return Err(pii_error(
            "load key",
            key_id,
            format!(
                "an AES-256 key must be 64 hex digits (32 bytes), got {} characters",
                hex_key.len()
            ),
        ));
    }
    let mut key = [0u8; 32];
    hex::decode_to_slice(hex_key, &mut key)
        .map_err(|_| pii_error("load key", key_id, "the key is not valid hex"))?;
    Ok(key)
}

impl Keyring {
    /// A keyring whose current (sealing) key is `key` under `key_id`.
    ///
    /// # Panics
    /// When `key_id` is empty, longer than 255 bytes, or not printable ASCII without `:`; use
    /// [`Keyring::from_hex`] for ids that come from configuration.
    pub fn new(key_id: &str, key: [u8; 32]) -> Keyring {
        if let Some(problem) = key_id_problem(key_id) {
            panic!("invalid key id '{key_id}': {problem}");
        }
        let mut keys = HashMap::new();
        keys.insert(key_id.to_string(), cipher(&key));
        Keyring {
            current: key_id.to_string(),
            keys,
        }
    }

    /// [`Keyring::new`] that returns an error naming the key id instead of panicking on an
    /// invalid id.
    pub fn try_new(key_id: &str, key: [u8; 32]) -> Result<Keyring> {
        if let Some(problem) = key_id_problem(key_id) {
            return Err(pii_error("load key", key_id, problem));
        }
        Ok(Keyring::new(key_id, key))
    }

    /// A keyring from a hex-encoded 32-byte key; the error names the key id, never the key.
    pub fn from_hex(key_id: &str, hex_key: &str) -> Result<Keyring> {
        if let Some(problem) = key_id_problem(key_id) {
            return Err(pii_error("load key", key_id, problem));
        }
        Ok(Keyring::new(key_id, parse_hex_key(key_id, hex_key)?))
    }

    /// Adds a retired key: it still opens values, but never seals ([`crate::Warehouse::rotate_keys`]
    /// re-seals its values under the current key). Adding the current id again is ignored.
    ///
    /// # Panics
    /// On an invalid key id, like [`Keyring::new`].
    pub fn add_old_key(&mut self, key_id: &str, key: [u8; 32]) {
        if let Some(problem) = key_id_problem(key_id) {
            panic!("invalid key id '{key_id}': {problem}");
        }
        if key_id != self.current {
            self.keys.insert(key_id.to_string(), cipher(&key));
        }
    }

    /// [`Keyring::add_old_key`] that returns an error naming the key id instead of panicking on
    /// an invalid id.
    pub fn try_add_old_key(&mut self, key_id: &str, key: [u8; 32]) -> Result<()> {
        if let Some(problem) = key_id_problem(key_id) {
            return Err(pii_error("load key", key_id, problem));
        }
        self.add_old_key(key_id, key);
        Ok(())
    }

    /// [`Keyring::add_old_key`] with a hex key from configuration.
    pub fn add_old_key_hex(&mut self, key_id: &str, hex_key: &str) -> Result<()> {
        if let Some(problem) = key_id_problem(key_id) {
            return Err(pii_error("load key", key_id, problem));
        }
        let key = parse_hex_key(key_id, hex_key)?;
        self.try_add_old_key(key_id, key)
    }

    /// Id of the key that seals.
    pub fn current_key_id(&self) -> &str {
        &self.current
    }

    /// Whether the keyring holds a key with this id.
    pub fn has_key(&self, key_id: &str) -> bool {
        self.keys.contains_key(key_id)
    }

    fn encrypt(&self, aad: &str, plaintext: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let cipher = &self.keys[&self.current];
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ct = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: aad.as_bytes(),
                },
            )
            // AES-GCM encryption only fails for inputs beyond 64 GiB.
            .expect("AES-256-GCM encryption of an in-memory value");
        (nonce.to_vec(), ct)
    }

    fn decrypt(
        &self,
        op: &'static str,
        key_id: &str,
        aad: &str,
        nonce: &[u8],
        ct: &[u8],
    ) -> Result<Vec<u8>> {
        let cipher = self.keys.get(key_id).ok_or_else(|| {
            pii_error(
                op,
                key_id,
                format!(
                    "unknown key id (the keyring holds {}); add the old key to open values \
                     sealed with it",
                    self.key_ids().join(", ")
                ),
            )
        })?;
        if nonce.len() != NONCE_LEN || ct.len() < TAG_LEN {
            return Err(corrupt(op, key_id, "malformed envelope (too short)"));
        }
        cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| {
                corrupt(
                    op,
                    key_id,
                    format!(
                        "authentication failed for '{aad}' (tampered value, a value moved \
                         from elsewhere, or the wrong key)"
                    ),
                )
            })
    }

    fn key_ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        ids.sort_unstable();
        ids
    }

    /// Seals `plaintext` under the current key into the text envelope.
    pub fn seal(&self, aad: &str, plaintext: &[u8]) -> String {
        let (nonce, ct) = self.encrypt(aad, plaintext);
        let mut body = nonce;
        body.extend_from_slice(&ct);
        let mut out = String::with_capacity(
            TEXT_PREFIX.len() + self.current.len() + 1 + 4 * body.len() / 3 + 4,
        );
        out.push_str(TEXT_PREFIX);
        out.push_str(&self.current);
        out.push(':');
        STANDARD_NO_PAD.encode_string(&body, &mut out);
        out
    }

    /// Opens a text envelope sealed under `aad`.
    pub fn open(&self, aad: &str, sealed: &str) -> Result<Vec<u8>> {
        let (key_id, body) = split_text(sealed).ok_or_else(|| {
            corrupt(
                "open value",
                "?",
                "malformed envelope (not enc:v1:<key id>:<base64>)",
            )
        })?;
        let body = STANDARD_NO_PAD
            .decode(body)
            .map_err(|_| corrupt("open value", key_id, "malformed envelope (bad base64)"))?;
        if body.len() < NONCE_LEN + TAG_LEN {
            return Err(corrupt(
                "open value",
                key_id,
                "malformed envelope (too short)",
            ));
        }
        let (nonce, ct) = body.split_at(NONCE_LEN);
        self.decrypt("open value", key_id, aad, nonce, ct)
    }

    /// Seals `plaintext` under the current key into the binary envelope.
    pub fn seal_bytes(&self, aad: &str, plaintext: &[u8]) -> Vec<u8> {
        let (nonce, ct) = self.encrypt(aad, plaintext);
        let id = self.current.as_bytes();
        let mut out = Vec::with_capacity(BYTES_MAGIC.len() + 1 + id.len() + nonce.len() + ct.len());
        out.extend_from_slice(BYTES_MAGIC);
        out.push(id.len() as u8); // key ids are at most 255 bytes
        out.extend_from_slice(id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Opens a binary envelope sealed under `aad`.
    pub fn open_bytes(&self, aad: &str, sealed: &[u8]) -> Result<Vec<u8>> {
        let (key_id, nonce, ct) = split_bytes(sealed).ok_or_else(|| {
            corrupt(
                "open payload",
                "?",
                "malformed envelope (not SFE1 <key id> <nonce> <ciphertext>)",
            )
        })?;
        self.decrypt("open payload", key_id, aad, nonce, ct)
    }

    /// Whether `sealed` is under the current key (so rotation leaves it alone).
    pub(crate) fn is_current(&self, key_id: Option<&str>) -> bool {
        key_id == Some(self.current.as_str())
    }
}

fn split_text(s: &str) -> Option<(&str, &str)> {
    let rest = s.strip_prefix(TEXT_PREFIX)?;
    let (key_id, body) = rest.split_once(':')?;
    if key_id_problem(key_id).is_some() {
        return None;
    }
    Some((key_id, body))
}

fn split_bytes(b: &[u8]) -> Option<(&str, &[u8], &[u8])> {
    let rest = b.strip_prefix(&BYTES_MAGIC[..])?;
    let (&len, rest) = rest.split_first()?;
    let len = len as usize;
    if rest.len() < len + NONCE_LEN + TAG_LEN {
        return None;
    }
    let key_id = std::str::from_utf8(&rest[..len]).ok()?;
    if key_id_problem(key_id).is_some() {
        return None;
    }
    let (nonce, ct) = rest[len..].split_at(NONCE_LEN);
    Some((key_id, nonce, ct))
}

/// Whether `s` looks like a text envelope (`enc:v1:<key id>:…`).
pub fn is_sealed(s: &str) -> bool {
    split_text(s).is_some()
}

/// Whether `b` looks like a binary envelope (magic, key id, room for nonce and tag).
pub fn is_sealed_bytes(b: &[u8]) -> bool {
    split_bytes(b).is_some()
}

/// Key id a text envelope names, without opening it.
pub fn sealed_key_id(s: &str) -> Option<&str> {
    split_text(s).map(|(k, _)| k)
}

/// Key id a binary envelope names, without opening it.
pub fn sealed_bytes_key_id(b: &[u8]) -> Option<&str> {
    split_bytes(b).map(|(k, _, _)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(id: &str, byte: u8) -> Keyring {
        Keyring::new(id, [byte; 32])
    }

    #[test]
    fn text_round_trip_and_format() {
        let k = ring("k1", 7);
        let s = k.seal("Contact.email", b"ada@example.com");
        assert!(s.starts_with("enc:v1:k1:"), "{s}");
        assert!(!s.contains("ada"));
        assert!(!s.ends_with('='));
        assert!(is_sealed(&s));
        assert_eq!(sealed_key_id(&s), Some("k1"));
        assert_eq!(k.open("Contact.email", &s).unwrap(), b"ada@example.com");
        // A fresh nonce each time.
        assert_ne!(s, k.seal("Contact.email", b"ada@example.com"));
        assert!(!is_sealed("ada@example.com"));
        assert!(!is_sealed("enc:v1:nokeyid"));
    }

    #[test]
    fn bytes_round_trip_and_format() {
        let k = ring("key-2026", 9);
        let b = k.seal_bytes("raw.Contact", &[0, 1, 2, 255]);
        assert!(b.starts_with(b"SFE1"));
        assert!(is_sealed_bytes(&b));
        assert_eq!(sealed_bytes_key_id(&b), Some("key-2026"));
        assert_eq!(k.open_bytes("raw.Contact", &b).unwrap(), vec![0, 1, 2, 255]);
        assert!(!is_sealed_bytes(b"SFE1"));
        assert!(!is_sealed_bytes(&[0xff, 0]));
        let empty = k.seal_bytes("raw.Contact", &[]);
        assert_eq!(
            k.open_bytes("raw.Contact", &empty).unwrap(),
            Vec::<u8>::new()
        );
    }

    #[test]
    fn wrong_aad_fails() {
        let k = ring("k1", 1);
        let s = k.seal("Contact.email", b"x");
        let err = k.open("Contact.phone", &s).unwrap_err();
        assert!(err.to_string().contains("authentication failed"), "{err}");
        assert!(err.to_string().contains("k1"), "{err}");
        let b = k.seal_bytes("raw.Contact", b"x");
        assert!(k.open_bytes("raw.Lead", &b).is_err());
    }

    #[test]
    fn tampered_ciphertext_fails() {
        let k = ring("k1", 1);
        let s = k.seal("a.b", b"secret value");
        let (head, body) = s.rsplit_once(':').unwrap();
        let mut raw = STANDARD_NO_PAD.decode(body).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        let tampered = format!("{head}:{}", STANDARD_NO_PAD.encode(&raw));
        let err = k.open("a.b", &tampered).unwrap_err();
        assert!(err.to_string().contains("authentication failed"), "{err}");
        assert_eq!(err.class(), ErrorClass::Internal);

        let mut b = k.seal_bytes("raw.X", b"payload");
        let n = b.len();
        b[n - 20] ^= 0x80;
        assert!(k.open_bytes("raw.X", &b).is_err());
        assert!(k.open("a.b", "enc:v1:k1:!!!").is_err());
    }

    #[test]
    fn unknown_key_id_fails_and_old_keys_open() {
        let old = ring("old", 3);
        let s = old.seal("a.b", b"v");
        let b = old.seal_bytes("dead.ch", b"v");
        let mut new = ring("new", 4);
        let err = new.open("a.b", &s).unwrap_err();
        assert!(err.to_string().contains("'old'"), "{err}");
        assert!(err.to_string().contains("unknown key id"), "{err}");
        assert_eq!(err.class(), ErrorClass::User);
        assert!(new.open_bytes("dead.ch", &b).is_err());

        new.add_old_key("old", [3; 32]);
        assert_eq!(new.open("a.b", &s).unwrap(), b"v");
        assert_eq!(new.open_bytes("dead.ch", &b).unwrap(), b"v");
        assert_eq!(new.current_key_id(), "new");
        assert_eq!(sealed_key_id(&new.seal("a.b", b"v")), Some("new"));
    }

    #[test]
    fn from_hex_checks_and_debug_redacts() {
        let hex_key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let k = Keyring::from_hex("prod-1", hex_key).unwrap();
        let dbg = format!("{k:?}");
        assert!(dbg.contains("prod-1"));
        assert!(dbg.contains("redacted"));
        assert!(!dbg.to_lowercase().contains("00112233"), "{dbg}");

        let err = Keyring::from_hex("prod-2", "abcd").unwrap_err();
        assert!(err.to_string().contains("prod-2"), "{err}");
        assert!(err.to_string().contains("64 hex digits"), "{err}");
        assert!(!err.to_string().contains("abcd"));
        let bad = "zz112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let err = Keyring::from_hex("prod-3", bad).unwrap_err();
        assert!(err.to_string().contains("not valid hex"), "{err}");
        assert!(!err.to_string().contains("zz1122"), "{err}");
        assert!(Keyring::from_hex("a:b", hex_key).is_err());
        assert!(Keyring::try_new("has space", [0; 32]).is_err());
        assert!(Keyring::try_new("ok-1", [0; 32]).is_ok());
        assert!(Keyring::from_hex("", hex_key).is_err());

        let mut k = k;
        assert!(
            k.try_add_old_key("bad:id", [5; 32]).is_err(),
            "':' is not allowed"
        );
        assert!(k.try_add_old_key("", [5; 32]).is_err());
        k.try_add_old_key("prod-9", [5; 32]).unwrap();
        assert!(k.has_key("prod-9"));
        k.add_old_key_hex("prod-0", hex_key).unwrap();
        assert!(k.has_key("prod-0"));
        assert!(k.add_old_key_hex("prod-x", "12").is_err());
    }
}
