//! A strict RFC-4180 reader for Bulk API 2.0 upload data. It accepts any of the six Bulk column
//! delimiters, both `LF` and `CRLF` line endings, quoted fields with `""` escapes and embedded
//! delimiters or newlines. It never panics on input: a malformed row (text after a closing
//! quote, a bare quote in an unquoted field) yields a row error and reading resumes at the next
//! line; an unterminated quote yields one final error that covers the rest of the data. Every
//! record carries its 1-based line number and the byte range of its original text, so results
//! can echo the row exactly as the client sent it.

use std::borrow::Cow;
use std::ops::Range;

/// One cell as read: borrowed from the input unless it needed `""` unescaping.
pub type Cell<'a> = Cow<'a, [u8]>;

/// Why a record could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// A closing quote followed by something other than a delimiter or a line end.
    TextAfterQuote { column: usize },
    /// A `"` inside a field that did not start with a quote.
    BareQuote { column: usize },
    /// A quoted field with no closing quote; the reader consumed the rest of the data.
    UnterminatedQuote { column: usize },
}

impl RecordError {
    /// A sentence naming the (1-based) column and the problem.
    pub fn describe(&self) -> String {
        match self {
            RecordError::TextAfterQuote { column } => format!(
                "column {column}: text after the closing quote of a quoted value (a quoted value must be followed by the delimiter or the line end; spaces count)"
            ),
            RecordError::BareQuote { column } => format!(
                "column {column}: a double quote inside an unquoted value; quote the whole value and escape the quote as \"\""
            ),
            RecordError::UnterminatedQuote { column } => format!(
                "column {column}: a quoted value is never closed; the rest of the upload from this row on could not be read"
            ),
        }
    }
}

/// One record read from the data.
#[derive(Debug)]
pub struct Record<'a> {
    /// 1-based line number where the record starts.
    pub line: usize,
    /// Byte range of the record's text, without its line ending.
    pub range: Range<usize>,
    /// The cells read (all of them when `error` is `None`, the ones before the error otherwise).
    pub cells: Vec<Cell<'a>>,
    /// How many cells the record has (may exceed `cells.len()` when capped).
    pub cell_count: usize,
    pub error: Option<RecordError>,
}

/// Reads records one by one from `data`.
pub struct CsvReader<'a> {
    data: &'a [u8],
    pos: usize,
    line: usize,
    delimiter: u8,
    max_cells: usize,
}

impl<'a> CsvReader<'a> {
    /// A reader over `data` (a UTF-8 BOM at the start is skipped). At most `max_cells` cells of a
    /// record are kept; the rest are counted only, so hostile rows cannot exhaust memory.
    pub fn new(data: &'a [u8], delimiter: u8, max_cells: usize) -> CsvReader<'a> {
        let pos = if data.starts_with(b"\xEF\xBB\xBF") {
            3
        } else {
            0
        };
        CsvReader {
            data,
            pos,
            line: 1,
            delimiter,
            max_cells,
        }
    }

    /// Changes how many cells of a record are kept.
    pub fn set_max_cells(&mut self, max_cells: usize) {
        self.max_cells = max_cells;
    }

    /// Byte offset of the next unread byte.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Skips empty lines. Returns false at the end of the data.
    fn skip_blank_lines(&mut self) -> bool {
        loop {
            match self.data.get(self.pos) {
                None => return false,
                Some(b'\n') => {
                    self.pos += 1;
                    self.line += 1;
                }
                Some(b'\r') if self.data.get(self.pos + 1) == Some(&b'\n') => {
                    self.pos += 2;
                    self.line += 1;
                }
                Some(_) => return true,
            }
        }
    }

    /// Consumes up to and including the next line end (used to resynchronise after an error).
    fn skip_to_line_end(&mut self) -> usize {
        let d = self.data;
        let mut i = self.pos;
        while i < d.len() && d[i] != b'\n' {
            i += 1;
        }
        let end = if i > self.pos && d.get(i - 1) == Some(&b'\r') && i < d.len() {
            i - 1
        } else {
            i
        };
        self.pos = (i + 1).min(d.len());
        if i < d.len() {
            self.line += 1;
        }
        end
    }

    /// The next record, or `None` at the end of the data.
    pub fn next_record(&mut self) -> Option<Record<'a>> {
        if !self.skip_blank_lines() {
            return None;
        }
        let d = self.data;
        let start = self.pos;
        let start_line = self.line;
        let mut cells: Vec<Cell<'a>> = Vec::new();
        let mut count = 0usize;
        let delim = self.delimiter;
        let mut i = self.pos;
        loop {
            let column = count + 1;
            // One field starting at i.
            if d.get(i) == Some(&b'"') {
                let content_start = i + 1;
                let mut j = content_start;
                let mut escaped = false;
                let mut newlines = 0usize;
                let close = loop {
                    match d.get(j) {
                        None => break None,
                        Some(b'"') => {
                            if d.get(j + 1) == Some(&b'"') {
                                escaped = true;
                                j += 2;
                            } else {
                                break Some(j);
                            }
                        }
                        Some(b'\n') => {
                            newlines += 1;
                            j += 1;
                        }
                        Some(_) => j += 1,
                    }
                };
                let Some(close) = close else {
                    self.pos = d.len();
                    self.line += newlines;
                    return Some(Record {
                        line: start_line,
                        range: start..d.len(),
                        cells,
                        cell_count: count + 1,
                        error: Some(RecordError::UnterminatedQuote { column }),
                    });
                };
                self.line += newlines;
                let raw = &d[content_start..close];
                count += 1;
                if cells.len() < self.max_cells {
                    cells.push(if escaped {
                        Cow::Owned(unescape(raw))
                    } else {
                        Cow::Borrowed(raw)
                    });
                }
                let after = close + 1;
                match d.get(after) {
                    Some(&c) if c == delim => {
                        i = after + 1;
                        continue;
                    }
                    None => {
                        self.pos = d.len();
                        return Some(self.finish(start, start_line, after, cells, count));
                    }
                    Some(b'\n') => {
                        self.pos = after + 1;
                        self.line += 1;
                        return Some(self.finish(start, start_line, after, cells, count));
                    }
                    Some(b'\r') if d.get(after + 1) == Some(&b'\n') => {
                        self.pos = after + 2;
                        self.line += 1;
                        return Some(self.finish(start, start_line, after, cells, count));
                    }
                    Some(_) => {
                        self.pos = after;
                        let end = self.skip_to_line_end();
                        return Some(Record {
                            line: start_line,
                            range: start..end,
                            cells,
                            cell_count: count,
                            error: Some(RecordError::TextAfterQuote { column }),
                        });
                    }
                }
            }
            // Unquoted field.
            let mut j = i;
            let mut bare_quote = false;
            while j < d.len() {
                let c = d[j];
                if c == delim || c == b'\n' {
                    break;
                }
                if c == b'"' {
                    bare_quote = true;
                }
                j += 1;
            }
            let mut field_end = j;
            let at_line_end = j >= d.len() || d[j] == b'\n';
            if at_line_end && field_end > i && d[field_end - 1] == b'\r' {
                field_end -= 1;
            }
            if bare_quote {
                self.pos = i;
                let end = self.skip_to_line_end();
                return Some(Record {
                    line: start_line,
                    range: start..end,
                    cells,
                    cell_count: count + 1,
                    error: Some(RecordError::BareQuote { column }),
                });
            }
            count += 1;
            if cells.len() < self.max_cells {
                cells.push(Cow::Borrowed(&d[i..field_end]));
            }
            if j >= d.len() {
                self.pos = d.len();
                return Some(self.finish(start, start_line, field_end, cells, count));
            }
            if d[j] == b'\n' {
                self.pos = j + 1;
                self.line += 1;
                return Some(self.finish(start, start_line, field_end, cells, count));
            }
            i = j + 1; // delimiter
        }
    }

    fn finish(
        &self,
        start: usize,
        line: usize,
        end: usize,
        cells: Vec<Cell<'a>>,
        count: usize,
    ) -> Record<'a> {
        Record {
            line,
            range: start..end,
            cells,
            cell_count: count,
            error: None,
        }
    }
}

fn unescape(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut k = 0;
    while k < raw.len() {
        out.push(raw[k]);
        if raw[k] == b'"' && raw.get(k + 1) == Some(&b'"') {
            k += 2;
        } else {
            k += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(data: &str, delim: u8) -> Vec<(Vec<String>, Option<RecordError>, usize)> {
        let mut r = CsvReader::new(data.as_bytes(), delim, 100);
        let mut out = Vec::new();
        while let Some(rec) = r.next_record() {
            let cells = rec
                .cells
                .iter()
                .map(|c| String::from_utf8(c.to_vec()).unwrap())
                .collect();
            out.push((cells, rec.error, rec.line));
        }
        out
    }

    #[test]
    fn reads_quoted_fields_with_delimiters_newlines_and_quotes() {
        let rows = all(
            "a,b,c\n\"x,1\",\"say \"\"hi\"\"\",\"two\r\nlines\"\r\nlast,,\n",
            b',',
        );
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].0, vec!["x,1", "say \"hi\"", "two\r\nlines"]);
        assert_eq!(rows[2].0, vec!["last", "", ""]);
        assert_eq!(rows[2].2, 4);
    }

    #[test]
    fn other_delimiters_and_crlf() {
        let rows = all("a|b\r\n1|\"2|3\"\r\n", b'|');
        assert_eq!(rows[0].0, vec!["a", "b"]);
        assert_eq!(rows[1].0, vec!["1", "2|3"]);
        let rows = all("a\tb\n1\t2", b'\t');
        assert_eq!(rows[1].0, vec!["1", "2"]);
    }

    #[test]
    fn bom_and_blank_lines_are_skipped() {
        let rows = all("\u{FEFF}Name\n\nAcme\n\r\n", b',');
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].0, vec!["Name"]);
        assert_eq!(rows[1].0, vec!["Acme"]);
    }

    #[test]
    fn malformed_rows_resynchronise() {
        let rows = all("a,b\n\"x\" ,y\nok,1\nbad\"q,2\nfine,3\n", b',');
        assert_eq!(rows.len(), 5);
        assert_eq!(rows[1].1, Some(RecordError::TextAfterQuote { column: 1 }));
        assert_eq!(rows[2].0, vec!["ok", "1"]);
        assert_eq!(rows[3].1, Some(RecordError::BareQuote { column: 1 }));
        assert_eq!(rows[4].0, vec!["fine", "3"]);
        assert_eq!(rows[4].2, 5);
    }

    #[test]
    fn unterminated_quote_consumes_the_rest() {
        let rows = all("a,b\n1,\"open\n2,3\n", b',');
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[1].1,
            Some(RecordError::UnterminatedQuote { column: 2 })
        );
        assert_eq!(rows[1].0, vec!["1"]);
    }

    #[test]
    fn cells_are_capped_but_counted() {
        let data = ",".repeat(10_000);
        let mut r = CsvReader::new(data.as_bytes(), b',', 5);
        let rec = r.next_record().unwrap();
        assert_eq!(rec.cells.len(), 5);
        assert_eq!(rec.cell_count, 10_001);
    }

    #[test]
    fn ranges_cover_the_original_text() {
        let data = "a,b\r\n\"1\",2\r\n";
        let mut r = CsvReader::new(data.as_bytes(), b',', 10);
        let h = r.next_record().unwrap();
        assert_eq!(&data[h.range], "a,b");
        let rec = r.next_record().unwrap();
        assert_eq!(&data[rec.range], "\"1\",2");
    }
}
