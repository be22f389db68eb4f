"""Configuration reload: SIGHUP and POST /reload switch routing, listeners, logs and
limits without dropping a connection or failing a request; a bad file changes nothing."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest
import requests

from conftest import RawConn, free_port, make_config, port_accepts, wait_for
from test_admin import metric

TOKEN = "reload-token-0123456789"


class Setup:
    """One portico with an admin port, whose config file the test rewrites."""

    def __init__(self, start_upstream, start_portico, tmp_path, n_upstreams=2, workers=2):
        self.ups = [start_upstream("u%d" % (i + 1)) for i in range(n_upstreams)]
        self.tmp = tmp_path
        tok = tmp_path / "admin.token"
        tok.write_text(TOKEN + "\n")
        self.admin_port = free_port()
        self.port = free_port()
        self.workers = workers
        self.admin_extra = 'admin: { listen: "127.0.0.1:%d", token_file: %s }' % (self.admin_port, tok)
        self.p = start_portico(self.config(self.ups[0]), port=self.port)
        self.admin = "http://127.0.0.1:%d" % self.admin_port
        self.base = "http://127.0.0.1:%d" % self.port

    def config(self, up, listen=None, extra="", upstream_opts=""):
        cfg = make_config(self.port, {"app": {"servers": [up.address], "keepalive": 8}},
                          workers=self.workers, extra=self.admin_extra + ("\n" + extra if extra else ""))
        if listen is not None:
            cfg = cfg.replace('listen: [ "127.0.0.1:%d" ]' % self.port,
                              "listen: [ %s ]" % ", ".join('"127.0.0.1:%d"' % p for p in listen))
        if upstream_opts:
            cfg = cfg.replace("    keepalive: 8\n", "    keepalive: 8\n" + upstream_opts)
        return cfg

    def write(self, text):
        tmp = self.p.config_path + ".new"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.p.config_path)

    def reload_http(self):
        return requests.post(self.admin + "/reload", headers={"Authorization": "Bearer " + TOKEN},
                             timeout=15)

    def status(self):
        return requests.get(self.admin + "/status", headers={"Authorization": "Bearer " + TOKEN},
                            timeout=5).json()

    def metrics(self):
        return requests.get(self.admin + "/metrics", headers={"Authorization": "Bearer " + TOKEN},
                            timeout=5).text

    def served_by(self, path="/count", port=None):
        r = requests.get("http://127.0.0.1:%d%s" % (port or self.port, path),
                         headers={"Host": "test.local"}, timeout=5)
        assert r.status_code == 200, r.text
        return r.headers["X-Upstream-Id"]


@pytest.fixture
def setup(start_upstream, start_portico, tmp_path):
    return Setup(start_upstream, start_portico, tmp_path)


def test_sighup_switches_routing(setup):
    s = setup
    assert {s.served_by() for _ in range(5)} == {"u1"}
    assert s.status()["config"]["generation"] == 1
    s.write(s.config(s.ups[1]))
    s.p.signal(signal.SIGHUP)
    assert wait_for(lambda: s.status()["config"]["generation"] == 2, 5)
    # every worker has switched when the generation is published: no stragglers
    assert {s.served_by() for _ in range(20)} == {"u2"}
    m = s.metrics()
    assert metric(m, "portico_config_generation") == 2
    assert metric(m, "portico_config_reloads_total", result="success") == 1
    assert metric(m, "portico_config_last_reload_successful") == 1
    assert wait_for(lambda: "configuration 2 loaded" in s.p.log_text(), 10), s.p.log_text()  # the log thread writes it


def test_post_reload_needs_token_and_post(setup):
    s = setup
    assert requests.post(s.admin + "/reload", timeout=5).status_code == 401
    r = requests.get(s.admin + "/reload", headers={"Authorization": "Bearer " + TOKEN}, timeout=5)
    assert r.status_code == 405 and r.headers["Allow"] == "POST"
    s.write(s.config(s.ups[1]))
    r = s.reload_http()
    assert r.status_code == 200, r.text
    assert r.json() == {"reloaded": True, "generation": 2}
    assert {s.served_by() for _ in range(10)} == {"u2"}


@pytest.mark.parametrize("bad,where", [
    ("listen: [ \"127.0.0.1:1\" ]\nupstreams: { app: { servers: [ { address: nope } ] } }\n",
     r":2:\d+: upstreams\.app\.servers\[0\]\.address: "),
    ("listen: [ oops\n", r":\d+:\d+: \(yaml\)"),
    ("", r":1:1: \(top\): the file is empty"),
])
def test_bad_config_is_refused_and_old_keeps_serving(setup, bad, where):
    s = setup
    s.write(bad)
    r = s.reload_http()
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert re.search(re.escape(s.p.config_path) + where, err), err
    assert {s.served_by() for _ in range(10)} == {"u1"}
    st = s.status()["config"]
    assert st["generation"] == 1 and st["reloads_failed"] == 1 and st["last_reload_ok"] is False
    assert st["last_error"] == err
    m = s.metrics()
    assert metric(m, "portico_config_reloads_total", result="failure") == 1
    assert metric(m, "portico_config_last_reload_successful") == 0
    assert wait_for(lambda: "reload refused: " in s.p.log_text(), 10), s.p.log_text()  # the log thread writes it
    # SIGHUP with the same bad file: refused too, still serving
    s.p.signal(signal.SIGHUP)
    assert wait_for(lambda: s.status()["config"]["reloads_failed"] == 2, 5)
    assert s.served_by() == "u1"
    # a good file again is accepted
    s.write(s.config(s.ups[1]))
    assert s.reload_http().status_code == 200
    assert s.served_by() == "u2"
    assert s.p.alive()


def test_port_in_use_refuses_reload(setup):
    s = setup
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        s.write(s.config(s.ups[1], listen=[s.port, busy.getsockname()[1]]))
        r = s.reload_http()
        assert r.status_code == 422
        assert "listen 127.0.0.1:%d" % busy.getsockname()[1] in r.json()["error"]
        assert s.served_by() == "u1"        # nothing changed, not even the routing
    finally:
        busy.close()


def test_keepalive_connection_survives_and_in_flight_request_finishes(setup):
    s = setup
    c = RawConn(s.port)
    r = c.request("GET", "/count")
    assert r.status == 200 and r.header("X-Upstream-Id") == "u1"
    # a slow request in flight on the old configuration
    slow = RawConn(s.port, timeout=10)
    slow.send(b"GET /slow?delay=1.5 HTTP/1.1\r\nHost: test.local\r\n\r\n")
    assert wait_for(lambda: s.ups[0].stats()["heads"] >= 2, 5)
    s.write(s.config(s.ups[1]))
    assert s.reload_http().status_code == 200
    # the idle keep-alive connection is still open and now goes to u2
    r = c.request("GET", "/count")
    assert r.status == 200 and r.header("X-Upstream-Id") == "u2"
    # the slow one completes from u1, on the configuration it started with
    r = slow.read_response()
    assert r.status == 200 and r.header("X-Upstream-Id") == "u1"
    # and its connection stays usable, on the new configuration
    r = slow.request("GET", "/count")
    assert r.status == 200 and r.header("X-Upstream-Id") == "u2"
    c.close()
    slow.close()


def test_listeners_added_and_removed(setup):
    s = setup
    extra_port = free_port()
    s.write(s.config(s.ups[0], listen=[s.port, extra_port]))
    assert s.reload_http().status_code == 200
    assert s.served_by(port=extra_port) == "u1"
    assert s.served_by(port=s.port) == "u1"
    # drop the original address: it stops accepting, the new one keeps serving
    s.write(s.config(s.ups[1], listen=[extra_port]))
    assert s.reload_http().status_code == 200
    assert wait_for(lambda: not port_accepts(s.port), 5)
    assert s.served_by(port=extra_port) == "u2"
    assert "no longer listening on 127.0.0.1:%d" % s.port in s.p.log_text()


def test_metrics_keep_counting_across_reload(setup):
    s = setup
    for _ in range(7):
        s.served_by()
    # a request is counted when its exchange ends, just after its response
    # is written: the scrape may come a moment before that
    count = lambda: metric(s.metrics(), "portico_http_requests_total", route="/", method="GET",
                           code="200")
    assert wait_for(lambda: count() == 7, 5), count()
    s.write(s.config(s.ups[1]))
    assert s.reload_http().status_code == 200
    for _ in range(3):
        s.served_by()
    assert wait_for(lambda: count() == 10, 5), count()
    assert metric(s.metrics(), "portico_connections_total") >= 10


def test_access_log_path_changes_on_reload(setup):
    s = setup
    a, b = s.tmp / "a.log", s.tmp / "b.log"
    s.write(s.config(s.ups[0], extra="access_log: { path: %s }" % a))
    assert s.reload_http().status_code == 200
    requests.get(s.base + "/count?first", headers={"Host": "test.local"}, timeout=5)
    s.write(s.config(s.ups[0], extra="access_log: { path: %s }" % b))
    assert s.reload_http().status_code == 200
    requests.get(s.base + "/count?second", headers={"Host": "test.local"}, timeout=5)

    def lines(p):
        return [json.loads(l) for l in open(p)] if os.path.exists(p) else []
    assert wait_for(lambda: [l["path"] for l in lines(a)] == ["/count?first"] and
                    [l["path"] for l in lines(b)] == ["/count?second"], 5)


def test_limits_change_on_reload(setup):
    s = setup
    big = "x" * 3000
    assert requests.get(s.base + "/count", headers={"Host": "test.local", "X-Big": big},
                        timeout=5).status_code == 200
    s.write(s.config(s.ups[0]) + "limits: { max_header_bytes: 2KiB, max_request_line: 1KiB }\n")
    assert s.reload_http().status_code == 200
    assert requests.get(s.base + "/count", headers={"Host": "test.local", "X-Big": big},
                        timeout=5).status_code == 431
    # raising it past the buffers sized at start takes a restart: refused, with a reason
    s.write(s.config(s.ups[0]) + "limits: { max_header_bytes: 512KiB }\n")
    r = s.reload_http()
    assert r.status_code == 422 and "limits.max_header_bytes" in r.json()["error"]


def test_health_state_survives_reload(start_upstream, start_portico, tmp_path):
    """A server the health checker took out stays out after a reload that keeps it."""
    s = Setup(start_upstream, start_portico, tmp_path)
    dead = "127.0.0.1:%d" % free_port()
    both = s.config(s.ups[0]).replace(
        '      - { address: "%s" }\n' % s.ups[0].address,
        '      - { address: "%s" }\n      - { address: "%s" }\n' % (s.ups[0].address, dead))
    both = both.replace("    keepalive: 8\n", "    keepalive: 8\n    health: { path: /health, interval: 100ms, timeout: 200ms, rise: 2, fall: 1 }\n")
    s.write(both)
    assert s.reload_http().status_code == 200

    def down():
        ups = s.status()["upstreams"][0]["servers"]
        return [x["state"] for x in ups] == ["up", "down"]
    assert wait_for(down, 5)
    changes = s.status()["upstreams"][0]["servers"][1]["state_changes"]
    s.write(both.replace("retries", "retries"))      # the same file again
    assert s.reload_http().status_code == 200
    assert down()
    assert s.status()["upstreams"][0]["servers"][1]["state_changes"] == changes
    assert {s.served_by() for _ in range(10)} == {"u1"}


def test_workers_change_takes_restart(setup):
    s = setup
    s.write(s.config(s.ups[1]).replace("workers: 2", "workers: 3"))
    assert s.reload_http().status_code == 200
    assert s.status()["workers"] == 2
    assert wait_for(lambda: "workers 2 -> 3 takes a restart" in s.p.log_text(), 10), s.p.log_text()  # the log thread writes it
    assert s.served_by() == "u2"


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed (scripts/deps.sh)")
def test_reload_under_wrk_load_fails_nothing(setup):
    """Ten reloads, alternating the upstream, under steady wrk load: every request
    succeeds, and both upstreams served a share."""
    s = setup
    configs = [s.config(s.ups[0]), s.config(s.ups[1])]
    out = {}

    def load():
        out["p"] = subprocess.run(
            ["wrk", "-t1", "-c8", "-d4s", "--latency", "-H", "Host: test.local", s.base + "/count"],
            capture_output=True, text=True, timeout=30)
    t = threading.Thread(target=load)
    t.start()
    time.sleep(0.5)
    gens = []
    for i in range(10):
        s.write(configs[(i + 1) % 2])
        r = s.reload_http()
        assert r.status_code == 200, r.text
        gens.append(r.json()["generation"])
        time.sleep(0.25)
    t.join()
    text = out["p"].stdout
    assert out["p"].returncode == 0, out["p"].stderr
    m = re.search(r"(\d+) requests in", text)
    assert m and int(m.group(1)) > 500, text
    assert "Socket errors" not in text, text
    assert "Non-2xx or 3xx responses" not in text, text
    assert gens == list(range(2, 12))
    assert s.ups[0].stats()["requests"] > 100 and s.ups[1].stats()["requests"] > 100
    assert "reload refused" not in s.p.log_text()


def test_systemd_notify_protocol(portico_bin, start_upstream, tmp_path):
    """Type=notify: READY=1 once serving, RELOADING=1 then READY=1 around a reload
    (good or bad), STOPPING=1 on SIGTERM."""
    up = start_upstream("u1")
    port = free_port()
    cfg = tmp_path / "p.yaml"
    cfg.write_text(make_config(port, {"app": {"servers": [up.address]}}))
    sock_path = str(tmp_path / "notify.sock")
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(sock_path)
    ns.settimeout(10)
    env = dict(os.environ, NOTIFY_SOCKET=sock_path)
    log = open(tmp_path / "p.log", "wb")
    proc = subprocess.Popen([portico_bin, "-c", str(cfg)], env=env, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        msg = ns.recv(4096).decode()
        assert msg.startswith("READY=1"), msg
        assert port_accepts(port)           # ready means serving
        proc.send_signal(signal.SIGHUP)
        msg = ns.recv(4096).decode()
        assert msg.startswith("RELOADING=1\nMONOTONIC_USEC="), msg
        assert int(msg.split("MONOTONIC_USEC=")[1]) > 0
        msg = ns.recv(4096).decode()
        assert msg.startswith("READY=1") and "configuration 2" in msg, msg
        cfg.write_text("broken: [\n")
        proc.send_signal(signal.SIGHUP)
        assert ns.recv(4096).decode().startswith("RELOADING=1")
        msg = ns.recv(4096).decode()
        assert msg.startswith("READY=1") and "refused" in msg, msg
        proc.send_signal(signal.SIGTERM)
        assert ns.recv(4096).decode() == "STOPPING=1"
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        ns.close()


def test_reload_keeps_warm_upstream_connections(start_upstream, start_portico, tmp_path):
    """Idle keep-alive connections to a server that stays are handed to the new
    configuration; those to a server that went away are closed."""
    s = Setup(start_upstream, start_portico, tmp_path, workers=1)

    def count(path="/count"):
        r = requests.get(s.base + path, headers={"Host": "test.local"}, timeout=5)
        assert r.status_code == 200
        return r.json()
    first = count()
    assert first["conn_requests"] == 1
    # the same upstream, another route added: the pooled connection is reused
    s.write(s.config(s.ups[0]).replace("routes:\n", "routes:\n  - match: { prefix: /other/ }\n    upstream: app\n"))
    assert s.reload_http().status_code == 200
    again = count()
    assert again["conn"] == first["conn"] and again["conn_requests"] == 2, (first, again)
    # requests in flight across a reload give their connections to the new pool:
    # two at once need two upstream connections
    slow = [RawConn(s.port, timeout=10), RawConn(s.port, timeout=10)]
    for c in slow:
        c.send(b"GET /slow?delay=1 HTTP/1.1\r\nHost: test.local\r\n\r\n")
    assert wait_for(lambda: s.ups[0].stats()["heads"] >= 4, 5)
    conns = s.ups[0].stats()["connections"]
    assert conns == 2
    s.write(s.config(s.ups[0]))
    assert s.reload_http().status_code == 200
    for c in slow:
        assert c.read_response().status == 200
        c.close()
    # both are reused by two requests at once on the new configuration: no new one
    a, b = RawConn(s.port), RawConn(s.port)
    a.send(b"GET /slow?delay=0.3 HTTP/1.1\r\nHost: test.local\r\n\r\n")
    b.send(b"GET /slow?delay=0.3 HTTP/1.1\r\nHost: test.local\r\n\r\n")
    assert a.read_response().status == 200 and b.read_response().status == 200
    a.close()
    b.close()
    assert s.ups[0].stats()["connections"] == conns
    # a server that is gone: its connections are not carried over
    s.write(s.config(s.ups[1]))
    assert s.reload_http().status_code == 200
    assert count()["id"] == "u2"
    assert count()["conn_requests"] == 2
