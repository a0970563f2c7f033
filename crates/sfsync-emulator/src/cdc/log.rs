//! Append-only event log file (`<data_dir>/cdc/events.log`) and schema store
//! (`<data_dir>/cdc/schemas/<id>.json`).
//!
//! Guarantee: every appended event is written in one piece, in replay-id order; on load a torn
//! last record (crash mid-write) is ignored and later appends start after the last whole record.
//! Nothing is ever rewritten in place.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;

use super::bus::{EventKind, StoredEvent};

pub struct LogFile {
    path: PathBuf,
    out: BufWriter<File>,
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u16).to_be_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if b.len() < n {
        return None;
    }
    let (h, t) = b.split_at(n);
    *b = t;
    Some(h)
}

fn take_str(b: &mut &[u8]) -> Option<String> {
    let n = u16::from_be_bytes(take(b, 2)?.try_into().ok()?) as usize;
    String::from_utf8(take(b, n)?.to_vec()).ok()
}

fn decode(mut b: &[u8]) -> Option<StoredEvent> {
    let b = &mut b;
    let replay_id = u64::from_be_bytes(take(b, 8)?.try_into().ok()?);
    let time_ms = i64::from_be_bytes(take(b, 8)?.try_into().ok()?);
    let kind = match take(b, 1)?[0] {
        0 => EventKind::Change,
        _ => EventKind::Platform,
    };
    let entity = take_str(b)?;
    let schema_id = take_str(b)?;
    let event_id = take_str(b)?;
    Some(StoredEvent {
        replay_id,
        time_ms,
        kind,
        entity: entity.into(),
        schema_id: schema_id.into(),
        event_id,
        payload: Bytes::copy_from_slice(b),
    })
}

impl LogFile {
    /// Opens (creating) the log in `dir` and returns every whole record in it.
    pub fn open(dir: &Path) -> Result<(LogFile, Vec<StoredEvent>)> {
        std::fs::create_dir_all(dir.join("schemas"))
            .with_context(|| format!("creating CDC directory {}", dir.display()))?;
        let path = dir.join("events.log");
        let mut data = Vec::new();
        if path.exists() {
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut data))
                .with_context(|| format!("reading CDC event log {}", path.display()))?;
        }
        let mut events = Vec::new();
        let mut at = 0usize;
        while at + 4 <= data.len() {
            let n = u32::from_be_bytes(data[at..at + 4].try_into().expect("4 bytes")) as usize;
            if at + 4 + n > data.len() {
                break;
            }
            match decode(&data[at + 4..at + 4 + n]) {
                Some(e) => events.push(e),
                None => break,
            }
            at += 4 + n;
        }
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening CDC event log {}", path.display()))?;
        // Drop a torn tail so the next record starts on a boundary.
        file.set_len(at as u64)
            .with_context(|| format!("truncating the torn tail of {}", path.display()))?;
        let mut out = BufWriter::new(file);
        use std::io::Seek;
        out.seek(std::io::SeekFrom::End(0))?;
        Ok((LogFile { path, out }, events))
    }

    pub fn append(&mut self, e: &StoredEvent) -> Result<()> {
        let mut rec = Vec::with_capacity(64 + e.payload.len());
        rec.extend_from_slice(&e.replay_id.to_be_bytes());
        rec.extend_from_slice(&e.time_ms.to_be_bytes());
        rec.push(match e.kind {
            EventKind::Change => 0,
            EventKind::Platform => 1,
        });
        put_str(&mut rec, &e.entity);
        put_str(&mut rec, &e.schema_id);
        put_str(&mut rec, &e.event_id);
        rec.extend_from_slice(&e.payload);
        self.out.write_all(&(rec.len() as u32).to_be_bytes())?;
        self.out.write_all(&rec)?;
        Ok(())
    }

    pub fn flush(&mut self) -> Result<()> {
        self.out
            .flush()
            .with_context(|| format!("flushing CDC event log {}", self.path.display()))
    }
}

/// Writes a schema JSON once (`<dir>/schemas/<id>.json`).
pub fn save_schema(dir: &Path, id: &str, json: &str) -> Result<()> {
    let p = dir.join("schemas").join(format!("{id}.json"));
    if !p.exists() {
        std::fs::write(&p, json).with_context(|| format!("writing schema {}", p.display()))?;
    }
    Ok(())
}

/// Every stored schema: (id, json).
pub fn load_schemas(dir: &Path) -> Result<Vec<(String, Arc<str>)>> {
    let mut out = Vec::new();
    let d = dir.join("schemas");
    if !d.exists() {
        return Ok(out);
    }
    for entry in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
        let p = entry?.path();
        if let (Some(stem), Some("json")) = (
            p.file_stem().and_then(|s| s.to_str()),
            p.extension().and_then(|s| s.to_str()),
        ) {
            let json = std::fs::read_to_string(&p)
                .with_context(|| format!("reading schema {}", p.display()))?;
            out.push((stem.to_string(), json.into()));
        }
    }
    Ok(out)
}
