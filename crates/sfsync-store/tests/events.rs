//! [`PlatformEvents`] on SQLite and Postgres: a received batch, its outbox entries, its dead
//! letters and its checkpoint commit together and a redelivery is a no-op; events to publish are
//! idempotent per (event, key), claimed under a lease, settled as published, retried, deferred
//! or dead, and dead ones are redriven or discarded once.

mod support;

use sfsync_core::ReplayId;
use sfsync_store::events::outbound_event_uuid;
use sfsync_store::{
    DeadLetter, InboundEvent, NewOutboundEvent, OutboundFilter, OutboundState, PiiMode,
    PublishOutcome, Warehouse,
};

use support::backends::{postgres_backend, sqlite_backend, Backend};

const CH: &str = "/event/Order_Shipped__e";

fn rid(n: u64) -> ReplayId {
    ReplayId::from_bytes(n.to_be_bytes().to_vec())
}

fn event(n: u64) -> InboundEvent {
    let mut fields = serde_json::Map::new();
    fields.insert("Order__c".into(), serde_json::json!(format!("O-{n}")));
    fields.insert("Note__c".into(), serde_json::Value::Null);
    InboundEvent {
        replay_id: rid(n),
        name: "Order_Shipped__e".into(),
        event_uuid: format!("uuid-{n}"),
        schema_id: "s1".into(),
        created_ms: 1_790_000_000_000 + n as i64,
        fields,
        payload: vec![n as u8, 1, 2],
    }
}

async fn received_events_commit_with_their_checkpoint(b: &dyn Backend) {
    let s: Box<dyn Warehouse> = b.open().await;
    assert_eq!(s.event_checkpoint(CH).await.unwrap(), None);
    let dead = DeadLetter {
        channel: CH.into(),
        replay_id: Some(rid(3)),
        schema_id: "bad".into(),
        stage: "decode".into(),
        error: "unknown schema id bad".into(),
        payload: vec![9],
        object: None,
    };
    let out = s
        .append_events(
            CH,
            &[event(1), event(2)],
            std::slice::from_ref(&dead),
            &rid(3),
            true,
            None,
        )
        .await
        .unwrap();
    assert_eq!((out.appended, out.duplicates), (2, 0));
    assert_eq!(s.event_checkpoint(CH).await.unwrap(), Some(rid(3)));
    // A redelivery (crash before the acknowledgement) stores nothing twice.
    let out = s
        .append_events(CH, &[event(2), event(4)], &[dead], &rid(4), true, None)
        .await
        .unwrap();
    assert_eq!((out.appended, out.duplicates), (1, 1));
    let stored = s.inbound_events(Some(CH), 0, 0).await.unwrap();
    let ids: Vec<&str> = stored.iter().map(|e| e.event_uuid.as_str()).collect();
    assert_eq!(ids, ["uuid-1", "uuid-2", "uuid-4"]);
    assert_eq!(stored[0].replay_id, hex_of(1));
    assert_eq!(stored[0].fields["Order__c"], "O-1");
    assert!(s
        .inbound_events(Some("/event/Other__e"), 0, 0)
        .await
        .unwrap()
        .is_empty());
    // Each stored event entered the outbox once, as its event's object.
    let outbox = s
        .outbox_read("Order_Shipped__e", 0, 100, PiiMode::Omit)
        .await
        .unwrap();
    assert_eq!(outbox.len(), 3);
    assert_eq!(outbox[0].record_id, "uuid-1");
    assert_eq!(outbox[0].change_type, "EVENT");
    assert_eq!(outbox[0].event_key, format!("{CH}/{}", hex_of(1)));
    assert_eq!(outbox[0].fields, ["Order__c"]);
    assert_eq!(outbox[0].record["Order__c"], "O-1");
    assert_eq!(outbox[0].commit_timestamp_ms, 1_790_000_000_001);
    // PII modes never fail on an event (no model).
    s.outbox_read("Order_Shipped__e", 0, 100, PiiMode::Plain)
        .await
        .unwrap();
    // The undecodable event is one dead letter, kept once.
    let dead = s
        .dead_letters(&sfsync_store::DeadLetterFilter::default())
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].channel, CH);
    // Without delivery nothing enters the outbox.
    let other = "/event/Quiet__e";
    let mut e = event(9);
    e.name = "Quiet__e".into();
    s.append_events(other, &[e], &[], &rid(9), false, None)
        .await
        .unwrap();
    assert!(s
        .outbox_read("Quiet__e", 0, 10, PiiMode::Omit)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(s.event_checkpoint(other).await.unwrap(), Some(rid(9)));
    // A fence that is not held refuses the whole batch.
    let fence = sfsync_store::Fence {
        lease: "ingest:/event/Order_Shipped__e".into(),
        holder: "me".into(),
        epoch: 1,
    };
    assert!(s
        .append_events(CH, &[event(5)], &[], &rid(5), true, Some(&fence))
        .await
        .is_err());
    assert_eq!(s.event_checkpoint(CH).await.unwrap(), Some(rid(4)));
    let lease = s
        .acquire_lease(&fence.lease, "me", 60_000)
        .await
        .unwrap()
        .unwrap();
    let fence = sfsync_store::Fence {
        epoch: lease.epoch,
        ..fence
    };
    s.append_events(CH, &[event(5)], &[], &rid(5), true, Some(&fence))
        .await
        .unwrap();
    assert_eq!(s.event_checkpoint(CH).await.unwrap(), Some(rid(5)));
}

fn hex_of(n: u64) -> String {
    rid(n).to_hex()
}

fn out(name: &str, key: &str, order: &str) -> NewOutboundEvent {
    let mut fields = serde_json::Map::new();
    fields.insert("Order__c".into(), serde_json::json!(order));
    NewOutboundEvent {
        name: name.into(),
        idempotency_key: key.into(),
        source: "api:test".into(),
        fields,
    }
}

async fn events_to_publish_are_idempotent_claimed_and_settled(b: &dyn Backend) {
    let s: Box<dyn Warehouse> = b.open().await;
    let first = s
        .enqueue_outbound(&[out("Ack__e", "k1", "O-1"), out("Ack__e", "k2", "O-2")])
        .await
        .unwrap();
    assert!(first.iter().all(|e| e.created));
    assert_eq!(
        first[0].event.event_uuid,
        outbound_event_uuid("Ack__e", "k1")
    );
    assert_eq!(first[0].event.state, OutboundState::Pending);
    // The same key again (a retried request) returns the stored event, even with other fields.
    let again = s
        .enqueue_outbound(&[out("Ack__e", "k1", "CHANGED"), out("Other__e", "k1", "O-3")])
        .await
        .unwrap();
    assert!(!again[0].created && again[1].created);
    assert_eq!(again[0].event.id, first[0].event.id);
    assert_eq!(again[0].event.fields["Order__c"], "O-1");

    // Claims: one claimer at a time until the lease runs out.
    let a = s.claim_outbound("pub-a", 2, 60_000).await.unwrap();
    assert_eq!(a.len(), 2);
    assert!(a[0].id < a[1].id);
    let b2 = s.claim_outbound("pub-b", 10, 60_000).await.unwrap();
    assert_eq!(b2.len(), 1, "only the unclaimed one");
    let now = chrono::Utc::now().timestamp_millis();
    s.settle_outbound(
        "pub-a",
        &[
            (a[0].id, PublishOutcome::Published { replay_id: rid(77) }),
            (
                a[1].id,
                PublishOutcome::Retry {
                    error: "PUBLISH: service unavailable".into(),
                    next_attempt_at_ms: now - 1,
                },
            ),
        ],
    )
    .await
    .unwrap();
    // Another claimer's settlement is ignored.
    s.settle_outbound(
        "pub-a",
        &[(
            b2[0].id,
            PublishOutcome::Dead {
                error: "not mine".into(),
            },
        )],
    )
    .await
    .unwrap();
    let e0 = s.outbound_event(a[0].id).await.unwrap().unwrap();
    assert_eq!(e0.state, OutboundState::Published);
    assert_eq!(e0.replay_id.as_deref(), Some(hex_of(77).as_str()));
    assert!(e0.published_at_ms.is_some());
    let e1 = s.outbound_event(a[1].id).await.unwrap().unwrap();
    assert_eq!((e1.state, e1.attempts), (OutboundState::Pending, 1));
    assert_eq!(
        e1.last_error.as_deref(),
        Some("PUBLISH: service unavailable")
    );
    assert_eq!(
        s.outbound_event(b2[0].id).await.unwrap().unwrap().state,
        OutboundState::Pending
    );
    // Deferred: no attempt counted, not due before its time.
    s.settle_outbound(
        "pub-b",
        &[(
            b2[0].id,
            PublishOutcome::Deferred {
                next_attempt_at_ms: now + 3_600_000,
            },
        )],
    )
    .await
    .unwrap();
    let again = s.claim_outbound("pub-c", 10, 60_000).await.unwrap();
    assert_eq!(again.iter().map(|e| e.id).collect::<Vec<_>>(), [a[1].id]);
    s.settle_outbound(
        "pub-c",
        &[(
            a[1].id,
            PublishOutcome::Dead {
                error: "LIMIT? no: INVALID_FIELD".into(),
            },
        )],
    )
    .await
    .unwrap();
    let dead = s
        .outbound_events(&OutboundFilter {
            states: vec![OutboundState::Dead],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 2);
    let counts = s.outbound_counts().await.unwrap();
    assert_eq!((counts.pending, counts.published, counts.dead), (1, 1, 1));
    // Redrive once; discard once; a published event is neither.
    assert_eq!(
        s.redrive_outbound(&[dead[0].id, a[0].id], "fixed")
            .await
            .unwrap(),
        vec![dead[0].id]
    );
    assert!(s
        .redrive_outbound(&[dead[0].id], "again")
        .await
        .unwrap()
        .is_empty());
    let r = s.outbound_event(dead[0].id).await.unwrap().unwrap();
    assert_eq!(
        (r.state, r.attempts, r.note.as_deref()),
        (OutboundState::Pending, 0, Some("fixed"))
    );
    assert_eq!(
        s.discard_outbound(&[dead[0].id, a[0].id], "nope")
            .await
            .unwrap(),
        vec![dead[0].id]
    );
    let by_name = s
        .outbound_events(&OutboundFilter {
            name: Some("Other__e".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_name.len(), 1);
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
    received_events_commit_with_their_checkpoint,
    events_to_publish_are_idempotent_claimed_and_settled,
);
