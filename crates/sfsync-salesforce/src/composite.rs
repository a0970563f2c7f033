//! Composite resources: sObject Collections (create, update, upsert by external id, delete,
//! retrieve), Composite (`/composite`, with `referenceId`s) and Composite Batch.
//!
//! Guarantees: request size limits (200 records per collection call, 25 subrequests per
//! composite / batch call) are enforced before sending, with an error naming the call and the
//! count; per-record results come back typed and in input order, so a caller can retry exactly the
//! failed records. None of these calls is retried automatically (they are not idempotent, except
//! retrieve).

use serde::{Deserialize, Serialize};

use reqwest::Method;

use crate::error::{Result, SalesforceError};
use crate::http::{ApiRequest, Body, SalesforceClient};
use crate::rest::{encode_segment, null_default, Record, SaveResult};

/// Most records per sObject Collections call.
pub const MAX_COLLECTION_RECORDS: usize = 200;
/// Most subrequests per Composite or Composite Batch call.
pub const MAX_SUBREQUESTS: usize = 25;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CollectionBody<'a> {
    all_or_none: bool,
    records: &'a [Record],
}

/// A `/composite` subrequest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompositeSubrequest {
    pub method: String,
    /// Full path, e.g. `/services/data/v66.0/sobjects/Account`.
    pub url: String,
    pub reference_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_headers: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A `/composite` request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompositeRequest {
    pub all_or_none: bool,
    #[serde(default)]
    pub collate_subrequests: bool,
    pub composite_request: Vec<CompositeSubrequest>,
}

/// A `/composite` subresponse.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompositeSubresponse {
    #[serde(default)]
    pub body: serde_json::Value,
    #[serde(default, deserialize_with = "null_default")]
    pub http_headers: serde_json::Map<String, serde_json::Value>,
    pub http_status_code: u16,
    #[serde(default, deserialize_with = "null_default")]
    pub reference_id: String,
}

impl CompositeSubresponse {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.http_status_code)
    }
}

/// A `/composite` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompositeResponse {
    pub composite_response: Vec<CompositeSubresponse>,
}

/// A `/composite/batch` subrequest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchSubrequest {
    pub method: String,
    /// Path relative to `/services/data/`, e.g. `v66.0/sobjects/Account/001…`.
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rich_input: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary_part_name: Option<String>,
}

/// A `/composite/batch` request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchRequest {
    pub halt_on_error: bool,
    pub batch_requests: Vec<BatchSubrequest>,
}

/// One `/composite/batch` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchSubresponse {
    pub status_code: u16,
    #[serde(default)]
    pub result: serde_json::Value,
}

/// A `/composite/batch` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchResponse {
    #[serde(default)]
    pub has_errors: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub results: Vec<BatchSubresponse>,
}

fn check_count(place: &str, n: usize, max: usize) -> Result<()> {
    if n == 0 {
        return Err(SalesforceError::invalid(
            place,
            "no records or subrequests given",
        ));
    }
    if n > max {
        return Err(SalesforceError::invalid(
            place,
            format!("{n} items given; the limit is {max} per call, split the work"),
        ));
    }
    Ok(())
}

/// Adds `attributes.type` when a record lacks it.
fn with_type(object: &str, records: &[Record]) -> Vec<Record> {
    records
        .iter()
        .map(|r| {
            let mut r = r.clone();
            if !r.contains_key("attributes") {
                r.insert("attributes".into(), serde_json::json!({ "type": object }));
            }
            r
        })
        .collect()
}

impl SalesforceClient {
    /// `POST /composite/sobjects`: create up to 200 records (without `Id`); `attributes.type` is
    /// set to `object` where missing.
    pub async fn collection_create(
        &self,
        object: &str,
        records: &[Record],
        all_or_none: bool,
    ) -> Result<Vec<SaveResult>> {
        check_count(
            "POST /composite/sobjects (create)",
            records.len(),
            MAX_COLLECTION_RECORDS,
        )?;
        if let Some(i) = records
            .iter()
            .position(|r| r.contains_key("Id") || r.contains_key("id"))
        {
            return Err(SalesforceError::invalid(
                "POST /composite/sobjects (create)",
                format!("record {i} has an Id; create takes records without one"),
            ));
        }
        let records = with_type(object, records);
        self.collection_call(Method::POST, "composite/sobjects", &records, all_or_none)
            .await
    }

    /// `PATCH /composite/sobjects`: update up to 200 records, each with its `Id`.
    pub async fn collection_update(
        &self,
        object: &str,
        records: &[Record],
        all_or_none: bool,
    ) -> Result<Vec<SaveResult>> {
        check_count(
            "PATCH /composite/sobjects (update)",
            records.len(),
            MAX_COLLECTION_RECORDS,
        )?;
        if let Some(i) = records
            .iter()
            .position(|r| !(r.contains_key("Id") || r.contains_key("id")))
        {
            return Err(SalesforceError::invalid(
                "PATCH /composite/sobjects (update)",
                format!("record {i} has no Id"),
            ));
        }
        let records = with_type(object, records);
        self.collection_call(Method::PATCH, "composite/sobjects", &records, all_or_none)
            .await
    }

    /// `PATCH /composite/sobjects/{object}/{external_id_field}`: upsert up to 200 records by
    /// external id; results carry `created`.
    pub async fn collection_upsert(
        &self,
        object: &str,
        external_id_field: &str,
        records: &[Record],
        all_or_none: bool,
    ) -> Result<Vec<SaveResult>> {
        let place = format!("PATCH /composite/sobjects/{object}/{external_id_field} (upsert)");
        check_count(&place, records.len(), MAX_COLLECTION_RECORDS)?;
        if let Some(i) = records
            .iter()
            .position(|r| !r.contains_key(external_id_field))
        {
            return Err(SalesforceError::invalid(
                place,
                format!("record {i} has no {external_id_field}"),
            ));
        }
        let records = with_type(object, records);
        let rest = format!(
            "composite/sobjects/{}/{}",
            encode_segment(object),
            encode_segment(external_id_field)
        );
        self.collection_call(Method::PATCH, &rest, &records, all_or_none)
            .await
    }

    async fn collection_call(
        &self,
        method: Method,
        rest: &str,
        records: &[Record],
        all_or_none: bool,
    ) -> Result<Vec<SaveResult>> {
        let body = Body::json(&CollectionBody {
            all_or_none,
            records,
        })?;
        let req = ApiRequest::new(method, self.data_path(rest)).body(body);
        let results: Vec<SaveResult> = self.send_json(req).await?;
        self.check_result_count(rest, records.len(), results.len())?;
        Ok(results)
    }

    fn check_result_count(&self, rest: &str, sent: usize, got: usize) -> Result<()> {
        if sent != got {
            return Err(SalesforceError::decode(
                "",
                &self.data_path(rest),
                200,
                format!("{sent} records sent but {got} results returned"),
            ));
        }
        Ok(())
    }

    /// `DELETE /composite/sobjects?ids=…&allOrNone=…`: delete up to 200 records.
    pub async fn collection_delete(
        &self,
        ids: &[&str],
        all_or_none: bool,
    ) -> Result<Vec<SaveResult>> {
        check_count(
            "DELETE /composite/sobjects",
            ids.len(),
            MAX_COLLECTION_RECORDS,
        )?;
        let req = ApiRequest::new(Method::DELETE, self.data_path("composite/sobjects"))
            .query("ids", ids.join(","))
            .query("allOrNone", all_or_none.to_string())
            .idempotent(false);
        let results: Vec<SaveResult> = self.send_json(req).await?;
        self.check_result_count("composite/sobjects", ids.len(), results.len())?;
        Ok(results)
    }

    /// `GET /composite/sobjects/{object}?ids=…&fields=…`: up to 200 records, in input order;
    /// `None` where a record was not found.
    pub async fn collection_retrieve(
        &self,
        object: &str,
        ids: &[&str],
        fields: &[&str],
    ) -> Result<Vec<Option<Record>>> {
        let rest = format!("composite/sobjects/{}", encode_segment(object));
        check_count(&format!("GET /{rest}"), ids.len(), MAX_COLLECTION_RECORDS)?;
        if fields.is_empty() {
            return Err(SalesforceError::invalid(
                format!("GET /{rest}"),
                "no fields given",
            ));
        }
        let req = ApiRequest::new(Method::GET, self.data_path(&rest))
            .query("ids", ids.join(","))
            .query("fields", fields.join(","));
        let results: Vec<Option<Record>> = self.send_json(req).await?;
        self.check_result_count(&rest, ids.len(), results.len())?;
        Ok(results)
    }

    /// `POST /composite` (≤ 25 subrequests, later ones may reference `@{refId.field}`).
    pub async fn composite(&self, request: &CompositeRequest) -> Result<CompositeResponse> {
        check_count(
            "POST /composite",
            request.composite_request.len(),
            MAX_SUBREQUESTS,
        )?;
        let req =
            ApiRequest::new(Method::POST, self.data_path("composite")).body(Body::json(request)?);
        self.send_json(req).await
    }

    /// `POST /composite/batch` (≤ 25 independent subrequests).
    pub async fn composite_batch(&self, request: &BatchRequest) -> Result<BatchResponse> {
        check_count(
            "POST /composite/batch",
            request.batch_requests.len(),
            MAX_SUBREQUESTS,
        )?;
        let req = ApiRequest::new(Method::POST, self.data_path("composite/batch"))
            .body(Body::json(request)?);
        self.send_json(req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked_with_clear_errors() {
        let e = check_count("POST /composite/sobjects (create)", 201, 200).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid request POST /composite/sobjects (create): 201 items given; the limit is 200 per call, split the work"
        );
        assert!(check_count("x", 0, 200).is_err());
        assert!(check_count("x", 200, 200).is_ok());
    }

    #[test]
    fn typed_bodies() {
        let req = CompositeRequest {
            all_or_none: true,
            collate_subrequests: false,
            composite_request: vec![CompositeSubrequest {
                method: "POST".into(),
                url: "/services/data/v66.0/sobjects/Account".into(),
                reference_id: "acct".into(),
                body: Some(serde_json::json!({"Name": "Acme"})),
                http_headers: None,
            }],
        };
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(v["compositeRequest"][0]["referenceId"], "acct");
        assert_eq!(v["allOrNone"], true);
        let resp: CompositeResponse = serde_json::from_str(
            r#"{"compositeResponse":[{"body":{"id":"001","success":true,"errors":[]},"httpHeaders":{"Location":"/x"},"httpStatusCode":201,"referenceId":"acct"},
                {"body":[{"errorCode":"PROCESSING_HALTED","message":"halted"}],"httpHeaders":null,"httpStatusCode":400,"referenceId":"c"}]}"#,
        )
        .unwrap();
        assert!(resp.composite_response[0].is_success());
        assert!(!resp.composite_response[1].is_success());
        let b: BatchResponse = serde_json::from_str(
            r#"{"hasErrors":true,"results":[{"statusCode":204,"result":null},{"statusCode":412,"result":[{"errorCode":"BATCH_PROCESSING_HALTED","message":"x"}]}]}"#,
        )
        .unwrap();
        assert!(b.has_errors);
        assert_eq!(b.results[1].status_code, 412);
        let rec: Record = serde_json::from_str(r#"{"Name":"x"}"#).unwrap();
        let typed = with_type("Account", &[rec]);
        assert_eq!(typed[0]["attributes"]["type"], "Account");
    }
}
