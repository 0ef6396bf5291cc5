#!/usr/bin/env bash
# The main job on embedded defaults: scdl (project venv) + ffmpeg, then `xomcloud serve` on
# 127.0.0.1:3000 with zips on disk and signed links. Prints a token and a curl line.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export SCDL_BIN="$PWD/.venv/bin/scdl"
exec cargo run --quiet --bin xomcloud -- serve "$@"
