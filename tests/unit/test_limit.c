/* tests/unit/test_limit.c: GCRA timing on a controllable clock, the key
 * table's bounds and eviction, and decisions per second per core. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#include <cmocka.h>

#include "conf/conf.h"
#include "limit/limit.h"
#include "obs/obs.h"

#include <stdlib.h>
#include <string.h>

#define MS 1000000ll

/* rate 10/s (T = 100 ms), burst 3: 4 at once, then one every 100 ms */
static void gcra_boundaries(void **state)
{
    (void)state;
    struct limit_gcra g;
    limit_gcra_init(&g, 10, 1000, 3);
    assert_int_equal(g.interval_ns, 100 * MS);
    assert_int_equal(g.tolerance_ns, 300 * MS);
    int64_t tat = 0, t0 = 1000 * MS;
    struct limit_result r;
    for (int i = 0; i < 4; i++) {
        limit_gcra(&g, &tat, t0, &r);
        assert_true(r.admitted);
        assert_int_equal(r.remaining, 3 - i);
    }
    limit_gcra(&g, &tat, t0, &r);
    assert_false(r.admitted);
    assert_int_equal(r.retry_after_ms, 100);
    /* one nanosecond early: still refused; exactly on time: admitted */
    limit_gcra(&g, &tat, t0 + 100 * MS - 1, &r);
    assert_false(r.admitted);
    assert_int_equal(r.retry_after_ms, 1);
    limit_gcra(&g, &tat, t0 + 100 * MS, &r);
    assert_true(r.admitted);
    assert_int_equal(r.remaining, 0);
    /* a steady 10/s is always admitted, 11/s is not */
    int64_t t = t0 + 100 * MS;
    int refused = 0;
    for (int i = 0; i < 100; i++) {
        t += 100 * MS;
        limit_gcra(&g, &tat, t, &r);
        refused += !r.admitted;
    }
    assert_int_equal(refused, 0);
    int admitted = 0;
    for (int i = 0; i < 110; i++) {
        t += 1000 * MS / 11;
        limit_gcra(&g, &tat, t, &r);
        admitted += r.admitted;
    }
    print_message("11/s for 10 s at 10/s burst 3: %d admitted\n", admitted);
    assert_true(admitted >= 98 && admitted <= 104);    /* 10 s of 10/s and what is left of the burst, not 110 */
    /* idle long enough: the whole burst again */
    t += 10 * 1000 * MS;
    for (int i = 0; i < 4; i++) {
        limit_gcra(&g, &tat, t, &r);
        assert_true(r.admitted);
    }
    limit_gcra(&g, &tat, t, &r);
    assert_false(r.admitted);
}

/* 20/min, burst 5 (the runbook's /auth/ limit): 6 at once, then one per 3 s */
static void gcra_per_minute(void **state)
{
    (void)state;
    struct limit_gcra g;
    limit_gcra_init(&g, 20, 60000, 5);
    int64_t tat = 0, t = 5000 * MS;
    struct limit_result r;
    int ok = 0;
    for (int i = 0; i < 100; i++) {
        limit_gcra(&g, &tat, t + i * 10 * MS, &r);     /* 100 attempts in 1 s */
        ok += r.admitted;
    }
    assert_int_equal(ok, 6);
    assert_true(r.retry_after_ms > 1900 && r.retry_after_ms <= 3000);
}

static void table_bounds_and_eviction(void **state)
{
    (void)state;
    assert_int_equal(limit_table_init(640), 0);        /* 64 shards of 11 */
    struct limit_gcra g;
    limit_gcra_init(&g, 1, 60000, 0);                   /* 1/min: a key is refused at once again */
    struct limit_result r;
    int64_t now = 1000 * MS;
    uint64_t keys, ev, aev;
    for (uint64_t k = 1; k <= 100000; k++)
        assert_int_equal(limit_local.take(limit_local.self, limit_hash(7, &k, sizeof k), &g, now, &r), 0);
    limit_table_stats(&keys, &ev, &aev);
    assert_true(keys <= 64 * 11);                        /* bounded by max_keys */
    assert_int_equal(ev, 100000 - keys);
    assert_int_equal(aev, ev);                          /* they were all still limited */
    /* the most recent key is still there and still limited */
    uint64_t k = 100000;
    limit_local.take(limit_local.self, limit_hash(7, &k, sizeof k), &g, now, &r);
    assert_false(r.admitted);
    limit_table_free();
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Not an assertion (speed is for benchmarks): decisions per second on one
 * core over a million distinct keys, printed for docs/benchmarks.md. */
static void decisions_per_second(void **state)
{
    (void)state;
    assert_int_equal(limit_table_init(1000000), 0);
    struct limit_gcra g;
    limit_gcra_init(&g, 100, 60000, 30);
    struct limit_result r;
    const uint64_t n = 4000000;
    double t0 = now_s();
    int64_t now = 1000 * MS;
    uint64_t admitted = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t k = (i * 0x9e3779b97f4a7c15ull) % 1000000;
        limit_local.take(limit_local.self, limit_hash(1, &k, sizeof k), &g, now + (int64_t)i, &r);
        admitted += r.admitted;
    }
    double dt = now_s() - t0;
    print_message("limit: %.1f million decisions/s on one core over 1,000,000 keys (%llu admitted)\n",
                  n / dt / 1e6, (unsigned long long)admitted);
    assert_true(admitted > 0);
    limit_table_free();
}

/* Space-Saving keeps every heavy hitter in bounded memory. */
static void top_offenders(void **state)
{
    (void)state;
    char key[64];
    for (int round = 0; round < 200; round++) {
        for (int h = 0; h < 5; h++) {             /* five heavy hitters, 20 refusals a round */
            int n = snprintf(key, sizeof key, "198.51.100.%d", h + 1);
            for (int k = 0; k < 20; k++)
                limit_top_note(key, (size_t)n, "auth");
        }
        for (int k = 0; k < 50; k++) {            /* and a crowd refused once each */
            int n = snprintf(key, sizeof key, "10.%d.%d.1", round, k);
            limit_top_note(key, (size_t)n, "auth");
        }
    }
    char buf[8192];
    struct obs_text t = { .buf = NULL };
    limit_top_json(&t, 5);
    assert_non_null(t.buf);
    snprintf(buf, sizeof buf, "%s", t.buf);
    free(t.buf);
    for (int h = 1; h <= 5; h++) {
        int n = snprintf(key, sizeof key, "\"client\":\"198.51.100.%d\"", h);
        (void)n;
        assert_non_null(strstr(buf, key));
    }
    assert_null(strstr(buf, "\"client\":\"10."));
    assert_non_null(strstr(buf, "\"capacity\":64"));
}

/* A pass: its signature, its expiry, its binding. */
static void challenge_pass(void **state)
{
    (void)state;
    struct conf_challenge cc = { .key_len = 32, .difficulty = 16, .ttl_ms = 3600000 };
    memset(cc.key, 7, 32);
    char pass[128];
    size_t n = limit_pass_make(&cc, "198.51.100.7", 2000000000, pass, sizeof pass);
    assert_true(n > 64);
    assert_true(limit_pass_check(&cc, "198.51.100.7", pass, n, 1999999999));
    assert_true(limit_pass_check(&cc, "198.51.100.7", pass, n, 2000000000));   /* the last second */
    assert_false(limit_pass_check(&cc, "198.51.100.7", pass, n, 2000000001));  /* expired */
    assert_false(limit_pass_check(&cc, "198.51.100.8", pass, n, 1999999999));  /* another address */
    assert_false(limit_pass_check(&cc, "198.51.100", pass, n, 1999999999));    /* its network */
    char forged[128];
    memcpy(forged, pass, n);
    forged[n - 1] ^= 1;                                                          /* signature */
    assert_false(limit_pass_check(&cc, "198.51.100.7", forged, n, 1999999999));
    memcpy(forged, pass, n);
    forged[0] = '3';                                                             /* expiry moved */
    assert_false(limit_pass_check(&cc, "198.51.100.7", forged, n, 1999999999));
    struct conf_challenge other = cc;
    memset(other.key, 8, 32);                                                    /* another key */
    assert_false(limit_pass_check(&other, "198.51.100.7", pass, n, 1999999999));
    assert_false(limit_pass_check(&cc, "198.51.100.7", pass, n - 1, 0));       /* truncated */
    assert_false(limit_pass_check(&cc, "198.51.100.7", "", 0, 0));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(gcra_boundaries),
        cmocka_unit_test(gcra_per_minute),
        cmocka_unit_test(table_bounds_and_eviction),
        cmocka_unit_test(decisions_per_second),
        cmocka_unit_test(top_offenders),
        cmocka_unit_test(challenge_pass),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
