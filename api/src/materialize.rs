//! Reads the incidents, status and signals topics into the [`Store`], outside any consumer
//! group: every replica reads every partition, from the positions its own store recorded.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tracing::{info, warn};

use crate::config::ApiConfig;
use crate::error::{Error, Result};
use crate::store::{InputRecord, Position, Source, Store};

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// Most records applied in one store write.
const MAX_BATCH: usize = 2000;
/// How often new partitions are looked for.
const REFRESH_INTERVAL: Duration = Duration::from_secs(30);

fn kafka(operation: &'static str) -> impl Fn(rdkafka::error::KafkaError) -> Error {
    move |source| Error::Kafka { operation, source }
}

/// Keeps a [`Store`] up to date with Kafka.
pub struct Materializer {
    consumer: BaseConsumer,
    store: Arc<Store>,
    topics: Vec<(Source, String)>,
    assigned: HashSet<(Source, i32)>,
    /// High watermarks at start: the store is ready once it has read up to them.
    start_ends: HashMap<(Source, i32), i64>,
}

impl std::fmt::Debug for Materializer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Materializer")
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl Materializer {
    /// Creates the consumer. Nothing is read until [`Materializer::run`].
    ///
    /// # Errors
    ///
    /// Returns [`Error::Kafka`] when the consumer cannot be created.
    pub fn try_new(config: &ApiConfig, store: Arc<Store>) -> Result<Materializer> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &config.kafka.brokers)
            .set("group.id", "tidemark-api")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            // A partition without a stored position, or whose position retention has passed,
            // is read from its oldest record: never skipped to the end.
            .set("auto.offset.reset", "earliest");
        let (key, value) = tidemark_common::kafka::FETCH_WAIT_MAX_MS;
        client.set(key, value);
        for (key, value) in &config.kafka.properties {
            client.set(key, value);
        }
        let consumer: BaseConsumer = client.create().map_err(kafka("consumer creation"))?;
        let mut topics = vec![
            (Source::Incidents, config.topics.incidents.clone()),
            (Source::Status, config.topics.status.clone()),
        ];
        if !config.topics.signals.is_empty() {
            topics.push((Source::Signals, config.topics.signals.clone()));
        }
        Ok(Materializer {
            consumer,
            store,
            topics,
            assigned: HashSet::new(),
            start_ends: HashMap::new(),
        })
    }

    /// Reads until `stop` is set. `on_ready` is called once, when the store has read every
    /// partition up to where it ended at start (the server reports SERVING from then on).
    ///
    /// # Errors
    ///
    /// Returns [`Error::MissingTopic`] when a topic is still missing after a minute,
    /// [`Error::Kafka`] on assignment failures and [`Error::Store`] when the store cannot be
    /// written.
    pub fn run(&mut self, stop: &AtomicBool, on_ready: impl FnOnce()) -> Result<()> {
        let started = Instant::now();
        loop {
            match self.refresh_assignment(true) {
                Ok(()) => break,
                Err(Error::MissingTopic { topic })
                    if started.elapsed() < Duration::from_secs(60) =>
                {
                    if stop.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    info!(topic, "waiting for the topic to exist");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(error) => return Err(error),
            }
        }
        let mut on_ready = Some(on_ready);
        let mut last_refresh = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if on_ready.is_some() && self.caught_up() {
                info!(
                    num_incidents = self.store.len(),
                    "incident store is up to date"
                );
                if let Some(ready) = on_ready.take() {
                    ready();
                }
            }
            if last_refresh.elapsed() > REFRESH_INTERVAL {
                last_refresh = Instant::now();
                if let Err(error) = self.refresh_assignment(false) {
                    warn!(error = %error, "could not look for new partitions");
                }
            }
            let batch = self.poll_batch();
            if !batch.is_empty() {
                self.store.apply(&batch)?;
            }
        }
        Ok(())
    }

    fn poll_batch(&self) -> Vec<InputRecord> {
        let mut batch = Vec::new();
        let mut timeout = Duration::from_millis(100);
        while batch.len() < MAX_BATCH {
            let Some(result) = self.consumer.poll(timeout) else {
                break;
            };
            timeout = Duration::ZERO;
            match result {
                Ok(message) => {
                    let Some(source) = self
                        .topics
                        .iter()
                        .find(|(_, name)| name == message.topic())
                        .map(|(source, _)| *source)
                    else {
                        continue;
                    };
                    batch.push(InputRecord {
                        position: Position {
                            source,
                            partition: message.partition(),
                            offset: message.offset(),
                        },
                        payload: message.payload().map(<[u8]>::to_vec),
                    });
                }
                Err(error) => {
                    warn!(error = %error, "Kafka consumer error; retrying");
                    break;
                }
            }
        }
        batch
    }

    fn topic_name(&self, source: Source) -> Option<&str> {
        self.topics
            .iter()
            .find(|(s, _)| *s == source)
            .map(|(_, name)| name.as_str())
    }

    fn caught_up(&self) -> bool {
        self.start_ends.iter().all(|((source, partition), end)| {
            *end == 0
                || self
                    .store
                    .next_offset(*source, *partition)
                    .is_some_and(|next| next >= *end)
        })
    }

    /// Assigns every partition not yet assigned, from the store's positions.
    fn refresh_assignment(&mut self, at_start: bool) -> Result<()> {
        let mut additions = Vec::new();
        for (source, topic) in &self.topics {
            let metadata = self
                .consumer
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
                    topic: topic.clone(),
                });
            }
            for partition in partitions {
                if !self.assigned.contains(&(*source, partition)) {
                    additions.push((*source, topic.clone(), partition));
                }
            }
        }
        if additions.is_empty() {
            return Ok(());
        }
        // The whole assignment is given again, every partition from the store's position: a
        // partition already read resumes exactly after what the store holds (every polled
        // record is applied before this runs), and nothing depends on committed offsets.
        let mut assignment = TopicPartitionList::new();
        for (source, partition) in &self.assigned {
            let Some(topic) = self.topic_name(*source) else {
                continue;
            };
            let offset = self
                .store
                .next_offset(*source, *partition)
                .map_or(Offset::Beginning, Offset::Offset);
            assignment
                .add_partition_offset(topic, *partition, offset)
                .map_err(kafka("assignment"))?;
        }
        for (source, topic, partition) in &additions {
            let next = self.store.next_offset(*source, *partition);
            let offset = next.map_or(Offset::Beginning, Offset::Offset);
            assignment
                .add_partition_offset(topic, *partition, offset)
                .map_err(kafka("assignment"))?;
            if at_start {
                let (low, high) = self
                    .consumer
                    .fetch_watermarks(topic, *partition, METADATA_TIMEOUT)
                    .map_err(kafka("watermarks"))?;
                if let Some(next) = next
                    && next < low
                {
                    warn!(
                        topic,
                        partition,
                        next,
                        low,
                        "records this store never read were deleted by retention"
                    );
                }
                self.start_ends
                    .insert((*source, *partition), if high > low { high } else { 0 });
            }
        }
        self.consumer
            .assign(&assignment)
            .map_err(kafka("assignment"))?;
        for (source, topic, partition) in additions {
            info!(topic, partition, "reading partition");
            self.assigned.insert((source, partition));
        }
        Ok(())
    }
}
