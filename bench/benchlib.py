#!/usr/bin/python3
"""Helpers for bench/run.sh (stdlib only; run with /usr/bin/python3).

    benchlib.py ports N                      print N free loopback TCP ports
    benchlib.py wait PORT PATH PID SECONDS   wait until GET PATH answers 200 (exit 1 if not,
                                             or if PID died first)
    benchlib.py mkfile PATH SIZE             write a SIZE-byte printable file
    benchlib.py parse-wrk FILE               print: requests rps p50_us p99_us errors bytes
    benchlib.py report RESULTS IDLE          print the summary tables

RESULTS is the tab-separated file run.sh appends to, one line per measured wrk run:
    round proxy size status requests rps p50_us p99_us errors bytes cpu_ticks clk_tck
    cpu0_pct cpu1_pct duration
IDLE has one line per proxy from idle_conns.py:
    proxy status rss_before_kb rss_after_kb opened alive failed seconds note
"""
import http.client
import os
import re
import socket
import statistics
import sys
import time

PROXIES = ("portico", "portico3", "porticolog", "porticooff", "porticorl", "porticogz", "nginx",
           "nginxrl", "nginxgz", "haproxy")
SIZES = ("small", "32k", "json")
PLAIN_SIZES = ("small", "32k")     # what every proxy but the compressing pair serves
JSON_BYTES = 33604                 # bench/corpus.py's orders-32k.json, served gzipped as "json"
EXPECTED_BODY = {"small": 13, "32k": 32768, "json": 1000}


def cmd_ports(n):
    socks, ports = [], []
    try:
        for _ in range(int(n)):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    print(" ".join(map(str, ports)))


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except OSError:
        return False


def cmd_wait(port, path, pid, seconds):
    deadline = time.monotonic() + float(seconds)
    last = "no attempt"
    while time.monotonic() < deadline:
        if not pid_alive(int(pid)):
            print(f"process {pid} exited", file=sys.stderr)
            return 1
        try:
            c = http.client.HTTPConnection("127.0.0.1", int(port), timeout=1)
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            c.close()
            if r.status == 200:
                return 0
            last = f"status {r.status}"
        except (OSError, http.client.HTTPException) as e:
            last = f"{type(e).__name__}: {e}"
        time.sleep(0.1)
    print(f"no 200 from 127.0.0.1:{port}{path} within {seconds}s ({last})", file=sys.stderr)
    return 1


def cmd_mkfile(path, size):
    size = int(size)
    line = b"portico bench payload 0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ\n"
    data = (line * (size // len(line) + 1))[:size]
    with open(path, "wb") as f:
        f.write(data)


_UNITS_T = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}
_UNITS_B = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


def to_us(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"bad wrk time {text!r}")
    return float(m.group(1)) * _UNITS_T[m.group(2)]


def parse_wrk(text):
    out = {}
    m = re.search(r"^\s*(\d+) requests in ([\d.]+\w+), ([\d.]+)(B|KB|MB|GB|TB) read", text, re.M)
    if not m:
        raise ValueError("no 'N requests in' line in wrk output")
    out["requests"] = int(m.group(1))
    out["bytes"] = int(float(m.group(3)) * _UNITS_B[m.group(4)])
    m = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    if not m:
        raise ValueError("no Requests/sec line in wrk output")
    out["rps"] = float(m.group(1))
    for pct in ("50", "99"):
        m = re.search(rf"^\s*{pct}(?:\.000)?%\s+([\d.]+\w+)", text, re.M)
        if not m:
            raise ValueError(f"no {pct}% latency line (was wrk run with --latency?)")
        out[f"p{pct}_us"] = to_us(m.group(1))
    m = re.search(r"^\s*Latency\s+(\S+)\s+(\S+)\s+(\S+)", text, re.M)
    out["max_us"] = to_us(m.group(3)) if m else 0.0
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        errors += int(m.group(1))
    out["errors"] = errors
    return out


def cmd_parse_wrk(path):
    with open(path) as f:
        text = f.read()
    try:
        r = parse_wrk(text)
    except ValueError as e:
        print(f"parse-wrk: {e}", file=sys.stderr)
        return 1
    print(r["requests"], f"{r['rps']:.2f}", f"{r['p50_us']:.1f}", f"{r['p99_us']:.1f}",
          r["errors"], r["bytes"], f"{r['max_us']:.1f}")
    return 0


# ----------------------------------------------------------------------------- report

def fmt_us(us):
    if us is None:
        return "-"
    if us >= 1e6:
        return f"{us / 1e6:.2f}s"
    if us >= 1e3:
        return f"{us / 1e3:.2f}ms"
    return f"{us:.0f}us"


def fmt_num(x, nd=0):
    return "-" if x is None else f"{x:,.{nd}f}"


def fmt_ratio(x):
    return "-" if x is None else f"{x:.2f}x"


def table(headers, rows, align=None):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]
    align = align or ["<"] + [">"] * (len(headers) - 1)
    def line(cells):
        return "  ".join(f"{str(c):{a}{w}}" for c, a, w in zip(cells, align, widths)).rstrip()
    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def read_tsv(path):
    rows = []
    if not path or not os.path.exists(path):
        return rows
    with open(path) as f:
        for ln in f:
            ln = ln.rstrip("\n")
            if ln and not ln.startswith("#"):
                rows.append(ln.split("\t"))
    return rows


def cmd_report(results_path, idle_path):
    runs = {}          # (proxy, size) -> list of dicts
    status = {}        # proxy -> "ok" or why it is unavailable
    for r in read_tsv(results_path):
        (rnd, proxy, size, st, requests, rps, p50, p99, errors, nbytes, ticks, clk,
         cpu0, cpu1, dur) = r[:15]
        mx = r[15] if len(r) > 15 else "0"
        d = {"status": st}
        if st == "ok":
            requests = int(requests)
            d.update(requests=requests, rps=float(rps), p50=float(p50), p99=float(p99),
                     max=float(mx or 0),
                     errors=int(errors), bytes=int(nbytes),
                     cpu_us=(int(ticks) * 1e6 / int(clk) / requests) if requests else None,
                     cpu0=float(cpu0), cpu1=float(cpu1))
            status.setdefault(proxy, "ok")
        else:
            status[proxy] = st
        runs.setdefault((proxy, size), []).append(d)

    present = [p for p in PROXIES if any((p, s) in runs for s in SIZES)]
    med = {}
    print("Throughput and latency (median over rounds; wrk on core 1, proxy on core 0)")
    print()
    rows = []
    notes = []
    for size in SIZES:
        for proxy in present:
            if (proxy, size) not in runs:
                continue            # not a size this proxy serves
            ok = [d for d in runs.get((proxy, size), []) if d["status"] == "ok"]
            n_all = len(runs.get((proxy, size), []))
            if not ok:
                rows.append([proxy, size, "0/%d" % n_all, "unavailable", "-", "-", "-", "-", "-", "-", "-", "-"])
                continue
            m = {k: median([d[k] for d in ok]) for k in ("rps", "p50", "p99", "max", "cpu_us", "cpu0", "cpu1")}
            m["errors"] = sum(d["errors"] for d in ok)
            resp = median([d["bytes"] / d["requests"] for d in ok if d["requests"]])
            med[(proxy, size)] = m
            flag = ""
            if m["errors"]:
                flag = " !"
                notes.append(f"{proxy} {size}: wrk counted {m['errors']} errors "
                             "(socket errors or non-2xx responses) over all rounds")
            if resp is not None and resp < EXPECTED_BODY[size]:
                flag = " !"
                notes.append(f"{proxy} {size}: {resp:.0f} bytes read per response, "
                             f"less than the {EXPECTED_BODY[size]}-byte body")
            if size == "json" and resp is not None and resp > JSON_BYTES / 2:
                flag = " !"
                notes.append(f"{proxy} {size}: {resp:.0f} bytes read per response: not compressed?")
            rps = [d["rps"] for d in ok]
            spread = (max(rps) - min(rps)) / m["rps"] * 100 if m["rps"] else 0
            rows.append([proxy, size, f"{len(ok)}/{n_all}", fmt_num(m["rps"]) + flag,
                         f"{spread:.0f}%",
                         fmt_us(m["p50"]), fmt_us(m["p99"]), fmt_us(m["max"]),
                         fmt_num(m["cpu_us"], 2), fmt_num(resp), f"{m['cpu0']:.0f}%",
                         f"{m['cpu1']:.0f}%"])
    print(table(["proxy", "size", "runs", "req/s", "spread", "p50", "p99", "max", "cpu us/req", "bytes/resp",
                 "core0", "core1"], rows))
    print()
    print("  spread = (max - min) / median of req/s over the rounds: how noisy the machine was.")
    print("  p50, p99 = wrk's latency distribution; max = the slowest response of the run.")
    print("  cpu us/req = proxy process utime+stime (/proc/PID/stat) / requests wrk completed.")
    print("  core0/core1 = busy share of each core during the run (/proc/stat); a core1 near")
    print("  100% means the load generator + upstream, not the proxy, bounded req/s.")
    for n in notes:
        print("  ! " + n)
    print()

    rows = []
    for size in PLAIN_SIZES:
        pm = med.get(("portico", size))
        peers = [med[(p, size)] for p in ("nginx", "haproxy") if (p, size) in med]
        if not pm or not peers:
            rows.append([size, "-", "-", "-"])
            continue
        best_cpu = min(p["cpu_us"] for p in peers)
        best_rps = max(p["rps"] for p in peers)
        best_p99 = min(p["p99"] for p in peers)
        rows.append([size,
                     fmt_ratio(pm["cpu_us"] / best_cpu if best_cpu else None),
                     fmt_ratio(pm["rps"] / best_rps if best_rps else None),
                     fmt_ratio(pm["p99"] / best_p99 if best_p99 else None)])
    if any(r[1] != "-" for r in rows):
        print("portico / best peer (nginx, haproxy); below 1.00x is better for cpu and p99,")
        print("above 1.00x is better for req/s")
        print()
        print(table(["size", "cpu us/req", "req/s", "p99"], rows))
        print()

    rows = []
    for size in SIZES:
        one, three = med.get(("portico", size)), med.get(("portico3", size))
        if one and three and one["cpu_us"]:
            rows.append([size, fmt_ratio(three["cpu_us"] / one["cpu_us"]),
                         fmt_ratio(three["rps"] / one["rps"] if one["rps"] else None)])
    if rows:
        print("portico3 (three servers, weighted, active + passive health checks) / portico (one server):")
        print("the CPU per request that balancing and health checking add; target below 1.05x")
        print()
        print(table(["size", "cpu us/req", "req/s"], rows))
        print()

    rows = []
    for size in SIZES:
        one, log = med.get(("portico", size)), med.get(("porticolog", size))
        if one and log and one["cpu_us"]:
            rows.append([size, fmt_ratio(log["cpu_us"] / one["cpu_us"]),
                         fmt_ratio(log["rps"] / one["rps"] if one["rps"] else None)])
    if rows:
        print("porticolog (JSON access log to a file) / portico (no access log, metrics on):")
        print("the CPU per request the access log adds")
        print()
        print(table(["size", "cpu us/req", "req/s"], rows))
        print()

    rows = []
    for size in SIZES:
        off, log = med.get(("porticooff", size)), med.get(("porticolog", size))
        one = med.get(("portico", size))
        if off and log and off["cpu_us"]:
            rows.append([size, fmt_ratio(log["cpu_us"] / off["cpu_us"]),
                         fmt_ratio(one["cpu_us"] / off["cpu_us"]) if one else "-",
                         fmt_ratio(log["rps"] / off["rps"] if off["rps"] else None)])
    if rows:
        print("porticolog (access log + metrics) / porticooff (both off: metrics.enabled false, no log):")
        print("the CPU per request observability costs; target below 1.05x. Middle column: metrics alone")
        print()
        print(table(["size", "log+metrics cpu", "metrics cpu", "req/s"], rows))
        print()

    rows = []
    for size in SIZES:
        pb, pr = med.get(("portico", size)), med.get(("porticorl", size))
        nb, nr = med.get(("nginx", size)), med.get(("nginxrl", size))
        if pb and pr and nb and nr and pb["cpu_us"] and nb["cpu_us"]:
            padd, nadd = pr["cpu_us"] - pb["cpu_us"], nr["cpu_us"] - nb["cpu_us"]
            rows.append([size, fmt_ratio(pr["cpu_us"] / pb["cpu_us"]),
                         fmt_ratio(nr["cpu_us"] / nb["cpu_us"]),
                         fmt_num(padd, 2), fmt_num(nadd, 2)])
    if rows:
        print("A rate limit that rejects nothing (one key, 100000/s): porticorl / portico against")
        print("nginxrl (limit_req) / nginx, and the CPU per request each adds; target: portico's")
        print("added CPU at most nginx's")
        print()
        print(table(["size", "portico rl/plain", "nginx rl/plain", "portico +us", "nginx +us"], rows))
        print()

    pg, ng = med.get(("porticogz", "json")), med.get(("nginxgz", "json"))
    if pg and ng and ng["cpu_us"]:
        size_of = {p: median([d["bytes"] / d["requests"] for d in runs[(p, "json")]
                              if d["status"] == "ok" and d["requests"]]) for p in ("porticogz", "nginxgz")}
        print("Streamed compression: a 32 KiB JSON response (%d bytes) gzipped at level 6 as it" % JSON_BYTES)
        print("streams, porticogz against nginxgz (gzip on; gzip_comp_level 6); target: portico's CPU")
        print("per request (the same body, so per byte) at most nginx's")
        print()
        print(table(["proxy", "cpu us/req", "bytes/resp", "req/s"],
                    [[p, fmt_num(m["cpu_us"], 2), fmt_num(size_of[p]), fmt_num(m["rps"])]
                     for p, m in (("porticogz", pg), ("nginxgz", ng))]))
        print()
        print(f"  porticogz / nginxgz: cpu us/req {fmt_ratio(pg['cpu_us'] / ng['cpu_us'])}")
        print()

    idle = read_tsv(idle_path)
    if idle:
        print("Idle keep-alive connections (one GET /small each, then held open idle)")
        print()
        rows = []
        inotes = []
        for r in idle:
            proxy, st, before, after, opened, alive, failed, secs, note = (r + [""] * 9)[:9]
            if st != "ok":
                rows.append([proxy, "unavailable", "-", "-", "-", "-"])
                if status.get(proxy, "ok") == "ok":
                    status[proxy] = "idle-connection test failed"
                if note:
                    inotes.append(f"{proxy}: idle test: {note}")
                continue
            status.setdefault(proxy, "ok")
            before, after, opened, alive, failed = map(int, (before, after, opened, alive, failed))
            per = (after - before) * 1024 / alive if alive else None
            rows.append([proxy, f"{alive}/{opened + failed}", fmt_num(before / 1024, 1),
                         fmt_num(after / 1024, 1), fmt_num(per), secs])
            if failed or alive != opened:
                inotes.append(f"{proxy}: {failed} connections failed, {opened - alive} closed "
                              "by the proxy before the measurement")
            if note:
                inotes.append(f"{proxy}: {note}")
        print(table(["proxy", "conns held", "RSS before MiB", "RSS after MiB", "bytes/conn",
                     "open s"], rows))
        print()
        print("  bytes/conn = (VmRSS after - VmRSS before) / connections held; user-space")
        print("  memory only (kernel socket buffers are not in RSS).")
        for n in inotes:
            print("  ! " + n)
        print()

    bad = [p for p in PROXIES if status.get(p, "ok") != "ok"]
    if bad:
        for p in bad:
            print(f"UNAVAILABLE: {p} ({status[p]})")
        return 1
    return 0


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[1], argv[2:]
    try:
        if cmd == "ports":
            return cmd_ports(*args) or 0
        if cmd == "wait":
            return cmd_wait(*args)
        if cmd == "mkfile":
            return cmd_mkfile(*args) or 0
        if cmd == "parse-wrk":
            return cmd_parse_wrk(*args)
        if cmd == "report":
            return cmd_report(*args)
    except TypeError:
        print(__doc__, file=sys.stderr)
        return 2
    print(f"benchlib.py: unknown command {cmd!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
