#!/usr/bin/env bash
# Print the path of a working promtool, installing Debian's `prometheus` package if there is none.
#
#   monitoring/ensure-promtool.sh            # -> /usr/bin/promtool
#   PROMTOOL=$(monitoring/ensure-promtool.sh)
#
# Idempotent and fast when promtool is already on PATH (or $PROMTOOL points at one). Installing
# needs root and apt-get. The package's maintainer scripts may try to start prometheus.service;
# we forbid that for the duration of the install with a policy-rc.d (honoured by
# invoke-rc.d/deb-systemd-invoke), and in any case judge success only by whether promtool works
# afterwards. Everything except the final path goes to stderr, so stdout is safe to capture.
set -euo pipefail

log() { printf 'ensure-promtool: %s\n' "$*" >&2; }

works() { [ -n "${1:-}" ] && [ -x "$1" ] && "$1" --version >/dev/null 2>&1; }

find_promtool() {
    local candidate
    for candidate in "${PROMTOOL:-}" "$(command -v promtool 2>/dev/null || true)" /usr/bin/promtool; do
        if works "$candidate"; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    return 1
}

if find_promtool; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    log "promtool not found and not running as root: install it with" \
        "'sudo apt-get install prometheus' or put a promtool binary on PATH"
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    log "promtool not found and apt-get is not available: put a promtool binary on PATH" \
        "(https://prometheus.io/download/) or set PROMTOOL=/path/to/promtool"
    exit 1
fi

policy=/usr/sbin/policy-rc.d
created_policy=0
cleanup() {
    if [ "$created_policy" -eq 1 ]; then
        rm -f "$policy"
    fi
}
trap cleanup EXIT
if [ ! -e "$policy" ]; then
    # Exit 101: "action forbidden by policy"; the service is installed but not started.
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    created_policy=1
fi

log "installing Debian package 'prometheus' for promtool"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2 || log "apt-get update failed; trying the cached package lists"
# A failing postinst (e.g. a service that cannot start in a container) must not stop us if the
# binary we need got unpacked; the check below decides.
if ! apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    prometheus >&2; then
    log "apt-get install reported an error; checking whether promtool is usable anyway"
fi

if find_promtool; then
    exit 0
fi
log "promtool is still not available after installing 'prometheus'"
exit 1
