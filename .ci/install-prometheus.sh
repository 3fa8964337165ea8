#!/usr/bin/env bash
# Install the Prometheus server and promtool (Debian package "prometheus") for
# tests/test_dashboards.py.  Idempotent and quiet: exits 0 at once if both are
# already on PATH; prints apt's log only if the install fails.  About 10 s on a
# machine that has run apt-get update, ~100 MB on disk.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
log="$(mktemp)"
# The package's post-install script would start a Prometheus daemon on :9090
# where an init system lets it; the tests start their own, so forbid that
# (the usual policy-rc.d "101: action forbidden"), unless a policy exists.
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod +x "$policy"
    own_policy=1
fi
cleanup() {
    if [ "$own_policy" = 1 ]; then $SUDO rm -f "$policy"; fi
    rm -f "$log"
}
trap cleanup EXIT

if ! { $SUDO apt-get update -qq \
        && $SUDO apt-get install -y -qq --no-install-recommends prometheus; } >"$log" 2>&1; then
    echo "install-prometheus: apt-get failed:" >&2
    tail -n 40 "$log" >&2
    exit 1
fi
command -v prometheus >/dev/null && command -v promtool >/dev/null
