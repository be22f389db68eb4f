"""Admin listener: /health, /ready, /metrics, /status and the bearer token."""
import json
import os
import re
import time

import requests

from conftest import free_port, make_config

TOKEN = "s3cret-token-0123456789"


def metric(text, name, **labels):
    """The value of one sample, or None."""
    want = ",".join('%s="%s"' % kv for kv in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? (\S+)$', line)
        assert m, "not a valid exposition line: %r" % line
        if m.group(1) != name:
            continue
        got = ",".join(sorted((m.group(3) or "").split(","))) if m.group(3) else ""
        if got == want:
            return float(m.group(4))
    return None


def start(start_upstream, start_portico, tmp_path, servers=None, token=True):
    up = start_upstream("u1")
    tok = tmp_path / "admin.token"
    tok.write_text(TOKEN + "\n")
    admin_port = free_port()
    port = free_port()
    extra = 'admin: { listen: "127.0.0.1:%d"%s }' % (
        admin_port, (", token_file: %s" % tok) if token else "")
    cfg = make_config(port, {"app": {"servers": servers or [up.address]}}, extra=extra)
    p = start_portico(cfg, port=port)
    return p, up, "http://127.0.0.1:%d" % admin_port


def auth():
    return {"Authorization": "Bearer " + TOKEN}


def test_health_and_ready_are_open(start_upstream, start_portico, tmp_path):
    p, up, admin = start(start_upstream, start_portico, tmp_path)
    r = requests.get(admin + "/health", timeout=5)
    assert r.status_code == 200 and r.text == "ok\n"
    r = requests.get(admin + "/ready", timeout=5)
    assert r.status_code == 200


def test_token_enforced(start_upstream, start_portico, tmp_path):
    p, up, admin = start(start_upstream, start_portico, tmp_path)
    for path in ("/metrics", "/status"):
        assert requests.get(admin + path, timeout=5).status_code == 401
        bad = {"Authorization": "Bearer " + TOKEN[:-1] + "x"}
        assert requests.get(admin + path, headers=bad, timeout=5).status_code == 401
        assert requests.get(admin + path, headers=auth(), timeout=5).status_code == 200
    assert requests.get(admin + "/nope", headers=auth(), timeout=5).status_code == 404


def test_metrics_move_with_traffic(start_upstream, start_portico, tmp_path):
    p, up, admin = start(start_upstream, start_portico, tmp_path)
    base = "http://127.0.0.1:%d" % p.port
    before = requests.get(admin + "/metrics", headers=auth(), timeout=5).text
    assert metric(before, "portico_http_requests_total", route="/", method="GET", code="200") is None
    s = requests.Session()
    for _ in range(7):
        assert s.get(base + "/count", timeout=5).status_code == 200
    assert s.post(base + "/echo", data=b"x" * 100, timeout=5).status_code == 200
    # a malformed request: rejected, counted, never reaches the upstream
    import socket
    c = socket.create_connection(("127.0.0.1", p.port))
    c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert c.recv(100).startswith(b"HTTP/1.1 400")
    c.close()
    time.sleep(0.2)
    text = requests.get(admin + "/metrics", headers=auth(), timeout=5).text
    assert metric(text, "portico_http_requests_total", route="/", method="GET", code="200") == 7
    assert metric(text, "portico_http_requests_total", route="/", method="POST", code="200") == 1
    assert metric(text, "portico_http_request_duration_seconds_count", route="/") == 8
    assert metric(text, "portico_http_request_duration_seconds_bucket", route="/", le="+Inf") == 8
    assert metric(text, "portico_upstream_request_duration_seconds_count", upstream="app") == 8
    assert metric(text, "portico_http_rejected_total") == 1
    assert metric(text, "portico_upstream_up", upstream="app", server=up.address) == 1
    assert metric(text, "portico_connections_total") >= 2
    assert metric(text, "portico_bytes_received_total") > 100
    assert metric(text, "portico_bytes_sent_total") > 0
    # every histogram is cumulative
    buckets = [int(v) for v in re.findall(
        r'^portico_http_request_duration_seconds_bucket\{route="/",le="[^"]+"\} (\d+)$', text, re.M)]
    assert buckets == sorted(buckets) and buckets[-1] == 8


def promtool():
    import os
    import shutil
    p = shutil.which("promtool")
    tools = os.environ.get("PORTICO_TOOLS") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "portico", "tools")
    cached = os.path.join(tools, "promtool")    # where scripts/promtool.sh puts it
    return p or (cached if os.access(cached, os.X_OK) else None)


def test_promtool_accepts_metrics(start_upstream, start_portico, tmp_path):
    """`promtool check metrics` on a scrape after traffic (scripts/check-deploy.sh fetches promtool)."""
    import subprocess
    import pytest
    tool = promtool()
    if not tool:
        pytest.skip("promtool not found: scripts/deps.sh (make test) installs it")
    p, up, admin = start(start_upstream, start_portico, tmp_path)
    for _ in range(3):
        requests.get("http://127.0.0.1:%d/count" % p.port, timeout=5)
    text = requests.get(admin + "/metrics", headers=auth(), timeout=5).text
    r = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_status_json_and_readiness(start_upstream, start_portico, tmp_path):
    dead = "127.0.0.1:%d" % free_port()
    up = start_upstream("u1")
    tok = tmp_path / "admin.token"
    tok.write_text(TOKEN)
    admin_port, port = free_port(), free_port()
    cfg = make_config(port, {"app": {"servers": [dead]}, "ok": {"servers": [up.address]}},
                      routes=[{"prefix": "/", "upstream": "ok"}],
                      extra='admin: { listen: "127.0.0.1:%d", token_file: %s }' % (admin_port, tok))
    cfg = cfg.replace('      - { address: "%s" }' % dead,
                      '      - { address: "%s" }\n    health: { path: /health, interval: 100ms, timeout: 100ms, fall: 1 }' % dead)
    start_portico(cfg, port=port)
    admin = "http://127.0.0.1:%d" % admin_port
    deadline = time.time() + 5
    while time.time() < deadline and requests.get(admin + "/ready", timeout=5).status_code == 200:
        time.sleep(0.05)
    assert requests.get(admin + "/ready", timeout=5).status_code == 503
    requests.get("http://127.0.0.1:%d/count" % port, timeout=5)
    # the request is counted as its exchange ends, just after the last byte is sent
    deadline = time.time() + 5
    while True:
        st = requests.get(admin + "/status", headers=auth(), timeout=5).json()
        if st["requests"] >= 1 or time.time() > deadline:
            break
        time.sleep(0.02)
    assert st["requests"] == 1      # the one request above; probes are not requests
    ups = {u["name"]: u for u in st["upstreams"]}
    assert ups["app"]["servers"][0]["state"] == "down"
    assert ups["ok"]["servers"][0]["state"] == "up"
    assert len(st["duration_buckets"]) == 15


def test_bad_token_file_is_a_config_error(portico_bin, tmp_path):
    import subprocess
    cfg = tmp_path / "c.yaml"
    cfg.write_text(make_config(free_port(), {"app": {"servers": ["127.0.0.1:9"]}},
                               extra='admin: { token_file: /nonexistent/token }'))
    r = subprocess.run([portico_bin, "-t", "-c", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 1
    assert re.search(r"c\.yaml:\d+:\d+: admin\.token_file: /nonexistent/token: No such file", r.stderr)


def test_process_metrics(start_upstream, start_portico, tmp_path):
    """process_* as Prometheus client libraries export them, matching /proc for the process."""
    p, up, admin = start(start_upstream, start_portico, tmp_path)
    for _ in range(50):
        requests.get("http://127.0.0.1:%d/count" % p.port, headers={"Host": "test.local"}, timeout=5)
    text = requests.get(admin + "/metrics", headers=auth(), timeout=5).text
    with open("/proc/%d/stat" % p.pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / tck        # utime, stime (fields 14, 15)
    got = metric(text, "process_cpu_seconds_total")
    assert 0 <= got and abs(got - cpu) <= 0.05, (got, cpu)
    rss = metric(text, "process_resident_memory_bytes")
    assert abs(rss - p.rss_kib() * 1024) < 0.2 * rss, (rss, p.rss_kib())
    assert metric(text, "process_virtual_memory_bytes") > rss
    fds = len(os.listdir("/proc/%d/fd" % p.pid))
    assert abs(metric(text, "process_open_fds") - fds) <= 3, (metric(text, "process_open_fds"), fds)
    assert metric(text, "process_max_fds") > 0
    t0 = metric(text, "process_start_time_seconds")
    assert abs(t0 - p.started) < 5, (t0, p.started)
    threads = int(fields[17])
    assert metric(text, "process_threads") == threads >= 4   # main, 2 workers, admin
