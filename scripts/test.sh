#!/usr/bin/env bash
# The whole test suite: test tools, then every crate's tests and the end-to-end tests in tests/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
# The end-to-end tests drive the compiled Lambda binaries (debug, and release as the images ship
# them): build them first.
cargo build --workspace --bins
cargo build --release -p xomcloud-authorizer -p xomcloud-download-tracks --bins
# Lints every target, benches included (nothing else builds them).
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace "$@"
