//! REST API: discovery, describe, single-record DML, upsert by external id and SOQL queries.
//!
//! Guarantees: describe types keep every documented key the pipeline needs and tolerate unknown
//! or null ones; upsert reports created vs updated and surfaces an ambiguous external id (HTTP 300)
//! as [`SalesforceError::MultipleMatches`]; queries follow `nextRecordsUrl` until `done`, one page
//! in memory at a time. Reads are retried on transient errors; writes are not (except upsert by
//! external id, which is idempotent, when the caller opts in).

use std::collections::{BTreeMap, VecDeque};

use futures::stream::BoxStream;
use futures::StreamExt;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::de::Deserializer;
use serde::{Deserialize, Serialize};
use sfsync_core::{classify_error_code, ErrorClass, SfId};

use crate::error::{Result, SalesforceError};
use crate::http::{decode_json, ApiRequest, Body, SalesforceClient};

/// A record as JSON (`attributes` included when Salesforce sends it).
pub type Record = serde_json::Map<String, serde_json::Value>;

/// Characters left as-is in a path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes one path segment.
pub fn encode_segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// `null` or absent → `T::default()`.
pub(crate) fn null_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// One entry of `GET /services/data/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiVersion {
    #[serde(default)]
    pub label: String,
    pub url: String,
    pub version: String,
}

/// `GET /sobjects/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeGlobal {
    #[serde(default)]
    pub encoding: Option<String>,
    #[serde(default)]
    pub max_batch_size: Option<u32>,
    #[serde(default, deserialize_with = "null_default")]
    pub sobjects: Vec<GlobalSObject>,
}

/// An object in the global describe.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GlobalSObject {
    pub name: String,
    #[serde(default, deserialize_with = "null_default")]
    pub label: String,
    #[serde(default)]
    pub key_prefix: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub custom: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub queryable: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub createable: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub updateable: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub deletable: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub replicateable: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub urls: BTreeMap<String, String>,
    /// Keys not modelled here.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// `GET /sobjects/{Object}/describe`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectDescribe {
    pub name: String,
    #[serde(default, deserialize_with = "null_default")]
    pub label: String,
    #[serde(default, deserialize_with = "null_default")]
    pub label_plural: String,
    #[serde(default)]
    pub key_prefix: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub custom: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub createable: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub updateable: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub deletable: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub queryable: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub replicateable: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub retrieveable: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub undeletable: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub fields: Vec<FieldDescribe>,
    #[serde(default, deserialize_with = "null_default")]
    pub child_relationships: Vec<serde_json::Value>,
    #[serde(default, deserialize_with = "null_default")]
    pub record_type_infos: Vec<serde_json::Value>,
    #[serde(default, deserialize_with = "null_default")]
    pub urls: BTreeMap<String, String>,
    /// Keys not modelled here.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ObjectDescribe {
    /// The field with this API name (case-insensitive, as Salesforce names are).
    pub fn field(&self, name: &str) -> Option<&FieldDescribe> {
        self.fields
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
    }

    /// Fields that hold a value of their own (not compound `address`/`location` parents).
    pub fn scalar_fields(&self) -> impl Iterator<Item = &FieldDescribe> {
        self.fields.iter().filter(|f| !f.is_compound())
    }
}

/// A field of an object describe.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldDescribe {
    pub name: String,
    #[serde(default, deserialize_with = "null_default")]
    pub label: String,
    /// `id`, `string`, `boolean`, `int`, `double`, `currency`, `date`, `datetime`, `reference`,
    /// `picklist`, `address`, `location`, …
    #[serde(rename = "type", default, deserialize_with = "null_default")]
    pub field_type: String,
    #[serde(default)]
    pub soap_type: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub length: i64,
    #[serde(default, deserialize_with = "null_default")]
    pub byte_length: i64,
    #[serde(default, deserialize_with = "null_default")]
    pub precision: i64,
    #[serde(default, deserialize_with = "null_default")]
    pub scale: i64,
    #[serde(default, deserialize_with = "null_default")]
    pub digits: i64,
    #[serde(default, deserialize_with = "null_default")]
    pub nillable: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub createable: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub updateable: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub unique: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub external_id: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub id_lookup: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub calculated: bool,
    #[serde(default)]
    pub calculated_formula: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub defaulted_on_create: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub reference_to: Vec<String>,
    #[serde(default)]
    pub relationship_name: Option<String>,
    #[serde(default)]
    pub compound_field_name: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub picklist_values: Vec<PicklistValue>,
    #[serde(default, deserialize_with = "null_default")]
    pub restricted_picklist: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub custom: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub filterable: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub sortable: bool,
    /// Keys not modelled here.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl FieldDescribe {
    /// Compound parents (`address`, `location`) have no column of their own in Bulk/CSV.
    pub fn is_compound(&self) -> bool {
        matches!(self.field_type.as_str(), "address" | "location")
    }
}

/// A picklist entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PicklistValue {
    #[serde(default, deserialize_with = "null_default")]
    pub active: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub default_value: bool,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub value: String,
    #[serde(default)]
    pub valid_for: Option<String>,
}

/// One per-record error (`statusCode` in collections, `errorCode` in single-record answers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordError {
    #[serde(default, alias = "errorCode", deserialize_with = "null_default")]
    pub status_code: String,
    #[serde(default, deserialize_with = "null_default")]
    pub message: String,
    #[serde(default, deserialize_with = "null_default")]
    pub fields: Vec<String>,
}

impl RecordError {
    /// What to do about this record's failure, from the one error-code table.
    pub fn class(&self) -> ErrorClass {
        classify_error_code(&self.status_code, None)
    }
}

/// Result of a create / per-record collection operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaveResult {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub success: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub errors: Vec<RecordError>,
    /// Present for upserts (v46+).
    #[serde(default)]
    pub created: Option<bool>,
}

impl SaveResult {
    /// The record id, parsed.
    pub fn sf_id(&self) -> Option<SfId> {
        self.id.as_deref().and_then(|s| SfId::parse(s).ok())
    }
}

/// Outcome of a single-record upsert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpsertResult {
    /// The record id (absent only for old API versions answering 204).
    pub id: Option<String>,
    /// True when a record was created (201), false when one was updated (200/204).
    pub created: bool,
}

/// One page of a SOQL query.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryPage {
    #[serde(default)]
    pub total_size: u64,
    #[serde(default)]
    pub done: bool,
    #[serde(default)]
    pub next_records_url: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub records: Vec<Record>,
}

/// SOQL query settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryOptions {
    /// `Sforce-Query-Options: batchSize=N` (200–2000; a hint, not guaranteed).
    pub batch_size: Option<u32>,
    /// Use `queryAll` (includes deleted and archived rows).
    pub include_deleted: bool,
}

impl SalesforceClient {
    /// `GET /services/data/` — the API versions the server offers.
    pub async fn versions(&self) -> Result<Vec<ApiVersion>> {
        self.send_json(ApiRequest::new(Method::GET, "/services/data/"))
            .await
    }

    /// `GET /sobjects/`.
    pub async fn describe_global(&self) -> Result<DescribeGlobal> {
        self.get_json("sobjects/").await
    }

    /// `GET /sobjects/{object}/describe`.
    pub async fn describe_object(&self, object: &str) -> Result<ObjectDescribe> {
        self.get_json(&format!("sobjects/{}/describe", encode_segment(object)))
            .await
    }

    /// `POST /sobjects/{object}` → 201 with the new id.
    pub async fn create<T: Serialize + ?Sized>(
        &self,
        object: &str,
        fields: &T,
    ) -> Result<SaveResult> {
        let req = ApiRequest::new(
            Method::POST,
            self.data_path(&format!("sobjects/{}", encode_segment(object))),
        )
        .body(Body::json(fields)?);
        self.send_json(req).await
    }

    /// `GET /sobjects/{object}/{id}[?fields=…]`.
    pub async fn retrieve(
        &self,
        object: &str,
        id: &str,
        fields: Option<&[&str]>,
    ) -> Result<Record> {
        let mut req = ApiRequest::new(
            Method::GET,
            self.data_path(&format!(
                "sobjects/{}/{}",
                encode_segment(object),
                encode_segment(id)
            )),
        );
        if let Some(f) = fields {
            req = req.query("fields", f.join(","));
        }
        self.send_json(req).await
    }

    /// `PATCH /sobjects/{object}/{id}` → 204.
    pub async fn update<T: Serialize + ?Sized>(
        &self,
        object: &str,
        id: &str,
        fields: &T,
    ) -> Result<()> {
        let req = ApiRequest::new(
            Method::PATCH,
            self.data_path(&format!(
                "sobjects/{}/{}",
                encode_segment(object),
                encode_segment(id)
            )),
        )
        .body(Body::json(fields)?);
        self.send_empty(req).await.map(|_| ())
    }

    /// `DELETE /sobjects/{object}/{id}` → 204.
    pub async fn delete(&self, object: &str, id: &str) -> Result<()> {
        let req = ApiRequest::new(
            Method::DELETE,
            self.data_path(&format!(
                "sobjects/{}/{}",
                encode_segment(object),
                encode_segment(id)
            )),
        );
        self.send_empty(req).await.map(|_| ())
    }

    /// `PATCH /sobjects/{object}/{ext_field}/{value}`: 201 created, 200/204 updated, 300 several
    /// matches ([`SalesforceError::MultipleMatches`]). Not retried automatically.
    pub async fn upsert<T: Serialize + ?Sized>(
        &self,
        object: &str,
        external_id_field: &str,
        external_id: &str,
        fields: &T,
    ) -> Result<UpsertResult> {
        let path = self.data_path(&format!(
            "sobjects/{}/{}/{}",
            encode_segment(object),
            encode_segment(external_id_field),
            encode_segment(external_id)
        ));
        let req = ApiRequest::new(Method::PATCH, path.clone()).body(Body::json(fields)?);
        let (status, body) = self.send(req).await?.bytes().await?;
        match status {
            StatusCode::MULTIPLE_CHOICES => Err(SalesforceError::MultipleMatches {
                method: "PATCH".into(),
                path,
                urls: parse_multiple_choices(&body),
            }),
            StatusCode::NO_CONTENT => Ok(UpsertResult {
                id: None,
                created: false,
            }),
            s => {
                let r: SaveResult = if body.is_empty() {
                    SaveResult {
                        id: None,
                        success: true,
                        errors: vec![],
                        created: None,
                    }
                } else {
                    decode_json("PATCH", &path, s.as_u16(), &body)?
                };
                Ok(UpsertResult {
                    id: r.id,
                    created: r.created.unwrap_or(s == StatusCode::CREATED),
                })
            }
        }
    }

    /// One page of `query` / `queryAll`.
    pub async fn query_page(&self, soql: &str, opts: &QueryOptions) -> Result<QueryPage> {
        let resource = if opts.include_deleted {
            "queryAll"
        } else {
            "query"
        };
        let req = ApiRequest::new(Method::GET, self.data_path(resource)).query("q", soql);
        self.send_json(with_batch_size(req, opts)).await
    }

    /// The page at a `nextRecordsUrl`.
    pub async fn query_more(
        &self,
        next_records_url: &str,
        opts: &QueryOptions,
    ) -> Result<QueryPage> {
        let req = ApiRequest::new(Method::GET, next_records_url.to_string());
        self.send_json(with_batch_size(req, opts)).await
    }

    /// Streams every record of a SOQL query, following `nextRecordsUrl`; one page in memory.
    pub fn query(&self, soql: &str, opts: QueryOptions) -> BoxStream<'static, Result<Record>> {
        struct St {
            client: SalesforceClient,
            soql: String,
            opts: QueryOptions,
            next: Option<String>,
            started: bool,
            buf: VecDeque<Record>,
        }
        let st = St {
            client: self.clone(),
            soql: soql.to_string(),
            opts,
            next: None,
            started: false,
            buf: VecDeque::new(),
        };
        futures::stream::try_unfold(st, |mut st| async move {
            loop {
                if let Some(r) = st.buf.pop_front() {
                    return Ok(Some((r, st)));
                }
                let page = if !st.started {
                    st.started = true;
                    st.client.query_page(&st.soql, &st.opts).await?
                } else if let Some(next) = st.next.take() {
                    st.client.query_more(&next, &st.opts).await?
                } else {
                    return Ok(None);
                };
                st.next = if page.done {
                    None
                } else {
                    page.next_records_url.filter(|u| !u.is_empty())
                };
                st.buf.extend(page.records);
            }
        })
        .boxed()
    }

    /// Streams every record of a `queryAll` (deleted and archived rows included).
    pub fn query_all(&self, soql: &str, opts: QueryOptions) -> BoxStream<'static, Result<Record>> {
        self.query(
            soql,
            QueryOptions {
                include_deleted: true,
                ..opts
            },
        )
    }

    /// Collects every record of a query (for small results).
    pub async fn query_all_pages(&self, soql: &str, opts: QueryOptions) -> Result<Vec<Record>> {
        let mut s = self.query(soql, opts);
        let mut out = Vec::new();
        while let Some(r) = s.next().await {
            out.push(r?);
        }
        Ok(out)
    }
}

fn with_batch_size(req: ApiRequest, opts: &QueryOptions) -> ApiRequest {
    match opts.batch_size {
        Some(n) => req.header(
            HeaderName::from_static("sforce-query-options"),
            HeaderValue::from_str(&format!("batchSize={n}"))
                .unwrap_or(HeaderValue::from_static("batchSize=2000")),
        ),
        None => req,
    }
}

/// The body of a 300 answer: a JSON array of record URLs (strings or objects), else raw text.
fn parse_multiple_choices(body: &[u8]) -> Vec<String> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            })
            .collect(),
        _ => vec![crate::error::snippet(body)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_is_tolerant() {
        let json = r#"{"name":"Account","label":"Account","labelPlural":"Accounts","keyPrefix":"001",
          "custom":false,"createable":true,"updateable":true,"deletable":true,"queryable":true,
          "replicateable":true,"retrieveable":true,"undeletable":true,"someNewKey":{"x":1},
          "fields":[
            {"name":"Id","type":"id","length":18,"nillable":false,"createable":false,"updateable":false,
             "calculated":false,"referenceTo":[],"relationshipName":null,"externalId":false,"picklistValues":[]},
            {"name":"BillingAddress","type":"address","length":0,"nillable":true,"compoundFieldName":null},
            {"name":"BillingCity","type":"string","length":40,"compoundFieldName":"BillingAddress","byteLength":120},
            {"name":"OwnerId","type":"reference","referenceTo":["User"],"relationshipName":"Owner","length":18},
            {"name":"Type","type":"picklist","picklistValues":[{"active":true,"defaultValue":false,"label":"Prospect","value":"Prospect","validFor":null},{"active":true,"defaultValue":false,"label":null,"value":"Other"}],"restrictedPicklist":false,"precision":null},
            {"name":"Ext__c","type":"string","externalId":true,"unique":true,"idLookup":true,"custom":true,"futureKey":[1,2]}
          ],
          "childRelationships":[], "recordTypeInfos":null, "urls":{"sobject":"/services/data/v66.0/sobjects/Account"}}"#;
        let d: ObjectDescribe = serde_json::from_str(json).unwrap();
        assert_eq!(d.key_prefix.as_deref(), Some("001"));
        assert!(d.extra.contains_key("someNewKey"));
        assert_eq!(d.fields.len(), 6);
        assert!(d.field("billingaddress").unwrap().is_compound());
        assert_eq!(
            d.field("BillingCity")
                .unwrap()
                .compound_field_name
                .as_deref(),
            Some("BillingAddress")
        );
        assert_eq!(d.field("OwnerId").unwrap().reference_to, vec!["User"]);
        assert_eq!(d.field("Type").unwrap().picklist_values.len(), 2);
        assert!(d.field("Ext__c").unwrap().external_id);
        assert_eq!(d.scalar_fields().count(), 5);
        assert!(d.record_type_infos.is_empty());
    }

    #[test]
    fn save_results_and_query_pages() {
        let r: SaveResult = serde_json::from_str(
            r#"{"success":false,"errors":[{"statusCode":"REQUIRED_FIELD_MISSING","message":"Required fields are missing: [Name]","fields":["Name"]}]}"#,
        )
        .unwrap();
        assert_eq!(r.errors[0].class(), ErrorClass::User);
        assert_eq!(r.id, None);
        let r: SaveResult = serde_json::from_str(
            r#"{"id":"001M000000qfPySIAU","success":true,"errors":[],"created":true}"#,
        )
        .unwrap();
        assert_eq!(r.sf_id().unwrap().as_str(), "001M000000qfPySIAU");
        let p: QueryPage = serde_json::from_str(
            r#"{"totalSize":3,"done":false,"nextRecordsUrl":"/services/data/v66.0/query/01gxx-2000","records":[{"attributes":{"type":"Account"},"Id":"001"}]}"#,
        )
        .unwrap();
        assert!(!p.done);
        assert_eq!(p.records[0]["Id"], "001");
    }

    #[test]
    fn multiple_choices_body() {
        assert_eq!(
            parse_multiple_choices(br#"["/services/data/v66.0/sobjects/Account/001A","/services/data/v66.0/sobjects/Account/001B"]"#),
            vec!["/services/data/v66.0/sobjects/Account/001A", "/services/data/v66.0/sobjects/Account/001B"]
        );
        assert_eq!(parse_multiple_choices(b"oops"), vec!["oops"]);
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode_segment("a b/c?d"), "a%20b%2Fc%3Fd");
        assert_eq!(encode_segment("Ext_Id__c"), "Ext_Id__c");
    }
}
