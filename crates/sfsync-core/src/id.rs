//! Salesforce record ids: 15-character case-sensitive base-62 ids and their 18-character
//! case-insensitive form (15 + a 3-character checksum). The first three characters are the key
//! prefix that names the object type.

use std::fmt;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const CHECKSUM_ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";

/// Why a string is not a Salesforce id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("id '{0}' has length {1}; a Salesforce id has 15 or 18 characters")]
    Length(String, usize),
    #[error("id '{0}' contains '{1}', which is not a base-62 character")]
    Character(String, char),
    #[error("id '{0}' has checksum '{1}' but its first 15 characters give '{2}'")]
    Checksum(String, String, String),
}

/// An 18-character Salesforce record id (always stored in its canonical 18-character form).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SfId([u8; 18]);

impl SfId {
    /// Parses a 15- or 18-character id. An 18-character id must carry the right checksum
    /// (compared case-insensitively, as Salesforce does).
    pub fn parse(s: &str) -> Result<SfId, IdError> {
        let b = s.as_bytes();
        if b.len() != 15 && b.len() != 18 {
            return Err(IdError::Length(s.to_string(), s.chars().count()));
        }
        for &c in &b[..15] {
            if !c.is_ascii_alphanumeric() {
                return Err(IdError::Character(s.to_string(), c as char));
            }
        }
        let sum = checksum(&b[..15]);
        if b.len() == 18 {
            let given = &b[15..18];
            if !given.eq_ignore_ascii_case(&sum) {
                return Err(IdError::Checksum(
                    s.to_string(),
                    String::from_utf8_lossy(given).into_owned(),
                    String::from_utf8_lossy(&sum).into_owned(),
                ));
            }
        }
        let mut out = [0u8; 18];
        out[..15].copy_from_slice(&b[..15]);
        out[15..].copy_from_slice(&sum);
        Ok(SfId(out))
    }

    /// Builds the id with `prefix` (3 characters) and the sequence number `n` encoded in base 62
    /// in the remaining 12 characters. A pod/instance character can be folded into `n` by callers.
    pub fn from_parts(prefix: &str, n: u64) -> SfId {
        assert_eq!(prefix.len(), 3, "key prefix must have 3 characters");
        let mut out = [b'0'; 18];
        out[..3].copy_from_slice(prefix.as_bytes());
        let mut v = n;
        for i in (3..15).rev() {
            out[i] = BASE62[(v % 62) as usize];
            v /= 62;
        }
        let sum = checksum(&out[..15]);
        out[15..].copy_from_slice(&sum);
        SfId(out)
    }

    /// The canonical 18-character form.
    pub fn as_str(&self) -> &str {
        // Only ASCII alphanumerics are ever stored.
        std::str::from_utf8(&self.0).expect("ids are ASCII")
    }

    /// The case-sensitive 15-character form.
    pub fn short(&self) -> &str {
        &self.as_str()[..15]
    }

    /// The 3-character key prefix (object type).
    pub fn key_prefix(&self) -> &str {
        &self.as_str()[..3]
    }
}

/// The 3-character checksum suffix for the first 15 characters of an id.
pub fn checksum(id15: &[u8]) -> [u8; 3] {
    let mut out = [0u8; 3];
    for (chunk_no, chunk) in id15.chunks(5).take(3).enumerate() {
        let mut bits = 0usize;
        for (k, c) in chunk.iter().enumerate() {
            if c.is_ascii_uppercase() {
                bits |= 1 << k;
            }
        }
        out[chunk_no] = CHECKSUM_ALPHABET[bits];
    }
    out
}

impl fmt::Display for SfId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for SfId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SfId({})", self.as_str())
    }
}

impl std::str::FromStr for SfId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SfId::parse(s)
    }
}

impl serde::Serialize for SfId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for SfId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SfId::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fact_sheet_vectors() {
        for (short, long) in [
            ("001M000000qfPyS", "001M000000qfPySIAU"),
            ("a0RE000000IJmcN", "a0RE000000IJmcNMAT"),
            ("aBcDEfgHIJKLMNO", "aBcDEfgHIJKLMNO025"),
        ] {
            assert_eq!(SfId::parse(short).unwrap().as_str(), long);
            assert_eq!(SfId::parse(long).unwrap().short(), short);
        }
    }

    #[test]
    fn checksum_is_case_insensitive_but_must_match() {
        assert!(SfId::parse("001M000000qfPySiau").is_ok());
        assert!(matches!(
            SfId::parse("001M000000qfPySAAA"),
            Err(IdError::Checksum(..))
        ));
        assert!(matches!(SfId::parse("001"), Err(IdError::Length(..))));
        assert!(matches!(
            SfId::parse("001M000000qf-yS"),
            Err(IdError::Character(_, '-'))
        ));
    }

    proptest::proptest! {
        #[test]
        fn from_parts_round_trips(n in 0u64..u64::MAX / 4) {
            let id = SfId::from_parts("001", n);
            proptest::prop_assert_eq!(id.key_prefix(), "001");
            proptest::prop_assert_eq!(SfId::parse(id.as_str()).unwrap(), id);
            proptest::prop_assert_eq!(SfId::parse(id.short()).unwrap(), id);
        }
    }
}
