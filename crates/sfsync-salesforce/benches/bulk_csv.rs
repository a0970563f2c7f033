//! Bulk CSV reader throughput: 1,000,000 Account rows through the incremental parser alone, and
//! through `CsvResultStream` over loopback HTTP (4 result pages with locators, plain and gzip).
//! Prints figures; asserts only correctness (row counts). `cargo bench -p sfsync-salesforce`
//! runs the full size; under `cargo test` it runs a small smoke size.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use sfsync_salesforce::bulk::csv::{CsvOptions, CsvParser};
use sfsync_salesforce::bulk::QueryResultsOptions;
use sfsync_salesforce::{ClientConfig, Credentials, SalesforceClient};

fn account_page(start: usize, n: usize) -> Vec<u8> {
    let mut s = String::with_capacity(n * 220);
    s.push_str("Id,Name,Type,BillingCity,BillingCountry,Phone,Industry,AnnualRevenue,NumberOfEmployees,Description,CreatedDate,SystemModstamp\n");
    for i in start..start + n {
        let desc = if i % 10 == 0 {
            format!("\"Key account, tier {} \"\"gold\"\"\nsecond line\"", i % 7)
        } else {
            String::new()
        };
        s.push_str(&format!(
            "001{i:015},\"Account {i}, Ltd\",Customer - Direct,City {c},Country {k},+1 555 {p:07},Technology,{rev}.0,{emp},{desc},2024-04-26T16:36:32.000Z,2024-04-26T16:36:32.000Z\n",
            c = i % 977,
            k = i % 31,
            p = i % 9_999_999,
            rev = i * 13 % 10_000_000,
            emp = i % 5000,
        ));
    }
    s.into_bytes()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

struct Pages {
    plain: Vec<(Bytes, usize)>,
    gz: Vec<Bytes>,
}

async fn token() -> axum::Json<serde_json::Value> {
    axum::Json(
        serde_json::json!({"access_token": "t", "instance_url": "http://x", "id": "https://x/id/00D/005"}),
    )
}

async fn results(
    State(p): State<Arc<Pages>>,
    Path(job): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let idx: usize = q.get("locator").map_or(0, |l| l.parse().unwrap_or(0));
    let gz = headers
        .get("accept-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"))
        && job.starts_with("750gz");
    let (body, rows) = if gz {
        (p.gz[idx].clone(), p.plain[idx].1)
    } else {
        p.plain[idx].clone()
    };
    let mut r = Response::new(axum::body::Body::from(body));
    let h = r.headers_mut();
    h.insert("content-type", "text/csv".parse().unwrap());
    if gz {
        h.insert("content-encoding", "gzip".parse().unwrap());
    }
    let loc = if idx + 1 < p.plain.len() {
        (idx + 1).to_string()
    } else {
        "null".into()
    };
    h.insert("sforce-locator", loc.parse().unwrap());
    h.insert("sforce-numberofrecords", rows.to_string().parse().unwrap());
    r
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let total: usize = if full { 1_000_000 } else { 20_000 };
    let pages_n = 4;
    let per_page = total / pages_n;

    let t = Instant::now();
    let plain: Vec<(Bytes, usize)> = (0..pages_n)
        .map(|p| (Bytes::from(account_page(p * per_page, per_page)), per_page))
        .collect();
    let bytes: usize = plain.iter().map(|p| p.0.len()).sum();
    let gz: Vec<Bytes> = plain.iter().map(|p| Bytes::from(gzip(&p.0))).collect();
    println!(
        "generated {total} rows, {:.1} MB CSV ({:.1} MB gzip) in {:.2}s",
        bytes as f64 / 1e6,
        gz.iter().map(|g| g.len()).sum::<usize>() as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    // 1. Parser alone, 64 KiB chunks.
    let t = Instant::now();
    let mut rows = 0usize;
    let mut field_bytes = 0usize;
    let mut parser = CsvParser::new(CsvOptions::default());
    for (page, _) in &plain {
        parser.reset();
        for chunk in page.chunks(64 * 1024) {
            parser.feed(chunk).unwrap();
            if parser.completed_rows() >= 4096 {
                let b = parser.take_batch().unwrap();
                rows += b.len();
                field_bytes += b
                    .iter()
                    .map(|r| r.get(1).map_or(0, str::len))
                    .sum::<usize>();
            }
        }
        parser.finish().unwrap();
        rows += parser.take_batch().unwrap().len();
    }
    assert_eq!(rows, total);
    let s = t.elapsed().as_secs_f64();
    println!(
        "parser only:            {rows} rows in {s:.3}s = {:>10.0} rows/s, {:.0} MB/s (checksum {field_bytes})",
        rows as f64 / s,
        bytes as f64 / 1e6 / s
    );

    // 2. Loopback HTTP through CsvResultStream.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let state = Arc::new(Pages { plain, gz });
        let app = Router::new()
            .route("/services/oauth2/token", post(token))
            .route("/services/data/v66.0/jobs/query/{id}/results", get(results))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = SalesforceClient::new(
            ClientConfig::new(&base, None),
            Credentials::ClientCredentials { instance_url: base.clone(), client_id: "c".into(), client_secret: "s".into() },
        )
        .unwrap();
        for (label, job) in [("loopback HTTP plain:    ", "750plain"), ("loopback HTTP gzip:     ", "750gz")] {
            let bulk = client.bulk();
            let t = Instant::now();
            let opts = QueryResultsOptions::default();
            let mut stream = bulk.query_results(job, b',', opts).await.unwrap();
            let mut rows = 0usize;
            let mut max_batch_bytes = 0usize;
            while let Some(b) = stream.next_batch().await.unwrap() {
                rows += b.len();
                max_batch_bytes = max_batch_bytes.max(b.text_bytes());
            }
            assert_eq!(rows, total);
            let s = t.elapsed().as_secs_f64();
            println!(
                "{label}{rows} rows in {s:.3}s = {:>10.0} rows/s ({} pages, largest batch {:.1} KB)",
                rows as f64 / s,
                stream.pages(),
                max_batch_bytes as f64 / 1e3
            );
        }
    });
}
