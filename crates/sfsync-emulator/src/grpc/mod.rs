//! The Pub/Sub API (`eventbus.v1.PubSub`) of the emulator: GetTopic, GetSchema, Subscribe with
//! pull flow control, Publish and PublishStream for platform events.
//!
//! Guarantees: every RPC is authenticated from its `accesstoken` / `instanceurl` / `tenantid`
//! metadata against the emulator's sessions (OAuth tokens and SOAP session ids alike); every
//! failure is a gRPC status whose trailers carry `error-code` and `rpc-id` and whose message ends
//! with `rpcId: <uuid>`. Subscribe delivers each channel's events in replay-id order with no
//! loss and no duplicate, never more than the outstanding demand (capped at 100), reports the
//! exact `pending_num_requested` in every response, sends an empty keepalive response carrying
//! `latest_replay_id` while demand is outstanding and the channel is quiet, closes a stream left
//! without demand for the idle timeout, and counts every delivered event against the rolling
//! 24 h delivery allocation. Publish answers one `PublishResult` per event, in order, whose
//! `correlation_key` echoes the event's `id` (a generated UUID when empty); each published event
//! takes one from the hourly publish allocation, and an event beyond it fails alone with
//! `LIMIT_EXCEEDED` (nothing of it is published). Only platform-event topics are publishable
//! (`can_publish`); custom channels and change-event topics are not.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sfsync_pubsub_proto::pub_sub_server::{PubSub, PubSubServer};
use sfsync_pubsub_proto::{
    ConsumerEvent, Error as PubError, ErrorCode, FetchRequest, FetchResponse, ManagedFetchRequest,
    ManagedFetchResponse, ProducerEvent, PublishRequest, PublishResponse, PublishResult,
    ReplayPreset, SchemaInfo, SchemaRequest, TopicInfo, TopicRequest,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::tokio_stream::Stream;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::auth::Session;
use crate::cdc::bus::ReplayError;
use crate::cdc::{replay_bytes, CdcBus, CdcSchema, StoredEvent, Topic};
use crate::state::AppState;

/// Pub/Sub error codes (trailer `error-code`).
pub mod codes {
    pub const AUTH: &str = "sfdc.platform.eventbus.grpc.service.auth.error";
    pub const REPLAY_CORRUPTED: &str =
        "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted";
    pub const REQUESTED_INVALID: &str =
        "sfdc.platform.eventbus.grpc.subscription.fetch.requested.events.invalid";
    pub const LIMIT_EXCEEDED: &str = "sfdc.platform.eventbus.grpc.subscription.limit.exceeded";
    /// Not established in the fact sheet (third-party clients use this spelling).
    pub const TOPIC_NOT_FOUND: &str = "sfdc.platform.eventbus.grpc.topic.notfound";
    /// Emulator's own code (not documented by Salesforce).
    pub const SCHEMA_NOT_FOUND: &str = "sfdc.platform.eventbus.grpc.schema.notfound";
    pub const INVALID_REQUEST: &str = "sfdc.platform.eventbus.grpc.subscription.fetch.invalid";
    pub const SERVICE_UNAVAILABLE: &str = "sfdc.platform.eventbus.grpc.service.unavailable";
    /// Emulator's own code for publishing to a change-event channel.
    pub const NOT_PUBLISHABLE: &str = "sfdc.platform.eventbus.grpc.publish.topic.not.publishable";
}

/// Largest payload total per FetchResponse (clients' default max message size is 4 MB).
const MAX_RESPONSE_BYTES: usize = 3 * 1024 * 1024;
/// Maximum outstanding demand per Subscribe call.
pub const MAX_DEMAND: i32 = 100;

/// A gRPC status with the Pub/Sub trailers.
pub fn error(code: Code, error_code: &str, msg: impl std::fmt::Display, rpc_id: &str) -> Status {
    let mut md = MetadataMap::new();
    if let Ok(v) = MetadataValue::try_from(error_code) {
        md.insert("error-code", v);
    }
    if let Ok(v) = MetadataValue::try_from(rpc_id) {
        md.insert("rpc-id", v);
    }
    Status::with_metadata(code, format!("{msg} rpcId: {rpc_id}"), md)
}

/// The service. Build the tonic server with [`PubSubService::server`].
#[derive(Clone)]
pub struct PubSubService {
    state: AppState,
}

impl PubSubService {
    pub fn new(state: AppState) -> PubSubService {
        PubSubService { state }
    }

    pub fn server(state: AppState) -> PubSubServer<PubSubService> {
        PubSubServer::new(PubSubService::new(state))
            .max_decoding_message_size(5 * 1024 * 1024)
            .max_encoding_message_size(5 * 1024 * 1024)
    }

    fn bus(&self) -> &Arc<CdcBus> {
        &self.state.cdc
    }

    fn authenticate(&self, md: &MetadataMap, rpc_id: &str) -> Result<Session, Status> {
        let get = |k: &str| md.get(k).and_then(|v| v.to_str().ok()).map(str::trim);
        let fail = |why: &str| error(Code::Unauthenticated, codes::AUTH, why, rpc_id);
        let token = get("accesstoken")
            .filter(|t| !t.is_empty())
            .ok_or_else(|| fail("Missing 'accesstoken' metadata."))?;
        get("instanceurl")
            .filter(|t| !t.is_empty())
            .ok_or_else(|| fail("Missing 'instanceurl' metadata."))?;
        let tenant = get("tenantid")
            .filter(|t| !t.is_empty())
            .ok_or_else(|| fail("Missing 'tenantid' metadata."))?;
        let org = self.state.auth.org_id;
        let org = org.as_str();
        if tenant != org && tenant != &org[..15.min(org.len())] {
            return Err(fail(
                "The 'tenantid' metadata does not match the org of the session.",
            ));
        }
        self.state
            .auth
            .validate(token)
            .ok_or_else(|| fail("Invalid, expired or revoked session in 'accesstoken'."))
    }

    /// Resolves a topic name (case-sensitive, as Salesforce).
    pub fn parse_topic(&self, name: &str) -> Option<Topic> {
        if name == "/data/ChangeEvents" {
            return Some(Topic::AllChanges);
        }
        if let Some(ch) = name.strip_prefix("/data/").filter(|c| c.ends_with("__chn")) {
            return self.bus().channel(ch, false);
        }
        if let Some(ch) = name
            .strip_prefix("/event/")
            .filter(|c| c.ends_with("__chn"))
        {
            return self.bus().channel(ch, true);
        }
        if let Some(ev) = name.strip_prefix("/data/") {
            let object = if let Some(base) = ev.strip_suffix("__ChangeEvent") {
                format!("{base}__c")
            } else {
                ev.strip_suffix("ChangeEvent")?.to_string()
            };
            let schema = self.state.org.schema();
            return schema
                .objects
                .iter()
                .any(|o| o.name == object)
                .then_some(Topic::Object(object));
        }
        let pe = name.strip_prefix("/event/")?;
        self.bus()
            .platform_schema(pe)
            .map(|_| Topic::Platform(pe.to_string()))
    }

    fn topic_or_404(&self, name: &str, rpc_id: &str) -> Result<Topic, Status> {
        self.parse_topic(name).ok_or_else(|| {
            error(
                Code::NotFound,
                codes::TOPIC_NOT_FOUND,
                format!("Topic {name:?} not found: use /data/ChangeEvents, /data/<Object>ChangeEvent, /data/<Name>__ChangeEvent, a defined /event/<Name>__e or a defined custom channel /event/<Name>__chn or /data/<Name>__chn."),
                rpc_id,
            )
        })
    }

    fn current_schema(&self, topic: &Topic) -> Option<Arc<CdcSchema>> {
        match topic {
            Topic::AllChanges | Topic::Channel { .. } => None,
            Topic::Object(o) => self.bus().object_schema(&self.state.org.schema(), o),
            Topic::Platform(p) => self.bus().platform_schema(p),
        }
    }

    fn publish_one(
        &self,
        topic: &Topic,
        schema: Option<&CdcSchema>,
        ev: ProducerEvent,
    ) -> PublishResult {
        let key = if ev.id.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            ev.id.clone()
        };
        let fail = |msg: String| PublishResult {
            replay_id: Vec::new(),
            error: Some(PubError {
                code: ErrorCode::Publish as i32,
                msg,
            }),
            correlation_key: key.clone(),
        };
        let (Topic::Platform(name), Some(schema)) = (topic, schema) else {
            return fail(format!("Topic {} is not publishable.", topic.name()));
        };
        if ev.schema_id != schema.id {
            return fail(format!(
                "Schema id {:?} is not the current schema of {} ({}).",
                ev.schema_id,
                topic.name(),
                schema.id
            ));
        }
        if let Err(e) = crate::cdc::encode::decode_datum(&schema.json, &ev.payload) {
            return fail(format!(
                "Payload does not decode with schema {}: {e}",
                schema.id
            ));
        }
        if let Err(e) = self.state.limits.take_published_event() {
            return fail(format!("{}: {}", e.error_code, e.message));
        }
        let replay = self
            .bus()
            .publish(name, &schema.id, key.clone(), Bytes::from(ev.payload));
        PublishResult {
            replay_id: replay_bytes(replay),
            error: None,
            correlation_key: key,
        }
    }

    fn publish_request(
        &self,
        req: PublishRequest,
        rpc_id: &str,
    ) -> Result<PublishResponse, Status> {
        let topic = self.topic_or_404(&req.topic_name, rpc_id)?;
        if !matches!(topic, Topic::Platform(_)) {
            return Err(error(
                Code::PermissionDenied,
                codes::NOT_PUBLISHABLE,
                format!(
                    "Topic {} is a change-event or custom channel and cannot be published to.",
                    req.topic_name
                ),
                rpc_id,
            ));
        }
        let schema = self.current_schema(&topic);
        let results = req
            .events
            .into_iter()
            .map(|e| self.publish_one(&topic, schema.as_deref(), e))
            .collect();
        Ok(PublishResponse {
            results,
            schema_id: schema.map(|s| s.id.clone()).unwrap_or_default(),
            rpc_id: rpc_id.to_string(),
        })
    }
}

fn rpc_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl PubSub for PubSubService {
    type SubscribeStream = BoxStream<FetchResponse>;
    type PublishStreamStream = BoxStream<PublishResponse>;
    type ManagedSubscribeStream = BoxStream<ManagedFetchResponse>;

    async fn subscribe(
        &self,
        request: Request<Streaming<FetchRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let rpc_id = rpc_id();
        self.authenticate(request.metadata(), &rpc_id)?;
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(8);
        let svc = self.clone();
        tokio::spawn(async move {
            let out = tx.clone();
            if let Err(status) = svc.run_subscription(inbound, tx, &rpc_id).await {
                let _ = out.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_schema(
        &self,
        request: Request<SchemaRequest>,
    ) -> Result<Response<SchemaInfo>, Status> {
        let rpc_id = rpc_id();
        self.authenticate(request.metadata(), &rpc_id)?;
        let id = request.into_inner().schema_id;
        match self.bus().schema_json(&id) {
            Some(json) => Ok(Response::new(SchemaInfo {
                schema_json: json.to_string(),
                schema_id: id,
                rpc_id,
            })),
            None => Err(error(
                Code::NotFound,
                codes::SCHEMA_NOT_FOUND,
                format!("Schema {id:?} not found."),
                &rpc_id,
            )),
        }
    }

    async fn get_topic(
        &self,
        request: Request<TopicRequest>,
    ) -> Result<Response<TopicInfo>, Status> {
        let rpc_id = rpc_id();
        self.authenticate(request.metadata(), &rpc_id)?;
        let name = request.into_inner().topic_name;
        let topic = self.topic_or_404(&name, &rpc_id)?;
        let schema_id = self
            .current_schema(&topic)
            .map(|s| s.id.clone())
            .unwrap_or_default();
        Ok(Response::new(TopicInfo {
            topic_name: topic.name(),
            tenant_guid: self.state.auth.org_id.as_str().to_string(),
            can_publish: matches!(topic, Topic::Platform(_)),
            can_subscribe: true,
            schema_id,
            rpc_id,
        }))
    }

    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let rpc_id = rpc_id();
        self.authenticate(request.metadata(), &rpc_id)?;
        self.publish_request(request.into_inner(), &rpc_id)
            .map(Response::new)
    }

    async fn publish_stream(
        &self,
        request: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let rpc_id = rpc_id();
        self.authenticate(request.metadata(), &rpc_id)?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(8);
        let svc = self.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::time::timeout(Duration::from_secs(70), inbound.message()).await;
                let item = match next {
                    Err(_) => Err(error(
                        Code::Unavailable,
                        codes::SERVICE_UNAVAILABLE,
                        "PublishStream idle for 70 s; closing.",
                        &rpc_id,
                    )),
                    Ok(Ok(Some(req))) => svc.publish_request(req, &rpc_id),
                    Ok(Ok(None)) | Ok(Err(_)) => return,
                };
                let stop = item.is_err();
                if tx.send(item).await.is_err() || stop {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn managed_subscribe(
        &self,
        request: Request<Streaming<ManagedFetchRequest>>,
    ) -> Result<Response<Self::ManagedSubscribeStream>, Status> {
        let rpc_id = rpc_id();
        self.authenticate(request.metadata(), &rpc_id)?;
        Err(error(
            Code::Unimplemented,
            "sfdc.platform.eventbus.grpc.managed.subscription.unimplemented",
            "ManagedSubscribe (beta) is not implemented by the sfsync emulator; use Subscribe with a stored replay id.",
            &rpc_id,
        ))
    }
}

fn consumer_event(e: &StoredEvent) -> ConsumerEvent {
    ConsumerEvent {
        event: Some(ProducerEvent {
            id: e.event_id.clone(),
            schema_id: e.schema_id.to_string(),
            payload: e.payload.to_vec(),
            headers: Vec::new(),
        }),
        replay_id: replay_bytes(e.replay_id),
    }
}

type Out = mpsc::Sender<Result<FetchResponse, Status>>;

impl PubSubService {
    fn check_demand(n: i32, rpc_id: &str) -> Result<i32, Status> {
        if n <= 0 {
            return Err(error(
                Code::InvalidArgument,
                codes::REQUESTED_INVALID,
                format!("num_requested must be between 1 and {MAX_DEMAND}, got {n}."),
                rpc_id,
            ));
        }
        Ok(n)
    }

    /// `UNAVAILABLE` while the service is down ([`crate::cdc::CdcConfig::service_available`]).
    fn check_service(bus: &CdcBus, rpc_id: &str) -> Result<(), Status> {
        if bus.config().service_available {
            return Ok(());
        }
        Err(error(
            Code::Unavailable,
            codes::SERVICE_UNAVAILABLE,
            "The Pub/Sub service is temporarily unavailable. Try again later.",
            rpc_id,
        ))
    }

    fn over_allocation(bus: &CdcBus, rpc_id: &str) -> Status {
        error(
            Code::ResourceExhausted,
            codes::LIMIT_EXCEEDED,
            format!(
                "The org's 24-hour event delivery allocation ({}) is exhausted; subscription disconnected.",
                bus.delivery_usage().0
            ),
            rpc_id,
        )
    }

    /// One Subscribe call: returns the status that ends it (Ok = client went away).
    async fn run_subscription(
        &self,
        mut inbound: Streaming<FetchRequest>,
        out: Out,
        rpc_id: &str,
    ) -> Result<(), Status> {
        let Some(first) = inbound.message().await.ok().flatten() else {
            return Ok(());
        };
        let topic = self.topic_or_404(&first.topic_name, rpc_id)?;
        let mut demand = Self::check_demand(first.num_requested, rpc_id)?.min(MAX_DEMAND);
        let bus = self.bus().clone();
        Self::check_service(&bus, rpc_id)?;
        if bus.delivery_usage().1 == 0 {
            // Over the allocation a new subscription is refused at once (an open one is
            // disconnected at its next delivery, below).
            return Err(Self::over_allocation(&bus, rpc_id));
        }
        let mut cursor = match ReplayPreset::try_from(first.replay_preset) {
            Ok(ReplayPreset::Latest) => bus.latest_id(),
            Ok(ReplayPreset::Earliest) => bus.earliest_cursor(),
            Ok(ReplayPreset::Custom) => bus.check_replay(&first.replay_id).map_err(|e| {
                let msg = match e {
                    ReplayError::BadLength(_) => format!("Replay ID validation failed: {e}."),
                    _ => format!("The replay ID is unknown or outside the retention window: {e}."),
                };
                error(Code::InvalidArgument, codes::REPLAY_CORRUPTED, msg, rpc_id)
            })?,
            Err(_) => {
                return Err(error(
                    Code::InvalidArgument,
                    codes::INVALID_REQUEST,
                    format!("Unknown replay_preset {}.", first.replay_preset),
                    rpc_id,
                ))
            }
        };
        let config = bus.config();
        let mut watch = bus.watch();
        let mut last_sent = Instant::now();
        let mut inbound_open = true;
        loop {
            Self::check_service(&bus, rpc_id)?;
            // Deliver what is there, up to the demand.
            while demand > 0 {
                watch.borrow_and_update();
                let (mut events, scanned) =
                    bus.fetch(&topic, cursor, demand as usize, MAX_RESPONSE_BYTES);
                if events.is_empty() {
                    let advanced = scanned > cursor;
                    cursor = scanned;
                    // One scan is bounded (`SCAN_LIMIT` log entries): a long run of other
                    // topics' events ends it empty short of the log's end. Scan on rather than
                    // wait for a commit notification (already consumed above), which would
                    // hold the backlog until the next keepalive.
                    if advanced && cursor < bus.latest_id() {
                        tokio::task::yield_now().await;
                        continue;
                    }
                    break;
                }
                let granted = bus.take_deliveries(events.len() as u64) as usize;
                if granted == 0 {
                    return Err(Self::over_allocation(&bus, rpc_id));
                }
                if granted < events.len() {
                    events.truncate(granted);
                    cursor = events[granted - 1].replay_id;
                } else {
                    cursor = scanned;
                }
                demand -= events.len() as i32;
                let resp = FetchResponse {
                    events: events.iter().map(|e| consumer_event(e)).collect(),
                    latest_replay_id: replay_bytes(cursor),
                    rpc_id: rpc_id.to_string(),
                    pending_num_requested: demand,
                };
                if out.send(Ok(resp)).await.is_err() {
                    return Ok(());
                }
                last_sent = Instant::now();
            }
            tokio::select! {
                msg = inbound.message(), if inbound_open => match msg {
                    Ok(Some(r)) => {
                        if !r.topic_name.is_empty() && r.topic_name != first.topic_name {
                            return Err(error(
                                Code::InvalidArgument,
                                codes::INVALID_REQUEST,
                                format!("FetchRequest topic {:?} differs from the subscription's topic {:?}.", r.topic_name, first.topic_name),
                                rpc_id,
                            ));
                        }
                        let n = Self::check_demand(r.num_requested, rpc_id)?;
                        demand = demand.saturating_add(n).min(MAX_DEMAND);
                    }
                    Ok(None) => inbound_open = false,
                    Err(_) => return Ok(()),
                },
                changed = watch.changed(), if demand > 0 => {
                    if changed.is_err() {
                        return Err(error(Code::Unavailable, codes::SERVICE_UNAVAILABLE, "The event bus stopped.", rpc_id));
                    }
                }
                _ = tokio::time::sleep_until(last_sent + config.keepalive_interval), if demand > 0 => {
                    let resp = FetchResponse {
                        events: Vec::new(),
                        latest_replay_id: replay_bytes(cursor),
                        rpc_id: rpc_id.to_string(),
                        pending_num_requested: demand,
                    };
                    if out.send(Ok(resp)).await.is_err() {
                        return Ok(());
                    }
                    last_sent = Instant::now();
                }
                _ = tokio::time::sleep_until(last_sent + config.idle_timeout), if demand == 0 => {
                    return Err(error(
                        Code::Unavailable,
                        codes::SERVICE_UNAVAILABLE,
                        format!("Subscription closed: no FetchRequest within {} s after the outstanding demand reached 0.", config.idle_timeout.as_secs_f64()),
                        rpc_id,
                    ));
                }
                _ = out.closed() => return Ok(()),
            }
        }
    }
}
