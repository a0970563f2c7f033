//! Durability for an org opened with a data directory. Every committed transaction (and every
//! hard delete, reset, added field, seeded chunk and drift call) is appended to
//! `org-journal.jsonl` as one JSON line with a sequence number and fsync'd before the call
//! returns (seeding syncs once at the end of the call). `org-snapshot.jsonl` holds the whole state as of a journal sequence
//! number; opening loads the snapshot, replays the journal entries after it, ignores a torn last
//! line (a crash mid-write) with a warning, and compacts (new snapshot, empty journal) when the
//! journal has grown large. Replay reproduces the exact state: same records, ids, slot layout,
//! counters and commit numbers.
//!
//! Snapshot format (JSON lines): a header `{"version":1,"last_seq":…,"counters":{…},…}`, then
//! text lines `{"text":k,"v":"…"}` for long strings shared by several records, then one line
//! per record `{"o":"Account","s":slot,"id":"001…","d":false,"f":{field: value}}` where a value
//! `{"$t":k}` refers to text `k`.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sfsync_core::SfId;

use crate::drift::{DriftCounts, DriftEntry};
use crate::org::{reset_state, ChangeKind, CommittedTransaction};
use crate::seed::Chunk;
use crate::store::{FKind, Record, State};
use crate::value::Val;
use crate::{FieldDef, Org};

const JOURNAL: &str = "org-journal.jsonl";
const SNAPSHOT: &str = "org-snapshot.jsonl";
/// Compact on open when the journal is larger than this.
const COMPACT_BYTES: u64 = 64 << 20;
/// Strings at least this long are written once per snapshot and shared.
const SHARED_TEXT_BYTES: usize = 256;

/// One journal entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Entry {
    /// A DML transaction: its committed changes (None when it only hard-deleted), the final
    /// recycle-bin flag of every touched record, the slot of every created record, and the
    /// records hard-deleted.
    Tx {
        tx: Option<CommittedTransaction>,
        #[serde(default)]
        deleted: Vec<(SfId, bool)>,
        #[serde(default)]
        hard_deleted: Vec<SfId>,
        /// Slot of every record created (including ones hard-deleted in the same transaction).
        #[serde(default)]
        created: Vec<(SfId, u32)>,
    },
    Seed(Chunk),
    /// Records changed behind the CDC stream's back (never published).
    Drift(DriftEntry),
    AddField {
        object: String,
        field: FieldDef,
    },
    Reset,
}

#[derive(Serialize, Deserialize)]
struct Line {
    seq: u64,
    #[serde(flatten)]
    entry: Entry,
}

/// The open journal of a persisted org.
pub(crate) struct Journal {
    dir: PathBuf,
    file: File,
    seq: u64,
    keep: Vec<SfId>,
}

impl Journal {
    fn write_line(&mut self, entry: &Entry) -> anyhow::Result<()> {
        self.seq += 1;
        let mut buf = serde_json::to_vec(&Line {
            seq: self.seq,
            entry: entry.clone(),
        })?;
        buf.push(b'\n');
        self.file
            .write_all(&buf)
            .with_context(|| format!("Cannot append to {}", self.dir.join(JOURNAL).display()))
    }

    /// Appends `entry` and fsyncs.
    pub fn append(&mut self, entry: &Entry) -> anyhow::Result<()> {
        self.write_line(entry)?;
        self.sync()
    }

    /// Appends without fsync (the caller syncs later, before acknowledging).
    pub fn append_nosync(&mut self, entry: &Entry) -> anyhow::Result<()> {
        self.write_line(entry)
    }

    pub fn sync(&mut self) -> anyhow::Result<()> {
        self.file
            .sync_data()
            .with_context(|| format!("Cannot fsync {}", self.dir.join(JOURNAL).display()))
    }

    /// Writes a snapshot of `st` as of the current sequence number and empties the journal.
    pub fn checkpoint(&mut self, st: &State) -> anyhow::Result<()> {
        write_snapshot(&self.dir, st, self.seq)?;
        self.file.set_len(0)?;
        self.file.seek(std::io::SeekFrom::Start(0))?;
        self.file.sync_all()?;
        Ok(())
    }
}

/// Loads the org's state from `dir` (snapshot + journal) and opens the journal for appending.
pub(crate) fn open(org: &Org, dir: &Path) -> anyhow::Result<Journal> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("Cannot create org data directory {}", dir.display()))?;
    let keep = vec![org.admin_user_id(), org.integration_user_id()];
    let mut st = org.state.write();
    let mut last_seq = 0;
    let snap = dir.join(SNAPSHOT);
    if snap.exists() {
        last_seq = load_snapshot(&mut st, &snap)
            .with_context(|| format!("Cannot load snapshot {}", snap.display()))?;
    }
    let jpath = dir.join(JOURNAL);
    let mut seq = last_seq;
    let mut good_len = 0u64;
    let mut journal_len = 0u64;
    if jpath.exists() {
        let f = File::open(&jpath).with_context(|| format!("Cannot open {}", jpath.display()))?;
        journal_len = f.metadata()?.len();
        let mut r = BufReader::new(f);
        let mut line = Vec::new();
        let mut line_no = 0usize;
        loop {
            line.clear();
            let n = r.read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            line_no += 1;
            let complete = line.last() == Some(&b'\n');
            let parsed: Result<Line, _> = serde_json::from_slice(&line);
            match parsed {
                Ok(l) if complete => {
                    if l.seq > last_seq {
                        apply_entry(&mut st, &l.entry, &keep).with_context(|| {
                            format!("Cannot replay {} line {line_no}", jpath.display())
                        })?;
                    }
                    seq = seq.max(l.seq);
                    good_len += n as u64;
                }
                _ => {
                    // Only the last line may be torn.
                    let rest = r.fill_buf()?.is_empty();
                    if !rest {
                        bail!(
                            "{} line {line_no} is corrupt and is not the last line",
                            jpath.display()
                        );
                    }
                    tracing::warn!(
                        path = %jpath.display(),
                        line = line_no,
                        "Ignoring a torn last journal line (crash during a write)"
                    );
                    break;
                }
            }
        }
    }
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(false)
        .open(&jpath)
        .with_context(|| format!("Cannot open {}", jpath.display()))?;
    if good_len < journal_len {
        file.set_len(good_len)?;
        file.sync_all()?;
    }
    file.seek(std::io::SeekFrom::End(0))?;
    let mut j = Journal {
        dir: dir.to_path_buf(),
        file,
        seq,
        keep,
    };
    if good_len > COMPACT_BYTES {
        tracing::info!(
            bytes = good_len,
            "Compacting the org journal into a snapshot"
        );
        j.checkpoint(&st)?;
    }
    let _ = &j.keep;
    Ok(j)
}

fn place(st: &mut State, obj: usize, slot: u32, rec: Record) {
    let store = &mut st.stores[obj];
    while (store.slots.len() as u32) < slot {
        store.slots.push(None);
    }
    if store.slots.len() as u32 == slot {
        store.push(rec);
    } else {
        store.replace(slot, Some(rec));
    }
}

fn record_from_values(
    st: &State,
    obj: usize,
    id: SfId,
    values: &Map<String, Value>,
    texts: &HashMap<u64, Arc<str>>,
) -> anyhow::Result<Record> {
    let c = &st.compiled.objects[obj];
    let mut rec = Record {
        id,
        deleted: false,
        vals: vec![Val::Null; c.def.fields.len()].into_boxed_slice(),
    };
    for (k, v) in values {
        let Some(i) = c.field(k) else {
            tracing::warn!(object = c.name(), field = %k, "Dropping a stored value of a field the schema no longer has");
            continue;
        };
        if !matches!(c.kinds[i], FKind::Stored) {
            continue;
        }
        let val = match v.get("$t").and_then(Value::as_u64) {
            Some(t) => Val::Str(
                texts
                    .get(&t)
                    .cloned()
                    .ok_or_else(|| anyhow!("unknown shared text {t}"))?,
            ),
            None => Val::from_stored_json(c.fd(i).field_type, v)
                .ok_or_else(|| anyhow!("field {}.{k}: cannot read value {v}", c.name()))?,
        };
        rec.set(i, val);
    }
    Ok(rec)
}

fn note_case_number(st: &mut State, obj: usize, rec: &Record) {
    if let Some(cn) = st.compiled.objects[obj].case_number_f {
        if let Some(n) = rec.val(cn).as_text().and_then(|s| s.parse::<u64>().ok()) {
            st.case_counter = st.case_counter.max(n);
        }
    }
}

/// Applies one journal entry to the state.
pub(crate) fn apply_entry(st: &mut State, e: &Entry, keep: &[SfId]) -> anyhow::Result<()> {
    match e {
        Entry::AddField { object, field } => {
            if let Err(err) = st.add_field(object, field.clone()) {
                tracing::warn!(object = %object, field = %field.name, error = %err, "Journalled field not re-added");
            }
        }
        Entry::Reset => reset_state(st, keep),
        Entry::Seed(chunk) => {
            crate::seed::apply_chunk(st, chunk).map_err(|e| anyhow!(e))?;
        }
        Entry::Drift(drift) => crate::drift::apply(st, drift).map_err(|e| anyhow!(e))?,
        Entry::Tx {
            tx,
            deleted,
            hard_deleted,
            created,
        } => {
            if let Some(tx) = tx {
                apply_tx(st, tx, created)?;
            }
            for (id, slot) in created {
                if let Some(c) = st.compiled.by_prefix(id.key_prefix()) {
                    let store = &mut st.stores[c.index];
                    while (store.slots.len() as u32) <= *slot {
                        store.slots.push(None);
                    }
                }
                st.note_id(id);
            }
            for (id, flag) in deleted {
                let Some(c) = st.compiled.by_prefix(id.key_prefix()) else {
                    continue;
                };
                let obj = c.index;
                if let Some((slot, r)) = st.stores[obj].get(id) {
                    if r.deleted != *flag {
                        let mut n = r.clone();
                        n.deleted = *flag;
                        st.stores[obj].replace(slot, Some(n));
                    }
                }
            }
            for id in hard_deleted {
                let Some(c) = st.compiled.by_prefix(id.key_prefix()) else {
                    continue;
                };
                let obj = c.index;
                if let Some((slot, _)) = st.stores[obj].get(id) {
                    st.stores[obj].replace(slot, None);
                }
            }
        }
    }
    Ok(())
}

fn apply_tx(
    st: &mut State,
    tx: &CommittedTransaction,
    created: &[(SfId, u32)],
) -> anyhow::Result<()> {
    let ts = tx.commit_timestamp;
    let no_texts = HashMap::new();
    for ch in &tx.changes {
        let obj = st
            .compiled
            .object(&ch.object)
            .ok_or_else(|| anyhow!("unknown object {}", ch.object))?
            .index;
        let sysmod = st.compiled.objects[obj].sysmod_f;
        match ch.change_type {
            ChangeKind::Create => {
                let mut rec = record_from_values(st, obj, ch.record_id, &ch.values, &no_texts)?;
                rec.set(sysmod, Val::DateTime(ts));
                st.note_id(&ch.record_id);
                note_case_number(st, obj, &rec);
                let slot = created
                    .iter()
                    .find(|(id, _)| *id == ch.record_id)
                    .map(|(_, s)| *s)
                    .unwrap_or(st.stores[obj].slots.len() as u32);
                place(st, obj, slot, rec);
            }
            ChangeKind::Update | ChangeKind::Undelete | ChangeKind::Delete => {
                let (slot, old) = st.stores[obj]
                    .get(&ch.record_id)
                    .ok_or_else(|| anyhow!("record {} not found", ch.record_id))?;
                let mut rec = old.clone();
                let c = &st.compiled.objects[obj];
                for (k, v) in &ch.values {
                    if let Some(i) = c.field(k) {
                        if matches!(c.kinds[i], FKind::Stored) {
                            let val =
                                Val::from_stored_json(c.fd(i).field_type, v).ok_or_else(|| {
                                    anyhow!("field {}.{k}: cannot read value {v}", c.name())
                                })?;
                            rec.set(i, val);
                        }
                    }
                }
                match ch.change_type {
                    ChangeKind::Delete => rec.deleted = true,
                    ChangeKind::Undelete => rec.deleted = false,
                    _ => {}
                }
                rec.set(sysmod, Val::DateTime(ts));
                st.stores[obj].replace(slot, Some(rec));
            }
        }
    }
    st.commit_number = st.commit_number.max(tx.commit_number);
    st.last_ts = st.last_ts.max(ts);
    st.transactions += 1;
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct Header {
    version: u32,
    last_seq: u64,
    counters: HashMap<String, u64>,
    case_counter: u64,
    commit_number: i64,
    last_ts: i64,
    transactions: u64,
    added_fields: Vec<(String, FieldDef)>,
    slots: HashMap<String, u32>,
    /// Absent in snapshots written before drift existed.
    #[serde(default)]
    drift: DriftCounts,
}

fn write_snapshot(dir: &Path, st: &State, seq: u64) -> anyhow::Result<()> {
    let tmp = dir.join(format!("{SNAPSHOT}.tmp"));
    let f = File::create(&tmp).with_context(|| format!("Cannot create {}", tmp.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    let header = Header {
        version: 1,
        last_seq: seq,
        counters: st.counters.clone(),
        case_counter: st.case_counter,
        commit_number: st.commit_number,
        last_ts: st.last_ts,
        transactions: st.transactions,
        added_fields: st.added_fields.clone(),
        slots: st
            .compiled
            .objects
            .iter()
            .map(|c| (c.name().to_string(), st.stores[c.index].slots.len() as u32))
            .collect(),
        drift: st.drift,
    };
    serde_json::to_writer(&mut w, &header)?;
    w.write_all(b"\n")?;
    // Long strings shared by pointer are written once.
    let mut texts: HashMap<usize, u64> = HashMap::new();
    for c in &st.compiled.objects {
        let store = &st.stores[c.index];
        for (slot, rec) in store.slots.iter().enumerate() {
            let Some(rec) = rec else { continue };
            let mut f = Map::new();
            for (i, v) in rec.vals.iter().enumerate() {
                if v.is_null() || i >= c.kinds.len() || !matches!(c.kinds[i], FKind::Stored) {
                    continue;
                }
                let jv = match v {
                    Val::Str(s) if s.len() >= SHARED_TEXT_BYTES => {
                        let key = s.as_ptr() as usize;
                        let next = texts.len() as u64;
                        let k = *texts.entry(key).or_insert_with(|| next);
                        if k == next {
                            serde_json::to_writer(&mut w, &json!({"text": k, "v": &**s}))?;
                            w.write_all(b"\n")?;
                        }
                        json!({ "$t": k })
                    }
                    other => other.to_json(),
                };
                f.insert(c.fd(i).name.clone(), jv);
            }
            serde_json::to_writer(
                &mut w,
                &json!({"o": c.name(), "s": slot, "id": rec.id, "d": rec.deleted, "f": f}),
            )?;
            w.write_all(b"\n")?;
        }
    }
    let f = w
        .into_inner()
        .map_err(|e| anyhow!("Cannot write snapshot: {}", e.error()))?;
    f.sync_all()?;
    drop(f);
    let dst = dir.join(SNAPSHOT);
    std::fs::rename(&tmp, &dst)
        .with_context(|| format!("Cannot rename {} to {}", tmp.display(), dst.display()))?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn load_snapshot(st: &mut State, path: &Path) -> anyhow::Result<u64> {
    let r = BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut lines = r.lines();
    let header: Header =
        serde_json::from_str(&lines.next().ok_or_else(|| anyhow!("snapshot is empty"))??)
            .context("snapshot header")?;
    if header.version != 1 {
        bail!("unsupported snapshot version {}", header.version);
    }
    for (o, f) in &header.added_fields {
        if let Err(e) = st.add_field(o, f.clone()) {
            tracing::warn!(object = %o, field = %f.name, error = %e, "Snapshot field not re-added");
        }
    }
    // Drop everything (the standard users come back from the snapshot).
    for i in 0..st.stores.len() {
        st.stores[i] = crate::store::Store::new(&st.compiled.objects[i]);
    }
    let mut texts: HashMap<u64, Arc<str>> = HashMap::new();
    for (n, line) in lines.enumerate() {
        let line = line?;
        let v: Value =
            serde_json::from_str(&line).with_context(|| format!("snapshot line {}", n + 2))?;
        if let Some(k) = v.get("text").and_then(Value::as_u64) {
            let s = v.get("v").and_then(Value::as_str).unwrap_or("");
            texts.insert(k, Arc::from(s));
            continue;
        }
        let ctx = || format!("snapshot line {}", n + 2);
        let o = v
            .get("o")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("{}: no object", ctx()))?;
        let Some(obj) = st.compiled.object(o).map(|c| c.index) else {
            tracing::warn!(
                object = o,
                "Dropping records of an object the schema no longer has"
            );
            continue;
        };
        let slot = v
            .get("s")
            .and_then(Value::as_u64)
            .ok_or_else(|| anyhow!("{}: no slot", ctx()))? as u32;
        let id: SfId = serde_json::from_value(v.get("id").cloned().unwrap_or(Value::Null))
            .with_context(ctx)?;
        let empty = Map::new();
        let fields = v.get("f").and_then(Value::as_object).unwrap_or(&empty);
        let mut rec = record_from_values(st, obj, id, fields, &texts).with_context(ctx)?;
        rec.deleted = v.get("d").and_then(Value::as_bool).unwrap_or(false);
        place(st, obj, slot, rec);
    }
    for c in &st.compiled.objects {
        if let Some(&n) = header.slots.get(c.name()) {
            while (st.stores[c.index].slots.len() as u32) < n {
                st.stores[c.index].slots.push(None);
            }
        }
    }
    st.counters = header.counters;
    st.case_counter = header.case_counter;
    st.commit_number = header.commit_number;
    st.last_ts = header.last_ts;
    st.transactions = header.transactions;
    st.drift = header.drift;
    Ok(header.last_seq)
}
