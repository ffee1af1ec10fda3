//! Miner indicators: binary names, command-line markers, pool ports, domains and addresses.
//!
//! The built-in set is read from the public lists shipped in `correlator/indicators/` (Falco's
//! sandbox rules, five Sigma rules, maltrail's `crypto_mining.txt`), so a stock policy catches
//! what the community rules catch. A policy file adds its own entries on top, or replaces the
//! built-in set.

use std::collections::HashSet;
use std::net::IpAddr;

use serde_yaml::Value;

use crate::error::{Error, Result};

const FALCO_SANDBOX_RULES: &str = include_str!("../indicators/falco-sandbox_rules.yaml");
const SIGMA_COMMAND_LINE: &str =
    include_str!("../indicators/sigma/proc_creation_lnx_crypto_mining.yml");
const SIGMA_POOL_RULES: [&str; 4] = [
    include_str!("../indicators/sigma/net_connection_lnx_crypto_mining_indicators.yml"),
    include_str!("../indicators/sigma/net_connection_win_domain_crypto_mining_pools.yml"),
    include_str!("../indicators/sigma/zeek_dns_mining_pools.yml"),
    include_str!("../indicators/sigma/net_dns_pua_cryptocoin_mining_xmr.yml"),
];
const MALTRAIL: &str = include_str!("../indicators/crypto_mining.txt");
const POOL_DOMAIN_UNION: &str = include_str!("../indicators/derived_pool_domains_union.tsv");

/// Domains in the public lists that name a shared dynamic-DNS apex, not a pool.
const EXCLUDED_DOMAINS: [&str; 1] = ["mooo.com"];

/// Stratum URL schemes, matched anywhere in a command line.
const STRATUM_SCHEMES: [&str; 6] = [
    "stratum+tcp://",
    "stratum+ssl://",
    "stratum+udp://",
    "stratum2+tcp://",
    "stratum2+ssl://",
    "stratum+tls://",
];

/// Miner flags that ordinary programs do not use (xmrig and its forks).
const MINER_FLAGS: [&str; 8] = [
    "--donate-level",
    "--cpu-priority",
    "--nicehash",
    "--randomx-mode",
    "--randomx-1gb-pages",
    "--coin=monero",
    "--max-cpu-usage",
    "--cpu-max-threads-hint",
];

/// Hashing algorithms named by `-a`/`--algo` in miner command lines.
const MINER_ALGORITHMS: [&str; 14] = [
    "rx/0",
    "rx/wow",
    "rx/arq",
    "rx/graft",
    "randomx",
    "cn/r",
    "cn/0",
    "cn/1",
    "cn/half",
    "cn-heavy/0",
    "argon2/chukwa",
    "kawpow",
    "ghostrider",
    "astrobwt",
];

/// The indicators a policy matches processes and connections against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MinerIndicators {
    /// Process names of known miners, lower-cased (`xmrig`, `xmr-stak`, ...).
    pub binaries: HashSet<String>,
    /// Substrings that mark a miner command line, lower-cased (`stratum+tcp://`,
    /// `--donate-level=0`, ...).
    pub command_markers: Vec<String>,
    /// Ports pools listen on.
    pub pool_ports: HashSet<u16>,
    /// Pool domains; a host matches a domain or any of its subdomains.
    pub pool_domains: HashSet<String>,
    /// Pool IP addresses.
    pub pool_addresses: HashSet<IpAddr>,
    /// Pool endpoints known as address and port together.
    pub pool_endpoints: HashSet<(IpAddr, u16)>,
}

impl MinerIndicators {
    /// Returns the indicators of the shipped public lists.
    ///
    /// # Errors
    ///
    /// Returns [`Error::Indicators`] if a shipped list cannot be read, which a test rules out.
    pub fn builtin() -> Result<MinerIndicators> {
        let mut indicators = MinerIndicators::default();
        indicators.add_falco_lists()?;
        indicators.add_sigma_lists()?;
        indicators.add_maltrail();
        for line in POOL_DOMAIN_UNION.lines().filter(|l| !l.starts_with('#')) {
            if let Some(domain) = line.split('\t').next() {
                indicators.add_domain(domain);
            }
        }
        indicators
            .command_markers
            .extend(STRATUM_SCHEMES.iter().map(|s| (*s).to_owned()));
        indicators
            .command_markers
            .extend(MINER_FLAGS.iter().map(|s| (*s).to_owned()));
        indicators.command_markers.sort();
        indicators.command_markers.dedup();
        Ok(indicators)
    }

    fn add_falco_lists(&mut self) -> Result<()> {
        let rules: Value = serde_yaml::from_str(FALCO_SANDBOX_RULES)
            .map_err(|e| Error::Indicators(format!("falco sandbox rules: {e}")))?;
        let list = |name: &str| -> Vec<Value> {
            rules
                .as_sequence()
                .into_iter()
                .flatten()
                .filter(|item| item.get("list").and_then(Value::as_str) == Some(name))
                .flat_map(|item| item.get("items").and_then(Value::as_sequence).cloned())
                .flatten()
                .collect()
        };
        for binary in list("miner_binaries") {
            if let Some(name) = binary.as_str() {
                self.binaries.insert(name.to_ascii_lowercase());
            }
        }
        for port in list("miner_ports") {
            let port = port.as_u64().and_then(|p| u16::try_from(p).ok());
            self.pool_ports.extend(port);
        }
        for name in ["miner_domains", "https_miner_domains", "http_miner_domains"] {
            for domain in list(name) {
                if let Some(domain) = domain.as_str() {
                    self.add_domain(domain);
                }
            }
        }
        if self.binaries.is_empty() || self.pool_ports.is_empty() {
            return Err(Error::Indicators("falco miner lists not found".into()));
        }
        Ok(())
    }

    fn add_sigma_lists(&mut self) -> Result<()> {
        let rule: Value = serde_yaml::from_str(SIGMA_COMMAND_LINE)
            .map_err(|e| Error::Indicators(format!("sigma command-line rule: {e}")))?;
        let markers = rule["detection"]["selection"]["CommandLine|contains"].as_sequence();
        for marker in markers.into_iter().flatten().filter_map(Value::as_str) {
            // The rule's markers carry significant spaces (` -o pool.`); keep them.
            self.command_markers.push(marker.to_ascii_lowercase());
        }
        for text in SIGMA_POOL_RULES {
            let rule: Value = serde_yaml::from_str(text)
                .map_err(|e| Error::Indicators(format!("sigma pool rule: {e}")))?;
            let Some(selection) = rule["detection"]["selection"].as_mapping() else {
                continue;
            };
            for (key, values) in selection {
                let key = key.as_str().unwrap_or_default();
                if !(key.starts_with("DestinationHostname") || key.starts_with("query")) {
                    continue;
                }
                for domain in values
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    self.add_domain(domain);
                }
            }
        }
        Ok(())
    }

    fn add_maltrail(&mut self) {
        for line in MALTRAIL.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Ok(address) = line.parse::<IpAddr>() {
                self.pool_addresses.insert(address);
            } else if let Some((host, port)) = line.rsplit_once(':') {
                match (host.parse::<IpAddr>(), port.parse::<u16>()) {
                    (Ok(address), Ok(port)) => {
                        self.pool_endpoints.insert((address, port));
                    }
                    _ => self.add_domain(host),
                }
            } else {
                self.add_domain(line);
            }
        }
    }

    /// Adds a pool domain, lower-cased, without a leading `*.` or `.`.
    pub fn add_domain(&mut self, domain: &str) {
        let domain = domain
            .trim()
            .trim_start_matches("*.")
            .trim_start_matches('.');
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if domain.is_empty() || EXCLUDED_DOMAINS.contains(&domain.as_str()) {
            return;
        }
        self.pool_domains.insert(domain);
    }

    /// Returns the listed domain that `host` is or is a subdomain of.
    pub fn pool_domain_of<'a>(&'a self, host: &str) -> Option<&'a str> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let mut candidate = host.as_str();
        loop {
            if let Some(found) = self.pool_domains.get(candidate) {
                return Some(found);
            }
            let (_, parent) = candidate.split_once('.')?;
            // A bare top-level domain is never a pool.
            if !parent.contains('.') {
                return None;
            }
            candidate = parent;
        }
    }

    /// Returns a miner marker found in a command line: the longest listed marker (a stratum URL,
    /// a miner flag), else an algorithm given to `-a`/`--algo`, a pool domain, or a wallet
    /// address.
    pub fn command_marker(&self, command_line: &str) -> Option<String> {
        let lower = command_line.to_ascii_lowercase();
        // Show an analyst the most telling listed marker: a stratum URL, else the longest
        // (`--donate-level` rather than `-o pool.`).
        let listed = self
            .command_markers
            .iter()
            .filter(|m| lower.contains(m.as_str()))
            .max_by_key(|m| {
                (
                    m.contains("stratum"),
                    m.len(),
                    std::cmp::Reverse(m.as_str()),
                )
            });
        if let Some(marker) = listed {
            return Some(marker.trim().to_owned());
        }
        let words: Vec<&str> = lower.split_whitespace().collect();
        for (i, word) in words.iter().enumerate() {
            let algorithm = match word.split_once('=') {
                Some(("--algo" | "-a", value)) => Some(value),
                _ if matches!(*word, "-a" | "--algo") => words.get(i + 1).copied(),
                _ => None,
            };
            if let Some(algorithm) = algorithm.filter(|a| MINER_ALGORITHMS.contains(a)) {
                return Some(format!("{word} {algorithm}"));
            }
        }
        for word in command_line.split(|c: char| c.is_whitespace() || c == '=' || c == '"') {
            let host = word.split("://").last().unwrap_or(word);
            let host = host.split([':', '/']).next().unwrap_or(host);
            if host.contains('.')
                && let Some(domain) = self.pool_domain_of(host)
            {
                return Some(format!("pool {domain}"));
            }
            if is_wallet(word) {
                return Some("wallet address".to_owned());
            }
        }
        None
    }
}

/// Tells whether a word looks like a Monero address (95 or 106 base58 characters starting with
/// 4 or 8) or a Bitcoin bech32 address, the wallets miners are given on the command line.
pub fn is_wallet(word: &str) -> bool {
    let word = word.trim_matches(|c: char| c == '\'' || c == '"');
    let base58 = |c: char| c.is_ascii_alphanumeric() && !matches!(c, '0' | 'O' | 'I' | 'l');
    let monero = matches!(word.len(), 95 | 106)
        && matches!(word.as_bytes()[0], b'4' | b'8')
        && word.chars().all(base58);
    let bech32 = word.starts_with("bc1")
        && (42..=62).contains(&word.len())
        && word[3..]
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && !word[3..].contains(['1', 'b', 'i', 'o']);
    monero || bech32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_lists_load_from_every_source() {
        let indicators = MinerIndicators::builtin().unwrap();
        assert!(indicators.binaries.contains("xmrig"));
        assert!(indicators.binaries.contains("srbminer"));
        assert!(indicators.pool_ports.contains(&3333));
        assert!(indicators.pool_ports.contains(&14444));
        // Falco, Sigma (Linux and Windows lists), maltrail.
        assert!(indicators.pool_domains.contains("pool.minexmr.com"));
        assert!(indicators.pool_domains.contains("moneroocean.stream"));
        assert!(indicators.pool_domains.contains("zephyr.herominers.com"));
        assert!(
            indicators.pool_domains.len() >= 500,
            "{}",
            indicators.pool_domains.len()
        );
        assert!(!indicators.pool_addresses.is_empty());
        assert!(
            indicators
                .pool_endpoints
                .contains(&("107.191.47.239".parse().unwrap(), 3333))
        );
        assert!(
            indicators
                .command_markers
                .iter()
                .any(|m| m == "--donate-level=0")
        );
        assert!(!indicators.pool_domains.contains("mooo.com"));
    }

    #[test]
    fn subdomains_of_pools_match_but_lookalikes_do_not() {
        let indicators = MinerIndicators::builtin().unwrap();
        assert_eq!(
            indicators.pool_domain_of("us.zephyr.herominers.com"),
            Some("zephyr.herominers.com")
        );
        assert_eq!(
            indicators.pool_domain_of("XMR.2MINERS.COM."),
            Some("xmr.2miners.com")
        );
        assert_eq!(
            indicators.pool_domain_of("herominers.com.evil.example"),
            None
        );
        assert_eq!(indicators.pool_domain_of("api.github.com"), None);
        assert_eq!(indicators.pool_domain_of("com"), None);
    }

    #[test]
    fn renamed_miners_are_caught_by_their_arguments() {
        let indicators = MinerIndicators::builtin().unwrap();
        let datadog =
            "app4821937 -a rx/0 -o stratum+tcp://randomxmonero.auto.nicehash.com:9200 -p x";
        assert_eq!(
            indicators.command_marker(datadog).as_deref(),
            Some("stratum+tcp://")
        );
        let algo_only = "/tmp/kworker -a rx/0 -t 16";
        assert_eq!(
            indicators.command_marker(algo_only).as_deref(),
            Some("-a rx/0")
        );
        let pool_only = "/tmp/nodjs -o us.zephyr.herominers.com:1123";
        assert_eq!(
            indicators.command_marker(pool_only).as_deref(),
            Some("pool zephyr.herominers.com")
        );
        let wallet = format!("./x -u 4{} -p w", "A".repeat(94));
        assert_eq!(
            indicators.command_marker(&wallet).as_deref(),
            Some("wallet address")
        );
    }

    #[test]
    fn ordinary_command_lines_have_no_marker() {
        let indicators = MinerIndicators::builtin().unwrap();
        for command in [
            "sh -c clear; (bash || ash || sh)",
            "python3 train.py --epochs 40 --threads 16",
            "ffmpeg -i in.mp4 -a copy out.mkv",
            "curl -s https://api.example.com/v1/items",
            "tar -a -cf backup.tar.gz /data",
            "nginx -g daemon off;",
        ] {
            assert_eq!(indicators.command_marker(command), None, "{command}");
        }
    }

    #[test]
    fn wallets_are_told_from_other_long_words() {
        let monero = format!("4{}", "B".repeat(94));
        assert!(is_wallet(&monero));
        assert!(is_wallet("bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"));
        assert!(!is_wallet(&"a".repeat(95)));
        assert!(!is_wallet(
            "sha256:8e86f744bfea165fd4ce68caa05abc96500f40130b857773186401926af7e9e6"
        ));
    }
}
