//! Describe metadata JSON generated from the schema: global describe (`/sobjects`) and object
//! describe (`/sobjects/X/describe`), with the keys real clients read.

use crate::{ObjectDef, Schema};

/// `GET /services/data/vNN.N/sobjects/` body.
pub fn global(schema: &Schema, api_version: &str) -> serde_json::Value {
    let _ = (schema, api_version);
    todo!("sfsync-org: describe::global")
}

/// `GET /services/data/vNN.N/sobjects/X/describe` body.
pub fn object(object: &ObjectDef, schema: &Schema, api_version: &str) -> serde_json::Value {
    let _ = (object, schema, api_version);
    todo!("sfsync-org: describe::object")
}

/// `GET /services/data/vNN.N/sobjects/X` (basic info) body: `{objectDescribe, recentItems}`.
pub fn basic(object: &ObjectDef, api_version: &str) -> serde_json::Value {
    let _ = (object, api_version);
    todo!("sfsync-org: describe::basic")
}
