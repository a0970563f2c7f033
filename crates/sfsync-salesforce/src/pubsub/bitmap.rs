//! The Pub/Sub field bitmaps of `changedFields`, `nulledFields` and `diffFields`.
//!
//! Guarantees: `"0x…"` entries are read as one big-endian integer whose bit *i* is top-level field
//! position *i* (odd digit counts and either case accepted); `"N-0x…"` entries index the fields
//! of the record branch of top-level field *N* (`[null, R]`, `[string, R]`, `[null, string, R]`),
//! independently of whether bit *N* is set; plain field names (the CometD form) are accepted as
//! well. Anything else, or a bit past the last field, is a typed [`BitmapError`] — never a panic
//! and never a guess. [`encode`] writes the canonical form (upper-case, whole bytes) and is the
//! exact inverse of [`decode`].

use std::fmt;

/// A field the bitmaps can name: a top-level position and, for a compound component, the
/// position inside the nested record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FieldRef {
    pub top: u32,
    pub sub: Option<u32>,
}

/// The field names of an event schema by position: top-level names and, for fields with a
/// record branch, the nested record's field names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldTree {
    fields: Vec<(String, Option<Vec<String>>)>,
}

impl FieldTree {
    pub fn new(fields: Vec<(String, Option<Vec<String>>)>) -> FieldTree {
        FieldTree { fields }
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The path of a field: `Phone` or `BillingAddress.City`.
    pub fn name(&self, f: &FieldRef) -> String {
        let Some((top, nested)) = self.fields.get(f.top as usize) else {
            return format!("#{}", f.top);
        };
        match f.sub {
            None => top.clone(),
            Some(s) => match nested.as_ref().and_then(|n| n.get(s as usize)) {
                Some(c) => format!("{top}.{c}"),
                None => format!("{top}.#{s}"),
            },
        }
    }

    pub fn names(&self, refs: &[FieldRef]) -> Vec<String> {
        refs.iter().map(|f| self.name(f)).collect()
    }

    /// Resolves a path (`Phone`, `BillingAddress.City`) to a [`FieldRef`].
    pub fn resolve(&self, path: &str) -> Option<FieldRef> {
        if let Some(top) = self.fields.iter().position(|(n, _)| n == path) {
            return Some(FieldRef {
                top: top as u32,
                sub: None,
            });
        }
        let (parent, child) = path.split_once('.')?;
        let top = self.fields.iter().position(|(n, _)| n == parent)?;
        let sub = self.fields[top]
            .1
            .as_ref()?
            .iter()
            .position(|c| c == child)?;
        Some(FieldRef {
            top: top as u32,
            sub: Some(sub as u32),
        })
    }
}

/// A bitmap entry that cannot be decoded against the schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BitmapError {
    #[error("entry {index} {entry:?}: {reason}")]
    Malformed {
        index: usize,
        entry: String,
        reason: &'static str,
    },
    #[error("entry {index} {entry:?}: bit {bit} is past the last of the {fields} fields")]
    BitOutOfRange {
        index: usize,
        entry: String,
        bit: usize,
        fields: usize,
    },
    #[error("entry {index} {entry:?}: field position {parent} has no nested record")]
    NotCompound {
        index: usize,
        entry: String,
        parent: usize,
    },
}

/// Bit positions (ascending) of a hex bitmap without its `0x` prefix. `None` on a non-hex digit
/// or an empty string.
pub fn parse_hex_bits(hex: &str) -> Option<Vec<usize>> {
    if hex.is_empty() {
        return None;
    }
    let mut bits = Vec::new();
    for (i, c) in hex.bytes().rev().enumerate() {
        let d = (c as char).to_digit(16)?;
        if d == 0 {
            continue;
        }
        for k in 0..4 {
            if d & (1 << k) != 0 {
                bits.push(i * 4 + k);
            }
        }
    }
    Some(bits)
}

/// `"0x"` + upper-case, even-length hex of the set bits (`"0x00"` for none).
pub fn encode_bits(bits: &[usize]) -> String {
    let max = bits.iter().copied().max().unwrap_or(0);
    let nbytes = max / 8 + 1;
    let mut bytes = vec![0u8; nbytes];
    for &b in bits {
        bytes[nbytes - 1 - b / 8] |= 1 << (b % 8);
    }
    let mut s = String::with_capacity(2 + 2 * nbytes);
    s.push_str("0x");
    for b in bytes {
        use fmt::Write;
        let _ = write!(s, "{b:02X}");
    }
    s
}

fn strip_0x(s: &str) -> Option<&str> {
    s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))
}

/// Decodes one header list into field references: top-level fields first (ascending position),
/// then nested components in entry order (ascending within an entry). Duplicates are dropped.
pub fn decode<S: AsRef<str>>(
    entries: &[S],
    tree: &FieldTree,
) -> Result<Vec<FieldRef>, BitmapError> {
    let mut top: Vec<FieldRef> = Vec::new();
    let mut nested: Vec<FieldRef> = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let entry = entry.as_ref();
        let malformed = |reason| BitmapError::Malformed {
            index,
            entry: entry.to_string(),
            reason,
        };
        if let Some(hex) = strip_0x(entry) {
            let bits = parse_hex_bits(hex).ok_or_else(|| malformed("not hex digits after 0x"))?;
            for bit in bits {
                if bit >= tree.len() {
                    return Err(BitmapError::BitOutOfRange {
                        index,
                        entry: entry.to_string(),
                        bit,
                        fields: tree.len(),
                    });
                }
                top.push(FieldRef {
                    top: bit as u32,
                    sub: None,
                });
            }
        } else if let Some((parent, rest)) = entry
            .split_once('-')
            .filter(|(p, _)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        {
            let parent: usize = parent
                .parse()
                .map_err(|_| malformed("parent position is not a number"))?;
            let hex = strip_0x(rest).ok_or_else(|| malformed("expected <position>-0x<hex>"))?;
            let bits = parse_hex_bits(hex).ok_or_else(|| malformed("not hex digits after 0x"))?;
            let components = tree
                .fields
                .get(parent)
                .and_then(|(_, n)| n.as_ref())
                .ok_or(BitmapError::NotCompound {
                    index,
                    entry: entry.to_string(),
                    parent,
                })?;
            for bit in bits {
                if bit >= components.len() {
                    return Err(BitmapError::BitOutOfRange {
                        index,
                        entry: entry.to_string(),
                        bit,
                        fields: components.len(),
                    });
                }
                nested.push(FieldRef {
                    top: parent as u32,
                    sub: Some(bit as u32),
                });
            }
        } else if let Some(f) = tree.resolve(entry) {
            if f.sub.is_none() {
                top.push(f);
            } else {
                nested.push(f);
            }
        } else {
            return Err(malformed("neither 0x…, <position>-0x… nor a field name"));
        }
    }
    top.sort_unstable();
    top.dedup();
    let mut out = top;
    for f in nested {
        if !out.contains(&f) {
            out.push(f);
        }
    }
    Ok(out)
}

/// Decodes one header list into field paths (see [`decode`] for the order).
pub fn decode_names<S: AsRef<str>>(
    entries: &[S],
    tree: &FieldTree,
) -> Result<Vec<String>, BitmapError> {
    decode(entries, tree).map(|refs| tree.names(&refs))
}

/// The canonical header list for a set of fields: `[]` when empty; otherwise the top-level
/// bitmap (omitted when only nested components are set) followed by one `"<parent>-0x…"` per
/// compound in ascending parent order.
pub fn encode(refs: &[FieldRef]) -> Vec<String> {
    let mut top: Vec<usize> = refs
        .iter()
        .filter(|f| f.sub.is_none())
        .map(|f| f.top as usize)
        .collect();
    top.sort_unstable();
    top.dedup();
    let mut out = Vec::new();
    if !top.is_empty() {
        out.push(encode_bits(&top));
    }
    let mut parents: Vec<u32> = refs
        .iter()
        .filter(|f| f.sub.is_some())
        .map(|f| f.top)
        .collect();
    parents.sort_unstable();
    parents.dedup();
    for p in parents {
        let subs: Vec<usize> = refs
            .iter()
            .filter(|f| f.top == p)
            .filter_map(|f| f.sub.map(|s| s as usize))
            .collect();
        out.push(format!("{p}-{}", encode_bits(&subs)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fact sheet's worked-example schema: 0 header, 4 BillingAddress, 6 Phone, 7 Fax,
    /// 30 LastModifiedDate.
    pub(crate) fn worked_tree() -> FieldTree {
        let address: Vec<String> = [
            "Street",
            "City",
            "State",
            "PostalCode",
            "Country",
            "Latitude",
            "Longitude",
            "GeocodeAccuracy",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let fields = (0..32)
            .map(|i| match i {
                0 => ("ChangeEventHeader".to_string(), None),
                4 => ("BillingAddress".to_string(), Some(address.clone())),
                6 => ("Phone".to_string(), None),
                7 => (
                    "Fax".to_string(),
                    Some(vec!["A".into(), "B".into(), "C".into()]),
                ),
                30 => ("LastModifiedDate".to_string(), None),
                i => (format!("F{i}"), None),
            })
            .collect();
        FieldTree::new(fields)
    }

    #[test]
    fn worked_example_golden() {
        let tree = worked_tree();
        let names = decode_names(&["0x400000C0", "4-0x0A"], &tree).unwrap();
        assert_eq!(
            names,
            [
                "Phone",
                "Fax",
                "LastModifiedDate",
                "BillingAddress.City",
                "BillingAddress.PostalCode"
            ]
        );
        let refs = decode(&["0x400000C0", "4-0x0A"], &tree).unwrap();
        assert_eq!(encode(&refs), ["0x400000C0", "4-0x0A"]);
    }

    #[test]
    fn doc_example_golden() {
        let tree = worked_tree();
        let refs = decode(&["0x650004E0", "4-0x10", "7-0x06"], &tree).unwrap();
        let top: Vec<u32> = refs
            .iter()
            .filter(|f| f.sub.is_none())
            .map(|f| f.top)
            .collect();
        assert_eq!(top, [5, 6, 7, 10, 24, 26, 29, 30]);
        let nested: Vec<(u32, u32)> = refs
            .iter()
            .filter_map(|f| f.sub.map(|s| (f.top, s)))
            .collect();
        assert_eq!(nested, [(4, 4), (7, 1), (7, 2)]);
        assert_eq!(encode(&refs), ["0x650004E0", "4-0x10", "7-0x06"]);
    }

    #[test]
    fn element_zero_need_not_be_top_level_and_odd_hex_is_accepted() {
        let tree = worked_tree();
        assert_eq!(
            decode_names(&["4-0x2"], &tree).unwrap(),
            ["BillingAddress.City"]
        );
        assert_eq!(decode_names(&["0xc0"], &tree).unwrap(), ["Phone", "Fax"]);
        assert_eq!(
            decode_names(&["Phone", "BillingAddress.City"], &tree).unwrap(),
            ["Phone", "BillingAddress.City"]
        );
        assert!(decode_names::<&str>(&[], &tree).unwrap().is_empty());
    }

    #[test]
    fn malformed_entries_are_typed_errors() {
        let tree = worked_tree();
        for bad in [
            "", "0x", "0xZZ", "x-0x01", "4-", "4-0xG", "12", "4-0x", "-0x1", "Nope",
        ] {
            assert!(
                matches!(decode(&[bad], &tree), Err(BitmapError::Malformed { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(
            decode(&["0x100000000"], &tree),
            Err(BitmapError::BitOutOfRange { bit: 32, .. })
        ));
        assert!(matches!(
            decode(&["6-0x01"], &tree),
            Err(BitmapError::NotCompound { parent: 6, .. })
        ));
        assert!(matches!(
            decode(&["4-0x100"], &tree),
            Err(BitmapError::BitOutOfRange { bit: 8, .. })
        ));
        assert!(matches!(
            decode(&["99-0x01"], &tree),
            Err(BitmapError::NotCompound { parent: 99, .. })
        ));
    }

    #[test]
    fn encode_bits_is_canonical() {
        assert_eq!(encode_bits(&[]), "0x00");
        assert_eq!(encode_bits(&[8]), "0x0100");
        assert_eq!(encode_bits(&[1, 3]), "0x0A");
        assert_eq!(parse_hex_bits("8000000000000000").unwrap(), [63]);
    }

    proptest::proptest! {
        #[test]
        fn encode_decode_round_trip(
            top in proptest::collection::btree_set(1u32..32, 0..20),
            addr in proptest::collection::btree_set(0u32..8, 0..8),
            fax in proptest::collection::btree_set(0u32..3, 0..3),
        ) {
            let tree = worked_tree();
            let mut refs: Vec<FieldRef> = top.iter().map(|&t| FieldRef { top: t, sub: None }).collect();
            refs.extend(addr.iter().map(|&s| FieldRef { top: 4, sub: Some(s) }));
            refs.extend(fax.iter().map(|&s| FieldRef { top: 7, sub: Some(s) }));
            let decoded = decode(&encode(&refs), &tree).unwrap();
            proptest::prop_assert_eq!(decoded, refs);
        }

        #[test]
        fn arbitrary_entries_never_panic(entries in proptest::collection::vec("[0-9a-fA-FxX-]{0,12}", 0..4)) {
            let _ = decode(&entries, &worked_tree());
        }
    }
}
