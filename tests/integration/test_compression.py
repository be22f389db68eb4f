"""Compression (#13, streaming part): negotiation, round trips through Python's
and the command-line decoders, what is never compressed, SSE events one by
one, and a large body in bounded memory."""

import gzip
import json
import os
import subprocess
import threading
import time
import zlib

import brotli
import pytest

from conftest import RawConn, build_request, free_port, make_config, rss_kib, send_and_read_to_end
from rawup import RawUpstream

JSON = json.dumps([{"id": i, "name": "item %d" % i, "tags": ["a", "b", "c"]} for i in range(300)]).encode()


def serve(c, n):
    while True:
        head = c.read_head()
        if head is None:
            return
        target = head.split(b" ")[1].decode()
        if target.startswith("/json"):
            extra = ""
            if "no-transform" in target:
                extra = "Cache-Control: public, no-transform\r\n"
            if "encoded" in target:
                extra = "Content-Encoding: gzip\r\n"
            if "etag" in target:
                extra = 'ETag: "v1"\r\nVary: Origin\r\n'
            body = JSON if "small" not in target else b'{"a":1}'
            c.send(("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n"
                    % (extra, len(body))).encode() + body)
        elif target.startswith("/gz"):
            body = gzip.compress(JSON)
            c.send(("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
                    'ETag: "g1"\r\nContent-Length: %d\r\n\r\n' % len(body)).encode() + body)
        elif target.startswith("/badgz"):
            body = gzip.compress(JSON)[:200] + b"garbage" * 50
            c.send(("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
                    "Content-Length: %d\r\n\r\n" % len(body)).encode() + body)
        elif target.startswith("/image"):
            c.send(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 4000\r\n\r\n" + b"p" * 4000)
        elif target.startswith("/chunked"):
            c.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(50):
                piece = b"<p>paragraph %d of a page that compresses well</p>\n" % i * 20
                c.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            c.send(b"0\r\n\r\n")
        elif target.startswith("/events"):
            c.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n")
            for i in range(3):
                ev = b"data: event %d\n\n" % i
                c.send(b"%x\r\n%s\r\n" % (len(ev), ev))
                time.sleep(0.4)
            c.send(b"0\r\n\r\n")
        elif target.startswith("/big"):
            n = 100 << 20
            c.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % n)
            line = b"a line of a large log file, repeated: 0123456789 abcdefghij\n" * 1024
            sent = 0
            while sent < n:
                k = min(len(line), n - sent)
                c.send(line[:k])
                sent += k
        else:
            c.send(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")


@pytest.fixture
def cp(start_portico):
    up = RawUpstream(serve)
    port = free_port()
    p = start_portico(make_config(port, {"app": {"servers": [up.address], "response_timeout": "30s"}},
                                  extra="compression: { min_size: 256 }"), port=port)
    yield p
    up.stop()


def get(p, path, ae, method="GET", version="HTTP/1.1"):
    with RawConn(p.port, timeout=20) as c:
        headers = [("Accept-Encoding", ae)] if ae is not None else []
        c.send(build_request(method, path, headers=headers, version=version))
        r, _ = c.read_final(method)
        return r


def decode(enc, body):
    if enc == "gzip":
        return gzip.decompress(body)
    if enc == "br":
        return brotli.decompress(body)
    if enc == "zstd":
        return subprocess.run(["zstd", "-d", "-c"], input=body, capture_output=True, check=True).stdout
    assert enc is None, enc
    return body


@pytest.mark.parametrize("ae,want", [
    ("gzip, deflate, br, zstd", "br"),             # our order: br first
    ("gzip", "gzip"),
    ("zstd;q=1, br;q=0.5", "zstd"),                # the client's q-values first
    ("br;q=0, gzip;q=0.1", "gzip"),
    ("*", "br"),
    ("*;q=0, gzip;q=0.5", "gzip"),
    ("identity", None),
    ("identity;q=0", None),                        # nothing we can do but identity anyway
    ("compress, deflate", None),                   # codings we do not speak
    ("br;q=0, zstd;q=0, gzip;q=0", None),
    (None, None),
])
def test_negotiation_and_round_trip(cp, ae, want):
    r = get(cp, "/json", ae)
    assert r.status == 200
    assert r.header("content-encoding") == want
    assert decode(want, r.body) == JSON
    if want:
        assert r.header("vary") == "Accept-Encoding"
        assert r.header("content-length") is None
        assert len(r.body) < len(JSON) * 0.3        # 70% smaller at least


@pytest.mark.parametrize("enc", ["gzip", "br", "zstd"])
def test_command_line_decoders_and_chunked_input(cp, enc, tmp_path):
    r = get(cp, "/chunked", enc)
    assert r.header("content-encoding") == enc
    f = tmp_path / "body"
    f.write_bytes(r.body)
    tool = {"gzip": ["gzip", "-dc"], "br": ["brotli", "-dc"], "zstd": ["zstd", "-dc"]}[enc]
    out = subprocess.run(tool + [str(f)], capture_output=True, check=True).stdout
    assert out == b"".join(b"<p>paragraph %d of a page that compresses well</p>\n" % i * 20
                           for i in range(50))


def test_what_is_never_compressed(cp):
    assert get(cp, "/json?no-transform", "gzip").header("content-encoding") is None
    r = get(cp, "/json?encoded", "gzip, br")         # already encoded: not twice
    assert r.header_all("content-encoding") == ["gzip"] and r.body == JSON
    assert get(cp, "/image", "gzip").header("content-encoding") is None
    assert get(cp, "/json?small", "gzip").header("content-encoding") is None      # under min_size
    h = get(cp, "/json", "gzip", method="HEAD")
    assert h.header("content-encoding") is None and h.header("content-length") == str(len(JSON))


def test_etag_turns_weak_and_vary_is_merged(cp):
    r = get(cp, "/json?etag", "gzip")
    assert r.header("etag") == 'W/"v1"'
    assert r.header("vary") == "Origin, Accept-Encoding"


def test_http10_client_gets_it_close_delimited(cp):
    r = get(cp, "/json", "gzip", version="HTTP/1.0")
    assert r.header("content-encoding") == "gzip" and r.header("transfer-encoding") is None
    assert gzip.decompress(r.body) == JSON


@pytest.mark.parametrize("enc", ["gzip", "br", "zstd"])
def test_server_sent_events_arrive_one_by_one(cp, enc):
    with RawConn(cp.port, timeout=10) as c:
        c.send(build_request("GET", "/events", headers=[("Accept-Encoding", enc)]))
        r = c.read_head()
        assert r.header("content-encoding") == enc
        if enc == "gzip":
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            feed = d.decompress
        elif enc == "br":
            d = brotli.Decompressor()
            feed = d.process
        else:
            proc = None
            feed = None
        got, times = b"", []
        t0 = time.time()
        raw = b""
        while len(times) < 3 and time.time() - t0 < 5:
            line = c._line()                        # chunked framing from portico
            size = int(line.split(b";")[0], 16)
            if size == 0:
                break
            data = c._exact(size)
            c._line()
            raw += data
            if feed:
                got += feed(data)
            else:
                got = subprocess.run(["zstd", "-dc"], input=raw, capture_output=True).stdout
            n = got.count(b"\n\n")
            while len(times) < n:
                times.append(time.time() - t0)
        assert len(times) == 3, got
        # each event came on its own, about 0.4 s apart, not all at the end
        assert times[1] - times[0] > 0.25 and times[2] - times[1] > 0.25, times


def test_large_body_streams_in_bounded_memory(cp):
    base = rss_kib(cp.pid)
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_kib(cp.pid))
            time.sleep(0.02)
    t = threading.Thread(target=sample)
    t.start()
    total, wire, d = [0], [0], zlib.decompressobj(16 + zlib.MAX_WBITS)

    def sink(b):
        wire[0] += len(b)
        total[0] += len(d.decompress(bytes(b)))
    try:
        with RawConn(cp.port, timeout=60) as c:
            c.send(build_request("GET", "/big", headers=[("Accept-Encoding", "gzip")]))
            r = c.read_response(sink=sink)
    finally:
        stop.set()
        t.join()
    assert r.status == 200 and r.header("content-encoding") == "gzip"
    assert total[0] + len(d.flush()) == 100 << 20 and d.eof
    assert wire[0] < (100 << 20) / 20               # it compressed as it went
    # 100 MiB went through: what grows is a few buffers and one compressor, not the body
    assert peak[0] - base < 8 * 1024, "RSS grew by %d KiB" % (peak[0] - base)


@pytest.mark.parametrize("ae,plain", [("identity", True), ("br, gzip;q=0", True), ("gzip", False),
                                      ("*", False), (None, False)])
def test_gzip_from_the_upstream_is_decoded_for_who_cannot_take_it(cp, ae, plain):
    r = get(cp, "/gz", ae)
    if plain:
        assert r.header("content-encoding") is None and r.body == JSON
        assert r.header("etag") == 'W/"g1"'
    else:
        assert r.header("content-encoding") == "gzip" and gzip.decompress(r.body) == JSON
        assert r.header("etag") == '"g1"'


def test_a_corrupt_gzip_body_does_not_look_complete(cp):
    got, reset = send_and_read_to_end(
        cp.port, build_request("GET", "/badgz", headers=[("Accept-Encoding", "identity")]))
    assert reset and not got.endswith(b"0\r\n\r\n"), got[-40:]
