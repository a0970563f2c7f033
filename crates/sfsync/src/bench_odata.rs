//! `sfsync bench odata`: OData page latency for a 10,000-row entity set.
//!
//! Fills a SQLite warehouse with N curated Accounts (16 fields, one PII field sealed as in
//! production), serves the real API router (the same one `sfsync run` serves) on loopback, and
//! pages through the `Account` entity set by `@odata.nextLink` at the default page size —
//! without a filter, and with `$filter` (a range on an integer and `startswith` on a text
//! field) — several times, timing every page request end to end (HTTP, parsing, SQL, JSON).
//!
//! Figures, not assertions: p50/p99/max page latency in milliseconds, pages and entities per
//! run, entities per second.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use serde_json::{json, Value as J};
use sfsync_core::RecordVersion;
use sfsync_store::{
    ChangeSource, ColumnDef, ColumnType, CuratedBatch, CurrentRow, Keyring, ObjectModel,
    SqliteChangeLog, SyncMeta, Value, Warehouse,
};

/// Options of the OData benchmark.
#[derive(Debug, Clone)]
pub struct OdataBenchOptions {
    /// Rows of the entity set.
    pub rows: usize,
    /// Passes over the entity set per variant.
    pub passes: usize,
}

const TOKEN: &str = "bench-odata-token-0123456789";

fn model() -> ObjectModel {
    let col = |name: &str, field: &str, ty, pii| ColumnDef {
        name: name.into(),
        field: field.into(),
        ty,
        pii,
    };
    let mut columns = vec![
        col("id", "Id", ColumnType::Text, false),
        col("name", "Name", ColumnType::Text, false),
        col("industry", "Industry", ColumnType::Text, false),
        col(
            "numberofemployees",
            "NumberOfEmployees",
            ColumnType::Integer,
            false,
        ),
        col("annualrevenue", "AnnualRevenue", ColumnType::Real, false),
        col("phone", "Phone", ColumnType::Text, true),
        col("createddate", "CreatedDate", ColumnType::Timestamp, false),
    ];
    for i in 0..9 {
        columns.push(col(
            &format!("field_{i}__c"),
            &format!("Field_{i}__c"),
            ColumnType::Text,
            false,
        ));
    }
    ObjectModel {
        object: "Account".into(),
        table: "sf_account".into(),
        columns,
        history: None,
    }
}

fn row(n: usize) -> CurrentRow {
    let id = format!("001{n:015}");
    let mut values = BTreeMap::new();
    values.insert("name".into(), Value::Text(format!("Account {n:05}")));
    values.insert(
        "industry".into(),
        Value::Text(["Banking", "Energy", "Retail"][n % 3].into()),
    );
    values.insert("numberofemployees".into(), Value::Int((n % 1000) as i64));
    values.insert("annualrevenue".into(), Value::Real(n as f64 * 123.5));
    values.insert("phone".into(), Value::Text(format!("555-{n:06}")));
    values.insert(
        "createddate".into(),
        Value::Timestamp(1_790_000_000_000 + n as i64 * 1000),
    );
    for i in 0..9 {
        values.insert(
            format!("field_{i}__c"),
            Value::Text(format!("value {i} of account {n}")),
        );
    }
    let version = RecordVersion {
        commit_timestamp: 1_790_000_000_000 + n as i64,
        commit_number: n as i64,
        sequence_number: 1,
    };
    CurrentRow {
        id,
        values,
        meta: SyncMeta {
            version,
            change_type: "CREATE".into(),
            source: ChangeSource::Cdc,
            transaction_key: format!("tx-{n}"),
            replay_id: None,
            run_id: "bench".into(),
            applied_at_ms: 1_790_000_000_500 + n as i64,
            origin_client: None,
        },
        deleted: false,
        base_version: version,
        field_versions: None,
        history_version: None,
        partial: false,
    }
}

/// A config that serves `Account` over OData (validation reads no file).
fn config(dir: &std::path::Path) -> anyhow::Result<crate::config::LoadedConfig> {
    let text = r#"[salesforce]
credentials_file = "creds.json"

[[objects]]
name = "Account"
pii_fields = ["Phone"]

[warehouse]
type = "sqlite"
path = "wh.db"

[pii]
key_file = "pii.key"
key_id = "bench"

[api]
listen = "127.0.0.1:0"
read_rate_per_sec = 0

[[api.tokens]]
name = "bench"
role = "viewer"
token_env = "SFSYNC_BENCH_ODATA_TOKEN"

[odata]
entity_sets = ["Account"]
"#;
    crate::config::load_str(text, "bench.toml", dir).map_err(|e| anyhow::anyhow!("{e}"))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub async fn run(opts: OdataBenchOptions) -> anyhow::Result<J> {
    let rows = opts.rows.max(1);
    let passes = opts.passes.max(1);
    let dir = tempfile::tempdir().context("creating the bench directory")?;
    let store = SqliteChangeLog::open(dir.path().join("wh.db"))
        .await
        .context("opening the warehouse")?;
    store.set_keyring(Some(Arc::new(Keyring::new("bench", [7; 32]))));
    store.ensure_model(&model()).await?;
    println!("Filling sf_account with {rows} rows…");
    for start in (0..rows).step_by(1000) {
        let batch = CuratedBatch {
            rows: (start..(start + 1000).min(rows))
                .map(|n| ("Account".to_string(), row(n)))
                .collect(),
            ..Default::default()
        };
        store.commit_curated("bench", None, &batch).await?;
    }
    let loaded = config(dir.path())?;
    let cfg = &loaded.config;
    let api = cfg.api.as_ref().context("the bench config has an API")?;
    let tokens = [crate::config::secrets::ApiToken {
        name: "bench".into(),
        role: crate::config::ApiRole::Viewer,
        source_system: None,
        token: crate::config::Secret::new(TOKEN),
        pii: false,
    }];
    let state = crate::api::ApiState::new(
        cfg,
        api,
        &tokens,
        Arc::new(store),
        Arc::new(sfsync_pipeline::PipelineStats::default()),
        "bench".into(),
        None,
    );
    let page_size = cfg.odata.as_ref().map_or(0, |o| o.page_size);
    let router = crate::api::router(Arc::new(state), 1 << 20);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}/odata/v4/", listener.local_addr()?);
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let http = reqwest::Client::new();
    let variants = [
        ("no filter", None),
        (
            "filter",
            Some("NumberOfEmployees ge 250 and startswith(Name,'Account')"),
        ),
    ];
    println!();
    println!(
        "{:<10}  {:>6}  {:>8}  {:>7}  {:>7}  {:>7}  {:>10}",
        "variant", "pages", "entities", "p50 ms", "p99 ms", "max ms", "entities/s"
    );
    let mut out = Vec::new();
    for (name, filter) in variants {
        let mut lat = Vec::new();
        let mut entities = 0usize;
        let t = Instant::now();
        for _ in 0..passes {
            let mut url = format!("{base}Account");
            if let Some(f) = filter {
                url = format!(
                    "{url}?{}",
                    form_urlencoded::Serializer::new(String::new())
                        .append_pair("$filter", f)
                        .finish()
                );
            }
            loop {
                let t0 = Instant::now();
                let resp = http.get(&url).bearer_auth(TOKEN).send().await?;
                let status = resp.status();
                let body: J = resp.json().await?;
                lat.push(t0.elapsed().as_secs_f64() * 1000.0);
                anyhow::ensure!(status.is_success(), "GET {url}: {status}: {body}");
                entities += body["value"].as_array().map_or(0, Vec::len);
                match body["@odata.nextLink"].as_str() {
                    Some(next) => url = next.to_string(),
                    None => break,
                }
            }
        }
        let secs = t.elapsed().as_secs_f64();
        let pages = lat.len();
        lat.sort_by(f64::total_cmp);
        let (p50, p99, max) = (
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat.last().copied().unwrap_or(0.0),
        );
        println!(
            "{name:<10}  {pages:>6}  {entities:>8}  {p50:>7.2}  {p99:>7.2}  {max:>7.2}  {:>10.0}",
            entities as f64 / secs
        );
        out.push(json!({
            "variant": name,
            "filter": filter,
            "passes": passes,
            "pages": pages,
            "entities": entities,
            "page_latency_ms": { "p50": p50, "p99": p99, "max": max },
            "entities_per_sec": entities as f64 / secs,
        }));
    }
    server.abort();
    Ok(json!({
        "suite": "odata",
        "rows": rows,
        "page_size": page_size,
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "runs": out,
    }))
}
