"""The chain written as rules for the Elastic EQL engine and for Sigma (rsigma).

Both rule sets say the same thing, in each language's best form, over the flat events of
`events.py`, with the indicator lists and policy of `indicators.py`:

| rule | steps (in order, one workload) | stages |
|---|---|---|
| unapproved-deploy-miner-pool | workload deployed with an image outside the approved registries and digests; miner process; pool connection | deploy, execution, impact |
| access-miner-pool | exec/attach/ephemeral container; miner process; pool connection | implant, execution, impact |
| untrusted-change-miner | workload changed by an identity that is not a trusted deployer; miner process | implant, execution |
| untrusted-push-miner | push by an identity that is not a trusted pusher; miner process running that image (joined by digest and repository, not workload: one image pushed to several repositories has one digest) | image, execution |
| miner-pool | miner process; pool connection | execution, impact |
| miner-task-definition | one event: a workload deployed with an unapproved image whose container command carries a miner marker | deploy, execution |

A "miner process" is an event whose process name is a listed miner binary, or whose command
line carries a listed marker (stratum URL, xmrig flag, Sigma's markers, an algorithm after
`-a`/`--algo`, a listed pool domain) or a Monero wallet address. A "pool connection" is a
connection to a listed pool domain (the host or its registered domain), a listed pool address, or a listed pool
port on an address outside the private ranges.

What neither language can say, tidemark's correlator does: a sequence is joined on one key, so
the re-pushed tag (joined by digest) and the rollout that picked it up (joined by workload)
cannot be one match, and a tag re-pushed with a new digest cannot be told from a first push.
"""

import json
import re
from pathlib import Path

import yaml

from indicators import PRIVATE_NETWORKS, WALLET_REGEX, MINER_ALGORITHMS, Indicators

STAGES = {
    "unapproved-deploy-miner-pool": ["deploy", "execution", "impact"],
    "access-miner-pool": ["implant", "execution", "impact"],
    "untrusted-change-miner": ["implant", "execution"],
    "untrusted-push-miner": ["image", "execution"],
    "miner-pool": ["execution", "impact"],
    "miner-task-definition": ["deploy", "execution"],
}


def _q(value: str) -> str:
    return json.dumps(value)


def _wild(field: str, patterns: list) -> str:
    # EQL is three-valued: a function of a missing field is null, and `not null` is null, so
    # every test is guarded to be false, not null, on events without the field.
    return f"({field} != null and wildcard({field}, {', '.join(_q(p) for p in patterns)}))"


def _algorithm_markers() -> list:
    markers = []
    for algorithm in MINER_ALGORITHMS:
        markers += [f" -a {algorithm}", f" -a={algorithm}", f"--algo {algorithm}", f"--algo={algorithm}"]
    return markers


def _command_substrings(ind: Indicators) -> list:
    # Pool domains are matched on connections, not searched in command lines: 500 more
    # substrings per process event made the EQL engine about a hundred times slower. tidemark
    # also looks for pool domains in command lines; on the generated fleet every miner command
    # line carries a marker of this list as well.
    return ind.command_markers + _algorithm_markers()


def _approved_patterns(ind: Indicators) -> list:
    return [f"{r}/*" for r in ind.approved_registries]


def eql_rules(ind: Indicators, window: str) -> list:
    """EQL queries: a list of `{name, stages, query}`."""
    # One regular expression for every marker: the engine turns a wildcard list into a regex
    # anyway, but evaluates each literal argument on every call, which made a list of 85
    # patterns the slowest part of a run.
    markers = "|".join(re.escape(m) for m in _command_substrings(ind))
    command_regex = f".*?(?:{markers})|.*?{WALLET_REGEX}"
    miner = (
        f"(process_name in ({', '.join(_q(b) for b in ind.binaries)})"
        f" or (process_command_line != null and match(process_command_line, {_q(command_regex)})))"
    )
    domains = ", ".join(_q(d) for d in ind.pool_domains)
    pool = (
        f"(destination_domain in ({domains}) or destination_registered_domain in ({domains})"
        f" or destination_ip in ({', '.join(_q(a) for a in ind.pool_addresses)})"
        f" or (destination_port in ({', '.join(str(p) for p in ind.pool_ports)})"
        f" and destination_ip != null"
        f" and not cidrMatch(destination_ip, {', '.join(_q(n) for n in PRIVATE_NETWORKS)})))"
    )
    approved = _approved_patterns(ind)
    digests = ind.approved_digests or ["-"]
    unapproved = (
        f"(container_repositories != null"
        f" and arraySearch(container_repositories, r, not {_wild('r', approved)})"
        f" and not {_wild('image_digest', digests)})"
    )
    command_in_container = (
        f"container_commands != null and arraySearch(container_commands, c,"
        f" match(c, {_q(command_regex)}))"
    )
    untrusted_deployer = (
        f"not ({_wild('actor_name', ind.trusted_deployers)}"
        f" or {_wild('actor_on_behalf_of', ind.trusted_deployers)})"
    )
    untrusted_pusher = f"not {_wild('actor_name', ind.trusted_pushers)}"
    span = f"with maxspan={window}"
    queries = {
        "unapproved-deploy-miner-pool": f"sequence by workload_key {span}\n"
        f"  [workload where {unapproved}]\n  [any where {miner}]\n  [any where {pool}]",
        "access-miner-pool": f"sequence by workload_key {span}\n"
        f"  [access where true]\n  [any where {miner}]\n  [any where {pool}]",
        "untrusted-change-miner": f"sequence by workload_key {span}\n"
        f"  [workload where {untrusted_deployer}]\n  [any where {miner}]",
        "untrusted-push-miner": f"sequence {span}\n"
        f"  [registry where {untrusted_pusher}] by image_digest, image_repository\n"
        f"  [any where {miner}] by image_digest, image_repository",
        "miner-pool": f"sequence by workload_key {span}\n  [any where {miner}]\n  [any where {pool}]",
        "miner-task-definition": f"workload where {unapproved} and {command_in_container}",
    }
    return [{"name": n, "stages": STAGES[n], "query": q} for n, q in queries.items()]


def sigma_rules(ind: Indicators, window: str) -> list:
    """Sigma documents (detection rules, then correlations), as dicts in YAML order."""
    command = _command_substrings(ind)
    logsource = {"product": "tidemark", "service": "normalized"}

    def detection(name, detection, generate=False):
        rule = {
            "title": name,
            "id": name,
            "name": name,
            "status": "experimental",
            "logsource": logsource,
            "detection": detection,
            "level": "high",
        }
        if not generate:
            # Referenced by correlations only: its own matches are not alerts.
            rule["generate"] = False
        return rule

    miner = {
        "selection_name": {"process_name": ind.binaries},
        "selection_command": {"process_command_line|contains": command},
        "selection_wallet": {"process_command_line|re": WALLET_REGEX},
        "condition": "1 of selection_*",
    }
    pool = {
        "selection_domain": {"destination_domain": ind.pool_domains},
        "selection_registered": {"destination_registered_domain": ind.pool_domains},
        "selection_address": {"destination_ip": ind.pool_addresses},
        "selection_port": {"destination_port": ind.pool_ports},
        "filter_private": {"destination_ip|cidr": PRIVATE_NETWORKS},
        "condition": "selection_domain or selection_registered or selection_address"
        " or (selection_port and not filter_private)",
    }
    approved_prefixes = [f"{r}/" for r in ind.approved_registries]
    unapproved = {
        "selection": {"event_type": "workload", "container_repositories|exists": True},
        "filter_approved": {"container_repositories|startswith": approved_prefixes},
        "filter_digest": {"image_digest": ind.approved_digests or ["-"]},
        "condition": "selection and not filter_approved and not filter_digest",
    }
    trusted = ind.trusted_deployers
    docs = [
        detection("miner-process", miner),
        detection("pool-connection", pool),
        detection("unapproved-deploy", unapproved),
        detection("container-access", {"selection": {"event_type": "access"}, "condition": "selection"}),
        detection(
            "untrusted-change",
            {
                "selection": {"event_type": "workload"},
                "filter_actor": {"actor_name": trusted},
                "filter_on_behalf": {"actor_on_behalf_of": trusted},
                "condition": "selection and not filter_actor and not filter_on_behalf",
            },
        ),
        detection(
            "untrusted-push",
            {
                "selection": {"event_type": "registry"},
                "filter_trusted": {"actor_name": ind.trusted_pushers},
                "condition": "selection and not filter_trusted",
            },
        ),
        detection(
            "miner-task-definition",
            {
                "selection": {"event_type": "workload", "container_repositories|exists": True},
                "selection_command": {"container_commands|contains": command},
                "filter_approved": {"container_repositories|startswith": approved_prefixes},
                "filter_digest": {"image_digest": ind.approved_digests or ["-"]},
                "condition": "selection and selection_command and not filter_approved"
                " and not filter_digest",
            },
            generate=True,
        ),
    ]

    def correlation(name, rules, group_by):
        return {
            "title": name,
            "id": name,
            "name": name,
            "status": "experimental",
            "correlation": {
                "type": "temporal_ordered",
                "rules": rules,
                "group-by": group_by,
                "timespan": window,
            },
            "level": "critical",
        }

    docs += [
        correlation(
            "unapproved-deploy-miner-pool",
            ["unapproved-deploy", "miner-process", "pool-connection"],
            ["workload_key"],
        ),
        correlation(
            "access-miner-pool", ["container-access", "miner-process", "pool-connection"], ["workload_key"]
        ),
        correlation("untrusted-change-miner", ["untrusted-change", "miner-process"], ["workload_key"]),
        correlation(
            "untrusted-push-miner",
            ["untrusted-push", "miner-process"],
            ["image_digest", "image_repository"],
        ),
        correlation("miner-pool", ["miner-process", "pool-connection"], ["workload_key"]),
    ]
    return docs


def write(out_dir: Path, ind: Indicators, window: str) -> tuple:
    """Writes `rules.eql` and `rules.sigma.yml` under `out_dir`; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    eql_path = out_dir / "rules.eql"
    with eql_path.open("w", encoding="utf-8") as f:
        for rule in eql_rules(ind, window):
            f.write(f"// {rule['name']}: stages {', '.join(rule['stages'])}\n{rule['query']}\n\n")
    sigma_path = out_dir / "rules.sigma.yml"
    with sigma_path.open("w", encoding="utf-8") as f:
        yaml.safe_dump_all(sigma_rules(ind, window), f, sort_keys=False, width=100)
    return eql_path, sigma_path
