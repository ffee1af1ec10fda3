//! The detection policy: which images are approved, whose pushes and deploys are trusted, how
//! long a chain may take, and what a miner looks like.
//!
//! Loaded from YAML (`config/policy.example.yaml` documents every key), validated at load with
//! the offending key named. With no file, or with no approved registries or digests, image
//! approval is not judged (nothing can be called unapproved when nothing is approved): the
//! runtime miner indicators still open incidents, deploys alone do not.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use tidemark_proto::v1::Image;

use crate::duration::parse_duration;
use crate::error::{Error, Result};
use crate::indicators::MinerIndicators;

/// The policy file, as written by the operator.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    approved_registries: Vec<String>,
    #[serde(default)]
    approved_digests: Vec<String>,
    #[serde(default)]
    trusted_pushers: Vec<String>,
    #[serde(default)]
    trusted_deployers: Vec<String>,
    #[serde(default)]
    correlation_window: Option<String>,
    #[serde(default)]
    allowed_lateness: Option<String>,
    #[serde(default)]
    max_future_skew: Option<String>,
    #[serde(default)]
    miner: MinerFile,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct MinerFile {
    #[serde(default = "yes")]
    builtin_lists: bool,
    #[serde(default)]
    binaries: Vec<String>,
    #[serde(default)]
    command_markers: Vec<String>,
    #[serde(default)]
    pool_ports: Vec<u16>,
    #[serde(default)]
    pool_domains: Vec<String>,
    #[serde(default)]
    pool_addresses: Vec<String>,
}

fn yes() -> bool {
    true
}

impl Default for MinerFile {
    fn default() -> Self {
        MinerFile {
            builtin_lists: true,
            binaries: Vec::new(),
            command_markers: Vec::new(),
            pool_ports: Vec::new(),
            pool_domains: Vec::new(),
            pool_addresses: Vec::new(),
        }
    }
}

/// Default correlation window: how long after the first evidence later evidence still joins.
pub const DEFAULT_CORRELATION_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Default allowed lateness: how far behind the watermark evidence may arrive and still count.
pub const DEFAULT_ALLOWED_LATENESS: Duration = Duration::from_secs(15 * 60);
/// Default tolerance for event times ahead of the wall clock.
pub const DEFAULT_MAX_FUTURE_SKEW: Duration = Duration::from_secs(10 * 60);

/// How an image fares against the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageVerdict {
    /// Its digest is approved, or its registry and repository are under an approved prefix.
    Approved,
    /// The policy approves images and this one is not among them.
    Unapproved,
    /// The policy approves nothing, so approval is not judged.
    NotJudged,
}

/// A validated detection policy.
#[derive(Debug, Clone)]
pub struct Policy {
    approved_registries: Vec<String>,
    approved_digests: HashSet<String>,
    trusted_pushers: Vec<String>,
    trusted_deployers: Vec<String>,
    /// How long after a workload's first evidence later evidence still joins its chain.
    pub correlation_window: Duration,
    /// How far behind the watermark evidence may arrive and still amend an incident.
    pub allowed_lateness: Duration,
    /// How far ahead of the wall clock an event time may be before it is bad input.
    pub max_future_skew: Duration,
    /// What a miner looks like.
    pub miner: MinerIndicators,
}

impl Policy {
    /// Returns the policy used when no file is given: built-in miner lists, default durations,
    /// no approvals and no trusted identities.
    ///
    /// # Errors
    ///
    /// Returns [`Error::Indicators`] only if the shipped lists are broken.
    pub fn builtin() -> Result<Policy> {
        Policy::from_file(PolicyFile::default())
    }

    /// Loads and validates a policy file.
    ///
    /// # Errors
    ///
    /// Returns [`Error::PolicyRead`] when the file cannot be read and [`Error::PolicyInvalid`]
    /// naming the key when it is malformed.
    pub fn load(path: &Path) -> Result<Policy> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::PolicyRead {
            path: path.to_owned(),
            source,
        })?;
        Policy::from_yaml(&text).map_err(|e| match e {
            Error::PolicyInvalid(message) => {
                Error::PolicyInvalid(format!("`{}`: {message}", path.display()))
            }
            other => other,
        })
    }

    /// Parses and validates a policy from YAML text; an empty document is the built-in policy.
    ///
    /// # Errors
    ///
    /// Returns [`Error::PolicyInvalid`] naming the offending key.
    pub fn from_yaml(text: &str) -> Result<Policy> {
        let file: Option<PolicyFile> =
            serde_yaml::from_str(text).map_err(|e| Error::PolicyInvalid(e.to_string()))?;
        Policy::from_file(file.unwrap_or_default())
    }

    fn from_file(file: PolicyFile) -> Result<Policy> {
        let invalid = |message: String| Error::PolicyInvalid(message);
        let mut approved_registries = Vec::new();
        for (i, prefix) in file.approved_registries.iter().enumerate() {
            approved_registries.push(normalize_prefix(prefix).ok_or_else(|| {
                invalid(format!(
                    "`approved_registries[{i}]` `{prefix}` is not a registry prefix"
                ))
            })?);
        }
        let mut approved_digests = HashSet::new();
        for (i, digest) in file.approved_digests.iter().enumerate() {
            let normalized = normalize_digest(digest).ok_or_else(|| {
                invalid(format!(
                    "`approved_digests[{i}]` `{digest}` is not `sha256:<64 hex>`"
                ))
            })?;
            approved_digests.insert(normalized);
        }
        for (key, identities) in [
            ("trusted_pushers", &file.trusted_pushers),
            ("trusted_deployers", &file.trusted_deployers),
        ] {
            if let Some(i) = identities
                .iter()
                .position(|id| id.trim().is_empty() || id.trim() == "*")
            {
                return Err(invalid(format!(
                    "`{key}[{i}]` must name an identity (a lone `*` would trust everyone)"
                )));
            }
        }
        let duration = |key: &str, value: &Option<String>, default: Duration| -> Result<Duration> {
            match value {
                None => Ok(default),
                Some(text) => {
                    parse_duration(text).map_err(|reason| invalid(format!("`{key}`: {reason}")))
                }
            }
        };
        let correlation_window = duration(
            "correlation_window",
            &file.correlation_window,
            DEFAULT_CORRELATION_WINDOW,
        )?;
        let allowed_lateness = duration(
            "allowed_lateness",
            &file.allowed_lateness,
            DEFAULT_ALLOWED_LATENESS,
        )?;
        let max_future_skew = duration(
            "max_future_skew",
            &file.max_future_skew,
            DEFAULT_MAX_FUTURE_SKEW,
        )?;
        if correlation_window.is_zero() {
            return Err(invalid(
                "`correlation_window` must be longer than zero".into(),
            ));
        }

        let mut miner = if file.miner.builtin_lists {
            MinerIndicators::builtin()?
        } else {
            MinerIndicators::default()
        };
        miner.binaries.extend(
            file.miner
                .binaries
                .iter()
                .map(|b| b.trim().to_ascii_lowercase()),
        );
        for (i, marker) in file.miner.command_markers.iter().enumerate() {
            if marker.trim().len() < 3 {
                return Err(invalid(format!(
                    "`miner.command_markers[{i}]` is too short to be a marker"
                )));
            }
            miner.command_markers.push(marker.to_ascii_lowercase());
        }
        if let Some(i) = file.miner.pool_ports.iter().position(|p| *p == 0) {
            return Err(invalid(format!(
                "`miner.pool_ports[{i}]` must be a port from 1 to 65535"
            )));
        }
        miner
            .pool_ports
            .extend(file.miner.pool_ports.iter().copied());
        for domain in &file.miner.pool_domains {
            miner.add_domain(domain);
        }
        for (i, address) in file.miner.pool_addresses.iter().enumerate() {
            let parsed: IpAddr = address.trim().parse().map_err(|_| {
                invalid(format!(
                    "`miner.pool_addresses[{i}]` `{address}` is not an IP address"
                ))
            })?;
            miner.pool_addresses.insert(parsed);
        }

        Ok(Policy {
            approved_registries,
            approved_digests,
            trusted_pushers: file.trusted_pushers,
            trusted_deployers: file.trusted_deployers,
            correlation_window,
            allowed_lateness,
            max_future_skew,
            miner,
        })
    }

    /// Judges an image: approved by digest, or by a registry prefix that ends at a path
    /// boundary, so `registry.corp.example/` never approves `registry.corp.example.evil.com`.
    pub fn judge_image(&self, image: &Image) -> ImageVerdict {
        if self.approved_registries.is_empty() && self.approved_digests.is_empty() {
            return ImageVerdict::NotJudged;
        }
        if !image.digest.is_empty() && self.approved_digests.contains(&image.digest) {
            return ImageVerdict::Approved;
        }
        let name = format!("{}/{}", image.registry, image.repository);
        let approved = self.approved_registries.iter().any(|prefix| {
            name.starts_with(prefix.as_str()) || Some(name.as_str()) == prefix.strip_suffix('/')
        });
        if approved {
            ImageVerdict::Approved
        } else {
            ImageVerdict::Unapproved
        }
    }

    /// Returns whether `identity` is a trusted pusher.
    pub fn is_trusted_pusher(&self, identity: &str) -> bool {
        matches_identity(&self.trusted_pushers, identity)
    }

    /// Returns whether `identity` is a trusted deployer.
    pub fn is_trusted_deployer(&self, identity: &str) -> bool {
        matches_identity(&self.trusted_deployers, identity)
    }

    /// Returns whether any image is approved, so that approval can be judged.
    pub fn judges_images(&self) -> bool {
        !self.approved_registries.is_empty() || !self.approved_digests.is_empty()
    }
}

/// Matches an identity exactly, or against an entry ending in `*` as a prefix.
fn matches_identity(entries: &[String], identity: &str) -> bool {
    if identity.is_empty() {
        return false;
    }
    entries.iter().any(|entry| match entry.strip_suffix('*') {
        Some(prefix) => identity.starts_with(prefix),
        None => entry == identity,
    })
}

/// Normalizes an approved-registry prefix: lower-cases the host, maps Docker Hub aliases to
/// `docker.io`, and makes a bare host end with `/` so it cannot match a longer host name.
fn normalize_prefix(prefix: &str) -> Option<String> {
    let prefix = prefix.trim();
    let prefix = prefix.split_once("://").map_or(prefix, |(_, rest)| rest);
    if prefix.is_empty() || prefix.contains(char::is_whitespace) || prefix.contains(['@', '*']) {
        return None;
    }
    let (host, path) = prefix.split_once('/').unwrap_or((prefix, ""));
    let host = match host.to_ascii_lowercase().as_str() {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_owned(),
        other => other.to_owned(),
    };
    if host.is_empty() {
        return None;
    }
    // Every prefix ends at a path boundary: `team/web` approves `team/web` and `team/web/...`,
    // never `team/webshop`.
    let path = path.trim_end_matches('/');
    Some(if path.is_empty() {
        format!("{host}/")
    } else {
        format!("{host}/{path}/")
    })
}

fn normalize_digest(digest: &str) -> Option<String> {
    let digest = digest.trim().to_ascii_lowercase();
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(registry: &str, repository: &str, digest: &str) -> Image {
        Image {
            reference: format!("{registry}/{repository}"),
            registry: registry.into(),
            repository: repository.into(),
            tag: "1".into(),
            digest: digest.into(),
        }
    }

    #[test]
    fn registry_prefixes_stop_at_a_path_boundary() {
        let policy = Policy::from_yaml("approved_registries: [registry.corp.example]").unwrap();
        let corp = image("registry.corp.example", "shop/web", "");
        let evil = image("registry.corp.example.evil.com", "shop/web", "");
        assert_eq!(policy.judge_image(&corp), ImageVerdict::Approved);
        assert_eq!(policy.judge_image(&evil), ImageVerdict::Unapproved);

        let policy =
            Policy::from_yaml("approved_registries: [\"registry.corp.example/\"]").unwrap();
        assert_eq!(policy.judge_image(&evil), ImageVerdict::Unapproved);
        assert_eq!(policy.judge_image(&corp), ImageVerdict::Approved);
    }

    #[test]
    fn repository_prefixes_approve_only_their_subtree() {
        let policy = Policy::from_yaml("approved_registries: [docker.io/library/]").unwrap();
        assert_eq!(
            policy.judge_image(&image("docker.io", "library/nginx", "")),
            ImageVerdict::Approved
        );
        assert_eq!(
            policy.judge_image(&image("docker.io", "yzsqbe/ka", "")),
            ImageVerdict::Unapproved
        );
    }

    #[test]
    fn approved_digest_wins_over_registry() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let policy = Policy::from_yaml(&format!(
            "approved_registries: [registry.corp.example]\napproved_digests: [\"{}\"]",
            digest.to_uppercase().replace("SHA256", "sha256")
        ))
        .unwrap();
        assert_eq!(
            policy.judge_image(&image("docker.io", "library/busybox", &digest)),
            ImageVerdict::Approved
        );
    }

    #[test]
    fn nothing_is_judged_without_approvals() {
        let policy = Policy::builtin().unwrap();
        assert!(!policy.judges_images());
        assert_eq!(
            policy.judge_image(&image("docker.io", "yzsqbe/ka", "")),
            ImageVerdict::NotJudged
        );
        assert_eq!(policy.correlation_window, DEFAULT_CORRELATION_WINDOW);
        assert!(policy.miner.binaries.contains("xmrig"));
    }

    #[test]
    fn identities_match_exactly_or_by_trailing_star() {
        let policy = Policy::from_yaml(
            "trusted_deployers: [\"system:serviceaccount:argocd:*\", ci-deployer]",
        )
        .unwrap();
        assert!(
            policy
                .is_trusted_deployer("system:serviceaccount:argocd:argocd-application-controller")
        );
        assert!(policy.is_trusted_deployer("ci-deployer"));
        assert!(!policy.is_trusted_deployer("ci-deployer-2"));
        assert!(!policy.is_trusted_deployer(""));
    }

    #[test]
    fn invalid_keys_are_named() {
        let cases = [
            (
                "approved_registry: [x]",
                "unknown field `approved_registry`",
            ),
            ("approved_digests: [sha256:abc]", "`approved_digests[0]`"),
            ("trusted_pushers: [\"*\"]", "`trusted_pushers[0]`"),
            ("correlation_window: soon", "`correlation_window`"),
            ("correlation_window: 0s", "longer than zero"),
            (
                "miner: {pool_addresses: [pool.example]}",
                "`miner.pool_addresses[0]`",
            ),
            ("miner: {pool_ports: [0]}", "`miner.pool_ports[0]`"),
            (
                "approved_registries: [\"bad prefix\"]",
                "`approved_registries[0]`",
            ),
        ];
        for (yaml, expected) in cases {
            let error = Policy::from_yaml(yaml).unwrap_err().to_string();
            assert!(error.contains(expected), "{yaml}: {error}");
        }
    }

    #[test]
    fn user_indicators_extend_or_replace_the_builtin_lists() {
        let policy = Policy::from_yaml(
            "miner: {binaries: [SystemRaid], pool_domains: [chimaera.cc], pool_ports: [21582]}",
        )
        .unwrap();
        assert!(policy.miner.binaries.contains("systemraid"));
        assert!(policy.miner.binaries.contains("xmrig"));
        assert_eq!(
            policy.miner.pool_domain_of("dl.chimaera.cc"),
            Some("chimaera.cc")
        );
        let policy = Policy::from_yaml("miner: {builtin_lists: false, binaries: [x]}").unwrap();
        assert!(!policy.miner.binaries.contains("xmrig"));
    }

    #[test]
    fn example_policy_file_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/policy.example.yaml");
        let policy = Policy::load(&path).unwrap();
        assert!(policy.judges_images());
        assert_eq!(policy.allowed_lateness, Duration::from_secs(15 * 60));
    }
}
