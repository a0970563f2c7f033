//! Shared harness of the REST, Composite and admin integration tests: starts a real emulator
//! on free ports over HTTPS (trusting its generated CA), logs in with the OAuth
//! username-password flow and offers small JSON request helpers.
#![allow(dead_code)]

use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::Value;
use sfsync_emulator::{EmulatorConfig, RunningEmulator};

pub const V: &str = "/services/data/v66.0";

pub struct Emu {
    pub running: RunningEmulator,
    pub client: reqwest::Client,
    pub token: String,
    _dir: Option<tempfile::TempDir>,
}

/// A response: status, headers and the body as JSON (`Null` when empty, a string when not JSON).
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Resp {
    /// The first error code of a Salesforce error array.
    pub fn error_code(&self) -> &str {
        self.body[0]["errorCode"].as_str().unwrap_or_default()
    }

    pub fn message(&self) -> &str {
        self.body[0]["message"].as_str().unwrap_or_default()
    }

    /// `used` of `Sforce-Limit-Info: api-usage=used/max`.
    pub fn api_used(&self) -> u64 {
        let h = self.headers["sforce-limit-info"].to_str().unwrap();
        let usage = h.strip_prefix("api-usage=").unwrap();
        usage.split('/').next().unwrap().parse().unwrap()
    }
}

impl Emu {
    pub async fn start() -> Emu {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = EmulatorConfig::ephemeral(dir.path());
        Emu::start_config(config, Some(dir)).await
    }

    /// An emulator that persists its org (and CDC log) in `data_dir`, which the caller keeps, so
    /// a later start on the same directory finds them again.
    pub async fn start_persistent(data_dir: &std::path::Path) -> Emu {
        let mut config = EmulatorConfig::ephemeral(data_dir);
        config.persist = true;
        Emu::start_config(config, None).await
    }

    async fn start_config(config: EmulatorConfig, dir: Option<tempfile::TempDir>) -> Emu {
        let running = sfsync_emulator::start(config)
            .await
            .expect("emulator starts");
        let ca = std::fs::read(&running.ca_pem_path).expect("CA file");
        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca).expect("CA parses")])
            .build()
            .expect("client");
        let c = &running.credentials;
        let password = format!("{}{}", c.password, c.security_token);
        let form = [
            ("grant_type", "password"),
            ("client_id", c.client_id.as_str()),
            ("client_secret", c.client_secret.as_str()),
            ("username", c.username.as_str()),
            ("password", password.as_str()),
        ];
        let login = client
            .post(format!("{}/services/oauth2/token", running.base_url))
            .form(&form)
            .send()
            .await
            .expect("token request");
        assert_eq!(login.status().as_u16(), 200, "password login works");
        let body: Value = login.json().await.expect("token JSON");
        let token = body["access_token"]
            .as_str()
            .expect("access_token")
            .to_string();
        Emu {
            running,
            client,
            token,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.running.base_url, path)
    }

    pub fn admin_token(&self) -> String {
        self.running.credentials.admin_token.clone()
    }

    async fn finish(r: reqwest::Response) -> Resp {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let bytes = r.bytes().await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Resp {
            status,
            headers,
            body,
        }
    }

    /// A request with an explicit token (or none) and extra headers.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Resp {
        let mut req = self.client.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        Emu::finish(req.send().await.expect("request is sent")).await
    }

    /// An authenticated JSON request.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        let bytes = body.map(|b| serde_json::to_vec(&b).unwrap());
        self.raw(method, path, Some(&self.token), &[], bytes).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Resp {
        self.call(Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.call(Method::DELETE, path, None).await
    }

    /// An admin API request with the admin token.
    pub async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        let bytes = body.map(|b| serde_json::to_vec(&b).unwrap());
        let token = self.admin_token();
        self.raw(method, path, Some(&token), &[], bytes).await
    }

    /// `SELECT …` through REST, all pages concatenated is not needed here: the first page.
    pub async fn query(&self, soql: &str) -> Resp {
        self.get(&format!("{V}/query?q={}", encode(soql))).await
    }

    pub async fn query_all(&self, soql: &str) -> Resp {
        self.get(&format!("{V}/queryAll?q={}", encode(soql))).await
    }

    /// Creates an Account and returns its id.
    pub async fn create_account(&self, name: &str) -> String {
        let r = self
            .post(
                &format!("{V}/sobjects/Account"),
                serde_json::json!({ "Name": name }),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        r.body["id"].as_str().unwrap().to_string()
    }

    pub async fn count(&self, soql: &str) -> u64 {
        let r = self.query(soql).await;
        assert_eq!(r.status, 200, "{soql}: {:?}", r.body);
        r.body["totalSize"].as_u64().unwrap()
    }
}

pub fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
