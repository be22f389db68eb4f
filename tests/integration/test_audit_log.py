"""Audit log: one JSON line per request on routes with `audit: true` (who, what, when,
from where, outcome), in its own file; never a password or token; reopened on SIGUSR1."""
import base64
import json
import os
import re
import signal
import socket
import subprocess
import time

import requests

from conftest import RawConn, free_port, make_config, port_accepts, wait_for

FIELDS = {"time", "request_id", "client", "forwarded_for", "user", "user_agent", "method", "host",
          "path", "route", "upstream", "server", "status", "outcome", "bytes_in", "bytes_out",
          "duration_ms"}


def lines_of(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def start_audited(start_upstream, start_portico, tmp_path, extra=""):
    up = start_upstream("u1")
    audit, access = tmp_path / "audit.log", tmp_path / "access.log"
    port = free_port()
    cfg = make_config(port, {"app": {"servers": [up.address]}},
                      routes=[{"prefix": "/auth/", "upstream": "app"}, {"prefix": "/", "upstream": "app"}],
                      limits={"max_body": "1KiB"},
                      extra="audit_log: { path: %s }\naccess_log: { path: %s }\n%s" % (audit, access, extra))
    # the first route is audited
    cfg = cfg.replace("    upstream: app\n", "    upstream: app\n    audit: true\n", 1)
    p = start_portico(cfg, port=port)
    return p, up, str(audit), str(access), "http://127.0.0.1:%d" % port


def test_audited_routes_only_with_every_field(start_upstream, start_portico, tmp_path):
    p, up, audit, access, base = start_audited(start_upstream, start_portico, tmp_path)
    creds = base64.b64encode(b"alice:s3cr3t-pw").decode()
    r = requests.post(base + "/auth/login", data=b"user=alice",
                      headers={"Host": "shop.example", "Authorization": "Basic " + creds,
                               "User-Agent": "curl/8.0", "X-Forwarded-For": "203.0.113.7",
                               "X-Request-Id": "rid-1"}, timeout=5)
    assert r.status_code == 200
    assert requests.get(base + "/auth/status?code=403", headers={"Host": "shop.example",
                        "Authorization": "Bearer tok-abcdef-123456"}, timeout=5).status_code == 403
    assert requests.get(base + "/auth/status?code=502", timeout=5).status_code == 502
    assert requests.get(base + "/other", timeout=5).status_code == 200       # not audited
    assert requests.get(base + "/count", timeout=5).status_code == 200       # not audited
    assert wait_for(lambda: len(lines_of(audit)) == 3, 5), lines_of(audit)
    assert wait_for(lambda: len(lines_of(access)) == 5, 5)
    got = lines_of(audit)
    for l in got:
        assert set(l) == FIELDS, l
        assert l["client"] == "127.0.0.1" and l["route"] == "/auth/" and l["upstream"] == "app"
        assert l["time"].endswith("Z") and len(l["time"]) == 24
    ok = next(l for l in got if l["method"] == "POST")
    assert ok == dict(ok, request_id="rid-1", forwarded_for="203.0.113.7", user="alice",
                      user_agent="curl/8.0", host="shop.example", path="/auth/login",
                      server=up.address, status=200, outcome="success")
    assert ok["bytes_in"] > 10 and ok["bytes_out"] > 0 and ok["duration_ms"] > 0
    denied = next(l for l in got if l["status"] == 403)
    assert denied["outcome"] == "denied" and denied["user"] is None       # a bearer token is no user
    assert denied["path"] == "/auth/status?code=403"
    failed = next(l for l in got if l["status"] == 502)
    assert failed["outcome"] == "failure" and failed["forwarded_for"] is None
    assert failed["user_agent"].startswith("python-requests")
    # secrets never reach the file: not the password, not the Authorization values
    text = open(audit).read()
    for secret in ("s3cr3t-pw", creds, "tok-abcdef-123456"):
        assert secret not in text
    assert secret not in open(access).read()


def test_aborted_and_refused_requests(start_upstream, start_portico, tmp_path):
    p, up, audit, access, base = start_audited(start_upstream, start_portico, tmp_path)
    # the client goes away before the response: aborted (status 499)
    c = RawConn(p.port)
    c.send(b"GET /auth/slow?delay=2 HTTP/1.1\r\nHost: test.local\r\n\r\n")
    assert wait_for(lambda: up.stats()["heads"] >= 1, 5)
    c.close()
    # a body over max_body is refused before any upstream sees it: still audited
    r = requests.post(base + "/auth/upload", data=b"x" * 5000, timeout=5)
    assert r.status_code == 413
    assert wait_for(lambda: len(lines_of(audit)) == 2, 5), lines_of(audit)
    by = {l["status"]: l for l in lines_of(audit)}
    assert by[499]["outcome"] == "aborted" and by[499]["path"] == "/auth/slow?delay=2"
    assert by[413]["outcome"] == "failure" and by[413]["method"] == "POST"
    assert by[413]["server"] is None


def test_reopen_on_sigusr1(start_upstream, start_portico, tmp_path):
    p, up, audit, access, base = start_audited(start_upstream, start_portico, tmp_path)
    requests.get(base + "/auth/a", timeout=5)
    assert wait_for(lambda: len(lines_of(audit)) == 1, 5)
    os.rename(audit, audit + ".1")
    p.signal(signal.SIGUSR1)
    time.sleep(0.3)
    requests.get(base + "/auth/b", timeout=5)
    assert wait_for(lambda: [l["path"] for l in lines_of(audit)] == ["/auth/b"], 5)
    assert [l["path"] for l in lines_of(audit + ".1")] == ["/auth/a"]


def test_config_errors(portico_bin, tmp_path):
    cfg = tmp_path / "c.yaml"

    def check(text):
        cfg.write_text(text)
        r = subprocess.run([portico_bin, "-t", "-c", str(cfg)], capture_output=True, text=True)
        return r.returncode, r.stderr.strip()

    base = ('listen: [ "127.0.0.1:%d" ]\nupstreams: { app: { servers: [ "127.0.0.1:9" ] } }\n'
            % free_port())
    rc, err = check(base + "routes:\n  - { upstream: app, audit: true }\n")
    assert rc == 1 and err == "%s:4:29: routes[0].audit: needs a top-level audit_log to write to" % cfg
    rc, err = check(base + "audit_log: { path: /tmp/x.log }\nroutes:\n  - { upstream: app, audit: sure }\n")
    assert rc == 1 and err == "%s:5:29: routes[0].audit: expected true or false" % cfg
    rc, err = check(base + "audit_log: { file: /tmp/x.log }\nroutes: [ { upstream: app } ]\n")
    assert rc == 1 and err == "%s:3:14: audit_log.file: unknown key" % cfg
    rc, err = check(base + "audit_log: {}\nroutes: [ { upstream: app } ]\n")
    assert rc == 1 and "audit_log: missing key \"path\"" in err
    rc, err = check(base + "audit_log: off\nroutes: [ { upstream: app, audit: false } ]\n")
    assert rc == 0, err
    rc, err = check(base + "audit_log: { path: /nonexistent-dir/audit.log }\nroutes: [ { upstream: app } ]\n")
    assert rc == 0          # -t validates the file's syntax; opening happens at start


def test_reload_moves_the_audit_log(start_upstream, start_portico, tmp_path):
    """A request in flight across a reload that moves the audit log is written to the log of
    the configuration it started on; later ones to the new file."""
    p, up, audit, access, base = start_audited(start_upstream, start_portico, tmp_path)
    slow = RawConn(p.port, timeout=10)
    slow.send(b"GET /auth/slow?delay=1 HTTP/1.1\r\nHost: test.local\r\n\r\n")
    assert wait_for(lambda: up.stats()["heads"] >= 1, 5)
    new = str(tmp_path / "audit2.log")
    with open(p.config_path) as f:
        cfg = f.read()
    with open(p.config_path, "w") as f:
        f.write(cfg.replace("audit_log: { path: %s }" % audit, "audit_log: { path: %s }" % new))
    p.signal(signal.SIGHUP)
    assert wait_for(lambda: "configuration 2 loaded" in p.log_text(), 5)
    requests.get(base + "/auth/after", timeout=5)
    assert slow.read_response().status == 200
    slow.close()
    assert wait_for(lambda: [l["path"] for l in lines_of(new)] == ["/auth/after"], 5), lines_of(new)
    assert wait_for(lambda: [l["path"] for l in lines_of(audit)] == ["/auth/slow?delay=1"], 5), \
        lines_of(audit)


def test_unwritable_audit_log_fails_at_start(portico_bin, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(make_config(free_port(), {"app": {"servers": ["127.0.0.1:9"]}},
                               extra="audit_log: { path: %s/no/such/dir/audit.log }" % tmp_path))
    r = subprocess.run([portico_bin, "-c", str(cfg)], capture_output=True, text=True, timeout=10)
    assert r.returncode == 1
    assert "audit log %s/no/such/dir/audit.log: No such file or directory" % tmp_path in r.stderr


def start_on_pipe(portico_bin, up, tmp_path, port, extra=""):
    """portico (one worker, every request audited) with its audit log on stdout, a pipe the
    test reads, or not. Returns (process, stderr file object)."""
    cfg = tmp_path / "c.yaml"
    text = make_config(port, {"app": {"servers": [up.address]}}, workers=1,
                       extra="audit_log: { path: stdout }\n" + extra)
    cfg.write_text(text.replace("    upstream: app\n", "    upstream: app\n    audit: true\n", 1))
    errlog = open(str(tmp_path / "stderr.log"), "wb")
    proc = subprocess.Popen([portico_bin, "-c", str(cfg)], stdout=subprocess.PIPE, stderr=errlog,
                            stdin=subprocess.DEVNULL)
    if not wait_for(lambda: proc.poll() is None and port_accepts(port), 10):
        proc.kill()
        proc.communicate(timeout=5)
        errlog.close()
        raise AssertionError("portico did not start: %s" % open(str(tmp_path / "stderr.log")).read())
    return proc, errlog


def test_a_stuck_writer_drops_and_counts_lines(start_upstream, portico_bin, tmp_path):
    """Audit lines to a pipe nobody reads: the writer blocks, its bounded queue fills, then
    lines are dropped and counted (with a warning at most once a second) while requests keep
    being served; every line is either in the output or counted."""
    up = start_upstream("u1")
    port, admin = free_port(), free_port()
    proc, errlog = start_on_pipe(portico_bin, up, tmp_path, port,
                                 'admin: { listen: "127.0.0.1:%d" }' % admin)
    try:
        def dropped_now():
            with RawConn(admin) as c:
                text = c.request("GET", "/metrics", host="admin").body.decode()
            return int(re.search(r"\nportico_audit_log_dropped_total (\d+)\n", text).group(1))
        # audit buffers are handed over every loop turn, a few lines each: send requests
        # until the 64 KiB pipe and the 256 queued buffers have overflowed
        sent = dropped = 0
        with RawConn(port) as c:
            while sent < 20000 and not dropped:
                for _ in range(500):
                    assert c.request("GET", "/count?i=%d" % sent).status == 200
                    sent += 1
                dropped = dropped_now()
        time.sleep(0.2)             # the last lines are handed over (or dropped) by now
        dropped = dropped_now()
        assert dropped > 0
        warnings = open(str(tmp_path / "stderr.log")).read().count("stdout: the writer is behind")
        assert 1 <= warnings <= 3   # at most once a second
        # unblock the writer: what it had queued still arrives, then a clean stop
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0
        got = [json.loads(l) for l in out.decode().splitlines()]
        assert len(got) + dropped == sent
        assert got[0]["path"] == "/count?i=0"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5)
        errlog.close()


def test_sigterm_with_a_writer_stuck_on_a_pipe(start_upstream, portico_bin, tmp_path):
    """Nobody reads the pipe the audit log goes to: SIGTERM still stops the process, after
    giving the blocked writer 5 s, and says so."""
    up = start_upstream("u1")
    port = free_port()
    proc, errlog = start_on_pipe(portico_bin, up, tmp_path, port)
    try:
        with RawConn(port) as c:
            for i in range(1000):           # ~300 KB of lines: far more than a pipe holds
                assert c.request("GET", "/count?i=%d" % i).status == 200
        time.sleep(0.2)
        t0 = time.time()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert 4 < time.time() - t0 < 12
        err = open(str(tmp_path / "stderr.log")).read()
        assert "stdout: the writer has been blocked for 5000 ms" in err, err[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        proc.stdout.close()
        errlog.close()


def test_utf8_user_names_stay_readable(start_upstream, start_portico, tmp_path):
    """A UTF-8 user name comes out as the same text; a byte that is not UTF-8 is escaped."""
    p, up, audit, access, base = start_audited(start_upstream, start_portico, tmp_path)
    for creds in ("josé:pw".encode(), b"bad\xffname:pw"):
        requests.get(base + "/auth/x", headers={"Authorization": "Basic " +
                     base64.b64encode(creds).decode()}, timeout=5)
    assert wait_for(lambda: len(lines_of(audit)) == 2, 5)
    users = sorted(l["user"] for l in lines_of(audit))
    assert users == ["bad\u00ffname", "josé"], users
    assert "josé".encode() in open(audit, "rb").read()      # raw UTF-8, not \u escapes
    assert b"bad\\u00ffname" in open(audit, "rb").read()
