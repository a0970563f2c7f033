//! [`OutboundReceipts`] on SQLite and Postgres: a notification id is logged once however often
//! it arrives; a dead-lettered notification is stored once and logged when a later delivery of
//! it can be read; message dead letters are stored once per digest; receipts list and prune.

mod support;

use sfsync_core::{ChangeType, EventKey, RecordVersion, ReplayId};
use sfsync_store::{
    DeadLetter, DeadLetterFilter, OutboundContent, OutboundItem, OutboundReceipt, RawChange,
    ReceiptOutcome, Warehouse,
};

use support::backends::{postgres_backend, sqlite_backend, Backend};

const CHANNEL: &str = "/outbound/accounts";

fn receipt(id: &str, record: &str) -> OutboundReceipt {
    OutboundReceipt {
        organization_id: "00D000000000062".into(),
        notification_id: id.into(),
        flow: "accounts".into(),
        action_id: "04k000000000004AAA".into(),
        object: "Account".into(),
        record_id: record.into(),
    }
}

fn logged(id: &str, record: &str, ms: i64) -> OutboundItem {
    OutboundItem {
        receipt: receipt(id, record),
        content: OutboundContent::Change(RawChange {
            event_key: EventKey::new(&format!("om-{id}"), 0, record),
            replay_id: ReplayId::from_bytes(id.as_bytes().to_vec()),
            schema_id: "sfsync:outbound-message:v1".into(),
            entity: "Account".into(),
            change_type: ChangeType::Update,
            version: RecordVersion {
                commit_timestamp: ms,
                commit_number: 0,
                sequence_number: 0,
            },
            payload: format!("{{\"n\":\"{id}\"}}").into_bytes().into(),
        }),
    }
}

fn letter(replay: &str, error: &str) -> DeadLetter {
    DeadLetter {
        channel: CHANNEL.into(),
        replay_id: Some(ReplayId::from_bytes(replay.as_bytes().to_vec())),
        schema_id: "sfsync:outbound-message:v1".into(),
        stage: "outbound_message".into(),
        error: error.into(),
        payload: b"<soapenv:Envelope/>".to_vec(),
        object: Some("Account".into()),
    }
}

fn rejected(id: &str, record: &str, error: &str) -> OutboundItem {
    OutboundItem {
        receipt: receipt(id, record),
        content: OutboundContent::Rejected(letter(id, error)),
    }
}

async fn dead_letters(s: &dyn Warehouse) -> Vec<String> {
    s.dead_letters(&DeadLetterFilter::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|d| d.channel == CHANNEL)
        .map(|d| d.error)
        .collect()
}

async fn notifications_dedupe_by_id(b: &dyn Backend) {
    let s = b.open().await;
    let s = &*s;
    use ReceiptOutcome::*;
    // First delivery: two logged, one unreadable.
    let first = [
        logged("04l000000000001AAA", "001000000000001AAA", 1_000),
        logged("04l000000000002AAA", "001000000000002AAA", 1_000),
        rejected(
            "04l000000000003AAA",
            "001000000000003AAA",
            "no SystemModstamp",
        ),
    ];
    let out = s.append_outbound(CHANNEL, &first, &[]).await.unwrap();
    assert_eq!(out.items, vec![Logged, Logged, DeadLettered]);
    assert_eq!(out.appended, 2);
    let log = s.read_from(0, 100).await.unwrap();
    assert_eq!(log.len(), 2);
    assert!(log.iter().all(|l| l.channel == CHANNEL));
    assert_eq!(dead_letters(s).await, vec!["no SystemModstamp".to_string()]);

    // Redelivery of the same message (the answer was lost): nothing new, still rejected once.
    let out = s.append_outbound(CHANNEL, &first, &[]).await.unwrap();
    assert_eq!(out.items, vec![Duplicate, Duplicate, StillRejected]);
    assert_eq!(out.appended, 0);
    assert_eq!(s.read_from(0, 100).await.unwrap().len(), 2);
    assert_eq!(dead_letters(s).await.len(), 1);

    // The same notification twice in one message, and a delivery of the rejected one that
    // can now be read: logged once each.
    let third = [
        logged("04l000000000004AAA", "001000000000004AAA", 2_000),
        logged("04l000000000004AAA", "001000000000004AAA", 2_000),
        logged("04l000000000003AAA", "001000000000003AAA", 2_000),
    ];
    let out = s.append_outbound(CHANNEL, &third, &[]).await.unwrap();
    assert_eq!(out.items, vec![Logged, Duplicate, Logged]);
    assert_eq!(out.appended, 2);
    assert_eq!(s.read_from(0, 100).await.unwrap().len(), 4);

    // Message-level dead letters: once per (channel, digest).
    let whole = letter("sha256:abc", "the message cannot be read: not XML");
    for _ in 0..3 {
        let out = s
            .append_outbound(CHANNEL, &[], std::slice::from_ref(&whole))
            .await
            .unwrap();
        assert!(out.items.is_empty());
    }
    assert_eq!(dead_letters(s).await.len(), 2);

    // Receipts: newest first, deliveries counted, status and event key kept.
    let receipts = s.outbound_receipts(Some("accounts"), 10).await.unwrap();
    assert_eq!(receipts.len(), 4);
    let r = |id: &str| receipts.iter().find(|r| r.notification_id == id).unwrap();
    assert_eq!(r("04l000000000001AAA").deliveries, 2);
    assert_eq!(r("04l000000000001AAA").status, "logged");
    assert_eq!(
        r("04l000000000001AAA").event_key.as_deref(),
        Some("om-04l000000000001AAA/0/001000000000001AAA")
    );
    let fixed = r("04l000000000003AAA");
    assert_eq!(
        (
            fixed.status.as_str(),
            fixed.deliveries,
            fixed.error.as_deref()
        ),
        ("logged", 3, None)
    );
    assert_eq!(r("04l000000000004AAA").deliveries, 2);
    assert!(s
        .outbound_receipts(Some("other"), 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(s.outbound_receipts(None, 2).await.unwrap().len(), 2);

    // Another process sees the same receipts (reopened store).
    let again = b.open().await;
    let out = again
        .append_outbound(CHANNEL, &first[..1], &[])
        .await
        .unwrap();
    assert_eq!(out.items, vec![Duplicate]);

    // Pruning goes by last receipt time.
    assert_eq!(s.prune_outbound_receipts(0).await.unwrap(), 0);
    let far = chrono_like_now() + 60_000;
    assert_eq!(s.prune_outbound_receipts(far).await.unwrap(), 4);
    assert!(s.outbound_receipts(None, 10).await.unwrap().is_empty());
}

fn chrono_like_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn sqlite_outbound_notifications_dedupe_by_id() {
    notifications_dedupe_by_id(&sqlite_backend()).await;
}

#[tokio::test]
async fn postgres_outbound_notifications_dedupe_by_id() {
    notifications_dedupe_by_id(&postgres_backend().await).await;
}
