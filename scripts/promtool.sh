#!/usr/bin/env bash
# Print the path of a promtool, fetching one first when there is none:
# promtool is extracted from Debian's prometheus package into a cache
# directory ($PORTICO_TOOLS, default ~/.cache/portico/tools), so no Prometheus
# server is installed or started. Used by scripts/deps.sh (for the metrics and
# alert tests) and scripts/check-deploy.sh. Exits non-zero if it cannot.
set -euo pipefail

TOOLS="${PORTICO_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/portico/tools}"
if command -v promtool >/dev/null 2>&1; then
    command -v promtool
    exit 0
fi
PROMTOOL="$TOOLS/promtool"
if [ ! -x "$PROMTOOL" ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    echo "promtool.sh: fetching promtool (Debian package prometheus) into $TOOLS" >&2
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    chmod 0777 "$work"              # apt's _apt user downloads into it
    if ! (cd "$work" && apt-get download -qq prometheus >/dev/null 2>&1); then
        $SUDO apt-get update -qq >/dev/null
        (cd "$work" && apt-get download -qq prometheus >/dev/null 2>&1) || {
            echo "promtool.sh: cannot download Debian's prometheus package" >&2
            exit 1
        }
    fi
    mkdir -p "$TOOLS"
    dpkg-deb --fsys-tarfile "$work"/prometheus_*.deb | tar -x -C "$work" ./usr/bin/promtool
    install -m 0755 "$work/usr/bin/promtool" "$PROMTOOL"
fi
echo "$PROMTOOL"
