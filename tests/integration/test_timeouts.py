"""Timeouts and upstream failures."""

import errno
import select
import socket
import threading
import time

import pytest

from conftest import RawConn, build_request, free_port, status_of, wait_for


@pytest.fixture
def tp(make_proxy):
    return make_proxy(limits={"header_timeout": "1s", "idle_timeout": "1500ms", "body_timeout": "1s"},
                      upstream_opts={"connect_timeout": "1s", "response_timeout": "1s"})


def test_slow_header_gets_408(tp):
    with tp.conn() as c:
        t0 = time.time()
        c.send(b"GET /echo HTTP/1.1\r\nHost: test.local\r\nX-Half: ")
        data = c.wait_closed(5)
        elapsed = time.time() - t0
    assert status_of(data)[:1] == [408], data[:200]
    assert data.startswith(b"HTTP/1.1 408 "), data[:200]
    assert 0.7 <= elapsed <= 3.0, elapsed
    assert tp.up.stats()["bytes_in"] == 0


def test_header_timeout_is_total_not_per_read(tp):
    """Dribbling one byte every 100 ms does not extend header_timeout (1s):
    portico answers 408 and closes about a second after the first byte."""
    with tp.conn() as c:
        t0 = time.time()
        c.send(b"GET /echo HTTP/1.1\r\n")
        acted_at = None
        for ch in b"Host: test.local\r\nX-Slow: " + b"a" * 100:
            try:
                c.send(bytes([ch]))
            except (BrokenPipeError, ConnectionResetError):
                acted_at = time.time() - t0
                break
            c.sock.settimeout(0.1)
            try:
                c.sock.recv(1, socket.MSG_PEEK)     # the 408, or EOF: portico acted
                acted_at = time.time() - t0
                break
            except socket.timeout:
                pass
        assert acted_at is not None, "still reading the head after %.1fs" % (time.time() - t0)
        data = c.wait_closed(3)
    assert 0.7 <= acted_at <= 2.5, "header_timeout 1s, acted after %.1fs" % acted_at
    assert status_of(data) == [408], data[:200]


def test_no_408_before_header_timeout(tp):
    with tp.conn() as c:
        c.send(b"GET /echo HTTP/1.1\r\nHost: test.local\r\n")
        time.sleep(0.5)
        c.send(b"\r\n")
        r, _ = c.read_final()
        assert r.status == 200


def test_idle_keepalive_closed(tp):
    with tp.conn() as c:
        assert c.request("GET", "/echo").status == 200
        t0 = time.time()
        data = c.wait_closed(5)
        elapsed = time.time() - t0
    # a silent close is expected; a 408 is tolerated, nothing else
    assert data == b"" or status_of(data) == [408], data[:200]
    assert 1.0 <= elapsed <= 3.5, elapsed


def test_idle_timeout_on_fresh_connection(tp):
    """A connection that never sends a byte is closed (by header_timeout or
    idle_timeout, whichever portico applies), without a response or with 408."""
    with tp.conn() as c:
        t0 = time.time()
        data = c.wait_closed(5)
        elapsed = time.time() - t0
    assert data == b"" or status_of(data) == [408], data[:200]
    assert elapsed <= 3.5, elapsed


def test_activity_keeps_connection_open(tp):
    with tp.conn() as c:
        for _ in range(4):
            assert c.request("GET", "/health").status == 200
            time.sleep(0.8)        # less than idle_timeout each time
        assert c.request("GET", "/health").status == 200


def test_slow_body_gets_closed(tp):
    """body_timeout 1s: a client that stops sending its body is cut off
    (408 or close) and the upstream does not get a complete request."""
    with tp.conn() as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: test.local\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        t0 = time.time()
        data = c.wait_closed(5)
        elapsed = time.time() - t0
    # the response head was not sent yet: a clean 408, not just a close
    assert status_of(data) == [408], data[:200]
    assert elapsed <= 3.5, elapsed
    time.sleep(0.2)
    assert tp.up.requests() == []


def test_upstream_connect_refused_502(start_portico):
    dead = free_port()     # nothing listens there
    p = start_portico(upstreams={"app": {"servers": ["127.0.0.1:%d" % dead], "connect_timeout": "1s",
                                         "response_timeout": "2s"}})
    with RawConn(p.port) as c:
        t0 = time.time()
        r = c.request("GET", "/echo")
        assert r.status == 502
        assert time.time() - t0 < 2
        # the client connection either survives the upstream error or is
        # announced as closing
        if "close" in (r.header("Connection") or "").lower():
            c.wait_closed(2)
        else:
            assert c.request("GET", "/echo").status == 502
    with RawConn(p.port) as c:
        assert c.request("GET", "/echo").status == 502


def test_upstream_never_answers_504(tp):
    with tp.conn() as c:
        t0 = time.time()
        r = c.request("GET", "/hang")
        elapsed = time.time() - t0
    assert r.status == 504
    assert 0.8 <= elapsed <= 3.0, elapsed
    # portico gave up on that upstream connection
    assert tp.up.wait_event("hang_closed", 3), "portico did not close the hung upstream connection"


def test_upstream_stalls_mid_body(start_portico):
    """response_timeout also applies between reads: an upstream that stops
    half way through a body makes portico abort the client connection (the
    status line is already out, so it cannot send a 504)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(10)
    held = []

    def serve():
        try:
            s, _ = srv.accept()
        except OSError:
            return
        held.append(s)
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = s.recv(65536)
            if not d:
                return
            buf += d
        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"a" * 100)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        p = start_portico(upstreams={"app": {"servers": ["127.0.0.1:%d" % srv.getsockname()[1]],
                                             "connect_timeout": "1s", "response_timeout": "1s"}})
        with RawConn(p.port) as c:
            c.send(build_request("GET", "/x"))
            t0 = time.time()
            r = c.read_head()
            assert r.status == 200
            got = bytes(c.buf) + c.wait_closed(5)
            elapsed = time.time() - t0
        assert len(got) < 1000, "a 1000-byte body arrived although the upstream sent 100"
        assert 0.8 <= elapsed <= 3.5, elapsed
    finally:
        for s in held:
            s.close()
        srv.close()


def test_client_disconnect_closes_upstream(tp):
    c = RawConn(tp.port)
    c.send(build_request("GET", "/slow?delay=4"))
    assert wait_for(lambda: tp.up.requests(), 2), "request did not reach the upstream"
    time.sleep(0.2)
    t0 = time.time()
    c.close()
    ev = tp.up.wait_event("slow_client_closed", 3)
    assert ev, "upstream never saw portico close its connection (events: %r)" % tp.up.events()
    assert time.time() - t0 < 3
    assert ev[0]["after"] < 3.5


def _fill_backlog(port, max_tries=64):
    """Connect to a listener with backlog 0 that never accepts until a new
    connect does not complete. Returns the sockets, or None if the kernel
    keeps completing handshakes."""
    socks = []
    for _ in range(max_tries):
        s = socket.socket()
        s.setblocking(False)
        rc = s.connect_ex(("127.0.0.1", port))
        socks.append(s)
        if rc == 0:
            continue
        if rc != errno.EINPROGRESS:
            break
        _, w, _ = select.select([], [s], [], 0.3)
        if not w:
            return socks          # this one hangs: the queue is full
    for s in socks:
        s.close()
    return None


def test_upstream_connect_timeout(start_portico):
    """connect_timeout 1s against a listener whose accept queue is full (the
    kernel drops SYNs): the client gets 502 or 504 after about 1s."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    port = lst.getsockname()[1]
    filler = _fill_backlog(port)
    if filler is None:
        lst.close()
    # the test's premise: without a hanging connect it would test nothing
    assert filler is not None, "could not make a loopback connect hang (accept queue never filled)"
    try:
        p = start_portico(upstreams={"app": {"servers": ["127.0.0.1:%d" % port], "connect_timeout": "1s",
                                             "response_timeout": "10s"}})
        with RawConn(p.port, timeout=15) as c:
            t0 = time.time()
            r = c.request("GET", "/echo")
            elapsed = time.time() - t0
        assert r.status in (502, 504), r
        assert 0.8 <= elapsed <= 4.0, "connect_timeout 1s, answered after %.1fs" % elapsed
    finally:
        for s in filler:
            s.close()
        lst.close()
