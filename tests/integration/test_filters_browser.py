"""Response filters (#13) checked in headless Chromium: compression, the cache's
stored variants and the default security headers, as a browser sees them.

An in-process upstream serves one small site (an HTML page, a stylesheet and a
script, each over compression.min_size) under every prefix. portico has
`compression: on` and `security_headers: default` at the top level and three
routes onto it:

  /site/  cached (`cache: { ttl: 60s }`), compression and the default headers
  /xfo/   compression, the default headers but no Content-Security-Policy, not
          cached: X-Frame-Options alone has to stop framing there
  /bare/  `compression: false`, `security_headers: off`, not cached: the
          control, on which every check below gives the opposite answer (so each
          assertion is seen able to fail)

Chromium is driven over the DevTools protocol through a pipe
(--remote-debugging-pipe: NUL-separated JSON on fds 3 and 4, no WebSocket
library needed). Each load is a fresh Chromium with a fresh profile, so
nothing comes from the browser's own cache and the requests carry no
`Cache-Control: no-cache` that would make portico bypass its cache. What a
load reports: the response heads of every request from the Network domain
(Content-Encoding, X-Cache, the security fields), the bytes that crossed the
wire (encodedDataLength), and what the page's script wrote into the DOM: that
it ran, the computed style from the stylesheet, whether the inline script it
injects ran or was refused by the Content-Security-Policy (and the directive),
and, for the framing page, whether each framed page could be read.
"""
import http.server
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import free_port

CHROMIUM = "/usr/bin/chromium"

pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason="%s is missing: install it with `scripts/deps.sh` (CI does, in .ci/run)" % CHROMIUM)


# --------------------------------------------------------------------------
# the site (deterministic, compressible, each file well over 1 KiB)

def _html():
    paras = "\n".join(
        '<p class="para">Paragraph %d of the page: portico compresses this HTML, the stylesheet '
        'and the script once per encoding and serves the stored variant on every hit.</p>' % i
        for i in range(12))
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            "<title>portico filters</title>\n<link rel=\"stylesheet\" href=\"app.css\">\n</head>\n"
            "<body>\n<main id=\"app\">\n<h1 id=\"title\">Response filters</h1>\n"
            "<p id=\"out\">script did not run</p>\n"
            "<p id=\"inline\">inline script did not run</p>\n"
            "<p id=\"csp\">no violation</p>\n"
            "%s\n</main>\n<script src=\"app.js\"></script>\n</body></html>\n" % paras).encode()


def _css():
    rules = ["/* app.css: generated for the browser check */",
             "#title { color: rgb(12, 34, 56); font-size: 31px; }",
             "#app { border-left: 7px solid rgb(200, 100, 50); padding: 4px; }"]
    for i in range(300):
        rules.append(".c%d { margin: %dpx %dpx; color: #%06x; }" % (i, i % 13, i % 7, (i * 7919) & 0xffffff))
    return ("\n".join(rules) + "\n").encode()


def _framer():
    return (b"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>framer</title></head>\n"
            b"<body>\n<p id=\"frames\">pending</p>\n"
            b"<iframe id=\"f-site\" src=\"/site/index.html\"></iframe>\n"
            b"<iframe id=\"f-xfo\" src=\"/xfo/index.html\"></iframe>\n"
            b"<iframe id=\"f-bare\" src=\"/bare/index.html\"></iframe>\n"
            b"<script src=\"framer.js\"></script>\n</body></html>\n")


FRAMER_JS = b"""// framer.js: reads each framed page once it has loaded; a frame the
// browser refused holds an error page of another origin, which cannot be read
var ids = ['f-site', 'f-xfo', 'f-bare'], got = {};
function report() {
  if (Object.keys(got).length < ids.length) return;
  document.getElementById('frames').textContent = JSON.stringify(got);
  document.documentElement.setAttribute('data-done', '1');
}
ids.forEach(function (id) {
  var f = document.getElementById(id);
  function look() {
    var r;
    try {
      var d = f.contentDocument, o = d && d.getElementById('out');
      r = o ? o.textContent : 'blocked';
    } catch (e) { r = 'blocked'; }
    got[id] = r;
    report();
  }
  f.addEventListener('load', look);
});
"""


def _js():
    table = ",\n".join('  { id: %d, name: "item-%d", weight: %d, tags: ["t%d", "t%d"] }'
                       % (i, i, (i * 37) % 101, i % 5, i % 11) for i in range(250))
    return ("""// app.js: generated for the browser check
'use strict';
var ITEMS = [
%s
];
function total(items) {
  var s = 0;
  for (var i = 0; i < items.length; i++) s += items[i].weight;
  return s;
}
document.addEventListener('securitypolicyviolation', function (e) {
  document.getElementById('csp').textContent = 'refused: ' + e.violatedDirective;
});
document.getElementById('out').textContent = 'rendered ' + ITEMS.length + ' items, weight ' + total(ITEMS);
// an inline script, injected: the default Content-Security-Policy (default-src 'self',
// no 'unsafe-inline') refuses it
var s = document.createElement('script');
s.textContent = "document.getElementById('inline').textContent = 'inline script ran';";
document.body.appendChild(s);
setTimeout(function () { document.documentElement.setAttribute('data-done', '1'); }, 300);
""" % table).encode()


FILES = {
    "index.html": (_html(), "text/html; charset=utf-8"),
    "app.css": (_css(), "text/css"),
    "app.js": (_js(), "application/javascript"),
    "framer.html": (_framer(), "text/html; charset=utf-8"),
    "framer.js": (FRAMER_JS, "application/javascript"),
}
WEIGHT = sum((i * 37) % 101 for i in range(250))
RENDERED = "rendered 250 items, weight %d" % WEIGHT


class Site(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen = None             # list of paths, set per server

    def do_GET(self):
        self.server.seen.append(self.path)
        name = self.path.rsplit("/", 1)[-1]
        if name not in FILES:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body, ctype = FILES[name]
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.fixture
def site():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Site)
    srv.daemon_threads = True
    srv.seen = []
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def edge(site, start_portico):
    port = free_port()
    cfg = """listen: [ "127.0.0.1:%d" ]
workers: 2
upstreams:
  app:
    servers:
      - { address: "127.0.0.1:%d" }
routes:
  - match: { prefix: /site/ }
    upstream: app
    cache: { ttl: 60s }
  - match: { prefix: /xfo/ }
    upstream: app
    security_headers: { Content-Security-Policy: "off" }
  - match: { prefix: /bare/ }
    upstream: app
    compression: false
    security_headers: "off"
compression: on
security_headers: default
shutdown_timeout: 5s
""" % (port, site.server_address[1])
    return start_portico(cfg, port=port)


# --------------------------------------------------------------------------
# Chromium over the DevTools protocol (pipe transport)

class Cdp:
    def __init__(self, profile):
        r_in, w_in = os.pipe()      # we write commands, Chromium reads them on fd 3
        r_out, w_out = os.pipe()    # Chromium writes on fd 4, we read
        args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--disable-dev-shm-usage", "--disable-extensions",
                "--user-data-dir=%s" % profile, "--remote-debugging-pipe", "about:blank"]
        # bash moves the two pipe ends onto fds 3 and 4, then becomes Chromium
        cmd = 'exec "$@" 3<&%d 4>&%d %d<&- %d>&-' % (r_in, w_out, r_in, w_out)
        self.proc = subprocess.Popen(["bash", "-c", cmd, "bash"] + args, pass_fds=(r_in, w_out),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        os.close(r_in)
        os.close(w_out)
        self.w = os.fdopen(w_in, "wb", buffering=0)
        self.r = os.fdopen(r_out, "rb", buffering=0)
        self.next_id = 0
        self.results = {}
        self.events = []
        self.cond = threading.Condition()
        self.stderr = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._drain_stderr, daemon=True).start()

    def _drain_stderr(self):
        for line in self.proc.stderr:
            self.stderr.append(line.decode("utf-8", "replace"))

    def _read(self):
        buf = b""
        while True:
            try:
                d = self.r.read(65536)
            except OSError:
                d = b""
            if not d:
                with self.cond:
                    self.results[None] = "closed"
                    self.cond.notify_all()
                return
            buf += d
            while b"\0" in buf:
                msg, buf = buf.split(b"\0", 1)
                m = json.loads(msg)
                with self.cond:
                    if "id" in m:
                        self.results[m["id"]] = m
                    else:
                        self.events.append(m)
                    self.cond.notify_all()

    def call(self, method, params=None, session=None, timeout=30, check=True):
        self.next_id += 1
        mid = self.next_id
        m = {"id": mid, "method": method, "params": params or {}}
        if session:
            m["sessionId"] = session
        self.w.write(json.dumps(m).encode() + b"\0")
        deadline = time.time() + timeout
        with self.cond:
            while mid not in self.results:
                if None in self.results:
                    raise AssertionError("chromium went away during %s:\n%s"
                                         % (method, "".join(self.stderr)[-3000:]))
                left = deadline - time.time()
                if left <= 0:
                    raise AssertionError("no answer to %s within %ds" % (method, timeout))
                self.cond.wait(left)
            r = self.results.pop(mid)
        if not check and "error" in r:
            return None
        assert "error" not in r, "%s: %r" % (method, r["error"])
        return r["result"]

    def close(self):
        try:
            self.w.write(json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)    # its own session: Chromium's processes only
            self.proc.wait(5)
        self.w.close()
        self.r.close()


class Load:
    """What one page load showed: `responses[url]` = {status, headers (lowercase names),
    encoded (bytes on the wire, head included), decoded (body bytes after decoding),
    accept_encoding (what Chromium sent)}; `dom` = what the page wrote; `console` = log lines."""

    def __init__(self, responses, dom, console):
        self.responses, self.dom, self.console = responses, dom, console

    def of(self, name):
        hits = [r for u, r in self.responses.items() if u.endswith(name)]
        assert len(hits) == 1, "%s: %d responses among %s" % (name, len(hits), list(self.responses))
        return hits[0]


_runs = [0]


def load(url, tmp_path, probe, timeout=40):
    """Load `url` in a fresh headless Chromium; wait for the page to set data-done; return a Load
    with `probe` (a JS expression giving JSON-able data) evaluated as `dom`."""
    _runs[0] += 1
    cdp = Cdp(tmp_path / ("chromium-profile-%d" % _runs[0]))
    try:
        target = cdp.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        sess = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for m in ("Network.enable", "Page.enable", "Runtime.enable", "Log.enable"):
            cdp.call(m, session=sess)
        cdp.call("Page.navigate", {"url": url}, session=sess)
        deadline = time.time() + timeout
        while True:
            # an evaluation that meets the navigation (its context destroyed) is retried
            got = cdp.call("Runtime.evaluate", {
                "expression": "document.readyState === 'complete' && "
                              "document.documentElement.getAttribute('data-done') === '1' && "
                              "location.href === %s" % json.dumps(url),
                "returnByValue": True}, session=sess, check=False)
            if got and got.get("result", {}).get("value") is True:
                break
            assert time.time() < deadline, "the page at %s did not finish within %ds" % (url, timeout)
            time.sleep(0.05)
        dom = cdp.call("Runtime.evaluate", {"expression": "JSON.stringify(%s)" % probe,
                                            "returnByValue": True}, session=sess)["result"]["value"]
        while True:                         # until every response has finished (or failed)
            with cdp.cond:
                events = list(cdp.events)
            got = {e["params"]["requestId"] for e in events if e.get("method") == "Network.responseReceived"}
            ended = {e["params"]["requestId"] for e in events
                     if e.get("method") in ("Network.loadingFinished", "Network.loadingFailed")}
            if got <= ended:
                break
            assert time.time() < deadline, "responses %s never finished loading" % (got - ended)
            time.sleep(0.05)
    finally:
        cdp.close()
    byid, console = {}, []
    for e in events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Network.requestWillBeSentExtraInfo":
            h = {k.lower(): v for k, v in p["headers"].items()}
            byid.setdefault(p["requestId"], {})["accept_encoding"] = h.get("accept-encoding")
        elif m == "Network.responseReceived":
            r = p["response"]
            byid.setdefault(p["requestId"], {}).update(
                url=r["url"], status=r["status"], headers={k.lower(): v for k, v in r["headers"].items()})
        elif m == "Network.dataReceived":
            d = byid.setdefault(p["requestId"], {})
            d["decoded"] = d.get("decoded", 0) + p["dataLength"]
        elif m == "Network.loadingFinished":
            byid.setdefault(p["requestId"], {})["encoded"] = p["encodedDataLength"]
        elif m == "Log.entryAdded":
            console.append(p["entry"].get("text", ""))
        elif m == "Runtime.consoleAPICalled":
            console.append(" ".join(str(a.get("value")) for a in p.get("args", [])))
    responses = {d["url"]: d for d in byid.values() if "url" in d and d["url"].startswith("http")}
    return Load(responses, json.loads(dom), console)


PAGE_PROBE = """{
  out: document.getElementById('out').textContent,
  inline: document.getElementById('inline').textContent,
  csp: document.getElementById('csp').textContent,
  color: getComputedStyle(document.getElementById('title')).color,
  border: getComputedStyle(document.getElementById('app')).borderLeftWidth
}"""

PAGE_FILES = ("index.html", "app.css", "app.js")
SECURITY = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "strict-origin-when-cross-origin",
    "content-security-policy": "default-src 'self'; object-src 'none'; base-uri 'self'; "
                               "frame-ancestors 'none'; form-action 'self'",
    "cross-origin-opener-policy": "same-origin",
}


def rendered(ld):
    """The script ran and the stylesheet applied."""
    return (ld.dom["out"] == RENDERED and ld.dom["color"] == "rgb(12, 34, 56)"
            and ld.dom["border"] == "7px")


def compressed(ld, name):
    """The response had a Content-Encoding Chromium asked for, and fewer bytes crossed the
    wire (head included) than the file has."""
    r = ld.of(name)
    enc = r["headers"].get("content-encoding")
    asked = [c.strip().split(";")[0] for c in (r.get("accept_encoding") or "").split(",")]
    return (r["status"] == 200 and enc in ("br", "gzip", "zstd") and enc in asked
            and r["encoded"] < len(FILES[name][0]) and r["decoded"] == len(FILES[name][0]))


def describe(ld):
    return json.dumps({"dom": ld.dom, "console": ld.console[-10:],
                       "responses": {u: {k: r.get(k) for k in ("status", "encoded", "decoded",
                                                               "accept_encoding")}
                                     | {"content-encoding": r["headers"].get("content-encoding"),
                                        "x-cache": r["headers"].get("x-cache")}
                                     for u, r in ld.responses.items()}}, indent=1)


# --------------------------------------------------------------------------
# tests

def test_page_renders_compressed_then_from_the_cache(edge, site, tmp_path):
    base = "http://127.0.0.1:%d" % edge.port
    first = load(base + "/site/index.html", tmp_path, PAGE_PROBE)
    info = describe(first)
    assert rendered(first), info
    for name in PAGE_FILES:
        assert compressed(first, name), (name, info)
        assert first.of(name)["headers"].get("x-cache") == "MISS", (name, info)
        assert "accept-encoding" in first.of(name)["headers"].get("vary", "").lower(), (name, info)
    fetched = len(site.seen)
    assert sorted(p.rsplit("/", 1)[-1] for p in site.seen) == sorted(PAGE_FILES), site.seen

    # a second browser (nothing in its own cache) gets every resource from portico's store,
    # compressed: the upstream hears nothing, and the page still renders from the variants
    second = load(base + "/site/index.html", tmp_path, PAGE_PROBE)
    info = describe(second)
    assert rendered(second), info
    for name in PAGE_FILES:
        assert compressed(second, name), (name, info)
        assert second.of(name)["headers"].get("x-cache") == "HIT", (name, info)
        assert second.of(name)["headers"].get("content-encoding") == \
            first.of(name)["headers"].get("content-encoding"), (name, info)
    assert len(site.seen) == fetched, site.seen[fetched:]

    # the control: the same site through /bare/ (no compression, no cache) fails each check
    bare = load(base + "/bare/index.html", tmp_path, PAGE_PROBE)
    info = describe(bare)
    assert rendered(bare), info
    for name in PAGE_FILES:
        assert not compressed(bare, name), (name, info)
        assert "content-encoding" not in bare.of(name)["headers"], (name, info)
        assert bare.of(name)["headers"].get("x-cache") is None, (name, info)
        assert bare.of(name)["encoded"] > len(FILES[name][0]), (name, info)


def test_security_headers_apply_in_the_browser(edge, site, tmp_path):
    base = "http://127.0.0.1:%d" % edge.port
    # the defaults are on every response, from the cache or not
    for path in ("/site/index.html", "/site/index.html"):
        ld = load(base + path, tmp_path, PAGE_PROBE)
        info = describe(ld)
        for name in PAGE_FILES:
            h = ld.of(name)["headers"]
            for field, want in SECURITY.items():
                assert h.get(field) == want, (name, field, info)
            assert "strict-transport-security" not in h, (name, info)     # plain HTTP
        # the page's own script ran ('self'), the inline one it injected did not
        assert rendered(ld), info
        assert ld.dom["inline"] == "inline script did not run", info
        assert ld.dom["csp"].startswith("refused: script-src"), info

    bare = load(base + "/bare/index.html", tmp_path, PAGE_PROBE)
    info = describe(bare)
    assert rendered(bare), info
    for name in PAGE_FILES:
        for field in SECURITY:
            assert field not in bare.of(name)["headers"], (name, field, info)
    assert bare.dom["inline"] == "inline script ran", info
    assert bare.dom["csp"] == "no violation", info

    # framing: /site/ refuses it twice over (frame-ancestors 'none' and X-Frame-Options: DENY),
    # /xfo/ by X-Frame-Options alone (its route turns the CSP off), /bare/ not at all
    fr = load(base + "/bare/framer.html", tmp_path, "JSON.parse(document.getElementById('frames').textContent)")
    info = describe(fr)
    assert fr.dom == {"f-site": "blocked", "f-xfo": "blocked", "f-bare": RENDERED}, info
    xfo = fr.of("/xfo/index.html")["headers"]
    assert xfo.get("x-frame-options") == "DENY" and "content-security-policy" not in xfo, info
