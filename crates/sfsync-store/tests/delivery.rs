//! [`Delivery`] on SQLite and Postgres: the outbox the apply stage writes with its curated
//! commit, read back in apply order with PII omitted, sealed or opened; sink positions that
//! never move backwards; dead letters that hold their record, are redriven or discarded once;
//! pruning and backlog.

mod support;

use std::collections::BTreeMap;

use sfsync_store::{
    ChangeSource, ColumnDef, ColumnType, CuratedBatch, DeliveryDeadFilter, DeliveryDeadState,
    NewDeliveryDeadLetter, ObjectModel, OutboxChange, PiiMode, RedriveOutcome, Value, Warehouse,
};

use support::backends::{postgres_backend, sqlite_backend, Backend};

fn model(object: &str) -> ObjectModel {
    let col = |name: &str, ty: ColumnType, pii: bool| ColumnDef {
        name: name.to_ascii_lowercase(),
        field: name.into(),
        ty,
        pii,
    };
    ObjectModel {
        object: object.into(),
        table: format!("sf_{}", object.to_ascii_lowercase()),
        columns: vec![
            col("Id", ColumnType::Text, false),
            col("LastName", ColumnType::Text, false),
            col("Email", ColumnType::Text, true),
            col("Birthdate", ColumnType::Date, false),
        ],
        history: None,
    }
}

const T0: i64 = 1_790_000_000_000;

fn change(object: &str, id: &str, n: i64, name: &str, email: Option<&str>) -> OutboxChange {
    let mut values = BTreeMap::new();
    values.insert("id".into(), Value::Text(id.into()));
    values.insert("lastname".into(), Value::Text(name.into()));
    if let Some(e) = email {
        values.insert("email".into(), Value::Text(e.into()));
    }
    values.insert("birthdate".into(), Value::Date(20_000));
    OutboxChange {
        object: object.into(),
        record_id: id.into(),
        change_type: if n == 1 { "CREATE" } else { "UPDATE" }.into(),
        event_key: format!("ev-{id}-{n}"),
        commit_timestamp_ms: T0 + n,
        applied_at_ms: T0 + 1_000 + n,
        source: ChangeSource::Cdc,
        origin_client: (n == 3).then(|| "sfsync".to_string()),
        fields: vec!["LastName".into(), "Email".into()],
        deleted: false,
        values,
        run_id: "run-1".into(),
    }
}

/// Contact c1 (create), c2 (create), c1 (update), and one Account change, in one commit.
async fn seed(s: &dyn Warehouse) {
    s.ensure_model(&model("Contact")).await.unwrap();
    s.ensure_model(&model("Account")).await.unwrap();
    s.commit_curated(
        "curated",
        None,
        &CuratedBatch {
            deliveries: vec![
                change("Contact", "003A", 1, "Ada", Some("ada@example.org")),
                change("Contact", "003B", 1, "Bo", Some("bo@example.org")),
                change("Account", "001A", 1, "Acme", None),
                change("Contact", "003A", 3, "Ada L", Some("ada.l@example.org")),
            ],
            ..Default::default()
        },
    )
    .await
    .unwrap();
}

async fn outbox_keeps_apply_order_and_pii_as_asked(b: &dyn Backend) {
    let s = b.open().await;
    seed(&*s).await;
    let omit = s
        .outbox_read("Contact", 0, 10, PiiMode::Omit)
        .await
        .unwrap();
    let keys: Vec<&str> = omit.iter().map(|d| d.event_key.as_str()).collect();
    assert_eq!(keys, ["ev-003A-1", "ev-003B-1", "ev-003A-3"]);
    assert!(omit.windows(2).all(|w| w[0].seq < w[1].seq));
    for d in &omit {
        assert!(!d.record.contains_key("Email"), "{:?}", d.record);
        assert_eq!(d.record["Birthdate"], serde_json::json!("2024-10-04"));
    }
    assert_eq!(omit[2].origin_client.as_deref(), Some("sfsync"));
    assert_eq!(omit[2].fields, ["LastName", "Email"]);
    assert_eq!(omit[0].source, "cdc");

    let sealed = s
        .outbox_read("Contact", 0, 10, PiiMode::Sealed)
        .await
        .unwrap();
    let stored = sealed[0].record["Email"].as_str().unwrap().to_string();
    assert!(
        sfsync_store::pii::is_sealed(&stored) && !stored.contains("ada@"),
        "stored {stored}"
    );
    let plain = s
        .outbox_read("Contact", 0, 10, PiiMode::Plain)
        .await
        .unwrap();
    assert_eq!(
        plain[0].record["Email"],
        serde_json::json!("ada@example.org")
    );
    assert_eq!(
        plain[2].record["Email"],
        serde_json::json!("ada.l@example.org")
    );
    // The same change seen through pii_view.
    let viewed = s.pii_view(&sealed[2], PiiMode::Plain).unwrap();
    assert_eq!(viewed.record, plain[2].record);

    // After a position, and limited.
    let after = s
        .outbox_read("Contact", omit[0].seq, 1, PiiMode::Omit)
        .await
        .unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].event_key, "ev-003B-1");
    let accounts = s
        .outbox_read("Account", 0, 10, PiiMode::Omit)
        .await
        .unwrap();
    assert_eq!(accounts.len(), 1);
    let (max, min) = s.outbox_bounds("Contact").await.unwrap();
    assert_eq!((max, min), (omit[2].seq, Some(omit[0].seq)));
    assert_eq!(
        s.outbox_head().await.unwrap(),
        omit[2].seq.max(accounts[0].seq)
    );
    assert_eq!(s.outbox_bounds("Lead").await.unwrap(), (0, None));
}

async fn positions_dead_letters_and_redrive(b: &dyn Backend) {
    let s = b.open().await;
    seed(&*s).await;
    let rows = s
        .outbox_read("Contact", 0, 10, PiiMode::Sealed)
        .await
        .unwrap();
    // c1's create is rejected; c2 delivered; the position moves past both.
    let dead = NewDeliveryDeadLetter {
        change: rows[0].clone(),
        reason: "rejected by the consumer: HTTP 422".into(),
        attempts: 1,
        first_failed_at_ms: T0,
    };
    s.delivery_advance(
        "hooks",
        "Contact",
        rows[1].seq,
        1,
        std::slice::from_ref(&dead),
    )
    .await
    .unwrap();
    // The same dead letter again (a retried commit) is not stored twice; the position never
    // moves back.
    s.delivery_advance("hooks", "Contact", rows[0].seq, 0, &[dead])
        .await
        .unwrap();
    let pos = s.delivery_positions("hooks").await.unwrap();
    assert_eq!(pos.len(), 1);
    assert_eq!((pos[0].position, pos[0].delivered), (rows[1].seq, 1));
    assert!(s.delivery_positions("other").await.unwrap().is_empty());
    assert_eq!(s.held_records("hooks", "Contact").await.unwrap(), ["003A"]);
    assert!(s.held_records("other", "Contact").await.unwrap().is_empty());

    // c1's update is held behind it.
    let held = NewDeliveryDeadLetter {
        change: rows[2].clone(),
        reason: "held".into(),
        attempts: 0,
        first_failed_at_ms: T0,
    };
    s.delivery_advance("hooks", "Contact", rows[2].seq, 0, &[held])
        .await
        .unwrap();
    let open = s
        .delivery_dead_letters(
            &DeliveryDeadFilter {
                sink: Some("hooks".into()),
                states: vec![DeliveryDeadState::Pending],
                limit: 10,
                ..Default::default()
            },
            PiiMode::Omit,
        )
        .await
        .unwrap();
    assert_eq!(open.len(), 2);
    assert!(!open[0].change.record.contains_key("Email"));
    let plain = s
        .delivery_dead_letters(
            &DeliveryDeadFilter {
                limit: 10,
                ..Default::default()
            },
            PiiMode::Plain,
        )
        .await
        .unwrap();
    assert_eq!(
        plain[0].change.record["Email"],
        serde_json::json!("ada@example.org")
    );
    assert_eq!(plain[0].reason, "rejected by the consumer: HTTP 422");

    // Nothing to redrive until asked; asking twice changes it once.
    assert!(s
        .delivery_redrives("hooks", "Contact", 10, PiiMode::Omit)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        s.request_delivery_redrive(&[open[0].id], "by ops")
            .await
            .unwrap(),
        [open[0].id]
    );
    assert!(s
        .request_delivery_redrive(&[open[0].id], "again")
        .await
        .unwrap()
        .is_empty());
    // The record's held update comes with it, in order.
    let redrive = s
        .delivery_redrives("hooks", "Contact", 10, PiiMode::Plain)
        .await
        .unwrap();
    let ids: Vec<i64> = redrive.iter().map(|d| d.id).collect();
    assert_eq!(ids, [open[0].id, open[1].id]);
    assert_eq!(redrive[0].note.as_deref(), Some("by ops"));
    s.settle_delivery_redrives(&[
        (open[0].id, RedriveOutcome::Delivered),
        (
            open[1].id,
            RedriveOutcome::Failed {
                reason: "HTTP 500".into(),
            },
        ),
    ])
    .await
    .unwrap();
    let after = s
        .delivery_dead_letters(
            &DeliveryDeadFilter {
                limit: 10,
                ..Default::default()
            },
            PiiMode::Omit,
        )
        .await
        .unwrap();
    assert_eq!(after[0].state, DeliveryDeadState::Delivered);
    assert_eq!(after[1].state, DeliveryDeadState::Pending);
    assert_eq!(
        (after[1].reason.as_str(), after[1].attempts),
        ("HTTP 500", 1)
    );
    assert_eq!(s.held_records("hooks", "Contact").await.unwrap(), ["003A"]);
    // Discard: once; a delivered one cannot be.
    assert_eq!(
        s.discard_delivery_dead_letters(&[after[1].id, after[0].id], "give up")
            .await
            .unwrap(),
        [after[1].id]
    );
    assert!(s.held_records("hooks", "Contact").await.unwrap().is_empty());
}

async fn prune_and_backlog(b: &dyn Backend) {
    let s = b.open().await;
    seed(&*s).await;
    let rows = s
        .outbox_read("Contact", 0, 10, PiiMode::Omit)
        .await
        .unwrap();
    let b0 = s.delivery_backlog("Contact", 0).await.unwrap();
    assert_eq!(b0.entries, 3);
    assert_eq!(b0.oldest_applied_at_ms, Some(rows[0].applied_at_ms));
    let b1 = s.delivery_backlog("Contact", rows[2].seq).await.unwrap();
    assert_eq!((b1.entries, b1.oldest_applied_at_ms), (0, None));
    assert_eq!(s.prune_outbox("Contact", rows[1].seq).await.unwrap(), 2);
    let left = s
        .outbox_read("Contact", 0, 10, PiiMode::Omit)
        .await
        .unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].event_key, "ev-003A-3");
    // Another object's entries are untouched.
    assert_eq!(
        s.outbox_read("Account", 0, 10, PiiMode::Omit)
            .await
            .unwrap()
            .len(),
        1
    );
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let b = super::sqlite_backend();
                    super::$case(&b).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    let b = super::postgres_backend().await;
                    super::$case(&b).await;
                }
            )*
        }
    };
}

suite!(
    outbox_keeps_apply_order_and_pii_as_asked,
    positions_dead_letters_and_redrive,
    prune_and_backlog,
);
