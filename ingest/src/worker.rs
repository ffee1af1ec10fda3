//! The ingest worker: a Kafka consumer group member that turns raw records into signals.
//!
//! For every raw record the worker produces its signals to the signals topic (keyed by
//! workload), its image pushes to the image-facts topic (keyed by image reference), or, when it
//! cannot be decoded, the record itself to the dead-letter topic with the reason in headers.
//!
//! Delivery is at-least-once end to end. Auto-commit is on but the auto *store* is off: a
//! record's offset is stored only after every record produced from it has been acknowledged by
//! the brokers, and records are retired in the order they were consumed, so a stored offset never
//! runs ahead of an unacknowledged output. A crash re-reads what was not retired; downstream
//! de-duplicates on the signal's raw pointer and `dedup_key`.
//!
//! Memory is bounded: at most `limits.max_in_flight_records` input records may await
//! acknowledgement; at that point the worker stops reading until the oldest completes. On
//! shutdown it stops reading, waits for everything in flight, stores and commits synchronously.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prost::Message as _;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, ClientContext};
use tidemark_proto::v1::{RawPointer, signal::Fact};
use tracing::{info, warn};

use crate::config::IngestConfig;
use crate::decode::{self, RecordContext};
use crate::error::{Error, Result};
use tidemark_common::time::now_unix_nano;

/// Header naming the protobuf message type of signal and image-fact records.
pub const HEADER_SCHEMA: &str = "tidemark-schema";
/// Schema header value of signal and image-fact records.
pub const SIGNAL_SCHEMA: &str = "tidemark.v1.Signal";
/// Dead-letter header: why the record could not be decoded.
pub const HEADER_ERROR: &str = "tidemark-error";
/// Dead-letter header: the format the record was decoded as, when one was detected.
pub const HEADER_FORMAT: &str = "tidemark-format";
/// Dead-letter header: the raw topic the record came from.
pub const HEADER_SOURCE_TOPIC: &str = "tidemark-source-topic";
/// Dead-letter header: the raw partition the record came from.
pub const HEADER_SOURCE_PARTITION: &str = "tidemark-source-partition";
/// Dead-letter header: the raw offset of the record.
pub const HEADER_SOURCE_OFFSET: &str = "tidemark-source-offset";
/// Dead-letter header: the size of the raw record when the dead letter holds only its start.
pub const HEADER_TRUNCATED_FROM: &str = "tidemark-truncated-from";

/// Dead-letter payload kept when even a `max_dead_letter_bytes` payload is refused.
const MIN_DEAD_LETTER_BYTES: usize = 4096;

/// Counters of one worker, readable while it runs.
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Raw records consumed.
    pub num_records: AtomicU64,
    /// Signals produced to the signals topic.
    pub num_signals: AtomicU64,
    /// Image facts produced to the image-facts topic.
    pub num_image_facts: AtomicU64,
    /// Records produced to the dead-letter topic.
    pub num_dead_letters: AtomicU64,
    /// Events that decoded but carried nothing to correlate.
    pub num_skipped: AtomicU64,
    /// Raw records whose outputs were all acknowledged and whose offsets were stored.
    pub num_retired: AtomicU64,
}

impl IngestStats {
    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Returns the counter values.
    pub fn snapshot(&self) -> IngestStatsSnapshot {
        IngestStatsSnapshot {
            num_records: self.num_records.load(Ordering::Relaxed),
            num_signals: self.num_signals.load(Ordering::Relaxed),
            num_image_facts: self.num_image_facts.load(Ordering::Relaxed),
            num_dead_letters: self.num_dead_letters.load(Ordering::Relaxed),
            num_skipped: self.num_skipped.load(Ordering::Relaxed),
            num_retired: self.num_retired.load(Ordering::Relaxed),
        }
    }
}

/// A copy of [`IngestStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestStatsSnapshot {
    /// Raw records consumed.
    pub num_records: u64,
    /// Signals produced.
    pub num_signals: u64,
    /// Image facts produced.
    pub num_image_facts: u64,
    /// Dead letters produced.
    pub num_dead_letters: u64,
    /// Events skipped as not correlated.
    pub num_skipped: u64,
    /// Raw records fully acknowledged and stored.
    pub num_retired: u64,
}

/// One consumed record whose outputs await acknowledgement.
struct InFlight {
    topic: String,
    partition: i32,
    offset: i64,
    deliveries: Vec<(String, DeliveryFuture)>,
}

/// Logs the raw partitions the group gives this member and takes back, so that an operator
/// (and the load test, which waits for it) can see when a member starts reading.
struct LogRebalance;

impl ClientContext for LogRebalance {}

impl ConsumerContext for LogRebalance {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                info!(partitions = partitions.count(), "raw partitions assigned");
            }
            Rebalance::Revoke(partitions) => {
                info!(partitions = partitions.count(), "raw partitions revoked");
            }
            // rdkafka logs a failed rebalance itself.
            Rebalance::Error(_) => {}
        }
    }
}

/// A member of the ingest consumer group.
pub struct IngestWorker {
    config: IngestConfig,
    consumer: StreamConsumer<LogRebalance>,
    producer: FutureProducer,
    stats: Arc<IngestStats>,
}

impl IngestWorker {
    /// Creates the consumer and the idempotent producer and subscribes to the raw topics.
    ///
    /// # Errors
    ///
    /// Returns [`Error::Kafka`] when a client cannot be created (bad property) or the
    /// subscription fails.
    pub fn try_new(config: IngestConfig) -> Result<Self> {
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
        let consumer: StreamConsumer<LogRebalance> = consumer_config
            .set("group.id", &config.kafka.group_id)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .create_with_context(LogRebalance)
            .map_err(|source| Error::Kafka {
                operation: "consumer creation",
                source,
            })?;
        let mut producer_config = common;
        // Bound the producer's local queue (bytes and records) so memory stays bounded when the
        // brokers slow down; `send` waits while it is full. Compress with lz4: zstd took a tenth
        // of ingest's CPU to compress the signals and a tenth of the correlator's to decompress
        // them, for topics that hold signals only for as long as the correlator needs them.
        // `kafka.properties` may change any of these.
        for (key, value) in [
            ("queue.buffering.max.kbytes", "131072"),
            ("queue.buffering.max.messages", "100000"),
            ("compression.type", "lz4"),
            ("linger.ms", "5"),
        ] {
            if !config.kafka.properties.contains_key(key) {
                producer_config.set(key, value);
            }
        }
        let producer: FutureProducer = producer_config
            .set("enable.idempotence", "true")
            .set("message.max.bytes", producer_max_bytes(&config).to_string())
            .create()
            .map_err(|source| Error::Kafka {
                operation: "producer creation",
                source,
            })?;
        let topics: Vec<&str> = config
            .topics
            .raw
            .iter()
            .map(|raw| raw.name.as_str())
            .collect();
        consumer.subscribe(&topics).map_err(|source| Error::Kafka {
            operation: "subscription",
            source,
        })?;
        Ok(IngestWorker {
            config,
            consumer,
            producer,
            stats: Arc::new(IngestStats::default()),
        })
    }

    /// Returns the worker's counters, shared with the running worker.
    pub fn stats(&self) -> Arc<IngestStats> {
        Arc::clone(&self.stats)
    }

    /// Consumes until `shutdown` completes, then drains what is in flight and commits.
    ///
    /// # Errors
    ///
    /// Returns [`Error::Delivery`] when the brokers refuse an output for good (after the
    /// producer's own retries). Offsets are not stored past that record, so a restarted worker
    /// reads it again. Returns [`Error::Kafka`] when the final commit fails.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<IngestStatsSnapshot> {
        let IngestWorker {
            config,
            consumer,
            producer,
            stats,
        } = self;
        let max_in_flight = config.limits.max_in_flight_records;
        let mut in_flight: VecDeque<InFlight> = VecDeque::with_capacity(max_in_flight.min(65_536));
        let mut stats_tick =
            tokio::time::interval(Duration::from_secs(config.limits.stats_interval_secs));
        stats_tick.tick().await;
        tokio::pin!(shutdown);
        info!(topics = ?config.topics.raw.iter().map(|r| &r.name).collect::<Vec<_>>(), "ingest started");

        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                retired = complete_oldest(&mut in_flight), if !in_flight.is_empty() => {
                    store(&consumer, &retired?, &stats);
                }
                message = consumer.recv(), if in_flight.len() < max_in_flight => {
                    match message {
                        Ok(message) => {
                            let message = message.detach();
                            let entry = process(&config, &producer, &stats, message).await?;
                            in_flight.push_back(entry);
                        }
                        Err(error) => warn!(%error, "kafka consume error"),
                    }
                }
                _ = stats_tick.tick() => {
                    let s = stats.snapshot();
                    info!(
                        num_records = s.num_records,
                        num_signals = s.num_signals,
                        num_image_facts = s.num_image_facts,
                        num_dead_letters = s.num_dead_letters,
                        num_skipped = s.num_skipped,
                        num_in_flight = in_flight.len(),
                        "ingest progress"
                    );
                }
            }
        }

        info!(num_in_flight = in_flight.len(), "ingest draining");
        while !in_flight.is_empty() {
            let retired = complete_oldest(&mut in_flight).await?;
            store(&consumer, &retired, &stats);
        }
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => {}
            // Nothing was stored since the last commit, or no partition is assigned.
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(source) => {
                return Err(Error::Kafka {
                    operation: "final commit",
                    source,
                });
            }
        }
        let snapshot = stats.snapshot();
        info!(
            num_records = snapshot.num_records,
            num_retired = snapshot.num_retired,
            "ingest stopped"
        );
        Ok(snapshot)
    }
}

/// Waits for every output of the oldest in-flight record and removes it.
///
/// # Cancel safety
///
/// Cancel-safe: an acknowledged delivery is removed before the next await, and the record
/// leaves the queue only when all its deliveries are acknowledged.
async fn complete_oldest(in_flight: &mut VecDeque<InFlight>) -> Result<InFlight> {
    let Some(oldest) = in_flight.front_mut() else {
        unreachable!("complete_oldest is only polled with records in flight");
    };
    while let Some((topic, delivery)) = oldest.deliveries.last_mut() {
        match delivery.await {
            Ok(Ok(_)) => {
                oldest.deliveries.pop();
            }
            Ok(Err((source, _))) => {
                return Err(Error::Delivery {
                    topic: topic.clone(),
                    source,
                });
            }
            Err(_canceled) => {
                return Err(Error::Delivery {
                    topic: topic.clone(),
                    source: KafkaError::Canceled,
                });
            }
        }
    }
    Ok(in_flight
        .pop_front()
        .expect("the front record was just borrowed"))
}

/// Stores the position after `retired`, so the next commit resumes after it.
fn store(consumer: &StreamConsumer<LogRebalance>, retired: &InFlight, stats: &IngestStats) {
    // librdkafka's `rd_kafka_offset_store` stores `offset + 1`, the next offset to read.
    if let Err(error) = consumer.store_offset(&retired.topic, retired.partition, retired.offset) {
        // The partition was revoked meanwhile: its new owner re-reads from the last commit.
        warn!(%error, topic = %retired.topic, partition = retired.partition, "offset not stored");
    }
    IngestStats::add(&stats.num_retired, 1);
}

/// Decodes one raw record and starts producing its outputs.
///
/// # Errors
///
/// Returns [`Error::Kafka`] only when not even a truncated dead letter can be enqueued.
async fn process(
    config: &IngestConfig,
    producer: &FutureProducer,
    stats: &IngestStats,
    message: OwnedMessage,
) -> Result<InFlight> {
    IngestStats::add(&stats.num_records, 1);
    let topic = message.topic().to_owned();
    let raw_topic = config.raw_topic(&topic);
    let now = now_unix_nano();
    let mut ctx = RecordContext::new(
        RawPointer {
            topic: topic.clone(),
            partition: message.partition(),
            offset: message.offset(),
            ..Default::default()
        },
        now,
    );
    ctx.fallback_time_unix_nano = message
        .timestamp()
        .to_millis()
        .and_then(|ms| ms.checked_mul(1_000_000))
        .unwrap_or(now);
    ctx.max_record_bytes = config.limits.max_record_bytes;
    if let Some(raw_topic) = raw_topic {
        ctx.cluster.clone_from(&raw_topic.cluster);
    }
    let format = raw_topic.map(|raw| raw.format).unwrap_or_default();
    let payload = message.payload().unwrap_or_default();

    let mut deliveries = Vec::new();
    let failure = match decode::decode(payload, format, &ctx) {
        Ok(decoded) => {
            IngestStats::add(&stats.num_skipped, decoded.skipped.len());
            let mut refused = None;
            let mut outputs = Vec::with_capacity(decoded.signals.len());
            for signal in decoded.signals {
                let encoded = signal.encode_to_vec();
                if encoded.len() > config.limits.max_output_bytes {
                    refused = Some(format!(
                        "normalized signal of {} bytes exceeds limits.max_output_bytes ({})",
                        encoded.len(),
                        config.limits.max_output_bytes
                    ));
                    break;
                }
                outputs.push((signal, encoded));
            }
            if refused.is_some() {
                outputs.clear();
            }
            for (signal, encoded) in outputs {
                let is_image_fact = matches!(signal.fact, Some(Fact::ImagePushed(_)));
                let (output, key) = if is_image_fact {
                    let key = signal
                        .image
                        .as_ref()
                        .map(|i| i.reference.clone())
                        .unwrap_or_default();
                    (&config.topics.image_facts, key)
                } else {
                    (&config.topics.signals, signal.partition_key())
                };
                let headers = OwnedHeaders::new().insert(Header {
                    key: HEADER_SCHEMA,
                    value: Some(SIGNAL_SCHEMA),
                });
                match send(producer, output, Some(key.as_bytes()), &encoded, headers).await {
                    Ok(delivery) => deliveries.push((output.clone(), delivery)),
                    Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)) => {
                        // Signals enqueued before this one stay; consumers de-duplicate on the
                        // signal's raw pointer, and the record itself goes to the dead letters.
                        refused = Some(format!(
                            "normalized signal of {} bytes is larger than the producer accepts",
                            encoded.len()
                        ));
                        break;
                    }
                    Err(source) => {
                        return Err(Error::Kafka {
                            operation: "signal enqueue",
                            source,
                        });
                    }
                }
                let counter = if is_image_fact {
                    &stats.num_image_facts
                } else {
                    &stats.num_signals
                };
                IngestStats::add(counter, 1);
            }
            refused.map(|reason| (reason, None))
        }
        Err(error) => Some((error.to_string(), error.format.map(|f| f.name()))),
    };
    if let Some((reason, format)) = failure {
        IngestStats::add(&stats.num_dead_letters, 1);
        let delivery = dead_letter(config, producer, &message, &reason, format).await?;
        deliveries.push((config.topics.dead_letters.clone(), delivery));
    }
    Ok(InFlight {
        topic,
        partition: message.partition(),
        offset: message.offset(),
        deliveries,
    })
}

/// Enqueues `message` to the dead-letter topic with the reason and its origin in headers. A
/// payload over `limits.max_dead_letter_bytes` is cut to that size and the original size is
/// given in a header; the whole record stays in its raw topic at the offset named.
async fn dead_letter(
    config: &IngestConfig,
    producer: &FutureProducer,
    message: &OwnedMessage,
    reason: &str,
    format: Option<&str>,
) -> Result<DeliveryFuture> {
    let payload = message.payload().unwrap_or_default();
    let partition = message.partition().to_string();
    let offset = message.offset().to_string();
    let original_size = payload.len().to_string();
    let mut limit = config.limits.max_dead_letter_bytes;
    loop {
        let kept = &payload[..payload.len().min(limit)];
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: HEADER_ERROR,
                value: Some(reason),
            })
            .insert(Header {
                key: HEADER_FORMAT,
                value: Some(format.unwrap_or("unknown")),
            })
            .insert(Header {
                key: HEADER_SOURCE_TOPIC,
                value: Some(message.topic()),
            })
            .insert(Header {
                key: HEADER_SOURCE_PARTITION,
                value: Some(&partition),
            })
            .insert(Header {
                key: HEADER_SOURCE_OFFSET,
                value: Some(&offset),
            });
        if kept.len() < payload.len() {
            headers = headers.insert(Header {
                key: HEADER_TRUNCATED_FROM,
                value: Some(&original_size),
            });
        }
        let topic = &config.topics.dead_letters;
        match send(producer, topic, message.key(), kept, headers).await {
            Ok(delivery) => return Ok(delivery),
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge))
                if limit > MIN_DEAD_LETTER_BYTES =>
            {
                limit = MIN_DEAD_LETTER_BYTES;
            }
            Err(source) => {
                return Err(Error::Kafka {
                    operation: "dead-letter enqueue",
                    source,
                });
            }
        }
    }
}

/// Enqueues one record, waiting while the producer's local queue is full.
///
/// # Errors
///
/// Returns the producer's error when the record itself is refused (too large for
/// `message.max.bytes`, invalid topic).
async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&[u8]>,
    payload: &[u8],
    headers: OwnedHeaders,
) -> std::result::Result<DeliveryFuture, KafkaError> {
    let mut record = FutureRecord::<[u8], [u8]>::to(topic)
        .payload(payload)
        .headers(headers);
    if let Some(key) = key {
        record = record.key(key);
    }
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                record = returned;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((error, _)) => return Err(error),
        }
    }
}

/// Largest record the producer accepts: the largest signal or dead letter, plus room for the
/// key, headers and protocol framing.
fn producer_max_bytes(config: &IngestConfig) -> usize {
    config
        .limits
        .max_output_bytes
        .max(config.limits.max_dead_letter_bytes)
        + 65_536
}
