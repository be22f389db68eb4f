"""Rate limits, allow / deny (#12, first part), on real portico processes and
upstreams: the runbooks' scenarios, the answers' headers, keys, dry runs,
trusted proxies and aggregation."""

import subprocess
import threading
import time

import pytest

from conftest import RawConn, build_request, free_port, make_config, wait_for


def start(start_portico, up, route_extra, extra="", prefix="/auth/"):
    port = free_port()
    cfg = make_config(port, {"app": {"servers": [up.address]}}, routes=[], extra=extra)
    cfg = cfg.replace("routes:\n", "routes:\n  - match: { prefix: %s }\n    upstream: app\n%s"
                      "  - match: { prefix: / }\n    upstream: app\n" % (prefix, route_extra))
    return start_portico(cfg, port=port)


def statuses(port, path, n, headers=None, method="GET", pace=0.0):
    out = []
    with RawConn(port) as c:
        for _ in range(n):
            r = c.request(method, path, headers=headers, body=b"x" if method == "POST" else b"")
            out.append(r)
            if pace:
                time.sleep(pace)
    return out


def test_login_flood_admits_the_burst_and_the_rate_share(start_portico, start_upstream):
    """The runbook: 100 login attempts a second against /auth/login with
    20/min, burst 5 admit at most the burst plus the rate's share."""
    up = start_upstream("u1")
    p = start(start_portico, up, "    rate_limit: { rate: 20/min, burst: 5, name: auth }\n")
    t0 = time.time()
    rs = statuses(p.port, "/auth/login", 200, method="POST", pace=0.01)
    elapsed = time.time() - t0
    ok = sum(r.status == 200 for r in rs)
    assert ok <= 6 + int(elapsed * 20 / 60) + 1, (ok, elapsed)
    assert ok >= 6
    assert sum(r.status == 429 for r in rs) == len(rs) - ok
    assert len([q for q in up.requests() if q["target"] == "/auth/login"]) == ok
    refused = [r for r in rs if r.status == 429][0]
    assert int(refused.header("retry-after")) >= 1
    assert refused.header("ratelimit-policy") == '"auth";q=20;w=60'
    assert refused.header("ratelimit").startswith('"auth";r=0;t=')
    assert rs[0].header("ratelimit") == '"auth";r=5;t=3'       # admitted: what is left, 3 s to full
    with RawConn(p.port) as c:                                  # other routes are not limited
        assert c.request("GET", "/echo").status == 200


def test_posts_against_10_per_second_reach_the_upstream_at_10_per_second(start_portico, start_upstream):
    up = start_upstream("u1")
    p = start(start_portico, up, "    rate_limit: { rate: 10/s, burst: 2 }\n", prefix="/rest/")
    t0 = time.time()
    rs = statuses(p.port, "/rest/posts", 150, method="POST", pace=0.02)    # about 50/s
    elapsed = time.time() - t0
    ok = sum(r.status == 200 for r in rs)
    assert ok <= 3 + int(elapsed * 10) + 1, (ok, elapsed)
    assert ok >= int(elapsed * 10) - 2, (ok, elapsed)
    assert len(up.requests()) == ok


def test_metric_labels_from_odd_names(start_portico, start_upstream, tmp_path):
    """A route prefix holding a quote and a backslash (a limit's name is a
    token, so it cannot): the label is cleaned (as the cache's is), so the
    scrape is still valid Prometheus text (promtool) and /status valid JSON."""
    import json
    from test_admin import promtool
    up = start_upstream("u1")
    port, admin_port = free_port(), free_port()
    cfg = make_config(port, {"app": {"servers": [up.address]}}, routes=[],
                      extra='admin: { listen: "127.0.0.1:%d" }' % admin_port)
    cfg = cfg.replace("routes:\n", "routes:\n  - match: { prefix: '/a\"b\\c' }\n    upstream: app\n"
                      "    rate_limit: { rate: 1/min, burst: 0, name: probe }\n"
                      "  - match: { prefix: / }\n    upstream: app\n")
    start_portico(cfg, port=port)
    with RawConn(port) as c:
        assert c.request("GET", '/a"b\\c/x').status == 200
    with RawConn(admin_port) as c:
        m = c.request("GET", "/metrics").body.decode()
        status = json.loads(c.request("GET", "/status").body)
    line = 'portico_ratelimit_decisions_total{route="/a_b_c",limit="probe",outcome="allowed"} 1'
    assert line in m, [x for x in m.splitlines() if "ratelimit_decisions" in x]
    assert status
    tool = promtool()
    assert tool, "promtool: scripts/deps.sh (make test) installs it"
    r = subprocess.run([tool, "check", "metrics"], input=m, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dry_run_counts_but_never_refuses(start_portico, start_upstream, tmp_path):
    up = start_upstream("u1")
    port = free_port()
    cfg = make_config(port, {"app": {"servers": [up.address]}}, routes=[],
                      extra='admin: { listen: "127.0.0.1:%d" }' % free_port())
    admin_port = int(cfg.split('admin: { listen: "127.0.0.1:')[1].split('"')[0])
    cfg = cfg.replace("routes:\n", "routes:\n  - match: { prefix: / }\n    upstream: app\n"
                      "    rate_limit: { rate: 1/min, burst: 0, dry_run: true, name: probe }\n")
    p = start_portico(cfg, port=port)
    rs = statuses(p.port, "/echo", 10)
    assert all(r.status == 200 for r in rs)
    with RawConn(admin_port) as c:
        m = c.request("GET", "/metrics").body.decode()
    assert 'portico_ratelimit_decisions_total{route="/",limit="probe",outcome="dry_run"} 9' in m
    assert 'portico_ratelimit_decisions_total{route="/",limit="probe",outcome="allowed"} 1' in m
    assert wait_for(lambda: "would refuse" in p.log_text(), 10), p.log_text()  # the log thread writes it


def test_keys_by_header_are_independent(start_portico, start_upstream):
    up = start_upstream("u1")
    p = start(start_portico, up,
              '    rate_limit: { rate: 1/min, burst: 1, key: "header:X-Api-Key", headers: x-ratelimit }\n',
              prefix="/api/")
    a = statuses(p.port, "/api/x", 3, headers=[("X-Api-Key", "a")])
    b = statuses(p.port, "/api/x", 3, headers=[("X-Api-Key", "b")])
    assert [r.status for r in a] == [200, 200, 429]
    assert [r.status for r in b] == [200, 200, 429]
    assert a[0].header("x-ratelimit-limit") == "1" and a[0].header("x-ratelimit-remaining") == "1"
    assert a[2].header("ratelimit") is None                     # x-ratelimit only
    # without the header the limit does not apply
    assert all(r.status == 200 for r in statuses(p.port, "/api/x", 4))


@pytest.mark.parametrize("trusted", [True, False])
def test_client_address_behind_a_trusted_proxy(start_portico, start_upstream, trusted):
    """A trusted proxy's X-Forwarded-For is the key (and /24 aggregates);
    an untrusted one is ignored: every request is the peer's."""
    up = start_upstream("u1")
    extra = 'trusted_proxies: [ "127.0.0.1" ]' if trusted else ""
    p = start(start_portico, up,
              "    rate_limit: { rate: 1/min, burst: 0, aggregate: { ipv4: 24 } }\n", extra=extra)
    def one(xff):
        return statuses(p.port, "/auth/x", 1, headers=[("X-Forwarded-For", xff)])[0].status
    got = [one("198.51.100.1"), one("198.51.100.2"), one("198.51.101.1"), one("198.51.101.7")]
    if trusted:
        assert got == [200, 429, 200, 429]      # one /24 is one key
    else:
        assert got == [200, 429, 429, 429]      # all are 127.0.0.1


def test_allow_and_deny(start_portico, start_upstream):
    up = start_upstream("u1")
    p = start(start_portico, up, '    allow: [ "10.0.0.0/8" ]\n', extra='deny: [ "192.0.2.0/24" ]')
    assert statuses(p.port, "/auth/x", 1)[0].status == 403       # not in the route's allow list
    assert statuses(p.port, "/other", 1)[0].status == 200
    assert up.requests() and all(q["target"] == "/other" for q in up.requests())
    up2 = start_upstream("u2")
    p2 = start(start_portico, up2, "", extra='deny: [ "127.0.0.0/8" ]')
    assert statuses(p2.port, "/other", 1)[0].status == 403       # the global deny list
    assert up2.requests() == []


@pytest.mark.parametrize("snippet,message", [
    ("rate_limit: { burst: 5 }", 'missing key "rate"'),
    ("rate_limit: { rate: 5/fortnight }", "expected a rate"),
    ("rate_limit: { rate: 5/s, key: ip }", "expected client_ip"),
    ("rate_limit: { rate: 5/s, status: 418 }", "429"),
    ("rate_limit: { rate: 5/s, status: 430 }", "expected 429 or 503"),
    ("rate_limit: [ { rate: 5/s, name: a }, { rate: 9/s, name: a } ]", "two limits named"),
    ('allow: [ "10.0.0.0/33" ]', "CIDR"),
])
def test_limit_config_errors(portico_bin, tmp_path, snippet, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(make_config(free_port(), {"app": {"servers": ["127.0.0.1:9"]}}, routes=[])
                   .replace("routes:\n", "routes:\n  - match: { prefix: / }\n    upstream: app\n"
                            "    %s\n" % snippet))
    r = subprocess.run([portico_bin, "-t", "-c", str(cfg)], capture_output=True, timeout=10)
    out = (r.stdout + r.stderr).decode()
    assert r.returncode != 0 and message in out and "bad.yaml:" in out and "routes[0]" in out, out


# ---------------------------------------------------------------- login guard

GUARD = ('    login_guard: { max_failures: 5, window: 1m, block: 15m, account: "form:user" }\n')
TRUST = 'trusted_proxies: [ "127.0.0.1" ]'


def login(port, code, ip, user=None):
    body = ("user=%s&password=x" % user).encode() if user else b"password=x"
    with RawConn(port) as c:
        return c.request("POST", "/auth/status?code=%d" % code, body=body,
                         headers=[("X-Forwarded-For", ip),
                                  ("Content-Type", "application/x-www-form-urlencoded")])


def test_login_guard_blocks_the_sixth_failure_of_one_address(start_portico, start_upstream):
    up = start_upstream("u1")
    p = start(start_portico, up, GUARD, extra=TRUST)
    for _ in range(5):
        assert login(p.port, 401, "198.51.100.7").status == 401
    before = len(up.requests())
    r = login(p.port, 401, "198.51.100.7")
    assert r.status == 429 and int(r.header("retry-after")) > 800
    r = login(p.port, 200, "198.51.100.7")                     # even a right password waits
    assert r.status == 429
    assert len(up.requests()) == before                        # blocked ones never reach it
    assert login(p.port, 401, "198.51.100.8").status == 401    # another address still gets through
    assert wait_for(lambda: "login guard /auth/: address 198.51.100.7 blocked" in p.log_text(), 10), p.log_text()  # the log thread writes it


def test_login_guard_success_resets_and_accounts_are_keys(start_portico, start_upstream):
    up = start_upstream("u1")
    p = start(start_portico, up, GUARD, extra=TRUST)
    for _ in range(4):
        assert login(p.port, 401, "203.0.113.1").status == 401
    assert login(p.port, 200, "203.0.113.1").status == 200     # a success resets the count
    for _ in range(4):
        assert login(p.port, 401, "203.0.113.1").status == 401
    assert login(p.port, 401, "203.0.113.1").status == 401     # the fifth failure since: now blocked
    assert login(p.port, 200, "203.0.113.1").status == 429
    # an account: five failures for alice from five addresses block alice, not bob
    for i in range(5):
        assert login(p.port, 401, "192.0.2.%d" % (10 + i), user="alice").status == 401
    assert login(p.port, 200, "192.0.2.99", user="alice").status == 429
    assert login(p.port, 200, "192.0.2.99", user="bob").status == 200


def login_body(port, code, ip, body, ctype="application/x-www-form-urlencoded"):
    with RawConn(port) as c:
        return c.request("POST", "/auth/status?code=%d" % code, body=body,
                         headers=[("X-Forwarded-For", ip), ("Content-Type", ctype)])


def test_login_guard_one_account_however_spelled(start_portico, start_upstream):
    """The account is read as the application reads it: five failures for
    alice, each written another way and from another address, block alice;
    a decoy before the real field does not hide it; more than four distinct
    accounts in one login are refused (400) without reaching the upstream."""
    up = start_upstream("u1")
    p = start(start_portico, up, GUARD, extra=TRUST)
    spellings = [b"user=alice&password=x", b"user=%61lice&password=x", b"%75ser=ALICE&password=x",
                 b"user=decoy1&password=x&user=a%6cice", b"user=Alice&user=decoy2"]
    for i, body in enumerate(spellings):
        assert login_body(p.port, 401, "192.0.2.%d" % (20 + i), body).status == 401
    assert login_body(p.port, 200, "192.0.2.99", b"user=alice&password=right").status == 429
    assert login_body(p.port, 200, "192.0.2.99", b"password=x&user=decoy3&user=ALICE").status == 429
    assert login_body(p.port, 200, "192.0.2.99", b"user=bob&password=x").status == 200
    before = len(up.requests())
    r = login_body(p.port, 200, "192.0.2.98", b"user=a&user=b&user=c&user=d&user=e")
    assert r.status == 400
    assert len(up.requests()) == before


def test_login_guard_json_account(start_portico, start_upstream):
    up = start_upstream("u1")
    guard = GUARD.replace('"form:user"', '"json:user"')
    p = start(start_portico, up, guard, extra=TRUST)
    bodies = [b'{"user": "carol", "password": "x"}', b'{"\\u0075ser": "\\u0063arol"}',
              b'{"user": "CAROL"}', b'{"device": {"user": "carol"}}', b'{"user":"carol","user":"x"}']
    for i, body in enumerate(bodies):
        assert login_body(p.port, 401, "192.0.2.%d" % (40 + i), body, "application/json").status == 401
    assert login_body(p.port, 200, "192.0.2.99", b'{"user": "carol"}', "application/json").status == 429
    assert login_body(p.port, 200, "192.0.2.99", b'{"note": "\\"user\\": \\"carol\\""}',
                      "application/json").status == 200


# ---------------------------------------------------------------- action: delay

def test_delay_paces_instead_of_refusing(start_portico, start_upstream):
    up = start_upstream("u1")
    p = start(start_portico, up, "    rate_limit: { rate: 10/s, burst: 10, action: delay }\n",
              prefix="/slowly/")
    results = []

    def one():
        with RawConn(p.port, timeout=10) as c:
            results.append((c.request("GET", "/slowly/echo").status, time.time()))
    t0 = time.time()
    threads = [threading.Thread(target=one) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [s for s, _ in results] == [200] * 10               # none refused
    assert max(t for _, t in results) - t0 >= 0.8              # paced at 10/s: the last waited
    # past the queue (burst 10 x 100 ms), requests are refused
    statuses_ = []

    def burst():
        with RawConn(p.port, timeout=10) as c:
            statuses_.append(c.request("GET", "/slowly/echo").status)
    threads = [threading.Thread(target=burst) for _ in range(25)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses_.count(429) >= 10 and statuses_.count(200) >= 10


# ---------------------------------------------------------------- connections per address

def test_max_connections_per_ip(start_portico, start_upstream):
    up = start_upstream("u1")
    port = free_port()
    p = start_portico(make_config(port, {"app": {"servers": [up.address]}},
                                  limits={"max_connections_per_ip": 3}), port=port)
    conns = []

    def one_more():
        # the start-up probe's connection counts until portico sees it close
        c = RawConn(port)
        if c.request("GET", "/echo").status == 200:
            conns.append(c)
            return True
        c.close()
        return False
    for _ in range(3):
        assert wait_for(one_more, 5, interval=0.1)
    extra = RawConn(port)
    got = extra.wait_closed(3)
    assert got.startswith(b"HTTP/1.1 429"), got
    conns[0].close()

    def slot_free():                    # once portico has seen the close
        with RawConn(port) as c:
            return c.request("GET", "/echo").status == 200
    assert wait_for(slot_free, 5, interval=0.1)                # a slot came free
    for c in conns[1:]:
        c.close()


# ---------------------------------------------------------------- visibility

def test_top_offenders_and_status(start_portico, start_upstream):
    import json
    up = start_upstream("u1")
    admin = free_port()
    p = start(start_portico, up, "    rate_limit: { rate: 1/min, burst: 0, name: tight }\n",
              extra='%s\nadmin: { listen: "127.0.0.1:%d" }' % (TRUST, admin))
    for ip, n in (("198.51.100.9", 8), ("203.0.113.3", 3)):
        for _ in range(n):
            statuses(p.port, "/auth/x", 1, headers=[("X-Forwarded-For", ip)])
    with RawConn(admin) as c:
        top = json.loads(c.request("GET", "/limits/top").body)
        status = json.loads(c.request("GET", "/status").body)
        metrics = c.request("GET", "/metrics").body.decode()
    assert [(r["client"], r["refused"], r["last_by"]) for r in top["top"]] == \
        [("198.51.100.9", 7, "tight"), ("203.0.113.3", 2, "tight")]
    rl = status["rate_limit"]
    assert rl["limited"] == 9 and rl["allowed"] == 2
    assert rl["top_offenders"][0]["client"] == "198.51.100.9"
    assert 'portico_ratelimit_top_offender_refusals{rank="1",client="198.51.100.9"} 7' in metrics


# ---------------------------------------------------------------- the proof-of-work challenge

import hashlib
import os
import re


def solve(page):
    m = re.search(r'data-difficulty="(\d+)" data-nonce="([0-9a-f]{32})" data-ts="(\d+)" '
                  r'data-next="([^"]*)"', page)
    assert m, page[:500]
    d, nonce, ts, nxt = int(m.group(1)), m.group(2), m.group(3), m.group(4)
    c = 0
    while True:
        h = int.from_bytes(hashlib.sha256(("%s:%d" % (nonce, c)).encode()).digest(), "big")
        if h >> (256 - d) == 0:
            return "/.well-known/portico-challenge?ts=%s&nonce=%s&c=%d&next=%s" % (ts, nonce, c, nxt)
        c += 1


CHALLENGE_ROUTE = "    challenge: true\n"


def test_challenge_pass_and_replay(start_portico, start_upstream, tmp_path):
    up = start_upstream("u1")
    key = tmp_path / "challenge.key"
    key.write_bytes(os.urandom(32))
    p = start(start_portico, up, CHALLENGE_ROUTE, prefix="/bot/",
              extra=TRUST + "\nchallenge: { key_file: %s, difficulty: 12 }" % key)
    ip = [("X-Forwarded-For", "198.51.100.20")]
    r = statuses(p.port, "/bot/echo?q=1", 1, headers=ip)[0]
    assert r.status == 429 and r.header("content-type").startswith("text/html")
    page = r.body.decode()
    assert "<noscript>" in page and "http" not in page.split("<script>")[0].lower().replace(
        "http-equiv", "")                         # no third-party resources
    assert up.requests() == []
    verify = solve(page)
    v = statuses(p.port, verify, 1, headers=ip)[0]
    assert v.status == 303 and v.header("location") == "/bot/echo?q=1"
    cookie = v.header("set-cookie").split(";")[0]
    assert "HttpOnly" in v.header("set-cookie")
    ok = statuses(p.port, "/bot/echo?q=1", 1, headers=ip + [("Cookie", cookie)])[0]
    assert ok.status == 200 and ok.json()["target"] == "/bot/echo?q=1"
    # the same pass from another address is not a pass
    other = statuses(p.port, "/bot/echo", 1,
                     headers=[("X-Forwarded-For", "203.0.113.50"), ("Cookie", cookie)])[0]
    assert other.status == 429
    # a forged or wrong answer
    bad = statuses(p.port, verify.replace("&c=", "&c=9"), 1, headers=ip)[0]
    assert bad.status == 403
    assert statuses(p.port, verify, 1, headers=[("X-Forwarded-For", "203.0.113.50")])[0].status == 403


def test_challenge_as_a_limit_action(start_portico, start_upstream):
    up = start_upstream("u1")
    p = start(start_portico, up,
              "    rate_limit: { rate: 1/min, burst: 1, action: challenge }\n", prefix="/api/",
              extra="challenge: { difficulty: 8 }")
    rs = statuses(p.port, "/api/echo", 3)
    assert [r.status for r in rs] == [200, 200, 429]        # limited: the page, not a bare 429
    assert b"Checking your browser" in rs[2].body
    v = statuses(p.port, solve(rs[2].body.decode()), 1)[0]
    cookie = v.header("set-cookie").split(";")[0]
    rs = statuses(p.port, "/api/echo", 3, headers=[("Cookie", cookie)])
    assert [r.status for r in rs] == [200, 200, 200]        # a pass exempts from the limit


def test_challenge_solved_by_headless_chromium(start_portico, start_upstream, tmp_path):
    """A real browser runs the page's script, gets the pass, and lands on
    the page it asked for, without a click."""
    from test_status_page import chromium
    up = start_upstream("u1")
    p = start(start_portico, up, CHALLENGE_ROUTE, prefix="/bot/",
              extra="challenge: { difficulty: 12 }")
    dom = chromium("http://127.0.0.1:%d/bot/echo?from=chromium" % p.port, tmp_path,
                   "--dump-dom", budget=20000)
    assert '"target": "/bot/echo?from=chromium"' in dom, dom[:1000]
    assert [q["target"] for q in up.requests() if q["target"].startswith("/bot/")] == \
        ["/bot/echo?from=chromium"]
