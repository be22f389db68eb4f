/* tests/fuzz/fuzz_cacheadmin.c: the cache's admin API (src/cache/admin.c):
 * POST /cache/purge?url=|prefix=|tag= and /cache/bump?namespace=, whose
 * query string an operator's script (or anyone holding the admin token)
 * writes.
 *
 * Input: byte 0 picks the path (/cache/purge, /cache/bump, or the bytes up
 * to the first '?' as the path); the rest is the query string.
 *
 * Each input runs on a real store (src/cache/store.c) holding the same
 * dozen objects (keys on three hosts, two variants of one key, tags), and
 * checks:
 *   - the decoder (cache_admin_param), for each parameter name and two
 *     buffer sizes, agrees byte for byte with a plain reference decoder
 *     written from its documentation; a decoded value is never longer than
 *     the text it came from, is NUL terminated, and never holds a NUL (the
 *     store takes names as C strings: an embedded NUL would act on a
 *     different name than the one asked for);
 *   - a purge removes exactly the objects a model of the documented
 *     semantics selects (url: every variant of one host and path, any host
 *     when the host is left out; prefix: paths under it; tag: objects
 *     carrying it), says so in its answer, and the store's count agrees;
 *   - a bump of a namespace a route registered (here "feed", "a" and
 *     "profiles") answers 200 with the name echoed (escaped) and a version
 *     one higher than the last bump of that name; of any other name 404,
 *     and the name is not made (the API cannot fill the table); 400 when
 *     the parameter is missing or too long;
 *   - every answer is one line of JSON with no raw control byte and every
 *     quote inside a string escaped.
 */
#include "fuzz_common.h"

#include "cache/cache.h"
#include "obs/obs.h"

#include <strings.h>

#define VCAP 4096               /* the size of cache_admin's buffer */

/* ---------------------------------------------------------------- reference */

static int hex(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* The documented decoder: the first "name=value" element (elements split on
 * '&'), %XX and '+' decoded; false when absent, empty, or needing more than
 * cap bytes with the NUL, or holding a NUL. */
static bool ref_param(const char *q, size_t qn, const char *name, char *out, size_t cap,
                      size_t *len)
{
    size_t nl = strlen(name), i = 0;
    while (i <= qn) {
        size_t j = i;
        while (j < qn && q[j] != '&')
            j++;
        if (j - i > nl && q[i + nl] == '=' && memcmp(q + i, name, nl) == 0) {
            size_t n = 0;
            for (size_t k = i + nl + 1; k < j; k++) {
                unsigned char c = (unsigned char)q[k];
                if (c == '%' && k + 2 < j && hex((unsigned char)q[k + 1]) >= 0 &&
                    hex((unsigned char)q[k + 2]) >= 0) {
                    c = (unsigned char)(hex((unsigned char)q[k + 1]) * 16 +
                                        hex((unsigned char)q[k + 2]));
                    k += 2;
                } else if (c == '+') {
                    c = ' ';
                }
                if (n + 1 >= cap || c == 0)
                    return false;
                out[n++] = (char)c;
            }
            out[n] = '\0';
            *len = n;
            return n > 0;
        }
        if (j == qn)
            break;
        i = j + 1;
    }
    return false;
}

/* ---------------------------------------------------------------- the store */

struct obj {
    const char *host, *path;    /* the key: "http://" host path */
    const char *vary;           /* its Vary value (two variants of one key) */
    const char *tags;           /* "t1\nt2\n" */
};

static const struct obj objs[] = {
    { "example.com", "/", NULL, "home\n" },
    { "example.com", "/a", NULL, "product-42\nall\n" },
    { "example.com", "/a?x=1", NULL, "product-42\n" },
    { "example.com", "/rest/1", NULL, "all\n" },
    { "example.com", "/v", "gzip\n", "all\n" },
    { "example.com", "/v", "br\n", "all\n" },
    { "Example.ORG", "/rest/2", NULL, "a b\n" },
    { "example.org", "/rest", NULL, NULL },
    { "h", "/", NULL, "h\n" },
    { "h", "/x", NULL, "h\nall\n" },
    { "h:8080", "/x", NULL, NULL },
    { "other", "/a b", NULL, "tag with space\n" },
    { "other", "/%41", NULL, "%\n" },
};
#define NOBJ (sizeof objs / sizeof objs[0])

static struct cache *C;

static void fill(void)
{
    cache_purge_path(C, NULL, 0, "/", 1, true);
    for (size_t i = 0; i < NOBJ; i++) {
        char key[128];
        int kl = snprintf(key, sizeof key, "http://%s%s", objs[i].host, objs[i].path);
        struct stage_body *b = stage_body_copy("x", 1);
        CHECK(b);
        static const char head[] = "Content-Type: text/plain\r\n";
        struct cache_obj_new n = {
            .key = key, .key_len = (size_t)kl, .hash = cache_hash(key, (size_t)kl),
            .vary = objs[i].vary, .vary_len = objs[i].vary ? strlen(objs[i].vary) : 0,
            .vary_names = objs[i].vary ? "accept-encoding\n" : NULL,
            .vary_names_len = objs[i].vary ? 16 : 0,
            .head = head, .head_len = sizeof head - 1, .body = b, .status = 200,
            .t = { .stored = 1000, .initial_age = 0, .lifetime = 60000, .swr = -1, .sie = -1 },
            .ns = -1, .tags = objs[i].tags, .tags_len = objs[i].tags ? strlen(objs[i].tags) : 0,
        };
        struct cache_obj *o = cache_insert(C, &n);
        stage_body_unref(b);
        CHECK(o);
        cache_obj_unref(o);
    }
    struct cache_stats st;
    cache_stats(C, &st);
    CHECK(st.entries == NOBJ);
}

/* "http://host/path" or "/path", as documented: the host (NULL: any) and path. */
static bool ref_split(const char *v, size_t n, const char **host, size_t *hn, const char **path,
                      size_t *pn)
{
    *host = NULL;
    *hn = 0;
    if (n && v[0] == '/') {
        *path = v;
        *pn = n;
        return true;
    }
    const char *s = memmem(v, n, "://", 3);
    if (!s)
        return false;
    *host = s + 3;
    const char *end = v + n, *slash = memchr(*host, '/', (size_t)(end - *host));
    *hn = (size_t)((slash ? slash : end) - *host);
    *path = slash ? slash : "/";
    *pn = slash ? (size_t)(end - slash) : 1;
    return *hn > 0;
}

static size_t model_purge(const char *host, size_t hn, const char *path, size_t pn, bool prefix)
{
    size_t n = 0;
    for (size_t i = 0; i < NOBJ; i++) {
        const struct obj *o = &objs[i];
        if (host && !(strlen(o->host) == hn && strncasecmp(o->host, host, hn) == 0))
            continue;
        size_t ol = strlen(o->path);
        if (prefix ? ol >= pn && memcmp(o->path, path, pn) == 0
                   : ol == pn && memcmp(o->path, path, pn) == 0)
            n++;
    }
    return n;
}

static size_t model_tag(const char *t, size_t tn)
{
    size_t n = 0;
    for (size_t i = 0; i < NOBJ; i++) {
        for (const char *p = objs[i].tags; p && *p;) {
            const char *nl = strchr(p, '\n');
            if ((size_t)(nl - p) == tn && memcmp(p, t, tn) == 0) {
                n++;
                break;
            }
            p = nl + 1;
        }
    }
    return n;
}

/* ---------------------------------------------------------------- answers */

/* One line of JSON: an object, strings with only \" and \\ escapes, no
 * control byte anywhere. */
static void check_json(const char *p, size_t n)
{
    CHECK(n > 2 && p[0] == '{' && p[n - 1] == '\n' && p[n - 2] == '}');
    CHECK(memchr(p, '\n', n - 1) == NULL);
    bool in = false;
    for (size_t i = 0; i + 1 < n; i++) {
        unsigned char c = (unsigned char)p[i];
        CHECK(c >= 0x20);
        if (!in) {
            in = c == '"';
        } else if (c == '\\') {
            CHECK(p[i + 1] == '"' || p[i + 1] == '\\');
            i++;
        } else if (c == '"') {
            in = false;
        }
    }
    CHECK(!in);
}

static int run(const char *path, size_t pl, const char *q, size_t qn, struct obs_text *t)
{
    memset(t, 0, sizeof *t);
    int st = cache_admin(path, pl, q, qn, t);
    CHECK(!t->oom && t->buf && t->len == strlen(t->buf));
    check_json(t->buf, t->len);
    return st;
}

static void fuzz_purge(const char *q, size_t qn)
{
    static char v[VCAP];
    size_t vn;
    const char *host, *p;
    size_t hn, pn;
    long want = -1;
    if (ref_param(q, qn, "url", v, sizeof v, &vn) && ref_split(v, vn, &host, &hn, &p, &pn))
        want = (long)model_purge(host, hn, p, pn, false);
    else if (ref_param(q, qn, "prefix", v, sizeof v, &vn) && ref_split(v, vn, &host, &hn, &p, &pn))
        want = (long)model_purge(host, hn, p, pn, true);
    else if (ref_param(q, qn, "tag", v, sizeof v, &vn))
        want = (long)model_tag(v, vn);

    fill();
    struct obs_text t;
    int st = run("/cache/purge", 12, q, qn, &t);
    struct cache_stats s;
    cache_stats(C, &s);
    if (want < 0) {
        CHECK(st == 400);
        CHECK(s.entries == NOBJ);
    } else {
        char exp[64];
        snprintf(exp, sizeof exp, "{\"purged\":%ld}\n", want);
        if (st != 200 || strcmp(t.buf, exp) != 0) {
            fprintf(stderr, "purge: got %d %s, the model says %s", st, t.buf, exp);
            CHECK(!"purge as documented");
        }
        CHECK(s.entries == NOBJ - (uint64_t)want);
    }
    free(t.buf);
}

static void fuzz_bump(const char *q, size_t qn)
{
    static char v[VCAP];
    size_t vn;
    bool ok = ref_param(q, qn, "namespace", v, sizeof v, &vn) && vn < CONF_CACHE_NAME;
    struct obs_text t;
    int st = run("/cache/bump", 11, q, qn, &t);
    if (!ok) {
        CHECK(st == 400);
        free(t.buf);
        return;
    }
    static const char *const registered[] = { "feed", "a", "profiles" };
    bool known = false;
    for (size_t i = 0; i < sizeof registered / sizeof registered[0]; i++)
        known |= strlen(registered[i]) == vn && !memcmp(registered[i], v, vn);
    if (!known) {
        CHECK(st == 404);
        free(t.buf);
        return;
    }
    CHECK(st == 200);
    /* {"namespace":"<v escaped>","version":N} */
    char want[2 * CONF_CACHE_NAME + 32];
    size_t w = (size_t)snprintf(want, sizeof want, "{\"namespace\":\"");
    for (size_t i = 0; i < vn; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c == '"' || c == '\\')
            want[w++] = '\\';
        want[w++] = c < 0x20 ? '?' : (char)c;
    }
    w += (size_t)snprintf(want + w, sizeof want - w, "\",\"version\":");
    CHECK(t.len > w && memcmp(t.buf, want, w) == 0);
    unsigned long long v1 = strtoull(t.buf + w, NULL, 10);
    free(t.buf);
    /* again: one version more */
    st = run("/cache/bump", 11, q, qn, &t);
    CHECK(st == 200 && t.len > w && memcmp(t.buf, want, w) == 0);
    unsigned long long v2 = strtoull(t.buf + w, NULL, 10);
    CHECK(v1 > 0 && v2 == v1 + 1);
    free(t.buf);
}

static void fuzz_param(const char *q, size_t qn)
{
    static const char *const names[] = { "url", "prefix", "tag", "namespace", "u", "" };
    static const size_t caps[] = { VCAP, 8 };
    static char a[VCAP], b[VCAP];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        for (size_t c = 0; c < sizeof caps / sizeof caps[0]; c++) {
            size_t an = 0, bn = 0;
            memset(a, 0x5a, caps[c]);
            bool ra = cache_admin_param(q, qn, names[i], a, caps[c], &an);
            bool rb = ref_param(q, qn, names[i], b, caps[c], &bn);
            if (ra) {
                CHECK(an > 0 && an < caps[c] && an <= qn && a[an] == '\0');
                CHECK(memchr(a, '\0', an) == NULL);
            }
            CHECK(ra == rb);
            if (ra)
                CHECK(an == bn && memcmp(a, b, an) == 0);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!C) {
        struct conf_cache cc = { .memory = 1u << 20, .max_object = 1u << 16, .max_waiters = 4 };
        CHECK(cache_configure(&cc) == 0);
        C = cache_get();
        CHECK(C);
        CHECK(cache_ns_id(C, "feed") >= 0 && cache_ns_id(C, "a") >= 0 &&
              cache_ns_id(C, "profiles") >= 0);     /* as routes register theirs */
    }
    if (size < 1)
        return 0;
    const char *q = (const char *)data + 1;
    size_t qn = size - 1;
    fuzz_param(q, qn);
    switch (data[0] % 3) {
    case 0:
        fuzz_purge(q, qn);
        break;
    case 1:
        fuzz_bump(q, qn);
        break;
    default: {                  /* any path: only the two above are found */
        const char *mark = memchr(q, '?', qn);
        size_t pl = mark ? (size_t)(mark - q) : qn;
        const char *rest = mark ? mark + 1 : q + qn;
        struct obs_text t;
        int st = run(q, pl, rest, (size_t)(q + qn - rest), &t);
        bool purge = pl == 12 && memcmp(q, "/cache/purge", 12) == 0;
        bool bump = pl == 11 && memcmp(q, "/cache/bump", 11) == 0;
        CHECK(purge ? st == 200 || st == 400 : bump ? st == 200 || st == 400 || st == 404 : st == 404);
        free(t.buf);
        break;
    }
    }
    return 0;
}
