#!/usr/bin/env bash
# Install what the browser tests (tests/test_browser.py) need from Debian when it is missing:
# Chromium, and npm (the tests serve the book's CDN scripts, MathJax and 3Dmol.js, from npm packages).
# Idempotent and quiet: does nothing when both are there. Needs apt-get and root (or sudo).
# Playwright drives this Chromium; never run `playwright install`, which downloads its own builds.
set -euo pipefail

CHROMIUM="${ANIBOOK_CHROMIUM:-/usr/bin/chromium}"
packages=()
[ -x "$CHROMIUM" ] || packages+=(chromium)
command -v npm >/dev/null 2>&1 || packages+=(npm)
if [ ${#packages[@]} -eq 0 ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser.sh: no apt-get here; install ${packages[*]} yourself (ANIBOOK_CHROMIUM: the browser's path)" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
echo "install_browser.sh: installing Debian's ${packages[*]} (about a minute)"
if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${packages[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "install_browser.sh: apt-get could not install ${packages[*]}" >&2
    exit 1
fi
if [ ! -x "$CHROMIUM" ]; then
    echo "install_browser.sh: chromium installed, but $CHROMIUM is missing; set ANIBOOK_CHROMIUM" >&2
    exit 1
fi
"$CHROMIUM" --version 2>/dev/null
