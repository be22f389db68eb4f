"""Graceful shutdown: SIGTERM stops accepting, lets requests in flight
finish, closes idle connections and exits 0; shutdown_timeout bounds it."""

import signal
import socket
import threading
import time

from conftest import RawConn, build_request, wait_for


def _connect_refused(port):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=0.5)
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    s.close()
    return False


def _in_flight(port, path, out):
    try:
        with RawConn(port, timeout=15) as c:
            c.send(build_request("GET", path))
            r, _ = c.read_final()
            out["resp"] = r
            try:
                out["tail"] = c.wait_closed(5)
                out["closed"] = True
            except AssertionError:
                out["closed"] = False
    except Exception as e:  # reported by the test
        out["error"] = repr(e)


def test_sigterm_lets_request_finish(make_proxy):
    p = make_proxy(limits={"header_timeout": "5s", "idle_timeout": "30s"})
    out = {}
    t = threading.Thread(target=_in_flight, args=(p.port, "/slow?delay=2", out), daemon=True)
    t.start()
    assert wait_for(lambda: p.up.requests(), 3), "request did not reach the upstream"
    t0 = time.time()
    p.portico.signal(signal.SIGTERM)
    # new connections are refused promptly
    assert wait_for(lambda: _connect_refused(p.port), 1.0, 0.05), "still accepting after SIGTERM"
    assert p.portico.alive(), "exited with a request in flight"
    t.join(10)
    assert "error" not in out, out
    r = out["resp"]
    assert r.status == 200 and r.body == b"slept 2\n"
    assert out["closed"], "connection not closed after the last response while draining"
    p.portico.expect_exit = True
    rc = p.portico.proc.wait(10)
    assert rc == 0, "exit status %s" % rc
    assert time.time() - t0 < 5


def test_sigterm_closes_idle_connections_and_exits_0(make_proxy):
    p = make_proxy(limits={"header_timeout": "5s", "idle_timeout": "60s"})
    idle = RawConn(p.port)
    assert idle.request("GET", "/health").status == 200
    t0 = time.time()
    p.portico.expect_exit = True
    p.portico.signal(signal.SIGTERM)
    idle.wait_closed(3)
    idle.close()
    rc = p.portico.proc.wait(5)
    assert rc == 0
    assert time.time() - t0 < 3, "idle keep-alive connection delayed shutdown"


def test_sigint_is_graceful_too(make_proxy):
    p = make_proxy()
    assert p.get("/health").status == 200
    p.portico.expect_exit = True
    p.portico.signal(signal.SIGINT)
    assert p.portico.proc.wait(5) == 0


def test_shutdown_timeout_bounds_drain(start_upstream, start_portico):
    up = start_upstream("u1")
    p = start_portico(upstreams={"app": {"servers": [up.address], "response_timeout": "30s"}},
                      shutdown_timeout="1s")
    out = {}
    t = threading.Thread(target=_in_flight, args=(p.port, "/slow?delay=10", out), daemon=True)
    t.start()
    assert wait_for(lambda: up.requests(), 3)
    t0 = time.time()
    p.expect_exit = True
    p.signal(signal.SIGTERM)
    rc = p.proc.wait(6)
    elapsed = time.time() - t0
    assert 0.8 <= elapsed <= 3.5, "shutdown_timeout 1s, exited after %.1fs" % elapsed
    # a bounded drain is still a graceful stop: exit status 0, not a crash
    assert rc == 0, "exit status %s after the shutdown timeout" % rc
    t.join(6)
    assert not t.is_alive(), "the client is still waiting after portico exited"
    # the unfinished request was cut off: the connection closed with nothing
    # on it (no fake 200, no half a response)
    assert "resp" not in out, out
    assert out.get("error", "").startswith("Closed(") and "buffered: b''" in out["error"], out


def test_keepalive_client_gets_close_on_next_response(make_proxy):
    """A keep-alive client whose request is in flight at SIGTERM gets its
    response with Connection: close (or a close right after it)."""
    p = make_proxy(limits={"idle_timeout": "30s"})
    with RawConn(p.port, timeout=10) as c:
        c.send(build_request("GET", "/slow?delay=1"))
        assert wait_for(lambda: p.up.requests(), 3)
        p.portico.expect_exit = True
        p.portico.signal(signal.SIGTERM)
        r, _ = c.read_final()
        assert r.status == 200
        if "close" not in (r.header("Connection") or "").lower():
            c.wait_closed(3)
    assert p.portico.proc.wait(5) == 0
