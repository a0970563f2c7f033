//! A client of the operator API for end-to-end tests.

use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde_json::Value as J;

/// A port free on loopback right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A client of the API at `base`.
pub struct Api {
    pub http: Client,
    pub base: String,
}

impl Api {
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&J>,
    ) -> (StatusCode, J) {
        let (status, text) = self.call_text(method, path, token, body).await;
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: {status}: not JSON ({e}): {text}"));
        (status, json)
    }

    pub async fn call_text(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&J>,
    ) -> (StatusCode, String) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status();
        (status, resp.text().await.unwrap())
    }

    pub async fn get(&self, path: &str, token: &str) -> J {
        let (status, body) = self.call("GET", path, Some(token), None).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    /// Waits until the API answers its OpenAPI document.
    pub async fn ready(&self) -> J {
        let mut last = String::new();
        for _ in 0..240 {
            match self
                .http
                .get(format!("{}/api/v1/openapi.json", self.base))
                .send()
                .await
            {
                Ok(r) if r.status() == StatusCode::OK => return r.json().await.unwrap(),
                Ok(r) => last = format!("status {}", r.status()),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("the API at {} never came up: {last}", self.base);
    }

    /// POST with a JSON body; asserts 200 and returns the body.
    pub async fn post(&self, path: &str, token: &str, body: &J) -> J {
        let (status, out) = self.call("POST", path, Some(token), Some(body)).await;
        assert_eq!(status, StatusCode::OK, "POST {path}: {out}");
        out
    }
}
