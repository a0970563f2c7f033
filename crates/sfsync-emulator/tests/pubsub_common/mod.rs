//! Harness of the Pub/Sub integration tests: a real emulator on free ports, a tonic Pub/Sub
//! client over TLS trusting the emulator's CA, requests carrying the auth metadata, and Avro
//! decoding of payloads with the reference implementation using GetSchema's JSON.
#![allow(dead_code)]

use std::time::Duration;

use apache_avro::types::Value as Avro;
use sfsync_emulator::cdc::{bitmap, CdcConfig};
use sfsync_emulator::{EmulatorConfig, RunningEmulator};
use sfsync_org::{ApiKind, CallContext, DmlOp, DmlOutcome, Fields};
use sfsync_pubsub_proto::pub_sub_client::PubSubClient;
use sfsync_pubsub_proto::{FetchRequest, FetchResponse, ReplayPreset, SchemaRequest};
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::{Request, Status, Streaming};

pub struct Emu {
    pub running: RunningEmulator,
    pub token: String,
    pub client: PubSubClient<Channel>,
    _dir: tempfile::TempDir,
}

pub fn ctx(emu: &Emu, client: Option<&str>) -> CallContext {
    CallContext {
        user_id: emu.running.state.auth.admin().user_id,
        api: ApiKind::Soap,
        api_version: "66.0".into(),
        client: client.map(String::from),
    }
}

pub fn fields(v: serde_json::Value) -> Fields {
    v.as_object().expect("object").clone()
}

impl Emu {
    pub async fn start(cdc: CdcConfig) -> Emu {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = EmulatorConfig::ephemeral(dir.path());
        config.cdc = cdc;
        let running = sfsync_emulator::start(config)
            .await
            .expect("emulator starts");
        let (token, _) = running.state.auth.issue(running.state.auth.admin().user_id);
        let client = connect(&running).await;
        Emu {
            running,
            token,
            client,
            _dir: dir,
        }
    }

    pub fn org_id(&self) -> String {
        self.running.credentials.org_id.clone()
    }

    /// A request with the auth metadata (camel-cased keys as the Java sample sends them).
    pub fn req<T>(&self, msg: T) -> Request<T> {
        with_auth(msg, &self.token, &self.running.base_url, &self.org_id())
    }

    /// Runs DML as one transaction; returns the ids.
    pub fn dml(&self, ops: Vec<DmlOp>) -> Vec<String> {
        self.dml_as(ops, None)
    }

    pub fn dml_as(&self, ops: Vec<DmlOp>, client: Option<&str>) -> Vec<String> {
        self.running
            .org()
            .execute(&ctx(self, client), ops, true)
            .into_iter()
            .map(|r| match r {
                Ok(o) => match o {
                    DmlOutcome::Created(id)
                    | DmlOutcome::Updated(id)
                    | DmlOutcome::Deleted(id)
                    | DmlOutcome::Undeleted(id)
                    | DmlOutcome::HardDeleted(id) => id.as_str().to_string(),
                },
                Err(e) => panic!("DML failed: {e:?}"),
            })
            .collect()
    }

    pub fn insert_account(&self, name: &str) -> String {
        self.dml(vec![DmlOp::Insert {
            object: "Account".into(),
            fields: fields(serde_json::json!({"Name": name})),
        }])
        .remove(0)
    }

    pub async fn schema_json(&self, id: &str) -> String {
        self.client
            .clone()
            .get_schema(self.req(SchemaRequest {
                schema_id: id.to_string(),
            }))
            .await
            .expect("GetSchema")
            .into_inner()
            .schema_json
    }

    /// Opens Subscribe with the first FetchRequest; returns the request sender and the stream.
    pub async fn subscribe(
        &self,
        topic: &str,
        preset: ReplayPreset,
        replay_id: Vec<u8>,
        n: i32,
    ) -> (mpsc::Sender<FetchRequest>, Streaming<FetchResponse>) {
        let (tx, rx) = mpsc::channel(16);
        tx.send(FetchRequest {
            topic_name: topic.to_string(),
            replay_preset: preset as i32,
            replay_id,
            num_requested: n,
            auth_refresh: String::new(),
        })
        .await
        .unwrap();
        let stream = self
            .client
            .clone()
            .subscribe(self.req(ReceiverStream::new(rx)))
            .await
            .expect("Subscribe call")
            .into_inner();
        (tx, stream)
    }
}

pub fn with_auth<T>(msg: T, token: &str, instance: &str, tenant: &str) -> Request<T> {
    let mut r = Request::new(msg);
    let md = r.metadata_mut();
    md.insert("accesstoken", token.parse().unwrap());
    md.insert("instanceurl", instance.parse().unwrap());
    md.insert("tenantid", tenant.parse().unwrap());
    r
}

pub async fn connect(running: &RunningEmulator) -> PubSubClient<Channel> {
    let ca = std::fs::read(&running.ca_pem_path).expect("CA file");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{}", running.credentials.pubsub_address))
        .unwrap()
        .tls_config(tls)
        .expect("TLS config")
        .connect()
        .await
        .expect("gRPC connect over TLS");
    PubSubClient::new(channel).max_decoding_message_size(8 * 1024 * 1024)
}

/// The next message within 5 s.
pub async fn next(stream: &mut Streaming<FetchResponse>) -> Result<FetchResponse, Status> {
    match tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
        Err(_) => panic!("no FetchResponse within 5 s"),
        Ok(Ok(Some(r))) => Ok(r),
        Ok(Ok(None)) => panic!("stream ended without a status"),
        Ok(Err(s)) => Err(s),
    }
}

/// Collects at least `n` events (skipping keepalives).
pub async fn events(
    stream: &mut Streaming<FetchResponse>,
    n: usize,
) -> Vec<(FetchResponse, usize)> {
    let mut out = Vec::new();
    let mut got = 0;
    while got < n {
        let r = next(stream).await.expect("FetchResponse");
        got += r.events.len();
        let k = r.events.len();
        out.push((r, k));
    }
    out
}

pub fn trailer<'a>(s: &'a Status, key: &str) -> &'a str {
    s.metadata()
        .get(key)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Checks the Pub/Sub error shape: status code, `error-code` and `rpc-id` trailers, message
/// ending with `rpcId: <uuid>`.
pub fn assert_pubsub_error(s: &Status, code: tonic::Code, error_code: &str) {
    assert_eq!(s.code(), code, "{s:?}");
    assert_eq!(trailer(s, "error-code"), error_code, "{s:?}");
    let rpc = trailer(s, "rpc-id");
    assert_eq!(rpc.len(), 36, "rpc-id trailer: {s:?}");
    assert!(
        s.message().ends_with(&format!("rpcId: {rpc}")),
        "{}",
        s.message()
    );
}

/// A decoded event: top-level (name, value) pairs.
pub struct Decoded {
    pub fields: Vec<(String, Avro)>,
}

impl Decoded {
    pub fn header(&self, name: &str) -> Avro {
        let Avro::Record(h) = &self.fields[0].1 else {
            panic!("header not a record")
        };
        h.iter().find(|(n, _)| n == name).expect(name).1.clone()
    }

    pub fn header_strings(&self, name: &str) -> Vec<String> {
        match self.header(name) {
            Avro::Array(a) => a
                .into_iter()
                .map(|v| match v {
                    Avro::String(s) => s,
                    o => panic!("{o:?}"),
                })
                .collect(),
            o => panic!("{o:?}"),
        }
    }

    pub fn change_type(&self) -> String {
        match self.header("changeType") {
            Avro::Enum(_, s) => s,
            o => panic!("{o:?}"),
        }
    }

    /// Value of a top-level field, `None` when null.
    pub fn get(&self, name: &str) -> Option<Avro> {
        let v = self
            .fields
            .iter()
            .find(|(n, _)| n == name)
            .expect(name)
            .1
            .clone();
        match v {
            Avro::Union(0, _) | Avro::Null => None,
            Avro::Union(_, b) => Some(*b),
            other => Some(other),
        }
    }

    pub fn names(&self) -> Vec<String> {
        self.fields.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Decodes a bitmap header field into names (`BillingAddress.City` for components).
    pub fn bitmap_names(&self, header_field: &str) -> Vec<String> {
        let bits = bitmap::decode(&self.header_strings(header_field)).expect("bitmap parses");
        let mut out: Vec<String> = bits.top.iter().map(|&i| self.fields[i].0.clone()).collect();
        for (p, subs) in &bits.nested {
            let parent = &self.fields[*p].0;
            let sub_names = self.nested_names(*p);
            for s in subs {
                out.push(format!("{parent}.{}", sub_names[*s]));
            }
        }
        out
    }

    fn nested_names(&self, pos: usize) -> Vec<String> {
        // Component names come from the schema; a null value has no record, so use the schema.
        NESTED.with(|n| {
            n.borrow()
                .get(&self.fields[pos].0)
                .cloned()
                .unwrap_or_default()
        })
    }
}

thread_local! {
    static NESTED: std::cell::RefCell<std::collections::HashMap<String, Vec<String>>> = Default::default();
}

/// Decodes a payload with the writer schema JSON (apache-avro).
pub fn decode(schema_json: &str, payload: &[u8]) -> Decoded {
    // Remember nested record component names for bitmap decoding.
    let v: serde_json::Value = serde_json::from_str(schema_json).unwrap();
    let mut records: std::collections::HashMap<String, Vec<String>> = Default::default();
    for f in v["fields"].as_array().unwrap() {
        if let Some(arr) = f["type"].as_array() {
            for t in arr {
                if t["type"] == "record" {
                    records.insert(
                        t["name"].as_str().unwrap().to_string(),
                        t["fields"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|c| c["name"].as_str().unwrap().to_string())
                            .collect(),
                    );
                }
            }
        }
    }
    for f in v["fields"].as_array().unwrap() {
        if let Some(arr) = f["type"].as_array() {
            for t in arr {
                let rec = if t["type"] == "record" {
                    t["name"].as_str().map(String::from)
                } else {
                    t.as_str()
                        .and_then(|s| s.rsplit('.').next())
                        .map(String::from)
                };
                if let Some(names) = rec.and_then(|r| records.get(&r)) {
                    let fname = f["name"].as_str().unwrap().to_string();
                    NESTED.with(|n| n.borrow_mut().insert(fname, names.clone()));
                }
            }
        }
    }
    match sfsync_emulator::cdc::encode::decode_datum(schema_json, payload).expect("payload decodes")
    {
        Avro::Record(fields) => Decoded { fields },
        o => panic!("not a record: {o:?}"),
    }
}
