"""The RFC 9111 response cache (issue #11) on real portico processes.

One test upstream (upstream.py's /cacheable endpoint: its Cache-Control, ETag,
Last-Modified, Expires, Vary, Set-Cookie, status and body come from the query;
the control port counts requests per path and can make it fail or slow)
behind a portico whose routes cache in different ways (ROUTES below), with an
admin listener that needs a token.

Every test asserts what reached the origin, not only what the client got:
a "hit" that still reached the origin is a failure. Run the file with
PORTICO_CACHETEST_NO_CACHE=1 to start portico without any `cache:` key: every
test must then fail (that is how we know each one can).

Timing: the origin's Date has one-second resolution, so a response's age may
start anywhere in [0, 1) s (RFC 9111 4.2.3). Responses that must be fresh now
get max-age >= 2; expiry tests wait past the lifetime by a margin.
"""

import json
import os
import random
import re
import socket
import struct
import threading
import time
from email.utils import formatdate
from urllib.parse import urlencode

import pytest
import requests

from conftest import (RawConn, RssSampler, build_request, free_port, pattern_bytes, sha256,
                      wait_for)

TOKEN = "cache-admin-token-0123456789"
HOST = "test.local"
MiB = 1 << 20
NO_CACHE = os.environ.get("PORTICO_CACHETEST_NO_CACHE") == "1"

# (prefix, the route's `cache:` value or None)
ROUTES = [
    ("/plain/", "true"),                                   # RFC 9111 freshness only
    ("/ttl/", "{ ttl: 2s }"),
    ("/override/", "{ ttl: 2s, override: true }"),
    ("/cookie/", "{ ttl: 30s, allow_set_cookie: true }"),
    ("/feed/", "{ ttl: 30s, namespace: feed }"),
    ("/rest/", "{ bump_on_write: [ feed ] }"),
    ("/inv/", "{ ttl: 60s }"),
    ("/qi/", "{ ttl: 30s, key: { query: ignore } }"),
    ("/qs/", "{ ttl: 30s, key: { query: sort } }"),
    ("/ql/", "{ ttl: 30s, key: { query: [ id ] } }"),
    ("/swr/", "{ stale_while_revalidate: 3s }"),
    ("/sie/", "{ stale_if_error: 2s }"),
    ("/nocache/", None),
    ("/", None),
]


# --------------------------------------------------------------------------
# set-up

def cache_config(port, up_addr, admin_port, token_file, routes=ROUTES,
                 top="{ memory: 64MiB, max_object: 1MiB }", workers=2, extra="",
                 response_timeout="10s"):
    out = ['listen: [ "127.0.0.1:%d" ]' % port, "workers: %d" % workers,
           "upstreams:", "  app:", '    servers: [ "%s" ]' % up_addr, "    keepalive: 32",
           "    connect_timeout: 2s", "    response_timeout: %s" % response_timeout, "    retries: 0"]
    if top and not NO_CACHE:
        out.append("cache: %s" % top)
    out.append("routes:")
    for prefix, cache in routes:
        out.append("  - match: { prefix: %s }" % prefix)
        out.append("    upstream: app")
        if cache is not None and not NO_CACHE:
            out.append("    cache: %s" % cache)
    out.append('admin: { listen: "127.0.0.1:%d", token_file: %s }' % (admin_port, token_file))
    out.append("shutdown_timeout: 2s")
    if extra:
        out.append(extra)
    return "\n".join(out) + "\n"


class Env:
    """One upstream (`up`) behind one caching portico (`p`)."""

    def __init__(self, p, up, admin_port):
        self.p = p
        self.up = up
        self.port = p.port
        self.admin = "http://127.0.0.1:%d" % admin_port

    # ---- the proxy
    def req(self, method, target, headers=None, host=HOST, body=b"", conn=None):
        if conn is not None:
            return conn.request(method, target, headers=headers, host=host, body=body)
        with RawConn(self.port, timeout=10) as c:
            return c.request(method, target, headers=headers, host=host, body=body)

    def get(self, target, headers=None, **kw):
        return self.req("GET", target, headers, **kw)

    # ---- the origin
    def counts(self):
        return self.up._ctl("/counts")

    def origin(self, path):
        """Requests that reached the origin for this path (any query)."""
        return self.counts()["paths"].get(path, 0)

    def origin_requests(self, path):
        return [r for r in self.up.requests() if r["path"] == path]

    def set(self, **kw):
        self.up._ctl("/set?" + urlencode(kw, doseq=True))

    def clear(self):
        self.up._ctl("/set?clear=1")

    # ---- the admin listener
    def admin_post(self, path, token=TOKEN, **params):
        h = {"Authorization": "Bearer " + token} if token else {}
        return requests.post(self.admin + path, params=params, headers=h, timeout=10)

    def purge(self, **params):
        r = self.admin_post("/cache/purge", **params)
        assert r.status_code == 200, (r.status_code, r.text)
        return r.json()

    def bump(self, ns):
        r = self.admin_post("/cache/bump", namespace=ns)
        assert r.status_code == 200, (r.status_code, r.text)
        return r.json()

    def metrics(self):
        r = requests.get(self.admin + "/metrics", headers={"Authorization": "Bearer " + TOKEN},
                         timeout=10)
        assert r.status_code == 200, r.status_code
        return samples(r.text)

    def status(self):
        r = requests.get(self.admin + "/status", headers={"Authorization": "Bearer " + TOKEN},
                         timeout=10)
        assert r.status_code == 200, r.status_code
        return r.json()


@pytest.fixture
def make_env(start_upstream, start_portico, tmp_path):
    def make(routes=ROUTES, top="{ memory: 64MiB, max_object: 1MiB }", workers=2, extra="",
             response_timeout="10s"):
        up = start_upstream("origin")
        tok = tmp_path / "admin.token"
        tok.write_text(TOKEN + "\n")
        port, admin_port = free_port(), free_port()
        cfg = cache_config(port, up.address, admin_port, tok, routes, top, workers, extra,
                           response_timeout)
        p = start_portico(cfg, port=port)
        assert wait_for(lambda: _accepts(admin_port), 5), "admin listener did not start"
        return Env(p, up, admin_port)
    return make


@pytest.fixture
def env(make_env):
    return make_env()


def _accepts(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------
# helpers

def url(path, **q):
    """path + query. Values may be lists (repeated parameters)."""
    return path + ("?" + urlencode(q, doseq=True) if q else "")


def xc(r):
    return r.header("x-cache")


def cache_status(r):
    """The last (our) Cache-Status entry as (name, {param: value or True})."""
    v = r.header("cache-status")
    assert v is not None, "no Cache-Status in %r" % (r,)
    entry = v.split(",")[-1].strip()
    parts = [x.strip() for x in entry.split(";")]
    params = {}
    for x in parts[1:]:
        k, eq, val = x.partition("=")
        params[k.strip().lower()] = val.strip() if eq else True
    return parts[0], params


def body_json(r):
    return json.loads(r.body)


def samples(text):
    """Prometheus text -> [(name, {label: value}, float)]."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$', line)
        assert m, "not a valid exposition line: %r" % line
        labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out.append((m.group(1), labels, float(m.group(3))))
    return out


def metric_sum(ss, name, **labels):
    """Sum of the samples of `name` whose labels include `labels` (None if none).
    A `route` label matches when it contains the given prefix (it may carry
    the host too)."""
    total, found = 0.0, False
    for n, ls, v in ss:
        if n != name:
            continue
        ok = True
        for k, want in labels.items():
            got = ls.get(k)
            if got is None or (got != want and not (k == "route" and want in got)):
                ok = False
                break
        if ok:
            total += v
            found = True
    return total if found else None


def http_date(t):
    return formatdate(t, usegmt=True)


# --------------------------------------------------------------------------
# configuration

CONF_CASES = [
    ("valid", "{ memory: 64MiB, max_object: 1MiB, stale_while_revalidate: 10s, "
              "stale_if_error: 5m, lock_timeout: 5s, max_waiters: 1000, heuristic_max: 1d, "
              "tag_header: Cache-Tag }",
     "{ ttl: 30s, override: false, namespace: feed, allow_set_cookie: false, "
     "key: { query: [ id, page ] }, stale_while_revalidate: 10s, stale_if_error: 5m, "
     "expect_hit_ratio: 0.7, bump_on_write: [ feed ] }", None),
    ("max_object over a quarter", "{ memory: 8MiB, max_object: 4MiB }", "true", "cache.max_object"),
    ("override without ttl", "{ memory: 8MiB }", "{ override: true }", "override"),
    ("unknown top-level key", "{ memory: 8MiB, colour: blue }", "true", "colour"),
    ("unknown route key", "{ memory: 8MiB }", "{ tll: 30s }", "tll"),
    ("bad query key", "{ memory: 8MiB }", "{ key: { query: reverse } }", "query"),
    ("bad ratio", "{ memory: 8MiB }", "{ expect_hit_ratio: 1.5 }", "expect_hit_ratio"),
    ("bad tag header", "{ memory: 8MiB, tag_header: \"Cache Tag\" }", "true", "tag_header"),
]


@pytest.mark.parametrize("case", CONF_CASES, ids=[c[0] for c in CONF_CASES])
def test_cache_configuration_checked(portico_bin, tmp_path, case):
    """`portico -t` takes the documented keys and refuses wrong ones, pointing at the key."""
    import subprocess
    _, top, route, bad = case
    tok = tmp_path / "admin.token"
    tok.write_text(TOKEN + "\n")
    cfg = cache_config(free_port(), "127.0.0.1:9", free_port(), tok,
                       [("/feed/", route), ("/", None)], top)
    f = tmp_path / "c.yaml"
    f.write_text(cfg)
    res = subprocess.run([portico_bin, "-t", "-c", str(f)], capture_output=True, timeout=10,
                         stdin=subprocess.DEVNULL)
    err = res.stderr.decode(errors="replace")
    if bad is None:
        assert res.returncode == 0 and not NO_CACHE, (res.returncode, err, cfg)
    else:
        assert res.returncode == 1 and bad in err and re.search(r":\d+:\d+: ", err), (err, cfg)


# --------------------------------------------------------------------------
# miss, hit, Age, Cache-Status

def test_miss_then_hit_with_age_and_cache_status(env):
    t = url("/plain/mh/cacheable", cc="max-age=60")
    r1 = env.get(t)
    assert r1.status == 200 and xc(r1) == "MISS", r1
    name, params = cache_status(r1)
    assert name == "portico" and params.get("fwd") == "miss", r1.header("cache-status")
    assert "stored" in params, r1.header("cache-status")
    r2 = env.get(t)
    assert r2.status == 200 and xc(r2) == "HIT", r2
    assert r2.body == r1.body and body_json(r2)["n"] == 1
    name, params = cache_status(r2)
    assert name == "portico" and "hit" in params and "fwd" not in params, r2.header("cache-status")
    assert r2.header("age") is not None and r2.header("age").isdigit(), r2
    age1 = int(r2.header("age"))
    assert env.origin("/plain/mh/cacheable") == 1
    time.sleep(1.1)
    r3 = env.get(t)
    assert xc(r3) == "HIT" and int(r3.header("age")) >= age1 + 1, (age1, r3)
    assert len(r3.header_all("age")) == 1
    assert env.origin("/plain/mh/cacheable") == 1
    # the stored fields come back as they were sent
    assert r3.header("content-type") == r1.header("content-type")
    assert r3.header("x-origin-count") == "1"


def test_route_without_cache_is_not_cached(env):
    t = url("/nocache/x/cacheable", cc="max-age=60")
    for _ in range(3):
        r = env.get(t)
        assert r.status == 200 and xc(r) != "HIT"
    assert env.origin("/nocache/x/cacheable") == 3
    # ...while the same response on a caching route is (the control)
    t = url("/plain/x/cacheable", cc="max-age=60")
    env.get(t), env.get(t)
    assert env.origin("/plain/x/cacheable") == 1


def test_keep_alive_hits_and_misses_interleave(env):
    a = url("/plain/ka/a/cacheable", cc="max-age=60")
    b = url("/plain/ka/b/cacheable", cc="max-age=60", n=5000)
    with RawConn(env.port) as c:
        for i in range(5):
            ra = env.req("GET", a, conn=c)
            rb = env.req("GET", b, conn=c)
            assert ra.status == 200 and body_json(ra)["n"] == 1
            assert rb.status == 200 and rb.body == pattern_bytes(5000)
            if i:
                assert xc(ra) == "HIT" and xc(rb) == "HIT", (ra, rb)
    assert env.origin("/plain/ka/a/cacheable") == 1 and env.origin("/plain/ka/b/cacheable") == 1


# --------------------------------------------------------------------------
# freshness

# (name, path, query, hit at once?, stale after ~3 s?)
FRESH_CASES = [
    ("max-age", "/plain/f/ma/cacheable", {"cc": "max-age=2"}, True, True),
    ("s-maxage beats max-age=0", "/plain/f/sm0/cacheable", {"cc": "max-age=0, s-maxage=60"}, True, False),
    ("s-maxage beats max-age=60", "/plain/f/sm/cacheable", {"cc": "max-age=60, s-maxage=2"}, True, True),
    ("Expires", "/plain/f/ex/cacheable", {"expires": "2"}, True, True),
    ("Expires in the past", "/plain/f/exp/cacheable", {"expires": "-60"}, False, None),
    ("max-age beats Expires", "/plain/f/maex/cacheable", {"cc": "max-age=60", "expires": "-60"}, True, False),
    ("route ttl", "/ttl/f/cacheable", {}, True, True),
    ("route ttl vs own max-age=0", "/ttl/f0/cacheable", {"cc": "max-age=0"}, False, None),
    ("route ttl vs own max-age=60", "/ttl/f60/cacheable", {"cc": "max-age=60"}, True, False),
    ("override wins over max-age=0", "/override/f0/cacheable", {"cc": "max-age=0"}, True, True),
    ("override wins over max-age=60", "/override/f60/cacheable", {"cc": "max-age=60"}, True, True),
    ("heuristic from Last-Modified", "/plain/f/lm/cacheable", {"lm_ago": "36000"}, True, False),
    ("no freshness, no validator", "/plain/f/none/cacheable", {}, False, None),
    ("Age from the origin over max-age", "/plain/f/age/cacheable", {"cc": "max-age=60", "h": "Age: 100"},
     False, None),
    ("Age from the origin under max-age", "/plain/f/age2/cacheable", {"cc": "max-age=4", "h": "Age: 2"},
     True, True),
    ("invalid Expires", "/plain/f/exinv/cacheable", {"h": "Expires: 0"}, False, None),
    ("404 with max-age", "/plain/f/404/cacheable", {"cc": "max-age=60", "status": "404"}, True, False),
    ("301 with max-age", "/plain/f/301/cacheable", {"cc": "max-age=60", "status": "301",
                                                    "h": "Location: /elsewhere"}, True, False),
    ("CDN-Cache-Control over Cache-Control", "/plain/f/cdn/cacheable",
     {"cc": "no-store", "h": "CDN-Cache-Control: max-age=60"}, True, False),
    ("CDN-Cache-Control no-store", "/plain/f/cdnns/cacheable",
     {"cc": "max-age=60", "h": "CDN-Cache-Control: no-store"}, False, None),
    ("Vary: *", "/plain/f/vstar/cacheable", {"cc": "max-age=60", "vary": "*"}, False, None),
    ("empty body", "/plain/f/empty/cacheable", {"cc": "max-age=60", "n": "0"}, True, False),
    ("204", "/plain/f/204/cacheable", {"cc": "max-age=60", "status": "204"}, True, False),
    ("410 with max-age", "/plain/f/410/cacheable", {"cc": "max-age=60", "status": "410"}, True, False),
    ("500 without freshness", "/plain/f/500/cacheable", {"status": "500", "lm_ago": "36000"}, False, None),
    ("Portico-Cache-Control over CDN-Cache-Control", "/plain/f/pcc/cacheable",
     {"cc": "max-age=60", "h": ["CDN-Cache-Control: no-store", "Portico-Cache-Control: max-age=2"]},
     True, True),
]


@pytest.mark.parametrize("case", FRESH_CASES, ids=[c[0] for c in FRESH_CASES])
def test_freshness_now(env, case):
    """Stored and fresh (a hit at once), or not fresh (the origin again)."""
    _, path, q, hit, _ = case
    t = url(path, **q)
    r1 = env.get(t)
    assert r1.status == int(q.get("status", 200)) and xc(r1) == "MISS", r1
    r2 = env.get(t)
    assert r2.status == r1.status
    if hit:
        assert xc(r2) == "HIT" and env.origin(path) == 1, (r2, env.origin(path))
        return
    assert xc(r2) != "HIT" and env.origin(path) == 2, (r2, env.origin(path))
    # the control: it is a caching route that stores other responses
    c = url(path.replace("/cacheable", "/ctl/cacheable"), cc="max-age=60")
    env.get(c), env.get(c)
    assert env.origin(path.replace("/cacheable", "/ctl/cacheable")) == 1


def test_freshness_lifetimes_end(env):
    """Every case that was a hit at once, 3.3 s later: stale (to the origin
    again) when its lifetime was 2 s, still a hit when it was longer. (3.3 s:
    a whole second past the end, whatever the clocks' rounding; the second
    right after the end is test_no_stale_answer_without_a_stale_window's.)"""
    cases = [c for c in FRESH_CASES if c[3]]
    for _, path, q, _, _ in cases:
        env.get(url(path, **q))
    time.sleep(3.3)
    wrong = []
    for name, path, q, _, expires in cases:
        r = env.get(url(path, **q))
        n = env.origin(path)
        if expires and (xc(r) == "HIT" or n != 2 or json.loads(r.body)["n"] != 2):
            wrong.append("%s: still served from the cache (X-Cache %s, origin %d)" % (name, xc(r), n))
        if not expires and (xc(r) != "HIT" or n != 1):
            wrong.append("%s: not a hit (X-Cache %s, origin %d)" % (name, xc(r), n))
    assert not wrong, wrong


# --------------------------------------------------------------------------
# what is not stored

def _stored(env, path, q=None, headers=None, method="GET"):
    """Two requests; True if the second was answered without the origin."""
    t = url(path, **(q or {}))
    env.req(method, t, headers)
    before = env.origin(path)
    r = env.req(method, t, headers)
    return env.origin(path) == before and xc(r) == "HIT"


def test_no_store_private_not_stored(env):
    assert not _stored(env, "/plain/ns/cacheable", {"cc": "no-store, max-age=60"})
    assert not _stored(env, "/plain/pv/cacheable", {"cc": "private, max-age=60"})
    assert not _stored(env, "/ttl/ns/cacheable", {"cc": "no-store"})
    assert env.origin("/plain/ns/cacheable") == 2 and env.origin("/plain/pv/cacheable") == 2
    assert _stored(env, "/plain/pub/cacheable", {"cc": "public, max-age=60"})


def test_set_cookie(env):
    t = url("/plain/sc/cacheable", cc="max-age=60", cookie="sid=abc")
    r1, r2 = env.get(t), env.get(t)
    assert r1.header("set-cookie") == "sid=abc" and r2.header("set-cookie") == "sid=abc"
    assert xc(r2) != "HIT" and env.origin("/plain/sc/cacheable") == 2
    # allow_set_cookie: stored, with its Set-Cookie replayed (docs/configuration.md
    # since 421bd3d: "every client then gets the same cookie", as RFC 9111 7.3)
    t = url("/cookie/sc/cacheable", cc="max-age=60", cookie="sid=abc")
    r1, r2 = env.get(t), env.get(t)
    assert r1.header("set-cookie") == "sid=abc", r1
    assert xc(r2) == "HIT" and env.origin("/cookie/sc/cacheable") == 1, r2
    assert r2.header_all("set-cookie") == ["sid=abc"], r2


def test_authorization_requests(env):
    auth = [("Authorization", "Bearer user-1")]
    # a response to an authenticated request is not reused for anyone...
    env.get(url("/plain/au/cacheable", cc="max-age=60"), auth)
    r = env.get(url("/plain/au/cacheable", cc="max-age=60"))
    assert xc(r) != "HIT" and env.origin("/plain/au/cacheable") == 2, r
    assert body_json(r)["n"] == 2
    # ...unless the response says a shared cache may store it
    for cc, path in (("public, max-age=60", "/plain/aup/cacheable"),
                     ("s-maxage=60", "/plain/aus/cacheable")):
        env.get(url(path, cc=cc), auth)
        r = env.get(url(path, cc=cc))
        assert xc(r) == "HIT" and env.origin(path) == 1, (cc, r)


def test_post_responses_not_stored(env):
    t = url("/plain/post/cacheable", cc="max-age=60")
    r1 = env.req("POST", t, body=b"a=1")
    r2 = env.req("POST", t, body=b"a=1")
    assert r1.status == 200 and r2.status == 200 and xc(r2) != "HIT"
    assert env.origin("/plain/post/cacheable") == 2
    r3 = env.get(t)
    assert xc(r3) != "HIT" and body_json(r3)["method"] == "GET"
    assert env.origin("/plain/post/cacheable") == 3
    r4 = env.get(t)                     # the control
    assert xc(r4) == "HIT" and env.origin("/plain/post/cacheable") == 3


def test_request_no_store_not_stored(env):
    path = "/plain/rns/cacheable"
    t = url(path, cc="max-age=60")
    env.get(t, [("Cache-Control", "no-store")])
    r = env.get(t)
    assert xc(r) != "HIT" and env.origin(path) == 2, r
    assert _hit(env, t)                  # the control: this one was stored


def test_targeted_fields_not_shown_to_clients(env):
    t = url("/plain/tgt/cacheable", cc="max-age=60",
            h=["Portico-Cache-Control: max-age=600", "Surrogate-Control: max-age=600"])
    for r in (env.get(t), env.get(t)):
        assert r.header("portico-cache-control") is None and r.header("surrogate-control") is None, r
    assert xc(r) == "HIT"


def test_206_not_stored(env):
    q = {"status": "206", "cc": "max-age=60", "n": "10", "h": "Content-Range: bytes 0-9/100"}
    r = env.get(url("/plain/p206/cacheable", **q))
    assert r.status == 206
    assert not _stored(env, "/plain/p206/cacheable", q)
    assert env.origin("/plain/p206/cacheable") == 3
    assert _stored(env, "/plain/p200/cacheable", {"cc": "max-age=60", "n": "10"})


# --------------------------------------------------------------------------
# request directives

def test_request_directives(env):
    path = "/plain/rd/cacheable"
    t = url(path, cc="max-age=60")
    env.get(t)
    assert xc(env.get(t)) == "HIT" and env.origin(path) == 1
    time.sleep(1.1)                     # the entry's age is now >= 1
    r = env.get(t, [("Cache-Control", "max-age=0")])
    assert r.status == 200 and xc(r) != "HIT" and env.origin(path) == 2, r
    r = env.get(t, [("Cache-Control", "no-cache")])
    assert r.status == 200 and xc(r) != "HIT" and env.origin(path) == 3, r
    r = env.get(t, [("Pragma", "no-cache")])
    assert r.status == 200 and xc(r) != "HIT" and env.origin(path) == 4, r
    r = env.get(t)
    assert xc(r) == "HIT" and env.origin(path) == 4, r
    assert body_json(r)["n"] == 4          # the refetches replaced the entry
    # only-if-cached: from the cache, or 504 without asking the origin
    r = env.get(t, [("Cache-Control", "only-if-cached")])
    assert r.status == 200 and xc(r) == "HIT" and env.origin(path) == 4, r
    r = env.get(url("/plain/rd-miss/cacheable", cc="max-age=60"),
                [("Cache-Control", "only-if-cached")])
    assert r.status == 504, r
    assert env.origin("/plain/rd-miss/cacheable") == 0


def test_request_max_stale_and_min_fresh(env):
    path = "/plain/ms/cacheable"
    t = url(path, cc="max-age=1")
    env.get(t)
    r = env.get(t, [("Cache-Control", "min-fresh=3600")])      # not fresh enough
    assert xc(r) != "HIT" and env.origin(path) == 2, r
    time.sleep(2.2)
    r = env.get(t, [("Cache-Control", "max-stale=60")])        # stale is fine with it
    assert r.status == 200 and xc(r) in ("HIT", "STALE") and env.origin(path) == 2, r
    r = env.get(t, [("Cache-Control", "max-stale")])
    assert r.status == 200 and xc(r) in ("HIT", "STALE") and env.origin(path) == 2, r
    r = env.get(t)                                             # without it: the origin
    assert xc(r) != "HIT" and env.origin(path) == 3, r
    # must-revalidate: never served stale, max-stale or not
    path = "/plain/ms-mr/cacheable"
    t = url(path, cc="max-age=1, must-revalidate")
    env.get(t)
    time.sleep(2.2)
    r = env.get(t, [("Cache-Control", "max-stale=60")])
    assert xc(r) not in ("HIT", "STALE") and env.origin(path) == 2, r


def test_no_cache_response_is_revalidated_every_time(env):
    path = "/plain/ncr/cacheable"
    t = url(path, cc="no-cache", etag="v1")
    r1 = env.get(t)
    for i in range(2):
        r = env.get(t)
        assert r.status == 200 and xc(r) == "REVALIDATED" and r.body == r1.body, r
        assert env.origin(path) == 2 + i
        hdrs = {n.lower(): v for n, v in env.origin_requests(path)[-1]["headers"]}
        assert hdrs.get("if-none-match") == '"v1"'


def test_chunked_response_stored(env):
    path = "/plain/chunked/cacheable"
    t = url(path, cc="max-age=60", n="10000", chunked="1")
    r1 = env.get(t)
    assert r1.status == 200 and r1.body == pattern_bytes(10000)
    r2 = env.get(t)
    assert xc(r2) == "HIT" and r2.body == pattern_bytes(10000) and env.origin(path) == 1, r2
    assert r2.header("content-length") in (None, "10000")


def test_cache_survives_reload(env):
    t = url("/plain/reload/cacheable", cc="max-age=60")
    env.get(t)
    assert _hit(env, t)
    r = requests.post(env.admin + "/reload", headers={"Authorization": "Bearer " + TOKEN}, timeout=10)
    assert r.status_code == 200, r.text
    assert _hit(env, t) and env.origin("/plain/reload/cacheable") == 1


# --------------------------------------------------------------------------
# validation with the origin

@pytest.mark.parametrize("validator", ["etag", "last-modified"])
def test_revalidation_304_merges_headers(env, validator):
    path = "/plain/rv-%s/cacheable" % validator
    lm = int(time.time()) - 3600
    q = {"cc": "max-age=2", "h": "X-Static: same"}
    q.update({"etag": "v1"} if validator == "etag" else {"lm": str(lm)})
    t = url(path, **q)
    r1 = env.get(t)
    assert xc(r1) == "MISS" and r1.header("x-origin-count") == "1"
    assert xc(env.get(t)) == "HIT"
    time.sleep(3.3)                      # a whole second past max-age, whatever the rounding
    r2 = env.get(t)
    assert r2.status == 200 and xc(r2) == "REVALIDATED", r2
    name, params = cache_status(r2)
    assert name == "portico" and params.get("fwd") == "stale", r2.header("cache-status")
    assert r2.body == r1.body                              # the stored body...
    assert r2.header("x-origin-count") == "2", r2          # ...with the 304's fields
    assert r2.header("x-static") == "same"
    assert r2.header("content-length") == str(len(r1.body))
    reqs = env.origin_requests(path)
    assert len(reqs) == 2
    hdrs = {n.lower(): v for n, v in reqs[1]["headers"]}
    if validator == "etag":
        assert hdrs.get("if-none-match") == '"v1"', reqs[1]["headers"]
    else:
        assert hdrs.get("if-modified-since") == http_date(lm), reqs[1]["headers"]
    # freshened by the 304: a hit again, with the merged field
    r3 = env.get(t)
    assert xc(r3) == "HIT" and r3.header("x-origin-count") == "2" and env.origin(path) == 2, r3


def test_revalidation_200_replaces_entry(env):
    path = "/plain/rv200/cacheable"
    t = url(path, cc="max-age=2", etag="v1")
    env.get(t)
    env.set(etag="v2")
    time.sleep(3.3)
    r = env.get(t)
    assert r.status == 200 and r.header("etag") == '"v2"' and body_json(r)["n"] == 2, r
    r = env.get(t)
    assert xc(r) == "HIT" and r.header("etag") == '"v2"' and env.origin(path) == 2, r


# --------------------------------------------------------------------------
# clients' conditional requests, HEAD, Range

def test_client_conditionals_answered_from_cache(env):
    path = "/plain/cond/cacheable"
    lm = int(time.time()) - 7200
    t = url(path, cc="max-age=60", etag="v1", lm=str(lm))
    r0 = env.get(t)
    assert r0.status == 200
    r = env.get(t, [("If-None-Match", '"v1"')])
    assert r.status == 304 and r.body == b"" and r.header("etag") == '"v1"', r
    r = env.get(t, [("If-None-Match", '"nope", W/"v1"')])
    assert r.status == 304, r
    r = env.get(t, [("If-None-Match", "*")])
    assert r.status == 304, r
    r = env.get(t, [("If-None-Match", '"nope"')])
    assert r.status == 200 and r.body == r0.body and xc(r) == "HIT", r
    r = env.get(t, [("If-Modified-Since", http_date(lm))])
    assert r.status == 304, r
    r = env.get(t, [("If-Modified-Since", http_date(lm - 100))])
    assert r.status == 200 and r.body == r0.body, r
    assert env.origin(path) == 1


def test_if_none_match_star_without_etag(env):
    path = "/plain/inmstar/cacheable"
    t = url(path, cc="max-age=60", lm_ago="3600")
    env.get(t)
    r = env.get(t, [("If-None-Match", "*")])
    assert r.status == 304 and env.origin(path) == 1, r


def test_head_from_stored_get(env):
    path = "/plain/head/cacheable"
    t = url(path, cc="max-age=60", n="1000")
    assert env.get(t).body == pattern_bytes(1000)
    with RawConn(env.port) as c:
        r = env.req("HEAD", t, conn=c)
        assert r.status == 200 and xc(r) == "HIT" and r.header("content-length") == "1000", r
        # no body followed the head: the next response parses on the same connection
        r = env.req("GET", t, conn=c)
        assert r.status == 200 and r.body == pattern_bytes(1000)
    assert env.origin(path) == 1


def test_head_on_a_miss_then_get(env):
    path = "/plain/headmiss/cacheable"
    t = url(path, cc="max-age=60", n="5000")
    with RawConn(env.port) as c:
        r = env.req("HEAD", t, conn=c)
        assert r.status == 200 and r.header("content-length") == "5000" and r.body == b"", r
        r = env.req("GET", t, conn=c)            # the same connection: no stray body bytes
        assert r.status == 200 and r.body == pattern_bytes(5000), r
        r = env.req("GET", t, conn=c)
        assert r.status == 200 and xc(r) == "HIT" and r.body == pattern_bytes(5000), r
    assert env.origin(path) <= 2


def test_pipelined_hits_and_misses_in_order(env):
    a = url("/plain/pipe/a/cacheable", cc="max-age=60", n="3000")
    b = url("/plain/pipe/b/cacheable", cc="max-age=60", n="7000")
    env.get(a)
    with RawConn(env.port) as c:
        c.send(b"".join(build_request("GET", x, host=HOST) for x in (a, b, a, b, a)))
        got = [c.read_final()[0] for _ in range(5)]
    assert [len(r.body) for r in got] == [3000, 7000, 3000, 7000, 3000], got
    assert [xc(r) for r in got] == ["HIT", "MISS", "HIT", "HIT", "HIT"], got
    assert all(r.body == pattern_bytes(len(r.body)) for r in got)


def test_hit_sent_whole_while_its_entry_is_purged_and_evicted(make_env):
    """A stored response stays intact for the client reading it while the
    entry is purged and its memory wanted for other objects. (12 MiB: more
    than the kernel's socket buffers can take at once, tcp_wmem's 4 MiB.)"""
    env = make_env(routes=[("/plain/", "true"), ("/", None)],
                   top="{ memory: 64MiB, max_object: 16MiB }")
    size = 12 * MiB
    t = url("/plain/held/cacheable", cc="max-age=600", n=str(size))
    env.get(t)
    c = RawConn(env.port, timeout=20, rcvbuf=4096)
    h = __import__("hashlib").sha256()
    try:
        c.send(build_request("GET", t, host=HOST))
        r = c.read_head()
        assert r.status == 200 and xc(r) == "HIT", r
        n = int(r.header("content-length"))
        h.update(c._exact(4096))                 # a little, then stop reading
        assert env.purge(url=t)["purged"] == 1
        for i in range(10):                      # 120 MiB of other objects through a 64 MiB store
            assert env.get(url("/plain/other/%d/cacheable" % i, cc="max-age=600",
                                n=str(size))).status == 200
        h.update(c._exact(n - 4096))
    finally:
        c.close()
    assert h.hexdigest() == sha256(pattern_bytes(size))
    assert env.p.alive()


def test_head_on_a_stale_entry_never_stores_an_empty_body(env):
    """A HEAD that finds a stale entry (validated, or refreshed in the
    background) must not leave the entry with the HEAD's empty body."""
    full = pattern_bytes(4000)
    for path, q in (("/swr/headstale/cacheable", {"cc": "max-age=1", "n": "4000"}),
                    ("/plain/headstale/cacheable", {"cc": "max-age=1", "n": "4000"}),
                    ("/plain/headstale-e/cacheable", {"cc": "max-age=1", "n": "4000", "etag": "h"})):
        t = url(path, **q)
        assert env.get(t).body == full
        time.sleep(1.5)
        env.set(etag="h2", cc="max-age=60")  # a validation gets a 200 (not a 304), fresh for long
        with RawConn(env.port) as c:
            r = env.req("HEAD", t, conn=c)
            assert r.status == 200 and r.header("content-length") == "4000", (path, r)
            time.sleep(0.5)                     # a background refresh, if any, is done
            r = env.req("GET", t, conn=c)
            assert r.status == 200 and r.body == full, (path, r)
            r = env.req("GET", t, conn=c)
            assert r.status == 200 and r.body == full and xc(r) == "HIT", (path, r)
        env.clear()


def test_range_from_stored_response(env):
    path = "/plain/range/cacheable"
    t = url(path, cc="max-age=60", n="1000")
    full = pattern_bytes(1000)
    assert env.get(t).body == full
    r = env.get(t, [("Range", "bytes=0-9")])
    assert r.status == 206, r
    assert r.header("content-range") == "bytes 0-9/1000", r
    assert r.body == full[:10] and r.header("content-length") == "10"
    r = env.get(t, [("Range", "bytes=500-599")])
    assert r.status == 206 and r.body == full[500:600] and \
        r.header("content-range") == "bytes 500-599/1000", r
    r = env.get(t, [("Range", "bytes=-10")])
    assert r.status == 206 and r.body == full[-10:] and \
        r.header("content-range") == "bytes 990-999/1000", r
    r = env.get(t, [("Range", "bytes=2000-3000")])
    assert r.status == 416, r
    assert r.header("content-range") == "bytes */1000", r
    r = env.get(t, [("Range", "bytes=0-1,5-6")])             # several ranges: the whole body
    assert r.status == 200 and r.body == full, r
    assert env.origin(path) == 1
    # If-Range: the range only while the validator still matches
    t = url("/plain/ifrange/cacheable", cc="max-age=60", n="1000", etag="r1")
    env.get(t)
    r = env.get(t, [("Range", "bytes=0-9"), ("If-Range", '"r1"')])
    assert r.status == 206 and r.body == full[:10], r
    r = env.get(t, [("Range", "bytes=0-9"), ("If-Range", '"other"')])
    assert r.status == 200 and r.body == full, r
    assert env.origin("/plain/ifrange/cacheable") == 1


def test_http10_client_gets_a_hit(env):
    path = "/plain/h10/cacheable"
    t = url(path, cc="max-age=60", n="3000", chunked="1")
    env.get(t)
    with RawConn(env.port) as c:
        r = c.request("GET", t, version="HTTP/1.0")
        assert r.status == 200 and xc(r) == "HIT" and r.body == pattern_bytes(3000), r
        assert r.header("transfer-encoding") is None
    assert env.origin(path) == 1


# --------------------------------------------------------------------------
# Vary

@pytest.mark.parametrize("field,values", [("Accept-Encoding", ["gzip", "br"]),
                                          ("Accept-Language", ["en", "fr-CH, fr;q=0.9"])])
def test_vary_variants(env, field, values):
    path = "/plain/vary-%s/cacheable" % field.lower()
    t = url(path, cc="max-age=60", vary=field)
    a, b = values
    ra = env.get(t, [(field, a)])
    rb = env.get(t, [(field, b)])
    assert xc(ra) == "MISS" and xc(rb) == "MISS" and env.origin(path) == 2, (ra, rb)
    for _ in range(2):
        ha = env.get(t, [(field, a)])
        hb = env.get(t, [(field, b)])
        assert xc(ha) == "HIT" and xc(hb) == "HIT", (ha, hb)
        assert body_json(ha)["vary"][field] == a and body_json(hb)["vary"][field] == b
        assert ha.header("vary") == field
    assert env.origin(path) == 2
    # a third value (and none at all) is another variant
    env.get(t)
    assert env.origin(path) == 3
    # purging the URL purges every variant
    assert env.purge(url="http://%s%s" % (HOST, t)) == {"purged": 3}
    assert xc(env.get(t, [(field, a)])) != "HIT" and env.origin(path) == 4


# --------------------------------------------------------------------------
# stampede protection

def _fire(port, target, n, results, barrier=None, timeout=15):
    def one(i):
        try:
            c = RawConn(port, timeout=timeout)
            if barrier:
                barrier.wait(5)
            c.send(build_request("GET", target, host=HOST))
            r, _ = c.read_final()
            results[i] = r
            c.close()
        except Exception as e:      # recorded, asserted by the caller
            results[i] = e
    ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    return ts


def test_stampede_100_concurrent_misses_one_origin_request(env):
    path = "/plain/stampede/cacheable"
    t = url(path, cc="max-age=60", delay="1", n="20000")
    n = 100
    results = [None] * n
    t0 = time.time()
    ts = _fire(env.port, t, n, results, threading.Barrier(n))
    for th in ts:
        th.join(20)
    took = time.time() - t0
    bad = [r for r in results if not (hasattr(r, "status") and r.status == 200)]
    assert not bad, bad[:3]
    want = pattern_bytes(20000)
    assert all(r.body == want for r in results)
    assert env.origin(path) == 1, "%d origin requests for %d concurrent misses" % (env.origin(path), n)
    assert took < 6, took
    assert xc(env.get(t)) == "HIT" and env.origin(path) == 1


def test_coalesced_waiters_get_their_own_vary_variant(env):
    """Waiters on a fetch whose response varies on a field they sent
    differently must not get the leader's variant."""
    path = "/plain/coal-vary/cacheable"
    t = url(path, cc="max-age=60", vary="Accept-Language", delay="1")
    langs = ["en", "fr", "de", "en", "fr"]
    results = [None] * len(langs)

    def one(i):
        try:
            with RawConn(env.port, timeout=10) as c:
                results[i] = c.request("GET", t, headers=[("Accept-Language", langs[i])], host=HOST)
        except Exception as e:
            results[i] = e
    ths = []
    for i in range(len(langs)):
        th = threading.Thread(target=one, args=(i,))
        th.start()
        ths.append(th)
        if i == 0:
            time.sleep(0.2)              # the first one leads
    for th in ths:
        th.join(15)
    for lang, r in zip(langs, results):
        assert getattr(r, "status", None) == 200, r
        assert body_json(r)["vary"]["Accept-Language"] == lang, (lang, r.body)
    assert env.origin(path) <= 4         # en, fr, de (+ one duplicate at most)


def test_coalesced_waiters_never_share_an_unstorable_response(env):
    """The leader's response says private / sets a cookie: it is not stored,
    and the waiters each get their own from the origin, never the leader's."""
    for q in ({"cc": "private, max-age=60"}, {"cc": "max-age=60", "cookie": "sid=leader"}):
        path = "/plain/coal-priv-%s/cacheable" % ("cookie" if "cookie" in q else "private")
        t = url(path, delay="0.8", **q)
        results = [None] * 5
        for th in _fire(env.port, t, 5, results, threading.Barrier(5)):
            th.join(15)
        assert all(getattr(r, "status", None) == 200 for r in results), results
        ns = sorted(body_json(r)["n"] for r in results)
        assert ns == [1, 2, 3, 4, 5], (q, ns)        # five different responses
        assert env.origin(path) == 5
        # and the key is not waited on again for a while (it is known uncacheable)
        results = [None] * 4
        t0 = time.time()
        for th in _fire(env.port, t, 4, results, threading.Barrier(4)):
            th.join(15)
        assert all(getattr(r, "status", None) == 200 for r in results), results
        assert time.time() - t0 < 1.5, (q, time.time() - t0)
    # the control: the same without private / the cookie is fetched once for all
    path = "/plain/coal-pub/cacheable"
    results = [None] * 5
    for th in _fire(env.port, url(path, delay="0.8", cc="max-age=60"), 5, results,
                    threading.Barrier(5)):
        th.join(15)
    assert all(getattr(r, "status", None) == 200 for r in results), results
    assert env.origin(path) == 1


def test_waiter_disconnect_does_not_break_coalesced_fetch(env):
    path = "/plain/coal-w/cacheable"
    t = url(path, cc="max-age=60", delay="1.5")
    leader = RawConn(env.port, timeout=10)
    leader.send(build_request("GET", t, host=HOST))
    time.sleep(0.2)
    conns = [RawConn(env.port, timeout=10) for _ in range(9)]
    for c in conns:
        c.send(build_request("GET", t, host=HOST))
    time.sleep(0.4)
    # three waiters give up: one with a reset, two with a FIN
    conns[0].sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    for c in conns[:3]:
        c.close()
    got = [leader.read_final()[0]] + [c.read_final()[0] for c in conns[3:]]
    for c in conns[3:] + [leader]:
        c.close()
    assert all(r.status == 200 for r in got), got
    assert len({r.body for r in got}) == 1 and body_json(got[0])["n"] == 1
    assert env.origin(path) == 1
    r = env.get(t)
    assert xc(r) == "HIT" and env.origin(path) == 1
    assert env.p.alive()


def test_leader_disconnect_does_not_break_waiters(env):
    path = "/plain/coal-l/cacheable"
    t = url(path, cc="max-age=60", delay="1.5")
    leader = RawConn(env.port, timeout=10)
    leader.send(build_request("GET", t, host=HOST))
    time.sleep(0.2)
    conns = [RawConn(env.port, timeout=10) for _ in range(6)]
    for c in conns:
        c.send(build_request("GET", t, host=HOST))
    time.sleep(0.3)
    leader.close()                       # the client whose miss started the fetch goes away
    got = [c.read_final(timeout=10)[0] for c in conns]
    for c in conns:
        c.close()
    assert all(r.status == 200 for r in got), got
    # the waiters are still coalesced: one of them (or the abandoned fetch)
    # fetches for all, not each its own (that would be the stampede again)
    assert env.origin(path) <= 2, "%d origin requests for 7 clients" % env.origin(path)
    assert len({r.body for r in got}) == 1
    r = env.get(t)
    assert r.status == 200 and xc(r) == "HIT"
    # and portico goes on serving everything else
    r = env.get("/nocache/after/echo")
    assert r.status == 200 and env.p.alive()


def test_lock_timeout_bounds_the_wait(make_env):
    """Waiters give up after cache.lock_timeout and go upstream themselves."""
    env = make_env(routes=[("/plain/", "true"), ("/", None)],
                   top="{ memory: 64MiB, max_object: 1MiB, lock_timeout: 300ms }")
    path = "/plain/lock/cacheable"
    t = url(path, cc="max-age=60", delay="1.5")
    leader = RawConn(env.port, timeout=10)
    leader.send(build_request("GET", t, host=HOST))
    time.sleep(0.2)
    results = [None] * 3
    t0 = time.time()
    for th in _fire(env.port, t, 3, results):
        th.join(10)
    took = time.time() - t0
    r = leader.read_final()[0]
    leader.close()
    assert r.status == 200 and all(getattr(x, "status", None) == 200 for x in results), results
    assert env.origin(path) == 4, env.origin(path)           # each waiter went on its own...
    assert took < 1.5 + 0.3 + 1.0, took                      # ...after 0.3 s, not 1.5 s
    # the control: a fetch that ends within lock_timeout is shared
    path = "/plain/lock2/cacheable"
    t = url(path, cc="max-age=60", delay="0.25")
    results = [None] * 4
    for th in _fire(env.port, t, 4, results, threading.Barrier(4)):
        th.join(10)
    assert all(getattr(x, "status", None) == 200 for x in results), results
    assert env.origin(path) == 1, env.origin(path)


# --------------------------------------------------------------------------
# stale-if-error, stale-while-revalidate

def test_stale_if_error_origin_killed(env):
    path = "/sie/k/cacheable"
    t = url(path, cc="max-age=1")
    t0 = time.time()
    r1 = env.get(t)
    assert xc(r1) == "MISS"
    # 1.5 s: stale (max-age 1), and within stale_if_error (2) even when the
    # Date's rounding down adds up to a second of age
    time.sleep(1.5)
    env.up.stop()                        # the origin is gone: connections are refused
    r = env.get(t)
    assert r.status == 200 and xc(r) == "STALE" and r.body == r1.body, r
    assert r.header("age") is not None and int(r.header("age")) >= 1
    # past max-age (1) + the route's stale_if_error (2), plus the clocks' rounding
    # (the Date and portico's clock have one-second resolution)
    time.sleep(max(0, t0 + 4.0 - time.time()))
    r = env.get(t)
    assert r.status in (502, 503, 504), r
    assert xc(r) != "STALE"


def test_stale_if_error_from_response_on_500(env):
    path = "/plain/sie500/cacheable"
    t = url(path, cc="max-age=1, stale-if-error=2")
    t0 = time.time()
    r1 = env.get(t)
    time.sleep(1.5)                      # as in test_stale_if_error_origin_killed
    env.set(fail="500")
    r = env.get(t)
    assert r.status == 200 and xc(r) == "STALE" and r.body == r1.body, r
    assert env.origin(path) == 2              # it did ask
    time.sleep(max(0, t0 + 4.0 - time.time()))
    r = env.get(t)
    assert r.status == 500 and xc(r) != "STALE", r
    env.clear()
    # the control: without stale-if-error the 500 goes through at once
    t = url("/plain/sie500-no/cacheable", cc="max-age=1")
    env.get(t)
    time.sleep(2.2)
    env.set(fail="500")
    assert env.get(t).status == 500


def test_stale_if_error_on_timeout_and_other_5xx(make_env):
    env = make_env(routes=[("/sie/", "{ stale_if_error: 30s }"), ("/", None)],
                   response_timeout="700ms")
    ts = {k: url("/sie/%s/cacheable" % k, cc="max-age=1") for k in ("timeout", "502", "503", "504")}
    first = {k: env.get(t).body for k, t in ts.items()}
    time.sleep(1.5)
    env.set(delay="2")                   # past the upstream's response_timeout
    t0 = time.time()
    r = env.get(ts["timeout"])
    assert r.status == 200 and xc(r) == "STALE" and r.body == first["timeout"], r
    assert time.time() - t0 < 1.9, time.time() - t0
    env.clear()
    for code in ("502", "503", "504"):
        env.set(fail=code)
        r = env.get(ts[code])
        assert r.status == 200 and xc(r) == "STALE" and r.body == first[code], (code, r)
    # a 4xx is an answer, not an error: it is passed on
    env.set(fail="404")
    r = env.get(ts["502"])
    assert r.status == 404, r


def test_no_stale_on_error_when_revalidation_is_required(env):
    """must-revalidate, proxy-revalidate and s-maxage (which implies
    proxy-revalidate) forbid stale answers, stale-if-error or not (RFC 9111
    4.2.4): the origin's error goes through."""
    cases = {"mr": "max-age=1, must-revalidate, stale-if-error=60",
             "pr": "max-age=1, proxy-revalidate, stale-if-error=60",
             "sm": "s-maxage=1, stale-if-error=60",
             "ok": "max-age=1, stale-if-error=60"}          # the control
    ts = {k: url("/plain/sie-rev/%s/cacheable" % k, cc=v) for k, v in cases.items()}
    for t in ts.values():
        env.get(t)
    time.sleep(1.5)
    env.set(fail="503")
    got = {k: env.get(t) for k, t in ts.items()}
    assert got["ok"].status == 200 and xc(got["ok"]) == "STALE", got["ok"]
    for k in ("mr", "pr", "sm"):
        assert got[k].status in (503, 504) and xc(got[k]) != "STALE", (k, got[k])


def test_stale_while_revalidate_refreshes_once(env):
    path = "/swr/a/cacheable"
    t = url(path, cc="max-age=1")
    r1 = env.get(t)
    assert xc(r1) == "MISS" and body_json(r1)["n"] == 1
    time.sleep(1.3)
    env.set(delay="1", cc="max-age=60")  # the refresh takes a second
    t0 = time.time()
    r = env.get(t)
    took = time.time() - t0
    assert r.status == 200 and xc(r) == "STALE" and body_json(r)["n"] == 1, r
    assert took < 0.5, "the stale response waited %.2fs for the origin" % took
    for _ in range(5):                   # more requests while the refresh runs
        r = env.get(t)
        assert r.status == 200 and body_json(r)["n"] == 1, r
    assert wait_for(lambda: env.origin(path) >= 2, 3)
    time.sleep(1.3)                      # the refresh's answer arrives and is stored
    assert env.origin(path) == 2, "%d background refreshes" % (env.origin(path) - 1)
    env.clear()
    r = env.get(t)
    assert xc(r) == "HIT" and body_json(r)["n"] == 2, r
    assert env.origin(path) == 2


def test_stale_while_revalidate_refreshes_the_right_variant(env):
    """The background refresh of a Vary'd entry asks with the request's own
    field, and its answer replaces that variant, not another."""
    path = "/swr/vary/cacheable"
    t = url(path, cc="max-age=1", vary="Accept-Language")
    for lang in ("en", "fr"):
        env.get(t, [("Accept-Language", lang)])
    time.sleep(1.5)
    env.set(cc="max-age=60", vary="Accept-Language")
    r = env.get(t, [("Accept-Language", "fr")])
    assert xc(r) == "STALE" and body_json(r)["vary"]["Accept-Language"] == "fr", r
    assert wait_for(lambda: env.origin(path) == 3, 3)
    time.sleep(0.3)
    refresh = env.origin_requests(path)[-1]
    hdrs = {n.lower(): v for n, v in refresh["headers"]}
    assert hdrs.get("accept-language") == "fr", refresh["headers"]
    r = env.get(t, [("Accept-Language", "fr")])
    assert xc(r) == "HIT" and body_json(r)["vary"]["Accept-Language"] == "fr", r
    assert body_json(r)["n"] == 3
    r = env.get(t, [("Accept-Language", "en")])                # still the old, stale en
    assert body_json(r)["vary"]["Accept-Language"] == "en" and body_json(r)["n"] == 1, r


def test_stale_while_revalidate_window_ends(env):
    path = "/plain/swr-end/cacheable"
    t = url(path, cc="max-age=1, stale-while-revalidate=1")
    t0 = time.time()
    env.get(t)
    assert _hit(env, t)
    time.sleep(max(0, t0 + 3.5 - time.time()))   # past max-age + stale-while-revalidate (+ rounding)
    r = env.get(t)
    assert xc(r) not in ("HIT", "STALE") and body_json(r)["n"] == 2, r


def test_no_stale_answer_without_a_stale_window(env):
    """With no stale-while-revalidate and no stale-if-error anywhere, an
    expired entry is never answered stale, not even in the second right after
    it expires: requests every 0.2 s across the end of its lifetime get HIT
    (fresh), or go to the origin (MISS, REVALIDATED, or the origin's 500)."""
    ok = ("HIT", "MISS", "REVALIDATED")
    t1 = url("/plain/nostale/a/cacheable", cc="max-age=1")
    t2 = url("/plain/nostale/b/cacheable", cc="max-age=1", etag="x")
    t3 = url("/plain/nostale/c/cacheable", cc="max-age=1")
    for t in (t1, t2, t3):
        env.get(t)
    seen = []
    deadline = time.time() + 2.6
    while time.time() < deadline:
        for t in (t1, t2):
            r = env.get(t)
            seen.append((t, r.status, xc(r), r.header("cache-status")))
        time.sleep(0.2)
    env.set(fail="500")                  # t3: the origin now fails
    deadline = time.time() + 1.6
    while time.time() < deadline:
        r = env.get(t3)
        seen.append((t3, r.status, xc(r), r.header("cache-status")))
        time.sleep(0.2)
    wrong = [x for x in seen if x[2] not in ok and x[1] != 500]
    assert not wrong, wrong
    assert any(x[1] == 500 for x in seen)        # it did expire


# --------------------------------------------------------------------------
# invalidation

def _hit(env, t, host=HOST):
    return xc(env.get(t, host=host)) == "HIT"


def test_purge_url_forms(env):
    a = url("/plain/pu/a/cacheable", cc="max-age=60")
    b = "/inv/pu/b/cacheable"
    for t in (a, b):
        env.get(t)
        assert _hit(env, t)
    j = env.purge(url="http://%s%s" % (HOST, a))
    assert j == {"purged": 1}, j
    assert not _hit(env, a) and _hit(env, b)
    assert env.origin("/plain/pu/a/cacheable") == 2
    j = env.purge(url=b)
    assert j.get("purged", 0) >= 1, j
    r = env.get(b)
    assert xc(r) != "HIT" and env.origin(b) == 2, r
    # purging what is not there purges nothing
    assert env.purge(url="http://%s/plain/pu/none/cacheable" % HOST) == {"purged": 0}


def test_purge_prefix(env):
    ts = ["/inv/pp/a/cacheable", "/inv/pp/b/x/cacheable", "/inv/pq/cacheable"]
    for t in ts:
        env.get(t)
        assert _hit(env, t)
    j = env.purge(prefix="/inv/pp/")
    assert j == {"purged": 2}, j
    assert [_hit(env, t) for t in ts] == [False, False, True]
    # prefix=http://host/...: that host only
    t = "/inv/ph/cacheable"
    for h in ("a.local", "b.local"):
        env.get(t, host=h)
        assert _hit(env, t, host=h)
    assert env.purge(prefix="http://a.local/inv/ph/") == {"purged": 1}
    assert not _hit(env, t, host="a.local") and _hit(env, t, host="b.local")


def test_purge_tag(env):
    tagged = [(url("/plain/tag/a/cacheable", cc="max-age=60", h="Cache-Tag: product-42 product-7"), True),
              (url("/plain/tag/b/cacheable", cc="max-age=60", h="Cache-Tag: product-7,product-42"), True),
              (url("/plain/tag/c/cacheable", cc="max-age=60", h="Cache-Tag: product-1, product-420"), False),
              (url("/plain/tag/d/cacheable", cc="max-age=60"), False)]
    for t, _ in tagged:
        env.get(t)
        assert _hit(env, t)
    j = env.purge(tag="product-42")
    assert j == {"purged": 2}, j
    for t, purged in tagged:
        assert _hit(env, t) != purged, t
    assert env.purge(tag="product-7") == {"purged": 2}    # stored again by the refetches


def test_tag_header_configurable(make_env):
    env = make_env(routes=[("/plain/", "true"), ("/", None)],
                   top="{ memory: 64MiB, max_object: 1MiB, tag_header: Surrogate-Key }")
    a = url("/plain/sk/a/cacheable", cc="max-age=60", h="Surrogate-Key: k1 k2")
    b = url("/plain/sk/b/cacheable", cc="max-age=60", h="Cache-Tag: k1")
    for t in (a, b):
        env.get(t)
    assert env.purge(tag="k1") == {"purged": 1}
    assert not _hit(env, a) and _hit(env, b)


def test_bump_namespace_by_api(env):
    feeds = ["/feed/a/cacheable", "/feed/b/cacheable?page=2"]
    other = url("/plain/nb/cacheable", cc="max-age=60")
    for t in feeds + [other]:
        env.get(t)
        assert _hit(env, t)
    j1 = env.bump("feed")
    assert j1.get("namespace") == "feed" and isinstance(j1.get("version"), int), j1
    for t in feeds:
        r = env.get(t)
        assert xc(r) != "HIT" and body_json(r)["n"] == 2, (t, r)
        assert _hit(env, t)
    assert _hit(env, other) and env.origin("/plain/nb/cacheable") == 1
    j2 = env.bump("feed")
    assert j2 == {"namespace": "feed", "version": j1["version"] + 1}, (j1, j2)
    assert not _hit(env, feeds[0])
    # an entry with a validator is revalidated after a bump (a 304 keeps its body)
    v = url("/feed/v/cacheable", etag="f1")
    r1 = env.get(v)
    assert _hit(env, v)
    env.bump("feed")
    r = env.get(v)
    assert xc(r) == "REVALIDATED" and r.body == r1.body, r
    hdrs = {n.lower(): val for n, val in env.origin_requests("/feed/v/cacheable")[-1]["headers"]}
    assert hdrs.get("if-none-match") == '"f1"'
    assert _hit(env, v)


def test_admin_token_required(env):
    t = "/inv/tok/cacheable"
    env.get(t)
    for path, params in (("/cache/purge", {"url": t}), ("/cache/purge", {"prefix": "/inv/"}),
                         ("/cache/purge", {"tag": "x"}), ("/cache/bump", {"namespace": "feed"})):
        r = env.admin_post(path, token=None, **params)
        assert r.status_code == 401, (path, r.status_code, r.text)
        r = env.admin_post(path, token=TOKEN[:-1] + "x", **params)
        assert r.status_code == 401, (path, r.status_code)
    assert _hit(env, t) and env.origin(t) == 1
    assert env.purge(url=t)["purged"] >= 1
    assert not _hit(env, t)


def test_admin_bad_requests(env):
    for path, params in (("/cache/purge", {}), ("/cache/bump", {})):
        r = env.admin_post(path, **params)
        assert r.status_code == 400, (path, r.status_code, r.text)
    # a namespace no route caches under: nothing to bump, and nothing made
    for _ in range(300):
        r = env.admin_post("/cache/bump", namespace="nobody-uses-this")
        assert r.status_code == 404, (r.status_code, r.text)
    assert env.bump("feed")["version"] > 0
    r = requests.get(env.admin + "/cache/purge", params={"url": "/x"},
                     headers={"Authorization": "Bearer " + TOKEN}, timeout=5)
    assert r.status_code in (404, 405), r.status_code


def test_bump_on_write(env):
    feed = "/feed/w/cacheable"
    env.get(feed)
    assert _hit(env, feed)
    # a failed write bumps nothing
    env.set(status="500")
    r = env.req("POST", "/rest/w/cacheable", body=b"{}")
    assert r.status == 500
    env.set(status="403")
    assert env.req("PUT", "/rest/w/cacheable", body=b"{}").status == 403
    env.clear()
    assert _hit(env, feed) and env.origin(feed) == 1
    # a successful one bumps `feed`
    r = env.req("POST", "/rest/w/cacheable", body=b"{}")
    assert r.status == 200
    r = env.get(feed)
    assert xc(r) != "HIT" and env.origin(feed) == 2, r


def test_unsafe_methods_invalidate_target_and_locations(env):
    target, loc, cloc, other = ("/inv/u/t/cacheable", "/inv/u/loc/cacheable",
                                "/inv/u/cloc/cacheable", "/inv/u/other/cacheable")
    for t in (target, loc, cloc):
        env.get(t)
        assert _hit(env, t)
    env.get(other, host="other.local")
    assert _hit(env, other, host="other.local")
    env.set(h=["Location: %s" % loc, "Content-Location: http://%s%s" % (HOST, cloc)])
    r = env.req("POST", target, body=b"x=1")
    assert r.status == 200
    env.clear()
    for t, n in ((target, 3), (loc, 2), (cloc, 2)):       # the POST itself reached `target`
        r = env.get(t)
        assert xc(r) != "HIT" and env.origin(t) == n, (t, r)
    # a Location on another host invalidates nothing there
    env.set(h="Location: http://other.local%s" % other)
    assert env.req("POST", target, body=b"x=2").status == 200
    env.clear()
    assert _hit(env, other, host="other.local")
    # DELETE and PUT too
    for m in ("DELETE", "PUT", "PATCH"):
        env.get(target)
        assert _hit(env, target)
        assert env.req(m, target, body=b"" if m == "DELETE" else b"y").status == 200
        assert not _hit(env, target), m


def test_failed_unsafe_methods_do_not_invalidate(env):
    t = "/inv/uf/cacheable"
    env.get(t)
    for status in ("500", "404"):
        env.set(status=status)
        r = env.req("POST", t, body=b"x=1")
        assert r.status == int(status)
        env.clear()
        assert _hit(env, t), status
    assert env.origin(t) == 3
    # the control: a successful one does
    assert env.req("POST", t, body=b"x=1").status == 200
    assert not _hit(env, t)


# --------------------------------------------------------------------------
# the cache key's query

def test_key_normalises_host_case_and_path(env):
    t = url("/plain/norm/abc/cacheable", cc="max-age=60")
    env.get(t, host="Test.LOCAL")
    assert _hit(env, t, host="test.local")
    assert _hit(env, t.replace("/abc/", "/%61bc/"))            # %61 is a
    assert _hit(env, t.replace("/norm/", "/x/../norm/"))
    assert env.origin("/plain/norm/abc/cacheable") == 1
    assert not _hit(env, t, host="other.local")               # another host, another entry


def test_key_query_list(env):
    for q in ("id=1&utm_source=x", "id=1&utm_source=y", "utm_source=z&id=1", "id=1"):
        r = env.get("/ql/cacheable?" + q)
        assert r.status == 200
    assert env.origin("/ql/cacheable") == 1
    r = env.get("/ql/cacheable?id=2&utm_source=x")
    assert xc(r) == "MISS" and env.origin("/ql/cacheable") == 2
    assert _hit(env, "/ql/cacheable?utm_medium=q&id=2")


def test_key_query_sort(env):
    assert xc(env.get("/qs/cacheable?a=1&b=2")) == "MISS"
    r = env.get("/qs/cacheable?b=2&a=1")
    assert xc(r) == "HIT" and env.origin("/qs/cacheable") == 1, r
    assert xc(env.get("/qs/cacheable?a=1&b=3")) == "MISS"
    assert env.origin("/qs/cacheable") == 2


def test_key_query_ignore_and_keep(env):
    env.get("/qi/cacheable?x=1")
    assert _hit(env, "/qi/cacheable?x=2") and _hit(env, "/qi/cacheable")
    assert env.origin("/qi/cacheable") == 1
    # the default (keep): every query is its own entry, order included
    env.get("/ttl/k/cacheable?a=1&b=2")
    assert not _hit(env, "/ttl/k/cacheable?b=2&a=1")
    assert _hit(env, "/ttl/k/cacheable?a=1&b=2")


def test_compressed_and_identity_answers_from_one_entry(make_env):
    """With compression on, a client that accepts gzip gets gzip and one that
    does not gets the stored bytes as they are, both from the cache."""
    import gzip
    env = make_env(routes=[("/plain/", "true"), ("/", None)], extra="compression: on")
    path = "/plain/gz/cacheable"
    t = url(path, cc="max-age=60", n="20000", ctype="text/plain")
    want = pattern_bytes(20000)
    r = env.get(t, [("Accept-Encoding", "gzip")])
    assert r.status == 200
    for _ in range(2):
        rg = env.get(t, [("Accept-Encoding", "gzip")])
        ri = env.get(t, [("Accept-Encoding", "identity")])
        rn = env.get(t)                              # no Accept-Encoding: anything goes
        assert xc(rg) == "HIT" and xc(ri) == "HIT" and xc(rn) == "HIT", (rg, ri, rn)
        assert rg.header("content-encoding") == "gzip" and gzip.decompress(rg.body) == want, rg
        assert ri.header("content-encoding") is None and ri.body == want, ri
        body = gzip.decompress(rn.body) if rn.header("content-encoding") == "gzip" else rn.body
        assert body == want
        assert "accept-encoding" in (ri.header("vary") or "").lower(), ri
    assert env.origin(path) == 1
    # a large body: its gzip variant is made in the background; meanwhile the
    # stored bytes are answered as they are, and gzip follows
    path = "/plain/gzbig/cacheable"
    t = url(path, cc="max-age=60", n=str(300 * 1024), ctype="text/plain")
    want = pattern_bytes(300 * 1024)
    env.get(t)
    encodings = []
    for _ in range(30):
        r = env.get(t, [("Accept-Encoding", "gzip")])
        enc = r.header("content-encoding")
        assert (gzip.decompress(r.body) if enc == "gzip" else r.body) == want, r
        assert xc(r) == "HIT", r
        encodings.append(enc)
        if enc == "gzip":
            break
        time.sleep(0.1)
    assert encodings[-1] == "gzip", encodings
    r = env.get(t, [("Accept-Encoding", "identity")])
    assert r.header("content-encoding") is None and r.body == want
    assert env.origin(path) == 1


# --------------------------------------------------------------------------
# memory

def _sanitized(binary):
    with open(binary, "rb") as f:
        return b"__asan_init" in f.read()


def test_memory_budget_under_a_flood(make_env, capsys):
    env = make_env(routes=[("/plain/", "true"), ("/", None)],
                   top="{ memory: 8MiB, max_object: 256KiB }")
    size = 64 * 1024
    for i in range(30):                  # warm the workers' buffers
        env.get(url("/plain/warm/%d/cacheable" % i, cc="max-age=600", n=str(size)))
    base = env.p.rss_kib()
    n, nthreads = 3000, 4
    errors = []

    def flood(k):
        try:
            with RawConn(env.port, timeout=10) as c:
                for i in range(k, n, nthreads):
                    r = c.request("GET", url("/plain/flood/%d/cacheable" % i,
                                             cc="max-age=600", n=str(size)), host=HOST)
                    if r.status != 200 or len(r.body) != size:
                        errors.append((i, r))
        except Exception as e:
            errors.append(e)

    with RssSampler(env.p.pid, 0.05) as s:
        ts = [threading.Thread(target=flood, args=(k,)) for k in range(nthreads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
    assert not errors, errors[:3]
    growth = s.growth(base) / 1024.0
    # AddressSanitizer keeps freed memory in a quarantine (256 MiB by default)
    # before reusing it, so a sanitized build's RSS grows by up to that much
    # more, whatever the cache does; the cache's own accounting is checked below
    slack = 256 + 64 if _sanitized(env.p.binary) else 0
    assert growth < 8 + 40 + slack, "RSS grew by %.1f MiB over %.1f MiB (budget 8 MiB)" % (growth, base / 1024)
    ss = env.metrics()
    cbytes = metric_sum(ss, "portico_cache_bytes")
    entries = metric_sum(ss, "portico_cache_entries")
    evictions = metric_sum(ss, "portico_cache_evictions_total")
    assert cbytes is not None and 0 < cbytes <= 8 * MiB, cbytes
    assert entries is not None and 0 < entries <= 8 * MiB // size, entries
    assert evictions is not None and evictions >= n - entries - 100, (evictions, entries)
    assert metric_sum(ss, "portico_cache_budget_bytes") == 8 * MiB
    with capsys.disabled():
        print("\nmemory flood: %d x 64 KiB through an 8 MiB store: RSS %.1f MiB before, +%.1f MiB "
              "at peak; %d entries, %.1f MiB stored, %d evictions"
              % (n, base / 1024.0, growth, entries, cbytes / MiB, evictions))
    # recent entries are still served
    last = url("/plain/flood/%d/cacheable" % (n - 1), cc="max-age=600", n=str(size))
    r = env.get(last)
    assert r.status == 200 and len(r.body) == size


def test_reload_to_a_smaller_budget_evicts_to_fit(make_env):
    routes = [("/plain/", "true"), ("/", None)]
    env = make_env(routes=routes, top="{ memory: 64MiB, max_object: 1MiB }")
    size = 256 * 1024
    for i in range(100):                                      # 25 MiB
        r = env.get(url("/plain/rl/%d/cacheable" % i, cc="max-age=600", n=str(size)))
        assert r.status == 200
    ss = env.metrics()
    assert metric_sum(ss, "portico_cache_bytes") >= 20 * MiB, metric_sum(ss, "portico_cache_bytes")
    with open(env.p.config_path) as f:
        cfg = f.read()
    with open(env.p.config_path, "w") as f:
        f.write(cfg.replace("cache: { memory: 64MiB, max_object: 1MiB }",
                            "cache: { memory: 8MiB, max_object: 1MiB }"))
    r = requests.post(env.admin + "/reload", headers={"Authorization": "Bearer " + TOKEN}, timeout=10)
    assert r.status_code == 200, r.text
    # the store shrinks when it next stores (not at the reload itself)
    env.get(url("/plain/rl/new/cacheable", cc="max-age=600", n="1000"))
    ok = wait_for(lambda: (metric_sum(env.metrics(), "portico_cache_bytes") or 0) <= 8 * MiB, 5)
    ss = env.metrics()
    assert ok, (metric_sum(ss, "portico_cache_bytes"), metric_sum(ss, "portico_cache_entries"))
    assert metric_sum(ss, "portico_cache_budget_bytes") == 8 * MiB
    assert metric_sum(ss, "portico_cache_entries") <= 32
    assert _hit(env, url("/plain/rl/new/cacheable", cc="max-age=600", n="1000"))


def test_object_of_exactly_max_object_is_stored(make_env):
    env = make_env(routes=[("/plain/", "true"), ("/", None)],
                   top="{ memory: 8MiB, max_object: 2MiB }")
    t = url("/plain/maxobj/cacheable", cc="max-age=600", n=str(2 * MiB))
    r = env.get(t)
    assert r.status == 200 and len(r.body) == 2 * MiB
    r = env.get(t)
    assert xc(r) == "HIT" and env.origin("/plain/maxobj/cacheable") == 1, r


def test_object_over_max_object_streams_but_is_not_stored(make_env):
    env = make_env(routes=[("/plain/", "true"), ("/", None)],
                   top="{ memory: 8MiB, max_object: 256KiB }")
    big = 300 * 1024
    t = url("/plain/big/cacheable", cc="max-age=600", n=str(big))
    for i in range(2):
        r = env.get(t)
        assert r.status == 200 and len(r.body) == big and sha256(r.body) == sha256(pattern_bytes(big))
        assert xc(r) == "MISS", (i, r)
    assert env.origin("/plain/big/cacheable") == 2
    # a much larger one streams through without being held whole
    huge = 48 * MiB
    base = env.p.rss_kib()
    h = __import__("hashlib").sha256()
    with RssSampler(env.p.pid, 0.02) as smp:
        with RawConn(env.port, timeout=20) as c:
            c.send(build_request("GET", url("/plain/huge/cacheable", cc="max-age=600", n=str(huge)),
                                 host=HOST))
            r, _ = c.read_final(sink=h.update)
    assert r.status == 200 and h.hexdigest() == sha256(pattern_bytes(huge))
    growth = smp.growth(base) / 1024.0
    assert growth < 16, "RSS grew by %.1f MiB streaming a 48 MiB response" % growth
    small = url("/plain/small/cacheable", cc="max-age=600", n=str(200 * 1024))   # the control
    env.get(small)
    assert _hit(env, small)


# --------------------------------------------------------------------------
# metrics and status

def test_access_log_records_the_cache_result(make_env, tmp_path):
    log = tmp_path / "access.log"
    env = make_env(routes=[("/plain/", "true"), ("/", None)],
                   extra="access_log: { path: %s, format: json, flush: 10ms }" % log)
    t = url("/plain/alog/cacheable", cc="max-age=60")
    with RawConn(env.port) as c:         # one connection, one worker: its lines are in order
        env.req("GET", t, conn=c)
        env.req("GET", t, conn=c)
    env.get("/nocache/alog/echo")

    def lines():
        try:
            with open(str(log)) as f:
                return [json.loads(x) for x in f if x.strip()]
        except OSError:
            return []
    got = wait_for(lambda: len(lines()) >= 3 and lines(), 5)
    assert got, lines()
    caches = [str(l.get("cache")).lower() for l in got if "alog/cacheable" in l["path"]]
    assert caches == ["miss", "hit"], got
    assert [l["cache"] for l in got if "alog/echo" in l["path"]] == [None], got

def test_metrics_and_status(env):
    ss0 = env.metrics()

    def delta(ss, result):
        v1 = metric_sum(ss, "portico_cache_requests_total", route="/plain/", result=result)
        v0 = metric_sum(ss0, "portico_cache_requests_total", route="/plain/", result=result) or 0
        return None if v1 is None else v1 - v0

    a = url("/plain/m/a/cacheable", cc="max-age=1, stale-while-revalidate=30")
    b = url("/plain/m/b/cacheable", cc="max-age=60")
    env.get(a)                                               # miss
    env.get(b)                                               # miss
    for _ in range(3):
        env.get(b)                                           # 3 hits
    env.get(b, [("Cache-Control", "no-cache")])              # bypass (the client's no-cache)
    time.sleep(2.1)
    assert xc(env.get(a)) == "STALE"                         # stale (and a background refresh)
    c = url("/plain/m/c/cacheable", cc="max-age=1", etag="e")
    env.get(c)                                               # miss
    time.sleep(2.1)
    assert xc(env.get(c)) == "REVALIDATED"                   # revalidated
    wait_for(lambda: env.origin("/plain/m/a/cacheable") == 2, 3)
    time.sleep(0.2)
    ss = env.metrics()
    assert delta(ss, "hit") == 3, delta(ss, "hit")
    assert delta(ss, "miss") == 3, delta(ss, "miss")
    assert delta(ss, "stale") == 1, delta(ss, "stale")
    assert delta(ss, "revalidated") == 1, delta(ss, "revalidated")
    assert delta(ss, "bypass") == 1, delta(ss, "bypass")
    assert metric_sum(ss, "portico_cache_entries") == 3
    assert metric_sum(ss, "portico_cache_bytes") > 0
    s1 = metric_sum(ss, "portico_cache_stored_total", route="/plain/")
    s0 = metric_sum(ss0, "portico_cache_stored_total", route="/plain/") or 0
    assert s1 is not None and s1 - s0 >= 3, (s0, s1)
    # coalesced waits
    d = url("/plain/m/d/cacheable", cc="max-age=60", delay="0.8")
    results = [None] * 5
    for th in _fire(env.port, d, 5, results, threading.Barrier(5)):
        th.join(10)
    assert all(getattr(r, "status", None) == 200 for r in results), results
    ss = env.metrics()
    assert metric_sum(ss, "portico_cache_coalesced_total") >= 4
    # purges
    p0 = metric_sum(ss, "portico_cache_purges_total") or 0
    env.purge(url=b)
    ss = env.metrics()
    assert metric_sum(ss, "portico_cache_purges_total") >= p0 + 1
    assert metric_sum(ss, "portico_cache_entries") == 3
    assert metric_sum(ss, "portico_cache_evictions_total") is not None
    # the hit ratio per route in /status
    st = env.status()
    assert "cache" in st, sorted(st)
    ratio = _route_ratio(st["cache"], "/plain/")
    assert ratio is not None, st["cache"]
    # as the counters have it: answers from the cache (hit, stale, revalidated)
    # over every lookup (the dashboard and the alert count the same way)
    by = {res: metric_sum(ss, "portico_cache_requests_total", route="/plain/", result=res) or 0
          for res in ("hit", "miss", "stale", "revalidated", "bypass")}
    want = (by["hit"] + by["stale"] + by["revalidated"]) / sum(by.values())
    assert 0 < ratio < 1 and abs(ratio - want) < 0.01, (ratio, by, st["cache"])


def _route_ratio(cache, prefix):
    """The hit ratio of the route with this prefix, wherever the section
    puts it: [{"route": "/plain/", "hit_ratio": ..}] or {"/plain/": {..}}."""
    found = []

    def walk(o, key=None):
        if isinstance(o, dict):
            if "hit_ratio" in o and (
                    (key is not None and prefix in str(key)) or
                    any(isinstance(v, str) and prefix in v for v in o.values())):
                found.append(o["hit_ratio"])
            for k, v in o.items():
                walk(v, k)
        elif isinstance(o, list):
            for v in o:
                walk(v)
    walk(cache)
    return found[0] if found else None


# --------------------------------------------------------------------------
# the runbooks' load scenario

def test_feed_load_zipf_hit_ratio(make_env, capsys):
    env = make_env(routes=[("/feed/", "{ ttl: 30s, namespace: feed, expect_hit_ratio: 0.7 }"),
                           ("/", None)])
    nurls, s, rate, seconds = 500, 1.1, 200, 10
    rng = random.Random(11)
    weights = [1.0 / (i ** s) for i in range(1, nurls + 1)]
    picks = rng.choices(range(nurls), weights=weights, k=rate * seconds)
    results = [None] * len(picks)
    nxt = [0]
    lock = threading.Lock()
    start = time.time() + 0.2

    def worker():
        c = RawConn(env.port, timeout=10)
        try:
            while True:
                with lock:
                    k = nxt[0]
                    nxt[0] += 1
                if k >= len(picks):
                    return
                wait = start + k / float(rate) - time.time()
                if wait > 0:
                    time.sleep(wait)
                t1 = time.time()
                r = c.request("GET", "/feed/%d/cacheable" % picks[k], host=HOST)
                results[k] = (r.status, xc(r), time.time() - t1)
        except Exception as e:
            results[k] = (None, repr(e))
        finally:
            c.close()

    ts = [threading.Thread(target=worker) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    took = time.time() - start
    assert all(r is not None and r[0] == 200 for r in results), \
        [r for r in results if r is None or r[0] != 200][:5]
    hits = sum(1 for r in results if r[1] == "HIT")
    ratio = hits / float(len(results))
    p95 = sorted(r[2] for r in results)[int(len(results) * 0.95)]
    origin = env.counts()["total"]
    with capsys.disabled():
        print("\nfeed load: %d requests in %.1f s (%.0f/s), %d distinct URLs, hit ratio %.1f%%, "
              "origin %d requests = %.1f/s (%.1f%% of the traffic), p95 %.1f ms"
              % (len(results), took, len(results) / took, len(set(picks)), ratio * 100, origin,
                 origin / took, 100.0 * origin / len(results), p95 * 1000))
    assert len(results) / took >= 150, "the load ran at only %.0f/s" % (len(results) / took)
    assert ratio >= 0.70, ratio
    assert p95 < 0.25, "p95 %.0f ms (the runbook's SLO: 250 ms)" % (p95 * 1000)
    assert origin <= len(set(picks)) + 5, (origin, len(set(picks)))
    h = wait_for(lambda: metric_sum(env.metrics(), "portico_cache_requests_total", route="/feed/",
                                    result="hit") == hits, 2)
    ss = env.metrics()
    assert h, (metric_sum(ss, "portico_cache_requests_total", route="/feed/", result="hit"), hits)
    assert metric_sum(ss, "portico_cache_expected_hit_ratio", route="/feed/") == 0.7
    st = env.status()
    assert _route_ratio(st.get("cache"), "/feed/") >= 0.7, st.get("cache")
