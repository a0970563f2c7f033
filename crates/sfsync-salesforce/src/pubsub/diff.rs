//! Reconstruction of long-text values sent as unified diffs (`diffFields`).
//!
//! Guarantee: [`apply`] returns [`DiffOutcome::Applied`] only when the patched text's SHA-256
//! equals the hash announced in the diff's `+++` line; any malformed diff, context mismatch or
//! hash mismatch gives [`DiffOutcome::NeedsReread`] with the reason, so the pipeline re-reads the
//! record instead of storing a wrong value. Lines are the `\n`-separated segments of the text
//! (the Salesforce and emulator convention); a `\ No newline at end of file` marker is honoured.

use sha2::{Digest, Sha256};

/// The result of applying a diff to the previous full value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiffOutcome {
    /// The reconstructed value, verified by its SHA-256.
    Applied(String),
    /// The value cannot be reconstructed safely: re-read the record.
    NeedsReread { reason: String },
}

impl DiffOutcome {
    pub fn value(&self) -> Option<&str> {
        match self {
            DiffOutcome::Applied(v) => Some(v),
            DiffOutcome::NeedsReread { .. } => None,
        }
    }
}

/// The hex SHA-256 announced by the `+++ <sha256>` line of a diff, if well formed.
pub fn announced_sha256(patch: &str) -> Option<&str> {
    let mut lines = patch.split('\n');
    let first = lines.next()?;
    if !first.starts_with("---") {
        return None;
    }
    let sha = lines.next()?.strip_prefix("+++ ")?.trim();
    (sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit())).then_some(sha)
}

/// Lower-case hex SHA-256 of a text.
pub fn sha256_hex(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let mut s = String::with_capacity(64);
    for b in digest {
        use std::fmt::Write;
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn parse_range(s: &str, sign: char) -> Option<(usize, usize)> {
    let s = s.strip_prefix(sign)?;
    match s.split_once(',') {
        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
        None => Some((s.parse().ok()?, 1)),
    }
}

/// Applies `patch` to `previous` and verifies the result against the announced SHA-256.
pub fn apply(previous: &str, patch: &str) -> DiffOutcome {
    match try_apply(previous, patch) {
        Ok(v) => DiffOutcome::Applied(v),
        Err(reason) => DiffOutcome::NeedsReread { reason },
    }
}

fn try_apply(previous: &str, patch: &str) -> Result<String, String> {
    let sha = announced_sha256(patch).ok_or("the diff has no `--- ` / `+++ <sha256>` header")?;
    let old: Vec<&str> = previous.split('\n').collect();
    let mut lines: Vec<&str> = patch.split('\n').skip(2).collect();
    if lines.last() == Some(&"") {
        lines.pop();
    }
    let mut out: Vec<&str> = Vec::with_capacity(old.len() + 8);
    let mut cursor = 0usize; // next old line to copy
    let mut no_newline_fix = false;
    let mut i = 0;
    while i < lines.len() {
        let head = lines[i];
        let inner = head
            .strip_prefix("@@ ")
            .and_then(|h| h.split_once(" @@"))
            .map(|(r, _)| r)
            .ok_or_else(|| format!("diff line {}: expected a hunk header, got {head:?}", i + 3))?;
        let (o, n) = inner
            .split_once(' ')
            .ok_or_else(|| format!("diff line {}: malformed hunk header", i + 3))?;
        let (os, ol) = parse_range(o, '-').ok_or("malformed old range")?;
        let (_ns, nl) = parse_range(n, '+').ok_or("malformed new range")?;
        // The first old line of the hunk, 0-based (a zero-length range names the line before).
        let start = if ol == 0 { os } else { os.saturating_sub(1) };
        if start < cursor || start > old.len() {
            return Err(format!(
                "hunk at old line {os} is out of order or past the end"
            ));
        }
        out.extend_from_slice(&old[cursor..start]);
        cursor = start;
        i += 1;
        let (mut seen_old, mut seen_new) = (0usize, 0usize);
        while i < lines.len() && !lines[i].starts_with("@@ ") {
            let l = lines[i];
            let (tag, body) = match l.chars().next() {
                Some(c) => (c, &l[c.len_utf8()..]),
                None => (' ', ""),
            };
            match tag {
                ' ' | '-' => {
                    if old.get(cursor) != Some(&body) {
                        return Err(format!("context mismatch at old line {}", cursor + 1));
                    }
                    cursor += 1;
                    seen_old += 1;
                    if tag == ' ' {
                        out.push(body);
                        seen_new += 1;
                    }
                }
                '+' => {
                    out.push(body);
                    seen_new += 1;
                }
                '\\' => no_newline_fix = true,
                _ => return Err(format!("diff line {}: unknown line tag {tag:?}", i + 3)),
            }
            i += 1;
        }
        if seen_old != ol || seen_new != nl {
            return Err(format!(
                "hunk at old line {os} announces -{ol} +{nl} lines but has -{seen_old} +{seen_new}"
            ));
        }
    }
    out.extend_from_slice(&old[cursor.min(old.len())..]);
    let mut value = out.join("\n");
    if no_newline_fix && value.ends_with('\n') {
        value.pop();
    }
    let actual = sha256_hex(&value);
    if !actual.eq_ignore_ascii_case(sha) {
        return Err(format!(
            "SHA-256 of the reconstructed value is {actual}, the diff announces {sha}"
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(lines: usize, tweak: Option<usize>) -> String {
        (0..lines)
            .map(|i| {
                if Some(i) == tweak {
                    format!("line {i} was changed here")
                } else {
                    format!("line {i} of a long description field")
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn applies_a_hunk_and_verifies_the_hash() {
        let old = text(40, None);
        let new = text(40, Some(20));
        let patch = format!(
            "--- \n+++ {}\n@@ -18,7 +18,7 @@\n line 17 of a long description field\n line 18 of a long description field\n line 19 of a long description field\n-line 20 of a long description field\n+line 20 was changed here\n line 21 of a long description field\n line 22 of a long description field\n line 23 of a long description field\n",
            sha256_hex(&new)
        );
        assert_eq!(apply(&old, &patch), DiffOutcome::Applied(new.clone()));
        // A wrong previous value never yields a wrong result.
        let wrong_old = text(40, Some(3));
        assert!(matches!(
            apply(&wrong_old, &patch),
            DiffOutcome::NeedsReread { .. }
        ));
        let wrong_old = text(40, Some(19));
        assert!(matches!(
            apply(&wrong_old, &patch),
            DiffOutcome::NeedsReread { .. }
        ));
        // Wrong hash.
        let bad = patch.replace(&sha256_hex(&new), &sha256_hex("x"));
        assert!(
            matches!(apply(&old, &bad), DiffOutcome::NeedsReread { ref reason } if reason.contains("SHA-256"))
        );
    }

    #[test]
    fn malformed_diffs_need_reread() {
        for p in ["", "--- \n", "--- \n+++ abc\n", "garbage", "--- \n+++ 0000000000000000000000000000000000000000000000000000000000000000\n@@ nonsense\n"] {
            assert!(matches!(apply("a", p), DiffOutcome::NeedsReread { .. }), "{p:?}");
        }
    }
}
