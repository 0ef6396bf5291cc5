#!/usr/bin/env bash
# Benchmarks: the release Lambda binaries against the in-process S3, and download jobs through the
# release `xomcloud serve`; scdl stubbed with a set delay and size. Prints one line per scenario
# with PASS/FAIL beside each target.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
# The pipeline and fanout benchmarks run these release Lambda binaries.
cargo build --release -p xomcloud-authorizer -p xomcloud-download-tracks --bins
# The jobs benchmark drives the release `xomcloud serve`.
cargo build --release --bin xomcloud
# Every benchmark runs; the script fails when one of them does (a target FAILed).
status=0
cargo bench --bench pipeline || status=$?
cargo bench --bench jobs || status=$?
# The fan-out of a job on the Lambda path: the release function and 20 jobs-worker processes.
cargo bench --bench fanout || status=$?
# The real scdl + yt-dlp + ffmpeg against a fake SoundCloud API: the process tree's peak memory.
cargo bench --bench real_tools || status=$?
exit "$status"
