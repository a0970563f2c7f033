//! `sfsync conflicts …`, `sfsync deadletters …` and `sfsync runs …` as an operator runs them:
//! the real binary against a real SQLite warehouse file. Writes are submitted through the
//! store's write ledger and moved to `conflict` (with a real [`ConflictDetail`]) and `failed`
//! through `record_write_outcomes`, as delivery records them; event dead letters are stored as
//! ingest stores them; sync jobs as the CLI requests them. The checks read stdout, stderr, the
//! exit status, and the ledger through the store (and the file behind its back).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use serde_json::json;
use sfsync_core::ReplayId;
use sfsync_store::*;

const KEY_A: [u8; 32] = [0xa1; 32];
const T0: i64 = 1_795_253_400_000; // 2026-11-21T09:30:00.000Z
const CASE_ID: &str = "500000000000001AAA";

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("client-secret"), "not-used").unwrap();
        let hex: String = KEY_A.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(dir.path().join("key-a.hex"), hex).unwrap();
        let text = "[salesforce]\ninstance_url = \"https://example.my.salesforce.com\"\n\n\
             [salesforce.auth]\ntype = \"client_credentials\"\nclient_id = \"test-client\"\n\
             client_secret = { file = \"client-secret\" }\n\n\
             [[objects]]\nname = \"Case\"\npii_fields = [\"Description\"]\n\n\
             [[objects]]\nname = \"Account\"\n\n\
             [warehouse]\ntype = \"sqlite\"\npath = \"warehouse.db\"\n\n\
             [pii]\nkey_file = \"key-a.hex\"\nkey_id = \"key-a\"\n";
        std::fs::write(dir.path().join("sfsync.toml"), text).unwrap();
        Site { dir }
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("warehouse.db")
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("sfsync.toml")
    }

    async fn store(&self) -> SqliteChangeLog {
        let s = SqliteChangeLog::open(self.db()).await.expect("open store");
        s.set_keyring(Some(Arc::new(Keyring::new("key-a", KEY_A))));
        s
    }

    /// Every file of the warehouse that contains `needle`.
    fn files_containing(&self, needle: &str) -> Vec<PathBuf> {
        let mut hits = Vec::new();
        for entry in std::fs::read_dir(self.dir.path()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !name.starts_with("warehouse.db") {
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                hits.push(path);
            }
        }
        hits
    }
}

fn sfsync(args: &[&str], config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sfsync"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env("SFSYNC_LOG", "warn")
        .env("USER", "test-operator")
        .output()
        .expect("run sfsync")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn show(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    )
}

fn jsonl(o: &Output) -> Vec<serde_json::Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn ids(rows: &[serde_json::Value]) -> Vec<i64> {
    rows.iter().map(|r| r["id"].as_i64().unwrap()).collect()
}

// ---- the ledger, written as submission and delivery write it ----

fn new_write(key: &str, system: &str, object: &str, fields: serde_json::Value) -> NewWrite {
    NewWrite {
        source_system: system.into(),
        idempotency_key: key.into(),
        object: object.into(),
        target: if object == "Case" {
            WriteTarget::RecordId(CASE_ID.into())
        } else {
            WriteTarget::ExternalId {
                field: "Acct_Ref__c".into(),
                value: format!("A-{key}"),
            }
        },
        fields: fields.as_object().unwrap().clone(),
        seen_version_ms: Some(T0),
    }
}

fn case_conflict() -> ConflictDetail {
    ConflictDetail {
        fields: vec![
            FieldConflict {
                field: "Status".into(),
                salesforce: json!("Escalated"),
                writer: json!("Closed"),
                salesforce_changed_ms: T0 + 60_000,
            },
            FieldConflict {
                field: "Description".into(),
                salesforce: json!("Jane Roe called back"),
                writer: json!("Call Jane Roe"),
                salesforce_changed_ms: T0 + 120_000,
            },
        ],
        held: vec![],
    }
}

struct Ledger {
    keep: i64,
    take: i64,
    set: i64,
    account: i64,
    failed: i64,
    failed_2: i64,
    pending: i64,
    event: i64,
}

const SF_ERROR: &str = "INVALID_FIELD: No such column 'Foo__c' on entity 'Case'";

/// Four writes in conflict (three Case, one Account from `payments`), two dead letters, one
/// pending write, one event dead letter.
fn write_ledger(site: &Site) -> Ledger {
    block_on(async {
        let s = site.store().await;
        let case = || json!({"Status": "Closed", "Description": "Call Jane Roe"});
        let out = s
            .submit_writes(&[
                new_write("keep", "case_mgmt", "Case", case()),
                new_write("take", "case_mgmt", "Case", case()),
                new_write("set", "case_mgmt", "Case", case()),
                new_write("acct", "payments", "Account", json!({"Rating": "Hot"})),
                new_write("failed", "case_mgmt", "Case", case()),
                new_write("failed-2", "case_mgmt", "Case", case()),
                new_write("pending", "case_mgmt", "Case", case()),
            ])
            .await
            .unwrap();
        let ids: Vec<i64> = out
            .iter()
            .map(|o| match o {
                SubmitOutcome::Accepted { id } => *id,
                other => panic!("{other:?}"),
            })
            .collect();
        let claimed = s.claim_writes("deliverer", 6).await.unwrap();
        assert_eq!(claimed.len(), 6);
        let acct_conflict = ConflictDetail {
            fields: vec![FieldConflict {
                field: "Rating".into(),
                salesforce: json!("Cold"),
                writer: json!("Hot"),
                salesforce_changed_ms: T0 + 1_000,
            }],
            held: vec![],
        };
        let conflict = |d: &ConflictDetail| WriteOutcome::Conflict {
            detail: d.to_json(),
        };
        let failed = || WriteOutcome::Failed {
            error: SF_ERROR.into(),
        };
        s.record_write_outcomes(&[
            (ids[0], conflict(&case_conflict())),
            (ids[1], conflict(&case_conflict())),
            (ids[2], conflict(&case_conflict())),
            (ids[3], conflict(&acct_conflict)),
            (ids[4], failed()),
            (ids[5], failed()),
        ])
        .await
        .unwrap();
        s.append_with_dead_letters(
            "/data/CaseChangeEvent",
            &[],
            &[DeadLetter {
                channel: "/data/CaseChangeEvent".into(),
                replay_id: Some(ReplayId::from_bytes(vec![9, 9])),
                schema_id: "schema-x".into(),
                stage: "decode".into(),
                error: "decode failed: bad union index".into(),
                payload: b"avro bytes".to_vec(),
                object: Some("Case".into()),
            }],
            &ReplayId::from_bytes(vec![9, 9]),
        )
        .await
        .unwrap();
        let event = Warehouse::dead_letters(&s, &DeadLetterFilter::default())
            .await
            .unwrap()[0]
            .id;
        Ledger {
            keep: ids[0],
            take: ids[1],
            set: ids[2],
            account: ids[3],
            failed: ids[4],
            failed_2: ids[5],
            pending: ids[6],
            event,
        }
    })
}

fn write_of(site: &Site, id: i64) -> (LedgerWrite, Vec<WriteTransition>) {
    block_on(async {
        let s = site.store().await;
        (
            s.write(id).await.unwrap().expect("write exists"),
            s.write_transitions(id).await.unwrap(),
        )
    })
}

fn fields(w: &LedgerWrite) -> serde_json::Value {
    serde_json::from_str(&w.fields).unwrap()
}

// ---- conflicts ----

#[test]
fn conflicts_list_and_show_both_sides_with_pii_masked() {
    let site = Site::new();
    let l = write_ledger(&site);
    let config = site.config();

    let o = sfsync(&["conflicts", "list", "--json"], &config);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let rows = jsonl(&o);
    assert_eq!(ids(&rows), vec![l.keep, l.take, l.set, l.account]);
    assert_eq!(rows[0]["conflict_fields"], json!(["Status", "Description"]));
    assert_eq!(rows[0]["target"], json!(format!("Id {CASE_ID}")));
    assert!(
        !stdout(&o).contains("Jane Roe"),
        "a list never quotes values: {}",
        show(&o)
    );
    let o = sfsync(
        &["conflicts", "list", "--json", "--object", "Account"],
        &config,
    );
    assert_eq!(ids(&jsonl(&o)), vec![l.account], "{}", show(&o));
    let o = sfsync(
        &["conflicts", "list", "--json", "--system", "payments"],
        &config,
    );
    assert_eq!(ids(&jsonl(&o)), vec![l.account], "{}", show(&o));
    let o = sfsync(&["conflicts", "list", "--limit", "1"], &config);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        stdout(&o).contains("Status, Description") && stdout(&o).contains("1 in conflict shown"),
        "{}",
        show(&o)
    );

    // Both sides per field; the PII field masked on both sides.
    let id = l.keep.to_string();
    let o = sfsync(&["conflicts", "show", &id], &config);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let out = stdout(&o);
    let status_row = out
        .lines()
        .find(|l| l.trim_start().starts_with("Status "))
        .unwrap_or_else(|| panic!("no Status row: {out}"));
    assert!(
        status_row.contains("Escalated")
            && status_row.contains("Closed")
            && status_row.contains("2026-11-21T09:31:00.000Z"),
        "{status_row}"
    );
    let description_row = out
        .lines()
        .find(|l| l.trim_start().starts_with("Description "))
        .unwrap_or_else(|| panic!("no Description row: {out}"));
    assert_eq!(
        description_row.matches("<encrypted>").count(),
        2,
        "{description_row}"
    );
    assert!(!out.contains("Jane Roe"), "PII printed: {out}");
    assert!(!stderr(&o).contains("PII decrypted"), "{}", show(&o));

    // --decrypt: in the clear, and said on stderr.
    let o = sfsync(&["conflicts", "show", &id, "--decrypt", "--json"], &config);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        v["conflict"][1]["salesforce"],
        json!("Jane Roe called back")
    );
    assert_eq!(v["fields"]["Description"], json!("Call Jane Roe"));
    assert!(
        stderr(&o).contains("PII decrypted: user test-operator read 3 PII values of write"),
        "{}",
        show(&o)
    );
}

#[test]
fn conflicts_resolve_each_way_and_refuse_what_cannot_be_done() {
    let site = Site::new();
    let l = write_ledger(&site);
    let config = site.config();

    // Keep Salesforce's value: rejected, recorded with who and why.
    let keep = l.keep.to_string();
    let o = sfsync(
        &[
            "conflicts",
            "resolve",
            &keep,
            "--keep-salesforce",
            "--note",
            "customer called",
        ],
        &config,
    );
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        stdout(&o).contains("Salesforce's value kept"),
        "{}",
        show(&o)
    );
    let (w, log) = write_of(&site, l.keep);
    assert_eq!(w.state, WriteState::Rejected);
    assert!(
        w.reason
            .as_deref()
            .unwrap()
            .contains("kept by test-operator: customer called"),
        "{w:?}"
    );
    let last = log.last().unwrap();
    assert_eq!(
        (last.actor.as_deref(), last.note.as_deref()),
        (Some("test-operator"), Some("customer called"))
    );

    // Take the writer's values: pending, seen version raised past Salesforce's changes.
    let take = l.take.to_string();
    let o = sfsync(
        &[
            "conflicts",
            "resolve",
            &take,
            "--take-writer",
            "--by",
            "ada",
        ],
        &config,
    );
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let (w, log) = write_of(&site, l.take);
    assert_eq!(
        (w.state, w.seen_version_ms),
        (WriteState::Pending, Some(T0 + 120_000))
    );
    assert_eq!(log.last().unwrap().actor.as_deref(), Some("ada"));

    // Set a value: an unknown field refuses the whole resolution; then only the named field
    // changes, and the PII field stays sealed at rest.
    let set = l.set.to_string();
    let o = sfsync(
        &[
            "conflicts",
            "resolve",
            &set,
            "--set",
            "Status=Waiting",
            "--set",
            "Foo__c=1",
        ],
        &config,
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        stderr(&o).contains("field 'Foo__c' is not a field of write"),
        "{}",
        show(&o)
    );
    assert_eq!(write_of(&site, l.set).0.state, WriteState::Conflict);
    let o = sfsync(
        &["conflicts", "resolve", &set, "--set", "status=Waiting"],
        &config,
    );
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let (w, _) = write_of(&site, l.set);
    assert_eq!(w.state, WriteState::Pending);
    assert_eq!(
        fields(&w),
        json!({"Status": "Waiting", "Description": "Call Jane Roe"})
    );
    assert!(
        site.files_containing("Call Jane Roe").is_empty(),
        "write fields in plaintext at rest"
    );

    // Wrong state, unknown id: exit 1 naming it; nothing written.
    let o = sfsync(&["conflicts", "resolve", &keep, "--take-writer"], &config);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        stderr(&o).contains(&format!("write {keep} is rejected, not in conflict")),
        "{}",
        show(&o)
    );
    assert_eq!(write_of(&site, l.keep).1.len(), log_len_after_keep());
    let o = sfsync(
        &["conflicts", "resolve", "999999", "--take-writer"],
        &config,
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        stderr(&o).contains("no write has id 999999"),
        "{}",
        show(&o)
    );

    // Usage errors: exit 2.
    let acct = l.account.to_string();
    for args in [
        vec!["conflicts", "resolve", acct.as_str()],
        vec![
            "conflicts",
            "resolve",
            acct.as_str(),
            "--keep-salesforce",
            "--take-writer",
        ],
        vec!["conflicts", "resolve", acct.as_str(), "--set", "Rating"],
    ] {
        let o = sfsync(&args, &config);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", show(&o));
    }
    assert_eq!(write_of(&site, l.account).0.state, WriteState::Conflict);
}

/// Stored, claimed, conflict, rejected.
fn log_len_after_keep() -> usize {
    4
}

// ---- dead letters ----

#[test]
fn deadletters_list_show_redrive_discard() {
    let site = Site::new();
    let l = write_ledger(&site);
    let config = site.config();

    let o = sfsync(&["deadletters", "list", "--json"], &config);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let rows = jsonl(&o);
    let refs: Vec<&str> = rows.iter().map(|r| r["ref"].as_str().unwrap()).collect();
    assert_eq!(
        refs,
        vec![
            format!("write:{}", l.failed),
            format!("write:{}", l.failed_2),
            format!("event:{}", l.event),
        ]
    );
    assert_eq!(rows[0]["last_error"], json!(SF_ERROR));
    assert_eq!(rows[2]["replay_id"], json!("0909"));
    assert_eq!(rows[2]["payload_sealed"], json!(true));
    let o = sfsync(
        &["deadletters", "list", "--kind", "events", "--json"],
        &config,
    );
    assert_eq!(jsonl(&o).len(), 1, "{}", show(&o));
    let o = sfsync(&["deadletters", "list", "--kind", "writes"], &config);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        stdout(&o).contains(SF_ERROR)
            && stdout(&o).contains("2 writes, 0 events, 0 deliveries shown"),
        "{}",
        show(&o)
    );

    // show: a write with Salesforce's error; an event with what to do instead of a redrive.
    let o = sfsync(&["deadletters", "show", &l.failed.to_string()], &config);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        stdout(&o).contains(&format!("error:         {SF_ERROR}"))
            && stdout(&o).contains("<encrypted>")
            && !stdout(&o).contains("Jane Roe"),
        "{}",
        show(&o)
    );
    let o = sfsync(
        &["deadletters", "show", &format!("event:{}", l.event)],
        &config,
    );
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["error"], json!("decode failed: bad union index"));
    assert!(
        v["redrive"]
            .as_str()
            .unwrap()
            .contains("--from-replay-id 0909 --channel /data/CaseChangeEvent"),
        "{v}"
    );
    let o = sfsync(&["deadletters", "show", "event:999999"], &config);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(stderr(&o).contains("no event dead letter has id 999999"));

    // redrive: per id; one failure makes exit 1; only the failed write moves.
    let o = sfsync(
        &[
            "deadletters",
            "redrive",
            &l.failed.to_string(),
            &l.pending.to_string(),
            "999999",
            &format!("event:{}", l.event),
            "--note",
            "column added",
        ],
        &config,
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let out = stdout(&o);
    for line in [
        format!(
            "write:{}: redriven by test-operator (now pending)",
            l.failed
        ),
        format!(
            "write:{}: is pending already: only a failed write can be redriven",
            l.pending
        ),
        "write:999999: no such write".to_string(),
        format!("event:{}: no redrive of event dead letters", l.event),
    ] {
        assert!(out.contains(&line), "missing '{line}': {}", show(&o));
    }
    let (w, log) = write_of(&site, l.failed);
    assert_eq!(
        (w.state, w.attempts, w.last_error.as_deref()),
        (WriteState::Pending, 1, Some(SF_ERROR))
    );
    let last = log.last().unwrap();
    assert_eq!(
        (last.actor.as_deref(), last.note.as_deref()),
        (Some("test-operator"), Some("column added"))
    );
    assert_eq!(write_of(&site, l.pending).1.len(), 1, "nothing recorded");

    // discard, then discard again: already discarded, exit 1.
    let id = l.failed_2.to_string();
    let o = sfsync(&["deadletters", "discard", &id, "--by", "bob"], &config);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let (w, _) = write_of(&site, l.failed_2);
    assert_eq!(
        (w.state, w.reason.as_deref()),
        (WriteState::Rejected, Some("discarded by bob"))
    );
    let o = sfsync(&["deadletters", "discard", &id], &config);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        stdout(&o).contains(&format!("write:{id}: already discarded")),
        "{}",
        show(&o)
    );

    // A bad id is a usage error naming it.
    let o = sfsync(&["deadletters", "redrive", "abc"], &config);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(stderr(&o).contains("'abc'"), "{}", show(&o));
}

// ---- runs (sync jobs) ----

#[test]
fn runs_retry_requeues_failed_and_cancelled_jobs_only() {
    let site = Site::new();
    let config = site.config();
    let job = |object: &str| NewSyncJob {
        kind: SyncJobKind::Backfill,
        object: object.into(),
        reason: "requested by operator".into(),
        since_ms: None,
        until_ms: None,
        params: "{}".into(),
        requested_by: "operator:ada".into(),
        resync_id: None,
    };
    let status = |s: SyncJobStatus, error: Option<&str>| SyncJobPatch {
        status: Some(s),
        error: error.map(str::to_string),
        counts: SyncCounts {
            read: 10,
            ..Default::default()
        },
        ..Default::default()
    };
    let (failed, cancelled, running, succeeded) = block_on(async {
        let s = site.store().await;
        let mut ids = Vec::new();
        for (object, st, err) in [
            (
                "Account",
                SyncJobStatus::Failed,
                Some("Bulk query job 750x: INVALID_FIELD"),
            ),
            ("Case", SyncJobStatus::Cancelled, None),
            ("Account", SyncJobStatus::Running, None),
            ("Case", SyncJobStatus::Succeeded, None),
        ] {
            let id = s.add_sync_job(&job(object)).await.unwrap();
            s.patch_sync_job(id, &status(st, err)).await.unwrap();
            ids.push(id);
        }
        (ids[0], ids[1], ids[2], ids[3])
    });
    let stored =
        |id: i64| block_on(async { site.store().await.sync_job(id).await.unwrap().unwrap() });
    let running_before = stored(running);
    let succeeded_before = stored(succeeded);

    let o = sfsync(
        &[
            "runs",
            "retry",
            &failed.to_string(),
            &running.to_string(),
            &succeeded.to_string(),
            "999999",
        ],
        &config,
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        stdout(&o).contains(&format!(
            "sync job {failed}: retried as attempt 2 (by test-operator)"
        )),
        "{}",
        show(&o)
    );
    for line in [
        format!("sync job {running} is running: only a failed or cancelled job can be retried"),
        format!("sync job {succeeded} is succeeded: only a failed or cancelled job can be retried"),
        "sync job 999999 does not exist".to_string(),
    ] {
        assert!(stderr(&o).contains(&line), "missing '{line}': {}", show(&o));
    }
    let j = stored(failed);
    assert_eq!(
        (j.status, j.attempts, j.error.as_deref(), j.counts.read),
        (SyncJobStatus::Pending, 2, None, 0)
    );
    assert_eq!(
        (
            j.previous_attempts[0].error.as_deref(),
            j.previous_attempts[0].retried_by.as_str()
        ),
        (
            Some("Bulk query job 750x: INVALID_FIELD"),
            "operator:test-operator"
        )
    );
    assert_eq!(stored(running), running_before, "nothing changed");
    assert_eq!(stored(succeeded), succeeded_before, "nothing changed");

    // `sfsync jobs` is the same command.
    let o = sfsync(
        &["jobs", "retry", &cancelled.to_string(), "--by", "bob"],
        &config,
    );
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(stored(cancelled).attempts, 2);
    let o = sfsync(&["runs", "list", "--status", "pending"], &config);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let listed = stdout(&o).lines().skip(1).count();
    assert_eq!(listed, 2, "{}", show(&o));
    let o = sfsync(&["runs", "show", &failed.to_string()], &config);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        stdout(&o).contains("attempts: 2") && stdout(&o).contains("INVALID_FIELD"),
        "{}",
        show(&o)
    );
}
