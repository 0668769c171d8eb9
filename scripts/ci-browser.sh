#!/usr/bin/env bash
# Makes sure Debian's Chromium is there for the browser tests (tests/browser, driven by Playwright through
# executable_path: browser downloads are not possible here). Installs the chromium package with apt-get when
# /usr/bin/chromium is missing (needs root); apt-get's output goes to $CROSSROADS_CI_INSTALL_LOG, not the terminal.
set -euo pipefail
CHROMIUM="${CROSSROADS_CHROMIUM:-/usr/bin/chromium}"
INSTALL_LOG="${CROSSROADS_CI_INSTALL_LOG:-/tmp/crossroads-ci-install.log}"
log() { echo "ci-browser: $*" >&2; }
if [ -x "$CHROMIUM" ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then log "$CHROMIUM not found and not root: install Debian's chromium package first"; exit 1; fi
log "installing chromium (and a font) with apt-get (output in $INSTALL_LOG)"
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium fonts-liberation; } >>"$INSTALL_LOG" 2>&1; then
  log "apt-get failed; the end of $INSTALL_LOG:"
  tail -n 25 "$INSTALL_LOG" >&2
  exit 1
fi
[ -x "$CHROMIUM" ] || { log "$CHROMIUM still not found after installing"; exit 1; }
