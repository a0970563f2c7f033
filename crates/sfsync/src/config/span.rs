//! Where each key of a TOML document sits: a flat index from key path (`objects[2].pii_fields`)
//! to byte ranges, built once from toml's spanned parse tree, and byte offset → line:column.
//!
//! Pure and total: every lookup either finds a location or returns `None`; it never panics on
//! odd input (offsets past the end clamp to the last line).

use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// A 1-based line and column (columns count characters, not bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineCol {
    pub line: usize,
    pub col: usize,
}

impl std::fmt::Display for LineCol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// The line and column of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> LineCol {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = text[line_start..offset].chars().count() + 1;
    LineCol { line, col }
}

#[derive(Debug, Clone)]
struct Entry {
    path: String,
    /// The key's own span (for array elements, the element's span).
    key: Range<usize>,
    /// The value's span.
    value: Range<usize>,
}

/// Key path → source location for one parsed document.
#[derive(Debug, Clone, Default)]
pub struct SpanIndex {
    text: String,
    entries: Vec<Entry>,
}

impl SpanIndex {
    /// Indexes every key and array element of `root`.
    pub fn build(text: &str, root: &Spanned<DeTable<'_>>) -> SpanIndex {
        let mut index = SpanIndex {
            text: text.to_string(),
            entries: Vec::new(),
        };
        index.walk_table("", root.get_ref());
        index
    }

    fn walk_table(&mut self, prefix: &str, table: &DeTable<'_>) {
        for (key, value) in table.iter() {
            let path = if prefix.is_empty() {
                key.get_ref().to_string()
            } else {
                format!("{prefix}.{}", key.get_ref())
            };
            self.entries.push(Entry {
                path: path.clone(),
                key: key.span(),
                value: value.span(),
            });
            self.walk_value(&path, value);
        }
    }

    fn walk_value(&mut self, path: &str, value: &Spanned<DeValue<'_>>) {
        match value.get_ref() {
            DeValue::Table(t) => self.walk_table(path, t),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let item_path = format!("{path}[{i}]");
                    self.entries.push(Entry {
                        path: item_path.clone(),
                        key: item.span(),
                        value: item.span(),
                    });
                    self.walk_value(&item_path, item);
                }
            }
            _ => {}
        }
    }

    /// The location of `path`'s key, or of its nearest indexed ancestor (a missing key is
    /// reported at the table that should hold it). `None` when nothing on the path exists.
    pub fn locate(&self, path: &str) -> Option<LineCol> {
        let mut p = path;
        loop {
            if let Some(e) = self.entries.iter().find(|e| e.path == p) {
                return Some(line_col(&self.text, e.key.start));
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }

    /// The deepest key path whose key or value contains `span` (for toml's own errors, which
    /// carry a byte range but no key).
    pub fn path_at(&self, span: &Range<usize>) -> Option<&str> {
        let contains = |r: &Range<usize>| r.start <= span.start && span.end <= r.end;
        self.entries
            .iter()
            .filter(|e| contains(&e.key) || contains(&e.value))
            .min_by_key(|e| {
                if contains(&e.key) {
                    e.key.len()
                } else {
                    e.value.len()
                }
            })
            .map(|e| e.path.as_str())
    }

    /// Line and column of a byte offset in the indexed text.
    pub fn line_col(&self, offset: usize) -> LineCol {
        line_col(&self.text, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_lines_and_chars() {
        let t = "a = 1\nbé = 2\n";
        assert_eq!(line_col(t, 0), LineCol { line: 1, col: 1 });
        assert_eq!(line_col(t, 6), LineCol { line: 2, col: 1 });
        // after "bé" (3 bytes) the column is 3
        assert_eq!(line_col(t, 9), LineCol { line: 2, col: 3 });
        assert_eq!(line_col(t, 1000).line, 3);
    }

    #[test]
    fn locate_finds_keys_and_falls_back_to_ancestors() {
        let t =
            "[a]\nx = 1\n\n[[objs]]\nname = \"A\"\n\n[[objs]]\nname = \"B\"\nf = [\"p\", \"q\"]\n";
        let root = DeTable::parse(t).unwrap();
        let idx = SpanIndex::build(t, &root);
        assert_eq!(idx.locate("a.x"), Some(LineCol { line: 2, col: 1 }));
        assert_eq!(idx.locate("objs[1].name").unwrap().line, 8);
        assert_eq!(
            idx.locate("objs[1].f[1]").unwrap(),
            LineCol { line: 9, col: 11 }
        );
        assert_eq!(idx.locate("a.missing").unwrap().line, 1);
        assert_eq!(idx.locate("nothing"), None);
    }
}
