//! Configuration of `tidemark api`, loaded from a YAML file plus `TIDEMARK_API__*` environment
//! overrides. `config/api.example.yaml` lists every key with its default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tidemark_common::config::{ConfigError, validate_topic_name};

use crate::error::{Error, Result};

/// Environment prefix of the api role.
pub const ENV_PREFIX: &str = "TIDEMARK_API__";

/// Configuration of `tidemark api`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// How to reach Kafka.
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// Topics read and written.
    #[serde(default)]
    pub topics: TopicsConfig,
    /// Where the materialized store lives.
    #[serde(default)]
    pub store: StoreConfig,
    /// The gRPC server.
    #[serde(default)]
    pub server: ServerConfig,
}

/// Kafka connection settings of the api.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated. Default: `127.0.0.1:9092`.
    #[serde(default = "default_brokers")]
    pub brokers: String,
    /// Extra librdkafka properties for the consumer and the producer (`security.protocol`,
    /// `sasl.mechanisms`, `ssl.ca.location`, ...). Default: none.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// Topics of the api.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    /// Incident versions published by the correlator. Default: `tidemark.incidents`.
    #[serde(default = "default_incidents_topic")]
    pub incidents: String,
    /// Status changes made through the api, keyed by incident id; every replica reads all of
    /// it. Default: `tidemark.incident-status`.
    #[serde(default = "default_status_topic")]
    pub status: String,
    /// Signals, for workload timelines; empty turns timelines off. Default: `tidemark.signals`.
    #[serde(default = "default_signals_topic")]
    pub signals: String,
}

/// The api's own RocksDB store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Directory of the store. Every replica has its own. Default: `/var/lib/tidemark/api`.
    #[serde(default = "default_store_dir")]
    pub dir: PathBuf,
    /// How long signals are kept for workload timelines, in hours of event time. Default: 72.
    #[serde(default = "default_timeline_retention_hours")]
    pub timeline_retention_hours: u64,
}

/// The gRPC server and its security.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on. Default: `127.0.0.1:50051`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Allow a non-loopback address without TLS and bearer tokens. Default: false.
    #[serde(default)]
    pub allow_insecure_non_loopback: bool,
    /// TLS; without it the server speaks plaintext HTTP/2.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Bearer tokens accepted, each with the identity it stands for. Empty turns token checks
    /// off.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// Largest request accepted, in bytes. Default: 65536.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Largest page of `ListIncidents` and `GetWorkloadTimeline`. Default: 1000.
    #[serde(default = "default_max_page_size")]
    pub max_page_size: u32,
}

/// TLS files, PEM encoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Server certificate chain.
    pub cert: PathBuf,
    /// Server private key.
    pub key: PathBuf,
    /// CA that client certificates must chain to; set it to require client certificates
    /// (mTLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// One accepted bearer token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The identity recorded for requests with this token (`soc-dashboard`, `alice`).
    pub identity: String,
    /// The token itself.
    pub token: String,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: default_brokers(),
            properties: BTreeMap::new(),
        }
    }
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            incidents: default_incidents_topic(),
            status: default_status_topic(),
            signals: default_signals_topic(),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            dir: default_store_dir(),
            timeline_retention_hours: default_timeline_retention_hours(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            allow_insecure_non_loopback: false,
            tls: None,
            tokens: Vec::new(),
            max_request_bytes: default_max_request_bytes(),
            max_page_size: default_max_page_size(),
        }
    }
}

fn default_brokers() -> String {
    "127.0.0.1:9092".to_owned()
}

fn default_incidents_topic() -> String {
    "tidemark.incidents".to_owned()
}

fn default_status_topic() -> String {
    "tidemark.incident-status".to_owned()
}

fn default_signals_topic() -> String {
    "tidemark.signals".to_owned()
}

fn default_store_dir() -> PathBuf {
    PathBuf::from("/var/lib/tidemark/api")
}

fn default_timeline_retention_hours() -> u64 {
    72
}

fn default_listen() -> String {
    "127.0.0.1:50051".to_owned()
}

fn default_max_request_bytes() -> usize {
    64 * 1024
}

fn default_max_page_size() -> u32 {
    1000
}

impl ApiConfig {
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
    ) -> Result<ApiConfig> {
        let config: ApiConfig = tidemark_common::config::load(path, env, ENV_PREFIX)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every key, naming the first that is wrong. The listen address is checked against
    /// the security rules here too, so a refused address fails at start.
    ///
    /// # Errors
    ///
    /// Returns [`Error::Config`] naming the offending key.
    pub fn validate(&self) -> Result<()> {
        let invalid = |message: String| Err(Error::Config(ConfigError::Invalid(message)));
        if self.kafka.brokers.trim().is_empty() {
            return invalid("`kafka.brokers` must not be empty".to_owned());
        }
        validate_topic_name("topics.incidents", &self.topics.incidents)?;
        validate_topic_name("topics.status", &self.topics.status)?;
        if !self.topics.signals.is_empty() {
            validate_topic_name("topics.signals", &self.topics.signals)?;
        }
        let names = [
            ("topics.incidents", &self.topics.incidents),
            ("topics.status", &self.topics.status),
            ("topics.signals", &self.topics.signals),
        ];
        for (index, (key, topic)) in names.iter().enumerate() {
            if let Some((other, _)) = names[..index].iter().find(|(_, t)| t == topic) {
                return invalid(format!("`{key}` and `{other}` are both `{topic}`"));
            }
        }
        if self.store.dir.as_os_str().is_empty() {
            return invalid("`store.dir` must not be empty".to_owned());
        }
        if self.store.timeline_retention_hours == 0 {
            return invalid("`store.timeline_retention_hours` must be at least 1".to_owned());
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.server.max_request_bytes) {
            return invalid(
                "`server.max_request_bytes` must be between 1024 and 16777216".to_owned(),
            );
        }
        if !(1..=10_000).contains(&self.server.max_page_size) {
            return invalid("`server.max_page_size` must be between 1 and 10000".to_owned());
        }
        for (index, token) in self.server.tokens.iter().enumerate() {
            if token.identity.trim().is_empty() {
                return invalid(format!(
                    "`server.tokens[{index}].identity` must not be empty"
                ));
            }
            if token.token.trim() != token.token {
                return invalid(format!(
                    "`server.tokens[{index}].token` must not start or end with white space"
                ));
            }
            if token.token.len() < 16 {
                return invalid(format!(
                    "`server.tokens[{index}].token` must be at least 16 characters"
                ));
            }
        }
        self.check_listen()?;
        Ok(())
    }

    /// The parsed listen address.
    ///
    /// # Errors
    ///
    /// Returns [`Error::Config`] when `server.listen` is not `HOST:PORT` with an IP host.
    pub fn listen_address(&self) -> Result<SocketAddr> {
        self.server.listen.parse().map_err(|_| {
            Error::Config(ConfigError::Invalid(format!(
                "`server.listen` `{}` is not an IP address and port (`127.0.0.1:50051`)",
                self.server.listen
            )))
        })
    }

    /// Refuses a non-loopback listen address unless TLS and bearer tokens are configured, or
    /// the operator explicitly allowed it.
    fn check_listen(&self) -> Result<()> {
        let address = self.listen_address()?;
        let secured = self.server.tls.is_some() && !self.server.tokens.is_empty();
        if !address.ip().is_loopback() && !secured && !self.server.allow_insecure_non_loopback {
            return Err(Error::Config(ConfigError::Invalid(format!(
                "`server.listen` `{address}` is not a loopback address, and the server has no \
                 TLS and bearer tokens; configure `server.tls` and `server.tokens`, or set \
                 `server.allow_insecure_non_loopback: true` to serve it unprotected"
            ))));
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
    fn defaults_are_valid_and_match_the_example_file() {
        let config = ApiConfig::load(None, env(&[])).unwrap();
        assert_eq!(config, ApiConfig::default());
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/api.example.yaml");
        let example = ApiConfig::load(Some(&path), env(&[])).unwrap();
        assert_eq!(example, ApiConfig::default());
    }

    #[test]
    fn non_loopback_listen_without_protection_is_refused() {
        let error = ApiConfig::load(
            None,
            env(&[("TIDEMARK_API__SERVER__LISTEN", "0.0.0.0:50051")]),
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("not a loopback address"),
            "{error}"
        );
        let allowed = ApiConfig::load(
            None,
            env(&[
                ("TIDEMARK_API__SERVER__LISTEN", "0.0.0.0:50051"),
                ("TIDEMARK_API__SERVER__ALLOW_INSECURE_NON_LOOPBACK", "true"),
            ]),
        );
        assert!(allowed.is_ok());
    }

    #[test]
    fn short_tokens_and_unknown_keys_are_refused() {
        let error = ApiConfig::load(
            None,
            env(&[(
                "TIDEMARK_API__SERVER__TOKENS",
                "[{identity: soc, token: short}]",
            )]),
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("at least 16 characters"),
            "{error}"
        );
        let error = ApiConfig::load(None, env(&[("TIDEMARK_API__STORE__PATH", "/x")])).unwrap_err();
        assert!(
            error.to_string().contains("unknown field `path`"),
            "{error}"
        );
    }

    #[test]
    fn helm_chart_default_api_configuration_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/tidemark/values.yaml");
        let values: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let config: ApiConfig = serde_yaml::from_value(values["api"]["config"].clone()).unwrap();
        config.validate().unwrap();
        assert_eq!(config.topics, TopicsConfig::default());
        // The chart mounts the store volume at `store.dir`.
        assert_eq!(config.store, StoreConfig::default());
        // In the cluster the server listens on every address, unprotected unless the operator
        // adds TLS (the chart sets `server.tls` itself) and tokens.
        assert_eq!(config.listen_address().unwrap().port(), 50051);
        assert!(config.server.allow_insecure_non_loopback);
        assert_eq!(config.server.tls, None);
        assert!(config.server.tokens.is_empty());
        assert_eq!(
            config.server.max_request_bytes,
            ServerConfig::default().max_request_bytes
        );
        assert_eq!(
            config.server.max_page_size,
            ServerConfig::default().max_page_size
        );
    }
}
