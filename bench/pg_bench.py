#!/usr/bin/python3
"""bench/pg_bench.py: portico's PostgreSQL pooler against PgBouncer, with pgbench.

Run by `make bench` (after bench/run.sh) or alone: `make bench-pg`. How to read it:
docs/benchmarks.md.

One PostgreSQL (a cluster made here with initdb, pgbench -i scale BENCH_PG_SCALE) and two
poolers in front of it, both in transaction mode with a pool of BENCH_PG_POOL server
connections, both with trust authentication (logins are not measured: pgbench connects once per
client): portico (`workers: 1`) and PgBouncer (single-threaded), each pinned to core
BENCH_PROXY_CPU; PostgreSQL and pgbench share core BENCH_LOAD_CPU. For BENCH_ROUNDS interleaved
rounds, for each pooler, for each client count in BENCH_PG_CLIENTS: a pgbench select-only run
(-S, simple protocol, BENCH_PG_THREADS threads) of BENCH_DURATION seconds. Per run:
transactions per second and the pooler's CPU time per transaction (utime + stime from
/proc/PID/stat over the run, divided by the transactions pgbench counted), and the same for
PostgreSQL (the postmaster and its children) plus pgbench: the work on the load core, which
bounds the tps when it is busy and the pooler's core is not. Medians over rounds, and the
ratios portico / PgBouncer.

Environment (defaults in brackets): BENCH_DURATION [10] BENCH_ROUNDS [3] BENCH_WARMUP [1]
BENCH_PG_CLIENTS ["100 400"] BENCH_PG_POOL [20] BENCH_PG_SCALE [10] BENCH_PG_THREADS [2]
BENCH_PROXY_CPU [0] BENCH_LOAD_CPU [1] PORTICO_BIN [build/portico] BENCH_OUT [build/bench]

It starts only its own processes (PostgreSQL, the poolers, pgbench) and stops them by PID.
Exit status: 0 when both poolers ran, 1 when one could not, 2 on a setup error.
"""
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def env(name, default):
    return os.environ.get(name, default)


DURATION = int(env("BENCH_DURATION", "10").rstrip("s"))
ROUNDS = int(env("BENCH_ROUNDS", "3"))
WARMUP = int(env("BENCH_WARMUP", "1").rstrip("s"))
CLIENTS = [int(x) for x in env("BENCH_PG_CLIENTS", "100 400").split()]
POOL = int(env("BENCH_PG_POOL", "20"))
SCALE = int(env("BENCH_PG_SCALE", "10"))
THREADS = int(env("BENCH_PG_THREADS", "2"))
PROXY_CPU = env("BENCH_PROXY_CPU", "0")
LOAD_CPU = env("BENCH_LOAD_CPU", "1")
PORTICO_BIN = env("PORTICO_BIN", os.path.join(ROOT, "build", "portico"))
OUT = env("BENCH_OUT", os.path.join(ROOT, "build", "bench"))
CLK_TCK = os.sysconf("SC_CLK_TCK")

started = []


def say(msg):
    print("bench-pg: " + msg, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def accepts(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def ids():
    if os.geteuid() != 0:
        return {}
    pw = pwd.getpwnam("postgres")
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def start(args, log, cpu, as_postgres=False, **kw):
    f = open(log, "ab")
    extra = ids() if as_postgres else {}
    p = subprocess.Popen(["taskset", "-c", cpu] + args, stdout=f, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, **extra, **kw)
    f.close()
    started.append(p)
    return p


def stop(p, sig=signal.SIGTERM):
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def cpu_ticks(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])      # utime + stime


def backend_ticks(postmaster):
    """CPU ticks of PostgreSQL: the postmaster's children (backends, background processes)."""
    total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster or int(d) == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total


def wait_port(port, proc, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        if accepts(port):
            return True
        time.sleep(0.05)
    return False


def pgbench(port, clients, seconds, log):
    args = ["taskset", "-c", LOAD_CPU, "pgbench", "-n", "-S", "-M", "simple", "-c", str(clients),
            "-j", str(THREADS), "-T", str(seconds), "-h", "127.0.0.1", "-p", str(port), "-U", "bench",
            "bench"]
    before = os.times()
    r = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=seconds + 120)
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    out = r.stdout.decode(errors="replace")
    with open(log, "a") as f:
        f.write(out)
    tps = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
    done = re.search(r"number of transactions actually processed: (\d+)", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    if r.returncode != 0 or not tps or not done:
        return None
    return float(tps.group(1)), int(done.group(1)), int(failed.group(1)) if failed else 0, cpu


def main():
    for tool in ("taskset", "pgbench", "pgbouncer"):
        if not shutil.which(tool):
            say("%s not found: run scripts/deps.sh bench" % tool)
            return 2
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), reverse=True)
    if not bins:
        say("PostgreSQL server not found: run scripts/deps.sh")
        return 2
    pgbin = os.path.dirname(bins[0])
    os.makedirs(OUT, exist_ok=True)
    base = tempfile.mkdtemp(prefix="portico-pgbench-")
    os.chmod(base, 0o755)
    if ids():
        os.chown(base, ids()["user"], ids()["group"])
    data = os.path.join(base, "data")
    pg_port, portico_port, bouncer_port, http_port = free_port(), free_port(), free_port(), free_port()
    status = 0
    try:
        subprocess.run([os.path.join(pgbin, "initdb"), "-D", data, "-U", "postgres", "--auth=trust",
                        "-E", "UTF8", "--locale=C"], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.STDOUT, cwd=base, **ids())
        with open(os.path.join(data, "postgresql.conf"), "a") as f:
            f.write("listen_addresses = '127.0.0.1'\nport = %d\nunix_socket_directories = '%s'\n"
                    "max_connections = 100\nshared_buffers = 128MB\nfsync = off\n"
                    "synchronous_commit = off\n" % (pg_port, base))
        pg = start([os.path.join(pgbin, "postgres"), "-D", data], os.path.join(base, "postgres.log"),
                   LOAD_CPU, as_postgres=True, cwd=base)
        if not wait_port(pg_port, pg):
            say("PostgreSQL did not start: see %s/postgres.log" % base)
            return 2
        time.sleep(0.5)
        psql = ["psql", "-X", "-q", "-h", base, "-p", str(pg_port), "-U", "postgres"]
        subprocess.run(psql + ["-c", "CREATE ROLE bench LOGIN"], check=True)
        subprocess.run(psql + ["-c", "CREATE DATABASE bench OWNER bench"], check=True)
        say("pgbench -i -s %d ..." % SCALE)
        subprocess.run(["pgbench", "-i", "-q", "-s", str(SCALE), "-h", base, "-p", str(pg_port), "-U", "bench",
                        "bench"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

        # portico: the pooler only matters here; its HTTP side listens but is idle
        cfg = os.path.join(base, "portico.yaml")
        with open(cfg, "w") as f:
            f.write('listen: [ "127.0.0.1:%d" ]\nworkers: 1\nupstreams: { app: { servers: [ "127.0.0.1:9" ] } }\n'
                    'routes: [ { upstream: app } ]\naccess_log: off\n'
                    'postgres:\n  listen: [ "127.0.0.1:%d" ]\n  servers: [ "127.0.0.1:%d" ]\n'
                    '  auth: { type: trust }\n  max_client_conn: 2000\n'
                    '  pools: [ { database: bench, user: bench, pool_mode: transaction, pool_size: %d } ]\n'
                    % (http_port, portico_port, pg_port, POOL))
        users = os.path.join(base, "users.txt")
        with open(users, "w") as f:
            f.write('"bench" ""\n')
        ini = os.path.join(base, "pgbouncer.ini")
        with open(ini, "w") as f:
            f.write("[databases]\nbench = host=127.0.0.1 port=%d dbname=bench\n[pgbouncer]\n"
                    "listen_addr = 127.0.0.1\nlisten_port = %d\nunix_socket_dir =\nauth_type = trust\n"
                    "auth_file = %s\npool_mode = transaction\ndefault_pool_size = %d\n"
                    "max_client_conn = 2000\nlogfile = %s\npidfile =\nlog_connections = 0\n"
                    "log_disconnections = 0\n" % (pg_port, bouncer_port, users, POOL,
                                                 os.path.join(base, "pgbouncer.log")))
        for p in (ini, users, cfg):
            if ids():
                os.chown(p, ids()["user"], ids()["group"])
        poolers = {}
        if os.access(PORTICO_BIN, os.X_OK):
            poolers["portico"] = start([PORTICO_BIN, "-c", cfg], os.path.join(base, "portico.log"), PROXY_CPU)
            if not wait_port(portico_port, poolers["portico"]):
                say("portico did not start: see %s/portico.log" % base)
                del poolers["portico"]
                status = 1
        else:
            say("%s not found: run make" % PORTICO_BIN)
            status = 1
        # PgBouncer refuses to run as root: it runs as postgres, like the server
        poolers["pgbouncer"] = start(["pgbouncer", ini], os.path.join(base, "pgbouncer.out"), PROXY_CPU,
                                     as_postgres=True, cwd=base)
        if not wait_port(bouncer_port, poolers["pgbouncer"]):
            say("PgBouncer did not start: see %s/pgbouncer.log" % base)
            del poolers["pgbouncer"]
            status = 1
        ports = {"portico": portico_port, "pgbouncer": bouncer_port}
        results = {}            # (pooler, clients) -> [(tps, cpu_us_per_tx)]
        log = os.path.join(OUT, "pgbench.log")
        open(log, "w").close()
        for rnd in range(1, ROUNDS + 1):
            for name, proc in poolers.items():
                for n in CLIENTS:
                    if WARMUP:
                        pgbench(ports[name], n, WARMUP, log)
                    t0, b0 = cpu_ticks(proc.pid), backend_ticks(pg.pid)
                    r = pgbench(ports[name], n, DURATION, log)
                    t1, b1 = cpu_ticks(proc.pid), backend_ticks(pg.pid)
                    if r is None or proc.poll() is not None:
                        say("round %d: %s with %d clients failed (see %s)" % (rnd, name, n, log))
                        status = 1
                        continue
                    tps, done, failed, pgbench_cpu = r
                    cpu_us = (t1 - t0) * 1e6 / CLK_TCK / max(done, 1)
                    # the other core's work per transaction: what bounds tps there
                    load_us = ((b1 - b0) / CLK_TCK + pgbench_cpu) * 1e6 / max(done, 1)
                    results.setdefault((name, n), []).append((tps, cpu_us, load_us))
                    say("round %d: %-9s %4d clients: %9.0f tps, %6.1f us CPU/tx, PostgreSQL + pgbench "
                        "%6.1f us/tx, %d failed" % (rnd, name, n, tps, cpu_us, load_us, failed))
        print()
        print("pgbench -S (select-only), scale %d, transaction pooling, pool %d, %d s x %d rounds, "
              "pooler on core %s, PostgreSQL + pgbench on core %s" % (SCALE, POOL, DURATION, ROUNDS,
                                                                     PROXY_CPU, LOAD_CPU))
        print("%-10s %8s %12s %16s %26s" % ("pooler", "clients", "tps", "CPU us / tx",
                                             "PostgreSQL+pgbench us / tx"))
        med = {}
        for (name, n), rs in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            tps = statistics.median(x[0] for x in rs)
            cpu = statistics.median(x[1] for x in rs)
            load = statistics.median(x[2] for x in rs)
            med[(name, n)] = (tps, cpu)
            print("%-10s %8d %12.0f %16.1f %26.1f" % (name, n, tps, cpu, load))
        print()
        for n in CLIENTS:
            a, b = med.get(("portico", n)), med.get(("pgbouncer", n))
            if a and b:
                print("%4d clients: portico / PgBouncer: tps %.2fx (target >= 1.3x), CPU per transaction "
                      "%.2fx (target <= 0.7x)" % (n, a[0] / b[0], a[1] / b[1]))
        for p in poolers.values():
            stop(p)
        return status
    finally:
        for p in reversed(started):
            stop(p, signal.SIGINT)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as e:
        say("setup failed: %s" % e)
        sys.exit(2)
