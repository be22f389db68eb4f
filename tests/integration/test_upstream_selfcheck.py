"""Self-check of the test upstream and the raw client, without portico.

If these fail, the harness is broken, not portico.
"""

import base64
import hashlib
import os
import socket
import time

from conftest import RawConn, build_request, pattern_bytes, pattern_sha256, ws_frame, sha256


def test_echo_content_length(start_upstream):
    up = start_upstream("s1")
    with RawConn(up.port) as c:
        r = c.request("POST", "/echo", headers=[("X-A", "1")], body=b"hello")
        assert r.status == 200
        j = r.json()
        assert j["method"] == "POST" and j["path"] == "/echo"
        assert ["X-A", "1"] in j["headers"]
        assert j["body_len"] == 5 and j["body_sha256"] == sha256(b"hello")
        assert r.header("X-Upstream-Id") == "s1"


def test_echo_chunked_and_keepalive(start_upstream):
    up = start_upstream("s1")
    with RawConn(up.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5;a=b\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n")
        r, _ = c.read_final()
        j = r.json()
        assert j["chunked"] and j["body_len"] == 11 and j["body_sha256"] == sha256(b"hello world")
        assert j["chunk_exts"] == ["a=b"] and j["trailers"] == [["X-T", "1"]]
        r = c.request("GET", "/count")
        assert r.json()["conn_requests"] == 2
    st = up.stats()
    assert st["requests"] == 2 and st["connections"] == 1


def test_bytes_chunked_close(start_upstream):
    up = start_upstream("s1")
    n = 300001
    with RawConn(up.port) as c:
        r = c.request("GET", "/bytes?n=%d" % n)
        assert int(r.header("content-length")) == n and sha256(r.body) == pattern_sha256(n)
        r = c.request("GET", "/chunked?n=%d" % n)
        assert r.chunked and sha256(r.body) == pattern_sha256(n)
        assert r.trailers == [("X-Checksum", pattern_sha256(n))]
        r = c.request("GET", "/close?n=%d" % n)
        assert r.header("content-length") is None and sha256(r.body) == pattern_sha256(n)


def test_status_early_hints_head(start_upstream):
    up = start_upstream("s1")
    with RawConn(up.port) as c:
        r = c.request("GET", "/status?code=304&cl=10")
        assert r.status == 304 and r.header("content-length") == "10"
        r = c.request("GET", "/status?code=204")
        assert r.status == 204
        c.send(build_request("GET", "/early-hints"))
        r, infos = c.read_final()
        assert [i.status for i in infos] == [103] and r.status == 200 and r.body == b"final\n"
        r = c.request("HEAD", "/bytes?n=100")
        assert r.header("content-length") == "100" and r.body == b""
        r = c.request("GET", "/health")
        assert r.body == b"ok\n"


def test_http10_and_expect(start_upstream):
    up = start_upstream("s1")
    with RawConn(up.port) as c:
        c.send(b"GET /echo HTTP/1.0\r\n\r\n")
        r, _ = c.read_final()
        assert r.status == 200
        c.wait_closed(2)
    with RawConn(up.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
        r = c.read_response()
        assert r.status == 100
        c.send(b"abc")
        r = c.read_response()
        assert r.status == 200 and r.json()["body_len"] == 3


def test_slow_and_hang_detect_close(start_upstream):
    up = start_upstream("s1")
    c = RawConn(up.port)
    c.send(build_request("GET", "/slow?delay=5"))
    time.sleep(0.3)
    c.close()
    ev = up.wait_event("slow_client_closed", 2)
    assert ev and ev[0]["after"] < 2
    c = RawConn(up.port)
    c.send(build_request("GET", "/hang"))
    time.sleep(0.3)
    c.close()
    assert up.wait_event("hang_closed", 3)


def test_websocket(start_upstream):
    up = start_upstream("s1")
    key = base64.b64encode(os.urandom(16)).decode()
    with RawConn(up.port) as c:
        c.send(build_request("GET", "/ws", headers=[
            ("Upgrade", "websocket"), ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13")]))
        r = c.read_head()
        assert r.status == 101
        exp = base64.b64encode(hashlib.sha1(key.encode() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        assert r.header("sec-websocket-accept") == exp.decode()
        c.send(ws_frame(1, b"hi", mask_key=b"abcd"))
        while len(c.buf) < 4:
            c._fill()
        assert bytes(c.buf[:4]) == b"\x81\x02hi"


def test_control_counts_bytes(start_upstream):
    up = start_upstream("s1")
    s = socket.create_connection(("127.0.0.1", up.port))
    s.sendall(b"GET /partial HTTP/1.1\r\nHost")
    time.sleep(0.2)
    st = up.stats()
    assert st["connections"] == 1 and st["bytes_in"] == 27 and st["requests"] == 0
    s.close()
    up.reset()
    assert up.stats()["bytes_in"] == 0


def test_cacheable_endpoint(start_upstream):
    """/cacheable (the cache's tests): fields from the query, 304 for matching
    conditionals, per-path counts and overrides on the control port."""
    up = start_upstream("s1")
    with RawConn(up.port) as c:
        r = c.request("GET", "/a/cacheable?cc=max-age%3D60&etag=v1&lm=1000&vary=Accept-Language"
                             "&h=Cache-Tag:+x+y", headers=[("Accept-Language", "fr")])
        assert r.status == 200 and r.header("cache-control") == "max-age=60"
        assert r.header("etag") == '"v1"' and r.header("cache-tag") == "x y"
        assert r.header("last-modified") == "Thu, 01 Jan 1970 00:16:40 GMT"
        assert r.header("date") and r.header("x-origin-count") == "1"
        assert r.json()["vary"] == {"Accept-Language": "fr"} and r.json()["n"] == 1
        r = c.request("GET", "/a/cacheable?etag=v1", headers=[("If-None-Match", '"z", W/"v1"')])
        assert r.status == 304 and r.header("etag") == '"v1"'
        r = c.request("GET", "/a/cacheable?lm=1000",
                      headers=[("If-Modified-Since", "Thu, 01 Jan 1970 00:16:40 GMT")])
        assert r.status == 304
        r = c.request("GET", "/a/cacheable?lm=1000",
                      headers=[("If-Modified-Since", "Thu, 01 Jan 1970 00:16:39 GMT")])
        assert r.status == 200
        r = c.request("GET", "/a/cacheable?n=1000&status=206")
        assert r.status == 206 and r.body == pattern_bytes(1000)
    assert up._ctl("/set?status=503&cc=no-store") == {"overrides": {"status": ["503"],
                                                                    "cc": ["no-store"]}}
    with RawConn(up.port) as c:
        r = c.request("GET", "/b/cacheable?cc=max-age%3D5")
        assert r.status == 503 and r.header("cache-control") == "no-store"
    up._ctl("/set?clear=1&fail=500")
    with RawConn(up.port) as c:
        r = c.request("GET", "/b/cacheable?cc=max-age%3D5")
        assert r.status == 500 and r.header("cache-control") is None and r.header("date") is None
    counts = up._ctl("/counts")
    assert counts["paths"] == {"/a/cacheable": 5, "/b/cacheable": 2} and counts["total"] == 7
    assert counts["targets"]["/b/cacheable?cc=max-age%3D5"] == 2
    up.reset()
    assert up._ctl("/counts")["total"] == 0 and up._ctl("/set") == {"overrides": {}}
