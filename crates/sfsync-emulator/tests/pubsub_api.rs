//! Pub/Sub API against the real emulator over TLS gRPC: change events of DML (header, bitmaps,
//! null semantics, merged events), flow control, keepalive, idle close, resume, replay-id errors,
//! auth errors, allocation exhaustion, schema change mid-stream and platform events.

mod pubsub_common;

use std::time::Duration;

use apache_avro::types::Value as Avro;
use pubsub_common::*;
use serde_json::json;
use sfsync_emulator::cdc::{parse_replay, CdcConfig};
use sfsync_org::{DmlOp, FieldDef, FieldType};
use sfsync_pubsub_proto::{ProducerEvent, PublishRequest, ReplayPreset, TopicRequest};
use tonic::Code;

const ACCOUNT: &str = "/data/AccountChangeEvent";

async fn one_event(
    emu: &Emu,
    stream: &mut tonic::Streaming<sfsync_pubsub_proto::FetchResponse>,
) -> (Decoded, Vec<u8>, String) {
    let r = next(stream).await.expect("response");
    assert_eq!(r.events.len(), 1, "{r:?}");
    let e = &r.events[0];
    let ev = e.event.as_ref().unwrap();
    let json = emu.schema_json(&ev.schema_id).await;
    (
        decode(&json, &ev.payload),
        e.replay_id.clone(),
        ev.schema_id.clone(),
    )
}

#[tokio::test]
async fn dml_changes_arrive_with_documented_header_bitmaps_and_nulls() {
    let emu = Emu::start(CdcConfig::default()).await;
    let topic = emu
        .client
        .clone()
        .get_topic(emu.req(TopicRequest {
            topic_name: ACCOUNT.into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(topic.topic_name, ACCOUNT);
    assert_eq!(topic.tenant_guid, emu.org_id());
    assert!(topic.can_subscribe && !topic.can_publish);
    assert_eq!(topic.schema_id.len(), 22);
    assert_eq!(topic.rpc_id.len(), 36);

    let (tx, mut stream) = emu
        .subscribe(ACCOUNT, ReplayPreset::Latest, vec![], 100)
        .await;
    // CREATE: all fields, empty ones null, compound address nested.
    let id = emu.dml_as(
        vec![DmlOp::Insert {
            object: "Account".into(),
            fields: fields(json!({"Name": "Acme", "Phone": "1", "Fax": "2", "BillingCity": "Paris", "NumberOfEmployees": 5})),
        }],
        Some("sfsync"),
    )[0]
    .clone();
    let (ev, r1, sid) = one_event(&emu, &mut stream).await;
    assert_eq!(sid, topic.schema_id);
    assert_eq!(r1.len(), 8);
    assert_eq!(ev.change_type(), "CREATE");
    assert_eq!(ev.header("entityName"), Avro::String("Account".into()));
    assert_eq!(ev.header_strings("recordIds"), std::slice::from_ref(&id));
    assert_eq!(
        ev.header("changeOrigin"),
        Avro::String("com/salesforce/api/soap/66.0;client=sfsync".into())
    );
    assert_eq!(ev.header("sequenceNumber"), Avro::Int(1));
    assert_eq!(
        ev.header("commitUser"),
        Avro::String(emu.running.state.auth.admin().user_id.as_str().into())
    );
    assert!(matches!(ev.header("commitTimestamp"), Avro::Long(t) if t > 1_600_000_000_000));
    assert!(matches!(ev.header("commitNumber"), Avro::Long(n) if n > 0));
    let Avro::String(tk) = ev.header("transactionKey") else {
        panic!()
    };
    assert!(!tk.is_empty());
    assert!(ev.header_strings("changedFields").is_empty());
    assert_eq!(ev.get("Name"), Some(Avro::String("Acme".into())));
    assert_eq!(ev.get("NumberOfEmployees"), Some(Avro::Int(5)));
    assert_eq!(ev.get("Website"), None);
    assert!(matches!(ev.get("CreatedDate"), Some(Avro::Long(_))));
    let Some(Avro::Record(addr)) = ev.get("BillingAddress") else {
        panic!("no address")
    };
    assert_eq!(
        addr[1],
        (
            "City".into(),
            Avro::Union(1, Box::new(Avro::String("Paris".into())))
        )
    );
    let names = ev.names();
    for absent in [
        "Id",
        "IsDeleted",
        "SystemModstamp",
        "Revenue_Per_Employee__c",
        "BillingCity",
    ] {
        assert!(
            !names.contains(&absent.to_string()),
            "{absent} must not be in events"
        );
    }
    assert_eq!(names[0], "ChangeEventHeader");

    // UPDATE: changed + nulled bitmaps; unchanged fields null.
    emu.dml(vec![DmlOp::Update {
        object: "Account".into(),
        id: id.clone(),
        fields: fields(
            json!({"Phone": "9", "Fax": null, "BillingCity": "Lyon", "BillingPostalCode": "69001"}),
        ),
    }]);
    let (ev, r2, _) = one_event(&emu, &mut stream).await;
    assert!(parse_replay(&r2) > parse_replay(&r1));
    assert_eq!(ev.change_type(), "UPDATE");
    let mut changed = ev.bitmap_names("changedFields");
    changed.sort();
    assert_eq!(
        changed,
        [
            "BillingAddress.City",
            "BillingAddress.PostalCode",
            "Fax",
            "LastModifiedDate",
            "Phone"
        ],
        "raw: {:?}",
        ev.header_strings("changedFields")
    );
    let raw = ev.header_strings("changedFields");
    assert!(
        raw[0].starts_with("0x")
            && raw[0].len() % 2 == 0
            && raw[0][2..].chars().all(|c| !c.is_ascii_lowercase())
    );
    assert!(raw.contains(&"4-0x0A".to_string()), "{raw:?}");
    assert_eq!(ev.bitmap_names("nulledFields"), ["Fax"]);
    assert_eq!(ev.get("Name"), None, "unchanged fields are null");
    assert_eq!(ev.get("Fax"), None);
    assert_eq!(ev.get("Phone"), Some(Avro::String("9".into())));
    let Some(Avro::Record(addr)) = ev.get("BillingAddress") else {
        panic!()
    };
    assert_eq!(
        addr[1].1,
        Avro::Union(1, Box::new(Avro::String("Lyon".into())))
    );
    assert_eq!(addr[0].1, Avro::Union(0, Box::new(Avro::Null)));

    // DELETE: all fields null. UNDELETE: all fields.
    emu.dml(vec![DmlOp::Delete { id: id.clone() }]);
    let (ev, _, _) = one_event(&emu, &mut stream).await;
    assert_eq!(ev.change_type(), "DELETE");
    assert!(ev.fields[1..]
        .iter()
        .all(|(_, v)| *v == Avro::Union(0, Box::new(Avro::Null))));
    emu.dml(vec![DmlOp::Undelete { id: id.clone() }]);
    let (ev, _, _) = one_event(&emu, &mut stream).await;
    assert_eq!(ev.change_type(), "UNDELETE");
    assert_eq!(ev.get("Name"), Some(Avro::String("Acme".into())));
    assert_eq!(ev.get("Phone"), Some(Avro::String("9".into())));

    // Same change on several records in one transaction: one event, several recordIds.
    let a = emu.insert_account("A");
    let b = emu.insert_account("B");
    let _ = events(&mut stream, 2).await;
    emu.dml(vec![
        DmlOp::Update {
            object: "Account".into(),
            id: a.clone(),
            fields: fields(json!({"Industry": "Banking"})),
        },
        DmlOp::Update {
            object: "Account".into(),
            id: b.clone(),
            fields: fields(json!({"Industry": "Banking"})),
        },
    ]);
    let (ev, _, _) = one_event(&emu, &mut stream).await;
    assert_eq!(ev.header_strings("recordIds"), [a, b]);
    assert_eq!(ev.header("sequenceNumber"), Avro::Int(1));
    drop(tx);
}

#[tokio::test]
async fn rest_changes_carry_the_call_options_client_in_change_origin() {
    let emu = Emu::start(CdcConfig::default()).await;
    let (_tx, mut stream) = emu
        .subscribe("/data/ChangeEvents", ReplayPreset::Latest, vec![], 10)
        .await;
    let ca = std::fs::read(&emu.running.ca_pem_path).unwrap();
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
        .build()
        .unwrap();
    let resp = http
        .post(format!(
            "{}/services/data/v66.0/sobjects/Contact",
            emu.running.base_url
        ))
        .bearer_auth(&emu.token)
        .header("Sforce-Call-Options", "client=x")
        .json(&json!({"LastName": "Doe", "FirstName": "Jane"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let (ev, _, _) = one_event(&emu, &mut stream).await;
    assert_eq!(ev.header("entityName"), Avro::String("Contact".into()));
    assert_eq!(
        ev.header("changeOrigin"),
        Avro::String("com/salesforce/api/rest/66.0;client=x".into())
    );
    // Person name is a nested record in Salesforce order.
    let Some(Avro::Record(name)) = ev.get("Name") else {
        panic!("Name record")
    };
    let n: Vec<_> = name.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(n, ["Salutation", "FirstName", "LastName"]);
    assert_eq!(
        name[2].1,
        Avro::Union(1, Box::new(Avro::String("Doe".into())))
    );
}

#[tokio::test]
async fn flow_control_reports_exact_pending_and_clamps_at_100() {
    let emu = Emu::start(CdcConfig::default()).await;
    let (tx, mut stream) = emu
        .subscribe(ACCOUNT, ReplayPreset::Latest, vec![], 3)
        .await;
    for i in 0..5 {
        emu.insert_account(&format!("A{i}"));
    }
    let mut got = 0;
    while got < 3 {
        let r = next(&mut stream).await.unwrap();
        got += r.events.len();
        assert_eq!(r.pending_num_requested, 3 - got as i32);
    }
    // Demand is 0: nothing more arrives although 2 events wait.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stream.message())
            .await
            .is_err()
    );
    // Ask for 500 (> 100): clamped to 100 outstanding.
    tx.send(sfsync_pubsub_proto::FetchRequest {
        num_requested: 500,
        ..Default::default()
    })
    .await
    .unwrap();
    let r = next(&mut stream).await.unwrap();
    assert_eq!(r.events.len(), 2);
    assert_eq!(r.pending_num_requested, 98);
    for i in 0..120 {
        emu.insert_account(&format!("B{i}"));
    }
    let mut got = 0;
    let mut last_pending = 98;
    while got < 98 {
        let r = next(&mut stream).await.unwrap();
        got += r.events.len();
        last_pending = r.pending_num_requested;
        assert_eq!(last_pending, 98 - got as i32);
    }
    assert_eq!((got, last_pending), (98, 0));
    // Topic mismatch on a later request.
    tx.send(sfsync_pubsub_proto::FetchRequest {
        topic_name: "/data/ContactChangeEvent".into(),
        num_requested: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    let e = next(&mut stream).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // Non-positive num_requested.
    let (_tx2, mut s2) = emu
        .subscribe(ACCOUNT, ReplayPreset::Latest, vec![], 0)
        .await;
    let e = next(&mut s2).await.unwrap_err();
    assert_pubsub_error(
        &e,
        Code::InvalidArgument,
        "sfdc.platform.eventbus.grpc.subscription.fetch.requested.events.invalid",
    );
}

#[tokio::test]
async fn keepalive_carries_latest_replay_id_and_idle_streams_close() {
    let emu = Emu::start(CdcConfig {
        keepalive_interval: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(600),
        ..CdcConfig::default()
    })
    .await;
    emu.insert_account("before");
    let (tx, mut stream) = emu
        .subscribe(ACCOUNT, ReplayPreset::Latest, vec![], 1)
        .await;
    let r = next(&mut stream).await.unwrap();
    assert!(r.events.is_empty(), "keepalive is empty");
    assert_eq!(r.pending_num_requested, 1);
    assert_eq!(
        parse_replay(&r.latest_replay_id),
        Some(emu.running.state.cdc.latest_id())
    );
    emu.insert_account("after");
    let r = next(&mut stream).await.unwrap();
    assert_eq!((r.events.len(), r.pending_num_requested), (1, 0));
    let start = std::time::Instant::now();
    let e = next(&mut stream).await.unwrap_err();
    assert!(start.elapsed() >= Duration::from_millis(500));
    assert_pubsub_error(
        &e,
        Code::Unavailable,
        "sfdc.platform.eventbus.grpc.service.unavailable",
    );
    drop(tx);
}

#[tokio::test]
async fn resume_after_a_replay_id_has_no_loss_and_no_duplicate() {
    let emu = Emu::start(CdcConfig::default()).await;
    let ids: Vec<String> = (0..10)
        .map(|i| emu.insert_account(&format!("R{i}")))
        .collect();
    let (tx, mut stream) = emu
        .subscribe(ACCOUNT, ReplayPreset::Earliest, vec![], 4)
        .await;
    let mut seen = Vec::new();
    let mut last = Vec::new();
    for (r, _) in events(&mut stream, 4).await {
        for e in r.events {
            let d = decode(
                &emu.schema_json(&e.event.as_ref().unwrap().schema_id).await,
                &e.event.unwrap().payload,
            );
            seen.push(d.header_strings("recordIds")[0].clone());
            last = e.replay_id;
        }
    }
    drop(tx);
    drop(stream);
    let (_tx, mut stream) = emu
        .subscribe(ACCOUNT, ReplayPreset::Custom, last.clone(), 100)
        .await;
    let mut prev = parse_replay(&last).unwrap();
    for (r, _) in events(&mut stream, 6).await {
        for e in r.events {
            let id = parse_replay(&e.replay_id).unwrap();
            assert!(id > prev);
            prev = id;
            let d = decode(
                &emu.schema_json(&e.event.as_ref().unwrap().schema_id).await,
                &e.event.unwrap().payload,
            );
            seen.push(d.header_strings("recordIds")[0].clone());
        }
    }
    assert_eq!(seen, ids);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), stream.message())
            .await
            .is_err(),
        "no extra events"
    );
}

#[tokio::test]
async fn bad_expired_and_future_replay_ids_are_corrupted() {
    let emu = Emu::start(CdcConfig {
        retention: Duration::from_millis(700),
        ..CdcConfig::default()
    })
    .await;
    emu.insert_account("x");
    let latest = emu.running.state.cdc.latest_id();
    const CORRUPTED: &str = "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted";
    for bad in [
        b"12907414".to_vec(),
        vec![1, 2, 3],
        (latest + 5).to_be_bytes().to_vec(),
    ] {
        let (_tx, mut s) = emu.subscribe(ACCOUNT, ReplayPreset::Custom, bad, 1).await;
        assert_pubsub_error(
            &next(&mut s).await.unwrap_err(),
            Code::InvalidArgument,
            CORRUPTED,
        );
    }
    let (_tx, mut s) = emu
        .subscribe(
            ACCOUNT,
            ReplayPreset::Custom,
            latest.to_be_bytes().to_vec(),
            1,
        )
        .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(200), s.message())
            .await
            .is_err(),
        "valid id accepted"
    );
    tokio::time::sleep(Duration::from_millis(900)).await;
    let (_tx, mut s) = emu
        .subscribe(
            ACCOUNT,
            ReplayPreset::Custom,
            latest.to_be_bytes().to_vec(),
            1,
        )
        .await;
    assert_pubsub_error(
        &next(&mut s).await.unwrap_err(),
        Code::InvalidArgument,
        CORRUPTED,
    );
}

#[tokio::test]
async fn auth_and_topic_errors() {
    let emu = Emu::start(CdcConfig::default()).await;
    const AUTH: &str = "sfdc.platform.eventbus.grpc.service.auth.error";
    let mut c = emu.client.clone();
    let base = emu.running.base_url.clone();
    let e = c
        .get_topic(with_auth(
            TopicRequest {
                topic_name: ACCOUNT.into(),
            },
            "bogus",
            &base,
            &emu.org_id(),
        ))
        .await
        .unwrap_err();
    assert_pubsub_error(&e, Code::Unauthenticated, AUTH);
    let e = c
        .get_topic(with_auth(
            TopicRequest {
                topic_name: ACCOUNT.into(),
            },
            &emu.token,
            &base,
            "00D000000000001AAA",
        ))
        .await
        .unwrap_err();
    assert_pubsub_error(&e, Code::Unauthenticated, AUTH);
    let e = c
        .get_topic(tonic::Request::new(TopicRequest {
            topic_name: ACCOUNT.into(),
        }))
        .await
        .unwrap_err();
    assert_pubsub_error(&e, Code::Unauthenticated, AUTH);
    // SOAP-style session ids are the same tokens; a revoked one fails.
    emu.running.state.auth.revoke(&emu.token);
    let e = c
        .get_topic(emu.req(TopicRequest {
            topic_name: ACCOUNT.into(),
        }))
        .await
        .unwrap_err();
    assert_pubsub_error(&e, Code::Unauthenticated, AUTH);
    let (token, _) = emu
        .running
        .state
        .auth
        .issue(emu.running.state.auth.admin().user_id);
    let e = c
        .get_topic(with_auth(
            TopicRequest {
                topic_name: "/data/NopeChangeEvent".into(),
            },
            &token,
            &base,
            &emu.org_id(),
        ))
        .await
        .unwrap_err();
    assert_pubsub_error(
        &e,
        Code::NotFound,
        "sfdc.platform.eventbus.grpc.topic.notfound",
    );
    let t = c
        .get_topic(with_auth(
            TopicRequest {
                topic_name: "/data/Service_Request__ChangeEvent".into(),
            },
            &token,
            &base,
            &emu.org_id(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.topic_name, "/data/Service_Request__ChangeEvent");
}

#[tokio::test]
async fn delivery_allocation_is_enforced() {
    let emu = Emu::start(CdcConfig {
        daily_delivery_allocation: 3,
        ..CdcConfig::default()
    })
    .await;
    for i in 0..5 {
        emu.insert_account(&format!("L{i}"));
    }
    let (_tx, mut s) = emu
        .subscribe(ACCOUNT, ReplayPreset::Earliest, vec![], 10)
        .await;
    let r = next(&mut s).await.unwrap();
    assert_eq!(r.events.len(), 3);
    let e = next(&mut s).await.unwrap_err();
    assert_pubsub_error(
        &e,
        Code::ResourceExhausted,
        "sfdc.platform.eventbus.grpc.subscription.limit.exceeded",
    );
    assert_eq!(
        emu.running.state.cdc.limits_extra(),
        vec![("DailyDeliveredPlatformEvents", 3, 0)]
    );
}

#[tokio::test]
async fn an_exhausted_allocation_refuses_new_subscriptions() {
    let emu = Emu::start(CdcConfig {
        daily_delivery_allocation: 2,
        ..CdcConfig::default()
    })
    .await;
    emu.insert_account("A");
    emu.insert_account("B");
    let (_tx, mut s) = emu
        .subscribe(ACCOUNT, ReplayPreset::Earliest, vec![], 10)
        .await;
    assert_eq!(next(&mut s).await.unwrap().events.len(), 2);
    // Nothing left: even a subscription at the tip with nothing to deliver is refused.
    let (_tx, mut s) = emu
        .subscribe(ACCOUNT, ReplayPreset::Latest, vec![], 10)
        .await;
    let e = next(&mut s).await.unwrap_err();
    assert_pubsub_error(
        &e,
        Code::ResourceExhausted,
        "sfdc.platform.eventbus.grpc.subscription.limit.exceeded",
    );
}

#[tokio::test]
async fn a_pubsub_outage_closes_streams_and_refuses_subscriptions_until_it_ends() {
    let emu = Emu::start(CdcConfig::default()).await;
    let (_tx, mut s) = emu
        .subscribe(ACCOUNT, ReplayPreset::Latest, vec![], 10)
        .await;
    emu.insert_account("before");
    assert_eq!(next(&mut s).await.unwrap().events.len(), 1);
    let set = |available: bool| {
        let mut c = emu.running.state.cdc.config();
        c.service_available = available;
        emu.running.state.cdc.set_config(c);
    };
    set(false);
    // The open stream is closed at once, without waiting for an event.
    let e = next(&mut s).await.unwrap_err();
    assert_pubsub_error(
        &e,
        Code::Unavailable,
        "sfdc.platform.eventbus.grpc.service.unavailable",
    );
    let (_tx, mut s) = emu
        .subscribe(ACCOUNT, ReplayPreset::Earliest, vec![], 10)
        .await;
    let e = next(&mut s).await.unwrap_err();
    assert_pubsub_error(
        &e,
        Code::Unavailable,
        "sfdc.platform.eventbus.grpc.service.unavailable",
    );
    // Changes made during the outage are retained and delivered after it.
    emu.insert_account("during");
    set(true);
    let (_tx, mut s) = emu
        .subscribe(ACCOUNT, ReplayPreset::Earliest, vec![], 10)
        .await;
    assert_eq!(next(&mut s).await.unwrap().events.len(), 2);
}

#[tokio::test]
async fn added_field_gives_a_new_schema_id_mid_stream() {
    let emu = Emu::start(CdcConfig::default()).await;
    let (_tx, mut s) = emu
        .subscribe(ACCOUNT, ReplayPreset::Latest, vec![], 10)
        .await;
    emu.insert_account("before");
    let (ev1, _, sid1) = one_event(&emu, &mut s).await;
    emu.running
        .org()
        .add_field(
            "Account",
            FieldDef::new("Tier__c", "Tier", FieldType::String).length(20),
        )
        .unwrap();
    emu.dml(vec![DmlOp::Insert {
        object: "Account".into(),
        fields: fields(json!({"Name": "after", "Tier__c": "Gold"})),
    }]);
    let (ev2, _, sid2) = one_event(&emu, &mut s).await;
    assert_ne!(sid1, sid2);
    assert!(!ev1.names().contains(&"Tier__c".to_string()));
    assert_eq!(ev2.get("Tier__c"), Some(Avro::String("Gold".into())));
    // The old schema stays retrievable.
    assert!(emu.schema_json(&sid1).await.contains("AccountChangeEvent"));
}

#[tokio::test]
async fn platform_events_publish_and_subscribe() {
    let emu = Emu::start(CdcConfig::default()).await;
    let schema = emu
        .running
        .state
        .cdc
        .define_platform_event(
            "Record_Applied__e",
            vec![sfsync_emulator::cdc::schema::PlatformField {
                name: "Record_Id__c".into(),
                field_type: "string".into(),
            }],
        )
        .unwrap();
    let topic = "/event/Record_Applied__e";
    let info = emu
        .client
        .clone()
        .get_topic(emu.req(TopicRequest {
            topic_name: topic.into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(info.can_publish && info.can_subscribe);
    assert_eq!(info.schema_id, schema.id);
    let (_tx, mut s) = emu.subscribe(topic, ReplayPreset::Latest, vec![], 5).await;
    use sfsync_emulator::cdc::FieldValue;
    let payload = sfsync_emulator::cdc::encode::encode_platform_event(
        &schema,
        &[
            FieldValue::Long(1_700_000_000_000),
            FieldValue::String("005000000000001AAA".into()),
            FieldValue::String("001xx".into()),
        ],
    )
    .unwrap();
    let resp = emu
        .client
        .clone()
        .publish(emu.req(PublishRequest {
            topic_name: topic.into(),
            events: vec![
                ProducerEvent {
                    id: "evt-1".into(),
                    schema_id: schema.id.clone(),
                    payload: payload.clone(),
                    headers: vec![],
                },
                ProducerEvent {
                    id: "evt-2".into(),
                    schema_id: "wrong".into(),
                    payload: payload.clone(),
                    headers: vec![],
                },
                ProducerEvent {
                    id: "evt-3".into(),
                    schema_id: schema.id.clone(),
                    payload: vec![0xFF],
                    headers: vec![],
                },
            ],
            auth_refresh: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.results[0].correlation_key, "evt-1");
    assert!(resp.results[0].error.is_none() && resp.results[0].replay_id.len() == 8);
    assert!(resp.results[1].error.is_some() && resp.results[2].error.is_some());
    let r = next(&mut s).await.unwrap();
    assert_eq!(r.events.len(), 1);
    assert_eq!(r.events[0].event.as_ref().unwrap().payload, payload);
    assert_eq!(r.events[0].replay_id, resp.results[0].replay_id);
    // CDC channels are not publishable.
    let e = emu
        .client
        .clone()
        .publish(emu.req(PublishRequest {
            topic_name: ACCOUNT.into(),
            events: vec![],
            auth_refresh: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn publishes_beyond_the_hourly_allocation_fail_per_event_and_custom_channels_carry_members() {
    let emu = Emu::start(CdcConfig::default()).await;
    let state = &emu.running.state;
    let field = |n: &str| sfsync_emulator::cdc::schema::PlatformField {
        name: n.into(),
        field_type: "string".into(),
    };
    let shipped = state
        .cdc
        .define_platform_event("Order_Shipped__e", vec![field("Order__c")])
        .unwrap();
    state
        .cdc
        .define_platform_event("Order_Lost__e", vec![field("Order__c")])
        .unwrap();
    state
        .cdc
        .define_platform_event("Unrelated__e", vec![field("Order__c")])
        .unwrap();
    let channel = state
        .cdc
        .define_channel(sfsync_emulator::cdc::bus::ChannelDef {
            name: "Orders__chn".into(),
            platform: true,
            members: vec!["Order_Shipped__e".into(), "Order_Lost__e".into()],
        })
        .unwrap();
    assert_eq!(channel.name(), "/event/Orders__chn");
    let info = emu
        .client
        .clone()
        .get_topic(emu.req(TopicRequest {
            topic_name: "/event/Orders__chn".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(info.can_subscribe && !info.can_publish, "{info:?}");
    let (_tx, mut s) = emu
        .subscribe("/event/Orders__chn", ReplayPreset::Latest, vec![], 10)
        .await;

    let mut limits = state.limits.config();
    limits.hourly_published_platform_events = 2;
    state.limits.set_config(limits);
    use sfsync_emulator::cdc::FieldValue;
    let event = |id: &str| ProducerEvent {
        id: id.into(),
        schema_id: shipped.id.clone(),
        payload: sfsync_emulator::cdc::encode::encode_platform_event(
            &shipped,
            &[
                FieldValue::Long(1_700_000_000_000),
                FieldValue::String("005000000000001AAA".into()),
                FieldValue::String(id.into()),
            ],
        )
        .unwrap(),
        headers: vec![],
    };
    let resp = emu
        .client
        .clone()
        .publish(emu.req(PublishRequest {
            topic_name: "/event/Order_Shipped__e".into(),
            events: vec![event("a"), event(""), event("c")],
            auth_refresh: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.results.len(), 3);
    assert_eq!(resp.results[0].correlation_key, "a");
    assert!(resp.results[0].error.is_none());
    // An empty id gets a generated UUID as its correlation key.
    assert_eq!(resp.results[1].correlation_key.len(), 36);
    assert!(resp.results[1].error.is_none());
    assert_eq!(resp.results[2].correlation_key, "c");
    let err = resp.results[2].error.as_ref().expect("over the allocation");
    assert!(err.msg.starts_with("LIMIT_EXCEEDED"), "{}", err.msg);
    assert!(resp.results[2].replay_id.is_empty());
    assert_eq!(state.limits.publish_usage(), (2, 2, 1));
    let v = state.limits.limits_json(&[]);
    assert_eq!(v["HourlyPublishedPlatformEvents"]["Remaining"], 0);

    // The REST path shares the allocation: refused now, published after a reset.
    let fields = serde_json::Map::from_iter([("Order__c".to_string(), json!("rest"))]);
    assert_eq!(
        state.limits.take_published_event().unwrap_err().error_code,
        "LIMIT_EXCEEDED"
    );
    state.limits.reset_usage();
    state.limits.take_published_event().unwrap();
    state
        .cdc
        .publish_fields("Order_Lost__e", &fields, "005000000000001AAA")
        .unwrap();
    state
        .cdc
        .publish_fields("Unrelated__e", &fields, "005000000000001AAA")
        .unwrap();
    assert!(state
        .cdc
        .publish_fields(
            "Order_Lost__e",
            &serde_json::Map::from_iter([("Nope__c".to_string(), json!(1))]),
            "x"
        )
        .unwrap_err()
        .contains("Nope__c"));

    // The channel carries its members' events, in replay order, and nothing else.
    let mut got = Vec::new();
    while got.len() < 3 {
        let r = next(&mut s).await.unwrap();
        for e in r.events {
            let ev = e.event.unwrap();
            let json = emu.schema_json(&ev.schema_id).await;
            got.push((
                json.contains("Order_Shipped__e"),
                decode(&json, &ev.payload).get("Order__c"),
            ));
        }
    }
    assert_eq!(got[0], (true, Some(Avro::String("a".into()))));
    assert!(got[1].0);
    assert_eq!(got[2], (false, Some(Avro::String("rest".into()))));
    let r = tokio::time::timeout(Duration::from_millis(300), next(&mut s)).await;
    assert!(r.is_err(), "Unrelated__e must not reach the channel: {r:?}");
}

#[tokio::test]
async fn change_event_custom_channels_carry_their_member_objects_only() {
    let emu = Emu::start(CdcConfig::default()).await;
    let topic = emu
        .running
        .state
        .cdc
        .define_channel(sfsync_emulator::cdc::bus::ChannelDef {
            name: "Sales__chn".into(),
            platform: false,
            members: vec!["Contact".into()],
        })
        .unwrap();
    assert_eq!(topic.name(), "/data/Sales__chn");
    // A platform-event channel needs defined events as members.
    assert!(emu
        .running
        .state
        .cdc
        .define_channel(sfsync_emulator::cdc::bus::ChannelDef {
            name: "Bad__chn".into(),
            platform: true,
            members: vec!["Undefined__e".into()],
        })
        .is_err());
    let (_tx, mut s) = emu
        .subscribe("/data/Sales__chn", ReplayPreset::Latest, vec![], 10)
        .await;
    emu.insert_account("not on the channel");
    emu.dml(vec![DmlOp::Insert {
        object: "Contact".into(),
        fields: fields(json!({"LastName": "On Channel"})),
    }]);
    let (ev, _, _) = one_event(&emu, &mut s).await;
    assert_eq!(ev.header("entityName"), Avro::String("Contact".into()));
    let r = tokio::time::timeout(Duration::from_millis(300), next(&mut s)).await;
    assert!(r.is_err(), "only Contact changes: {r:?}");
}

/// A run of more than one bounded log scan (`SCAN_LIMIT`) of events that are not on the
/// subscription's topic (here: Account changes before a Case change) must not stop delivery
/// until the next keepalive (240 s by default): the subscription keeps scanning while demand is
/// outstanding. Seen as a ~242 s stall of `sfsync bench poll --changes 100000`, whose 50,000
/// Account events precede the Case events on the bus.
#[tokio::test]
async fn a_run_of_other_topics_events_longer_than_one_scan_does_not_stall_delivery() {
    const CASE: &str = "/data/CaseChangeEvent";
    let emu = Emu::start(CdcConfig::default()).await;
    let insert_case = |subject: &str| {
        emu.dml(vec![DmlOp::Insert {
            object: "Case".into(),
            fields: fields(json!({"Subject": subject, "Status": "New"})),
        }])
    };
    // A caught-up live subscription.
    insert_case("first");
    let (_live_tx, mut live) = emu
        .subscribe(CASE, ReplayPreset::Earliest, vec![], 100)
        .await;
    let (ev, _, _) = one_event(&emu, &mut live).await;
    assert_eq!(ev.get("Subject"), Some(Avro::String("first".into())));
    // More Account events than one scan covers, then a Case change (no await in between, so
    // the live subscription sees them all at once).
    let bus = &emu.running.state.cdc;
    let schema = emu.running.org().schema();
    for _ in 0..sfsync_emulator::cdc::bus::SCAN_LIMIT + 10 {
        bus.inject_change_event(&schema, "Account", None, vec![0].into())
            .expect("Account has a CDC schema");
    }
    insert_case("second");
    // `next` panics after 5 s, far below the 240 s keepalive that used to resume delivery.
    let (ev, _, _) = one_event(&emu, &mut live).await;
    assert_eq!(ev.get("Subject"), Some(Avro::String("second".into())));
    // A new subscription over the backlog gets both.
    let (_tx, mut backlog) = emu
        .subscribe(CASE, ReplayPreset::Earliest, vec![], 100)
        .await;
    let mut subjects = Vec::new();
    while subjects.len() < 2 {
        let r = next(&mut backlog).await.expect("FetchResponse");
        for e in &r.events {
            let ev = e.event.as_ref().unwrap();
            let d = decode(&emu.schema_json(&ev.schema_id).await, &ev.payload);
            subjects.push(d.get("Subject"));
        }
    }
    assert_eq!(
        subjects,
        vec![
            Some(Avro::String("first".into())),
            Some(Avro::String("second".into()))
        ]
    );
}
