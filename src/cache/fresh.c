/* cache/fresh.c: the cache's keys (scheme://host/path?query, the query as
 * the route keys it) and freshness (RFC 9111 4.2: the directives obeyed,
 * Age, the times of a response and its current age). Pure functions of a
 * request or a head block; the stage calls them through cache_int.h.
 */
#include "cache_int.h"

#include "http/http.h"

#include <stdlib.h>
#include <string.h>

#define MAX_PARAMS 64

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
size_t cache_make_key(const struct conf_route_cache *rc, bool https, const char *host, size_t hn,
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

size_t cache_request_key(struct stage_x *sx, const struct rstate *rs, char *out, size_t cap)
{
    size_t hn, tn;
    const char *host = stage_host(sx, &hn);
    const char *target = stage_path(sx, &tn);
    if (!host)
        host = "", hn = 0;
    return cache_make_key(rs->rc, stage_https(sx), host, hn, target, tn, out, cap);
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

bool cache_block_get(const char *b, size_t len, const char *name, const char **v, size_t *vl)
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
bool cache_understood_status(int s)
{
    return s == 200 || s == 203 || s == 204 || s == 206 || s == 300 || s == 301 || s == 302 ||
           s == 303 || s == 307 || s == 308 || s == 404 || s == 405 || s == 410 || s == 414 ||
           s == 501;
}

bool cache_heuristic_status(int s)
{
    return s == 200 || s == 203 || s == 204 || s == 300 || s == 301 || s == 308 || s == 404 ||
           s == 405 || s == 410 || s == 414 || s == 501;
}

/* The response's Age: -1 when it is not one non-negative integer (RFC
 * 9111 5.1: such a response is treated as stale), 0 when absent. Several
 * lines, whitespace, signs, fractions and parameters are invalid; a value
 * like "0,7200" (integers joined without whitespace) counts as its first,
 * as every cache the HTTP caching test suite has measured reads it. */
int64_t cache_response_age(struct stage_x *sx)
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
void cache_times_of(const struct rstate *rs, const char *b, size_t len, int status, int64_t age,
                    int64_t request_time, int64_t response_time, struct cache_times *t,
                    struct cache_cc *cc, bool *explicit)
{
    bool targeted = response_cc(b, len, cc);
    const char *v;
    size_t vl;
    int64_t date = cache_block_get(b, len, "date", &v, &vl) ? cache_http_date(v, vl) : -1;
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
    else if (!targeted && cache_block_get(b, len, "expires", &v, &vl)) {
        int64_t e = cache_http_date(v, vl);
        t->lifetime = e > date ? e - date : 0;      /* an invalid date is in the past */
    } else if (ttl)
        t->lifetime = ttl;
    else if ((cache_heuristic_status(status) || (cc->flags & CC_PUBLIC)) &&
             cache_block_get(b, len, "last-modified", &v, &vl) &&
             (lm = cache_http_date(v, vl)) >= 0 && lm < date) {
        int64_t h = (date - lm) / 10;
        t->lifetime = h < rs->heuristic_max ? h : rs->heuristic_max;
    } else {
        t->lifetime = 0;
        *explicit = false;
    }
    t->lifetime *= 1000;
}

int64_t cache_current_age(const struct cache_obj_view *v, int64_t now)
{
    int64_t resident = now - v->t.stored;
    return v->t.initial_age + (resident > 0 ? resident : 0);
}
