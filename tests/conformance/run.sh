#!/usr/bin/env bash
# tests/conformance/run.sh: the public HTTP caching test suite (npm http-cache-tests, pinned in
# package.json here) against portico and, for comparison, other reverse-proxy caches.
#
#   tests/conformance/run.sh [PROXY...]            default: portico
#   tests/conformance/run.sh --id TEST-ID PROXY    one test, with the exchange dumped
#   PROXY: portico nginx varnish haproxy apache
#
# For each proxy: start the suite's origin server (tests/conformance/server.mjs: the suite's own
# handlers, on loopback), start the proxy in front of it on a free loopback port with its cache
# on, run every test (client.mjs: the suite's runner) through the proxy, score the results with
# the suite's own classification (score.mjs: required / optional / check) and write
# $CONFORMANCE_OUT/<proxy>.json (score, failing tests, every result, the raw results).
# With several proxies, a comparison table at the end (also in $CONFORMANCE_OUT/table.txt).
#
# The peers' configurations are the suite's own (its docker/ directory: nginx proxy_cache with
# proxy_cache_revalidate; Varnish's built-in VCL with default_ttl=0 default_grace=0
# default_keep=3600 and malloc storage; httpd mod_cache_disk with its directives), made to run
# as the current user under a temporary directory; HAProxy, which the suite has no
# configuration for, has its cache with the defaults.
#
# Environment: PORTICO_BIN [build/portico]  CONFORMANCE_OUT [build/conformance]
#              CONFORMANCE_KEEP [0]: 1 keeps the temporary directory (configs, logs)
#              CONFORMANCE_CHUNK [100]: tests run at once (client.mjs --chunk; 0: all)
#              PORTICO_ROUTE_CACHE ['{ allow_set_cookie: true }']: the value of portico's route
#                `cache:` key. portico does not store responses with Set-Cookie unless the route
#                allows it (the cache issue's policy); the suite requires storing them (two
#                required tests), so the route under test allows it. `true` shows the default.
#
# Exit status: 0 when portico (if it was run) passed every required test; 1 when it did not;
# 2 on a setup error or when a proxy could not be started (the others are still scored).
# It starts only its own processes and on exit stops exactly the PIDs it started.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PY=/usr/bin/python3
PORTICO_BIN=${PORTICO_BIN:-$ROOT/build/portico}
OUT=${CONFORMANCE_OUT:-$ROOT/build/conformance}
CHUNK=${CONFORMANCE_CHUNK:-100}
ROUTE_CACHE=${PORTICO_ROUTE_CACHE:-'{ allow_set_cookie: true }'}
NODE=(node --no-warnings)

die() { echo "conformance: $*" >&2; exit 2; }
say() { echo "conformance: $*" >&2; }

TEST_ID=""
PROXIES=()
while [ $# -gt 0 ]; do
    case $1 in
        --id) TEST_ID=${2:?--id needs a test id}; shift 2 ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        portico|nginx|varnish|haproxy|apache) PROXIES+=("$1"); shift ;;
        *) die "unknown proxy or option '$1' (proxies: portico nginx varnish haproxy apache)" ;;
    esac
done
[ ${#PROXIES[@]} -gt 0 ] || PROXIES=(portico)

command -v node >/dev/null || die "node not found: run scripts/deps.sh conformance"
[ -f "$HERE/node_modules/http-cache-tests/package.json" ] || die "the suite is not installed: run scripts/deps.sh conformance"
[[ $CHUNK =~ ^[0-9]+$ ]] || die "CONFORMANCE_CHUNK must be a whole number"

WORK=$(mktemp -d /tmp/portico-conformance.XXXXXX) || die "mktemp failed"
chmod 755 "$WORK"
mkdir -p "$OUT" || die "cannot create $OUT"

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
    if [ "${CONFORMANCE_KEEP:-0}" = 1 ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
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

free_port() { "$PY" "$ROOT/bench/benchlib.py" ports 1; }

wait_http() {       # wait_http PORT PID SECONDS: until any HTTP response to GET /
    "$PY" - "$@" <<'EOF'
import http.client, sys, time
port, pid, secs = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
deadline, last = time.monotonic() + secs, "no attempt"
def alive():
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False
while time.monotonic() < deadline:
    if not alive():
        print(f"process {pid} exited", file=sys.stderr); sys.exit(1)
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        c.request("GET", "/")
        c.getresponse().read()
        sys.exit(0)
    except (OSError, http.client.HTTPException) as e:
        last = f"{type(e).__name__}: {e}"
    time.sleep(0.1)
print(f"no HTTP answer from 127.0.0.1:{port} within {secs}s ({last})", file=sys.stderr)
sys.exit(1)
EOF
}

# ------------------------------------------------------------------------- the suite's server
SUITE_PORT=$(free_port) || die "no free port"
spawn "$WORK/suite-server.log" "${NODE[@]}" "$HERE/server.mjs" "$SUITE_PORT"
SUITE_PID=$BG_PID
wait_http "$SUITE_PORT" "$SUITE_PID" 15 || { cat "$WORK/suite-server.log" >&2; die "the suite's server did not start"; }

# ------------------------------------------------------------------------- proxies
version_of() {
    case $1 in
        portico) if [ -x "$PORTICO_BIN" ]; then timeout 5 "$PORTICO_BIN" --version 2>&1 | head -n1; else echo "not built"; fi ;;
        nginx) nginx -v 2>&1 | sed 's/^nginx version: //' ;;
        varnish) varnishd -V 2>&1 | head -n1 | sed 's/^varnishd (\([^ ]*\).*/\1/' ;;
        haproxy) haproxy -v 2>&1 | head -n1 | awk '{print "haproxy-" $3}' ;;
        apache) apache2 -v 2>&1 | head -n1 | sed 's/^Server version: //; s/ .*//' ;;
    esac
}

start_portico() {   # DIR PORT
    local d=$1 port=$2
    [ -x "$PORTICO_BIN" ] || { echo "$PORTICO_BIN not found (make all)" >"$d/why"; return 1; }
    cat >"$d/portico.yaml" <<EOF
# portico under test: the cache on for every path, in front of the suite's server
listen: [ "127.0.0.1:$port" ]
workers: 1
upstreams:
  suite:
    servers:
      - { address: "127.0.0.1:$SUITE_PORT" }
cache: { memory: 64MiB }
routes:
  - match: { prefix: / }
    upstream: suite
    cache: $ROUTE_CACHE
EOF
    spawn "$d/out.log" "$PORTICO_BIN" -c "$d/portico.yaml"
}

start_nginx() {     # the suite's docker/nginx/nginx.conf, under DIR as the current user
    local d=$1 port=$2
    command -v nginx >/dev/null || { echo "nginx not installed (scripts/deps.sh conformance-peers)" >"$d/why"; return 1; }
    mkdir -p "$d/tmp" "$d/cache"
    cat >"$d/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 2048; }
http {
    access_log off;
    client_body_temp_path $d/tmp/body;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;
    # from here on, the suite's configuration
    proxy_cache_path $d/cache levels=1:2 keys_zone=my-cache:8m max_size=1000m inactive=600m;
    proxy_temp_path $d/tmp/proxy;
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://127.0.0.1:$SUITE_PORT;
            proxy_cache my-cache;
            proxy_cache_revalidate on;
        }
    }
}
EOF
    spawn "$d/out.log" nginx -p "$d/" -c "$d/nginx.conf" -e "$d/error.log"
}

start_varnish() {   # the suite's docker/serve.sh command line, built-in VCL, no jail
    local d=$1 port=$2
    command -v varnishd >/dev/null || { echo "varnishd not installed (scripts/deps.sh conformance-peers)" >"$d/why"; return 1; }
    spawn "$d/out.log" varnishd -F -j none -n "$d/varnish" -T none -a "127.0.0.1:$port" \
        -b "127.0.0.1:$SUITE_PORT" -p default_ttl=0 -p default_grace=0 -p default_keep=3600 \
        -s malloc,64M
}

start_haproxy() {   # HAProxy's cache, defaults but its size
    local d=$1 port=$2
    command -v haproxy >/dev/null || { echo "haproxy not installed (scripts/deps.sh conformance-peers)" >"$d/why"; return 1; }
    cat >"$d/haproxy.cfg" <<EOF
global
    nbthread 1
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
cache suite
    total-max-size 64
frontend fe
    bind 127.0.0.1:$port
    http-request cache-use suite
    http-response cache-store suite
    default_backend suite
backend suite
    server suite 127.0.0.1:$SUITE_PORT
EOF
    spawn "$d/out.log" haproxy -f "$d/haproxy.cfg" -db
}

start_apache() {    # the suite's docker/apache/apache.conf: mod_cache with mod_cache_disk
    local d=$1 port=$2 m=/usr/lib/apache2/modules user=""
    command -v apache2 >/dev/null || { echo "apache2 not installed (scripts/deps.sh conformance-peers)" >"$d/why"; return 1; }
    mkdir -p "$d/cache" "$d/run"
    # httpd will not serve as root: as root it switches to www-data, which must own the cache
    if [ "$(id -u)" -eq 0 ]; then
        user="User www-data"$'\n'"Group www-data"
        chown www-data: "$d/cache" || return 1
    fi
    cat >"$d/httpd.conf" <<EOF
ServerRoot $d
ServerName 127.0.0.1
Listen 127.0.0.1:$port
PidFile $d/run/httpd.pid
DefaultRuntimeDir $d/run
ErrorLog $d/error.log
LogLevel warn
$user
# one process (-X), with a thread for each of the suite's concurrent tests (the default 25
# is fewer, and connections beyond it are dropped)
ThreadLimit 256
ThreadsPerChild 256
MaxRequestWorkers 256
LoadModule mpm_event_module $m/mod_mpm_event.so
LoadModule authz_core_module $m/mod_authz_core.so
LoadModule proxy_module $m/mod_proxy.so
LoadModule proxy_http_module $m/mod_proxy_http.so
LoadModule cache_module $m/mod_cache.so
LoadModule cache_disk_module $m/mod_cache_disk.so
LoadModule socache_shmcb_module $m/mod_socache_shmcb.so
LoadModule cache_socache_module $m/mod_cache_socache.so
LoadModule negotiation_module $m/mod_negotiation.so
<VirtualHost *:$port>
  ProxyPass "/"  "http://127.0.0.1:$SUITE_PORT/"
  CacheEnable disk /

  CacheRoot $d/cache
  CacheDirLevels 5
  CacheDirLength 3

  CacheDefaultExpire 0
  CacheIgnoreNoLastMod On
  CacheStoreExpired On
  CacheNegotiatedDocs On
  UseCanonicalName On
  CacheHeader On
  CacheDetailHeader on
</VirtualHost>
EOF
    spawn "$d/out.log" apache2 -X -f "$d/httpd.conf"
}

declare -A STATUS
REQUIRED_FAILED=0
UNAVAILABLE=0

run_proxy() {       # run_proxy NAME
    local name=$1 d port pid version t0 rc died=0
    d=$WORK/$name
    mkdir -p "$d"
    [ -n "$TEST_ID" ] || rm -f "$OUT/$name.json"     # no stale score from an earlier run
    port=$(free_port) || die "no free port"
    version=$(version_of "$name")
    if ! "start_$name" "$d" "$port"; then
        STATUS[$name]="unavailable: $(cat "$d/why" 2>/dev/null)"
        say "$name ${STATUS[$name]}"
        return 1
    fi
    pid=$BG_PID
    if ! wait_http "$port" "$pid" 20 2>"$d/wait.err"; then
        STATUS[$name]="did not start: $(cat "$d/wait.err")"
        say "$name ${STATUS[$name]}; its last output ($d):"
        tail -n 15 "$d/out.log" "$d/error.log" 2>/dev/null | sed 's/^/    /' >&2
        stop_pid "$pid"
        return 1
    fi
    t0=$SECONDS
    if [ -n "$TEST_ID" ]; then
        "${NODE[@]}" "$HERE/client.mjs" "http://127.0.0.1:$port" "$d/raw.json" --id "$TEST_ID" --chunk "$CHUNK"
        rc=$?
        stop_pid "$pid"
        return $rc
    fi
    echo "== $name ($version) on 127.0.0.1:$port, origin 127.0.0.1:$SUITE_PORT"
    timeout 600 "${NODE[@]}" "$HERE/client.mjs" "http://127.0.0.1:$port" "$d/raw.json" --chunk "$CHUNK" 2>"$d/client.err"
    rc=$?
    if ! is_running "$pid"; then
        say "$name exited during the run; its last output:"
        tail -n 15 "$d/out.log" "$d/error.log" 2>/dev/null | sed 's/^/    /' >&2
        died=1
    fi
    stop_pid "$pid"
    if [ $rc -ne 0 ] || [ ! -s "$d/raw.json" ]; then
        STATUS[$name]="the suite's client failed (exit $rc): $(tail -n 3 "$d/client.err" | tr '\n' ' ')"
        say "$name: ${STATUS[$name]}"
        return 1
    fi
    local brief=()
    [ "$name" != portico ] && brief=(--brief)
    "${NODE[@]}" "$HERE/score.mjs" score "$d/raw.json" --proxy "$name" --version "$version" \
        --out "$OUT/$name.json" "${brief[@]}"
    rc=$?
    [ $rc -eq 2 ] && { STATUS[$name]="scoring failed"; return 1; }
    echo "   ($((SECONDS - t0)) s; every result in $OUT/$name.json)"
    if [ "$died" = 1 ]; then
        STATUS[$name]="exited during the run (scored up to there)"
        return 1
    fi
    STATUS[$name]=ok
    [ "$name" = portico ] && [ $rc -ne 0 ] && REQUIRED_FAILED=1
    return 0
}

if [ -n "$TEST_ID" ]; then
    run_proxy "${PROXIES[0]}"
    exit $?
fi

echo "HTTP caching test suite ($(node -p "require('$HERE/node_modules/http-cache-tests/package.json').version" 2>/dev/null | sed 's/^/http-cache-tests /')), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
scored=()
for p in "${PROXIES[@]}"; do
    run_proxy "$p" || UNAVAILABLE=1
    [ -s "$OUT/$p.json" ] && scored+=("$OUT/$p.json")
    echo
done

if [ ${#PROXIES[@]} -gt 1 ] && [ ${#scored[@]} -gt 0 ]; then
    {
        echo "Comparison (http-cache-tests' own classification; required = kind required, optional = kind optimal):"
        "${NODE[@]}" "$HERE/score.mjs" table "${scored[@]}"
        for p in "${PROXIES[@]}"; do
            [ "${STATUS[$p]:-}" = ok ] || echo "UNAVAILABLE: $p (${STATUS[$p]:-})"
        done
    } | tee "$OUT/table.txt"
fi

[ "$UNAVAILABLE" = 1 ] && exit 2
[ "$REQUIRED_FAILED" = 1 ] && exit 1
exit 0
