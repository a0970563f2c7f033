//! Throughput of `Warehouse::commit_curated` on SQLite (and on Postgres when
//! `SFSYNC_BENCH_POSTGRES_URL` is set): upserts of rows with 40 columns (the id and 39 data
//! columns, 3 of them PII), in batches, each committed with the apply offset (no history or
//! audit). Prints rows/s for a pass of inserts and a pass of updates.
//!
//! `cargo run --release -p sfsync-store --example bench_commit [rows] [batch]`

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use sfsync_core::{RecordVersion, ReplayId};
use sfsync_store::*;

fn model() -> ObjectModel {
    let mut columns = vec![ColumnDef {
        name: "id".into(),
        field: "Id".into(),
        ty: ColumnType::Text,
        pii: false,
    }];
    let types = [
        ColumnType::Text,
        ColumnType::Integer,
        ColumnType::Real,
        ColumnType::Boolean,
        ColumnType::Date,
        ColumnType::Timestamp,
    ];
    for i in 0..39 {
        columns.push(ColumnDef {
            name: format!("field_{i}__c"),
            field: format!("Field_{i}__c"),
            ty: types[i % types.len()],
            pii: i < 3,
        });
    }
    ObjectModel {
        object: "Account".into(),
        table: "sf_account".into(),
        columns,
        history: None,
    }
}

fn row(m: &ObjectModel, n: usize) -> CurrentRow {
    let mut values = BTreeMap::new();
    for (i, c) in m.columns.iter().enumerate().skip(1) {
        let v = match c.ty {
            ColumnType::Text => Value::Text(format!("value {n} of column {i}")),
            ColumnType::Integer => Value::Int((n * i) as i64),
            ColumnType::Real => Value::Real(n as f64 * 0.5),
            ColumnType::Boolean => Value::Bool(n.is_multiple_of(2)),
            ColumnType::Date => Value::Date(20_000 + (n % 1000) as i32),
            ColumnType::Timestamp => Value::Timestamp(1_795_253_400_000 + n as i64),
        };
        values.insert(c.name.clone(), v);
    }
    CurrentRow {
        id: format!("001{n:015}"),
        values,
        meta: SyncMeta {
            version: RecordVersion {
                commit_timestamp: 1_795_253_400_000 + n as i64,
                commit_number: n as i64,
                sequence_number: 1,
            },
            change_type: "UPDATE".into(),
            source: ChangeSource::Cdc,
            transaction_key: format!("tx-{n}"),
            replay_id: Some(ReplayId::from_bytes(vec![0, 1, 2, 3, 4, 5, 6, 7])),
            run_id: "bench".into(),
            applied_at_ms: 1_795_253_400_000,
            origin_client: None,
        },
        deleted: false,
        base_version: RecordVersion::default(),
        field_versions: None,
        history_version: None,
        partial: false,
    }
}

async fn run(name: &str, w: &dyn Warehouse, total: usize, batch: usize) {
    let m = model();
    w.ensure_model(&m).await.unwrap();
    let rows: Vec<CurrentRow> = (0..total).map(|n| row(&m, n)).collect();
    for pass in ["insert", "update"] {
        let start = Instant::now();
        for (i, chunk) in rows.chunks(batch).enumerate() {
            let b = CuratedBatch {
                rows: chunk
                    .iter()
                    .map(|r| ("Account".to_string(), r.clone()))
                    .collect(),
                ..Default::default()
            };
            let offset = if pass == "insert" { i } else { rows.len() + i } as u64 + 1;
            w.commit_curated("bench", Some(offset), &b).await.unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{name}: {pass} {total} rows x {} columns in batches of {batch}: {:.2}s, {:.0} rows/s",
            m.columns.len(),
            secs,
            total as f64 / secs
        );
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let total = args.first().copied().unwrap_or(100_000);
    let batch = args.get(1).copied().unwrap_or(1_000);
    let keyring = Arc::new(Keyring::new("bench", [7; 32]));

    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteChangeLog::open(dir.path().join("bench.db"))
        .await
        .unwrap();
    sqlite.set_keyring(Some(keyring.clone()));
    run("sqlite", &sqlite, total, batch).await;

    if let Ok(url) = std::env::var("SFSYNC_BENCH_POSTGRES_URL") {
        let pg = PostgresChangeLog::connect(&url).await.unwrap();
        pg.set_keyring(Some(keyring));
        run("postgres", &pg, total, batch).await;
    }
}
