//! The RocksDB state store: one column family per [`Family`], atomic write batches, fsync'd
//! writes so that state and offsets survive a crash together.

use std::path::Path;

use rocksdb::{
    ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions,
};

use super::{Entries, Family, StateBatch, StateError, StateStore};

/// State in a RocksDB database directory.
pub struct RocksStore {
    db: DB,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.db.path())
            .finish()
    }
}

fn error(operation: &'static str, e: rocksdb::Error) -> StateError {
    StateError {
        operation,
        message: e.into_string(),
    }
}

impl RocksStore {
    /// Opens (or creates) the database in `dir`, with every family.
    ///
    /// # Errors
    ///
    /// Returns [`StateError`] when the directory cannot be opened (locked by another process,
    /// corrupted, not writable).
    pub fn open(dir: &Path) -> Result<RocksStore, StateError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        // Bound memory whatever the number of workloads: small write buffers, bounded files.
        options.set_write_buffer_size(16 * 1024 * 1024);
        options.set_max_write_buffer_number(3);
        options.set_max_open_files(512);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let families = Family::ALL.map(|family| {
            let mut family_options = Options::default();
            family_options.set_write_buffer_size(16 * 1024 * 1024);
            family_options.set_compression_type(rocksdb::DBCompressionType::Lz4);
            ColumnFamilyDescriptor::new(family.name(), family_options)
        });
        let db = DB::open_cf_descriptors(&options, dir, families).map_err(|e| error("open", e))?;
        Ok(RocksStore { db })
    }

    fn handle(&self, family: Family) -> Result<&rocksdb::ColumnFamily, StateError> {
        self.db.cf_handle(family.name()).ok_or_else(|| StateError {
            operation: "column family lookup",
            message: format!("column family `{}` is missing", family.name()),
        })
    }
}

impl StateStore for RocksStore {
    fn get(&self, family: Family, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.db
            .get_cf(self.handle(family)?, key)
            .map_err(|e| error("get", e))
    }

    fn scan_prefix(&self, family: Family, prefix: &[u8]) -> Result<Entries, StateError> {
        let iterator = self.db.iterator_cf(
            self.handle(family)?,
            IteratorMode::From(prefix, Direction::Forward),
        );
        let mut entries = Vec::new();
        for item in iterator {
            let (key, value) = item.map_err(|e| error("scan", e))?;
            if !key.starts_with(prefix) {
                break;
            }
            entries.push((key.into_vec(), value.into_vec()));
        }
        Ok(entries)
    }

    fn write(&self, batch: StateBatch) -> Result<(), StateError> {
        let mut write_batch = WriteBatch::default();
        for (family, key, value) in batch.into_ops() {
            let handle = self.handle(family)?;
            match value {
                Some(value) => write_batch.put_cf(handle, key, value),
                None => write_batch.delete_cf(handle, key),
            }
        }
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db
            .write_opt(write_batch, &options)
            .map_err(|e| error("write", e))
    }
}
