#!/usr/bin/env bash
# Regenerates benchmarks/REPORT.md and its plots: builds tidemark in release, generates a fleet
# (seed 7; EVENTS records, 1,000,000 by default), drives it through `tidemark run` on the
# embedded broker twice with `tidemark-loadtest run` (flat out, then at half the sustained rate
# measured flat out), and renders the report. Needs python3; installs matplotlib with pip into a
# virtual environment under the target directory. Takes about 10 minutes after the build.
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
rate=$(python3 -c "import json; print(int(json.load(open('benchmarks/results/flat-out.json'))['sustained_events_per_sec'] / 2))")
"$bin/tidemark-loadtest" run --input "$work/fleet" --tidemark "$bin/tidemark" --rate "$rate" \
  --report benchmarks/results/half-rate.json
if [ ! -x "$work/venv/bin/python" ]; then
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" install --quiet matplotlib
fi
"$work/venv/bin/python" benchmarks/report.py benchmarks/results benchmarks
