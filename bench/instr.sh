#!/usr/bin/env bash
# bench/instr.sh: what the access log and metrics cost portico, counted in instructions.
#
# CPU time per request (bench/run.sh) is the figure that matters, but on a shared, noisy machine
# a 5% difference can drown in the spread between rounds. Instructions counted by valgrind's
# callgrind do not depend on what else runs: this script runs portico (one worker) in front of
# an nginx upstream under callgrind twice, under the same wrk load:
#
#   porticooff  metrics: { enabled: false }, no access log
#   porticolog  metrics on, JSON access log to a file (flushed every access_log.flush)
#
# and prints, per request, the user-space instructions of every portico thread (workers, the
# log writer) and, for porticolog, the inclusive instructions of the observability code itself:
# obs_request and obs_upstream_time (metrics), obs_alog_write (formatting a line),
# obs_alog_flush (handing a buffer over) and the writer thread (writing it). callgrind sees user
# space only; the kernel work per request (four syscalls, about 86% of portico's CPU time on
# small responses) is the same for both but for the writer's one write(2) per 64 KiB of lines.
#
# Usage: bench/instr.sh  (BENCH_INSTR_SECONDS [6] of load per variant; needs valgrind, wrk,
# nginx: scripts/deps.sh bench, and build/portico). Starts only its own processes, stops them
# by PID.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
PORTICO_BIN=${PORTICO_BIN:-$ROOT/build/portico}
SECONDS_LOAD=${BENCH_INSTR_SECONDS:-6}
for t in valgrind callgrind_annotate wrk nginx; do
    command -v "$t" >/dev/null || { echo "instr: $t not found (scripts/deps.sh bench)" >&2; exit 2; }
done
[ -x "$PORTICO_BIN" ] || { echo "instr: $PORTICO_BIN not built (make)" >&2; exit 2; }

WORK=$(mktemp -d /tmp/portico-instr.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    [ "${KEEP:-0}" = 1 ] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT
port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}

UP=$(port)
cat >"$WORK/nginx.conf" <<EOF
worker_processes 1; daemon off; master_process off; pid $WORK/nginx.pid; error_log $WORK/nginx.err;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
       server { listen 127.0.0.1:$UP; location / { return 200 "hello world!\n"; } } }
EOF
nginx -p "$WORK/" -c "$WORK/nginx.conf" >/dev/null 2>&1 &
PIDS+=($!)
wait_port "$UP" || { echo "instr: upstream nginx did not start" >&2; exit 2; }

run() {             # run NAME EXTRA-YAML: prints "requests instructions"
    local name=$1 extra=$2 p pid n
    p=$(port)
    printf 'listen: [ "127.0.0.1:%s" ]\nworkers: 1\nupstreams: { app: { servers: [ "127.0.0.1:%s" ], keepalive: 64 } }\nroutes: [ { upstream: app } ]\n%s\n' \
        "$p" "$UP" "$extra" >"$WORK/$name.yaml"
    valgrind --tool=callgrind --callgrind-out-file="$WORK/$name.cg" "$PORTICO_BIN" -c "$WORK/$name.yaml" \
        >"$WORK/$name.log" 2>&1 &
    pid=$!
    PIDS+=($pid)
    wait_port "$p" || { echo "instr: $name did not start: $(tail -3 "$WORK/$name.log")" >&2; exit 2; }
    n=$(wrk -t1 -c8 -d"${SECONDS_LOAD}s" "http://127.0.0.1:$p/" 2>&1 | awk '/requests in/ {print $1}')
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null
    echo "$n $(awk '/Collected :/ {print $4}' "$WORK/$name.log")"
}

incl() {            # incl FILE FUNCTION: inclusive instructions of FUNCTION
    # one line per function with its object in brackets ("src/obs/alog.c:json_str [.../portico]");
    # the lines without it repeat the same function by its full source path, or name code
    # inlined from headers, and are already inside it
    callgrind_annotate --inclusive=yes --auto=no --threshold=100 "$1" 2>/dev/null |
        awk -v f="$2" '$1 ~ /^[0-9,]+$/ && $NF ~ /^\[/ { n = $1; gsub(",", "", n); fn = $(NF-1)
                           sub(/^.*:/, "", fn); sub(/\.(part|isra|constprop|cold)\..*$/, "", fn)
                           if (fn == f && n > s) s = n }
                       END { print s + 0 }'
}

read -r n_off i_off <<<"$(run porticooff 'metrics: { enabled: false }')"
read -r n_log i_log <<<"$(run porticolog "access_log: { path: $WORK/access.log }")"
# the request path alone, start-up excluded: the worker's two event handlers, inclusive
w_off=$(( $(incl "$WORK/porticooff.cg" client_io) + $(incl "$WORK/porticooff.cg" uconn_io) ))
w_log=$(( $(incl "$WORK/porticolog.cg" client_io) + $(incl "$WORK/porticolog.cg" uconn_io) ))
m_req=$(incl "$WORK/porticolog.cg" obs_request)
m_up=$(incl "$WORK/porticolog.cg" obs_upstream_time)
l_fmt=$(incl "$WORK/porticolog.cg" obs_alog_write)
l_hand=$(incl "$WORK/porticolog.cg" obs_alog_flush)
l_thr=$(incl "$WORK/porticolog.cg" writer)
lines=$(wc -l <"$WORK/access.log")

awk -v no="$n_off" -v io="$i_off" -v nl="$n_log" -v il="$i_log" -v mr="$m_req" -v mu="$m_up" \
    -v wo="$w_off" -v wl="$w_log" -v lf="$l_fmt" -v lh="$l_hand" -v lt="$l_thr" -v lines="$lines" 'BEGIN {
    printf "portico instructions per request (valgrind callgrind, user space, all threads)\n\n"
    printf "  porticooff  %6d requests  %8.0f instructions/request (startup included)\n", no, io / no
    printf "  porticolog  %6d requests  %8.0f instructions/request (startup included), %d log lines\n", nl, il / nl, lines
    printf "\n  the request path alone (client_io + uconn_io, inclusive, start-up excluded):\n"
    printf "    porticooff  %8.0f instructions/request\n", wo / no
    printf "    porticolog  %8.0f instructions/request\n", wl / nl
    obs = (mr + mu + lf + lh + lt) / nl
    printf "\n  in porticolog, per request:\n"
    printf "    metrics    obs_request + obs_upstream_time     %6.0f\n", (mr + mu) / nl
    printf "    log line   obs_alog_write (format)             %6.0f\n", lf / nl
    printf "    hand-off   obs_alog_flush                      %6.0f\n", lh / nl
    printf "    writer     the writer thread (write(2) calls)  %6.0f\n", lt / nl
    printf "    together                                       %6.0f  = %.1f%% of porticolog'"'"'s user-space instructions\n", obs, 100 * obs / (il / nl)
}'
