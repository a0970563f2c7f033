//! Writeback to Salesforce. For now: the ownership and conflict policy ([`policy`]), pure logic
//! that decides per field whether a write applies, is rejected, or waits for a person. Delivery,
//! the HTTP ingress and the API budget governor are still to come; the durable outbox and write
//! ledger live in `sfsync_store::writeback`.

pub mod policy;

pub use policy::*;
