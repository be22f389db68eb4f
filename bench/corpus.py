#!/usr/bin/python3
"""bench/corpus.py: the compression corpus (issue #13), made the same way on every machine.

    bench/corpus.py [DIR]                 (default build/corpus)
    bench/corpus.py --one NAME PATH       one generated file only (e.g. orders-32k.json)

Writes, into DIR, files of the four kinds portico compresses most, at a few sizes, and
MANIFEST.tsv (kind, name, bytes, sha256):

- json: API responses generated here from a seeded PRNG (lists of orders with users, items,
  addresses, timestamps, prices, nulls and booleans; compact as APIs send them, one
  pretty-printed), about 2 KiB (one order), 8 KiB, 32 KiB and 256 KiB;
- html: pages generated here (a header, navigation, article text drawn from a fixed vocabulary
  with a Zipf-like distribution, cards, a table, a footer), about 4 KiB, 32 KiB and 128 KiB;
- css and js: real files from Debian packages on this machine (libjs-bootstrap5, libjs-jquery,
  libjs-underscore): minified and not. A missing package is installed with apt-get, as
  scripts/deps.sh does; nothing is downloaded from elsewhere.

The generated files depend only on the seed, so the same files come out everywhere (the
manifest's sha256 says so); the Debian files depend on the package versions, which the manifest
records too.
"""
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 13

DEBIAN = [  # kind, name in the corpus, package, path
    ("css", "bootstrap-reboot.min.css", "libjs-bootstrap5", "/usr/share/bootstrap-html/css/bootstrap-reboot.min.css"),
    ("css", "bootstrap-grid.min.css", "libjs-bootstrap5", "/usr/share/bootstrap-html/css/bootstrap-grid.min.css"),
    ("css", "bootstrap.min.css", "libjs-bootstrap5", "/usr/share/bootstrap-html/css/bootstrap.min.css"),
    ("css", "bootstrap.css", "libjs-bootstrap5", "/usr/share/bootstrap-html/css/bootstrap.css"),
    ("js", "alert.js", "libjs-bootstrap5", "/usr/share/bootstrap-html/js/alert.js"),
    ("js", "underscore.min.js", "libjs-underscore", "/usr/share/javascript/underscore/underscore.min.js"),
    ("js", "bootstrap.bundle.min.js", "libjs-bootstrap5", "/usr/share/bootstrap-html/js/bootstrap.bundle.min.js"),
    ("js", "jquery.min.js", "libjs-jquery", "/usr/share/javascript/jquery/jquery.min.js"),
    ("js", "jquery.js", "libjs-jquery", "/usr/share/javascript/jquery/jquery.js"),
]

FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Dennis", "Radia",
         "Leslie", "Margaret", "John", "Sophie", "Tim", "Linus", "Guido", "Bjarne", "Anita", "Niklaus"]
LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Ritchie",
        "Perlman", "Lamport", "Hamilton", "McCarthy", "Wilson", "Berners-Lee", "Torvalds", "van Rossum",
        "Stroustrup", "Borg", "Wirth"]
CITIES = [("Lyon", "FR", "69002"), ("Porto", "PT", "4050-001"), ("Leipzig", "DE", "04109"),
          ("Gent", "BE", "9000"), ("Bologna", "IT", "40121"), ("Tartu", "EE", "51003"),
          ("Aarhus", "DK", "8000"), ("Cork", "IE", "T12"), ("Brno", "CZ", "602 00"), ("Lund", "SE", "222 21")]
STREETS = ["Rue de la République", "Rua das Flores", "Karl-Liebknecht-Straße", "Korenmarkt",
           "Via dell'Indipendenza", "Rüütli", "Søndergade", "Oliver Plunkett Street", "Masarykova", "Stora Södergatan"]
PRODUCTS = ["espresso beans 1kg", "ceramic pour-over", "burr grinder", "gooseneck kettle", "paper filters x100",
            "glass carafe", "cold brew bottle", "milk frother", "digital scale", "travel mug",
            "tamper 58mm", "cleaning tablets", "descaler", "knock box", "cupping spoons"]
STATUS = ["pending", "paid", "packed", "shipped", "delivered", "refunded"]
WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at "
         "which but have an they you were her she there been one all we their has would when if so "
         "no will can more other its who about up out then them these may into only some could time "
         "proxy cache request response header server client connection upstream latency throughput "
         "compression gzip brotli zstd level ratio memory budget stream body chunk worker thread loop "
         "timer queue limit burst rate window block key table shard lock metric counter gauge histogram "
         "configuration reload route prefix host path query cookie token session pool database "
         "transaction statement replica primary health check failure retry timeout deadline backoff "
         "operator dashboard alert incident runbook deployment rollout canary instance cluster region").split()


# Zipf-Mandelbrot weights: the word of rank k about 1/(k + 3) as often ("the" about 6%, as in prose)
ZIPF = [1.0 / (k + 3) for k in range(1, len(WORDS) + 1)]


def rng_words(r, n):
    return " ".join(r.choices(WORDS, weights=ZIPF, k=n))


def iso(r):
    return "2026-%02d-%02dT%02d:%02d:%02d.%03dZ" % (r.randint(1, 11), r.randint(1, 28), r.randint(0, 23),
                                                   r.randint(0, 59), r.randint(0, 59), r.randint(0, 999))


def order(r, i):
    first, last = r.choice(FIRST), r.choice(LAST)
    city, country, postcode = r.choice(CITIES)
    items = []
    for _ in range(r.randint(1, 4)):
        price = r.randint(300, 12000)
        items.append({"sku": "SKU-%05d" % r.randint(0, 99999), "name": r.choice(PRODUCTS),
                      "quantity": r.randint(1, 3), "unit_price": {"amount": price, "currency": "EUR"},
                      "discount": None if r.random() < 0.8 else {"code": "WINTER%d" % r.randint(5, 30),
                                                                  "percent": r.choice([5, 10, 15, 20])}})
    return {
        "id": 1000000 + i, "uuid": "%08x-%04x-4%03x-%04x-%012x" % (r.getrandbits(32), r.getrandbits(16),
                                                                  r.getrandbits(12), r.getrandbits(16) | 0x8000,
                                                                  r.getrandbits(48)),
        "status": r.choice(STATUS), "created_at": iso(r), "updated_at": iso(r),
        "customer": {"id": r.randint(1, 500000), "name": "%s %s" % (first, last),
                     "email": "%s.%s@example.com" % (first.lower(), last.lower().replace(" ", "")),
                     "vip": r.random() < 0.1},
        "shipping_address": {"street": "%d %s" % (r.randint(1, 200), r.choice(STREETS)), "city": city,
                             "postcode": postcode, "country": country},
        "items": items,
        "total": {"amount": sum(it["unit_price"]["amount"] * it["quantity"] for it in items), "currency": "EUR"},
        "tags": r.sample(["gift", "express", "fragile", "subscription", "b2b", "first-order"], r.randint(0, 2)),
        "links": {"self": "/api/v2/orders/%d" % (1000000 + i), "invoice": "/api/v2/invoices/%d" % (2000000 + i)},
    }


def json_doc(r, target, pretty=False):
    orders, i = [], 0
    while True:
        orders.append(order(r, i))
        i += 1
        doc = {"data": orders, "meta": {"page": 1, "per_page": i, "total": 48213, "generated_at": "2026-12-02T10:00:00Z"},
               "links": {"next": "/api/v2/orders?page=2&per_page=%d" % i}}
        s = json.dumps(doc, indent=2 if pretty else None, separators=None if pretty else (",", ":"),
                       ensure_ascii=False)
        if len(s.encode()) >= target:
            return s.encode()


def html_doc(r, target):
    head = ('<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            '<title>portico field notes</title>\n<link rel="stylesheet" href="/static/css/bootstrap.min.css">\n'
            '<link rel="stylesheet" href="/static/css/site.css">\n</head>\n<body>\n'
            '<nav class="navbar navbar-expand-lg navbar-dark bg-dark"><div class="container-fluid">'
            '<a class="navbar-brand" href="/">portico</a><ul class="navbar-nav me-auto">'
            + "".join('<li class="nav-item"><a class="nav-link" href="/%s/">%s</a></li>' % (w, w.title())
                      for w in ["docs", "blog", "releases", "community", "status"])
            + '</ul></div></nav>\n<main class="container my-4">\n')
    parts = [head]
    size = len(head)
    n = 0
    while size < target:
        n += 1
        kind = n % 4
        if kind == 1:
            p = "<article class=\"post\" id=\"post-%d\">\n<h2>%s</h2>\n<p class=\"text-muted small\">%s</p>\n%s</article>\n" % (
                n, rng_words(r, 6).capitalize(), iso(r)[:10],
                "".join("<p>%s.</p>\n" % rng_words(r, r.randint(30, 90)).capitalize() for _ in range(r.randint(2, 4))))
        elif kind == 2:
            p = '<div class="row">\n' + "".join(
                '<div class="col-md-4"><div class="card mb-3"><div class="card-body">'
                '<h5 class="card-title">%s</h5><p class="card-text">%s.</p>'
                '<a href="/posts/%d" class="btn btn-primary btn-sm">Read more</a></div></div></div>\n'
                % (rng_words(r, 4).capitalize(), rng_words(r, 20).capitalize(), r.randint(1, 9999))
                for _ in range(3)) + "</div>\n"
        elif kind == 3:
            p = ('<table class="table table-striped"><thead><tr><th>Route</th><th>Requests</th>'
                 '<th>p99</th><th>Status</th></tr></thead><tbody>\n' + "".join(
                     "<tr><td>/%s/%s</td><td>%d</td><td>%.1f ms</td><td><span class=\"badge bg-%s\">%s</span></td></tr>\n"
                     % (r.choice(WORDS), r.choice(WORDS), r.randint(10, 99999), r.random() * 50,
                        *r.choice([("success", "ok"), ("warning", "slow"), ("danger", "down")]))
                     for _ in range(r.randint(4, 12))) + "</tbody></table>\n")
        else:
            p = "<blockquote class=\"blockquote\"><p>%s.</p></blockquote>\n" % rng_words(r, 25).capitalize()
        parts.append(p)
        size += len(p)
    parts.append('</main>\n<footer class="footer mt-auto py-3 bg-light"><div class="container">'
                 '<span class="text-muted">&copy; 2026 portico</span></div></footer>\n'
                 '<script src="/static/js/bootstrap.bundle.min.js"></script>\n</body>\n</html>\n')
    return "".join(parts).encode()


def ensure_packages():
    missing = sorted({pkg for _, _, pkg, path in DEBIAN if not os.path.exists(path)})
    if not missing:
        return
    print("corpus: installing %s from Debian" % " ".join(missing), file=sys.stderr)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", "--no-install-recommends"] + missing,
                   check=True, env=env, stdout=subprocess.DEVNULL)


def package_version(pkg):
    try:
        return subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def generated():
    r = random.Random(SEED)
    files = []
    for name, target, pretty in [("orders-2k.json", 1024, False), ("orders-8k.json", 8192, False),
                                 ("orders-32k.json", 32768, False), ("orders-32k-pretty.json", 32768, True),
                                 ("orders-256k.json", 262144, False)]:
        files.append(("json", name, json_doc(r, target, pretty), "generated (seed %d)" % SEED))
    for name, target in [("page-4k.html", 4096), ("page-32k.html", 32768), ("page-128k.html", 131072)]:
        files.append(("html", name, html_doc(r, target), "generated (seed %d)" % SEED))
    return files


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--one":
        # one generated file (bench/run.sh serves orders-32k.json): no Debian package needed
        data = {name: d for _, name, d, _ in generated()}.get(sys.argv[2])
        if data is None:
            sys.exit("corpus: no generated file named %s" % sys.argv[2])
        with open(sys.argv[3], "wb") as f:
            f.write(data)
        return
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build", "corpus")
    ensure_packages()
    os.makedirs(out, exist_ok=True)
    files = generated()
    for kind, name, pkg, path in DEBIAN:
        with open(path, "rb") as f:
            files.append((kind, name, f.read(), "%s %s" % (pkg, package_version(pkg))))
    with open(os.path.join(out, "MANIFEST.tsv"), "w") as m:
        m.write("kind\tname\tbytes\tsha256\tsource\n")
        for kind, name, data, src in files:
            with open(os.path.join(out, name), "wb") as f:
                f.write(data)
            m.write("%s\t%s\t%d\t%s\t%s\n" % (kind, name, len(data), hashlib.sha256(data).hexdigest(), src))
    print("corpus: %d files, %d bytes in %s" % (len(files), sum(len(d) for _, _, d, _ in files), out),
          file=sys.stderr)


if __name__ == "__main__":
    main()
