//! The Pub/Sub subscriber against the real sfsync emulator over TLS gRPC: a REST update arrives
//! with the right header and decoded fields, a stream cut mid-batch resumes from the
//! acknowledged replay id with no loss and no duplicate, an expired replay id is reported as
//! `ReplayIdInvalid`, a schema change mid-stream is fetched and decoded, and an expired session
//! is refreshed once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sfsync_core::{Change, ChangeType, FieldValue, ReplayId};
use sfsync_org::{ApiKind, CallContext, DmlOp};
use sfsync_salesforce::pubsub::{
    Batch, PubSubError, ReplayStart, Subscriber, SubscriberConfig, Subscription,
};
use sfsync_salesforce::{AuthFlow, ClientConfig, CredentialsFile, SalesforceClient, TokenSource};

struct Emu {
    running: sfsync_emulator::RunningEmulator,
    _dir: tempfile::TempDir,
}

async fn emulator(tune: impl FnOnce(&mut sfsync_emulator::EmulatorConfig)) -> Emu {
    let dir = tempfile::tempdir().unwrap();
    let mut config = sfsync_emulator::EmulatorConfig::ephemeral(dir.path());
    tune(&mut config);
    let running = sfsync_emulator::start(config)
        .await
        .expect("emulator starts");
    Emu { running, _dir: dir }
}

fn rest(emu: &Emu) -> SalesforceClient {
    let file = CredentialsFile::load(&emu.running.credentials_path).unwrap();
    let mut config =
        ClientConfig::new(&emu.running.base_url, Some(emu.running.ca_pem_path.clone()));
    config.call_options_client = Some("sfsync-it".into());
    SalesforceClient::new(config, file.credentials(AuthFlow::Password).unwrap()).unwrap()
}

fn tokens(emu: &Emu) -> Arc<TokenSource> {
    let file = CredentialsFile::load(&emu.running.credentials_path).unwrap();
    let http = rest(emu).http().clone();
    Arc::new(TokenSource::new(
        http,
        file.credentials(AuthFlow::Password).unwrap(),
    ))
}

async fn subscriber(emu: &Emu, batch_size: u32) -> Subscriber {
    let mut config = SubscriberConfig::new(
        emu.running.credentials.pubsub_address.clone(),
        Some(emu.running.ca_pem_path.clone()),
    );
    config.batch_size = batch_size;
    config.top_up_at = batch_size / 2;
    config.backoff.initial_ms = 20;
    Subscriber::connect(config, tokens(emu))
        .await
        .expect("connects over TLS")
}

fn ctx(emu: &Emu) -> CallContext {
    CallContext {
        user_id: emu.running.org().admin_user_id(),
        api: ApiKind::Rest,
        api_version: "66.0".into(),
        client: Some("loader".into()),
    }
}

/// Inserts `n` accounts, `per_tx` per transaction; returns their ids in order.
fn insert_accounts(emu: &Emu, n: usize, per_tx: usize, tag: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(per_tx) {
        let ops = chunk
            .iter()
            .map(|i| DmlOp::Insert {
                object: "Account".into(),
                fields: json!({"Name": format!("{tag} {i}"), "NumberOfEmployees": *i as i64})
                    .as_object()
                    .unwrap()
                    .clone(),
            })
            .collect();
        for r in emu.running.org().execute(&ctx(emu), ops, true) {
            ids.push(r.expect("insert succeeded").id().to_string());
        }
    }
    ids
}

async fn next(sub: &mut Subscription) -> Batch {
    tokio::time::timeout(Duration::from_secs(20), sub.next_batch())
        .await
        .expect("a batch within 20 s")
        .expect("stream open")
        .unwrap_or_else(|e| panic!("stream error: {e}"))
}

/// Receives non-empty batches until `pred` holds for a change.
async fn wait_for(sub: &mut Subscription, pred: impl Fn(&Change) -> bool) -> Change {
    loop {
        let b = next(sub).await;
        assert!(
            b.undecoded.is_empty(),
            "undecodable events: {:?}",
            b.undecoded
        );
        if let Some(c) = b.changes.into_iter().find(|c| pred(c)) {
            return c;
        }
    }
}

#[tokio::test]
async fn rest_update_arrives_with_header_and_decoded_fields() {
    let emu = emulator(|_| {}).await;
    let sf = rest(&emu);
    let sub = subscriber(&emu, 100).await;
    let topic = sub.get_topic("/data/AccountChangeEvent").await.unwrap();
    assert!(topic.can_subscribe);
    let mut stream = sub
        .subscribe("/data/AccountChangeEvent", ReplayStart::Earliest)
        .await
        .unwrap();
    let created = sf
        .create(
            "Account",
            &json!({"Name": "Acme", "Phone": "111", "Fax": "222", "BillingCity": "Lyon"}),
        )
        .await
        .unwrap();
    let id = created.id.unwrap();
    sf.update(
        "Account",
        &id,
        &json!({"Phone": "333", "Fax": null, "BillingCity": "Paris"}),
    )
    .await
    .unwrap();

    let create = wait_for(&mut stream, |c| c.header.record_ids.contains(&id)).await;
    assert_eq!(create.change_type(), Some(ChangeType::Create));
    assert_eq!(
        create.field("Name"),
        Some(&FieldValue::String("Acme".into()))
    );
    assert_eq!(
        create.field("BillingAddress.City"),
        Some(&FieldValue::String("Lyon".into()))
    );

    let update = wait_for(&mut stream, |c| c.header.record_ids.contains(&id)).await;
    let h = &update.header;
    assert_eq!(h.entity_name, "Account");
    assert_eq!(h.change_type, Some(ChangeType::Update));
    assert_eq!(h.record_ids, vec![id.clone()]);
    assert_eq!(h.origin_client(), Some("sfsync-it"), "{}", h.change_origin);
    assert!(!h.transaction_key.is_empty());
    assert!(h.commit_timestamp > 1_600_000_000_000);
    assert!(h.sequence_number >= 1);
    assert!(h.changed_fields.contains(&"Phone".to_string()), "{h:?}");
    assert!(
        h.changed_fields
            .contains(&"BillingAddress.City".to_string()),
        "{h:?}"
    );
    assert!(
        h.changed_fields.contains(&"LastModifiedDate".to_string()),
        "{h:?}"
    );
    assert!(h.nulled_fields.contains(&"Fax".to_string()), "{h:?}");
    assert!(!h.changed_fields.contains(&"Name".to_string()), "{h:?}");
    assert_eq!(
        update.field("Phone"),
        Some(&FieldValue::String("333".into()))
    );
    assert_eq!(update.field("Fax"), Some(&FieldValue::Null));
    assert_eq!(
        update.field("BillingAddress.City"),
        Some(&FieldValue::String("Paris".into()))
    );
    assert_eq!(
        update.field("Name"),
        None,
        "unchanged fields are not part of an update"
    );
    assert!(update.version() > create.version());
    assert!(stream.latest_replay_id().is_some());
    assert_eq!(update.replay_id.as_bytes().len(), 8);
}

/// Collects record ids of every change until `want` ids were seen, acknowledging each batch.
async fn drain(stream: &mut Subscription, seen: &mut Vec<String>, want: usize) {
    while seen.len() < want {
        let b = next(stream).await;
        assert!(b.undecoded.is_empty());
        for c in &b.changes {
            seen.extend(c.header.record_ids.iter().cloned());
        }
        if let Some(cp) = &b.checkpoint {
            stream.ack(cp);
        }
    }
}

#[tokio::test]
async fn stream_cut_mid_batch_resumes_from_the_ack_without_loss_or_duplicate() {
    let emu = emulator(|_| {}).await;
    let ids = insert_accounts(&emu, 300, 1, "cut");
    let sub = subscriber(&emu, 40).await;

    // First run: store and acknowledge one batch, receive a second one and "crash" before
    // storing it.
    let mut stored: Vec<String> = Vec::new();
    let mut stream = sub
        .subscribe("/data/AccountChangeEvent", ReplayStart::Earliest)
        .await
        .unwrap();
    let first = next(&mut stream).await;
    assert!(!first.changes.is_empty());
    for c in &first.changes {
        stored.extend(c.header.record_ids.iter().cloned());
    }
    let acked: ReplayId = first.checkpoint.clone().unwrap();
    stream.ack(&acked);
    let unstored = next(&mut stream).await;
    assert!(!unstored.changes.is_empty());
    drop(stream);

    // Restart from the stored replay id: the next event is the first one not stored.
    let mut stream = sub
        .subscribe(
            "/data/AccountChangeEvent",
            ReplayStart::After(acked.clone()),
        )
        .await
        .unwrap();
    let b = next(&mut stream).await;
    assert_eq!(
        b.changes[0].header.record_ids, unstored.changes[0].header.record_ids,
        "resumes right after the acknowledged event"
    );
    for c in &b.changes {
        stored.extend(c.header.record_ids.iter().cloned());
    }
    stream.ack(b.checkpoint.as_ref().unwrap());

    // In-process cut: force a reconnect mid-stream after receiving an unacknowledged batch.
    let unacked = next(&mut stream).await;
    let epoch = unacked.epoch;
    stream.reconnect();
    let mut resumed = next(&mut stream).await;
    while resumed.epoch == epoch {
        // Batches of the cut stream that were already in flight are dropped or superseded.
        resumed = next(&mut stream).await;
    }
    assert!(resumed.epoch > epoch);
    assert_eq!(
        resumed.changes[0].header.record_ids, unacked.changes[0].header.record_ids,
        "the unacknowledged batch is delivered again from the acknowledged point"
    );
    for c in &resumed.changes {
        stored.extend(c.header.record_ids.iter().cloned());
    }
    stream.ack(resumed.checkpoint.as_ref().unwrap());
    drain(&mut stream, &mut stored, ids.len()).await;
    assert!(stream.reconnects() >= 1);

    let unique: HashSet<&String> = stored.iter().collect();
    assert_eq!(
        unique.len(),
        stored.len(),
        "no duplicate past the ack point"
    );
    assert_eq!(stored, ids, "no loss, in commit order");
}

#[tokio::test]
async fn expired_replay_id_is_reported_not_restarted() {
    let emu = emulator(|c| c.cdc.retention = Duration::from_millis(300)).await;
    insert_accounts(&emu, 1, 1, "old");
    let sub = subscriber(&emu, 10).await;
    let mut stream = sub
        .subscribe("/data/AccountChangeEvent", ReplayStart::Earliest)
        .await
        .unwrap();
    let old = next(&mut stream).await.checkpoint.unwrap();
    drop(stream);
    tokio::time::sleep(Duration::from_millis(700)).await;
    insert_accounts(&emu, 1, 1, "new");
    let mut stream = sub
        .subscribe("/data/AccountChangeEvent", ReplayStart::After(old.clone()))
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(20), stream.next_batch())
        .await
        .unwrap()
        .expect("an error item")
        .expect_err("the expired id is rejected");
    match &err {
        PubSubError::ReplayIdInvalid {
            replay_id, code, ..
        } => {
            assert_eq!(replay_id.as_ref(), Some(&old));
            assert!(code.ends_with("replayid.corrupted"), "{code}");
        }
        other => panic!("expected ReplayIdInvalid, got {other}"),
    }
    assert!(
        stream.next_batch().await.is_none(),
        "the stream ends; the caller decides"
    );
}

#[tokio::test]
async fn schema_change_mid_stream_is_fetched_and_decoded() {
    let emu = emulator(|_| {}).await;
    let sf = rest(&emu);
    let sub = subscriber(&emu, 50).await;
    let mut stream = sub
        .subscribe("/data/AccountChangeEvent", ReplayStart::Earliest)
        .await
        .unwrap();
    let id = sf
        .create("Account", &json!({"Name": "Before"}))
        .await
        .unwrap()
        .id
        .unwrap();
    let before = wait_for(&mut stream, |c| c.header.record_ids.contains(&id)).await;
    assert_eq!(sub.schema_fetches(), 1);
    emu.running
        .org()
        .add_field(
            "Account",
            sfsync_org::FieldDef::new("Tier__c", "Tier", sfsync_org::FieldType::String),
        )
        .unwrap();
    sf.update("Account", &id, &json!({"Tier__c": "Gold"}))
        .await
        .unwrap();
    let after = wait_for(&mut stream, |c| {
        c.header.record_ids.contains(&id) && c.change_type() == Some(ChangeType::Update)
    })
    .await;
    assert_ne!(after.schema_id, before.schema_id, "a new schema id");
    assert_eq!(sub.schema_fetches(), 2, "fetched once on the miss");
    assert!(after.header.changed_fields.contains(&"Tier__c".to_string()));
    assert_eq!(
        after.field("Tier__c"),
        Some(&FieldValue::String("Gold".into()))
    );
}

#[tokio::test]
async fn expired_session_is_refreshed_once() {
    let emu = emulator(|_| {}).await;
    let tokens = tokens(&emu);
    let mut config = SubscriberConfig::new(
        emu.running.credentials.pubsub_address.clone(),
        Some(emu.running.ca_pem_path.clone()),
    );
    config.batch_size = 10;
    config.top_up_at = 5;
    let sub = Subscriber::connect(config, tokens.clone()).await.unwrap();
    sub.get_topic("/data/AccountChangeEvent").await.unwrap();
    assert_eq!(tokens.mint_count(), 1);
    emu.running.state.auth.expire_all();
    let info = sub.get_topic("/data/AccountChangeEvent").await.unwrap();
    assert!(info.can_subscribe);
    assert_eq!(tokens.mint_count(), 2, "one refresh");
    emu.running.state.auth.expire_all();
    insert_accounts(&emu, 3, 3, "auth");
    let mut stream = sub
        .subscribe("/data/AccountChangeEvent", ReplayStart::Earliest)
        .await
        .unwrap();
    let mut seen = Vec::new();
    drain(&mut stream, &mut seen, 3).await;
    assert_eq!(tokens.mint_count(), 3);
}

#[tokio::test]
async fn unknown_topic_and_bad_address_are_clear_errors() {
    let emu = emulator(|_| {}).await;
    let sub = subscriber(&emu, 10).await;
    let err = match sub
        .subscribe("/data/NoSuchChangeEvent", ReplayStart::Latest)
        .await
    {
        Err(e) => e,
        Ok(_) => panic!("subscribing to an unknown topic succeeded"),
    };
    assert!(matches!(err, PubSubError::Status { .. }), "{err}");
    let config = SubscriberConfig::new("127.0.0.1:1", Some(emu.running.ca_pem_path.clone()));
    let err = Subscriber::connect(config, tokens(&emu))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, PubSubError::Transport { .. }), "{err}");
}

/// A change made through Bulk API 2.0 reaches the subscriber with the Bulk change origin and the
/// caller's client id; changes of one Bulk batch share one transaction key with increasing
/// sequence numbers.
#[tokio::test]
async fn bulk_ingest_changes_arrive_with_bulk_origin() {
    let emu = emulator(|_| {}).await;
    let sf = rest(&emu);
    let sub = subscriber(&emu, 100).await;
    let mut stream = sub
        .subscribe("/data/AccountChangeEvent", ReplayStart::Earliest)
        .await
        .unwrap();
    let mut w = sfsync_salesforce::BulkCsvWriter::new(b',', false);
    w.write_header(["External_Id__c", "Name", "Phone"]).unwrap();
    for i in 0..25 {
        let ext = format!("BULK-CDC-{i}");
        let name = format!("Bulk CDC {i}");
        let phone = format!("+1 555 01{i:02}");
        w.write_record([
            sfsync_salesforce::BulkValue::Text(&ext),
            sfsync_salesforce::BulkValue::Text(&name),
            sfsync_salesforce::BulkValue::Text(&phone),
        ])
        .unwrap();
    }
    let jobs = sf
        .bulk()
        .ingest(
            &sfsync_salesforce::IngestJobRequest::upsert("Account", "External_Id__c"),
            w.into_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(jobs[0].number_records_processed, 25);
    assert_eq!(jobs[0].number_records_failed, 0);

    let mut creates = Vec::new();
    while creates.len() < 25 {
        let b = next(&mut stream).await;
        assert!(b.undecoded.is_empty());
        creates.extend(b.changes);
    }
    let first = &creates[0].header;
    for c in &creates {
        let h = &c.header;
        assert_eq!(h.change_type, Some(ChangeType::Create));
        assert!(
            h.change_origin.starts_with("com/salesforce/api/bulkapi/"),
            "{}",
            h.change_origin
        );
        assert_eq!(h.origin_client(), Some("sfsync-it"));
        assert_eq!(
            h.transaction_key, first.transaction_key,
            "one batch, one transaction"
        );
        assert!(
            matches!(c.field("Name"), Some(FieldValue::String(n)) if n.starts_with("Bulk CDC "))
        );
    }
    let seqs: Vec<i32> = creates.iter().map(|c| c.header.sequence_number).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}

/// A gap event (here injected by the emulator) arrives as a header-only GAP_* change with its
/// record ids and no field values, so the pipeline can re-read those records.
#[tokio::test]
async fn gap_events_arrive_header_only_with_record_ids() {
    let emu = emulator(|_| {}).await;
    let sub = subscriber(&emu, 100).await;
    let mut stream = sub
        .subscribe("/data/AccountChangeEvent", ReplayStart::Earliest)
        .await
        .unwrap();
    emu.running.state.cdc.set_gap_next(1);
    let ids = insert_accounts(&emu, 1, 1, "Gap");
    let gap = wait_for(&mut stream, |c| c.header.record_ids.contains(&ids[0])).await;
    assert_eq!(gap.header.change_type, Some(ChangeType::GapCreate));
    assert!(
        gap.fields.is_empty(),
        "gap events carry no field values: {:?}",
        gap.fields
    );
    assert!(gap.header.changed_fields.is_empty());
    // The next change is a normal event again.
    let ids2 = insert_accounts(&emu, 1, 1, "After gap");
    let normal = wait_for(&mut stream, |c| c.header.record_ids.contains(&ids2[0])).await;
    assert_eq!(normal.header.change_type, Some(ChangeType::Create));
}

/// Batches already waiting can be taken without waiting and merged: the merged batch holds
/// them in stream order and is acknowledged with the last one's checkpoint; taking batches this
/// way loses and repeats nothing.
#[tokio::test]
async fn waiting_batches_merge_in_order_without_loss() {
    let emu = emulator(|_| {}).await;
    let ids = insert_accounts(&emu, 240, 40, "merge");
    let sub = subscriber(&emu, 10).await;
    let mut stream = sub
        .subscribe("/data/AccountChangeEvent", ReplayStart::Earliest)
        .await
        .unwrap();
    let mut seen: Vec<String> = Vec::new();
    let mut merged_any = false;
    while seen.len() < ids.len() {
        let mut batch = next(&mut stream).await;
        // Give the stream task time to queue the following batches.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let first_len = batch.len();
        while let Some(more) = stream.try_next_batch() {
            let last = more.changes.last().map(|c| c.replay_id.clone());
            batch.merge(more);
            if last.is_some() {
                assert_eq!(
                    batch.checkpoint, last,
                    "the merged batch acks its last event"
                );
            }
        }
        merged_any |= batch.len() > first_len;
        assert_eq!(batch.changes.len(), batch.payloads.len());
        if let (Some(c), Some(cp)) = (batch.changes.last(), &batch.checkpoint) {
            assert_eq!(&c.replay_id, cp);
        }
        for c in &batch.changes {
            seen.extend(c.header.record_ids.iter().cloned());
        }
        if let Some(cp) = &batch.checkpoint {
            stream.ack(cp);
        }
    }
    assert!(merged_any, "some waiting batches were merged");
    assert_eq!(seen, ids, "every event once, in stream order");
}

#[tokio::test]
async fn platform_events_are_published_and_received_as_fields_within_the_publish_budget() {
    let emu = emulator(|c| c.limits.hourly_published_platform_events = 3).await;
    emu.running
        .state
        .cdc
        .define_platform_event(
            "Order_Shipped__e",
            vec![
                sfsync_emulator::cdc::schema::PlatformField {
                    name: "Order__c".into(),
                    field_type: "string".into(),
                },
                sfsync_emulator::cdc::schema::PlatformField {
                    name: "Shipped_At__c".into(),
                    field_type: "datetime".into(),
                },
            ],
        )
        .unwrap();
    let sub = subscriber(&emu, 10).await;
    // Change-event topics are not publishable.
    assert!(matches!(
        sub.publish_schema("/data/AccountChangeEvent").await,
        Err(PubSubError::NotPublishable { .. })
    ));
    let (info, schema) = sub.publish_schema("/event/Order_Shipped__e").await.unwrap();
    assert_eq!(info.schema_id, schema.schema_id());
    let mut s = sub
        .subscribe_events("/event/Order_Shipped__e", ReplayStart::Latest)
        .await
        .unwrap();

    // The budget reads /limits first and grants sfsync's share of what is left (default share
    // 0.5 of 3: 1).
    let client = rest(&emu);
    assert_eq!(client.publish_allowance(5).await, 1);
    let budget = client.budget_status().publish;
    assert_eq!(
        (budget.org_max, budget.our_allowance, budget.room),
        (Some(3), Some(1), Some(0))
    );

    let event = |id: &str, order: &str| {
        let f = json!({"CreatedDate": 1_700_000_000_000i64, "CreatedById": "005000000000001AAA", "Order__c": order, "Shipped_At__c": "2024-05-01T10:00:00Z"});
        sfsync_salesforce::pubsub::ProducerEvent {
            id: id.into(),
            schema_id: schema.schema_id().into(),
            payload: schema.encode_fields(f.as_object().unwrap()).unwrap(),
            headers: vec![],
        }
    };
    let resp = sub
        .publish(
            "/event/Order_Shipped__e",
            vec![
                event("e1", "O-1"),
                event("e2", "O-2"),
                event("e3", "O-3"),
                event("e4", "O-4"),
            ],
        )
        .await
        .unwrap();
    let keys: Vec<&str> = resp
        .results
        .iter()
        .map(|r| r.correlation_key.as_str())
        .collect();
    assert_eq!(keys, ["e1", "e2", "e3", "e4"]);
    assert!(resp.results[..3].iter().all(|r| r.error.is_none()));
    assert!(resp.results[3]
        .error
        .as_ref()
        .is_some_and(|e| e.msg.contains("LIMIT_EXCEEDED")));

    let mut got = Vec::new();
    while got.len() < 3 {
        let b = tokio::time::timeout(Duration::from_secs(10), s.next_batch())
            .await
            .expect("events arrive")
            .unwrap()
            .unwrap();
        assert!(b.changes.is_empty() && b.undecoded.is_empty());
        got.extend(b.events);
    }
    assert_eq!(got[0].name, "Order_Shipped__e");
    assert_eq!(got[0].event_id, "e1");
    assert_eq!(got[0].fields["Order__c"], "O-1");
    assert_eq!(got[0].fields["Shipped_At__c"], "2024-05-01T10:00:00.000Z");
    assert_eq!(got[0].fields["CreatedDate"], "2023-11-14T22:13:20.000Z");
    assert_eq!(got[2].event_id, "e3");
    assert_eq!(
        ReplayId::from_bytes(resp.results[0].replay_id.clone()),
        got[0].replay_id
    );
}
