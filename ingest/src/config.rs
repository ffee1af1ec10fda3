//! Configuration of the ingest role: a YAML file, then `TIDEMARK_INGEST__*` environment
//! overrides, then validation. Every key and its default is listed in
//! `config/ingest.example.yaml`.
//!
//! Environment overrides name a key path in upper case with `__` between levels:
//! `TIDEMARK_INGEST__KAFKA__BROKERS=broker-0:9092` sets `kafka.brokers`. The value is read as
//! YAML, so numbers, booleans and even lists
//! (`TIDEMARK_INGEST__TOPICS__RAW='[{name: falco, format: falco}]'`) work.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::decode::{DEFAULT_MAX_RECORD_BYTES, InputFormat};
use crate::error::{Error, Result};

/// Prefix of environment variables that override ingest configuration keys.
pub const ENV_PREFIX: &str = "TIDEMARK_INGEST__";

/// Configuration of `tidemark ingest`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// How to reach Kafka.
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// Topics read and written.
    #[serde(default)]
    pub topics: TopicsConfig,
    /// Limits that keep memory bounded and hostile input harmless.
    #[serde(default)]
    pub limits: LimitsConfig,
}

/// Kafka connection settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated. Default: `127.0.0.1:9092`.
    #[serde(default = "default_brokers")]
    pub brokers: String,
    /// Consumer group of the ingest workers. Default: `tidemark-ingest`.
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// Extra librdkafka properties for both consumer and producer (`security.protocol`,
    /// `sasl.mechanisms`, `ssl.ca.location`, ...). Default: none.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// One raw topic and how to read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTopicConfig {
    /// Topic name.
    pub name: String,
    /// Format of its records; `auto` detects it per record. Default: `auto`.
    #[serde(default)]
    pub format: InputFormat,
    /// Cluster name for records that do not name their cluster (Falco, Tracee, vanilla audit
    /// logs). Default: empty, which keys such workloads under `_`.
    #[serde(default)]
    pub cluster: String,
}

/// Topics read and written by ingest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    /// Raw topics to consume. Default: `tidemark.raw` in `auto` format.
    #[serde(default = "default_raw_topics")]
    pub raw: Vec<RawTopicConfig>,
    /// Signals, keyed by workload. Default: `tidemark.signals`.
    #[serde(default = "default_signals_topic")]
    pub signals: String,
    /// Image facts (registry pushes), keyed by image reference; should be compacted. Default:
    /// `tidemark.image-facts`.
    #[serde(default = "default_image_facts_topic")]
    pub image_facts: String,
    /// Records that could not be decoded, with the reason in headers. Default:
    /// `tidemark.dead-letters`.
    #[serde(default = "default_dead_letters_topic")]
    pub dead_letters: String,
}

/// Limits of the ingest worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest record decoded, in bytes (after gzip decompression); larger ones are dead
    /// letters. Default: 1 MiB.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// Input records whose outputs may await acknowledgement at once. When reached, the worker
    /// stops consuming until acknowledgements arrive: this bounds memory under backpressure.
    /// Default: 10000.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight_records: usize,
    /// Largest dead-letter payload, in bytes; a larger raw record is cut to this size and the
    /// original size is given in the `tidemark-truncated-from` header. Keep it under the
    /// dead-letter topic's `max.message.bytes`. Default: 900 KiB.
    #[serde(default = "default_max_dead_letter_bytes")]
    pub max_dead_letter_bytes: usize,
    /// Largest normalized signal produced, in bytes; a record that yields a larger one goes to
    /// the dead letters instead. Keep it under the output topics' `max.message.bytes` (1 MB by
    /// default on Kafka). Default: 900 KiB.
    #[serde(default = "default_max_output_bytes")]
    pub max_output_bytes: usize,
    /// Seconds between progress log lines. Default: 30.
    #[serde(default = "default_stats_interval_secs")]
    pub stats_interval_secs: u64,
}

fn default_brokers() -> String {
    "127.0.0.1:9092".to_owned()
}
fn default_group_id() -> String {
    "tidemark-ingest".to_owned()
}
fn default_raw_topics() -> Vec<RawTopicConfig> {
    vec![RawTopicConfig {
        name: "tidemark.raw".to_owned(),
        format: InputFormat::Auto,
        cluster: String::new(),
    }]
}
fn default_signals_topic() -> String {
    "tidemark.signals".to_owned()
}
fn default_image_facts_topic() -> String {
    "tidemark.image-facts".to_owned()
}
fn default_dead_letters_topic() -> String {
    "tidemark.dead-letters".to_owned()
}
fn default_max_record_bytes() -> usize {
    DEFAULT_MAX_RECORD_BYTES
}
fn default_max_output_bytes() -> usize {
    900 * 1024
}
fn default_max_dead_letter_bytes() -> usize {
    900 * 1024
}
fn default_max_in_flight() -> usize {
    10_000
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
            raw: default_raw_topics(),
            signals: default_signals_topic(),
            image_facts: default_image_facts_topic(),
            dead_letters: default_dead_letters_topic(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_record_bytes: default_max_record_bytes(),
            max_in_flight_records: default_max_in_flight(),
            max_dead_letter_bytes: default_max_dead_letter_bytes(),
            max_output_bytes: default_max_output_bytes(),
            stats_interval_secs: default_stats_interval_secs(),
        }
    }
}

impl IngestConfig {
    /// Loads the configuration from `path` (or the defaults when `None`), applies the
    /// environment overrides in `env`, and validates the result.
    ///
    /// # Errors
    ///
    /// Returns [`Error::ConfigRead`] when the file cannot be read and [`Error::ConfigInvalid`]
    /// when it or an override is malformed or fails validation.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<IngestConfig> {
        let config: IngestConfig = tidemark_common::config::load(path, env, ENV_PREFIX)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: names, limits, and that no output topic is also an input.
    ///
    /// # Errors
    ///
    /// Returns [`Error::ConfigInvalid`] naming the first offending key.
    pub fn validate(&self) -> Result<()> {
        let invalid = |message: String| Err(Error::ConfigInvalid(message));
        if self.kafka.brokers.trim().is_empty() {
            return invalid("`kafka.brokers` must not be empty".into());
        }
        if self.kafka.group_id.trim().is_empty() {
            return invalid("`kafka.group_id` must not be empty".into());
        }
        if self.topics.raw.is_empty() {
            return invalid("`topics.raw` must list at least one topic".into());
        }
        let outputs = [
            ("topics.signals", &self.topics.signals),
            ("topics.image_facts", &self.topics.image_facts),
            ("topics.dead_letters", &self.topics.dead_letters),
        ];
        for (key, topic) in outputs {
            tidemark_common::config::validate_topic_name(key, topic)?;
        }
        for (index, raw) in self.topics.raw.iter().enumerate() {
            tidemark_common::config::validate_topic_name(
                &format!("topics.raw[{index}].name"),
                &raw.name,
            )?;
            if let Some((key, _)) = outputs.iter().find(|(_, topic)| **topic == raw.name) {
                return invalid(format!(
                    "`topics.raw[{index}].name` `{}` is also `{key}`: ingest would read its own output",
                    raw.name
                ));
            }
            if self.topics.raw[..index]
                .iter()
                .any(|other| other.name == raw.name)
            {
                return invalid(format!("`topics.raw` lists `{}` twice", raw.name));
            }
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.limits.max_record_bytes) {
            return invalid("`limits.max_record_bytes` must be between 1024 and 67108864".into());
        }
        if self.limits.max_in_flight_records == 0 {
            return invalid("`limits.max_in_flight_records` must be at least 1".into());
        }
        if !(4096..=64 * 1024 * 1024).contains(&self.limits.max_output_bytes) {
            return invalid("`limits.max_output_bytes` must be between 4096 and 67108864".into());
        }
        if !(4096..=64 * 1024 * 1024).contains(&self.limits.max_dead_letter_bytes) {
            return invalid(
                "`limits.max_dead_letter_bytes` must be between 4096 and 67108864".into(),
            );
        }
        if self.limits.stats_interval_secs == 0 {
            return invalid("`limits.stats_interval_secs` must be at least 1".into());
        }
        Ok(())
    }

    /// Returns the configuration of raw topic `name`.
    pub fn raw_topic(&self, name: &str) -> Option<&RawTopicConfig> {
        self.topics.raw.iter().find(|raw| raw.name == name)
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
        let config = IngestConfig::load(None, env(&[])).unwrap();
        assert_eq!(config, IngestConfig::default());
    }

    #[test]
    fn environment_overrides_nested_keys() {
        let config = IngestConfig::load(
            None,
            env(&[
                (
                    "TIDEMARK_INGEST__KAFKA__BROKERS",
                    "broker-0:9092,broker-1:9092",
                ),
                ("TIDEMARK_INGEST__LIMITS__MAX_IN_FLIGHT_RECORDS", "500"),
                (
                    "TIDEMARK_INGEST__TOPICS__RAW",
                    "[{name: falco, format: falco, cluster: prod}]",
                ),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(config.kafka.brokers, "broker-0:9092,broker-1:9092");
        assert_eq!(config.limits.max_in_flight_records, 500);
        assert_eq!(config.topics.raw[0].format, InputFormat::Falco);
        assert_eq!(config.topics.raw[0].cluster, "prod");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let error = IngestConfig::load(None, env(&[("TIDEMARK_INGEST__KAFKA__BROKER", "x:1")]))
            .unwrap_err();
        assert!(
            error.to_string().contains("unknown field `broker`"),
            "{error}"
        );
    }

    #[test]
    fn unknown_formats_are_refused() {
        let error = IngestConfig::load(
            None,
            env(&[(
                "TIDEMARK_INGEST__TOPICS__RAW",
                "[{name: a, format: syslog}]",
            )]),
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("unknown variant `syslog`"),
            "{error}"
        );
    }

    #[test]
    fn reading_an_output_topic_is_refused() {
        let error = IngestConfig::load(
            None,
            env(&[("TIDEMARK_INGEST__TOPICS__RAW", "[{name: tidemark.signals}]")]),
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("would read its own output"),
            "{error}"
        );
    }

    #[test]
    fn illegal_topic_names_are_refused() {
        let error = IngestConfig::load(
            None,
            env(&[("TIDEMARK_INGEST__TOPICS__SIGNALS", "bad topic")]),
        )
        .unwrap_err();
        assert!(error.to_string().contains("`topics.signals`"), "{error}");
    }

    #[test]
    fn example_file_parses_and_matches_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/ingest.example.yaml");
        let config = IngestConfig::load(Some(&path), env(&[])).unwrap();
        assert_eq!(config.kafka, KafkaConfig::default());
        assert_eq!(config.limits, LimitsConfig::default());
        assert_eq!(config.topics.signals, default_signals_topic());
    }

    #[test]
    fn helm_chart_default_configuration_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/tidemark/values.yaml");
        let values: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let config: IngestConfig =
            serde_yaml::from_value(values["ingest"]["config"].clone()).unwrap();
        config.validate().unwrap();
        assert_eq!(config.limits, LimitsConfig::default());
        assert_eq!(config.topics.signals, default_signals_topic());
    }

    #[test]
    fn missing_file_names_the_path() {
        let error = IngestConfig::load(Some(Path::new("/nonexistent/tidemark.yaml")), env(&[]))
            .unwrap_err();
        assert!(
            error.to_string().contains("/nonexistent/tidemark.yaml"),
            "{error}"
        );
    }
}
