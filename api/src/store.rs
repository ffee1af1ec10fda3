//! The api's materialized view: incidents, status events, change log and workload timelines in
//! RocksDB, with the Kafka positions they were read up to in the same atomic write.
//!
//! Every replica of `tidemark api` reads the whole incidents topic, the whole status topic and
//! (for timelines) the whole signals topic, each partition from where its own store left off.
//! Nothing here is shared between replicas: two replicas that read the same topics hold the same
//! incidents, statuses and change log.
//!
//! The change log is keyed by the Kafka position of the record that caused each change (topic,
//! partition, offset). A watch cursor is the last position delivered per partition, so a cursor
//! taken from one replica resumes on any other.
//!
//! The list index keeps every incident without its evidence in memory (about 1 KB each), newest
//! first; a store of a million incidents therefore needs about a gigabyte of memory.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use prost::Message as _;
use rocksdb::{ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch};
use tidemark_correlator::model;
use tidemark_proto::v1;
use tokio::sync::{broadcast, watch};
use tracing::warn;

use crate::convert;
use crate::error::{Error, Result};
use tidemark_common::time::now_unix_nano;

const INCIDENTS: &str = "incidents";
const STATUS: &str = "status";
const CHANGES: &str = "changes";
const TIMELINE: &str = "timeline";
const POSITIONS: &str = "positions";
const FAMILIES: [&str; 5] = [INCIDENTS, STATUS, CHANGES, TIMELINE, POSITIONS];

/// How many changes a slow watcher may fall behind before it re-reads them from the store.
const CHANGE_CHANNEL_CAPACITY: usize = 4096;

/// The topic a record was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Source {
    /// Incident versions from the correlator (JSON).
    Incidents = 0,
    /// Status events (protobuf `tidemark.v1.StatusEvent`).
    Status = 1,
    /// Signals (protobuf `tidemark.v1.Signal`), for timelines.
    Signals = 2,
}

impl Source {
    fn from_byte(byte: u8) -> Option<Source> {
        match byte {
            0 => Some(Source::Incidents),
            1 => Some(Source::Status),
            2 => Some(Source::Signals),
            _ => None,
        }
    }
}

/// A Kafka position: topic, partition, offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    /// Which topic.
    pub source: Source,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

impl Position {
    fn key(&self) -> [u8; 13] {
        let mut key = [0u8; 13];
        key[0] = self.source as u8;
        key[1..5].copy_from_slice(&self.partition.to_be_bytes());
        key[5..].copy_from_slice(&self.offset.to_be_bytes());
        key
    }

    fn from_key(key: &[u8]) -> Option<Position> {
        let source = Source::from_byte(*key.first()?)?;
        let partition = i32::from_be_bytes(key.get(1..5)?.try_into().ok()?);
        let offset = i64::from_be_bytes(key.get(5..13)?.try_into().ok()?);
        Some(Position {
            source,
            partition,
            offset,
        })
    }
}

/// One record read from Kafka, to apply.
#[derive(Debug, Clone)]
pub struct InputRecord {
    /// Where it was read.
    pub position: Position,
    /// Its value; `None` for a tombstone.
    pub payload: Option<Vec<u8>>,
}

/// A change of one incident, caused by the record at `position`.
#[derive(Debug, Clone)]
pub struct Change {
    /// The record that caused it.
    pub position: Position,
    /// What changed; `cursor` is left empty (it depends on the watcher).
    pub change: v1::IncidentChange,
}

/// A watch cursor: the last change delivered, per partition of the incidents and status
/// topics. Encoded as text, `v1;S:P:O,S:P:O...`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    last: BTreeMap<(Source, i32), i64>,
}

/// Most partitions a cursor may name.
const MAX_CURSOR_ENTRIES: usize = 4096;

impl Cursor {
    /// Parses a cursor from its text.
    ///
    /// # Errors
    ///
    /// Returns the reason when the text is not a cursor this server wrote.
    pub fn parse(text: &str) -> std::result::Result<Cursor, String> {
        let body = text
            .strip_prefix("v1;")
            .ok_or_else(|| "cursor does not start with `v1;`".to_owned())?;
        let mut last = BTreeMap::new();
        if body.is_empty() {
            return Ok(Cursor { last });
        }
        for entry in body.split(',') {
            let mut parts = entry.split(':');
            let (Some(s), Some(p), Some(o), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(format!(
                    "cursor entry `{entry}` is not SOURCE:PARTITION:OFFSET"
                ));
            };
            let source = s
                .parse::<u8>()
                .ok()
                .and_then(Source::from_byte)
                .filter(|s| *s != Source::Signals)
                .ok_or_else(|| format!("cursor entry `{entry}` names no known topic"))?;
            let partition = p
                .parse::<i32>()
                .ok()
                .filter(|p| *p >= 0)
                .ok_or_else(|| format!("cursor entry `{entry}` has a bad partition"))?;
            let offset = o
                .parse::<i64>()
                .ok()
                .filter(|o| *o >= -1 && *o < i64::MAX)
                .ok_or_else(|| format!("cursor entry `{entry}` has a bad offset"))?;
            last.insert((source, partition), offset);
            if last.len() > MAX_CURSOR_ENTRIES {
                return Err("cursor names too many partitions".to_owned());
            }
        }
        Ok(Cursor { last })
    }

    /// The cursor's text.
    pub fn encode(&self) -> String {
        let entries: Vec<String> = self
            .last
            .iter()
            .map(|((source, partition), offset)| format!("{}:{partition}:{offset}", *source as u8))
            .collect();
        format!("v1;{}", entries.join(","))
    }

    /// Whether the change at `position` was already delivered.
    pub fn covers(&self, position: &Position) -> bool {
        self.last
            .get(&(position.source, position.partition))
            .is_some_and(|last| position.offset <= *last)
    }

    /// Records the change at `position` as delivered.
    pub fn advance(&mut self, position: &Position) {
        let last = self
            .last
            .entry((position.source, position.partition))
            .or_insert(-1);
        *last = (*last).max(position.offset);
    }

    fn last_offset(&self, source: Source, partition: i32) -> i64 {
        self.last.get(&(source, partition)).copied().unwrap_or(-1)
    }
}

/// Which incidents a list or export wants. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Evidence at or after this time (0: open).
    pub start_unix_nano: i64,
    /// Evidence before this time (0: open).
    pub end_unix_nano: i64,
    /// Any of these severities.
    pub severities: Vec<i32>,
    /// Any of these statuses.
    pub statuses: Vec<i32>,
    /// Exact cluster.
    pub cluster: String,
    /// Exact namespace.
    pub namespace: String,
    /// Workload key, or controller name / ECS family.
    pub workload: String,
    /// A stage with evidence.
    pub stage: String,
    /// A technique shown.
    pub technique: String,
}

impl Filter {
    /// Whether `incident` matches.
    pub fn matches(&self, incident: &v1::Incident) -> bool {
        let workload = incident.workload.as_ref();
        (self.start_unix_nano == 0 || incident.last_seen_unix_nano >= self.start_unix_nano)
            && (self.end_unix_nano == 0 || incident.first_seen_unix_nano < self.end_unix_nano)
            && (self.severities.is_empty() || self.severities.contains(&incident.severity))
            && (self.statuses.is_empty() || self.statuses.contains(&incident.status))
            && (self.cluster.is_empty() || workload.is_some_and(|w| w.cluster == self.cluster))
            && (self.namespace.is_empty()
                || workload.is_some_and(|w| w.namespace == self.namespace))
            && (self.workload.is_empty()
                || workload.is_some_and(|w| w.key == self.workload || w.name == self.workload))
            && (self.stage.is_empty() || incident.stages.contains(&self.stage))
            && (self.technique.is_empty() || incident.techniques.contains(&self.technique))
    }
}

/// Where a list page starts: after this (first seen, id).
pub type PageKey = (i64, String);

/// Every incident without evidence, newest first.
#[derive(Default)]
struct Index {
    ordered: BTreeMap<(Reverse<i64>, String), Arc<v1::Incident>>,
    first_seen: HashMap<String, i64>,
}

impl Index {
    fn insert(&mut self, incident: v1::Incident) {
        let id = incident.id.clone();
        if let Some(old) = self
            .first_seen
            .insert(id.clone(), incident.first_seen_unix_nano)
        {
            self.ordered.remove(&(Reverse(old), id.clone()));
        }
        self.ordered.insert(
            (Reverse(incident.first_seen_unix_nano), id),
            Arc::new(incident),
        );
    }
}

/// Counters of what the store applied, for logs and tests.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Records applied.
    pub num_records: AtomicU64,
    /// Records that could not be decoded and were skipped (still in Kafka at their position).
    pub num_undecodable: AtomicU64,
    /// Incident versions already held (redelivered or older).
    pub num_stale: AtomicU64,
}

/// The materialized store.
pub struct Store {
    db: DB,
    index: RwLock<Index>,
    /// Next offset to read, per (topic, partition).
    positions: Mutex<HashMap<(Source, i32), i64>>,
    changes: broadcast::Sender<Arc<Change>>,
    applied: watch::Sender<u64>,
    retention_nanos: i64,
    stats: StoreStats,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.db.path())
            .finish()
    }
}

fn corrupt(what: &'static str, reason: impl ToString) -> Error {
    Error::Corrupt {
        what,
        reason: reason.to_string(),
    }
}

/// Orders signed times as unsigned bytes.
fn time_key(unix_nano: i64) -> [u8; 8] {
    ((unix_nano as u64) ^ (1 << 63)).to_be_bytes()
}

fn time_from_key(bytes: &[u8]) -> Option<i64> {
    let raw = u64::from_be_bytes(bytes.try_into().ok()?);
    Some((raw ^ (1 << 63)) as i64)
}

/// Removes the evidence of an incident, for lists and change streams.
pub fn without_evidence(incident: &v1::Incident) -> v1::Incident {
    v1::Incident {
        evidence: Vec::new(),
        ..incident.clone()
    }
}

impl Store {
    /// Opens (or creates) the store in `dir`, and loads the list index.
    ///
    /// # Errors
    ///
    /// Returns [`Error::Store`] when RocksDB cannot open the directory, and [`Error::Corrupt`]
    /// when a stored incident does not decode.
    pub fn open(dir: &Path, timeline_retention: Duration) -> Result<Store> {
        let retention_nanos = i64::try_from(timeline_retention.as_nanos()).unwrap_or(i64::MAX);
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let families = FAMILIES.map(|name| {
            let mut family = Options::default();
            family.set_compression_type(rocksdb::DBCompressionType::Lz4);
            if name == TIMELINE {
                // Signals older than the retention disappear at compaction; reads skip them
                // before that.
                family.set_compaction_filter("timeline-retention", move |_level, key, _value| {
                    let horizon = now_unix_nano().saturating_sub(retention_nanos);
                    match timeline_time(key) {
                        Some(time) if time < horizon => rocksdb::CompactionDecision::Remove,
                        _ => rocksdb::CompactionDecision::Keep,
                    }
                });
            }
            ColumnFamilyDescriptor::new(name, family)
        });
        let db = DB::open_cf_descriptors(&options, dir, families)?;
        let (changes, _) = broadcast::channel(CHANGE_CHANNEL_CAPACITY);
        let (applied, _) = watch::channel(0);
        let store = Store {
            db,
            index: RwLock::new(Index::default()),
            positions: Mutex::new(HashMap::new()),
            changes,
            applied,
            retention_nanos,
            stats: StoreStats::default(),
        };
        store.load()?;
        Ok(store)
    }

    fn family(&self, name: &'static str) -> Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| corrupt("column family", format!("`{name}` is missing")))
    }

    fn load(&self) -> Result<()> {
        let mut index = Index::default();
        for item in self
            .db
            .iterator_cf(self.family(INCIDENTS)?, IteratorMode::Start)
        {
            let (_, value) = item?;
            let incident =
                v1::Incident::decode(value.as_ref()).map_err(|e| corrupt("incident", e))?;
            index.insert(without_evidence(&incident));
        }
        let mut positions = HashMap::new();
        for item in self
            .db
            .iterator_cf(self.family(POSITIONS)?, IteratorMode::Start)
        {
            let (key, value) = item?;
            let position = Position::from_key(&[key.as_ref(), &[0; 8]].concat())
                .ok_or_else(|| corrupt("position key", "too short"))?;
            let next = i64::from_be_bytes(
                value
                    .as_ref()
                    .try_into()
                    .map_err(|_| corrupt("position", "not 8 bytes"))?,
            );
            positions.insert((position.source, position.partition), next);
        }
        *self.index.write().unwrap_or_else(|e| e.into_inner()) = index;
        *self.positions.lock().unwrap_or_else(|e| e.into_inner()) = positions;
        Ok(())
    }

    /// Counters of what was applied.
    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// The next offset to read from `partition` of `source`, if any record of it was applied.
    pub fn next_offset(&self, source: Source, partition: i32) -> Option<i64> {
        self.positions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(source, partition))
            .copied()
    }

    /// Applies records read from Kafka: one atomic write of the changes and the positions,
    /// then the index, then the change stream. A record that cannot be decoded is logged with
    /// its position and skipped; it stays in Kafka.
    ///
    /// # Errors
    ///
    /// Returns [`Error::Store`] when the write fails (nothing of the batch is applied then).
    pub fn apply(&self, records: &[InputRecord]) -> Result<()> {
        let now = now_unix_nano();
        let incidents_family = self.family(INCIDENTS)?;
        let status_family = self.family(STATUS)?;
        let changes_family = self.family(CHANGES)?;
        let timeline_family = self.family(TIMELINE)?;
        let positions_family = self.family(POSITIONS)?;
        let mut batch = WriteBatch::default();
        let mut pending: HashMap<String, v1::Incident> = HashMap::new();
        let mut pending_status: HashMap<String, Vec<(Position, v1::StatusEvent)>> = HashMap::new();
        let mut changes = Vec::new();
        let mut next_positions: HashMap<(Source, i32), i64> = HashMap::new();
        for record in records {
            let position = record.position;
            next_positions.insert((position.source, position.partition), position.offset + 1);
            let Some(payload) = record.payload.as_deref() else {
                continue;
            };
            match position.source {
                Source::Incidents => {
                    let parsed: model::Incident = match serde_json::from_slice(payload) {
                        Ok(parsed) => parsed,
                        Err(error) => {
                            self.undecodable(&position, &error.to_string());
                            continue;
                        }
                    };
                    let mut incident = convert::incident_from_model(&parsed);
                    let existing = match pending.remove(&incident.id) {
                        Some(existing) => Some(existing),
                        None => self.get(&incident.id)?,
                    };
                    if let Some(existing) = &existing
                        && existing.version >= incident.version
                    {
                        self.stats.num_stale.fetch_add(1, Ordering::Relaxed);
                        pending.insert(existing.id.clone(), existing.clone());
                        continue;
                    }
                    // Status events read before the incident's first version are folded
                    // into it here.
                    let folded = match &existing {
                        Some(_) => Vec::new(),
                        None => {
                            let mut folded = self.status_events(&incident.id)?;
                            folded.extend(pending_status.remove(&incident.id).unwrap_or_default());
                            folded
                        }
                    };
                    incident.status_history = match &existing {
                        Some(existing) => existing.status_history.clone(),
                        None => folded.iter().map(|(_, event)| event.clone()).collect(),
                    };
                    settle_status(&mut incident);
                    incident.updated_unix_nano = now;
                    let kind = if existing.is_some() {
                        v1::ChangeKind::Amended
                    } else {
                        v1::ChangeKind::Opened
                    };
                    changes.push(self.change(
                        &mut batch,
                        changes_family,
                        position,
                        kind,
                        &incident,
                    ));
                    // A change at each folded event's position too, so that every replica
                    // holds a change at the same positions whichever topic it read first, and
                    // a cursor from one replica resumes on another without missing a status.
                    for (status_position, _) in &folded {
                        changes.push(self.change(
                            &mut batch,
                            changes_family,
                            *status_position,
                            v1::ChangeKind::Status,
                            &incident,
                        ));
                    }
                    pending.insert(incident.id.clone(), incident);
                }
                Source::Status => {
                    let event = match v1::StatusEvent::decode(payload) {
                        Ok(event) if !event.incident_id.is_empty() => event,
                        Ok(_) => {
                            self.undecodable(&position, "status event without incident id");
                            continue;
                        }
                        Err(error) => {
                            self.undecodable(&position, &error.to_string());
                            continue;
                        }
                    };
                    let mut key = event.incident_id.as_bytes().to_vec();
                    key.push(0);
                    key.extend_from_slice(&position.key()[1..]);
                    batch.put_cf(status_family, key, payload);
                    let existing = match pending.remove(&event.incident_id) {
                        Some(existing) => Some(existing),
                        None => self.get(&event.incident_id)?,
                    };
                    match existing {
                        Some(mut incident) => {
                            incident.status_history.push(event);
                            settle_status(&mut incident);
                            incident.updated_unix_nano = now;
                            changes.push(self.change(
                                &mut batch,
                                changes_family,
                                position,
                                v1::ChangeKind::Status,
                                &incident,
                            ));
                            pending.insert(incident.id.clone(), incident);
                        }
                        None => pending_status
                            .entry(event.incident_id.clone())
                            .or_default()
                            .push((position, event)),
                    }
                }
                Source::Signals => {
                    let signal = match v1::Signal::decode(payload) {
                        Ok(signal) => signal,
                        Err(error) => {
                            self.undecodable(&position, &error.to_string());
                            continue;
                        }
                    };
                    if signal.event_time_unix_nano < now.saturating_sub(self.retention_nanos) {
                        continue;
                    }
                    let workload = signal
                        .workload
                        .as_ref()
                        .map(v1::WorkloadKey::partition_key)
                        .unwrap_or_default();
                    let mut key = timeline_prefix(&workload);
                    key.extend_from_slice(&time_key(signal.event_time_unix_nano));
                    key.extend_from_slice(&position.partition.to_be_bytes());
                    key.extend_from_slice(&position.offset.to_be_bytes());
                    batch.put_cf(timeline_family, key, payload);
                }
            }
        }
        for (id, incident) in &pending {
            batch.put_cf(incidents_family, id.as_bytes(), incident.encode_to_vec());
        }
        for ((source, partition), next) in &next_positions {
            let key = Position {
                source: *source,
                partition: *partition,
                offset: 0,
            }
            .key();
            batch.put_cf(positions_family, &key[..5], next.to_be_bytes());
        }
        self.db.write(batch)?;
        self.stats
            .num_records
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        {
            let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
            for incident in pending.into_values() {
                index.insert(without_evidence(&incident));
            }
        }
        {
            // Positions and the change stream move together, under the lock that watchers
            // take to subscribe: every change is either before a new watcher's start or
            // delivered to it.
            let mut positions = self.positions.lock().unwrap_or_else(|e| e.into_inner());
            positions.extend(next_positions);
            for change in changes {
                // An error only means nobody is watching.
                self.changes.send(Arc::new(change)).ok();
            }
        }
        self.applied.send_modify(|generation| *generation += 1);
        Ok(())
    }

    fn undecodable(&self, position: &Position, reason: &str) {
        self.stats.num_undecodable.fetch_add(1, Ordering::Relaxed);
        warn!(
            source = ?position.source,
            partition = position.partition,
            offset = position.offset,
            reason,
            "skipping a record that does not decode; it stays in Kafka at this position"
        );
    }

    fn change(
        &self,
        batch: &mut WriteBatch,
        family: &rocksdb::ColumnFamily,
        position: Position,
        kind: v1::ChangeKind,
        incident: &v1::Incident,
    ) -> Change {
        let change = v1::IncidentChange {
            cursor: String::new(),
            kind: kind as i32,
            incident: Some(without_evidence(incident)),
        };
        batch.put_cf(family, position.key(), change.encode_to_vec());
        Change { position, change }
    }

    fn status_events(&self, id: &str) -> Result<Vec<(Position, v1::StatusEvent)>> {
        let mut prefix = id.as_bytes().to_vec();
        prefix.push(0);
        let mut events = Vec::new();
        let iterator = self.db.iterator_cf(
            self.family(STATUS)?,
            IteratorMode::From(&prefix, Direction::Forward),
        );
        for item in iterator {
            let (key, value) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            let position =
                Position::from_key(&[&[Source::Status as u8], &key[prefix.len()..]].concat())
                    .ok_or_else(|| corrupt("status key", "too short"))?;
            let event =
                v1::StatusEvent::decode(value.as_ref()).map_err(|e| corrupt("status event", e))?;
            events.push((position, event));
        }
        Ok(events)
    }

    /// The incident with `id`, with its evidence.
    ///
    /// # Errors
    ///
    /// Returns [`Error::Store`] or [`Error::Corrupt`] when it cannot be read.
    pub fn get(&self, id: &str) -> Result<Option<v1::Incident>> {
        let Some(value) = self.db.get_cf(self.family(INCIDENTS)?, id.as_bytes())? else {
            return Ok(None);
        };
        v1::Incident::decode(value.as_slice())
            .map(Some)
            .map_err(|e| corrupt("incident", e))
    }

    /// Number of incidents held.
    pub fn len(&self) -> usize {
        self.index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .ordered
            .len()
    }

    /// Whether no incident is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `limit` incidents matching `filter`, without evidence, newest first, starting after
    /// `after`; and the key to continue from when more may follow.
    pub fn list(
        &self,
        filter: &Filter,
        limit: usize,
        after: Option<&PageKey>,
    ) -> (Vec<Arc<v1::Incident>>, Option<PageKey>) {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        let range = match after {
            Some((first_seen, id)) => index.ordered.range((
                std::ops::Bound::Excluded((Reverse(*first_seen), id.clone())),
                std::ops::Bound::Unbounded,
            )),
            None => index.ordered.range(..),
        };
        let mut page = Vec::new();
        for ((Reverse(first_seen), id), incident) in range {
            if !filter.matches(incident) {
                continue;
            }
            if page.len() == limit {
                let next = page
                    .last()
                    .map(|last: &Arc<v1::Incident>| (last.first_seen_unix_nano, last.id.clone()));
                return (page, next);
            }
            debug_assert_eq!(
                (*first_seen, id),
                (incident.first_seen_unix_nano, &incident.id)
            );
            page.push(Arc::clone(incident));
        }
        (page, None)
    }

    /// Every incident matching `filter`, with evidence, newest first.
    ///
    /// # Errors
    ///
    /// Returns [`Error::Store`] or [`Error::Corrupt`] when one cannot be read.
    pub fn export(&self, filter: &Filter) -> Result<Vec<v1::Incident>> {
        let ids: Vec<String> = {
            let index = self.index.read().unwrap_or_else(|e| e.into_inner());
            index
                .ordered
                .values()
                .filter(|incident| filter.matches(incident))
                .map(|incident| incident.id.clone())
                .collect()
        };
        let mut incidents = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(incident) = self.get(&id)? {
                incidents.push(incident);
            }
        }
        Ok(incidents)
    }

    /// Subscribes to changes and returns the cursor of the present: every change after it
    /// arrives on the receiver.
    pub fn subscribe(&self) -> (broadcast::Receiver<Arc<Change>>, Cursor) {
        let positions = self.positions.lock().unwrap_or_else(|e| e.into_inner());
        let receiver = self.changes.subscribe();
        let mut cursor = Cursor::default();
        for ((source, partition), next) in positions.iter() {
            if *source != Source::Signals {
                cursor.last.insert((*source, *partition), next - 1);
            }
        }
        (receiver, cursor)
    }

    /// Every stored change after `cursor`, partition by partition in offset order.
    ///
    /// # Errors
    ///
    /// Returns [`Error::Store`] or [`Error::Corrupt`] when the change log cannot be read.
    pub fn changes_after(&self, cursor: &Cursor) -> Result<Vec<Change>> {
        let partitions: Vec<(Source, i32)> = {
            let positions = self.positions.lock().unwrap_or_else(|e| e.into_inner());
            let mut partitions: Vec<_> = positions
                .keys()
                .filter(|(source, _)| *source != Source::Signals)
                .copied()
                .collect();
            partitions.sort();
            partitions
        };
        let family = self.family(CHANGES)?;
        let mut changes = Vec::new();
        for (source, partition) in partitions {
            let start = Position {
                source,
                partition,
                offset: cursor.last_offset(source, partition).saturating_add(1),
            };
            let iterator = self
                .db
                .iterator_cf(family, IteratorMode::From(&start.key(), Direction::Forward));
            for item in iterator {
                let (key, value) = item?;
                let Some(position) = Position::from_key(&key) else {
                    return Err(corrupt("change key", "too short"));
                };
                if position.source != source || position.partition != partition {
                    break;
                }
                let change =
                    v1::IncidentChange::decode(value.as_ref()).map_err(|e| corrupt("change", e))?;
                changes.push(Change { position, change });
            }
        }
        Ok(changes)
    }

    /// Waits until the record at `position` has been applied, or `timeout` passes. Returns
    /// whether it was applied.
    pub async fn wait_applied(&self, position: Position, timeout: Duration) -> bool {
        let mut applied = self.applied.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self
                .next_offset(position.source, position.partition)
                .is_some_and(|next| next > position.offset)
            {
                return true;
            }
            match tokio::time::timeout_at(deadline, applied.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return false,
            }
        }
    }

    /// Up to `limit` signals of `workload` with event time in `[start, end)` (0: open), in
    /// event-time order, after `after` (a key returned by the previous call); and the key to
    /// continue from when more may follow.
    ///
    /// # Errors
    ///
    /// Returns [`Error::Store`] or [`Error::Corrupt`] when the timeline cannot be read.
    pub fn timeline(
        &self,
        workload: &str,
        start_unix_nano: i64,
        end_unix_nano: i64,
        limit: usize,
        after: Option<&[u8]>,
    ) -> Result<(Vec<v1::Signal>, Option<Vec<u8>>)> {
        let prefix = timeline_prefix(workload);
        let horizon = now_unix_nano().saturating_sub(self.retention_nanos);
        let mut start = prefix.clone();
        match after {
            Some(after) => {
                start.extend_from_slice(after);
                start.push(0);
            }
            None => start.extend_from_slice(&time_key(start_unix_nano.max(horizon))),
        }
        let iterator = self.db.iterator_cf(
            self.family(TIMELINE)?,
            IteratorMode::From(&start, Direction::Forward),
        );
        let mut signals = Vec::new();
        let mut last_suffix = Vec::new();
        for item in iterator {
            let (key, value) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            let suffix = &key[prefix.len()..];
            let time = time_from_key(suffix.get(..8).unwrap_or_default())
                .ok_or_else(|| corrupt("timeline key", "too short"))?;
            if end_unix_nano != 0 && time >= end_unix_nano {
                break;
            }
            if time < start_unix_nano.max(horizon) {
                continue;
            }
            if signals.len() == limit {
                return Ok((signals, Some(last_suffix)));
            }
            signals.push(v1::Signal::decode(value.as_ref()).map_err(|e| corrupt("signal", e))?);
            last_suffix = suffix.to_vec();
        }
        Ok((signals, None))
    }
}

/// Orders an incident's status history by time (then event id), drops events seen twice (a
/// re-read of the status topic), and sets the status from the newest event. Replicas that read
/// the status partitions in different orders thus agree.
fn settle_status(incident: &mut v1::Incident) {
    let history = &mut incident.status_history;
    history.sort_by(|a, b| (a.time_unix_nano, &a.event_id).cmp(&(b.time_unix_nano, &b.event_id)));
    history.dedup_by(|a, b| a.event_id == b.event_id);
    incident.status = history
        .last()
        .map_or(v1::IncidentStatus::Open as i32, |event| event.status);
}

/// The timeline key prefix of a workload: its key and a NUL (keys hold no NUL).
fn timeline_prefix(workload: &str) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(workload.len() + 21);
    prefix.extend_from_slice(workload.as_bytes());
    prefix.push(0);
    prefix
}

/// The event time in a timeline key.
fn timeline_time(key: &[u8]) -> Option<i64> {
    let nul = key.iter().position(|b| *b == 0)?;
    time_from_key(key.get(nul + 1..nul + 9)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, time: i64, status: v1::IncidentStatus) -> v1::StatusEvent {
        v1::StatusEvent {
            event_id: id.to_owned(),
            incident_id: "00ff00ff00ff00ff".to_owned(),
            status: status as i32,
            time_unix_nano: time,
            ..Default::default()
        }
    }

    #[test]
    fn newest_status_event_wins_whatever_the_reading_order_and_repeats_count_once() {
        let ack = event("a", 10, v1::IncidentStatus::Acknowledged);
        let resolve = event("b", 20, v1::IncidentStatus::Resolved);
        for history in [
            vec![ack.clone(), resolve.clone()],
            vec![resolve.clone(), ack.clone()],
            vec![resolve.clone(), ack.clone(), resolve.clone()],
        ] {
            let mut incident = v1::Incident {
                status_history: history,
                ..Default::default()
            };
            settle_status(&mut incident);
            assert_eq!(incident.status, v1::IncidentStatus::Resolved as i32);
            assert_eq!(incident.status_history, vec![ack.clone(), resolve.clone()]);
        }
        let mut untouched = v1::Incident::default();
        settle_status(&mut untouched);
        assert_eq!(untouched.status, v1::IncidentStatus::Open as i32);
    }

    #[test]
    fn cursors_round_trip_and_refuse_offsets_that_cannot_advance() {
        let cursor = Cursor::parse("v1;0:2:41,1:0:7").unwrap();
        assert_eq!(cursor.encode(), "v1;0:2:41,1:0:7");
        for bad in [
            "v1;0:0:9223372036854775807",
            "v1;2:0:1",
            "v1;0:-1:1",
            "v2;",
            "v1;0:0",
        ] {
            assert!(Cursor::parse(bad).is_err(), "{bad}");
        }
    }
}
