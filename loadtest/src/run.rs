//! `tidemark-loadtest run`: drives a generated fleet through the whole pipeline on Kafka and
//! measures it.
//!
//! It starts the embedded broker (`tidemark broker`, unless `--brokers` names a cluster) and
//! each role as a process of its own (`tidemark ingest`, `correlate`, `api`, as in production),
//! publishes the generated records to the raw topic in event-time order, at a target rate or
//! flat out (as fast as ingest and correlate take them: the publisher never runs more than a
//! bounded backlog ahead of their committed offsets), watches the incident API, and when ingest
//! and correlate have consumed everything reports: sustained events/s, CPU seconds per million
//! events and peak RSS of each process, detection latency per attack (from the moment the
//! record carrying the deciding evidence was handed to Kafka to the moment the incident showed
//! every expected stage in the API), recall and precision against the ground truth, and the
//! dead-letter and late counts.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::TopicPartitionList;
use serde::{Deserialize, Serialize};
use tidemark_common::time::now_unix_nano;
use tidemark_ingest::decode::earliest_event_time;
use tidemark_ingest::input::{self, Piece};
use tidemark_proto::v1;
use tidemark_proto::v1::incident_service_client::IncidentServiceClient;
use tonic::transport::Channel;

const RAW_TOPIC: &str = "tidemark.raw";
const SIGNALS_TOPIC: &str = "tidemark.signals";
const DEAD_LETTERS_TOPIC: &str = "tidemark.dead-letters";
const LATE_TOPIC: &str = "tidemark.late";
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);
/// Records awaiting acknowledgement at once.
const MAX_IN_FLIGHT: usize = 5_000;
/// Records sent between two flow-control checks.
const FLOW_CHECK_EVERY: usize = 1_000;
/// Raw records sent but not yet committed by ingest, at most.
const MAX_RAW_BACKLOG: i64 = 10_000;
/// Signals produced but not yet committed by the correlator, at most.
const MAX_SIGNAL_BACKLOG: i64 = 20_000;

/// What `run` was asked to do.
#[derive(Debug, Clone)]
pub(crate) struct RunOptions {
    /// Directory written by `generate` (NDJSON files and `truth.json`).
    pub(crate) input: PathBuf,
    /// The `tidemark` binary.
    pub(crate) tidemark: PathBuf,
    /// Detection policy given to the correlator.
    pub(crate) policy: PathBuf,
    /// Records per second; 0 sends flat out.
    pub(crate) rate: u64,
    /// Longest the whole run may take.
    pub(crate) timeout: Duration,
    /// gRPC address of the API.
    pub(crate) grpc_listen: String,
    /// A real Kafka cluster instead of the embedded broker.
    pub(crate) brokers: Option<String>,
}

/// The ground truth, as `generate` writes it.
#[derive(Debug, Deserialize)]
struct Truth {
    cluster: String,
    sources: BTreeMap<String, TruthSource>,
    attacks: Vec<TruthAttack>,
}

#[derive(Debug, Deserialize)]
struct TruthSource {
    file: String,
}

#[derive(Debug, Deserialize)]
struct TruthAttack {
    workload: String,
    pattern: String,
    stages: Vec<String>,
}

/// One attack's outcome.
#[derive(Debug, Serialize)]
pub(crate) struct AttackResult {
    workload: String,
    pattern: String,
    expected_stages: Vec<String>,
    found_stages: Vec<String>,
    detected: bool,
    /// Seconds from the deciding record's send to the incident showing every expected stage.
    latency_secs: Option<f64>,
}

/// What a run measured.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    records: u64,
    target_rate: u64,
    publish_secs: f64,
    /// Records per second from the first send until ingest and correlate had consumed all.
    sustained_events_per_sec: f64,
    /// CPU seconds of the tidemark roles (ingest, correlate and api together, not the broker)
    /// per million records.
    cpu_secs_per_million: f64,
    /// Peak resident memory of the roles added up, MiB.
    peak_rss_mib: f64,
    /// Each process on its own.
    processes: Vec<ProcessUsage>,
    latency_p50_secs: Option<f64>,
    latency_p99_secs: Option<f64>,
    attacks: usize,
    detected: usize,
    recall: f64,
    incidents: usize,
    incidents_on_attacked_workloads: usize,
    precision: f64,
    dead_letters: i64,
    late: i64,
    /// Raw records the broker deleted before ingest had committed them, at worst seen during
    /// the run: possibly lost (the embedded broker keeps about 5 MiB and 100,000 records per
    /// partition).
    raw_records_dropped: i64,
    /// Signals the broker deleted before the correlator had committed them, likewise.
    signals_dropped: i64,
    per_attack: Vec<AttackResult>,
    /// Throughput over time: (seconds since start, records acknowledged by then).
    progress: Vec<(f64, u64)>,
}

/// CPU and memory of one process of the run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ProcessUsage {
    /// `ingest`, `correlate`, `api`, or `broker` (the embedded broker, not part of tidemark).
    process: &'static str,
    /// CPU seconds (user and system) per million records.
    cpu_secs_per_million: f64,
    /// Peak resident memory, MiB.
    peak_rss_mib: f64,
}

/// One tidemark process (a role, or the embedded broker), stopped when dropped.
struct Process {
    name: &'static str,
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Process {
    /// Starts `tidemark <args>`; its warnings and errors are echoed with its name.
    fn start(name: &'static str, tidemark: &Path, args: &[&OsStr]) -> anyhow::Result<Process> {
        let mut child = Command::new(tidemark)
            .args(args)
            .env("TIDEMARK_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start `{}` {name}", tidemark.display()))?;
        let stderr = child.stderr.take().context("no standard error")?;
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("ERROR") || line.contains("WARN") {
                    let mut err = std::io::stderr().lock();
                    writeln!(err, "{name} | {line}").ok();
                }
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Process { name, child, lines })
    }

    /// Waits until a line containing `needle` has been logged, and returns it.
    fn wait_for_line(&self, needle: &str, deadline: Instant) -> anyhow::Result<String> {
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(_) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("tidemark {} exited before logging `{needle}`", self.name)
                }
            }
        }
        bail!("tidemark {} did not log `{needle}` in time", self.name)
    }

    /// CPU seconds (user + system) and peak RSS in bytes, from `/proc`.
    fn usage(&self) -> anyhow::Result<(f64, u64)> {
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .context("cannot read a tidemark process's /proc stat (Linux only)")?;
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |index: usize| fields.get(index).and_then(|f| f.parse::<u64>().ok());
        // After the command name: state is field 3, utime 14 and stime 15 (1-based).
        let (Some(user), Some(system)) = (ticks(11), ticks(12)) else {
            bail!("unexpected /proc stat format");
        };
        let ticks_per_sec = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|t| t.trim().parse::<f64>().ok())
            .unwrap_or(100.0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let peak_kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0);
        Ok(((user + system) as f64 / ticks_per_sec, peak_kib * 1024))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // SIGTERM first, so that the role stops cleanly; SIGKILL if that takes too long.
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().ok();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// The processes of a run: each role on its own, as in production, so that each role's CPU
/// and memory are measured apart, and the embedded broker (`tidemark broker`) unless a Kafka
/// cluster was given. The roles stop before the broker.
struct Pipeline {
    roles: Vec<Process>,
    broker: Option<Process>,
    brokers: String,
}

impl Pipeline {
    /// Starts the broker and the roles, and returns once every role is ready.
    fn start(options: &RunOptions, cluster: &str, data_dir: &Path) -> anyhow::Result<Pipeline> {
        let deadline = Instant::now() + Duration::from_secs(180);
        let (broker, brokers) = match &options.brokers {
            Some(brokers) => (None, brokers.clone()),
            None => {
                let broker = Process::start("broker", &options.tidemark, &["broker".as_ref()])?;
                let line = broker.wait_for_line("embedded Kafka broker started", deadline)?;
                let address = line
                    .split("brokers=\"")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .context("tidemark broker logged no address")?
                    .to_owned();
                (Some(broker), address)
            }
        };
        // YAML is a superset of JSON: each role reads these files as its configuration.
        let configs = [
            (
                "ingest",
                serde_json::json!({
                    "kafka": {
                        "brokers": brokers,
                        // Commit often, so that the publisher's flow control sees progress.
                        "properties": {"auto.commit.interval.ms": "100"},
                    },
                    "topics": {"raw": [{"name": RAW_TOPIC, "cluster": cluster}]},
                }),
                "raw partitions assigned",
            ),
            (
                "correlate",
                serde_json::json!({
                    "kafka": {"brokers": brokers},
                    "state": {"dir": data_dir.join("correlate"), "policy": options.policy},
                    // Big batches suit a load test.
                    "limits": {"max_batch_records": 8192},
                }),
                "signals partitions assigned",
            ),
            (
                "api",
                serde_json::json!({
                    "kafka": {"brokers": brokers},
                    "store": {"dir": data_dir.join("api")},
                    "server": {"listen": options.grpc_listen},
                }),
                "incident store is up to date",
            ),
        ];
        let mut roles = Vec::new();
        let mut ready = Vec::new();
        for (role, config, needle) in configs {
            let path = data_dir.join(format!("{role}.yaml"));
            std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
            let args = [role.as_ref(), "--config".as_ref(), path.as_os_str()];
            roles.push(Process::start(role, &options.tidemark, &args)?);
            ready.push(needle);
        }
        for (process, needle) in roles.iter().zip(ready) {
            process.wait_for_line(needle, deadline)?;
        }
        Ok(Pipeline {
            roles,
            broker,
            brokers,
        })
    }

    /// Each process's usage, the roles first.
    fn usage(&self, num_records: u64) -> anyhow::Result<Vec<ProcessUsage>> {
        let millions = (num_records as f64 / 1e6).max(1e-9);
        self.roles
            .iter()
            .chain(&self.broker)
            .map(|process| {
                let (cpu_secs, peak_rss) = process.usage()?;
                Ok(ProcessUsage {
                    process: process.name,
                    cpu_secs_per_million: cpu_secs / millions,
                    peak_rss_mib: peak_rss as f64 / (1024.0 * 1024.0),
                })
            })
            .collect()
    }
}

/// Reads every generated file and orders the records by event time.
fn load_records(input: &Path, truth: &Truth) -> anyhow::Result<Vec<Vec<u8>>> {
    let now = now_unix_nano();
    let mut timed: Vec<(i64, Vec<u8>)> = Vec::new();
    for source in truth.sources.values() {
        let path = input.join(&source.file);
        let content =
            std::fs::read(&path).with_context(|| format!("cannot read `{}`", path.display()))?;
        let mut previous = i64::MIN;
        for piece in input::split(&content) {
            match piece {
                Piece::Record { bytes, .. } => {
                    let time = earliest_event_time(bytes, now).unwrap_or(previous);
                    previous = time;
                    timed.push((time, bytes.to_vec()));
                }
                Piece::Invalid { line, reason } => {
                    bail!("`{}` line {line} is not JSON: {reason}", path.display())
                }
            }
        }
    }
    timed.sort_by_key(|(time, _)| *time);
    Ok(timed.into_iter().map(|(_, bytes)| bytes).collect())
}

fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[index])
}

/// Sum over partitions of (high - low) watermarks, and of low watermarks.
fn topic_counts(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<(i64, i64)> {
    let metadata = consumer
        .fetch_metadata(Some(topic), KAFKA_TIMEOUT)
        .with_context(|| format!("no metadata for `{topic}`"))?;
    let mut held = 0;
    let mut dropped = 0;
    for t in metadata.topics().iter().filter(|t| t.name() == topic) {
        for partition in t.partitions() {
            let (low, high) = consumer.fetch_watermarks(topic, partition.id(), KAFKA_TIMEOUT)?;
            held += high - low;
            dropped += low;
        }
    }
    Ok((held, dropped))
}

/// Reads how far a consumer group is behind on a topic.
struct GroupLag {
    consumer: BaseConsumer,
    topic: &'static str,
}

impl GroupLag {
    fn new(brokers: &str, group: &str, topic: &'static str) -> anyhow::Result<GroupLag> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()?;
        Ok(GroupLag { consumer, topic })
    }

    /// Records of the topic not yet committed by the group, and records the broker has already
    /// deleted although the group had not committed them (possibly lost).
    fn lag(&self) -> anyhow::Result<(i64, i64)> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(self.topic), KAFKA_TIMEOUT)?;
        let mut list = TopicPartitionList::new();
        for t in metadata.topics().iter().filter(|t| t.name() == self.topic) {
            for partition in t.partitions() {
                list.add_partition(self.topic, partition.id());
            }
        }
        let committed = self.consumer.committed_offsets(list, KAFKA_TIMEOUT)?;
        let mut lag = 0;
        let mut trimmed = 0;
        for element in committed.elements() {
            let (low, high) =
                self.consumer
                    .fetch_watermarks(self.topic, element.partition(), KAFKA_TIMEOUT)?;
            let done = element.offset().to_raw().filter(|o| *o >= 0).unwrap_or(0);
            lag += (high - done).max(0);
            trimmed += (low - done).max(0);
        }
        Ok((lag, trimmed))
    }
}

async fn connect(
    address: &str,
    deadline: Instant,
) -> anyhow::Result<IncidentServiceClient<Channel>> {
    loop {
        match IncidentServiceClient::connect(format!("http://{address}")).await {
            Ok(client) => return Ok(client),
            Err(error) if Instant::now() > deadline => {
                return Err(error).context("the incident API never answered");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Runs the load test and returns its report.
pub(crate) async fn run(options: &RunOptions) -> anyhow::Result<Report> {
    let started = Instant::now();
    let deadline = started + options.timeout;
    let truth: Truth = serde_json::from_slice(
        &std::fs::read(options.input.join("truth.json"))
            .with_context(|| format!("no truth.json in `{}`", options.input.display()))?,
    )
    .context("truth.json does not parse")?;
    let records = load_records(&options.input, &truth)?;
    let num_records = records.len() as u64;
    let mut err = std::io::stderr().lock();
    writeln!(
        err,
        "loaded {num_records} records, {} attacks",
        truth.attacks.len()
    )?;
    drop(err);

    let data_dir = tempfile::tempdir()?;
    // Publish only once every role is ready, so that start-up is not counted as latency.
    let pipeline = Pipeline::start(options, &truth.cluster, data_dir.path())?;
    let brokers = pipeline.brokers.clone();
    let mut client = connect(&options.grpc_listen, deadline).await?;

    // Every change, with the moment it was seen.
    let changes: Arc<Mutex<Vec<(Instant, v1::IncidentChange)>>> = Arc::default();
    let mut stream = client
        .watch_incidents(v1::WatchIncidentsRequest {
            cursor: String::new(),
            from_start: true,
        })
        .await?
        .into_inner();
    let watched = Arc::clone(&changes);
    tokio::spawn(async move {
        while let Ok(Some(change)) = stream.message().await {
            watched
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((Instant::now(), change));
        }
    });

    // Publish, paced, remembering when each record was handed to Kafka.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "200000")
        .create()?;
    let ingest_lag = GroupLag::new(&brokers, "tidemark-ingest", RAW_TOPIC)?;
    let correlate_lag = GroupLag::new(&brokers, "tidemark-correlate", SIGNALS_TOPIC)?;
    let mut raw_trimmed_unread = 0;
    let mut signals_trimmed_unread = 0;
    let publish_started = Instant::now();
    let mut sent_at: HashMap<(i32, i64), Instant> = HashMap::with_capacity(records.len());
    let mut in_flight: Vec<(Instant, DeliveryFuture)> = Vec::with_capacity(MAX_IN_FLIGHT);
    let mut progress = Vec::new();
    let mut acknowledged = 0u64;
    let mut last_report = Instant::now();
    for (index, bytes) in records.iter().enumerate() {
        if options.rate > 0 {
            let due = publish_started + Duration::from_secs_f64(index as f64 / options.rate as f64);
            let now = Instant::now();
            if due > now {
                tokio::time::sleep(due - now).await;
            }
        }
        let mut record: FutureRecord<'_, (), [u8]> = FutureRecord::to(RAW_TOPIC).payload(bytes);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    in_flight.push((Instant::now(), delivery));
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    acknowledged += settle(&mut in_flight, &mut sent_at).await?;
                }
                Err((error, _)) => return Err(error).context("cannot queue a record"),
            }
        }
        if in_flight.len() == MAX_IN_FLIGHT {
            acknowledged += settle(&mut in_flight, &mut sent_at).await?;
        }
        if index % FLOW_CHECK_EVERY == FLOW_CHECK_EVERY - 1 {
            // Flow control: a broker keeps a bounded backlog (the embedded one about 5 MiB and
            // 100,000 records per partition), so never run further ahead of ingest and
            // correlate than the windows below.
            loop {
                let (raw_backlog, raw_trimmed) = ingest_lag.lag()?;
                let (signal_backlog, signal_trimmed) = correlate_lag.lag()?;
                raw_trimmed_unread = raw_trimmed_unread.max(raw_trimmed);
                signals_trimmed_unread = signals_trimmed_unread.max(signal_trimmed);
                if raw_backlog <= MAX_RAW_BACKLOG && signal_backlog <= MAX_SIGNAL_BACKLOG {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("the run reached its time limit while publishing");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            let elapsed = publish_started.elapsed().as_secs_f64();
            progress.push((elapsed, acknowledged));
            let mut err = std::io::stderr().lock();
            write!(
                err,
                "\rpublished {:>10} / {num_records}  ({:>8.0}/s)",
                index + 1,
                (index + 1) as f64 / elapsed.max(1e-9)
            )?;
        }
        if Instant::now() > deadline {
            bail!("the run reached its time limit while publishing");
        }
    }
    acknowledged += settle(&mut in_flight, &mut sent_at).await?;
    let publish_secs = publish_started.elapsed().as_secs_f64();
    progress.push((publish_secs, acknowledged));
    writeln!(
        std::io::stderr().lock(),
        "\rpublished {acknowledged} records in {publish_secs:.1} s"
    )?;

    // Wait until ingest and correlate have committed everything.
    let consumed_at = loop {
        let (raw_backlog, raw_trimmed) = ingest_lag.lag()?;
        let (signal_backlog, signal_trimmed) = correlate_lag.lag()?;
        raw_trimmed_unread = raw_trimmed_unread.max(raw_trimmed);
        signals_trimmed_unread = signals_trimmed_unread.max(signal_trimmed);
        if raw_backlog == 0 && signal_backlog == 0 {
            break Instant::now();
        }
        if Instant::now() > deadline {
            bail!(
                "the run reached its time limit: ingest lag {raw_backlog}, correlate lag \
                 {signal_backlog}"
            );
        }
        progress.push((publish_started.elapsed().as_secs_f64(), acknowledged));
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let processing_secs = (consumed_at - publish_started).as_secs_f64();
    // Let the api read the last incident versions.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let processes = pipeline.usage(num_records)?;
    let roles = processes.iter().filter(|p| p.process != "broker");
    let cpu_secs_per_million = roles.clone().map(|p| p.cpu_secs_per_million).sum();
    let peak_rss_mib = roles.map(|p| p.peak_rss_mib).sum();

    let counter: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()?;
    let (held, gone) = topic_counts(&counter, DEAD_LETTERS_TOPIC)?;
    let dead_letters = held + gone;
    let (held, gone) = topic_counts(&counter, LATE_TOPIC)?;
    let late = held + gone;

    // Final incidents.
    let mut incidents = Vec::new();
    let mut request = v1::ListIncidentsRequest {
        page_size: 1000,
        ..Default::default()
    };
    loop {
        let page = client.list_incidents(request.clone()).await?.into_inner();
        incidents.extend(page.incidents);
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    let changes = changes.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let attacked: std::collections::HashSet<&str> =
        truth.attacks.iter().map(|a| a.workload.as_str()).collect();
    let mut per_attack = Vec::new();
    let mut latencies = Vec::new();
    for attack in &truth.attacks {
        let incident = incidents.iter().find(|i| {
            i.workload
                .as_ref()
                .is_some_and(|w| w.key == attack.workload)
        });
        let found_stages = incident.map(|i| i.stages.clone()).unwrap_or_default();
        let detected = attack.stages.iter().all(|s| found_stages.contains(s));
        let mut latency_secs = None;
        if let (true, Some(incident)) = (detected, incident) {
            let complete_at = changes.iter().find_map(|(at, change)| {
                let seen = change.incident.as_ref()?;
                (seen.id == incident.id && attack.stages.iter().all(|s| seen.stages.contains(s)))
                    .then_some(*at)
            });
            let full = client
                .get_incident(v1::GetIncidentRequest {
                    id: incident.id.clone(),
                })
                .await?
                .into_inner();
            // The deciding record: the latest of the first-sent records of each expected stage.
            let deciding = attack
                .stages
                .iter()
                .filter_map(|stage| {
                    full.evidence
                        .iter()
                        .filter(|e| &e.stage == stage)
                        .filter_map(|e| {
                            let raw = e.raw.as_ref().filter(|raw| raw.topic == RAW_TOPIC)?;
                            sent_at.get(&(raw.partition, raw.offset)).copied()
                        })
                        .min()
                })
                .max();
            if let (Some(complete_at), Some(deciding)) = (complete_at, deciding) {
                let latency = complete_at
                    .saturating_duration_since(deciding)
                    .as_secs_f64();
                latencies.push(latency);
                latency_secs = Some(latency);
            }
        }
        per_attack.push(AttackResult {
            workload: attack.workload.clone(),
            pattern: attack.pattern.clone(),
            expected_stages: attack.stages.clone(),
            found_stages,
            detected,
            latency_secs,
        });
    }
    latencies.sort_by(f64::total_cmp);
    let detected = per_attack.iter().filter(|a| a.detected).count();
    let on_attacked = incidents
        .iter()
        .filter(|i| {
            i.workload
                .as_ref()
                .is_some_and(|w| attacked.contains(w.key.as_str()))
        })
        .count();
    Ok(Report {
        records: num_records,
        target_rate: options.rate,
        publish_secs,
        sustained_events_per_sec: num_records as f64 / processing_secs.max(1e-9),
        cpu_secs_per_million,
        peak_rss_mib,
        processes,
        latency_p50_secs: percentile(&latencies, 0.50),
        latency_p99_secs: percentile(&latencies, 0.99),
        attacks: truth.attacks.len(),
        detected,
        recall: if truth.attacks.is_empty() {
            1.0
        } else {
            detected as f64 / truth.attacks.len() as f64
        },
        incidents: incidents.len(),
        incidents_on_attacked_workloads: on_attacked,
        precision: if incidents.is_empty() {
            1.0
        } else {
            on_attacked as f64 / incidents.len() as f64
        },
        dead_letters,
        late,
        raw_records_dropped: raw_trimmed_unread,
        signals_dropped: signals_trimmed_unread,
        per_attack,
        progress,
    })
}

async fn settle(
    in_flight: &mut Vec<(Instant, DeliveryFuture)>,
    sent_at: &mut HashMap<(i32, i64), Instant>,
) -> anyhow::Result<u64> {
    let mut acknowledged = 0;
    for (sent, delivery) in in_flight.drain(..) {
        let delivery = delivery
            .await
            .context("the producer stopped")?
            .map_err(|(error, _)| error)
            .context("Kafka refused a record")?;
        sent_at.insert((delivery.partition, delivery.offset), sent);
        acknowledged += 1;
    }
    Ok(acknowledged)
}

/// Prints the report for people.
pub(crate) fn print(report: &Report, out: &mut impl std::io::Write) -> std::io::Result<()> {
    let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{:.3} s", v));
    writeln!(out, "records                 {}", report.records)?;
    writeln!(
        out,
        "target rate             {}",
        if report.target_rate == 0 {
            "flat out".to_owned()
        } else {
            format!("{}/s", report.target_rate)
        }
    )?;
    writeln!(
        out,
        "sustained               {:.0} events/s end to end",
        report.sustained_events_per_sec
    )?;
    writeln!(
        out,
        "CPU                     {:.1} s per million events (ingest, correlate and api)",
        report.cpu_secs_per_million
    )?;
    writeln!(
        out,
        "peak RSS                {:.0} MiB (the three roles added up)",
        report.peak_rss_mib
    )?;
    for process in &report.processes {
        writeln!(
            out,
            "  {:<21} {:.1} CPU s per million events, peak RSS {:.0} MiB",
            process.process, process.cpu_secs_per_million, process.peak_rss_mib
        )?;
    }
    writeln!(
        out,
        "detection latency       p50 {}, p99 {}",
        opt(report.latency_p50_secs),
        opt(report.latency_p99_secs)
    )?;
    writeln!(
        out,
        "recall                  {:.3} ({} of {} attacks with every stage)",
        report.recall, report.detected, report.attacks
    )?;
    writeln!(
        out,
        "precision               {:.3} ({} of {} incidents on attacked workloads)",
        report.precision, report.incidents_on_attacked_workloads, report.incidents
    )?;
    writeln!(
        out,
        "dead letters / late     {} / {}",
        report.dead_letters, report.late
    )?;
    if report.raw_records_dropped > 0 || report.signals_dropped > 0 {
        writeln!(
            out,
            "WARNING                 the broker deleted {} raw records and {} signals not yet \
             committed; some may have been lost and the figures above may not be valid",
            report.raw_records_dropped, report.signals_dropped
        )?;
    }
    Ok(())
}
