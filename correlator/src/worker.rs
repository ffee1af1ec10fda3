//! `tidemark correlate`: the correlator on Kafka.
//!
//! A worker joins the correlators' consumer group on the signals topic (keyed by workload, so
//! all of a workload's signals reach one worker) and reads every partition of the image-facts
//! topic itself, outside the group, since any workload may run any image. At start it loads the
//! image table up to the topic's end before it correlates a single signal, so a rollout is
//! judged against the pushes that preceded it.
//!
//! # Exactly-once output
//!
//! Each batch goes through the same steps:
//!
//! 1. the engine computes what the batch changes ([`Engine::prepare`]);
//! 2. the state, the consumed offsets and the batch's outputs (incident versions for the
//!    incidents topic; late, future-dated and undecodable signals for the late topic) are
//!    written to RocksDB in one atomic, synced batch: the outputs go to the outbox;
//! 3. the outputs are produced through an idempotent producer, each with headers naming this
//!    worker's producer id, the batch's sequence number and the record's index in the batch;
//! 4. once Kafka acknowledged every record the outbox entry is deleted, and the offsets are
//!    committed to the group.
//!
//! A crash before step 2 leaves nothing: the records are consumed again (from the offsets in
//! RocksDB, which the worker seeks to whenever the group assigns it a partition) and give the
//! same outputs. A crash after step 2 leaves the outbox: at the next start the worker reads the
//! output topics from where they ended before the batch (the outbox stores those offsets), finds
//! the records of the batch that did reach Kafka by their headers, and produces only the others.
//! Consumed records that RocksDB already reflects are skipped by the engine. The incidents topic
//! thus holds every version once, as an uninterrupted run would have published it.
//!
//! A record still in flight from a killed worker may reach the broker after its successor has
//! read the output topics back; that window is the time between the kill and the successor's
//! recovery (seconds in practice), and in it a record can be published twice. Kafka
//! transactions would close it; they are not used because the embedded broker of `tidemark
//! run` (librdkafka's mock cluster) does not implement them faithfully.
//!
//! # State ownership
//!
//! The state of a partition lives in the RocksDB of the worker that consumed it. When the
//! group moves a partition to another worker, that worker's chains for those workloads start
//! from what it holds (nothing, the first time). Run one worker per state volume (a
//! StatefulSet) and keep the membership stable; restoring moved partitions from a changelog
//! topic is not implemented.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tidemark_proto::v1::Signal;
use tracing::{debug, info, warn};

use crate::config::CorrelateConfig;
use crate::engine::{Engine, Position, Rejected};
use crate::error::{Error, Result};
use crate::state::StateStore;
use tidemark_common::time::now_unix_nano;

/// Header naming an incident's version on the incidents topic.
pub const HEADER_VERSION: &str = "tidemark-incident-version";
/// Header naming why a record is on the late topic: `late`, `future` or `undecodable`.
pub const HEADER_REASON: &str = "tidemark-reason";
/// Header naming the worker that produced a record (its producer id, kept in its state).
pub const HEADER_PRODUCER: &str = "tidemark-producer";
/// Header naming the batch a record was produced in, and its index there: `SEQUENCE/INDEX`.
pub const HEADER_BATCH: &str = "tidemark-batch";

const OUTBOX_PENDING: &[u8] = b"pending";
const OUTBOX_PRODUCER: &[u8] = b"producer";
const OUTBOX_SEQUENCE: &[u8] = b"sequence";

/// How long the read-back of the output topics may take at start.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long Kafka metadata requests may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the producer may take to acknowledge a batch.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(120);

/// The outputs of one batch, stored before they are produced.
#[derive(Clone, PartialEq, prost::Message)]
struct OutboxBatch {
    /// Sequence number of the batch, increasing over the worker's life.
    #[prost(uint64, tag = "1")]
    sequence: u64,
    /// Where each output partition ended before the batch was produced.
    #[prost(message, repeated, tag = "2")]
    floors: Vec<Floor>,
    /// The records, in production order.
    #[prost(message, repeated, tag = "3")]
    records: Vec<OutRecord>,
}

/// The end offset of one output partition.
#[derive(Clone, PartialEq, prost::Message)]
struct Floor {
    #[prost(string, tag = "1")]
    topic: String,
    #[prost(int32, tag = "2")]
    partition: i32,
    #[prost(int64, tag = "3")]
    offset: i64,
}

/// One record to produce.
#[derive(Clone, PartialEq, prost::Message)]
struct OutRecord {
    #[prost(string, tag = "1")]
    topic: String,
    #[prost(bytes = "vec", tag = "2")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    payload: Vec<u8>,
    /// Header name and value, beside the producer and batch headers every record gets.
    #[prost(string, tag = "4")]
    header: String,
    #[prost(string, tag = "5")]
    header_value: String,
}

/// Counters of a running worker.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Records consumed (signals and image facts).
    pub num_consumed: AtomicU64,
    /// Records skipped because the state already reflected them.
    pub num_already_applied: AtomicU64,
    /// Batches stored.
    pub num_batches: AtomicU64,
    /// Incident versions published.
    pub num_incident_versions: AtomicU64,
    /// Records routed to the late topic (late, future-dated or undecodable).
    pub num_late: AtomicU64,
    /// Outbox records published again at start, after a crash.
    pub num_recovered: AtomicU64,
}

/// Delivery reports: failures counted, and the end of every partition this producer wrote.
#[derive(Default)]
struct DeliveryReports {
    failed: AtomicU64,
    ends: Mutex<BTreeMap<(String, i32), i64>>,
}

impl ClientContext for DeliveryReports {}

impl ProducerContext for DeliveryReports {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        match result {
            Ok(message) => {
                if let Ok(mut ends) = self.ends.lock() {
                    let end = ends
                        .entry((message.topic().to_owned(), message.partition()))
                        .or_insert(0);
                    *end = (*end).max(message.offset() + 1);
                }
            }
            Err((error, _)) => {
                warn!(error = %error, "record not delivered");
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The context of the consumers that read to the end of partitions: the end is expected there,
/// so librdkafka's end-of-partition events are logged at debug level instead of as errors.
struct ReadsToEnd;

impl ClientContext for ReadsToEnd {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) {
            debug!(reason, "end of partition");
        } else {
            warn!(%error, reason, "Kafka client error");
        }
    }
}

impl ConsumerContext for ReadsToEnd {}

/// Seeks every partition the group assigns to the offset the state holds for it, so that
/// consumption resumes exactly after what RocksDB reflects, whatever the group committed.
struct ResumeFromState<S> {
    engine: Arc<Engine<S>>,
}

impl<S: StateStore + Sync + 'static> ClientContext for ResumeFromState<S> {}

impl<S: StateStore + Sync + 'static> ConsumerContext for ResumeFromState<S> {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let partitions: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|element| (element.topic().to_owned(), element.partition()))
                    .collect();
                // Positions the state holds are durable: they are committed to the group as
                // well, or a worker killed between storing a batch and committing its offsets
                // would leave the group behind the state for good on a partition that receives
                // nothing more (consumer lag that never clears).
                let mut from_state = TopicPartitionList::new();
                for (topic, partition) in partitions {
                    match self.engine.next_offset(&topic, partition) {
                        Ok(Some(next)) => {
                            if let Err(error) = tpl
                                .set_partition_offset(&topic, partition, Offset::Offset(next))
                                .and_then(|()| {
                                    from_state.add_partition_offset(
                                        &topic,
                                        partition,
                                        Offset::Offset(next),
                                    )
                                })
                            {
                                warn!(topic, partition, %error, "cannot resume from the state");
                            }
                        }
                        Ok(None) => {}
                        Err(error) => {
                            warn!(topic, partition, %error, "cannot read the stored offset");
                        }
                    }
                }
                info!(partitions = tpl.count(), "signals partitions assigned");
                if let Err(error) = consumer.assign(tpl) {
                    warn!(%error, "assignment failed");
                } else if from_state.count() > 0
                    && let Err(error) = consumer.commit(&from_state, CommitMode::Async)
                {
                    // Not fatal: the next batch on the partition commits again.
                    warn!(%error, "committing the state's positions failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // Batches are stored synchronously between polls: nothing is in flight here.
                info!(partitions = tpl.count(), "signals partitions revoked");
                if let Err(error) = consumer.unassign() {
                    warn!(%error, "unassignment failed");
                }
            }
            other => warn!(error = ?other, "rebalance error"),
        }
    }
}

/// A consumed record, detached from its consumer.
struct Consumed {
    position: Position,
    key: Vec<u8>,
    payload: Vec<u8>,
}

impl Consumed {
    fn from_message(message: &BorrowedMessage<'_>) -> Consumed {
        Consumed {
            position: Position {
                topic: message.topic().to_owned(),
                partition: message.partition(),
                offset: message.offset(),
            },
            key: message.key().unwrap_or_default().to_vec(),
            payload: message.payload().unwrap_or_default().to_vec(),
        }
    }
}

/// The correlator on Kafka.
pub struct CorrelateWorker<S: StateStore + Sync + 'static> {
    config: CorrelateConfig,
    engine: Arc<Engine<S>>,
    signals: BaseConsumer<ResumeFromState<S>>,
    facts: BaseConsumer<ReadsToEnd>,
    producer: ThreadedProducer<DeliveryReports>,
    client_config: ClientConfig,
    producer_id: String,
    next_sequence: u64,
    /// Where each output partition ends, as far as this worker knows.
    floors: BTreeMap<(String, i32), i64>,
    stats: Arc<WorkerStats>,
}

fn kafka(operation: &'static str) -> impl FnOnce(KafkaError) -> Error {
    move |source| Error::Kafka { operation, source }
}

impl<S: StateStore + Sync + 'static> CorrelateWorker<S> {
    /// Creates the clients. Nothing is consumed before [`CorrelateWorker::run`].
    ///
    /// # Errors
    ///
    /// Returns [`Error`] when a client cannot be created or the state cannot be read.
    pub fn try_new(config: CorrelateConfig, engine: Engine<S>) -> Result<Self> {
        let engine = Arc::new(engine);
        let mut common = ClientConfig::new();
        common.set("bootstrap.servers", &config.kafka.brokers);
        for (key, value) in &config.kafka.properties {
            common.set(key, value);
        }
        let mut consumer_config = common.clone();
        let (key, value) = tidemark_common::kafka::FETCH_WAIT_MAX_MS;
        if !config.kafka.properties.contains_key(key) {
            consumer_config.set(key, value);
        }
        let signals: BaseConsumer<ResumeFromState<S>> = consumer_config
            .clone()
            .set("group.id", &config.kafka.group_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .create_with_context(ResumeFromState {
                engine: Arc::clone(&engine),
            })
            .map_err(kafka("signals consumer creation"))?;
        let facts: BaseConsumer<ReadsToEnd> = consumer_config
            .clone()
            .set("group.id", format!("{}-image-facts", config.kafka.group_id))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "true")
            .create_with_context(ReadsToEnd)
            .map_err(kafka("image-facts consumer creation"))?;
        let mut producer_config = common.clone();
        // Incidents and late signals are few: compress them well. `kafka.properties` may
        // change either default.
        for (key, value) in [("compression.type", "zstd"), ("linger.ms", "5")] {
            if !config.kafka.properties.contains_key(key) {
                producer_config.set(key, value);
            }
        }
        let producer: ThreadedProducer<DeliveryReports> = producer_config
            .set("enable.idempotence", "true")
            .create_with_context(DeliveryReports::default())
            .map_err(kafka("producer creation"))?;

        let producer_id = match engine.outbox_get(OUTBOX_PRODUCER)? {
            Some(id) => String::from_utf8_lossy(&id).into_owned(),
            None => {
                let id = new_producer_id();
                engine.outbox_set(OUTBOX_PRODUCER, Some(id.clone().into_bytes()))?;
                id
            }
        };
        let next_sequence = match engine.outbox_get(OUTBOX_SEQUENCE)? {
            Some(bytes) => decode_u64(&bytes) + 1,
            None => 1,
        };
        Ok(CorrelateWorker {
            config,
            engine,
            signals,
            facts,
            producer,
            client_config: common,
            producer_id,
            next_sequence,
            floors: BTreeMap::new(),
            stats: Arc::default(),
        })
    }

    /// Returns the worker's counters.
    pub fn stats(&self) -> Arc<WorkerStats> {
        Arc::clone(&self.stats)
    }

    /// Publishes what a previous run left in the outbox, loads the image table, then
    /// correlates until `stop` is set, and returns after the batch in progress is stored and
    /// published. Blocking: run it on a thread of its own.
    ///
    /// # Errors
    ///
    /// Returns [`Error`] when Kafka refuses records, a topic is missing, or the state store
    /// fails. What was stored but not acknowledged is published at the next start.
    pub fn run(&mut self, stop: &AtomicBool) -> Result<()> {
        self.recover_outbox()?;
        self.floors = self.output_ends()?;
        self.load_image_table(stop)?;
        self.signals
            .subscribe(&[&self.config.topics.signals])
            .map_err(kafka("subscription"))?;
        info!(
            topic = self.config.topics.signals,
            group_id = self.config.kafka.group_id,
            "correlating"
        );
        let interval = Duration::from_secs(self.config.limits.stats_interval_secs);
        let mut last_stats = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let batch = self.poll_batch();
            if !batch.is_empty() {
                self.process(batch)?;
            }
            if last_stats.elapsed() >= interval {
                self.log_stats("progress");
                last_stats = Instant::now();
            }
        }
        match self.signals.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => {}
            // Nothing was stored since the last commit: there is nothing to commit.
            Err(error) if error.rdkafka_error_code() == Some(RDKafkaErrorCode::NoOffset) => {
                debug!("no offset to commit at stop");
            }
            // The offsets are in RocksDB too: the next start resumes from there.
            Err(error) => warn!(%error, "final offset commit failed"),
        }
        self.log_stats("stopped");
        Ok(())
    }

    fn log_stats(&self, message: &'static str) {
        let stats = &self.stats;
        info!(
            num_consumed = stats.num_consumed.load(Ordering::Relaxed),
            num_already_applied = stats.num_already_applied.load(Ordering::Relaxed),
            num_batches = stats.num_batches.load(Ordering::Relaxed),
            num_incident_versions = stats.num_incident_versions.load(Ordering::Relaxed),
            num_late = stats.num_late.load(Ordering::Relaxed),
            num_recovered = stats.num_recovered.load(Ordering::Relaxed),
            "{message}"
        );
    }

    /// Assigns every image-facts partition from the offset the state holds, and correlates
    /// them up to the end the topic had at start.
    fn load_image_table(&mut self, stop: &AtomicBool) -> Result<()> {
        let topic = self.config.topics.image_facts.clone();
        let partitions = self.partitions(&topic)?;
        let mut assignment = TopicPartitionList::new();
        let mut remaining = BTreeSet::new();
        for partition in partitions {
            let next = self.engine.next_offset(&topic, partition)?;
            let (_, high) = self
                .facts
                .fetch_watermarks(&topic, partition, METADATA_TIMEOUT)
                .map_err(kafka("image-facts watermarks"))?;
            let offset = next.map_or(Offset::Beginning, Offset::Offset);
            assignment
                .add_partition_offset(&topic, partition, offset)
                .map_err(kafka("image-facts assignment"))?;
            if next.unwrap_or(0) < high {
                remaining.insert(partition);
            }
        }
        self.facts
            .assign(&assignment)
            .map_err(kafka("image-facts assignment"))?;
        let started = Instant::now();
        while !remaining.is_empty() && !stop.load(Ordering::Relaxed) {
            let mut batch = Vec::new();
            while batch.len() < self.config.limits.max_batch_records {
                match self.facts.poll(Duration::from_millis(100)) {
                    Some(Ok(message)) => batch.push(Consumed::from_message(&message)),
                    Some(Err(KafkaError::PartitionEOF(partition))) => {
                        remaining.remove(&partition);
                        if remaining.is_empty() {
                            break;
                        }
                    }
                    Some(Err(error)) => warn!(%error, "image-facts consumer error"),
                    None => break,
                }
            }
            if !batch.is_empty() {
                self.process(batch)?;
            }
        }
        info!(
            topic,
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "image table loaded"
        );
        Ok(())
    }

    /// Gathers up to `max_batch_records` records: image facts first (without waiting), then
    /// signals (waiting up to `poll_timeout_ms` for the first).
    fn poll_batch(&self) -> Vec<Consumed> {
        let max = self.config.limits.max_batch_records;
        let mut batch = Vec::new();
        while batch.len() < max {
            match self.facts.poll(Duration::ZERO) {
                Some(Ok(message)) => batch.push(Consumed::from_message(&message)),
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(error)) => warn!(%error, "image-facts consumer error"),
                None => break,
            }
        }
        let mut wait = if batch.is_empty() {
            Duration::from_millis(self.config.limits.poll_timeout_ms)
        } else {
            Duration::ZERO
        };
        while batch.len() < max {
            match self.signals.poll(wait) {
                Some(Ok(message)) => batch.push(Consumed::from_message(&message)),
                Some(Err(error)) => warn!(%error, "signals consumer error"),
                None => break,
            }
            wait = Duration::ZERO;
        }
        batch
    }

    /// Correlates, stores and publishes one batch (the steps in the module documentation).
    fn process(&mut self, batch: Vec<Consumed>) -> Result<()> {
        self.stats
            .num_consumed
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let mut consumed: BTreeMap<i32, i64> = BTreeMap::new();
        let mut inputs = Vec::with_capacity(batch.len());
        let mut undecodable = Vec::new();
        let mut raw: BTreeMap<Position, (Vec<u8>, Vec<u8>)> = BTreeMap::new();
        for record in batch {
            if record.position.topic == self.config.topics.signals {
                let next = consumed.entry(record.position.partition).or_insert(0);
                *next = (*next).max(record.position.offset + 1);
            }
            match Signal::decode(record.payload.as_slice()) {
                Ok(signal) => inputs.push((record.position, signal)),
                Err(error) => {
                    warn!(
                        topic = record.position.topic,
                        partition = record.position.partition,
                        offset = record.position.offset,
                        %error,
                        "undecodable signal"
                    );
                    undecodable.push(record.position.clone());
                    raw.insert(record.position, (record.key, record.payload));
                }
            }
        }
        let (outcome, mut prepared) =
            self.engine
                .prepare(&inputs, &undecodable, now_unix_nano())?;
        self.stats
            .num_already_applied
            .fetch_add(outcome.num_already_applied, Ordering::Relaxed);

        let mut records = Vec::new();
        for position in &outcome.undecodable {
            if let Some((key, payload)) = raw.remove(position) {
                records.push(self.late_record(key, payload, "undecodable"));
            }
        }
        for incident in &outcome.incidents {
            records.push(OutRecord {
                topic: self.config.topics.incidents.clone(),
                key: incident.id.clone().into_bytes(),
                payload: serde_json::to_vec(incident).expect("incidents serialize to JSON"),
                header: HEADER_VERSION.to_owned(),
                header_value: incident.version.to_string(),
            });
        }
        for rejected in outcome.late.iter().chain(&outcome.future) {
            records.push(self.rejected_record(rejected));
        }
        let pending = if records.is_empty() {
            None
        } else {
            let sequence = self.next_sequence;
            self.next_sequence += 1;
            let pending = OutboxBatch {
                sequence,
                floors: self
                    .floors
                    .iter()
                    .map(|((topic, partition), offset)| Floor {
                        topic: topic.clone(),
                        partition: *partition,
                        offset: *offset,
                    })
                    .collect(),
                records,
            };
            prepared.put_outbox(OUTBOX_PENDING, pending.encode_to_vec());
            prepared.put_outbox(OUTBOX_SEQUENCE, sequence.to_be_bytes().to_vec());
            Some(pending)
        };
        self.engine.commit(prepared)?;
        if let Some(pending) = pending {
            self.publish(pending.sequence, pending.records.iter().enumerate())?;
            self.engine.outbox_set(OUTBOX_PENDING, None)?;
        }

        if !consumed.is_empty() {
            let mut offsets = TopicPartitionList::new();
            for (partition, next) in consumed {
                offsets
                    .add_partition_offset(
                        &self.config.topics.signals,
                        partition,
                        Offset::Offset(next),
                    )
                    .map_err(kafka("offset list"))?;
            }
            if let Err(error) = self.signals.commit(&offsets, CommitMode::Async) {
                // Not fatal: RocksDB holds the offsets, and the worker resumes from there.
                warn!(%error, "offset commit failed");
            }
        }
        self.stats.num_batches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .num_incident_versions
            .fetch_add(outcome.incidents.len() as u64, Ordering::Relaxed);
        self.stats.num_late.fetch_add(
            (outcome.late.len() + outcome.future.len() + outcome.undecodable.len()) as u64,
            Ordering::Relaxed,
        );
        Ok(())
    }

    fn late_record(&self, key: Vec<u8>, payload: Vec<u8>, reason: &str) -> OutRecord {
        OutRecord {
            topic: self.config.topics.late.clone(),
            key,
            payload,
            header: HEADER_REASON.to_owned(),
            header_value: reason.to_owned(),
        }
    }

    fn rejected_record(&self, rejected: &Rejected) -> OutRecord {
        let key = rejected.signal.partition_key().into_bytes();
        self.late_record(key, rejected.signal.encode_to_vec(), rejected.reason)
    }

    /// Produces records of batch `sequence` (with their indexes) and waits for every
    /// acknowledgement.
    fn publish<'r>(
        &mut self,
        sequence: u64,
        records: impl Iterator<Item = (usize, &'r OutRecord)>,
    ) -> Result<()> {
        for (index, record) in records {
            let batch = format!("{sequence}/{index}");
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: HEADER_PRODUCER,
                    value: Some(self.producer_id.as_str()),
                })
                .insert(Header {
                    key: HEADER_BATCH,
                    value: Some(batch.as_str()),
                })
                .insert(Header {
                    key: record.header.as_str(),
                    value: Some(record.header_value.as_str()),
                });
            self.send(&record.topic, &record.key, &record.payload, headers)?;
        }
        self.producer
            .flush(FLUSH_TIMEOUT)
            .map_err(kafka("producer flush"))?;
        let failed = self.producer.context().failed.swap(0, Ordering::Relaxed);
        if failed > 0 {
            return Err(Error::Unacknowledged { failed });
        }
        if let Ok(ends) = self.producer.context().ends.lock() {
            for (partition, end) in ends.iter() {
                let floor = self.floors.entry(partition.clone()).or_insert(0);
                *floor = (*floor).max(*end);
            }
        }
        Ok(())
    }

    fn send(&self, topic: &str, key: &[u8], payload: &[u8], headers: OwnedHeaders) -> Result<()> {
        let mut record = BaseRecord::to(topic)
            .key(key)
            .payload(payload)
            .headers(headers);
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    self.producer.poll(Duration::from_millis(5));
                }
                Err((source, _)) => {
                    return Err(Error::Kafka {
                        operation: "produce",
                        source,
                    });
                }
            }
        }
    }

    /// Returns the partitions of `topic`.
    fn partitions(&self, topic: &str) -> Result<Vec<i32>> {
        let metadata = self
            .producer
            .client()
            .fetch_metadata(Some(topic), METADATA_TIMEOUT)
            .map_err(kafka("metadata"))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(Error::MissingTopic {
                topic: topic.to_owned(),
            });
        }
        Ok(partitions)
    }

    /// Returns the end offset of every partition of the output topics.
    fn output_ends(&self) -> Result<BTreeMap<(String, i32), i64>> {
        let mut ends = BTreeMap::new();
        for topic in [&self.config.topics.incidents, &self.config.topics.late] {
            for partition in self.partitions(topic)? {
                let (_, high) = self
                    .producer
                    .client()
                    .fetch_watermarks(topic, partition, METADATA_TIMEOUT)
                    .map_err(kafka("output watermarks"))?;
                ends.insert((topic.clone(), partition), high);
            }
        }
        Ok(ends)
    }

    /// Publishes the records of a batch that was stored but not (entirely) acknowledged before
    /// the previous run stopped: reads the output topics from where they ended before that
    /// batch, and produces the records not found there.
    fn recover_outbox(&mut self) -> Result<()> {
        let Some(bytes) = self.engine.outbox_get(OUTBOX_PENDING)? else {
            return Ok(());
        };
        let pending = OutboxBatch::decode(bytes.as_slice())
            .map_err(|error| Error::Recovery(format!("the stored outbox is corrupted: {error}")))?;
        let floors: BTreeMap<(String, i32), i64> = pending
            .floors
            .iter()
            .map(|f| ((f.topic.clone(), f.partition), f.offset))
            .collect();
        let published = self.published_indexes(pending.sequence, &floors)?;
        let missing: Vec<(usize, &OutRecord)> = pending
            .records
            .iter()
            .enumerate()
            .filter(|(index, _)| !published.contains(index))
            .collect();
        info!(
            sequence = pending.sequence,
            num_records = pending.records.len(),
            num_published = published.len(),
            num_missing = missing.len(),
            "recovering the outbox"
        );
        self.stats
            .num_recovered
            .fetch_add(missing.len() as u64, Ordering::Relaxed);
        self.publish(pending.sequence, missing.into_iter())?;
        self.engine.outbox_set(OUTBOX_PENDING, None)?;
        Ok(())
    }

    /// Returns the indexes of the records of batch `sequence` by this worker found on the output
    /// topics at or after `floors` (partitions without a floor are read from their start).
    fn published_indexes(
        &self,
        sequence: u64,
        floors: &BTreeMap<(String, i32), i64>,
    ) -> Result<BTreeSet<usize>> {
        let reader: BaseConsumer<ReadsToEnd> = self
            .client_config
            .clone()
            .set(
                "group.id",
                format!("{}-outbox-recovery", self.config.kafka.group_id),
            )
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            .create_with_context(ReadsToEnd)
            .map_err(kafka("recovery consumer creation"))?;
        let mut assignment = TopicPartitionList::new();
        let mut remaining = BTreeSet::new();
        for topic in [&self.config.topics.incidents, &self.config.topics.late] {
            for partition in self.partitions(topic)? {
                let (low, high) = reader
                    .fetch_watermarks(topic, partition, METADATA_TIMEOUT)
                    .map_err(kafka("recovery watermarks"))?;
                let from = floors
                    .get(&(topic.clone(), partition))
                    .copied()
                    .unwrap_or(low)
                    .max(low);
                if from < high {
                    assignment
                        .add_partition_offset(topic, partition, Offset::Offset(from))
                        .map_err(kafka("recovery assignment"))?;
                    remaining.insert((topic.clone(), partition, high));
                }
            }
        }
        let mut published = BTreeSet::new();
        if remaining.is_empty() {
            return Ok(published);
        }
        reader
            .assign(&assignment)
            .map_err(kafka("recovery assignment"))?;
        let ours = self.producer_id.as_bytes();
        let prefix = format!("{sequence}/");
        let deadline = Instant::now() + RECOVERY_TIMEOUT;
        while !remaining.is_empty() {
            if Instant::now() > deadline {
                return Err(Error::Recovery(format!(
                    "the output topics could not be read back within {}s",
                    RECOVERY_TIMEOUT.as_secs()
                )));
            }
            match reader.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => {
                    if let Some(index) = batch_index(&message, ours, &prefix) {
                        published.insert(index);
                    }
                }
                // End of a partition: the positions below tell which.
                Some(Err(KafkaError::PartitionEOF(_))) | None => {}
                Some(Err(error)) => warn!(%error, "recovery consumer error"),
            }
            let positions = reader.position().map_err(kafka("recovery position"))?;
            remaining.retain(|(topic, partition, high)| {
                let position =
                    positions
                        .find_partition(topic, *partition)
                        .and_then(|p| match p.offset() {
                            Offset::Offset(offset) => Some(offset),
                            _ => None,
                        });
                position.is_none_or(|position| position < *high)
            });
        }
        Ok(published)
    }
}

/// Returns the index of a record in batch `prefix` (`SEQUENCE/`) produced by `producer`.
fn batch_index(message: &BorrowedMessage<'_>, producer: &[u8], prefix: &str) -> Option<usize> {
    let headers = message.headers()?;
    let header = |name: &str| headers.iter().find(|h| h.key == name).and_then(|h| h.value);
    if header(HEADER_PRODUCER) != Some(producer) {
        return None;
    }
    std::str::from_utf8(header(HEADER_BATCH)?)
        .ok()?
        .strip_prefix(prefix)?
        .parse()
        .ok()
}

fn decode_u64(bytes: &[u8]) -> u64 {
    let mut array = [0u8; 8];
    let n = bytes.len().min(8);
    array[8 - n..].copy_from_slice(&bytes[bytes.len() - n..]);
    u64::from_be_bytes(array)
}

/// A producer id unique to this state directory: the creation time and process id, in hex.
fn new_producer_id() -> String {
    format!("{:x}-{:x}", now_unix_nano(), std::process::id())
}
