//! `tidemark correlate` as it runs in production: the binary, on a Kafka cluster (librdkafka's
//! mock cluster, in this process, on loopback), with its state in RocksDB.
//!
//! Signals of the bundled attack scenarios are produced to the signals topic keyed by workload,
//! and registry pushes to the image-facts topic, as `tidemark ingest` does. The checks: the
//! incidents topic receives the scenario incidents; a restart publishes nothing again; an
//! undecodable record reaches the late topic with its reason; and a correlator killed with
//! SIGKILL at arbitrary points, then restarted, leaves the incidents topic exactly as an
//! uninterrupted run does.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tidemark_ingest::decode::{self, InputFormat, RecordContext};
use tidemark_proto::v1::signal::Fact;
use tidemark_proto::v1::{RawPointer, Signal};

const SIGNALS: &str = "tidemark.signals";
const IMAGE_FACTS: &str = "tidemark.image-facts";
const INCIDENTS: &str = "tidemark.incidents";
const LATE: &str = "tidemark.late";
const GROUP: &str = "tidemark-correlate";
const SIGNAL_PARTITIONS: i32 = 3;
/// When the scenario records were decoded: after their event times, so none is future-dated.
const INGEST_TIME: i64 = 1_796_000_000_000_000_000;
const TIMEOUT: Duration = Duration::from_secs(90);

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// Every signal of the bundled scenarios, decoded as `tidemark ingest` would, `copies` times:
/// each copy's Kubernetes records in a cluster of their own (`prod-eu`, `prod-eu-1`, ...).
fn scenario_signals(copies: usize) -> Vec<Signal> {
    let mut signals = Vec::new();
    for copy in 0..copies {
        signals.extend(scenario_copy(copy));
    }
    signals
}

fn scenario_copy(copy: usize) -> Vec<Signal> {
    let cluster = match copy {
        0 => "prod-eu".to_owned(),
        n => format!("prod-eu-{n}"),
    };
    let mut signals = Vec::new();
    for name in [
        "public-image.ndjson",
        "exec-into-approved.ndjson",
        "repush-rollout.ndjson",
        "ecs-revision-swap.ndjson",
        "benign.ndjson",
    ] {
        let path = repo(&format!("fixtures/scenarios/{name}"));
        let content = std::fs::read(&path).unwrap();
        for (line, record) in content.split(|b| *b == b'\n').enumerate() {
            if record.is_empty() {
                continue;
            }
            let pointer = RawPointer {
                topic: format!("scenarios/{copy}/{name}"),
                line: line as u64 + 1,
                ..Default::default()
            };
            let mut ctx = RecordContext::new(pointer, INGEST_TIME);
            ctx.cluster.clone_from(&cluster);
            let decoded = decode::decode(record, InputFormat::Auto, &ctx).unwrap();
            signals.extend(decoded.signals);
        }
    }
    signals
}

/// A mock cluster holding the topics of the correlator, with the scenario signals produced.
fn cluster_with_signals(
    signals: &[Signal],
) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(SIGNALS, SIGNAL_PARTITIONS, 1).unwrap();
    cluster.create_topic(IMAGE_FACTS, 2, 1).unwrap();
    cluster.create_topic(INCIDENTS, 3, 1).unwrap();
    cluster.create_topic(LATE, 1, 1).unwrap();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .create()
        .unwrap();
    for signal in signals {
        let (topic, key) = match signal.fact {
            Some(Fact::ImagePushed(_)) => (
                IMAGE_FACTS,
                signal.image.as_ref().unwrap().reference.clone(),
            ),
            _ => (SIGNALS, signal.partition_key()),
        };
        let payload = signal.encode_to_vec();
        producer
            .send(BaseRecord::to(topic).key(&key).payload(&payload))
            .unwrap();
    }
    // Bytes that are no signal: the correlator must route them aside, not stop.
    producer
        .send(
            BaseRecord::to(SIGNALS)
                .key("k8s/prod-eu/shop/web")
                .partition(0)
                .payload(b"\xff\xffnot a signal".as_slice()),
        )
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();
    cluster
}

/// A running `tidemark correlate`, killed (SIGKILL) when dropped, so that a failing test leaves
/// no process behind. Its log lines are passed on to the test's standard error.
struct Correlator {
    child: Child,
    /// Set once the process logs that the group assigned it its signals partitions.
    assigned: Arc<AtomicBool>,
}

impl Correlator {
    /// Kills the process at once, as a crash or an OOM kill would.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the correlator exited: {status}");
        }
    }

    /// Waits until the group has assigned the process its partitions.
    fn wait_until_assigned(&mut self) {
        let started = Instant::now();
        while !self.assigned.load(Ordering::Relaxed) {
            self.assert_running();
            assert!(started.elapsed() < TIMEOUT, "the group assigned nothing");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Correlator {
    fn drop(&mut self) {
        // Already dead when the test killed it: nothing left to do.
        if self.child.kill().is_ok() {
            self.child.wait().ok();
        }
    }
}

/// Starts `tidemark correlate` on `brokers`, with its state in `state`, one record per batch so
/// that every evidence change is published as its own version.
fn start_correlator(brokers: &str, state: &Path) -> Correlator {
    start_correlator_in(brokers, state, GROUP)
}

/// Starts `tidemark correlate` as [`start_correlator`] does, in consumer group `group`.
fn start_correlator_in(brokers: &str, state: &Path, group: &str) -> Correlator {
    let policy = repo("config/policy.example.yaml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .arg("correlate")
        .env(
            "TIDEMARK_LOG",
            std::env::var("CORRELATE_TEST_LOG")
                .unwrap_or("warn,tidemark_correlator::worker=info".into()),
        )
        .env("TIDEMARK_CORRELATE__KAFKA__BROKERS", brokers)
        .env("TIDEMARK_CORRELATE__KAFKA__GROUP_ID", group)
        // Above the mock cluster's initial rebalance delay (3 s), which a joining member must
        // outlive; a killed member leaves the group when it expires.
        .env(
            "TIDEMARK_CORRELATE__KAFKA__PROPERTIES",
            "{session.timeout.ms: '6000', heartbeat.interval.ms: '500'}",
        )
        .env("TIDEMARK_CORRELATE__STATE__DIR", state)
        .env("TIDEMARK_CORRELATE__STATE__POLICY", policy)
        .env("TIDEMARK_CORRELATE__LIMITS__MAX_BATCH_RECORDS", "1")
        .env("TIDEMARK_CORRELATE__LIMITS__POLL_TIMEOUT_MS", "20")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let assigned = Arc::new(AtomicBool::new(false));
    let stderr = child.stderr.take().unwrap();
    let flag = Arc::clone(&assigned);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("signals partitions assigned") {
                flag.store(true, Ordering::Relaxed);
            }
            eprintln!("correlator: {line}");
        }
    });
    Correlator { child, assigned }
}

fn consumer(brokers: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .unwrap()
}

/// Returns how many signals the correlator group has committed, and how many there are (or,
/// when the cluster does not answer in time, nothing done of an unknown total).
fn progress(brokers: &str) -> (i64, i64) {
    let consumer = consumer(brokers, GROUP);
    let mut partitions = TopicPartitionList::new();
    for partition in 0..SIGNAL_PARTITIONS {
        partitions.add_partition(SIGNALS, partition);
    }
    let committed = consumer
        .committed_offsets(partitions, Duration::from_secs(5))
        .unwrap_or_default();
    let mut done = 0;
    let mut total = 0;
    for partition in 0..SIGNAL_PARTITIONS {
        let Ok((_, high)) = consumer.fetch_watermarks(SIGNALS, partition, Duration::from_secs(5))
        else {
            return (0, i64::MAX);
        };
        total += high;
        done += committed
            .find_partition(SIGNALS, partition)
            .and_then(|p| match p.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            })
            .unwrap_or(0);
    }
    (done, total)
}

/// Waits until the group has committed more than `beyond` signals (or all of them); returns
/// how many it has.
fn wait_for_progress(brokers: &str, correlator: &mut Correlator, beyond: i64) -> i64 {
    let started = Instant::now();
    loop {
        let (done, total) = progress(brokers);
        if done > beyond || done >= total {
            return done;
        }
        correlator.assert_running();
        assert!(
            started.elapsed() < TIMEOUT,
            "the correlator made no progress"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn caught_up(brokers: &str) -> bool {
    let (done, total) = progress(brokers);
    done >= total
}

/// Runs the correlator until the group committed every signal, then stops it.
fn run_to_end(brokers: &str, state: &Path) {
    let mut correlator = start_correlator(brokers, state);
    let started = Instant::now();
    while !caught_up(brokers) {
        correlator.assert_running();
        assert!(
            started.elapsed() < TIMEOUT,
            "the correlator did not catch up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Everything consumed was stored and acknowledged before its offset was committed.
    correlator.kill();
}

/// One record of an output topic: key, the header named `header`, payload.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Output {
    key: String,
    header: String,
    payload: Vec<u8>,
}

/// Reads every record of `topic`.
fn read_topic(brokers: &str, topic: &str, header: &str) -> Vec<Output> {
    let consumer = consumer(brokers, "test-reader");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    let mut remaining = 0;
    for partition in metadata.topics()[0].partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition.id(), Duration::from_secs(5))
            .unwrap();
        remaining += high - low;
        assignment
            .add_partition_offset(topic, partition.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut records = Vec::new();
    let started = Instant::now();
    while remaining > 0 {
        assert!(started.elapsed() < TIMEOUT, "{topic} could not be read");
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.unwrap();
            let value = message
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == header).and_then(|h| h.value))
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            records.push(Output {
                key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
                header: value,
                payload: message.payload().unwrap_or_default().to_vec(),
            });
            remaining -= 1;
        }
    }
    // Partitions interleave in no particular order.
    records.sort();
    records
}

/// The incident versions published, each once: panics on a repeated (id, version).
fn versions(records: &[Output]) -> BTreeMap<(String, u64), String> {
    let mut versions = BTreeMap::new();
    for record in records {
        let version: u64 = record.header.parse().unwrap();
        let payload = String::from_utf8(record.payload.clone()).unwrap();
        let previous = versions.insert((record.key.clone(), version), payload);
        assert!(
            previous.is_none(),
            "incident {} version {version} was published twice",
            record.key
        );
    }
    versions
}

/// The last version of each incident, as JSON.
fn latest(versions: &BTreeMap<(String, u64), String>) -> BTreeMap<String, serde_json::Value> {
    versions
        .iter()
        .map(|((id, _), payload)| (id.clone(), serde_json::from_str(payload).unwrap()))
        .collect()
}

#[test]
fn correlate_publishes_each_scenario_incident_and_a_restart_publishes_nothing_again() {
    let signals = scenario_signals(1);
    let cluster = cluster_with_signals(&signals);
    let brokers = cluster.bootstrap_servers();
    let state = tempfile::tempdir().unwrap();

    run_to_end(&brokers, state.path());
    let first = read_topic(&brokers, INCIDENTS, "tidemark-incident-version");
    let incidents = latest(&versions(&first));

    let mut workloads: Vec<(&str, &str)> = incidents
        .values()
        .map(|i| {
            (
                i["workload"]["key"].as_str().unwrap(),
                i["severity"].as_str().unwrap(),
            )
        })
        .collect();
    workloads.sort_unstable();
    assert_eq!(
        workloads,
        [
            ("ecs/111122223333/us-east-1/payments", "high"),
            ("k8s/prod-eu/shop/api", "critical"),
            ("k8s/prod-eu/shop/miner-web", "critical"),
            ("k8s/prod-eu/shop/web", "critical"),
        ],
        "{incidents:#?}"
    );
    for record in &first {
        let incident: serde_json::Value = serde_json::from_slice(&record.payload).unwrap();
        assert_eq!(
            incident["id"],
            record.key.as_str(),
            "incidents are keyed by their id"
        );
        assert_eq!(incident["version"].to_string(), record.header);
    }

    // The ECS scenario's first task definition (02:05:48) arrives after the revision swap
    // (02:42:03) on the same partition: 36 minutes behind the watermark, beyond the policy's
    // 15 minutes of allowed lateness, it is routed aside as late, with the signal intact.
    let late = read_topic(&brokers, LATE, "tidemark-reason");
    let mut reasons: Vec<&str> = late.iter().map(|r| r.header.as_str()).collect();
    reasons.sort_unstable();
    assert_eq!(reasons, ["late", "undecodable"], "{late:?}");
    for record in &late {
        if record.header == "undecodable" {
            assert_eq!(record.payload, b"\xff\xffnot a signal");
        } else {
            let signal = Signal::decode(record.payload.as_slice()).unwrap();
            assert_eq!(record.key, "ecs/111122223333/us-east-1/payments");
            assert_eq!(signal.event_time_unix_nano, 1_795_140_348_000_000_000);
        }
    }

    // A restart on the same state resumes after what it stored, even in a group that has no
    // committed offsets (a renamed group, or offsets expired by the broker's retention):
    // nothing is published again.
    let mut correlator = start_correlator_in(&brokers, state.path(), "tidemark-correlate-renamed");
    correlator.wait_until_assigned();
    std::thread::sleep(Duration::from_secs(2));
    correlator.assert_running();
    correlator.kill();
    assert_eq!(
        read_topic(&brokers, INCIDENTS, "tidemark-incident-version"),
        first
    );
    assert_eq!(read_topic(&brokers, LATE, "tidemark-reason"), late);
}

/// A small deterministic generator, so that a failing kill schedule can be run again.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[test]
fn killing_the_correlator_at_arbitrary_points_leaves_the_incidents_of_an_uninterrupted_run() {
    let signals = scenario_signals(6);

    let reference = cluster_with_signals(&signals);
    let reference_state = tempfile::tempdir().unwrap();
    run_to_end(&reference.bootstrap_servers(), reference_state.path());
    let expected = read_topic(
        &reference.bootstrap_servers(),
        INCIDENTS,
        "tidemark-incident-version",
    );
    let expected_versions = versions(&expected);
    assert!(!expected_versions.is_empty());

    let crashed = cluster_with_signals(&signals);
    let brokers = crashed.bootstrap_servers();
    let state = tempfile::tempdir().unwrap();
    let mut random = SplitMix(0x7469_6465_6d61_726b);
    let mut kills = 0;
    while kills < 4 && !caught_up(&brokers) {
        // Each life ends at a random moment after it stored at least one more batch: while it
        // computes, writes RocksDB, produces, or waits for acknowledgements.
        let done = progress(&brokers).0;
        let mut correlator = start_correlator(&brokers, state.path());
        let now = wait_for_progress(&brokers, &mut correlator, done);
        let delay = Duration::from_millis(random.next() % 400);
        std::thread::sleep(delay);
        eprintln!("killing the correlator {delay:?} after {now} signals were committed");
        correlator.kill();
        kills += 1;
        // As an orchestrator does, restart after a pause: a produce request the killed process
        // had already written reaches the broker before its successor reads the topics back.
        std::thread::sleep(Duration::from_millis(300));
    }
    run_to_end(&brokers, state.path());

    let published = read_topic(&brokers, INCIDENTS, "tidemark-incident-version");
    let published_versions = versions(&published);
    assert_eq!(
        published_versions.keys().collect::<Vec<_>>(),
        expected_versions.keys().collect::<Vec<_>>()
    );
    assert_eq!(published_versions, expected_versions);
}
