"""Large bodies are streamed, not buffered: 100 MiB up and down with the
right sha256 while portico's RSS stays flat, and backpressure from a client
that stops reading."""

import hashlib
import socket
import threading
import time

import pytest

from conftest import RawConn, RssSampler, pattern, pattern_sha256, wait_for

MIB = 1024 * 1024
SIZE = 100 * MIB
# What the design promises (docs/architecture.md, "Memory"): buffers of
# max(32 KiB, max_header_bytes + 4 KiB) = 32 KiB here, at most four per
# exchange. RSS may grow by twice that over the warmed-up baseline (allocator
# headers, page rounding, a worker's first exchange); it was 64 MiB, which no
# buffering bug short of a whole body could exceed.
BUF_KIB = 32
EXCHANGE_BUFS = 4
RSS_SLACK_KIB = 2 * EXCHANGE_BUFS * BUF_KIB
HELD_MAX = EXCHANGE_BUFS * BUF_KIB * 1024 + 16 * 1024   # bytes portico itself may hold


def kernel_queued(*ports):
    """Bytes the kernel holds in the queues of every established loopback
    socket with one end on one of `ports` (Recv-Q: received, not yet read;
    Send-Q: sent, not yet acknowledged)."""
    import subprocess
    out = subprocess.run(["ss", "-tnH", "state", "established"], capture_output=True,
                         text=True, check=True).stdout
    total = 0
    for line in out.splitlines():
        f = line.split()    # with a state filter: Recv-Q Send-Q Local Peer
        if any(a.rsplit(":", 1)[1] == str(p) for a in f[2:4] for p in ports):
            total += int(f[0]) + int(f[1])
    return total


@pytest.fixture
def bp(make_proxy):
    return make_proxy(limits={"header_timeout": "5s", "idle_timeout": "30s", "body_timeout": "30s",
                              "send_timeout": "30s", "max_body": "1GiB"},
                      upstream_opts={"response_timeout": "30s"})


def _baseline(bp):
    # warm up every worker a little, then measure
    for _ in range(4):
        with bp.conn() as c:
            assert c.request("POST", "/echo", body=b"x" * 300000).status == 200
            assert c.request("GET", "/bytes?n=300000").status == 200
    time.sleep(0.1)
    return bp.portico.rss_kib()


def _gen_pattern(n, piece=256 * 1024):
    off = 0
    while off < n:
        k = min(piece, n - off)
        yield pattern(off, k)
        off += k


def test_upload_100mib_streamed(bp):
    base = _baseline(bp)
    with RssSampler(bp.portico.pid) as rs, RawConn(bp.port, timeout=60) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: test.local\r\nContent-Type: application/octet-stream\r\n"
               b"Content-Length: %d\r\n\r\n" % SIZE)
        for piece in _gen_pattern(SIZE):
            c.send(piece)
        r, _ = c.read_final()
    assert r.status == 200
    j = r.json()
    assert j["body_len"] == SIZE
    assert j["body_sha256"] == pattern_sha256(SIZE)
    assert rs.growth(base) < RSS_SLACK_KIB, "RSS grew by %d KiB (baseline %d KiB, peak %d KiB)" % (
        rs.growth(base), base, rs.peak)


def test_upload_100mib_chunked_streamed(bp):
    base = _baseline(bp)
    with RssSampler(bp.portico.pid) as rs, RawConn(bp.port, timeout=60) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in _gen_pattern(SIZE, 250000):
            c.send(b"%x\r\n" % len(piece) + piece + b"\r\n")
        c.send(b"0\r\n\r\n")
        r, _ = c.read_final()
    assert r.status == 200
    j = r.json()
    assert j["body_len"] == SIZE and j["body_sha256"] == pattern_sha256(SIZE)
    assert rs.growth(base) < RSS_SLACK_KIB, "RSS grew by %d KiB" % rs.growth(base)


@pytest.mark.parametrize("endpoint", ["bytes", "chunked"])
def test_download_100mib_streamed(bp, endpoint):
    base = _baseline(bp)
    h = hashlib.sha256()
    got = [0]

    def sink(b):
        h.update(b)
        got[0] += len(b)

    with RssSampler(bp.portico.pid) as rs, RawConn(bp.port, timeout=60) as c:
        c.send(b"GET /%s?n=%d HTTP/1.1\r\nHost: test.local\r\n\r\n" % (endpoint.encode(), SIZE))
        r, _ = c.read_final(sink=sink)
    assert r.status == 200
    assert got[0] == SIZE
    assert h.hexdigest() == pattern_sha256(SIZE)
    assert rs.growth(base) < RSS_SLACK_KIB, "RSS grew by %d KiB (baseline %d KiB, peak %d KiB)" % (
        rs.growth(base), base, rs.peak)


def test_backpressure_client_not_reading(bp):
    """A client that asks for 400 MiB and reads nothing: portico must stop
    reading from the upstream instead of buffering the response."""
    base = _baseline(bp)
    n = 400 * MIB
    sent0 = bp.up.stats()["bytes_out"]        # the baseline's responses
    c = RawConn(bp.port, timeout=10, rcvbuf=65536)
    try:
        c.send(b"GET /bytes?n=%d HTTP/1.1\r\nHost: test.local\r\n\r\n" % n)
        with RssSampler(bp.portico.pid) as rs:
            time.sleep(3)
        sent1 = bp.up.stats()["bytes_out"]
        time.sleep(0.5)
        sent2 = bp.up.stats()["bytes_out"]
        queued = kernel_queued(bp.port, bp.up.port)
        sent3 = bp.up.stats()["bytes_out"]
        assert rs.growth(base) < RSS_SLACK_KIB, "RSS grew by %d KiB while the client read nothing" % (
            rs.growth(base))
        # the upstream is stalled too: it sent only what the kernel's socket
        # queues and portico's own buffers (at most four) can hold
        assert sent2 - sent1 < MIB, "upstream still sending (%d -> %d)" % (sent1, sent2)
        assert sent3 == sent2, "upstream still sending (%d -> %d)" % (sent2, sent3)
        held = sent2 - sent0 - queued
        assert held <= HELD_MAX, "portico holds %d bytes of the response (sent %d, in kernel " \
            "queues %d): more than its %d buffers" % (held, sent2 - sent0, queued, EXCHANGE_BUFS)
        # and the transfer resumes when the client reads
        c.sock.settimeout(5)
        total = 0
        while total < 20 * MIB:
            d = c.sock.recv(1 << 20)
            assert d, "closed while reading"
            total += len(d)
    finally:
        c.close()
    # closing the client ends the upstream side too
    assert wait_for(lambda: bp.up.events("send_aborted"), 5, 0.1), "upstream never saw the close"
    with bp.conn() as c2:
        assert c2.request("GET", "/health").status == 200


def test_backpressure_upstream_not_reading(bp):
    """Upload to an upstream that does not read the body for 3 s
    (/echo?stall=3): portico must stop reading from the client instead of
    buffering the upload; then the transfer completes intact."""
    base = _baseline(bp)
    n = 150 * MIB
    up_in0 = bp.up.stats()["bytes_in"]         # the baseline's requests
    s = socket.create_connection(("127.0.0.1", bp.port), timeout=30)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    sent = [0]
    err = []

    def writer():
        try:
            s.sendall(b"POST /echo?stall=3 HTTP/1.1\r\nHost: test.local\r\nContent-Length: %d\r\n\r\n" % n)
            for piece in _gen_pattern(n, 65536):
                s.sendall(piece)
                sent[0] += len(piece)
        except OSError as e:
            err.append(e)

    t = threading.Thread(target=writer, daemon=True)
    with RssSampler(bp.portico.pid) as rs:
        t.start()
        time.sleep(2.5)
        stalled_at = sent[0]
        queued = kernel_queued(bp.port, bp.up.port)
        # the upstream read its head with up to 256 KiB of body before stalling
        up_read = bp.up.stats()["bytes_in"] - up_in0
        assert sent[0] == stalled_at, "the client is still sending"
    # what the client sent is in the kernel's socket queues, in the upstream
    # (read with the head) or in portico's own buffers (at most four):
    # portico stopped reading the client
    held = stalled_at - queued - up_read
    assert held <= HELD_MAX, "portico holds %d bytes of the upload (client sent %d, in kernel " \
        "queues %d, read by the upstream %d): more than its %d buffers" % (
            held, stalled_at, queued, up_read, EXCHANGE_BUFS)
    assert rs.growth(base) < RSS_SLACK_KIB, "RSS grew by %d KiB" % rs.growth(base)
    t.join(60)
    assert not err, err
    assert sent[0] == n
    s.settimeout(30)
    data = b""
    while b"\r\n\r\n" not in data:
        d = s.recv(65536)
        assert d, "closed before the response"
        data += d
    head, _, rest = data.partition(b"\r\n\r\n")
    cl = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0])
    while len(rest) < cl:
        d = s.recv(65536)
        assert d
        rest += d
    s.close()
    assert head.startswith(b"HTTP/1.1 200"), head
    import json
    j = json.loads(rest[:cl])
    assert j["body_len"] == n and j["body_sha256"] == pattern_sha256(n)
