"""No log flood from bad traffic, and a stderr nobody reads never stalls a worker.

portico runs with its stderr on a pipe the test does not read while clients
send 10,000 requests a second that portico answers 404 itself (each one a
"client request rejected" diagnostic). Every request must be answered, /health
must answer promptly throughout, and when the pipe is read at last the
rate-limited lines and their once-a-second summaries account for every
rejected request. Before, each 4xx wrote to stderr synchronously from the
worker: after 64 KiB nobody read, every worker blocked.
"""
import fcntl
import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import RawConn, free_port, make_config, port_accepts, stop_pid

RATE = 10000            # requests a second
SECONDS = 3
BATCH = 50              # pipelined per connection per round
CONNS = 4
F_SETPIPE_SZ = 1031


def config(port, admin_port, up_addr, level=None):
    extra = 'admin: { listen: "127.0.0.1:%d" }' % admin_port
    if level:
        extra += "\nlog_level: %s" % level
    # only Host app.local has a route: any other host is answered 404 by portico
    return make_config(port, {"app": {"servers": [up_addr]}},
                       routes=[{"host": "app.local", "prefix": "/", "upstream": "app"}],
                       extra=extra)


class Started:
    """portico with stderr (and stdout) on the write end of `wfd`."""

    def __init__(self, binary, cfg_text, tmp_path, port, wfd):
        path = tmp_path / "flood.yaml"
        path.write_text(cfg_text)
        self.proc = subprocess.Popen([binary, "-c", str(path)], stdin=subprocess.DEVNULL,
                                     stdout=wfd, stderr=wfd)
        deadline = time.time() + 10
        while not port_accepts(port):
            assert self.proc.poll() is None, "portico exited at start: %s" % self.proc.returncode
            assert time.time() < deadline, "portico did not accept within 10s"
            time.sleep(0.02)

    def stop(self):
        return stop_pid(self.proc)


def flood(port, rate=RATE, seconds=SECONDS):
    """Pipelined 404s at `rate` a second over CONNS keep-alive connections.
    Returns (sent, answered 404, wall seconds)."""
    req = b"GET /x HTTP/1.1\r\nHost: nope.local\r\n\r\n"
    socks = []
    for _ in range(CONNS):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(s)
    sent = answered = 0
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < seconds:
            for s in socks:
                s.sendall(req * BATCH)
            sent += BATCH * CONNS
            for s in socks:
                got, tail = 0, b""
                while got < BATCH:
                    data = s.recv(65536)
                    assert data, "portico closed a flood connection"
                    buf = tail + data
                    got += buf.count(b"HTTP/1.1 404 ")
                    tail = buf[-16:]
                    # a status line cut at the boundary is counted once: keep
                    # only a tail too short to hold a whole one
                    if b"HTTP/1.1 404 " in tail:
                        tail = b""
                answered += got
            ahead = sent / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
    finally:
        for s in socks:
            s.close()
    return sent, answered, time.monotonic() - t0


class HealthPoller(threading.Thread):
    def __init__(self, admin_port):
        super().__init__(daemon=True)
        self.admin_port, self.results, self.stop_ev = admin_port, [], threading.Event()

    def run(self):
        while not self.stop_ev.is_set():
            t0 = time.monotonic()
            try:
                with RawConn(self.admin_port, timeout=3) as c:
                    st = c.request("GET", "/health", host="a", headers=[("Connection", "close")]).status
            except Exception as e:      # noqa: BLE001 - recorded, asserted below
                st = repr(e)
            self.results.append((time.monotonic() - t0, st))
            self.stop_ev.wait(0.05)

    def check(self, max_latency=0.5):
        assert len(self.results) >= 10, self.results
        bad = [r for r in self.results if r[1] != 200 or r[0] > max_latency]
        assert not bad, "%d of %d /health polls slow or failed: %r" % (
            len(bad), len(self.results), bad[:5])


def metric(admin_port, name):
    with RawConn(admin_port) as c:
        text = c.request("GET", "/metrics", host="a").body.decode()
    m = re.search(r"^%s (\d+)$" % name, text, re.M)
    assert m, name
    return int(m.group(1))


def read_all(rfd, settle=0.3):
    """Everything in the pipe, until nothing more arrives for `settle` s."""
    os.set_blocking(rfd, False)
    out = bytearray()
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < settle:
        try:
            d = os.read(rfd, 1 << 20)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        if not d:
            break
        out += d
        quiet_since = time.monotonic()
    return out.decode("utf-8", "replace")


def test_rejected_flood_is_rate_limited_and_never_blocks(portico_bin, start_upstream, tmp_path):
    up = start_upstream("u1")
    port, admin = free_port(), free_port()
    rfd, wfd = os.pipe()
    p = Started(portico_bin, config(port, admin, up.address), tmp_path, port, wfd)
    os.close(wfd)
    try:
        poller = HealthPoller(admin)
        poller.start()
        try:
            sent, answered, secs = flood(port)
        finally:
            poller.stop_ev.set()
            poller.join()
        assert answered == sent, (answered, sent)
        assert sent / secs >= 0.8 * RATE, "only %.0f requests/s" % (sent / secs)
        poller.check()
        time.sleep(1.5)         # the last window's summary is written within a second
        assert metric(admin, "portico_log_lines_dropped_total") == 0
        suppressed = metric(admin, "portico_log_lines_suppressed_total")
        text = read_all(rfd)
    finally:
        rc = p.stop()
        os.close(rfd)
    assert rc == 0, rc
    plain = len(re.findall(r" info client request rejected: 404 no route$", text, re.M))
    summaries = [int(n) for n in re.findall(
        r" info suppressed (\d+) similar lines in 1s \(more than 10/s from \S+\.c:\d+\), "
        r"e\.g\.: client request rejected: 404 no route$", text, re.M)]
    assert summaries, text[-3000:]
    # every rejected request is either a line or counted in a summary
    assert plain + sum(summaries) == sent, (plain, sum(summaries), sent)
    assert sum(summaries) == suppressed
    # at most 10 lines a second (and a window boundary) got through
    assert plain <= 10 * (secs + 2), plain


def test_stderr_nobody_reads_stalls_nothing(portico_bin, start_upstream, tmp_path):
    """The pipe is full before portico starts and is never read: start, the
    flood, /health and a graceful stop all go on regardless."""
    up = start_upstream("u1")
    port, admin = free_port(), free_port()
    rfd, wfd = os.pipe()
    fcntl.fcntl(wfd, F_SETPIPE_SZ, 4096)
    os.set_blocking(wfd, False)
    try:
        while True:
            os.write(wfd, b"x" * 4096)
    except BlockingIOError:
        pass
    os.set_blocking(wfd, True)      # what portico gets is a plain, blocking, full pipe
    p = Started(portico_bin, config(port, admin, up.address, level="debug"), tmp_path, port, wfd)
    os.close(wfd)
    try:
        poller = HealthPoller(admin)
        poller.start()
        try:
            sent, answered, secs = flood(port, seconds=2)
        finally:
            poller.stop_ev.set()
            poller.join()
        assert answered == sent, (answered, sent)
        poller.check()
        # proxied requests (debug level) still go through
        with RawConn(port) as c:
            assert c.request("GET", "/count", host="app.local").status == 200
        # SIGTERM with stderr still stuck: a clean, prompt exit
        t0 = time.monotonic()
        p.proc.send_signal(signal.SIGTERM)
        rc = p.proc.wait(10)
        assert rc == 0 and time.monotonic() - t0 < 5, (rc, time.monotonic() - t0)
    finally:
        p.stop()
        os.close(rfd)


def test_log_level_from_config_and_reload(portico_bin, start_upstream, tmp_path):
    """log_level: warn hides the info lines; a reload to info shows them."""
    up = start_upstream("u1")
    port, admin = free_port(), free_port()
    rfd, wfd = os.pipe()
    cfg = config(port, admin, up.address, level="warn")
    p = Started(portico_bin, cfg, tmp_path, port, wfd)
    os.close(wfd)
    try:
        def reject():
            with RawConn(port) as c:
                assert c.request("GET", "/", host="nope.local").status == 404
        reject()
        time.sleep(0.3)
        assert "client request rejected" not in read_all(rfd)
        (tmp_path / "flood.yaml").write_text(config(port, admin, up.address, level="info"))
        with RawConn(admin) as c:
            assert c.request("POST", "/reload", host="a").status == 200
        reject()
        time.sleep(0.3)
        assert re.search(r" info client request rejected: 404 no route$", read_all(rfd), re.M)
        # and by SIGHUP, back to error
        (tmp_path / "flood.yaml").write_text(config(port, admin, up.address, level="error"))
        p.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        read_all(rfd)
        reject()
        time.sleep(0.3)
        assert "client request rejected" not in read_all(rfd)
    finally:
        assert p.stop() == 0
        os.close(rfd)
