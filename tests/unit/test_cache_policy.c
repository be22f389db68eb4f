/* tests/unit/test_cache_policy.c: RFC 9111's stateless rules (cache/policy.c):
 * Cache-Control directives, HTTP dates in their three formats, and the
 * weak entity-tag comparison of If-None-Match.
 *
 * Every test states the exact value the parser must give, including for
 * malformed input, because the stage turns these values into freshness
 * decisions: a malformed max-age must make a response stale (RFC 9111
 * 4.2.1), never fresh for a long time.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cache/cache.h"

#define SAT 2147483648LL        /* 2^31: where delta-seconds saturate (RFC 9111 1.2.2) */

static struct cache_cc cc_of(const char *v)
{
    struct cache_cc cc;
    cache_cc_init(&cc);
    cache_cc_parse(&cc, v, strlen(v));
    return cc;
}

static int64_t date_of(const char *v) { return cache_http_date(v, strlen(v)); }

static bool inm(const char *list, const char *etag)
{
    return cache_etag_match(list, strlen(list), etag, strlen(etag));
}

/* ---------------------------------------------------------------- Cache-Control */

static void cc_absent(void **state)
{
    (void)state;
    struct cache_cc cc = cc_of("");
    assert_int_equal(cc.flags, 0);
    assert_int_equal(cc.max_age, -1);
    assert_int_equal(cc.s_maxage, -1);
    assert_int_equal(cc.max_stale, -1);
    assert_int_equal(cc.min_fresh, -1);
    assert_int_equal(cc.swr, -1);
    assert_int_equal(cc.sie, -1);
    cc = cc_of(" , ,\t,");
    assert_int_equal(cc.flags, 0);
    assert_int_equal(cc.max_age, -1);
}

static void cc_every_flag(void **state)
{
    (void)state;
    static const struct { const char *name; uint32_t flag; } f[] = {
        { "no-store", CC_NO_STORE }, { "no-cache", CC_NO_CACHE }, { "private", CC_PRIVATE },
        { "public", CC_PUBLIC }, { "must-revalidate", CC_MUST_REVALIDATE },
        { "proxy-revalidate", CC_PROXY_REVALIDATE }, { "only-if-cached", CC_ONLY_IF_CACHED },
        { "immutable", CC_IMMUTABLE }, { "no-transform", CC_NO_TRANSFORM },
        { "max-stale", CC_MAX_STALE_ANY }, { "must-understand", CC_MUST_UNDERSTAND },
    };
    uint32_t all = 0;
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        struct cache_cc cc = cc_of(f[i].name);
        assert_int_equal(cc.flags, f[i].flag);
        all |= f[i].flag;
    }
    struct cache_cc cc = cc_of("no-store, no-cache,private ,public,\tmust-revalidate,"
                               "proxy-revalidate, only-if-cached, immutable, no-transform, max-stale, "
                               "must-understand");
    assert_int_equal(cc.flags, all);
    assert_int_equal(cc.max_stale, -1);
    /* names are case-insensitive */
    cc = cc_of("No-Store, PRIVATE, Max-Age=5");
    assert_int_equal(cc.flags, CC_NO_STORE | CC_PRIVATE);
    assert_int_equal(cc.max_age, 5);
    /* a prefix or an extension of a name is another directive */
    cc = cc_of("no-stor, no-stores, publicity, cache, no");
    assert_int_equal(cc.flags, 0);
}

static void cc_every_argument(void **state)
{
    (void)state;
    struct cache_cc cc = cc_of("max-age=60, s-maxage=30, max-stale=5, min-fresh=7, "
                               "stale-while-revalidate=11, stale-if-error=13");
    assert_int_equal(cc.flags, 0);
    assert_int_equal(cc.max_age, 60);
    assert_int_equal(cc.s_maxage, 30);
    assert_int_equal(cc.max_stale, 5);
    assert_int_equal(cc.min_fresh, 7);
    assert_int_equal(cc.swr, 11);
    assert_int_equal(cc.sie, 13);
    /* zero is a value, not "absent" */
    cc = cc_of("max-age=0,s-maxage=0,max-stale=0,min-fresh=0,stale-while-revalidate=0,"
               "stale-if-error=0");
    assert_int_equal(cc.max_age, 0);
    assert_int_equal(cc.s_maxage, 0);
    assert_int_equal(cc.max_stale, 0);
    assert_int_equal(cc.min_fresh, 0);
    assert_int_equal(cc.swr, 0);
    assert_int_equal(cc.sie, 0);
    assert_int_equal(cc.flags, 0);
    /* leading zeroes */
    assert_int_equal(cc_of("max-age=007").max_age, 7);
    /* whitespace around '=' is tolerated */
    assert_int_equal(cc_of("max-age = 9").max_age, 9);
    assert_int_equal(cc_of("max-age\t=\t9").max_age, 9);
}

static void cc_quoted_arguments(void **state)
{
    (void)state;
    struct cache_cc cc = cc_of("max-age=\"60\", s-maxage=\"5\", stale-if-error=\"3\"");
    assert_int_equal(cc.max_age, 60);
    assert_int_equal(cc.s_maxage, 5);
    assert_int_equal(cc.sie, 3);
    /* a quoted argument's commas and directive names are not directives */
    cc = cc_of("no-cache=\"Set-Cookie, no-store, max-age=1\", max-age=50");
    assert_int_equal(cc.flags, CC_NO_CACHE);
    assert_int_equal(cc.max_age, 50);
    cc = cc_of("private=\"a,b\",public");
    assert_int_equal(cc.flags, CC_PRIVATE | CC_PUBLIC);
    /* a quoted-pair inside: the escaped quote does not end the string */
    cc = cc_of("ext=\"a\\\", no-store\", max-age=4");
    assert_int_equal(cc.flags, 0);
    assert_int_equal(cc.max_age, 4);
    /* a quoted number that is not a number is malformed: stale */
    assert_int_equal(cc_of("max-age=\"6 0\"").max_age, 0);
    assert_int_equal(cc_of("max-age=\"\"").max_age, 0);
    assert_int_equal(cc_of("max-age=\"\\60\"").max_age, 0);
    /* unterminated: the rest of the field is its argument, malformed */
    cc = cc_of("max-age=\"60, no-store");
    assert_int_equal(cc.max_age, 0);
    assert_int_equal(cc.flags, 0);
    cc = cc_of("ext=\"abc\\");
    assert_int_equal(cc.flags, 0);
    assert_int_equal(cc.max_age, -1);
}

static void cc_duplicates(void **state)
{
    (void)state;
    /* two max-age: the lowest (the response is as stale as its most cautious claim) */
    assert_int_equal(cc_of("max-age=60, max-age=30").max_age, 30);
    assert_int_equal(cc_of("max-age=30, max-age=60").max_age, 30);
    assert_int_equal(cc_of("s-maxage=100, s-maxage=10, s-maxage=1000").s_maxage, 10);
    /* across fields: values accumulate on one struct */
    struct cache_cc cc;
    cache_cc_init(&cc);
    cache_cc_parse(&cc, "max-age=600", 11);
    cache_cc_parse(&cc, "max-age=20, public", 18);
    cache_cc_parse(&cc, "max-age=300", 11);
    assert_int_equal(cc.max_age, 20);
    assert_int_equal(cc.flags, CC_PUBLIC);
    /* a malformed duplicate makes it stale whatever the other says */
    assert_int_equal(cc_of("max-age=60, max-age=x").max_age, 0);
    assert_int_equal(cc_of("max-age=x, max-age=60").max_age, 0);
    /* a flag repeated is the flag */
    assert_int_equal(cc_of("no-store, no-store,NO-STORE").flags, CC_NO_STORE);
}

static void cc_malformed(void **state)
{
    (void)state;
    /* max-age and s-maxage without a valid argument: 0 (stale), RFC 9111 4.2.1 */
    static const char *const bad_age[] = {
        "max-age", "max-age=", "max-age=-1", "max-age=1.5", "max-age=1e3", "max-age=+5",
        "max-age=0x10", "max-age=10s", "max-age 60", "max-age=\"60", "max-age==60",
        "max-age=;60",
    };
    for (size_t i = 0; i < sizeof bad_age / sizeof bad_age[0]; i++) {
        struct cache_cc cc = cc_of(bad_age[i]);
        if (cc.max_age != 0)
            fail_msg("\"%s\": max_age %lld, expected 0", bad_age[i], (long long)cc.max_age);
        assert_int_equal(cc.flags, 0);
    }
    assert_int_equal(cc_of("s-maxage").s_maxage, 0);
    /* Surrogate-Control's targeted form: what follows ';' is not the number */
    assert_int_equal(cc_of("max-age=60;edge").max_age, 60);
    assert_int_equal(cc_of("max-age=\"60;edge\"").max_age, 60);
    assert_int_equal(cc_of("s-maxage=7;a;b").s_maxage, 7);
    assert_int_equal(cc_of("max-age=6x;edge").max_age, 0);
    assert_int_equal(cc_of("s-maxage=abc").s_maxage, 0);
    /* the other arguments: a malformed one is ignored */
    struct cache_cc cc = cc_of("min-fresh=x, stale-while-revalidate=-3, stale-if-error, "
                               "max-stale=1.5");
    assert_int_equal(cc.min_fresh, -1);
    assert_int_equal(cc.swr, -1);
    assert_int_equal(cc.sie, -1);
    assert_int_equal(cc.max_stale, -1);
    assert_int_equal(cc.flags, 0);          /* max-stale=<junk> is not "any staleness" */
    /* ... and does not undo an earlier valid one */
    cc = cc_of("min-fresh=5, min-fresh=x");
    assert_int_equal(cc.min_fresh, 5);
    /* max-stale with an argument is bounded, without one it is "any" */
    cc = cc_of("max-stale=10");
    assert_int_equal(cc.max_stale, 10);
    assert_int_equal(cc.flags, 0);
    cc = cc_of("max-stale");
    assert_int_equal(cc.max_stale, -1);
    assert_int_equal(cc.flags, CC_MAX_STALE_ANY);
}

static void cc_junk(void **state)
{
    (void)state;
    /* unknown directives, with or without arguments, are ignored */
    struct cache_cc cc = cc_of("foo, bar=baz, x=\"y, z\", max-age=12, community=\"UCI\"");
    assert_int_equal(cc.flags, 0);
    assert_int_equal(cc.max_age, 12);
    /* junk after a directive is skipped up to the next comma */
    cc = cc_of("public junk junk, max-age=3 more, no-store");
    assert_int_equal(cc.flags, CC_PUBLIC | CC_NO_STORE);
    assert_int_equal(cc.max_age, 3);
    /* stray separators and quotes */
    cc = cc_of(",,, ,no-store,,\"\",=,==5,\"max-age=1\", private");
    assert_int_equal(cc.flags, CC_NO_STORE | CC_PRIVATE);
    assert_int_equal(cc.max_age, -1);
    /* the length bounds the parse, not a NUL */
    const char v[] = "no-store, private";
    struct cache_cc c2;
    cache_cc_init(&c2);
    cache_cc_parse(&c2, v, 8);
    assert_int_equal(c2.flags, CC_NO_STORE);
    const char nul[] = "max-age=5\0, no-store";
    cache_cc_init(&c2);
    cache_cc_parse(&c2, nul, sizeof nul - 1);
    assert_int_equal(c2.max_age, 0);        /* "5\0" is not a number */
    assert_int_equal(c2.flags, CC_NO_STORE);
    /* a directive cut at the end of the buffer */
    cache_cc_init(&c2);
    cache_cc_parse(&c2, "max-age=77", 9);
    assert_int_equal(c2.max_age, 7);
    cache_cc_init(&c2);
    cache_cc_parse(&c2, "no-store", 0);
    assert_int_equal(c2.flags, 0);
}

static void cc_huge_numbers(void **state)
{
    (void)state;
    assert_int_equal(cc_of("max-age=2147483647").max_age, SAT - 1);
    assert_int_equal(cc_of("max-age=2147483648").max_age, SAT);
    assert_int_equal(cc_of("max-age=2147483649").max_age, SAT);
    assert_int_equal(cc_of("max-age=99999999999999999999999999999999999999999999").max_age, SAT);
    assert_int_equal(cc_of("max-age=\"99999999999999999999999999999999\"").max_age, SAT);
    struct cache_cc cc = cc_of("s-maxage=18446744073709551616, max-stale=9223372036854775808, "
                               "min-fresh=4294967296, stale-while-revalidate=4294967295, "
                               "stale-if-error=10000000000");
    assert_int_equal(cc.s_maxage, SAT);
    assert_int_equal(cc.max_stale, SAT);
    assert_int_equal(cc.min_fresh, SAT);
    assert_int_equal(cc.swr, SAT);
    assert_int_equal(cc.sie, SAT);
    /* a long run of zeroes is still zero, and a huge one with junk is malformed */
    char z[300];
    memcpy(z, "max-age=", 8);
    memset(z + 8, '0', 250);
    z[258] = '\0';
    assert_int_equal(cc_of(z).max_age, 0);
    z[257] = '7';
    assert_int_equal(cc_of(z).max_age, 7);
    assert_int_equal(cc_of("max-age=99999999999999999999x").max_age, 0);
    /* saturated and a smaller duplicate: the smaller */
    assert_int_equal(cc_of("max-age=99999999999999, max-age=5").max_age, 5);
}

/* ---------------------------------------------------------------- HTTP dates */

#define RFC_EXAMPLE 784111777   /* Sun, 06 Nov 1994 08:49:37 GMT */

static void date_three_formats(void **state)
{
    (void)state;
    assert_int_equal(date_of("Sun, 06 Nov 1994 08:49:37 GMT"), RFC_EXAMPLE);
    assert_int_equal(date_of("Sunday, 06-Nov-94 08:49:37 GMT"), RFC_EXAMPLE);
    assert_int_equal(date_of("Sun Nov  6 08:49:37 1994"), RFC_EXAMPLE);
    assert_int_equal(date_of("Sun Nov 06 08:49:37 1994"), RFC_EXAMPLE);
    assert_int_equal(date_of("Thu, 01 Jan 1970 00:00:00 GMT"), 0);
    assert_int_equal(date_of("Fri, 31 Dec 1999 23:59:59 GMT"), 946684799);
    assert_int_equal(date_of("Sat, 01 Jan 2000 00:00:00 GMT"), 946684800);
    assert_int_equal(date_of("Tue, 19 Jan 2038 03:14:08 GMT"), 2147483648LL);   /* past 2^31 */
    assert_int_equal(date_of("Fri, 31 Dec 9999 23:59:59 GMT"), 253402300799LL);
    assert_int_equal(date_of("Thu, 29 Feb 2024 12:00:00 GMT"), 1709208000);
    /* every month */
    static const char *const months[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                          "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
    static const int64_t firsts[] = { 1704067200, 1706745600, 1709251200, 1711929600,
                                      1714521600, 1717200000, 1719792000, 1722470400,
                                      1725148800, 1727740800, 1730419200, 1733011200 };
    for (int i = 0; i < 12; i++) {
        char b[64];
        snprintf(b, sizeof b, "Mon, 01 %s 2024 00:00:00 GMT", months[i]);
        assert_int_equal(date_of(b), firsts[i]);
        snprintf(b, sizeof b, "Monday, 01-%s-24 00:00:00 GMT", months[i]);
        assert_int_equal(date_of(b), firsts[i]);
        snprintf(b, sizeof b, "Mon %s  1 00:00:00 2024", months[i]);
        assert_int_equal(date_of(b), firsts[i]);
    }
    /* RFC 850's two-digit years: 00-69 are 20xx, 70-99 are 19xx */
    assert_int_equal(date_of("Saturday, 01-Jan-00 00:00:00 GMT"), 946684800);
    assert_int_equal(date_of("Thursday, 01-Jan-70 00:00:00 GMT"), 0);
    assert_int_equal(date_of("Wednesday, 01-Jan-25 00:00:00 GMT"), 1735689600);
    /* cache_fmt_date writes IMF-fixdate, which reads back */
    char out[32];
    cache_fmt_date(RFC_EXAMPLE, out);
    assert_string_equal(out, "Sun, 06 Nov 1994 08:49:37 GMT");
    cache_fmt_date(0, out);
    assert_string_equal(out, "Thu, 01 Jan 1970 00:00:00 GMT");
    for (int64_t t = 0; t < 4102444800LL; t += 86400 * 37 + 3671) {
        cache_fmt_date(t, out);
        assert_int_equal(strlen(out), 29);
        assert_int_equal(date_of(out), t);
    }
}

static void date_invalid(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "0",
        "-1",
        "yesterday",
        "Sun, 06 Nov 1994 08:49:37",            /* no zone */
        "Sun, 06 Nov 1994 08:49:37 UTC",        /* not GMT */
        "Sun, 06 Nov 1994 08:49:37 gmt",
        "Sun, 06 Nov 1994 08:49:37 GMT ",       /* trailing space */
        " Sun, 06 Nov 1994 08:49:37 GMT",       /* leading space */
        "Sun,  06 Nov 1994 08:49:37 GMT",
        "Sun, 6 Nov 1994 08:49:37 GMT",         /* one-digit day */
        "Sun, 06 nov 1994 08:49:37 GMT",        /* month names are case-sensitive */
        "Sun, 06 Nox 1994 08:49:37 GMT",
        "Sun, 06 Nov 94 08:49:37 GMT",
        "Sun, 06 Nov 1994 8:49:37 GMT",
        "Sun, 06 Nov 1994 08:49:3  GMT",
        "Sun, 06 Nov 1994 08-49-37 GMT",
        "Sun, 00 Nov 1994 08:49:37 GMT",        /* day 0 */
        "Sun, 32 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 1994 08:60:00 GMT",
        "Sun, 06 Nov 1994 08:49:61 GMT",
        "Sun, 06 Nov 1899 08:49:37 GMT",
        "Wed, 31 Dec 1969 23:59:59 GMT",        /* before the epoch: -1 is "invalid" */
        "Sun, 06 Nov +994 08:49:37 GMT",
        "Sun, 06 Nov 1994 08:49:37 GMTX",
        "Sunday, 06-Nov-1994 08:49:37 GMT",     /* RFC 850 with four digits */
        "Sunday, 06-Nov-94 08:49:37 UTC",
        "Sunday, 06-Nov-94 08:49:37",
        "Sunday,06-Nov-94 08:49:37 GMT",
        "Sunday, 6-Nov-94 08:49:37 GMT ",
        "Sunday, 06 Nov 94 08:49:37 GMT",
        "Sunday, 06-Nov-9x 08:49:37 GMT",
        "Sun Nov  6 08:49:37 94",               /* asctime, short year */
        "Sun Nov 6 08:49:37 1994",
        "Sun Nov  6 08:49:37 1994 ",
        "Sun Nov  6 08:49:37 1994 GMT",
        "Sun Nov   6 08:49:37 1994",
        "Sun Nov 6  08:49:37 1994",
        "Sun Nov  x 08:49:37 1994",
        "Sun Nov  6 08:49:37 19 4",
        "Sun, 06 Nov 1994 08:49:37 GMT Sun, 06 Nov 1994 08:49:37 GMT",  /* too long */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int64_t t = date_of(bad[i]);
        if (t != -1)
            fail_msg("\"%s\": %lld, expected -1", bad[i], (long long)t);
    }
    /* NULL, and a length shorter than the string */
    assert_int_equal(cache_http_date(NULL, 29), -1);
    assert_int_equal(cache_http_date("Sun, 06 Nov 1994 08:49:37 GMT", 28), -1);
    /* a NUL inside */
    assert_int_equal(cache_http_date("Sun, 06 Nov 1994 08:49:3\0 GMT", 29), -1);
    assert_int_equal(cache_http_date("Sunday, 06-Nov-94\0 08:49:37 GMT", 31), -1);
    /* the length, not a NUL, ends it: a longer buffer read as 29 bytes */
    assert_int_equal(cache_http_date("Sun, 06 Nov 1994 08:49:37 GMTxyz", 29), RFC_EXAMPLE);
}

/* ---------------------------------------------------------------- entity tags */

static void etag_weak_comparison(void **state)
{
    (void)state;
    assert_true(inm("\"abc\"", "\"abc\""));
    assert_false(inm("\"abc\"", "\"abd\""));
    assert_false(inm("\"abc\"", "\"ab\""));
    assert_false(inm("\"ab\"", "\"abc\""));
    /* W/ on either side or both: weak comparison ignores it */
    assert_true(inm("W/\"abc\"", "\"abc\""));
    assert_true(inm("\"abc\"", "W/\"abc\""));
    assert_true(inm("W/\"abc\"", "W/\"abc\""));
    assert_false(inm("W/\"abc\"", "W/\"abcd\""));
    /* the opaque part is compared exactly: case and spaces count */
    assert_false(inm("\"ABC\"", "\"abc\""));
    assert_false(inm("\" abc\"", "\"abc\""));
    /* an empty opaque tag is a tag */
    assert_true(inm("\"\"", "\"\""));
    assert_true(inm("W/\"\"", "\"\""));
    assert_false(inm("\"\"", "\"x\""));
    /* the weak prefix is case-sensitive: w/"x" is not W/"x" */
    assert_false(inm("w/\"abc\"", "\"abc\""));
    assert_false(inm("\"abc\"", "w/\"abc\""));
}

static void etag_star_and_lists(void **state)
{
    (void)state;
    assert_true(inm("*", "\"abc\""));
    assert_true(inm("  *  ", "W/\"abc\""));
    assert_true(inm("\"x\", \"y\", \"abc\"", "\"abc\""));
    assert_true(inm("\"x\",W/\"abc\",\"y\"", "\"abc\""));
    assert_true(inm(",,\t\"abc\" ,,", "\"abc\""));
    assert_false(inm("\"x\", \"y\", \"z\"", "\"abc\""));
    /* a comma inside a tag is part of it */
    assert_true(inm("\"a,b\"", "\"a,b\""));
    assert_false(inm("\"a,b\"", "\"a\""));
    assert_false(inm("\"a,b\"", "\"b\""));
    assert_true(inm("\"q\", \"a,b\"", "\"a,b\""));
    /* the list is bounded by its length */
    assert_false(cache_etag_match("\"x\", \"abc\"", 5, "\"abc\"", 5));
    assert_true(cache_etag_match("\"x\", \"abc\"", 10, "\"abc\"", 5));
    assert_false(cache_etag_match("*", 0, "\"abc\"", 5));
    assert_false(inm("", "\"abc\""));
}

static void etag_malformed(void **state)
{
    (void)state;
    /* malformed members never match, and do not hide later good ones */
    assert_false(inm("abc", "\"abc\""));
    assert_false(inm("\"abc", "\"abc\""));
    assert_false(inm("abc\"", "\"abc\""));
    assert_true(inm("abc, \"abc\"", "\"abc\""));
    assert_true(inm("\"abd\"junk, \"abc\"", "\"abc\""));
    assert_true(inm("W/, \"abc\"", "\"abc\""));
    assert_false(inm("W/", "\"abc\""));
    assert_false(inm("W", "\"abc\""));
    assert_false(inm("\"", "\"abc\""));
    assert_false(inm("W/\"", "\"abc\""));
    assert_false(inm("W/W/\"abc\"", "\"abc\""));
    /* an unterminated last member swallows nothing before it */
    assert_true(inm("\"abc\", \"de", "\"abc\""));
    assert_false(inm("\"de, \"abc\"", "\"abc\""));  /* the quote runs to the next quote */
    /* a malformed stored tag matches nothing, not even * */
    assert_false(inm("\"abc\"", "abc"));
    assert_false(inm("abc", "abc"));
    assert_false(inm("*", "abc"));
    assert_false(inm("*", ""));
    assert_false(inm("*", "\""));
    assert_false(inm("*", "W/"));
    assert_false(inm("\"abc\"", "W/abc"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(cc_absent),
        cmocka_unit_test(cc_every_flag),
        cmocka_unit_test(cc_every_argument),
        cmocka_unit_test(cc_quoted_arguments),
        cmocka_unit_test(cc_duplicates),
        cmocka_unit_test(cc_malformed),
        cmocka_unit_test(cc_junk),
        cmocka_unit_test(cc_huge_numbers),
        cmocka_unit_test(date_three_formats),
        cmocka_unit_test(date_invalid),
        cmocka_unit_test(etag_weak_comparison),
        cmocka_unit_test(etag_star_and_lists),
        cmocka_unit_test(etag_malformed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
