//! A local AWS-compatible server for the tests: `moto` in server mode (from PyPI through
//! tests/compat/requirements.txt) on a free loopback port, stopped on drop, and the standard
//! `AWS_*` variables that point a spawned `sfsync` (or the test's own client) at it.

#[path = "../../../../tests/compat/python_env.rs"]
pub mod python_env;

use std::process::{Command, Stdio};
use std::time::Duration;

use super::KillOnDrop;

/// A moto server (S3, KMS, Secrets Manager, …) on a free loopback port.
pub struct Moto {
    _child: KillOnDrop,
    pub port: u16,
}

impl Moto {
    /// Starts moto and waits until it listens (blocking: call it from `spawn_blocking`).
    pub fn start() -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = KillOnDrop(
            Command::new(python_env::python())
                .args([
                    "-m",
                    "moto.server",
                    "-H",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting moto (tests/compat/requirements.txt)"),
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "moto did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto {
            _child: child,
            port,
        }
    }

    /// One plain HTTP/1.1 request; (status, body).
    pub fn http(&self, method: &str, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    /// The keys under `prefix` in S3 bucket `bucket`.
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let (status, body) = self.http("GET", &format!("/{bucket}?list-type=2&prefix={prefix}"));
        assert_eq!(status, 200, "{body}");
        body.split("<Key>")
            .skip(1)
            .filter_map(|k| k.split_once("</Key>").map(|(k, _)| k.to_string()))
            .collect()
    }

    /// The standard AWS environment of a process using this server: endpoint, plain HTTP
    /// allowed, moto's test credentials, region.
    pub fn vars(&self) -> Vec<(String, String)> {
        [
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// sfsync's AWS client configured from [`Self::vars`] (for setting up keys and secrets).
    pub fn client(&self) -> sfsync_aws::AwsClient {
        let vars = self.vars();
        sfsync_aws::AwsClient::from_env(&|k| {
            vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
        .expect("an AWS client for moto")
    }
}
