"""Fixtures and helpers for portico's integration tests.

Every process a test starts (portico, upstreams) is tracked by PID and
stopped exactly by that PID at teardown: SIGTERM, wait, then SIGKILL. When a
test fails, the logs of the portico instances it started are attached to the
report.

The binary comes from $PORTICO_BIN (set by `make integration`), or
build/portico; tests that need it are skipped when it does not exist.
"""

import hashlib
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import upstream as upstream_mod  # noqa: E402

pattern = upstream_mod.pattern
pattern_bytes = upstream_mod.pattern_bytes
pattern_sha256 = upstream_mod.pattern_sha256
ws_frame = upstream_mod.ws_frame
ws_mask = upstream_mod.ws_mask


# --------------------------------------------------------------------------
# small utilities

def free_port():
    """A loopback TCP port that was free a moment ago."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_for(pred, timeout, interval=0.02):
    deadline = time.time() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.time() >= deadline:
            return v
        time.sleep(interval)


def port_accepts(port, host="127.0.0.1"):
    try:
        s = socket.create_connection((host, port), timeout=0.5)
    except OSError:
        return False
    s.close()
    return True


def rss_kib(pid, field="VmRSS"):
    """VmRSS (or VmHWM: the peak RSS so far) of a process in KiB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError("no %s for %d" % (field, pid))


class RssSampler:
    """Samples a PID's VmRSS in a background thread. `growth(base)` is the
    largest of (sampled peak - base) and the rise of VmHWM over the sampling
    period, so a short spike between two samples is not missed."""

    def __init__(self, pid, interval=0.02):
        self.pid = pid
        self.hwm_before = rss_kib(pid, "VmHWM")
        self.hwm_after = None
        self.interval = interval
        self.samples = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.samples.append(rss_kib(self.pid))
            except (OSError, RuntimeError):
                return
            self._stop.wait(self.interval)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *a):
        self._stop.set()
        self._t.join()
        try:
            self.hwm_after = rss_kib(self.pid, "VmHWM")
        except (OSError, RuntimeError):
            self.hwm_after = self.hwm_before

    def growth(self, base):
        return max(self.peak - base, (self.hwm_after or self.hwm_before) - self.hwm_before)

    @property
    def peak(self):
        return max(self.samples) if self.samples else 0


def stop_pid(proc, timeout=10.0):
    """SIGTERM exactly this process, wait, then SIGKILL it. Returns its exit status."""
    if proc.poll() is not None:
        return proc.returncode
    try:
        proc.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(5)


# --------------------------------------------------------------------------
# raw HTTP client

class Closed(Exception):
    """The server closed the connection."""


class Response:
    def __init__(self):
        self.version = self.reason = None
        self.status = None
        self.headers = []
        self.trailers = []
        self.body = b""
        self.raw_head = b""
        self.chunked = False

    def header(self, name):
        name = name.lower()
        for n, v in self.headers:
            if n.lower() == name:
                return v
        return None

    def header_all(self, name):
        name = name.lower()
        return [v for n, v in self.headers if n.lower() == name]

    def has(self, name):
        return self.header(name) is not None

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<Response %s %s %r body=%d bytes>" % (self.status, self.reason, self.headers, len(self.body))


class RawConn:
    """A TCP connection that sends exact bytes and parses exact responses."""

    def __init__(self, port, host="127.0.0.1", timeout=5.0, rcvbuf=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buf = bytearray()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.sendall(data)

    def _fill(self, timeout=None):
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        try:
            data = self.sock.recv(262144)
        except ConnectionResetError:
            data = b""
        if not data:
            raise Closed("connection closed by peer (buffered: %r)" % bytes(self.buf[:200]))
        self.buf += data

    def _line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return line
            if len(self.buf) > 1 << 20:
                raise AssertionError("line too long")
            self._fill()

    def _exact(self, n, sink=None):
        out = bytearray()
        while n > 0:
            if not self.buf:
                self._fill()
            k = min(n, len(self.buf))
            if sink is not None:
                sink(self.buf[:k])
            else:
                out += self.buf[:k]
            del self.buf[:k]
            n -= k
        return bytes(out)

    def read_head(self):
        """Parse one response head (status line + headers)."""
        r = Response()
        raw = bytearray()
        line = self._line()
        raw += line + b"\r\n"
        m = re.match(rb"^(HTTP/\d\.\d) (\d{3})(?: (.*))?$", line)
        assert m, "bad status line %r (buffered %r)" % (line, bytes(self.buf[:200]))
        r.version = m.group(1).decode()
        r.status = int(m.group(2))
        r.reason = (m.group(3) or b"").decode("latin-1")
        while True:
            line = self._line()
            raw += line + b"\r\n"
            if line == b"":
                break
            assert b"\n" not in line and b"\r" not in line, "bare CR/LF in %r" % line
            n, sep, v = line.partition(b":")
            assert sep and n and not n.endswith((b" ", b"\t")), "bad header line %r" % line
            r.headers.append((n.decode("latin-1"), v.strip(b" \t").decode("latin-1")))
        r.raw_head = bytes(raw)
        return r

    def read_response(self, method="GET", sink=None, timeout=None):
        """Read one response, including a 1xx one (check .status).
        `sink` receives body pieces instead of accumulating them."""
        old = self.timeout
        if timeout is not None:
            self.timeout = timeout
        try:
            r = self.read_head()
            if method == "HEAD" or r.status < 200 or r.status in (204, 304):
                return r
            te = r.header("transfer-encoding")
            cl = r.header_all("content-length")
            parts = bytearray() if sink is None else None
            put = sink if sink is not None else parts.extend
            if te is not None:
                assert te.lower().replace(" ", "").split(",")[-1] == "chunked", "TE %r" % te
                r.chunked = True
                while True:
                    line = self._line()
                    size = line.split(b";")[0].strip()
                    assert re.fullmatch(rb"[0-9a-fA-F]+", size), "bad chunk size line %r" % line
                    size = int(size, 16)
                    if size == 0:
                        break
                    self._exact(size, put)
                    crlf = self._line()
                    assert crlf == b"", "no CRLF after chunk data: %r" % crlf
                while True:
                    line = self._line()
                    if line == b"":
                        break
                    n, _, v = line.partition(b":")
                    r.trailers.append((n.decode("latin-1"), v.strip().decode("latin-1")))
            elif cl:
                assert len(set(cl)) == 1, "several Content-Length %r" % cl
                self._exact(int(cl[0]), put)
            else:
                # delimited by close
                while True:
                    try:
                        self._fill()
                    except Closed:
                        break
                    if sink is not None:
                        sink(bytes(self.buf))
                        del self.buf[:]
                if sink is None:
                    parts += self.buf
                del self.buf[:]
            if parts is not None:
                r.body = bytes(parts)
            return r
        finally:
            self.timeout = old

    def read_final(self, method="GET", **kw):
        """Read responses until a final (>= 200, or 101) one. Returns
        (final, [informational responses])."""
        infos = []
        while True:
            r = self.read_response(method, **kw)
            if r.status >= 200 or r.status == 101:
                return r, infos
            infos.append(r)

    def request(self, method, path, headers=None, body=b"", host="test.local", version="HTTP/1.1"):
        """Send a well-formed request and read the final response."""
        self.send(build_request(method, path, headers, body, host, version))
        r, _ = self.read_final(method)
        return r

    def wait_closed(self, timeout):
        """Wait for EOF. Returns the bytes that arrived before it; raises
        AssertionError if the connection is still open after `timeout`."""
        deadline = time.time() + timeout
        got = bytes(self.buf)
        del self.buf[:]
        while True:
            left = deadline - time.time()
            if left <= 0:
                raise AssertionError("connection still open after %.1fs (got %r)" % (timeout, got[:200]))
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                raise AssertionError("connection still open after %.1fs (got %r)" % (timeout, got[:200]))
            except (ConnectionResetError, BrokenPipeError):
                return got
            if not data:
                return got
            got += data

    def is_open_after(self, seconds):
        """True if no EOF (and no data) arrives within `seconds`."""
        self.sock.settimeout(seconds)
        try:
            data = self.sock.recv(65536, socket.MSG_PEEK)
        except socket.timeout:
            return True
        except ConnectionResetError:
            return False
        return bool(data) and True


def build_request(method, path, headers=None, body=b"", host="test.local", version="HTTP/1.1"):
    lines = ["%s %s %s" % (method, path, version)]
    hdrs = list(headers or [])
    names = [n.lower() for n, _ in hdrs]
    if host is not None and "host" not in names:
        lines.append("Host: %s" % host)
    for n, v in hdrs:
        lines.append("%s: %s" % (n, v))
    if isinstance(body, str):
        body = body.encode()
    if body and "content-length" not in names and "transfer-encoding" not in names:
        lines.append("Content-Length: %d" % len(body))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def send_and_read_to_end(port, data, timeout=5.0):
    """Send raw bytes on a fresh connection and read until the peer ends it.
    Returns (bytes received, whether it ended with a reset rather than a FIN):
    a cut response must end with a reset to be told from a complete one."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    got, reset = b"", False
    try:
        s.sendall(data)
        while True:
            d = s.recv(65536)
            if not d:
                break
            got += d
    except ConnectionResetError:
        reset = True
    finally:
        s.close()
    return got, reset


def status_of(data):
    """Status codes of every response status line in raw bytes."""
    return [int(x) for x in re.findall(rb"HTTP/1\.[01] (\d{3})", data)]


def raw_exchange(port, data, timeout=3.0, wait_close=True):
    """Send raw bytes on a fresh connection, read until close (or timeout).
    Returns (bytes received, closed?)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        got = bytearray()
        deadline = time.time() + timeout
        while True:
            left = deadline - time.time()
            if left <= 0:
                return bytes(got), False
            s.settimeout(left)
            try:
                d = s.recv(65536)
            except socket.timeout:
                return bytes(got), False
            except ConnectionResetError:
                return bytes(got), True
            if not d:
                return bytes(got), True
            got += d
            if not wait_close and b"\r\n\r\n" in got:
                return bytes(got), False
    finally:
        s.close()


# --------------------------------------------------------------------------
# upstream processes

class Upstream:
    def __init__(self, ident, logdir):
        self.id = ident
        self.log_path = os.path.join(logdir, "upstream-%s.log" % ident)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "upstream.py"), "--port", "0", "--id", ident],
            stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL)
        r, _, _ = select.select([self.proc.stdout], [], [], 10)
        line = self.proc.stdout.readline().decode() if r else ""
        m = re.match(r"READY (\d+) (\d+)", line)
        if not m:
            stop_pid(self.proc)
            raise RuntimeError("upstream %s did not start: %r" % (ident, line))
        self.port = int(m.group(1))
        self.ctl_port = int(m.group(2))
        self.address = "127.0.0.1:%d" % self.port

    def _ctl(self, path):
        with RawConn(self.ctl_port, timeout=5) as c:
            r = c.request("GET", path, host="ctl", headers=[("Connection", "close")])
        assert r.status == 200, r
        return r.json()

    def stats(self):
        return self._ctl("/stats")

    def log(self):
        return self._ctl("/log")

    def requests(self):
        return self.log()["requests"]

    def events(self, name=None):
        ev = self.log()["events"]
        return [e for e in ev if name is None or e["event"] == name]

    def wait_event(self, name, timeout):
        return wait_for(lambda: self.events(name), timeout, 0.05)

    def reset(self):
        self._ctl("/reset")

    def stop(self):
        rc = stop_pid(self.proc, 5)
        self.proc.stdout.close()
        self._log.close()
        return rc


# --------------------------------------------------------------------------
# portico config and process

def _yaml_str(s):
    return '"%s"' % s.replace("\\", "\\\\").replace('"', '\\"')


def make_config(port, upstreams, routes=None, limits=None, workers=2, shutdown_timeout="5s",
                extra=""):
    """portico YAML.
    upstreams: {name: {"servers": [addr | (addr, weight)], "keepalive": .., ...}}
    routes: [{"host": .., "prefix": .., "upstream": ..}] (default: / -> first upstream)
    limits: {key: value} written as-is."""
    out = ['listen: [ "127.0.0.1:%d" ]' % port, "workers: %s" % workers, "upstreams:"]
    for name, u in upstreams.items():
        out.append("  %s:" % name)
        out.append("    servers:")
        for s in u["servers"]:
            if isinstance(s, (tuple, list)):
                out.append("      - { address: %s, weight: %d }" % (_yaml_str(s[0]), s[1]))
            else:
                out.append("      - { address: %s }" % _yaml_str(s))
        for k in ("keepalive", "connect_timeout", "response_timeout", "idle_timeout"):
            if k in u:
                out.append("    %s: %s" % (k, u[k]))
    if routes is None:
        routes = [{"prefix": "/", "upstream": next(iter(upstreams))}]
    out.append("routes:")
    for r in routes:
        m = []
        if r.get("host") is not None:
            m.append("host: %s" % _yaml_str(r["host"]))
        if r.get("prefix") is not None:
            m.append("prefix: %s" % r["prefix"])
        out.append("  - match: { %s }" % ", ".join(m))
        out.append("    upstream: %s" % r["upstream"])
    if limits:
        out.append("limits:")
        for k, v in limits.items():
            out.append("  %s: %s" % (k, v))
    out.append("shutdown_timeout: %s" % shutdown_timeout)
    if extra:
        out.append(extra)
    return "\n".join(out) + "\n"


class Portico:
    def __init__(self, binary, config_text, workdir, port, name="portico"):
        self.binary = binary
        self.port = port
        self.name = name
        self.config_path = os.path.join(workdir, "%s.yaml" % name)
        self.log_path = os.path.join(workdir, "%s.log" % name)
        with open(self.config_path, "w") as f:
            f.write(config_text)
        self._log = open(self.log_path, "wb")
        self.expect_exit = False
        self.started = time.time()
        self.proc = subprocess.Popen([binary, "-c", self.config_path], stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        deadline = time.time() + 10
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("portico exited with %s at startup:\n%s\nconfig:\n%s"
                                     % (self.proc.returncode, self.log_text(), config_text))
            if port_accepts(port):
                break
            if time.time() > deadline:
                raise AssertionError("portico did not accept on port %d within 10s:\n%s"
                                     % (port, self.log_text()))
            time.sleep(0.02)

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def rss_kib(self):
        return rss_kib(self.pid)

    def alive(self):
        return self.proc.poll() is None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=10.0):
        rc = stop_pid(self.proc, timeout)
        self._log.close()
        return rc


# --------------------------------------------------------------------------
# fixtures

def _bin():
    b = os.environ.get("PORTICO_BIN") or os.path.join(ROOT, "build", "portico")
    return os.path.abspath(b)


@pytest.fixture(scope="session")
def portico_bin():
    b = _bin()
    if not (os.path.isfile(b) and os.access(b, os.X_OK)):
        pytest.skip("portico binary not found at %s (build it with `make`)" % b)
    return b


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    # `make test` installs every dependency first (scripts/deps.sh), so there
    # a skip means a test silently did not run: make it a failure that says why
    if (rep.skipped and not hasattr(rep, "wasxfail")
            and os.environ.get("PORTICO_NO_SKIP") == "1"):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = ("skipped under `make test` (PORTICO_NO_SKIP=1), where every dependency "
                        "is installed: %s" % reason)
    if rep.failed:
        for p in getattr(item, "_porticos", []):
            text = p.log_text()
            if len(text) > 20000:
                text = "...\n" + text[-20000:]
            rep.sections.append(("%s log (%s)" % (p.name, p.log_path), text or "(empty)"))


@pytest.fixture
def start_upstream(tmp_path):
    """start_upstream("u1") -> Upstream"""
    started = []

    def start(ident="u1"):
        u = Upstream(ident, str(tmp_path))
        started.append(u)
        return u

    yield start
    for u in started:
        u.stop()


@pytest.fixture
def start_portico(portico_bin, tmp_path, request):
    """start_portico(config_text, port) or start_portico(port=None, upstreams=..., ...) -> Portico.
    With keyword arguments the config is built by make_config on a free port."""
    started = []
    request.node._porticos = started

    def start(config_text=None, port=None, name=None, **kw):
        if port is None:
            port = free_port()
        if config_text is None:
            config_text = make_config(port, **kw)
        p = Portico(portico_bin, config_text, str(tmp_path), port,
                    name or ("portico" if not started else "portico%d" % len(started)))
        started.append(p)
        return p

    yield start
    crashed = []
    for p in started:
        if p.proc.poll() is not None and not p.expect_exit:
            crashed.append("%s exited unexpectedly with status %s" % (p.name, p.proc.returncode))
            p.stop()
            continue
        rc = p.stop()
        # SIGTERM is a graceful stop: anything but 0 (a sanitizer's report, a
        # leak, a crash while draining) is a failure of the test that ran it
        if rc != 0 and not p.expect_exit:
            crashed.append("%s exited with status %s after SIGTERM" % (p.name, rc))
    if crashed:
        pytest.fail("; ".join(crashed) + " (see its log)", pytrace=False)


class Proxy:
    """One upstream behind one portico."""

    def __init__(self, portico, up):
        self.portico = portico
        self.up = up
        self.port = portico.port

    def conn(self, **kw):
        return RawConn(self.port, **kw)

    def get(self, path, headers=None, host="test.local"):
        with self.conn() as c:
            return c.request("GET", path, headers=headers, host=host)


@pytest.fixture
def make_proxy(start_upstream, start_portico):
    """make_proxy(limits=..., upstream_opts=..., workers=...) -> Proxy with one upstream 'u1'."""

    def make(limits=None, upstream_opts=None, workers=2, **kw):
        up = start_upstream("u1")
        u = {"servers": [up.address], "keepalive": 16, "connect_timeout": "2s",
             "response_timeout": "10s"}
        u.update(upstream_opts or {})
        p = start_portico(upstreams={"app": u}, limits=limits, workers=workers, **kw)
        return Proxy(p, up)

    return make


@pytest.fixture
def proxy(make_proxy):
    return make_proxy(limits={"header_timeout": "5s", "idle_timeout": "10s"})


def sha256(data):
    return hashlib.sha256(data).hexdigest()
