"""Helpers for test_balance.py: upstream processes that can be killed,
stopped, restarted on the same port and have their /health flipped; a
portico config with balancing keys; a multi-threaded keep-alive client load.

Every process is tracked by its PID and stopped by exactly that PID.
"""

import http.client
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from conftest import RawConn, stop_pid, wait_for  # noqa: E402


# --------------------------------------------------------------------------
# upstream processes

class FlipUpstream:
    """A flip_upstream.py process. kill() / pause() / resume() signal exactly
    its PID; restart() starts a new process on the same port."""

    def __init__(self, ident, logdir, port=0):
        self.id = ident
        self.logdir = logdir
        self.proc = None
        self.paused = False
        self.port = None
        self._start(port)

    def _start(self, port):
        self.log_path = os.path.join(self.logdir, "flip-%s.log" % self.id)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "flip_upstream.py"), "--port", str(port),
             "--id", self.id],
            stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL)
        r, _, _ = select.select([self.proc.stdout], [], [], 10)
        line = self.proc.stdout.readline().decode() if r else ""
        m = re.match(r"READY (\d+) (\d+)", line)
        if not m:
            stop_pid(self.proc)
            raise RuntimeError("upstream %s did not start: %r" % (self.id, line))
        self.port = int(m.group(1))
        self.ctl_port = int(m.group(2))
        self.address = "127.0.0.1:%d" % self.port
        self.paused = False

    # ---- control port ----
    def _ctl(self, path):
        with RawConn(self.ctl_port, timeout=5) as c:
            r = c.request("GET", path, host="ctl", headers=[("Connection", "close")])
        assert r.status == 200, r
        return r.json()

    def set_health(self, status):
        return self._ctl("/set?health=%d" % status)

    def set_delay(self, seconds):
        return self._ctl("/set?delay=%g" % seconds)

    def state(self):
        return self._ctl("/state")

    def log(self):
        return self._ctl("/log")

    def reset(self):
        self._ctl("/reset")

    def saw(self, needle):
        """Requests (not health checks) whose target contains needle."""
        return [r for r in self.log()["requests"] if needle in r["target"]]

    # ---- signals, exactly this PID ----
    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        """SIGKILL; returns once the process is gone (its sockets closed)."""
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self._close_files()

    def pause(self):
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True
        # the signal is delivered asynchronously: a thread on the other core
        # can still answer a request; wait until every thread is stopped
        deadline = time.time() + 5
        while time.time() < deadline and not self._all_stopped():
            time.sleep(0.001)

    def _all_stopped(self):
        try:
            for t in os.listdir("/proc/%d/task" % self.proc.pid):
                with open("/proc/%d/task/%s/stat" % (self.proc.pid, t)) as f:
                    if f.read().rsplit(")", 1)[1].split()[0] not in ("T", "t"):
                        return False
        except OSError:
            return True             # gone: nothing can answer
        return True

    def resume(self):
        if self.paused and self.alive():
            os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False

    def restart(self):
        """A new process on the same port (after kill())."""
        assert not self.alive()
        self._start(self.port)

    def _close_files(self):
        try:
            self.proc.stdout.close()
        except Exception:
            pass
        try:
            self._log.close()
        except Exception:
            pass

    def stop(self):
        if self.proc is None:
            return
        if self.alive():
            self.resume()
            stop_pid(self.proc, 5)
        self._close_files()


# --------------------------------------------------------------------------
# portico config

def _q(s):
    return '"%s"' % s.replace("\\", "\\\\").replace('"', '\\"')


def lb_config(port, servers, balance="weighted", hash_key=None, health=None, passive=None,
              retries=None, response_timeout="10s", connect_timeout="1s", keepalive=16,
              workers=2):
    """servers: [addr | {"address":..., "weight":..., "backup":..., "slow_start":...}]
    health / passive: dicts written as YAML flow maps, values as-is."""
    out = ['listen: [ "127.0.0.1:%d" ]' % port, "workers: %d" % workers, "upstreams:",
           "  app:", "    balance: %s" % balance]
    if hash_key is not None:
        out.append("    hash_key: %s" % _q(hash_key))
    out.append("    servers:")
    for s in servers:
        if isinstance(s, str):
            s = {"address": s}
        kv = ["address: %s" % _q(s["address"])]
        for k in ("weight", "backup", "slow_start"):
            if k in s:
                v = s[k]
                kv.append("%s: %s" % (k, ("true" if v else "false") if isinstance(v, bool) else v))
        out.append("      - { %s }" % ", ".join(kv))
    out.append("    keepalive: %d" % keepalive)
    out.append("    connect_timeout: %s" % connect_timeout)
    out.append("    response_timeout: %s" % response_timeout)
    if retries is not None:
        out.append("    retries: %d" % retries)
    for name, d in (("health", health), ("passive", passive)):
        if d:
            out.append("    %s: { %s }" % (name, ", ".join("%s: %s" % kv for kv in d.items())))
    out += ["routes:", "  - match: { prefix: / }", "    upstream: app",
            "limits:", "  idle_timeout: 60s", "shutdown_timeout: 2s"]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------
# clients

def fetch(port, path="/count", method="GET", headers=None, body=None, conn=None, source=None,
          timeout=10):
    """One request with http.client. Returns (status, headers dict lowercased,
    body bytes). With conn, uses (and keeps) that connection."""
    own = conn is None
    if own:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                          source_address=(source, 0) if source else None)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        if own:
            conn.close()


def server_id(body):
    return json.loads(body)["id"]


class Load:
    """`threads` clients, each on its own keep-alive connection, sending
    GET `path` until `total` requests are done (or `seconds` have passed, or
    stop() is called; `deadline` bounds it in any case). Every outcome is
    recorded as (time, status or None, server id or error text)."""

    def __init__(self, port, threads=4, total=None, seconds=None, path="/count",
                 deadline=60.0, timeout=10.0):
        assert total or seconds
        self.port = port
        self.total = total
        self.seconds = seconds
        self.path = path
        self.timeout = timeout
        self.deadline = deadline
        self.results = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._issued = 0
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _take(self):
        with self.lock:
            if self.total is not None and self._issued >= self.total:
                return False
            self._issued += 1
            return True

    def _run(self):
        end = time.time() + (self.seconds if self.seconds else self.deadline)
        hard = time.time() + self.deadline
        conn = None
        while not self._stop.is_set() and time.time() < min(end, hard) and self._take():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            t = time.time()
            try:
                conn.request("GET", self.path)
                r = conn.getresponse()
                data = r.read()
                if r.status == 200:
                    rec = (t, 200, server_id(data))
                else:
                    rec = (t, r.status, data[:200].decode("latin-1"))
                if r.will_close:
                    conn.close()
                    conn = None
            except Exception as e:      # any error is a failed request
                rec = (t, None, "%s: %s" % (type(e).__name__, e))
                conn.close()
                conn = None
            with self.lock:
                self.results.append(rec)
        if conn is not None:
            conn.close()

    def start(self):
        for t in self._threads:
            t.start()
        return self

    def done(self):
        with self.lock:
            return len(self.results)

    def wait_done(self, n, timeout):
        return wait_for(lambda: self.done() >= n, timeout, 0.01)

    def stop(self):
        self._stop.set()

    def join(self, timeout=None):
        limit = self.deadline + 15 if timeout is None else timeout
        end = time.time() + limit
        for t in self._threads:
            t.join(max(0.0, end - time.time()))
        assert not any(t.is_alive() for t in self._threads), "load threads did not finish"
        return self.results

    def failures(self):
        with self.lock:
            return [r for r in self.results if r[1] != 200]

    def counts(self, since=None, until=None):
        out = {}
        with self.lock:
            for t, st, ident in self.results:
                if st == 200 and (since is None or t >= since) and (until is None or t < until):
                    out[ident] = out.get(ident, 0) + 1
        return out


# --------------------------------------------------------------------------
# portico log

LOG_TIME = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)\.(\d{3})Z ")


def log_lines(portico, needle):
    """(unix time, line) of each log line containing needle."""
    import calendar
    out = []
    for line in portico.log_text().splitlines():
        if needle in line:
            m = LOG_TIME.match(line)
            t = None
            if m:
                y, mo, d, h, mi, s, ms = (int(x) for x in m.groups())
                t = calendar.timegm((y, mo, d, h, mi, s)) + ms / 1000.0
            out.append((t, line))
    return out


def state_change_lines(portico, address, change):
    """Log lines reporting `change` ("up -> down" or "down -> up") for the
    server at address."""
    return [(t, l) for t, l in log_lines(portico, "server %s: %s" % (address, change))]
