//! Shared state of a running emulator: the org, sessions, limits, fault injection and Bulk jobs.
//! Cheap to clone (every field is an `Arc`).

use std::sync::Arc;

use sfsync_org::Org;

use crate::auth::Auth;
use crate::bulk::BulkJobs;
use crate::cdc::CdcBus;
use crate::config::EmulatorConfig;
use crate::faults::Faults;
use crate::limits::Limits;

#[derive(Clone)]
pub struct AppState {
    pub org: Arc<Org>,
    pub auth: Arc<Auth>,
    pub limits: Arc<Limits>,
    pub faults: Arc<Faults>,
    pub bulk: Arc<BulkJobs>,
    /// The CDC / platform-event bus behind the Pub/Sub API.
    pub cdc: Arc<CdcBus>,
    /// Outbound Message rules and their delivery queue.
    pub outbound: Arc<crate::outbound::OutboundMessages>,
    pub config: Arc<EmulatorConfig>,
    /// `https://127.0.0.1:8443` — what `instance_url` and `serverUrl` point at (no path).
    pub base_url: Arc<str>,
    /// Bearer token of the admin API (`/admin/...`), from the credentials file.
    pub admin_token: Arc<str>,
    /// Open SOQL query cursors (`nextRecordsUrl`), shared by top-level calls and Composite
    /// sub-requests so a locator from either works in the other.
    pub query_cursors: Arc<crate::http::rest::QueryCursors>,
}
