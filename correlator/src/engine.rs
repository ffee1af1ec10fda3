//! The correlation engine: joins one workload's evidence over event time into one incident.
//!
//! [`Engine::apply`] takes a batch of signals with their source positions and writes, in one
//! atomic [`StateBatch`], everything the batch changed (evidence, workload summaries, the image
//! table, incidents) together with the next offset of every partition it consumed. Signals at
//! positions below a partition's stored offset were already applied and are skipped, so a
//! redelivered batch after a crash changes nothing: the same input gives the same incidents and
//! no duplicate versions.
//!
//! Event time rules: each partition keeps a watermark, the newest event time it has seen.
//! Evidence within `allowed_lateness` of the watermark amends incidents whatever order it
//! arrives in; older evidence is returned as late (counted, for the late topic), never dropped
//! silently. Registry pushes are table facts, never late: the image table judges every push
//! against the one before it in time, whatever order they arrive in. An event time more than
//! `max_future_skew` ahead of the wall clock is bad input. A workload idle for longer than
//! `correlation_window + allowed_lateness` behind the watermark starts a new chain, and its old
//! evidence is deleted.
//!
//! An incident opens when strong execution or impact evidence appears, when an unapproved image
//! is deployed (a lower-severity precursor), or when weak evidence of three stages including
//! execution or impact agrees. Its id is derived from the workload and chain, its version is the
//! number of evidence items in the chain, so both are the same whatever the delivery order.
//! Rollouts and registry pushes are linked when the incident is rebuilt, from the image table,
//! so a push that arrives after the rollout that picked it up still joins the chain.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use tidemark_proto::v1::signal::Fact;
use tidemark_proto::v1::{Format, Platform, Signal, WorkloadResolution};

use crate::model::{
    Evidence, EvidenceContext, Incident, RawRef, Severity, Status, WorkloadRef, format_rfc3339,
    format_time_of_day,
};
use crate::policy::Policy;
use crate::stage::{Finding, Stage, Strength, classify, technique};
use crate::state::{Entries, Family, StateBatch, StateError, StateStore};

/// Most evidence items kept per chain; more are counted as omitted (a new stage is always kept).
pub const MAX_EVIDENCE_PER_CHAIN: u64 = 256;

/// Most rollouts remembered per chain (the latest by event time).
pub const MAX_ROLLOUTS_PER_WORKLOAD: usize = 32;

/// Most image references remembered per workload.
pub const MAX_IMAGES_PER_WORKLOAD: usize = 16;

/// Most workloads remembered as users of one image tag.
pub const MAX_USERS_PER_IMAGE: usize = 64;

/// Where a signal was read from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// Topic (or file).
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset (or sequence number).
    pub offset: i64,
}

/// A signal that could not be applied in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// Where it was read from.
    pub position: Position,
    /// The signal.
    pub signal: Signal,
    /// Why: `late` (older than the watermark minus the allowed lateness) or `future`.
    pub reason: &'static str,
}

/// What one batch changed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    /// Incidents opened or amended, one entry per new version, in the order the versions arose.
    pub incidents: Vec<Incident>,
    /// Signals older than the watermark allows; the caller routes them to the late topic.
    pub late: Vec<Rejected>,
    /// Signals with event times too far in the future: bad input.
    pub future: Vec<Rejected>,
    /// Records that did not hold a signal, first seen in this batch; the caller routes them
    /// aside. Those an earlier run already saw are not repeated.
    pub undecodable: Vec<Position>,
    /// Signals applied.
    pub num_applied: u64,
    /// Signals skipped because an earlier run already applied them.
    pub num_already_applied: u64,
}

/// Per-partition progress, stored with the state it produced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Progress {
    next_offset: i64,
    watermark_unix_nano: i64,
    num_late: u64,
    num_future: u64,
}

/// What the engine remembers about one workload between signals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct WorkloadSummary {
    workload: WorkloadRef,
    generation: u32,
    first_unix_nano: i64,
    last_unix_nano: i64,
    num_evidence: u64,
    num_omitted: u64,
    stages: BTreeSet<String>,
    /// Image references (tag form) the workload was seen deployed or running with, for
    /// rollouts that name none. Bounded by [`MAX_IMAGES_PER_WORKLOAD`].
    images: BTreeSet<String>,
    /// Rollouts (pod restarts) of the chain, the latest [`MAX_ROLLOUTS_PER_WORKLOAD`] by time.
    rollouts: Vec<Rollout>,
    incident_id: Option<String>,
}

/// A rollout remembered so that a suspicious push of one of its images joins the chain whatever
/// order the push and the rollout arrive in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Rollout {
    time_unix_nano: i64,
    actor: String,
    identity: String,
    format: String,
    source_event: String,
    raw: RawRef,
    /// Images the rollout named; empty for a restart, which runs the workload's images.
    images: Vec<String>,
}

/// One registry push remembered in the image table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Push {
    digest: String,
    time_unix_nano: i64,
    pusher: String,
    /// The role an assumed-role session pushed for, when the source says.
    #[serde(default)]
    pusher_on_behalf_of: String,
    /// Where the push came from, when the registry says.
    #[serde(default)]
    source_address: String,
    raw: RawRef,
    /// Set when this push replaced the tag's earlier digest.
    finding: Option<PushFinding>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PushFinding {
    strong: bool,
    reason: String,
}

/// State computed by [`Engine::prepare`], not yet stored.
#[derive(Debug)]
pub struct Prepared {
    batch: StateBatch,
}

impl Prepared {
    /// Adds an outbox entry to the batch, stored atomically with the state it came from.
    pub fn put_outbox(&mut self, key: &[u8], value: Vec<u8>) {
        self.batch.put(Family::Outbox, key.to_vec(), value);
    }
}

/// The engine over a state store.
pub struct Engine<S> {
    policy: Policy,
    store: S,
}

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The state store failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// Stored state could not be read back.
    #[error("stored {what} is corrupted")]
    Corrupted {
        /// Which record.
        what: &'static str,
        /// The decoder's error.
        #[source]
        source: serde_json::Error,
    },
}

/// A write batch with reads that see its own pending writes.
///
/// Workload summaries, read and changed by nearly every signal, are kept decoded for the
/// batch and serialized once, when the batch is finished ([`Overlay::finish`]).
struct Overlay<'a, S> {
    store: &'a S,
    batch: StateBatch,
    /// Decoded summaries (`None`: the workload has none), and whether each was changed.
    summaries: BTreeMap<Vec<u8>, (Option<WorkloadSummary>, bool)>,
    /// Decoded evidence of the chains read in this batch, by chain prefix, kept current as
    /// evidence is added (the evidence itself is written to the batch as it comes).
    chains: BTreeMap<Vec<u8>, Vec<Evidence>>,
    /// Decoded incidents read in this batch (`None`: none yet), and whether each was changed.
    incidents: BTreeMap<String, (Option<Incident>, bool)>,
}

impl<S: StateStore> Overlay<'_, S> {
    fn get<T: for<'de> Deserialize<'de>>(
        &self,
        family: Family,
        key: &[u8],
        what: &'static str,
    ) -> Result<Option<T>, EngineError> {
        let decode = |bytes: &[u8]| {
            serde_json::from_slice(bytes).map_err(|source| EngineError::Corrupted { what, source })
        };
        // A pending value is parsed where it lies, without a copy.
        match self.batch.pending(family, key) {
            Some(pending) => pending.map(decode).transpose(),
            None => self
                .store
                .get(family, key)?
                .as_deref()
                .map(decode)
                .transpose(),
        }
    }

    fn put<T: Serialize>(&mut self, family: Family, key: Vec<u8>, value: &T) {
        let bytes = serde_json::to_vec(value).expect("state types serialize to JSON");
        self.batch.put(family, key, bytes);
    }

    /// Decodes the summary of workload `key` into the batch's cache, if it is not there yet.
    fn load_summary(&mut self, key: &[u8]) -> Result<(), EngineError> {
        if !self.summaries.contains_key(key) {
            let summary = self.get(Family::Workloads, key, "workload summary")?;
            self.summaries.insert(key.to_vec(), (summary, false));
        }
        Ok(())
    }

    /// The summary of a workload [`Overlay::load_summary`] loaded.
    fn cached_summary(&self, key: &[u8]) -> Option<&WorkloadSummary> {
        self.summaries
            .get(key)
            .and_then(|(summary, _)| summary.as_ref())
    }

    /// Takes the summary of workload `key` out of the cache, to change it and give it back with
    /// [`Overlay::put_summary`].
    fn take_summary(&mut self, key: &[u8]) -> Result<Option<WorkloadSummary>, EngineError> {
        self.load_summary(key)?;
        Ok(self
            .summaries
            .get_mut(key)
            .and_then(|(summary, _)| summary.take()))
    }

    /// Gives a summary back to the cache; `changed` marks it to be written.
    fn put_summary(&mut self, key: &[u8], summary: WorkloadSummary, changed: bool) {
        let entry = self.summaries.entry(key.to_vec()).or_insert((None, false));
        entry.0 = Some(summary);
        entry.1 |= changed;
    }

    /// Decodes the evidence of the chain under `prefix` into the batch's cache, if it is not
    /// there yet.
    fn load_chain(&mut self, prefix: &[u8]) -> Result<(), EngineError> {
        if !self.chains.contains_key(prefix) {
            let evidence = self
                .scan(Family::Evidence, prefix)?
                .into_iter()
                .map(|(_, v)| {
                    serde_json::from_slice(&v).map_err(|source| EngineError::Corrupted {
                        what: "evidence",
                        source,
                    })
                })
                .collect::<Result<_, _>>()?;
            self.chains.insert(prefix.to_vec(), evidence);
        }
        Ok(())
    }

    /// The evidence of a chain [`Overlay::load_chain`] loaded.
    fn cached_chain(&self, prefix: &[u8]) -> &[Evidence] {
        self.chains.get(prefix).map_or(&[], Vec::as_slice)
    }

    /// Stores one piece of evidence of the chain under `prefix` at `key`.
    fn put_evidence(&mut self, prefix: &[u8], key: Vec<u8>, evidence: Evidence) {
        self.put(Family::Evidence, key, &evidence);
        if let Some(chain) = self.chains.get_mut(prefix) {
            chain.push(evidence);
        }
    }

    /// Deletes every piece of evidence of the chain under `prefix`.
    fn delete_chain(&mut self, prefix: &[u8]) -> Result<(), EngineError> {
        for (evidence_key, _) in self.scan(Family::Evidence, prefix)? {
            self.batch.delete(Family::Evidence, evidence_key);
        }
        self.chains.insert(prefix.to_vec(), Vec::new());
        Ok(())
    }

    /// Decodes incident `id` into the batch's cache, if it is not there yet.
    fn load_incident(&mut self, id: &str) -> Result<(), EngineError> {
        if !self.incidents.contains_key(id) {
            let incident = self.get(Family::Incidents, id.as_bytes(), "incident")?;
            self.incidents.insert(id.to_owned(), (incident, false));
        }
        Ok(())
    }

    /// An incident [`Overlay::load_incident`] loaded.
    fn cached_incident(&self, id: &str) -> Option<&Incident> {
        self.incidents
            .get(id)
            .and_then(|(incident, _)| incident.as_ref())
    }

    /// Sets incident `id`, to be written when the batch is finished.
    fn put_incident(&mut self, id: String, incident: Incident) {
        self.incidents.insert(id, (Some(incident), true));
    }

    /// Writes the changed summaries and incidents into the batch and returns it.
    fn finish(mut self) -> StateBatch {
        for (key, (summary, changed)) in std::mem::take(&mut self.summaries) {
            if let (Some(summary), true) = (summary, changed) {
                self.put(Family::Workloads, key, &summary);
            }
        }
        for (id, (incident, changed)) in std::mem::take(&mut self.incidents) {
            if let (Some(incident), true) = (incident, changed) {
                self.put(Family::Incidents, id.into_bytes(), &incident);
            }
        }
        self.batch
    }

    fn scan(&self, family: Family, prefix: &[u8]) -> Result<Entries, EngineError> {
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> = self
            .store
            .scan_prefix(family, prefix)?
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .collect();
        for (key, value) in self.batch.pending_prefix(family, prefix) {
            merged.insert(key.to_vec(), value.map(<[u8]>::to_vec));
        }
        Ok(merged
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect())
    }
}

impl<S: StateStore> Engine<S> {
    /// Creates an engine over `store`, judging signals with `policy`.
    pub fn new(policy: Policy, store: S) -> Self {
        Engine { policy, store }
    }

    /// Returns the policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Returns the next offset to consume from a partition, if any batch from it was applied.
    ///
    /// # Errors
    ///
    /// Returns [`EngineError`] when the store fails or holds corrupted progress.
    pub fn next_offset(&self, topic: &str, partition: i32) -> Result<Option<i64>, EngineError> {
        let key = progress_key(topic, partition);
        let overlay = Overlay {
            store: &self.store,
            batch: StateBatch::default(),
            summaries: BTreeMap::new(),
            chains: BTreeMap::new(),
            incidents: BTreeMap::new(),
        };
        Ok(overlay
            .get::<Progress>(Family::Progress, &key, "progress")?
            .map(|p| p.next_offset))
    }

    /// Reads an outbox entry.
    ///
    /// # Errors
    ///
    /// Returns [`EngineError`] when the store fails.
    pub fn outbox_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(self.store.get(Family::Outbox, key)?)
    }

    /// Sets (`Some`) or deletes (`None`) an outbox entry, durably.
    ///
    /// # Errors
    ///
    /// Returns [`EngineError`] when the store fails.
    pub fn outbox_set(&self, key: &[u8], value: Option<Vec<u8>>) -> Result<(), EngineError> {
        let mut batch = StateBatch::default();
        match value {
            Some(value) => batch.put(Family::Outbox, key.to_vec(), value),
            None => batch.delete(Family::Outbox, key.to_vec()),
        }
        Ok(self.store.write(batch)?)
    }

    /// Returns every incident, ordered by id.
    ///
    /// # Errors
    ///
    /// Returns [`EngineError`] when the store fails or holds a corrupted incident.
    pub fn incidents(&self) -> Result<Vec<Incident>, EngineError> {
        self.store
            .scan_prefix(Family::Incidents, b"")?
            .into_iter()
            .map(|(_, v)| {
                serde_json::from_slice(&v).map_err(|source| EngineError::Corrupted {
                    what: "incident",
                    source,
                })
            })
            .collect()
    }

    /// Applies a batch of signals read at `positions` (in read order) and stores the state it
    /// produced with the consumed offsets, atomically: [`Engine::prepare`] then
    /// [`Engine::commit`].
    ///
    /// # Errors
    ///
    /// Returns [`EngineError`] when the store fails; then nothing of the batch is stored and the
    /// same batch may be applied again.
    pub fn apply(
        &self,
        inputs: &[(Position, Signal)],
        now_unix_nano: i64,
    ) -> Result<Outcome, EngineError> {
        let (outcome, prepared) = self.prepare(inputs, &[], now_unix_nano)?;
        self.commit(prepared)?;
        Ok(outcome)
    }

    /// Stores what [`Engine::prepare`] computed, with its offsets, in one atomic write.
    ///
    /// # Errors
    ///
    /// Returns [`EngineError`] when the store fails; then nothing is stored.
    pub fn commit(&self, prepared: Prepared) -> Result<(), EngineError> {
        self.store.write(prepared.batch)?;
        Ok(())
    }

    /// Computes what a batch of signals read at `positions` (in read order) changes, without
    /// storing it: the caller adds its outbox to the returned state and [`Engine::commit`]s
    /// it. Every `prepare` must be committed (or dropped) before the next one.
    ///
    /// `undecodable` holds the positions of records of the same batch that held no signal:
    /// their offsets are stored as consumed, and those not seen before are returned in
    /// [`Outcome::undecodable`].
    ///
    /// An event time is judged against the time ingest decoded the record (the signal's ingest
    /// time; `now_unix_nano` for a signal without one), so the same record is judged alike
    /// whenever it is correlated.
    ///
    /// # Errors
    ///
    /// Returns [`EngineError`] when the store fails or holds corrupted state.
    pub fn prepare(
        &self,
        inputs: &[(Position, Signal)],
        undecodable: &[Position],
        now_unix_nano: i64,
    ) -> Result<(Outcome, Prepared), EngineError> {
        let mut overlay = Overlay {
            store: &self.store,
            batch: StateBatch::default(),
            summaries: BTreeMap::new(),
            chains: BTreeMap::new(),
            incidents: BTreeMap::new(),
        };
        let mut outcome = Outcome::default();
        let mut progress: BTreeMap<(String, i32), Progress> = BTreeMap::new();
        let max_future = i64::try_from(self.policy.max_future_skew.as_nanos()).unwrap_or(i64::MAX);
        let lateness = i64::try_from(self.policy.allowed_lateness.as_nanos()).unwrap_or(i64::MAX);

        for position in undecodable {
            let state = partition_progress(&overlay, &mut progress, position)?;
            if position.offset < state.next_offset {
                outcome.num_already_applied += 1;
                continue;
            }
            outcome.undecodable.push(position.clone());
        }
        for (position, signal) in inputs {
            let state = partition_progress(&overlay, &mut progress, position)?;
            if position.offset < state.next_offset {
                outcome.num_already_applied += 1;
                continue;
            }
            state.next_offset = position.offset + 1;
            let time = signal.event_time_unix_nano;
            let received = if signal.ingest_time_unix_nano > 0 {
                signal.ingest_time_unix_nano
            } else {
                now_unix_nano
            };
            if time > received.saturating_add(max_future) {
                state.num_future += 1;
                outcome.future.push(Rejected {
                    position: position.clone(),
                    signal: signal.clone(),
                    reason: "future",
                });
                continue;
            }
            // Pushes are a table (the image-facts topic is read whole and compacted), judged
            // against each other in time order whatever order they arrive in: never late.
            let is_image_fact = matches!(signal.fact, Some(Fact::ImagePushed(_)));
            if !is_image_fact && time < state.watermark_unix_nano.saturating_sub(lateness) {
                state.num_late += 1;
                outcome.late.push(Rejected {
                    position: position.clone(),
                    signal: signal.clone(),
                    reason: "late",
                });
                continue;
            }
            state.watermark_unix_nano = state.watermark_unix_nano.max(time);
            let watermark = state.watermark_unix_nano;
            outcome.num_applied += 1;
            // Refreshing after every signal (not once per batch) makes the versions published
            // independent of how the input was cut into batches, so a restart that re-batches
            // the same records publishes exactly the same versions.
            for workload in self.apply_signal(&mut overlay, signal, watermark)? {
                if let Some(incident) = self.refresh_incident(&mut overlay, &workload)? {
                    outcome.incidents.push(incident);
                }
            }
        }
        for position in undecodable {
            let state = partition_progress(&overlay, &mut progress, position)?;
            state.next_offset = state.next_offset.max(position.offset + 1);
        }
        for ((topic, partition), state) in progress {
            overlay.put(Family::Progress, progress_key(&topic, partition), &state);
        }
        Ok((
            outcome,
            Prepared {
                batch: overlay.finish(),
            },
        ))
    }

    /// Applies one in-time signal; returns the keys of the workloads whose chain changed.
    fn apply_signal(
        &self,
        overlay: &mut Overlay<'_, S>,
        signal: &Signal,
        watermark: i64,
    ) -> Result<Vec<Vec<u8>>, EngineError> {
        if let Some(Fact::ImagePushed(_)) = signal.fact {
            return self.record_push(overlay, signal);
        }
        let Some(workload) = workload_ref(signal) else {
            return Ok(Vec::new());
        };
        let key = workload.key.clone().into_bytes();
        let findings = classify(signal, &self.policy);
        let images = signal_images(signal);
        let mut summary: WorkloadSummary =
            overlay
                .take_summary(&key)?
                .unwrap_or_else(|| WorkloadSummary {
                    workload: workload.clone(),
                    ..Default::default()
                });
        let expiry = i64::try_from(
            (self.policy.correlation_window + self.policy.allowed_lateness).as_nanos(),
        )
        .unwrap_or(i64::MAX);
        let active = summary.num_evidence > 0 || !summary.rollouts.is_empty();
        let idle = active && summary.last_unix_nano < watermark.saturating_sub(expiry);
        // Whatever changes the summary is stored, so that later signals read what is stored,
        // in this batch or the next: results must not depend on where batches are cut.
        let mut touched = false;
        if idle {
            self.expire(overlay, &key, &mut summary)?;
            touched = true;
        }
        if summary.workload.kind.is_empty() && !workload.kind.is_empty() {
            summary.workload.kind = workload.kind.clone();
            touched = true;
        }

        let mut changed = false;
        let mut omitted = false;
        // Remember the images the workload runs, and the workload as a user of each, so that a
        // suspicious push found later can reach it.
        if !matches!(signal.fact, Some(Fact::ContainerAccess(_))) {
            for image in &images {
                if summary.images.len() >= MAX_IMAGES_PER_WORKLOAD
                    && !summary.images.contains(image)
                {
                    break;
                }
                if summary.images.insert(image.clone()) {
                    self.add_image_user(overlay, image, &workload.key)?;
                    changed = true;
                }
            }
        }
        let identity = signal_identity(signal);
        if is_rollout(signal) && !summary.rollouts.iter().any(|r| r.identity == identity) {
            summary.rollouts.push(Rollout {
                time_unix_nano: signal.event_time_unix_nano,
                actor: signal
                    .actor
                    .as_ref()
                    .map_or(String::new(), |a| a.name.clone()),
                identity: identity.clone(),
                format: format_name(signal).to_owned(),
                source_event: signal.source_event.clone(),
                raw: raw_ref(signal),
                images: images.clone(),
            });
            summary.rollouts.sort_by(|a, b| {
                (b.time_unix_nano, &b.identity).cmp(&(a.time_unix_nano, &a.identity))
            });
            summary.rollouts.truncate(MAX_ROLLOUTS_PER_WORKLOAD);
            summary.last_unix_nano = summary.last_unix_nano.max(signal.event_time_unix_nano);
            changed = true;
        }

        let context = EvidenceContext {
            time_unix_nano: signal.event_time_unix_nano,
            format: format_name(signal),
            source_event: &signal.source_event,
            actor: signal.actor.as_ref().map_or("", |a| a.name.as_str()),
            image: signal.image.as_ref().map_or("", |i| i.reference.as_str()),
            raw: raw_ref(signal),
        };
        for finding in &findings {
            let evidence = Evidence::from_finding(finding, context.clone());
            let evidence_key = evidence_key(&key, summary.generation, &evidence, &identity);
            if overlay
                .batch
                .pending(Family::Evidence, &evidence_key)
                .is_some()
                || self.store.get(Family::Evidence, &evidence_key)?.is_some()
            {
                continue;
            }
            let new_stage = !summary.stages.contains(&evidence.stage);
            if summary.num_evidence >= MAX_EVIDENCE_PER_CHAIN && !new_stage {
                // Counted, stored, and shown at the incident's next amendment; an omitted item
                // alone does not publish a new version, or a miner alerting every second would
                // republish its whole chain every second.
                summary.num_omitted += 1;
                omitted = true;
                continue;
            }
            if summary.num_evidence == 0 || evidence.time_unix_nano < summary.first_unix_nano {
                summary.first_unix_nano = evidence.time_unix_nano;
            }
            summary.last_unix_nano = summary.last_unix_nano.max(evidence.time_unix_nano);
            summary.num_evidence += 1;
            summary.stages.insert(evidence.stage.clone());
            let prefix = chain_prefix(&key, summary.generation);
            overlay.put_evidence(&prefix, evidence_key, evidence);
            changed = true;
        }
        overlay.put_summary(&key, summary, changed || omitted || touched);
        if changed {
            Ok(vec![key])
        } else {
            Ok(Vec::new())
        }
    }

    /// Records `workload` as a user of the image tag `reference`.
    fn add_image_user(
        &self,
        overlay: &mut Overlay<'_, S>,
        reference: &str,
        workload: &str,
    ) -> Result<(), EngineError> {
        let key = reference.as_bytes();
        let mut users: BTreeSet<String> = overlay
            .get(Family::ImageUsers, key, "image users")?
            .unwrap_or_default();
        if users.len() < MAX_USERS_PER_IMAGE && users.insert(workload.to_owned()) {
            overlay.put(Family::ImageUsers, key.to_vec(), &users);
        }
        Ok(())
    }

    /// Starts a new chain for an idle workload: deletes its old evidence.
    fn expire(
        &self,
        overlay: &mut Overlay<'_, S>,
        key: &[u8],
        summary: &mut WorkloadSummary,
    ) -> Result<(), EngineError> {
        overlay.delete_chain(&chain_prefix(key, summary.generation))?;
        *summary = WorkloadSummary {
            workload: summary.workload.clone(),
            generation: summary.generation + 1,
            images: std::mem::take(&mut summary.images),
            ..Default::default()
        };
        Ok(())
    }

    /// Remembers a registry push; a tag pushed again with another digest is a finding that
    /// joins the chain of every workload that then runs the tag. Returns the workloads known to
    /// run the tag, whose chains are rebuilt.
    fn record_push(
        &self,
        overlay: &mut Overlay<'_, S>,
        signal: &Signal,
    ) -> Result<Vec<Vec<u8>>, EngineError> {
        let Some(image) = &signal.image else {
            return Ok(Vec::new());
        };
        if image.tag.is_empty() || image.digest.is_empty() {
            return Ok(Vec::new());
        }
        let key = format!("{}/{}:{}", image.registry, image.repository, image.tag).into_bytes();
        let mut pushes: Vec<Push> = overlay
            .get(Family::Images, &key, "image history")?
            .unwrap_or_default();
        let findings_before = push_findings(&pushes);
        let actor = signal.actor.clone().unwrap_or_default();
        let raw = raw_ref(signal);
        if pushes
            .iter()
            .any(|p| p.digest == image.digest && p.raw == raw)
        {
            return Ok(Vec::new());
        }
        pushes.push(Push {
            digest: image.digest.clone(),
            time_unix_nano: signal.event_time_unix_nano,
            pusher: actor.name,
            pusher_on_behalf_of: actor.on_behalf_of,
            source_address: actor.source_address,
            raw,
            finding: None,
        });
        // Judge every push against the one before it in time, whatever order they arrived in.
        pushes.sort_by(|a, b| (a.time_unix_nano, &a.raw).cmp(&(b.time_unix_nano, &b.raw)));
        for i in 0..pushes.len() {
            let previous = i.checked_sub(1).map(|j| pushes[j].digest.clone());
            let push = &mut pushes[i];
            push.finding = match previous {
                Some(previous) if previous != push.digest => {
                    let trusted = self.policy.is_trusted_pusher(&push.pusher)
                        || (!push.pusher_on_behalf_of.is_empty()
                            && self.policy.is_trusted_pusher(&push.pusher_on_behalf_of));
                    let untrusted = !push.pusher.is_empty() && !trusted;
                    let mut who = if push.pusher.is_empty() {
                        "an unknown identity".to_owned()
                    } else {
                        push.pusher.clone()
                    };
                    if !push.source_address.is_empty() {
                        who = format!("{who} from {}", push.source_address);
                    }
                    Some(PushFinding {
                        strong: untrusted,
                        reason: format!(
                            "tag {} re-pushed by {who} with a new digest ({} replaced {})",
                            image.tag,
                            short_digest(&push.digest),
                            short_digest(&previous)
                        ),
                    })
                }
                _ => None,
            };
        }
        // Keep the table bounded: the last 32 pushes of a tag are enough to judge new ones.
        if pushes.len() > 32 {
            pushes.drain(..pushes.len() - 32);
        }
        let unchanged = push_findings(&pushes) == findings_before;
        overlay.put(Family::Images, key.clone(), &pushes);
        if unchanged {
            // The chains of the tag's users derive their evidence from flagged pushes only:
            // with the same flagged pushes, none of them changes.
            return Ok(Vec::new());
        }
        let users: BTreeSet<String> = overlay
            .get(Family::ImageUsers, &key, "image users")?
            .unwrap_or_default();
        Ok(users.into_iter().map(String::into_bytes).collect())
    }

    /// Returns the evidence that links a workload's rollouts to suspicious pushes of the images
    /// they ran: the push itself (stage `image`) and the rollout that picked it up (stage
    /// `implant`). Derived from the image table at every rebuild, so it is the same whatever
    /// order pushes and rollouts arrived in.
    fn rollout_evidence(
        &self,
        overlay: &Overlay<'_, S>,
        summary: &WorkloadSummary,
        stored: &[Evidence],
    ) -> Result<Vec<Evidence>, EngineError> {
        let window = i64::try_from(self.policy.correlation_window.as_nanos()).unwrap_or(i64::MAX);
        let mut pushes_linked: BTreeMap<RawRef, Evidence> = BTreeMap::new();
        let mut derived = Vec::new();
        // The flagged pushes of each image, read once per rebuild: rollouts mostly share images.
        let mut flagged: BTreeMap<&str, Vec<Push>> = BTreeMap::new();
        for rollout in &summary.rollouts {
            let images: Vec<&String> = if rollout.images.is_empty() {
                summary.images.iter().collect()
            } else {
                rollout.images.iter().collect()
            };
            let mut picked_up = Vec::new();
            for reference in images {
                if !flagged.contains_key(reference.as_str()) {
                    let pushes: Vec<Push> = overlay
                        .get(Family::Images, reference.as_bytes(), "image history")?
                        .unwrap_or_default();
                    let pushes = pushes.into_iter().filter(|p| p.finding.is_some()).collect();
                    flagged.insert(reference.as_str(), pushes);
                }
                for push in flagged.get(reference.as_str()).into_iter().flatten() {
                    let Some(finding) = &push.finding else {
                        continue;
                    };
                    let time = rollout.time_unix_nano;
                    if push.time_unix_nano > time
                        || push.time_unix_nano < time.saturating_sub(window)
                    {
                        continue;
                    }
                    picked_up.push(reference.as_str());
                    let finding = Finding {
                        stage: Stage::Image,
                        strength: if finding.strong {
                            Strength::Strong
                        } else {
                            Strength::Weak
                        },
                        reason: finding.reason.clone(),
                        technique: technique::IMPLANT_INTERNAL_IMAGE,
                    };
                    let context = EvidenceContext {
                        time_unix_nano: push.time_unix_nano,
                        format: "registry",
                        source_event: "push",
                        actor: &push.pusher,
                        image: reference,
                        raw: push.raw.clone(),
                    };
                    pushes_linked
                        .entry(push.raw.clone())
                        .or_insert_with(|| Evidence::from_finding(&finding, context));
                }
            }
            if picked_up.is_empty() {
                continue;
            }
            picked_up.dedup();
            let already = stored
                .iter()
                .any(|e| e.raw == rollout.raw && e.stage() == Some(Stage::Implant));
            if already {
                continue;
            }
            let who = if rollout.actor.is_empty() {
                "an unknown identity"
            } else {
                &rollout.actor
            };
            let finding = Finding {
                stage: Stage::Implant,
                strength: Strength::Weak,
                technique: technique::IMPLANT_INTERNAL_IMAGE,
                reason: format!(
                    "rollout by {who} picked up the re-pushed {}",
                    picked_up.join(", ")
                ),
            };
            let context = EvidenceContext {
                time_unix_nano: rollout.time_unix_nano,
                format: &rollout.format,
                source_event: &rollout.source_event,
                actor: &rollout.actor,
                image: picked_up[0],
                raw: rollout.raw.clone(),
            };
            derived.push(Evidence::from_finding(&finding, context));
        }
        derived.extend(pushes_linked.into_values());
        Ok(derived)
    }

    /// Rebuilds the incident of a workload from its chain, if the chain warrants one.
    fn refresh_incident(
        &self,
        overlay: &mut Overlay<'_, S>,
        key: &[u8],
    ) -> Result<Option<Incident>, EngineError> {
        overlay.load_summary(key)?;
        let Some(generation) = overlay.cached_summary(key).map(|s| s.generation) else {
            return Ok(None);
        };
        let prefix = chain_prefix(key, generation);
        overlay.load_chain(&prefix)?;
        let Some(summary) = overlay.cached_summary(key) else {
            return Ok(None);
        };
        let stored = overlay.cached_chain(&prefix);
        let derived = self.rollout_evidence(overlay, summary, stored)?;
        let mut evidence: Vec<Evidence> = stored.iter().cloned().chain(derived).collect();
        evidence.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        if !opens_incident(&evidence) {
            return Ok(None);
        }
        let id = incident_id(&summary.workload.key, summary.generation);
        let linked = summary.incident_id.as_deref() == Some(id.as_str());
        overlay.load_incident(&id)?;
        let Some(summary) = overlay.cached_summary(key) else {
            return Ok(None);
        };
        let previous = overlay.cached_incident(&id);
        let mut incident =
            build_incident(id.clone(), summary, evidence, previous.map(|p| p.status));
        if let Some(previous) = previous {
            // The version counts the chain's evidence, which is the same whatever the delivery
            // order. Evidence can also leave a chain (a push re-judged, a rollout beyond the
            // cap): a changed incident then still gets a higher version, never a reused one.
            let unchanged = Incident {
                version: previous.version,
                ..incident.clone()
            };
            if unchanged == *previous {
                return Ok(None);
            }
            incident.version = incident.version.max(previous.version + 1);
        }
        overlay.put_incident(id.clone(), incident.clone());
        if !linked && let Some(mut summary) = overlay.take_summary(key)? {
            summary.incident_id = Some(id);
            overlay.put_summary(key, summary, true);
        }
        Ok(Some(incident))
    }
}

/// Whether a chain warrants an incident.
fn opens_incident(evidence: &[Evidence]) -> bool {
    let strong = |stage: Stage| {
        evidence
            .iter()
            .any(|e| e.is_strong() && e.stage() == Some(stage))
    };
    if strong(Stage::Execution) || strong(Stage::Impact) || strong(Stage::Deploy) {
        return true;
    }
    let stages: BTreeSet<Stage> = evidence.iter().filter_map(Evidence::stage).collect();
    let mining = stages.contains(&Stage::Execution) || stages.contains(&Stage::Impact);
    mining && stages.len() >= 3
}

fn build_incident(
    id: String,
    summary: &WorkloadSummary,
    evidence: Vec<Evidence>,
    status: Option<Status>,
) -> Incident {
    let mut stage_strength: BTreeMap<Stage, bool> = BTreeMap::new();
    for item in &evidence {
        if let Some(stage) = item.stage() {
            let strong = stage_strength.entry(stage).or_insert(false);
            *strong |= item.is_strong();
        }
    }
    let sources: BTreeSet<&str> = evidence.iter().map(|e| e.format.as_str()).collect();
    let score = stage_strength
        .values()
        .map(|strong| if *strong { 2 } else { 1 })
        .sum::<u32>()
        + u32::try_from(sources.len().saturating_sub(1)).unwrap_or(u32::MAX);
    let mining = stage_strength
        .get(&Stage::Execution)
        .copied()
        .unwrap_or(false)
        || stage_strength.get(&Stage::Impact).copied().unwrap_or(false);
    let way_in = [Stage::Image, Stage::Deploy, Stage::Implant]
        .iter()
        .any(|s| stage_strength.contains_key(s));
    let severity = if mining && way_in && score >= 6 {
        Severity::Critical
    } else if mining {
        Severity::High
    } else if score >= 3 {
        Severity::Medium
    } else {
        Severity::Low
    };
    let techniques: BTreeSet<String> = evidence.iter().map(|e| e.technique.clone()).collect();
    let first = evidence.first().map_or(0, |e| e.time_unix_nano);
    let last = evidence
        .iter()
        .map(|e| e.time_unix_nano)
        .max()
        .unwrap_or(first);
    Incident {
        id,
        version: u64::try_from(evidence.len()).unwrap_or(u64::MAX) + summary.num_omitted,
        status: status.unwrap_or(Status::Open),
        severity,
        score,
        workload: summary.workload.clone(),
        stages: stage_strength
            .keys()
            .map(|s| s.as_str().to_owned())
            .collect(),
        techniques: techniques.into_iter().collect(),
        first_seen: format_rfc3339(first),
        last_seen: format_rfc3339(last),
        summary: summarize(&summary.workload, &evidence),
        evidence,
        num_evidence_omitted: summary.num_omitted,
    }
}

/// One paragraph: the workload, then the first (strongest) finding of each stage with its time.
fn summarize(workload: &WorkloadRef, evidence: &[Evidence]) -> String {
    let mut chosen: BTreeMap<Stage, &Evidence> = BTreeMap::new();
    for item in evidence {
        let Some(stage) = item.stage() else { continue };
        match chosen.get(&stage) {
            Some(current) if current.is_strong() || !item.is_strong() => {}
            _ => {
                chosen.insert(stage, item);
            }
        }
    }
    let mut parts: Vec<&Evidence> = chosen.into_values().collect();
    parts.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    let steps: Vec<String> = parts
        .iter()
        .map(|e| format!("{} at {}", e.reason, format_time_of_day(e.time_unix_nano)))
        .collect();
    format!("{}: {}.", describe(workload), steps.join("; "))
}

fn describe(workload: &WorkloadRef) -> String {
    match workload.platform.as_str() {
        "ecs" => format!(
            "ECS task family {} ({} {})",
            workload.name, workload.account, workload.region
        ),
        _ => {
            let kind = if workload.kind.is_empty() {
                "Workload"
            } else {
                workload.kind.as_str()
            };
            let cluster = if workload.cluster.is_empty() {
                String::new()
            } else {
                format!(" in cluster {}", workload.cluster)
            };
            format!("{kind} {}/{}{cluster}", workload.namespace, workload.name)
        }
    }
}

fn workload_ref(signal: &Signal) -> Option<WorkloadRef> {
    let workload = signal.workload.as_ref()?;
    if matches!(
        WorkloadResolution::try_from(workload.resolution),
        Ok(WorkloadResolution::None | WorkloadResolution::Unspecified) | Err(_)
    ) {
        return None;
    }
    let ecs = matches!(Platform::try_from(workload.platform), Ok(Platform::Ecs));
    let platform = if ecs { "ecs" } else { "kubernetes" };
    // Only what the key is made of (and the kind) describes the workload, so that every signal
    // of a workload describes it alike. An ECS family is keyed by account and region; the ECS
    // cluster is named by some calls only (`UpdateService`, not `RegisterTaskDefinition`).
    let cluster = if ecs {
        String::new()
    } else {
        workload.cluster.clone()
    };
    Some(WorkloadRef {
        key: workload.partition_key(),
        platform: platform.to_owned(),
        cluster,
        namespace: workload.namespace.clone(),
        kind: workload.kind.clone(),
        name: workload.name.clone(),
        account: workload.account.clone(),
        region: workload.region.clone(),
    })
}

/// The image references a signal says the workload runs (tag form, without digest).
fn signal_images(signal: &Signal) -> Vec<String> {
    let mut references = BTreeSet::new();
    let tagged = |image: &tidemark_proto::v1::Image| {
        if image.tag.is_empty() {
            None
        } else {
            Some(format!(
                "{}/{}:{}",
                image.registry, image.repository, image.tag
            ))
        }
    };
    match &signal.fact {
        Some(Fact::WorkloadChanged(change)) => {
            for container in &change.containers {
                references.extend(container.image.as_ref().and_then(tagged));
            }
        }
        Some(Fact::ContainerStarted(started)) => {
            for container in &started.containers {
                references.extend(container.image.as_ref().and_then(tagged));
            }
        }
        _ => references.extend(signal.image.as_ref().and_then(tagged)),
    }
    references.into_iter().collect()
}

/// Whether a signal restarts a workload's pods (a patch or update, a new ECS deployment).
fn is_rollout(signal: &Signal) -> bool {
    match &signal.fact {
        Some(Fact::WorkloadChanged(change)) => {
            matches!(
                change.verb.as_str(),
                "patch" | "update" | "UpdateService" | "CreateService" | "create"
            )
        }
        _ => false,
    }
}

fn format_name(signal: &Signal) -> &'static str {
    Format::try_from(signal.format).map_or("FORMAT_UNSPECIFIED", |f| f.as_str_name())
}

fn raw_ref(signal: &Signal) -> RawRef {
    signal
        .raw
        .as_ref()
        .map_or_else(RawRef::default, |raw| RawRef {
            topic: raw.topic.clone(),
            partition: raw.partition,
            offset: raw.offset,
            line: raw.line,
            index: raw.index,
        })
}

/// What makes two deliveries of a signal the same: its de-duplication key, else its raw position.
fn signal_identity(signal: &Signal) -> String {
    if !signal.dedup_key.is_empty() {
        return signal.dedup_key.clone();
    }
    let raw = raw_ref(signal);
    format!(
        "{}/{}/{}/{}/{}",
        raw.topic, raw.partition, raw.offset, raw.line, raw.index
    )
}

/// The flagged pushes of an image history, with what they were flagged for.
fn push_findings(pushes: &[Push]) -> Vec<(RawRef, PushFinding)> {
    pushes
        .iter()
        .filter_map(|p| p.finding.clone().map(|f| (p.raw.clone(), f)))
        .collect()
}

/// Returns the progress of the partition `position` is on, loading it from the store on first
/// use in a batch.
fn partition_progress<'p, S: StateStore>(
    overlay: &Overlay<'_, S>,
    progress: &'p mut BTreeMap<(String, i32), Progress>,
    position: &Position,
) -> Result<&'p mut Progress, EngineError> {
    let partition = (position.topic.clone(), position.partition);
    if !progress.contains_key(&partition) {
        let key = progress_key(&position.topic, position.partition);
        let stored = overlay
            .get::<Progress>(Family::Progress, &key, "progress")?
            .unwrap_or_default();
        progress.insert(partition.clone(), stored);
    }
    Ok(progress
        .get_mut(&partition)
        .expect("progress was just loaded"))
}

fn progress_key(topic: &str, partition: i32) -> Vec<u8> {
    format!("{topic}\u{0}{partition}").into_bytes()
}

fn chain_prefix(workload: &[u8], generation: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(workload.len() + 5);
    key.extend_from_slice(workload);
    key.push(0);
    key.extend_from_slice(&generation.to_be_bytes());
    key
}

/// Evidence keys sort by time inside a chain; the identity makes a redelivered signal land on
/// the same key.
fn evidence_key(workload: &[u8], generation: u32, evidence: &Evidence, identity: &str) -> Vec<u8> {
    let mut key = chain_prefix(workload, generation);
    let time = (evidence.time_unix_nano as u64) ^ (1 << 63);
    key.extend_from_slice(&time.to_be_bytes());
    key.extend_from_slice(evidence.stage.as_bytes());
    key.push(0);
    // Push evidence is keyed by the push, not by the signal that linked it.
    if evidence.format == "registry" {
        key.extend_from_slice(format!("{:?}", evidence.raw).as_bytes());
    } else {
        key.extend_from_slice(identity.as_bytes());
    }
    key.push(0);
    key.extend_from_slice(evidence.reason.as_bytes());
    key
}

/// A stable incident id: FNV-1a of the workload key and chain generation, as 16 hex digits.
fn incident_id(workload_key: &str, generation: u32) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in workload_key.bytes().chain(generation.to_be_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

fn short_digest(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}
