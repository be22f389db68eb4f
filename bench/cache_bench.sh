#!/usr/bin/env bash
# bench/cache_bench.sh: cache hits, portico against Varnish, nginx and HAProxy (issue #11's
# `make bench` bullet). `make bench` runs it after bench/run.sh; `make bench-cache` alone.
# How to read the output: docs/benchmarks.md, "Cache hits".
#
# One upstream (an nginx of its own on core 1) serves /1k and /32k (1 KiB and 32 KiB static
# files, `Cache-Control: max-age=3600`). Each cache, one worker/thread, pinned to core 0, is
# warmed with a few requests per URL and then measured with wrk (core 1) on hits only:
# BENCH_ROUNDS interleaved rounds of, for each cache, for each size, one wrk run. Per run: req/s,
# p50, p99, and the cache's CPU time per hit (utime+stime of its processes, /proc, over the
# requests wrk completed); the upstream's access log counts the requests that reached it during
# the run (0 when every answer was a hit). Medians over rounds, and each cache's figures as
# ratios against the most efficient peer (the lowest CPU per hit among Varnish, nginx, HAProxy).
#
#   portico  workers: 1; cache: { memory: 256MiB }; route cache: { ttl: 1h }
#   varnish  malloc storage (256M), one thread pool, built-in VCL (-b upstream)
#   nginx    master_process off, worker_processes 1, proxy_cache (keys_zone, files under the
#            temporary directory), keep-alive to the upstream
#   haproxy  nbthread 1, its cache (total-max-size 256 MB), cache-use / cache-store
#
# Environment (defaults in brackets): BENCH_DURATION [10] BENCH_CONNS [50] BENCH_ROUNDS [3]
#   BENCH_WARMUP [1] BENCH_CACHE_PROXIES ["portico varnish nginx haproxy"] PORTICO_BIN
#   [build/portico] BENCH_OUT [build/bench] (cache-results.tsv, cache-report.txt)
#   BENCH_PROXY_CPU [0] BENCH_LOAD_CPU [1] BENCH_KEEP [0]: 1 keeps the temporary directory
#
# Exit status: 0 when every cache was measured; 1 when one was unavailable (e.g. portico not
# built, or not caching: its runs still reaching the upstream); 2 on a setup error.
# It starts only its own processes on free loopback ports and stops exactly those PIDs.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
PY=/usr/bin/python3
LIB=("$PY" "$HERE/benchlib.py")

DURATION=${BENCH_DURATION:-10}; DURATION=${DURATION%s}
CONNS=${BENCH_CONNS:-50}
ROUNDS=${BENCH_ROUNDS:-3}
WARMUP=${BENCH_WARMUP:-1}; WARMUP=${WARMUP%s}
PROXIES=${BENCH_CACHE_PROXIES:-portico varnish nginx haproxy}
PORTICO_BIN=${PORTICO_BIN:-$ROOT/build/portico}
OUT=${BENCH_OUT:-$ROOT/build/bench}
PROXY_CPU=${BENCH_PROXY_CPU:-0}
LOAD_CPU=${BENCH_LOAD_CPU:-1}
SIZES="1k 32k"
# hooks for bench/cache_gzip_bench.sh, which sources this file (empty here): extra wrk arguments
# and extra lines in the upstream's, portico's and nginx's configurations
WRK_EXTRA=()
UPSTREAM_HTTP_EXTRA=""
PORTICO_CONF_EXTRA=""
NGINX_HTTP_EXTRA=""
NGINX_LOCATION_EXTRA=""

die() { echo "cache bench: $*" >&2; exit 2; }
say() { echo "cache bench: $*" >&2; }

for v in DURATION CONNS ROUNDS WARMUP PROXY_CPU LOAD_CPU; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, got '${!v}'"
done
[ "$DURATION" -ge 1 ] && [ "$ROUNDS" -ge 1 ] && [ "$CONNS" -ge 1 ] || die "duration, rounds and connections must be >= 1"
for p in $PROXIES; do
    case $p in portico|varnish|nginx|haproxy) ;; *) die "unknown cache '$p' in BENCH_CACHE_PROXIES" ;; esac
done
for t in wrk nginx taskset; do
    command -v "$t" >/dev/null || die "$t not found: run scripts/deps.sh bench"
done
ncpu=$(getconf _NPROCESSORS_ONLN)
[ "$PROXY_CPU" -lt "$ncpu" ] && [ "$LOAD_CPU" -lt "$ncpu" ] || die "need cores $PROXY_CPU and $LOAD_CPU, have $ncpu"
CLK_TCK=$(getconf CLK_TCK)
ulimit -n 65536 2>/dev/null || true

WORK=$(mktemp -d /tmp/portico-cache-bench.XXXXXX) || die "mktemp failed"
chmod 755 "$WORK"
mkdir -p "$OUT" || die "cannot create $OUT"
RESULTS=$WORK/results.tsv
: >"$RESULTS"

# ------------------------------------------------------------------------- process control
STARTED=()
CLEANED=0

is_our_child() {    # alive (or a zombie) and still our child: never signal a recycled PID
    local rest
    [ -r "/proc/$1/stat" ] || return 1
    rest=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
    set -- $rest
    [ "${2:-}" = "$$" ]
}

is_running() {
    local st
    is_our_child "$1" || return 1
    st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

forget() {
    local keep=() p
    for p in "${STARTED[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    STARTED=("${keep[@]}")
}

stop_pid() {        # SIGTERM, up to 5 s, then SIGKILL; only while it is still our child
    local pid=$1 i
    if is_our_child "$pid"; then
        kill -TERM "$pid" 2>/dev/null
        for ((i = 0; i < 50; i++)); do
            is_running "$pid" || break
            sleep 0.1
        done
        is_running "$pid" && kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    fi
    forget "$pid"
}

cleanup() {
    [ "$CLEANED" = 1 ] && return
    CLEANED=1
    local pid
    for pid in "${STARTED[@]}"; do stop_pid "$pid"; done
    if [ "${BENCH_KEEP:-0}" = 1 ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'echo; say interrupted; cleanup; exit 130' INT
trap 'say terminated; cleanup; exit 143' TERM

spawn() {           # spawn LOGFILE CMD...: background, PID in BG_PID
    local log=$1; shift
    "$@" >>"$log" 2>&1 </dev/null &
    BG_PID=$!
    STARTED+=("$BG_PID")
}

run_wait() {        # run_wait LOGFILE CMD...: run in the background and wait (interruptible)
    local rc
    spawn "$@"
    wait "$BG_PID"; rc=$?
    forget "$BG_PID"
    return $rc
}

tree_ticks() {      # utime+stime, in clock ticks, of PID and its descendants (Varnish: 2 processes)
    local pid=$1 total=0 rest c
    rest=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null) || return 1
    set -- $rest
    total=$(( ${12} + ${13} ))
    for c in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
        total=$(( total + $(tree_ticks "$c" || echo 0) ))
    done
    echo "$total"
}

free_port() { "${LIB[@]}" ports 1; }

# ------------------------------------------------------------------------- the upstream
start_upstream() {
    local d=$WORK/upstream
    mkdir -p "$d/tmp" "$d/www"
    "${LIB[@]}" mkfile "$d/www/1k" 1024 || die "cannot write the 1 KiB file"
    "${LIB[@]}" mkfile "$d/www/32k" 32768 || die "cannot write the 32 KiB file"
    UPSTREAM_PORT=$(free_port) || die "no free port"
    UPSTREAM_LOG=$d/access.log
    cat >"$d/nginx.conf" <<EOF
# the origin: every response fresh for an hour; its access log counts what reaches it
daemon off;
master_process off;
worker_processes 1;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 4096; }
http {
    access_log $UPSTREAM_LOG;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;
    default_type application/octet-stream;
    keepalive_timeout 600s;
    keepalive_requests 1000000000;
    server {
        listen 127.0.0.1:$UPSTREAM_PORT backlog=4096;
        root $d/www;
        add_header Cache-Control "max-age=3600";
    }
$UPSTREAM_HTTP_EXTRA
}
EOF
    spawn "$d/stdout.log" taskset -c "$LOAD_CPU" nginx -p "$d/" -c "$d/nginx.conf" -e "$d/error.log"
    UPSTREAM_PID=$BG_PID
    if ! "${LIB[@]}" wait "$UPSTREAM_PORT" /1k "$UPSTREAM_PID" 10; then
        tail -n 20 "$d/error.log" "$d/stdout.log" >&2
        die "the upstream nginx did not start"
    fi
}

upstream_requests() { wc -l <"$UPSTREAM_LOG" 2>/dev/null || echo 0; }

# ------------------------------------------------------------------------- caches under test
declare -A PID_OF PORT_OF WHY_NOT DIR_OF

start_portico() {
    local d=$1 port=$2
    [ -x "$PORTICO_BIN" ] || { WHY_NOT[portico]="$PORTICO_BIN not found (make all)"; return 1; }
    cat >"$d/portico.yaml" <<EOF
# portico under test: one worker, keep-alive to the upstream, the cache on
listen: [ "127.0.0.1:$port" ]
workers: 1
upstreams:
  bench:
    servers:
      - { address: "127.0.0.1:$UPSTREAM_PORT" }
    keepalive: 64
cache: { memory: 256MiB }
routes:
  - match: { prefix: / }
    upstream: bench
    cache: { ttl: 1h }
$PORTICO_CONF_EXTRA
EOF
    spawn "$d/stdout.log" taskset -c "$PROXY_CPU" "$PORTICO_BIN" -c "$d/portico.yaml"
}

start_varnish() {
    local d=$1 port=$2
    command -v varnishd >/dev/null || { WHY_NOT[varnish]="varnishd not installed (scripts/deps.sh bench)"; return 1; }
    spawn "$d/stdout.log" taskset -c "$PROXY_CPU" varnishd -F -j none -n "$d/varnish" -T none \
        -a "127.0.0.1:$port" -b "127.0.0.1:$UPSTREAM_PORT" -s malloc,256M \
        -p thread_pools=1 -p thread_pool_min=100 -p thread_pool_max=1000
}

start_nginx() {
    local d=$1 port=$2
    mkdir -p "$d/tmp" "$d/cache"
    cat >"$d/nginx.conf" <<EOF
# nginx under test: one process, proxy_cache, keep-alive to the upstream
daemon off;
master_process off;
worker_processes 1;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;
    keepalive_timeout 300s;
    keepalive_requests 1000000000;
    proxy_cache_path $d/cache levels=1:2 keys_zone=bench:16m max_size=256m inactive=1h;
    upstream bench {
        server 127.0.0.1:$UPSTREAM_PORT;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / {
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache bench;
            proxy_cache_valid 200 1h;
$NGINX_LOCATION_EXTRA
        }
    }
$NGINX_HTTP_EXTRA
}
EOF
    spawn "$d/stdout.log" taskset -c "$PROXY_CPU" nginx -p "$d/" -c "$d/nginx.conf" -e "$d/error.log"
}

start_haproxy() {
    local d=$1 port=$2
    command -v haproxy >/dev/null || { WHY_NOT[haproxy]="haproxy not installed (scripts/deps.sh bench)"; return 1; }
    cat >"$d/haproxy.cfg" <<EOF
# HAProxy under test: one thread, its cache in front of the upstream
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
cache bench
    total-max-size 256
    max-object-size 1048576
    max-age 3600
frontend bench
    bind 127.0.0.1:$port
    http-request cache-use bench
    http-response cache-store bench
    default_backend bench
backend bench
    server up 127.0.0.1:$UPSTREAM_PORT
EOF
    spawn "$d/stdout.log" taskset -c "$PROXY_CPU" haproxy -f "$d/haproxy.cfg" -db
}

start_cache() {     # start_cache NAME: PID_OF, PORT_OF, or WHY_NOT
    local name=$1 d port pid s
    d=$WORK/$name
    mkdir -p "$d"
    port=$(free_port) || die "no free port"
    "start_$name" "$d" "$port" || { say "$name unavailable: ${WHY_NOT[$name]}"; return 1; }
    pid=$BG_PID
    if ! "${LIB[@]}" wait "$port" /1k "$pid" 15 2>"$d/wait.err"; then
        WHY_NOT[$name]="did not serve GET /1k: $(cat "$d/wait.err")"
        say "$name unavailable: ${WHY_NOT[$name]}"
        tail -n 15 "$d/stdout.log" "$d/error.log" 2>/dev/null | sed 's/^/    /' >&2
        stop_pid "$pid"
        return 1
    fi
    # warm: a few requests per URL, so that the measured runs are hits
    for s in $SIZES; do
        for _ in 1 2 3; do "${LIB[@]}" wait "$port" "/$s" "$pid" 5 2>/dev/null || true; done
    done
    PID_OF[$name]=$pid; PORT_OF[$name]=$port; DIR_OF[$name]=$d
}

record_unavailable() {  # round cache size status
    printf '%s\t%s\t%s\t%s\t0\t0\t0\t0\t0\t0\t0\t%s\t0\t0\n' "$1" "$2" "$3" "$4" "$CLK_TCK" >>"$RESULTS"
}

run_one() {             # run_one ROUND CACHE SIZE
    local round=$1 name=$2 size=$3 pid port url raw t0 t1 u0 u1 parsed
    pid=${PID_OF[$name]:-}
    if [ -z "$pid" ]; then
        record_unavailable "$round" "$name" "$size" "not-started"
        printf '  round %s  %-8s %-4s  unavailable\n' "$round" "$name" "$size"
        return
    fi
    port=${PORT_OF[$name]}
    url=http://127.0.0.1:$port/$size
    raw=$WORK/wrk-$round-$name-$size.txt
    [ "$WARMUP" -gt 0 ] && run_wait /dev/null taskset -c "$LOAD_CPU" wrk "${WRK_EXTRA[@]}" -t1 -c"$CONNS" -d"${WARMUP}s" "$url"
    u0=$(upstream_requests); t0=$(tree_ticks "$pid")
    run_wait "$raw" taskset -c "$LOAD_CPU" wrk "${WRK_EXTRA[@]}" -t1 -c"$CONNS" -d"${DURATION}s" --latency "$url"
    t1=$(tree_ticks "$pid"); u1=$(upstream_requests)
    if ! is_running "$pid" || [ -z "$t1" ]; then
        say "$name (pid $pid) died during round $round $size"
        tail -n 15 "${DIR_OF[$name]}/stdout.log" 2>/dev/null | sed 's/^/    /' >&2
        stop_pid "$pid"; unset "PID_OF[$name]"
        WHY_NOT[$name]="exited during the runs"
        record_unavailable "$round" "$name" "$size" "died"
        return
    fi
    if ! parsed=$("${LIB[@]}" parse-wrk "$raw"); then
        say "could not parse wrk output for $name $size:"; sed 's/^/    /' "$raw" >&2
        record_unavailable "$round" "$name" "$size" "wrk-failed"
        return
    fi
    set -- $parsed      # requests rps p50_us p99_us errors bytes max_us
    printf '%s\t%s\t%s\tok\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$round" "$name" "$size" "$1" "$2" "$3" "$4" "$5" "$6" $((t1 - t0)) "$CLK_TCK" "$7" $((u1 - u0)) >>"$RESULTS"
    awk -v r="$round" -v p="$name" -v s="$size" -v n="$1" -v rps="$2" -v p50="$3" -v p99="$4" \
        -v e="$5" -v tk=$((t1 - t0)) -v hz="$CLK_TCK" -v up=$((u1 - u0)) 'BEGIN {
        printf "  round %s  %-8s %-4s  %10.0f req/s  p50 %8.3fms  p99 %8.3fms  cpu %6.2f us/hit  origin %d%s\n",
            r, p, s, rps, p50 / 1000, p99 / 1000, (n > 0 ? tk * 1e6 / hz / n : 0), up, (e > 0 ? "  (" e " errors)" : "") }'
}

version_of() {
    case $1 in
        portico) if [ -x "$PORTICO_BIN" ]; then timeout 5 "$PORTICO_BIN" --version 2>&1 | head -n1; else echo "(not built)"; fi ;;
        varnish) varnishd -V 2>&1 | head -n1 | sed 's/^varnishd (\([^ ]*\).*/\1/' ;;
        nginx) nginx -v 2>&1 | sed 's/^nginx version: //' ;;
        haproxy) haproxy -v 2>&1 | head -n1 | awk '{print "haproxy-" $3}' ;;
    esac
}

# ------------------------------------------------------------------------- main
# sourced (bench/cache_gzip_bench.sh): the setup and functions above only
[[ "${BASH_SOURCE[0]}" != "$0" ]] && return 0

n_runs=$((ROUNDS * $(wc -w <<<"$PROXIES") * 2))
echo "portico cache bench: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -sr), $ncpu cores"
echo "  hits of 1 KiB and 32 KiB bodies; wrk -t1 -c$CONNS -d${DURATION}s --latency (after ${WARMUP}s warm-up), $ROUNDS rounds, about $(( n_runs * (DURATION + WARMUP + 1) / 60 + 1 )) min"
echo "  caches on core $PROXY_CPU, wrk and upstream nginx on core $LOAD_CPU"
for p in $PROXIES; do printf '  %-8s %s\n' "$p" "$(version_of "$p")"; done
echo

start_upstream
for p in $PROXIES; do start_cache "$p" || true; done
echo "Hit runs:"
for ((round = 1; round <= ROUNDS; round++)); do
    for p in $PROXIES; do
        for s in $SIZES; do run_one "$round" "$p" "$s"; done
    done
done
for p in $PROXIES; do [ -n "${PID_OF[$p]:-}" ] && stop_pid "${PID_OF[$p]}"; done
stop_pid "$UPSTREAM_PID"
echo

cp "$RESULTS" "$OUT/cache-results.tsv"
WHY=""
for p in "${!WHY_NOT[@]}"; do WHY+="$p: ${WHY_NOT[$p]}"$'\n'; done
{
    "$PY" - "$HERE" "$RESULTS" "$PROXIES" <<'EOF'
# the summary: medians over rounds, and ratios against the most efficient peer
import sys
sys.path.insert(0, sys.argv[1])
from benchlib import fmt_num, fmt_ratio, fmt_us, median, read_tsv, table

results, proxies = sys.argv[2], sys.argv[3].split()
PEERS = ("varnish", "nginx", "haproxy")
SIZES = ("1k", "32k")
BODY = {"1k": 1024, "32k": 32768}
runs = {}
for r in read_tsv(results):
    rnd, name, size, st, n, rps, p50, p99, err, nbytes, ticks, hz, mx, origin = r[:14]
    d = {"status": st}
    if st == "ok" and int(n) > 0:
        n = int(n)
        d.update(n=n, rps=float(rps), p50=float(p50), p99=float(p99), max=float(mx),
                 errors=int(err), bytes=int(nbytes) / n, cpu=int(ticks) * 1e6 / int(hz) / n,
                 origin=int(origin))
    elif st == "ok":
        d["status"] = "no requests"
    runs.setdefault((name, size), []).append(d)

med, notes, bad = {}, [], set()
for size in SIZES:
    for name in proxies:
        ok = [d for d in runs.get((name, size), []) if d["status"] == "ok"]
        if not ok:
            bad.add(name)
            continue
        m = {k: median([d[k] for d in ok]) for k in ("rps", "p50", "p99", "max", "cpu", "bytes")}
        m["runs"] = f"{len(ok)}/{len(runs[(name, size)])}"
        rps = [d["rps"] for d in ok]
        m["spread"] = (max(rps) - min(rps)) / m["rps"] * 100 if m["rps"] else 0
        m["errors"] = sum(d["errors"] for d in ok)
        m["origin"] = sum(d["origin"] for d in ok)
        m["reqs"] = sum(d["n"] for d in ok)
        med[(name, size)] = m
        if m["errors"]:
            notes.append(f"{name} {size}: wrk counted {m['errors']} errors (socket errors or non-2xx)")
        if m["bytes"] < BODY[size]:
            notes.append(f"{name} {size}: {m['bytes']:.0f} bytes per response, less than the body")
        if m["origin"] > m["reqs"] / 100:
            bad.add(name)
            notes.append(f"{name} {size}: {m['origin']} of {m['reqs']} requests reached the upstream: "
                         "not measuring hits")

print("Cache hits (median over rounds; wrk on the load core, each cache on the proxy core)")
print()
rows = []
for size in SIZES:
    peers = [p for p in PEERS if (p, size) in med]
    ref = min(peers, key=lambda p: med[(p, size)]["cpu"]) if peers else None
    r = med.get((ref, size)) if ref else None
    for name in proxies:
        m = med.get((name, size))
        if not m:
            rows.append([name, size, "0", "unavailable"] + ["-"] * 10)
            continue
        rows.append([name + (" *" if name == ref else ""), size, m["runs"], fmt_num(m["rps"]),
                     f"{m['spread']:.0f}%",
                     fmt_us(m["p50"]), fmt_us(m["p99"]), fmt_num(m["cpu"], 2),
                     fmt_ratio(m["cpu"] / r["cpu"]) if r else "-",
                     fmt_ratio(m["rps"] / r["rps"]) if r else "-",
                     fmt_ratio(m["p50"] / r["p50"]) if r and r["p50"] else "-",
                     fmt_ratio(m["p99"] / r["p99"]) if r and r["p99"] else "-",
                     fmt_num(m["bytes"]), str(m["origin"])])
print(table(["cache", "size", "runs", "req/s", "spread", "p50", "p99", "cpu us/hit", "cpu x", "req/s x",
             "p50 x", "p99 x", "bytes/resp", "origin reqs"], rows))
print()
print("  * = the most efficient peer for that size (lowest CPU per hit among varnish, nginx,")
print("  haproxy); the x columns are each cache's figure over its. Target (#11): portico's cpu x")
print("  at most 0.90, req/s x at least 1.00, p99 x at most 1.00.")
print("  cpu us/hit = utime+stime of the cache's processes (/proc) / requests wrk completed.")
print("  spread = (max - min) / median of req/s over the rounds: how noisy the machine was.")
print("  origin reqs = requests that reached the upstream during the measured runs (0: all hits).")
for n in notes:
    print("  ! " + n)
print()
for name in proxies:
    if name in bad:
        print(f"UNAVAILABLE: {name}")
sys.exit(1 if bad else 0)
EOF
    rc=$?
    [ -n "$WHY" ] && printf '%s' "$WHY" | sed 's/^/  reason: /'
    exit $rc
} | tee "$OUT/cache-report.txt"
rc=${PIPESTATUS[0]}
echo "(raw results in $OUT/cache-results.tsv)"
exit "$rc"
