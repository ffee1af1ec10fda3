//! The error type of the api crate.

use std::path::PathBuf;

/// Result alias with the api [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the api.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The api configuration is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] tidemark_common::config::ConfigError),
    /// A Kafka client could not be created or a Kafka operation failed.
    #[error("Kafka {operation} failed")]
    Kafka {
        /// What was being done.
        operation: &'static str,
        /// The client's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A topic the api reads does not exist or has no partitions.
    #[error("topic `{topic}` does not exist or has no partitions; create it first")]
    MissingTopic {
        /// The topic.
        topic: String,
    },
    /// The RocksDB store failed.
    #[error("incident store: {0}")]
    Store(#[from] rocksdb::Error),
    /// A stored value could not be decoded: the store is damaged or from another version.
    #[error("incident store holds an undecodable {what}: {reason}")]
    Corrupt {
        /// What was being read.
        what: &'static str,
        /// The decoder's reason.
        reason: String,
    },
    /// A TLS file could not be read.
    #[error("failed to read TLS file `{path}`")]
    TlsRead {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The listen address is refused by the security rules, or cannot be bound.
    #[error("cannot listen on `{address}`: {reason}")]
    Listen {
        /// The address asked for.
        address: String,
        /// Why not.
        reason: String,
    },
    /// A resource the api needs at start (directory, thread) could not be had.
    #[error("cannot start: {what}: {reason}")]
    Start {
        /// What was being set up.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// The gRPC server failed.
    #[error("gRPC server failed")]
    Transport(#[from] tonic::transport::Error),
}
