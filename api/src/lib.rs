//! tidemark api: incidents for SOC dashboards and analysts, over gRPC.
//!
//! `tidemark api` reads the correlator's incidents topic and the status-events topic (and the
//! signals topic, for workload timelines) into its own RocksDB [`store::Store`], and serves
//! `tidemark.v1.IncidentService` ([`service::IncidentApi`]) with tonic, beside standard gRPC
//! health checking and server reflection. Status changes made through the API are published to
//! the status topic and applied by every replica from there, so replicas agree.
//!
//! Security ([`auth`]): TLS, optional client certificates, bearer tokens; without TLS and
//! tokens the server refuses a non-loopback address unless told otherwise. [`arrow`] exports
//! incidents and evidence as Arrow IPC streams.

#![warn(missing_docs)]

pub mod arrow;
pub mod auth;
pub mod config;
pub mod convert;
pub mod error;
pub mod materialize;
pub mod server;
pub mod service;
pub mod store;

pub use error::{Error, Result};
