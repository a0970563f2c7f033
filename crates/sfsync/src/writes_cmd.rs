//! `sfsync conflicts list|show|resolve` and `sfsync deadletters list|show|redrive|discard`: the
//! operator's side of writeback's conflict queue and dead letters (logic in
//! [`crate::writes_ops`], shared with the HTTP API).
//!
//! Guarantees: a resolution, redrive or discard is one transaction in the write ledger and is
//! recorded in the write's transitions with who (`--by`, default `$USER`) and why (`--note`). A
//! write resolved to pending or redriven is delivered by the running `sfsync run`. `show` prints
//! PII values as `<encrypted>` unless `--decrypt` (then one line on stderr says who decrypted how
//! many values). Exit codes as the other operator commands: 0 done, 1 some ids could not be acted
//! on (unknown, or in a state that does not allow it), 2 the config or warehouse cannot be used.

use std::path::PathBuf;

use anyhow::anyhow;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value as J};
use sfsync_store::Resolution;

use crate::admin_cmd::{block_on, failed, finish, open, operator, usage, Failure, Opened};
use crate::writes_ops::{self as ops, DeadLetterRef, ListFilter, OpsError, Pii, WriteSummary};

#[derive(Debug, Args)]
pub struct ConflictsArgs {
    #[command(subcommand)]
    pub command: ConflictsCommand,
}

#[derive(Debug, Subcommand)]
pub enum ConflictsCommand {
    /// Writes waiting for a person to decide a conflict, oldest first.
    List(ListArgs),
    /// One conflicted write: both sides of each conflicting field (PII masked unless --decrypt).
    Show(ShowArgs),
    /// Decide a conflict: keep Salesforce's value, take the writer's, or set values.
    Resolve(ResolveArgs),
}

#[derive(Debug, Args)]
pub struct DeadLettersArgs {
    #[command(subcommand)]
    pub command: DeadLettersCommand,
}

#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// Dead letters, oldest first: writes Salesforce refused (with its error) and CDC events
    /// that could not be decoded or applied.
    List(DeadListArgs),
    /// One dead letter in full: `ID` or `write:ID` for a write, `event:ID` for an event.
    Show(DeadShowArgs),
    /// Deliver failed writes again (failed → pending; attempts kept).
    Redrive(ActArgs),
    /// Never deliver these writes (failed or conflicted → rejected; kept with who and why).
    Discard(ActArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// Only writes to this object.
    #[arg(long)]
    pub object: Option<String>,
    /// Only writes from this source system.
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// Writes Salesforce refused.
    Writes,
    /// CDC events that could not be decoded or applied.
    Events,
    /// Curated changes a delivery sink could not deliver.
    Deliveries,
    /// Platform events that could not be published.
    Publishes,
    All,
}

#[derive(Debug, Args)]
pub struct DeadListArgs {
    #[arg(long)]
    pub config: PathBuf,
    #[arg(long, value_enum, default_value_t = Kind::All)]
    pub kind: Kind,
    /// Only this object.
    #[arg(long)]
    pub object: Option<String>,
    /// Only writes from this source system (events have none).
    #[arg(long)]
    pub system: Option<String>,
    /// At most this many of each kind.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[arg(long)]
    pub config: PathBuf,
    pub id: i64,
    /// Print PII values in plaintext (an operator action: reported on stderr with $USER).
    #[arg(long)]
    pub decrypt: bool,
    /// The whole record as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DeadShowArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// `12` or `write:12` (a write), `event:5` (an event dead letter).
    pub id: String,
    /// Print PII values in plaintext (an operator action: reported on stderr with $USER).
    #[arg(long)]
    pub decrypt: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("resolution").required(true).args(["keep_salesforce", "take_writer", "set"])))]
pub struct ResolveArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// The write's id.
    pub id: i64,
    /// Salesforce's values stand: the write is rejected.
    #[arg(long)]
    pub keep_salesforce: bool,
    /// The writer's values win: the write is delivered again, accepting Salesforce's changes
    /// up to now (a later change there is a new conflict).
    #[arg(long)]
    pub take_writer: bool,
    /// Deliver this value instead (`Field=VALUE`; VALUE is JSON when it parses as JSON —
    /// `5`, `true`, `null`, `"5"` — and text otherwise). Repeat for several fields; only fields
    /// of the write.
    #[arg(long = "set", value_name = "FIELD=VALUE")]
    pub set: Vec<String>,
    /// Who decides (recorded); default $USER.
    #[arg(long)]
    pub by: Option<String>,
    /// Why (recorded).
    #[arg(long, default_value = "")]
    pub note: String,
}

#[derive(Debug, Args)]
pub struct ActArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// Dead letter ids: `12` or `write:12` for writes (`event:5` for events, which have no
    /// redrive or discard: the command says what to do instead).
    #[arg(required = true)]
    pub ids: Vec<String>,
    /// Who acts (recorded); default $USER.
    #[arg(long)]
    pub by: Option<String>,
    /// Why (recorded).
    #[arg(long, default_value = "")]
    pub note: String,
}

pub fn conflicts(args: ConflictsArgs) -> i32 {
    match args.command {
        ConflictsCommand::List(a) => finish("conflicts list", block_on(conflicts_list(a))),
        ConflictsCommand::Show(a) => finish("conflicts show", block_on(conflicts_show(a))),
        ConflictsCommand::Resolve(a) => finish("conflicts resolve", block_on(resolve(a))),
    }
}

pub fn deadletters(args: DeadLettersArgs) -> i32 {
    match args.command {
        DeadLettersCommand::List(a) => finish("deadletters list", block_on(dead_list(a))),
        DeadLettersCommand::Show(a) => finish("deadletters show", block_on(dead_show(a))),
        DeadLettersCommand::Redrive(a) => finish("deadletters redrive", block_on(act(a, true))),
        DeadLettersCommand::Discard(a) => finish("deadletters discard", block_on(act(a, false))),
    }
}

fn ops_failed(e: OpsError) -> Failure {
    failed(anyhow::Error::new(e))
}

/// `--set Field=VALUE` flags as a field → JSON value map; errors name the flag.
pub fn parse_sets(sets: &[String]) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let mut out = serde_json::Map::new();
    for s in sets {
        let Some((field, value)) = s.split_once('=') else {
            return Err(anyhow!("--set '{s}': use FIELD=VALUE"));
        };
        let field = field.trim();
        if field.is_empty() {
            return Err(anyhow!("--set '{s}': the field name is empty"));
        }
        if out.contains_key(field) {
            return Err(anyhow!("--set names {field} twice"));
        }
        let value = serde_json::from_str::<J>(value).unwrap_or_else(|_| J::String(value.into()));
        out.insert(field.to_string(), value);
    }
    Ok(out)
}

fn by(flag: &Option<String>) -> Result<String, Failure> {
    match flag {
        Some(b) if b.trim().is_empty() => Err(usage(anyhow!("--by must not be empty"))),
        Some(b) => Ok(b.trim().to_string()),
        None => Ok(operator()),
    }
}

fn filter(object: &Option<String>, system: &Option<String>, limit: usize) -> ListFilter {
    ListFilter {
        object: object.clone(),
        source_system: system.clone(),
        limit,
    }
}

fn print_writes(rows: &[WriteSummary], id_prefix: &str, conflicts: bool) {
    println!(
        "{:>12}  {:<14}  {:<16}  {:<28}  {:>3}  {:<24}  {}",
        "id",
        "object",
        "system",
        "target",
        "try",
        "updated",
        if conflicts {
            "conflicting fields"
        } else {
            "error"
        }
    );
    for w in rows {
        println!(
            "{:>12}  {:<14}  {:<16}  {:<28}  {:>3}  {:<24}  {}",
            format!("{id_prefix}{}", w.id),
            w.object,
            w.source_system,
            w.target,
            w.attempts,
            w.updated_at,
            if conflicts {
                w.conflict_fields.join(", ")
            } else {
                w.last_error.clone().unwrap_or_default()
            }
        );
    }
}

async fn conflicts_list(a: ListArgs) -> Result<i32, Failure> {
    let o = open(&a.config, true).await?;
    let rows = ops::list_conflicts(&*o.store, &filter(&a.object, &a.system, a.limit))
        .await
        .map_err(ops_failed)?;
    if a.json {
        for w in &rows {
            println!("{}", json!(w));
        }
        return Ok(0);
    }
    print_writes(&rows, "", true);
    println!("{} in conflict shown", rows.len());
    Ok(0)
}

fn check_decrypt(o: &Opened, decrypt: bool, config: &std::path::Path) -> Result<(), Failure> {
    if decrypt && !o.has_key {
        return Err(usage(anyhow!(
            "{}: --decrypt needs the [pii] key, and the config has none",
            config.display()
        )));
    }
    Ok(())
}

fn cell(v: &J) -> String {
    match v {
        J::String(s) => s.replace('\n', "\\n"),
        other => other.to_string(),
    }
}

/// Prints a write: its summary, fields, conflict table and transitions.
fn print_write(v: &ops::WriteView) {
    let s = &v.summary;
    println!("write {} ({})", s.id, s.state.as_str());
    println!("  object:        {} {}", s.object, s.target);
    println!(
        "  from:          {} (key {}, via {})",
        s.source_system, v.idempotency_key, v.origin
    );
    println!(
        "  seen version:  {}",
        v.seen_version.as_deref().unwrap_or("none (a blind write)")
    );
    println!("  attempts:      {}", s.attempts);
    if let Some(e) = &s.last_error {
        println!("  error:         {e}");
    }
    if let Some(r) = &s.reason {
        println!("  reason:        {r}");
    }
    println!("  fields:        {}", v.fields);
    if !v.conflict.is_empty() {
        let rows: Vec<[String; 4]> = v
            .conflict
            .iter()
            .map(|c| {
                [
                    c.field.clone(),
                    cell(&c.salesforce),
                    cell(&c.writer),
                    c.salesforce_changed_at.clone(),
                ]
            })
            .collect();
        let head = [
            "field",
            "Salesforce value",
            "writer value",
            "Salesforce changed it",
        ];
        let widths: Vec<usize> = (0..4)
            .map(|i| {
                rows.iter()
                    .map(|r| r[i].chars().count())
                    .chain([head[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: [&str; 4]| {
            let text: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            println!("  {}", text.join("  ").trim_end());
        };
        println!("conflict:");
        line(head);
        for r in &rows {
            line([&r[0], &r[1], &r[2], &r[3]]);
        }
        if !v.held.is_empty() {
            println!("  held with it: {}", v.held.join(", "));
        }
    }
    println!("transitions:");
    for t in &v.transitions {
        let mut line = format!(
            "  {}  {} → {}",
            t.at,
            t.from.map_or("(stored)", |f| f.as_str()),
            t.to.as_str()
        );
        if let Some(d) = &t.detail {
            line.push_str(&format!("  {d}"));
        }
        if let Some(a) = &t.actor {
            line.push_str(&format!("  [by {a}]"));
        }
        if let Some(n) = &t.note {
            line.push_str(&format!("  note: {n}"));
        }
        println!("{line}");
    }
}

fn decrypt_notice(shown: u64, what: &str, o: &Opened) {
    // An operator action: always said, whatever SFSYNC_LOG filters.
    eprintln!(
        "PII decrypted: user {} read {shown} PII values of {what} from {}",
        operator(),
        o.config.warehouse.describe()
    );
}

async fn conflicts_show(a: ShowArgs) -> Result<i32, Failure> {
    let o = open(&a.config, true).await?;
    check_decrypt(&o, a.decrypt, &a.config)?;
    let pii = Pii::from_config(&o.config, a.decrypt);
    let v = ops::show_write(&*o.store, a.id, &pii)
        .await
        .map_err(ops_failed)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        print_write(&v);
        if v.summary.state != sfsync_store::WriteState::Conflict {
            println!(
                "(write {} is {}, not in conflict: nothing to resolve)",
                a.id,
                v.summary.state.as_str()
            );
        }
    }
    if a.decrypt {
        decrypt_notice(v.pii_values_shown, &format!("write {}", a.id), &o);
    }
    Ok(0)
}

async fn resolve(a: ResolveArgs) -> Result<i32, Failure> {
    let resolution = match (a.keep_salesforce, a.take_writer, a.set.is_empty()) {
        (true, false, true) => Resolution::KeepSalesforce,
        (false, true, true) => Resolution::TakeWriter,
        (false, false, false) => Resolution::Value(parse_sets(&a.set).map_err(usage)?),
        _ => {
            return Err(usage(anyhow!(
                "give one of --keep-salesforce, --take-writer or --set FIELD=VALUE…"
            )))
        }
    };
    let who = by(&a.by)?;
    let o = open(&a.config, true).await?;
    let done = ops::resolve(&*o.store, a.id, &resolution, &who, &a.note)
        .await
        .map_err(ops_failed)?;
    match done.state {
        sfsync_store::WriteState::Rejected => println!(
            "write {}: Salesforce's value kept (rejected, by {who})",
            done.id
        ),
        state => println!(
            "write {}: {} (by {who}); now {} — the running `sfsync run` delivers it",
            done.id,
            match resolution {
                Resolution::Value(_) => "values set",
                _ => "the writer's values taken",
            },
            state.as_str()
        ),
    }
    Ok(0)
}

async fn dead_list(a: DeadListArgs) -> Result<i32, Failure> {
    if a.system.is_some() && a.kind == Kind::Events {
        return Err(usage(anyhow!(
            "--system filters writes; event dead letters have no source system"
        )));
    }
    let o = open(&a.config, true).await?;
    let writes = if matches!(a.kind, Kind::Writes | Kind::All) {
        ops::list_failed_writes(&*o.store, &filter(&a.object, &a.system, a.limit))
            .await
            .map_err(ops_failed)?
    } else {
        Vec::new()
    };
    let deliveries = if matches!(a.kind, Kind::Deliveries | Kind::All) && a.system.is_none() {
        ops::list_delivery_dead_letters(&*o.store, a.object.as_deref(), None, None, a.limit)
            .await
            .map_err(ops_failed)?
    } else {
        Vec::new()
    };
    let publishes = if matches!(a.kind, Kind::Publishes | Kind::All) && a.system.is_none() {
        ops::list_publish_dead_letters(&*o.store, a.object.as_deref(), None, a.limit)
            .await
            .map_err(ops_failed)?
    } else {
        Vec::new()
    };
    let events = if matches!(a.kind, Kind::Events | Kind::All) && a.system.is_none() {
        ops::list_event_dead_letters(&*o.store, a.object.as_deref(), a.limit)
            .await
            .map_err(ops_failed)?
    } else {
        Vec::new()
    };
    if a.json {
        for w in &writes {
            let mut j = json!(w);
            j["kind"] = J::from("write");
            j["ref"] = J::from(format!("write:{}", w.id));
            println!("{j}");
        }
        for e in &events {
            let mut j = json!(e);
            j["kind"] = J::from("event");
            j["ref"] = J::from(format!("event:{}", e.id));
            println!("{j}");
        }
        for d in &deliveries {
            println!("{}", ops::delivery_dead_letter_json(d));
        }
        for e in &publishes {
            println!("{}", ops::publish_dead_letter_json(e));
        }
        return Ok(0);
    }
    if matches!(a.kind, Kind::Writes | Kind::All) {
        println!("writes Salesforce refused:");
        print_writes(&writes, "write:", false);
    }
    if matches!(a.kind, Kind::Deliveries | Kind::All) && a.system.is_none() {
        println!("changes a delivery sink could not deliver:");
        println!(
            "{:>14}  {:<14}  {:<14}  {:<18}  {:<9}  {:>3}  reason",
            "id", "sink", "object", "record", "state", "try"
        );
        for d in &deliveries {
            println!(
                "{:>14}  {:<14}  {:<14}  {:<18}  {:<9}  {:>3}  {}",
                format!("delivery:{}", d.id),
                d.sink,
                d.change.object,
                d.change.record_id,
                d.state.as_str(),
                d.attempts,
                d.reason
            );
        }
    }
    if matches!(a.kind, Kind::Events | Kind::All) && a.system.is_none() {
        println!("events that could not be decoded or applied:");
        println!(
            "{:>12}  {:<14}  {:<28}  {:<10}  {:<24}  error",
            "id", "object", "channel", "stage", "stored"
        );
        for e in &events {
            println!(
                "{:>12}  {:<14}  {:<28}  {:<10}  {:<24}  {}",
                format!("event:{}", e.id),
                e.object.as_deref().unwrap_or("-"),
                e.channel,
                e.stage,
                ops::ts(e.created_at_ms),
                e.error
            );
        }
    }
    if matches!(a.kind, Kind::Publishes | Kind::All) && a.system.is_none() {
        println!("platform events that could not be published:");
        println!(
            "{:>12}  {:<24}  {:<20}  {:>3}  error",
            "id", "event", "idempotency key", "try"
        );
        for e in &publishes {
            println!(
                "{:>12}  {:<24}  {:<20}  {:>3}  {}",
                format!("publish:{}", e.id),
                e.name,
                e.idempotency_key,
                e.attempts,
                e.last_error.as_deref().unwrap_or("-")
            );
        }
    }
    println!(
        "{} writes, {} events, {} deliveries shown, {} publishes",
        writes.len(),
        events.len(),
        deliveries.len(),
        publishes.len()
    );
    Ok(0)
}

fn parse_ref(s: &str) -> Result<DeadLetterRef, Failure> {
    s.parse().map_err(|e: String| usage(anyhow!("{e}")))
}

async fn dead_show(a: DeadShowArgs) -> Result<i32, Failure> {
    let r = parse_ref(&a.id)?;
    let o = open(&a.config, true).await?;
    check_decrypt(&o, a.decrypt, &a.config)?;
    match r {
        DeadLetterRef::Write(id) => {
            let pii = Pii::from_config(&o.config, a.decrypt);
            let v = ops::show_write(&*o.store, id, &pii)
                .await
                .map_err(ops_failed)?;
            print_write(&v);
            if a.decrypt {
                decrypt_notice(v.pii_values_shown, &format!("write {id}"), &o);
            }
        }
        DeadLetterRef::Delivery(id) => {
            let pii = if a.decrypt {
                sfsync_store::PiiMode::Plain
            } else {
                sfsync_store::PiiMode::Omit
            };
            let d = ops::delivery_dead_letter(&*o.store, id, pii)
                .await
                .map_err(ops_failed)?
                .ok_or_else(|| failed(anyhow!("no delivery dead letter has id {id}")))?;
            let mut j = ops::delivery_dead_letter_json(&d);
            j["record"] = J::Object(d.change.record.clone());
            j["changed_fields"] = json!(d.change.fields);
            println!("{}", serde_json::to_string_pretty(&j).unwrap_or_default());
            if a.decrypt {
                eprintln!(
                    "PII fields of delivery:{id} shown in plaintext to {}",
                    operator()
                );
            }
        }
        DeadLetterRef::Publish(id) => {
            let e = o
                .store
                .outbound_event(id)
                .await
                .map_err(|e| failed(anyhow!(e)))?
                .ok_or_else(|| failed(anyhow!("no platform event to publish has id {id}")))?;
            println!(
                "{}",
                serde_json::to_string_pretty(&ops::publish_dead_letter_json(&e))
                    .unwrap_or_default()
            );
        }
        DeadLetterRef::Event(id) => {
            let d = ops::show_event_dead_letter(&*o.store, id)
                .await
                .map_err(ops_failed)?;
            let mut j = json!(d);
            j["stored_at"] = J::from(ops::ts(d.created_at_ms));
            j["redrive"] = J::from(ops::event_redrive_hint(&d));
            println!("{}", serde_json::to_string_pretty(&j).unwrap_or_default());
        }
    }
    Ok(0)
}

async fn act(a: ActArgs, redrive: bool) -> Result<i32, Failure> {
    let refs = a
        .ids
        .iter()
        .map(|s| parse_ref(s))
        .collect::<Result<Vec<_>, _>>()?;
    let who = by(&a.by)?;
    let o = open(&a.config, true).await?;
    let done = ops::act(&*o.store, &refs, redrive, &who, &a.note)
        .await
        .map_err(ops_failed)?;
    let mut code = 0;
    for d in &done {
        if !d.done {
            code = 1;
        }
        println!("{}: {}", d.id, d.message);
    }
    if redrive && done.iter().any(|d| d.done) {
        println!("The running `sfsync run` delivers redriven writes; `sfsync deadletters show ID` shows the outcome.");
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_values_are_json_or_text() {
        let m = parse_sets(&[
            "Status=Closed".into(),
            "Amount=5".into(),
            "Code=\"5\"".into(),
            "Note=".into(),
            "Priority=null".into(),
            "Subject=a=b".into(),
        ])
        .unwrap();
        assert_eq!(
            J::Object(m),
            json!({"Status": "Closed", "Amount": 5, "Code": "5", "Note": "", "Priority": null, "Subject": "a=b"})
        );
        assert!(parse_sets(&["Status".into()])
            .unwrap_err()
            .to_string()
            .contains("FIELD=VALUE"));
        assert!(parse_sets(&["=x".into()])
            .unwrap_err()
            .to_string()
            .contains("field name is empty"));
        assert!(parse_sets(&["A=1".into(), "A=2".into()])
            .unwrap_err()
            .to_string()
            .contains("twice"));
    }
}
