"""Access log: one JSON line per request with the documented fields; SIGUSR1 reopens."""
import json
import os
import re
import signal
import socket
import time

import requests

from conftest import free_port, make_config

FIELDS = {"time", "request_id", "client", "method", "path", "route", "status", "bytes_in",
          "bytes_out", "duration_ms", "upstream_ms", "upstream", "server", "cache", "rate_limit"}


def read_lines(path, n, timeout=5.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                lines = [json.loads(l) for l in f if l.strip()]
            if len(lines) >= n:
                return lines
        time.sleep(0.05)
    raise AssertionError("expected %d lines in %s" % (n, path))


def test_json_lines_and_reopen(start_upstream, start_portico, tmp_path):
    up = start_upstream("u1")
    log = tmp_path / "access.log"
    port = free_port()
    cfg = make_config(port, {"app": {"servers": [up.address]}},
                      routes=[{"prefix": "/", "upstream": "app", "host": "test.local"}],
                      extra="access_log: { path: %s, format: json }" % log)
    p = start_portico(cfg, port=port)
    base = "http://127.0.0.1:%d" % port
    r = requests.get(base + "/count?x=%22q", headers={"Host": "test.local"}, timeout=5)
    assert r.status_code == 200
    r = requests.post(base + "/echo", data=b"z" * 1000,
                      headers={"Host": "test.local", "X-Request-Id": "my-id-1"}, timeout=5)
    assert r.status_code == 200
    assert requests.get(base + "/", headers={"Host": "other.example"}, timeout=5).status_code == 404
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(b"GET / HTTP/1.1\r\nHost: test.local\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
    assert c.recv(100).startswith(b"HTTP/1.1 400")
    c.close()

    lines = read_lines(str(log), 4)
    for l in lines:
        assert set(l) == FIELDS, l
        assert l["client"] == "127.0.0.1"
        assert l["time"].endswith("Z") and "T" in l["time"]
    # two workers buffer their own lines: the file has them in order per worker only
    def one(pred):
        found = [l for l in lines if pred(l)]
        assert len(found) == 1, lines
        return found[0]
    get = one(lambda l: l["method"] == "GET" and l["status"] == 200)
    post = one(lambda l: l["method"] == "POST")
    nf = one(lambda l: l["status"] == 404)
    bad = one(lambda l: l["status"] == 400)
    assert get["method"] == "GET" and get["path"] == '/count?x=%22q' and get["status"] == 200
    assert get["upstream"] == "app" and get["server"] == up.address
    assert get["upstream_ms"] is not None and get["duration_ms"] >= get["upstream_ms"] - 0.01
    assert len(get["request_id"]) == 32
    assert post["request_id"] == "my-id-1"
    assert post["bytes_in"] > 1000 and post["bytes_out"] > 0
    assert nf["status"] == 404 and nf["path"] == "/"
    assert bad["status"] == 400

    # rotation: move the file away, SIGUSR1, new lines go to a new file
    os.rename(str(log), str(log) + ".1")
    p.signal(signal.SIGUSR1)
    time.sleep(0.3)
    assert requests.get(base + "/count", headers={"Host": "test.local"}, timeout=5).status_code == 200
    new = read_lines(str(log), 1)
    assert new[0]["path"] == "/count"
    assert len(read_lines(str(log) + ".1", 4)) == 4


def test_access_log_off_by_default_and_bad_format(start_upstream, start_portico, portico_bin, tmp_path):
    import subprocess
    cfg = tmp_path / "c.yaml"
    cfg.write_text(make_config(free_port(), {"app": {"servers": ["127.0.0.1:9"]}},
                               extra="access_log: { path: stdout, format: combined }"))
    r = subprocess.run([portico_bin, "-t", "-c", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 1
    assert "access_log.format: the only format is json" in r.stderr
    cfg.write_text(make_config(free_port(), {"app": {"servers": ["127.0.0.1:9"]}},
                               extra="access_log: off"))
    r = subprocess.run([portico_bin, "-t", "-c", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # and running: without the key, and with `off`, requests write no access
    # line anywhere (stdout and stderr both go to the portico log here)
    up = start_upstream("u1")
    for extra in ("", "access_log: off"):
        p = start_portico(upstreams={"app": {"servers": [up.address]}}, extra=extra,
                          name="portico-%s" % ("off" if extra else "default"))
        for _ in range(5):
            assert requests.get("http://127.0.0.1:%d/count" % p.port,
                                headers={"Host": "test.local"}, timeout=5).status_code == 200
        assert requests.get("http://127.0.0.1:%d/count" % p.port, timeout=5,
                            headers={"Host": "test.local", "Content-Length": "x"}).status_code == 400
        time.sleep(0.5)             # longer than access_log.flush would wait
        text = p.log_text()
        assert '"path"' not in text and "/count" not in text, text
        assert re.search(r" info portico .*listening on ", text), text    # the log works
