#!/usr/bin/env bash
# Installs what xomcloud needs on this machine: ffmpeg (Debian package) and a project-local
# Python venv (.venv) with pinned tools. `--test` adds the test tools (moto, linters).
set -euo pipefail
cd "$(dirname "$0")/.."

reqs=requirements.txt
[ "${1:-}" = "--test" ] && reqs=requirements-test.txt

if ! command -v ffmpeg >/dev/null 2>&1; then
  install="apt-get install -y --no-install-recommends ffmpeg"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ffmpeg"
    apt-get update -qq
    # dpkg can be left half-configured on a fresh image: configure and retry once.
    DEBIAN_FRONTEND=noninteractive $install -qq || { dpkg --configure -a; DEBIAN_FRONTEND=noninteractive $install -qq; }
  else
    echo "setup: ffmpeg is missing; install it with: sudo apt-get update && sudo $install" >&2
    exit 1
  fi
fi

stamp=.venv/.installed-$(sha256sum "$reqs" | cut -c1-16)
if [ ! -f "$stamp" ]; then
  command -v python3 >/dev/null || { echo "setup: python3 is missing: sudo apt-get install -y python3 python3-venv" >&2; exit 1; }
  [ -x .venv/bin/pip ] || python3 -m venv .venv || {
    echo "setup: python3 -m venv failed: sudo apt-get install -y python3-venv" >&2; exit 1; }
  echo "setup: installing $reqs into .venv"
  .venv/bin/pip install -q --disable-pip-version-check --only-binary=:all: -r "$reqs"
  touch "$stamp"
fi
