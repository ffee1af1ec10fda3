//! The error type of the ingest crate.

use std::path::PathBuf;

/// Result alias with the ingest [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can stop ingest. Bad records are not errors: they become dead letters.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file could not be read.
    #[error("failed to read configuration file `{path}`")]
    ConfigRead {
        /// The file that was asked for.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is malformed or invalid.
    #[error("invalid configuration: {0}")]
    ConfigInvalid(String),
    /// A Kafka client could not be created or a Kafka operation failed.
    #[error("kafka {operation} failed")]
    Kafka {
        /// What was being done.
        operation: &'static str,
        /// The client's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A produced record was not acknowledged by the broker; its input offset was not stored.
    #[error("delivery to topic `{topic}` failed; input offsets were not stored past it")]
    Delivery {
        /// The output topic.
        topic: String,
        /// The producer's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

impl From<tidemark_common::config::ConfigError> for Error {
    fn from(error: tidemark_common::config::ConfigError) -> Self {
        match error {
            tidemark_common::config::ConfigError::Read { path, source } => {
                Error::ConfigRead { path, source }
            }
            tidemark_common::config::ConfigError::Invalid(message) => Error::ConfigInvalid(message),
        }
    }
}

/// Coarse error classes, for exit codes and for callers deciding whether to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The operator must fix the configuration.
    InvalidArgument,
    /// A dependency (Kafka) is unavailable; retrying later may succeed.
    Unavailable,
}

impl Error {
    /// Returns the class of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::ConfigRead { .. } | Error::ConfigInvalid(_) => ErrorCode::InvalidArgument,
            Error::Kafka { .. } | Error::Delivery { .. } => ErrorCode::Unavailable,
        }
    }

    /// Returns whether retrying the same operation later may succeed.
    pub fn is_retryable(&self) -> bool {
        self.code() == ErrorCode::Unavailable
    }
}
