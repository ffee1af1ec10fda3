//! Latency of the incident API at 10,000 incidents, over gRPC on loopback: ListIncidents and
//! GetIncident p50/p99, and how fast one change reaches 100 watching clients.
//!
//! Run with `cargo bench -p tidemark-api --bench api_latency`. It prints one line per figure;
//! nothing is asserted. The store is filled directly (no Kafka), the server and the clients
//! share the machine.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::FutureProducer;
use tidemark_api::config::ApiConfig;
use tidemark_api::store::{InputRecord, Position, Source, Store};
use tidemark_correlator::model::{Evidence, Incident, RawRef, Severity, Status, WorkloadRef};
use tidemark_proto::v1;
use tidemark_proto::v1::incident_service_client::IncidentServiceClient;

const NUM_INCIDENTS: usize = 10_000;
const NUM_REQUESTS: usize = 2_000;
const NUM_WATCHERS: usize = 100;
const NUM_CHANGES: usize = 200;

const STAGES: [&str; 5] = ["image", "deploy", "implant", "execution", "impact"];

fn incident(n: usize, version: u64) -> Incident {
    let base = 1_795_000_000_000_000_000 + n as i64 * 60_000_000_000;
    let evidence: Vec<Evidence> = (0..version as usize)
        .map(|i| Evidence {
            stage: STAGES[(n + i) % 5].to_owned(),
            strength: "strong".to_owned(),
            reason: format!("xmrig started with miner arguments (`stratum+tcp://`) #{i}"),
            technique: "T1496.001".to_owned(),
            time_unix_nano: base + i as i64 * 1_000_000_000,
            time: String::new(),
            format: "FORMAT_FALCO".to_owned(),
            source_event: "Detect crypto miners using the Stratum protocol".to_owned(),
            actor: String::new(),
            image: "docker.io/xmrigorg/xmrig:6.21.0".to_owned(),
            raw: RawRef {
                topic: "tidemark.raw".to_owned(),
                partition: (n % 12) as i32,
                offset: (n * 10 + i) as i64,
                line: 0,
                index: 0,
            },
        })
        .collect();
    Incident {
        id: format!("{n:016x}"),
        version,
        status: Status::Open,
        severity: [
            Severity::Low,
            Severity::Medium,
            Severity::High,
            Severity::Critical,
        ][n % 4],
        score: 7,
        workload: WorkloadRef {
            key: format!("k8s/prod-{}/ns-{}/web-{n}", n % 3, n % 50),
            platform: "kubernetes".to_owned(),
            cluster: format!("prod-{}", n % 3),
            namespace: format!("ns-{}", n % 50),
            kind: "Deployment".to_owned(),
            name: format!("web-{n}"),
            account: String::new(),
            region: String::new(),
        },
        stages: vec![
            "deploy".to_owned(),
            "execution".to_owned(),
            "impact".to_owned(),
        ],
        techniques: vec!["T1496.001".to_owned(), "T1610".to_owned()],
        first_seen: String::new(),
        last_seen: String::new(),
        summary: format!(
            "Deployment ns-{}/web-{n}: a miner ran and reached a pool.",
            n % 50
        ),
        evidence,
        num_evidence_omitted: 0,
    }
}

fn record(offset: i64, incident: &Incident) -> InputRecord {
    InputRecord {
        position: Position {
            source: Source::Incidents,
            partition: 0,
            offset,
        },
        payload: Some(serde_json::to_vec(incident).unwrap()),
    }
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    (at(0.50), at(0.99))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // Test runners list every target (`--list`) and run benchmarks without `--bench` as tests;
    // this benchmark measures, so it runs only under `cargo bench`.
    if args.iter().any(|a| a == "--list") {
        println!("api_latency: benchmark");
        return;
    }
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench());
}

async fn bench() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), Duration::from_secs(3600)).unwrap());
    let mut offset = 0;
    for chunk in (0..NUM_INCIDENTS).collect::<Vec<_>>().chunks(1000) {
        let records: Vec<InputRecord> = chunk
            .iter()
            .map(|n| {
                offset += 1;
                record(offset, &incident(*n, 6))
            })
            .collect();
        store.apply(&records).unwrap();
    }
    // The producer is never used here: no status changes are made.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", "127.0.0.1:9")
        .create()
        .unwrap();
    let config = ApiConfig::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (_ready_sender, ready) = tokio::sync::watch::channel(true);
    let server_store = Arc::clone(&store);
    tokio::spawn(async move {
        tidemark_api::server::serve(
            &config,
            server_store,
            producer,
            listener,
            ready,
            std::future::pending(),
        )
        .await
        .unwrap();
    });
    let mut client = loop {
        if let Ok(client) = IncidentServiceClient::connect(format!("http://{address}")).await {
            break client;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let requests = [
        ("first page of 100", v1::ListIncidentsRequest::default()),
        (
            "severity=critical, page of 100",
            v1::ListIncidentsRequest {
                severities: vec![v1::Severity::Critical as i32],
                ..Default::default()
            },
        ),
        (
            "namespace=ns-7 (200 matches), page of 100",
            v1::ListIncidentsRequest {
                namespace: "ns-7".to_owned(),
                ..Default::default()
            },
        ),
        (
            "workload=web-17 (1 match, full scan)",
            v1::ListIncidentsRequest {
                workload: "web-17".to_owned(),
                ..Default::default()
            },
        ),
    ];
    println!("incidents in store: {}", store.len());
    for (name, request) in requests {
        let mut samples = Vec::with_capacity(NUM_REQUESTS);
        for _ in 0..NUM_REQUESTS {
            let started = Instant::now();
            let page = client.list_incidents(request.clone()).await.unwrap();
            samples.push(started.elapsed());
            assert!(!page.into_inner().incidents.is_empty());
        }
        let (p50, p99) = percentiles(samples);
        println!("ListIncidents {name}: p50 {p50:?}, p99 {p99:?}");
    }

    let mut samples = Vec::with_capacity(NUM_REQUESTS);
    for i in 0..NUM_REQUESTS {
        let id = format!("{:016x}", (i * 7919) % NUM_INCIDENTS);
        let started = Instant::now();
        let incident = client
            .get_incident(v1::GetIncidentRequest { id })
            .await
            .unwrap();
        samples.push(started.elapsed());
        assert_eq!(incident.into_inner().evidence.len(), 6);
    }
    let (p50, p99) = percentiles(samples);
    println!("GetIncident (6 evidence items): p50 {p50:?}, p99 {p99:?}");

    // Watch fan-out: 100 clients, each on its own connection, then changes one at a time.
    let (sender, mut received) = tokio::sync::mpsc::unbounded_channel::<(usize, u64, Instant)>();
    for watcher in 0..NUM_WATCHERS {
        let mut client = IncidentServiceClient::connect(format!("http://{address}"))
            .await
            .unwrap();
        let mut stream = client
            .watch_incidents(v1::WatchIncidentsRequest::default())
            .await
            .unwrap()
            .into_inner();
        let sender = sender.clone();
        tokio::spawn(async move {
            while let Ok(Some(change)) = stream.message().await {
                let version = change.incident.map_or(0, |i| i.version);
                if sender.send((watcher, version, Instant::now())).is_err() {
                    break;
                }
            }
        });
    }
    drop(sender);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut latencies = Vec::with_capacity(NUM_CHANGES * NUM_WATCHERS);
    let started = Instant::now();
    for change in 0..NUM_CHANGES {
        offset += 1;
        let version = 7 + change as u64;
        let applied = Instant::now();
        store
            .apply(&[record(offset, &incident(1, version))])
            .unwrap();
        let mut pending = NUM_WATCHERS;
        while pending > 0 {
            let (_, got_version, at) = received.recv().await.unwrap();
            assert_eq!(got_version, version);
            latencies.push(at - applied);
            pending -= 1;
        }
    }
    let elapsed = started.elapsed();
    let (p50, p99) = percentiles(latencies);
    println!(
        "WatchIncidents fan-out to {NUM_WATCHERS} clients, {NUM_CHANGES} changes one at a time: \
         store-to-client p50 {p50:?}, p99 {p99:?}; {:.0} deliveries/s",
        (NUM_CHANGES * NUM_WATCHERS) as f64 / elapsed.as_secs_f64()
    );
}
