//! The error type of the correlator crate.

use std::path::PathBuf;

/// Result alias with the correlator [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the correlator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The policy file could not be read.
    #[error("failed to read policy file `{path}`")]
    PolicyRead {
        /// The file asked for.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The policy is malformed or invalid.
    #[error("invalid policy: {0}")]
    PolicyInvalid(String),
    /// A shipped indicator list could not be read.
    #[error("built-in indicator list is unreadable: {0}")]
    Indicators(String),
    /// The correlate configuration is unreadable or invalid.
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
    /// A topic the correlator needs does not exist or has no partitions.
    #[error("topic `{topic}` does not exist or has no partitions; create it first")]
    MissingTopic {
        /// The topic.
        topic: String,
    },
    /// Records were not acknowledged by Kafka; they stay in the outbox and are published at the
    /// next start.
    #[error(
        "{failed} records were not acknowledged by Kafka; they are published at the next start"
    )]
    Unacknowledged {
        /// How many failed.
        failed: u64,
    },
    /// Published records could not be read back while recovering the outbox.
    #[error("recovering the outbox failed: {0}")]
    Recovery(String),
    /// The engine or its state failed.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
}
