//! Bulk API 2.0 query results rendered straight from the record store into CSV, without building
//! JSON rows: the rows are selected first (WHERE, ORDER BY, OFFSET/LIMIT on the compact store),
//! then cut into fixed-size chunks that are rendered in parallel. The output is byte-for-byte
//! what rendering [`crate::Org::query`]'s JSON rows as Bulk CSV gives: every cell double-quoted
//! with `"` doubled, nulls as `""`, booleans `true`/`false`, numbers as Rust prints them (no
//! exponent), datetimes `2018-12-10T17:50:19.000Z`, parent relationship paths as their leaf value
//! (empty when the parent is absent or deleted), compound address fields as their JSON text.

use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};

use crate::store::{FKind, Record, State};
use crate::value::{format_date, format_datetime, Val, NULL};

/// How [`crate::Org::query_csv`] writes its output.
#[derive(Debug, Clone)]
pub struct CsvQueryOptions {
    /// Column delimiter byte (`,`, `\t`, `|`, `;`, `^` or `` ` ``).
    pub delimiter: u8,
    /// Lines end with CRLF instead of LF.
    pub crlf: bool,
    /// Rows per chunk (the last chunk may be shorter); at least 1.
    pub chunk_rows: usize,
    /// Rendering threads; 0 = `std::thread::available_parallelism()`.
    pub threads: usize,
}

impl Default for CsvQueryOptions {
    fn default() -> Self {
        CsvQueryOptions {
            delimiter: b',',
            crlf: false,
            chunk_rows: 10_000,
            threads: 0,
        }
    }
}

/// One block of rendered rows.
#[derive(Debug, Clone, Default)]
pub struct CsvChunk {
    /// The rows' CSV, each ending with the line ending.
    pub bytes: Vec<u8>,
    /// Start offset of each row in `bytes`, plus the end (`rows + 1` entries).
    pub offsets: Vec<u32>,
}

impl CsvChunk {
    pub fn rows(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }
}

/// A query's results as Bulk CSV.
#[derive(Debug, Clone, Default)]
pub struct CsvQueryResult {
    /// The queried object's API name (`AggregateResult` for `SELECT COUNT(field)`).
    pub object: String,
    /// Select-list paths in order (canonical field-name case); empty for `SELECT COUNT()`.
    pub columns: Vec<String>,
    /// The header line (every column name quoted) with its line ending.
    pub header: Vec<u8>,
    /// Rows in `chunk_rows` blocks, in result order.
    pub chunks: Vec<CsvChunk>,
    pub total_rows: usize,
    /// True for `SELECT COUNT() …` (no rows; `total_rows` is the count).
    pub is_count: bool,
}

impl CsvQueryResult {
    /// Rows per chunk.
    pub fn chunk_row_counts(&self) -> Vec<usize> {
        self.chunks.iter().map(CsvChunk::rows).collect()
    }

    /// Header and every row as one buffer (for tests and small results).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.header.clone();
        for c in &self.chunks {
            out.extend_from_slice(&c.bytes);
        }
        out
    }
}

/// Appends `text` as a double-quoted CSV value (`"` doubled).
pub(crate) fn push_quoted(out: &mut Vec<u8>, text: &[u8]) {
    out.push(b'"');
    if !text.contains(&b'"') {
        out.extend_from_slice(text);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &c) in text.iter().enumerate() {
        if c == b'"' {
            out.extend_from_slice(&text[start..=i]);
            out.push(b'"');
            start = i + 1;
        }
    }
    out.extend_from_slice(&text[start..]);
    out.push(b'"');
}

/// A JSON string value as a quoted Bulk CSV cell: REST datetimes
/// (`2024-04-26T16:36:32.000+0000`) become `2024-04-26T16:36:32.000Z`, as the JSON path does for
/// every string.
fn push_text(out: &mut Vec<u8>, b: &[u8]) {
    if b.len() == 28 && b[10] == b'T' && b[19] == b'.' && b.ends_with(b"+0000") {
        out.push(b'"');
        out.extend_from_slice(&b[..23]);
        out.extend_from_slice(b"Z\"");
    } else {
        push_quoted(out, b);
    }
}

fn push_2(out: &mut Vec<u8>, v: u32) {
    out.push(b'0' + (v / 10 % 10) as u8);
    out.push(b'0' + (v % 10) as u8);
}

fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// `"YYYY-MM-DDTHH:MM:SS.mmmZ"` for years 0..=9999; other years go through the REST text.
fn push_datetime(out: &mut Vec<u8>, ms: i64, scratch: &mut String) {
    let days = ms.div_euclid(86_400_000);
    let (y, m, d) = crate::value::civil_from_days(days);
    if !(0..=9999).contains(&y) {
        scratch.clear();
        scratch.push_str(&format_datetime(ms));
        push_text(out, scratch.as_bytes());
        return;
    }
    let rem = ms.rem_euclid(86_400_000);
    let y = y as u32;
    out.push(b'"');
    push_2(out, y / 100);
    push_2(out, y % 100);
    out.push(b'-');
    push_2(out, m);
    out.push(b'-');
    push_2(out, d);
    out.push(b'T');
    let secs = (rem / 1000) as u32;
    push_2(out, secs / 3600);
    out.push(b':');
    push_2(out, secs / 60 % 60);
    out.push(b':');
    push_2(out, secs % 60);
    out.push(b'.');
    let millis = (rem % 1000) as u32;
    out.push(b'0' + (millis / 100) as u8);
    push_2(out, millis % 100);
    out.extend_from_slice(b"Z\"");
}

/// Appends one stored value as a quoted Bulk CSV cell, exactly as its REST JSON form renders.
fn push_val(out: &mut Vec<u8>, v: &Val, scratch: &mut String) {
    match v {
        Val::Null => out.extend_from_slice(b"\"\""),
        Val::Bool(true) => out.extend_from_slice(b"\"true\""),
        Val::Bool(false) => out.extend_from_slice(b"\"false\""),
        Val::Int(i) => {
            out.push(b'"');
            if *i < 0 {
                out.push(b'-');
            }
            push_u64(out, i.unsigned_abs());
            out.push(b'"');
        }
        Val::Num(f) => {
            // JSON has no NaN or infinity: those are null.
            if !f.is_finite() {
                out.extend_from_slice(b"\"\"");
                return;
            }
            use std::fmt::Write;
            scratch.clear();
            let _ = write!(scratch, "{f}");
            out.push(b'"');
            out.extend_from_slice(scratch.as_bytes());
            out.push(b'"');
        }
        Val::Str(s) => push_text(out, s.as_bytes()),
        Val::Id(id) => push_text(out, id.as_str().as_bytes()),
        Val::Date(d) => push_text(out, format_date(*d).as_bytes()),
        Val::DateTime(ms) => push_datetime(out, *ms, scratch),
    }
}

/// How one select-list column is read.
enum Cell<'p> {
    /// A stored field of the root record.
    Direct(usize),
    /// Anything else: parent hops, computed or compound fields.
    General {
        hops: &'p [(usize, usize)],
        obj: usize,
        field: usize,
    },
}

fn push_cell(out: &mut Vec<u8>, st: &State, rec: &Record, cell: &Cell, scratch: &mut String) {
    match cell {
        Cell::Direct(i) => push_val(out, rec.vals.get(*i).unwrap_or(&NULL), scratch),
        Cell::General { hops, obj, field } => {
            let Some(r) = crate::soql::walk(st, rec, hops) else {
                out.extend_from_slice(b"\"\"");
                return;
            };
            let c = &st.compiled.objects[*obj];
            match c.kinds[*field] {
                FKind::Address(_) => match c.field_json(r, *field) {
                    serde_json::Value::Null => out.extend_from_slice(b"\"\""),
                    j => push_quoted(out, j.to_string().as_bytes()),
                },
                _ => push_val(out, &c.get(r, *field), scratch),
            }
        }
    }
}

/// Renders one chunk. `row_bytes` is a shared estimate of bytes per row (raised as chunks are
/// rendered), so buffers are allocated once at about the right size instead of growing by
/// copying; capacity that is never written costs no memory.
fn render_chunk(
    st: &State,
    rows: &[&Record],
    cells: &[Cell],
    d: u8,
    le: &[u8],
    row_bytes: &AtomicUsize,
) -> CsvChunk {
    let estimate = row_bytes.load(AtomicOrdering::Relaxed);
    let mut out: Vec<u8> = Vec::with_capacity(rows.len() * estimate + 4096);
    let mut offsets = Vec::with_capacity(rows.len() + 1);
    let mut scratch = String::new();
    for rec in rows {
        offsets.push(out.len() as u32);
        for (k, cell) in cells.iter().enumerate() {
            if k > 0 {
                out.push(d);
            }
            push_cell(&mut out, st, rec, cell, &mut scratch);
        }
        out.extend_from_slice(le);
    }
    offsets.push(out.len() as u32);
    if !rows.is_empty() {
        // 1/8 above the largest rows seen so far.
        let per_row = out.len() / rows.len();
        row_bytes.fetch_max(per_row + per_row / 8 + 1, AtomicOrdering::Relaxed);
    }
    CsvChunk {
        bytes: out,
        offsets,
    }
}

/// Evaluates a parsed query and renders its rows (the caller holds the read lock).
pub(crate) fn run(
    st: &State,
    q: &crate::soql::Query,
    src: &str,
    include_deleted: bool,
    opts: &CsvQueryOptions,
) -> Result<CsvQueryResult, crate::SfError> {
    let plan = crate::soql::plan(st, q, src)?;
    let matched = crate::soql::select(st, &plan, include_deleted);
    let le: &[u8] = if opts.crlf { b"\r\n" } else { b"\n" };
    let d = opts.delimiter;
    let header_of = |columns: &[String]| {
        let mut header = Vec::new();
        for (k, c) in columns.iter().enumerate() {
            if k > 0 {
                header.push(d);
            }
            push_quoted(&mut header, c.as_bytes());
        }
        header.extend_from_slice(le);
        header
    };
    if plan.is_count() {
        let n = crate::soql::count_of(st, &plan, &matched);
        if !plan.is_count_field() {
            return Ok(CsvQueryResult {
                object: plan.object_name(st),
                header: header_of(&[]),
                total_rows: n,
                is_count: true,
                ..CsvQueryResult::default()
            });
        }
        let columns = vec!["expr0".to_string()];
        let mut bytes = Vec::new();
        push_val(&mut bytes, &Val::Int(n as i64), &mut String::new());
        bytes.extend_from_slice(le);
        return Ok(CsvQueryResult {
            object: "AggregateResult".into(),
            header: header_of(&columns),
            columns,
            chunks: vec![CsvChunk {
                offsets: vec![0, bytes.len() as u32],
                bytes,
            }],
            total_rows: 1,
            is_count: false,
        });
    }
    let columns = plan.column_names();
    let cells: Vec<Cell> = plan
        .columns()
        .map(|c| {
            let direct = c.hops.is_empty()
                && c.obj == plan.root
                && matches!(st.compiled.objects[c.obj].kinds[c.field], FKind::Stored);
            if direct {
                Cell::Direct(c.field)
            } else {
                Cell::General {
                    hops: c.hops,
                    obj: c.obj,
                    field: c.field,
                }
            }
        })
        .collect();
    let blocks: Vec<&[&Record]> = matched.chunks(opts.chunk_rows.max(1)).collect();
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        opts.threads
    }
    .clamp(1, 16)
    .min(blocks.len().max(1));
    let mut chunks: Vec<CsvChunk> = Vec::with_capacity(blocks.len());
    let row_bytes = AtomicUsize::new(cells.len() * 24 + 8);
    let row_bytes = &row_bytes;
    if threads <= 1 {
        for block in &blocks {
            chunks.push(render_chunk(st, block, &cells, d, le, row_bytes));
        }
    } else {
        // Interleave blocks across threads so each gets an even share of the work.
        let cells = &cells;
        let blocks = &blocks;
        let mut parts: Vec<Vec<(usize, CsvChunk)>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    s.spawn(move || {
                        (t..blocks.len())
                            .step_by(threads)
                            .map(|b| (b, render_chunk(st, blocks[b], cells, d, le, row_bytes)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        let mut slots: Vec<Option<CsvChunk>> = (0..blocks.len()).map(|_| None).collect();
        for part in parts.drain(..) {
            for (b, chunk) in part {
                slots[b] = Some(chunk);
            }
        }
        chunks.extend(slots.into_iter().flatten());
    }
    Ok(CsvQueryResult {
        object: plan.object_name(st),
        header: header_of(&columns),
        columns,
        chunks,
        total_rows: matched.len(),
        is_count: false,
    })
}
