/* cache/policy.c: RFC 9111's rules that need no state: Cache-Control
 * directives, HTTP dates, entity-tag comparison. */
#include "cache.h"

#include "http/http.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

void cache_cc_init(struct cache_cc *cc)
{
    *cc = (struct cache_cc){ 0, -1, -1, -1, -1, -1, -1 };
}

/* A delta-seconds argument: digits, saturating; a malformed one is -2. */
static int64_t delta(const char *v, size_t n)
{
    if (n >= 2 && v[0] == '"' && v[n - 1] == '"') {
        v++;
        n -= 2;
    }
    const char *semi = memchr(v, ';', n);
    if (semi)
        n = (size_t)(semi - v);         /* Surrogate-Control's "max-age=60;target" */
    if (!n)
        return -2;
    int64_t r = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -2;
        if (r < 2147483648LL)
            r = r * 10 + (v[i] - '0');
    }
    return r > 2147483648LL ? 2147483648LL : r;    /* RFC 9111 1.2.2 */
}

static bool is(const char *d, size_t n, const char *name)
{
    size_t l = strlen(name);
    return n == l && http_ieq(d, name, l);
}

/* One directive: name, and its argument (NULL when none). A directive that
 * needs an argument and has a malformed one is ignored, except that a
 * malformed max-age counts as stale (RFC 9111 4.2.1: treat as 0). */
static void directive(struct cache_cc *cc, const char *d, size_t n, const char *a, size_t an)
{
    static const struct { const char *name; uint32_t flag; } flags[] = {
        { "no-store", CC_NO_STORE }, { "private", CC_PRIVATE }, { "public", CC_PUBLIC },
        { "must-revalidate", CC_MUST_REVALIDATE }, { "proxy-revalidate", CC_PROXY_REVALIDATE },
        { "only-if-cached", CC_ONLY_IF_CACHED }, { "immutable", CC_IMMUTABLE },
        { "no-transform", CC_NO_TRANSFORM }, { "no-cache", CC_NO_CACHE },
        { "must-understand", CC_MUST_UNDERSTAND },
    };
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
        if (is(d, n, flags[i].name)) {
            cc->flags |= flags[i].flag;
            return;
        }
    int64_t v = a ? delta(a, an) : -2;
    if (is(d, n, "max-age"))
        cc->max_age = v >= 0 ? (cc->max_age >= 0 && cc->max_age < v ? cc->max_age : v) : 0;
    else if (is(d, n, "s-maxage"))
        cc->s_maxage = v >= 0 ? (cc->s_maxage >= 0 && cc->s_maxage < v ? cc->s_maxage : v) : 0;
    else if (is(d, n, "max-stale")) {
        if (!a)
            cc->flags |= CC_MAX_STALE_ANY;
        else if (v >= 0)
            cc->max_stale = v;
    } else if (is(d, n, "min-fresh") && v >= 0)
        cc->min_fresh = v;
    else if (is(d, n, "stale-while-revalidate") && v >= 0)
        cc->swr = v;
    else if (is(d, n, "stale-if-error") && v >= 0)
        cc->sie = v;
}

void cache_cc_parse(struct cache_cc *cc, const char *v, size_t len)
{
    const char *p = v, *end = v + len;
    while (p < end) {
        while (p < end && (*p == ' ' || *p == '\t' || *p == ','))
            p++;
        const char *d = p;
        while (p < end && *p != '=' && *p != ',' && *p != ' ' && *p != '\t')
            p++;
        size_t dn = (size_t)(p - d);
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        const char *a = NULL;
        size_t an = 0;
        if (p < end && *p == '=') {
            p++;
            while (p < end && (*p == ' ' || *p == '\t'))
                p++;
            a = p;
            if (p < end && *p == '"') {
                p++;
                while (p < end && *p != '"')
                    p += (*p == '\\' && p + 1 < end) ? 2 : 1;
                if (p < end)
                    p++;
            } else {
                while (p < end && *p != ',' && *p != ' ' && *p != '\t')
                    p++;
            }
            an = (size_t)(p - a);
        }
        if (dn)
            directive(cc, d, dn, a, an);
        while (p < end && *p != ',')
            p++;                        /* junk after a directive: skip to the next */
    }
}

static int month(const char *m)
{
    static const char names[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    for (int i = 0; i < 12; i++)
        if (!memcmp(names + 3 * i, m, 3))
            return i;
    return -1;
}

static bool digits(const char *s, size_t n, int *out)
{
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return true;
}

static int64_t make_time(int y, int mon, int d, int h, int mi, int s)
{
    if (mon < 0 || d < 1 || d > 31 || h > 23 || mi > 59 || s > 60 || y < 1900)
        return -1;
    struct tm tm = { .tm_year = y - 1900, .tm_mon = mon, .tm_mday = d, .tm_hour = h,
                     .tm_min = mi, .tm_sec = s };
    time_t t = timegm(&tm);
    return t < 0 ? -1 : (int64_t)t;
}

/* "hh:mm:ss" */
static bool clock_of(const char *s, int *h, int *m, int *sec)
{
    return s[2] == ':' && s[5] == ':' && digits(s, 2, h) && digits(s + 3, 2, m) &&
           digits(s + 6, 2, sec);
}

int64_t cache_http_date(const char *v, size_t n)
{
    char b[40];
    if (!v || n < 24 || n >= sizeof b)
        return -1;
    memcpy(b, v, n);
    b[n] = '\0';
    int d, y, h, mi, s;
    const char *comma = memchr(b, ',', n);
    if (n == 29 && comma == b + 3 && b[4] == ' ' && b[7] == ' ' && b[11] == ' ' &&
        b[16] == ' ' && !strcmp(b + 25, " GMT")) {       /* Sun, 06 Nov 1994 08:49:37 GMT */
        if (digits(b + 5, 2, &d) && digits(b + 12, 4, &y) && clock_of(b + 17, &h, &mi, &s))
            return make_time(y, month(b + 8), d, h, mi, s);
        return -1;
    }
    if (comma && comma[1] == ' ') {                     /* Sunday, 06-Nov-94 08:49:37 GMT */
        const char *p = comma + 2;
        if (strlen(p) != 22 || p[2] != '-' || p[6] != '-' || p[9] != ' ' || strcmp(p + 18, " GMT"))
            return -1;
        if (!digits(p, 2, &d) || !digits(p + 7, 2, &y) || !clock_of(p + 10, &h, &mi, &s))
            return -1;
        y += y < 70 ? 2000 : 1900;      /* RFC 9110 5.6.7: 50 years rule, near enough */
        return make_time(y, month(p + 3), d, h, mi, s);
    }
    if (n == 24 && b[3] == ' ' && b[7] == ' ' && b[10] == ' ' && b[19] == ' ') {
        /* Sun Nov  6 08:49:37 1994 */
        char dd[2] = { b[8] == ' ' ? '0' : b[8], b[9] };
        if (digits(dd, 2, &d) && digits(b + 20, 4, &y) && clock_of(b + 11, &h, &mi, &s))
            return make_time(y, month(b + 4), d, h, mi, s);
    }
    return -1;
}

void cache_fmt_date(int64_t t, char out[32])
{
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(out, 32, "%a, %d %b %Y %H:%M:%S GMT", &tm);
}

/* An entity-tag's opaque part (W/ dropped), for weak comparison. */
static bool opaque(const char *t, size_t n, const char **o, size_t *on)
{
    if (n >= 2 && t[0] == 'W' && t[1] == '/') {
        t += 2;
        n -= 2;
    }
    if (n < 2 || t[0] != '"' || t[n - 1] != '"')
        return false;
    *o = t;
    *on = n;
    return true;
}

bool cache_etag_match(const char *list, size_t list_len, const char *etag, size_t etag_len)
{
    const char *eo;
    size_t eon;
    if (!opaque(etag, etag_len, &eo, &eon))
        return false;
    const char *p = list, *end = list + list_len;
    while (p < end) {
        while (p < end && (*p == ' ' || *p == '\t' || *p == ','))
            p++;
        if (p < end && *p == '*')
            return true;
        const char *s = p;
        if (p + 1 < end && p[0] == 'W' && p[1] == '/')
            p += 2;
        if (p < end && *p == '"') {
            p++;
            while (p < end && *p != '"')
                p++;
            if (p < end)
                p++;
        } else {
            while (p < end && *p != ',')
                p++;
        }
        const char *o;
        size_t on;
        if (opaque(s, (size_t)(p - s), &o, &on) && on == eon && !memcmp(o, eo, on))
            return true;
    }
    return false;
}
