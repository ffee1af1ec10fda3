#!/usr/bin/env bash
# Runs the whole test suite: installs the Debian packages the build needs (when missing), then
# runs every test target of the workspace with cargo-nextest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
exec cargo nextest run --workspace --all-targets --no-fail-fast "$@"
