#!/usr/bin/env bash
# Make sure Debian's Chromium is installed (the app's browser tests drive it with Playwright; we
# never let Playwright download a browser). Prints the browser's path on stdout.
set -euo pipefail

browser="${DISTILL_CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$browser" ]; then
    if ! command -v apt-get >/dev/null; then
        echo "distill: $browser is missing and apt-get is not available: install Chromium and set DISTILL_CHROMIUM" >&2
        exit 1
    fi
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    echo "distill: installing Debian's chromium for the browser tests (first time only)" >&2
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium >&2
fi
echo "$browser"
