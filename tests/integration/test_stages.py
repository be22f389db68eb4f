"""Stages (#10): the `headers:` stage on real portico processes, and a test-only
stage (tests/stage/test_stage.c, built into build/tests/portico-stagetest)
that answers from memory, parks and resumes requests, transforms and watches
bodies, so that the stage interface is proven before the cache depends on it."""

import hashlib
import os
import socket
import threading
import time

import pytest

from conftest import ROOT, Portico, wait_for, RawConn, build_request, free_port, make_config, raw_exchange, status_of


@pytest.fixture
def stagetest_bin():
    b = os.environ.get("PORTICO_STAGETEST_BIN") or os.path.join(ROOT, "build", "tests",
                                                               "portico-stagetest")
    assert os.path.isfile(b), "%s is missing: `make integration` builds it" % b
    return b


@pytest.fixture
def stage_proxy(stagetest_bin, start_upstream, tmp_path, request):
    up = start_upstream("u1")
    port = free_port()
    routes = [{"prefix": p, "upstream": "app"} for p in ("/answer/", "/wait/", "/upper/", "/watch/", "/")]
    cfg = make_config(port, {"app": {"servers": [up.address], "response_timeout": "3s"}},
                      routes=routes, workers=1)
    log = tmp_path / "stage.log"
    os.environ["STAGETEST_LOG"] = str(log)
    try:
        p = Portico(stagetest_bin, cfg, str(tmp_path), port, "stagetest")
    finally:
        del os.environ["STAGETEST_LOG"]
    request.node._porticos = [p]
    yield p, up, log
    rc = p.stop()
    assert rc == 0, "portico-stagetest exited with %s" % rc


def fnv1a(data):
    h = 1469598103934665603
    for b in data:
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def test_answer_from_memory_never_reaches_the_upstream(stage_proxy):
    p, up, _ = stage_proxy
    with RawConn(p.port) as c:
        for _ in range(3):                  # keep-alive: answered again and again
            r = c.request("GET", "/answer/x")
            assert r.status == 200 and r.body == b"answered from memory\n"
            assert r.header("x-stage") == "answer" and r.header("content-length") == "21"
        r = c.request("HEAD", "/answer/x")
        assert r.status == 200 and r.header("content-length") == "21" and r.body == b""
        r = c.request("GET", "/echo")       # the same connection goes on to the upstream
        assert r.status == 200
    assert [q["target"] for q in up.requests()] == ["/echo"]


def test_answer_to_a_request_with_a_body(stage_proxy):
    """A body that has all arrived is dropped and the connection kept; one
    still on its way is not waited for: the answer closes the connection."""
    p, up, _ = stage_proxy
    with RawConn(p.port) as c:
        r = c.request("POST", "/answer/x", body=b"x" * 1000)
        assert r.status == 200 and r.header("connection") is None
        assert c.request("GET", "/answer/y").status == 200
    got, closed = raw_exchange(p.port, b"POST /answer/x HTTP/1.1\r\nHost: t\r\n"
                                       b"Content-Length: 1000000\r\n\r\nonly this")
    assert status_of(got) == [200] and b"Connection: close" in got and closed
    assert up.requests() == []


def test_parked_requests_resume_and_reach_the_upstream(stage_proxy):
    p, up, log = stage_proxy
    conns = [RawConn(p.port) for _ in range(3)]
    for i, c in enumerate(conns):
        c.send(build_request("GET", "/wait/echo?n=%d" % i))
    time.sleep(0.3)
    assert up.requests() == []              # parked: nothing went upstream
    with RawConn(p.port) as c:
        r = c.request("GET", "/wait/release")
    assert r.body == b"released 3\n"
    for i, c in enumerate(conns):
        r, _ = c.read_final()
        assert r.status == 200 and r.json()["target"] == "/wait/echo?n=%d" % i
        c.close()
    assert sorted(q["target"] for q in up.requests()) == ["/wait/echo?n=%d" % i for i in range(3)]


def test_parked_requests_answered_instead(stage_proxy):
    p, up, _ = stage_proxy
    c = RawConn(p.port)
    c.send(build_request("GET", "/wait/x"))
    time.sleep(0.2)
    with RawConn(p.port) as r2:
        assert r2.request("GET", "/wait/answer").body == b"released 1\n"
    r, _ = c.read_final()
    assert r.status == 200 and r.header("x-stage") == "waited" and r.body == b"answered from memory\n"
    c.close()
    assert up.requests() == []


def test_a_client_that_goes_away_while_parked_leaves_the_wait(stage_proxy):
    p, up, log = stage_proxy
    c = RawConn(p.port)
    c.send(build_request("GET", "/wait/gone"))
    time.sleep(0.2)
    c.close()
    time.sleep(0.3)
    with RawConn(p.port) as r2:
        assert r2.request("GET", "/wait/release").body == b"released 0\n"
    assert wait_for(lambda: "wait 499" in log.read_text(), 5)   # on_end ran with the client gone
    assert p.alive()


def test_a_parked_request_times_out_with_the_upstream_timeout(stage_proxy):
    p, up, _ = stage_proxy
    with RawConn(p.port, timeout=6) as c:
        t0 = time.time()
        r = c.request("GET", "/wait/forever")
        assert r.status == 504 and 2.5 < time.time() - t0 < 5.5
    with RawConn(p.port) as r2:
        assert r2.request("GET", "/wait/release").body == b"released 0\n"


@pytest.mark.parametrize("path,version", [("/upper/bytes?n=300000", "HTTP/1.1"),
                                          ("/upper/chunked?n=200000", "HTTP/1.1"),
                                          ("/upper/bytes?n=5000", "HTTP/1.0")])
def test_transformed_body_streams(stage_proxy, path, version):
    p, up, _ = stage_proxy
    with RawConn(p.port, timeout=10) as c:
        c.send(build_request("GET", path, version=version))
        r, _ = c.read_final()
    n = int(path.split("n=")[1])
    from conftest import pattern_bytes
    want = bytes(b - 32 if 97 <= b <= 122 else b for b in pattern_bytes(n))
    assert r.status == 200 and r.header("x-transformed") == "upper"
    assert r.header("content-length") is None
    assert (r.header("transfer-encoding") == "chunked") == (version == "HTTP/1.1")
    assert len(r.body) == n and r.body == want


def test_watched_body_is_seen_whole(stage_proxy):
    p, up, log = stage_proxy
    from conftest import pattern_bytes
    for path, n in (("/watch/bytes?n=100000", 100000), ("/watch/chunked?n=70000", 70000),
                    ("/watch/status?code=204", 0)):
        with RawConn(p.port) as c:
            r = c.request("GET", path)
        assert len(r.body) == n
    # on_end runs after the response is written: wait for it, not for a guess
    watch_lines = lambda: [l for l in log.read_text().splitlines() if l.startswith("watch")]
    wait_for(lambda: len(watch_lines()) >= 3, 5)
    lines = watch_lines()
    assert len(lines) == 3, lines
    assert lines[0] == "watch 200 100000 %s" % fnv1a(pattern_bytes(100000))
    assert lines[1] == "watch 200 70000 %s" % fnv1a(pattern_bytes(70000))
    assert lines[2] == "watch 204 0 0000000000000000"


# ---------------------------------------------------------------- headers:

HEADERS_CFG = """
routes:
  - match: { prefix: /static/ }
    upstream: app
    headers:
      request:
        set: { X-Route: "${route}", X-Client: "client ${client_ip}" }
        remove: [ X-Secret ]
      response:
        set: { Cache-Control: "public, max-age=31536000, immutable" }
        default: { X-Frame-Options: DENY, X-Echo: "not-this" }
        add: { X-Request: "${request_id}" }
        remove: [ Server, X-Powered-By ]
  - match: { prefix: / }
    upstream: app
"""


@pytest.fixture
def headers_proxy(start_upstream, start_portico):
    up = start_upstream("u1")
    port = free_port()
    cfg = make_config(port, {"app": {"servers": [up.address]}}, routes=[])
    cfg = cfg.replace("routes:\n", HEADERS_CFG.strip() + "\n")
    return start_portico(cfg, port=port), up


def test_headers_stage(headers_proxy):
    p, up = headers_proxy
    with RawConn(p.port) as c:
        r = c.request("GET", "/static/echo?h=Server:gunicorn&h=X-Powered-By:php&h=Cache-Control:no-store",
                      headers=[("X-Secret", "s"), ("X-Route", "forged"), ("X-Request-Id", "rid-1")])
    sent = {}
    for n, v in r.json()["headers"]:
        sent.setdefault(n.lower(), []).append(v)
    assert sent["x-route"] == ["/static/"]
    assert sent["x-client"] == ["client 127.0.0.1"]
    assert "x-secret" not in sent
    assert r.header_all("cache-control") == ["public, max-age=31536000, immutable"]
    assert r.header("server") is None and r.header("x-powered-by") is None
    assert r.header("x-frame-options") == "DENY"
    assert r.header("x-echo") == "1"            # the upstream's value wins over a default
    assert r.header("x-request") == "rid-1"
    with RawConn(p.port) as c:                  # another route: untouched
        r = c.request("GET", "/echo?h=Server:gunicorn")
    assert r.header("server") == "gunicorn" and r.header("cache-control") is None


def test_headers_config_errors(portico_bin, tmp_path):
    import subprocess
    for bad, where in (('set: { "Bad Name": x }', "headers.request.set"),
                       ('set: { X-A: "${nope}" }', "unknown variable"),
                       ('drop: [ X ]', "unknown key"),
                       ('set: { X-Forwarded-For: 1.2.3.4 }', "portico's to write"),
                       ('remove: [ Content-Length ]', "portico's to write")):
        cfg = tmp_path / "bad.yaml"
        cfg.write_text(make_config(free_port(), {"app": {"servers": ["127.0.0.1:9"]}}, routes=[])
                       .replace("routes:\n", "routes:\n  - match: { prefix: / }\n    upstream: app\n"
                                "    headers:\n      request: { %s }\n" % bad))
        r = subprocess.run([portico_bin, "-t", "-c", str(cfg)], capture_output=True, timeout=10)
        out = (r.stdout + r.stderr).decode()
        assert r.returncode != 0 and where in out and "bad.yaml:" in out, out


# ---------------------------------------------------------------- security_headers

SEC_CFG = """
security_headers: { hide: [ Server, X-Powered-By ] }
trusted_proxies: [ "127.0.0.1" ]
routes:
  - match: { prefix: /embed/ }
    upstream: app
    security_headers: { X-Frame-Options: SAMEORIGIN, Content-Security-Policy: off }
  - match: { prefix: /raw/ }
    upstream: app
    security_headers: off
  - match: { prefix: /strict/ }
    upstream: app
    security_headers: { override: true }
    headers: { response: { set: { Referrer-Policy: no-referrer } } }
  - match: { prefix: / }
    upstream: app
"""


@pytest.fixture
def sec_proxy(start_upstream, start_portico):
    up = start_upstream("u1")
    port = free_port()
    cfg = make_config(port, {"app": {"servers": [up.address]}}, routes=[])
    cfg = cfg.replace("routes:\n", SEC_CFG.strip() + "\n")
    return start_portico(cfg, port=port)


def test_security_headers(sec_proxy):
    p = sec_proxy
    up_hdrs = "h=Server:gunicorn&h=X-Powered-By:php&h=X-Frame-Options:ALLOWALL"
    with RawConn(p.port) as c:
        r = c.request("GET", "/echo?" + up_hdrs)
        https = c.request("GET", "/echo", headers=[("X-Forwarded-Proto", "https")])
        embed = c.request("GET", "/embed/echo")
        raw = c.request("GET", "/raw/echo?h=Server:gunicorn")
        strict = c.request("GET", "/strict/echo?" + up_hdrs)
    assert r.header("x-content-type-options") == "nosniff"
    assert r.header("referrer-policy") == "strict-origin-when-cross-origin"
    assert "default-src 'self'" in r.header("content-security-policy")
    assert r.header("permissions-policy") and r.header("cross-origin-opener-policy") == "same-origin"
    assert r.header_all("x-frame-options") == ["ALLOWALL"]       # the upstream's value wins
    assert r.header("server") is None and r.header("x-powered-by") is None
    assert r.header("strict-transport-security") is None          # plain HTTP: no HSTS
    assert https.header("strict-transport-security") == "max-age=31536000; includeSubDomains"
    assert embed.header("x-frame-options") == "SAMEORIGIN"
    assert embed.header("content-security-policy") is None
    assert embed.header("x-content-type-options") == "nosniff"     # the rest from the top level
    assert raw.header("x-content-type-options") is None and raw.header("server") == "gunicorn"
    assert strict.header_all("x-frame-options") == ["DENY"]       # override: ours replaces theirs
    assert strict.header_all("referrer-policy") == ["no-referrer"]    # a headers: rule, not twice
