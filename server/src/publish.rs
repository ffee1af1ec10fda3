//! `tidemark publish`: sends telemetry files to a raw topic, one Kafka record per JSON record,
//! for backfill, demos and load tests. `tidemark run --replay` uses it against its embedded
//! broker.

use std::path::PathBuf;

use anyhow::Context as _;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use tidemark_ingest::decode::earliest_event_time;
use tidemark_ingest::input::{self, Piece};
use tracing::{info, warn};

/// Records awaiting acknowledgement at once.
const MAX_IN_FLIGHT: usize = 10_000;

/// What was sent.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Published {
    /// Records acknowledged by Kafka.
    pub(crate) num_records: u64,
    /// Stretches of the files that are not JSON, reported and not sent.
    pub(crate) num_invalid: u64,
    /// Records Kafka refused (too large for the topic, ...), reported with file and line.
    pub(crate) num_failed: u64,
}

/// Where a record comes from, for error reports.
#[derive(Debug, Clone, Copy)]
struct Origin<'a> {
    file: &'a str,
    line: u64,
}

/// Creates the producer `publish` uses.
pub(crate) fn producer(
    brokers: &str,
    properties: &[(String, String)],
) -> anyhow::Result<FutureProducer> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("compression.type", "lz4");
    for (key, value) in properties {
        config.set(key, value);
    }
    config
        .create()
        .context("failed to create the Kafka producer")
}

/// The order records are sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Order {
    /// File after file, each in file order: as the files hold them.
    File,
    /// Every record of every file by event time (the earliest event of the record; a record
    /// that does not decode keeps the time of the record before it in its file). This is how a
    /// live feed would have delivered them, and what a streaming correlator's lateness rules
    /// expect. All files are held in memory to sort them.
    EventTime,
}

/// Sends every record of `files` to `topic`, in `order`, and waits until Kafka has
/// acknowledged all of them. Stretches that are not JSON are reported with their file and line
/// and skipped.
pub(crate) async fn publish(
    producer: &FutureProducer,
    topic: &str,
    files: &[PathBuf],
    order: Order,
) -> anyhow::Result<Published> {
    let mut published = Published::default();
    let contents = files
        .iter()
        .map(|file| crate::normalize::read(file))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let now = tidemark_common::time::now_unix_nano();
    let mut records: Vec<(i64, Origin<'_>, &[u8])> = Vec::new();
    for (name, content) in &contents {
        let mut previous = i64::MIN;
        for piece in input::split(content) {
            match piece {
                Piece::Record { bytes, line } => {
                    let time = match order {
                        Order::File => 0,
                        Order::EventTime => earliest_event_time(bytes, now).unwrap_or(previous),
                    };
                    previous = time;
                    records.push((time, Origin { file: name, line }, bytes));
                }
                Piece::Invalid { line, reason } => {
                    warn!(file = name, line, reason, "not JSON; not published");
                    published.num_invalid += 1;
                }
            }
        }
    }
    if order == Order::EventTime {
        records.sort_by_key(|(time, _, _)| *time);
    }
    let mut in_flight = Vec::with_capacity(MAX_IN_FLIGHT.min(records.len()));
    for (_, origin, bytes) in records {
        let mut record: FutureRecord<'_, (), [u8]> = FutureRecord::to(topic).payload(bytes);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    in_flight.push((origin, delivery));
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if !in_flight.is_empty() =>
                {
                    // The producer's queue is full: wait for what is in flight.
                    record = back;
                    settle(&mut in_flight, topic, &mut published).await?;
                }
                Err((error, _)) => {
                    // This record only (too large, ...): report it and go on.
                    warn!(file = origin.file, line = origin.line, topic, %error, "record not published");
                    published.num_failed += 1;
                    break;
                }
            }
        }
        if in_flight.len() == MAX_IN_FLIGHT {
            settle(&mut in_flight, topic, &mut published).await?;
        }
    }
    settle(&mut in_flight, topic, &mut published).await?;
    info!(
        topic,
        num_records = published.num_records,
        num_failed = published.num_failed,
        "published"
    );
    Ok(published)
}

/// Waits for every record in flight; a record Kafka refused is reported with its file and line
/// and counted. Fails only when the producer itself is gone.
async fn settle(
    in_flight: &mut Vec<(Origin<'_>, DeliveryFuture)>,
    topic: &str,
    published: &mut Published,
) -> anyhow::Result<()> {
    for (origin, delivery) in in_flight.drain(..) {
        match delivery.await.context("the Kafka producer stopped")? {
            Ok(_) => published.num_records += 1,
            Err((error, _)) => {
                warn!(file = origin.file, line = origin.line, topic, %error, "record not published");
                published.num_failed += 1;
            }
        }
    }
    Ok(())
}
