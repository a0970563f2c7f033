//! Third-party compatibility: a Python Pub/Sub client (grpcio + the `avro` library, stubs
//! generated at test time from our .proto) subscribes to the emulator over TLS, decodes change
//! events and resumes from a replay id with no loss and no duplicate.
//!
//! The Python comes from `SFSYNC_TEST_PYTHON` (scripts/test prepares it) or is prepared in
//! `target/py-venv` by the test itself.

mod pubsub_common;
#[path = "../../../tests/compat/python_env.rs"]
mod python_env;

use pubsub_common::*;
use serde_json::{json, Value};
use sfsync_emulator::cdc::CdcConfig;
use sfsync_org::DmlOp;

#[tokio::test]
async fn python_grpc_avro_client_decodes_and_resumes() {
    let python = tokio::task::spawn_blocking(python_env::python)
        .await
        .unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let emu = Emu::start(CdcConfig::default()).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(emu.insert_account(&format!("Py {i}")));
    }
    emu.dml(vec![DmlOp::Update {
        object: "Account".into(),
        id: ids[0].clone(),
        fields: fields(json!({"Phone": "42", "BillingCity": "Oslo"})),
    }]);
    let c = &emu.running.credentials;
    let out = tokio::process::Command::new(&python)
        .arg(root.join("tests/compat/pubsub_client.py"))
        .args(["--proto"])
        .arg(root.join("crates/sfsync-pubsub-proto/proto/pubsub_api.proto"))
        .args(["--address", &c.pubsub_address, "--ca"])
        .arg(&emu.running.ca_pem_path)
        .args(["--token", &emu.token, "--instance-url", &c.instance_url])
        .args(["--tenant", &c.org_id, "--topic", "/data/AccountChangeEvent"])
        .args(["--first", "3", "--total", "6"])
        .output()
        .await
        .expect("python runs");
    assert!(
        out.status.success(),
        "python client failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("client prints JSON");
    let all: Vec<&Value> = v["first"]
        .as_array()
        .unwrap()
        .iter()
        .chain(v["rest"].as_array().unwrap())
        .collect();
    assert_eq!(v["first"].as_array().unwrap().len(), 3);
    assert_eq!(all.len(), 6, "{v}");
    let replay: Vec<u64> = all
        .iter()
        .map(|e| e["replay_int"].as_u64().unwrap())
        .collect();
    assert!(
        replay.windows(2).all(|w| w[0] < w[1]),
        "no duplicate, in order: {replay:?}"
    );
    for (i, e) in all[..5].iter().enumerate() {
        assert_eq!(e["changeType"], "CREATE");
        assert_eq!(e["recordIds"], json!([ids[i]]));
        assert_eq!(e["Name"], format!("Py {i}"));
        assert!(e["CreatedDate"].as_i64().unwrap() > 1_600_000_000_000);
    }
    let upd = all[5];
    assert_eq!(upd["changeType"], "UPDATE");
    assert_eq!(upd["Name"], Value::Null, "unchanged field is null");
    assert_eq!(upd["BillingAddress"]["City"], "Oslo");
    let changed: Vec<String> = serde_json::from_value(upd["changedFields"].clone()).unwrap();
    assert!(changed.contains(&"4-0x02".to_string()), "{changed:?}");
    assert!(changed[0].starts_with("0x"));
}
