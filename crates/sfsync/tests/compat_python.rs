//! Third-party client compatibility: unmodified Python libraries (pinned in
//! tests/compat/requirements.txt) run against a live emulator over HTTPS on loopback. The only
//! differences from real Salesforce are the URL and the CA they trust.
//!
//! The Python interpreter comes from `SFSYNC_TEST_PYTHON` (scripts/test prepares a virtualenv);
//! without it the test prepares `target/py-venv` itself, so plain `cargo test` works too.

use std::process::Command;

#[path = "../../../tests/compat/python_env.rs"]
mod python_env;

use python_env::{python, workspace_root};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_salesforce_works_against_the_emulator() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let running = sfsync_emulator::start(sfsync_emulator::EmulatorConfig::ephemeral(dir.path()))
        .await
        .unwrap();
    let py = tokio::task::spawn_blocking(python).await.unwrap();
    let script = workspace_root().join("tests/compat/simple_salesforce_check.py");
    let creds = running.credentials_path.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(py)
            .arg(script)
            .arg(creds)
            .output()
            .expect("running python")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "simple-salesforce check failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
    running.shutdown().await.unwrap();
}

/// An archive file written by `sfsync_store::archive` reads back in pyarrow with the declared
/// schema, zstd column chunks, the version metadata and every row as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyarrow_reads_an_archive_file() {
    use sfsync_store::archive::{Archive, ArchiveLocation, ArchiveRow};

    let dir = tempfile::tempdir().unwrap();
    let archive = Archive::open(&ArchiveLocation::Local(dir.path().join("archive"))).unwrap();
    // 2024-03-10T08:00:00Z.
    let t0 = 1_710_057_600_000i64;
    let rows: Vec<ArchiveRow> = (1..=4i64)
        .map(|i| ArchiveRow {
            offset: 100 + i,
            channel: "/data/CaseChangeEvent".into(),
            event_key: format!("Case:500xx000000{i:04}AAA:{}", t0 + i),
            replay_id: vec![0, 0, 0, 0, 0, 0x27, 0x10, i as u8],
            schema_id: "Z9x-case-schema".into(),
            entity: "Case".into(),
            change_type: "UPDATE".into(),
            commit_timestamp: t0 + i,
            commit_number: 1_100_583_868_458 + i,
            sequence_number: i as i32,
            payload: format!("avro bytes \u{1F680} #{i}").into_bytes(),
            sealed: false,
            appended_at_ms: t0 + i + 250,
        })
        .collect();
    let mut rows = rows;
    rows[1].sealed = true;
    rows[1].payload = b"SFE1\x02k1\x00\xff sealed".to_vec();
    rows[2].payload = Vec::new();
    rows[3].event_key = "Case:Ünïcödé:名前".into();
    let file = archive.write_file(&rows).await.unwrap();
    let path = dir.path().join("archive").join(&file.path);

    let py = tokio::task::spawn_blocking(python).await.unwrap();
    let script = workspace_root().join("tests/compat/read_archive.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(py)
            .arg(script)
            .arg(path)
            .output()
            .expect("running python")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "read_archive.py failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    let seen: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("read_archive.py printed no JSON ({e}):\n{stdout}"));

    assert_eq!(seen["num_rows"], 4);
    let ts = "timestamp[ms, tz=UTC]";
    let want_columns = [
        ("log_offset", "int64"),
        ("channel", "string"),
        ("event_key", "string"),
        ("replay_id", "binary"),
        ("schema_id", "string"),
        ("entity", "string"),
        ("change_type", "string"),
        ("commit_timestamp", ts),
        ("commit_number", "int64"),
        ("sequence_number", "int32"),
        ("payload", "binary"),
        ("payload_sealed", "bool"),
        ("appended_at", ts),
    ]
    .map(|(name, ty)| serde_json::json!([name, ty, false]));
    assert_eq!(seen["columns"], serde_json::json!(want_columns));
    assert_eq!(seen["codecs"], serde_json::json!(["ZSTD"]));
    assert_eq!(
        seen["metadata"],
        serde_json::json!({"sfsync.archive.version": "1"})
    );
    let want_rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "offset": r.offset,
                "event_key": r.event_key,
                "replay_id_hex": hex(&r.replay_id),
                "payload_hex": hex(&r.payload),
                "sealed": r.sealed,
                "commit_ms": r.commit_timestamp,
                "appended_ms": r.appended_at_ms,
            })
        })
        .collect();
    assert_eq!(seen["rows"], serde_json::json!(want_rows));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
