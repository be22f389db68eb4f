"""WebSocket through portico: the Upgrade handshake is relayed (101 with the
upstream's Sec-WebSocket-Accept) and frames then flow both ways untouched.
The client side is a minimal RFC 6455 implementation with masking."""

import base64
import hashlib
import os
import struct
import time

import pytest

from conftest import RawConn, build_request, ws_frame, ws_mask

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class WSClient:
    def __init__(self, port, path="/ws", extra_headers=()):
        self.c = RawConn(port, timeout=5)
        self.key = base64.b64encode(os.urandom(16)).decode()
        self.c.send(build_request("GET", path, headers=[
            ("Upgrade", "websocket"), ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", self.key), ("Sec-WebSocket-Version", "13")] + list(extra_headers)))
        self.resp = self.c.read_head()

    def expected_accept(self):
        return base64.b64encode(hashlib.sha1(self.key.encode() + GUID).digest()).decode()

    def send(self, opcode, payload, fin=True):
        self.c.send(ws_frame(opcode, payload, fin=fin, mask_key=os.urandom(4)))

    def _need(self, n):
        while len(self.c.buf) < n:
            self.c._fill()

    def recv(self):
        """(fin, opcode, payload) of the next frame; asserts it is unmasked."""
        self._need(2)
        b0, b1 = self.c.buf[0], self.c.buf[1]
        assert not (b1 & 0x80), "server frame is masked"
        n = b1 & 0x7F
        hl = 2
        if n == 126:
            self._need(4)
            n = struct.unpack("!H", bytes(self.c.buf[2:4]))[0]
            hl = 4
        elif n == 127:
            self._need(10)
            n = struct.unpack("!Q", bytes(self.c.buf[2:10]))[0]
            hl = 10
        self._need(hl + n)
        payload = bytes(self.c.buf[hl:hl + n])
        del self.c.buf[:hl + n]
        return bool(b0 & 0x80), b0 & 0x0F, payload

    def close(self):
        self.c.close()


def test_handshake_101(proxy):
    ws = WSClient(proxy.port)
    try:
        r = ws.resp
        assert r.status == 101, r
        assert r.header("Upgrade").lower() == "websocket"
        assert "upgrade" in r.header("Connection").lower()
        assert r.header("Sec-WebSocket-Accept") == ws.expected_accept()
    finally:
        ws.close()
    req = proxy.up.requests()[0]
    names = {n.lower(): v for n, v in req["headers"]}
    # the upgrade headers reached the upstream
    assert names.get("upgrade", "").lower() == "websocket"
    assert "upgrade" in names.get("connection", "").lower()
    assert names.get("sec-websocket-key") == ws.key


def test_frames_echo_both_ways(proxy):
    ws = WSClient(proxy.port)
    try:
        assert ws.resp.status == 101
        ws.send(0x1, b"hello")
        assert ws.recv() == (True, 0x1, b"hello")
        big = os.urandom(70000)                 # 64-bit length form
        ws.send(0x2, big)
        assert ws.recv() == (True, 0x2, big)
        mid = bytes(range(256)) * 4             # 16-bit length form
        ws.send(0x2, mid)
        assert ws.recv() == (True, 0x2, mid)
        # fragmented message
        ws.send(0x1, b"frag-", fin=False)
        ws.send(0x0, b"ment", fin=True)
        assert ws.recv() == (False, 0x1, b"frag-")
        assert ws.recv() == (True, 0x0, b"ment")
        ws.send(0x9, b"ping!")
        assert ws.recv() == (True, 0xA, b"ping!")
        # many small frames in one write
        ws.c.send(b"".join(ws_frame(0x1, b"m%d" % i, mask_key=os.urandom(4)) for i in range(50)))
        for i in range(50):
            assert ws.recv() == (True, 0x1, b"m%d" % i)
        ws.send(0x8, struct.pack("!H", 1000) + b"bye")
        assert ws.recv() == (True, 0x8, struct.pack("!H", 1000) + b"bye")
        ws.c.wait_closed(3)
    finally:
        ws.close()


def test_frames_survive_idle_less_than_timeout(make_proxy):
    """A tunnel is not a request: it is not cut by header_timeout."""
    p = make_proxy(limits={"header_timeout": "1s", "idle_timeout": "5s"})
    ws = WSClient(p.port)
    try:
        assert ws.resp.status == 101
        time.sleep(1.6)
        ws.send(0x1, b"still there?")
        assert ws.recv() == (True, 0x1, b"still there?")
    finally:
        ws.close()


def test_client_close_tears_down_upstream(proxy):
    ws = WSClient(proxy.port)
    assert ws.resp.status == 101
    ws.send(0x1, b"x")
    assert ws.recv()[2] == b"x"
    ws.close()
    # the upstream's frame loop ends when portico closes its side; a new
    # tunnel still works
    ws2 = WSClient(proxy.port)
    try:
        assert ws2.resp.status == 101
        ws2.send(0x1, b"y")
        assert ws2.recv()[2] == b"y"
    finally:
        ws2.close()


def test_upgrade_refused_by_upstream_is_plain_response(proxy):
    """The upstream answers a non-101 to an upgrade attempt: the client gets
    that response and the connection stays HTTP."""
    with RawConn(proxy.port) as c:
        c.send(build_request("GET", "/echo", headers=[
            ("Upgrade", "websocket"), ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13")]))
        r, _ = c.read_final()
        assert r.status == 200
        assert r.json()["method"] == "GET"
        # the upstream kept the connection HTTP (RFC 9110 7.8): so does portico
        c.send(build_request("GET", "/health"))
        r2, _ = c.read_final()
        assert r2.status == 200 and r2.body == b"ok\n"
