/* tests/unit/test_limit.c: GCRA timing on a controllable clock, the key
 * table's bounds and eviction, and decisions per second per core. */
#include <pthread.h>
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

static uint64_t K(uint64_t k) { return limit_hash(7, &k, sizeof k); }

static bool take(uint64_t k, const struct limit_gcra *g, int64_t now)
{
    struct limit_result r;
    assert_int_equal(limit_local.take(limit_local.self, K(k), g, now, &r), 0);
    return r.admitted;
}

static void stats(uint64_t *keys, uint64_t *ev, uint64_t *aev)
{
    limit_table_stats(keys, ev, aev);
}

static void table_bounds_and_eviction(void **state)
{
    (void)state;
    assert_int_equal(limit_table_init(640), 0);
    struct limit_gcra g;
    limit_gcra_init(&g, 1, 60000, 0);                   /* 1/min: a key is refused at once again */
    int64_t now = 1000 * MS;
    uint64_t keys, ev, aev;
    for (uint64_t k = 1; k <= 100000; k++)
        take(k, &g, now);
    stats(&keys, &ev, &aev);
    assert_int_equal(keys, 640);                        /* bounded by max_keys, exactly */
    assert_int_equal(ev, 100000 - keys);
    assert_int_equal(aev, ev);                          /* they were all still limited */
    /* the most recent key is still there and still limited */
    assert_false(take(100000, &g, now));
    limit_table_free();
}

/* max_keys keys all stay; one more evicts exactly one, the one closest to
 * idle (the smallest TAT) when all are active. */
static void table_at_max_and_one_over(void **state)
{
    (void)state;
    assert_int_equal(limit_table_init(64), 0);
    struct limit_gcra g;
    limit_gcra_init(&g, 1, 60000, 0);
    int64_t t0 = 1000 * MS;
    uint64_t keys, ev, aev;
    for (uint64_t k = 1; k <= 64; k++)
        assert_true(take(k, &g, t0 + (int64_t)k * MS));     /* key k's TAT: t0 + k ms + 60 s */
    stats(&keys, &ev, &aev);
    assert_int_equal(keys, 64);
    assert_int_equal(ev, 0);
    int64_t now = t0 + 100 * MS;
    assert_true(take(65, &g, now));                         /* one over */
    stats(&keys, &ev, &aev);
    assert_int_equal(keys, 64);
    assert_int_equal(ev, 1);
    assert_int_equal(aev, 1);
    for (uint64_t k = 2; k <= 65; k++)
        assert_false(take(k, &g, now));                     /* all still there, still limited */
    stats(&keys, &ev, &aev);
    assert_int_equal(ev, 1);
    assert_true(take(1, &g, now));                          /* key 1 went: it starts afresh */
    stats(&keys, &ev, &aev);
    assert_int_equal(keys, 64);
    assert_int_equal(ev, 2);                                /* and key 2 went for it */
    assert_true(take(2, &g, now));
    limit_table_free();
}

/* When full, an idle key (its TAT passed: as if absent) goes before any
 * active one, wherever it is. */
static void table_idle_keys_go_first(void **state)
{
    (void)state;
    assert_int_equal(limit_table_init(64), 0);
    struct limit_gcra slow, fast;
    limit_gcra_init(&slow, 1, 60000, 0);
    limit_gcra_init(&fast, 1000, 1000, 0);                  /* T = 1 ms */
    int64_t t0 = 1000 * MS;
    uint64_t keys, ev, aev;
    for (uint64_t k = 1; k <= 64; k++)
        take(k, k == 40 ? &fast : &slow, k == 40 ? t0 - 10 * MS : t0);  /* key 40 idle at t0 */
    for (uint64_t k = 65; k <= 66; k++)
        assert_true(take(k, &slow, t0));
    stats(&keys, &ev, &aev);
    assert_int_equal(keys, 64);
    assert_int_equal(ev, 2);
    assert_int_equal(aev, 1);                               /* key 40 first, then one active */
    /* all idle later: new keys take their places, none counted active */
    int64_t later = t0 + 120000 * MS;
    for (uint64_t k = 100; k < 164; k++)
        assert_true(take(k, &slow, later));
    stats(&keys, &ev, &aev);
    assert_int_equal(keys, 64);
    assert_int_equal(ev, 66);
    assert_int_equal(aev, 1);
    limit_table_free();
}

/* The bound is the table's, not a shard's: a table of 64 shards holds
 * exactly max_keys keys, and the next one evicts exactly one. */
static void table_max_keys_across_shards(void **state)
{
    (void)state;
    const uint64_t max = 100000;
    assert_int_equal(limit_table_init(max), 0);
    struct limit_gcra g;
    limit_gcra_init(&g, 1, 60000, 0);
    int64_t now = 1000 * MS;
    uint64_t keys, ev, aev;
    for (uint64_t k = 1; k <= max; k++)
        assert_true(take(k, &g, now));
    stats(&keys, &ev, &aev);
    assert_int_equal(keys, max);
    assert_int_equal(ev, 0);
    assert_true(take(max + 1, &g, now));
    stats(&keys, &ev, &aev);
    assert_int_equal(keys, max);
    assert_int_equal(ev, 1);
    assert_int_equal(aev, 1);
    uint64_t refused = 0;
    for (uint64_t k = 1; k <= max + 1; k++)
        refused += !take(k, &g, now);                       /* re-taking a forgotten key evicts another */
    assert_true(refused >= max - 1000);
    limit_table_free();
}

/* Keys crafted to fall into one shard fill at most 7/8 of its region and
 * evict there, whatever room the others have. */
static void table_crafted_keys_one_shard(void **state)
{
    (void)state;
    assert_int_equal(limit_table_init(100000), 0);          /* 64 regions of 3128 slots */
    struct limit_gcra g;
    limit_gcra_init(&g, 1, 60000, 0);
    struct limit_result r;
    int64_t now = 1000 * MS;
    uint64_t keys, ev, aev, last = 0;
    for (uint64_t i = 1; i <= 10000; i++) {
        last = 5ull << 58 | limit_hash(3, &i, sizeof i) >> 6;
        assert_int_equal(limit_local.take(limit_local.self, last, &g, now, &r), 0);
    }
    stats(&keys, &ev, &aev);
    assert_int_equal(keys, 3128 - 3128 / 8);
    assert_int_equal(ev, 10000 - keys);
    limit_local.take(limit_local.self, last, &g, now, &r);
    assert_false(r.admitted);
    assert_true(take(1, &g, now));                          /* another shard is not affected */
    limit_table_free();
}

/* Keys crafted to share one home slot make one long run with a wide empty
 * stretch beside it: the sweep must still find keys to evict there, or the
 * region would fill and a probe never end. */
static void table_crafted_keys_one_home(void **state)
{
    (void)state;
    assert_int_equal(limit_table_init(100000), 0);
    struct limit_gcra g;
    limit_gcra_init(&g, 1, 60000, 0);
    struct limit_result r;
    int64_t now = 1000 * MS;
    uint64_t keys, ev, aev;
    for (uint64_t i = 1; i <= 20000; i++) {
        uint64_t key = 5ull << 58 | i << 32 | 0x80000000u;     /* shard 5, mid-region home */
        assert_int_equal(limit_local.take(limit_local.self, key, &g, now, &r), 0);
        assert_true(r.admitted);
    }
    stats(&keys, &ev, &aev);
    assert_true(keys <= 3128 - 3128 / 8);
    assert_int_equal(ev, 20000 - keys);
    limit_table_free();
}

/* Exact under concurrency: two threads taking from the same keys at one
 * instant get exactly burst + 1 admits per key between them. */
struct race { const struct limit_gcra *g; int64_t now; uint64_t admitted; };

static void *race_run(void *arg)
{
    struct race *x = arg;
    struct limit_result r;
    for (uint64_t i = 0; i < 200000; i++) {
        limit_local.take(limit_local.self, K(i % 16), x->g, x->now, &r);
        x->admitted += r.admitted;
    }
    return NULL;
}

static void table_exact_across_threads(void **state)
{
    (void)state;
    assert_int_equal(limit_table_init(1000), 0);
    struct limit_gcra g;
    limit_gcra_init(&g, 1, 60000, 999);
    struct race a = { &g, 1000 * MS, 0 }, b = a;
    pthread_t ta, tb;
    assert_int_equal(pthread_create(&ta, NULL, race_run, &a), 0);
    assert_int_equal(pthread_create(&tb, NULL, race_run, &b), 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    assert_int_equal(a.admitted + b.admitted, 16 * 1000);
    limit_table_free();
}

/* The login guard's table: a check makes no key; failures block at the
 * maximum; a success resets; a block ends. */
static void guard_table(void **state)
{
    (void)state;
    assert_int_equal(limit_table_init(64), 0);
    const int64_t win = 60000 * MS, blk = 10000 * MS;
    int64_t now = 1000 * MS, until;
    bool blocked;
    uint64_t keys, ev, aev;
    assert_int_equal(limit_local.guard_check(limit_local.self, K(1), now, &until), 0);
    assert_int_equal(until, 0);
    assert_int_equal(limit_local.guard_record(limit_local.self, K(1), false, 3, win, blk, now, &blocked), 0);
    stats(&keys, &ev, &aev);
    assert_int_equal(keys, 0);                              /* neither made a key */
    for (int i = 1; i <= 3; i++) {
        limit_local.guard_record(limit_local.self, K(1), true, 3, win, blk, now + i * MS, &blocked);
        assert_int_equal(blocked, i == 3);
    }
    limit_local.guard_check(limit_local.self, K(1), now + 4 * MS, &until);
    assert_int_equal(until, now + 3 * MS + blk);
    limit_local.guard_check(limit_local.self, K(1), now + 3 * MS + blk, &until);
    assert_int_equal(until, 0);                             /* the block's last instant is over */
    /* two failures, a success, two failures: no block */
    for (int i = 0; i < 5; i++) {
        limit_local.guard_record(limit_local.self, K(2), i != 2, 3, win, blk, now, &blocked);
        assert_false(blocked);
    }
    /* failures further apart than the window do not add up */
    for (int i = 0; i < 5; i++) {
        limit_local.guard_record(limit_local.self, K(3), true, 3, win, blk, now + i * (win + MS), &blocked);
        assert_false(blocked);
    }
    stats(&keys, &ev, &aev);
    assert_int_equal(keys, 3);
    limit_table_free();
}

static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Not an assertion (speed is for benchmarks): decisions per second on one
 * core over a million distinct keys, printed for docs/benchmarks.md: a
 * first pass that makes the keys, then the median of 7 passes over them,
 * one decision at a time as the request path takes them. The thread's CPU
 * time, so that other work on a shared machine does not count. */
static void decisions_per_second(void **state)
{
    (void)state;
    const uint64_t nkeys = 1000000, n = 2000000;
    assert_int_equal(limit_table_init(nkeys), 0);
    struct limit_gcra g;
    limit_gcra_init(&g, 100, 60000, 30);
    struct limit_result r;
    int64_t now = 1000 * MS;
    uint64_t admitted = 0, keys, ev, aev;
    double rate[8];
    for (int pass = 0; pass < 8; pass++) {
        uint64_t len = pass ? n : nkeys;
        double t0 = cpu_s();
        for (uint64_t i = 0; i < len; i++) {
            /* pass 0: every key once; then keys in a scattered order (the
             * table's order is the hash's anyway) */
            uint64_t k = pass ? (i * 0x9e3779b97f4a7c15ull + (uint64_t)pass) % nkeys : i;
            limit_local.take(limit_local.self, limit_hash(1, &k, sizeof k), &g, now, &r);
            admitted += r.admitted;
            now += 10;
        }
        rate[pass] = len / (cpu_s() - t0) / 1e6;
    }
    stats(&keys, &ev, &aev);
    qsort(rate + 1, 7, sizeof rate[0], cmp_double);
    print_message("limit: %.1f million decisions/s on one core over 1,000,000 keys (median of 7 "
                  "passes of 2,000,000: %.1f to %.1f); %.1f million/s in the pass making the keys\n",
                  rate[4], rate[1], rate[7], rate[0]);
    assert_int_equal(keys, nkeys);
    assert_int_equal(ev, 0);
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

/* The login guard's account names: one name however it is written is one
 * account; every occurrence counts; more than LIMIT_ACCOUNTS refuse. */
static int accounts(const char *body, enum limit_account_from from, struct limit_account *a)
{
    return limit_accounts(body, strlen(body), "user", from, a);
}

static void expect(const struct limit_account *a, int i, const char *v)
{
    assert_int_equal(a[i].len, strlen(v));
    assert_memory_equal(a[i].v, v, strlen(v));
}

static void account_spellings(void **state)
{
    (void)state;
    struct limit_account a[LIMIT_ACCOUNTS];
    assert_int_equal(accounts("password=x&user=Alice", LIMIT_ACCOUNT_FORM, a), 1);
    expect(a, 0, "alice");
    /* percent-encoded value and name, '+' a space, capitals: all alice */
    assert_int_equal(accounts("%75ser=%61lice&us%65r=ALICE&user=a%6Cice", LIMIT_ACCOUNT_FORM, a), 1);
    expect(a, 0, "alice");
    assert_int_equal(accounts("user=mary+ann&user=mary%20ann", LIMIT_ACCOUNT_FORM, a), 1);
    expect(a, 0, "mary ann");
    /* a repeated field: both count (applications read the first or the last) */
    assert_int_equal(accounts("user=decoy&password=x&user=alice", LIMIT_ACCOUNT_FORM, a), 2);
    expect(a, 0, "decoy");
    expect(a, 1, "alice");
    assert_int_equal(accounts("user=a&user=b&user=c&user=d", LIMIT_ACCOUNT_FORM, a), 4);
    assert_int_equal(accounts("user=a&user=b&user=c&user=d&user=e", LIMIT_ACCOUNT_FORM, a), -1);
    assert_int_equal(accounts("user=&username=bob&xuser=eve&user", LIMIT_ACCOUNT_FORM, a), 0);
    assert_int_equal(accounts("user=100%&user=%zz", LIMIT_ACCOUNT_FORM, a), 2);
    expect(a, 0, "100%");
    expect(a, 1, "%zz");
    /* JSON: escapes decoded, keys at any depth, a key's spelling inside a string is not a key */
    assert_int_equal(accounts("{\"user\": \"\\u0041lice\"}", LIMIT_ACCOUNT_JSON, a), 1);
    expect(a, 0, "alice");
    assert_int_equal(accounts("{\"\\u0075ser\":\"alice\",\"d\":{\"user\":\"bob\"},"
                              "\"note\":\"\\\"user\\\": \\\"eve\\\"\",\"user\":7}", LIMIT_ACCOUNT_JSON, a), 2);
    expect(a, 0, "alice");
    expect(a, 1, "bob");
    assert_int_equal(accounts("{\"user\":\"\\u00e9\\ud83d\\ude00\\/\\\\\"}", LIMIT_ACCOUNT_JSON, a), 1);
    expect(a, 0, "\xc3\xa9\xf0\x9f\x98\x80/\\");
    assert_int_equal(accounts("{\"user\":\"alice", LIMIT_ACCOUNT_JSON, a), 0);  /* unterminated */
    /* a long name is cut at LIMIT_ACCOUNT_MAX bytes */
    char big[400] = "user=";
    memset(big + 5, 'x', 300);
    big[305] = '\0';
    assert_int_equal(accounts(big, LIMIT_ACCOUNT_FORM, a), 1);
    assert_int_equal(a[0].len, LIMIT_ACCOUNT_MAX);
    /* a header's value is as it is, but for capitals */
    assert_int_equal(limit_accounts("Bob%20", 6, "x-user", LIMIT_ACCOUNT_HEADER, a), 1);
    expect(a, 0, "bob%20");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(gcra_boundaries),
        cmocka_unit_test(gcra_per_minute),
        cmocka_unit_test(table_bounds_and_eviction),
        cmocka_unit_test(table_at_max_and_one_over),
        cmocka_unit_test(table_idle_keys_go_first),
        cmocka_unit_test(table_max_keys_across_shards),
        cmocka_unit_test(table_crafted_keys_one_shard),
        cmocka_unit_test(table_crafted_keys_one_home),
        cmocka_unit_test(table_exact_across_threads),
        cmocka_unit_test(guard_table),
        cmocka_unit_test(decisions_per_second),
        cmocka_unit_test(top_offenders),
        cmocka_unit_test(challenge_pass),
        cmocka_unit_test(account_spellings),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
