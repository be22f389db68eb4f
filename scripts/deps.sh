#!/usr/bin/env bash
# Install what portico needs to build and test, from Debian's archive.
# Idempotent and quiet when everything is already there.
#   scripts/deps.sh          build + test dependencies: everything `make test` runs, so that no
#                            test is skipped on a fresh machine (Chromium for the status page
#                            test, promtool for the metrics test via scripts/promtool.sh)
#   scripts/deps.sh bench    also the peers and load generator for `make bench`
#   scripts/deps.sh fuzz     also clang's libFuzzer runtime
set -euo pipefail

pkgs=(build-essential pkg-config libyaml-dev libcmocka-dev wrk
      python3-pytest python3-requests
      libssl-dev openssl postgresql postgresql-client python3-psycopg2
      zlib1g-dev libbrotli-dev libzstd-dev brotli zstd python3-brotli python3-pytest-timeout
      chromium)
for extra in "$@"; do
    case "$extra" in
        bench) pkgs+=(wrk nginx-light haproxy util-linux procps valgrind pgbouncer) ;;
        fuzz)  pkgs+=(clang libclang-rt-dev) ;;
        browser) ;;         # chromium is a test dependency now; kept for old callers
        *) echo "deps.sh: unknown group '$extra'" >&2; exit 2 ;;
    esac
done

missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    "$(dirname "$0")/promtool.sh" >/dev/null
    exit 0
fi

echo "deps.sh: installing ${missing[*]}" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
"$(dirname "$0")/promtool.sh" >/dev/null
