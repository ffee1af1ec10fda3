//! Correlator state: a small key-value interface with atomic batches, over RocksDB in production
//! and over a map in tests.
//!
//! State is split into families, one per concern: workload summaries, evidence, the image table,
//! incidents, per-partition progress (consumed offsets and watermarks), and the outbox of
//! outputs not yet acknowledged by Kafka. The engine writes the
//! state a batch of signals produced and the offsets it consumed in one [`StateBatch`], so after
//! a crash the stored offsets say exactly which signals the stored state reflects.
//!
//! No type outside this module names RocksDB. Calls block: async callers run them on a blocking
//! thread.

mod memory;
mod rocks;

use std::collections::BTreeMap;

pub use memory::MemoryStore;
pub use rocks::RocksStore;

/// Key-value pairs read by a prefix scan, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// A column family of correlator state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// Per-workload summary (times, stages, incident head).
    Workloads,
    /// Evidence items, keyed by workload then time, so a chain is one prefix scan.
    Evidence,
    /// Registry pushes per image tag (the global image table).
    Images,
    /// The workloads seen running each image tag, so a push found suspicious later reaches them.
    ImageUsers,
    /// The latest version of every incident.
    Incidents,
    /// Per-partition progress: next offset to consume, watermark, late count.
    Progress,
    /// Outputs stored before they are published, so a crash between the two publishes them
    /// once (the transactional outbox pattern).
    Outbox,
}

impl Family {
    /// Every family, in a fixed order.
    pub const ALL: [Family; 7] = [
        Family::Workloads,
        Family::Evidence,
        Family::Images,
        Family::ImageUsers,
        Family::Incidents,
        Family::Progress,
        Family::Outbox,
    ];

    /// The family's name in storage.
    pub fn name(self) -> &'static str {
        match self {
            Family::Workloads => "workloads",
            Family::Evidence => "evidence",
            Family::Images => "images",
            Family::ImageUsers => "image_users",
            Family::Incidents => "incidents",
            Family::Progress => "progress",
            Family::Outbox => "outbox",
        }
    }
}

/// Errors of a state backend.
#[derive(Debug, thiserror::Error)]
#[error("state store {operation} failed: {message}")]
pub struct StateError {
    /// What was being done.
    pub operation: &'static str,
    /// The backend's message.
    pub message: String,
}

/// Writes applied together or not at all.
#[derive(Debug, Default, Clone)]
pub struct StateBatch {
    ops: BTreeMap<(Family, Vec<u8>), Option<Vec<u8>>>,
}

impl StateBatch {
    /// Sets `key` to `value` in `family`.
    pub fn put(&mut self, family: Family, key: Vec<u8>, value: Vec<u8>) {
        self.ops.insert((family, key), Some(value));
    }

    /// Deletes `key` from `family`.
    pub fn delete(&mut self, family: Family, key: Vec<u8>) {
        self.ops.insert((family, key), None);
    }

    /// Returns the pending value of a key: `Some(Some(v))` set, `Some(None)` deleted, `None`
    /// untouched by this batch.
    pub fn pending(&self, family: Family, key: &[u8]) -> Option<Option<&[u8]>> {
        self.ops.get(&(family, key.to_vec())).map(|v| v.as_deref())
    }

    /// Returns the pending writes under a key prefix, in key order.
    pub fn pending_prefix<'a>(
        &'a self,
        family: Family,
        prefix: &'a [u8],
    ) -> impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> + 'a {
        self.ops
            .range((family, prefix.to_vec())..)
            .take_while(move |((f, k), _)| *f == family && k.starts_with(prefix))
            .map(|((_, k), v)| (k.as_slice(), v.as_deref()))
    }

    /// Returns whether the batch holds no write.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Returns the number of writes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Consumes the batch into its writes, in family and key order.
    pub fn into_ops(self) -> impl Iterator<Item = (Family, Vec<u8>, Option<Vec<u8>>)> {
        self.ops
            .into_iter()
            .map(|((family, key), value)| (family, key, value))
    }
}

/// A key-value store with families, prefix scans and atomic batches.
pub trait StateStore: Send {
    /// Reads one key.
    ///
    /// # Errors
    ///
    /// Returns [`StateError`] when the backend fails.
    fn get(&self, family: Family, key: &[u8]) -> Result<Option<Vec<u8>>, StateError>;

    /// Reads every key under `prefix`, in key order.
    ///
    /// # Errors
    ///
    /// Returns [`StateError`] when the backend fails.
    fn scan_prefix(&self, family: Family, prefix: &[u8]) -> Result<Entries, StateError>;

    /// Applies every write of `batch` atomically and durably.
    ///
    /// # Errors
    ///
    /// Returns [`StateError`] when the backend fails; then nothing of the batch is applied.
    fn write(&self, batch: StateBatch) -> Result<(), StateError>;
}
