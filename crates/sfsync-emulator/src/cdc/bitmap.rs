//! Field bitmaps of Pub/Sub change events (`changedFields`, `nulledFields`, `diffFields`).
//!
//! Guarantee: [`encode`] writes `"0x"` + upper-case, even-length hex of the big-endian integer
//! whose bit *i* is field position *i* (the fact sheet's format, accepted by the official Java
//! and Python decoders); nested compound components are `"<parentPos>-0x<hex>"`. [`decode`] is
//! the exact inverse and rejects malformed input with an error naming the element and reason.

use std::collections::BTreeMap;

/// A malformed bitmap string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bitmap element {element:?}: {reason}")]
pub struct BitmapError {
    pub element: String,
    pub reason: &'static str,
}

/// `"0x…"` for a set of bit positions (`"0x00"` for an empty set).
pub fn encode_bits(bits: &[usize]) -> String {
    let max = bits.iter().copied().max().unwrap_or(0);
    let nbytes = max / 8 + 1;
    let mut bytes = vec![0u8; nbytes];
    for &b in bits {
        // Big-endian: bit 0 lives in the last byte.
        bytes[nbytes - 1 - b / 8] |= 1 << (b % 8);
    }
    let mut s = String::with_capacity(2 + nbytes * 2);
    s.push_str("0x");
    for b in bytes {
        s.push_str(&format!("{b:02X}"));
    }
    s
}

/// Bit positions of `"0x…"`, ascending. Accepts upper- or lower-case and odd digit counts.
pub fn decode_bits(s: &str) -> Result<Vec<usize>, BitmapError> {
    let err = |reason| BitmapError {
        element: s.to_string(),
        reason,
    };
    let hex = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .ok_or_else(|| err("does not start with 0x"))?;
    if hex.is_empty() {
        return Err(err("no hex digits after 0x"));
    }
    let mut bits = Vec::new();
    for (i, c) in hex.bytes().rev().enumerate() {
        let d = (c as char)
            .to_digit(16)
            .ok_or_else(|| err("contains a non-hex character"))?;
        for k in 0..4 {
            if d & (1 << k) != 0 {
                bits.push(i * 4 + k);
            }
        }
    }
    Ok(bits)
}

/// A decoded field list: top-level positions and, per compound parent position, the nested
/// component positions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldBits {
    pub top: Vec<usize>,
    pub nested: BTreeMap<usize, Vec<usize>>,
}

impl FieldBits {
    pub fn is_empty(&self) -> bool {
        self.top.is_empty() && self.nested.values().all(|v| v.is_empty())
    }
}

/// The `array<string>` header value for `bits`: `[]` when nothing is set; otherwise the
/// top-level bitmap first (omitted when no top-level bit is set, which only happens when an
/// update touches nothing but compound components, e.g. nulls only `BillingCity`), then one
/// `"<parent>-0x…"` per compound in ascending parent order.
pub fn encode(bits: &FieldBits) -> Vec<String> {
    let mut out = Vec::new();
    if bits.is_empty() {
        return out;
    }
    if !bits.top.is_empty() {
        out.push(encode_bits(&bits.top));
    }
    for (parent, sub) in &bits.nested {
        if !sub.is_empty() {
            out.push(format!("{parent}-{}", encode_bits(sub)));
        }
    }
    out
}

/// Inverse of [`encode`] (also accepts the fact sheet's documented variations).
pub fn decode(list: &[String]) -> Result<FieldBits, BitmapError> {
    let mut out = FieldBits::default();
    for el in list {
        if el.starts_with("0x") || el.starts_with("0X") {
            out.top.extend(decode_bits(el)?);
        } else {
            let (parent, hex) = el.split_once('-').ok_or_else(|| BitmapError {
                element: el.clone(),
                reason: "neither 0x… nor <parent>-0x…",
            })?;
            let parent: usize = parent.parse().map_err(|_| BitmapError {
                element: el.clone(),
                reason: "parent position is not a number",
            })?;
            out.nested
                .entry(parent)
                .or_default()
                .extend(decode_bits(hex)?);
        }
    }
    out.top.sort_unstable();
    out.top.dedup();
    for v in out.nested.values_mut() {
        v.sort_unstable();
        v.dedup();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn fact_sheet_doc_example_round_trips() {
        let list = strings(&["0x650004E0", "4-0x10", "7-0x06"]);
        let bits = decode(&list).unwrap();
        assert_eq!(bits.top, vec![5, 6, 7, 10, 24, 26, 29, 30]);
        assert_eq!(bits.nested[&4], vec![4]);
        assert_eq!(bits.nested[&7], vec![1, 2]);
        assert_eq!(encode(&bits), list);
    }

    #[test]
    fn fact_sheet_worked_example() {
        // Phone (6), Fax (7), LastModifiedDate (30); BillingAddress (4) City (1), PostalCode (3).
        let mut bits = FieldBits {
            top: vec![6, 7, 30],
            ..Default::default()
        };
        bits.nested.insert(4, vec![1, 3]);
        assert_eq!(encode(&bits), strings(&["0x400000C0", "4-0x0A"]));
        assert_eq!(decode(&encode(&bits)).unwrap(), bits);
    }

    #[test]
    fn even_length_upper_case() {
        assert_eq!(encode_bits(&[]), "0x00");
        assert_eq!(encode_bits(&[0]), "0x01");
        assert_eq!(encode_bits(&[8]), "0x0100");
        assert_eq!(encode_bits(&[3, 1]), "0x0A");
        assert_eq!(encode_bits(&[63]), "0x8000000000000000");
        assert_eq!(decode_bits("0xa").unwrap(), vec![1, 3]);
    }

    #[test]
    fn nested_only_omits_top_level() {
        let mut bits = FieldBits::default();
        bits.nested.insert(4, vec![2]);
        assert_eq!(encode(&bits), strings(&["4-0x04"]));
        assert_eq!(encode(&FieldBits::default()), Vec::<String>::new());
    }

    #[test]
    fn malformed_is_an_error_not_a_panic() {
        for bad in ["", "0x", "0xZZ", "x-0x01", "4-", "4-0xG", "12"] {
            assert!(decode(&strings(&[bad])).is_err(), "{bad:?} accepted");
        }
    }

    proptest::proptest! {
        #[test]
        fn round_trip(top in proptest::collection::btree_set(0usize..300, 0..40),
                      nested in proptest::collection::btree_map(1usize..300, proptest::collection::btree_set(0usize..16, 1..8), 0..4)) {
            let bits = FieldBits {
                top: top.into_iter().collect(),
                nested: nested.into_iter().map(|(k, v)| (k, v.into_iter().collect())).collect(),
            };
            proptest::prop_assert_eq!(decode(&encode(&bits)).unwrap(), bits);
        }
    }
}
