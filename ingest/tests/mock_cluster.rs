//! The ingest worker against librdkafka's mock cluster: a real Kafka protocol implementation in
//! process, on loopback.
//!
//! Checks that raw records flow to signals, image facts and dead letters, that the group commits
//! what it retired, that a clean restart resumes with nothing skipped and nothing repeated, and
//! that a crash (the worker dropped without draining) loses nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tidemark_ingest::config::{IngestConfig, RawTopicConfig};
use tidemark_ingest::decode::{self, InputFormat, RecordContext};
use tidemark_ingest::worker::{HEADER_ERROR, HEADER_SOURCE_OFFSET, IngestStats, IngestWorker};
use tidemark_proto::v1::{RawPointer, Signal};

const RAW: &str = "raw.telemetry";
const SIGNALS: &str = "tidemark.signals";
const IMAGE_FACTS: &str = "tidemark.image-facts";
const DEAD_LETTERS: &str = "tidemark.dead-letters";

fn fixture(path: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/samples")
        .join(path);
    std::fs::read(path).unwrap()
}

/// A mix of real samples and hostile records, each one Kafka record.
fn raw_records() -> Vec<Vec<u8>> {
    let mut records = Vec::new();
    let falco = fixture("falco/single_rule_with_cat_write.json");
    records.extend(
        falco
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec),
    );
    let tetragon = fixture("tetragon/events.json");
    records.extend(
        tetragon
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec),
    );
    for path in [
        "k8s-audit/create_deployment.json",
        "k8s-audit/exec_pod.json",
        "k8s-audit/create_nginx_pod_unprivileged.json",
        "distribution/notifications.md.push-envelope.json",
        "harbor/configure-webhooks.md.push-artifact-default.json",
        "dockerhub/webhooks.md.example-payload.json",
        "tetragon/nc_process_connect.json",
    ] {
        records.push(fixture(path));
    }
    records.push(b"{\"rule\":\"truncated".to_vec());
    records.push(b"42".to_vec());
    records.push(Vec::new());
    records.push(b"{\"output_fields\":{},\"rule\":7}".to_vec());
    records.push(vec![0xff, 0xfe, b'{']);
    records
}

struct Expected {
    signals: usize,
    image_facts: usize,
    dead_letters: usize,
}

fn expected(records: &[Vec<u8>]) -> Expected {
    let ctx = RecordContext::new(RawPointer::default(), 0);
    let mut expected = Expected {
        signals: 0,
        image_facts: 0,
        dead_letters: 0,
    };
    for record in records {
        match decode::decode(record, InputFormat::Auto, &ctx) {
            Ok(decoded) => {
                for signal in decoded.signals {
                    match signal.fact {
                        Some(tidemark_proto::v1::signal::Fact::ImagePushed(_)) => {
                            expected.image_facts += 1;
                        }
                        _ => expected.signals += 1,
                    }
                }
            }
            Err(_) => expected.dead_letters += 1,
        }
    }
    expected
}

fn config(brokers: &str, group: &str) -> IngestConfig {
    let mut config = IngestConfig::default();
    config.kafka.brokers = brokers.to_owned();
    config.kafka.group_id = group.to_owned();
    config
        .kafka
        .properties
        .insert("session.timeout.ms".into(), "6000".into());
    config
        .kafka
        .properties
        .insert("auto.commit.interval.ms".into(), "200".into());
    config.topics.raw = vec![RawTopicConfig {
        name: RAW.into(),
        format: InputFormat::Auto,
        cluster: "prod".into(),
    }];
    config.limits.max_in_flight_records = 4;
    config.validate().unwrap();
    config
}

async fn produce(brokers: &str, records: &[Vec<u8>]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    for (i, record) in records.iter().enumerate() {
        let key = format!("k{i}");
        let delivery = producer
            .send(
                FutureRecord::to(RAW).key(&key).payload(record),
                Duration::from_secs(10),
            )
            .await;
        delivery.map_err(|(e, _)| e).unwrap();
    }
}

/// Runs a worker until it has retired `count` records, then asks it to stop.
async fn run_until_retired(config: IngestConfig, count: u64) {
    let worker = IngestWorker::try_new(config).unwrap();
    let stats: Arc<IngestStats> = worker.stats();
    let shutdown = async move {
        while stats.num_retired.load(Ordering::Relaxed) < count {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let run = tokio::time::timeout(Duration::from_secs(60), worker.run(shutdown));
    let snapshot = run
        .await
        .expect("worker retired the records in time")
        .unwrap();
    assert_eq!(
        snapshot.num_retired, count,
        "worker retired exactly what it consumed"
    );
}

/// Reads a whole topic from the beginning.
fn read_all(brokers: &str, topic: &str, at_least: usize) -> Vec<rdkafka::message::OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{topic}-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                messages.push(message.detach());
                quiet_since = Instant::now();
            }
            Some(Err(error)) => panic!("read error on {topic}: {error}"),
            None if messages.len() >= at_least
                && quiet_since.elapsed() > Duration::from_millis(1500) =>
            {
                break;
            }
            None => {}
        }
    }
    messages
}

fn committed(brokers: &str, group: &str) -> i64 {
    committed_offset(brokers, group).expect("the group committed an offset")
}

fn committed_offset(brokers: &str, group: &str) -> Option<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(RAW, 0);
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    match committed.find_partition(RAW, 0)?.offset() {
        Offset::Offset(offset) => Some(offset),
        _ => None,
    }
}

fn source_offsets(messages: &[rdkafka::message::OwnedMessage]) -> Vec<i64> {
    messages
        .iter()
        .map(|m| {
            if m.topic() == DEAD_LETTERS {
                let headers = m.headers().unwrap();
                let offset = headers
                    .iter()
                    .find(|h| h.key == HEADER_SOURCE_OFFSET)
                    .and_then(|h| h.value)
                    .unwrap();
                std::str::from_utf8(offset).unwrap().parse().unwrap()
            } else {
                Signal::decode(m.payload().unwrap())
                    .unwrap()
                    .raw
                    .unwrap()
                    .offset
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_flow_commit_and_resume_without_loss_or_repeat() {
    let cluster = MockCluster::new(3).unwrap();
    cluster.create_topic(RAW, 1, 1).unwrap();
    for topic in [SIGNALS, IMAGE_FACTS, DEAD_LETTERS] {
        cluster.create_topic(topic, 3, 1).unwrap();
    }
    let brokers = cluster.bootstrap_servers();
    let group = "tidemark-ingest-resume";
    let records = raw_records();
    let num_records = records.len();
    let (first, second) = records.split_at(num_records / 2);

    produce(&brokers, first).await;
    run_until_retired(config(&brokers, group), first.len() as u64).await;
    assert_eq!(
        committed(&brokers, group),
        first.len() as i64,
        "clean stop commits all retired"
    );

    produce(&brokers, second).await;
    run_until_retired(config(&brokers, group), second.len() as u64).await;
    assert_eq!(committed(&brokers, group), num_records as i64);

    let want = expected(&records);
    let signals = read_all(&brokers, SIGNALS, want.signals);
    let image_facts = read_all(&brokers, IMAGE_FACTS, want.image_facts);
    let dead_letters = read_all(&brokers, DEAD_LETTERS, want.dead_letters);
    assert_eq!(signals.len(), want.signals, "every signal once");
    assert_eq!(image_facts.len(), want.image_facts, "every image fact once");
    assert_eq!(
        dead_letters.len(),
        want.dead_letters,
        "every bad record once"
    );

    // Every raw offset is accounted for by some output, or by a record that gave only skips.
    let ctx = RecordContext::new(RawPointer::default(), 0);
    let productive: BTreeSet<i64> = (0..num_records as i64)
        .filter(|offset| {
            match decode::decode(&records[*offset as usize], InputFormat::Auto, &ctx) {
                Ok(decoded) => !decoded.signals.is_empty(),
                Err(_) => true,
            }
        })
        .collect();
    let mut all = signals.clone();
    all.extend(image_facts.iter().cloned());
    all.extend(dead_letters.iter().cloned());
    let seen: BTreeSet<i64> = source_offsets(&all).into_iter().collect();
    assert_eq!(seen, productive, "no record skipped");

    // Signals are keyed by workload and carry the configured cluster; dead letters keep bytes.
    for message in &signals {
        let signal = Signal::decode(message.payload().unwrap()).unwrap();
        assert_eq!(message.key().unwrap(), signal.partition_key().as_bytes());
        if let Some(workload) = &signal.workload {
            if workload.cluster.is_empty() {
                continue;
            }
            assert_eq!(workload.cluster, "prod");
        }
    }
    for message in &dead_letters {
        let offset = source_offsets(std::slice::from_ref(message))[0] as usize;
        assert_eq!(message.payload().unwrap_or_default(), &records[offset][..]);
        let headers = message.headers().unwrap();
        let reason = headers
            .iter()
            .find(|h| h.key == HEADER_ERROR)
            .and_then(|h| h.value)
            .unwrap();
        assert!(!reason.is_empty());
    }
    let image_keys: BTreeMap<String, usize> =
        image_facts.iter().fold(BTreeMap::new(), |mut keys, m| {
            let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
            *keys.entry(key).or_default() += 1;
            keys
        });
    assert!(
        image_keys
            .keys()
            .any(|k| k.starts_with("docker.io/svendowideit/testhook:latest"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_commit_loses_nothing() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(RAW, 1, 1).unwrap();
    for topic in [SIGNALS, IMAGE_FACTS, DEAD_LETTERS] {
        cluster.create_topic(topic, 1, 1).unwrap();
    }
    let brokers = cluster.bootstrap_servers();
    let group = "tidemark-ingest-crash";
    let records = raw_records();
    produce(&brokers, &records).await;

    // The first worker is dropped mid-stream: no drain, no final commit.
    let worker = IngestWorker::try_new(config(&brokers, group)).unwrap();
    let stats = worker.stats();
    let handle = tokio::spawn(worker.run(std::future::pending()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while stats.num_retired.load(Ordering::Relaxed) < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    handle.abort();
    assert!(
        handle.await.unwrap_err().is_cancelled(),
        "the worker was still running"
    );

    let worker = IngestWorker::try_new(config(&brokers, group)).unwrap();
    let end = records.len() as i64;
    let shutdown = {
        let brokers = brokers.clone();
        async move {
            // Stop once the group's committed position reaches the end of the raw topic.
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let brokers = brokers.clone();
                let position =
                    tokio::task::spawn_blocking(move || committed_offset(&brokers, group)).await;
                if position.unwrap() == Some(end) {
                    break;
                }
            }
        }
    };
    let run = tokio::time::timeout(Duration::from_secs(60), worker.run(shutdown));
    run.await.expect("second worker caught up").unwrap();

    let want = expected(&records);
    let signals = read_all(&brokers, SIGNALS, want.signals);
    let dead_letters = read_all(&brokers, DEAD_LETTERS, want.dead_letters);
    let signal_offsets: BTreeSet<i64> = source_offsets(&signals).into_iter().collect();
    let dead_offsets: BTreeSet<i64> = source_offsets(&dead_letters).into_iter().collect();
    let ctx = RecordContext::new(RawPointer::default(), 0);
    for (offset, record) in records.iter().enumerate() {
        let offset = offset as i64;
        match decode::decode(record, InputFormat::Auto, &ctx) {
            Ok(decoded) if decoded.signals.iter().any(|s| !is_image_fact(s)) => {
                assert!(
                    signal_offsets.contains(&offset),
                    "signal of offset {offset} lost"
                );
            }
            Ok(_) => {}
            Err(_) => assert!(dead_offsets.contains(&offset), "dead letter {offset} lost"),
        }
    }
    assert!(
        signals.len() >= want.signals,
        "at-least-once: duplicates allowed, loss not"
    );
}

fn is_image_fact(signal: &Signal) -> bool {
    matches!(
        signal.fact,
        Some(tidemark_proto::v1::signal::Fact::ImagePushed(_))
    )
}
