#!/usr/bin/env bash
# The main job on a laptop, with nothing to set up: installs the Debian packages the build needs
# (when missing), builds tidemark, and runs every role in one process (`tidemark run`) on an
# embedded Kafka broker, publishing the bundled attack scenarios (real Falco, Tetragon,
# Kubernetes audit, CloudTrail and registry webhook records) to it. The incidents API listens on
# 127.0.0.1:50051; the banner tells how to watch and list incidents from a second terminal.
# Stop it with Ctrl-C.
#
# `OFFLINE=1 scripts/demo.sh` instead correlates the same files offline (`tidemark replay`) and
# prints the incidents as a table (`FORMAT=json` for one JSON incident per line).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# Build every target, as the tests do: the C++ dependencies are then compiled once for both
# (a narrower build resolves different build-script features and compiles RocksDB again).
cargo build --quiet --workspace --all-targets
tidemark="${CARGO_TARGET_DIR:-target}/debug/tidemark"
if [ -n "${OFFLINE:-}" ]; then
  exec "$tidemark" replay \
    --policy config/policy.example.yaml \
    --cluster prod-eu \
    --format "${FORMAT:-table}" \
    fixtures/scenarios/*.ndjson
fi
exec "$tidemark" run \
  --data-dir "${DATA_DIR:-${TMPDIR:-/tmp}/tidemark-demo}" \
  --grpc-listen "${GRPC_LISTEN:-127.0.0.1:50051}" \
  --policy config/policy.example.yaml \
  --cluster prod-eu \
  --replay fixtures/scenarios/*.ndjson
