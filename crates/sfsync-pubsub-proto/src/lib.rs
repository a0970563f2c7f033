//! Generated Rust types and tonic client/server for the Salesforce Pub/Sub API
//! (`eventbus.v1.PubSub`), from sfsync's own `.proto` carrying the published field numbers.
//! Shared by the sfsync subscriber (`sfsync-salesforce`) and the emulator so that both speak
//! exactly the same wire format without depending on each other.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod eventbus {
    pub mod v1 {
        tonic::include_proto!("eventbus.v1");
    }
}

pub use eventbus::v1::*;
