/* cache/stage.c: the cache as a stage of the request path.
 *
 *   on_request   GET and HEAD: build the key, look it up; a fresh object
 *                (or a stale one the request or stale-while-revalidate
 *                allows) is answered from memory; a stale one is validated
 *                (our If-None-Match / If-Modified-Since upstream); a miss
 *                waits on a fetch of the same key already under way, or
 *                becomes that fetch. Unsafe methods remember their key.
 *   on_upstream  a 304 to our validators is merged into the stored object
 *                and answered; a 5xx or a dead origin gets the stale copy
 *                within stale-if-error.
 *   on_response  decide whether to store (RFC 9111 3) and watch the body;
 *                a successful unsafe request invalidates and bumps.
 *   on_body      fill, up to cache.max_object.
 *   on_end       commit, then wake the requests that waited on this fetch.
 */
#include "cache.h"

#include "core/fmt.h"
#include "filter/filter.h"
#include "http/http.h"
#include "obs/obs.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define KEY_MAX 4096
#define MAX_PARAMS 64
#define PASS_SECONDS 120        /* how long a key found uncacheable skips coalescing */

enum { R_HIT, R_MISS, R_STALE, R_REVALIDATED, R_BYPASS, R_N };
static const char *const result_name[R_N] = { "hit", "miss", "stale", "revalidated", "bypass" };

/* Counters by route (host and prefix), kept across reloads like limit/'s. */
#define MAX_SERIES 1024
struct series {
    char route[256];
    _Atomic uint64_t n[R_N];
    _Atomic uint64_t coalesced, stored;
    _Atomic uint32_t expect_permille;
};
static struct series series[MAX_SERIES];
static _Atomic uint32_t nseries;
static pthread_mutex_t series_mu = PTHREAD_MUTEX_INITIALIZER;

static struct series *series_for(const struct conf_route *rt)
{
    char label[256];
    snprintf(label, sizeof label, "%s%s", rt->host ? rt->host : "", rt->prefix);
    for (char *p = label; *p; p++)      /* a label in Prometheus text and in JSON as it is */
        if ((unsigned char)*p < 0x20 || *p == '"' || *p == '\\' || *p == 0x7f)
            *p = '_';
    pthread_mutex_lock(&series_mu);
    uint32_t n = atomic_load(&nseries);
    struct series *s = NULL;
    for (uint32_t i = 0; i < n && !s; i++)
        if (!strcmp(series[i].route, label))
            s = &series[i];
    if (!s && n < MAX_SERIES) {
        s = &series[n];
        snprintf(s->route, sizeof s->route, "%s", label);
        atomic_store(&nseries, n + 1);
    }
    if (s)
        atomic_store(&s->expect_permille, rt->cache.expect_hit_permille);
    pthread_mutex_unlock(&series_mu);
    return s;
}

static void count(struct stage_x *sx, struct series *s, int r)
{
    stage_log_cache(sx, result_name[r]);
    if (s)
        atomic_fetch_add_explicit(&s->n[r], 1, memory_order_relaxed);
}

/* ---------------------------------------------------------------- per route */

struct rstate {
    const struct conf_route_cache *rc;
    const struct conf_compression *cp;  /* NULL: the route does not compress */
    struct series *s;
    int ns;
    int64_t swr, sie, heuristic_max;    /* seconds */
    uint64_t max_object, lock_timeout_ms;
    char tag_header[CONF_CACHE_NAME];
};

static void *route_new(const struct conf *conf, const struct conf_route *route)
{
    const struct conf_route_cache *rc = &route->cache;
    if (!rc->enabled || cache_configure(&conf->cache) < 0)
        return NULL;
    struct rstate *rs = calloc(1, sizeof *rs);
    if (!rs)
        return NULL;
    rs->rc = rc;
    rs->cp = conf->compression.enabled && !route->no_compression ? &conf->compression : NULL;
    rs->s = series_for(route);
    rs->ns = rc->ns[0] ? cache_ns_id(cache_get(), rc->ns) : -1;
    rs->swr = (rc->swr_ms >= 0 ? (uint64_t)rc->swr_ms : conf->cache.stale_while_revalidate_ms) / 1000;
    rs->sie = (rc->sie_ms >= 0 ? (uint64_t)rc->sie_ms : conf->cache.stale_if_error_ms) / 1000;
    rs->heuristic_max = (int64_t)(conf->cache.heuristic_max_ms / 1000);
    rs->max_object = conf->cache.max_object;
    rs->lock_timeout_ms = conf->cache.lock_timeout_ms;
    memcpy(rs->tag_header, conf->cache.tag_header, sizeof rs->tag_header);
    return rs;
}

static void route_free(void *st) { free(st); }

/* ---------------------------------------------------------------- per exchange */

struct cx {
    struct cache_obj *obj;      /* answered from, or being validated */
    struct cache_pending *lead; /* the fetch others wait on: ours */
    char *key;
    uint32_t key_len;
    uint64_t hash;
    struct cache_cc req;
    int64_t request_time;
    bool unsafe, validating, answered, store, body_ended, refresh, waiting;
    bool rejected;              /* the response came and policy would not store it */
    bool compressible;          /* its head allows compressed variants (the length is checked at commit) */
    /* the response being stored */
    int status;
    uint32_t flags;
    struct cache_times t;
    char *head, *vnames, *tags;
    uint32_t head_len, vnames_len, tags_len;
    char *buf;
    size_t len, cap;
};

/* Wall-clock milliseconds: ages are kept in ms so that a lifetime ends
 * when it ends, not at the next whole second (HTTP's fields are seconds). */
static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME_COARSE, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int elem_cmp(const void *a, const void *b)
{
    const struct stage_field *x = a, *y = b;
    size_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
    int c = memcmp(x->name, y->name, n);
    return c ? c : (x->name_len > y->name_len) - (x->name_len < y->name_len);
}

/* A request field as a Vary secondary key sees it: every line of it
 * combined, whitespace dropped, and for Accept-Language, lowercase with
 * its elements in order (so that "en, fr" and "fr,en" select the same
 * variant). Into a per-thread scratch buffer, read at once by the caller. */
static bool vary_field(void *arg, const char *n, size_t nl, const char **v, size_t *vl)
{
    static _Thread_local char scratch[2048];
    struct stage_field f;
    size_t len = 0;
    bool any = false, lang = nl == 15 && http_ieq(n, "accept-language", 15);
    for (uint32_t i = 0; stage_request_field(arg, i, &f); i++) {
        if (!(f.name_len == nl && http_ieq(f.name, n, nl)))
            continue;
        if (any && len < sizeof scratch)
            scratch[len++] = ',';
        any = true;
        for (size_t k = 0; k < f.value_len && len < sizeof scratch; k++)
            if (f.value[k] != ' ' && f.value[k] != '\t')
                scratch[len++] = (char)(lang && f.value[k] >= 'A' && f.value[k] <= 'Z'
                                            ? f.value[k] + 32 : f.value[k]);
    }
    if (!any)
        return false;
    if (lang) {
        struct stage_field e[32];
        size_t ne = 0;
        char sorted[sizeof scratch];
        for (size_t p = 0; p < len && ne < 32;) {
            const char *c = memchr(scratch + p, ',', len - p);
            size_t el = c ? (size_t)(c - scratch - p) : len - p;
            if (el)
                e[ne++] = (struct stage_field){ scratch + p, NULL, el, 0 };
            p += el + 1;
        }
        qsort(e, ne, sizeof e[0], elem_cmp);
        size_t o = 0;
        for (size_t i = 0; i < ne; i++) {
            if (i)
                sorted[o++] = ',';
            memcpy(sorted + o, e[i].name, e[i].name_len);
            o += e[i].name_len;
        }
        memcpy(scratch, sorted, o);
        len = o;
    }
    *v = scratch;
    *vl = len;
    return true;
}

static bool method_is(struct stage_x *sx, const char *m)
{
    size_t n;
    const char *s = stage_method(sx, &n);
    return n == strlen(m) && !memcmp(s, m, n);
}

/* ---------------------------------------------------------------- keys */

static int param_cmp(const void *a, const void *b)
{
    const struct stage_field *x = a, *y = b;
    size_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
    int c = memcmp(x->name, y->name, n);
    return c ? c : (x->name_len > y->name_len) - (x->name_len < y->name_len);
}

static bool kept(const struct conf_route_cache *rc, const char *p, size_t n)
{
    const char *eq = memchr(p, '=', n);
    size_t nl = eq ? (size_t)(eq - p) : n;
    for (uint32_t i = 0; i < rc->nkeep; i++)
        if (strlen(rc->keep[i]) == nl && !memcmp(rc->keep[i], p, nl))
            return true;
    return false;
}

/* The query as the route keys it, appended at out+n. The new length. */
static size_t key_query(const struct conf_route_cache *rc, const char *q, size_t qn, char *out,
                        size_t n, size_t cap)
{
    if (rc->query == CONF_CACHE_QUERY_IGNORE || !qn)
        return n;
    if (rc->query == CONF_CACHE_QUERY_KEEP) {
        if (n + 1 + qn > cap)
            return 0;
        out[n++] = '?';
        memcpy(out + n, q, qn);
        return n + qn;
    }
    struct stage_field p[MAX_PARAMS];
    size_t np = 0;
    for (const char *s = q, *end = q + qn; s < end && np < MAX_PARAMS;) {
        const char *amp = memchr(s, '&', (size_t)(end - s));
        size_t l = amp ? (size_t)(amp - s) : (size_t)(end - s);
        if (l && (rc->query != CONF_CACHE_QUERY_LIST || kept(rc, s, l)))
            p[np++] = (struct stage_field){ s, NULL, l, 0 };
        s += l + 1;
    }
    qsort(p, np, sizeof p[0], param_cmp);
    for (size_t i = 0; i < np; i++) {
        if (n + 1 + p[i].name_len > cap)
            return 0;
        out[n++] = i ? '&' : '?';
        memcpy(out + n, p[i].name, p[i].name_len);
        n += p[i].name_len;
    }
    return n;
}

/* scheme://host/path?query for a host and a target; 0 if it does not fit. */
static size_t make_key(const struct conf_route_cache *rc, bool https, const char *host, size_t hn,
                       const char *target, size_t tn, char *out, size_t cap)
{
    const char *scheme = https ? "https://" : "http://";
    size_t sl = strlen(scheme), n = 0;
    if (sl + hn + tn + 2 > cap)
        return 0;
    memcpy(out, scheme, sl);
    n = sl;
    for (size_t i = 0; i < hn; i++) {
        char c = host[i];
        out[n++] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
    }
    const char *qm = memchr(target, '?', tn);
    size_t pn = qm ? (size_t)(qm - target) : tn;
    memcpy(out + n, target, pn);
    n += pn;
    return qm ? key_query(rc, qm + 1, tn - pn - 1, out, n, cap) : n;
}

static size_t request_key(struct stage_x *sx, const struct rstate *rs, char *out, size_t cap)
{
    size_t hn, tn;
    const char *host = stage_host(sx, &hn);
    const char *target = stage_path(sx, &tn);
    if (!host)
        host = "", hn = 0;
    return make_key(rs->rc, stage_https(sx), host, hn, target, tn, out, cap);
}

/* ---------------------------------------------------------------- freshness */

/* The next field called `name` in a head block ("Name: value\r\n" lines)
 * from *p on; *p moves past it. */
static bool block_next(const char **p, const char *end, const char *name, const char **v,
                       size_t *vl)
{
    size_t nl = strlen(name);
    while (*p < end) {
        const char *b = *p, *eol = memchr(b, '\r', (size_t)(end - b));
        if (!eol)
            break;
        *p = eol + 2;
        if ((size_t)(eol - b) > nl && b[nl] == ':' && http_ieq(b, name, nl)) {
            const char *q = b + nl + 1;
            while (q < eol && (*q == ' ' || *q == '\t'))
                q++;
            *v = q;
            *vl = (size_t)(eol - q);
            return true;
        }
    }
    *p = end;
    return false;
}

static bool block_get(const char *b, size_t len, const char *name, const char **v, size_t *vl)
{
    return block_next(&b, b + len, name, v, vl);
}

/* Every line of one field into cc; whether there was one. */
static bool block_cc(const char *b, size_t len, const char *name, struct cache_cc *cc)
{
    const char *v, *end = b + len;
    size_t vl;
    bool any = false;
    while (block_next(&b, end, name, &v, &vl)) {
        cache_cc_parse(cc, v, vl);
        any = true;
    }
    return any;
}

/* The directives the cache obeys: the first targeted field there is
 * (RFC 9213: Portico-Cache-Control, Surrogate-Control, CDN-Cache-Control)
 * instead of Cache-Control, whose lines are combined. True when a targeted
 * field was used (Expires is then ignored too). */
static bool response_cc(const char *b, size_t len, struct cache_cc *cc)
{
    static const char *const targeted[] = { "portico-cache-control", "surrogate-control",
                                            "cdn-cache-control" };
    for (size_t i = 0; i < sizeof targeted / sizeof targeted[0]; i++) {
        cache_cc_init(cc);
        if (block_cc(b, len, targeted[i], cc))
            return true;
    }
    cache_cc_init(cc);
    block_cc(b, len, "cache-control", cc);
    return false;
}

/* Statuses whose caching semantics RFC 9110 defines (must-understand). */
static bool understood_status(int s)
{
    return s == 200 || s == 203 || s == 204 || s == 206 || s == 300 || s == 301 || s == 302 ||
           s == 303 || s == 307 || s == 308 || s == 404 || s == 405 || s == 410 || s == 414 ||
           s == 501;
}

static bool heuristic_status(int s)
{
    return s == 200 || s == 203 || s == 204 || s == 300 || s == 301 || s == 308 || s == 404 ||
           s == 405 || s == 410 || s == 414 || s == 501;
}

/* The response's Age: -1 when it is not one non-negative integer (RFC
 * 9111 5.1: such a response is treated as stale), 0 when absent. Several
 * lines, whitespace, signs, fractions and parameters are invalid; a value
 * like "0,7200" (integers joined without whitespace) counts as its first,
 * as every cache the HTTP caching test suite has measured reads it. */
static int64_t response_age(struct stage_x *sx)
{
    struct stage_field f;
    int64_t age = 0;
    int lines = 0;
    for (uint32_t i = 0; stage_response_field(sx, i, &f); i++) {
        if (!(f.name_len == 3 && http_ieq(f.name, "age", 3)))
            continue;
        if (++lines > 1 || !f.value_len)
            return -1;
        bool first = true;
        for (size_t k = 0; k < f.value_len; k++) {
            char ch = f.value[k];
            if (ch == ',' && k > 0 && k + 1 < f.value_len && f.value[k + 1] >= '0' &&
                f.value[k + 1] <= '9') {
                first = false;
                continue;
            }
            if (ch < '0' || ch > '9')
                return -1;
            if (first && age < 2147483648LL)
                age = age * 10 + (ch - '0');
        }
    }
    return age;
}

/* RFC 9111 4.2: the times of a response (its head block) that arrived at
 * response_time for a request sent at request_time (both ms), with its Age
 * (s; -1: invalid). The times it sets are in ms but swr and sie (s). Sets *explicit when the response (or the route's ttl) gave a
 * lifetime, and *cc to the directives obeyed. */
static void times_of(const struct rstate *rs, const char *b, size_t len, int status, int64_t age,
                     int64_t request_time, int64_t response_time, struct cache_times *t,
                     struct cache_cc *cc, bool *explicit)
{
    bool targeted = response_cc(b, len, cc);
    const char *v;
    size_t vl;
    int64_t date = block_get(b, len, "date", &v, &vl) ? cache_http_date(v, vl) : -1;
    if (date < 0)
        date = response_time / 1000;
    int64_t apparent = response_time - date * 1000 > 0 ? response_time - date * 1000 : 0;
    int64_t corrected = (age < 0 ? 2147483648LL : age) * 1000 + (response_time - request_time);
    t->stored = response_time;
    t->initial_age = apparent > corrected ? apparent : corrected;
    t->swr = cc->swr;
    t->sie = cc->sie;
    if (cc->s_maxage >= 0)
        cc->flags |= CC_PROXY_REVALIDATE;      /* RFC 9111 5.2.2.10 */
    *explicit = true;
    const struct conf_route_cache *rc = rs->rc;
    int64_t ttl = (int64_t)(rc->ttl_ms / 1000), lm;
    if (rc->override)
        t->lifetime = ttl;
    else if (cc->s_maxage >= 0)
        t->lifetime = cc->s_maxage;
    else if (cc->max_age >= 0)
        t->lifetime = cc->max_age;
    else if (!targeted && block_get(b, len, "expires", &v, &vl)) {
        int64_t e = cache_http_date(v, vl);
        t->lifetime = e > date ? e - date : 0;      /* an invalid date is in the past */
    } else if (ttl)
        t->lifetime = ttl;
    else if ((heuristic_status(status) || (cc->flags & CC_PUBLIC)) &&
             block_get(b, len, "last-modified", &v, &vl) && (lm = cache_http_date(v, vl)) >= 0 &&
             lm < date) {
        int64_t h = (date - lm) / 10;
        t->lifetime = h < rs->heuristic_max ? h : rs->heuristic_max;
    } else {
        t->lifetime = 0;
        *explicit = false;
    }
    t->lifetime *= 1000;
}

static int64_t current_age(const struct cache_obj_view *v, int64_t now)
{
    int64_t resident = now - v->t.stored;
    return v->t.initial_age + (resident > 0 ? resident : 0);
}

/* ---------------------------------------------------------------- answering */

struct slice {
    struct stage_body b;
    struct stage_body *parent;
};

static void slice_free(struct stage_body *b)
{
    struct slice *s = (struct slice *)b;
    stage_body_unref(s->parent);
    free(s);
}

static struct stage_body *slice_of(struct stage_body *parent, size_t off, size_t len)
{
    struct slice *s = malloc(sizeof *s);
    if (!s)
        return NULL;
    atomic_init(&s->b.refs, 1);
    s->b.len = len;
    s->b.data = parent->data + off;
    s->b.release = slice_free;
    s->parent = stage_body_ref(parent);
    return &s->b;
}

/* A single "bytes=" range of a body of len bytes: 1 satisfiable (*from,
 * *to), 0 not a single range we serve (send it all), -1 unsatisfiable. */
static int parse_range(const char *v, size_t n, size_t len, size_t *from, size_t *to)
{
    if (n < 7 || !http_ieq(v, "bytes=", 6) || memchr(v, ',', n))
        return 0;
    const char *p = v + 6, *end = v + n, *dash = memchr(p, '-', (size_t)(end - p));
    if (!dash)
        return 0;
    uint64_t a = 0, b = 0;
    bool ha = false, hb = false;
    for (const char *q = p; q < dash; q++, ha = true) {
        if (*q < '0' || *q > '9' || a > (1ull << 50))
            return 0;
        a = a * 10 + (uint64_t)(*q - '0');
    }
    for (const char *q = dash + 1; q < end; q++, hb = true) {
        if (*q < '0' || *q > '9' || b > (1ull << 50))
            return 0;
        b = b * 10 + (uint64_t)(*q - '0');
    }
    if (!ha && !hb)
        return 0;
    if (!ha) {                          /* the last b bytes */
        if (b == 0 || len == 0)
            return -1;
        *from = b >= len ? 0 : len - b;
        *to = len - 1;
        return 1;
    }
    if (hb && b < a)
        return 0;
    if (a >= len)
        return -1;
    *from = a;
    *to = hb && b < len ? b : len - 1;
    return 1;
}

/* Whether a client's conditional request is satisfied by the stored one:
 * If-None-Match (weak comparison), else If-Modified-Since. */
static bool not_modified(struct stage_x *sx, const struct cache_obj_view *v)
{
    const char *h;
    size_t hl;
    if (v->status != 200)
        return false;
    if (stage_request_header(sx, "if-none-match", 13, &h, &hl)) {
        if (hl == 1 && h[0] == '*')
            return true;                /* RFC 9110 13.1.2: any current representation */
        return v->etag && cache_etag_match(h, hl, v->etag, v->etag_len);
    }
    if (stage_request_header(sx, "if-modified-since", 17, &h, &hl)) {
        /* RFC 9111 4.3.2: Last-Modified, or the Date when there is none */
        const char *lv = v->last_modified;
        size_t ll = v->last_modified_len;
        if (!lv && !block_get(v->head, v->head_len, "date", &lv, &ll))
            return false;
        int64_t ims = cache_http_date(h, hl), lm = cache_http_date(lv, ll);
        return ims >= 0 && lm >= 0 && lm <= ims;
    }
    return false;
}

/* If-Range: the range applies only to the stored representation it names. */
static bool if_range_ok(struct stage_x *sx, const struct cache_obj_view *v)
{
    const char *h;
    size_t hl;
    if (!stage_request_header(sx, "if-range", 8, &h, &hl))
        return true;
    if (hl && h[0] == '"')              /* a strong comparison */
        return v->etag && v->etag_len == hl && !memcmp(v->etag, h, hl);
    return v->last_modified && v->last_modified_len == hl && !memcmp(v->last_modified, h, hl);
}

/* Whether the stored Vary already names Accept-Encoding. */
static bool varies_on_ae(const struct cache_obj_view *v)
{
    for (const char *p = v->head, *end = v->head + v->head_len; p < end;) {
        const char *eol = memchr(p, '\r', (size_t)(end - p));
        if (!eol)
            break;
        if (eol - p > 5 && http_ieq(p, "vary:", 5))
            for (const char *q = p + 5; q + 15 <= eol; q++)
                if (http_ieq(q, "accept-encoding", 15))
                    return true;
        p = eol + 2;
    }
    return false;
}

/* The representation to answer with: a compressed variant the client
 * accepts (made now if it is the first to ask), or the stored one. */
static void representation(struct stage_x *sx, const struct rstate *rs, struct cache_obj *obj,
                           struct cache_obj_view *v, bool *add_vary)
{
    *add_vary = false;
    if (!rs->cp || !(v->flags & CACHE_F_COMPRESSIBLE) || !v->body)
        return;
    const char *rh;
    size_t rl;
    int enc = stage_request_header(sx, "range", 5, &rh, &rl) ? -1 : filter_negotiate(sx, rs->cp);
    const struct cache_variant *var = enc >= 0 ? cache_obj_variant(obj, enc) : NULL;
    if (enc >= 0 && !var)
        var = cache_variant_make(obj, v, enc, rs->cp->cache_level[enc]);
    if (var) {
        v->head = var->head;
        v->head_len = var->head_len;
        v->body = var->body;
    } else {
        *add_vary = !varies_on_ae(v);
    }
}

/* Signed decimal (core/fmt.h's, with a sign): no printf on a hit. */
static size_t fmt_i64(char *out, int64_t v)
{
    size_t k = v < 0;
    out[0] = '-';
    return k + fmt_u64(out + k, v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v);
}

/* Answer from obj (the context keeps the reference until on_end). */
static bool answer(struct stage_x *sx, struct cx *cx, struct cache_obj *obj, int result,
                   int64_t now)
{
    struct cache_obj_view v;
    cache_obj_view(obj, &v);
    int64_t age = current_age(&v, now), ttl = v.t.lifetime - age;
    char agebuf[24], status_buf[96], crange[64];
    size_t agelen = fmt_i64(agebuf, age / 1000);
    static const char *const xc[R_N] = { "HIT", "MISS", "STALE", "REVALIDATED", "BYPASS" };
    size_t sl = 18;
    memcpy(status_buf, "portico; hit; ttl=", sl);
    sl += fmt_i64(status_buf + sl, ttl >= 0 ? ttl / 1000 : -((-ttl + 999) / 1000));
    if (result == R_REVALIDATED) {
        memcpy(status_buf + sl, "; fwd=stale; fwd-status=304", 27);
        sl += 27;
    }
    status_buf[sl] = '\0';
    struct stage_field f[6] = {
        { "Via", "1.1 portico", 3, 11 },
        { "Age", agebuf, 3, agelen },
        { "X-Cache", xc[result], 7, strlen(xc[result]) },
        { "Cache-Status", status_buf, 12, sl },
    };
    size_t nf = 4;
    bool modified = !not_modified(sx, &v), add_vary;
    representation(sx, (const struct rstate *)stage_route_state(sx), obj, &v, &add_vary);
    if (add_vary)
        f[nf++] = (struct stage_field){ "Vary", "Accept-Encoding", 4, 15 };
    int status = v.status;
    struct stage_body *body = stage_body_ref(v.body);
    const char *rh;
    size_t rl, from, to;
    if (!modified) {
        status = 304;
        stage_body_unref(body);
        body = NULL;
    } else if (v.status == 200 && method_is(sx, "GET") && v.body &&
               stage_request_header(sx, "range", 5, &rh, &rl) && if_range_ok(sx, &v)) {
        int r = parse_range(rh, rl, v.body->len, &from, &to);
        if (r != 0) {
            if (r > 0)
                snprintf(crange, sizeof crange, "bytes %zu-%zu/%zu", from, to, v.body->len);
            else
                snprintf(crange, sizeof crange, "bytes */%zu", v.body->len);
            f[nf++] = (struct stage_field){ "Content-Range", crange, 13, strlen(crange) };
            stage_body_unref(body);
            body = r > 0 ? slice_of(v.body, from, to - from + 1) : NULL;
            status = r > 0 ? 206 : 416;
            if (r > 0 && !body)
                return false;
        }
    }
    int rc = stage_answer_block(sx, status, status == 416 ? NULL : v.head,
                                status == 416 ? 0 : v.head_len, f, nf, body);
    stage_body_unref(body);
    if (rc < 0)
        return false;
    cache_obj_touch(obj);
    if (cx->obj != obj) {
        cache_obj_unref(cx->obj);
        cx->obj = cache_obj_ref(obj);
    }
    cx->answered = true;
    count(sx, ((struct rstate *)stage_route_state(sx))->s, result);
    return true;
}

static void answer_504(struct stage_x *sx, struct cx *cx)
{
    static const struct stage_field f[] = { { "Cache-Status", "portico; fwd=miss; detail=only-if-cached", 12, 40 } };
    stage_answer(sx, 504, f, 1, NULL);
    cx->answered = true;
}

/* ---------------------------------------------------------------- the request */

static bool is_unsafe(struct stage_x *sx)
{
    return !method_is(sx, "GET") && !method_is(sx, "HEAD") && !method_is(sx, "OPTIONS") &&
           !method_is(sx, "TRACE");
}

static void request_cc(struct stage_x *sx, struct cache_cc *cc)
{
    const char *v;
    size_t vl;
    cache_cc_init(cc);
    if (stage_request_header(sx, "cache-control", 13, &v, &vl))
        cache_cc_parse(cc, v, vl);
    else if (stage_request_header(sx, "pragma", 6, &v, &vl) && vl >= 8 &&
             http_ieq(v, "no-cache", 8))
        cc->flags |= CC_NO_CACHE;
}

/* A stored object found for the request: answer it (true) or keep it to
 * validate upstream (false). */
static bool use_stored(struct stage_x *sx, struct cx *cx, const struct rstate *rs,
                       struct cache_obj *obj, int64_t now)
{
    struct cache_obj_view v;
    cache_obj_view(obj, &v);
    /* ms; the request's directives are whole seconds */
    int64_t age = current_age(&v, now), fresh = v.t.lifetime - age;
    bool usable = !(v.flags & CC_NO_CACHE) && !v.bumped && !(cx->req.flags & CC_NO_CACHE) &&
                  !cx->refresh;
    if (usable && fresh > 0 && (cx->req.max_age < 0 || age / 1000 <= cx->req.max_age) &&
        (cx->req.min_fresh < 0 || fresh / 1000 >= cx->req.min_fresh))
        return answer(sx, cx, obj, R_HIT, now);
    bool mustrev = v.flags & (CC_MUST_REVALIDATE | CC_PROXY_REVALIDATE);
    int64_t stale = -fresh;
    if (usable && !mustrev && stale >= 0 &&
        ((cx->req.flags & CC_MAX_STALE_ANY) ||
         (cx->req.max_stale >= 0 && stale <= cx->req.max_stale * 1000)))
        return answer(sx, cx, obj, R_STALE, now);
    /* a window of N seconds after the end of freshness: none when N is 0 */
    int64_t swr = v.t.swr >= 0 ? v.t.swr : rs->swr;
    if (usable && !mustrev && stale >= 0 && stale < swr * 1000 && cx->req.max_age < 0 &&
        cx->req.min_fresh < 0) {
        if (cache_obj_claim_refresh(obj) && stage_background(sx) < 0)
            cache_obj_release_refresh(obj);
        return answer(sx, cx, obj, R_STALE, now);
    }
    return false;
}

/* Send our validators instead of the client's (we answer its conditionals
 * ourselves once we know the stored response is current). */
static void validate(struct stage_x *sx, struct cx *cx, struct cache_obj *obj)
{
    struct cache_obj_view v;
    cache_obj_view(obj, &v);
    cx->obj = obj;
    if (!v.etag && !v.last_modified)
        return;
    if (v.etag)
        stage_request_edit(sx, STAGE_SET, "If-None-Match", 13, v.etag, v.etag_len);
    else
        stage_request_edit(sx, STAGE_REMOVE, "If-None-Match", 13, NULL, 0);
    if (v.last_modified)
        stage_request_edit(sx, STAGE_SET, "If-Modified-Since", 17, v.last_modified,
                           v.last_modified_len);
    else
        stage_request_edit(sx, STAGE_REMOVE, "If-Modified-Since", 17, NULL, 0);
    stage_request_edit(sx, STAGE_REMOVE, "If-Range", 8, NULL, 0);
    stage_request_edit(sx, STAGE_REMOVE, "Range", 5, NULL, 0);
    cx->validating = true;
}

static void woken(struct stage_x *sx);

/* The key, copied for the callbacks after on_request (a hit does without). */
static bool keep_key(struct cx *cx, const char *key, size_t kn)
{
    if (!(cx->key = malloc(kn)))
        return false;
    memcpy(cx->key, key, kn);
    cx->key_len = (uint32_t)kn;
    return true;
}

static enum stage_verdict on_request(struct stage_x *sx)
{
    struct cx *cx = stage_ctx(sx);
    struct rstate *rs = stage_route_state(sx);
    struct cache *c = cache_get();
    char key[KEY_MAX];
    size_t kn = request_key(sx, rs, key, sizeof key);
    bool get = method_is(sx, "GET") || method_is(sx, "HEAD");
    cx->unsafe = is_unsafe(sx);
    if (!kn || (!get && !cx->unsafe))
        return STAGE_CONTINUE;
    cx->hash = cache_hash(key, kn);
    if (!get) {
        keep_key(cx, key, kn);          /* a write: invalidated if it succeeds */
        return STAGE_CONTINUE;
    }
    request_cc(sx, &cx->req);
    int64_t now = now_ms();
    cx->request_time = now;
    cx->refresh = stage_internal(sx);
    struct cache_obj *obj = cache_lookup(c, cx->hash, key, kn, vary_field, sx);
    if (obj && use_stored(sx, cx, rs, obj, now)) {
        cache_obj_unref(obj);
        return STAGE_ANSWERED;
    }
    if (cx->req.flags & CC_ONLY_IF_CACHED) {
        cache_obj_unref(obj);
        answer_504(sx, cx);
        return STAGE_ANSWERED;
    }
    const char *rv;
    size_t rl;
    if (!keep_key(cx, key, kn)) {     /* going upstream: on_response and on_end need it */
        cache_obj_unref(obj);
        return STAGE_CONTINUE;
    }
    if (obj)
        validate(sx, cx, obj);
    else if (!cx->refresh && !(cx->req.flags & CC_NO_CACHE) && method_is(sx, "GET") &&
             !stage_request_header(sx, "range", 5, &rv, &rl) && !cache_pass_check(c, cx->hash, now)) {
        struct stage_waker *w = stage_waker(sx, woken);
        if (w && cache_pending_join(c, cx->hash, key, kn, w, &cx->lead)) {
            cx->waiting = true;
            atomic_fetch_add_explicit(&rs->s->coalesced, 1, memory_order_relaxed);
            stage_resume_after(sx, rs->lock_timeout_ms);
            return STAGE_WAIT;
        }
        stage_waker_put(w);
    }
    return STAGE_CONTINUE;
}

/* The fetch this exchange waited on is over: answer from what it stored,
 * or go upstream. */
static void woken(struct stage_x *sx)
{
    struct cx *cx = stage_ctx(sx);
    struct rstate *rs = stage_route_state(sx);
    struct cache *c = cache_get();
    int64_t now = now_ms();
    cx->waiting = false;
    struct cache_obj *obj = cache_lookup(c, cx->hash, cx->key, cx->key_len, vary_field, sx);
    bool done = obj && use_stored(sx, cx, rs, obj, now);
    cache_obj_unref(obj);
    if (done) {
        stage_finish(sx, 500);
        return;
    }
    /* nothing stored: the fetch was abandoned (its client went away) or
     * failed. Wait on the next one, or be it, so that one impatient client
     * does not set all its waiters on the origin at once; but not for a key
     * found uncacheable. The lock_timeout timer still bounds the wait. */
    struct stage_waker *w = cache_pass_check(c, cx->hash, now) ? NULL : stage_waker(sx, woken);
    if (w && cache_pending_join(c, cx->hash, cx->key, cx->key_len, w, &cx->lead)) {
        cx->waiting = true;
        return;
    }
    stage_waker_put(w);
    stage_resume(sx);
}

/* ---------------------------------------------------------------- storing */

static bool hop_or_ours(const char *n, size_t nl)
{
    static const char *const names[] = { "connection", "keep-alive", "proxy-connection", "te",
                                         "transfer-encoding", "upgrade", "trailer",
                                         "content-length", "age", "proxy-authenticate",
                                         "x-cache", "cache-status" };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (nl == strlen(names[i]) && http_ieq(n, names[i], nl))
            return true;
    return false;
}

static bool valid_line(const struct stage_field *f)
{
    for (size_t i = 0; i < f->value_len; i++) {
        unsigned char ch = (unsigned char)f->value[i];
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
            return false;
    }
    return f->name_len > 0;
}

/* Whether a field is named in the response's Connection fields (RFC 9110
 * 7.6.1: hop-by-hop, never stored). */
static bool connection_named(struct stage_x *sx, const char *n, size_t nl)
{
    struct stage_field f;
    for (uint32_t i = 0; stage_response_field(sx, i, &f); i++) {
        if (!(f.name_len == 10 && http_ieq(f.name, "connection", 10)))
            continue;
        struct http_list it = { f.value, f.value + f.value_len };
        const char *e;
        size_t el;
        while (http_list_next(&it, &e, &el))
            if (el == nl && http_ieq(e, n, nl))
                return true;
    }
    return false;
}

/* The head to store: the upstream's fields but hop-by-hop ones (and those
 * Connection names), framing, Age, and Set-Cookie unless the route allows
 * it. Adds Date when the upstream gave none. The targeted cache fields are
 * still there (the policy reads them), strip_targeted() takes them out. */
static char *build_head(struct stage_x *sx, const struct rstate *rs, uint32_t *len, int64_t now)
{
    size_t cap = 256, n = 0;
    struct stage_field f;
    for (uint32_t i = 0; stage_response_field(sx, i, &f); i++)
        cap += f.name_len + f.value_len + 4;
    char *h = malloc(cap);
    if (!h)
        return NULL;
    bool date = false;
    for (uint32_t i = 0; stage_response_field(sx, i, &f); i++) {
        if (hop_or_ours(f.name, f.name_len) || !valid_line(&f) ||
            (!rs->rc->allow_set_cookie && f.name_len == 10 && http_ieq(f.name, "set-cookie", 10)) ||
            connection_named(sx, f.name, f.name_len))
            continue;
        date |= f.name_len == 4 && http_ieq(f.name, "date", 4);
        n += (size_t)sprintf(h + n, "%.*s: %.*s\r\n", (int)f.name_len, f.name, (int)f.value_len, f.value);
    }
    if (!date) {
        char d[32];
        cache_fmt_date(now / 1000, d);
        n += (size_t)sprintf(h + n, "Date: %s\r\n", d);
    }
    *len = (uint32_t)n;
    return h;
}

/* Remove the fields addressed to this cache (Portico-Cache-Control,
 * Surrogate-Control) from a head block, in place. */
static void strip_targeted(char *h, uint32_t *len)
{
    char *w = h, *p = h, *end = h + *len;
    while (p < end) {
        char *eol = memchr(p, '\r', (size_t)(end - p));
        if (!eol)
            break;
        size_t ll = (size_t)(eol + 2 - p);
        bool drop = (ll > 22 && http_ieq(p, "portico-cache-control:", 22)) ||
                    (ll > 18 && http_ieq(p, "surrogate-control:", 18));
        if (!drop) {
            memmove(w, p, ll);
            w += ll;
        }
        p = eol + 2;
    }
    *len = (uint32_t)(w - h);
}

/* Vary's names, lowercase, "a\nb\n"; false for Vary: * (never stored). */
static bool vary_names(struct stage_x *sx, struct cx *cx)
{
    char buf[512];
    size_t n = 0;
    struct stage_field f;
    for (uint32_t i = 0; stage_response_field(sx, i, &f); i++) {
        if (!(f.name_len == 4 && http_ieq(f.name, "vary", 4)))
            continue;
        struct http_list it = { f.value, f.value + f.value_len };
        const char *e;
        size_t el;
        while (http_list_next(&it, &e, &el)) {
            if (el == 1 && e[0] == '*')
                return false;
            if (n + el + 1 > sizeof buf)
                return false;
            for (size_t k = 0; k < el; k++)
                buf[n + k] = (char)(e[k] >= 'A' && e[k] <= 'Z' ? e[k] + 32 : e[k]);
            n += el;
            buf[n++] = '\n';
        }
    }
    if (!n)
        return true;
    if (!(cx->vnames = malloc(n)))
        return false;
    memcpy(cx->vnames, buf, n);
    cx->vnames_len = (uint32_t)n;
    return true;
}

static void collect_tags(struct stage_x *sx, struct cx *cx, const struct rstate *rs)
{
    char buf[1024];
    size_t n = 0, tl = strlen(rs->tag_header);
    struct stage_field f;
    for (uint32_t i = 0; stage_response_field(sx, i, &f); i++) {
        if (!(f.name_len == tl && http_ieq(f.name, rs->tag_header, tl)))
            continue;
        for (const char *p = f.value, *end = f.value + f.value_len; p < end;) {
            while (p < end && (*p == ' ' || *p == ',' || *p == '\t'))
                p++;
            const char *s = p;
            while (p < end && *p != ' ' && *p != ',' && *p != '\t')
                p++;
            size_t l = (size_t)(p - s);
            if (l && n + l + 1 <= sizeof buf) {
                memcpy(buf + n, s, l);
                n += l;
                buf[n++] = '\n';
            }
        }
    }
    if (n && (cx->tags = malloc(n))) {
        memcpy(cx->tags, buf, n);
        cx->tags_len = (uint32_t)n;
    }
}

/* RFC 9111 3: whether this response may be stored, and its times. */
static bool storable(struct stage_x *sx, struct cx *cx, const struct rstate *rs, int status,
                     int64_t now)
{
    const char *v;
    size_t vl;
    if (!method_is(sx, "GET") || (cx->req.flags & CC_NO_STORE) || status < 200 || status == 206 ||
        status == 304 || stage_request_header(sx, "range", 5, &v, &vl))
        return false;
    bool explicit;
    struct cache_cc cc;
    times_of(rs, cx->head, cx->head_len, status, response_age(sx), cx->request_time, now, &cx->t,
             &cc, &explicit);
    cx->flags = cc.flags;
    if (cc.flags & CC_MUST_UNDERSTAND) {
        if (!understood_status(status))
            return false;               /* RFC 9111 5.2.2.3: as if no-store */
    } else if (cc.flags & CC_NO_STORE) {
        return false;
    }
    if (cc.flags & CC_PRIVATE)
        return false;
    if (stage_request_header(sx, "authorization", 13, &v, &vl) &&
        !(cc.flags & (CC_PUBLIC | CC_MUST_REVALIDATE)) && cc.s_maxage < 0)
        return false;
    if (!rs->rc->allow_set_cookie && stage_response_header(sx, "set-cookie", 10, &v, &vl))
        return false;
    if (!explicit && !heuristic_status(status))
        return false;
    bool validators = block_get(cx->head, cx->head_len, "etag", &v, &vl) ||
                      block_get(cx->head, cx->head_len, "last-modified", &v, &vl);
    if (cx->t.lifetime <= 0 && !(validators && (cc.flags & CC_NO_CACHE || cc.max_age == 0 ||
                                                cc.s_maxage == 0)))
        return false;
    if (stage_response_header(sx, "content-length", 14, &v, &vl)) {
        uint64_t n = 0;
        for (size_t i = 0; i < vl && n <= rs->max_object; i++)
            n = n * 10 + (uint64_t)(v[i] - '0');
        if (n > rs->max_object)
            return false;
        cx->cap = n;
    }
    return vary_names(sx, cx);
}

/* A successful unsafe request: its target, Location and Content-Location
 * (same host) are invalidated, and bump_on_write's namespaces bumped. */
static void invalidate(struct stage_x *sx, struct cx *cx, const struct rstate *rs)
{
    struct cache *c = cache_get();
    cache_purge_key(c, cx->key, cx->key_len);
    static const char *const fields[] = { "location", "content-location" };
    size_t hn;
    const char *host = stage_host(sx, &hn);
    if (!host)
        host = "", hn = 0;
    for (int i = 0; i < 2; i++) {
        const char *v;
        size_t vl;
        if (!stage_response_header(sx, fields[i], strlen(fields[i]), &v, &vl) || !vl)
            continue;
        char key[KEY_MAX];
        size_t kn = 0;
        if (v[0] == '/' && (vl < 2 || v[1] != '/')) {
            kn = make_key(rs->rc, stage_https(sx), host, hn, v, vl, key, sizeof key);
        } else {
            const char *p = memchr(v, ':', vl);
            if (p && (size_t)(v + vl - p) > 3 && p[1] == '/' && p[2] == '/') {
                const char *h = p + 3, *slash = memchr(h, '/', (size_t)(v + vl - h));
                size_t hl = slash ? (size_t)(slash - h) : (size_t)(v + vl - h);
                if (hl == hn && http_ieq(h, host, hn))
                    kn = make_key(rs->rc, stage_https(sx), host, hn, slash ? slash : "/",
                                  slash ? (size_t)(v + vl - slash) : 1, key, sizeof key);
            }
        }
        if (kn)
            cache_purge_key(c, key, kn);
    }
    for (uint32_t i = 0; i < rs->rc->nbump; i++)
        cache_ns_bump(c, rs->rc->bump[i]);
}

static enum stage_body_mode on_response(struct stage_x *sx)
{
    struct cx *cx = stage_ctx(sx);
    struct rstate *rs = stage_route_state(sx);
    int status = stage_status(sx);
    if (cx->answered || !cx->key)
        return STAGE_BODY_NONE;
    if (cx->unsafe) {
        if (status >= 200 && status < 400)
            invalidate(sx, cx, rs);
        return STAGE_BODY_NONE;
    }
    int64_t now = now_ms();
    stage_response_edit(sx, STAGE_REMOVE, "Portico-Cache-Control", 21, NULL, 0);
    stage_response_edit(sx, STAGE_REMOVE, "Surrogate-Control", 17, NULL, 0);
    bool bypass = cx->req.flags & CC_NO_CACHE;     /* the client asked for the origin */
    stage_response_edit(sx, STAGE_SET, "X-Cache", 7, bypass ? "BYPASS" : "MISS", bypass ? 6 : 4);
    if (!cx->refresh)                   /* portico's own refresh is not a client's miss */
        count(sx, rs->s, cx->req.flags & CC_NO_CACHE ? R_BYPASS : R_MISS);
    cx->head = build_head(sx, rs, &cx->head_len, now);
    if (!cx->head || !storable(sx, cx, rs, status, now)) {
        cx->rejected = status < 500 && cx->head;
        free(cx->head);
        cx->head = NULL;
        const char *cs = cx->validating ? "portico; fwd=stale" : bypass ? "portico; fwd=request"
                                                                        : "portico; fwd=miss";
        stage_response_edit(sx, STAGE_SET, "Cache-Status", 12, cs, strlen(cs));
        return STAGE_BODY_NONE;
    }
    strip_targeted(cx->head, &cx->head_len);
    collect_tags(sx, cx, rs);
    const char *ct, *cc, *ce;
    size_t ctl, ccl = 0, cel;
    if (rs->cp && status == 200 && !stage_response_header(sx, "content-encoding", 16, &ce, &cel) &&
        stage_response_header(sx, "content-type", 12, &ct, &ctl)) {
        if (!stage_response_header(sx, "cache-control", 13, &cc, &ccl))
            cc = NULL;
        cx->compressible = filter_compressible(rs->cp, ct, ctl, cc, ccl, UINT64_MAX);
    }
    const char *cs = cx->validating ? "portico; fwd=stale; stored"
                     : bypass       ? "portico; fwd=request; stored"
                                    : "portico; fwd=miss; stored";
    stage_response_edit(sx, STAGE_SET, "Cache-Status", 12, cs, strlen(cs));
    cx->status = status;
    cx->store = true;
    if (cx->cap && !(cx->buf = malloc(cx->cap)))
        cx->store = false;
    return cx->store ? STAGE_BODY_WATCH : STAGE_BODY_NONE;
}

static void commit(struct stage_x *sx, struct cx *cx, const struct rstate *rs);

static size_t on_body(struct stage_x *sx, const char *in, size_t len, bool end, char *out,
                      size_t out_room, size_t *out_len)
{
    (void)out;
    (void)out_room;
    (void)out_len;
    struct cx *cx = stage_ctx(sx);
    struct rstate *rs = stage_route_state(sx);
    if (!cx->store)
        return len;
    if (len && cx->len + len > cx->cap) {
        size_t nc = cx->cap ? cx->cap : 16384;
        while (nc < cx->len + len)
            nc *= 2;
        if (cx->len + len > rs->max_object) {
            cx->store = false;          /* too big: it streams through, uncached */
            free(cx->buf);
            cx->buf = NULL;
            return len;
        }
        if (nc > rs->max_object)
            nc = rs->max_object;
        char *nb = realloc(cx->buf, nc);
        if (!nb) {
            cx->store = false;
            return len;
        }
        cx->buf = nb;
        cx->cap = nc;
    }
    if (len)
        memcpy(cx->buf + cx->len, in, len);
    cx->len += len;
    if (end) {
        /* the whole body is here: stored now, before its last bytes reach
         * the client, so that its next request (on any connection) hits */
        cx->body_ended = true;
        if (stage_status(sx) == cx->status)
            commit(sx, cx, rs);
        cx->store = false;
        if (cx->lead) {
            cache_pending_done(cache_get(), cx->lead);
            cx->lead = NULL;
        }
    }
    return len;
}

/* ---------------------------------------------------------------- validation and errors */

struct filled {
    struct stage_body b;
    char *data;
};

static void filled_free(struct stage_body *b)
{
    free(((struct filled *)b)->data);
    free(b);
}

static struct stage_body *body_from(char *data, size_t len)
{
    struct filled *f = malloc(sizeof *f);
    if (!f)
        return NULL;
    atomic_init(&f->b.refs, 1);
    f->b.len = len;
    f->b.data = data;
    f->b.release = filled_free;
    f->data = data;
    return &f->b;
}

/* A 304 to our validators: the stored response with the 304's fields
 * (RFC 9111 4.3.4), stored anew. NULL when it cannot be. */
/* Fields a 304 does not update: they describe the stored body and its
 * validator (and framing and hop-by-hop ones are never stored). */
static bool kept_from_stored(const char *n, size_t nl)
{
    static const char *const names[] = { "content-encoding", "content-md5", "content-range",
                                         "etag", "content-length" };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (nl == strlen(names[i]) && http_ieq(n, names[i], nl))
            return true;
    return hop_or_ours(n, nl);
}

static bool update_field(struct stage_x *sx, const struct rstate *rs, const struct stage_field *f)
{
    return !kept_from_stored(f->name, f->name_len) && valid_line(f) &&
           !connection_named(sx, f->name, f->name_len) &&
           (rs->rc->allow_set_cookie || !(f->name_len == 10 && http_ieq(f->name, "set-cookie", 10)));
}

/* A 304 to our validators: the stored response with the 304's fields
 * (RFC 9111 4.3.4), stored anew. NULL when it cannot be. */
static struct cache_obj *merge_304(struct stage_x *sx, struct cx *cx, const struct rstate *rs)
{
    struct cache_obj_view v;
    cache_obj_view(cx->obj, &v);
    size_t cap = v.head_len + 64;
    struct stage_field f;
    for (uint32_t i = 0; stage_response_field(sx, i, &f); i++)
        cap += f.name_len + f.value_len + 4;
    char *h = malloc(cap);
    if (!h)
        return NULL;
    size_t n = 0;
    for (const char *b = v.head, *end = v.head + v.head_len; b < end;) {
        const char *eol = memchr(b, '\r', (size_t)(end - b)), *colon = memchr(b, ':', (size_t)(end - b));
        if (!eol || !colon)
            break;
        bool replaced = false;          /* by a field of the 304 */
        struct stage_field u = { b, NULL, (size_t)(colon - b), 0 };
        for (uint32_t i = 0; !replaced && stage_response_field(sx, i, &f); i++)
            replaced = f.name_len == u.name_len && http_ieq(f.name, b, u.name_len) &&
                       update_field(sx, rs, &f);
        if (!replaced) {
            memcpy(h + n, b, (size_t)(eol + 2 - b));
            n += (size_t)(eol + 2 - b);
        }
        b = eol + 2;
    }
    for (uint32_t i = 0; stage_response_field(sx, i, &f); i++)
        if (update_field(sx, rs, &f))
            n += (size_t)sprintf(h + n, "%.*s: %.*s\r\n", (int)f.name_len, f.name, (int)f.value_len, f.value);
    struct cache_obj_new o = { .key = cx->key, .key_len = cx->key_len, .hash = cx->hash,
                               .head = h, .head_len = n, .body = v.body, .status = v.status };
    bool explicit;
    struct cache_cc cc;
    uint32_t len32 = (uint32_t)n;
    times_of(rs, h, n, v.status, response_age(sx), cx->request_time, now_ms(), &o.t, &cc, &explicit);
    strip_targeted(h, &len32);
    o.head_len = len32;
    o.flags = cc.flags | (v.flags & CACHE_F_COMPRESSIBLE);
    cache_obj_vary(cx->obj, &o.vary, &o.vary_len, &o.vary_names, &o.vary_names_len, &o.tags,
                   &o.tags_len, &o.ns);
    o.ns = rs->ns;
    struct cache_obj *r = cache_insert(cache_get(), &o);
    free(h);
    return r;
}

static bool on_upstream(struct stage_x *sx, int status)
{
    struct cx *cx = stage_ctx(sx);
    struct rstate *rs = stage_route_state(sx);
    if (!cx->obj || cx->unsafe)
        return false;
    if (cx->validating && status == 304) {
        struct cache_obj *o = merge_304(sx, cx, rs);
        if (!o)
            return false;
        cache_obj_unref(cx->obj);
        cx->obj = NULL;
        bool ok = answer(sx, cx, o, R_REVALIDATED, now_ms());
        cache_obj_unref(o);
        return ok;
    }
    if (status < 500)
        return false;
    struct cache_obj_view v;
    cache_obj_view(cx->obj, &v);
    int64_t now = now_ms(), stale = current_age(&v, now) - v.t.lifetime;
    int64_t sie = v.t.sie >= 0 ? v.t.sie : rs->sie;
    /* within stale-if-error (RFC 5861; the route's default when the response
     * names none), whether the origin answered 5xx or could not be reached;
     * never what must be revalidated */
    if ((v.flags & (CC_MUST_REVALIDATE | CC_PROXY_REVALIDATE | CC_NO_CACHE)) || stale >= sie * 1000)
        return false;
    return answer(sx, cx, cx->obj, R_STALE, now);
}

/* ---------------------------------------------------------------- the end */

static void commit(struct stage_x *sx, struct cx *cx, const struct rstate *rs)
{
    if (cx->len < cx->cap) {
        char *nb = realloc(cx->buf, cx->len ? cx->len : 1);
        if (nb)
            cx->buf = nb;
    }
    /* an empty body still gets a buffer: whoever sends a stored body
     * computes data + offset, and NULL + 0 is undefined */
    if (!cx->buf && !(cx->buf = malloc(1)))
        return;
    struct stage_body *b = body_from(cx->buf, cx->len);
    if (!b)
        return;
    cx->buf = NULL;
    char vary[2048];
    size_t vn = cache_vary_values(cx->vnames, cx->vnames_len, vary_field, sx, vary, sizeof vary);
    if (vn != SIZE_MAX) {
        struct cache_obj_new o = {
            .key = cx->key, .key_len = cx->key_len, .hash = cx->hash, .vary = vary, .vary_len = vn,
            .vary_names = cx->vnames, .vary_names_len = cx->vnames_len, .head = cx->head,
            .head_len = cx->head_len, .body = b, .status = cx->status, .t = cx->t,
            .flags = cx->flags, .ns = rs->ns, .tags = cx->tags, .tags_len = cx->tags_len,
        };
        if (cx->compressible && cx->len >= rs->cp->min_size && cx->len > 0)
            o.flags |= CACHE_F_COMPRESSIBLE;
        struct cache_obj *obj = cache_insert(cache_get(), &o);
        if (obj) {
            atomic_fetch_add_explicit(&rs->s->stored, 1, memory_order_relaxed);
            cache_pass_mark(cache_get(), cx->hash, 0);
        }
        cache_obj_unref(obj);
    }
    stage_body_unref(b);
}

static void on_end(struct stage_x *sx)
{
    struct cx *cx = stage_ctx(sx);
    struct rstate *rs = stage_route_state(sx);
    struct cache *c = cache_get();
    (void)rs;
    if (cx->lead && cx->rejected)       /* the next misses need not wait on each other */
        cache_pass_mark(c, cx->hash, now_ms() + PASS_SECONDS * 1000);
    if (cx->refresh && cx->obj)
        cache_obj_release_refresh(cx->obj);
    if (cx->lead)
        cache_pending_done(c, cx->lead);
    cache_obj_unref(cx->obj);
    free(cx->buf);
    free(cx->head);
    free(cx->vnames);
    free(cx->tags);
    free(cx->key);
}

const struct stage_def cache_stage = {
    .name = "cache",
    .ctx_size = sizeof(struct cx),
    .keep_request_headers = true,
    .route_new = route_new,
    .route_free = route_free,
    .on_request = on_request,
    .on_upstream = on_upstream,
    .on_response = on_response,
    .on_body = on_body,
    .on_end = on_end,
};

/* ---------------------------------------------------------------- figures */

void cache_metrics(struct obs_text *t)
{
    struct cache *c = cache_get();
    uint32_t n = atomic_load(&nseries);
    if (!c || !n)
        return;
    obs_printf(t, "# HELP portico_cache_requests_total Cache lookups by route and result.\n"
                  "# TYPE portico_cache_requests_total counter\n");
    for (uint32_t i = 0; i < n; i++)
        for (int r = 0; r < R_N; r++)
            obs_printf(t, "portico_cache_requests_total{route=\"%s\",result=\"%s\"} %llu\n",
                       series[i].route, result_name[r],
                       (unsigned long long)atomic_load_explicit(&series[i].n[r], memory_order_relaxed));
    obs_printf(t, "# HELP portico_cache_coalesced_total Requests that waited on another's fetch "
                  "of the same key (stampedes avoided).\n# TYPE portico_cache_coalesced_total counter\n");
    for (uint32_t i = 0; i < n; i++)
        obs_printf(t, "portico_cache_coalesced_total{route=\"%s\"} %llu\n", series[i].route,
                   (unsigned long long)atomic_load(&series[i].coalesced));
    obs_printf(t, "# HELP portico_cache_stored_total Responses stored.\n"
                  "# TYPE portico_cache_stored_total counter\n");
    for (uint32_t i = 0; i < n; i++)
        obs_printf(t, "portico_cache_stored_total{route=\"%s\"} %llu\n", series[i].route,
                   (unsigned long long)atomic_load(&series[i].stored));
    obs_printf(t, "# HELP portico_cache_expected_hit_ratio The route's cache.expect_hit_ratio.\n"
                  "# TYPE portico_cache_expected_hit_ratio gauge\n");
    for (uint32_t i = 0; i < n; i++)
        if (atomic_load(&series[i].expect_permille))
            obs_printf(t, "portico_cache_expected_hit_ratio{route=\"%s\"} %.3f\n", series[i].route,
                       atomic_load(&series[i].expect_permille) / 1000.0);
    struct cache_stats st;
    cache_stats(c, &st);
    obs_printf(t, "# HELP portico_cache_bytes Bytes the cache holds (keys, heads, bodies, metadata).\n"
                  "# TYPE portico_cache_bytes gauge\nportico_cache_bytes %llu\n"
                  "# HELP portico_cache_budget_bytes cache.memory.\n"
                  "# TYPE portico_cache_budget_bytes gauge\nportico_cache_budget_bytes %llu\n"
                  "# HELP portico_cache_entries Stored responses.\n"
                  "# TYPE portico_cache_entries gauge\nportico_cache_entries %llu\n"
                  "# HELP portico_cache_evictions_total Stored responses evicted to fit the budget.\n"
                  "# TYPE portico_cache_evictions_total counter\nportico_cache_evictions_total %llu\n"
                  "# HELP portico_cache_purges_total Stored responses removed by purges and writes.\n"
                  "# TYPE portico_cache_purges_total counter\nportico_cache_purges_total %llu\n",
               (unsigned long long)st.bytes, (unsigned long long)st.budget,
               (unsigned long long)st.entries, (unsigned long long)st.evictions,
               (unsigned long long)st.purges);
}

void cache_status_json(struct obs_text *t)
{
    struct cache *c = cache_get();
    struct cache_stats st = { 0 };
    if (c)
        cache_stats(c, &st);
    obs_printf(t, "{\"bytes\":%llu,\"budget\":%llu,\"entries\":%llu,\"evictions\":%llu,"
                  "\"purges\":%llu,\"routes\":[",
               (unsigned long long)st.bytes, (unsigned long long)st.budget,
               (unsigned long long)st.entries, (unsigned long long)st.evictions,
               (unsigned long long)st.purges);
    uint32_t n = atomic_load(&nseries);
    for (uint32_t i = 0; i < n; i++) {
        uint64_t h = atomic_load(&series[i].n[R_HIT]), s = atomic_load(&series[i].n[R_STALE]),
                 rv = atomic_load(&series[i].n[R_REVALIDATED]), m = atomic_load(&series[i].n[R_MISS]),
                 b = atomic_load(&series[i].n[R_BYPASS]);
        uint64_t all = h + s + rv + m + b;
        obs_printf(t, "%s{\"route\":\"%s\",\"hits\":%llu,\"misses\":%llu,\"stale\":%llu,"
                      "\"revalidated\":%llu,\"bypass\":%llu,\"coalesced\":%llu,\"hit_ratio\":%.4f,"
                      "\"expect_hit_ratio\":%.3f}",
                   i ? "," : "", series[i].route, (unsigned long long)h, (unsigned long long)m,
                   (unsigned long long)s, (unsigned long long)rv, (unsigned long long)b,
                   (unsigned long long)atomic_load(&series[i].coalesced),
                   all ? (double)(h + s + rv) / (double)all : 0.0,
                   atomic_load(&series[i].expect_permille) / 1000.0);
    }
    obs_printf(t, "]}");
}
