//! CSV output for Bulk API 2.0: query results rendered once into immutable 10,000-row chunks
//! (every value double-quoted, `"` doubled, nulls as `""`, datetimes as
//! `2018-12-10T17:50:19.000Z`, booleans `true`/`false`), pages cut from those chunks without
//! copying, and gzip built from per-chunk raw-deflate pieces so a page compresses each chunk at
//! most once and the same page always yields the same bytes. Rendering is pure and never fails.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use flate2::{Compress, Compression, Crc, FlushCompress};
use serde_json::Value;

use super::{ColumnDelimiter, LineEnding};

/// Rows per pre-rendered chunk.
pub const CHUNK_ROWS: usize = 10_000;

/// Appends `text` as a double-quoted CSV value.
pub fn push_quoted(out: &mut Vec<u8>, text: &[u8]) {
    out.push(b'"');
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

/// Appends `text` quoted only when it contains the delimiter, a quote or a line break.
pub fn push_minimal(out: &mut Vec<u8>, text: &[u8], delimiter: u8) {
    if text
        .iter()
        .any(|&c| c == delimiter || c == b'"' || c == b'\n' || c == b'\r')
    {
        push_quoted(out, text);
    } else {
        out.extend_from_slice(text);
    }
}

/// Appends one JSON value as a quoted Bulk CSV cell.
pub fn push_value(out: &mut Vec<u8>, v: &Value, scratch: &mut String) {
    match v {
        Value::Null => out.extend_from_slice(b"\"\""),
        Value::Bool(true) => out.extend_from_slice(b"\"true\""),
        Value::Bool(false) => out.extend_from_slice(b"\"false\""),
        Value::String(s) => {
            let b = s.as_bytes();
            // REST datetime `2024-04-26T16:36:32.000+0000` → Bulk `2024-04-26T16:36:32.000Z`.
            if b.len() == 28 && b[10] == b'T' && b[19] == b'.' && b.ends_with(b"+0000") {
                out.push(b'"');
                out.extend_from_slice(&b[..23]);
                out.extend_from_slice(b"Z\"");
            } else {
                push_quoted(out, b);
            }
        }
        Value::Number(n) => {
            use std::fmt::Write;
            scratch.clear();
            if let Some(i) = n.as_i64() {
                let _ = write!(scratch, "{i}");
            } else if let Some(u) = n.as_u64() {
                let _ = write!(scratch, "{u}");
            } else if let Some(f) = n.as_f64() {
                let _ = write!(scratch, "{f}");
            }
            out.push(b'"');
            out.extend_from_slice(scratch.as_bytes());
            out.push(b'"');
        }
        other => {
            scratch.clear();
            scratch.push_str(&other.to_string());
            push_quoted(out, scratch.as_bytes());
        }
    }
}

/// A raw-deflate piece (sync-flushed, no final block) with the CRC-32 of its input.
#[derive(Debug, Clone)]
pub struct GzPiece {
    pub deflated: Bytes,
    pub crc: Arc<Crc>,
}

/// Compresses `data` into a standalone, byte-aligned raw-deflate piece that can be concatenated
/// with other pieces into one deflate stream (each piece starts with an empty window).
pub fn deflate_piece(data: &[u8]) -> GzPiece {
    let mut c = Compress::new(Compression::fast(), false);
    let mut out: Vec<u8> = Vec::with_capacity(data.len() / 3 + 1024);
    loop {
        if out.capacity() - out.len() < 4096 {
            out.reserve(out.capacity().max(8192));
        }
        let consumed = c.total_in() as usize;
        // Deflating into a buffer with spare room only fails on a corrupted stream state.
        if c.compress_vec(&data[consumed..], &mut out, FlushCompress::Sync)
            .is_err()
        {
            break;
        }
        // A sync flush is complete once all input is consumed and output space is left over.
        if c.total_in() as usize == data.len() && out.len() < out.capacity() {
            break;
        }
    }
    let mut crc = Crc::new();
    crc.update(data);
    GzPiece {
        deflated: Bytes::from(out),
        crc: Arc::new(crc),
    }
}

/// The 10-byte gzip member header (no name, mtime 0, OS unknown).
pub const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// Accumulates the CRC of consecutive pieces and writes the end of the gzip member: an empty
/// final deflate block (static Huffman, BFINAL=1), CRC-32 and length mod 2^32.
#[derive(Default)]
pub struct GzTrailer {
    crc: Crc,
}

impl GzTrailer {
    pub fn add(&mut self, piece: &GzPiece) {
        self.crc.combine(&piece.crc);
    }

    pub fn finish(&self) -> Bytes {
        let mut t = Vec::with_capacity(10);
        t.extend_from_slice(&[0x03, 0x00]);
        t.extend_from_slice(&self.crc.sum().to_le_bytes());
        t.extend_from_slice(&self.crc.amount().to_le_bytes());
        Bytes::from(t)
    }
}

/// One pre-rendered block of up to [`CHUNK_ROWS`] rows.
#[derive(Debug)]
pub struct Chunk {
    pub bytes: Bytes,
    /// Start offset of each row in `bytes`, plus the end (`rows + 1` entries).
    pub offsets: Vec<u32>,
    gz: OnceLock<GzPiece>,
}

impl Chunk {
    pub fn rows(&self) -> usize {
        self.offsets.len() - 1
    }

    /// The whole chunk deflated (computed on first use, then cached).
    pub fn gz(&self) -> &GzPiece {
        self.gz.get_or_init(|| deflate_piece(&self.bytes))
    }
}

/// A query job's results, rendered once.
#[derive(Debug)]
pub struct RenderedResults {
    pub header: Bytes,
    header_gz: OnceLock<GzPiece>,
    pub chunks: Vec<Chunk>,
    pub total_rows: usize,
}

/// Renders one chunk of rows.
fn render_chunk(
    rows: &[Vec<Value>],
    delimiter: u8,
    line_ending: &[u8],
    precompress: bool,
) -> Chunk {
    let mut out: Vec<u8> = Vec::with_capacity(rows.len() * 128);
    let mut offsets = Vec::with_capacity(rows.len() + 1);
    let mut scratch = String::new();
    for row in rows {
        offsets.push(out.len() as u32);
        for (k, v) in row.iter().enumerate() {
            if k > 0 {
                out.push(delimiter);
            }
            push_value(&mut out, v, &mut scratch);
        }
        out.extend_from_slice(line_ending);
    }
    offsets.push(out.len() as u32);
    let chunk = Chunk {
        bytes: Bytes::from(out),
        offsets,
        gz: OnceLock::new(),
    };
    if precompress {
        chunk.gz();
    }
    chunk
}

/// Renders query rows (in `columns` order) into chunks, using up to `threads` threads. With
/// `precompress`, each chunk's gzip piece is computed right away too (so gzip pages are served
/// without compressing in the request path).
pub fn render_results(
    columns: &[String],
    rows: &[Vec<Value>],
    delimiter: ColumnDelimiter,
    line_ending: LineEnding,
    threads: usize,
    precompress: bool,
) -> RenderedResults {
    let d = delimiter.byte();
    let le = line_ending.bytes();
    let mut header = Vec::new();
    for (k, c) in columns.iter().enumerate() {
        if k > 0 {
            header.push(d);
        }
        push_quoted(&mut header, c.as_bytes());
    }
    header.extend_from_slice(le);
    let blocks: Vec<&[Vec<Value>]> = rows.chunks(CHUNK_ROWS).collect();
    let threads = threads.clamp(1, 8).min(blocks.len().max(1));
    let mut chunks: Vec<Option<Chunk>> = (0..blocks.len()).map(|_| None).collect();
    if threads <= 1 {
        for (slot, block) in chunks.iter_mut().zip(&blocks) {
            *slot = Some(render_chunk(block, d, le, precompress));
        }
    } else {
        let per = blocks.len().div_ceil(threads);
        std::thread::scope(|s| {
            for (slots, group) in chunks.chunks_mut(per).zip(blocks.chunks(per)) {
                s.spawn(move || {
                    for (slot, block) in slots.iter_mut().zip(group) {
                        *slot = Some(render_chunk(block, d, le, precompress));
                    }
                });
            }
        });
    }
    RenderedResults {
        header: Bytes::from(header),
        header_gz: OnceLock::new(),
        chunks: chunks.into_iter().flatten().collect(),
        total_rows: rows.len(),
    }
}

/// Wraps rows already rendered as CSV chunks of [`CHUNK_ROWS`] rows (each with its row offsets,
/// `rows + 1` entries) as a job's results. With `precompress`, the chunks' gzip pieces are
/// computed now, on up to `threads` threads (see also [`RenderedResults::precompress`]).
pub fn results_from_chunks(
    header: Vec<u8>,
    chunks: Vec<(Vec<u8>, Vec<u32>)>,
    total_rows: usize,
    threads: usize,
    precompress: bool,
) -> RenderedResults {
    let chunks: Vec<Chunk> = chunks
        .into_iter()
        .map(|(bytes, offsets)| Chunk {
            bytes: Bytes::from(bytes),
            offsets,
            gz: OnceLock::new(),
        })
        .collect();
    let results = RenderedResults {
        header: Bytes::from(header),
        header_gz: OnceLock::new(),
        chunks,
        total_rows,
    };
    if precompress {
        results.precompress(threads);
    }
    results
}

impl RenderedResults {
    /// Computes every chunk's gzip piece (first chunks first) on up to `threads` threads; chunks
    /// already compressed, or being compressed by a page request, are not compressed again.
    /// Blocking.
    pub fn precompress(&self, threads: usize) {
        let chunks = &self.chunks;
        let threads = threads.clamp(1, 8).min(chunks.len().max(1));
        std::thread::scope(|s| {
            for t in 0..threads {
                s.spawn(move || {
                    for c in chunks.iter().skip(t).step_by(threads) {
                        c.gz();
                    }
                });
            }
        });
    }

    /// The byte slices of rows `[start, end)` (header first), zero-copy.
    pub fn page_pieces(&self, start: usize, end: usize) -> Vec<PagePiece<'_>> {
        let mut out = vec![PagePiece::Header(self)];
        let mut row = start;
        while row < end {
            let ci = row / CHUNK_ROWS;
            let Some(chunk) = self.chunks.get(ci) else {
                break;
            };
            let first = ci * CHUNK_ROWS;
            let a = row - first;
            let b = (end - first).min(chunk.rows());
            if a == 0 && b == chunk.rows() {
                out.push(PagePiece::Whole(chunk));
            } else {
                let s = chunk.offsets[a] as usize;
                let e = chunk.offsets[b] as usize;
                out.push(PagePiece::Partial(chunk.bytes.slice(s..e)));
            }
            row = first + b;
        }
        out
    }
}

/// Part of a page: the header row, a whole chunk (both with cached gzip forms) or a slice.
pub enum PagePiece<'a> {
    Header(&'a RenderedResults),
    Whole(&'a Chunk),
    Partial(Bytes),
}

impl PagePiece<'_> {
    pub fn bytes(&self) -> Bytes {
        match self {
            PagePiece::Header(r) => r.header.clone(),
            PagePiece::Whole(c) => c.bytes.clone(),
            PagePiece::Partial(b) => b.clone(),
        }
    }

    /// The gzip piece, compressing now if it is not cached.
    pub fn gz(&self) -> GzPiece {
        match self {
            PagePiece::Header(r) => r.header_gz.get_or_init(|| deflate_piece(&r.header)).clone(),
            PagePiece::Whole(c) => c.gz().clone(),
            PagePiece::Partial(b) => deflate_piece(b),
        }
    }

    /// The gzip piece if it costs no real compression work (cached, or the tiny header).
    pub fn cached_gz(&self) -> Option<GzPiece> {
        match self {
            PagePiece::Header(_) => Some(self.gz()),
            PagePiece::Whole(c) => c.gz.get().cloned(),
            PagePiece::Partial(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use serde_json::json;

    use super::*;

    fn rows(n: usize) -> Vec<Vec<Value>> {
        (0..n)
            .map(|i| {
                vec![
                    json!(format!("001{i:012}")),
                    json!(format!("Name \"{i}\", with comma")),
                    if i % 3 == 0 { Value::Null } else { json!(i) },
                    json!(i % 2 == 0),
                    json!("2018-12-10T17:50:19.000+0000"),
                    json!(1.5),
                ]
            })
            .collect()
    }

    fn columns() -> Vec<String> {
        ["Id", "Name", "N", "B", "D", "F"]
            .map(String::from)
            .to_vec()
    }

    fn page_bytes(r: &RenderedResults, start: usize, end: usize) -> Vec<u8> {
        r.page_pieces(start, end)
            .iter()
            .flat_map(|p| p.bytes().to_vec())
            .collect()
    }

    fn page_gzip(r: &RenderedResults, start: usize, end: usize) -> Vec<u8> {
        let mut out = GZIP_HEADER.to_vec();
        let mut trailer = GzTrailer::default();
        for p in r.page_pieces(start, end) {
            let gz = p.gz();
            trailer.add(&gz);
            out.extend_from_slice(&gz.deflated);
        }
        out.extend_from_slice(&trailer.finish());
        out
    }

    #[test]
    fn values_are_quoted_and_formatted() {
        let r = render_results(
            &columns(),
            &rows(2),
            ColumnDelimiter::Comma,
            LineEnding::Lf,
            1,
            false,
        );
        let text = String::from_utf8(page_bytes(&r, 0, 2)).unwrap();
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("\"Id\",\"Name\",\"N\",\"B\",\"D\",\"F\"")
        );
        assert_eq!(
            lines.next(),
            Some("\"001000000000000\",\"Name \"\"0\"\", with comma\",\"\",\"true\",\"2018-12-10T17:50:19.000Z\",\"1.5\"")
        );
    }

    #[test]
    fn pages_across_chunks_match_a_single_render_and_gzip_round_trips() {
        let data = rows(CHUNK_ROWS * 2 + 123);
        let threaded = render_results(
            &columns(),
            &data,
            ColumnDelimiter::Tab,
            LineEnding::Crlf,
            3,
            true,
        );
        let single = render_results(
            &columns(),
            &data,
            ColumnDelimiter::Tab,
            LineEnding::Crlf,
            1,
            false,
        );
        let total = data.len();
        assert_eq!(
            page_bytes(&threaded, 0, total),
            page_bytes(&single, 0, total)
        );
        for (start, end) in [
            (0, total),
            (5, CHUNK_ROWS + 7),
            (CHUNK_ROWS, 2 * CHUNK_ROWS),
            (total, total),
        ] {
            let plain = page_bytes(&threaded, start, end);
            let lines = plain.windows(2).filter(|w| w == b"\r\n").count();
            assert_eq!(lines, end - start + 1, "{start}..{end}");
            let gz = page_gzip(&threaded, start, end);
            let mut decoded = Vec::new();
            flate2::read::GzDecoder::new(&gz[..])
                .read_to_end(&mut decoded)
                .unwrap();
            assert_eq!(decoded, plain, "{start}..{end}");
            // Cached whole-chunk pieces give identical bytes the second time.
            assert_eq!(page_gzip(&threaded, start, end), gz);
        }
    }

    #[test]
    fn minimal_quoting() {
        let mut out = Vec::new();
        push_minimal(&mut out, b"plain", b',');
        out.push(b' ');
        push_minimal(&mut out, b"a,b", b',');
        out.push(b' ');
        push_minimal(&mut out, b"a|b", b',');
        assert_eq!(out, b"plain \"a,b\" a|b");
    }
}
