//! CDC benchmark: Avro encoding rate of ~1 KB and ~5 KB change events (the hand-written writer,
//! once per event at commit; the apache-avro reference writer's rate alongside) and the Subscribe delivery rate to a tonic subscriber over TLS on loopback
//! with flow control (demand 100, topped up after each response).
//!
//! Run: `cargo run --release -p sfsync-emulator --example cdc_bench [events]`

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use sfsync_emulator::cdc::encode::{reference, values_from_fields};
use sfsync_emulator::cdc::{encode_event, schema_for, ChangeEvent, ChangeEventHeader, ChangeType};
use sfsync_emulator::EmulatorConfig;
use sfsync_org::{ApiKind, CallContext, DmlOp, Schema};
use sfsync_pubsub_proto::pub_sub_client::PubSubClient;
use sfsync_pubsub_proto::{FetchRequest, ReplayPreset};
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

fn encode_rate(desc_len: usize) -> (usize, f64, f64) {
    let schema = Schema::standard();
    let s = schema_for(schema.object("Account").expect("Account"));
    let fields = json!({
        "Name": "Acme Public Works", "Type": "Customer - Direct", "Phone": "+1 555 0100",
        "BillingStreet": "1 Main St", "BillingCity": "Springfield", "BillingState": "IL",
        "BillingPostalCode": "62701", "BillingCountry": "US", "Industry": "Government",
        "AnnualRevenue": 1.25e7, "NumberOfEmployees": 420, "Website": "https://example.org",
        "CreatedDate": "2024-04-26T16:36:32.000+0000", "LastModifiedDate": "2024-04-26T16:36:32.000+0000",
        "CreatedById": "005000000000001AAA", "LastModifiedById": "005000000000001AAA",
        "OwnerId": "005000000000001AAA", "Description": "d".repeat(desc_len),
    });
    let ev = ChangeEvent {
        header: ChangeEventHeader {
            entity_name: "Account".into(),
            record_ids: vec!["001000000000001AAA".into()],
            change_type: ChangeType::Create,
            change_origin: "com/salesforce/api/rest/66.0;client=bench".into(),
            transaction_key: "0000654a-b07c-5852-d65f-47dc5ecd631d".into(),
            sequence_number: 1,
            commit_timestamp: 1_714_149_392_000,
            commit_number: 1,
            commit_user: "005000000000001AAA".into(),
            nulled_fields: vec![],
            diff_fields: vec![],
            changed_fields: vec![],
        },
        values: values_from_fields(&s, fields.as_object().expect("object")),
    };
    let size = encode_event(&s, &ev).expect("encodes").len();
    let n = 200_000;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(encode_event(&s, &ev).expect("encodes"));
    }
    let fast = n as f64 / t.elapsed().as_secs_f64();
    // The apache-avro reference writer (the previous implementation), for comparison.
    let n = 10_000;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(reference::encode_event(&s, &ev).expect("encodes"));
    }
    (size, fast, n as f64 / t.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let total: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    for desc in [600, 4600] {
        let (size, rate, reference) = encode_rate(desc);
        println!(
            "encode  {size:>5} B events: {rate:>10.0} events/s (one core; apache-avro reference: {reference:.0} events/s)"
        );
    }

    let dir = tempfile::tempdir()?;
    let running = sfsync_emulator::start(EmulatorConfig::ephemeral(dir.path())).await?;
    let org = running.org().clone();
    let admin = running.state.auth.admin().user_id;
    // Fill the log: transactions of 500 inserts each (Description ~700 chars → ~1 KB events).
    let t = Instant::now();
    let desc = "x".repeat(700);
    let org2 = org.clone();
    tokio::task::spawn_blocking(move || {
        let ctx = CallContext {
            user_id: admin,
            api: ApiKind::Rest,
            api_version: "66.0".into(),
            client: None,
        };
        for b in 0..total.div_ceil(500) {
            let ops = (0..500)
                .map(|i| DmlOp::Insert {
                    object: "Account".into(),
                    fields: json!({"Name": format!("Bench {b}-{i}"), "Description": desc})
                        .as_object()
                        .expect("object")
                        .clone(),
                })
                .collect();
            org2.execute(&ctx, ops, true);
        }
    })
    .await?;
    let produced = running.state.cdc.latest_id();
    println!(
        "commit+encode {produced} events through the org: {:.0} events/s",
        produced as f64 / t.elapsed().as_secs_f64()
    );

    let ca = std::fs::read(&running.ca_pem_path)?;
    let channel = Channel::from_shared(format!("https://{}", running.credentials.pubsub_address))?
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .domain_name("localhost"),
        )?
        .connect()
        .await?;
    let mut client = PubSubClient::new(channel).max_decoding_message_size(16 * 1024 * 1024);
    let (token, _) = running.state.auth.issue(admin);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tx.send(FetchRequest {
        topic_name: "/data/AccountChangeEvent".into(),
        replay_preset: ReplayPreset::Earliest as i32,
        num_requested: 100,
        ..Default::default()
    })
    .await?;
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    req.metadata_mut().insert("accesstoken", token.parse()?);
    req.metadata_mut()
        .insert("instanceurl", running.base_url.parse()?);
    req.metadata_mut()
        .insert("tenantid", running.credentials.org_id.parse()?);
    let mut stream = client.subscribe(req).await?.into_inner();
    let tx = Arc::new(tx);
    let t = Instant::now();
    let (mut got, mut bytes) = (0u64, 0u64);
    while got < produced {
        let Some(r) = stream.message().await? else {
            break;
        };
        let n = r.events.len() as i32;
        got += n as u64;
        bytes += r
            .events
            .iter()
            .map(|e| e.event.as_ref().map_or(0, |p| p.payload.len()) as u64)
            .sum::<u64>();
        if n > 0 {
            tx.send(FetchRequest {
                num_requested: n,
                ..Default::default()
            })
            .await?;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "subscribe over TLS gRPC (demand 100, top-up per response): {got} events, {:.0} B avg, {:.0} events/s, {:.1} MB/s",
        bytes as f64 / got.max(1) as f64,
        got as f64 / secs,
        bytes as f64 / secs / 1e6
    );
    running.shutdown().await?;
    Ok(())
}
