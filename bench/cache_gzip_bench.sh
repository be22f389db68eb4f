#!/usr/bin/env bash
# bench/cache_gzip_bench.sh: compressed cache hits, portico against nginx (issue #13's `make bench`
# bullet: "compressed cache hits of a 32 KiB JSON body against nginx (gzip on, proxy_cache, which
# compresses on every hit) as a ratio of CPU per request; target at most 0.5x nginx's").
# `make bench` and `make bench-cache` run it after bench/cache_bench.sh. How to read the output:
# docs/benchmarks.md, "Compressed cache hits".
#
# It sources bench/cache_bench.sh for its setup, process control, upstream, caches and wrk runs
# (same environment variables, same pinning: caches on BENCH_PROXY_CPU, wrk and the upstream
# nginx on BENCH_LOAD_CPU) and changes only the scenario:
#
#   body      /32k.json: bench/corpus.py's orders-32k.json (33,604 bytes of generated API JSON
#             from a seeded PRNG: orders, customers, items, prices; gzip -6 makes it 6.3 KB),
#             served by the upstream as application/json, max-age=3600
#   client    wrk -H "Accept-Encoding: gzip"
#   portico   `compression: on` (defaults: the cached gzip variant made once, at cache_level 9,
#             on the first gzip request) and the route's cache: { ttl: 1h }
#   nginx     proxy_cache as in cache_bench.sh, plus gzip on; gzip_types application/json;
#             gzip_comp_level $BENCH_NGINX_GZIP_LEVEL (6 by default; nginx's own default is 1):
#             nginx stores the identity body and gzips it again on every hit
#
# Before the runs each cache is asked twice with Accept-Encoding: gzip: the second answer must be
# a hit (portico's X-Cache, nginx's $upstream_cache_status in X-Cache-Status) with
# Content-Encoding: gzip whose body gunzips to the file byte for byte. During the runs the
# upstream's access log must not grow (every answer a hit) and wrk's bytes per response must be
# well under the body (every answer compressed). Either failing makes that cache UNAVAILABLE
# (exit 1). The report: per cache req/s, p50, p99, CPU per request (utime+stime of its process
# from /proc over the requests wrk completed), bytes per response; and portico over nginx, both
# as the ratio of the medians and as the median of the per-round ratios (rounds interleave the
# two, so a paired ratio cancels some of a shared machine's drift).
#
# Environment: as bench/cache_bench.sh (BENCH_DURATION [10] BENCH_CONNS [50] BENCH_ROUNDS [3]
#   BENCH_WARMUP [1] BENCH_PROXY_CPU [0] BENCH_LOAD_CPU [1] PORTICO_BIN BENCH_OUT [build/bench]
#   BENCH_KEEP [0]), plus BENCH_NGINX_GZIP_LEVEL [6]. Writes cache-gzip-results.tsv and
#   cache-gzip-report.txt under BENCH_OUT.
set -uo pipefail

GZ_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=cache_bench.sh
. "$GZ_HERE/cache_bench.sh"

GZIP_LEVEL=${BENCH_NGINX_GZIP_LEVEL:-6}
[[ $GZIP_LEVEL =~ ^[1-9]$ ]] || die "BENCH_NGINX_GZIP_LEVEL must be 1-9, got '$GZIP_LEVEL'"
PROXIES="portico nginx"
SIZES="32k.json"
BODY=$WORK/upstream/www/32k.json
WRK_EXTRA=(-H "Accept-Encoding: gzip")
UPSTREAM_HTTP_EXTRA="    types { application/json json; }"
PORTICO_CONF_EXTRA="compression: on"
NGINX_HTTP_EXTRA="    gzip on;
    gzip_types application/json;
    gzip_comp_level $GZIP_LEVEL;"
NGINX_LOCATION_EXTRA='            add_header X-Cache-Status $upstream_cache_status;'

check_gzip_hit() {      # check_gzip_hit NAME: a gzip hit that decodes to the body, or WHY_NOT
    local name=$1 out
    if ! out=$("$PY" - "${PORT_OF[$name]}" "$BODY" "$name" 2>&1 <<'EOF'
import gzip, http.client, sys
port, body, name = int(sys.argv[1]), open(sys.argv[2], "rb").read(), sys.argv[3]
for i in range(2):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/32k.json", headers={"Accept-Encoding": "gzip"})
    r = c.getresponse()
    data = r.read()
    c.close()
hit = r.getheader("X-Cache") if name == "portico" else r.getheader("X-Cache-Status")
enc, ctype = r.getheader("Content-Encoding"), r.getheader("Content-Type")
if r.status != 200 or enc != "gzip" or hit != "HIT":
    sys.exit(f"status {r.status}, Content-Encoding {enc}, cache {hit}, Content-Type {ctype}")
if gzip.decompress(data) != body:
    sys.exit("the gzip body does not decode to the file")
print(f"gzip hit: {len(data)} bytes on the wire for {len(body)}, Content-Type {ctype}")
EOF
    ); then
        WHY_NOT[$name]="not a gzip hit: $out"
        say "$name unavailable: ${WHY_NOT[$name]}"
        stop_pid "${PID_OF[$name]}"; unset "PID_OF[$name]"
        return 1
    fi
    printf '  %-8s %s\n' "$name" "$out"
}

n_runs=$((ROUNDS * 2))
echo "portico compressed cache hits bench: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -sr), $ncpu cores"
echo "  hits of a 32 KiB JSON body with Accept-Encoding: gzip; wrk -t1 -c$CONNS -d${DURATION}s --latency (after ${WARMUP}s warm-up), $ROUNDS rounds, about $(( n_runs * (DURATION + WARMUP + 1) / 60 + 1 )) min"
echo "  caches on core $PROXY_CPU, wrk and upstream nginx on core $LOAD_CPU; nginx gzip_comp_level $GZIP_LEVEL, portico compression: on (gzip cache_level 9)"
for p in $PROXIES; do printf '  %-8s %s\n' "$p" "$(version_of "$p")"; done
echo

start_upstream
"$PY" "$HERE/corpus.py" --one orders-32k.json "$BODY" || die "cannot generate the JSON body"
"${LIB[@]}" wait "$UPSTREAM_PORT" /32k.json "$UPSTREAM_PID" 5 || die "the upstream does not serve /32k.json"
for p in $PROXIES; do start_cache "$p" || true; done
echo "Checks:"
for p in $PROXIES; do [ -n "${PID_OF[$p]:-}" ] && { check_gzip_hit "$p" || true; }; done
echo "Hit runs:"
for ((round = 1; round <= ROUNDS; round++)); do
    for p in $PROXIES; do
        for s in $SIZES; do run_one "$round" "$p" "$s"; done
    done
done
for p in $PROXIES; do [ -n "${PID_OF[$p]:-}" ] && stop_pid "${PID_OF[$p]}"; done
stop_pid "$UPSTREAM_PID"
echo

cp "$RESULTS" "$OUT/cache-gzip-results.tsv"
WHY=""
for p in "${!WHY_NOT[@]}"; do WHY+="$p: ${WHY_NOT[$p]}"$'\n'; done
{
    "$PY" - "$HERE" "$RESULTS" "$(stat -c %s "$BODY")" "$GZIP_LEVEL" <<'EOF'
# the summary: medians over rounds, and portico over nginx
import sys
sys.path.insert(0, sys.argv[1])
from benchlib import fmt_num, fmt_ratio, fmt_us, median, read_tsv, table

results, body, level = sys.argv[2], int(sys.argv[3]), sys.argv[4]
NAMES = ("portico", "nginx")
runs = {}
for r in read_tsv(results):
    rnd, name, size, st, n, rps, p50, p99, err, nbytes, ticks, hz, mx, origin = r[:14]
    d = {"status": st, "round": rnd}
    if st == "ok" and int(n) > 0:
        n = int(n)
        d.update(n=n, rps=float(rps), p50=float(p50), p99=float(p99), errors=int(err),
                 bytes=int(nbytes) / n, cpu=int(ticks) * 1e6 / int(hz) / n, origin=int(origin))
    elif st == "ok":
        d["status"] = "no requests"
    runs.setdefault(name, []).append(d)

med, notes, bad = {}, [], set()
for name in NAMES:
    ok = [d for d in runs.get(name, []) if d["status"] == "ok"]
    if not ok:
        bad.add(name)
        continue
    m = {k: median([d[k] for d in ok]) for k in ("rps", "p50", "p99", "cpu", "bytes")}
    m["runs"] = f"{len(ok)}/{len(runs[name])}"
    rps = [d["rps"] for d in ok]
    m["spread"] = (max(rps) - min(rps)) / m["rps"] * 100 if m["rps"] else 0
    m["errors"] = sum(d["errors"] for d in ok)
    m["origin"] = sum(d["origin"] for d in ok)
    m["reqs"] = sum(d["n"] for d in ok)
    med[name] = m
    if m["errors"]:
        notes.append(f"{name}: wrk counted {m['errors']} errors (socket errors or non-2xx)")
    if m["bytes"] > body / 2:
        bad.add(name)
        notes.append(f"{name}: {m['bytes']:.0f} bytes per response for a {body}-byte body: not compressed")
    if m["origin"] > 0:
        bad.add(name)
        notes.append(f"{name}: {m['origin']} of {m['reqs']} requests reached the upstream: not only hits")

print("Compressed cache hits, 32 KiB JSON, Accept-Encoding: gzip (median over rounds)")
print()
rows = []
for name in NAMES:
    m = med.get(name)
    if not m:
        rows.append([name, "0", "unavailable"] + ["-"] * 7)
        continue
    rows.append([name, m["runs"], fmt_num(m["rps"]), f"{m['spread']:.0f}%", fmt_us(m["p50"]),
                 fmt_us(m["p99"]), fmt_num(m["cpu"], 2), fmt_num(m["bytes"]), str(m["origin"]),
                 str(m["errors"])])
print(table(["cache", "runs", "req/s", "spread", "p50", "p99", "cpu us/req", "bytes/resp",
             "origin reqs", "errors"], rows))
print()
if "portico" in med and "nginx" in med:
    p, n = med["portico"], med["nginx"]
    by_round = {}
    for name in NAMES:
        for d in runs[name]:
            if d["status"] == "ok":
                by_round.setdefault(d["round"], {})[name] = d
    paired = [r["portico"]["cpu"] / r["nginx"]["cpu"] for r in by_round.values()
              if len(r) == 2 and r["nginx"]["cpu"] > 0]
    print("portico / nginx: cpu per request %s (median of %d per-round ratios: %s), req/s %s, p99 %s"
          % (fmt_ratio(p["cpu"] / n["cpu"]), len(paired), fmt_ratio(median(paired)) if paired else "-",
             fmt_ratio(p["rps"] / n["rps"]), fmt_ratio(p["p99"] / n["p99"]) if n["p99"] else "-"))
    print("  target (#13): cpu per request at most 0.50x nginx's: %s"
          % ("met" if p["cpu"] / n["cpu"] <= 0.5 else "NOT met"))
    print()
print(f"  nginx: gzip_comp_level {level} on every hit; portico: a gzip variant made once at its")
print("  cache_level (9) and written from the store on every hit.")
print("  cpu us/req = utime+stime of the cache's process (/proc) / requests wrk completed.")
print("  spread = (max - min) / median of req/s over the rounds: how noisy the machine was.")
print("  origin reqs = requests that reached the upstream during the measured runs (must be 0).")
for line in notes:
    print("  ! " + line)
print()
for name in NAMES:
    if name in bad:
        print(f"UNAVAILABLE: {name}")
sys.exit(1 if bad else 0)
EOF
    rc=$?
    [ -n "$WHY" ] && printf '%s' "$WHY" | sed 's/^/  reason: /'
    exit $rc
} | tee "$OUT/cache-gzip-report.txt"
rc=${PIPESTATUS[0]}
echo "(raw results in $OUT/cache-gzip-results.tsv)"
exit "$rc"
