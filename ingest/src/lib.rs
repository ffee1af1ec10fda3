//! tidemark ingest: raw telemetry in, workload-keyed signals out.
//!
//! The first stage of the pipeline. Ingest workers form a Kafka consumer group on the raw topics
//! (node sensors, cloud audit, registry webhooks), decode every record in the format its source
//! really emits ([`decode`]), and produce:
//!
//! - each signal to the signals topic, keyed by workload, so that all evidence about one workload
//!   lands on one partition and so on one correlator instance;
//! - each image push to the compacted image-facts topic, keyed by image reference, which every
//!   correlator instance reads whole;
//! - each record that cannot be decoded to the dead-letter topic, with its raw bytes and the
//!   reason in headers.
//!
//! Invariants: no record is lost (each becomes signals, a dead letter, or counted skips); offsets
//! are stored only once everything produced from a record is acknowledged; a hostile record
//! never stops a worker. Ingest knows nothing of the correlator.

#![warn(missing_docs)]

pub mod config;
pub mod decode;
pub mod error;
pub mod input;
pub mod worker;

pub use error::{Error, Result};
