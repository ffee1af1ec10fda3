"""Side by side on the same generated files: tidemark replay, the Elastic EQL engine, rsigma.

Usage:
  compare.py --fleet DIR --tidemark BIN --rsigma BIN --eql-python PYTHON --policy YAML
             --work DIR --out JSON [--rsigma-flag=FLAG ...]

Steps, each measured on its own (wall seconds; CPU seconds from the child's rusage; peak RSS
read from `/proc` while it runs):

1. `tidemark replay` over the raw files of the fleet (every source, in their wire formats):
   decoding, normalizing and correlating over RocksDB state, to the final incidents.
2. Preparation for the other engines, not counted in their throughput: `tidemark normalize`
   over the same files, then `events.py` flattens the signals into ECS-like events, sorted by
   event time.
3. The EQL rules (`rules.py`) with the `eql` Python package, all queries in one pass.
4. The same rules as Sigma detections and `temporal_ordered` correlations with
   `rsigma engine eval`.

Throughput is the fleet's record count over each engine's wall time. Every engine is scored
against the fleet's `truth.json` by `score.py`.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import events  # noqa: E402
import indicators  # noqa: E402
import rules  # noqa: E402
import score  # noqa: E402


def peak_rss_kib(pid: int) -> int:
    """The process's peak resident memory so far (`VmHWM`), or 0 once it has exited."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def run(argv: list, stdout=None) -> dict:
    """Runs a command to completion; returns its wall and CPU time and peak RSS.

    The peak is read from `/proc` while the command runs: the `ru_maxrss` of a child counts
    the memory of this process at the fork, which here holds the flattened events.
    """
    start = time.monotonic()
    process = subprocess.Popen(argv, stdout=stdout or subprocess.DEVNULL)
    peak_kib = 0
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        peak_kib = max(peak_kib, peak_rss_kib(process.pid))
        time.sleep(0.02)
    wall = time.monotonic() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{argv[0]} exited with {process.returncode}: {' '.join(argv)}")
    return {
        "wall_secs": wall,
        "cpu_secs": usage.ru_utime + usage.ru_stime,
        "user_cpu_secs": usage.ru_utime,
        "system_cpu_secs": usage.ru_stime,
        "peak_rss_mib": peak_kib / 1024,
    }


def engine_result(measure: dict, records: int, source: str, truth: dict, found: list) -> dict:
    """An engine's measures, throughput over the fleet's records, and scores."""
    wall = measure["wall_secs"]
    return {
        **measure,
        "events_per_sec": records / wall if wall else 0.0,
        "input": source,
        **score.score(truth, found),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleet", type=Path, required=True)
    parser.add_argument("--tidemark", required=True)
    parser.add_argument("--rsigma", required=True)
    parser.add_argument("--eql-python", required=True)
    parser.add_argument("--policy", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--rsigma-flag",
        action="append",
        default=[],
        help="an extra flag for `rsigma engine eval`, written with `=` so that it is not read as"
        " an option of this script: --rsigma-flag=--cross-rule-ac (repeatable)",
    )
    args = parser.parse_args()

    truth = json.loads((args.fleet / "truth.json").read_text())
    files = sorted(str(p) for p in args.fleet.glob("*.ndjson"))
    records = truth["events"]
    cluster = truth["cluster"]
    args.work.mkdir(parents=True, exist_ok=True)
    result = {"records": records, "attacks": len(truth["attacks"]), "engines": {}}

    print(f"tidemark replay: {records:,} records", file=sys.stderr)
    incidents_path = args.work / "tidemark-incidents.ndjson"
    with incidents_path.open("w") as out:
        measure = run(
            [args.tidemark, "replay", "--log", "warn", "--cluster", cluster, "--policy",
             str(args.policy), "--format", "json", *files],
            stdout=out,
        )
    incidents = [json.loads(line) for line in incidents_path.read_text().splitlines() if line]
    detections = [{"workload": i["workload"]["key"], "stages": i["stages"]} for i in incidents]
    result["engines"]["tidemark"] = engine_result(measure, records, "raw files", truth, detections)

    print("preparing flat events for EQL and rsigma", file=sys.stderr)
    signals_path = args.work / "signals.ndjson"
    with signals_path.open("w") as out:
        normalize = run(
            [args.tidemark, "normalize", "--log", "warn", "--cluster", cluster, *files], stdout=out
        )
    start = time.monotonic()
    events_path = args.work / "events.ndjson"
    num_events = events.flatten_file(str(signals_path), str(events_path))
    signals_path.unlink()
    result["preparation"] = {
        "normalize_wall_secs": normalize["wall_secs"],
        "flatten_wall_secs": time.monotonic() - start,
        "flat_events": num_events,
    }
    ind = indicators.load(HERE.parent.parent, args.policy)
    eql_rules_path = args.work / "eql-rules.json"
    eql_rules_path.write_text(json.dumps(rules.eql_rules(ind, ind.correlation_window)))
    _, sigma_path = rules.write(args.work / "rules", ind, ind.correlation_window)

    print("EQL engine", file=sys.stderr)
    matches_path = args.work / "eql-matches.json"
    measure = run(
        [args.eql_python, str(HERE / "eql_run.py"), str(eql_rules_path), str(events_path),
         str(matches_path)]
    )
    matches = json.loads(matches_path.read_text())
    result["engines"]["eql"] = engine_result(measure, records, "flat events", truth, matches)

    print("rsigma", file=sys.stderr)
    sigma_out = args.work / "rsigma-output.ndjson"
    with sigma_out.open("w") as out:
        measure = run(
            [args.rsigma, "engine", "eval", "--rules", str(sigma_path), "--event",
             f"@{events_path}", "--no-detections", "--include-event", "--timestamp-field", "time",
             "--correlation-event-mode", "full", "--max-correlation-events", "4",
             *args.rsigma_flag],
            stdout=out,
        )
    matches = sigma_matches(sigma_out)
    result["engines"]["rsigma"] = engine_result(measure, records, "flat events", truth, matches)
    result["engines"]["rsigma"]["flags"] = args.rsigma_flag

    tidemark = result["engines"]["tidemark"]["events_per_sec"]
    for name in ("eql", "rsigma"):
        other = result["engines"][name]["events_per_sec"]
        result["engines"][name]["tidemark_speedup"] = tidemark / other if other else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    for name, engine in result["engines"].items():
        print(
            f"{name:9} {engine['events_per_sec']:>10,.0f} events/s  recall {engine['recall']:.3f}"
            f"  (stages across detections {engine['recall_any_stages_union']:.3f})"
            f"  precision {engine['precision']:.3f}",
            file=sys.stderr,
        )
    return 0


def sigma_matches(path: Path) -> list:
    """Detections from rsigma's output: correlations, and standalone detection rules."""
    matches = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        result = json.loads(line)
        name = result.get("rule_title")
        if name not in rules.STAGES:
            continue
        workload = None
        for event in result.get("events") or []:
            body = event.get("event", event) if isinstance(event, dict) else {}
            workload = body.get("workload_key") or workload
        if workload is None:
            workload = dict(result.get("group_key") or []).get("workload_key")
        if workload is None and isinstance(result.get("event"), dict):
            workload = result["event"].get("workload_key")
        matches.append({"rule": name, "workload": workload, "stages": rules.STAGES[name]})
    return matches


if __name__ == "__main__":
    sys.exit(main())
