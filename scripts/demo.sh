#!/usr/bin/env bash
# The main job on a laptop, with nothing to set up: installs the Debian packages the build needs
# (when missing), builds tidemark, and replays the bundled attack scenarios (real Falco,
# Tetragon, Kubernetes audit, CloudTrail and registry webhook records, mixed and out of order)
# through the correlator, printing the incidents as a table. `FORMAT=json scripts/demo.sh`
# prints one JSON incident per line instead.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# Build every target, as the tests do: the C++ dependencies are then compiled once for both
# (a narrower build resolves different build-script features and compiles RocksDB again).
cargo build --quiet --workspace --all-targets
exec "${CARGO_TARGET_DIR:-target}/debug/tidemark" replay \
  --policy config/policy.example.yaml \
  --cluster prod-eu \
  --format "${FORMAT:-table}" \
  fixtures/scenarios/*.ndjson
