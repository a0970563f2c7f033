//! Writeback to Salesforce: the ownership and conflict policy ([`policy`], pure logic that
//! decides per field whether a write applies, is rejected, or waits for a person) and delivery
//! ([`deliver`], the loop that sends writes and records their outcomes). The durable outbox and
//! write ledger live in `sfsync_store::writeback`; the CDC echo that confirms a write is matched
//! by the apply stage.

pub mod deliver;
pub mod echo;
pub mod policy;

pub use deliver::{Deliverer, DeliveryConfig};
pub use echo::{Echo, EchoConfirmer, EchoLedger};
pub use policy::*;
