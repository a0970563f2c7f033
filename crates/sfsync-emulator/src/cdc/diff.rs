//! Unified diffs for long text fields of UPDATE events (fact sheet §2.6).
//!
//! Guarantee: [`text_diff`] returns a diff only when Salesforce would send one (new value at
//! least 1,000 characters, lengths within 50 %, at most 25 % of lines changed, diff shorter than
//! the value), and [`apply_diff`] applied to the old value always gives back exactly the new
//! value, whose SHA-256 is in the `+++` line. Lines are the `\n`-separated segments of the text
//! (a trailing `\n` gives a final empty line); no `\ No newline` markers are used. Hunks carry up
//! to 3 lines of context.

use sha2::{Digest, Sha256};

/// Minimum length (characters) of a value sent as a diff.
pub const MIN_DIFF_CHARS: usize = 1000;
const CONTEXT: usize = 3;
/// Above this many cells the middle section is treated as replaced (no quadratic blow-up).
const MAX_LCS_CELLS: usize = 4_000_000;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Eq,
    Del,
    Ins,
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Edit script from `a` to `b` (line slices).
fn script(a: &[&str], b: &[&str]) -> Vec<Op> {
    let pre = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suf = a[pre..]
        .iter()
        .rev()
        .zip(b[pre..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let am = &a[pre..a.len() - suf];
    let bm = &b[pre..b.len() - suf];
    let mut ops = vec![Op::Eq; pre];
    if am.len().saturating_mul(bm.len()) > MAX_LCS_CELLS {
        ops.extend(std::iter::repeat_n(Op::Del, am.len()));
        ops.extend(std::iter::repeat_n(Op::Ins, bm.len()));
    } else {
        // lcs[i][j] = LCS length of am[i..], bm[j..].
        let (n, m) = (am.len(), bm.len());
        let w = m + 1;
        let mut lcs = vec![0u32; (n + 1) * w];
        for i in (0..n).rev() {
            for j in (0..m).rev() {
                lcs[i * w + j] = if am[i] == bm[j] {
                    lcs[(i + 1) * w + j + 1] + 1
                } else {
                    lcs[(i + 1) * w + j].max(lcs[i * w + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < n || j < m {
            if i < n && j < m && am[i] == bm[j] {
                ops.push(Op::Eq);
                i += 1;
                j += 1;
            } else if j < m && (i == n || lcs[i * w + j + 1] >= lcs[(i + 1) * w + j]) {
                ops.push(Op::Ins);
                j += 1;
            } else {
                ops.push(Op::Del);
                i += 1;
            }
        }
    }
    ops.extend(std::iter::repeat_n(Op::Eq, suf));
    ops
}

/// Unified diff of `old` → `new`, or `None` when the value must be sent in full.
pub fn text_diff(old: &str, new: &str) -> Option<String> {
    let new_chars = new.chars().count();
    let old_chars = old.chars().count();
    if new_chars < MIN_DIFF_CHARS || old_chars == 0 || old == new {
        return None;
    }
    if old_chars.abs_diff(new_chars) * 2 > old_chars {
        return None;
    }
    let a: Vec<&str> = old.split('\n').collect();
    let b: Vec<&str> = new.split('\n').collect();
    // No common subsequence is longer than the lines both sides share (as multisets), so when
    // even that leaves more than a quarter of the lines changed, the value goes in full without
    // the quadratic edit script (a rewritten description, the common case).
    let mut counts: std::collections::HashMap<&str, usize> =
        std::collections::HashMap::with_capacity(a.len());
    for l in &a {
        *counts.entry(l).or_default() += 1;
    }
    let shared = b
        .iter()
        .filter(|l| match counts.get_mut(*l) {
            Some(c) if *c > 0 => {
                *c -= 1;
                true
            }
            _ => false,
        })
        .count();
    if (a.len() - shared).max(b.len() - shared) * 4 > a.len().max(b.len()) {
        return None;
    }
    let ops = script(&a, &b);
    let dels = ops.iter().filter(|o| **o == Op::Del).count();
    let ins = ops.iter().filter(|o| **o == Op::Ins).count();
    if dels.max(ins) * 4 > a.len().max(b.len()) {
        return None;
    }
    // Positions (old, new) consumed before each op.
    let mut pos = Vec::with_capacity(ops.len() + 1);
    let (mut oi, mut ni) = (0usize, 0usize);
    for op in &ops {
        pos.push((oi, ni));
        match op {
            Op::Eq => {
                oi += 1;
                ni += 1;
            }
            Op::Del => oi += 1,
            Op::Ins => ni += 1,
        }
    }
    let changes: Vec<usize> = (0..ops.len()).filter(|&k| ops[k] != Op::Eq).collect();
    let mut out = format!("--- \n+++ {}\n", sha256_hex(new));
    let mut k = 0;
    while k < changes.len() {
        let mut last = changes[k];
        let mut next = k + 1;
        while next < changes.len() && changes[next] - last <= 2 * CONTEXT + 1 {
            last = changes[next];
            next += 1;
        }
        let start = changes[k].saturating_sub(CONTEXT);
        let end = (last + CONTEXT + 1).min(ops.len());
        let hunk = &ops[start..end];
        let ol = hunk.iter().filter(|o| **o != Op::Ins).count();
        let nl = hunk.iter().filter(|o| **o != Op::Del).count();
        let (o0, n0) = pos[start];
        let os = if ol == 0 { o0 } else { o0 + 1 };
        let ns = if nl == 0 { n0 } else { n0 + 1 };
        out.push_str(&format!("@@ -{os},{ol} +{ns},{nl} @@\n"));
        for (p, op) in hunk.iter().enumerate() {
            let (o, n) = pos[start + p];
            match op {
                Op::Eq => {
                    out.push(' ');
                    out.push_str(a[o]);
                }
                Op::Del => {
                    out.push('-');
                    out.push_str(a[o]);
                }
                Op::Ins => {
                    out.push('+');
                    out.push_str(b[n]);
                }
            }
            out.push('\n');
        }
        k = next;
    }
    if out.chars().count() >= new_chars {
        return None;
    }
    Some(out)
}

/// Applies a diff made by [`text_diff`] (or any unified diff in the same line convention) to
/// `old` and checks the result against the SHA-256 of the `+++` line.
pub fn apply_diff(old: &str, diff: &str) -> Result<String, String> {
    let mut lines = diff.split('\n');
    if lines.next() != Some("--- ") {
        return Err("diff does not start with '--- '".into());
    }
    let sha = lines
        .next()
        .and_then(|l| l.strip_prefix("+++ "))
        .ok_or("diff has no '+++ <sha256>' line")?
        .to_string();
    let a: Vec<&str> = old.split('\n').collect();
    let mut out: Vec<&str> = Vec::with_capacity(a.len());
    let mut next_old = 0usize;
    let mut body: Vec<&str> = lines.collect();
    if body.last() == Some(&"") {
        body.pop();
    }
    let mut i = 0;
    while i < body.len() {
        let h = body[i];
        let spec = h
            .strip_prefix("@@ -")
            .and_then(|r| r.strip_suffix(" @@"))
            .ok_or_else(|| format!("line {} is not a hunk header: {h:?}", i + 3))?;
        let (o, _) = spec.split_once(' ').ok_or("bad hunk header")?;
        let (os, ol) = o.split_once(',').ok_or("bad hunk header")?;
        let os: usize = os.parse().map_err(|_| "bad hunk start")?;
        let ol: usize = ol.parse().map_err(|_| "bad hunk length")?;
        let start = if ol == 0 { os } else { os.saturating_sub(1) };
        if start < next_old || start > a.len() {
            return Err(format!("hunk {h:?} out of order or past the end"));
        }
        out.extend_from_slice(&a[next_old..start]);
        next_old = start;
        i += 1;
        while i < body.len() && !body[i].starts_with("@@") {
            let l = body[i];
            let (tag, text) = l.split_at(l.len().min(1));
            match tag {
                " " | "-" => {
                    if a.get(next_old) != Some(&text) {
                        return Err(format!("context mismatch at old line {}", next_old + 1));
                    }
                    if tag == " " {
                        out.push(text);
                    }
                    next_old += 1;
                }
                "+" => out.push(text),
                _ => return Err(format!("bad diff line {l:?}")),
            }
            i += 1;
        }
    }
    out.extend_from_slice(&a[next_old.min(a.len())..]);
    let text = out.join("\n");
    if sha256_hex(&text) != sha {
        return Err("reconstructed value does not match the SHA-256 of the diff".into());
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(n: usize, tag: &str) -> String {
        (0..n)
            .map(|i| format!("line {i} of the document {tag} with some padding text"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn small_edit_gives_a_diff_that_applies() {
        let old = doc(100, "x") + "\n";
        let mut new = old.replace("line 50 of", "LINE fifty of");
        new.push_str("appended\n");
        let d = text_diff(&old, &new).expect("diffable");
        assert!(
            d.starts_with(&format!("--- \n+++ {}\n@@ ", sha256_hex(&new))),
            "{d}"
        );
        assert_eq!(apply_diff(&old, &d).unwrap(), new);
        assert!(d.len() < new.len());
    }

    #[test]
    fn not_diffed_cases() {
        let old = doc(100, "x");
        // Short value.
        assert!(text_diff("abc", "abd").is_none());
        let short_new = doc(10, "x");
        assert!(short_new.len() < MIN_DIFF_CHARS);
        assert!(text_diff(&old, &short_new).is_none());
        // Length differs by more than 50 %.
        assert!(text_diff(&old, &doc(200, "x")).is_none());
        // More than 25 % of lines changed.
        let mut lines: Vec<String> = old.split('\n').map(String::from).collect();
        for l in lines.iter_mut().take(30) {
            *l = l.replace("document", "DOCUMENT");
        }
        assert!(text_diff(&old, &lines.join("\n")).is_none());
        // Old value null/empty.
        assert!(text_diff("", &old).is_none());
    }

    #[test]
    fn edits_at_both_ends_and_apply_checks_the_hash() {
        let old = doc(80, "y");
        let new = format!(
            "first\n{}\nlast",
            old.replacen("line 0 of", "line zero of", 1)
        );
        let d = text_diff(&old, &new).unwrap();
        assert_eq!(apply_diff(&old, &d).unwrap(), new);
        let tampered = d.replace("+first", "+frist");
        assert!(apply_diff(&old, &tampered).is_err());
        assert!(apply_diff("other", &d).is_err());
    }
}
