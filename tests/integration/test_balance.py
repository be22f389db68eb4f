"""Load balancing and health checks (issue 4), with real upstream processes
that are killed (SIGKILL), hung (SIGSTOP), restarted and made unhealthy
while portico is under load.

Upstreams are flip_upstream.py processes (upstream.py plus a /health whose
status and a server-wide delay can be changed at run time); see
balance_util.py. Which server answered is read from the `id` in the
upstream's /count (or /echo) response.
"""

import json
import time

import pytest

from balance_util import FlipUpstream, Load, fetch, lb_config, server_id, state_change_lines
from conftest import free_port, wait_for

FAST_HEALTH = {"path": "/health", "interval": "200ms", "timeout": "200ms", "fall": 2, "rise": 2}


@pytest.fixture
def ups(tmp_path):
    """ups("a") -> FlipUpstream; every one is stopped (by its PID) at teardown,
    after a SIGCONT if it was left stopped."""
    started = []

    def start(ident, port=0):
        u = FlipUpstream(ident, str(tmp_path), port)
        started.append(u)
        return u

    yield start
    for u in started:
        u.stop()


@pytest.fixture
def lb(start_portico):
    """lb(servers, **lb_config options) -> Portico on a free port."""

    def start(servers, name=None, **kw):
        port = free_port()
        return start_portico(lb_config(port, servers, **kw), port=port, name=name)

    return start


def ids_for(port, n, path="/count"):
    """n sequential GETs on one keep-alive connection: the list of server ids
    (asserting every one is a 200)."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    out = []
    try:
        for _ in range(n):
            st, _, body = fetch(port, path, conn=conn)
            assert st == 200, (st, body[:200])
            out.append(server_id(body))
    finally:
        conn.close()
    return out


def wait_log(portico, address, change, timeout, why="health check"):
    """Wait for a state change line of the server at address ("up -> down" or
    "down -> up") whose reason starts with `why`."""
    return wait_for(lambda: state_change_lines(portico, address, "%s (%s" % (change, why)),
                    timeout, 0.02)


# --------------------------------------------------------------------------
# 1. no failed GET when a server dies or hangs under load

def test_sigkill_one_of_three_under_load_no_failed_get(ups, lb):
    a, b, c = ups("a"), ups("b"), ups("c")
    p = lb([a.address, b.address, c.address])          # passive and retries: defaults
    load = Load(p.port, threads=4, total=2000, deadline=60).start()
    assert load.wait_done(600, 30), "load did not get going: %d done" % load.done()
    b.kill()
    t_kill = time.time()
    load.join()
    res = load.results
    assert len(res) == 2000
    after = [r for r in res if r[0] >= t_kill]
    assert len(after) >= 500, "the kill was not mid-run (%d requests after it)" % len(after)
    fails = load.failures()
    assert not fails, "%d of 2000 GETs failed around the SIGKILL, first: %r" % (
        len(fails), fails[:5])
    before = load.counts(until=t_kill)
    assert all(before.get(s, 0) > 0 for s in "abc"), before
    late = load.counts(since=t_kill)
    assert late.get("b", 0) == 0, late
    assert late.get("a", 0) > 0 and late.get("c", 0) > 0, late


def test_sigstop_one_of_three_under_load_no_failed_get(ups, lb):
    a, b, c = ups("a"), ups("b"), ups("c")
    p = lb([a.address, b.address, c.address], response_timeout="500ms", retries=2)
    load = Load(p.port, threads=4, total=2000, deadline=60).start()
    try:
        assert load.wait_done(600, 30), "load did not get going: %d done" % load.done()
        b.pause()
        t_stop = time.time()
        load.join()
    finally:
        b.resume()
    res = load.results
    assert len(res) == 2000
    after = [r for r in res if r[0] >= t_stop]
    assert len(after) >= 500, "the SIGSTOP was not mid-run (%d requests after it)" % len(after)
    fails = load.failures()
    assert not fails, "%d of 2000 GETs failed around the SIGSTOP, first: %r" % (
        len(fails), fails[:5])
    # SIGSTOP takes effect when the process is next scheduled: on a loaded
    # machine a request sent a moment after pause() returned may still be
    # served; from 100 ms on, none may
    late = load.counts(since=t_stop + 0.1)
    assert late.get("b", 0) == 0, late
    assert late.get("a", 0) > 0 and late.get("c", 0) > 0, late
    # the scenario really hit the hung server: some GET timed out on it and was retried
    assert [l for l in p.log_text().splitlines() if b.address in l and "response timeout" in l], \
        "no response timeout on the stopped server was logged:\n" + p.log_text()[-3000:]


# --------------------------------------------------------------------------
# 2. weights

def test_weighted_3_to_2_split_within_one_percent(ups, lb):
    a, b = ups("a"), ups("b")
    p = lb([{"address": a.address, "weight": 3}, {"address": b.address, "weight": 2}],
           balance="weighted")
    load = Load(p.port, threads=4, total=10000, deadline=70).start()
    load.join()
    assert len(load.results) == 10000
    fails = load.failures()
    assert not fails, fails[:5]
    n = load.counts()
    share = n.get("a", 0) / 10000.0
    print("weighted 3:2 over 10000: %r" % n)
    assert abs(share - 0.6) <= 0.01, "weights 3:2 gave %r (a: %.2f%%)" % (n, share * 100)


# --------------------------------------------------------------------------
# 3. ip_hash

def _ip_hash_round(port, sources, conns=2, per_conn=2):
    """{source: set of server ids} over conns connections x per_conn requests each."""
    import http.client
    seen = {}
    for src in sources:
        for _ in range(conns):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10,
                                              source_address=(src, 0))
            try:
                for _ in range(per_conn):
                    st, _, body = fetch(port, "/echo", conn=conn)
                    assert st == 200, (src, st, body[:200])
                    d = json.loads(body)
                    xff = [v for n, v in d["headers"] if n.lower() == "x-forwarded-for"]
                    # the test's own premise: portico saw this source address
                    assert xff and xff[-1].split(",")[-1].strip() == src, (src, xff)
                    seen.setdefault(src, set()).add(d["id"])
            finally:
                conn.close()
    return seen


SOURCES = ["127.0.0.%d" % n for n in range(2, 102)]


def test_ip_hash_each_address_sticks_to_one_server(ups, lb):
    a, b, c = ups("a"), ups("b"), ups("c")
    p = lb([a.address, b.address, c.address], balance="ip_hash")
    seen = _ip_hash_round(p.port, SOURCES)
    moved = {s: v for s, v in seen.items() if len(v) != 1}
    assert not moved, "addresses spread over several servers: %r" % moved
    per = {}
    for s, v in seen.items():
        per[next(iter(v))] = per.get(next(iter(v)), 0) + 1
    assert set(per) == {"a", "b", "c"} and min(per.values()) >= 10, \
        "degenerate ip_hash distribution of 100 addresses: %r" % per


def test_ip_hash_only_the_dead_servers_clients_move(ups, lb):
    a, b, c = ups("a"), ups("b"), ups("c")
    p = lb([a.address, b.address, c.address], balance="ip_hash", health=FAST_HEALTH)
    first = {s: next(iter(v)) for s, v in _ip_hash_round(p.port, SOURCES, 1, 2).items()}
    c.kill()
    assert wait_log(p, c.address, "up -> down", 5), p.log_text()[-2000:]
    second = _ip_hash_round(p.port, SOURCES, 2, 2)
    for s in SOURCES:
        assert len(second[s]) == 1, (s, second[s])
        now = next(iter(second[s]))
        if first[s] == "c":
            assert now in ("a", "b"), (s, now)
        else:
            assert now == first[s], "%s moved from %s to %s though %s is up" % (s, first[s], now,
                                                                              first[s])


# --------------------------------------------------------------------------
# 4. consistent hashing

KEYS = ["user-%d" % i for i in range(1000)]


def _key_map(port, threads=4):
    """{key: server id} for every key of KEYS, via X-User."""
    import http.client
    import threading
    out = {}
    errors = []

    def run(keys):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            for k in keys:
                st, _, body = fetch(port, "/count", headers={"X-User": k}, conn=conn)
                if st != 200:
                    errors.append((k, st, body[:200]))
                    continue
                out[k] = server_id(body)
        except Exception as e:
            errors.append(repr(e))
        finally:
            conn.close()

    ts = [threading.Thread(target=run, args=(KEYS[i::threads],)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errors, errors[:5]
    assert len(out) == len(KEYS)
    return out


def _check_moves(before, after, removed, what):
    moved = [k for k in KEYS if before[k] != after[k]]
    print("%s: %d of 1000 keys moved" % (what, len(moved)))
    held = [k for k in KEYS if before[k] == removed]
    assert len(moved) <= 400, "%s: %d of 1000 keys moved (%d were on %s)" % (what, len(moved),
                                                                           len(held), removed)
    wrong = [(k, before[k], after[k]) for k in moved if before[k] != removed]
    assert not wrong, "%s: keys moved between servers that stayed: %r" % (what, wrong[:10])
    assert set(moved) == set(held), "%s: keys of %s did not all move" % (what, removed)


def test_consistent_hash_moves_only_the_removed_servers_keys(ups, lb):
    a, b, c = ups("a"), ups("b"), ups("c")
    servers = [a.address, b.address, c.address]
    p = lb(servers, balance="hash", hash_key="header:X-User", health=FAST_HEALTH)
    m1 = _key_map(p.port)
    per = {s: sum(1 for k in KEYS if m1[k] == s) for s in "abc"}
    assert min(per.values()) >= 150, "degenerate hash distribution: %r" % per
    assert _key_map(p.port) == m1, "the same keys went to different servers on a second pass"

    # b dies and is marked down by the active checks
    b.kill()
    assert wait_log(p, b.address, "up -> down", 5), p.log_text()[-2000:]
    m2 = _key_map(p.port)
    _check_moves(m1, m2, "b", "b killed")

    # b comes back on the same port: its keys return
    b.restart()
    assert wait_log(p, b.address, "down -> up", 5), p.log_text()[-2000:]
    m3 = _key_map(p.port)
    back = [k for k in KEYS if m3[k] != m1[k]]
    assert not back, "%d keys not back where they were after b recovered: %r" % (
        len(back), [(k, m1[k], m3[k]) for k in back[:10]])

    # a new portico whose configuration no longer lists b
    p.expect_exit = True
    p.stop()
    p2 = lb([a.address, c.address], name="portico-without-b", balance="hash",
            hash_key="header:X-User")
    m4 = _key_map(p2.port)
    _check_moves(m1, m4, "b", "b removed from the configuration")


# --------------------------------------------------------------------------
# 5. active health checks

def test_active_health_takes_server_out_and_back(ups, lb):
    a, b, c = ups("a"), ups("b"), ups("c")
    p = lb([a.address, b.address, c.address], health=FAST_HEALTH)
    interval, fall, rise = 0.2, 2, 2
    load = Load(p.port, threads=2, seconds=30, deadline=30).start()
    try:
        time.sleep(0.5)
        assert load.counts().get("b", 0) > 0, load.counts()

        b.set_health(500)
        t_flip = time.time()
        limit = fall * interval + 1.0
        down = wait_log(p, b.address, "up -> down", limit + 2)
        # a second of traffic past the limit
        time.sleep(max(0.0, t_flip + limit + 1.0 - time.time()))
        t_back = time.time()
        b_times = [t for t, st, i in load.results if st == 200 and i == "b" and t >= t_flip]
        last_b = max(b_times) if b_times else t_flip
        assert down, "no 'up -> down' for %s in the log:\n%s" % (b.address, p.log_text()[-2000:])
        assert down[0][0] - t_flip <= limit, "marked down %.2fs after /health failed: %s" % (
            down[0][0] - t_flip, down[0][1])
        assert "500" in down[0][1], down[0][1]
        assert last_b - t_flip <= limit, "b still got requests %.2fs after /health failed" % (
            last_b - t_flip)
        print("health: down logged after %.2fs, last request to b %.2fs after the flip" % (
            down[0][0] - t_flip, last_b - t_flip))
        quiet = load.counts(since=t_flip + limit, until=t_back)
        assert sum(quiet.values()) >= 20 and quiet.get("b", 0) == 0, quiet

        b.set_health(200)
        t_fix = time.time()
        limit = rise * interval + 1.0
        up = wait_log(p, b.address, "down -> up", limit + 2)
        assert wait_for(lambda: load.counts(since=t_fix).get("b", 0) > 0, limit + 2, 0.02)
        first_b = min(t for t, st, i in load.results if st == 200 and i == "b" and t >= t_fix)
        assert up, "no 'down -> up' for %s in the log:\n%s" % (b.address, p.log_text()[-2000:])
        print("health: up logged after %.2fs, first request to b %.2fs after the fix" % (
            up[0][0] - t_fix, first_b - t_fix))
        assert up[0][0] - t_fix <= limit, "marked up %.2fs after /health recovered: %s" % (
            up[0][0] - t_fix, up[0][1])
        assert first_b - t_fix <= limit, "b got requests again only %.2fs after it recovered" % (
            first_b - t_fix)
        time.sleep(0.3)
    finally:
        load.stop()
        load.join()
    assert not load.failures(), load.failures()[:5]
    assert len(state_change_lines(p, b.address, "up -> down")) == 1, p.log_text()[-3000:]
    assert len(state_change_lines(p, b.address, "down -> up")) == 1, p.log_text()[-3000:]
    for s in (a, c):
        assert not state_change_lines(p, s.address, "up -> down"), p.log_text()[-3000:]


# --------------------------------------------------------------------------
# 6. backup

def test_backup_used_only_when_every_primary_is_down(ups, lb):
    a, b, k = ups("a"), ups("b"), ups("k")
    # passive checks off: a restarted primary is back as soon as the active checks say so
    # (with them on it would stay out for the rest of fail_timeout, as documented)
    p = lb([a.address, b.address, {"address": k.address, "backup": True}], health=FAST_HEALTH,
           passive={"max_fails": 0})
    ids = Load(p.port, threads=2, total=400).start().join()
    assert len(ids) == 400, len(ids)
    assert all(st == 200 for _, st, _ in ids), [r for r in ids if r[1] != 200][:5]
    n = {}
    for _, _, i in ids:
        n[i] = n.get(i, 0) + 1
    assert n.get("k", 0) == 0 and n.get("a", 0) > 0 and n.get("b", 0) > 0, n
    assert k.saw("/count") == []

    a.kill()
    b.kill()
    # at once (before any health check noticed), and after both are marked down
    got = ids_for(p.port, 50)
    assert set(got) == {"k"}, got
    assert wait_log(p, a.address, "up -> down", 5) and wait_log(p, b.address, "up -> down", 5), \
        p.log_text()[-2000:]
    got = ids_for(p.port, 100)
    assert set(got) == {"k"}, got

    # a primary comes back: the backup is idle again
    a.restart()
    assert wait_log(p, a.address, "down -> up", 5), p.log_text()[-2000:]
    got = ids_for(p.port, 100)
    assert set(got) == {"a"}, got


# --------------------------------------------------------------------------
# 7. all down; what is and is not retried

def test_every_server_down_503_with_retry_after(ups, lb):
    a, b = ups("a"), ups("b")
    p = lb([a.address, b.address], health=FAST_HEALTH)
    assert set(ids_for(p.port, 10)) == {"a", "b"}
    a.set_health(500)
    b.set_health(500)
    assert wait_log(p, a.address, "up -> down", 5) and wait_log(p, b.address, "up -> down", 5), \
        p.log_text()[-2000:]
    a.reset()
    b.reset()
    for _ in range(5):
        st, h, body = fetch(p.port, "/count?after-down")
        assert st == 503, (st, h, body[:200])
        assert h.get("retry-after") == "1", h
    assert a.saw("after-down") == [] and b.saw("after-down") == []


def test_every_server_killed_passive_only_ends_in_503(ups, lb):
    a, b = ups("a"), ups("b")
    p = lb([a.address, b.address])                     # passive defaults, no active checks
    assert set(ids_for(p.port, 10)) == {"a", "b"}
    a.kill()
    b.kill()
    statuses = []
    for _ in range(20):
        st, h, body = fetch(p.port, "/count")
        statuses.append((st, h.get("retry-after")))
        if st == 503:
            break
    assert all(st in (502, 503) for st, _ in statuses), statuses
    assert statuses[-1] == (503, "1"), "never 503 with Retry-After: 1 once both were out: %r" % (
        statuses,)


def test_post_to_hung_server_not_retried_get_is(ups, lb):
    a, b = ups("a"), ups("b")
    p = lb([a.address, b.address], response_timeout="500ms", retries=2,
           passive={"max_fails": 0})
    assert set(ids_for(p.port, 4)) == {"a", "b"}
    a.pause()
    try:
        # GETs: each one is answered by b, some after timing out on a
        gets = []
        for i in range(6):
            t0 = time.time()
            st, _, body = fetch(p.port, "/echo?tok=get%d" % i)
            gets.append((i, st, time.time() - t0, server_id(body) if st == 200 else body[:200]))
        # POSTs until one has gone to the hung server: with a body, and with
        # none (Content-Length: 0, so no body byte makes it unretryable)
        posts = []
        for kind, data in (("body", b"x" * 100), ("empty", b"")):
            for i in range(8):
                tok = "post-%s-%d" % (kind, i)
                t0 = time.time()
                st, _, body = fetch(p.port, "/echo?tok=" + tok, method="POST", body=data,
                                    headers={"Content-Type": "text/plain",
                                             "Content-Length": str(len(data))})
                posts.append((tok, st, time.time() - t0,
                              server_id(body) if st == 200 else body[:200]))
                if st == 504:
                    break
    finally:
        a.resume()
    assert all(st == 200 for _, st, _, _ in gets), gets
    assert all(ident == "b" for _, _, _, ident in gets), gets
    retried = [i for i, st, dt, _ in gets if dt >= 0.45]
    assert retried, "no GET went to the hung server first: %r" % gets
    assert all(st in (200, 504) for _, st, _, _ in posts), posts
    assert all(ident == "b" for _, st, _, ident in posts if st == 200), posts
    hung = [tok for tok, st, _, _ in posts if st == 504]
    assert sorted(t.split("-")[1] for t in hung) == ["body", "empty"], \
        "a POST reached the hung server and was retried (or none reached it): %r" % posts
    # once a runs again it reads what the kernel buffered for it: every POST
    # that got 504 reached a, and b never saw it
    for tok in hung:
        assert wait_for(lambda: a.saw("tok=%s" % tok), 5), "%s never reached a" % tok
        assert b.saw("tok=%s" % tok) == [], "the POST %s was re-sent to b" % tok
    for i in retried:
        tok = "tok=get%d" % i
        assert wait_for(lambda: a.saw(tok), 5), "%s never reached a" % tok
        assert len(b.saw(tok)) == 1, tok


# --------------------------------------------------------------------------
# 8. least_conn

def test_least_conn_prefers_the_server_that_is_not_busy(ups, lb):
    a, b = ups("a"), ups("b")
    p = lb([a.address, b.address], balance="least_conn")
    a.set_delay(0.25)           # every request to a takes 250 ms
    load = Load(p.port, threads=6, seconds=3, deadline=10).start()
    load.join()
    assert not load.failures(), load.failures()[:5]
    n = load.counts()
    total = sum(n.values())
    print("least_conn with a slow: %r" % n)
    assert total >= 200, n
    # round robin would give a half of them; least_conn only what a can take
    assert n.get("a", 0) <= 0.1 * total, "least_conn sent %r to the slow a" % n
    assert n.get("a", 0) >= 1, n
