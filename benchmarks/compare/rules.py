"""The chain written as rules for the Elastic EQL engine and for Sigma (rsigma).

Both rule sets say the same thing, in each language's best form, over the flat events of
`events.py`, with the indicator lists and policy of `indicators.py`. Each rule but the last is a
sequence of steps, in order, within the correlation window, joined by workload unless it says
otherwise:

- `unapproved-deploy-miner-pool` (deploy, execution, impact): the workload is deployed with an
  image outside the approved registries and digests; a miner process; a pool connection.
- `access-miner-pool` (implant, execution, impact): an exec, attach or ephemeral container; a
  miner process; a pool connection.
- `untrusted-change-miner` (implant, execution): the workload is changed in any way by an
  identity that is not a trusted deployer; a miner process. Broader than tidemark, which counts
  a change of a running workload's containers, or a rollout that picked up a flagged push: a
  rollout restart (a patch of an annotation) that picks up a re-pushed tag changes no
  container, and a sequence cannot join the push (by digest) to the rollout (by workload), so
  only this broader rule lets the other engines see the implant stage of that pattern at all.
- `untrusted-push-miner` (image, execution): a push by a named identity that is not a trusted
  pusher, or a push of an unapproved image; a miner process running that image. Joined by
  digest and repository, not workload: one image pushed to several repositories has one digest.
- `miner-pool` (execution, impact): a miner process; a pool connection.
- `miner-task-definition` (deploy, execution): one event, a workload deployed with an
  unapproved image whose container command carries a miner marker.

A "miner process" is an event whose process name is a listed miner binary, or whose command
line carries a listed marker (stratum URL, xmrig flag, Sigma's markers, an algorithm after
`-a`/`--algo`) or a Monero wallet address. A "pool connection" is a connection to a listed pool
domain (the host or its registered domain), a listed pool address, or a listed pool port on an
address outside the private ranges.

Where the two languages differ:

- The EQL engine compares strings, wildcards and regular expressions without regard to case
  (its default); Sigma's plain values and `contains` do too, but its `re` modifier is
  case-sensitive. Only the wallet pattern is a regular expression in both: its base58 class
  excludes `I`, `O` and `l`, which the EQL engine, ignoring case, lets through, so its wallet
  test is slightly looser than Sigma's.
- A Sigma value tested against a list field matches when any element matches, and the language
  has no "some element does not match": the Sigma rule for an unapproved deploy fires when no
  container's repository is approved, while the EQL rule (`arraySearch`) fires when any one is
  not. A workload that runs an unapproved image beside an approved sidecar is found by the EQL
  rule and missed by the Sigma one.

When the policy approves no registry and no digest, tidemark does not judge deployed images,
and the two rules that need an unapproved image are left out of both rule sets.

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


# Rules that need an image judged unapproved.
NEED_JUDGED_IMAGES = {"unapproved-deploy-miner-pool", "miner-task-definition"}


def judges_images(ind: Indicators) -> bool:
    """Whether the policy approves any registry or digest, without which no image is judged."""
    return bool(ind.approved_registries or ind.approved_digests)


def _q(value: str) -> str:
    return json.dumps(value)


def _listed(values: list, never="-") -> list:
    # Neither language accepts an empty list of values; a policy without, say, trusted pushers
    # gives a list that holds one value no event carries instead.
    return list(values) or [never]


def _wild(field: str, patterns: list) -> str:
    # EQL is three-valued: a function of a missing field is null, and `not null` is null, so
    # every test is guarded to be false, not null, on events without the field.
    return f"({field} != null and wildcard({field}, {', '.join(_q(p) for p in patterns)}))"


def _algorithm_markers() -> list:
    markers = []
    for algorithm in MINER_ALGORITHMS:
        markers += [f" -a {algorithm}", f" -a={algorithm}"]
        markers += [f"--algo {algorithm}", f"--algo={algorithm}"]
    return markers


def _command_substrings(ind: Indicators) -> list:
    # Pool domains are matched on connections, not searched in command lines: 500 more
    # substrings per process event made the EQL engine about a hundred times slower. tidemark
    # also looks for pool domains in command lines; on the generated fleet every miner command
    # line carries a marker of this list as well.
    # Never empty: the algorithm markers are built in.
    return ind.command_markers + _algorithm_markers()


def _approved_patterns(ind: Indicators) -> list:
    return _listed([f"{r}/*" for r in ind.approved_registries])


def eql_rules(ind: Indicators, window: str) -> list:
    """EQL queries: a list of `{name, stages, query}`."""
    # One regular expression for every marker: the engine turns a wildcard list into a regex
    # anyway, but evaluates each literal argument on every call, which made a list of 85
    # patterns the slowest part of a run.
    markers = "|".join(re.escape(m) for m in _command_substrings(ind))
    command_regex = f".*?(?:{markers})|.*?{WALLET_REGEX}"
    binaries = ", ".join(_q(b) for b in _listed(ind.binaries))
    miner = (
        f"(process_name in ({binaries}) or (process_command_line != null"
        f" and match(process_command_line, {_q(command_regex)})))"
    )
    domains = ", ".join(_q(d) for d in _listed(ind.pool_domains))
    addresses = ", ".join(_q(a) for a in _listed(ind.pool_addresses))
    ports = ", ".join(str(p) for p in _listed(ind.pool_ports, -1))
    pool = (
        f"(destination_domain in ({domains}) or destination_registered_domain in ({domains})"
        f" or destination_ip in ({addresses})"
        f" or (destination_port in ({ports})"
        f" and destination_ip != null"
        f" and not cidrMatch(destination_ip, {', '.join(_q(n) for n in PRIVATE_NETWORKS)})))"
    )
    approved = _approved_patterns(ind)
    digests = _listed(ind.approved_digests)
    unapproved = (
        f"(container_repositories != null"
        f" and arraySearch(container_repositories, r, not {_wild('r', approved)})"
        f" and not {_wild('image_digest', digests)})"
    )
    unapproved_push = (
        f"(image_repository != null and not {_wild('image_repository', approved)}"
        f" and not {_wild('image_digest', digests)})"
    )
    command_in_container = (
        f"container_commands != null and arraySearch(container_commands, c,"
        f" match(c, {_q(command_regex)}))"
    )
    deployers = _listed(ind.trusted_deployers)
    untrusted_deployer = (
        f"not ({_wild('actor_name', deployers)} or {_wild('actor_on_behalf_of', deployers)})"
    )
    pushers = _listed(ind.trusted_pushers)
    untrusted_pusher = (
        f"(actor_name != null"
        f" and not ({_wild('actor_name', pushers)} or {_wild('actor_on_behalf_of', pushers)}))"
    )
    if judges_images(ind):
        untrusted_pusher = f"({untrusted_pusher} or {unapproved_push})"
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
        "miner-pool": f"sequence by workload_key {span}\n"
        f"  [any where {miner}]\n  [any where {pool}]",
        "miner-task-definition": f"workload where {unapproved} and {command_in_container}",
    }
    return [
        {"name": n, "stages": STAGES[n], "query": q}
        for n, q in queries.items()
        if judges_images(ind) or n not in NEED_JUDGED_IMAGES
    ]


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
        "selection_name": {"process_name": _listed(ind.binaries)},
        "selection_command": {"process_command_line|contains": command},
        "selection_wallet": {"process_command_line|re": WALLET_REGEX},
        "condition": "1 of selection_*",
    }
    domains = _listed(ind.pool_domains)
    pool = {
        "selection_domain": {"destination_domain": domains},
        "selection_registered": {"destination_registered_domain": domains},
        "selection_address": {"destination_ip": _listed(ind.pool_addresses)},
        # A port alone, on an event without an address, is not a connection to a pool.
        "selection_port": {
            "destination_port": _listed(ind.pool_ports, -1),
            "destination_ip|exists": True,
        },
        "filter_private": {"destination_ip|cidr": PRIVATE_NETWORKS},
        "condition": "selection_domain or selection_registered or selection_address"
        " or (selection_port and not filter_private)",
    }
    approved_prefixes = _listed([f"{r}/" for r in ind.approved_registries])
    digests = _listed(ind.approved_digests)
    unapproved = {
        "selection": {"event_type": "workload", "container_repositories|exists": True},
        "filter_approved": {"container_repositories|startswith": approved_prefixes},
        "filter_digest": {"image_digest": digests},
        "condition": "selection and not filter_approved and not filter_digest",
    }
    trusted = _listed(ind.trusted_deployers)
    pushers = _listed(ind.trusted_pushers)
    untrusted_push = {
        "selection": {"event_type": "registry"},
        "selection_actor": {"actor_name|exists": True},
        "filter_trusted": {"actor_name": pushers},
        "filter_on_behalf": {"actor_on_behalf_of": pushers},
        "condition": "selection and selection_actor and not filter_trusted"
        " and not filter_on_behalf",
    }
    if judges_images(ind):
        untrusted_push.update(
            {
                "selection_repository": {"image_repository|exists": True},
                "filter_approved": {"image_repository|startswith": approved_prefixes},
                "filter_digest": {"image_digest": digests},
                "condition": "selection and ((selection_actor and not filter_trusted"
                " and not filter_on_behalf) or (selection_repository and not filter_approved"
                " and not filter_digest))",
            }
        )
    docs = [
        detection("miner-process", miner),
        detection("pool-connection", pool),
        detection("unapproved-deploy", unapproved),
        detection(
            "container-access", {"selection": {"event_type": "access"}, "condition": "selection"}
        ),
        detection(
            "untrusted-change",
            {
                "selection": {"event_type": "workload"},
                "filter_actor": {"actor_name": trusted},
                "filter_on_behalf": {"actor_on_behalf_of": trusted},
                "condition": "selection and not filter_actor and not filter_on_behalf",
            },
        ),
        detection("untrusted-push", untrusted_push),
        detection(
            "miner-task-definition",
            {
                "selection": {"event_type": "workload", "container_repositories|exists": True},
                "selection_command": {"container_commands|contains": command},
                "filter_approved": {"container_repositories|startswith": approved_prefixes},
                "filter_digest": {"image_digest": digests},
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
            "access-miner-pool",
            ["container-access", "miner-process", "pool-connection"],
            ["workload_key"],
        ),
        correlation(
            "untrusted-change-miner", ["untrusted-change", "miner-process"], ["workload_key"]
        ),
        correlation(
            "untrusted-push-miner",
            ["untrusted-push", "miner-process"],
            ["image_digest", "image_repository"],
        ),
        correlation("miner-pool", ["miner-process", "pool-connection"], ["workload_key"]),
    ]
    if not judges_images(ind):
        docs = [d for d in docs if d["name"] not in NEED_JUDGED_IMAGES | {"unapproved-deploy"}]
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
