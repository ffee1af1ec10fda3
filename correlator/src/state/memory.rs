//! An in-memory state store, for tests and for comparing against the RocksDB store.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{Entries, Family, StateBatch, StateError, StateStore};

type Data = BTreeMap<(Family, Vec<u8>), Vec<u8>>;

/// State kept in ordered maps; lost when dropped.
#[derive(Debug, Default)]
pub struct MemoryStore {
    data: Mutex<Data>,
}

impl MemoryStore {
    /// Returns an empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Data>, StateError> {
        self.data.lock().map_err(|_| StateError {
            operation: "lock",
            message: "a writer panicked while holding the memory store".into(),
        })
    }
}

impl StateStore for MemoryStore {
    fn get(&self, family: Family, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.lock()?.get(&(family, key.to_vec())).cloned())
    }

    fn scan_prefix(&self, family: Family, prefix: &[u8]) -> Result<Entries, StateError> {
        let data = self.lock()?;
        Ok(data
            .range((family, prefix.to_vec())..)
            .take_while(|((f, k), _)| *f == family && k.starts_with(prefix))
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    fn write(&self, batch: StateBatch) -> Result<(), StateError> {
        let mut data = self.lock()?;
        for (family, key, value) in batch.into_ops() {
            match value {
                Some(value) => data.insert((family, key), value),
                None => data.remove(&(family, key)),
            };
        }
        Ok(())
    }
}
