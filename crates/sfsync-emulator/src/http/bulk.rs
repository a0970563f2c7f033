//! Bulk API 2.0 over HTTP: `/services/data/vNN.N/jobs/ingest[…]` and `/jobs/query[…]` with
//! Salesforce's status codes (create 200, upload 201 with an empty body, delete 204, results
//! 200 `text/csv`), Bulk error bodies `[{"errorCode", "message"}]`, and results pages with
//! `Sforce-NumberOfRecords` and `Sforce-Locator` headers. Results are streamed from
//! pre-rendered chunks (gzip when the client accepts it); uploads are streamed and refused once
//! they pass the 150 MB limit.

use std::collections::HashMap;
use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::Value;
use sfsync_org::ApiKind;

use super::api_version;
use super::error::BulkError;
use crate::auth::Session;
use crate::bulk::ingest::ResultKind;
use crate::bulk::{list_json, parse_body, requested_state, IngestRequest, Job, QueryRequest};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    const INGEST: &str = "/services/data/{v}/jobs/ingest";
    const QUERY: &str = "/services/data/{v}/jobs/query";
    Router::new()
        .route(INGEST, post(create_ingest).get(list_ingest))
        .route(
            &format!("{INGEST}/{{id}}"),
            get(get_ingest).patch(patch_ingest).delete(delete_ingest),
        )
        .route(
            &format!("{INGEST}/{{id}}/batches"),
            put(upload).layer(DefaultBodyLimit::disable()),
        )
        .route(
            &format!("{INGEST}/{{id}}/successfulResults"),
            get(successful_results),
        )
        .route(
            &format!("{INGEST}/{{id}}/failedResults"),
            get(failed_results),
        )
        .route(
            &format!("{INGEST}/{{id}}/unprocessedrecords"),
            get(unprocessed_records),
        )
        .route(
            &format!("{INGEST}/{{id}}/unprocessedRecords"),
            get(unprocessed_records),
        )
        .route(QUERY, post(create_query).get(list_query))
        .route(
            &format!("{QUERY}/{{id}}"),
            get(get_query).patch(patch_query).delete(delete_query),
        )
        .route(&format!("{QUERY}/{{id}}/results"), get(query_results))
}

fn version(segment: &str) -> Result<String, BulkError> {
    api_version(segment).map_err(BulkError::from)
}

// ---------------------------------------------------------------------------------------------
// Ingest

async fn create_ingest(
    State(st): State<AppState>,
    Path(v): Path<String>,
    session: Session,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, BulkError> {
    let version = version(&v)?;
    let req = IngestRequest::parse(&parse_body(&body)?, &st.org.schema())?;
    let ctx = session.call_context(ApiKind::BulkApi, &version, &headers);
    let job = st.bulk.create_ingest(ctx, req);
    tracing::debug!(job = %job.meta.id, object = %job.object, operation = job.operation.as_str(), "Bulk ingest job created");
    Ok(Json(job.info()))
}

async fn list_ingest(
    State(st): State<AppState>,
    Path(v): Path<String>,
    _session: Session,
) -> Result<Json<Value>, BulkError> {
    version(&v)?;
    let records = st
        .bulk
        .list()
        .into_iter()
        .filter_map(|j| match j {
            Job::Ingest(j) => Some(j.info()),
            Job::Query(_) => None,
        })
        .collect();
    Ok(Json(list_json(records)))
}

async fn get_ingest(
    State(st): State<AppState>,
    Path((v, id)): Path<(String, String)>,
    _session: Session,
) -> Result<Json<Value>, BulkError> {
    version(&v)?;
    Ok(Json(st.bulk.ingest_job(&id)?.info()))
}

async fn patch_ingest(
    State(st): State<AppState>,
    Path((v, id)): Path<(String, String)>,
    _session: Session,
    body: Bytes,
) -> Result<Json<Value>, BulkError> {
    version(&v)?;
    let job = st.bulk.ingest_job(&id)?;
    let target = requested_state(&body)?;
    st.bulk.patch_ingest(&job, target)?;
    Ok(Json(job.info()))
}

async fn delete_ingest(
    State(st): State<AppState>,
    Path((v, id)): Path<(String, String)>,
    _session: Session,
) -> Result<StatusCode, BulkError> {
    version(&v)?;
    let job = st.bulk.ingest_job(&id)?;
    st.bulk.delete_ingest(&job)?;
    Ok(StatusCode::NO_CONTENT)
}

fn too_large(id: &str, max: usize) -> BulkError {
    BulkError::new(
        413,
        "ClientInputError",
        format!(
            "The upload to job {id} is larger than {max} bytes (150 MB), the most Bulk API 2.0 accepts in one upload; split the data into several jobs"
        ),
    )
}

async fn upload(
    State(st): State<AppState>,
    Path((v, id)): Path<(String, String)>,
    _session: Session,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, BulkError> {
    version(&v)?;
    let job = st.bulk.ingest_job(&id)?;
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or_default();
        let mime = ct.split(';').next().unwrap_or_default().trim();
        if !mime.eq_ignore_ascii_case("text/csv") {
            return Err(BulkError::new(
                415,
                "ClientInputError",
                format!("Job {id} accepts uploads with Content-Type: text/csv, not '{ct}'"),
            ));
        }
    }
    let state = job.state();
    if state != crate::bulk::JobState::Open {
        return Err(BulkError::new(
            409,
            "InvalidJobState",
            format!(
                "Job {id} is {}; data can only be uploaded while a job is Open",
                state.as_str()
            ),
        ));
    }
    let max = st.bulk.settings().max_upload_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large(&id, max));
    }
    let mut buf: Vec<u8> = Vec::with_capacity(declared.unwrap_or(0).min(max as u64) as usize);
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            BulkError::new(
                400,
                "ClientInputError",
                format!("Reading the upload to job {id} failed: {e}"),
            )
        })?;
        if buf.len() + chunk.len() > max {
            return Err(too_large(&id, max));
        }
        buf.extend_from_slice(&chunk);
    }
    if buf.is_empty() {
        return Err(BulkError::new(
            400,
            "ClientInputError",
            format!("The upload to job {id} is empty; send CSV with a header row"),
        ));
    }
    st.bulk.upload(&job, Bytes::from(buf))?;
    Ok(StatusCode::CREATED)
}

async fn ingest_results(
    st: AppState,
    v: String,
    id: String,
    kind: ResultKind,
) -> Result<Response, BulkError> {
    version(&v)?;
    let job = st.bulk.ingest_job(&id)?;
    let csv = tokio::task::spawn_blocking(move || job.results_csv(kind))
        .await
        .map_err(|e| {
            BulkError::new(
                500,
                "UNKNOWN_EXCEPTION",
                format!("Rendering results of job {id} failed: {e}"),
            )
        })??;
    Ok(([(header::CONTENT_TYPE, "text/csv")], csv).into_response())
}

async fn successful_results(
    State(st): State<AppState>,
    Path((v, id)): Path<(String, String)>,
    _session: Session,
) -> Result<Response, BulkError> {
    ingest_results(st, v, id, ResultKind::Successful).await
}

async fn failed_results(
    State(st): State<AppState>,
    Path((v, id)): Path<(String, String)>,
    _session: Session,
) -> Result<Response, BulkError> {
    ingest_results(st, v, id, ResultKind::Failed).await
}

async fn unprocessed_records(
    State(st): State<AppState>,
    Path((v, id)): Path<(String, String)>,
    _session: Session,
) -> Result<Response, BulkError> {
    ingest_results(st, v, id, ResultKind::Unprocessed).await
}

// ---------------------------------------------------------------------------------------------
// Query

async fn create_query(
    State(st): State<AppState>,
    Path(v): Path<String>,
    session: Session,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, BulkError> {
    let version = version(&v)?;
    let req = QueryRequest::parse(&parse_body(&body)?)?;
    let job = st
        .bulk
        .create_query(session.user_id, &version, req, accepts_gzip(&headers))
        .await?;
    tracing::debug!(job = %job.meta.id, object = %job.object, "Bulk query job created");
    Ok(Json(job.info()))
}

async fn list_query(
    State(st): State<AppState>,
    Path(v): Path<String>,
    _session: Session,
) -> Result<Json<Value>, BulkError> {
    version(&v)?;
    let records = st
        .bulk
        .list()
        .into_iter()
        .filter_map(|j| match j {
            Job::Query(j) => Some(j.info()),
            Job::Ingest(_) => None,
        })
        .collect();
    Ok(Json(list_json(records)))
}

async fn get_query(
    State(st): State<AppState>,
    Path((v, id)): Path<(String, String)>,
    _session: Session,
) -> Result<Json<Value>, BulkError> {
    version(&v)?;
    Ok(Json(st.bulk.query_job(&id)?.info()))
}

async fn patch_query(
    State(st): State<AppState>,
    Path((v, id)): Path<(String, String)>,
    _session: Session,
    body: Bytes,
) -> Result<Json<Value>, BulkError> {
    version(&v)?;
    let job = st.bulk.query_job(&id)?;
    let target = requested_state(&body)?;
    st.bulk.patch_query(&job, target)?;
    Ok(Json(job.info()))
}

async fn delete_query(
    State(st): State<AppState>,
    Path((v, id)): Path<(String, String)>,
    _session: Session,
) -> Result<StatusCode, BulkError> {
    version(&v)?;
    let job = st.bulk.query_job(&id)?;
    st.bulk.delete_query(&job)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Whether `Accept-Encoding` allows gzip (a `q=0` entry refuses it).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|entry| {
            let mut parts = entry.split(';');
            let name = parts.next().unwrap_or_default().trim();
            let refused = parts.any(|p| {
                let p = p.trim();
                p.strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            name.eq_ignore_ascii_case("gzip") && !refused
        })
}

async fn query_results(
    State(st): State<AppState>,
    Path((v, id)): Path<(String, String)>,
    _session: Session,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, BulkError> {
    let version = version(&v)?;
    let job = st.bulk.query_job(&id)?;
    let page = job.page(
        &version,
        params.get("locator").map(String::as_str),
        params.get("maxRecords").map(String::as_str),
        st.bulk.settings().default_page_rows,
    )?;
    let mut response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/csv")
        .header("Sforce-NumberOfRecords", page.rows().to_string())
        .header(
            "Sforce-Locator",
            HeaderValue::from_str(&page.next_locator).unwrap_or(HeaderValue::from_static("null")),
        );
    let body = if accepts_gzip(&headers) {
        response = response.header(header::CONTENT_ENCODING, "gzip");
        if let Some((pieces, len)) = page.gzip_cached() {
            response = response.header(header::CONTENT_LENGTH, len.to_string());
            let body = Body::from_stream(futures::stream::iter(
                pieces.into_iter().map(Ok::<Bytes, Infallible>),
            ));
            return response.body(body).map_err(|e| {
                BulkError::new(
                    500,
                    "UNKNOWN_EXCEPTION",
                    format!("Building the results response of job {id} failed: {e}"),
                )
            });
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        tokio::task::spawn_blocking(move || page.write_gzip(|b| tx.blocking_send(b).is_ok()));
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<Bytes, Infallible>(b), rx))
        });
        Body::from_stream(stream)
    } else {
        let pieces = page.pieces();
        let len: usize = pieces.iter().map(Bytes::len).sum();
        response = response.header(header::CONTENT_LENGTH, len.to_string());
        Body::from_stream(futures::stream::iter(
            pieces.into_iter().map(Ok::<Bytes, Infallible>),
        ))
    };
    response.body(body).map_err(|e| {
        BulkError::new(
            500,
            "UNKNOWN_EXCEPTION",
            format!("Building the results response of job {id} failed: {e}"),
        )
    })
}
