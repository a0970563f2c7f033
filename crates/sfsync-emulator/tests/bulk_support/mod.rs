//! Shared helpers of the Bulk API 2.0 integration tests: a real emulator on free ports, an
//! HTTPS client that trusts its CA, and small request helpers.

#![allow(dead_code)]

use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sfsync_emulator::{EmulatorConfig, RunningEmulator};
use sfsync_org::{ApiKind, CallContext, DmlOp};

pub const V: &str = "v66.0";

pub struct Env {
    pub running: RunningEmulator,
    /// No automatic decompression: tests see the bytes on the wire.
    pub client: reqwest::Client,
    pub token: String,
    _dir: tempfile::TempDir,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("UTF-8 body")
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header").to_string())
    }

    /// The first Bulk error code of an error body.
    pub fn error_code(&self) -> String {
        self.json()[0]["errorCode"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn error_message(&self) -> String {
        self.json()[0]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

impl Env {
    pub async fn start() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let running = sfsync_emulator::start(EmulatorConfig::ephemeral(dir.path()))
            .await
            .expect("emulator starts");
        let pem = std::fs::read(&running.ca_pem_path).expect("CA file");
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA PEM"))
            .no_gzip()
            .build()
            .expect("client");
        let token = running
            .state
            .auth
            .issue(running.state.auth.admin().user_id)
            .0;
        Env {
            running,
            client,
            token,
            _dir: dir,
        }
    }

    /// A client that asks for gzip and decompresses transparently (as real clients do).
    pub fn gzip_client(&self) -> reqwest::Client {
        let pem = std::fs::read(&self.running.ca_pem_path).expect("CA file");
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA PEM"))
            .build()
            .expect("client")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/services/data/{V}{path}", self.running.base_url)
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("request sent");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.expect("body read").to_vec();
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.client.get(self.url(path))).await
    }

    pub async fn post_json(&self, path: &str, body: Value) -> Reply {
        self.send(self.client.post(self.url(path)).json(&body))
            .await
    }

    pub async fn patch_json(&self, path: &str, body: Value) -> Reply {
        self.send(self.client.patch(self.url(path)).json(&body))
            .await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(self.client.delete(self.url(path))).await
    }

    pub async fn put_csv(&self, path: &str, csv: impl Into<Vec<u8>>) -> Reply {
        self.send(
            self.client
                .put(self.url(path))
                .header("Content-Type", "text/csv")
                .body(csv.into()),
        )
        .await
    }

    /// Creates an ingest job and returns its info.
    pub async fn create_ingest(&self, body: Value) -> Value {
        let r = self.post_json("/jobs/ingest", body).await;
        assert_eq!(r.status, 200, "create: {}", r.text());
        r.json()
    }

    /// Polls a job until it leaves UploadComplete/InProgress; returns its final info.
    pub async fn wait_done(&self, kind: &str, id: &str) -> Value {
        for _ in 0..600 {
            let info = self.get(&format!("/jobs/{kind}/{id}")).await.json();
            match info["state"].as_str() {
                Some("JobComplete" | "Failed" | "Aborted") => return info,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        panic!("job {id} did not finish");
    }

    /// Runs a whole ingest job: create, upload `csv`, UploadComplete, wait. Returns the final info.
    pub async fn ingest(&self, mut body: Value, csv: &str) -> Value {
        if body.get("contentType").is_none() {
            body["contentType"] = json!("CSV");
        }
        let info = self.create_ingest(body).await;
        let id = info["id"].as_str().unwrap().to_string();
        let r = self
            .put_csv(&format!("/jobs/ingest/{id}/batches"), csv)
            .await;
        assert_eq!(r.status, 201, "upload: {}", r.text());
        let r = self
            .patch_json(
                &format!("/jobs/ingest/{id}"),
                json!({"state": "UploadComplete"}),
            )
            .await;
        assert_eq!(r.status, 200, "complete: {}", r.text());
        self.wait_done("ingest", &id).await
    }

    /// A result file of an ingest job parsed with `delimiter`: header and rows.
    pub async fn results(
        &self,
        id: &str,
        which: &str,
        delimiter: u8,
    ) -> (Vec<String>, Vec<Vec<String>>) {
        let r = self.get(&format!("/jobs/ingest/{id}/{which}")).await;
        assert_eq!(r.status, 200, "{which}: {}", r.text());
        assert_eq!(r.header("content-type").as_deref(), Some("text/csv"));
        parse_csv(&r.body, delimiter)
    }

    /// Rows of a SOQL query run directly against the org (values as JSON).
    pub fn org_query(&self, soql: &str, all: bool) -> Vec<Vec<Value>> {
        self.running
            .org()
            .query(soql, all)
            .unwrap_or_else(|e| panic!("{soql}: {e}"))
            .rows
    }

    /// Inserts records straight into the org (admin context). Returns their ids.
    pub fn seed(&self, object: &str, records: Vec<Value>) -> Vec<String> {
        let ctx = CallContext {
            user_id: self.running.state.auth.admin().user_id,
            api: ApiKind::Admin,
            api_version: "66.0".into(),
            client: None,
        };
        let ops = records
            .into_iter()
            .map(|r| DmlOp::Insert {
                object: object.to_string(),
                fields: r.as_object().expect("object").clone(),
            })
            .collect();
        self.running
            .org()
            .execute(&ctx, ops, true)
            .into_iter()
            .map(|r| r.expect("seed insert").id().as_str().to_string())
            .collect()
    }
}

/// Parses CSV (strictly: every row as long as the header).
pub fn parse_csv(data: &[u8], delimiter: u8) -> (Vec<String>, Vec<Vec<String>>) {
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(true)
        .from_reader(data);
    let header = rdr
        .headers()
        .expect("CSV header")
        .iter()
        .map(str::to_string)
        .collect();
    let rows = rdr
        .records()
        .map(|r| {
            r.unwrap_or_else(|e| panic!("CSV row ({e}): {}", String::from_utf8_lossy(data)))
                .iter()
                .map(str::to_string)
                .collect()
        })
        .collect();
    (header, rows)
}
