/* tests/fuzz/fuzz_cachecc.c: the cache's parsers of response and request
 * fields (src/cache/policy.c): Cache-Control directives, HTTP dates and
 * If-None-Match lists, on arbitrary bytes.
 *
 * Every input is given whole to each parser (each reads exactly its length:
 * libFuzzer's buffer is allocated to the size, so ASan sees any read past
 * it), and for the entity-tag comparison it is cut at its first newline into
 * a list and a stored tag. Invariants:
 *   - Cache-Control: each argument is -1 (absent) or 0..2^31 (delta-seconds
 *     saturate, RFC 9111 1.2.2); only known flags; parsing the same field
 *     twice into one struct changes nothing (duplicates keep the lowest
 *     max-age, the other arguments the last, flags accumulate).
 *   - HTTP date: -1, or a time from 1970 to 9999 that cache_fmt_date writes
 *     as a 29-byte IMF-fixdate which reads back to the same time.
 *   - If-None-Match: a weak comparison, so W/ on the stored tag changes
 *     nothing; "*" matches every well-formed tag; a well-formed tag matches
 *     a list made of itself, alone or after the list.
 */
#include "fuzz_common.h"

#include "cache/cache.h"

static bool same_cc(const struct cache_cc *a, const struct cache_cc *b)
{
    return a->flags == b->flags && a->max_age == b->max_age && a->s_maxage == b->s_maxage &&
           a->max_stale == b->max_stale && a->min_fresh == b->min_fresh && a->swr == b->swr &&
           a->sie == b->sie;
}

static void check_arg(int64_t v) { CHECK(v == -1 || (v >= 0 && v <= 2147483648LL)); }

static void fuzz_cc(const char *s, size_t n)
{
    struct cache_cc cc, twice;
    cache_cc_init(&cc);
    cache_cc_parse(&cc, s, n);
    const uint32_t known = CC_NO_STORE | CC_NO_CACHE | CC_PRIVATE | CC_PUBLIC |
                           CC_MUST_REVALIDATE | CC_PROXY_REVALIDATE | CC_ONLY_IF_CACHED |
                           CC_IMMUTABLE | CC_NO_TRANSFORM | CC_MAX_STALE_ANY |
                           CC_MUST_UNDERSTAND;
    CHECK((cc.flags & ~known) == 0);
    check_arg(cc.max_age);
    check_arg(cc.s_maxage);
    check_arg(cc.max_stale);
    check_arg(cc.min_fresh);
    check_arg(cc.swr);
    check_arg(cc.sie);
    twice = cc;
    cache_cc_parse(&twice, s, n);
    CHECK(same_cc(&cc, &twice));
}

static void fuzz_date(const char *s, size_t n)
{
    int64_t t = cache_http_date(s, n);
    /* up to Fri, 31 Dec 9999 23:59:60 GMT: a leap second is read as the
     * next second, here the first of year 10000, which IMF-fixdate cannot
     * write (cache_fmt_date only ever writes the current time) */
    CHECK(t >= -1 && t <= 253402300800LL);
    if (t < 0 || t == 253402300800LL)
        return;
    char out[32];
    cache_fmt_date(t, out);
    CHECK(strlen(out) == 29);
    CHECK(cache_http_date(out, 29) == t);
}

/* A tag as cache_etag_match reads a stored one: "..." or W/"...". */
static bool well_formed(const char *t, size_t n)
{
    if (n >= 2 && t[0] == 'W' && t[1] == '/')
        t += 2, n -= 2;
    return n >= 2 && t[0] == '"' && t[n - 1] == '"';
}

static void fuzz_etag(const char *s, size_t n)
{
    const char *nl = memchr(s, '\n', n);
    size_t ln = nl ? (size_t)(nl - s) : n;
    const char *tag = nl ? nl + 1 : s;
    size_t tn = nl ? n - ln - 1 : n;
    bool m = cache_etag_match(s, ln, tag, tn);
    /* W/ on the stored tag: the same answer (once: W/W/"x" is malformed) */
    if (tn >= 2 && tag[0] == 'W' && tag[1] == '/' && !(tn >= 4 && tag[2] == 'W' && tag[3] == '/'))
        CHECK(cache_etag_match(s, ln, tag + 2, tn - 2) == m);
    if (!well_formed(tag, tn)) {
        CHECK(!m);
        return;
    }
    CHECK(cache_etag_match("*", 1, tag, tn));
    /* a tag whose opaque part has no quote inside matches itself, alone
     * and after a list without quotes (a list with quotes may leave one
     * open, and a malformed list need not match) */
    const char *o = tag + (tag[0] == 'W' ? 2 : 0);
    size_t on = tn - (size_t)(o - tag);
    if (memchr(o + 1, '"', on - 2))
        return;
    CHECK(cache_etag_match(tag, tn, tag, tn));
    size_t quotes = 0;
    for (size_t i = 0; i < ln; i++)
        quotes += s[i] == '"';
    if (quotes == 0 && ln + tn + 2 <= 4096) {
        char buf[4096];
        memcpy(buf, s, ln);
        buf[ln] = ',';
        memcpy(buf + ln + 1, tag, tn);
        CHECK(cache_etag_match(buf, ln + 1 + tn, tag, tn));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    fuzz_cc(s, size);
    fuzz_date(s, size);
    fuzz_etag(s, size);
    return 0;
}
