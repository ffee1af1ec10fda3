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
}
