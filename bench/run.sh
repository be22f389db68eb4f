#!/usr/bin/env bash
# bench/run.sh: portico against nginx and HAProxy, as an HTTP/1.1 reverse proxy on loopback.
# `make bench` installs the tools (scripts/deps.sh bench), builds build/portico, runs this.
# How to read the output: docs/benchmarks.md.
#
# 1. Throughput: one shared upstream (an nginx of its own, serving 13 bytes at /small and
#    32 KiB at /32k) on core 1 with wrk; each proxy under test, one worker/thread, on core 0.
#    BENCH_ROUNDS interleaved rounds of: for each proxy, for each size, a wrk run. Per run:
#    req/s, p50, p99 and the proxy process's CPU time per request (utime+stime).
#    Medians over rounds, and portico / best peer ratios.
#    Streamed compression (#13): porticogz and nginxgz compress the upstream's 32 KiB JSON
#    response (bench/corpus.py's orders-32k.json) with gzip at level 6 as it streams, for wrk
#    asking with Accept-Encoding: gzip; the same CPU per request, and their ratio.
# 2. Idle keep-alive memory: a fresh instance of each proxy, BENCH_IDLE_CONNS connections
#    that each make one request and then sit idle; VmRSS growth per connection.
#
# Environment (defaults in brackets):
#   BENCH_DURATION [10]  seconds per measured wrk run     BENCH_CONNS [50]  wrk connections
#   BENCH_ROUNDS   [3]   interleaved rounds               BENCH_WARMUP [1]  unmeasured warm-up
#                                                           seconds before each run (0: none)
#   BENCH_IDLE_CONNS [9000]  connections for the memory test (0: skip it)
#   BENCH_IDLE_WINDOW [256]  how many of them are being opened at once
#   BENCH_PROXIES  ["portico nginx haproxy"]   which proxies to run
#   PORTICO_BIN    [build/portico]             BENCH_OUT [build/bench] where results are kept
#   BENCH_PROXY_CPU [0]  BENCH_LOAD_CPU [1]    cores for the proxy / for wrk + upstream
#   BENCH_KEEP     [0]   1: keep the temporary directory (configs, logs, raw wrk output)
#
# Exit status: 0 when every proxy ran; 1 when one was unavailable (e.g. build/portico missing
# or failing to start: the peers are still measured and reported); 2 on a setup error.
#
# It starts only its own processes, on free loopback ports, and on exit or interrupt stops
# exactly the PIDs it started.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
PY=/usr/bin/python3
LIB=("$PY" "$HERE/benchlib.py")

DURATION=${BENCH_DURATION:-10}; DURATION=${DURATION%s}
CONNS=${BENCH_CONNS:-50}
ROUNDS=${BENCH_ROUNDS:-3}
WARMUP=${BENCH_WARMUP:-1}; WARMUP=${WARMUP%s}
IDLE_CONNS=${BENCH_IDLE_CONNS:-9000}
IDLE_WINDOW=${BENCH_IDLE_WINDOW:-256}
PROXIES=${BENCH_PROXIES:-portico portico3 porticolog porticooff porticorl porticogz nginx nginxrl nginxgz haproxy}
PORTICO_BIN=${PORTICO_BIN:-$ROOT/build/portico}
OUT=${BENCH_OUT:-$ROOT/build/bench}
PROXY_CPU=${BENCH_PROXY_CPU:-0}
LOAD_CPU=${BENCH_LOAD_CPU:-1}
SIZES="small 32k"
sizes_of() {        # the compressing pair serves the JSON body only; the others small and 32k
    case $1 in porticogz|nginxgz) echo json ;; *) echo "$SIZES" ;; esac
}

die() { echo "bench: $*" >&2; exit 2; }
say() { echo "bench: $*" >&2; }

for v in DURATION CONNS ROUNDS WARMUP IDLE_CONNS IDLE_WINDOW PROXY_CPU LOAD_CPU; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, got '${!v}'"
done
[ "$DURATION" -ge 1 ] && [ "$ROUNDS" -ge 1 ] && [ "$CONNS" -ge 1 ] || die "duration, rounds and connections must be >= 1"
for p in $PROXIES; do
    case $p in portico|portico3|porticolog|porticooff|porticorl|porticogz|nginx|nginxrl|nginxgz|haproxy) ;; *) die "unknown proxy '$p' in BENCH_PROXIES" ;; esac
done
[ -x "$PY" ] || die "$PY not found"
for t in wrk nginx haproxy taskset; do
    command -v "$t" >/dev/null || die "$t not found: run scripts/deps.sh bench"
done
ncpu=$(getconf _NPROCESSORS_ONLN)
[ "$PROXY_CPU" -lt "$ncpu" ] && [ "$LOAD_CPU" -lt "$ncpu" ] || die "need cores $PROXY_CPU and $LOAD_CPU, have $ncpu"
CLK_TCK=$(getconf CLK_TCK)

# File descriptors: the memory test holds IDLE_CONNS connections in the client and the proxy.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null
NOFILE=$(ulimit -n)
[ "$NOFILE" = unlimited ] && NOFILE=1048576
if [ "$IDLE_CONNS" -gt 0 ] && [ $((IDLE_CONNS + 1000)) -gt "$NOFILE" ]; then
    say "open-file limit is $NOFILE; memory test lowered from $IDLE_CONNS to $((NOFILE - 1000)) connections"
    IDLE_CONNS=$((NOFILE - 1000))
fi
# Peers sized for the memory test: nginx counts one slot per connection (client or upstream),
# HAProxy needs about two descriptors per frontend connection.
NGINX_WC=$(( NOFILE < 20000 ? NOFILE : 20000 ))
HAPROXY_MAXCONN=$(( (NOFILE - 200) / 2 < 20000 ? (NOFILE - 200) / 2 : 20000 ))
[ "$HAPROXY_MAXCONN" -lt $((IDLE_CONNS + 100)) ] && HAPROXY_MAXCONN=$((IDLE_CONNS + 100))

WORK=$(mktemp -d /tmp/portico-bench.XXXXXX) || die "mktemp failed"
mkdir -p "$OUT" || die "cannot create $OUT"
RESULTS=$WORK/results.tsv
IDLE=$WORK/idle.tsv
: >"$RESULTS"; : >"$IDLE"

# ------------------------------------------------------------------------- process control
STARTED=()          # every PID this script started and has not yet stopped
CLEANED=0

is_our_child() {    # alive (or a zombie) and still our child: never signal a recycled PID
    local pid=$1 rest
    [ -r "/proc/$pid/stat" ] || return 1
    rest=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null) || return 1
    set -- $rest     # $1 state, $2 ppid
    [ "${2:-}" = "$$" ]
}

forget() {
    local pid=$1 keep=() p
    for p in "${STARTED[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
    STARTED=("${keep[@]}")
}

stop_pid() {        # SIGTERM, up to 5 s, then SIGKILL; only if it is still our child
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

is_running() {      # our child and not yet a zombie
    local pid=$1 st
    is_our_child "$pid" || return 1
    st=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

cleanup() {
    [ "$CLEANED" = 1 ] && return
    CLEANED=1
    local pid
    for pid in "${STARTED[@]}"; do
        is_our_child "$pid" && kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${STARTED[@]}"; do stop_pid "$pid"; done
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        say "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'echo; say interrupted; cleanup; exit 130' INT
trap 'say terminated; cleanup; exit 143' TERM

spawn() {           # spawn LOGFILE CMD...: start in the background, remember the PID in BG_PID
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

cpu_ticks() {       # utime + stime of PID in clock ticks (/proc/PID/stat fields 14 and 15)
    local rest
    rest=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
    set -- $rest     # field 3 (state) is $1, so field 14 is ${12} and 15 is ${13}
    echo $(( ${12} + ${13} ))
}

core_ticks() {      # "busy total" of core N from /proc/stat
    awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}

pct() {             # pct busy0 total0 busy1 total1
    awk -v b0="$1" -v t0="$2" -v b1="$3" -v t1="$4" 'BEGIN { d = t1 - t0; printf "%.1f", (d > 0 ? 100 * (b1 - b0) / d : 0) }'
}

free_port() { "${LIB[@]}" ports 1; }

# ------------------------------------------------------------------------- the upstream
start_upstream() {
    local d=$WORK/upstream port
    mkdir -p "$d/tmp" "$d/www" "$d/logs"
    "${LIB[@]}" mkfile "$d/www/32k" 32768 || die "cannot write the 32 KiB file"
    "$PY" "$HERE/corpus.py" --one orders-32k.json "$d/www/json" || die "cannot write the JSON body"
    port=$(free_port) || die "no free port"
    # two more ports on the same upstream process: portico3's group of three
    UPSTREAM_PORT2=$(free_port) || die "no free port"
    UPSTREAM_PORT3=$(free_port) || die "no free port"
    cat >"$d/nginx.conf" <<EOF
# shared upstream for every proxy under test
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile $NOFILE;
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
    default_type application/octet-stream;
    sendfile on;
    tcp_nodelay on;
    keepalive_timeout 600s;
    keepalive_requests 1000000000;
    open_file_cache max=16 inactive=600s;
    server {
        listen 127.0.0.1:$port backlog=4096;
        listen 127.0.0.1:$UPSTREAM_PORT2 backlog=4096;
        listen 127.0.0.1:$UPSTREAM_PORT3 backlog=4096;
        root $d/www;
        location = /small { default_type text/plain; return 200 "hello world!\n"; }
        location = /32k { }
        location = /json { default_type application/json; }
    }
}
EOF
    spawn "$d/stdout.log" taskset -c "$LOAD_CPU" nginx -p "$d/" -c "$d/nginx.conf" -e "$d/error.log"
    UPSTREAM_PID=$BG_PID
    if ! "${LIB[@]}" wait "$port" /small "$UPSTREAM_PID" 10; then
        tail -n 20 "$d/error.log" "$d/stdout.log" >&2
        die "the upstream nginx did not start"
    fi
    UPSTREAM_PORT=$port
}

# ------------------------------------------------------------------------- proxies under test
declare -A PID_OF PORT_OF WHY_NOT

write_nginx_conf() {    # DIR PORT [limit|gzip]: limit_req (nginxrl), or gzip level 6 (nginxgz)
    local d=$1 port=$2 zone="" req=""
    if [ "${3:-}" = limit ]; then
        zone="limit_req_zone \$binary_remote_addr zone=rl:10m rate=100000r/s;"
        req="limit_req zone=rl burst=100000 nodelay;"
    elif [ "${3:-}" = gzip ]; then
        # what porticogz does: gzip level 6 (window 15, memLevel 8: both defaults) on proxied JSON
        zone="gzip on; gzip_comp_level 6; gzip_types application/json; gzip_proxied any; gzip_min_length 1024;"
    fi
    mkdir -p "$d/tmp" "$d/logs"
    cat >"$d/nginx.conf" <<EOF
# nginx under test: one process (no master), no access log, keep-alive to the upstream
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile $NOFILE;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections $NGINX_WC; }
http {
    access_log off;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;
    keepalive_timeout 300s;
    keepalive_requests 1000000000;
    $zone
    upstream bench {
        server 127.0.0.1:$UPSTREAM_PORT;
        keepalive 64;
        keepalive_requests 1000000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / {
            $req
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_max_temp_file_size 0;
        }
    }
}
EOF
}

write_haproxy_conf() {  # DIR PORT
    local d=$1 port=$2
    cat >"$d/haproxy.cfg" <<EOF
# HAProxy under test: one thread, no logging, keep-alive both sides, connection reuse
global
    nbthread 1
    maxconn $HAPROXY_MAXCONN

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-request 300s
    timeout http-keep-alive 300s

frontend bench
    bind 127.0.0.1:$port
    default_backend bench

backend bench
    server up 127.0.0.1:$UPSTREAM_PORT
EOF
}

write_portico_conf() {  # DIR PORT
    local d=$1 port=$2
    cat >"$d/portico.yaml" <<EOF
# portico under test: one worker, keep-alive to the upstream
listen: [ "127.0.0.1:$port" ]
workers: 1

upstreams:
  bench:
    servers:
      - { address: "127.0.0.1:$UPSTREAM_PORT" }
    keepalive: 64

routes:
  - match: { prefix: / }
    upstream: bench
EOF
}

write_portico3_conf() {  # DIR PORT: the same, over a group of three with health checks
    local d=$1 port=$2
    cat >"$d/portico.yaml" <<EOF
# portico under test: one worker, a balanced group of three servers with
# active (1s) and passive health checks: what balancing costs per request
listen: [ "127.0.0.1:$port" ]
workers: 1

upstreams:
  bench:
    balance: weighted
    servers:
      - { address: "127.0.0.1:$UPSTREAM_PORT", weight: 2 }
      - { address: "127.0.0.1:$UPSTREAM_PORT2" }
      - { address: "127.0.0.1:$UPSTREAM_PORT3" }
    keepalive: 64
    health: { path: /small, interval: 1s, timeout: 1s }
    passive: { max_fails: 3, fail_timeout: 10s }

routes:
  - match: { prefix: / }
    upstream: bench
EOF
}

start_proxy() {         # start_proxy NAME TAG: sets PID_OF[NAME] PORT_OF[NAME], or WHY_NOT[NAME]
    local name=$1 tag=$2 d port pid
    d=$WORK/$name-$tag
    mkdir -p "$d"
    port=$(free_port) || die "no free port"
    unset "PID_OF[$name]"
    case $name in
        nginx|nginxrl|nginxgz)
            write_nginx_conf "$d" "$port" "$(case $name in nginxrl) echo limit ;; nginxgz) echo gzip ;; esac)"
            spawn "$d/stdout.log" taskset -c "$PROXY_CPU" nginx -p "$d/" -c "$d/nginx.conf" -e "$d/error.log" ;;
        haproxy)
            write_haproxy_conf "$d" "$port"
            spawn "$d/stdout.log" taskset -c "$PROXY_CPU" haproxy -f "$d/haproxy.cfg" -db ;;
        portico|portico3|porticolog|porticooff|porticorl|porticogz)
            if [ ! -x "$PORTICO_BIN" ]; then
                WHY_NOT[$name]="$PORTICO_BIN not found (make all)"
                say "$name unavailable: ${WHY_NOT[$name]}"
                return 1
            fi
            if [ "$name" = portico3 ]; then write_portico3_conf "$d" "$port"
            else write_portico_conf "$d" "$port"; fi
            # porticolog: the same, writing a JSON access log line per request to a file
            [ "$name" = porticolog ] && printf 'access_log: { path: %s/access.log, format: json }\n' "$d" >>"$d/portico.yaml"
            # porticooff: the same, without access log and without per-request metrics
            [ "$name" = porticooff ] && printf 'metrics: { enabled: false }\n' >>"$d/portico.yaml"
            # porticorl: the same route under a rate limit too high to reject anything
            [ "$name" = porticorl ] && sed -i 's|^    upstream: bench$|    upstream: bench\n    rate_limit: { rate: 100000/s, burst: 100000, key: client_ip }|' "$d/portico.yaml"
            # porticogz: the same, compressing JSON with gzip at level 6 as it streams (nginxgz's)
            [ "$name" = porticogz ] && printf 'compression: { encodings: [ gzip ], gzip: { level: 6 }, min_size: 1KiB }\n' >>"$d/portico.yaml"
            spawn "$d/stdout.log" taskset -c "$PROXY_CPU" "$PORTICO_BIN" -c "$d/portico.yaml" ;;
    esac
    pid=$BG_PID
    if ! "${LIB[@]}" wait "$port" /small "$pid" 10 2>"$d/wait.err"; then
        WHY_NOT[$name]="did not serve GET /small: $(cat "$d/wait.err")"
        say "$name unavailable: ${WHY_NOT[$name]}"
        say "last lines of its output ($d):"
        tail -n 15 "$d/stdout.log" "$d"/error.log 2>/dev/null | sed 's/^/    /' >&2
        stop_pid "$pid"
        return 1
    fi
    PID_OF[$name]=$pid
    PORT_OF[$name]=$port
    PROXY_DIR[$name]=$d
    return 0
}
declare -A PROXY_DIR

# Keep captured output bounded: a proxy that logs each request (portico has no
# `access_log: off` yet) must not fill the disk. Logs are opened with O_APPEND, so truncating
# is safe while the process runs. Prints how many bytes were written since the last call.
LOG_MAX=$((64 * 1024 * 1024))
trim_log() {
    local f=$1 sz
    sz=$(stat -c %s "$f" 2>/dev/null || echo 0)
    if [ "$sz" -gt "$LOG_MAX" ]; then
        : >"$f"
        echo "$sz"
    else
        echo 0
    fi
}

record_unavailable() {  # round proxy size status
    printf '%s\t%s\t%s\t%s\t0\t0\t0\t0\t0\t0\t0\t%s\t0\t0\t0\n' "$1" "$2" "$3" "$4" "$CLK_TCK" >>"$RESULTS"
}

run_one() {             # run_one ROUND PROXY SIZE
    local round=$1 proxy=$2 size=$3 pid port url raw t0 t1 c0a c0b c1a c1b cpu0 cpu1 parsed
    pid=${PID_OF[$proxy]:-}
    if [ -z "$pid" ]; then
        record_unavailable "$round" "$proxy" "$size" "not-started"
        printf '  round %s  %-8s %-5s  unavailable\n' "$round" "$proxy" "$size"
        return
    fi
    port=${PORT_OF[$proxy]}
    url=http://127.0.0.1:$port/$size
    local hdr=()        # the JSON body is asked for compressed, as browsers ask
    [ "$size" = json ] && hdr=(-H "Accept-Encoding: gzip")
    raw=$WORK/wrk-$round-$proxy-$size.txt
    if [ "$WARMUP" -gt 0 ]; then
        run_wait /dev/null taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${WARMUP}s" "${hdr[@]}" "$url"
    fi
    c0a=$(core_ticks "$PROXY_CPU"); c1a=$(core_ticks "$LOAD_CPU"); t0=$(cpu_ticks "$pid")
    run_wait "$raw" taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "${hdr[@]}" "$url"
    t1=$(cpu_ticks "$pid"); c0b=$(core_ticks "$PROXY_CPU"); c1b=$(core_ticks "$LOAD_CPU")
    cpu0=$(pct $c0a $c0b)       # each c* is "busy total"
    cpu1=$(pct $c1a $c1b)
    if ! is_running "$pid" || [ -z "$t1" ]; then
        say "$proxy (pid $pid) died during round $round $size"
        tail -n 15 "${PROXY_DIR[$proxy]}/stdout.log" 2>/dev/null | sed 's/^/    /' >&2
        stop_pid "$pid"
        unset "PID_OF[$proxy]"
        WHY_NOT[$proxy]="exited during the throughput runs"
        record_unavailable "$round" "$proxy" "$size" "died"
        printf '  round %s  %-8s %-5s  died\n' "$round" "$proxy" "$size"
        return
    fi
    if ! parsed=$("${LIB[@]}" parse-wrk "$raw"); then
        say "could not parse wrk output for $proxy $size:"; sed 's/^/    /' "$raw" >&2
        record_unavailable "$round" "$proxy" "$size" "wrk-failed"
        return
    fi
    set -- $parsed      # requests rps p50_us p99_us errors bytes max_us
    printf '%s\t%s\t%s\tok\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$round" "$proxy" "$size" "$1" "$2" "$3" "$4" "$5" "$6" $((t1 - t0)) "$CLK_TCK" \
        "$cpu0" "$cpu1" "$DURATION" "$7" >>"$RESULTS"
    local logged
    logged=$(trim_log "${PROXY_DIR[$proxy]}/stdout.log")
    [ "$logged" != 0 ] && LOG_NOTE[$proxy]="wrote >$((LOG_MAX / 1048576)) MiB to stdout/stderr during a run (access log?); trimmed"
    awk -v r="$round" -v p="$proxy" -v s="$size" -v n="$1" -v rps="$2" -v p50="$3" -v p99="$4" \
        -v e="$5" -v tk=$((t1 - t0)) -v hz="$CLK_TCK" -v c0="$cpu0" -v c1="$cpu1" -v mx="$7" 'BEGIN {
        printf "  round %s  %-8s %-5s  %10.0f req/s  p50 %8.3fms  p99 %8.3fms  max %8.3fms  cpu %6.2f us/req  core0 %3.0f%%  core1 %3.0f%%%s\n",
            r, p, s, rps, p50 / 1000, p99 / 1000, mx / 1000, (n > 0 ? tk * 1e6 / hz / n : 0), c0, c1, (e > 0 ? "  (" e " errors)" : "") }'
}
declare -A LOG_NOTE

# ------------------------------------------------------------------------- main
version_of() {
    case $1 in
        nginx|nginxrl|nginxgz) nginx -v 2>&1 | sed 's/^nginx version: //' ;;
        haproxy) haproxy -v 2>&1 | head -n1 | awk '{print "haproxy/" $3}' ;;
        portico|portico3|porticolog|porticooff|porticorl|porticogz)
            if [ ! -x "$PORTICO_BIN" ]; then echo "(not built: $PORTICO_BIN)"
            elif out=$(timeout 5 "$PORTICO_BIN" --version 2>&1); then echo "${out%%$'\n'*}"
            else echo "(--version failed: ${out%%$'\n'*})"; fi ;;
    esac
}

n_runs=$((ROUNDS * $(wc -w <<<"$PROXIES") * 2))
est=$(( n_runs * (DURATION + WARMUP + 1) / 60 + 1 ))
echo "portico bench: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -sr), $ncpu cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'))"
echo "  wrk -t1 -c$CONNS -d${DURATION}s --latency (after ${WARMUP}s warm-up), $ROUNDS rounds, about $est min"
echo "  proxies on core $PROXY_CPU, wrk and upstream nginx on core $LOAD_CPU; open-file limit $NOFILE"
for p in $PROXIES; do printf '  %-8s %s\n' "$p" "$(version_of "$p")"; done
echo "  $(wrk -v 2>&1 | head -n1 | awk '{print $1, $2}')"
echo

start_upstream
for p in $PROXIES; do start_proxy "$p" tput || true; done
echo "Throughput runs:"
for ((round = 1; round <= ROUNDS; round++)); do
    for p in $PROXIES; do
        for s in $(sizes_of "$p"); do run_one "$round" "$p" "$s"; done
    done
done
for p in $PROXIES; do [ -n "${PID_OF[$p]:-}" ] && stop_pid "${PID_OF[$p]}"; unset "PID_OF[$p]"; done
echo

if [ "$IDLE_CONNS" -gt 0 ]; then
    echo "Idle keep-alive connections: $IDLE_CONNS per proxy ($IDLE_WINDOW opening at once), fresh instance each"
    for p in $PROXIES; do
        case $p in portico3|porticolog|porticooff|porticorl|porticogz|nginxrl|nginxgz) continue ;; esac  # same binary: one idle test is enough
        if ! start_proxy "$p" idle; then
            printf '%s\tfail\t0\t0\t0\t0\t0\t0\t%s\n' "$p" "${WHY_NOT[$p]:-did not start}" >>"$IDLE"
            printf '  %-8s unavailable\n' "$p"
            continue
        fi
        line=$(taskset -c "$LOAD_CPU" "$PY" "$HERE/idle_conns.py" --port "${PORT_OF[$p]}" \
                 --pid "${PID_OF[$p]}" --conns "$IDLE_CONNS" --window "$IDLE_WINDOW" --path /small 2>"$WORK/idle-$p.err")
        if [ -z "$line" ]; then
            line=$(printf 'fail\t0\t0\t0\t0\t0\t0\t%s' "$(tail -n1 "$WORK/idle-$p.err" | tr '\t' ' ')")
        fi
        printf '%s\t%s\n' "$p" "$line" >>"$IDLE"
        awk -F'\t' -v p="$p" '{
            if ($1 == "ok" && $5 > 0)
                printf "  %-8s %d/%d held, RSS %.1f -> %.1f MiB, %.0f bytes/conn%s\n", p, $5, $4 + $6,
                       $2 / 1024, $3 / 1024, ($3 - $2) * 1024 / $5, ($8 != "" ? "  (" $8 ")" : "")
            else
                printf "  %-8s failed: %s\n", p, $8 }' <<<"$line"
        stop_pid "${PID_OF[$p]}"
        unset "PID_OF[$p]"
    done
    echo
fi

stop_pid "$UPSTREAM_PID"

cp "$RESULTS" "$OUT/results.tsv"; cp "$IDLE" "$OUT/idle.tsv"
{
    echo "== portico bench summary: wrk -t1 -c$CONNS -d${DURATION}s, $ROUNDS rounds =="
    echo
    "${LIB[@]}" report "$RESULTS" "$IDLE"
    rc=$?
    for p in "${!LOG_NOTE[@]}"; do echo "  note: $p ${LOG_NOTE[$p]}"; done
    for p in "${!WHY_NOT[@]}"; do echo "  reason: $p ${WHY_NOT[$p]}"; done
    exit $rc
} | tee "$OUT/report.txt"
rc=${PIPESTATUS[0]}
echo "(raw results in $OUT)"
exit "$rc"
