#!/usr/bin/python3
"""A small demo upstream for `make run`: /, /echo, /bytes?n=N, /health, /feed/..."""
import argparse
import itertools
import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


ORIGIN_HITS = itertools.count(1)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "demo-upstream"

    def log_message(self, *args):
        pass

    def _send(self, code, body, ctype="text/plain"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def do_GET(self):
        url = urlparse(self.path)
        if url.path == "/health":
            return self._send(200, b"ok\n")
        if url.path == "/bytes":
            n = min(int(parse_qs(url.query).get("n", ["1024"])[0]), 1 << 30)
            return self._send(200, b"x" * n, "application/octet-stream")
        if url.path == "/echo":
            return self._echo(b"")
        if url.path.startswith("/feed/"):
            # a feed the cache in front keeps for 30 s: origin_hit only grows on a miss
            items = [{"id": i, "title": f"post {i}", "body": "lorem ipsum dolor sit amet " * 4}
                     for i in range(20)]
            body = json.dumps({"feed": url.path, "origin_hit": next(ORIGIN_HITS),
                               "generated": time.strftime("%H:%M:%S"), "items": items})
            return self._send(200, body.encode() + b"\n", "application/json")
        self._send(200, b"hello from the demo upstream behind portico\n")

    do_HEAD = do_GET

    def _echo(self, body):
        info = {"method": self.command, "path": self.path,
                "headers": [[k, v] for k, v in self.headers.items()],
                "body": body.decode("utf-8", "replace")}
        self._send(200, json.dumps(info, indent=1).encode() + b"\n", "application/json")

    def do_POST(self):
        self._echo(self._body())

    do_PUT = do_POST


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=9001)
    args = ap.parse_args()
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()
