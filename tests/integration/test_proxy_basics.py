"""Proxying basics: methods, header rewriting, routing, persistence,
pipelining, 1xx, bodiless responses and body framing conversions."""

import re
import time
from urllib.parse import quote

import pytest

from conftest import RawConn, build_request, pattern_bytes, pattern_sha256, sha256


def hdr_values(headers, name):
    name = name.lower()
    return [v for n, v in headers if n.lower() == name]


def hdr_names(headers):
    return {n.lower() for n, _ in headers}


# ---------------------------------------------------------------- methods

def test_get(proxy):
    r = proxy.get("/echo?x=1")
    assert r.status == 200
    j = r.json()
    assert j["method"] == "GET"
    assert j["target"] == "/echo?x=1"
    assert j["body_len"] == 0
    assert r.header("X-Upstream-Id") == "u1"


def test_post_content_length(proxy):
    body = bytes(range(256)) * 4000  # 1 MB-ish, under the default max_body
    with proxy.conn() as c:
        r = c.request("POST", "/echo", body=body, headers=[("Content-Type", "application/octet-stream")])
    assert r.status == 200
    j = r.json()
    assert j["method"] == "POST"
    assert j["body_len"] == len(body)
    assert j["body_sha256"] == sha256(body)


def test_post_empty_body(proxy):
    with proxy.conn() as c:
        r = c.request("POST", "/echo", headers=[("Content-Length", "0")])
        assert r.status == 200 and r.json()["body_len"] == 0
        # the connection is still usable: no body bytes were expected
        assert c.request("GET", "/health").status == 200


def test_head_has_no_body(proxy):
    with proxy.conn() as c:
        r = c.request("HEAD", "/bytes?n=1000")
        assert r.status == 200
        assert r.header("Content-Length") == "1000"
        # any body bytes would be parsed as the next status line and fail
        r2 = c.request("GET", "/echo")
        assert r2.status == 200 and r2.json()["method"] == "GET"
    assert proxy.up.requests()[0]["method"] == "HEAD"


def test_head_of_chunked_response(proxy):
    with proxy.conn() as c:
        r = c.request("HEAD", "/chunked?n=5000")
        assert r.status == 200
        r2 = c.request("GET", "/health")
        assert r2.status == 200 and r2.body == b"ok\n"


# ------------------------------------------------------------ hop-by-hop

def test_hop_by_hop_request_headers_removed(proxy):
    with proxy.conn() as c:
        r = c.request("GET", "/echo", headers=[
            ("Connection", "keep-alive, X-Secret, x-other"),
            ("X-Secret", "1"),
            ("X-Other", "2"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("TE", "trailers"),
            ("Upgrade", "websocket"),
            ("X-Keep", "yes"),
        ])
    assert r.status == 200
    h = r.json()["headers"]
    names = hdr_names(h)
    for gone in ("x-secret", "x-other", "keep-alive", "proxy-connection", "te", "upgrade"):
        assert gone not in names, "%s forwarded to the upstream: %r" % (gone, h)
    assert hdr_values(h, "X-Keep") == ["yes"]
    for v in hdr_values(h, "Connection"):
        toks = {t.strip().lower() for t in v.split(",")}
        assert not toks & {"x-secret", "x-other", "upgrade"}, v


def test_hop_by_hop_response_headers_removed(proxy):
    hs = ["Connection:X-Resp-Secret", "X-Resp-Secret:1", "Keep-Alive:timeout=5",
          "Proxy-Connection:keep-alive", "Upgrade:foo", "X-Resp-Keep:kept"]
    q = "&".join("h=" + quote(x) for x in hs)
    r = proxy.get("/echo?" + q)
    assert r.status == 200
    names = hdr_names(r.headers)
    for gone in ("x-resp-secret", "keep-alive", "proxy-connection", "upgrade"):
        assert gone not in names, "%s relayed to the client: %r" % (gone, r.headers)
    assert r.header("X-Resp-Keep") == "kept"
    for v in r.header_all("Connection"):
        assert "x-resp-secret" not in v.lower()


# --------------------------------------------------- forwarding headers

def test_x_forwarded_for_created(proxy):
    h = proxy.get("/echo").json()["headers"]
    assert hdr_values(h, "X-Forwarded-For") == ["127.0.0.1"]


def test_x_forwarded_for_appended_from_a_trusted_proxy(make_proxy):
    p = make_proxy(extra='trusted_proxies: [ "127.0.0.1" ]')
    h = p.get("/echo", headers=[("X-Forwarded-For", "203.0.113.7, 198.51.100.2")]).json()["headers"]
    xff = ", ".join(hdr_values(h, "X-Forwarded-For"))
    parts = [p.strip() for p in xff.split(",")]
    assert parts == ["203.0.113.7", "198.51.100.2", "127.0.0.1"], xff


def test_x_forwarded_for_replaced_from_anyone_else(proxy):
    """Without trusted_proxies a client's X-Forwarded-For is not believed."""
    h = proxy.get("/echo", headers=[("X-Forwarded-For", "203.0.113.7, 198.51.100.2")]).json()["headers"]
    assert hdr_values(h, "X-Forwarded-For") == ["127.0.0.1"]


def test_x_forwarded_proto_and_host(proxy):
    h = proxy.get("/echo", host="shop.example:8443").json()["headers"]
    assert hdr_values(h, "X-Forwarded-Proto") == ["http"]
    assert hdr_values(h, "X-Forwarded-Host") == ["shop.example:8443"]


def test_x_forwarded_proto_not_spoofable(proxy):
    h = proxy.get("/echo", headers=[("X-Forwarded-Proto", "https")]).json()["headers"]
    assert hdr_values(h, "X-Forwarded-Proto") == ["http"]


def test_via_on_request_and_response(proxy):
    r = proxy.get("/echo")
    via_up = ", ".join(hdr_values(r.json()["headers"], "Via"))
    assert "1.1 portico" in via_up, via_up
    via_down = ", ".join(r.header_all("Via"))
    assert "1.1 portico" in via_down, r.headers


def test_via_appended_to_existing(proxy):
    r = proxy.get("/echo", headers=[("Via", "1.0 fred")])
    via_up = ", ".join(hdr_values(r.json()["headers"], "Via"))
    assert "1.0 fred" in via_up and "1.1 portico" in via_up, via_up
    assert via_up.index("1.0 fred") < via_up.index("1.1 portico"), via_up


def test_request_id_generated(proxy):
    ids = []
    with proxy.conn() as c:
        for _ in range(3):
            h = c.request("GET", "/echo").json()["headers"]
            v = hdr_values(h, "X-Request-Id")
            assert len(v) == 1 and re.fullmatch(r"[0-9a-f]{32}", v[0]), h
            ids.append(v[0])
    ids.append(hdr_values(proxy.get("/echo").json()["headers"], "X-Request-Id")[0])
    assert len(set(ids)) == len(ids), ids


def test_request_id_passed_through(proxy):
    h = proxy.get("/echo", headers=[("X-Request-Id", "abc-123_XYZ")]).json()["headers"]
    assert hdr_values(h, "X-Request-Id") == ["abc-123_XYZ"]


def test_host_unchanged(proxy):
    j = proxy.get("/echo", host="MiXeD.Example:1234").json()
    assert hdr_values(j["headers"], "Host") == ["MiXeD.Example:1234"]


def test_end_to_end_request_headers_kept(proxy):
    hs = [("Accept", "text/html"), ("Cookie", "a=1; b=2"), ("X-Multi", "1"), ("X-Multi", "2"),
          ("Authorization", "Bearer t0k3n")]
    h = proxy.get("/echo", headers=hs).json()["headers"]
    for n, v in hs:
        if n != "X-Multi":
            assert hdr_values(h, n) == [v], (n, h)
    assert ", ".join(hdr_values(h, "X-Multi")) in ("1, 2", "1,2")


def test_response_headers_relayed(proxy):
    hs = ["X-Custom:hello world", "Set-Cookie:a=1; Path=/", "Set-Cookie:b=2", "Cache-Control:no-store"]
    r = proxy.get("/echo?" + "&".join("h=" + quote(x) for x in hs))
    assert r.status == 200
    assert r.header("X-Custom") == "hello world"
    assert r.header_all("Set-Cookie") == ["a=1; Path=/", "b=2"]
    assert r.header("Cache-Control") == "no-store"
    assert r.header("Content-Type") == "application/json"
    assert r.header("X-Upstream-Id") == "u1"


def test_upstream_status_relayed(proxy):
    for code in (201, 404, 418, 500, 503):
        r = proxy.get("/status?code=%d" % code)
        assert r.status == code
        assert r.body == b"status %d\n" % code


# ---------------------------------------------------------------- routing

@pytest.fixture
def routed(start_upstream, start_portico):
    ua, ub, uc = start_upstream("ua"), start_upstream("ub"), start_upstream("uc")
    ups = {name: {"servers": [u.address], "keepalive": 4, "connect_timeout": "2s",
                  "response_timeout": "5s"} for name, u in (("a", ua), ("b", ub), ("c", uc))}
    routes = [
        {"host": "api.example", "prefix": "/api/", "upstream": "a"},
        {"host": "*.wild.example", "upstream": "b"},
        {"prefix": "/static/", "upstream": "c"},
        {"prefix": "/api/", "upstream": "b"},
    ]
    p = start_portico(upstreams=ups, routes=routes)
    return p, (ua, ub, uc)


def _who(port, host, path):
    with RawConn(port) as c:
        r = c.request("GET", path, host=host)
    return r.status, r.header("X-Upstream-Id")


def test_routes_host_and_prefix(routed):
    p, _ = routed
    assert _who(p.port, "api.example", "/api/count") == (200, "ua")
    assert _who(p.port, "other.example", "/api/count") == (200, "ub")   # host of route 1 differs
    assert _who(p.port, "x.wild.example", "/anything") == (200, "ub")
    assert _who(p.port, "a.b.wild.example", "/api/x") == (200, "ub")
    assert _who(p.port, "api.example", "/static/app.js") == (200, "uc")  # prefix of route 1 differs
    assert _who(p.port, "api.example", "/api/") == (200, "ua")


def test_routes_first_match_wins(routed):
    p, _ = routed
    # matches route 1 (api.example + /api/) and route 4 (/api/): route 1 wins
    assert _who(p.port, "api.example", "/api/v1/count") == (200, "ua")
    # matches route 2 (*.wild.example) and route 3 (/static/): route 2 wins
    assert _who(p.port, "s.wild.example", "/static/x") == (200, "ub")


def test_no_route_is_404(routed):
    p, ups = routed
    assert _who(p.port, "other.example", "/")[0] == 404
    assert _who(p.port, "other.example", "/apix")[0] == 404     # "/api/" is a prefix, not "/api"
    assert _who(p.port, "wild.example", "/x")[0] == 404          # "*.wild.example" needs a label
    time.sleep(0.1)
    for u in ups:
        assert u.stats()["requests"] == 0


def test_routes_host_port_and_case(routed):
    """The Host header's port and letter case do not affect route matching."""
    p, _ = routed
    assert _who(p.port, "api.example:8080", "/api/count") == (200, "ua")
    assert _who(p.port, "API.Example", "/api/count") == (200, "ua")


def test_weighted_servers_both_used(start_upstream, start_portico):
    u1, u2 = start_upstream("w1"), start_upstream("w2")
    p = start_portico(upstreams={"app": {"servers": [u1.address, (u2.address, 2)], "keepalive": 4}})
    seen = []
    for _ in range(12):
        with RawConn(p.port) as c:
            seen.append(c.request("GET", "/count", headers=[("Connection", "close")]).header("X-Upstream-Id"))
    assert set(seen) == {"w1", "w2"}, seen
    assert seen.count("w2") > seen.count("w1"), seen


# ------------------------------------------------------------ persistence

def test_http10_client_gets_response_and_close(proxy):
    with proxy.conn() as c:
        c.send(b"GET /echo HTTP/1.0\r\n\r\n")
        r, _ = c.read_final()
        assert r.status == 200
        assert r.json()["method"] == "GET"
        assert r.header("Transfer-Encoding") is None
        c.wait_closed(3)


def test_http10_client_with_host(proxy):
    with proxy.conn() as c:
        c.send(b"GET /echo HTTP/1.0\r\nHost: test.local\r\n\r\n")
        r, _ = c.read_final()
        assert r.status == 200
        c.wait_closed(3)


def test_http10_client_gets_unchunked_body(proxy):
    n = 200000
    with proxy.conn() as c:
        c.send(b"GET /chunked?n=%d HTTP/1.0\r\nHost: test.local\r\n\r\n" % n)
        r, _ = c.read_final()
        assert r.status == 200
        assert r.header("Transfer-Encoding") is None, "chunked sent to an HTTP/1.0 client"
        assert len(r.body) == n and sha256(r.body) == pattern_sha256(n)


def test_client_keepalive_many_requests(proxy):
    with proxy.conn() as c:
        for i in range(10):
            r = c.request("GET", "/echo?i=%d" % i)
            assert r.status == 200 and r.json()["target"] == "/echo?i=%d" % i
            assert "close" not in (r.header("Connection") or "").lower()


def test_client_connection_close_honoured(proxy):
    with proxy.conn() as c:
        r = c.request("GET", "/echo", headers=[("Connection", "close")])
        assert r.status == 200
        c.wait_closed(3)


def test_upstream_keepalive_reused(proxy):
    with proxy.conn() as c:
        r1 = c.request("GET", "/count").json()
        r2 = c.request("GET", "/count").json()
        r3 = c.request("GET", "/count").json()
    assert r1["conn_requests"] == 1
    assert r2["reused"] and r2["conn"] == r1["conn"], (r1, r2)
    assert r3["conn_requests"] == 3, (r1, r2, r3)
    assert proxy.up.stats()["connections"] == 1


def test_pipelining_in_order(proxy):
    reqs = [build_request("GET", "/echo?i=1"),
            build_request("POST", "/echo?i=2", body=b"x" * 1000),
            build_request("HEAD", "/bytes?n=77"),
            build_request("GET", "/bytes?n=5000"),
            build_request("GET", "/echo?i=5")]
    with proxy.conn() as c:
        c.send(b"".join(reqs))
        r1, _ = c.read_final()
        r2, _ = c.read_final()
        r3, _ = c.read_final("HEAD")
        r4, _ = c.read_final()
        r5, _ = c.read_final()
    assert r1.json()["target"] == "/echo?i=1"
    assert r2.json()["target"] == "/echo?i=2" and r2.json()["body_len"] == 1000
    assert r3.status == 200 and r3.header("Content-Length") == "77" and r3.body == b""
    assert r4.body == pattern_bytes(5000)
    assert r5.json()["target"] == "/echo?i=5"


def test_pipelining_slow_first_keeps_order(proxy):
    with proxy.conn() as c:
        c.send(build_request("GET", "/slow?delay=0.4") + build_request("GET", "/echo?after=1")
               + build_request("GET", "/health"))
        r1, _ = c.read_final()
        r2, _ = c.read_final()
        r3, _ = c.read_final()
    assert r1.body == b"slept 0.4\n"
    assert r2.json()["target"] == "/echo?after=1"
    assert r3.body == b"ok\n"


# -------------------------------------------------------------- 1xx, etc.

def test_expect_100_continue(proxy):
    body = b"0123456789" * 100
    with proxy.conn() as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: test.local\r\nExpect: 100-continue\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body))
        r = c.read_response(timeout=3)
        assert r.status == 100
        assert r.raw_head.startswith(b"HTTP/1.1 100 Continue\r\n"), r.raw_head
        c.send(body)
        final, _ = c.read_final()
        assert final.status == 200
        j = final.json()
        assert j["body_len"] == len(body) and j["body_sha256"] == sha256(body)
        # the connection is still in sync
        assert c.request("GET", "/health").status == 200


def test_expect_100_continue_http10_ignored(proxy):
    with proxy.conn() as c:
        c.send(b"POST /echo HTTP/1.0\r\nHost: test.local\r\nExpect: 100-continue\r\n"
               b"Content-Length: 3\r\n\r\nabc")
        data = c.wait_closed(3)
    assert b"HTTP/1.1 100" not in data and b"HTTP/1.0 100" not in data, data[:200]
    assert data.split(b" ")[1] == b"200", data[:200]


def test_204_and_304_without_body(proxy):
    with proxy.conn() as c:
        r = c.request("GET", "/status?code=204")
        assert r.status == 204 and r.header("Transfer-Encoding") is None
        assert r.header("Content-Length") in (None, "0")
        r = c.request("GET", "/status?code=304&cl=10")
        assert r.status == 304 and r.header("Transfer-Encoding") is None
        r = c.request("GET", "/status?code=204")
        assert r.status == 204
        # nothing stray between the responses: the next one parses
        r = c.request("GET", "/health")
        assert r.status == 200 and r.body == b"ok\n"


def test_early_hints_then_final(proxy):
    with proxy.conn() as c:
        c.send(build_request("GET", "/early-hints"))
        final, infos = c.read_final()
        assert final.status == 200 and final.body == b"final\n"
        # exactly the one 103 the upstream sent, with its Link (RFC 9110 15.2)
        assert [i.status for i in infos] == [103], infos
        assert infos[0].header("link") == "</style.css>; rel=preload; as=style", infos[0]
        assert c.request("GET", "/health").status == 200


# ---------------------------------------------------------------- framing

def test_close_delimited_upstream_to_http11_client(proxy):
    n = 3 * 1024 * 1024 + 17
    with proxy.conn() as c:
        r = c.request("GET", "/close?n=%d" % n)
        assert r.status == 200
        assert len(r.body) == n and sha256(r.body) == pattern_sha256(n)


def test_close_delimited_keeps_client_connection_if_rechunked(proxy):
    """If portico re-frames a close-delimited response as chunked, the
    client connection stays usable; if not, it must be closed."""
    with proxy.conn() as c:
        r = c.request("GET", "/close?n=1000")
        assert len(r.body) == 1000
        if r.chunked:
            assert c.request("GET", "/health").status == 200
        else:
            c.wait_closed(3)


def test_chunked_upstream_response(proxy):
    n = 1000003
    with proxy.conn() as c:
        r = c.request("GET", "/chunked?n=%d" % n)
        assert r.status == 200
        assert len(r.body) == n and sha256(r.body) == pattern_sha256(n)
        assert c.request("GET", "/chunked?n=0").body == b""
        assert c.request("GET", "/health").status == 200


def test_chunked_upload(proxy):
    pieces = [b"a" * 10, b"b" * 4096, b"c" * 1, b"d" * 70000]
    body = b"".join(pieces)
    wire = b""
    for i, p in enumerate(pieces):
        ext = [b"", b";name=value", b';q="quo\\"ted"', b" ; x"][i]
        wire += b"%x%s\r\n%s\r\n" % (len(p), ext, p)
    wire += b"0;last=1\r\nX-Trailer-One: 1\r\nX-Trailer-Two: two\r\n\r\n"
    with proxy.conn() as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\n"
               b"Trailer: X-Trailer-One\r\n\r\n")
        # in pieces, splitting the framing at awkward places
        for k in range(0, len(wire), 997):
            c.send(wire[k:k + 997])
        r, _ = c.read_final()
        assert r.status == 200
        j = r.json()
        assert j["body_len"] == len(body)
        assert j["body_sha256"] == sha256(body)
        assert c.request("GET", "/health").status == 200


def test_chunked_upload_uppercase_hex_and_leading_zeros(proxy):
    with proxy.conn() as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"0000A\r\n0123456789\r\n1B\r\n" + b"z" * 27 + b"\r\n0\r\n\r\n")
        r, _ = c.read_final()
        assert r.status == 200
        j = r.json()
        assert j["body_len"] == 37 and j["body_sha256"] == sha256(b"0123456789" + b"z" * 27)
