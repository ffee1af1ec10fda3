//! tidemark load test: realistic telemetry at scale, with ground truth.
//!
//! [`generate`] writes a fleet's telemetry in the formats the sources really emit (Falco,
//! Tetragon, Kubernetes audit, CloudTrail, EventBridge, Distribution, Harbor), one NDJSON file
//! per source in arrival order, with the design's attack chains injected at known times among
//! benign activity, and a ground-truth file naming the attacked workloads, their pattern, the
//! stages the correlator must find and when. The same seed gives the same bytes.

#![warn(missing_docs)]

pub mod error;
pub mod generate;
pub mod time;

pub use error::{Error, Result};
