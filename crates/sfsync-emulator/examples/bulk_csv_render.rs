//! Measures how fast the emulator turns query rows into Bulk API 2.0 CSV: rendering into 10k-row
//! chunks (one and several threads), cutting pages, and gzip of the whole result. With `--org` it
//! also seeds a real in-memory org and times `Org::query` + rendering, the work a query job does.
//! Prints figures; asserts nothing about time.
//!
//! `cargo run --release -p sfsync-emulator --example bulk_csv_render -- [ROWS] [--org | --https]`
//! (`--https` runs the whole export through a real emulator over TLS with reqwest;
//! `BULK_PRECOMPRESS=0` turns off gzip pre-compression at job time.)
//! (`BULK_SOQL` overrides the org query; the seeded Accounts carry multi-KB descriptions, so the
//! default leaves `Description` out).

use std::time::Instant;

use serde_json::{json, Value};
use sfsync_emulator::bulk::csv_writer::{render_results, GzTrailer};
use sfsync_emulator::bulk::{ColumnDelimiter, LineEnding};

fn synthetic_rows(n: usize) -> (Vec<String>, Vec<Vec<Value>>) {
    let columns = [
        "Id",
        "Name",
        "Phone",
        "Industry",
        "AnnualRevenue",
        "NumberOfEmployees",
        "BillingCity",
        "Description",
        "CreatedDate",
        "LastModifiedDate",
    ]
    .map(String::from)
    .to_vec();
    let rows = (0..n)
        .map(|i| {
            vec![
                json!(format!("001Kx{:010}AAA", i)),
                json!(format!("Account {i} \"Holdings\", Ltd")),
                json!(format!("+1 555 {:07}", i % 10_000_000)),
                json!("Government"),
                json!(1_250_000.5 + i as f64),
                json!(i % 5000),
                json!("Springfield"),
                if i % 4 == 0 {
                    Value::Null
                } else {
                    json!("A moderately long description of the account\nwith a second line.")
                },
                json!("2024-04-26T16:36:32.000+0000"),
                json!("2024-05-01T08:00:00.000+0000"),
            ]
        })
        .collect();
    (columns, rows)
}

fn report(what: &str, rows: usize, bytes: usize, secs: f64) {
    println!(
        "{what:<34} {rows:>9} rows in {:>7.3} s = {:>10.0} rows/s, {:>7.1} MB/s",
        secs,
        rows as f64 / secs,
        bytes as f64 / secs / 1e6
    );
}

/// Exports `n` seeded Accounts through a running emulator over HTTPS (query job, poll, pages),
/// the way a client does, and prints the end-to-end rate with and without gzip.
async fn over_https(n: usize) -> anyhow::Result<()> {
    use sfsync_org::{ApiKind, CallContext};
    let dir = tempfile::tempdir()?;
    let running =
        sfsync_emulator::start(sfsync_emulator::EmulatorConfig::ephemeral(dir.path())).await?;
    let org = running.org().clone();
    let ctx = CallContext {
        user_id: org.admin_user_id(),
        api: ApiKind::Admin,
        api_version: "66.0".into(),
        client: None,
    };
    let t = Instant::now();
    tokio::task::spawn_blocking(move || org.seed(&ctx, "Account", n, 7))
        .await?
        .map_err(|e| anyhow::anyhow!("seeding: {e}"))?;
    println!("seeded {n} Accounts in {:.3} s", t.elapsed().as_secs_f64());
    if std::env::var("BULK_PRECOMPRESS").as_deref() == Ok("0") {
        let mut settings = running.state.bulk.settings();
        settings.precompress_gzip = false;
        running.state.bulk.set_settings(settings);
    }
    let token = running
        .state
        .auth
        .issue(running.state.auth.admin().user_id)
        .0;
    let pem = std::fs::read(&running.ca_pem_path)?;
    let soql = std::env::var("BULK_SOQL").unwrap_or_else(|_| {
        "SELECT Id, Name, Phone, Industry, AnnualRevenue, NumberOfEmployees, BillingCity, CreatedDate, LastModifiedDate FROM Account".to_string()
    });
    for gzip in [false, true] {
        let mut builder =
            reqwest::Client::builder().add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        if !gzip {
            builder = builder.no_gzip();
        }
        let client = builder.build()?;
        let base = format!("{}/services/data/v66.0/jobs/query", running.base_url);
        let t = Instant::now();
        let info: Value = client
            .post(&base)
            .bearer_auth(&token)
            .json(&json!({"operation": "query", "query": soql}))
            .send()
            .await?
            .json()
            .await?;
        let id = info["id"].as_str().unwrap_or_default().to_string();
        let created = t.elapsed().as_secs_f64();
        loop {
            let info: Value = client
                .get(format!("{base}/{id}"))
                .bearer_auth(&token)
                .send()
                .await?
                .json()
                .await?;
            if info["state"] == "JobComplete" {
                println!(
                    "  job {id}: totalProcessingTime {} ms (rendering{})",
                    info["totalProcessingTime"],
                    if gzip { " + gzip" } else { "" }
                );
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let complete = t.elapsed().as_secs_f64();
        let mut locator = String::new();
        let mut rows = 0usize;
        let mut bytes = 0usize;
        loop {
            let mut url = format!("{base}/{id}/results");
            if !locator.is_empty() {
                url.push_str(&format!("?locator={locator}"));
            }
            let mut resp = client.get(url).bearer_auth(&token).send().await?;
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string()
            };
            rows += header("sforce-numberofrecords")
                .parse::<usize>()
                .unwrap_or(0);
            locator = header("sforce-locator");
            while let Some(chunk) = resp.chunk().await? {
                bytes += chunk.len();
            }
            if locator == "null" || locator.is_empty() {
                break;
            }
        }
        let total = t.elapsed().as_secs_f64();
        println!(
            "HTTPS export (gzip={gzip}): create {created:.3} s, complete {complete:.3} s, downloaded {rows} rows / {bytes} bytes in {total:.3} s = {:.0} rows/s (no client-side CSV parsing)",
            rows as f64 / total
        );
    }
    running.shutdown().await?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--https") {
        let n: usize = args
            .iter()
            .find_map(|a| a.parse().ok())
            .unwrap_or(1_000_000);
        return tokio::runtime::Runtime::new()?.block_on(over_https(n));
    }
    let n: usize = args
        .iter()
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let with_org = args.iter().any(|a| a == "--org");

    let t = Instant::now();
    let (columns, rows) = synthetic_rows(n);
    println!(
        "built {n} synthetic rows in {:.3} s",
        t.elapsed().as_secs_f64()
    );

    let threads = std::thread::available_parallelism()
        .map(|p| p.get())
        .unwrap_or(1);
    for (th, gz) in [(1, false), (threads, false), (1, true), (threads, true)] {
        let t = Instant::now();
        let r = render_results(
            &columns,
            &rows,
            ColumnDelimiter::Comma,
            LineEnding::Lf,
            th,
            gz,
        );
        let secs = t.elapsed().as_secs_f64();
        let bytes: usize = r.chunks.iter().map(|c| c.bytes.len()).sum();
        let what = if gz { "render + gzip" } else { "render" };
        report(&format!("{what}, {th} thread(s)"), n, bytes, secs);
    }
    let r = render_results(
        &columns,
        &rows,
        ColumnDelimiter::Comma,
        LineEnding::Lf,
        threads,
        false,
    );
    let total: usize = r.chunks.iter().map(|c| c.bytes.len()).sum();

    let t = Instant::now();
    let mut pages = 0;
    let mut bytes = 0;
    let mut start = 0;
    while start < n {
        let end = (start + 100_000).min(n);
        for p in r.page_pieces(start, end) {
            bytes += p.bytes().len();
        }
        pages += 1;
        start = end;
    }
    report(
        &format!("cut {pages} pages (zero-copy)"),
        n,
        bytes,
        t.elapsed().as_secs_f64(),
    );

    let t = Instant::now();
    let mut trailer = GzTrailer::default();
    let mut gz_bytes = 0;
    for p in r.page_pieces(0, n) {
        let gz = p.gz();
        trailer.add(&gz);
        gz_bytes += gz.deflated.len();
    }
    let secs = t.elapsed().as_secs_f64();
    report("gzip (first time, level 1)", n, total, secs);
    println!(
        "  compressed {total} → {gz_bytes} bytes ({:.1} %)",
        gz_bytes as f64 * 100.0 / total as f64
    );
    let t = Instant::now();
    for p in r.page_pieces(0, n) {
        let _ = p.gz();
    }
    report("gzip (cached chunks)", n, total, t.elapsed().as_secs_f64());
    drop(r);
    drop(rows);

    if with_org {
        use sfsync_core::SfId;
        use sfsync_org::{ApiKind, CallContext, Org, OrgConfig, Schema};
        let org = Org::new(
            Schema::demo(),
            OrgConfig {
                org_id: SfId::from_parts("00D", 1),
                admin_username: "admin@example.org".into(),
            },
        );
        let ctx = CallContext {
            user_id: org.admin_user_id(),
            api: ApiKind::Admin,
            api_version: "66.0".into(),
            client: None,
        };
        let t = Instant::now();
        org.seed(&ctx, "Account", n, 7)
            .map_err(|e| anyhow::anyhow!("seeding: {e}"))?;
        println!("seeded {n} Accounts in {:.3} s", t.elapsed().as_secs_f64());
        let soql = std::env::var("BULK_SOQL").unwrap_or_else(|_| {
            "SELECT Id, Name, Phone, Industry, AnnualRevenue, NumberOfEmployees, BillingCity, CreatedDate, LastModifiedDate FROM Account".to_string()
        });
        println!("query: {soql}");
        let t = Instant::now();
        let result = org
            .query(&soql, false)
            .map_err(|e| anyhow::anyhow!("query: {e}"))?;
        let q = t.elapsed().as_secs_f64();
        report("Org::query", result.rows.len(), 0, q);
        let t = Instant::now();
        let r = render_results(
            &result.columns,
            &result.rows,
            ColumnDelimiter::Comma,
            LineEnding::Lf,
            threads,
            true,
        );
        let secs = t.elapsed().as_secs_f64();
        let bytes: usize = r.chunks.iter().map(|c| c.bytes.len()).sum();
        report("render + gzip org rows", r.total_rows, bytes, secs);
        report("query + render", r.total_rows, bytes, q + secs);
    }
    Ok(())
}
