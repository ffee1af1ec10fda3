//! tidemark correlator: turns signals into one kill-chain incident per workload.
//!
//! The correlator sits after ingest. It reads workload-keyed signals and image facts, classifies
//! every signal into the stages of the kill chain it supports ([`stage::classify`], pure: the
//! signal and the [`policy::Policy`], nothing else), and joins the evidence of one workload over
//! event time into one [`model::Incident`] ([`engine::Engine`]). State lives behind
//! [`state::StateStore`]: RocksDB in production, with the consumed offsets written in the same
//! atomic batch as the state they produced. [`replay`] runs the whole join offline in event-time
//! order.
//!
//! The policy holds approved registries and digests, trusted identities, the correlation window
//! and allowed lateness, and the miner indicators from the public Falco, Sigma and maltrail
//! lists shipped in `indicators/`.

#![warn(missing_docs)]

pub mod config;
pub mod duration;
pub mod engine;
pub mod error;
pub mod indicators;
pub mod model;
pub mod policy;
pub mod replay;
pub mod stage;
pub mod state;
pub mod worker;

pub use error::{Error, Result};
