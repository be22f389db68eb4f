#!/usr/bin/env python3
"""Write the seeds of fuzz_path (see tests/fuzz/fuzz_path.c for the format).

    python3 tests/fuzz/gen_path_corpus.py

writes tests/fuzz/corpus/path/<name> (replayed by `make fuzz`) and
tests/fuzz/known-crashes/path/<name> (inputs that crash the current code:
replayed by `make -f tests/fuzz/fuzz.mk check-known`; move one into
corpus/path/ once its defect is fixed). The traffic follows
tests/integration/: every request framing, every response framing on kept
connections, pipelining, tunnels, interim responses, retries, timeouts, and
the limits at and one byte over.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus", "path")
KNOWN = os.path.join(HERE, "known-crashes", "path")

# variants (byte 0): see variants[] in fuzz_path.c
QUICK, HOSTS, SMALL, RETRY, HASHLOG, BIG, DEAD, SHORT, STAGES = range(9)

# clock steps (record T): index into advance_ms[] in fuzz_path.c
MS = {1: 0, 10: 1, 100: 2, 500: 3, 1000: 4, 2001: 5, 5000: 6, 10001: 7, 30001: 8,
      60001: 9, 120001: 10, 3600000: 11}


def enc(variant, records):
    out = bytearray([variant])
    for op, payload in records:
        if isinstance(payload, str):
            payload = payload.encode("latin-1")
        out += b"\xfe\xff" + op.encode() + payload
    return bytes(out)


def C(s): return ("C", s)
def U(s): return ("U", s)
def T(ms): return ("T", bytes([MS[ms]]))
N = ("N", b"")
R = ("R", b"")
Z = ("Z", b"")
H = ("H", b"")
X = ("X", b"")
P = ("P", b"")
Q = ("Q", b"")
K = ("K", b"")
D = ("D", b"")


def get(path="/", host="localhost", extra="", method="GET", version="1.1"):
    h = "%s %s HTTP/%s\r\n" % (method, path, version)
    if host is not None:
        h += "Host: %s\r\n" % host
    return h + extra + "\r\n"


def post(body, path="/echo", extra=""):
    return "POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n%s\r\n%s" % (
        path, len(body), extra, body)


def chunked(*parts, trailers=""):
    s = "".join("%x\r\n%s\r\n" % (len(p), p) for p in parts)
    return s + "0\r\n" + trailers + "\r\n"


def resp(status=200, body="hello", extra="", cl=True, reason=None):
    reasons = {100: "Continue", 101: "Switching Protocols", 103: "Early Hints", 200: "OK",
               201: "Created", 204: "No Content", 302: "Found", 304: "Not Modified",
               404: "Not Found", 500: "Internal Server Error", 503: "Service Unavailable"}
    h = "HTTP/1.1 %d %s\r\n" % (status, reason or reasons.get(status, "X"))
    if cl:
        h += "Content-Length: %d\r\n" % len(body)
    return h + extra + "\r\n" + body


def resp_chunked(*parts, status=200, trailers="", extra=""):
    return "HTTP/1.1 %d OK\r\nTransfer-Encoding: chunked\r\n%s\r\n%s" % (
        status, extra, chunked(*parts, trailers=trailers))


seeds = {}
known = {}

# ---- the basics, keep-alive and pooled upstream connections
seeds["get_keepalive_twice"] = enc(QUICK, [C(get()), U(resp()), C(get("/2")), U(resp(body="x" * 100))])
seeds["post_length"] = enc(QUICK, [C(post("hello world")), U(resp(201, "created"))])
seeds["post_split_body"] = enc(QUICK, [C("POST /echo HTTP/1.1\r\nHost: l\r\nContent-Length: 10\r\n\r\nhel"),
                                       C("lo"), C("world"), U(resp())])
seeds["post_chunked"] = enc(QUICK, [
    C("POST /up HTTP/1.1\r\nHost: l\r\nTransfer-Encoding: chunked\r\n\r\n"),
    C("5\r\nhello\r\n"), C("6;ext=1\r\n world\r\n"), C("0\r\nX-Sum: 1\r\n\r\n"),
    U(resp_chunked("ok", "!", trailers="X-T: 1\r\n"))])
seeds["post_chunked_leading_zeros"] = enc(QUICK, [
    C("POST / HTTP/1.1\r\nHost: l\r\nTransfer-Encoding: chunked\r\n\r\n0005\r\nhello\r\n000\r\n\r\n"),
    U("HTTP/1.1 200 OK\r\nContent-Length: 0005\r\n\r\nhello")])
seeds["pipelined_three"] = enc(QUICK, [C(get("/a") + get("/b") + get("/c")),
                                       U(resp(body="a") + resp(body="b") + resp(body="c"))])
seeds["pipelined_one_by_one"] = enc(QUICK, [C(get("/a") + get("/b", extra="Connection: close\r\n")),
                                            U(resp(body="a")), U(resp(body="b"))])
seeds["pipelined_post_get"] = enc(QUICK, [C(post("abc") + get("/x") + "GET /partial HTTP/1.1\r\nHo"),
                                          U(resp()), U(resp(204, cl=False)), C("st: l\r\n\r\n"),
                                          U(resp(304, cl=False, extra="ETag: \"x\"\r\n"))])
seeds["connection_close"] = enc(QUICK, [C(get(extra="Connection: close\r\n")), U(resp())])
seeds["head"] = enc(QUICK, [C(get(method="HEAD") + get("/after")),
                            U("HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"), U(resp())])
seeds["head_chunked"] = enc(QUICK, [C(get(method="HEAD")),
                                    U("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")])

# ---- every response framing, on a kept connection, twice
for st in (200, 201, 302):
    seeds["resp_%d_cl0" % st] = enc(QUICK, [C(get()), U(resp(st, "", extra="Location: /x\r\n")),
                                            C(get("/again")), U(resp())])
    seeds["resp_%d_cln" % st] = enc(QUICK, [C(get()), U(resp(st, "0123456789")),
                                            C(get("/again")), U(resp())])
seeds["resp_204"] = enc(QUICK, [C(get() + get("/2")), U(resp(204, cl=False) + resp())])
seeds["resp_204_with_cl"] = enc(QUICK, [C(get()), U("HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n")])
seeds["resp_304"] = enc(QUICK, [C(get(extra="If-None-Match: \"a\"\r\n")),
                                U("HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\nETag: \"a\"\r\n\r\n"),
                                C(get()), U(resp())])
seeds["resp_chunked_empty"] = enc(QUICK, [C(get()), U(resp_chunked()), C(get()), U(resp())])
seeds["resp_chunked_trailers"] = enc(QUICK, [C(get()), U(resp_chunked("abc", "defgh", trailers="X-A: 1\r\nX-B: 2\r\n"))])
seeds["resp_chunked_split"] = enc(QUICK, [C(get()), U("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r"),
                                          U("\nabc\r\n"), U("0\r\n"), U("\r\n")])
seeds["resp_chunked_gzip"] = enc(QUICK, [C(get()), U("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\n\x1f\x8b\r\n0\r\n\r\n")])
seeds["resp_te_gzip_close"] = enc(QUICK, [C(get()), U("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8bdata"), N])
seeds["resp_close_delimited"] = enc(QUICK, [C(get()), U("HTTP/1.1 200 OK\r\n\r\nuntil close"), U(" more"), N])
seeds["resp_http10"] = enc(QUICK, [C(get()), U("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")])
seeds["resp_103_then_200"] = enc(QUICK, [C(get()), U("HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"),
                                         U(resp())])
seeds["resp_100_100_200"] = enc(QUICK, [C(get()), U("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n" + resp())])
seeds["resp_101_unasked"] = enc(QUICK, [C(get()), U("HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\nraw"),
                                        C("more client bytes")])
seeds["resp_more_than_announced"] = enc(QUICK, [C(get()), U(resp(body="12345") + "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\ninjected"),
                                                C(get("/2")), U(resp())])
seeds["resp_surplus_at_32k_boundary"] = enc(QUICK, [
    C(get()), U("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (32768 - 38) + "a" * (32768 - 38)),
    U(resp(body="injected")), C(get("/2")), U(resp())])
seeds["resp_short_body_close"] = enc(QUICK, [C(get()), U("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort"), N])
seeds["resp_chunked_no_last"] = enc(QUICK, [C(get()), U("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"), N])
seeds["resp_reset_midbody"] = enc(QUICK, [C(get()), U("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort"), R])
seeds["resp_bad_head"] = enc(QUICK, [C(get()), U("HTTP/1.1 2000 OK\r\n\r\n")])
seeds["resp_big_body_paused"] = enc(QUICK, [C(get()), P, U(resp(body="z" * 60000)), U("y" * 10),
                                            T(60001), P])
seeds["resp_many_headers"] = enc(QUICK, [C(get()), U(resp(extra="".join("X-H%d: %s\r\n" % (i, "v" * i) for i in range(90))))])
seeds["resp_connection_nominated"] = enc(QUICK, [C(get()), U(resp(extra="Connection: X-Secret, keep-alive\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n"))])

# ---- request features
seeds["expect_100"] = enc(QUICK, [C("PUT /up HTTP/1.1\r\nHost: l\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"),
                                  U("HTTP/1.1 100 Continue\r\n\r\n"), C("body"), U(resp())])
seeds["expect_100_early_answer"] = enc(QUICK, [C("PUT /up HTTP/1.1\r\nHost: l\r\nExpect: 100-continue\r\nContent-Length: 400\r\n\r\n"),
                                               U(resp(417, "no")), C("x" * 400)])
seeds["http10_client"] = enc(QUICK, [C(get(version="1.0", extra="Connection: keep-alive\r\n")),
                                     U(resp()), C(get("/2", version="1.0")), U(resp_chunked("abc", "de"))])
seeds["http10_no_host"] = enc(QUICK, [C(get(version="1.0", host=None)), U(resp())])
seeds["absolute_form"] = enc(QUICK, [C(get("http://example.com/x?y=1", host="other")), U(resp()),
                                     C(get("http://example.com?q", host=None)), U(resp())])
seeds["options_star"] = enc(QUICK, [C(get("*", method="OPTIONS")), U(resp())])
seeds["options_star_pipelined_few"] = enc(QUICK, [C(get("*", method="OPTIONS", host="a") * 20), U(resp() * 20)])
seeds["xff_chain"] = enc(QUICK, [C(get(extra="X-Forwarded-For: 1.2.3.4\r\nX-Forwarded-For: 5.6.7.8, 9.9.9.9\r\n"
                                          "X-Request-Id: abc\r\nX-Forwarded-Host: evil\r\nX-Forwarded-Proto: https\r\n"
                                          "Connection: keep-alive, X-Drop\r\nX-Drop: 1\r\nTE: trailers\r\n"
                                          "X_Forwarded_For: 6.6.6.6\r\n")), U(resp())])
seeds["bad_requests"] = enc(QUICK, [C("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")])
seeds["bad_cl_te"] = enc(QUICK, [C("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")])
seeds["bad_chunk_request"] = enc(QUICK, [C("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")])
seeds["body_over_max"] = enc(SMALL, [C(post("x" * 101))])
seeds["chunked_over_max"] = enc(SMALL, [C("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked("x" * 60, "y" * 60))])
seeds["client_gone_midbody"] = enc(QUICK, [C("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc"), X])
seeds["client_halfclose_waiting"] = enc(QUICK, [C(get()), H, U(resp())])
seeds["client_closes_while_waiting"] = enc(QUICK, [C(get()), X, U(resp())])
seeds["early_response_during_upload"] = enc(QUICK, [C("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n" + "a" * 1000),
                                                     U(resp(413, "too big", extra="Connection: close\r\n")), C("b" * 5000)])

# ---- tunnels
WS = ("GET /chat HTTP/1.1\r\nHost: l\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
WS101 = ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
seeds["websocket"] = enc(QUICK, [C(WS), U(WS101), C("\x81\x85abcd\x29\x07\x0f\x08\x0e"), U("\x81\x05hello"),
                                 H, U("\x88\x00"), N])
seeds["websocket_refused"] = enc(QUICK, [C(WS), U(resp(400, "no"))])
seeds["websocket_idle"] = enc(SHORT, [C(WS), U(WS101), T(2001), C("x"), T(60001)])
seeds["websocket_server_closes"] = enc(QUICK, [C(WS), U(WS101 + "server first"), Z, C("late"), X])
seeds["upgrade_http10"] = enc(QUICK, [C(WS.replace("HTTP/1.1", "HTTP/1.0")), U(WS101)])

# ---- retries and upstream failures
seeds["retry_closed_before_response"] = enc(RETRY, [C(get()), N, U(resp())])
seeds["retry_reset"] = enc(RETRY, [C(get()), R, U(resp())])
seeds["retry_post_not_idempotent"] = enc(RETRY, [C(post("data")), N, U(resp())])
seeds["retry_all_fail"] = enc(RETRY, [C(get()), N, N, N])
seeds["retry_5xx_passive"] = enc(RETRY, [C(get()), U(resp(503, "busy")), C(get()), U(resp(500, "err")), C(get()), U(resp())])
seeds["stale_pooled_connection"] = enc(RETRY, [C(get()), U(resp()), N, C(get("/2")), U(resp())])
seeds["pool_idle_garbage"] = enc(QUICK, [C(get()), U(resp()), U("garbage on an idle connection"), C(get("/2")), U(resp())])
seeds["connect_refused_then_ok"] = enc(DEAD, [C(get(extra="X-User: bob\r\n")), U(resp()),
                                              C(get("/static/a.css")), U(resp())])
seeds["retry_timeout"] = enc(RETRY, [C(get()), T(5000), U(resp())])
seeds["no_server_available"] = enc(RETRY, [C(get()), U(resp(500)), C(get()), U(resp(500)), C(get()), U(resp())])

# ---- timeouts (clock records)
seeds["header_timeout"] = enc(SHORT, [C("GET / HTTP/1.1\r\nHo"), T(1000), T(2001)])
seeds["idle_timeout"] = enc(SHORT, [C(get()), U(resp()), T(5000)])
seeds["body_timeout"] = enc(SHORT, [C("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nab"), T(2001), C("cdefghij"), U(resp())])
seeds["response_timeout"] = enc(SHORT, [C(get()), T(5000), U(resp())])
seeds["response_timeout_midbody"] = enc(SHORT, [C(get()), U("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"), T(5000)])
seeds["send_timeout_paused"] = enc(SHORT, [P, C(get()), U(resp(body="q" * 200000)), T(2001), T(2001)])
seeds["upload_server_not_reading"] = enc(SHORT, [Q, C("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 150000\r\n\r\n" + "u" * 150000),
                                                 T(1000), T(2001), Q, U(resp())])
seeds["slow_client_big_chunked"] = enc(QUICK, [P, C(get()), U(resp_chunked(*(["c" * 4000] * 30))), T(30001), P, C(get("/2")), U(resp())])
seeds["pool_idle_timeout"] = enc(SHORT, [C(get()), U(resp()), T(5000), C(get()), U(resp())])
seeds["linger_after_400"] = enc(SHORT, [C("BAD\r\n\r\nmore bytes"), T(2001), C("x")])

# ---- host routes
seeds["hosts_routes"] = enc(HOSTS, [C(get("/api/v1", host="example.com")), U(resp()),
                                    C(get("/", host="www.example.org:8080")), U(resp()),
                                    C(get("/", host="EXAMPLE.COM.")), U(resp()),
                                    C(get("/", host="unknown.test")), C(get("/", host="[::1]:80"))])
seeds["hosts_unknown_pipelined_few"] = enc(HOSTS, [C(get("/", host="nope") * 50)])

# ---- hashing and logs
seeds["hash_cookie_audit"] = enc(HASHLOG, [C(get(extra="Cookie: a=1; session=xyz\r\nUser-Agent: t\r\n")), U(resp()),
                                           C(get("/admin/x", extra="Authorization: Basic dXNlcjpwYXNz\r\nUser-Agent: curl\r\n")),
                                           U(resp()), C(post("x" * 20, path="/admin/y")), U(resp(201, ""))])
seeds["audit_413"] = enc(HASHLOG, [C("POST /admin HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999\r\n\r\n")])

# ---- trusted proxies, path normalisation, underscores
seeds["trusted_xff_chain"] = enc(HASHLOG, [C(get("/admin/a", extra="X-Forwarded-For: 203.0.113.7, 192.0.2.1\r\nX-Forwarded-Proto: https\r\n")),
                                           U(resp()), C(get(extra="X-Forwarded-For: nonsense, 192.0.2.9\r\nX-Forwarded-For: [::1]\r\n")), U(resp())])
seeds["untrusted_xff"] = enc(HOSTS, [C(get("/api/x", host="example.com", extra="X-Forwarded-For: 10.1.1.1\r\nX-Forwarded-Proto: https\r\n")), U(resp())])
seeds["path_normalization"] = enc(DEAD, [C(get("/./static/../static//a%2Fb%61?q=%zz")), U(resp()),
                                         C(get("//x/%2e%2e/static/y")), U(resp()), C(get("/a%00b")), C(get("/%zz"))])
seeds["path_normalization_default"] = enc(QUICK, [C(get("/a/./b/../%7euser//x?y=/../")), U(resp()), C(get("/a%2Fb"))])
seeds["underscores_reject"] = enc(SMALL, [C(get(extra="X_Forwarded_For: 1.1.1.1\r\n"))])
seeds["underscores_allow"] = enc(DEAD, [C(get(extra="X_Forwarded_For: 1.1.1.1\r\nContent_Length: 5\r\n")), U(resp())])
seeds["tunnel_timeout"] = enc(SHORT, [C(WS), U(WS101), T(2001), U("ping"), T(2001), C("pong"), T(5000)])

# ---- several clients (sharing pooled upstream connections), draining
seeds["two_clients_pool"] = enc(QUICK, [C(get("/1")), U(resp()), K, C(get("/2")), U(resp()), X, K, C(get("/3")), U(resp())])
seeds["two_clients_interleaved"] = enc(RETRY, [C(get("/1")), K, C(get("/2")), U(resp(body="for whom")), U(resp(body="?")),
                                               C(post("abc")), N, U(resp())])
seeds["two_clients_injected_surplus"] = enc(QUICK, [
    C(get()), U("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (32768 - 38) + "a" * (32768 - 38) + resp(body="injected")),
    K, C(get("/victim")), U(resp())])
seeds["two_clients_tunnel_and_get"] = enc(QUICK, [C(WS), U(WS101), K, C(get()), U(resp()), C(get("/x"))])
seeds["drain_in_flight"] = enc(QUICK, [C(get()), D, U(resp()), C(get("/after"))])
seeds["drain_idle_and_busy"] = enc(QUICK, [C(get()), U(resp()), K, C(get("/slow")), D, T(30001), U(resp())])
seeds["drain_upload"] = enc(SHORT, [C("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc"), D, C("d" * 97), U(resp())])

# ---- stages (variant 8: tests/stage/test_stage.c and headers: rules)
seeds["stage_answer"] = enc(STAGES, [C(get("/answer/x") + get("/answer/y", method="HEAD")), C(get("/answer/z", version="1.0"))])
seeds["stage_wait_release"] = enc(STAGES, [C(get("/wait/a")), K, C(get("/wait/b")), K, C(get("/wait/release")),
                                           U(resp()), U(resp()), T(2001)])
seeds["stage_wait_answer_leave"] = enc(STAGES, [C(get("/wait/a")), K, C(get("/wait/b")), X, K, C(get("/wait/answer"))])
seeds["stage_wait_timeout"] = enc(STAGES, [C(get("/wait/a")), T(2001), C(get("/wait/release"))])
seeds["stage_upper"] = enc(STAGES, [C(get("/upper/a")), U(resp(body="hello world " * 50)), C(get("/upper/b")),
                                    U(resp_chunked("abc" * 100, "def")), P, C(get("/upper/c")), U(resp(body="x" * 30000)), T(1000), P])
seeds["stage_upper_http10"] = enc(STAGES, [C(get("/upper/a", version="1.0")), U(resp_chunked("abc", "def"))])
seeds["stage_watch"] = enc(STAGES, [C(get("/watch/a")), U(resp(body="watched")), C(get("/watch/b")), U("HTTP/1.1 200 OK\r\n\r\nclose"), N])
seeds["stage_headers"] = enc(STAGES, [C(get("//x//y", extra="Cookie: a=b\r\nX-Forwarded-For: 198.51.100.1\r\n")),
                                      U(resp(extra="Server: s\r\nX-A: keep\r\nCache-Control: no-store\r\n")),
                                      C(get("/", host=None, version="1.0")), U(resp())])

# ---- the cache (variant 8: /c/ with ttl, namespace feed, query [page, id], stale windows;
#      /cw/ bumps feed on writes and stores cookies; 1 MiB, 64 KiB objects, 2 waiters)
CC60 = "Cache-Control: max-age=60\r\nETag: \"v1\"\r\nLast-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
seeds["cache_hit_conditional_range_head"] = enc(STAGES, [
    C(get("/c/a?page=1&utm=x")), U(resp(body="0123456789", extra=CC60)),
    C(get("/c/a?utm=y&page=1")),
    C(get("/c/a?page=1", extra="If-None-Match: W/\"v1\", \"v0\"\r\n")),
    C(get("/c/a?page=1", extra="If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n")),
    C(get("/c/a?page=1", extra="Range: bytes=2-5\r\n")),
    C(get("/c/a?page=1", extra="Range: bytes=20-\r\n")),
    C(get("/c/a?page=1", method="HEAD")),
    C(get("/c/a?page=1", extra="Cache-Control: max-age=0\r\n")), U(resp(304, body="", cl=False, extra="ETag: \"v1\"\r\n")),
    C(get("/c/a?page=1", extra="Cache-Control: no-cache\r\n")), U(resp(body="new", extra=CC60))])
seeds["cache_coalesce_waiters"] = enc(STAGES, [
    C(get("/c/b")), K, C(get("/c/b")), K, C(get("/c/b")), K, C(get("/c/b")),
    U(resp(body="shared", extra="Cache-Control: max-age=30\r\n")), U(resp(body="again"))])
seeds["cache_coalesce_leader_leaves"] = enc(STAGES, [
    C(get("/c/l")), K, C(get("/c/l")), ("P", b""), X, K, C(get("/c/l")), T(2001),
    U(resp(body="late", extra="Cache-Control: max-age=30\r\n")), U(resp())])
seeds["cache_vary_encodings"] = enc(STAGES, [
    C(get("/c/v", extra="Accept-Encoding: gzip\r\n")),
    U(resp(body="v" * 200, extra="Vary: Accept-Encoding, X-Lang\r\nCache-Control: max-age=60\r\n")),
    C(get("/c/v", extra="Accept-Encoding: gzip\r\n")), C(get("/c/v", extra="Accept-Encoding: br\r\n")),
    U(resp(body="w" * 200, extra="Vary: *\r\nCache-Control: max-age=60\r\n")),
    C(get("/c/v", extra="Accept-Encoding: zstd, br, gzip\r\nX-Lang: fr\r\n")), U(resp_chunked("chunk", "ed", extra="Cache-Control: max-age=5\r\n"))])
seeds["cache_write_bumps"] = enc(STAGES, [
    C(get("/c/f")), U(resp(body="feed", extra=CC60)), C(get("/c/f")),
    C(post("new", path="/cw/post")), U(resp(201, body="")),
    C(get("/c/f")), U(resp(304, body="", cl=False, extra="ETag: \"v1\"\r\n")),
    C(get("/cw/p?b=2&a=1")), U(resp(body="c", extra="Set-Cookie: s=1\r\nCache-Control: public, max-age=9\r\n")),
    C(get("/cw/p?a=1&b=2")),
    C("DELETE /c/f HTTP/1.1\r\nHost: localhost\r\n\r\n"), U(resp(204, body="", cl=False, extra="Location: /c/a?page=1\r\n"))])
seeds["cache_stale_if_error"] = enc(STAGES, [
    C(get("/c/s")), U(resp(body="old", extra="Cache-Control: max-age=0, stale-if-error=60\r\nETag: \"s\"\r\n")),
    C(get("/c/s")), U(resp(503, body="down")),
    C(get("/c/s")), R, C(get("/c/s", extra="Cache-Control: max-stale\r\n"))])
seeds["cache_not_stored"] = enc(STAGES, [
    C(get("/c/n1")), U(resp(body="p", extra="Cache-Control: private\r\n")),
    C(get("/c/n2")), U(resp(body="n", extra="Cache-Control: no-store\r\n")),
    C(get("/c/n3", extra="Authorization: Basic YTpi\r\n")), U(resp(body="a")),
    C(get("/c/n4")), U(resp(body="x" * 70000, extra="Cache-Control: max-age=60\r\n")),
    C(get("/c/n5", extra="Cache-Control: only-if-cached\r\n")),
    C(get("/c/n6")), U(resp(500, body="e", extra="Cache-Control: max-age=60\r\n")),
    C(get("/c/n4")), U(resp(body="y" * 60000, extra="Cache-Control: max-age=60\r\n"))])
# a stored empty body served (a hit, HEAD, stale-if-error): its data was NULL, and
# sending it computed NULL + 0 (UBSan in ready_span)
seeds["cache_empty_body"] = enc(STAGES, [
    C(get("/c/z")), U(resp(body="", extra=CC60)), C(get("/c/z")), C(get("/c/z", method="HEAD")),
    C(get("/c/z0")), U(resp(body="", extra="Cache-Control: max-age=0, stale-if-error=60\r\nETag: \"s\"\r\n")),
    C(get("/c/z0")), U(resp(503, body="down"))])
seeds["cache_evictions"] = enc(STAGES, sum(
    [[C(get("/c/e%d" % i)), U(resp(body="e" * 50000, extra="Cache-Control: max-age=60\r\n"))] for i in range(30)], []) +
    [C(get("/c/e0")), U(resp())])

# ---- limits at the edge and one over
def head_of(total, limit_name="X-Pad", path="/", prefix=""):
    """A GET head of exactly `total` bytes (CRLFCRLF included)."""
    base = "GET %s HTTP/1.1\r\nHost: l\r\n%s%s: " % (path, prefix, limit_name)
    pad = total - len(base) - 4
    assert pad >= 0
    return base + "v" * pad + "\r\n\r\n"


for lim, var in ((1024, SMALL), (16384, QUICK), (65536, BIG)):
    for d in (-1, 0, 1):
        seeds["head_%d%+d" % (lim, d)] = enc(var, [C(head_of(lim + d)), U(resp())])
seeds["head_1024_split"] = enc(SMALL, [C(head_of(1024)[:500]), C(head_of(1024)[500:]), U(resp())])
seeds["request_line_256"] = enc(SMALL, [C(get("/" + "p" * 241)), U(resp()), C(get("/" + "p" * 242)), U(resp())])
seeds["max_headers_8"] = enc(SMALL, [C(get(extra="".join("A%d: b\r\n" % i for i in range(7)))), U(resp()),
                                     C(get(extra="".join("A%d: b\r\n" % i for i in range(8))))])
seeds["resp_head_over_limit"] = enc(SMALL, [C(get()), U("HTTP/1.1 200 OK\r\nX: " + "a" * 1100 + "\r\nContent-Length: 0\r\n\r\n")])
seeds["xff_long"] = enc(QUICK, [C(head_of(16000, "X-Forwarded-For")), U(resp())])
seeds["host_long_small"] = enc(SMALL, [C("GET / HTTP/1.1\r\nHost: " + "h" * (1024 - 26) + "\r\n\r\n"), U(resp())])
seeds["host_long_8k"] = enc(QUICK, [C("GET / HTTP/1.1\r\nHost: " + "h" * 8000 + "\r\n\r\n"), U(resp())])
seeds["target_long_absolute"] = enc(QUICK, [C(get("http://example.com/" + "t" * 8100, host="x")), U(resp())])
# near the known crashes below, without crashing: the fuzzer finds its way from here
seeds["host_16250_near_overflow"] = enc(QUICK, [C("GET / HTTP/1.1\r\nHost: " + "h" * 16250 + "\r\n\r\n"), U(resp())])
seeds["host_abs_authority_8000"] = enc(QUICK, [C("GET http://" + "a" * 8000 + "/ HTTP/1.1\r\nHost: x\r\n\r\n"), U(resp())])
seeds["options_star_1500_pipelined"] = enc(QUICK, [C("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n" * 1500)])
seeds["big_head_small_segments"] = enc(QUICK, [C(head_of(4000)[i:i + 100]) for i in range(0, 4000, 100)] + [U(resp())])

# ---- crashes of the code before issue 9's fixes (regression seeds now)
# 1. build_request_head: Host counted once but written twice (Host,
#    X-Forwarded-Host): a head of exactly max_header_bytes with a
#    16,358-byte Host overflowed its 32 KiB buffer.
seeds["host_16358_overflow"] = enc(QUICK, [C("GET / HTTP/1.1\r\nHost: " + "h" * 16358 + "\r\n\r\n"), U(resp())])
# 11. every locally answered keep-alive request recursed into client_drive
seeds["options_star_10000_pipelined"] = enc(QUICK, [C("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n" * 10000)])
seeds["unknown_host_10000_pipelined"] = enc(HOSTS, [C("GET / HTTP/1.1\r\nHost: nope\r\n\r\n" * 10000)])

# ---- known crashes of the current code: tests/fuzz/known-crashes/path/
# (found by fuzzing: minimised artifacts, listed in the README there)

# a coalesced waiter is woken (its waker handed to the worker's mailbox) by the
# leader's 504 in the same loop iteration as the drain timeout closes every
# connection; the worker is freed with the waker still in its mailbox: LeakSanitizer
known["cache_waiter_woken_at_shutdown"] = enc(STAGES, [C(get("/c/b")), K, C(get("/c/b")), D, T(30001)])

def write(d, items):
    os.makedirs(d, exist_ok=True)
    for name, data in sorted(items.items()):
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    write(CORPUS, seeds)
    if known:
        write(KNOWN, known)
    print("%d seeds in %s, %d known crashes in %s" % (len(seeds), CORPUS, len(known), KNOWN),
          file=sys.stderr)
