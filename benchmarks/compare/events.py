"""Flattens tidemark's normalized signals into the flat, ECS-like events the other engines read.

A SIEM normalizes telemetry at ingest before its rules run (Elastic's ingest pipelines map
Falco, Tetragon, audit and registry records to ECS fields). The comparison gives the other
engines that step for free: they read `tidemark normalize` output, flattened here to one level
of plain field names that both the EQL engine and rsigma address the same way. Nothing here
judges an event; every decision is left to the engines' rules.

Fields of a flat event (absent when the signal has no value):

- `event_type`: `workload` (create/patch/update of a workload, ECS task definitions and
  services), `access` (exec/attach/ephemeral container), `process` (process started),
  `network` (connection), `alert` (a node sensor's alert, which carries a process and often a
  connection), `registry` (image pushed), `container` (container started);
- `timestamp`: event time in milliseconds since the epoch; `time`: the same in RFC 3339;
- `workload_key`: `k8s/<cluster>/<namespace>/<name>` or `ecs/<account>/<region>/<name>`, the
  key of the ground truth (`tidemark-loadtest generate`);
- `actor_name`, `actor_on_behalf_of`;
- `image_reference`, `image_registry`, `image_repository`, `image_tag`, `image_digest`: the
  signal's image, or for a workload change its first container's image;
- `verb`, `resource`, `partial`: what a workload change did;
- `container_registries`, `container_repositories` (`registry/repository`): every container of
  a workload change or container start; `container_commands`: the commands a workload change
  sets on its containers (Kubernetes `command`/`args`, ECS overrides), each joined by spaces;
- `access_kind`, `access_command`;
- `process_name`, `process_executable`, `process_command_line`, `process_cwd`: the process of a
  process start, a connection or an alert;
- `destination_ip`, `destination_port`, `destination_domain`, `destination_registered_domain`;
- `alert_rule`, `alert_output`.
"""

import json
from datetime import datetime, timezone
from typing import Iterator, Optional

KINDS = {
    "workloadChanged": "workload",
    "containerAccess": "access",
    "processExecuted": "process",
    "networkConnection": "network",
    "runtimeAlert": "alert",
    "imagePushed": "registry",
    "containerStarted": "container",
}


def workload_key(workload: dict) -> Optional[str]:
    """The ground truth's key of a signal's workload, or None when the signal names none."""
    name = workload.get("name")
    if not name:
        return None
    if workload.get("platform") == "PLATFORM_ECS":
        return f"ecs/{workload.get('account', '')}/{workload.get('region', '')}/{name}"
    return f"k8s/{workload.get('cluster', '')}/{workload.get('namespace', '')}/{name}"


def _set(event: dict, key: str, value) -> None:
    if value is not None and value != "" and value != []:
        event[key] = value


def _process(event: dict, process: Optional[dict]) -> None:
    if not process:
        return
    _set(event, "process_name", process.get("name"))
    _set(event, "process_executable", process.get("binary"))
    command_line = process.get("commandLine")
    if not command_line:
        binary = process.get("binary") or process.get("name") or ""
        command_line = f"{binary} {process.get('arguments', '')}".strip()
    _set(event, "process_command_line", command_line)
    _set(event, "process_cwd", process.get("cwd"))


def _connection(event: dict, connection: Optional[dict]) -> None:
    if not connection:
        return
    _set(event, "destination_ip", connection.get("destinationAddress"))
    port = connection.get("destinationPort")
    if port is not None:
        event["destination_port"] = int(port)
    domain = (connection.get("domain") or "").rstrip(".").lower()
    if domain:
        event["destination_domain"] = domain
        # ECS's `destination.registered_domain`, approximated by the last two labels (no public
        # suffix list): `eu.pool.minexmr.com` gives `minexmr.com`.
        event["destination_registered_domain"] = ".".join(domain.split(".")[-2:])


def _repository(image: dict) -> Optional[str]:
    """`registry/repository`, or the repository alone when the image names no registry."""
    if not image.get("repository"):
        return None
    return "/".join(part for part in (image.get("registry"), image["repository"]) if part)


def _containers(event: dict, containers: list) -> None:
    images = [c.get("image") or {} for c in containers]
    _set(event, "container_registries", [i.get("registry") for i in images if i.get("registry")])
    _set(event, "container_repositories", [r for r in map(_repository, images) if r])


def flatten(signal: dict) -> dict:
    """One flat event for one normalized signal (the JSON of `tidemark normalize`)."""
    nanos = int(signal["eventTimeUnixNano"])
    event = {
        "timestamp": nanos // 1_000_000,
        "time": datetime.fromtimestamp(nanos / 1e9, tz=timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "event_type": next((KINDS[k] for k in KINDS if k in signal), "other"),
    }
    _set(event, "workload_key", workload_key(signal.get("workload") or {}))
    actor = signal.get("actor") or {}
    _set(event, "actor_name", actor.get("name"))
    _set(event, "actor_on_behalf_of", actor.get("onBehalfOf"))
    image = signal.get("image") or {}
    _set(event, "image_reference", image.get("reference"))
    _set(event, "image_registry", image.get("registry"))
    _set(event, "image_repository", _repository(image))
    _set(event, "image_tag", image.get("tag"))
    _set(event, "image_digest", image.get("digest"))

    if "workloadChanged" in signal:
        change = signal["workloadChanged"]
        _set(event, "verb", change.get("verb"))
        _set(event, "resource", change.get("resource"))
        if change.get("partial"):
            event["partial"] = True
        containers = change.get("containers") or []
        _containers(event, containers)
        commands = [c["command"] for c in containers if c.get("command")]
        commands += change.get("commands") or []
        _set(event, "container_commands", commands)
    elif "containerStarted" in signal:
        _containers(event, signal["containerStarted"].get("containers") or [])
    elif "containerAccess" in signal:
        access = signal["containerAccess"]
        _set(event, "access_kind", access.get("kind"))
        _set(event, "access_command", access.get("command"))
    elif "processExecuted" in signal:
        _process(event, signal["processExecuted"])
    elif "networkConnection" in signal:
        connection = signal["networkConnection"]
        _connection(event, connection)
        _process(event, connection.get("process"))
    elif "runtimeAlert" in signal:
        alert = signal["runtimeAlert"]
        _set(event, "alert_rule", alert.get("rule"))
        _set(event, "alert_output", alert.get("output"))
        _process(event, alert.get("process"))
        _connection(event, alert.get("connection"))
    return event


def flatten_file(signals_path: str, out_path: str) -> int:
    """Flattens an NDJSON file of signals into NDJSON flat events in event-time order.

    Both engines are given time-ordered input (the EQL engine and rsigma's windows assume it),
    as tidemark's replay orders its input itself. Returns the number of events written.
    """
    with open(signals_path, encoding="utf-8") as f:
        events = [flatten(json.loads(line)) for line in f if line.strip()]
    events.sort(key=lambda e: e["timestamp"])
    with open(out_path, "w", encoding="utf-8") as out:
        for event in events:
            out.write(json.dumps(event, separators=(",", ":")))
            out.write("\n")
    return len(events)


def read_events(path: str) -> Iterator[dict]:
    """Flat events from an NDJSON file, one at a time."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
