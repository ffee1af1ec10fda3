//! Configuration of the correlate role: a YAML file, then `TIDEMARK_CORRELATE__*` environment
//! overrides, then validation. Every key and its default is listed in
//! `config/correlate.example.yaml`.
//!
//! The detection policy (what is approved, what a miner looks like) is a file of its own
//! ([`crate::policy`]), named here by `policy`; this file says where the correlator reads,
//! writes and keeps its state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tidemark_common::config::validate_topic_name;

use crate::error::{Error, Result};

/// Prefix of environment variables that override correlate configuration keys.
pub const ENV_PREFIX: &str = "TIDEMARK_CORRELATE__";

/// Configuration of `tidemark correlate`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorrelateConfig {
    /// How to reach Kafka.
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// Topics read and written.
    #[serde(default)]
    pub topics: TopicsConfig,
    /// Where the state lives, and the policy.
    #[serde(default)]
    pub state: StateConfig,
    /// Batch sizes and log cadence.
    #[serde(default)]
    pub limits: LimitsConfig,
}

/// Kafka connection settings of the correlator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated. Default: `127.0.0.1:9092`.
    #[serde(default = "default_brokers")]
    pub brokers: String,
    /// Consumer group of the correlators on the signals topic. Default: `tidemark-correlate`.
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// Extra librdkafka properties for every client (`security.protocol`, `sasl.mechanisms`,
    /// `ssl.ca.location`, `session.timeout.ms`, ...). Default: none.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// Topics of the correlator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    /// Signals (ingest's output, keyed by workload). Default: `tidemark.signals`.
    #[serde(default = "default_signals_topic")]
    pub signals: String,
    /// Image facts (registry pushes), read whole by every correlator. Default:
    /// `tidemark.image-facts`.
    #[serde(default = "default_image_facts_topic")]
    pub image_facts: String,
    /// Incident versions, JSON keyed by incident id. Default: `tidemark.incidents`.
    #[serde(default = "default_incidents_topic")]
    pub incidents: String,
    /// Signals refused as late, future-dated or undecodable, with the reason in a header.
    /// Default: `tidemark.late`.
    #[serde(default = "default_late_topic")]
    pub late: String,
}

/// State and policy of the correlator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Directory of the RocksDB state; keep it on a persistent volume. Default:
    /// `/var/lib/tidemark/correlate`.
    #[serde(default = "default_state_dir")]
    pub dir: PathBuf,
    /// Detection policy file (YAML); without one the built-in miner indicators apply and
    /// deployed images are not judged. Default: none.
    #[serde(default)]
    pub policy: Option<PathBuf>,
}

/// Limits of the correlate worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most records correlated and stored in one atomic batch. Default: 2048.
    #[serde(default = "default_max_batch_records")]
    pub max_batch_records: usize,
    /// Longest wait for the first record of a batch, in milliseconds. Default: 100.
    #[serde(default = "default_poll_timeout_ms")]
    pub poll_timeout_ms: u64,
    /// Seconds between progress log lines. Default: 30.
    #[serde(default = "default_stats_interval_secs")]
    pub stats_interval_secs: u64,
}

fn default_brokers() -> String {
    "127.0.0.1:9092".to_owned()
}
fn default_group_id() -> String {
    "tidemark-correlate".to_owned()
}
fn default_signals_topic() -> String {
    "tidemark.signals".to_owned()
}
fn default_image_facts_topic() -> String {
    "tidemark.image-facts".to_owned()
}
fn default_incidents_topic() -> String {
    "tidemark.incidents".to_owned()
}
fn default_late_topic() -> String {
    "tidemark.late".to_owned()
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/tidemark/correlate")
}
fn default_max_batch_records() -> usize {
    2048
}
fn default_poll_timeout_ms() -> u64 {
    100
}
fn default_stats_interval_secs() -> u64 {
    30
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: default_brokers(),
            group_id: default_group_id(),
            properties: BTreeMap::new(),
        }
    }
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            signals: default_signals_topic(),
            image_facts: default_image_facts_topic(),
            incidents: default_incidents_topic(),
            late: default_late_topic(),
        }
    }
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: default_state_dir(),
            policy: None,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_batch_records: default_max_batch_records(),
            poll_timeout_ms: default_poll_timeout_ms(),
            stats_interval_secs: default_stats_interval_secs(),
        }
    }
}

impl CorrelateConfig {
    /// Loads the configuration from `path` (or the defaults when `None`), applies the
    /// environment overrides in `env`, and validates the result.
    ///
    /// # Errors
    ///
    /// Returns [`Error::Config`] when the file cannot be read, or it or an override is
    /// malformed or fails validation.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<CorrelateConfig> {
        let config: CorrelateConfig = tidemark_common::config::load(path, env, ENV_PREFIX)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every key, naming the first that is wrong.
    ///
    /// # Errors
    ///
    /// Returns [`Error::Config`] naming the offending key.
    pub fn validate(&self) -> Result<()> {
        let invalid = |message: &str| {
            Err(Error::Config(
                tidemark_common::config::ConfigError::Invalid(message.to_owned()),
            ))
        };
        if self.kafka.brokers.trim().is_empty() {
            return invalid("`kafka.brokers` must not be empty");
        }
        if self.kafka.group_id.trim().is_empty() {
            return invalid("`kafka.group_id` must not be empty");
        }
        let topics = [
            ("topics.signals", &self.topics.signals),
            ("topics.image_facts", &self.topics.image_facts),
            ("topics.incidents", &self.topics.incidents),
            ("topics.late", &self.topics.late),
        ];
        for (index, (key, topic)) in topics.iter().enumerate() {
            validate_topic_name(key, topic)?;
            if let Some((other, _)) = topics[..index].iter().find(|(_, t)| t == topic) {
                return invalid(&format!("`{key}` and `{other}` are both `{topic}`"));
            }
        }
        if self.state.dir.as_os_str().is_empty() {
            return invalid("`state.dir` must not be empty");
        }
        if !(1..=100_000).contains(&self.limits.max_batch_records) {
            return invalid("`limits.max_batch_records` must be between 1 and 100000");
        }
        if !(1..=60_000).contains(&self.limits.poll_timeout_ms) {
            return invalid("`limits.poll_timeout_ms` must be between 1 and 60000");
        }
        if self.limits.stats_interval_secs == 0 {
            return invalid("`limits.stats_interval_secs` must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        let config = CorrelateConfig::load(None, env(&[])).unwrap();
        assert_eq!(config, CorrelateConfig::default());
    }

    #[test]
    fn environment_overrides_reach_correlate_keys_only() {
        let config = CorrelateConfig::load(
            None,
            env(&[
                ("TIDEMARK_CORRELATE__KAFKA__BROKERS", "broker-0:9092"),
                ("TIDEMARK_CORRELATE__STATE__DIR", "/data/correlate"),
                ("TIDEMARK_CORRELATE__LIMITS__MAX_BATCH_RECORDS", "64"),
                ("TIDEMARK_INGEST__TOPICS__RAW", "[{name: falco}]"),
            ]),
        )
        .unwrap();
        assert_eq!(config.kafka.brokers, "broker-0:9092");
        assert_eq!(config.state.dir, PathBuf::from("/data/correlate"));
        assert_eq!(config.limits.max_batch_records, 64);
    }

    #[test]
    fn one_topic_for_two_purposes_is_refused() {
        let error = CorrelateConfig::load(
            None,
            env(&[("TIDEMARK_CORRELATE__TOPICS__LATE", "tidemark.signals")]),
        )
        .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("`topics.late` and `topics.signals`"),
            "{error}"
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let error = CorrelateConfig::load(None, env(&[("TIDEMARK_CORRELATE__STATE__PATH", "/x")]))
            .unwrap_err();
        assert!(
            error.to_string().contains("unknown field `path`"),
            "{error}"
        );
    }

    #[test]
    fn example_file_parses_and_matches_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/correlate.example.yaml");
        let config = CorrelateConfig::load(Some(&path), env(&[])).unwrap();
        assert_eq!(config, CorrelateConfig::default());
    }

    #[test]
    fn helm_chart_default_correlate_configuration_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/tidemark/values.yaml");
        let values: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let config: CorrelateConfig =
            serde_yaml::from_value(values["correlate"]["config"].clone()).unwrap();
        config.validate().unwrap();
        assert_eq!(config.kafka.group_id, default_group_id());
        assert_eq!(config.topics, TopicsConfig::default());
        // The chart mounts the state volume at `state.dir` and sets `state.policy` itself.
        assert_eq!(config.state, StateConfig::default());
        assert_eq!(config.limits, LimitsConfig::default());
    }
}
