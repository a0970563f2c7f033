//! Bulk API 2.0 jobs (being written).

use std::sync::Arc;

use sfsync_org::Org;

use crate::limits::Limits;

pub struct BulkJobs {
    pub org: Arc<Org>,
    pub limits: Arc<Limits>,
}

impl BulkJobs {
    pub fn new(org: Arc<Org>, limits: Arc<Limits>) -> BulkJobs {
        BulkJobs { org, limits }
    }
}
