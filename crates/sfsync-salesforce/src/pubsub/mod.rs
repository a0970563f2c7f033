//! Change Data Capture and platform events over the Salesforce Pub/Sub API (gRPC): the
//! subscriber (and `Publish`), the Avro payload decoder, the platform-event codec, the field
//! bitmaps and long-text diff reconstruction.
//!
//! Guarantees: every event is decoded with its own writer schema (cached by schema id); a
//! [`Change`](sfsync_core::Change) carries only the fields its change type makes meaningful, with
//! `changedFields` / `nulledFields` / `diffFields` decoded into field paths; replay ids are kept
//! as opaque bytes; after a reconnect the stream resumes right after the last replay id the caller
//! acknowledged, so nothing past the acknowledged point is lost and nothing up to it is
//! delivered again. Malformed server input is a typed error, never a panic.

pub mod avro;
pub mod bitmap;
pub mod diff;
pub mod event;
pub mod subscriber;

pub use avro::{ChangeSchema, DecodeError, Schema, SchemaError};
pub use bitmap::{BitmapError, FieldRef, FieldTree};
pub use diff::DiffOutcome;
pub use event::{EncodeError, EventSchema};
pub use sfsync_pubsub_proto::{ProducerEvent, PublishResponse, PublishResult};
pub use subscriber::{
    BackoffConfig, Batch, PlatformEvent, PubSubError, ReplayStart, StreamHealth, Subscriber,
    SubscriberConfig, Subscription, UndecodedEvent,
};
