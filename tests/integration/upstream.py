#!/usr/bin/env python3
"""A real HTTP/1.1 upstream for portico's integration tests.

Python stdlib only: raw sockets and one thread per connection, so that every
byte on the wire is under our control. Start it as

    upstream.py --port 0 --id u1

It prints one line, `READY <port> <control-port>`, once both sockets listen.

The main port serves the endpoints below. The endpoint is the LAST path
segment, so `/api/v1/count` is `/count`; unknown names answer like `/echo`.

    /echo            200, JSON describing the request as received: method,
                     target, version, header [name, value] pairs, body length
                     and sha256 (Content-Length or chunked, with chunk
                     extensions and trailers). `?h=Name:Value` (repeatable)
                     adds response headers, `?status=C` changes the status,
                     `?stall=S` waits S seconds before reading the body.
    /bytes?n=N       N bytes of pattern(), Content-Length, sent in pieces
                     (`&piece=P`, default 65536).
    /chunked?n=N     the same bytes, chunked, with a trailer X-Checksum:
                     <sha256> (announced by `Trailer:`).
    /close?n=N       HTTP/1.1 200 with neither Content-Length nor chunked:
                     delimited by closing the connection.
    /slow?delay=S    waits S seconds, then 200. While waiting it watches the
                     socket: if the peer closes first, the control log gets a
                     `slow_client_closed` event and nothing is sent.
    /status?code=C   that status; 204 and 304 have no body (`&cl=N` adds a
                     Content-Length: N header anyway, as RFC 9110 allows).
    /early-hints     103 Early Hints, then 200.
    /ws              RFC 6455 handshake (101 with Sec-WebSocket-Accept), then
                     echoes every data frame back unmasked; ping -> pong,
                     close -> close.
    /hang            reads the request and never answers; logs `hang_closed`
                     when the peer goes away.
    /count           JSON: server id, per-process request counter, the number
                     of requests seen on this TCP connection (`conn_requests`,
                     > 1 means the connection was reused) and a connection id.
    /health          200 "ok".
    /cacheable       a response whose caching fields are set by the query, for
                     the cache's tests (every response has `Date` and
                     `X-Origin-Count: <requests for this target so far>`):
                       cc=V        Cache-Control: V (repeatable)
                       etag=T      ETag: "T" (wetag=T: W/"T")
                       lm=N        Last-Modified: unix time N (lm_ago=N: N s ago)
                       expires=N   Expires: now + N s (may be negative)
                       vary=V      Vary: V
                       cookie=V    Set-Cookie: V
                       h=Name:V    any other header (repeatable)
                       status=C    that status (206 and others too)
                       n=N         body: N bytes of pattern() instead of the
                                   default JSON {"target", "n" (the count),
                                   "vary": {the Vary'd request headers}}
                       ctype=T     Content-Type of the n=N body
                       delay=S     wait S seconds before answering
                       chunked=1   send the body chunked (no Content-Length)
                     If-None-Match (weak comparison) / If-Modified-Since
                     that match get 304 with the same fields and no body.
                     The control port's /set overrides parameters for every
                     /cacheable request (`/set?status=500`, `/set?fail=503`:
                     a bare 503 with no caching fields, `/set?clear=1`).

Keep-alive follows RFC 9112 (1.1 default on, 1.0 only with keep-alive);
`Expect: 100-continue` is answered with 100 before the body is read.

The control port (plain HTTP, never proxied) exposes what the main port saw,
so tests can prove that portico forwarded NOTHING:

    GET /stats   {"connections", "bytes_in", "bytes_out", "heads", "requests"}
    GET /log     {"requests": [...complete requests...], "heads": [...],
                  "events": [...]}
    GET /reset   clears everything.
    GET /counts  {"targets": {target: requests}, "paths": {path: requests},
                  "total": requests} over the main port.
    GET /set?k=v overrides /cacheable's query parameter k (see above).
"""

import argparse
import base64
import hashlib
import json
import os
import select
import socket
import struct
import sys
import threading
import time
from email.utils import formatdate, parsedate_to_datetime
from urllib.parse import parse_qs, urlsplit

PERIOD = 251
_BIG = bytes(range(PERIOD)) * 1100          # > 256 KiB + PERIOD
PIECE_MAX = len(_BIG) - PERIOD
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def pattern(offset, length):
    """`length` (<= PIECE_MAX) bytes of the deterministic stream at `offset`:
    byte i of the stream is i % 251."""
    assert length <= PIECE_MAX, length
    o = offset % PERIOD
    return _BIG[o:o + length]


def pattern_bytes(n):
    out = bytearray()
    off = 0
    while off < n:
        k = min(PIECE_MAX, n - off)
        out += pattern(off, k)
        off += k
    return bytes(out)


def pattern_sha256(n):
    h = hashlib.sha256()
    off = 0
    while off < n:
        k = min(PIECE_MAX, n - off)
        h.update(pattern(off, k))
        off += k
    return h.hexdigest()


class Peer(Exception):
    """The peer closed or reset the connection."""


class BadRequest(Exception):
    pass


class State:
    def __init__(self, ident):
        self.id = ident
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        with getattr(self, "lock"):
            self.connections = 0
            self.bytes_in = 0
            self.bytes_out = 0
            self.counter = 0
            self.heads = []
            self.requests = []
            self.events = []
            self.targets = {}
            self.paths = {}
            self.overrides = {}

    def event(self, name, **kw):
        kw["event"] = name
        kw["t"] = time.time()
        with self.lock:
            self.events.append(kw)

    def snapshot_stats(self):
        with self.lock:
            return {"id": self.id, "connections": self.connections, "bytes_in": self.bytes_in,
                    "bytes_out": self.bytes_out, "heads": len(self.heads),
                    "requests": len(self.requests)}

    def snapshot_log(self):
        with self.lock:
            return {"id": self.id, "requests": list(self.requests), "heads": list(self.heads),
                    "events": list(self.events)}


class Conn:
    def __init__(self, sock, state, cid, counted=True):
        self.sock = sock
        self.st = state
        self.cid = cid
        self.counted = counted
        self.buf = bytearray()
        self.nreq = 0

    # ---- input ----
    def _recv(self, n=262144):
        try:
            data = self.sock.recv(n)
        except (ConnectionResetError, BrokenPipeError, OSError) as e:
            raise Peer(str(e))
        if not data:
            raise Peer("eof")
        if self.counted:
            with self.st.lock:
                self.st.bytes_in += len(data)
        return data

    def fill(self):
        self.buf += self._recv()

    def read_head(self, limit=1 << 20):
        """Bytes of a request head (without the blank line), or None on a
        clean EOF before any byte. Lenient about bare LF so that whatever
        portico forwards is seen and logged."""
        while True:
            # skip empty lines before a request line (RFC 9112 2.2)
            while self.buf[:2] == b"\r\n":
                del self.buf[:2]
            i = self.buf.find(b"\r\n\r\n")
            j = self.buf.find(b"\n\n")
            cands = [(i, 4)] if i >= 0 else []
            if j >= 0:
                cands.append((j, 2))
            if cands:
                pos, sep = min(cands)
                head = bytes(self.buf[:pos])
                del self.buf[:pos + sep]
                return head
            if len(self.buf) > limit:
                raise BadRequest("head too large")
            try:
                self.fill()
            except Peer:
                if self.buf:
                    self.st.event("partial_head", conn=self.cid, data=self.buf[:2000].decode("latin-1"))
                return None

    def read_line(self, limit=1 << 16):
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 1]
                if line.endswith(b"\r"):
                    line = line[:-1]
                return line
            if len(self.buf) > limit:
                raise BadRequest("line too long")
            self.fill()

    def read_exact_into(self, n, h):
        """Consume n body bytes into hash h; returns n."""
        take = min(n, len(self.buf))
        if take:
            h.update(self.buf[:take])
            del self.buf[:take]
        left = n - take
        while left > 0:
            data = self._recv(min(left, 262144))
            h.update(data)
            left -= len(data)
        return n

    # ---- output ----
    def send(self, data):
        try:
            self.sock.sendall(data)
        except (ConnectionResetError, BrokenPipeError, OSError) as e:
            raise Peer(str(e))
        if self.counted:
            with self.st.lock:
                self.st.bytes_out += len(data)


class Request:
    pass


def parse_head(head):
    lines = head.split(b"\n")
    lines = [l[:-1] if l.endswith(b"\r") else l for l in lines]
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise BadRequest("bad request line %r" % lines[0][:200])
    r = Request()
    r.method = parts[0].decode("latin-1")
    r.target = parts[1].decode("latin-1")
    r.version = parts[2].decode("latin-1")
    r.headers = []
    for l in lines[1:]:
        if b":" not in l:
            raise BadRequest("bad header line %r" % l[:200])
        n, v = l.split(b":", 1)
        r.headers.append([n.decode("latin-1"), v.strip(b" \t").decode("latin-1")])
    u = urlsplit(r.target)
    r.path = u.path or "/"
    r.query = parse_qs(u.query, keep_blank_values=True)
    return r


def hget(headers, name):
    name = name.lower()
    for n, v in headers:
        if n.lower() == name:
            return v
    return None


def hall(headers, name):
    name = name.lower()
    return [v for n, v in headers if n.lower() == name]


def tokens(headers, name):
    out = []
    for v in hall(headers, name):
        out += [t.strip().lower() for t in v.split(",") if t.strip()]
    return out


REASONS = {100: "Continue", 101: "Switching Protocols", 103: "Early Hints", 200: "OK",
           201: "Created", 204: "No Content", 301: "Moved Permanently", 302: "Found",
           304: "Not Modified", 400: "Bad Request", 404: "Not Found", 418: "I'm a teapot",
           500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


class Server:
    def __init__(self, ident, port, ctl_port, host="127.0.0.1"):
        self.st = State(ident)
        self.id = ident
        self.lsock = self._listen(host, port)
        self.csock = self._listen(host, ctl_port)
        self.next_cid = 0
        self.cid_lock = threading.Lock()

    @staticmethod
    def _listen(host, port):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(256)
        return s

    def serve(self):
        threading.Thread(target=self._accept_loop, args=(self.csock, False), daemon=True).start()
        print("READY %d %d" % (self.lsock.getsockname()[1], self.csock.getsockname()[1]), flush=True)
        self._accept_loop(self.lsock, True)

    def _accept_loop(self, lsock, main):
        while True:
            try:
                s, _ = lsock.accept()
            except OSError:
                continue
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.cid_lock:
                self.next_cid += 1
                cid = self.next_cid
            if main:
                with self.st.lock:
                    self.st.connections += 1
            threading.Thread(target=self._conn, args=(s, cid, main), daemon=True).start()

    def _conn(self, s, cid, main):
        c = Conn(s, self.st, cid, counted=main)
        try:
            while True:
                head = c.read_head()
                if head is None:
                    break
                try:
                    req = parse_head(head)
                except BadRequest as e:
                    if main:
                        with self.st.lock:
                            self.st.heads.append({"conn": cid, "raw": head[:4000].decode("latin-1"),
                                                  "bad": str(e)})
                    self.st.event("bad_request", conn=cid, why=str(e))
                    c.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    break
                c.nreq += 1
                req.raw_head = head
                conn_tokens = tokens(req.headers, "connection")
                if req.version == "HTTP/1.1":
                    req.keep_alive = "close" not in conn_tokens
                else:
                    req.keep_alive = "keep-alive" in conn_tokens and "close" not in conn_tokens
                if not main:
                    keep = self._control(c, req)
                else:
                    with self.st.lock:
                        self.st.counter += 1
                        req.count = self.st.counter
                        self.st.targets[req.target] = self.st.targets.get(req.target, 0) + 1
                        self.st.paths[req.path] = self.st.paths.get(req.path, 0) + 1
                        req.target_count = self.st.targets[req.target]
                        self.st.heads.append({"conn": cid, "seq": c.nreq, "method": req.method,
                                              "target": req.target})
                    keep = self._handle(c, req)
                if not keep:
                    break
        except Peer:
            pass
        except BadRequest as e:
            self.st.event("bad_body", conn=cid, why=str(e))
            try:
                c.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except Peer:
                pass
        except Exception as e:  # a bug in this file: make it visible
            self.st.event("exception", conn=cid, why=repr(e))
            print("upstream %s: conn %d: %r" % (self.id, cid, e), file=sys.stderr, flush=True)
        finally:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    # ---- request bodies ----
    def _read_body(self, c, req):
        h = hashlib.sha256()
        req.chunked = False
        req.chunk_exts = []
        req.trailers = []
        req.body_len = 0
        te = tokens(req.headers, "transfer-encoding")
        cl = hall(req.headers, "content-length")
        if (te or cl) and req.version == "HTTP/1.1" and \
                "100-continue" in [v.lower() for v in hall(req.headers, "expect")]:
            c.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        if te:
            if te[-1] != "chunked":
                raise BadRequest("transfer-encoding %r" % te)
            req.chunked = True
            total = 0
            while True:
                line = c.read_line()
                size_s, _, ext = line.partition(b";")
                size_s = size_s.strip(b" \t")
                if not size_s or any(ch not in b"0123456789abcdefABCDEF" for ch in size_s) \
                        or len(size_s) > 16:
                    raise BadRequest("bad chunk size %r" % line[:100])
                if ext:
                    req.chunk_exts.append(ext.decode("latin-1"))
                size = int(size_s, 16)
                if size == 0:
                    break
                total += c.read_exact_into(size, h)
                if c.read_line() != b"":
                    raise BadRequest("missing CRLF after chunk data")
            while True:
                line = c.read_line()
                if line == b"":
                    break
                n, _, v = line.partition(b":")
                req.trailers.append([n.decode("latin-1"), v.strip().decode("latin-1")])
            req.body_len = total
        elif cl:
            vals = set(v.strip() for x in cl for v in x.split(","))
            if len(vals) != 1 or not next(iter(vals)).isdigit():
                raise BadRequest("content-length %r" % cl)
            n = int(next(iter(vals)))
            req.body_len = c.read_exact_into(n, h)
        req.body_sha256 = h.hexdigest()

    def _record(self, c, req, **extra):
        rec = {"conn": c.cid, "seq": c.nreq, "count": req.count, "method": req.method,
               "target": req.target, "path": req.path, "version": req.version,
               "headers": req.headers, "body_len": getattr(req, "body_len", 0),
               "body_sha256": getattr(req, "body_sha256", hashlib.sha256().hexdigest()),
               "chunked": getattr(req, "chunked", False),
               "chunk_exts": getattr(req, "chunk_exts", []),
               "trailers": getattr(req, "trailers", [])}
        rec.update(extra)
        with self.st.lock:
            self.st.requests.append(rec)
        return rec

    # ---- responses ----
    def _respond(self, c, req, status, headers=(), body=b"", length=True):
        keep = req.keep_alive
        out = ["HTTP/1.1 %d %s" % (status, REASONS.get(status, "Status"))]
        out.append("X-Upstream-Id: %s" % self.id)
        for n, v in headers:
            out.append("%s: %s" % (n, v))
        bodyless = status < 200 or status in (204, 304)
        if length and not bodyless:
            out.append("Content-Length: %d" % len(body))
        if not keep:
            out.append("Connection: close")
        elif req.version != "HTTP/1.1":
            out.append("Connection: keep-alive")
        data = ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")
        if req.method != "HEAD" and not bodyless:
            data += body
        c.send(data)
        return keep

    def _handle(self, c, req):
        name = req.path.rstrip("/").rsplit("/", 1)[-1] or "echo"
        q = req.query

        def qi(k, d):
            try:
                return int(q[k][0])
            except (KeyError, ValueError, IndexError):
                return d

        def qf(k, d):
            try:
                return float(q[k][0])
            except (KeyError, ValueError, IndexError):
                return d

        if name == "ws":
            return self._ws(c, req)

        if "stall" in q:
            # leave the request body unread for a while (backpressure tests)
            self.st.event("stall_start", conn=c.cid)
            time.sleep(qf("stall", 1.0))
        self._read_body(c, req)

        if name == "hang":
            self._record(c, req)
            self._wait_peer_close(c, None)
            self.st.event("hang_closed", conn=c.cid)
            return False

        if name == "slow":
            delay = qf("delay", 1.0)
            self._record(c, req)
            t0 = time.time()
            if self._wait_peer_close(c, delay):
                self.st.event("slow_client_closed", conn=c.cid, after=time.time() - t0, delay=delay)
                return False
            self.st.event("slow_done", conn=c.cid, delay=delay)
            return self._respond(c, req, 200, [("Content-Type", "text/plain")],
                                 b"slept %g\n" % delay)

        self._record(c, req)

        if name == "health":
            return self._respond(c, req, 200, [("Content-Type", "text/plain")], b"ok\n")

        if name == "cacheable":
            return self._cacheable(c, req)

        if name == "count":
            body = json.dumps({"id": self.id, "count": req.count, "conn_requests": c.nreq,
                               "conn": c.cid, "reused": c.nreq > 1}).encode()
            return self._respond(c, req, 200, [("Content-Type", "application/json")], body)

        if name == "status":
            code = qi("code", 200)
            hdrs = []
            if "cl" in q:
                hdrs.append(("Content-Length", str(qi("cl", 0))))
                return self._respond(c, req, code, hdrs, b"", length=False)
            return self._respond(c, req, code, hdrs, b"status %d\n" % code)

        if name == "bytes":
            return self._bytes(c, req, qi("n", 0), qi("piece", 65536))

        if name == "chunked":
            return self._chunked(c, req, qi("n", 0))

        if name == "close":
            n = qi("n", 0)
            c.send(b"HTTP/1.1 200 OK\r\nX-Upstream-Id: %s\r\nContent-Type: application/octet-stream\r\n\r\n"
                   % self.id.encode())
            if req.method != "HEAD":
                self._send_pattern(c, n, 65536)
            return False

        if name == "early-hints":
            if req.version == "HTTP/1.1":
                c.send(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n")
                time.sleep(0.05)
            return self._respond(c, req, 200, [("Content-Type", "text/plain")], b"final\n")

        # echo (default)
        status = qi("status", 200)
        hdrs = [("Content-Type", "application/json"), ("X-Echo", "1")]
        for hv in q.get("h", []):
            n, _, v = hv.partition(":")
            hdrs.append((n.strip(), v.strip()))
        body = json.dumps({"id": self.id, "method": req.method, "target": req.target,
                           "path": req.path, "version": req.version, "headers": req.headers,
                           "body_len": req.body_len, "body_sha256": req.body_sha256,
                           "chunked": req.chunked, "chunk_exts": req.chunk_exts,
                           "trailers": req.trailers, "conn": c.cid,
                           "conn_requests": c.nreq, "count": req.count}).encode()
        return self._respond(c, req, status, hdrs, body)

    def _cacheable(self, c, req):
        q = dict(req.query)
        with self.st.lock:
            q.update(self.st.overrides)

        def one(k, d=None):
            v = q.get(k)
            return v[0] if v else d

        now = time.time()
        if one("delay"):
            time.sleep(float(one("delay")))
        if one("fail"):
            return self._respond(c, req, int(one("fail")), [("Content-Type", "text/plain")],
                                 b"failing on purpose\n")
        hdrs = [("Date", formatdate(now, usegmt=True)),
                ("X-Origin-Count", str(getattr(req, "target_count", 0)))]
        for v in q.get("cc", []):
            hdrs.append(("Cache-Control", v))
        etag = None
        if one("etag") is not None:
            etag = '"%s"' % one("etag")
        elif one("wetag") is not None:
            etag = 'W/"%s"' % one("wetag")
        if etag:
            hdrs.append(("ETag", etag))
        lm = None
        if one("lm") is not None:
            lm = int(one("lm"))
        elif one("lm_ago") is not None:
            lm = int(now - float(one("lm_ago")))
        if lm is not None:
            hdrs.append(("Last-Modified", formatdate(lm, usegmt=True)))
        if one("expires") is not None:
            hdrs.append(("Expires", formatdate(now + float(one("expires")), usegmt=True)))
        if one("vary") is not None:
            hdrs.append(("Vary", one("vary")))
        if one("cookie") is not None:
            hdrs.append(("Set-Cookie", one("cookie")))
        for hv in q.get("h", []):
            n, _, v = hv.partition(":")
            hdrs.append((n.strip(), v.strip()))

        # the client's (or a cache's) conditionals
        if req.method in ("GET", "HEAD"):
            inm = hget(req.headers, "if-none-match")
            ims = hget(req.headers, "if-modified-since")
            if inm is not None:
                if etag is not None:
                    mine = etag[2:] if etag.startswith("W/") else etag
                    for t in inm.split(","):
                        t = t.strip()
                        if t == "*" or (t[2:] if t.startswith("W/") else t) == mine:
                            return self._respond(c, req, 304, hdrs)
            elif ims is not None and lm is not None:
                try:
                    since = parsedate_to_datetime(ims).timestamp()
                except (TypeError, ValueError):
                    since = None
                if since is not None and lm <= since:
                    return self._respond(c, req, 304, hdrs)

        status = int(one("status", "200"))
        if one("n") is not None:
            body = pattern_bytes(int(one("n")))
            hdrs.append(("Content-Type", one("ctype", "application/octet-stream")))
        else:
            vary = {}
            for name in (one("vary") or "").split(","):
                name = name.strip()
                if name:
                    vary[name] = hget(req.headers, name)
            body = json.dumps({"target": req.target, "n": getattr(req, "target_count", 0),
                               "method": req.method, "vary": vary}).encode() + b"\n"
            hdrs.append(("Content-Type", "application/json"))
        if one("chunked") == "1" and req.version == "HTTP/1.1" and status not in (204, 304):
            out = ["HTTP/1.1 %d %s" % (status, REASONS.get(status, "Status")),
                   "X-Upstream-Id: %s" % self.id, "Transfer-Encoding: chunked"]
            out += ["%s: %s" % (n, v) for n, v in hdrs]
            if not req.keep_alive:
                out.append("Connection: close")
            data = ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")
            if req.method != "HEAD":
                for i in range(0, len(body), 700):
                    piece = body[i:i + 700]
                    data += b"%x\r\n" % len(piece) + piece + b"\r\n"
                data += b"0\r\n\r\n"
            c.send(data)
            return req.keep_alive
        return self._respond(c, req, status, hdrs, body)

    def _send_pattern(self, c, n, piece):
        piece = max(1, min(piece, PIECE_MAX))
        off = 0
        try:
            while off < n:
                k = min(piece, n - off)
                c.send(pattern(off, k))
                off += k
        except Peer:
            self.st.event("send_aborted", conn=c.cid, sent=off, n=n)
            raise

    def _bytes(self, c, req, n, piece):
        keep = req.keep_alive
        head = ("HTTP/1.1 200 OK\r\nX-Upstream-Id: %s\r\nContent-Type: application/octet-stream\r\n"
                "Content-Length: %d\r\n%s\r\n" % (self.id, n, "" if keep else "Connection: close\r\n"))
        c.send(head.encode())
        if req.method != "HEAD":
            self._send_pattern(c, n, piece)
            self.st.event("bytes_done", conn=c.cid, n=n)
        return keep

    def _chunked(self, c, req, n):
        if req.version != "HTTP/1.1":
            # no chunked for 1.0: close-delimited instead
            c.send(b"HTTP/1.1 200 OK\r\nX-Upstream-Id: %s\r\nConnection: close\r\n\r\n" % self.id.encode())
            if req.method != "HEAD":
                self._send_pattern(c, n, 65536)
            return False
        keep = req.keep_alive
        c.send(("HTTP/1.1 200 OK\r\nX-Upstream-Id: %s\r\nContent-Type: application/octet-stream\r\n"
                "Transfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n%s\r\n"
                % (self.id, "" if keep else "Connection: close\r\n")).encode())
        if req.method == "HEAD":
            return keep
        sizes = [1, 1000, 4096, 65536, 7, 30000]
        off = 0
        i = 0
        while off < n:
            k = min(sizes[i % len(sizes)], n - off)
            ext = b";piece=%d" % i if i == 1 else b""
            c.send(b"%x%s\r\n" % (k, ext) + pattern(off, k) + b"\r\n")
            off += k
            i += 1
        c.send(b"0\r\nX-Checksum: %s\r\n\r\n" % pattern_sha256(n).encode())
        return keep

    def _wait_peer_close(self, c, timeout):
        """Wait up to `timeout` seconds (None: forever). True if the peer
        closed (EOF or reset) meanwhile; bytes that arrive are kept."""
        deadline = None if timeout is None else time.time() + timeout
        while True:
            left = None if deadline is None else deadline - time.time()
            if left is not None and left <= 0:
                return False
            r, _, _ = select.select([c.sock], [], [], 1.0 if left is None else min(left, 1.0))
            if r:
                try:
                    data = c.sock.recv(65536)
                except OSError:
                    return True
                if not data:
                    return True
                c.buf += data

    # ---- WebSocket ----
    def _ws(self, c, req):
        key = hget(req.headers, "sec-websocket-key")
        if key is None or "websocket" not in tokens(req.headers, "upgrade") or \
                "upgrade" not in tokens(req.headers, "connection"):
            self._read_body(c, req)
            self._record(c, req, ws=False)
            return self._respond(c, req, 426, [("Content-Type", "text/plain")], b"need websocket\n")
        self._record(c, req, ws=True)
        accept = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
        c.send(("HTTP/1.1 101 Switching Protocols\r\nX-Upstream-Id: %s\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n" % (self.id, accept)).encode())
        try:
            return self._ws_frames(c)
        except Peer as e:
            self.st.event("ws_closed", conn=c.cid, why=str(e))
            raise

    def _ws_frames(self, c):
        while True:
            while len(c.buf) < 2:
                c.fill()
            b0, b1 = c.buf[0], c.buf[1]
            fin, op = b0 & 0x80, b0 & 0x0F
            masked, n = b1 & 0x80, b1 & 0x7F
            hl = 2
            if n == 126:
                hl = 4
            elif n == 127:
                hl = 10
            if masked:
                hl += 4
            while len(c.buf) < hl:
                c.fill()
            if n == 126:
                n = struct.unpack("!H", bytes(c.buf[2:4]))[0]
            elif n == 127:
                n = struct.unpack("!Q", bytes(c.buf[2:10]))[0]
            mkey = bytes(c.buf[hl - 4:hl]) if masked else None
            while len(c.buf) < hl + n:
                c.fill()
            payload = bytes(c.buf[hl:hl + n])
            del c.buf[:hl + n]
            if masked:
                payload = ws_mask(payload, mkey)
            else:
                self.st.event("ws_unmasked", conn=c.cid)
            self.st.event("ws_frame", conn=c.cid, opcode=op, fin=bool(fin), length=n)
            if op == 0x8:
                c.send(ws_frame(0x8, payload[:125]))
                self.st.event("ws_closed", conn=c.cid, why="close frame")
                return False
            if op == 0x9:
                c.send(ws_frame(0xA, payload))
                continue
            if op == 0xA:
                continue
            c.send(ws_frame(op, payload, fin=bool(fin)))

    # ---- control port ----
    def _control(self, c, req):
        self._read_body(c, req)
        if req.path == "/stats":
            body = self.st.snapshot_stats()
        elif req.path == "/log":
            body = self.st.snapshot_log()
        elif req.path == "/reset":
            self.st.reset()
            body = {"ok": True}
        elif req.path == "/counts":
            with self.st.lock:
                body = {"targets": dict(self.st.targets), "paths": dict(self.st.paths),
                        "total": self.st.counter}
        elif req.path == "/set":
            with self.st.lock:
                if "clear" in req.query:
                    self.st.overrides = {}
                for k, v in req.query.items():
                    if k != "clear":
                        self.st.overrides[k] = v
                body = {"overrides": dict(self.st.overrides)}
        else:
            return self._respond(c, req, 404, [], b"no such control endpoint\n")
        return self._respond(c, req, 200, [("Content-Type", "application/json")],
                             json.dumps(body).encode())


def ws_mask(payload, key):
    n = len(payload)
    if n == 0:
        return b""
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


def ws_frame(opcode, payload, fin=True, mask_key=None):
    b0 = (0x80 if fin else 0) | opcode
    m = 0x80 if mask_key is not None else 0
    n = len(payload)
    if n < 126:
        hdr = struct.pack("!BB", b0, m | n)
    elif n < 65536:
        hdr = struct.pack("!BBH", b0, m | 126, n)
    else:
        hdr = struct.pack("!BBQ", b0, m | 127, n)
    if mask_key is not None:
        return hdr + mask_key + ws_mask(payload, mask_key)
    return hdr + payload


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=0, help="main port (0: any free port)")
    ap.add_argument("--control-port", type=int, default=0, help="control port (0: any free port)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--id", default="upstream-%d" % os.getpid(), help="name of this instance")
    a = ap.parse_args()
    Server(a.id, a.port, a.control_port, a.host).serve()


if __name__ == "__main__":
    main()
