//! Configuration documents: a YAML file, then environment overrides, then the role's typed
//! configuration.
//!
//! Every role has its own environment prefix, `TIDEMARK_<ROLE>__`, so roles that share one
//! environment (the all-in-one process, a shared `.env`) never read each other's keys. The rest
//! of a variable's name is the key path in upper case with `__` between levels:
//! `TIDEMARK_INGEST__KAFKA__BROKERS=broker-0:9092` sets `kafka.brokers` of the ingest role. The
//! value is read as YAML, so numbers, booleans and even lists
//! (`TIDEMARK_INGEST__TOPICS__RAW='[{name: falco, format: falco}]'`) work.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Prefix shared by every environment variable tidemark reads.
pub const ENV_PREFIX: &str = "TIDEMARK_";

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("failed to read configuration file `{path}`")]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is malformed or invalid.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Returns the environment prefix of a role: `TIDEMARK_INGEST__` for `ingest`.
pub fn role_prefix(role: &str) -> String {
    format!("{ENV_PREFIX}{}__", role.to_ascii_uppercase())
}

/// Reads `path` (or an empty document without one), applies the variables of `env` that start
/// with `prefix`, and deserializes the result.
///
/// # Errors
///
/// Returns [`ConfigError::Read`] when the file cannot be read, and [`ConfigError::Invalid`]
/// when it is not YAML, an override is malformed, or the document does not match `T` (an
/// unknown key, a wrong type), with the key named.
pub fn load<T: DeserializeOwned>(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    prefix: &str,
) -> Result<T, ConfigError> {
    let mut document = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            serde_yaml::from_str::<serde_yaml::Value>(&text).map_err(|error| {
                ConfigError::Invalid(format!("`{}` is not valid YAML: {error}", path.display()))
            })?
        }
        None => serde_yaml::Value::Mapping(serde_yaml::Mapping::new()),
    };
    if document.is_null() {
        document = serde_yaml::Value::Mapping(serde_yaml::Mapping::new());
    }
    apply_env_overrides(&mut document, env, prefix)?;
    serde_yaml::from_value(document).map_err(|error| ConfigError::Invalid(error.to_string()))
}

/// Checks that `name`, the value of configuration key `key`, is a legal Kafka topic name.
///
/// # Errors
///
/// Returns [`ConfigError::Invalid`] naming the key when it is not.
pub fn validate_topic_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let legal = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    if name.is_empty() || name.len() > 249 || !name.bytes().all(legal) {
        return Err(ConfigError::Invalid(format!(
            "`{key}` `{name}` is not a valid Kafka topic name (1 to 249 of letters, digits, `.`, `_`, `-`)"
        )));
    }
    Ok(())
}

/// Applies `<prefix>A__B=value` overrides to the YAML document.
fn apply_env_overrides(
    document: &mut serde_yaml::Value,
    env: impl IntoIterator<Item = (String, String)>,
    prefix: &str,
) -> Result<(), ConfigError> {
    let mut overrides: Vec<(String, String)> = env
        .into_iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .collect();
    overrides.sort();
    for (name, value) in overrides {
        let path: Vec<String> = name[prefix.len()..]
            .split("__")
            .map(|part| part.to_ascii_lowercase())
            .collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Invalid(format!(
                "environment variable `{name}` has an empty key"
            )));
        }
        let parsed: serde_yaml::Value = serde_yaml::from_str(&value).map_err(|error| {
            ConfigError::Invalid(format!(
                "environment variable `{name}` is not valid YAML: {error}"
            ))
        })?;
        // A value that YAML reads as null (empty string) is kept as an empty string.
        let parsed = if parsed.is_null() {
            serde_yaml::Value::String(value.clone())
        } else {
            parsed
        };
        let mut node = &mut *document;
        for (depth, key) in path.iter().enumerate() {
            let serde_yaml::Value::Mapping(map) = node else {
                return Err(ConfigError::Invalid(format!(
                    "environment variable `{name}` sets a key inside `{}`, which is not a section",
                    path[..depth].join(".")
                )));
            };
            let key = serde_yaml::Value::String(key.clone());
            if depth + 1 == path.len() {
                map.insert(key, parsed.clone());
                break;
            }
            node = map
                .entry(key)
                .or_insert_with(|| serde_yaml::Value::Mapping(serde_yaml::Mapping::new()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Example {
        #[serde(default)]
        kafka: BTreeMap<String, serde_yaml::Value>,
        #[serde(default)]
        limit: u32,
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn overrides_of_other_roles_are_not_read() {
        let example: Example = load(
            None,
            env(&[
                ("TIDEMARK_INGEST__LIMIT", "7"),
                ("TIDEMARK_CORRELATE__UNKNOWN", "1"),
                ("TIDEMARK_LOG", "debug"),
            ]),
            &role_prefix("ingest"),
        )
        .unwrap();
        assert_eq!(example.limit, 7);
    }

    #[test]
    fn overrides_reach_nested_keys_and_keep_empty_strings() {
        let example: Example = load(
            None,
            env(&[
                ("TIDEMARK_INGEST__KAFKA__BROKERS", "a:1,b:2"),
                ("TIDEMARK_INGEST__KAFKA__GROUP", ""),
            ]),
            &role_prefix("ingest"),
        )
        .unwrap();
        assert_eq!(example.kafka["brokers"], serde_yaml::Value::from("a:1,b:2"));
        assert_eq!(example.kafka["group"], serde_yaml::Value::from(""));
    }

    #[test]
    fn overrides_with_an_empty_key_are_refused() {
        let error = load::<Example>(
            None,
            env(&[("TIDEMARK_INGEST__KAFKA____X", "1")]),
            &role_prefix("ingest"),
        )
        .unwrap_err();
        assert!(error.to_string().contains("empty key"), "{error}");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let error = load::<Example>(
            None,
            env(&[("TIDEMARK_INGEST__LIMITS", "3")]),
            &role_prefix("ingest"),
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("unknown field `limits`"),
            "{error}"
        );
    }

    #[test]
    fn an_empty_file_is_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.yaml");
        std::fs::write(&path, "").unwrap();
        let example: Example = load(Some(&path), env(&[]), "TIDEMARK_X__").unwrap();
        assert_eq!(example.limit, 0);
    }

    #[test]
    fn illegal_topic_names_name_the_key() {
        let error = validate_topic_name("topics.late", "bad topic").unwrap_err();
        assert!(error.to_string().contains("`topics.late`"), "{error}");
        validate_topic_name("topics.late", "tidemark.late_v1-x").unwrap();
    }
}
