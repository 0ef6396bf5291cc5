#!/usr/bin/env bash
# Installs what xomcloud needs on this machine: ffmpeg (Debian package) and a project-local
# Python venv (.venv) with pinned tools. `--test` adds the test tools (moto, linters) and
# Chromium with its chromedriver for the browser tests.
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

# The browser tests (tests/web_ui.rs) drive Chromium through chromedriver: Debian's packages,
# unless CHROME_BIN and CHROMEDRIVER name others (CI: the runner's preinstalled Chrome).
if [ "${1:-}" = "--test" ] && ! { command -v "${CHROME_BIN:-/usr/bin/chromium}" && command -v "${CHROMEDRIVER:-/usr/bin/chromedriver}"; } >/dev/null 2>&1; then
  install="apt-get install -y --no-install-recommends chromium chromium-driver"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing chromium and chromium-driver (browser tests)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $install -qq || { dpkg --configure -a; DEBIAN_FRONTEND=noninteractive $install -qq; }
  else
    echo "setup: Chromium is missing for the browser tests; install it with: sudo apt-get update && sudo $install (or set CHROME_BIN and CHROMEDRIVER)" >&2
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
