//! tidemark common: the small, domain-free pieces every role shares.
//!
//! Configuration loading ([`config`]): one YAML file per role, overridden from the environment
//! with a per-role prefix, then deserialized into the role's own typed configuration, which
//! refuses unknown keys. Calendar arithmetic for UTC timestamps ([`time`]). Kafka client defaults
//! every role applies ([`kafka`]). Nothing here knows about signals or incidents.

#![warn(missing_docs)]

pub mod config;
pub mod kafka;
pub mod time;
