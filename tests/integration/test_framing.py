"""Rejected framing: requests that two parsers could disagree on.

Each case asserts the status, that portico closes the connection after the
error, and that the upstream received NOTHING: no connection bytes, no
request head (checked on the upstream's control port). A valid request made
afterwards must then be the only thing the upstream ever saw.
"""

import socket
import time

import pytest

from conftest import build_request, raw_exchange, status_of

LIMITS = {"header_timeout": "3s", "idle_timeout": "5s", "max_request_line": "2KiB",
          "max_header_bytes": "4KiB", "max_headers": 20, "max_body": "1MiB"}


@pytest.fixture
def fp(make_proxy):
    return make_proxy(limits=LIMITS)


def _sanity(fp):
    """A valid request afterwards works and is the only one the upstream saw."""
    with fp.conn() as c:
        r = c.request("GET", "/echo?sanity=1")
    assert r.status == 200
    reqs = fp.up.requests()
    assert [q["target"] for q in reqs] == ["/echo?sanity=1"], reqs
    heads = fp.up.log()["heads"]
    assert len(heads) == 1, heads


def assert_rejected(fp, data, status):
    got, closed = raw_exchange(fp.port, data, timeout=3)
    codes = status_of(got)
    assert codes, "no response at all (closed=%s): %r" % (closed, got[:300])
    if isinstance(status, int):
        status = (status,)
    assert codes[0] in status, "expected %s, got %r" % (status, got[:300])
    assert len(codes) == 1, "more than one response: %r" % got[:500]
    assert got.startswith(b"HTTP/1.1 %d " % codes[0]), got[:100]
    assert closed, "connection not closed after %d" % codes[0]
    time.sleep(0.15)
    st = fp.up.stats()
    assert st["bytes_in"] == 0 and st["heads"] == 0, "upstream received something: %r\n%r" % (
        st, fp.up.log())
    _sanity(fp)


REQ = b"POST /echo HTTP/1.1\r\nHost: test.local\r\n"

CASES = [
    # (id, bytes, status)
    ("cl_and_te", REQ + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te_and_cl", REQ + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400),
    ("cl_and_te_http10", b"POST /echo HTTP/1.0\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("two_differing_cl", REQ + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400),
    ("cl_list_differing", REQ + b"Content-Length: 5, 6\r\n\r\nhello!", 400),
    ("te_chunked_identity", REQ + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400),
    ("te_identity", REQ + b"Transfer-Encoding: identity\r\n\r\nhello", 400),
    ("te_chunked_twice", REQ + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400),
    ("te_chunked_two_lines", REQ + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te_empty", REQ + b"Transfer-Encoding: \r\n\r\n", 400),
    ("te_gzip_chunked", REQ + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    ("te_in_http10", b"POST /echo HTTP/1.0\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("obs_fold", b"GET /echo HTTP/1.1\r\nHost: test.local\r\nX-A: a\r\n b\r\n\r\n", 400),
    ("obs_fold_tab", b"GET /echo HTTP/1.1\r\nHost: test.local\r\nX-A: a\r\n\tb\r\n\r\n", 400),
    ("leading_ws_first_header", b"GET /echo HTTP/1.1\r\n Host: test.local\r\n\r\n", 400),
    ("bare_lf", b"GET /echo HTTP/1.1\nHost: test.local\n\n", 400),
    ("bare_lf_in_headers", b"GET /echo HTTP/1.1\r\nHost: test.local\nX-A: 1\r\n\r\n", 400),
    ("bare_cr", b"GET /echo HTTP/1.1\r\nHost: test.local\rX-A: 1\r\n\r\n", 400),
    ("bare_cr_in_value", b"GET /echo HTTP/1.1\r\nHost: test.local\r\nX-A: a\rb\r\n\r\n", 400),
    ("space_before_colon", b"GET /echo HTTP/1.1\r\nHost : test.local\r\n\r\n", 400),
    ("space_before_colon_cl", REQ + b"Content-Length : 5\r\n\r\nhello", 400),
    ("tab_before_colon_te", REQ + b"Transfer-Encoding\t: chunked\r\n\r\n0\r\n\r\n", 400),
    ("ctl_in_value", b"GET /echo HTTP/1.1\r\nHost: test.local\r\nX-A: a\x01b\r\n\r\n", 400),
    ("nul_in_value", b"GET /echo HTTP/1.1\r\nHost: test.local\r\nX-A: a\x00b\r\n\r\n", 400),
    ("del_in_value", b"GET /echo HTTP/1.1\r\nHost: test.local\r\nX-A: a\x7fb\r\n\r\n", 400),
    ("bad_header_name", b"GET /echo HTTP/1.1\r\nHost: test.local\r\nX(A): 1\r\n\r\n", 400),
    ("missing_host_11", b"GET /echo HTTP/1.1\r\nX-A: 1\r\n\r\n", 400),
    ("duplicate_host", b"GET /echo HTTP/1.1\r\nHost: test.local\r\nHost: other.local\r\n\r\n", 400),
    ("duplicate_host_same", b"GET /echo HTTP/1.1\r\nHost: test.local\r\nHost: test.local\r\n\r\n", 400),
    ("invalid_host", b"GET /echo HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    ("http_2_0", b"GET /echo HTTP/2.0\r\nHost: test.local\r\n\r\n", 505),
    ("http_3_0", b"GET /echo HTTP/3.0\r\nHost: test.local\r\n\r\n", 505),
    ("h2_preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    ("bad_version", b"GET /echo HTTP/1.1x\r\nHost: test.local\r\n\r\n", 400),
    ("double_space_request_line", b"GET  /echo HTTP/1.1\r\nHost: test.local\r\n\r\n", 400),
    ("userinfo_in_target", b"GET http://user@test.local/echo HTTP/1.1\r\nHost: test.local\r\n\r\n", 400),
    ("connect", b"CONNECT test.local:443 HTTP/1.1\r\nHost: test.local:443\r\n\r\n", 501),
    ("unknown_expect", REQ + b"Expect: something-else\r\nContent-Length: 1\r\n\r\nx", 417),
    ("uri_too_long", b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\nHost: test.local\r\n\r\n", 414),
    ("headers_too_large", b"GET /echo HTTP/1.1\r\nHost: test.local\r\n"
     + b"".join(b"X-Big-%d: %s\r\n" % (i, b"v" * 1000) for i in range(6)) + b"\r\n", 431),
    ("too_many_headers", b"GET /echo HTTP/1.1\r\nHost: test.local\r\n"
     + b"".join(b"X-H-%d: 1\r\n" % i for i in range(30)) + b"\r\n", 431),
    ("body_over_max_body", REQ + b"Content-Length: 2097152\r\n\r\n" + b"x" * 1000, 413),
    ("cl_not_a_number", REQ + b"Content-Length: abc\r\n\r\n", 400),
    ("cl_negative", REQ + b"Content-Length: -1\r\n\r\n", 400),
    ("cl_plus", REQ + b"Content-Length: +5\r\n\r\nhello", 400),
    ("cl_hex", REQ + b"Content-Length: 0x5\r\n\r\nhello", 400),
    ("cl_space_inside", REQ + b"Content-Length: 1 2\r\n\r\nhello", 400),
    ("cl_empty", REQ + b"Content-Length: \r\n\r\n", 400),
    ("cl_huge", REQ + b"Content-Length: 100000000000000000000000\r\n\r\n", (400, 413)),
    ("smuggle_cl_te_G", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nG", 400),
    ("smuggle_te_obfuscated", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
     b"Transfer-Encoding: xchunked\r\n\r\n5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n", 400),
]


@pytest.mark.parametrize("data,status", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rejected(fp, data, status):
    assert_rejected(fp, data, status)


def test_error_after_good_request_in_pipeline(fp):
    """A good request, then a bad one pipelined behind it: the first is
    answered, the second gets 400, nothing of the second reaches the upstream."""
    data = (build_request("GET", "/echo?first=1")
            + b"GET /echo?second=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab")
    got, closed = raw_exchange(fp.port, data, timeout=3)
    assert status_of(got) == [200, 400], got[:600]
    assert closed
    reqs = fp.up.requests()
    assert [q["target"] for q in reqs] == ["/echo?first=1"]
    assert len(fp.up.log()["heads"]) == 1


# ---------------------------------------------------------- chunked bodies
# The head is valid, so portico may already have forwarded it; what matters
# is that the client gets an error or a close, and the upstream never sees a
# COMPLETE request (nor a smuggled second one).

BAD_CHUNKED = [
    ("invalid_chunk_size", b"zz\r\nhello\r\n0\r\n\r\n"),
    ("negative_chunk_size", b"-5\r\nhello\r\n0\r\n\r\n"),
    ("chunk_size_0x", b"0x5\r\nhello\r\n0\r\n\r\n"),
    ("chunk_size_space_inside", b"1 0\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n"),
    ("chunk_size_overflow_wraps_to_5", b"10000000000000005\r\nhello\r\n0\r\n\r\n"
     b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("chunk_size_overflow_64bit", b"1FFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n"),
    # leading zeros in a chunk size are valid grammar (RFC 9112 7.1): accepted and
    # re-framed canonically, see test_hardening.test_request_chunks_reach_the_upstream_canonical
    ("chunk_size_bare_lf", b"5\nhello\n0\n\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("chunk_data_no_crlf", b"5\r\nhelloXX0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("chunk_data_too_long", b"3\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("invalid_after_valid_chunk", b"3\r\nabc\r\nzz\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("bad_trailer_obs_fold", b"3\r\nabc\r\n0\r\nX-T: 1\r\n folded\r\n\r\n"),
    ("bad_trailer_bare_lf", b"3\r\nabc\r\n0\r\nX-T: 1\n\r\n"),
]


@pytest.mark.parametrize("body", [c[1] for c in BAD_CHUNKED], ids=[c[0] for c in BAD_CHUNKED])
def test_rejected_chunked_body(fp, body):
    data = REQ + b"Transfer-Encoding: chunked\r\n\r\n" + body
    got, closed = raw_exchange(fp.port, data, timeout=4)
    codes = status_of(got)
    assert closed, "connection left open after a malformed chunked body: %r" % got[:300]
    # no response head was sent before the body went wrong: a clean 400
    assert codes == [400], "expected one 400: %r" % got[:500]
    time.sleep(0.3)
    log = fp.up.log()
    assert log["requests"] == [], "upstream saw a complete request: %r" % log["requests"]
    assert all("smuggled" not in h.get("target", "") for h in log["heads"]), log["heads"]
    assert len(log["heads"]) <= 1, log["heads"]


def test_chunked_body_over_max_body(fp):
    """A chunked body that grows past max_body (1 MiB here) is cut off:
    413 (or a close) and the upstream never gets a complete request."""
    s = socket.create_connection(("127.0.0.1", fp.port), timeout=5)
    try:
        s.sendall(REQ + b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
        try:
            for _ in range(40):          # 2.5 MiB
                s.sendall(chunk)
            s.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        got = b""
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    break
                got += d
        except (socket.timeout, ConnectionResetError):
            pass
    finally:
        s.close()
    codes = status_of(got)
    assert codes == [413], got[:300]
    time.sleep(0.3)
    assert fp.up.requests() == []
