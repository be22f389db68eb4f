#!/usr/bin/env python3
"""upstream.py with two run-time switches, for the load-balancing tests.

    flip_upstream.py --port 0 --id a

serves everything upstream.py serves (and prints the same `READY <port>
<control-port>` line), except that:

    /health          answers with the status set by the control port
                     (200 "ok" at start; any other status has body "sick").
    every other request on the main port first sleeps the delay set by the
                     control port (0 at start), so the server can be made
                     slow as a whole.

Extra control-port endpoints (besides /stats, /log, /reset):

    GET /set?health=CODE     status of /health from now on
    GET /set?delay=SECONDS   delay before answering any non-health request
    GET /state               {"health": CODE, "delay": S, "health_checks": N}
"""

import argparse
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import upstream  # noqa: E402


class FlipServer(upstream.Server):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.health = 200
        self.delay = 0.0
        self.health_checks = 0
        self.flip_lock = threading.Lock()

    def _handle(self, c, req):
        name = req.path.rstrip("/").rsplit("/", 1)[-1] or "echo"
        if name == "health":
            self._read_body(c, req)
            self._record(c, req)
            with self.flip_lock:
                self.health_checks += 1
                status = self.health
            body = b"ok\n" if status == 200 else b"sick\n"
            return self._respond(c, req, status, [("Content-Type", "text/plain")], body)
        with self.flip_lock:
            delay = self.delay
        if delay > 0:
            time.sleep(delay)
        return super()._handle(c, req)

    def _control(self, c, req):
        if req.path == "/set":
            self._read_body(c, req)
            with self.flip_lock:
                if "health" in req.query:
                    self.health = int(req.query["health"][0])
                if "delay" in req.query:
                    self.delay = float(req.query["delay"][0])
            return self._state(c, req)
        if req.path == "/state":
            self._read_body(c, req)
            return self._state(c, req)
        return super()._control(c, req)

    def _state(self, c, req):
        with self.flip_lock:
            body = {"id": self.id, "health": self.health, "delay": self.delay,
                    "health_checks": self.health_checks}
        return self._respond(c, req, 200, [("Content-Type", "application/json")],
                             json.dumps(body).encode())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--control-port", type=int, default=0)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--id", default="flip-%d" % os.getpid())
    a = ap.parse_args()
    FlipServer(a.id, a.port, a.control_port, a.host).serve()


if __name__ == "__main__":
    main()
