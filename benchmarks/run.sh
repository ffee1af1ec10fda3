#!/usr/bin/env bash
# Regenerates benchmarks/REPORT.md and its plots: builds tidemark in release, generates a fleet
# (seed 7; EVENTS records, 1,000,000 by default), drives it twice through Kafka with
# `tidemark-loadtest run`, which starts the embedded broker (`tidemark broker`) and each role
# (`tidemark ingest`, `correlate`, `api`) as a process of its own (flat out, then at half the
# sustained rate measured flat out), replays the same files side by side with tidemark, the
# Elastic EQL engine and rsigma (benchmarks/compare/), and renders the report.
#
# Needs python3. The comparison's engines are benchmark tools, not tidemark dependencies: `eql`
# (and matplotlib, PyYAML) are installed with pip into virtual environments under the target
# directory, and rsigma with `cargo install` into BENCH_TOOLS (default /var/tmp/tidemark-bench-
# tools). Takes about 25 minutes after the build, plus about 10 for rsigma's first install.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
events="${EVENTS:-1000000}"
scripts/install-deps.sh
cargo build --release -p tidemark -p tidemark-loadtest
bin="$target/release"
work="$target/benchmarks"
rm -rf "$work/fleet"
mkdir -p "$work" benchmarks/results
"$bin/tidemark-loadtest" generate --seed 7 --events "$events" --attacks 40 --out "$work/fleet"
"$bin/tidemark-loadtest" run --input "$work/fleet" --tidemark "$bin/tidemark" \
  --report benchmarks/results/flat-out.json
rate=$(python3 -c "import json, sys; report = json.load(open(sys.argv[1]))
print(int(report['sustained_events_per_sec'] / 2))" benchmarks/results/flat-out.json)
"$bin/tidemark-loadtest" run --input "$work/fleet" --tidemark "$bin/tidemark" --rate "$rate" \
  --report benchmarks/results/half-rate.json
if [ ! -x "$work/venv/bin/python" ]; then
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" install --quiet matplotlib
fi
if [ ! -x "$work/compare-venv/bin/python" ]; then
  python3 -m venv "$work/compare-venv"
  "$work/compare-venv/bin/pip" install --quiet eql==1.0.1 pyyaml
fi
tools="${BENCH_TOOLS:-/var/tmp/tidemark-bench-tools}"
if [ ! -x "$tools/bin/rsigma" ]; then
  # rsigma 0.23.0 is the newest release that builds with Rust 1.95; it does not build without
  # its default features. daachorse-index makes its --cross-rule-ac prefilter available; on
  # these seven rules it changed nothing measurable (1.81 s against 1.84 s for 200,000 events,
  # as did --logsource-routing and --bloom-prefilter), so compare.py runs rsigma's defaults
  # (`--rsigma-flag=--cross-rule-ac` passes one).
  CARGO_TARGET_DIR="$tools/target" cargo install rsigma --version 0.23.0 --locked \
    --features daachorse-index --root "$tools"
fi
"$work/compare-venv/bin/python" benchmarks/compare/compare.py --fleet "$work/fleet" \
  --tidemark "$bin/tidemark" --rsigma "$tools/bin/rsigma" \
  --eql-python "$work/compare-venv/bin/python" --policy config/policy.example.yaml \
  --work "$work/compare" --out benchmarks/results/compare.json
"$work/venv/bin/python" benchmarks/report.py benchmarks/results benchmarks
