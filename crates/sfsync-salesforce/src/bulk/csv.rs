//! Bulk API 2.0 CSV: an incremental reader and a writer.
//!
//! The reader ([`CsvParser`]) is push-based: feed it chunks of any size, split at any byte, and it
//! yields the same rows as parsing the whole input at once (a property test proves it). Memory is
//! bounded by the rows not yet taken plus one partial record, itself capped by
//! [`CsvOptions::max_record_bytes`]. Rows come out as [`CsvRecordBatch`]es — one text buffer plus
//! field offsets — so no allocation happens per field. Malformed input is an error that names the
//! row (1-based, header = row 1), the column (1-based) and the byte offset; NUL bytes are stripped
//! or rejected as configured; the parser never panics on any input.
//!
//! The writer ([`BulkCsvWriter`]) renders rows the way Bulk ingest reads them: RFC 4180 quoting,
//! `#N/A` to set a field to null, an empty cell to leave a field unchanged.

use std::fmt;

use bytes::Bytes;

/// What to do with NUL bytes (seen in real Bulk results; they break most CSV parsers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NulPolicy {
    /// Drop NUL bytes and count them ([`CsvParser::nul_bytes_stripped`]).
    #[default]
    Strip,
    /// Fail with [`CsvError::Nul`].
    Error,
}

/// Reader settings.
#[derive(Debug, Clone)]
pub struct CsvOptions {
    /// Field separator byte (`,` by default).
    pub delimiter: u8,
    /// NUL byte handling.
    pub nul: NulPolicy,
    /// Largest accepted record (sum of its field bytes). Guards memory against hostile input.
    pub max_record_bytes: usize,
    /// Treat the first record as a header: it is returned by [`CsvParser::header`], not as a row.
    pub has_header: bool,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            delimiter: b',',
            nul: NulPolicy::Strip,
            max_record_bytes: 64 * 1024 * 1024,
            has_header: true,
        }
    }
}

/// Why CSV input was rejected. Rows and columns are 1-based; the header is row 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsvError {
    #[error("row {row}, column {column}: the quoted field opened at byte {opened_at} is not closed before the end of the input")]
    UnterminatedQuote {
        row: u64,
        column: usize,
        opened_at: u64,
    },
    #[error("row {row}, column {column}: unexpected byte {found:?} after a closing quote at byte {offset} (expected a delimiter, a quote or a line end)")]
    AfterQuote {
        row: u64,
        column: usize,
        offset: u64,
        found: char,
    },
    #[error(
        "row {row}, column {column}: quote character inside an unquoted field at byte {offset}"
    )]
    QuoteInUnquotedField {
        row: u64,
        column: usize,
        offset: u64,
    },
    #[error("row {row}, column {column}: NUL byte at byte {offset}")]
    Nul {
        row: u64,
        column: usize,
        offset: u64,
    },
    #[error("row {row} has {found} fields but the header has {expected}")]
    FieldCount {
        row: u64,
        expected: usize,
        found: usize,
    },
    #[error("row {row} exceeds the record size limit of {limit} bytes")]
    RecordTooLarge { row: u64, limit: usize },
    #[error("row {row}, column {column}: invalid UTF-8")]
    InvalidUtf8 { row: u64, column: usize },
    #[error("the header {found:?} differs from the first page's header {expected:?}")]
    HeaderMismatch {
        expected: Vec<String>,
        found: Vec<String>,
    },
    #[error("Sforce-NumberOfRecords says {declared} rows but the page held {found}")]
    RecordCount { declared: u64, found: u64 },
    #[error("the input has no header row")]
    MissingHeader,
    #[error("column {column}: {reason}")]
    Write { column: usize, reason: &'static str },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a field (and of a record when no field of it is complete).
    StartField,
    /// Inside an unquoted field.
    Unquoted,
    /// Inside a quoted field.
    Quoted,
    /// Just saw a quote inside a quoted field: either an escaped quote or the field's end.
    QuoteInQuoted,
    /// Just ended a record on `\r`; a following `\n` belongs to the same line end.
    AfterCr,
}

const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// Incremental CSV parser. Feed chunks with [`feed`](CsvParser::feed), end the input with
/// [`finish`](CsvParser::finish), take completed rows with [`take_batch`](CsvParser::take_batch).
pub struct CsvParser {
    opts: CsvOptions,
    special: [bool; 256],
    state: State,
    /// Field bytes of completed rows and of the partial record.
    data: Vec<u8>,
    /// End offsets (into `data`) of completed fields.
    field_ends: Vec<usize>,
    /// For each completed row, the end index into `field_ends`.
    row_ends: Vec<usize>,
    record_field_start: usize,
    record_data_start: usize,
    /// 1-based number of the record being parsed (header = 1).
    row_no: u64,
    /// Row number of the first row not yet taken.
    batch_first_row: u64,
    /// Bytes consumed before the current chunk.
    offset: u64,
    quote_opened_at: u64,
    expected_fields: Option<usize>,
    header: Option<Vec<String>>,
    bom_matched: usize,
    bom_done: bool,
    nul_stripped: u64,
    finished: bool,
    /// Buffers of batches already dropped, parsed into again (see [`Recycler`]).
    recycler: Recycler,
}

/// The buffers of one batch.
#[derive(Default)]
struct BatchBuffers {
    data: Vec<u8>,
    field_ends: Vec<usize>,
    row_ends: Vec<usize>,
}

/// Batches a parser handed out return their buffers here when dropped (on whatever thread), and
/// the parser takes them for its next batch: a stream of multi-megabyte batches then reuses a
/// few buffers instead of faulting in (and having the kernel zero) fresh memory for every batch
/// (measured on `bench sync`: page zeroing was ~25 % of the backfill's CPU).
#[derive(Clone, Default)]
struct Recycler(Option<std::sync::Arc<std::sync::Mutex<Vec<BatchBuffers>>>>);

/// Buffers kept for reuse: batches in flight between a parser and its consumer are few.
const RECYCLED_MAX: usize = 6;

impl Recycler {
    fn take(&self) -> Option<BatchBuffers> {
        self.0.as_ref()?.lock().ok()?.pop()
    }

    fn give(&self, mut b: BatchBuffers) {
        let Some(pool) = &self.0 else { return };
        b.data.clear();
        b.field_ends.clear();
        b.row_ends.clear();
        if let Ok(mut pool) = pool.lock() {
            if pool.len() < RECYCLED_MAX {
                pool.push(b);
            }
        }
    }
}

// A batch's equality and debug output are its rows; where its buffers go afterwards is not part
// of it.
impl PartialEq for Recycler {
    fn eq(&self, _: &Recycler) -> bool {
        true
    }
}

impl Eq for Recycler {}

impl fmt::Debug for Recycler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Recycler")
    }
}

impl fmt::Debug for CsvParser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CsvParser")
            .field("row", &self.row_no)
            .field("offset", &self.offset)
            .field("buffered_rows", &self.row_ends.len())
            .finish()
    }
}

impl CsvParser {
    pub fn new(opts: CsvOptions) -> Self {
        let mut special = [false; 256];
        for b in [opts.delimiter, b'\n', b'\r', b'"', 0] {
            special[b as usize] = true;
        }
        CsvParser {
            opts,
            special,
            state: State::StartField,
            data: Vec::with_capacity(64 * 1024),
            field_ends: Vec::with_capacity(4096),
            row_ends: Vec::with_capacity(512),
            record_field_start: 0,
            record_data_start: 0,
            row_no: 1,
            batch_first_row: 1,
            offset: 0,
            quote_opened_at: 0,
            expected_fields: None,
            header: None,
            bom_matched: 0,
            bom_done: false,
            nul_stripped: 0,
            finished: false,
            recycler: Recycler(Some(Default::default())),
        }
    }

    /// Starts a new, independent input (e.g. the next result page), keeping the buffers' capacity.
    /// Rows not yet taken are discarded.
    pub fn reset(&mut self) {
        self.state = State::StartField;
        self.data.clear();
        self.field_ends.clear();
        self.row_ends.clear();
        self.record_field_start = 0;
        self.record_data_start = 0;
        self.row_no = 1;
        self.batch_first_row = 1;
        self.offset = 0;
        self.expected_fields = None;
        self.header = None;
        self.bom_matched = 0;
        self.bom_done = false;
        self.finished = false;
    }

    /// The header row, once it has been parsed (only with [`CsvOptions::has_header`]).
    pub fn header(&self) -> Option<&[String]> {
        self.header.as_deref()
    }

    /// Takes the header row out of the parser.
    pub fn take_header(&mut self) -> Option<Vec<String>> {
        self.header.take()
    }

    /// Number of completed rows waiting to be taken.
    pub fn completed_rows(&self) -> usize {
        self.row_ends.len()
    }

    /// Bytes buffered (completed rows plus the partial record).
    pub fn buffered_bytes(&self) -> usize {
        self.data.len()
    }

    /// NUL bytes dropped so far under [`NulPolicy::Strip`].
    pub fn nul_bytes_stripped(&self) -> u64 {
        self.nul_stripped
    }

    /// Bytes consumed so far.
    pub fn bytes_consumed(&self) -> u64 {
        self.offset
    }

    /// Parses one chunk of input. Chunks may split the input anywhere.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<(), CsvError> {
        if !self.bom_done {
            while self.bom_matched < 3 {
                let Some(&b) = chunk.first() else {
                    return Ok(());
                };
                if b == BOM[self.bom_matched] {
                    self.bom_matched += 1;
                    chunk = &chunk[1..];
                    self.offset += 1;
                } else {
                    break;
                }
            }
            self.bom_done = true;
            if self.bom_matched < 3 && self.bom_matched > 0 {
                // Not a BOM after all: parse the bytes we held back.
                let held = self.bom_matched;
                self.offset -= held as u64;
                self.process(&BOM[..held])?;
            }
        }
        self.process(chunk)
    }

    /// Ends the input: completes the last record (a final line end is optional) and checks that no
    /// quoted field is left open.
    pub fn finish(&mut self) -> Result<(), CsvError> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        if !self.bom_done {
            self.bom_done = true;
            let held = self.bom_matched;
            if held > 0 && held < 3 {
                self.offset -= held as u64;
                self.process(&BOM[..held])?;
            }
        }
        match self.state {
            State::Quoted => Err(CsvError::UnterminatedQuote {
                row: self.row_no,
                column: self.column(),
                opened_at: self.quote_opened_at,
            }),
            State::AfterCr => Ok(()),
            State::StartField
                if self.field_ends.len() == self.record_field_start
                    && self.data.len() == self.record_data_start =>
            {
                Ok(())
            }
            State::StartField | State::Unquoted | State::QuoteInQuoted => {
                self.end_field();
                self.end_record()
            }
        }
    }

    /// Takes every completed row as one batch, keeping any partial record for later input.
    /// Fails when a row's text is not valid UTF-8.
    pub fn take_batch(&mut self) -> Result<CsvRecordBatch, CsvError> {
        let rows = self.row_ends.len();
        let first_row = self.batch_first_row;
        let nfields = self.row_ends.last().copied().unwrap_or(0);
        let data_end = if nfields == 0 {
            0
        } else {
            self.field_ends[nfields - 1]
        };
        // Split off the partial record into fresh buffers.
        let tail_data = self.data[data_end..].to_vec();
        let tail_fields: Vec<usize> = self.field_ends[nfields..]
            .iter()
            .map(|e| e - data_end)
            .collect();
        self.data.truncate(data_end);
        self.field_ends.truncate(nfields);
        let next = self.recycler.take().unwrap_or_else(|| BatchBuffers {
            data: Vec::with_capacity(data_end.max(1024)),
            field_ends: Vec::with_capacity(nfields.max(64)),
            row_ends: Vec::with_capacity(rows.max(16)),
        });
        let mut data = std::mem::replace(&mut self.data, next.data);
        let field_ends = std::mem::replace(&mut self.field_ends, next.field_ends);
        let row_ends = std::mem::replace(&mut self.row_ends, next.row_ends);
        self.data.extend_from_slice(&tail_data);
        self.field_ends.extend_from_slice(&tail_fields);
        self.record_field_start -= nfields;
        self.record_data_start -= data_end;
        self.batch_first_row += rows as u64;

        data.truncate(data_end);
        let text = match String::from_utf8(data) {
            Ok(t) => t,
            Err(e) => {
                let bad = e.utf8_error().valid_up_to();
                let (row, column) = locate(&field_ends, &row_ends, bad);
                return Err(CsvError::InvalidUtf8 {
                    row: first_row + row as u64,
                    column,
                });
            }
        };
        // A field boundary inside a multi-byte character means two fields each hold half of it.
        for &end in &field_ends {
            if !text.is_char_boundary(end) {
                let (row, column) = locate(&field_ends, &row_ends, end);
                return Err(CsvError::InvalidUtf8 {
                    row: first_row + row as u64,
                    column,
                });
            }
        }
        Ok(CsvRecordBatch {
            text,
            field_ends,
            row_ends,
            first_row,
            recycler: self.recycler.clone(),
        })
    }

    fn column(&self) -> usize {
        self.field_ends.len() - self.record_field_start + 1
    }

    #[inline]
    fn end_field(&mut self) {
        self.field_ends.push(self.data.len());
    }

    fn end_record(&mut self) -> Result<(), CsvError> {
        let found = self.field_ends.len() - self.record_field_start;
        match self.expected_fields {
            None => self.expected_fields = Some(found),
            Some(expected) if expected != found => {
                return Err(CsvError::FieldCount {
                    row: self.row_no,
                    expected,
                    found,
                })
            }
            Some(_) => {}
        }
        if self.opts.has_header && self.header.is_none() && self.row_no == 1 {
            let mut header = Vec::with_capacity(found);
            let mut start = self.record_data_start;
            for &end in &self.field_ends[self.record_field_start..] {
                let bytes = &self.data[start..end];
                let s = std::str::from_utf8(bytes).map_err(|_| CsvError::InvalidUtf8 {
                    row: 1,
                    column: header.len() + 1,
                })?;
                header.push(s.to_string());
                start = end;
            }
            self.data.truncate(self.record_data_start);
            self.field_ends.truncate(self.record_field_start);
            self.header = Some(header);
            self.batch_first_row = 2;
        } else {
            self.row_ends.push(self.field_ends.len());
        }
        self.record_field_start = self.field_ends.len();
        self.record_data_start = self.data.len();
        self.row_no += 1;
        self.state = State::StartField;
        Ok(())
    }

    #[inline]
    fn check_size(&self) -> Result<(), CsvError> {
        if self.data.len() - self.record_data_start > self.opts.max_record_bytes {
            Err(CsvError::RecordTooLarge {
                row: self.row_no,
                limit: self.opts.max_record_bytes,
            })
        } else {
            Ok(())
        }
    }

    fn nul(&mut self, pos: u64) -> Result<(), CsvError> {
        match self.opts.nul {
            NulPolicy::Strip => {
                self.nul_stripped += 1;
                Ok(())
            }
            NulPolicy::Error => Err(CsvError::Nul {
                row: self.row_no,
                column: self.column(),
                offset: pos,
            }),
        }
    }

    fn process(&mut self, input: &[u8]) -> Result<(), CsvError> {
        let d = self.opts.delimiter;
        let n = input.len();
        let base = self.offset;
        let mut i = 0usize;
        while i < n {
            match self.state {
                State::StartField => {
                    let b = input[i];
                    if b == b'"' {
                        self.state = State::Quoted;
                        self.quote_opened_at = base + i as u64;
                        i += 1;
                    } else if b == d {
                        self.end_field();
                        i += 1;
                    } else if b == b'\n' {
                        self.end_field();
                        self.end_record()?;
                        i += 1;
                    } else if b == b'\r' {
                        self.end_field();
                        self.end_record()?;
                        self.state = State::AfterCr;
                        i += 1;
                    } else if b == 0 {
                        self.nul(base + i as u64)?;
                        i += 1;
                    } else {
                        self.state = State::Unquoted;
                    }
                }
                State::Unquoted => {
                    let start = i;
                    while i < n && !self.special[input[i] as usize] {
                        i += 1;
                    }
                    if i > start {
                        self.data.extend_from_slice(&input[start..i]);
                        self.check_size()?;
                    }
                    if i == n {
                        break;
                    }
                    let b = input[i];
                    if b == d {
                        self.end_field();
                        self.state = State::StartField;
                    } else if b == b'\n' {
                        self.end_field();
                        self.end_record()?;
                    } else if b == b'\r' {
                        self.end_field();
                        self.end_record()?;
                        self.state = State::AfterCr;
                    } else if b == b'"' {
                        return Err(CsvError::QuoteInUnquotedField {
                            row: self.row_no,
                            column: self.column(),
                            offset: base + i as u64,
                        });
                    } else {
                        // NUL
                        self.nul(base + i as u64)?;
                    }
                    i += 1;
                }
                State::Quoted => match memchr::memchr2(b'"', 0, &input[i..]) {
                    None => {
                        self.data.extend_from_slice(&input[i..]);
                        self.check_size()?;
                        i = n;
                    }
                    Some(p) => {
                        self.data.extend_from_slice(&input[i..i + p]);
                        self.check_size()?;
                        i += p;
                        if input[i] == b'"' {
                            self.state = State::QuoteInQuoted;
                        } else {
                            self.nul(base + i as u64)?;
                        }
                        i += 1;
                    }
                },
                State::QuoteInQuoted => {
                    let b = input[i];
                    if b == b'"' {
                        self.data.push(b'"');
                        self.check_size()?;
                        self.state = State::Quoted;
                    } else if b == d {
                        self.end_field();
                        self.state = State::StartField;
                    } else if b == b'\n' {
                        self.end_field();
                        self.end_record()?;
                    } else if b == b'\r' {
                        self.end_field();
                        self.end_record()?;
                        self.state = State::AfterCr;
                    } else if b == 0 && self.opts.nul == NulPolicy::Strip {
                        self.nul_stripped += 1;
                    } else {
                        return Err(CsvError::AfterQuote {
                            row: self.row_no,
                            column: self.column(),
                            offset: base + i as u64,
                            found: char::from(b),
                        });
                    }
                    i += 1;
                }
                State::AfterCr => {
                    if input[i] == b'\n' {
                        i += 1;
                    }
                    self.state = State::StartField;
                }
            }
        }
        self.offset = base + n as u64;
        Ok(())
    }
}

/// Finds (row index in batch, 1-based column) of a byte position in a batch's data.
fn locate(field_ends: &[usize], row_ends: &[usize], pos: usize) -> (usize, usize) {
    // The field holding byte `pos` is the first one ending after it.
    let field = field_ends.partition_point(|&e| e <= pos);
    let row = row_ends.partition_point(|&r| r <= field);
    let row_start_field = if row == 0 { 0 } else { row_ends[row - 1] };
    (row, field.saturating_sub(row_start_field) + 1)
}

/// A batch of parsed rows: one text buffer plus field offsets (no allocation per field).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CsvRecordBatch {
    text: String,
    field_ends: Vec<usize>,
    row_ends: Vec<usize>,
    first_row: u64,
    recycler: Recycler,
}

impl Drop for CsvRecordBatch {
    fn drop(&mut self) {
        if self.recycler.0.is_some() {
            self.recycler.give(BatchBuffers {
                data: std::mem::take(&mut self.text).into_bytes(),
                field_ends: std::mem::take(&mut self.field_ends),
                row_ends: std::mem::take(&mut self.row_ends),
            });
        }
    }
}

impl CsvRecordBatch {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.row_ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.row_ends.is_empty()
    }

    /// 1-based row number of the first row in its input (header = row 1).
    pub fn first_row_number(&self) -> u64 {
        self.first_row
    }

    /// Total bytes of field text held.
    pub fn text_bytes(&self) -> usize {
        self.text.len()
    }

    /// Row `i` of this batch.
    pub fn row(&self, i: usize) -> Option<CsvRow<'_>> {
        let end = *self.row_ends.get(i)?;
        let start_field = if i == 0 { 0 } else { self.row_ends[i - 1] };
        let start = if start_field == 0 {
            0
        } else {
            self.field_ends[start_field - 1]
        };
        Some(CsvRow {
            text: &self.text,
            ends: &self.field_ends[start_field..end],
            start,
        })
    }

    /// Iterates over the rows.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = CsvRow<'_>> + '_ {
        (0..self.len()).map(move |i| self.row(i).unwrap_or_default())
    }

    /// Copies the rows into owned vectors.
    pub fn to_vecs(&self) -> Vec<Vec<String>> {
        self.iter().map(|r| r.to_vec()).collect()
    }
}

/// One row of a [`CsvRecordBatch`], borrowed.
#[derive(Debug, Clone, Copy, Default)]
pub struct CsvRow<'a> {
    text: &'a str,
    ends: &'a [usize],
    start: usize,
}

impl<'a> CsvRow<'a> {
    /// Number of fields.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Field `j` (0-based).
    pub fn get(&self, j: usize) -> Option<&'a str> {
        let end = *self.ends.get(j)?;
        let start = if j == 0 { self.start } else { self.ends[j - 1] };
        self.text.get(start..end)
    }

    /// Iterates over the fields.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &'a str> + '_ {
        (0..self.len()).map(move |j| self.get(j).unwrap_or(""))
    }

    /// Copies the fields into owned strings.
    pub fn to_vec(&self) -> Vec<String> {
        self.iter().map(str::to_string).collect()
    }
}

/// Parses a whole CSV input into rows (the first row included), checking that every row has as
/// many fields as the first. NUL bytes are an error. Pure; meant for fuzzing and tests.
pub fn parse_all(bytes: &[u8], delimiter: u8) -> Result<Vec<Vec<String>>, CsvError> {
    let mut p = CsvParser::new(CsvOptions {
        delimiter,
        nul: NulPolicy::Error,
        has_header: false,
        ..CsvOptions::default()
    });
    p.feed(bytes)?;
    p.finish()?;
    Ok(p.take_batch()?.to_vecs())
}

/// Splits a CSV document (header + rows) into parts of at most `max_bytes` each, on record
/// boundaries, repeating the header at the top of each part. Bulk 2.0 accepts at most 150 MB per
/// upload (100 MB raw recommended) and one upload per job, so each part becomes its own job.
/// Fails when the input is malformed or a single record does not fit in a part.
pub fn split_for_upload(
    data: &Bytes,
    delimiter: u8,
    max_bytes: usize,
) -> Result<Vec<Bytes>, CsvError> {
    // Find record boundaries (byte offsets just after each record's line end).
    let mut p = CsvParser::new(CsvOptions {
        delimiter,
        nul: NulPolicy::Error,
        has_header: false,
        max_record_bytes: usize::MAX,
    });
    let mut boundaries: Vec<usize> = Vec::new();
    let mut rows_seen = 0usize;
    // Feed byte runs up to each line end so that record ends can be mapped to offsets.
    let mut pos = 0usize;
    while pos < data.len() {
        let next = memchr::memchr2(b'\n', b'\r', &data[pos..]).map_or(data.len(), |q| pos + q + 1);
        // Swallow the \n of a CRLF together with the \r.
        let next = if next < data.len() && data[next - 1] == b'\r' && data[next] == b'\n' {
            next + 1
        } else {
            next
        };
        p.feed(&data[pos..next])?;
        let done = p.completed_rows();
        if done > rows_seen {
            rows_seen = done;
            boundaries.push(next);
        }
        if done > 4096 {
            p.take_batch()?;
            rows_seen = 0;
        }
        pos = next;
    }
    p.finish()?;
    if p.completed_rows() > rows_seen {
        boundaries.push(data.len());
    }
    let Some(&header_end) = boundaries.first() else {
        return Err(CsvError::MissingHeader);
    };
    if data.len() <= max_bytes {
        return Ok(vec![data.clone()]);
    }
    let header = &data[..header_end];
    let room = max_bytes.saturating_sub(header.len());
    let mut parts = Vec::new();
    let mut start = header_end;
    let mut prev = header_end;
    for (idx, &b) in boundaries.iter().enumerate().skip(1) {
        if b - prev > room {
            return Err(CsvError::RecordTooLarge {
                row: idx as u64 + 1,
                limit: room,
            });
        }
        if b - start > room {
            parts.push(join(header, &data[start..prev]));
            start = prev;
        }
        prev = b;
    }
    if prev > start {
        parts.push(join(header, &data[start..prev]));
    }
    Ok(parts)
}

fn join(header: &[u8], body: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(header.len() + body.len() + 1);
    v.extend_from_slice(header);
    if !matches!(header.last(), Some(b'\n' | b'\r')) {
        v.push(b'\n');
    }
    v.extend_from_slice(body);
    Bytes::from(v)
}

/// One cell to write for Bulk ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkValue<'a> {
    /// A value. An empty string is indistinguishable from [`BulkValue::Unchanged`] in Bulk CSV.
    Text(&'a str),
    /// Set the field to null (`#N/A`).
    Null,
    /// Leave the field as it is (empty cell).
    Unchanged,
}

impl<'a> From<&'a str> for BulkValue<'a> {
    fn from(s: &'a str) -> Self {
        BulkValue::Text(s)
    }
}

impl<'a> From<Option<&'a str>> for BulkValue<'a> {
    /// `None` means null (`#N/A`), as a record's field value would.
    fn from(s: Option<&'a str>) -> Self {
        s.map_or(BulkValue::Null, BulkValue::Text)
    }
}

/// Renders rows for a Bulk 2.0 ingest upload.
#[derive(Debug, Clone)]
pub struct BulkCsvWriter {
    delimiter: u8,
    line_ending: &'static [u8],
    buf: Vec<u8>,
    columns: Option<usize>,
    rows: usize,
}

impl BulkCsvWriter {
    /// A writer with the given delimiter byte and line ending (`b"\n"` or `b"\r\n"`).
    pub fn new(delimiter: u8, crlf: bool) -> Self {
        BulkCsvWriter {
            delimiter,
            line_ending: if crlf { b"\r\n" } else { b"\n" },
            buf: Vec::new(),
            columns: None,
            rows: 0,
        }
    }

    /// Writes the header row (field API names, e.g. `Name`, `Owner.Email`).
    pub fn write_header<I, S>(&mut self, names: I) -> Result<(), CsvError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut n = 0;
        for (j, name) in names.into_iter().enumerate() {
            let name = name.as_ref();
            if name.is_empty() {
                return Err(CsvError::Write {
                    column: j + 1,
                    reason: "empty column name",
                });
            }
            if j > 0 {
                self.buf.push(self.delimiter);
            }
            self.push_text(j, name)?;
            n += 1;
        }
        self.buf.extend_from_slice(self.line_ending);
        self.columns = Some(n);
        Ok(())
    }

    /// Writes one row; it must have as many cells as the header.
    pub fn write_record<'v, I>(&mut self, values: I) -> Result<(), CsvError>
    where
        I: IntoIterator<Item = BulkValue<'v>>,
    {
        let Some(expected) = self.columns else {
            return Err(CsvError::MissingHeader);
        };
        let mark = self.buf.len();
        let mut n = 0;
        for (j, v) in values.into_iter().enumerate() {
            if j > 0 {
                self.buf.push(self.delimiter);
            }
            let res = match v {
                BulkValue::Text(s) => self.push_text(j, s),
                BulkValue::Null => {
                    self.buf.extend_from_slice(b"#N/A");
                    Ok(())
                }
                BulkValue::Unchanged => Ok(()),
            };
            if let Err(e) = res {
                self.buf.truncate(mark);
                return Err(e);
            }
            n += 1;
        }
        if n != expected {
            self.buf.truncate(mark);
            return Err(CsvError::FieldCount {
                row: self.rows as u64 + 2,
                expected,
                found: n,
            });
        }
        self.buf.extend_from_slice(self.line_ending);
        self.rows += 1;
        Ok(())
    }

    fn push_text(&mut self, j: usize, s: &str) -> Result<(), CsvError> {
        let b = s.as_bytes();
        if memchr::memchr(0, b).is_some() {
            return Err(CsvError::Write {
                column: j + 1,
                reason: "value contains a NUL byte",
            });
        }
        let needs_quotes = b
            .iter()
            .any(|&c| c == self.delimiter || c == b'"' || c == b'\n' || c == b'\r')
            || b.first().is_some_and(|c| c.is_ascii_whitespace())
            || b.last().is_some_and(|c| c.is_ascii_whitespace());
        if needs_quotes {
            self.buf.push(b'"');
            for &c in b {
                if c == b'"' {
                    self.buf.push(b'"');
                }
                self.buf.push(c);
            }
            self.buf.push(b'"');
        } else {
            self.buf.extend_from_slice(b);
        }
        Ok(())
    }

    /// Data rows written (header excluded).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes written so far, header included.
    pub fn len_bytes(&self) -> usize {
        self.buf.len()
    }

    /// The rendered CSV.
    pub fn into_bytes(self) -> Bytes {
        Bytes::from(self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rows(v: &[&[&str]]) -> Vec<Vec<String>> {
        v.iter()
            .map(|r| r.iter().map(|s| s.to_string()).collect())
            .collect()
    }

    #[test]
    fn basic_quoting_and_line_ends() {
        let input = b"Id,Name,Desc\r\n001,\"Acme, Inc.\",\"line1\nline2\"\r\n002,\"say \"\"hi\"\"\",\n003,,\r\n";
        let got = parse_all(input, b',').unwrap();
        assert_eq!(
            got,
            rows(&[
                &["Id", "Name", "Desc"],
                &["001", "Acme, Inc.", "line1\nline2"],
                &["002", "say \"hi\"", ""],
                &["003", "", ""],
            ])
        );
    }

    #[test]
    fn no_trailing_newline_and_lone_cr() {
        assert_eq!(
            parse_all(b"a,b\r1,2", b',').unwrap(),
            rows(&[&["a", "b"], &["1", "2"]])
        );
        assert_eq!(parse_all(b"", b',').unwrap(), Vec::<Vec<String>>::new());
        assert_eq!(parse_all(b"x\n\n", b',').unwrap(), rows(&[&["x"], &[""]]));
    }

    #[test]
    fn bom_is_stripped_even_when_split() {
        let input = b"\xEF\xBB\xBFName\nAcme\n";
        for split in 0..input.len() {
            let mut p = CsvParser::new(CsvOptions::default());
            p.feed(&input[..split]).unwrap();
            p.feed(&input[split..]).unwrap();
            p.finish().unwrap();
            assert_eq!(p.header().unwrap(), &["Name".to_string()]);
            assert_eq!(p.take_batch().unwrap().to_vecs(), rows(&[&["Acme"]]));
        }
        // A partial BOM is data.
        let got = parse_all(b"\xEFa\n", b',');
        assert!(matches!(
            got,
            Err(CsvError::InvalidUtf8 { row: 1, column: 1 })
        ));
    }

    #[test]
    fn unterminated_quote_names_row_and_column() {
        let err = parse_all(b"a,b\n1,\"open\n2,3\n", b',').unwrap_err();
        assert_eq!(
            err,
            CsvError::UnterminatedQuote {
                row: 2,
                column: 2,
                opened_at: 6
            }
        );
        assert!(err.to_string().contains("row 2, column 2"), "{err}");
    }

    #[test]
    fn garbage_after_quote_and_quote_in_field() {
        let err = parse_all(b"a,b\n\"x\"y,2\n", b',').unwrap_err();
        assert!(
            matches!(
                err,
                CsvError::AfterQuote {
                    row: 2,
                    column: 1,
                    found: 'y',
                    ..
                }
            ),
            "{err}"
        );
        let err = parse_all(b"a,b\n1,x\"y\n", b',').unwrap_err();
        assert!(
            matches!(
                err,
                CsvError::QuoteInUnquotedField {
                    row: 2,
                    column: 2,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn nul_bytes_error_or_strip() {
        let err = parse_all(b"a,b\n1,x\0y\n", b',').unwrap_err();
        assert_eq!(
            err,
            CsvError::Nul {
                row: 2,
                column: 2,
                offset: 7
            }
        );
        let mut p = CsvParser::new(CsvOptions::default());
        p.feed(b"a,b\n1,x\0y\n\"q\0\",\"z\"\0\n").unwrap();
        p.finish().unwrap();
        assert_eq!(p.nul_bytes_stripped(), 3);
        assert_eq!(
            p.take_batch().unwrap().to_vecs(),
            rows(&[&["1", "xy"], &["q", "z"]])
        );
    }

    #[test]
    fn mismatched_column_count() {
        let err = parse_all(b"a,b,c\n1,2,3\n4,5\n", b',').unwrap_err();
        assert_eq!(
            err,
            CsvError::FieldCount {
                row: 3,
                expected: 3,
                found: 2
            }
        );
        assert_eq!(err.to_string(), "row 3 has 2 fields but the header has 3");
    }

    #[test]
    fn huge_field_is_bounded() {
        let mut p = CsvParser::new(CsvOptions {
            max_record_bytes: 1000,
            ..CsvOptions::default()
        });
        p.feed(b"a\n").unwrap();
        let chunk = vec![b'x'; 600];
        p.feed(&chunk).unwrap();
        let err = p.feed(&chunk).unwrap_err();
        assert_eq!(
            err,
            CsvError::RecordTooLarge {
                row: 2,
                limit: 1000
            }
        );
        // Large but within the limit works.
        let big = "y".repeat(5 * 1024 * 1024);
        let input = format!("a,b\n\"{big}\",1\n");
        let got = parse_all(input.as_bytes(), b',').unwrap();
        assert_eq!(got[1][0].len(), big.len());
    }

    #[test]
    fn invalid_utf8_is_located() {
        let err = parse_all(b"a,b\n1,2\n3,\xff\n", b',').unwrap_err();
        assert_eq!(err, CsvError::InvalidUtf8 { row: 3, column: 2 });
        // Two halves of a character in adjacent fields.
        let err = parse_all(b"a,b\n\xC3,\xA9\n", b',').unwrap_err();
        assert!(matches!(err, CsvError::InvalidUtf8 { row: 2, .. }), "{err}");
    }

    #[test]
    fn other_delimiters() {
        assert_eq!(
            parse_all(b"a|b\n\"x|y\"|z\n", b'|').unwrap(),
            rows(&[&["a", "b"], &["x|y", "z"]])
        );
        assert_eq!(
            parse_all(b"a\tb\nx,y\tz\n", b'\t').unwrap(),
            rows(&[&["a", "b"], &["x,y", "z"]])
        );
    }

    #[test]
    fn batches_keep_partial_records() {
        let mut p = CsvParser::new(CsvOptions::default());
        p.feed(b"Id,Name\n1,Ac").unwrap();
        let b1 = p.take_batch().unwrap();
        assert!(b1.is_empty());
        p.feed(b"me\n2,\"B").unwrap();
        let b2 = p.take_batch().unwrap();
        assert_eq!(b2.to_vecs(), rows(&[&["1", "Acme"]]));
        assert_eq!(b2.first_row_number(), 2);
        p.feed(b"\"\"x\"\n").unwrap();
        p.finish().unwrap();
        let b3 = p.take_batch().unwrap();
        assert_eq!(b3.to_vecs(), rows(&[&["2", "B\"x"]]));
        assert_eq!(b3.first_row_number(), 3);
        let row = b3.row(0).unwrap();
        assert_eq!(row.get(1), Some("B\"x"));
        assert_eq!(row.get(2), None);
    }

    #[test]
    fn writer_round_trips() {
        let mut w = BulkCsvWriter::new(b',', false);
        w.write_header(["Id", "Name", "Description", "Phone"])
            .unwrap();
        w.write_record([
            BulkValue::Text("001"),
            BulkValue::Text("Acme, \"Inc\""),
            BulkValue::Text("two\nlines"),
            BulkValue::Null,
        ])
        .unwrap();
        w.write_record([
            BulkValue::Text("002"),
            BulkValue::Text(" padded "),
            BulkValue::Unchanged,
            BulkValue::from(Some("555")),
        ])
        .unwrap();
        assert!(w.write_record([BulkValue::Text("x")]).is_err());
        assert!(matches!(
            w.write_record(["a", "b\0", "c", "d"].map(BulkValue::Text)),
            Err(CsvError::Write { column: 2, .. })
        ));
        assert_eq!(w.rows(), 2);
        let bytes = w.into_bytes();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            "Id,Name,Description,Phone\n001,\"Acme, \"\"Inc\"\"\",\"two\nlines\",#N/A\n002,\" padded \",,555\n"
        );
        let back = parse_all(&bytes, b',').unwrap();
        assert_eq!(back[1][1], "Acme, \"Inc\"");
        assert_eq!(back[2][1], " padded ");
    }

    #[test]
    fn split_repeats_header_on_record_boundaries() {
        let mut w = BulkCsvWriter::new(b',', true);
        w.write_header(["Name", "Description"]).unwrap();
        for i in 0..100 {
            let d = format!("line {i}\r\nmore");
            w.write_record([BulkValue::Text(&format!("n{i}")), BulkValue::Text(&d)])
                .unwrap();
        }
        let data = w.into_bytes();
        let parts = split_for_upload(&data, b',', 300).unwrap();
        assert!(parts.len() > 5);
        let mut all = Vec::new();
        for part in &parts {
            assert!(part.len() <= 300, "part of {} bytes", part.len());
            let rows = parse_all(part, b',').unwrap();
            assert_eq!(rows[0], vec!["Name", "Description"]);
            all.extend(rows.into_iter().skip(1));
        }
        assert_eq!(all.len(), 100);
        assert_eq!(all[99][1], "line 99\r\nmore");
        // Fits in one part: returned as is.
        assert_eq!(
            split_for_upload(&data, b',', usize::MAX).unwrap(),
            vec![data.clone()]
        );
        // A record larger than a part.
        let r = split_for_upload(&data, b',', 30);
        assert!(matches!(r, Err(CsvError::RecordTooLarge { .. })), "{r:?}");
        assert_eq!(
            split_for_upload(&Bytes::new(), b',', 10),
            Err(CsvError::MissingHeader)
        );
    }

    type HeaderAndRows = (Option<Vec<String>>, Vec<Vec<String>>);

    fn chunked(input: &[u8], cuts: &[usize]) -> Result<HeaderAndRows, CsvError> {
        let mut p = CsvParser::new(CsvOptions::default());
        let mut out = Vec::new();
        let mut prev = 0;
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        cuts.sort_unstable();
        for c in cuts {
            p.feed(&input[prev..c])?;
            out.extend(p.take_batch()?.to_vecs());
            prev = c;
        }
        p.feed(&input[prev..])?;
        p.finish()?;
        out.extend(p.take_batch()?.to_vecs());
        Ok((p.take_header(), out))
    }

    #[test]
    fn every_single_split_point_gives_same_rows() {
        let input =
            "\u{feff}Id,Name,Note\r\n001,\"Ac\"\"me\",\"a\r\nb\"\r\n002,Zoë,\r\n003,\"\",x\n"
                .as_bytes();
        let whole = chunked(input, &[]).unwrap();
        assert_eq!(whole.1.len(), 3);
        for i in 0..=input.len() {
            assert_eq!(chunked(input, &[i]).unwrap(), whole, "split at {i}");
        }
    }

    fn cell() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9 ]{0,8}",
            "[a-z,\"\r\n é]{0,8}",
            Just(String::new()),
            Just("#N/A".to_string()),
        ]
    }

    proptest! {
        #[test]
        fn any_chunking_gives_same_rows(
            table in (1usize..5).prop_flat_map(|w| proptest::collection::vec(proptest::collection::vec(cell(), w), 1..12)),
            cuts in proptest::collection::vec(0usize..10_000, 0..8),
            crlf in any::<bool>(),
        ) {
            let mut w = BulkCsvWriter::new(b',', crlf);
            let header: Vec<String> = (0..table[0].len()).map(|i| format!("c{i}")).collect();
            w.write_header(&header).unwrap();
            for r in &table {
                w.write_record(r.iter().map(|s| BulkValue::Text(s))).unwrap();
            }
            let bytes = w.into_bytes();
            let (h, got) = chunked(&bytes, &cuts).unwrap();
            prop_assert_eq!(h.unwrap(), header);
            prop_assert_eq!(&got, &table);
            // Same as the one-shot parser.
            let all = parse_all(&bytes, b',').unwrap();
            prop_assert_eq!(&all[1..], &table[..]);
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_chunking_agrees(
            input in proptest::collection::vec(prop_oneof![Just(b'"'), Just(b','), Just(b'\n'), Just(b'\r'), Just(0u8), Just(0xC3u8), Just(0xA9u8), any::<u8>()], 0..64),
            cuts in proptest::collection::vec(0usize..100, 0..5),
        ) {
            let a = chunked(&input, &[]);
            let b = chunked(&input, &cuts);
            // Errors may be found in a different batch, but success and rows must agree.
            prop_assert_eq!(a.is_ok(), b.is_ok());
            if let (Ok(a), Ok(b)) = (a, b) {
                prop_assert_eq!(a, b);
            }
            let _ = parse_all(&input, b',');
        }
    }
}
