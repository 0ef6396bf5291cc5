#!/usr/bin/env bash
# Benchmarks: the release Lambda binaries against the in-process S3, scdl stubbed with a set delay
# and size. Prints one line per scenario with PASS/FAIL beside each target.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
cargo build --release -p xomcloud-authorizer -p xomcloud-download-tracks --bins
cargo bench --bench pipeline
