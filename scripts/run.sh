#!/usr/bin/env bash
# The main job on embedded defaults: scdl (project venv) + ffmpeg, then `xomcloud serve` on
# 127.0.0.1:3000 with zips on disk and signed links. Prints the web page's link first (open it in
# a browser: it carries a token), then a token and a curl line.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export SCDL_BIN="$PWD/.venv/bin/scdl"
# Cargo's own progress while it builds (minutes the first time, seconds later); quiet to run.
echo "run: building xomcloud (the first build takes a few minutes)"
cargo build --bin xomcloud
exec cargo run --quiet --bin xomcloud -- serve "$@"
