//! `tidemark api` as it runs in production, inside this process: the real server
//! (`server::run`) on a loopback port, reading librdkafka's mock cluster, called through the
//! generated tonic client.
//!
//! Incidents are produced as the correlator publishes them (JSON, keyed by id) and signals as
//! ingest does (protobuf, keyed by workload), onto three partitions per topic. The checks: paging
//! and every filter over ten thousand incidents, with malformed requests refused; a watch resumed
//! from its cursor, on the same replica or another, gets exactly what it missed; status changes
//! reach every replica; tokens and client certificates decide who may call and name the actor;
//! the Arrow export holds the rows the API lists; workload timelines come in event-time order and
//! leave out signals older than the retention; a replica stops even while a watch is open.
//!
//! Every wait polls with a generous limit and nothing asserts on timing: these tests run on slow,
//! shared machines.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_array::cast::AsArray as _;
use arrow_array::types::{Int64Type, TimestampNanosecondType, UInt32Type, UInt64Type};
use arrow_ipc::reader::StreamReader;
use arrow_schema::{DataType, TimeUnit};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status, Streaming};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use tidemark_api::config::{ApiConfig, TlsConfig, TokenConfig};
use tidemark_correlator::model;
use tidemark_proto::v1;
use tidemark_proto::v1::incident_service_client::IncidentServiceClient;

const INCIDENTS: &str = "tidemark.incidents";
const STATUS: &str = "tidemark.incident-status";
const SIGNALS: &str = "tidemark.signals";
const PARTITIONS: i32 = 3;

/// Longest wait for anything: a replica to start or stop, a change to arrive, a poll to succeed.
const TIMEOUT: Duration = Duration::from_secs(120);
/// Pause between two polls.
const POLL: Duration = Duration::from_millis(50);
/// How long a stream must stay silent to count as having nothing more to send.
const QUIET: Duration = Duration::from_secs(2);

/// Event time of the earliest generated incident (2026-02-25).
const T0: i64 = 1_772_000_000_000_000_000;
const SECOND: i64 = 1_000_000_000;
const MINUTE: i64 = 60 * SECOND;
const HOUR: i64 = 60 * MINUTE;

/// Kill-chain stages in order, each with the ATT&CK techniques its evidence may show.
const STAGES: [(&str, &[&str]); 5] = [
    ("image", &["T1204.003", "T1525"]),
    ("deploy", &["T1610", "T1609"]),
    ("implant", &["T1525", "T1053.007"]),
    ("execution", &["T1059.004", "T1609"]),
    ("impact", &["T1496"]),
];
const CLUSTERS: [&str; 3] = ["prod-eu", "prod-us", "staging"];
const NAMESPACES: [&str; 4] = ["shop", "payments", "batch", "ml"];
const NAMES: [&str; 5] = ["web", "api", "worker", "trainer", "cron"];
const SEVERITIES: [model::Severity; 4] = [
    model::Severity::Low,
    model::Severity::Medium,
    model::Severity::High,
    model::Severity::Critical,
];

/// A bearer token of the right length.
const TOKEN: &str = "t0k3n-for-the-soc-dashboard";

// === Kafka ===

/// A mock cluster holding the api's topics, and a producer writing to it.
struct Kafka {
    // Declared first so that it is dropped before the cluster it talks to.
    producer: FutureProducer,
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl Kafka {
    fn start() -> Kafka {
        let cluster = MockCluster::new(1).unwrap();
        for topic in [INCIDENTS, STATUS, SIGNALS] {
            cluster.create_topic(topic, PARTITIONS, 1).unwrap();
        }
        // A mock partition keeps only its last 5 MiB (librdkafka `rdkafka_mock.c`); compressed,
        // ten thousand incidents fit.
        let producer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("compression.type", "lz4")
            .create()
            .unwrap();
        Kafka { producer, cluster }
    }

    fn brokers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Produces `records` (key, payload) in order and waits until every one is delivered.
    async fn produce(&self, topic: &str, records: &[(String, Vec<u8>)]) {
        let mut deliveries = Vec::with_capacity(records.len());
        for (key, payload) in records {
            let record = FutureRecord::to(topic).key(key).payload(payload);
            deliveries.push(
                self.producer
                    .send_result(record)
                    .map_err(|(e, _)| e)
                    .unwrap(),
            );
        }
        for delivery in deliveries {
            delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
        }
    }

    /// Publishes incident versions as the correlator does: JSON, keyed by id.
    async fn publish_incidents(&self, incidents: &[model::Incident]) {
        let records: Vec<(String, Vec<u8>)> = incidents
            .iter()
            .map(|incident| (incident.id.clone(), serde_json::to_vec(incident).unwrap()))
            .collect();
        self.produce(INCIDENTS, &records).await;
    }

    /// Publishes signals as ingest does: protobuf, keyed by workload.
    async fn publish_signals(&self, signals: &[v1::Signal]) {
        let records: Vec<(String, Vec<u8>)> = signals
            .iter()
            .map(|signal| {
                let key = signal.workload.as_ref().unwrap().partition_key();
                (key, prost::Message::encode_to_vec(signal))
            })
            .collect();
        self.produce(SIGNALS, &records).await;
    }
}

// === The api ===

/// One `tidemark api` replica: `server::run` with a store of its own, on a loopback port.
struct Replica {
    address: SocketAddr,
    shutdown_tx: Option<oneshot::Sender<()>>,
    served: JoinHandle<tidemark_api::Result<()>>,
    _store_dir: TempDir,
}

impl Replica {
    /// Starts a replica reading `kafka`, with the defaults changed by `configure`.
    async fn start(kafka: &Kafka, configure: impl FnOnce(&mut ApiConfig)) -> Replica {
        let store_dir = tempfile::tempdir().unwrap();
        let mut config = ApiConfig::default();
        config.kafka.brokers = kafka.brokers();
        config.store.dir = store_dir.path().join("store");
        configure(&mut config);
        config.validate().unwrap();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let shutdown = async move {
            shutdown_rx.await.ok();
        };
        let served = tokio::spawn(tidemark_api::server::run(config, listener, shutdown));
        Replica {
            address,
            shutdown_tx: Some(shutdown_tx),
            served,
            _store_dir: store_dir,
        }
    }

    /// A plaintext channel to the replica.
    fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.address))
            .unwrap()
            .connect_lazy()
    }

    fn client(&self) -> IncidentServiceClient<Channel> {
        IncidentServiceClient::new(self.channel())
    }

    /// Shuts the replica down and checks that `run` ended cleanly.
    async fn stop(mut self) {
        if let Some(shutdown_tx) = self.shutdown_tx.take() {
            shutdown_tx.send(()).ok();
        }
        let ended = tokio::time::timeout(TIMEOUT, &mut self.served)
            .await
            .expect("the api stops after shutdown");
        ended.unwrap().unwrap();
    }
}

/// Polls `probe` until it returns `Some`, for up to [`TIMEOUT`].
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the replica behind `channel` reports SERVING: its store has read everything the
/// topics held when it started.
async fn wait_until_serving(channel: Channel) {
    let health = HealthClient::new(channel);
    eventually("the api reports SERVING", || {
        let mut health = health.clone();
        async move {
            let request = HealthCheckRequest {
                service: "tidemark.v1.IncidentService".to_owned(),
            };
            let response = health.check(request).await.ok()?.into_inner();
            (response.status == ServingStatus::Serving as i32).then_some(())
        }
    })
    .await;
}

/// Waits until the incident `id` is held and `ready` holds for it; returns it.
async fn wait_for_incident(
    client: &IncidentServiceClient<Channel>,
    id: &str,
    what: &str,
    ready: impl Fn(&v1::Incident) -> bool,
) -> v1::Incident {
    eventually(what, || {
        let mut client = client.clone();
        let request = v1::GetIncidentRequest { id: id.to_owned() };
        let ready = &ready;
        async move {
            let incident = client.get_incident(request).await.ok()?.into_inner();
            ready(&incident).then_some(incident)
        }
    })
    .await
}

/// Waits until every (id, version) of `versions` is listed at that version.
async fn wait_for_versions(client: &IncidentServiceClient<Channel>, versions: &[(String, u64)]) {
    eventually("every new version is listed", || {
        let mut client = client.clone();
        async move {
            let (listed, _) = list_all(&mut client, v1::ListIncidentsRequest::default()).await;
            let held: HashMap<&str, u64> =
                listed.iter().map(|i| (i.id.as_str(), i.version)).collect();
            versions
                .iter()
                .all(|(id, version)| held.get(id.as_str()) == Some(version))
                .then_some(())
        }
    })
    .await;
}

/// Every incident `request` matches, page after page; and the number of pages.
async fn list_all(
    client: &mut IncidentServiceClient<Channel>,
    mut request: v1::ListIncidentsRequest,
) -> (Vec<v1::Incident>, usize) {
    let mut incidents = Vec::new();
    let mut num_pages = 0;
    loop {
        let page = client
            .list_incidents(request.clone())
            .await
            .unwrap()
            .into_inner();
        num_pages += 1;
        if request.page_size != 0 {
            assert!(page.incidents.len() <= request.page_size as usize);
            if !page.next_page_token.is_empty() {
                assert_eq!(
                    page.incidents.len(),
                    request.page_size as usize,
                    "a short page"
                );
            }
        }
        incidents.extend(page.incidents);
        if page.next_page_token.is_empty() {
            return (incidents, num_pages);
        }
        request.page_token = page.next_page_token;
    }
}

/// The code a call ended with.
fn code<T>(result: Result<T, Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// `message` with a bearer token.
fn bearer<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    let value = format!("Bearer {token}").parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

fn status_request(
    id: &str,
    action: v1::StatusAction,
    actor: &str,
    comment: &str,
) -> v1::UpdateIncidentStatusRequest {
    v1::UpdateIncidentStatusRequest {
        id: id.to_owned(),
        action: action as i32,
        comment: comment.to_owned(),
        actor: actor.to_owned(),
    }
}

// === Incidents and signals ===

/// A small deterministic generator (splitmix64), so that a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// The id of the `n`th generated incident: 16 hex digits, in no relation to its time.
fn incident_id(n: u64) -> String {
    format!(
        "{:016x}",
        n.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x5bd1_e995
    )
}

fn kubernetes(cluster: &str, namespace: &str, name: &str) -> model::WorkloadRef {
    model::WorkloadRef {
        key: format!("k8s/{cluster}/{namespace}/{name}"),
        platform: "kubernetes".to_owned(),
        cluster: cluster.to_owned(),
        namespace: namespace.to_owned(),
        kind: "Deployment".to_owned(),
        name: name.to_owned(),
        ..Default::default()
    }
}

fn ecs(region: &str, family: &str) -> model::WorkloadRef {
    model::WorkloadRef {
        key: format!("ecs/111122223333/{region}/{family}"),
        platform: "ecs".to_owned(),
        cluster: "ecs-prod".to_owned(),
        kind: "TaskFamily".to_owned(),
        name: family.to_owned(),
        account: "111122223333".to_owned(),
        region: region.to_owned(),
        ..Default::default()
    }
}

fn evidence(stage: &str, technique: &str, time_unix_nano: i64, offset: i64) -> model::Evidence {
    model::Evidence {
        stage: stage.to_owned(),
        strength: if stage == "impact" { "strong" } else { "weak" }.to_owned(),
        reason: format!("{stage}: {technique}"),
        technique: technique.to_owned(),
        time_unix_nano,
        time: model::format_rfc3339(time_unix_nano),
        format: "FORMAT_FALCO".to_owned(),
        source_event: "Terminal shell in container".to_owned(),
        actor: if stage == "deploy" { "ci-deployer" } else { "" }.to_owned(),
        image: if stage == "image" {
            "docker.io/library/nginx:1.27"
        } else {
            ""
        }
        .to_owned(),
        raw: model::RawRef {
            topic: SIGNALS.to_owned(),
            partition: (offset % i64::from(PARTITIONS)) as i32,
            offset,
            line: 0,
            index: 0,
        },
    }
}

/// An incident of `workload` with `items` (in time order) as evidence. Its version is the number
/// of evidence items, as the correlator's is.
fn incident(
    id: &str,
    severity: model::Severity,
    workload: model::WorkloadRef,
    items: Vec<model::Evidence>,
) -> model::Incident {
    let stages: Vec<String> = STAGES
        .iter()
        .filter(|(stage, _)| items.iter().any(|e| e.stage == *stage))
        .map(|(stage, _)| (*stage).to_owned())
        .collect();
    let mut techniques: Vec<String> = items.iter().map(|e| e.technique.clone()).collect();
    techniques.sort();
    techniques.dedup();
    let first = items.first().map_or(0, |e| e.time_unix_nano);
    let last = items.iter().map(|e| e.time_unix_nano).max().unwrap_or(0);
    model::Incident {
        id: id.to_owned(),
        version: items.len() as u64,
        status: model::Status::Open,
        severity,
        score: 2 * stages.len() as u32,
        summary: format!("{} on {}", stages.join(", "), workload.key),
        workload,
        stages,
        techniques,
        first_seen: model::format_rfc3339(first),
        last_seen: model::format_rfc3339(last),
        evidence: items,
        num_evidence_omitted: 0,
    }
}

/// `count` incidents of varied workloads, severities, stages, techniques and times. First-seen
/// times fall on 2000 minutes, so many incidents share one and are ordered by id.
fn varied_incidents(count: u64, seed: u64) -> Vec<model::Incident> {
    let mut rng = Rng(seed);
    (0..count)
        .map(|n| {
            let workload = if rng.below(10) == 0 {
                ecs(
                    rng.pick(&["eu-west-1", "us-east-1"]),
                    rng.pick(&["worker", "reporting"]),
                )
            } else {
                kubernetes(rng.pick(&CLUSTERS), rng.pick(&NAMESPACES), rng.pick(&NAMES))
            };
            let severity = rng.pick(&SEVERITIES);
            let stage_mask = 1 + rng.below(31);
            let mut time = T0 + rng.below(2000) as i64 * MINUTE;
            let mut items = Vec::new();
            for (index, (stage, techniques)) in STAGES.iter().enumerate() {
                if stage_mask & (1 << index) == 0 {
                    continue;
                }
                for _ in 0..=rng.below(2) {
                    if !items.is_empty() {
                        time += (1 + rng.below(900)) as i64 * SECOND;
                    }
                    let offset = (n * 16 + items.len() as u64) as i64;
                    items.push(evidence(stage, rng.pick(techniques), time, offset));
                }
            }
            incident(&incident_id(n), severity, workload, items)
        })
        .collect()
}

/// The next version of `incident`: one more piece of evidence, mining a minute after the last.
fn amended(incident: &model::Incident) -> model::Incident {
    let mut items = incident.evidence.clone();
    let last = items.iter().map(|e| e.time_unix_nano).max().unwrap_or(T0);
    let offset = 1_000_000 + items.len() as i64;
    items.push(evidence("impact", "T1496", last + MINUTE, offset));
    self::incident(
        &incident.id,
        model::Severity::Critical,
        incident.workload.clone(),
        items,
    )
}

fn first_seen(incident: &model::Incident) -> i64 {
    incident.evidence.first().unwrap().time_unix_nano
}

fn last_seen(incident: &model::Incident) -> i64 {
    incident
        .evidence
        .iter()
        .map(|e| e.time_unix_nano)
        .max()
        .unwrap()
}

fn severity(severity: model::Severity) -> v1::Severity {
    match severity {
        model::Severity::Low => v1::Severity::Low,
        model::Severity::Medium => v1::Severity::Medium,
        model::Severity::High => v1::Severity::High,
        model::Severity::Critical => v1::Severity::Critical,
    }
}

/// What a list shows of an incident, to compare with what was published.
#[derive(Debug, PartialEq)]
struct Listed {
    id: String,
    version: u64,
    severity: i32,
    workload: (String, String, String, String, String),
    stages: Vec<String>,
    techniques: Vec<String>,
    first_seen: i64,
    last_seen: i64,
    num_evidence: u32,
}

impl Listed {
    fn of(incident: &v1::Incident) -> Listed {
        let w = incident.workload.clone().unwrap_or_default();
        Listed {
            id: incident.id.clone(),
            version: incident.version,
            severity: incident.severity,
            workload: (w.key, w.platform, w.cluster, w.namespace, w.name),
            stages: incident.stages.clone(),
            techniques: incident.techniques.clone(),
            first_seen: incident.first_seen_unix_nano,
            last_seen: incident.last_seen_unix_nano,
            num_evidence: incident.num_evidence,
        }
    }

    fn published(incident: &model::Incident) -> Listed {
        let w = &incident.workload;
        Listed {
            id: incident.id.clone(),
            version: incident.version,
            severity: severity(incident.severity) as i32,
            workload: (
                w.key.clone(),
                w.platform.clone(),
                w.cluster.clone(),
                w.namespace.clone(),
                w.name.clone(),
            ),
            stages: incident.stages.clone(),
            techniques: incident.techniques.clone(),
            first_seen: first_seen(incident),
            last_seen: last_seen(incident),
            num_evidence: incident.evidence.len() as u32,
        }
    }
}

fn workload_key(cluster: &str, namespace: &str, name: &str) -> v1::WorkloadKey {
    v1::WorkloadKey {
        platform: v1::Platform::Kubernetes as i32,
        cluster: cluster.to_owned(),
        namespace: namespace.to_owned(),
        kind: "Deployment".to_owned(),
        name: name.to_owned(),
        resolution: v1::WorkloadResolution::Explicit as i32,
        ..Default::default()
    }
}

/// A Falco shell alert about `workload`; `n` makes its raw pointer unique.
fn shell_signal(workload: &v1::WorkloadKey, event_time_unix_nano: i64, n: i64) -> v1::Signal {
    v1::Signal {
        source: v1::SourceKind::Node as i32,
        format: v1::Format::Falco as i32,
        event_time_unix_nano,
        ingest_time_unix_nano: event_time_unix_nano + SECOND,
        workload: Some(workload.clone()),
        raw: Some(v1::RawPointer {
            topic: "falco".to_owned(),
            offset: n,
            ..Default::default()
        }),
        dedup_key: format!("falco/{n}"),
        source_event: "Terminal shell in container".to_owned(),
        fact: Some(v1::signal::Fact::ProcessExecuted(v1::ProcessExecuted {
            binary: "/bin/sh".to_owned(),
            name: "sh".to_owned(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn now_unix_nano() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since_epoch.as_nanos()).unwrap()
}

// === Watch cursors ===

/// The positions a cursor names: (source, partition) to the last offset delivered. The format
/// (`v1;S:P:O,...`) is the server's; reading it lets the test check positions, not just counts.
fn cursor_positions(cursor: &str) -> BTreeMap<(u8, i32), i64> {
    let body = cursor.strip_prefix("v1;").expect("a v1 cursor");
    body.split(',')
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let parts: Vec<&str> = entry.split(':').collect();
            let [source, partition, offset] = parts.as_slice() else {
                panic!("cursor entry `{entry}`");
            };
            (
                (source.parse().unwrap(), partition.parse().unwrap()),
                offset.parse().unwrap(),
            )
        })
        .collect()
}

/// The Kafka position of each change, read from the cursors: each cursor moves exactly one
/// partition forward from the one before it, starting at `start`. A change at or before a
/// position already delivered fails here.
fn change_positions(start: &str, changes: &[v1::IncidentChange]) -> Vec<(u8, i32, i64)> {
    let mut before = cursor_positions(start);
    changes
        .iter()
        .map(|change| {
            let after = cursor_positions(&change.cursor);
            assert!(
                before.keys().all(|k| after.contains_key(k)),
                "{}",
                change.cursor
            );
            let moved: Vec<_> = after
                .iter()
                .filter(|(k, v)| before.get(k) != Some(v))
                .collect();
            let &[(&(source, partition), &offset)] = moved.as_slice() else {
                panic!(
                    "`{}` after `{before:?}` moves {} partitions",
                    change.cursor,
                    moved.len()
                );
            };
            let previous = before.get(&(source, partition)).copied();
            assert!(
                previous.is_none_or(|last| last < offset),
                "a change delivered again"
            );
            before = after;
            (source, partition, offset)
        })
        .collect()
}

/// The next `count` changes of `stream`.
async fn receive(
    stream: &mut Streaming<v1::IncidentChange>,
    count: usize,
) -> Vec<v1::IncidentChange> {
    let mut changes = Vec::with_capacity(count);
    while changes.len() < count {
        let next = tokio::time::timeout(TIMEOUT, stream.message())
            .await
            .unwrap_or_else(|_| panic!("timed out after {} of {count} changes", changes.len()));
        changes.push(next.unwrap().expect("the watch goes on"));
    }
    changes
}

/// Checks that `stream` has nothing more to send for a while.
async fn assert_quiet(stream: &mut Streaming<v1::IncidentChange>) {
    let extra = tokio::time::timeout(QUIET, stream.message()).await;
    assert!(extra.is_err(), "one change too many: {extra:?}");
}

/// What a change says, without the replica-local update time.
fn change_summary(change: &v1::IncidentChange) -> (String, i32, String, u64, i32) {
    let incident = change.incident.as_ref().unwrap();
    (
        change.cursor.clone(),
        change.kind,
        incident.id.clone(),
        incident.version,
        incident.status,
    )
}

// === Tests ===

#[tokio::test(flavor = "multi_thread")]
async fn paging_and_filters_cover_ten_thousand_incidents() {
    let kafka = Kafka::start();
    let incidents = varied_incidents(10_000, 1);
    kafka.publish_incidents(&incidents).await;
    let replica = Replica::start(&kafka, |config| config.server.max_page_size = 1000).await;
    wait_until_serving(replica.channel()).await;
    let mut client = replica.client();

    // SERVING means the store has read what the topics held at start: all of it.
    let mut newest_first: Vec<&model::Incident> = incidents.iter().collect();
    newest_first.sort_by_key(|i| (Reverse(first_seen(i)), i.id.clone()));
    let request = v1::ListIncidentsRequest {
        page_size: 500,
        ..Default::default()
    };
    let (listed, num_pages) = list_all(&mut client, request).await;
    assert_eq!(num_pages, 20);
    let unique: HashSet<&str> = listed.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(unique.len(), 10_000);
    let expected: Vec<Listed> = newest_first.iter().map(|i| Listed::published(i)).collect();
    assert_eq!(listed.iter().map(Listed::of).collect::<Vec<_>>(), expected);
    assert!(listed.iter().all(|i| i.evidence.is_empty()));
    assert!(
        listed
            .iter()
            .all(|i| i.status == v1::IncidentStatus::Open as i32)
    );

    // Some incidents handled, so that statuses differ.
    let mut statuses = HashMap::new();
    for (index, incident) in incidents[10..18].iter().enumerate() {
        let action = if index < 5 {
            v1::StatusAction::Acknowledge
        } else {
            v1::StatusAction::Resolve
        };
        let request = status_request(&incident.id, action, "alice", "");
        let updated = client
            .update_incident_status(request)
            .await
            .unwrap()
            .into_inner();
        statuses.insert(incident.id.clone(), updated.status);
    }
    let status_of = |id: &str| {
        statuses
            .get(id)
            .copied()
            .unwrap_or(v1::IncidentStatus::Open as i32)
    };

    type Matches<'a> = Box<dyn Fn(&model::Incident) -> bool + 'a>;
    let (start, end) = (T0 + 600 * MINUTE, T0 + 660 * MINUTE);
    let high = v1::Severity::High as i32;
    let critical = v1::Severity::Critical as i32;
    let cases: Vec<(v1::ListIncidentsRequest, Matches<'_>)> = vec![
        (
            v1::ListIncidentsRequest {
                severities: vec![high, critical],
                ..Default::default()
            },
            Box::new(|i: &model::Incident| {
                matches!(
                    i.severity,
                    model::Severity::High | model::Severity::Critical
                )
            }),
        ),
        (
            v1::ListIncidentsRequest {
                severities: vec![v1::Severity::Low as i32],
                ..Default::default()
            },
            Box::new(|i: &model::Incident| i.severity == model::Severity::Low),
        ),
        (
            v1::ListIncidentsRequest {
                statuses: vec![v1::IncidentStatus::Acknowledged as i32],
                ..Default::default()
            },
            Box::new(|i: &model::Incident| {
                status_of(&i.id) == v1::IncidentStatus::Acknowledged as i32
            }),
        ),
        (
            v1::ListIncidentsRequest {
                statuses: vec![
                    v1::IncidentStatus::Open as i32,
                    v1::IncidentStatus::Resolved as i32,
                ],
                ..Default::default()
            },
            Box::new(|i: &model::Incident| {
                status_of(&i.id) != v1::IncidentStatus::Acknowledged as i32
            }),
        ),
        (
            v1::ListIncidentsRequest {
                cluster: "prod-us".to_owned(),
                ..Default::default()
            },
            Box::new(|i: &model::Incident| i.workload.cluster == "prod-us"),
        ),
        (
            v1::ListIncidentsRequest {
                namespace: "payments".to_owned(),
                ..Default::default()
            },
            Box::new(|i: &model::Incident| i.workload.namespace == "payments"),
        ),
        (
            v1::ListIncidentsRequest {
                workload: "k8s/prod-eu/shop/web".to_owned(),
                ..Default::default()
            },
            Box::new(|i: &model::Incident| i.workload.key == "k8s/prod-eu/shop/web"),
        ),
        (
            // A bare name matches Kubernetes controllers and ECS families alike.
            v1::ListIncidentsRequest {
                workload: "worker".to_owned(),
                ..Default::default()
            },
            Box::new(|i: &model::Incident| i.workload.name == "worker"),
        ),
        (
            v1::ListIncidentsRequest {
                stage: "implant".to_owned(),
                ..Default::default()
            },
            Box::new(|i: &model::Incident| i.stages.iter().any(|s| s == "implant")),
        ),
        (
            v1::ListIncidentsRequest {
                technique: "T1053.007".to_owned(),
                ..Default::default()
            },
            Box::new(|i: &model::Incident| i.techniques.iter().any(|t| t == "T1053.007")),
        ),
        (
            // Evidence overlapping [start, end).
            v1::ListIncidentsRequest {
                start_unix_nano: start,
                end_unix_nano: end,
                ..Default::default()
            },
            Box::new(|i: &model::Incident| last_seen(i) >= start && first_seen(i) < end),
        ),
        (
            v1::ListIncidentsRequest {
                start_unix_nano: start,
                ..Default::default()
            },
            Box::new(|i: &model::Incident| last_seen(i) >= start),
        ),
        (
            v1::ListIncidentsRequest {
                end_unix_nano: end,
                ..Default::default()
            },
            Box::new(|i: &model::Incident| first_seen(i) < end),
        ),
        (
            v1::ListIncidentsRequest {
                severities: vec![critical],
                cluster: "prod-eu".to_owned(),
                stage: "impact".to_owned(),
                start_unix_nano: start,
                ..Default::default()
            },
            Box::new(|i: &model::Incident| {
                i.severity == model::Severity::Critical
                    && i.workload.cluster == "prod-eu"
                    && i.stages.iter().any(|s| s == "impact")
                    && last_seen(i) >= start
            }),
        ),
    ];
    for (request, matches) in &cases {
        let expected: Vec<&str> = newest_first
            .iter()
            .filter(|i| matches(i))
            .map(|i| i.id.as_str())
            .collect();
        assert!(
            !expected.is_empty() && expected.len() < incidents.len(),
            "{request:?}"
        );
        let request = v1::ListIncidentsRequest {
            page_size: 300,
            ..request.clone()
        };
        let (listed, _) = list_all(&mut client, request.clone()).await;
        let listed: Vec<&str> = listed.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(listed, expected, "{request:?}");
    }

    // Page sizes: 0 means 100, and no page is larger than `server.max_page_size`.
    let page = client
        .list_incidents(v1::ListIncidentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.incidents.len(), 100);
    assert!(!page.next_page_token.is_empty());
    let oversize_page = v1::ListIncidentsRequest {
        page_size: 5000,
        ..Default::default()
    };
    let page = client
        .list_incidents(oversize_page)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.incidents.len(), 1000);

    // Malformed requests are refused with the reason, and the server goes on serving.
    let long = "x".repeat(513);
    let bad_lists = [
        (
            "unknown severity",
            v1::ListIncidentsRequest {
                severities: vec![42],
                ..Default::default()
            },
        ),
        (
            "unspecified severity",
            v1::ListIncidentsRequest {
                severities: vec![0],
                ..Default::default()
            },
        ),
        (
            "unknown status",
            v1::ListIncidentsRequest {
                statuses: vec![7],
                ..Default::default()
            },
        ),
        (
            "foreign page token",
            v1::ListIncidentsRequest {
                page_token: "not-a-token".to_owned(),
                ..Default::default()
            },
        ),
        (
            "page token without a time",
            v1::ListIncidentsRequest {
                page_token: "p1.soon.0000000000000001".to_owned(),
                ..Default::default()
            },
        ),
        (
            "end before start",
            v1::ListIncidentsRequest {
                start_unix_nano: T0 + SECOND,
                end_unix_nano: T0,
                ..Default::default()
            },
        ),
        (
            "empty window",
            v1::ListIncidentsRequest {
                start_unix_nano: T0,
                end_unix_nano: T0,
                ..Default::default()
            },
        ),
        (
            "negative time",
            v1::ListIncidentsRequest {
                start_unix_nano: -1,
                ..Default::default()
            },
        ),
        (
            "unknown stage",
            v1::ListIncidentsRequest {
                stage: "lateral-movement".to_owned(),
                ..Default::default()
            },
        ),
        (
            "oversize cluster",
            v1::ListIncidentsRequest {
                cluster: long.clone(),
                ..Default::default()
            },
        ),
        (
            "oversize technique",
            v1::ListIncidentsRequest {
                technique: long.clone(),
                ..Default::default()
            },
        ),
    ];
    for (what, request) in bad_lists {
        let result = client.list_incidents(request).await;
        assert_eq!(code(result), Code::InvalidArgument, "{what}");
    }
    for (what, id, expected) in [
        ("empty id", String::new(), Code::InvalidArgument),
        ("oversize id", long.clone(), Code::InvalidArgument),
        ("unknown id", "ffffffffffffffff".to_owned(), Code::NotFound),
    ] {
        let result = client.get_incident(v1::GetIncidentRequest { id }).await;
        assert_eq!(code(result), expected, "{what}");
    }
    for cursor in [
        "garbage",
        "v1;7:0:1",
        "v1;0:0:soon",
        "v1;0:-1:3",
        "v1;2:0:1",
    ] {
        let request = v1::WatchIncidentsRequest {
            cursor: cursor.to_owned(),
            from_start: false,
        };
        let result = client.watch_incidents(request).await;
        assert_eq!(code(result), Code::InvalidArgument, "cursor `{cursor}`");
    }
    let id = &incidents[0].id;
    let mut unspecified = status_request(id, v1::StatusAction::Acknowledge, "alice", "");
    unspecified.action = v1::StatusAction::Unspecified as i32;
    let mut unknown_action = unspecified.clone();
    unknown_action.action = 42;
    let long_comment = status_request(id, v1::StatusAction::Acknowledge, "a", &"c".repeat(5000));
    let no_id = status_request("", v1::StatusAction::Acknowledge, "alice", "");
    let unknown_id = status_request("ffffffffffffffff", v1::StatusAction::Resolve, "alice", "");
    for (what, request, expected) in [
        ("unspecified action", unspecified, Code::InvalidArgument),
        ("unknown action", unknown_action, Code::InvalidArgument),
        ("long comment", long_comment, Code::InvalidArgument),
        ("no id", no_id, Code::InvalidArgument),
        ("unknown id", unknown_id, Code::NotFound),
    ] {
        let result = client.update_incident_status(request).await;
        assert_eq!(code(result), expected, "{what}");
    }
    let no_workload = v1::GetWorkloadTimelineRequest::default();
    assert_eq!(
        code(client.get_workload_timeline(no_workload).await),
        Code::InvalidArgument
    );
    let foreign_token = v1::GetWorkloadTimelineRequest {
        workload: "k8s/prod-eu/shop/web".to_owned(),
        page_token: "zz".to_owned(),
        ..Default::default()
    };
    assert_eq!(
        code(client.get_workload_timeline(foreign_token).await),
        Code::InvalidArgument
    );
    let no_table = v1::ExportIncidentsRequest::default();
    assert_eq!(
        code(client.export_incidents(no_table).await),
        Code::InvalidArgument
    );

    // A request over `server.max_request_bytes` (64 KiB) is refused by tonic before it is
    // decoded, with OUT_OF_RANGE.
    let huge_list = v1::ListIncidentsRequest {
        cluster: "c".repeat(100_000),
        ..Default::default()
    };
    assert_eq!(
        code(client.list_incidents(huge_list).await),
        Code::OutOfRange
    );
    let huge_comment = status_request(id, v1::StatusAction::Acknowledge, "a", &"c".repeat(70_000));
    assert_eq!(
        code(client.update_incident_status(huge_comment).await),
        Code::OutOfRange
    );
    let untouched = client
        .get_incident(v1::GetIncidentRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(untouched.status, v1::IncidentStatus::Open as i32);
    assert_eq!(untouched.evidence.len(), incidents[0].evidence.len());

    wait_until_serving(replica.channel()).await;
    drop(client);
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_resumes_after_a_disconnect_with_no_gap_and_no_duplicate() {
    let kafka = Kafka::start();
    let a = Replica::start(&kafka, |_| {}).await;
    let b = Replica::start(&kafka, |_| {}).await;
    wait_until_serving(a.channel()).await;
    wait_until_serving(b.channel()).await;
    let (mut client_a, mut client_b) = (a.client(), b.client());
    let first = varied_incidents(30, 2);
    kafka.publish_incidents(&first).await;

    // The first watch sees every incident open, then the client goes away.
    let from_start = v1::WatchIncidentsRequest {
        cursor: String::new(),
        from_start: true,
    };
    let mut watch = client_a
        .watch_incidents(from_start)
        .await
        .unwrap()
        .into_inner();
    let opened = receive(&mut watch, first.len()).await;
    drop(watch);
    change_positions("v1;", &opened);
    let mut opened_ids: Vec<&str> = opened
        .iter()
        .map(|c| c.incident.as_ref().unwrap().id.as_str())
        .collect();
    opened_ids.sort_unstable();
    let mut first_ids: Vec<&str> = first.iter().map(|i| i.id.as_str()).collect();
    first_ids.sort_unstable();
    assert_eq!(opened_ids, first_ids);
    for change in &opened {
        let incident = change.incident.as_ref().unwrap();
        assert_eq!(change.kind, v1::ChangeKind::Opened as i32);
        assert_eq!(u64::from(incident.num_evidence), incident.version);
        assert!(incident.evidence.is_empty());
    }
    let cursor = opened.last().unwrap().cursor.clone();

    // While nobody watches: a redelivered first version (no change), new versions, and a
    // status change. The redelivery goes first, so the new version of that incident (same
    // key, same partition) proves it was read.
    kafka.publish_incidents(&first[20..21]).await;
    let mut second: Vec<model::Incident> = first[..10].iter().map(amended).collect();
    second.push(amended(&first[20]));
    let third: Vec<model::Incident> = second[..3].iter().map(amended).collect();
    kafka.publish_incidents(&second).await;
    kafka.publish_incidents(&third).await;
    let mut versions: HashMap<String, u64> = HashMap::new();
    for incident in second.iter().chain(&third) {
        versions.insert(incident.id.clone(), incident.version);
    }
    let versions: Vec<(String, u64)> = versions.into_iter().collect();
    wait_for_versions(&client_a, &versions).await;
    wait_for_versions(&client_b, &versions).await;
    let acknowledged_id = first[5].id.clone();
    let request = status_request(
        &acknowledged_id,
        v1::StatusAction::Acknowledge,
        "bob",
        "mine",
    );
    client_a.update_incident_status(request).await.unwrap();
    let acknowledged = v1::IncidentStatus::Acknowledged as i32;
    wait_for_incident(
        &client_b,
        &acknowledged_id,
        "replica B has the status",
        |i| i.status == acknowledged,
    )
    .await;

    // Resumed on A: exactly what was missed.
    let resume = v1::WatchIncidentsRequest {
        cursor: cursor.clone(),
        from_start: false,
    };
    let mut watch_a = client_a
        .watch_incidents(resume.clone())
        .await
        .unwrap()
        .into_inner();
    let missed = second.len() + third.len() + 1;
    let missed_a = receive(&mut watch_a, missed).await;
    assert_quiet(&mut watch_a).await;
    let positions = change_positions(&cursor, &missed_a);
    let on_status_topic = positions
        .iter()
        .filter(|(source, _, _)| *source == 1)
        .count();
    assert_eq!(on_status_topic, 1);
    let mut got: Vec<(i32, String, u64, i32)> = missed_a
        .iter()
        .map(|c| {
            let (_, kind, id, version, status) = change_summary(c);
            (kind, id, version, status)
        })
        .collect();
    got.sort();
    let amended_kind = v1::ChangeKind::Amended as i32;
    let open = v1::IncidentStatus::Open as i32;
    // The new versions came before the acknowledgement.
    let mut expected: Vec<(i32, String, u64, i32)> = second
        .iter()
        .chain(&third)
        .map(|i| (amended_kind, i.id.clone(), i.version, open))
        .collect();
    let status_kind = v1::ChangeKind::Status as i32;
    expected.push((
        status_kind,
        acknowledged_id.clone(),
        first[5].version + 1,
        acknowledged,
    ));
    expected.sort();
    assert_eq!(got, expected);
    let mut last_version: HashMap<String, u64> = HashMap::new();
    for change in &missed_a {
        let incident = change.incident.as_ref().unwrap();
        let previous = last_version.insert(incident.id.clone(), incident.version);
        assert!(
            previous.is_none_or(|v| v <= incident.version),
            "versions out of order"
        );
    }

    // The same cursor on replica B: the same changes, at the same positions.
    let mut watch_b = client_b.watch_incidents(resume).await.unwrap().into_inner();
    let missed_b = receive(&mut watch_b, missed).await;
    assert_quiet(&mut watch_b).await;
    let summaries_a: Vec<_> = missed_a.iter().map(change_summary).collect();
    let summaries_b: Vec<_> = missed_b.iter().map(change_summary).collect();
    assert_eq!(summaries_b, summaries_a);

    // Both resumed watches go on live.
    let fourth = amended(&third[0]);
    kafka.publish_incidents(std::slice::from_ref(&fourth)).await;
    let live_a = receive(&mut watch_a, 1).await;
    let live_b = receive(&mut watch_b, 1).await;
    change_positions(&missed_a.last().unwrap().cursor, &live_a);
    assert_eq!(change_summary(&live_a[0]), change_summary(&live_b[0]));
    let (_, kind, id, version, _) = change_summary(&live_a[0]);
    assert_eq!(
        (kind, id, version),
        (amended_kind, fourth.id.clone(), fourth.version)
    );

    drop((watch_a, watch_b, client_a, client_b));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn status_change_is_seen_by_every_replica() {
    let kafka = Kafka::start();
    let incidents = varied_incidents(5, 3);
    kafka.publish_incidents(&incidents).await;
    let a = Replica::start(&kafka, |_| {}).await;
    let b = Replica::start(&kafka, |_| {}).await;
    wait_until_serving(a.channel()).await;
    wait_until_serving(b.channel()).await;
    let (mut client_a, mut client_b) = (a.client(), b.client());
    let id = incidents[0].id.clone();
    let (open, acknowledged, resolved) = (
        v1::IncidentStatus::Open as i32,
        v1::IncidentStatus::Acknowledged as i32,
        v1::IncidentStatus::Resolved as i32,
    );

    // Acknowledged on A: the answer holds the change as recorded, and B applies the same.
    let request = status_request(
        &id,
        v1::StatusAction::Acknowledge,
        "alice",
        "looking into it",
    );
    let on_a = client_a
        .update_incident_status(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(on_a.status, acknowledged);
    assert_eq!(on_a.version, incidents[0].version);
    let [event] = on_a.status_history.as_slice() else {
        panic!("status history {:?}", on_a.status_history);
    };
    assert_eq!(event.incident_id, id);
    assert_eq!(event.action, v1::StatusAction::Acknowledge as i32);
    assert_eq!(event.status, acknowledged);
    assert_eq!(
        (event.actor.as_str(), event.comment.as_str()),
        ("alice", "looking into it")
    );
    assert!(!event.event_id.is_empty() && event.time_unix_nano > 0);
    let on_b = wait_for_incident(&client_b, &id, "B has the acknowledgement", |i| {
        i.status == acknowledged
    })
    .await;
    assert_eq!(on_b.status_history, on_a.status_history);

    // Acknowledging again is refused, on either replica.
    let again = status_request(&id, v1::StatusAction::Acknowledge, "alice", "");
    let result = client_a.update_incident_status(again.clone()).await;
    assert_eq!(code(result), Code::FailedPrecondition);
    let result = client_b.update_incident_status(again.clone()).await;
    assert_eq!(code(result), Code::FailedPrecondition);

    // Reopened on B, resolved on A.
    let request = status_request(&id, v1::StatusAction::Reopen, "bob", "not a false positive");
    let reopened = client_b
        .update_incident_status(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reopened.status, open);
    assert_eq!(reopened.status_history.len(), 2);
    wait_for_incident(&client_a, &id, "A has the reopening", |i| i.status == open).await;
    let request = status_request(&id, v1::StatusAction::Resolve, "alice", "image removed");
    let on_a = client_a
        .update_incident_status(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(on_a.status, resolved);
    let actions: Vec<(i32, &str)> = on_a
        .status_history
        .iter()
        .map(|e| (e.action, e.actor.as_str()))
        .collect();
    let expected_actions = vec![
        (v1::StatusAction::Acknowledge as i32, "alice"),
        (v1::StatusAction::Reopen as i32, "bob"),
        (v1::StatusAction::Resolve as i32, "alice"),
    ];
    assert_eq!(actions, expected_actions);
    let on_b = wait_for_incident(&client_b, &id, "B has the resolution", |i| {
        i.status == resolved
    })
    .await;
    assert_eq!(on_b.status_history, on_a.status_history);

    // A resolved incident must be reopened before it is acknowledged.
    let result = client_b.update_incident_status(again).await;
    assert_eq!(code(result), Code::FailedPrecondition);
    let only_resolved = v1::ListIncidentsRequest {
        statuses: vec![resolved],
        ..Default::default()
    };
    let (listed, _) = list_all(&mut client_b, only_resolved).await;
    assert_eq!(
        listed.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        [id.as_str()]
    );

    // A new version of the incident keeps its status.
    let newer = amended(&incidents[0]);
    kafka.publish_incidents(std::slice::from_ref(&newer)).await;
    for client in [&client_a, &client_b] {
        let incident = wait_for_incident(client, &id, "the new version is read", |i| {
            i.version == newer.version
        })
        .await;
        assert_eq!(incident.status, resolved);
        assert_eq!(incident.status_history, on_a.status_history);
    }

    // A replica started now rebuilds the same from the topics.
    let c = Replica::start(&kafka, |_| {}).await;
    wait_until_serving(c.channel()).await;
    let on_c = c
        .client()
        .get_incident(v1::GetIncidentRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((on_c.version, on_c.status), (newer.version, resolved));
    assert_eq!(on_c.status_history, on_a.status_history);

    drop((client_a, client_b));
    a.stop().await;
    b.stop().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_tokens_decide_who_may_call_and_name_the_actor() {
    let kafka = Kafka::start();
    let incidents = varied_incidents(3, 4);
    kafka.publish_incidents(&incidents).await;
    let replica = Replica::start(&kafka, |config| {
        config.server.tokens = vec![TokenConfig {
            identity: "soc-dashboard".to_owned(),
            token: TOKEN.to_owned(),
        }];
    })
    .await;
    // Health answers without a token: probes carry none.
    wait_until_serving(replica.channel()).await;
    let mut client = replica.client();

    let list = v1::ListIncidentsRequest::default;
    assert_eq!(
        code(client.list_incidents(list()).await),
        Code::Unauthenticated
    );
    let wrong = bearer(list(), "not-the-token-of-anyone");
    assert_eq!(
        code(client.list_incidents(wrong).await),
        Code::PermissionDenied
    );
    let watch = v1::WatchIncidentsRequest::default();
    assert_eq!(
        code(client.watch_incidents(watch).await),
        Code::Unauthenticated
    );
    let listed = client.list_incidents(bearer(list(), TOKEN)).await.unwrap();
    assert_eq!(listed.into_inner().incidents.len(), incidents.len());

    // The recorded actor is the token's identity, whatever the request says.
    let id = &incidents[0].id;
    let request = status_request(id, v1::StatusAction::Acknowledge, "mallory", "triaged");
    let updated = client
        .update_incident_status(bearer(request, TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.status, v1::IncidentStatus::Acknowledged as i32);
    let event = updated.status_history.last().unwrap();
    assert_eq!(
        (event.actor.as_str(), event.comment.as_str()),
        ("soc-dashboard", "triaged")
    );

    // Without a token nothing changes.
    let other = &incidents[1].id;
    let request = status_request(other, v1::StatusAction::Resolve, "mallory", "");
    assert_eq!(
        code(client.update_incident_status(request).await),
        Code::Unauthenticated
    );
    let get = bearer(v1::GetIncidentRequest { id: other.clone() }, TOKEN);
    let untouched = client.get_incident(get).await.unwrap().into_inner();
    assert_eq!(untouched.status, v1::IncidentStatus::Open as i32);
    assert!(untouched.status_history.is_empty());

    drop(client);
    replica.stop().await;
}

/// A CA, a server certificate it signed for `localhost` and 127.0.0.1, and a client
/// certificate it signed; PEM files in a temporary directory.
struct Pki {
    dir: TempDir,
    ca_pem: String,
    client_cert_pem: String,
    client_key_pem: String,
}

impl Pki {
    fn generate(client_name: &str) -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name = DistinguishedName::new();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "tidemark test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let mut server_params = CertificateParams::new(names).unwrap();
        server_params.distinguished_name = DistinguishedName::new();
        server_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate().unwrap();
        let server_cert = server_params.signed_by(&server_key, &ca).unwrap();

        let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        client_params.distinguished_name = DistinguishedName::new();
        client_params
            .distinguished_name
            .push(DnType::OrganizationName, "tidemark");
        client_params
            .distinguished_name
            .push(DnType::CommonName, client_name);
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate().unwrap();
        let client_cert = client_params.signed_by(&client_key, &ca).unwrap();

        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
            ca_pem: ca.pem(),
            client_cert_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
        };
        std::fs::write(pki.path("ca.pem"), &pki.ca_pem).unwrap();
        std::fs::write(pki.path("server.pem"), server_cert.pem()).unwrap();
        std::fs::write(pki.path("server.key"), server_key.serialize_pem()).unwrap();
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The server's TLS settings, requiring client certificates signed by the CA.
    fn server_tls(&self) -> TlsConfig {
        TlsConfig {
            cert: self.path("server.pem"),
            key: self.path("server.key"),
            client_ca: Some(self.path("ca.pem")),
        }
    }

    /// A TLS channel to `address` that trusts the CA, with the client certificate or without.
    fn channel(&self, address: SocketAddr, with_certificate: bool) -> Channel {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name("localhost");
        if with_certificate {
            tls = tls.identity(Identity::from_pem(
                &self.client_cert_pem,
                &self.client_key_pem,
            ));
        }
        Endpoint::from_shared(format!("https://{address}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_lazy()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn client_certificates_name_the_actor_and_plaintext_is_refused() {
    let kafka = Kafka::start();
    let incidents = varied_incidents(3, 5);
    kafka.publish_incidents(&incidents).await;
    let pki = Pki::generate("analyst-alice");
    let replica = Replica::start(&kafka, |config| config.server.tls = Some(pki.server_tls())).await;
    let channel = pki.channel(replica.address, true);
    wait_until_serving(channel.clone()).await;
    let mut client = IncidentServiceClient::new(channel);

    let listed = client
        .list_incidents(v1::ListIncidentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.incidents.len(), incidents.len());

    // Without a token, the certificate's common name is the actor.
    let request = status_request(&incidents[0].id, v1::StatusAction::Resolve, "mallory", "");
    let updated = client
        .update_incident_status(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        updated.status_history.last().unwrap().actor,
        "analyst-alice"
    );

    // Plaintext, or TLS without a client certificate, gets no answer.
    let mut plaintext = replica.client();
    let result = tokio::time::timeout(
        TIMEOUT,
        plaintext.list_incidents(v1::ListIncidentsRequest::default()),
    )
    .await
    .expect("a plaintext call ends");
    assert!(result.is_err(), "a plaintext call was answered");
    let mut anonymous = IncidentServiceClient::new(pki.channel(replica.address, false));
    let result = tokio::time::timeout(
        TIMEOUT,
        anonymous.list_incidents(v1::ListIncidentsRequest::default()),
    )
    .await
    .expect("a call without a client certificate ends");
    assert!(
        result.is_err(),
        "a call without a client certificate was answered"
    );

    drop((client, plaintext, anonymous));
    replica.stop().await;
}

/// The chunks of an export, concatenated and read as one Arrow IPC stream; and the number of
/// chunks.
async fn export(
    client: &mut IncidentServiceClient<Channel>,
    table: v1::ExportTable,
    filter: v1::ListIncidentsRequest,
) -> (Vec<RecordBatch>, usize) {
    let request = v1::ExportIncidentsRequest {
        table: table as i32,
        filter: Some(filter),
    };
    let mut stream = client.export_incidents(request).await.unwrap().into_inner();
    let mut data = Vec::new();
    let mut num_chunks = 0;
    while let Some(chunk) = stream.message().await.unwrap() {
        data.extend_from_slice(&chunk.data);
        num_chunks += 1;
    }
    let reader = StreamReader::try_new(std::io::Cursor::new(data), None).unwrap();
    let batches = reader.collect::<Result<Vec<_>, _>>().unwrap();
    (batches, num_chunks)
}

/// (id, version, severity, status, workload key, first seen) of each row of an incidents table.
type IncidentRow = (String, u64, String, String, String, i64);

fn incident_rows(batches: &[RecordBatch]) -> Vec<IncidentRow> {
    let mut rows = Vec::new();
    for batch in batches {
        let text = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap()
                .as_string::<i32>()
                .clone()
        };
        let (ids, severities, statuses, keys) = (
            text("id"),
            text("severity"),
            text("status"),
            text("workload_key"),
        );
        let versions = batch.column_by_name("version").unwrap();
        let versions = versions.as_primitive::<UInt64Type>();
        let first_seen = batch.column_by_name("first_seen").unwrap();
        let first_seen = first_seen.as_primitive::<TimestampNanosecondType>();
        for row in 0..batch.num_rows() {
            rows.push((
                ids.value(row).to_owned(),
                versions.value(row),
                severities.value(row).to_owned(),
                statuses.value(row).to_owned(),
                keys.value(row).to_owned(),
                first_seen.value(row),
            ));
        }
    }
    rows
}

fn api_incident_row(incident: &v1::Incident) -> IncidentRow {
    let severity = match v1::Severity::try_from(incident.severity).unwrap() {
        v1::Severity::Low => "low",
        v1::Severity::Medium => "medium",
        v1::Severity::High => "high",
        v1::Severity::Critical => "critical",
        v1::Severity::Unspecified => "unspecified",
    };
    let status = match v1::IncidentStatus::try_from(incident.status).unwrap() {
        v1::IncidentStatus::Open => "open",
        v1::IncidentStatus::Acknowledged => "acknowledged",
        v1::IncidentStatus::Resolved => "resolved",
        v1::IncidentStatus::Unspecified => "unspecified",
    };
    (
        incident.id.clone(),
        incident.version,
        severity.to_owned(),
        status.to_owned(),
        incident.workload.as_ref().unwrap().key.clone(),
        incident.first_seen_unix_nano,
    )
}

/// (incident id, stage, strength, reason, technique, time, actor, raw offset, raw partition) of
/// each row of an evidence table.
type EvidenceRow = (
    String,
    String,
    String,
    String,
    String,
    i64,
    String,
    i64,
    u32,
);

fn evidence_rows(batches: &[RecordBatch]) -> Vec<EvidenceRow> {
    let mut rows = Vec::new();
    for batch in batches {
        let text = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap()
                .as_string::<i32>()
                .clone()
        };
        let (ids, stages, strengths) = (text("incident_id"), text("stage"), text("strength"));
        let (reasons, techniques, actors) = (text("reason"), text("technique"), text("actor"));
        let times = batch.column_by_name("time").unwrap();
        let times = times.as_primitive::<TimestampNanosecondType>();
        let offsets = batch.column_by_name("raw_offset").unwrap();
        let offsets = offsets.as_primitive::<Int64Type>();
        let indexes = batch.column_by_name("raw_index").unwrap();
        let indexes = indexes.as_primitive::<UInt32Type>();
        for row in 0..batch.num_rows() {
            rows.push((
                ids.value(row).to_owned(),
                stages.value(row).to_owned(),
                strengths.value(row).to_owned(),
                reasons.value(row).to_owned(),
                techniques.value(row).to_owned(),
                times.value(row),
                actors.value(row).to_owned(),
                offsets.value(row),
                indexes.value(row),
            ));
        }
    }
    rows
}

fn api_evidence_row(id: &str, evidence: &v1::Evidence) -> EvidenceRow {
    let raw = evidence.raw.clone().unwrap_or_default();
    (
        id.to_owned(),
        evidence.stage.clone(),
        evidence.strength.clone(),
        evidence.reason.clone(),
        evidence.technique.clone(),
        evidence.time_unix_nano,
        evidence.actor.clone(),
        raw.offset,
        raw.index,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn arrow_export_has_the_same_rows_as_the_api() {
    let kafka = Kafka::start();
    let mut incidents = varied_incidents(400, 6);
    // Long reasons, so that the evidence export spans more than one chunk.
    for item in incidents.iter_mut().flat_map(|i| i.evidence.iter_mut()) {
        let detail = "sh spawned by the web server, then a connection to a mining pool; ";
        item.reason = format!("{}: {}", item.reason, detail.repeat(20));
    }
    kafka.publish_incidents(&incidents).await;
    let replica = Replica::start(&kafka, |_| {}).await;
    wait_until_serving(replica.channel()).await;
    let mut client = replica.client();
    for (incident, action) in incidents[..6].iter().zip(
        [v1::StatusAction::Acknowledge, v1::StatusAction::Resolve]
            .iter()
            .cycle(),
    ) {
        let request = status_request(&incident.id, *action, "alice", "");
        client.update_incident_status(request).await.unwrap();
    }

    let filters = [
        v1::ListIncidentsRequest::default(),
        v1::ListIncidentsRequest {
            severities: vec![v1::Severity::High as i32],
            ..Default::default()
        },
        v1::ListIncidentsRequest {
            cluster: "prod-eu".to_owned(),
            stage: "impact".to_owned(),
            statuses: vec![v1::IncidentStatus::Open as i32],
            ..Default::default()
        },
    ];
    for filter in filters {
        let (listed, _) = list_all(&mut client, filter.clone()).await;
        assert!(!listed.is_empty(), "{filter:?}");
        let (batches, _) = export(&mut client, v1::ExportTable::Incidents, filter.clone()).await;
        let exported = incident_rows(&batches);
        let expected: Vec<IncidentRow> = listed.iter().map(api_incident_row).collect();
        assert_eq!(exported, expected, "{filter:?}");
    }
    let (batches, _) = export(
        &mut client,
        v1::ExportTable::Incidents,
        v1::ListIncidentsRequest::default(),
    )
    .await;
    let first_seen = batches[0]
        .schema()
        .field_with_name("first_seen")
        .unwrap()
        .clone();
    let utc_nanos = DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()));
    assert_eq!(first_seen.data_type(), &utc_nanos);

    // Evidence: one row per item of every incident, as GetIncident shows them.
    let (listed, _) = list_all(&mut client, v1::ListIncidentsRequest::default()).await;
    let mut expected = Vec::new();
    for incident in &listed {
        let get = v1::GetIncidentRequest {
            id: incident.id.clone(),
        };
        let full = client.get_incident(get).await.unwrap().into_inner();
        assert_eq!(full.evidence.len(), full.num_evidence as usize);
        expected.extend(full.evidence.iter().map(|e| api_evidence_row(&full.id, e)));
    }
    let (batches, num_chunks) = export(
        &mut client,
        v1::ExportTable::Evidence,
        v1::ListIncidentsRequest::default(),
    )
    .await;
    assert!(
        num_chunks > 1,
        "the export fits one chunk; make the evidence longer"
    );
    assert_eq!(evidence_rows(&batches), expected);

    drop(client);
    replica.stop().await;
}

/// Every signal of `workload` in `[start, end)`, `page_size` at a time; and the page sizes.
async fn timeline(
    client: &mut IncidentServiceClient<Channel>,
    workload: &str,
    (start, end): (i64, i64),
    page_size: u32,
) -> (Vec<v1::Signal>, Vec<usize>) {
    let mut request = v1::GetWorkloadTimelineRequest {
        workload: workload.to_owned(),
        start_unix_nano: start,
        end_unix_nano: end,
        page_size,
        page_token: String::new(),
    };
    let mut signals = Vec::new();
    let mut page_sizes = Vec::new();
    loop {
        let page = client
            .get_workload_timeline(request.clone())
            .await
            .unwrap()
            .into_inner();
        page_sizes.push(page.signals.len());
        signals.extend(page.signals);
        if page.next_page_token.is_empty() {
            return (signals, page_sizes);
        }
        request.page_token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn timeline_pages_signals_in_event_time_order_and_leaves_out_old_ones() {
    let kafka = Kafka::start();
    let replica = Replica::start(&kafka, |config| config.store.timeline_retention_hours = 2).await;
    wait_until_serving(replica.channel()).await;
    let mut client = replica.client();

    // Recent signals in shuffled event-time order (two at the same time), after signals older
    // than the retention; and signals of a workload whose key extends this one's.
    let web = workload_key("prod-eu", "shop", "web");
    let canary = workload_key("prod-eu", "shop", "web-canary");
    let now = now_unix_nano();
    let mut rng = Rng(7);
    let old: Vec<v1::Signal> = (0..4)
        .map(|n| shell_signal(&web, now - 5 * HOUR - n * MINUTE, n))
        .collect();
    let mut recent: Vec<v1::Signal> = (0..25)
        .map(|n| {
            shell_signal(
                &web,
                now - 30 * MINUTE + rng.below(1200) as i64 * SECOND,
                10 + n,
            )
        })
        .collect();
    recent[7].event_time_unix_nano = recent[3].event_time_unix_nano;
    let others: Vec<v1::Signal> = (0..5)
        .map(|n| shell_signal(&canary, now - 20 * MINUTE + n * SECOND, 100 + n))
        .collect();
    kafka.publish_signals(&old).await;
    kafka.publish_signals(&recent).await;
    kafka.publish_signals(&others).await;

    // The old signals precede the recent ones in the workload's partition: once every recent
    // signal is there, the old ones have been read too.
    let web_key = web.partition_key();
    let all_time = (0, 0);
    eventually("every recent signal is in the timeline", || {
        let mut client = client.clone();
        let web_key = web_key.clone();
        async move {
            let (signals, _) = timeline(&mut client, &web_key, all_time, 0).await;
            (signals.len() >= 25).then_some(())
        }
    })
    .await;
    let mut expected = recent.clone();
    // Stable: signals at the same time stay in the order they were produced (offset order).
    expected.sort_by_key(|s| s.event_time_unix_nano);
    let (signals, page_sizes) = timeline(&mut client, &web_key, all_time, 7).await;
    assert_eq!(page_sizes, [7, 7, 7, 4]);
    assert_eq!(signals, expected);
    let (signals, page_sizes) = timeline(&mut client, &web_key, all_time, 0).await;
    assert_eq!((signals.len(), page_sizes.len()), (25, 1));

    // A window [start, end) of event time.
    let window = (
        expected[5].event_time_unix_nano,
        expected[15].event_time_unix_nano,
    );
    let in_window: Vec<v1::Signal> = expected
        .iter()
        .filter(|s| (window.0..window.1).contains(&s.event_time_unix_nano))
        .cloned()
        .collect();
    let (signals, _) = timeline(&mut client, &web_key, window, 4).await;
    assert_eq!(signals, in_window);

    // Another workload sees only its own signals; an unknown one, none.
    let canary_key = canary.partition_key();
    let num_others = others.len();
    let (signals, _) = eventually("every canary signal is in its timeline", || {
        let mut client = client.clone();
        let canary_key = canary_key.clone();
        async move {
            let timeline = timeline(&mut client, &canary_key, all_time, 0).await;
            (timeline.0.len() >= num_others).then_some(timeline)
        }
    })
    .await;
    assert_eq!(signals, others);
    let (signals, _) = timeline(&mut client, "k8s/prod-eu/shop/we", all_time, 0).await;
    assert!(signals.is_empty());

    drop(client);
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_ends_open_watches() {
    let kafka = Kafka::start();
    let incidents = varied_incidents(3, 8);
    kafka.publish_incidents(&incidents).await;
    let replica = Replica::start(&kafka, |_| {}).await;
    wait_until_serving(replica.channel()).await;
    let mut client = replica.client();
    let from_start = v1::WatchIncidentsRequest {
        cursor: String::new(),
        from_start: true,
    };
    let mut watch = client
        .watch_incidents(from_start)
        .await
        .unwrap()
        .into_inner();
    receive(&mut watch, incidents.len()).await;

    // A dashboard keeps its watch open; the replica stops anyway, and tells the watcher to
    // resume elsewhere.
    replica.stop().await;
    let end = tokio::time::timeout(TIMEOUT, watch.message())
        .await
        .expect("the watch ends");
    assert_eq!(end.unwrap_err().code(), Code::Unavailable);
}
