//! The client against a local HTTP server that answers as scripted (throttling, 5xx, refusals,
//! silence): what is retried and what is not, how many attempts, and that every attempt is a
//! correctly signed AWS JSON 1.1 request (the test re-signs what the server received).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{NaiveDateTime, TimeZone, Utc};
use serde_json::json;
use sfsync_aws::sigv4::{self, Credentials};
use sfsync_aws::{AwsClient, AwsConfig, ErrorClass, ErrorKind, Service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One received request: lower-cased headers and the body.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the server answers: (status, body); `None` never answers.
type Script = Vec<Option<(u16, String)>>;

struct Server {
    port: u16,
    received: Arc<Mutex<Vec<Received>>>,
}

async fn serve(script: Script) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Arc::new(Mutex::new(Vec::new()));
    let log = received.clone();
    tokio::spawn(async move {
        let mut answers = script.into_iter();
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let head_end = loop {
                let n = sock.read(&mut chunk).await.unwrap();
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break Some(i);
                }
            };
            let Some(head_end) = head_end else { continue };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
            let mut lines = head.split("\r\n");
            let mut request_line = lines.next().unwrap().split(' ');
            let method = request_line.next().unwrap().to_string();
            let path = request_line.next().unwrap().to_string();
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            let len: usize = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .map_or(0, |(_, v)| v.parse().unwrap());
            let mut body = buf[head_end + 4..].to_vec();
            while body.len() < len {
                let n = sock.read(&mut chunk).await.unwrap();
                body.extend_from_slice(&chunk[..n]);
            }
            log.lock().unwrap().push(Received {
                method,
                path,
                headers,
                body,
            });
            match answers.next().flatten() {
                Some((status, body)) => {
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/x-amz-json-1.1\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                }
                None => {
                    // Silence: hold the connection open without answering.
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        drop(sock);
                    });
                }
            }
        }
    });
    Server { port, received }
}

fn client(port: u16, extra: &[(&str, &str)]) -> AwsClient {
    let mut vars: HashMap<String, String> = [
        ("AWS_REGION", "eu-west-1".to_string()),
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE".to_string()),
        (
            "AWS_SECRET_ACCESS_KEY",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_string(),
        ),
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ("AWS_ALLOW_HTTP", "true".to_string()),
        ("AWS_MAX_ATTEMPTS", "3".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, v) in extra {
        vars.insert(k.to_string(), v.to_string());
    }
    let mut config = AwsConfig::from_env(&|k| vars.get(k).cloned()).unwrap();
    config.base_backoff = Duration::from_millis(1);
    config.max_backoff = Duration::from_millis(5);
    config.request_timeout = Duration::from_millis(500);
    AwsClient::new(config).unwrap()
}

/// Re-signs a received request and compares with its Authorization header.
fn assert_signed(r: &Received, service: &str, token: Option<&str>) {
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/");
    let auth = r.header("authorization").expect("an Authorization header");
    let signed_names: Vec<&str> = auth
        .split("SignedHeaders=")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .split(';')
        .collect();
    // Sorted, as SigV4 requires.
    let expected = match token {
        Some(_) => vec![
            "content-type",
            "host",
            "x-amz-date",
            "x-amz-security-token",
            "x-amz-target",
        ],
        None => vec!["content-type", "host", "x-amz-date", "x-amz-target"],
    };
    assert_eq!(signed_names, expected, "{auth}");
    assert_eq!(r.header("x-amz-security-token"), token);
    let headers: Vec<(String, String)> = signed_names
        .iter()
        .map(|n| (n.to_string(), r.header(n).unwrap().to_string()))
        .collect();
    let date =
        NaiveDateTime::parse_from_str(r.header("x-amz-date").unwrap(), "%Y%m%dT%H%M%SZ").unwrap();
    let creds = Credentials {
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
        session_token: token.map(str::to_string),
    };
    let again = sigv4::sign(
        &sigv4::Request {
            method: "POST",
            path: "/",
            query: &[],
            headers: &headers,
            body: &r.body,
        },
        &creds,
        "eu-west-1",
        service,
        Utc.from_utc_datetime(&date),
    );
    assert_eq!(auth, again.authorization);
    assert!(
        auth.contains(&format!("/eu-west-1/{service}/aws4_request")),
        "{auth}"
    );
}

#[tokio::test]
async fn throttling_and_5xx_are_retried_and_every_attempt_is_signed() {
    let plaintext = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let server = serve(vec![
        Some((
            400,
            r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#.into(),
        )),
        Some((503, "<html>unavailable</html>".into())),
        Some((
            200,
            json!({ "KeyId": "arn:aws:kms:eu-west-1:1:key/k", "Plaintext": plaintext }).to_string(),
        )),
    ])
    .await;
    let c = client(server.port, &[("AWS_SESSION_TOKEN", "session-token-value")]);
    let context = sfsync_aws::EncryptionContext::from([("purpose".into(), "test".into())]);
    let d = c
        .kms_decrypt(b"blob", Some("alias/k"), &context)
        .await
        .unwrap();
    assert_eq!(d.plaintext, (0u8..32).collect::<Vec<_>>());
    let got = server.received.lock().unwrap().clone();
    assert_eq!(got.len(), 3, "two retries, then the answer");
    for r in &got {
        assert_eq!(r.header("x-amz-target"), Some("TrentService.Decrypt"));
        assert_eq!(r.header("content-type"), Some("application/x-amz-json-1.1"));
        assert_signed(r, "kms", Some("session-token-value"));
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            body,
            json!({ "CiphertextBlob": "YmxvYg==", "EncryptionContext": { "purpose": "test" },
                    "KeyId": "alias/k" })
        );
    }
}

#[tokio::test]
async fn a_refusal_is_not_retried_and_names_service_operation_and_secret() {
    let server = serve(vec![Some((
        400,
        r#"{"__type":"ResourceNotFoundException","Message":"Secrets Manager can't find the specified secret."}"#
            .into(),
    ))])
    .await;
    let c = client(server.port, &[]);
    let e = c
        .get_secret_value("prod/sfsync/salesforce", Some("AWSPREVIOUS"))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "Secrets Manager GetSecretValue (secret prod/sfsync/salesforce, stage AWSPREVIOUS): \
         ResourceNotFoundException: Secrets Manager can't find the specified secret. (HTTP 400)"
    );
    assert_eq!(e.class(), ErrorClass::User);
    let got = server.received.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].header("x-amz-target"),
        Some("secretsmanager.GetSecretValue")
    );
    assert_signed(&got[0], "secretsmanager", None);
}

#[tokio::test]
async fn retries_end_after_the_configured_attempts() {
    let server = serve(vec![
        Some((500, r#"{"__type":"KMSInternalException"}"#.into())),
        Some((500, r#"{"__type":"KMSInternalException"}"#.into())),
        Some((500, r#"{"__type":"KMSInternalException"}"#.into())),
        Some((200, "{}".into())),
    ])
    .await;
    let c = client(server.port, &[]);
    let e = c
        .kms_generate_data_key("alias/k", &Default::default())
        .await
        .unwrap_err();
    assert_eq!(e.attempts, 3, "{e}");
    assert_eq!(e.class(), ErrorClass::External);
    assert!(
        e.to_string()
            .ends_with("KMSInternalException (HTTP 500, after 3 attempts)"),
        "{e}"
    );
    assert_eq!(server.received.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn a_silent_server_times_out_and_a_success_body_is_never_quoted() {
    let server = serve(vec![None, None, None]).await;
    let c = client(server.port, &[]);
    let e = c
        .kms_decrypt(b"blob", None, &Default::default())
        .await
        .unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Transport(_)), "{e:?}");
    assert_eq!(e.attempts, 3);
    assert_eq!(e.service, Service::Kms);

    // A 200 without the expected fields: the error names the field, not the body.
    let server = serve(vec![Some((
        200,
        r#"{"SecretString":null,"Leaked":"top-secret-value"}"#.into(),
    ))])
    .await;
    let c = client(server.port, &[]);
    let e = c.get_secret_value("s", None).await.unwrap_err();
    assert!(matches!(e.kind, ErrorKind::InvalidResponse(_)), "{e:?}");
    assert!(!e.to_string().contains("top-secret-value"), "{e}");
    let server = serve(vec![Some((200, "not json: top-secret-value".into()))]).await;
    let c = client(server.port, &[]);
    let e = c.get_secret_value("s", None).await.unwrap_err();
    assert!(!e.to_string().contains("top-secret-value"), "{e}");
}
