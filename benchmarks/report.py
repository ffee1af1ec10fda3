"""Renders benchmarks/REPORT.md and its PNG plots from the load test's JSON reports.

Usage: report.py RESULTS_DIR OUT_DIR (run by benchmarks/run.sh).
"""

import json
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(results: Path, name: str) -> dict:
    return json.loads((results / f"{name}.json").read_text())


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def throughput_plot(runs: dict, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, report in runs.items():
        # Progress is sampled about once a second while publishing, then while waiting for the
        # consumers. Intervals under half a second (the last acknowledgements, settled at once)
        # and the wait after the last record would only draw spikes and zeros.
        points = [p for p in report["progress"] if p[1] < report["records"]]
        points.append(next(p for p in report["progress"] if p[1] >= report["records"]))
        times, rates = [], []
        previous = (0.0, 0)
        for t, count in points:
            if t - previous[0] >= 0.5:
                times.append(t)
                rates.append((count - previous[1]) / (t - previous[0]))
                previous = (t, count)
        ax.plot(times, rates, label=name)
    ax.set_xlabel("seconds since the first record was sent")
    ax.set_ylabel("records acknowledged by Kafka per second")
    ax.set_title("Publish throughput over time")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=100)


def latency_plot(runs: dict, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, report in runs.items():
        latencies = sorted(
            a["latency_secs"] for a in report["per_attack"] if a["latency_secs"] is not None
        )
        if latencies:
            fractions = [(i + 1) / len(latencies) for i in range(len(latencies))]
            ax.step(latencies, fractions, where="post", label=name)
    ax.set_xlabel("detection latency, seconds (deciding record sent -> incident complete in API)")
    ax.set_ylabel("fraction of attacks")
    ax.set_title("Detection latency distribution")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=100)


def row(name: str, r: dict) -> str:
    def secs(v):
        return "-" if v is None else f"{v:.3f} s"

    return (
        f"| {name} | {r['records']:,} | {r['target_rate'] or 'flat out'} | "
        f"{r['sustained_events_per_sec']:,.0f} | {r['cpu_secs_per_million']:.1f} | "
        f"{r['peak_rss_mib']:.0f} | {secs(r['latency_p50_secs'])} | "
        f"{secs(r['latency_p99_secs'])} | "
        f"{r['recall']:.3f} | {r['precision']:.3f} | {r['dead_letters']} | {r['late']} | "
        f"{r['raw_records_dropped'] + r['signals_dropped']} |"
    )


def cpu(engine: dict) -> str:
    """CPU seconds, with the system's share when the results record it."""
    system = engine.get("system_cpu_secs")
    total = f"{engine['cpu_secs']:.1f}"
    return f"{total} ({system:.1f} system)" if system is not None else total


def detections(engine: dict) -> str:
    """The detection count, with those that name no workload (and so are not scored) apart."""
    without = engine.get("detections_without_workload", 0)
    count = f"{engine['detections']:,}"
    return f"{count} ({without:,} without a workload)" if without else count


def all_found(found: str) -> bool:
    """Whether a `found/total` count of `score.py` found every attack."""
    hits, total = found.split("/")
    return hits == total


def engine_gaps(engines: dict, names: dict) -> list:
    """One sentence per engine on what it missed, read from its scores."""
    lines = []
    for key, engine in engines.items():
        name = names.get(key, key)
        missed = [
            f"{pattern} ({found})"
            for pattern, found in sorted(engine["recall_by_pattern"].items())
            if not all_found(found)
        ]
        union = engine["recall_any_stages_union"]
        across = (
            "finds every stage of every attack across its detections"
            if union == 1.0
            else f"finds every stage of {union:.1%} of the attacks across its detections"
        )
        if missed:
            lines.append(
                f"- {name} {across}; attacks not found whole in one detection: {', '.join(missed)}."
            )
        else:
            lines.append(f"- {name} {across}, and every attack's stages in one detection.")
    return lines


def target_lines(runs: dict, cores: int) -> str:
    flat, half = runs["flat out"], runs["half rate"]
    per_core = flat["sustained_events_per_sec"] / max(cores, 1)
    p99 = half["latency_p99_secs"]
    complete = all(r["recall"] == 1.0 and r["precision"] == 1.0 for r in runs.values())

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    return "\n".join(
        [
            f"- 100k events/s per core end to end: {verdict(per_core >= 100_000)} "
            f"({per_core:,.0f} events/s per core: {flat['sustained_events_per_sec']:,.0f} on "
            f"{cores} cores, shared with the load generator and the broker; the roles used "
            f"{flat['cpu_secs_per_million']:.1f} CPU s per million events, "
            f"{1e6 / flat['cpu_secs_per_million']:,.0f} events per CPU second).",
            f"- p99 detection latency under 1 s at half the sustained rate: "
            f"{verdict(p99 is not None and p99 < 1.0)} "
            f"({'-' if p99 is None else f'{p99:.3f} s'}).",
            f"- Every injected chain found with all its stages, no incident elsewhere: "
            f"{verdict(complete)}.",
        ]
    )


def comparison_lines(compare: dict) -> list:
    """The side-by-side replay: a table, the targets, and what each engine missed."""
    engines = compare["engines"]
    names = {"tidemark": "tidemark replay", "eql": "EQL (`eql` 1.0.1)", "rsigma": "rsigma 0.23.0"}
    flags = engines.get("rsigma", {}).get("flags")
    if flags:
        names["rsigma"] += f" ({' '.join(flags)})"
    lines = [
        "## Side by side: tidemark replay, the Elastic EQL engine, rsigma",
        "",
        f"The same generated fleet ({compare['records']:,} records, {compare['attacks']} attacks), "
        "one engine after the other on the same machine (`benchmarks/compare/`). tidemark "
        "replays the raw files; EQL and rsigma read the same records already normalized by "
        "`tidemark normalize` and flattened to ECS-like fields, a preparation not counted in "
        f"their time (it took {compare['preparation']['normalize_wall_secs']:.1f} s + "
        f"{compare['preparation']['flatten_wall_secs']:.1f} s). Each is given the same indicator "
        "lists and policy, and rules for every pattern of the chain "
        "(`benchmarks/compare/rules.py`).",
        "",
        "| engine | input | events/s | tidemark's rate over this one | CPU s | peak RSS MiB | "
        "recall (one detection) "
        "| recall (stages across detections) | precision | detections |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, engine in engines.items():
        speedup = engine.get("tidemark_speedup")
        lines.append(
            f"| {names.get(key, key)} | {engine['input']} | {engine['events_per_sec']:,.0f} | "
            f"{'-' if speedup is None else f'{speedup:.2f}x'} | {cpu(engine)} | "
            f"{engine['peak_rss_mib']:.0f} | {engine['recall']:.3f} | "
            f"{engine['recall_any_stages_union']:.3f} | {engine['precision']:.3f} | "
            f"{detections(engine)} |"
        )
    lines += [
        "",
        "Recall (one detection): attacks for which one incident or one rule match carries every "
        "expected stage. Recall (stages across detections): the stages of all detections on the "
        "attacked workload together. Precision: detected workloads that are attacked, over all "
        "detected workloads.",
        "",
        *engine_gaps(engines, names),
        "",
        "What each rule language cannot express, and so where a pattern can be missed in one "
        "match, is written at the top of `benchmarks/compare/rules.py`.",
        "",
        "Recall by pattern (one detection):",
        "",
        "| engine | " + " | ".join(sorted(engines["tidemark"]["recall_by_pattern"])) + " |",
        "|---|" + "---|" * len(engines["tidemark"]["recall_by_pattern"]),
    ]
    for key, engine in engines.items():
        by_pattern = engine["recall_by_pattern"]
        cells = " | ".join(by_pattern[p] for p in sorted(by_pattern))
        lines.append(f"| {names.get(key, key)} | {cells} |")

    def verdict(engine: str, target: float) -> str:
        speedup = engines[engine].get("tidemark_speedup") or 0
        return f"{'met' if speedup >= target else '**not met**'} ({speedup:.2f}x)"

    lines += [
        "",
        f"- At least 20x the EQL engine on replay throughput: {verdict('eql', 20)}.",
        f"- At least 3x rsigma on replay throughput: {verdict('rsigma', 3)}.",
        "",
    ]
    return lines


def main() -> None:
    results, out = Path(sys.argv[1]), Path(sys.argv[2])
    runs = {"flat out": load(results, "flat-out"), "half rate": load(results, "half-rate")}
    throughput_plot(runs, out)
    latency_plot(runs, out)
    cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    memory_kib = int(
        next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal"))
        .split()[1]
    )
    lines = [
        "# tidemark benchmark report",
        "",
        f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `benchmarks/run.sh` on "
        f"{cpu_model()}, {cores} cores, {memory_kib / 1024 / 1024:.0f} GiB. Each role "
        "(`tidemark ingest`, `correlate`, `api`) runs as a process of its own, on the embedded "
        "broker (`tidemark broker`, librdkafka's mock cluster), all on the same machine as the "
        "load generator. CPU and peak RSS in the first table are the three roles' together; the "
        "second table has each process.",
        "",
        "| run | records | target rate | sustained events/s | CPU s per M events | peak RSS MiB | "
        "latency p50 | latency p99 | recall | precision | dead letters | late "
        "| dropped by broker |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [row(name, report) for name, report in runs.items()]
    lines += [
        "",
        "| run | process | CPU s per M events | peak RSS MiB |",
        "|---|---|---|---|",
    ]
    for name, report in runs.items():
        for process in report.get("processes", []):
            lines.append(
                f"| {name} | {process['process']} | {process['cpu_secs_per_million']:.1f} | "
                f"{process['peak_rss_mib']:.0f} |"
            )
    lines += [
        "",
        "The broker is not part of tidemark: in production it is the Kafka cluster.",
        "",
        "Sustained events/s: records from the first send until ingest and correlate had "
        "committed every record. Detection latency: from the moment the record carrying an "
        "attack's deciding evidence (the last of its expected stages to be sent) was handed to "
        "Kafka, to the moment the API first showed the incident with every expected stage. "
        "Recall: attacks of the ground truth found with all their stages. Precision: incidents "
        "on attacked workloads over all incidents.",
        "",
        "## Against the targets",
        "",
        target_lines(runs, int(cores or "1")),
        "",
        "![throughput over time](throughput.png)",
        "",
        "![detection latency](latency.png)",
        "",
    ]
    compare_path = results / "compare.json"
    if compare_path.exists():
        lines += comparison_lines(json.loads(compare_path.read_text()))
    (out / "REPORT.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
