#!/usr/bin/env bash
# Install what portico needs to build and test, from Debian's archive.
# Idempotent and quiet when everything is already there.
#   scripts/deps.sh          build + test dependencies: everything `make test` runs, so that no
#                            test is skipped on a fresh machine (Chromium for the status page
#                            test, promtool for the metrics test via scripts/promtool.sh)
#   scripts/deps.sh bench    also the peers and load generator for `make bench`
#   scripts/deps.sh fuzz     also clang's libFuzzer runtime
#   scripts/deps.sh conformance        also Node.js (if absent) and the HTTP caching test suite,
#                            pinned in tests/conformance/package-lock.json (npm ci, into
#                            tests/conformance/node_modules) for `make conformance`
#   scripts/deps.sh conformance-peers  also the caches it is compared with (`make conformance
#                            PEERS=1`): nginx, Varnish, HAProxy, Apache httpd
set -euo pipefail

pkgs=(build-essential pkg-config libyaml-dev libcmocka-dev wrk
      python3-pytest python3-requests
      libssl-dev openssl postgresql postgresql-client python3-psycopg2 python3-psycopg
      zlib1g-dev libbrotli-dev libzstd-dev brotli zstd python3-brotli python3-pytest-timeout
      chromium)
for extra in "$@"; do
    case "$extra" in
        bench) pkgs+=(wrk nginx-light haproxy varnish util-linux procps valgrind pgbouncer) ;;
        fuzz)  pkgs+=(clang libclang-rt-dev) ;;
        browser) ;;         # chromium is a test dependency now; kept for old callers
        conformance) conformance=1
                     command -v node >/dev/null && command -v npm >/dev/null || pkgs+=(nodejs npm) ;;
        conformance-peers) pkgs+=(nginx-light haproxy varnish apache2) ;;
        *) echo "deps.sh: unknown group '$extra'" >&2; exit 2 ;;
    esac
done

conformance=${conformance:-0}
suite_deps() {      # the pinned test suite, installed once (again only when the lock changes)
    [ "$conformance" = 1 ] || return 0
    local dir sum
    dir="$(cd "$(dirname "$0")/.." && pwd)/tests/conformance"
    sum=$(sha256sum <"$dir/package-lock.json")
    [ "$(cat "$dir/node_modules/.installed-lock" 2>/dev/null)" = "$sum" ] && return 0
    echo "deps.sh: installing the HTTP caching test suite (npm ci in tests/conformance)" >&2
    (cd "$dir" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >/dev/null)
    echo "$sum" >"$dir/node_modules/.installed-lock"
}

missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    "$(dirname "$0")/promtool.sh" >/dev/null
    suite_deps
    exit 0
fi

echo "deps.sh: installing ${missing[*]}" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
"$(dirname "$0")/promtool.sh" >/dev/null
suite_deps
