//! The `tidemark.v1.IncidentService` implementation over the [`Store`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use tidemark_proto::v1;
use tidemark_proto::v1::incident_service_server::IncidentService;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::arrow::{Table, write_stream};
use crate::auth::Identity;
use crate::convert::{status_after, status_name};
use crate::store::{Cursor, Filter, PageKey, Position, Source, Store};
use tidemark_common::time::now_unix_nano;

/// Longest accepted identifier, name or filter value, in bytes.
const MAX_TEXT: usize = 512;
/// Longest accepted status comment, in bytes.
const MAX_COMMENT: usize = 4096;
/// Page size when a request gives none.
const DEFAULT_PAGE_SIZE: u32 = 100;
/// How long a status change waits for Kafka and for this replica to read it back.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);
/// Size of one `ArrowChunk`.
const ARROW_CHUNK_BYTES: usize = 1024 * 1024;
/// Changes buffered per watcher before the server waits for the client.
const WATCH_BUFFER: usize = 256;

const STAGES: [&str; 5] = ["image", "deploy", "implant", "execution", "impact"];

/// Serves incidents from a [`Store`]; publishes status changes to the status topic.
#[derive(Clone)]
pub struct IncidentApi {
    store: Arc<Store>,
    producer: FutureProducer,
    status_topic: String,
    max_page_size: u32,
    authenticated: bool,
    sequence: Arc<AtomicU64>,
    stopping: Option<watch::Receiver<bool>>,
}

impl std::fmt::Debug for IncidentApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncidentApi")
            .field("status_topic", &self.status_topic)
            .finish_non_exhaustive()
    }
}

impl IncidentApi {
    /// A service over `store` that publishes status events to `status_topic` with `producer`.
    /// `authenticated` says whether every call carries an [`Identity`]; without it the actor a
    /// request names is recorded.
    pub fn new(
        store: Arc<Store>,
        producer: FutureProducer,
        status_topic: String,
        max_page_size: u32,
        authenticated: bool,
    ) -> IncidentApi {
        IncidentApi {
            store,
            producer,
            status_topic,
            max_page_size,
            authenticated,
            sequence: Arc::new(AtomicU64::new(0)),
            stopping: None,
        }
    }

    /// Ends every watch with UNAVAILABLE once `stopping` turns true (or its sender is dropped).
    /// The server's graceful shutdown waits for every open stream, so a watch left open would
    /// keep it from ever stopping.
    pub fn with_stopping(mut self, stopping: watch::Receiver<bool>) -> IncidentApi {
        self.stopping = Some(stopping);
        self
    }

    fn page_size(&self, requested: u32) -> usize {
        let size = if requested == 0 {
            DEFAULT_PAGE_SIZE.min(self.max_page_size)
        } else {
            requested.min(self.max_page_size)
        };
        size as usize
    }
}

fn internal(error: impl std::fmt::Display) -> Status {
    warn!(error = %error, "request failed");
    Status::internal(error.to_string())
}

fn check_text(field: &str, value: &str) -> Result<(), Status> {
    if value.len() > MAX_TEXT {
        return Err(Status::invalid_argument(format!(
            "`{field}` is longer than {MAX_TEXT} bytes"
        )));
    }
    Ok(())
}

/// Checks a `[start, end)` range where 0 leaves a side open.
fn check_time_range(start_unix_nano: i64, end_unix_nano: i64) -> Result<(), Status> {
    if start_unix_nano < 0 || end_unix_nano < 0 {
        return Err(Status::invalid_argument("times must not be negative"));
    }
    if end_unix_nano != 0 && end_unix_nano <= start_unix_nano {
        return Err(Status::invalid_argument(
            "`end_unix_nano` must be after `start_unix_nano`",
        ));
    }
    Ok(())
}

fn check_id(id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("`id` is required"));
    }
    check_text("id", id)
}

/// Validates a list request's filters.
///
/// # Errors
///
/// Returns INVALID_ARGUMENT naming the first bad field.
pub fn filter_from_request(request: &v1::ListIncidentsRequest) -> Result<Filter, Status> {
    check_time_range(request.start_unix_nano, request.end_unix_nano)?;
    for severity in &request.severities {
        match v1::Severity::try_from(*severity) {
            Ok(v1::Severity::Unspecified) | Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown severity {severity}"
                )));
            }
            Ok(_) => {}
        }
    }
    for status in &request.statuses {
        match v1::IncidentStatus::try_from(*status) {
            Ok(v1::IncidentStatus::Unspecified) | Err(_) => {
                return Err(Status::invalid_argument(format!("unknown status {status}")));
            }
            Ok(_) => {}
        }
    }
    for (field, value) in [
        ("cluster", &request.cluster),
        ("namespace", &request.namespace),
        ("workload", &request.workload),
        ("stage", &request.stage),
        ("technique", &request.technique),
        ("page_token", &request.page_token),
    ] {
        check_text(field, value)?;
    }
    if !request.stage.is_empty() && !STAGES.contains(&request.stage.as_str()) {
        return Err(Status::invalid_argument(format!(
            "unknown stage `{}`; one of {}",
            request.stage,
            STAGES.join(", ")
        )));
    }
    Ok(Filter {
        start_unix_nano: request.start_unix_nano,
        end_unix_nano: request.end_unix_nano,
        severities: request.severities.clone(),
        statuses: request.statuses.clone(),
        cluster: request.cluster.clone(),
        namespace: request.namespace.clone(),
        workload: request.workload.clone(),
        stage: request.stage.clone(),
        technique: request.technique.clone(),
    })
}

fn encode_page_key((first_seen, id): &PageKey) -> String {
    format!("p1.{first_seen}.{id}")
}

fn decode_page_key(token: &str) -> Result<Option<PageKey>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || Status::invalid_argument("`page_token` is not a token this server returned");
    let rest = token.strip_prefix("p1.").ok_or_else(bad)?;
    let (time, id) = rest.split_once('.').ok_or_else(bad)?;
    let time = time.parse::<i64>().map_err(|_| bad())?;
    if id.is_empty() {
        return Err(bad());
    }
    Ok(Some((time, id.to_owned())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Completes once the server is stopping; never when the service has no stop signal.
async fn stopped(stopping: Option<&mut watch::Receiver<bool>>) {
    match stopping {
        // An error means the sender is gone with the server: stopping too.
        Some(stopping) => {
            stopping.wait_for(|stopping| *stopping).await.ok();
        }
        None => std::future::pending().await,
    }
}

#[tonic::async_trait]
impl IncidentService for IncidentApi {
    async fn list_incidents(
        &self,
        request: Request<v1::ListIncidentsRequest>,
    ) -> Result<Response<v1::ListIncidentsResponse>, Status> {
        let request = request.into_inner();
        let filter = filter_from_request(&request)?;
        let after = decode_page_key(&request.page_token)?;
        let (page, next) =
            self.store
                .list(&filter, self.page_size(request.page_size), after.as_ref());
        Ok(Response::new(v1::ListIncidentsResponse {
            incidents: page.iter().map(|i| i.as_ref().clone()).collect(),
            next_page_token: next.as_ref().map(encode_page_key).unwrap_or_default(),
        }))
    }

    async fn get_incident(
        &self,
        request: Request<v1::GetIncidentRequest>,
    ) -> Result<Response<v1::Incident>, Status> {
        let id = request.into_inner().id;
        check_id(&id)?;
        match self.store.get(&id).map_err(internal)? {
            Some(incident) => Ok(Response::new(incident)),
            None => Err(Status::not_found(format!("no incident `{id}`"))),
        }
    }

    type WatchIncidentsStream = ReceiverStream<Result<v1::IncidentChange, Status>>;

    async fn watch_incidents(
        &self,
        request: Request<v1::WatchIncidentsRequest>,
    ) -> Result<Response<Self::WatchIncidentsStream>, Status> {
        let request = request.into_inner();
        let requested = if request.cursor.is_empty() {
            None
        } else {
            Some(Cursor::parse(&request.cursor).map_err(Status::invalid_argument)?)
        };
        let (mut receiver, present) = self.store.subscribe();
        let mut cursor = match requested {
            Some(cursor) => cursor,
            None if request.from_start => Cursor::default(),
            None => present,
        };
        let (sender, stream) = mpsc::channel(WATCH_BUFFER);
        let store = Arc::clone(&self.store);
        let mut stopping = self.stopping.clone();
        let stop_sender = sender.clone();
        let forward = async move {
            let send = |cursor: &mut Cursor, position: &Position, change: &v1::IncidentChange| {
                cursor.advance(position);
                let mut change = change.clone();
                change.cursor = cursor.encode();
                change
            };
            // Everything stored after the cursor, then the live stream; a watcher that falls
            // too far behind re-reads the store from its cursor, so nothing is skipped.
            let mut backlog = true;
            loop {
                if backlog {
                    let changes = match store.changes_after(&cursor) {
                        Ok(changes) => changes,
                        Err(error) => {
                            // Whether or not the client is still there, this watch ends.
                            sender.send(Err(internal(error))).await.ok();
                            return;
                        }
                    };
                    for stored in changes {
                        if cursor.covers(&stored.position) {
                            continue;
                        }
                        let change = send(&mut cursor, &stored.position, &stored.change);
                        if sender.send(Ok(change)).await.is_err() {
                            return;
                        }
                    }
                    backlog = false;
                }
                let received = tokio::select! {
                    received = receiver.recv() => received,
                    // The client went away while nothing changed.
                    () = sender.closed() => return,
                };
                match received {
                    Ok(live) => {
                        if cursor.covers(&live.position) {
                            continue;
                        }
                        let change = send(&mut cursor, &live.position, &live.change);
                        if sender.send(Ok(change)).await.is_err() {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(_)) => backlog = true,
                    Err(RecvError::Closed) => return,
                }
            }
        };
        tokio::spawn(async move {
            tokio::select! {
                () = forward => {}
                () = stopped(stopping.as_mut()) => {
                    // The client resumes from its last cursor, on another replica or here after
                    // the restart. With its buffer full it just sees the stream end.
                    let status = Status::unavailable("the server is stopping; resume elsewhere");
                    stop_sender.try_send(Err(status)).ok();
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }

    async fn update_incident_status(
        &self,
        request: Request<v1::UpdateIncidentStatusRequest>,
    ) -> Result<Response<v1::Incident>, Status> {
        let identity = request.extensions().get::<Identity>().cloned();
        let request = request.into_inner();
        check_id(&request.id)?;
        check_text("actor", &request.actor)?;
        if request.comment.len() > MAX_COMMENT {
            return Err(Status::invalid_argument(format!(
                "`comment` is longer than {MAX_COMMENT} bytes"
            )));
        }
        let action = v1::StatusAction::try_from(request.action)
            .ok()
            .and_then(|action| status_after(action).map(|status| (action, status)));
        let Some((action, status)) = action else {
            return Err(Status::invalid_argument(
                "`action` must be ACKNOWLEDGE, RESOLVE or REOPEN",
            ));
        };
        let actor = match identity {
            Some(Identity(name)) => name,
            None if self.authenticated => {
                return Err(Status::unauthenticated("no authenticated identity"));
            }
            None if request.actor.is_empty() => "anonymous".to_owned(),
            None => request.actor.clone(),
        };
        let Some(current) = self.store.get(&request.id).map_err(internal)? else {
            return Err(Status::not_found(format!("no incident `{}`", request.id)));
        };
        if current.status == status as i32 {
            return Err(Status::failed_precondition(format!(
                "incident `{}` is already {}",
                request.id,
                status_name(current.status)
            )));
        }
        if action == v1::StatusAction::Acknowledge
            && current.status == v1::IncidentStatus::Resolved as i32
        {
            return Err(Status::failed_precondition(format!(
                "incident `{}` is resolved; reopen it first",
                request.id
            )));
        }
        let now = now_unix_nano();
        let event = v1::StatusEvent {
            event_id: format!(
                "{now:x}-{:x}-{}",
                std::process::id(),
                self.sequence.fetch_add(1, Ordering::Relaxed)
            ),
            incident_id: request.id.clone(),
            action: action as i32,
            status: status as i32,
            actor: actor.clone(),
            comment: request.comment.clone(),
            time_unix_nano: now,
        };
        let payload = prost::Message::encode_to_vec(&event);
        let record = FutureRecord::to(&self.status_topic)
            .key(&request.id)
            .payload(&payload);
        let (partition, offset) = self
            .producer
            .send(record, STATUS_TIMEOUT)
            .await
            .map(|delivery| (delivery.partition, delivery.offset))
            .map_err(|(error, _)| {
                Status::unavailable(format!(
                    "the status change was not recorded in Kafka: {error}"
                ))
            })?;
        info!(
            incident = request.id,
            action = ?action,
            actor,
            partition,
            offset,
            "status change recorded"
        );
        let position = Position {
            source: Source::Status,
            partition,
            offset,
        };
        if !self.store.wait_applied(position, STATUS_TIMEOUT).await {
            return Err(Status::deadline_exceeded(format!(
                "the status change is recorded (partition {partition}, offset {offset}) but this \
                 replica has not read it back yet"
            )));
        }
        match self.store.get(&request.id).map_err(internal)? {
            Some(incident) => Ok(Response::new(incident)),
            None => Err(Status::not_found(format!("no incident `{}`", request.id))),
        }
    }

    async fn get_workload_timeline(
        &self,
        request: Request<v1::GetWorkloadTimelineRequest>,
    ) -> Result<Response<v1::GetWorkloadTimelineResponse>, Status> {
        let request = request.into_inner();
        if request.workload.is_empty() {
            return Err(Status::invalid_argument("`workload` is required"));
        }
        check_text("workload", &request.workload)?;
        check_text("page_token", &request.page_token)?;
        if request.workload.contains('\0') {
            return Err(Status::invalid_argument("`workload` must not contain NUL"));
        }
        check_time_range(request.start_unix_nano, request.end_unix_nano)?;
        let after = if request.page_token.is_empty() {
            None
        } else {
            Some(
                unhex(&request.page_token)
                    .filter(|key| key.len() == 20)
                    .ok_or_else(|| {
                        Status::invalid_argument("`page_token` is not a token this server returned")
                    })?,
            )
        };
        let (signals, next) = self
            .store
            .timeline(
                &request.workload,
                request.start_unix_nano,
                request.end_unix_nano,
                self.page_size(request.page_size),
                after.as_deref(),
            )
            .map_err(internal)?;
        Ok(Response::new(v1::GetWorkloadTimelineResponse {
            signals,
            next_page_token: next.as_deref().map(hex).unwrap_or_default(),
        }))
    }

    type ExportIncidentsStream =
        tokio_stream::Iter<std::vec::IntoIter<Result<v1::ArrowChunk, Status>>>;

    async fn export_incidents(
        &self,
        request: Request<v1::ExportIncidentsRequest>,
    ) -> Result<Response<Self::ExportIncidentsStream>, Status> {
        let request = request.into_inner();
        let table = match v1::ExportTable::try_from(request.table) {
            Ok(v1::ExportTable::Incidents) => Table::Incidents,
            Ok(v1::ExportTable::Evidence) => Table::Evidence,
            _ => {
                return Err(Status::invalid_argument(
                    "`table` must be INCIDENTS or EVIDENCE",
                ));
            }
        };
        let filter = filter_from_request(&request.filter.unwrap_or_default())?;
        let store = Arc::clone(&self.store);
        let bytes = tokio::task::spawn_blocking(move || {
            let incidents = store.export(&filter).map_err(internal)?;
            write_stream(table, &incidents).map_err(internal)
        })
        .await
        .map_err(internal)??;
        let chunks: Vec<Result<v1::ArrowChunk, Status>> = bytes
            .chunks(ARROW_CHUNK_BYTES)
            .map(|chunk| {
                Ok(v1::ArrowChunk {
                    data: chunk.to_vec(),
                })
            })
            .collect();
        Ok(Response::new(tokio_stream::iter(chunks)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_garbage_is_refused() {
        let key = (1_700_000_000_000_000_000, "00ff00ff00ff00ff".to_owned());
        assert_eq!(decode_page_key(&encode_page_key(&key)).unwrap(), Some(key));
        assert_eq!(decode_page_key("").unwrap(), None);
        for bad in ["x", "p1.", "p1.12", "p1.abc.id", "p2.1.id", "p1.1."] {
            let error = decode_page_key(bad).unwrap_err();
            assert_eq!(error.code(), tonic::Code::InvalidArgument, "{bad}");
        }
        assert_eq!(unhex(&hex(&[0, 1, 254, 255])), Some(vec![0, 1, 254, 255]));
        assert_eq!(unhex("0g"), None);
        assert_eq!(unhex("abc"), None);
    }

    #[test]
    fn malformed_filters_are_invalid_arguments() {
        let bad = [
            v1::ListIncidentsRequest {
                severities: vec![42],
                ..Default::default()
            },
            v1::ListIncidentsRequest {
                statuses: vec![0],
                ..Default::default()
            },
            v1::ListIncidentsRequest {
                start_unix_nano: 10,
                end_unix_nano: 5,
                ..Default::default()
            },
            v1::ListIncidentsRequest {
                start_unix_nano: -1,
                ..Default::default()
            },
            v1::ListIncidentsRequest {
                stage: "lateral".to_owned(),
                ..Default::default()
            },
            v1::ListIncidentsRequest {
                cluster: "c".repeat(MAX_TEXT + 1),
                ..Default::default()
            },
        ];
        for request in bad {
            let error = filter_from_request(&request).unwrap_err();
            assert_eq!(error.code(), tonic::Code::InvalidArgument, "{request:?}");
        }
        assert!(filter_from_request(&v1::ListIncidentsRequest::default()).is_ok());
    }
}
