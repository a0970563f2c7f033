//! The OpenAPI 3.1 document of the API, built in code so it is served without a file and
//! checked against [`super::ROUTES`] by a test (every route documented, nothing else).

use serde_json::{json, Value as J};

fn err(desc: &str) -> J {
    json!({ "description": desc, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } })
}

fn ok_json(desc: &str, schema: J) -> J {
    json!({ "description": desc, "content": { "application/json": { "schema": schema } } })
}

fn obj() -> J {
    json!({ "type": "object" })
}

fn id_param(what: &str) -> J {
    json!({ "name": "id", "in": "path", "required": true, "description": what, "schema": { "type": "integer", "format": "int64" } })
}

fn q(name: &str, desc: &str, schema: J) -> J {
    json!({ "name": name, "in": "query", "required": false, "description": desc, "schema": schema })
}

fn limit() -> J {
    q(
        "limit",
        "Most rows returned (default 100, at most 1000).",
        json!({ "type": "integer", "minimum": 1, "maximum": 1000 }),
    )
}

/// The standard error responses of an authenticated endpoint.
fn auth_errors(operation: &mut J, forbidden: &str) {
    let r = operation["responses"].as_object_mut().expect("responses");
    r.insert(
        "401".into(),
        err("No bearer token, or one that is not configured."),
    );
    r.insert("403".into(), err(forbidden));
    r.insert(
        "500".into(),
        err("The store failed; the message names the cause."),
    );
}

fn viewer(mut op: J) -> J {
    op["security"] = json!([{ "bearer": [] }]);
    op["x-sfsync-roles"] = json!(["viewer", "operator"]);
    auth_errors(&mut op, "The token's role (writer) may not read this.");
    op
}

fn operator(mut op: J) -> J {
    op["security"] = json!([{ "bearer": [] }]);
    op["x-sfsync-roles"] = json!(["operator"]);
    auth_errors(&mut op, "The token's role is not operator.");
    op["responses"]["404"] = err("No such item.");
    op["responses"]["409"] = err("The item is not in a state this action applies to.");
    op
}

/// A read-API operation: viewer token, rate limited.
fn reader(op: J) -> J {
    let mut op = viewer(op);
    op["responses"]["429"] = err(
        "Over the caller's read rate ([api] read_rate_per_sec); Retry-After says when to retry.",
    );
    op["responses"]["503"] = err("The object is not synced yet.");
    op
}

/// An OData operation: bearer (viewer/operator) or HTTP Basic ([[odata.basic_auth]]).
fn odata(mut op: J) -> J {
    op["security"] = json!([{ "bearer": [] }, { "basic": [] }]);
    op["x-sfsync-roles"] = json!(["viewer", "operator", "basic_auth"]);
    auth_errors(&mut op, "A writer token.");
    op["responses"]["429"] = err("Over the caller's read rate.");
    op
}

fn obj_param() -> J {
    json!({ "name": "object", "in": "path", "required": true, "description": "Object API name (a synced [[objects]] entry).", "schema": { "type": "string" } })
}

fn dl_kind() -> J {
    json!({ "name": "kind", "in": "path", "required": true, "description": "event, write, delivery or publish.", "schema": { "type": "string", "enum": ["event", "write", "delivery", "publish"] } })
}

fn action_body() -> J {
    json!({
        "required": false,
        "content": { "application/json": { "schema": {
            "type": "object",
            "properties": { "note": { "type": "string", "description": "Why (recorded with the action)." } }
        } } }
    })
}

/// The paths of the dashboard's views and of dead-letter and conflict actions.
fn dashboard_paths() -> J {
    json!({
            "/api/v1/flows": { "get": viewer(json!({
                "summary": "Every flow of the integration map with lag, freshness, throughput and health",
                "description": "Inbound flows into curated tables (CDC stream, polling, Outbound Messages): lag from the object's sync_status row (now − current_as_of, so an idle object that is caught up has a small lag; before the first row, now − commit time of the object's last applied change) and health from its status, freshness (now − the pipeline's last applied batch), changes per 10 s. Outbound (writeback) flows: lag = age of the oldest write on its way, writes by state, writes applied per 10 s. Platform-event flows: in, events stored since start per channel (counts received, duplicates); out, events published since start and the publish queue (counts published, pending_all_events, dead_all_events; red while publish dead letters wait). Scheduled flows: the last run. health is green, amber, red or grey with health_reason.",
                "responses": { "200": ok_json("The flows.", json!({ "type": "object", "properties": { "flows": { "type": "array", "items": obj() } } })) }
            })) },
            "/api/v1/sync-status": { "get": viewer(json!({
                "summary": "The freshness contract per object, from the warehouse's sync_status view",
                "description": "One entry per synced object with the view's columns: status (current, delayed or partial) and status_reason, lag_seconds (now − current_as_of, by the database's clock), current_as_of (the newest time at which every change received for the object had been applied), last_commit_at, last_applied_at, open_repairs, open_resyncs, backfill_running, last_reconcile_at, last_reconcile_result (in_sync, drift, repaired, failed) with last_reconcile_detail, delayed_after_secs and updated_at. status is partial while repairs, re-syncs or a backfill are open or drift is unrepaired; else delayed once current_as_of is older than delayed_after_secs; else current. An object without a row yet is listed as delayed. The top-level status is the worst of the objects' (partial, then delayed, then current), with counts per status.",
                "parameters": [ q("object", "Only this object (API name).", json!({ "type": "string" })) ],
                "responses": {
                    "200": ok_json("The freshness of each object and overall.", json!({
                        "type": "object",
                        "required": ["status", "counts", "objects"],
                        "properties": {
                            "status": { "type": "string", "enum": ["current", "delayed", "partial"] },
                            "counts": obj(),
                            "objects": { "type": "array", "items": obj() }
                        }
                    })),
                    "400": err("An unknown query parameter."),
                    "404": err("The object is not synced by this process.")
                }
            })) },
            "/api/v1/budget": { "get": viewer(json!({
                "summary": "The API budget governor: usage against allocation and allowance, lanes, burn-rate history, forecast",
                "responses": {
                    "200": ok_json("The budget.", obj()),
                    "503": err("This process has no Salesforce client.")
                }
            })) },
            "/api/v1/map": { "get": viewer(json!({
                "summary": "The integration map drawn from the config (nodes, flows, Mermaid and DOT); CDC and polled flows carry their live state (mode, and while polled rounds, calls, cursor and its lag)",
                "responses": { "200": ok_json("The map.", obj()) }
            })) },
            "/api/v1/deadletters": { "get": viewer(json!({
                "summary": "Dead letters: events (without payloads) and failed writes, oldest first",
                "parameters": [
                    q("kind", "event, write, delivery or publish (platform events that could not be published); default all.", json!({ "type": "string", "enum": ["event", "write", "delivery", "publish"] })),
                    q("after", "Event dead letters with ids above this only (paging).", json!({ "type": "integer" })),
                    q("object", "Only this object.", json!({ "type": "string" })),
                    limit()
                ],
                "responses": { "200": ok_json("The dead letters.", json!({ "type": "object", "properties": { "dead_letters": { "type": "array", "items": obj() } } })), "400": err("A bad filter.") }
            })) },
            "/api/v1/deadletters/{kind}/{id}/redrive": { "post": operator(json!({
                "summary": "Send a failed write again (kind write); an event dead letter answers 409 with how to replay it",
                "parameters": [dl_kind(), id_param("The dead letter's id.")],
                "requestBody": action_body(),
                "responses": { "200": ok_json("Redriven: the write is pending again.", obj()), "400": err("A bad body.") }
            })) },
            "/api/v1/deadletters/{kind}/{id}/discard": { "post": operator(json!({
                "summary": "Give up a failed (or conflicted) write: it becomes rejected",
                "parameters": [dl_kind(), id_param("The dead letter's id.")],
                "requestBody": action_body(),
                "responses": { "200": ok_json("Discarded.", obj()), "400": err("A bad body.") }
            })) },
            "/api/v1/conflicts": { "get": viewer(json!({
                "summary": "Writes waiting in the conflict queue for a person, oldest first",
                "parameters": [
                    q("state", "open (the only value).", json!({ "type": "string", "enum": ["open"] })),
                    q("object", "Only this object.", json!({ "type": "string" })),
                    limit()
                ],
                "responses": { "200": ok_json("The conflicts.", json!({ "type": "object", "properties": { "conflicts": { "type": "array", "items": obj() } } })), "400": err("A bad filter.") }
            })) },
            "/api/v1/conflicts/{id}": { "get": viewer(json!({
                "summary": "One write with both sides of each conflicting field (PII masked) and its transitions",
                "parameters": [id_param("The write's id.")],
                "responses": { "200": ok_json("The write.", obj()), "404": err("No such write.") }
            })) },
            "/api/v1/conflicts/{id}/resolve": { "post": operator(json!({
                "summary": "A person's decision: keep Salesforce's values, take the writer's, or set values",
                "parameters": [id_param("The write's id.")],
                "requestBody": {
                    "required": true,
                    "content": { "application/json": { "schema": {
                        "type": "object",
                        "required": ["action"],
                        "additionalProperties": false,
                        "properties": {
                            "action": { "type": "string", "enum": ["keep_salesforce", "take_writer", "set"] },
                            "values": { "type": "object", "description": "With set: field → value (only fields the write carries)." },
                            "note": { "type": "string" }
                        }
                    } } }
                },
                "responses": { "200": ok_json("Resolved.", obj()), "400": err("A bad body.") }
            })) }
    })
}

/// The whole document.
pub fn document() -> J {
    let write_item = json!({
        "type": "object",
        "required": ["object", "fields", "idempotency_key"],
        "additionalProperties": false,
        "properties": {
            "object": { "type": "string", "description": "Object API name, configured in [[writeback.objects]]." },
            "record_id": { "type": "string", "description": "Salesforce Id (15 or 18 characters); or give external_id_field + external_id." },
            "external_id_field": { "type": "string" },
            "external_id": { "type": "string" },
            "fields": { "type": "object", "description": "Field API name → new value (null sets null)." },
            "seen_version_ms": { "type": ["integer", "null"], "description": "The record version the writer last saw (epoch ms)." },
            "idempotency_key": { "type": "string", "description": "Unique per source system: a repeat returns the stored write." }
        }
    });
    let write_result = json!({
        "type": "object",
        "required": ["index", "status"],
        "properties": {
            "index": { "type": "integer" },
            "status": { "enum": ["accepted", "duplicate", "rejected"] },
            "id": { "type": "integer", "description": "The ledger id (accepted, duplicate)." },
            "idempotency_key": { "type": "string" },
            "reason": { "type": "string", "description": "Why it was rejected, naming the field (writes[i].field)." }
        }
    });
    let submit_response = json!({
        "type": "object",
        "properties": {
            "source_system": { "type": "string" },
            "accepted": { "type": "integer" },
            "duplicates": { "type": "integer" },
            "rejected": { "type": "integer" },
            "results": { "type": "array", "items": write_result }
        }
    });
    let mut submit = json!({
        "summary": "Submit a batch of writes to Salesforce (the writeback ingress)",
        "description": "Each valid write is stored durably (pending) before the response; a repeated (source_system, idempotency_key) answers duplicate with the stored id. Roles: operator, or writer (only as the token's source_system). The batch is recorded in the operator audit trail.",
        "security": [{ "bearer": [] }],
        "x-sfsync-roles": ["operator", "writer"],
        "requestBody": { "required": true, "content": { "application/json": { "schema": {
            "type": "object",
            "required": ["source_system", "writes"],
            "additionalProperties": false,
            "properties": {
                "source_system": { "type": "string" },
                "writes": { "type": "array", "minItems": 1, "maxItems": 1000, "items": write_item }
            }
        } } } },
        "responses": {
            "200": ok_json("Every write accepted or a duplicate.", submit_response.clone()),
            "207": ok_json("Some writes rejected (each with its reason); the others stored.", submit_response),
            "400": err("The batch is malformed (not JSON, no source_system, no writes)."),
            "413": err("The body is over api.max_body_bytes or the batch over api.max_batch_writes.")
        }
    });
    auth_errors(
        &mut submit,
        "A viewer token, or a writer token writing as another source_system.",
    );
    let mut events_publish = json!({
        "summary": "Publish platform events to Salesforce: stored durably (and audited) before 202; the publisher sends them within the hourly publish allocation",
        "description": "Each event needs an idempotency key (per event, or the request's Idempotency-Key header as `<key>:<index>`); it becomes the event's ProducerEvent id, and a retried request answers `duplicate` for known keys without publishing again. One malformed event rejects the whole request (400, naming events[i]).",
        "parameters": [{ "name": "name", "in": "path", "required": true, "description": "The platform event (listed in [platform_events] publish).", "schema": { "type": "string" } },
            { "name": "Idempotency-Key", "in": "header", "required": false, "description": "Stands for missing per-event keys.", "schema": { "type": "string" } }],
        "requestBody": {
            "required": true,
            "content": { "application/json": { "schema": {
                "type": "object",
                "required": ["events"],
                "additionalProperties": false,
                "properties": { "events": { "type": "array", "minItems": 1, "items": {
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {
                        "idempotency_key": { "type": "string", "maxLength": 255 },
                        "fields": { "type": "object", "description": "Event field → text, number, boolean or null (DateTime fields take RFC 3339 text)." }
                    }
                } } }
            } } }
        },
        "responses": {
            "202": ok_json("Stored: accepted and duplicate counts, and each event (index, status accepted|duplicate, id, state, replay_id once published).", obj()),
            "400": err("The request is malformed (the message names events[i] and the field)."),
            "404": err("The platform event is not in [platform_events] publish."),
            "413": err("Over [platform_events] max_events_per_request or api.max_body_bytes.")
        }
    });
    events_publish["security"] = json!([{ "bearer": [] }]);
    events_publish["x-sfsync-roles"] = json!(["operator", "writer"]);
    auth_errors(&mut events_publish, "A viewer token.");
    let mut list_writes = json!({
        "summary": "List writes in the ledger, newest first",
        "security": [{ "bearer": [] }],
        "x-sfsync-roles": ["viewer", "operator", "writer"],
        "parameters": [
            q("state", "One state or several, comma-separated: pending, sent, applied, confirmed, conflict, rejected, failed.", json!({ "type": "string" })),
            q("object", "Only writes to this object.", json!({ "type": "string" })),
            q("source_system", "Only this system's writes (a writer token sees only its own).", json!({ "type": "string" })),
            limit()
        ],
        "responses": { "200": ok_json("The writes.", json!({ "type": "object", "properties": { "writes": { "type": "array", "items": { "$ref": "#/components/schemas/Write" } } } })), "400": err("A bad filter.") }
    });
    auth_errors(
        &mut list_writes,
        "A writer token asking for another system's writes.",
    );
    let mut show_write = json!({
        "summary": "One write with its state transitions",
        "security": [{ "bearer": [] }],
        "x-sfsync-roles": ["viewer", "operator", "writer"],
        "parameters": [id_param("The write's ledger id.")],
        "responses": { "200": ok_json("The write.", json!({ "$ref": "#/components/schemas/Write" })), "404": err("No such write (or another system's, for a writer token).") }
    });
    auth_errors(&mut show_write, "Not used.");
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "sfsync operator API",
            "version": "1",
            "description": "Served by `sfsync run`. Authenticate with `Authorization: Bearer <token>` ([[api.tokens]]). Errors are {\"error\": {\"code\", \"message\"}}. Every operator action is recorded in the hash-chained audit trail (`sfsync audit verify`)."
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" }, "basic": { "type": "http", "scheme": "basic", "description": "OData only: [[odata.basic_auth]] principals." } },
            "schemas": {
                "Record": { "type": "object", "description": "A curated record: fields by API name (PII null unless the token has pii), its sync metadata, and (single reads) the object's freshness.", "properties": {
                    "id": { "type": "string" }, "object": { "type": "string" },
                    "fields": { "type": "object" },
                    "sync": { "type": "object", "properties": {
                        "deleted": { "type": "boolean" }, "change_type": { "type": "string" }, "source": { "type": "string", "enum": ["cdc", "snapshot", "outbound_message", "poll"] },
                        "commit_timestamp": { "type": "string", "format": "date-time" }, "commit_number": { "type": "integer" }, "sequence_number": { "type": "integer" },
                        "version": { "type": "string" }, "event_key": { "type": ["string", "null"] }, "transaction_key": { "type": "string" },
                        "replay_id": { "type": ["string", "null"] }, "applied_at": { "type": "string", "format": "date-time" }, "run_id": { "type": "string" }, "origin_client": { "type": ["string", "null"] }
                    } },
                    "freshness": { "$ref": "#/components/schemas/Freshness" }
                } },
                "Freshness": { "type": "object", "description": "The object's row of the sync_status view.", "properties": {
                    "status": { "type": "string", "enum": ["current", "delayed", "partial"] }, "status_reason": { "type": "string" },
                    "current_as_of": { "type": ["string", "null"], "format": "date-time" }, "lag_seconds": { "type": ["number", "null"] },
                    "last_applied_commit_time": { "type": ["string", "null"] }, "last_applied_at": { "type": ["string", "null"] }, "delayed_after_secs": { "type": "integer" }
                } },
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": { "error": { "type": "object", "required": ["code", "message"], "properties": {
                        "code": { "type": "string", "examples": ["unauthorized", "forbidden", "not_found", "conflict", "bad_request", "payload_too_large", "internal"] },
                        "message": { "type": "string" }
                    } } }
                },
                "Run": { "type": "object", "description": "A sync job: backfill, resync, reconcile, replay, formula_refresh, archive or retention.", "properties": {
                    "id": { "type": "integer" }, "kind": { "type": "string" }, "object": { "type": "string" },
                    "state": { "enum": ["pending", "running", "succeeded", "failed", "cancelled"] },
                    "counts": obj(), "error": { "type": ["string", "null"] },
                    "slices": { "type": "array", "description": "A large backfill or re-sync runs in SystemModstamp slices, oldest first, each with its own state; a finished slice is never read again.", "items": { "type": "object", "properties": {
                        "seq": { "type": "integer" }, "since": { "type": ["string", "null"] }, "until": { "type": ["string", "null"] },
                        "state": { "enum": ["pending", "running", "succeeded", "failed", "cancelled"] },
                        "attempts": { "type": "integer" }, "counts": obj(), "error": { "type": ["string", "null"] }
                    } } }
                } },
                "QuarantineEntry": { "type": "object", "properties": {
                    "id": { "type": "integer" }, "status": { "type": "string" }, "object": { "type": "string" },
                    "record_id": { "type": "string" }, "rule": { "type": "string" }, "reason": { "type": "string" }
                } },
                "Write": { "type": "object", "properties": {
                    "id": { "type": "integer" }, "source_system": { "type": "string" }, "idempotency_key": { "type": "string" },
                    "object": { "type": "string" }, "fields": obj(),
                    "state": { "enum": ["pending", "sent", "applied", "confirmed", "conflict", "rejected", "failed"] },
                    "reason": { "description": "Why it was rejected, or the conflict (both sides per field)." },
                    "transitions": { "type": "array", "items": obj() }
                } }
            }
        },
        "paths": {
            "/api/v1/openapi.json": { "get": {
                "summary": "This document (no token needed)",
                "responses": { "200": ok_json("The OpenAPI 3.1 document.", obj()) }
            } },
            "/api/v1/status": { "get": viewer(json!({
                "summary": "Version, uptime, the caller (name and role), pipeline lag and counters, queue sizes, write ledger counts by state",
                "responses": { "200": ok_json("The status.", obj()) }
            })) },
            "/api/v1/runs": { "get": viewer(json!({
                "summary": "Sync jobs (runs), newest first",
                "parameters": [
                    q("state", "open, all (default), pending, running, succeeded, failed or cancelled.", json!({ "type": "string" })),
                    q("kind", "backfill, resync, reconcile, replay, formula_refresh, archive or retention.", json!({ "type": "string" })),
                    q("object", "Only this object's runs.", json!({ "type": "string" })),
                    limit()
                ],
                "responses": { "200": ok_json("The runs.", json!({ "type": "object", "properties": { "runs": { "type": "array", "items": { "$ref": "#/components/schemas/Run" } } } })), "400": err("A bad filter.") }
            })) },
            "/api/v1/runs/{id}": { "get": viewer(json!({
                "summary": "One run",
                "parameters": [id_param("The run (sync job) id.")],
                "responses": { "200": ok_json("The run.", json!({ "$ref": "#/components/schemas/Run" })), "404": err("No such run.") }
            })) },
            "/api/v1/runs/{id}/cancel": { "post": operator(json!({
                "summary": "Cancel a pending or running run (audited)",
                "parameters": [id_param("The run (sync job) id.")],
                "requestBody": action_body(),
                "responses": { "200": ok_json("The cancelled run.", json!({ "$ref": "#/components/schemas/Run" })) }
            })) },
            "/api/v1/quarantine": { "get": viewer(json!({
                "summary": "Quarantined changes, oldest first",
                "parameters": [
                    q("status", "open (default), all, held, release_requested, force_requested, released or discarded.", json!({ "type": "string" })),
                    q("object", "Only this object's.", json!({ "type": "string" })),
                    limit()
                ],
                "responses": { "200": ok_json("The entries.", json!({ "type": "object", "properties": { "entries": { "type": "array", "items": { "$ref": "#/components/schemas/QuarantineEntry" } } } })), "400": err("A bad filter.") }
            })) },
            "/api/v1/quarantine/{id}": { "get": viewer(json!({
                "summary": "One quarantined change with the held change (PII masked)",
                "parameters": [id_param("The quarantine id.")],
                "responses": { "200": ok_json("The entry.", json!({ "$ref": "#/components/schemas/QuarantineEntry" })), "404": err("No such entry.") }
            })) },
            "/api/v1/quarantine/{id}/release": { "post": operator(json!({
                "summary": "Release a held change: checked again (unless force) and applied by the running pipeline (audited)",
                "parameters": [id_param("The quarantine id.")],
                "requestBody": { "required": false, "content": { "application/json": { "schema": {
                    "type": "object",
                    "properties": { "note": { "type": "string" }, "force": { "type": "boolean", "description": "Release without checking again." } }
                } } } },
                "responses": { "200": ok_json("The request is recorded.", obj()) }
            })) },
            "/api/v1/quarantine/{id}/discard": { "post": operator(json!({
                "summary": "Discard a held change (final; audited)",
                "parameters": [id_param("The quarantine id.")],
                "requestBody": action_body(),
                "responses": { "200": ok_json("Discarded.", obj()) }
            })) },
            "/api/v1/writes": { "post": submit, "get": list_writes },
            "/api/v1/events/{name}": { "post": events_publish },
            "/api/v1/events": { "get": viewer(json!({
                "summary": "Platform events to publish, oldest first, with their state (pending, published with its replay id, dead with Salesforce's error, discarded) and counts by state",
                "parameters": [
                    q("event", "Only this platform event.", json!({ "type": "string" })),
                    q("state", "pending, published, dead or discarded.", json!({ "type": "string", "enum": ["pending", "published", "dead", "discarded"] })),
                    q("after", "Ids above this only (paging).", json!({ "type": "integer" })),
                    limit()
                ],
                "responses": { "200": ok_json("The events and counts.", json!({ "type": "object", "properties": { "events": { "type": "array", "items": obj() }, "counts": obj() } })), "400": err("A bad filter.") }
            })) },
            "/api/v1/writes/{id}": { "get": show_write },
            "/api/v1/records/{object}": { "get": reader(json!({
                "summary": "Curated records of an object: equality filters on fields (?Field=value, several are ANDed), keyset paging by Id",
                "parameters": [
                    obj_param(),
                    q("limit", "Most records returned (default 100, at most 1000).", json!({ "type": "integer", "minimum": 1, "maximum": 1000 })),
                    q("cursor", "next_cursor of the previous page.", json!({ "type": "string" })),
                    q("include_deleted", "Also records deleted in Salesforce (default false).", json!({ "type": "boolean" }))
                ],
                "responses": { "200": ok_json("The page: records (each with fields and sync metadata), next_cursor (null on the last page) and the object's freshness.", json!({ "type": "object", "properties": { "object": { "type": "string" }, "records": { "type": "array", "items": { "$ref": "#/components/schemas/Record" } }, "next_cursor": { "type": ["string", "null"] }, "freshness": { "$ref": "#/components/schemas/Freshness" } } })), "400": err("A bad filter, limit or cursor (the message names it)."), "404": err("The object is not synced here.") }
            })) },
            "/api/v1/records/{object}/{id}": { "get": reader(json!({
                "summary": "One curated record by Salesforce Id (deleted records too, flagged), with its sync metadata and the object's freshness",
                "parameters": [obj_param(), { "name": "id", "in": "path", "required": true, "description": "The Salesforce Id.", "schema": { "type": "string" } }],
                "responses": { "200": ok_json("The record.", json!({ "$ref": "#/components/schemas/Record" })), "404": err("No such object or record.") }
            })) },
            "/api/v1/records/{object}/by/{field}/{value}": { "get": reader(json!({
                "summary": "One live curated record by an External Id (or other unique, non-PII) field",
                "parameters": [
                    obj_param(),
                    { "name": "field", "in": "path", "required": true, "description": "Field API name.", "schema": { "type": "string" } },
                    { "name": "value", "in": "path", "required": true, "description": "The value (typed by the field).", "schema": { "type": "string" } }
                ],
                "responses": { "200": ok_json("The record.", json!({ "$ref": "#/components/schemas/Record" })), "404": err("No live record has that value."), "409": err("Several live records have it (not a unique field).") }
            })) },
            "/odata/v4/": { "get": odata(json!({
                "summary": "OData 4.0 service document: the entity sets ([odata] entity_sets, and WritebackOutbox with odata.outbox)",
                "responses": { "200": { "description": "JSON (odata.metadata=minimal)." } }
            })) },
            "/odata/v4/$metadata": { "get": odata(json!({
                "summary": "OData 4.0 CSDL XML: one entity type per entity set, key Id, properties named by field API names",
                "responses": { "200": { "description": "CSDL XML.", "content": { "application/xml": { "schema": { "type": "string" } } } }, "503": err("An object is not synced yet.") }
            })) },
            "/odata/v4/{resource}": { "get": odata(json!({
                "summary": "An entity set with $filter, $select, $orderby, $top, $skip, $count and server-driven paging (@odata.nextLink), or one entity by key: Account('001…')",
                "parameters": [{ "name": "resource", "in": "path", "required": true, "description": "EntitySet or EntitySet(key).", "schema": { "type": "string" } }],
                "responses": { "200": { "description": "JSON (odata.metadata=minimal): value, @odata.count, @odata.nextLink." }, "400": err("A bad query option: the message names the option, position and token."), "404": err("No such entity set or entity.") }
            })) },
            "/odata/v4/{resource}/$count": { "get": odata(json!({
                "summary": "The number of entities of an entity set matching $filter (text/plain)",
                "parameters": [{ "name": "resource", "in": "path", "required": true, "description": "The entity set.", "schema": { "type": "string" } }],
                "responses": { "200": { "description": "The count.", "content": { "text/plain": { "schema": { "type": "integer" } } } }, "400": err("A bad $filter.") }
            })) },
            "/metrics": { "get": {
                "summary": "Prometheus metrics (text format 0.0.4)",
                "description": "Needs a viewer or operator token unless [api] metrics_public = true.",
                "security": [{ "bearer": [] }, {}],
                "x-sfsync-roles": ["viewer", "operator"],
                "responses": {
                    "200": { "description": "The exposition.", "content": { "text/plain": { "schema": { "type": "string" } } } },
                    "401": err("No valid token (and metrics are not public)."),
                    "403": err("A writer token.")
                }
            } },
            "/": { "get": {
                "summary": "Redirects to the dashboard (/ui/)",
                "security": [{}],
                "responses": { "302": { "description": "Location: /ui/" } }
            } },
            "/ui/": { "get": {
                "summary": "The dashboard's page (HTML; public: it holds no data, it fetches every figure with the token the person signs in with)",
                "security": [{}],
                "responses": { "200": { "description": "The page.", "content": { "text/html": { "schema": { "type": "string" } } } } }
            } },
            "/ui/{file}": { "get": {
                "summary": "A file of the dashboard (JavaScript, CSS, icon)",
                "security": [{}],
                "parameters": [{ "name": "file", "in": "path", "required": true, "schema": { "type": "string" } }],
                "responses": {
                    "200": { "description": "The file, with its content type." },
                    "404": err("No such dashboard file.")
                }
            } }
        }
    });
    if let (Some(paths), J::Object(more)) = (doc["paths"].as_object_mut(), dashboard_paths()) {
        paths.extend(more);
    }
    if let (Some(paths), J::Object(more)) = (doc["paths"].as_object_mut(), outbound_paths()) {
        paths.extend(more);
    }
    doc
}

/// The Outbound Message listener and its receipts (a `json!` of their own: the macro's
/// recursion limit).
fn outbound_paths() -> J {
    json!({
            "/soap/outbound/{flow}/{secret}": { "post": {
                "summary": "Salesforce Outbound Message listener (SOAP 1.1, text/xml)",
                "description": "Receives the `notifications` message Salesforce sends for an [[outbound_messages]] flow. Salesforce cannot send a bearer token: the flow's shared secret is the last path segment (give Salesforce the whole URL as the Outbound Message's endpoint), and the message's OrganizationId must be the flow's org. Answers `<Ack>true</Ack>` once every notification is durable in the raw change log (a redelivered notification id is acknowledged again and applied once); a SOAP fault (HTTP 500) names what could not be read — kept as a dead letter — and Salesforce delivers the message again.",
                "security": [{}],
                "parameters": [
                    { "name": "flow", "in": "path", "required": true, "description": "The [[outbound_messages]] name.", "schema": { "type": "string" } },
                    { "name": "secret", "in": "path", "required": true, "description": "The flow's URL secret.", "schema": { "type": "string" } }
                ],
                "requestBody": { "required": true, "content": { "text/xml": { "schema": { "type": "string" } } } },
                "responses": {
                    "200": { "description": "notificationsResponse with <Ack>true</Ack>.", "content": { "text/xml": { "schema": { "type": "string" } } } },
                    "401": { "description": "SOAP fault: unknown flow or wrong secret.", "content": { "text/xml": { "schema": { "type": "string" } } } },
                    "403": { "description": "SOAP fault: the OrganizationId is not the flow's org.", "content": { "text/xml": { "schema": { "type": "string" } } } },
                    "413": { "description": "SOAP fault: the message is larger than [api] max_body_bytes.", "content": { "text/xml": { "schema": { "type": "string" } } } },
                    "500": { "description": "SOAP fault: the message or some notifications cannot be read (kept as dead letters; the readable ones are stored), or the store failed. Not acknowledged.", "content": { "text/xml": { "schema": { "type": "string" } } } }
                }
            } },
            "/api/v1/outbound-messages": { "get": {
                "summary": "Outbound Message flows (counters) and the most recent receipts by notification id",
                "security": [{ "bearer": [] }],
                "x-sfsync-roles": ["viewer", "operator"],
                "parameters": [
                    { "name": "flow", "in": "query", "required": false, "schema": { "type": "string" } },
                    { "name": "limit", "in": "query", "required": false, "description": "1 to 1000 (default 100).", "schema": { "type": "integer" } }
                ],
                "responses": {
                    "200": { "description": "`{flows: [...], unauthorised, receipts: [{notification_id, status (logged | dead_letter), deliveries, event_key, error, ...}]}`", "content": { "application/json": { "schema": { "type": "object" } } } },
                    "401": err("No valid token.")
                }
            } }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    #[test]
    fn the_document_describes_exactly_the_routes() {
        let doc = super::document();
        let mut documented = BTreeSet::new();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for method in ops.as_object().unwrap().keys() {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
        let routed: BTreeSet<(String, String)> = super::super::ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        assert_eq!(documented, routed);
        assert_eq!(doc["openapi"], "3.1.0");
    }
}
