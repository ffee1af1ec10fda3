//! The load test's error type.

use std::path::PathBuf;

/// Why the load test could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An option is out of range or inconsistent with another.
    #[error("invalid options: {0}")]
    Invalid(String),
    /// A file could not be written or read.
    #[error("I/O on `{path}` failed")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// A bundled scenario record could not be used as a template.
    #[error("bundled scenario template is unusable: {0}")]
    Template(String),
}

/// Result with the load test's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
