#![allow(dead_code)]

use serde_json::Value;
use sfsync_core::SfId;
use sfsync_org::{
    ApiKind, CallContext, DmlOp, DmlOutcome, Fields, Org, OrgConfig, Schema, SfError,
};

pub fn config() -> OrgConfig {
    OrgConfig {
        org_id: SfId::parse("00D5g000004ABCDEAA").unwrap_or_else(|_| SfId::from_parts("00D", 42)),
        admin_username: "admin@sfsync.test".into(),
    }
}

pub fn org() -> Org {
    Org::new(Schema::demo(), config())
}

pub fn ctx(org: &Org) -> CallContext {
    CallContext {
        user_id: org.admin_user_id(),
        api: ApiKind::Rest,
        api_version: "66.0".into(),
        client: Some("sfsync".into()),
    }
}

pub fn fields(v: Value) -> Fields {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

pub fn insert(org: &Org, object: &str, v: Value) -> Result<SfId, SfError> {
    let r = org
        .execute(
            &ctx(org),
            vec![DmlOp::Insert {
                object: object.into(),
                fields: fields(v),
            }],
            false,
        )
        .remove(0);
    match r {
        Ok(DmlOutcome::Created(id)) => Ok(id),
        Ok(other) => panic!("unexpected outcome {other:?}"),
        Err(mut e) => Err(e.remove(0)),
    }
}

pub fn update(org: &Org, object: &str, id: &SfId, v: Value) -> Result<DmlOutcome, SfError> {
    org.execute(
        &ctx(org),
        vec![DmlOp::Update {
            object: object.into(),
            id: id.to_string(),
            fields: fields(v),
        }],
        false,
    )
    .remove(0)
    .map_err(|mut e| e.remove(0))
}

pub fn one(org: &Org, op: DmlOp) -> Result<DmlOutcome, SfError> {
    org.execute(&ctx(org), vec![op], false)
        .remove(0)
        .map_err(|mut e| e.remove(0))
}
