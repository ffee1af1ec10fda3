"""The indicator lists and policy every engine of the comparison is given.

tidemark's correlator loads the public miner lists shipped in `correlator/indicators/` and the
detection policy (`config/policy.example.yaml` in the benchmarks). The rules written for the
other engines are built from the very same files, read the same way, so no engine knows an
indicator the others do not.
"""

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# Kept in step with `correlator/src/indicators.rs`: the stratum schemes and xmrig flags it adds
# to the Sigma rule's command-line markers, and the algorithms it accepts after `-a`/`--algo`.
STRATUM_SCHEMES = [
    "stratum+tcp://",
    "stratum+ssl://",
    "stratum+udp://",
    "stratum2+tcp://",
    "stratum2+ssl://",
    "stratum+tls://",
]
MINER_FLAGS = [
    "--donate-level",
    "--cpu-priority",
    "--nicehash",
    "--randomx-mode",
    "--randomx-1gb-pages",
    "--coin=monero",
    "--max-cpu-usage",
    "--cpu-max-threads-hint",
]
MINER_ALGORITHMS = [
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
]
# A Monero address on a command line (95 or 106 base58 characters starting with 4 or 8).
WALLET_REGEX = r"(^|[\s='\"])[48][1-9A-HJ-NP-Za-km-z]{94}([1-9A-HJ-NP-Za-km-z]{11})?($|[\s'\"])"
EXCLUDED_DOMAINS = {"mooo.com"}
PRIVATE_NETWORKS = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "100.64.0.0/10",
]


@dataclass
class Indicators:
    """Miner indicators and the policy's allow-lists, as plain lists for rule text."""

    binaries: list = field(default_factory=list)
    command_markers: list = field(default_factory=list)
    pool_ports: list = field(default_factory=list)
    pool_domains: list = field(default_factory=list)
    pool_addresses: list = field(default_factory=list)
    approved_registries: list = field(default_factory=list)
    approved_digests: list = field(default_factory=list)
    trusted_pushers: list = field(default_factory=list)
    trusted_deployers: list = field(default_factory=list)
    correlation_window: str = "24h"


def _domain(value: str) -> str:
    return value.strip().lstrip("*.").lstrip(".").rstrip(".").lower()


def load(repo: Path, policy_path: Path) -> Indicators:
    """Reads the shipped lists under `repo` and the policy at `policy_path`."""
    lists = repo / "correlator" / "indicators"
    binaries, ports, domains, addresses = set(), set(), set(), set()
    markers = set(STRATUM_SCHEMES) | set(MINER_FLAGS)

    falco = yaml.safe_load((lists / "falco-sandbox_rules.yaml").read_text())
    for item in falco:
        name = item.get("list") if isinstance(item, dict) else None
        if name == "miner_binaries":
            binaries.update(str(b).lower() for b in item["items"])
        elif name == "miner_ports":
            ports.update(int(p) for p in item["items"])
        elif name in ("miner_domains", "https_miner_domains", "http_miner_domains"):
            domains.update(_domain(str(d)) for d in item["items"])

    sigma_rule = lists / "sigma" / "proc_creation_lnx_crypto_mining.yml"
    sigma_cmd = yaml.safe_load(sigma_rule.read_text())
    markers.update(m.lower() for m in sigma_cmd["detection"]["selection"]["CommandLine|contains"])
    for rule_file in (lists / "sigma").glob("*.yml"):
        selection = yaml.safe_load(rule_file.read_text())["detection"].get("selection", {})
        for key, values in selection.items():
            if key.startswith("DestinationHostname") or key.startswith("query"):
                domains.update(_domain(str(v)) for v in values)

    for line in (lists / "crypto_mining.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        host = line.rsplit(":", 1)[0] if ":" in line else line
        try:
            addresses.add(str(ipaddress.ip_address(host)))
        except ValueError:
            domains.add(_domain(host))
    for line in (lists / "derived_pool_domains_union.tsv").read_text().splitlines():
        if line and not line.startswith("#"):
            domains.add(_domain(line.split("\t")[0]))

    policy = yaml.safe_load(policy_path.read_text()) or {}
    miner = policy.get("miner") or {}
    binaries.update(str(b).lower() for b in miner.get("binaries") or [])
    markers.update(str(m).lower() for m in miner.get("command_markers") or [])
    ports.update(int(p) for p in miner.get("pool_ports") or [])
    domains.update(_domain(str(d)) for d in miner.get("pool_domains") or [])
    addresses.update(str(ipaddress.ip_address(a)) for a in miner.get("pool_addresses") or [])
    domains -= EXCLUDED_DOMAINS
    domains.discard("")

    return Indicators(
        binaries=sorted(binaries),
        command_markers=sorted(markers),
        pool_ports=sorted(ports),
        pool_domains=sorted(domains),
        pool_addresses=sorted(addresses),
        approved_registries=[r.rstrip("/") for r in policy.get("approved_registries") or []],
        approved_digests=list(policy.get("approved_digests") or []),
        trusted_pushers=list(policy.get("trusted_pushers") or []),
        trusted_deployers=list(policy.get("trusted_deployers") or []),
        correlation_window=str(policy.get("correlation_window") or "24h"),
    )
