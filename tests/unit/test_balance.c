/* tests/unit/test_balance.c: the balancing algorithms' sequences, the
 * availability rules (backups, tried servers), the passive state machine,
 * slow_start, the active checker against real sockets, and the upstream keys
 * of the configuration.
 *
 * Groups are built from conf_upstream structs made here (addresses
 * 127.0.0.1:9001...), or from YAML through conf_load_string() for the
 * configuration tests. The private header lb.h gives the tests the hooks a
 * health checker uses (lb_set_active_down) and the effective weight.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "balance/balance.h"
#include "balance/lb.h"
#include "conf/conf.h"
#include "core/log.h"
#include "core/loop.h"

#define T0 1000000u     /* a "now" far from 0, as CLOCK_MONOTONIC is */

/* ---------------------------------------------------------------- helpers */

struct spec {
    uint32_t weight;
    bool backup;
    uint64_t slow_start;
    uint16_t port;          /* 0: 9001 + index */
};

static struct conf_upstream *upstream(enum conf_balance b, uint32_t n, const struct spec *sp)
{
    struct conf_upstream *u = calloc(1, sizeof *u);
    assert_non_null(u);
    u->name = strdup("app");
    u->servers = calloc(n, sizeof *u->servers);
    assert_non_null(u->servers);
    u->nservers = n;
    u->balance = b;
    u->passive = (struct conf_passive){ .max_fails = 3, .fail_timeout = 10000 };
    u->retries = 2;
    for (uint32_t i = 0; i < n; i++) {
        char a[64], err[200];
        snprintf(a, sizeof a, "127.0.0.1:%u", sp && sp[i].port ? sp[i].port : 9001 + i);
        assert_true(conf_parse_addr(a, &u->servers[i].addr, err, sizeof err));
        u->servers[i].weight = sp && sp[i].weight ? sp[i].weight : 1;
        u->servers[i].backup = sp ? sp[i].backup : false;
        u->servers[i].slow_start = sp ? sp[i].slow_start : 0;
    }
    return u;
}

static void upstream_free(struct conf_upstream *u)
{
    free(u->name);
    free(u->servers);
    free(u);
}

static struct balance_group *group(const struct conf_upstream *u)
{
    char err[256];
    struct balance_group *g = balance_group_new(u, err, sizeof err);
    if (!g)
        fail_msg("balance_group_new: %s", err);
    return g;
}

/* One pick released at once (the common shape of a test). */
static int pick1(struct balance_group *g, struct balance_worker *w, uint64_t now)
{
    struct balance_ctx ctx = { .now_ms = now };
    int s = balance_choose(g, w, &ctx, NULL);
    if (s >= 0)
        balance_release(g, s);
    return s;
}

static int pick_addr(struct balance_group *g, struct balance_worker *w, uint32_t ip)
{
    uint32_t be = htonl(ip);
    struct balance_ctx ctx = { .now_ms = T0, .addr = &be, .addr_len = 4 };
    int s = balance_choose(g, w, &ctx, NULL);
    if (s >= 0)
        balance_release(g, s);
    return s;
}

static int pick_key(struct balance_group *g, struct balance_worker *w, const char *key)
{
    struct balance_ctx ctx = { .now_ms = T0, .key = key, .key_len = strlen(key) };
    int s = balance_choose(g, w, &ctx, NULL);
    if (s >= 0)
        balance_release(g, s);
    return s;
}

static uint64_t now_ms(void) { return loop_clock_ms(); }

static void sleep_ms(unsigned ms)
{
    struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

/* ---------------------------------------------------------------- weighted */

static void wrr_nginx_sequence_5_1_1(void **state)
{
    (void)state;
    struct conf_upstream *u = upstream(CONF_BALANCE_WEIGHTED, 3,
                                       (struct spec[]){ { .weight = 5 }, { .weight = 1 }, { .weight = 1 } });
    struct balance_group *g = group(u);
    struct balance_worker *w = balance_worker_new(g, 0);
    assert_non_null(w);
    const char *want = "aabacaa";
    for (int cycle = 0; cycle < 3; cycle++) {
        char got[8] = "";
        for (int i = 0; i < 7; i++)
            got[i] = (char)('a' + pick1(g, w, T0));
        assert_string_equal(got, want);
    }
    balance_worker_free(w);
    balance_group_free(g);
    upstream_free(u);
}

static void wrr_3_2_exact_and_even_at_every_prefix(void **state)
{
    (void)state;
    struct conf_upstream *u = upstream(CONF_BALANCE_WEIGHTED, 2,
                                       (struct spec[]){ { .weight = 3 }, { .weight = 2 } });
    struct balance_group *g = group(u);
    struct balance_worker *w = balance_worker_new(g, 0);
    int count[2] = { 0, 0 };
    for (int k = 1; k <= 10000; k++) {
        int s = pick1(g, w, T0);
        assert_true(s == 0 || s == 1);
        count[s]++;
        /* never more than one pick away from the ideal 3/5 share */
        double dev = count[0] - 0.6 * k;
        assert_true(dev > -1.0 && dev < 1.0);
    }
    assert_int_equal(count[0], 6000);
    assert_int_equal(count[1], 4000);
    balance_worker_free(w);
    balance_group_free(g);
    upstream_free(u);
}

static void wrr_only_available_servers_take_turns(void **state)
{
    (void)state;
    struct conf_upstream *u = upstream(CONF_BALANCE_WEIGHTED, 3,
                                       (struct spec[]){ { .weight = 3 }, { .weight = 2 }, { .weight = 1 } });
    struct balance_group *g = group(u);
    struct balance_worker *w = balance_worker_new(g, 0);
    for (int i = 0; i < 5; i++)
        pick1(g, w, T0);
    lb_set_active_down(g, 0, true, T0, "test");
    int count[3] = { 0 };
    for (int i = 0; i < 300; i++)
        count[pick1(g, w, T0)]++;
    assert_int_equal(count[0], 0);
    assert_int_equal(count[1], 200);
    assert_int_equal(count[2], 100);
    lb_set_active_down(g, 0, false, T0, "test");
    memset(count, 0, sizeof count);
    for (int i = 0; i < 600; i++)
        count[pick1(g, w, T0)]++;
    assert_int_equal(count[0], 300);
    assert_int_equal(count[1], 200);
    assert_int_equal(count[2], 100);
    balance_worker_free(w);
    balance_group_free(g);
    upstream_free(u);
}

static void wrr_workers_are_desynchronised_but_exact(void **state)
{
    (void)state;
    struct conf_upstream *u = upstream(CONF_BALANCE_WEIGHTED, 3, NULL);
    struct balance_group *g = group(u);
    struct balance_worker *w[3];
    int first[3], count[3] = { 0 };
    for (int i = 0; i < 3; i++) {
        w[i] = balance_worker_new(g, (uint32_t)i);
        first[i] = pick1(g, w[i], T0);
        count[first[i]]++;
    }
    assert_true(first[0] != first[1] && first[1] != first[2] && first[0] != first[2]);
    for (int k = 0; k < 299; k++)
        for (int i = 0; i < 3; i++)
            count[pick1(g, w[i], T0)]++;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(count[i], 300);
        balance_worker_free(w[i]);
    }
    balance_group_free(g);
    upstream_free(u);
}

/* ---------------------------------------------------------------- ip_hash */

static void iphash_sticky_and_moves_only_from_a_down_server(void **state)
{
    (void)state;
    struct conf_upstream *u = upstream(CONF_BALANCE_IP_HASH, 3, NULL);
    struct balance_group *g = group(u);
    struct balance_worker *w = balance_worker_new(g, 0);
    int where[100], per[3] = { 0 };
    for (uint32_t i = 0; i < 100; i++) {
        where[i] = pick_addr(g, w, 0x7f000001u + i * 7);      /* 127.0.0.x */
        assert_in_range(where[i], 0, 2);
        per[where[i]]++;
    }
    for (int s = 0; s < 3; s++)
        assert_true(per[s] >= 15);       /* all servers used, roughly evenly */
    for (int round = 0; round < 3; round++)
        for (uint32_t i = 0; i < 100; i++)
            assert_int_equal(pick_addr(g, w, 0x7f000001u + i * 7), where[i]);

    lb_set_active_down(g, 1, true, T0, "test");
    for (uint32_t i = 0; i < 100; i++) {
        int s = pick_addr(g, w, 0x7f000001u + i * 7);
        if (where[i] == 1)
            assert_true(s == 0 || s == 2);
        else
            assert_int_equal(s, where[i]);
    }
    lb_set_active_down(g, 1, false, T0, "test");
    for (uint32_t i = 0; i < 100; i++)
        assert_int_equal(pick_addr(g, w, 0x7f000001u + i * 7), where[i]);

    /* no address: weighted round robin */
    int count[3] = { 0 };
    for (int i = 0; i < 30; i++)
        count[pick1(g, w, T0)]++;
    assert_int_equal(count[0], 10);
    assert_int_equal(count[1], 10);
    assert_int_equal(count[2], 10);
    balance_worker_free(w);
    balance_group_free(g);
    upstream_free(u);
}

static void iphash_follows_weights(void **state)
{
    (void)state;
    struct conf_upstream *u = upstream(CONF_BALANCE_IP_HASH, 2,
                                       (struct spec[]){ { .weight = 3 }, { .weight = 1 } });
    struct balance_group *g = group(u);
    struct balance_worker *w = balance_worker_new(g, 0);
    int per[2] = { 0 };
    for (uint32_t i = 0; i < 4000; i++)
        per[pick_addr(g, w, 0x0a000000u + i)]++;
    assert_in_range(per[0], 2800, 3200);
    balance_worker_free(w);
    balance_group_free(g);
    upstream_free(u);
}

/* ---------------------------------------------------------------- least_conn */

static void leastconn_least_loaded_relative_to_weight(void **state)
{
    (void)state;
    struct conf_upstream *u = upstream(CONF_BALANCE_LEAST_CONN, 2,
                                       (struct spec[]){ { .weight = 1 }, { .weight = 3 } });
    struct balance_group *g = group(u);
    /* two workers share the counts */
    struct balance_worker *w1 = balance_worker_new(g, 0), *w2 = balance_worker_new(g, 1);
    struct balance_ctx ctx = { .now_ms = T0 };
    /* hold 40 attempts open: they spread 1:3 */
    for (int i = 0; i < 40; i++)
        balance_choose(g, i % 2 ? w2 : w1, &ctx, NULL);
    assert_int_equal(balance_server_active(g, 0), 10);
    assert_int_equal(balance_server_active(g, 1), 30);
    /* 12 attempts on server 1 end: 18 / 3 = 6 per unit of weight, against 10 */
    for (int i = 0; i < 12; i++)
        balance_release(g, 1);
    for (int i = 0; i < 11; i++)
        assert_int_equal(balance_choose(g, i % 2 ? w2 : w1, &ctx, NULL), 1);   /* up to 29 */
    /* 2 end on server 0: 8 x 3 < 29, 9 x 3 < 29, 10 x 3 > 29 */
    balance_release(g, 0);
    balance_release(g, 0);
    assert_int_equal(balance_choose(g, w1, &ctx, NULL), 0);
    assert_int_equal(balance_choose(g, w2, &ctx, NULL), 0);
    assert_int_equal(balance_choose(g, w1, &ctx, NULL), 1);
    assert_int_equal(balance_server_active(g, 0), 10);
    assert_int_equal(balance_server_active(g, 1), 30);
    /* idle group: ties are broken by weight */
    for (int i = 0; i < 10; i++)
        balance_release(g, 0);
    for (int i = 0; i < 30; i++)
        balance_release(g, 1);
    assert_int_equal(balance_server_active(g, 0), 0);
    assert_int_equal(balance_server_active(g, 1), 0);
    int count[2] = { 0 };
    for (int i = 0; i < 400; i++)
        count[pick1(g, w1, T0)]++;
    assert_in_range(count[0], 99, 101);
    assert_in_range(count[1], 299, 301);
    balance_release(g, 0);                  /* a double release never wraps */
    assert_int_equal(balance_server_active(g, 0), 0);
    balance_worker_free(w1);
    balance_worker_free(w2);
    balance_group_free(g);
    upstream_free(u);
}

struct lc_arg {
    struct balance_group *g;
    int picks;
};

static void *lc_thread(void *p)
{
    struct lc_arg *a = p;
    struct balance_worker *w = balance_worker_new(a->g, (uint32_t)(uintptr_t)a);
    struct balance_ctx ctx = { .now_ms = T0 };
    for (int i = 0; i < a->picks; i++) {
        int s = balance_choose(a->g, w, &ctx, NULL);
        balance_report(a->g, s, true, T0);
        balance_release(a->g, s);
    }
    balance_worker_free(w);
    return NULL;
}

static void leastconn_counts_across_threads(void **state)
{
    (void)state;
    struct conf_upstream *u = upstream(CONF_BALANCE_LEAST_CONN, 4, NULL);
    struct balance_group *g = group(u);
    pthread_t th[4];
    struct lc_arg a[4];
    for (int i = 0; i < 4; i++) {
        a[i] = (struct lc_arg){ g, 20000 };
        assert_int_equal(pthread_create(&th[i], NULL, lc_thread, &a[i]), 0);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    for (int s = 0; s < 4; s++)
        assert_int_equal(balance_server_active(g, s), 0);
    balance_group_free(g);
    upstream_free(u);
}

/* ---------------------------------------------------------------- consistent hash */

static void chash_moves_about_a_third_when_one_of_three_leaves(void **state)
{
    (void)state;
    struct conf_upstream *u3 = upstream(CONF_BALANCE_HASH, 3, NULL);
    struct conf_upstream *u2 = upstream(CONF_BALANCE_HASH, 2, NULL);    /* 9001, 9002 */
    struct balance_group *g3 = group(u3), *g2 = group(u2);
    struct balance_worker *w3 = balance_worker_new(g3, 0), *w2 = balance_worker_new(g2, 0);
    int before[1000], per[3] = { 0 }, moved = 0, moved_down = 0;
    char key[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof key, "user-%d", i);
        before[i] = pick_key(g3, w3, key);
        per[before[i]]++;
        assert_int_equal(pick_key(g3, w3, key), before[i]);     /* sticky */
    }
    for (int s = 0; s < 3; s++)
        assert_in_range(per[s], 230, 440);

    /* server 9003 removed from the configuration */
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof key, "user-%d", i);
        int s = pick_key(g2, w2, key);
        if (s != before[i])
            moved++;
        if (before[i] != 2)
            assert_int_equal(s, before[i]);     /* only the leaver's keys move */
    }
    /* and the same server down instead */
    lb_set_active_down(g3, 2, true, T0, "test");
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof key, "user-%d", i);
        int s = pick_key(g3, w3, key);
        moved_down += s != before[i];
        assert_true(s == 0 || s == 1);
    }
    print_message("chash: %d of 1000 keys moved (%d %d %d per server)\n", moved, per[0], per[1],
                  per[2]);
    assert_int_equal(moved, per[2]);
    assert_int_equal(moved_down, per[2]);
    assert_true(moved <= 400);
    assert_true(moved >= 250);
    lb_set_active_down(g3, 2, false, T0, "test");
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof key, "user-%d", i);
        assert_int_equal(pick_key(g3, w3, key), before[i]);     /* and come back */
    }
    balance_worker_free(w3);
    balance_worker_free(w2);
    balance_group_free(g3);
    balance_group_free(g2);
    upstream_free(u3);
    upstream_free(u2);
}

static void chash_independent_of_server_order(void **state)
{
    (void)state;
    struct conf_upstream *a = upstream(CONF_BALANCE_HASH, 3,
                                       (struct spec[]){ { .port = 9001 }, { .port = 9002 }, { .port = 9003 } });
    struct conf_upstream *b = upstream(CONF_BALANCE_HASH, 3,
                                       (struct spec[]){ { .port = 9003 }, { .port = 9001 }, { .port = 9002 } });
    struct balance_group *ga = group(a), *gb = group(b);
    struct balance_worker *wa = balance_worker_new(ga, 0), *wb = balance_worker_new(gb, 0);
    char key[32];
    for (int i = 0; i < 300; i++) {
        snprintf(key, sizeof key, "/item/%d", i);
        int sa = pick_key(ga, wa, key), sb = pick_key(gb, wb, key);
        assert_string_equal(balance_server_name(ga, sa), balance_server_name(gb, sb));
    }
    balance_worker_free(wa);
    balance_worker_free(wb);
    balance_group_free(ga);
    balance_group_free(gb);
    upstream_free(a);
    upstream_free(b);
}

/* ---------------------------------------------------------------- backups, tried */

static void backup_only_when_all_primaries_are_down(void **state)
{
    (void)state;
    enum conf_balance algos[] = { CONF_BALANCE_WEIGHTED, CONF_BALANCE_IP_HASH,
                                  CONF_BALANCE_LEAST_CONN, CONF_BALANCE_HASH };
    for (size_t a = 0; a < 4; a++) {
        struct conf_upstream *u = upstream(algos[a], 4,
                                           (struct spec[]){ { 0 }, { 0 }, { .backup = true }, { .backup = true } });
        struct balance_group *g = group(u);
        struct balance_worker *w = balance_worker_new(g, 0);
        uint32_t ip = htonl(0x7f000005);
        struct balance_ctx ctx = { .now_ms = T0, .addr = &ip, .addr_len = 4, .key = "k", .key_len = 1 };
        for (int i = 0; i < 50; i++) {
            int s = balance_choose(g, w, &ctx, NULL);
            assert_true(s == 0 || s == 1);
            balance_release(g, s);
        }
        lb_set_active_down(g, 0, true, T0, "test");
        for (int i = 0; i < 20; i++) {
            int s = balance_choose(g, w, &ctx, NULL);
            assert_int_equal(s, 1);
            balance_release(g, s);
        }
        /* every primary tried: the backups come next, then nothing */
        uint64_t tried[BALANCE_TRIED_WORDS] = { 0 };
        tried[0] = 1u << 1;
        int b1 = balance_choose(g, w, &ctx, tried);
        assert_true(b1 == 2 || b1 == 3);
        balance_release(g, b1);
        tried[0] |= 1u << b1;
        int b2 = balance_choose(g, w, &ctx, tried);
        assert_int_equal(b2, b1 == 2 ? 3 : 2);
        balance_release(g, b2);
        tried[0] |= 1u << b2;
        assert_int_equal(balance_choose(g, w, &ctx, tried), BALANCE_EXHAUSTED);

        lb_set_active_down(g, 1, true, T0, "test");
        for (int i = 0; i < 20; i++) {
            int s = balance_choose(g, w, &ctx, NULL);
            assert_true(s == 2 || s == 3);
            assert_true(balance_server_backup(g, s));
            balance_release(g, s);
        }
        lb_set_active_down(g, 2, true, T0, "test");
        lb_set_active_down(g, 3, true, T0, "test");
        assert_int_equal(balance_choose(g, w, &ctx, NULL), BALANCE_NONE);
        lb_set_active_down(g, 1, false, T0, "test");
        assert_int_equal(balance_choose(g, w, &ctx, NULL), 1);
        balance_release(g, 1);
        balance_worker_free(w);
        balance_group_free(g);
        upstream_free(u);
    }
}

/* ---------------------------------------------------------------- passive */

static void passive_max_fails_within_window_and_recovery(void **state)
{
    (void)state;
    struct conf_upstream *u = upstream(CONF_BALANCE_WEIGHTED, 2, NULL);
    u->passive = (struct conf_passive){ .max_fails = 3, .fail_timeout = 10000 };
    struct balance_group *g = group(u);
    struct balance_worker *w = balance_worker_new(g, 0);
    uint64_t t = T0;

    /* failures spread wider than the window never add up to 3 */
    balance_report(g, 0, false, t);
    balance_report(g, 0, false, t + 5000);
    balance_report(g, 0, false, t + 10000);        /* window [t, t+10s) is over: restart */
    balance_report(g, 0, false, t + 15000);
    assert_int_equal(balance_server_state(g, 0, t + 15000), BALANCE_UP);
    assert_int_equal(balance_server_changes(g, 0), 0);
    /* successes do not reset the count inside the window */
    balance_report(g, 0, true, t + 16000);
    balance_report(g, 0, false, t + 17000);         /* third in [t+10s, t+20s) */
    assert_int_equal(balance_server_state(g, 0, t + 17000), BALANCE_DOWN_PASSIVE);
    assert_int_equal(balance_server_changes(g, 0), 1);
    balance_report(g, 0, false, t + 17001);         /* late reports while out: ignored */
    assert_int_equal(balance_server_changes(g, 0), 1);
    for (int i = 0; i < 10; i++)
        assert_int_equal(pick1(g, w, t + 17000 + (uint64_t)i * 100), 1);

    /* out for fail_timeout, then back (brought back by a pick) */
    assert_int_equal(balance_server_state(g, 0, t + 26999), BALANCE_DOWN_PASSIVE);
    assert_int_equal(pick1(g, w, t + 26999), 1);
    int seen0 = 0;
    for (int i = 0; i < 4; i++)
        seen0 += pick1(g, w, t + 27000) == 0;
    assert_int_equal(seen0, 2);
    assert_int_equal(balance_server_state(g, 0, t + 27000), BALANCE_UP);
    assert_int_equal(balance_server_changes(g, 0), 2);

    /* on probation: the first failure takes it out again at once */
    balance_report(g, 0, false, t + 27100);
    assert_int_equal(balance_server_state(g, 0, t + 27100), BALANCE_DOWN_PASSIVE);
    assert_int_equal(balance_server_changes(g, 0), 3);

    /* back, one success ends probation: it takes 3 failures again */
    assert_true(pick1(g, w, t + 37100) >= 0);
    assert_int_equal(balance_server_state(g, 0, t + 37100), BALANCE_UP);
    balance_report(g, 0, true, t + 37200);
    balance_report(g, 0, false, t + 37300);
    balance_report(g, 0, false, t + 37400);
    assert_int_equal(balance_server_state(g, 0, t + 37400), BALANCE_UP);
    balance_report(g, 0, false, t + 37500);
    assert_int_equal(balance_server_state(g, 0, t + 37500), BALANCE_DOWN_PASSIVE);
    assert_int_equal(balance_server_changes(g, 0), 5);

    /* both out: nothing to choose */
    for (int i = 0; i < 3; i++)
        balance_report(g, 1, false, t + 37600);
    struct balance_ctx ctx = { .now_ms = t + 37600 };
    assert_int_equal(balance_choose(g, w, &ctx, NULL), BALANCE_NONE);
    assert_int_equal(balance_server_changes(g, 1), 1);
    balance_worker_free(w);
    balance_group_free(g);

    /* max_fails 0: passive checks off */
    u->passive.max_fails = 0;
    g = group(u);
    for (int i = 0; i < 100; i++)
        balance_report(g, 0, false, t);
    assert_int_equal(balance_server_state(g, 0, t), BALANCE_UP);
    balance_group_free(g);
    upstream_free(u);

    /* a group of one server is never taken out by passive checks */
    u = upstream(CONF_BALANCE_WEIGHTED, 1, NULL);
    g = group(u);
    for (int i = 0; i < 10; i++)
        balance_report(g, 0, false, t);
    assert_int_equal(balance_server_state(g, 0, t), BALANCE_UP);
    balance_group_free(g);
    upstream_free(u);
}

static void *fail_thread(void *p)
{
    struct balance_group *g = p;
    for (int i = 0; i < 1000; i++)
        balance_report(g, 0, false, T0 + (uint64_t)i);
    return NULL;
}

static void passive_concurrent_failures_change_state_once(void **state)
{
    (void)state;
    struct conf_upstream *u = upstream(CONF_BALANCE_WEIGHTED, 2, NULL);
    u->passive = (struct conf_passive){ .max_fails = 5, .fail_timeout = 100000 };
    struct balance_group *g = group(u);
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, fail_thread, g);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(balance_server_state(g, 0, T0 + 1000), BALANCE_DOWN_PASSIVE);
    assert_int_equal(balance_server_changes(g, 0), 1);
    balance_group_free(g);
    upstream_free(u);
}

/* ---------------------------------------------------------------- slow_start */

static void slow_start_ramps_weight_linearly(void **state)
{
    (void)state;
    struct conf_upstream *u = upstream(CONF_BALANCE_WEIGHTED, 2,
                                       (struct spec[]){ { .weight = 1 }, { .weight = 1, .slow_start = 10000 } });
    struct balance_group *g = group(u);
    struct balance_worker *w = balance_worker_new(g, 0);
    /* never down: full weight from the start */
    assert_int_equal(lb_weight(g, 1, T0), LB_WSCALE);
    lb_set_active_down(g, 1, true, T0, "test");
    lb_set_active_down(g, 1, false, T0 + 1000, "test");      /* recovered at T0+1s */
    assert_int_equal(lb_weight(g, 1, T0 + 1000), 1);
    assert_int_equal(lb_weight(g, 1, T0 + 3500), LB_WSCALE / 4);
    assert_int_equal(lb_weight(g, 1, T0 + 6000), LB_WSCALE / 2);
    assert_int_equal(lb_weight(g, 1, T0 + 11000), LB_WSCALE);
    assert_int_equal(lb_weight(g, 0, T0 + 3500), LB_WSCALE);

    int count[2] = { 0 };
    for (int i = 0; i < 1000; i++)
        count[pick1(g, w, T0 + 1000)]++;
    assert_in_range(count[1], 0, 2);                         /* just back: ~nothing */
    count[0] = count[1] = 0;
    for (int i = 0; i < 1000; i++)
        count[pick1(g, w, T0 + 3500)]++;
    assert_in_range(count[1], 195, 205);                     /* 0.25 / 1.25 */
    count[0] = count[1] = 0;
    for (int i = 0; i < 1000; i++)
        count[pick1(g, w, T0 + 11000)]++;
    assert_in_range(count[1], 499, 501);
    balance_worker_free(w);
    balance_group_free(g);
    upstream_free(u);
}

/* ---------------------------------------------------------------- active health */

struct mini_server {
    int fd;
    uint16_t port;
    atomic_int status;          /* what to answer */
    atomic_bool stop;
    atomic_int requests;
    atomic_bool host_ok;        /* every request had the expected shape */
    pthread_t th;
};

static void *mini_server_run(void *p)
{
    struct mini_server *m = p;
    while (!atomic_load(&m->stop)) {
        struct pollfd pfd = { .fd = m->fd, .events = POLLIN };
        if (poll(&pfd, 1, 10) <= 0)
            continue;
        int c = accept(m->fd, NULL, NULL);
        if (c < 0)
            continue;
        char buf[1024];
        size_t got = 0;
        while (got < sizeof buf - 1) {
            struct pollfd cp = { .fd = c, .events = POLLIN };
            if (poll(&cp, 1, 500) <= 0)
                break;
            ssize_t k = recv(c, buf + got, sizeof buf - 1 - got, 0);
            if (k <= 0)
                break;
            got += (size_t)k;
            buf[got] = '\0';
            if (strstr(buf, "\r\n\r\n"))
                break;
        }
        buf[got] = '\0';
        char host[64];
        snprintf(host, sizeof host, "Host: 127.0.0.1:%u\r\n", m->port);
        if (strncmp(buf, "GET /health HTTP/1.1\r\n", 22) || !strstr(buf, host) ||
            !strstr(buf, "Connection: close\r\n"))
            atomic_store(&m->host_ok, false);
        atomic_fetch_add(&m->requests, 1);
        char resp[128];
        int st = atomic_load(&m->status);
        int n = snprintf(resp, sizeof resp, "HTTP/1.1 %d %s\r\nContent-Length: 0\r\n\r\n", st,
                         st == 200 ? "OK" : "Nope");
        ssize_t wr = send(c, resp, (size_t)n, MSG_NOSIGNAL);
        (void)wr;
        close(c);
    }
    return NULL;
}

static void mini_server_start(struct mini_server *m)
{
    m->fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(m->fd >= 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    assert_int_equal(bind(m->fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(m->fd, 16), 0);
    socklen_t len = sizeof sa;
    getsockname(m->fd, (struct sockaddr *)&sa, &len);
    m->port = ntohs(sa.sin_port);
    atomic_init(&m->status, 200);
    atomic_init(&m->stop, false);
    atomic_init(&m->requests, 0);
    atomic_init(&m->host_ok, true);
    assert_int_equal(pthread_create(&m->th, NULL, mini_server_run, m), 0);
}

static void mini_server_stop(struct mini_server *m)
{
    atomic_store(&m->stop, true);
    pthread_join(m->th, NULL);
    close(m->fd);
}

/* A port with nothing listening (bound, never listened: connect is refused). */
static int closed_port(uint16_t *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    bind(fd, (struct sockaddr *)&sa, sizeof sa);
    socklen_t len = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &len);
    *port = ntohs(sa.sin_port);
    return fd;
}

/* ms until server s of g is in `want` (or -1 after limit ms). */
static long wait_state(struct balance_group *g, int s, bool down, unsigned limit)
{
    uint64_t start = now_ms();
    while (now_ms() - start <= limit) {
        bool is_down = balance_server_state(g, s, now_ms()) == BALANCE_DOWN_ACTIVE;
        if (is_down == down)
            return (long)(now_ms() - start);
        sleep_ms(2);
    }
    return -1;
}

static void health_checker_marks_down_and_up(void **state)
{
    (void)state;
    struct mini_server m;
    mini_server_start(&m);
    uint16_t dead;
    int dead_fd = closed_port(&dead);
    struct conf_upstream *u = upstream(CONF_BALANCE_WEIGHTED, 2,
                                       (struct spec[]){ { .port = m.port }, { .port = dead } });
    const uint64_t interval = 100;
    u->health = (struct conf_health){ .enabled = true, .path = "/health", .interval = interval,
                                      .timeout = 80, .rise = 2, .fall = 3 };
    struct balance_group *g = group(u);
    /* a group without health checks is ignored by the checker */
    struct conf_upstream *u2 = upstream(CONF_BALANCE_WEIGHTED, 1, NULL);
    struct balance_group *g2 = group(u2);
    struct balance_group *groups[] = { g, g2 };

    assert_int_equal(balance_health_start(groups, 2), 0);
    assert_int_equal(balance_health_start(groups, 2), -EALREADY);

    /* the refused one goes down after `fall` checks: at ~(fall - 1) x interval */
    long t = wait_state(g, 1, true, 3 * interval + 500);
    assert_true(t >= 0);
    assert_true(t <= (long)(3 * interval + 100));
    assert_int_equal(balance_server_changes(g, 1), 1);
    /* the healthy one stays up */
    sleep_ms(250);
    assert_int_equal(balance_server_state(g, 0, now_ms()), BALANCE_UP);
    assert_true(atomic_load(&m.requests) >= 3);

    /* answering 500: down within fall x interval */
    atomic_store(&m.status, 500);
    t = wait_state(g, 0, true, 3 * interval + 1000);
    print_message("health: down after %ld ms (fall 3 x interval %llu ms)\n", t,
                  (unsigned long long)interval);
    assert_true(t >= 0);
    assert_true(t <= (long)(3 * interval + 50));
    struct balance_worker *w = balance_worker_new(g, 0);
    assert_int_equal(pick1(g, w, now_ms()), BALANCE_NONE);

    /* answering 200 again: up within rise x interval */
    atomic_store(&m.status, 200);
    t = wait_state(g, 0, false, 2 * interval + 1000);
    print_message("health: up after %ld ms (rise 2 x interval %llu ms)\n", t,
                  (unsigned long long)interval);
    assert_true(t >= 0);
    assert_true(t <= (long)(2 * interval + 50));
    assert_int_equal(balance_server_changes(g, 0), 2);
    assert_int_equal(pick1(g, w, now_ms()), 0);
    assert_true(atomic_load(&m.host_ok));

    /* stopping is prompt */
    uint64_t t0 = now_ms();
    balance_health_stop(false);
    assert_true(now_ms() - t0 < 50);
    balance_health_stop(false);              /* idempotent */
    int before = atomic_load(&m.requests);
    sleep_ms(2 * interval);
    assert_int_equal(atomic_load(&m.requests), before);

    balance_worker_free(w);
    balance_group_free(g);
    balance_group_free(g2);
    upstream_free(u);
    upstream_free(u2);
    close(dead_fd);
    mini_server_stop(&m);
}

static void health_checker_expect_list_and_timeout(void **state)
{
    (void)state;
    struct mini_server m;
    mini_server_start(&m);
    atomic_store(&m.status, 204);
    /* a listener that never accepts: connect succeeds (backlog), no answer */
    int mute = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    bind(mute, (struct sockaddr *)&sa, sizeof sa);
    listen(mute, 16);
    socklen_t len = sizeof sa;
    getsockname(mute, (struct sockaddr *)&sa, &len);

    struct conf_upstream *u = upstream(CONF_BALANCE_WEIGHTED, 2,
                                       (struct spec[]){ { .port = m.port }, { .port = ntohs(sa.sin_port) } });
    u->health = (struct conf_health){ .enabled = true, .path = "/health", .interval = 60000,
                                      .timeout = 100, .rise = 1, .fall = 1, .nexpect = 1,
                                      .expect = { 200 } };
    struct balance_group *g = group(u);
    assert_int_equal(balance_health_start(&g, 1), 0);
    /* 204 is not in expect [200]; the mute one times out */
    assert_true(wait_state(g, 0, true, 500) >= 0);
    assert_true(wait_state(g, 1, true, 500) >= 0);
    balance_health_stop(false);
    balance_group_free(g);

    u->health.nexpect = 0;      /* default: any 2xx */
    g = group(u);
    lb_set_active_down(g, 0, true, now_ms(), "test");
    assert_int_equal(balance_health_start(&g, 1), 0);
    assert_true(wait_state(g, 0, false, 500) >= 0);
    uint64_t t0 = now_ms();
    balance_health_stop(false);          /* interval 60s: stop must not wait for it */
    assert_true(now_ms() - t0 < 50);
    balance_group_free(g);
    upstream_free(u);
    close(mute);
    mini_server_stop(&m);
}

/* A reload stops and starts the checker: each server's counts and schedule
 * go on where they were (by group name and address), so frequent reloads
 * neither keep a dead server up nor burst checks. */
static void health_checker_carries_across_restarts(void **state)
{
    (void)state;
    struct mini_server m;
    mini_server_start(&m);
    atomic_store(&m.status, 500);
    struct conf_upstream *u = upstream(CONF_BALANCE_WEIGHTED, 1, (struct spec[]){ { .port = m.port } });
    u->health = (struct conf_health){ .enabled = true, .path = "/health", .interval = 400,
                                      .timeout = 200, .rise = 1, .fall = 3 };
    struct balance_group *g = group(u);
    assert_int_equal(balance_health_start(&g, 1), 0);
    uint64_t t0 = now_ms();
    while (atomic_load(&m.requests) < 2 && now_ms() - t0 < 2000)
        sleep_ms(5);
    assert_int_equal(atomic_load(&m.requests), 2);     /* two failures: still up */
    assert_int_equal(balance_server_state(g, 0, now_ms()), BALANCE_UP);
    for (int reload = 0; reload < 3; reload++) {        /* three quick reloads */
        balance_health_stop(true);
        struct balance_group *g2 = group(u);
        balance_group_inherit(g2, g);
        balance_group_free(g);
        g = g2;
        assert_int_equal(balance_health_start(&g, 1), 0);
        sleep_ms(20);
    }
    /* no check was made by the restarts themselves */
    assert_int_equal(atomic_load(&m.requests), 2);
    /* the third failure, on the old schedule, takes it down */
    long t = wait_state(g, 0, true, 1000);
    assert_true(t >= 0);
    assert_int_equal(atomic_load(&m.requests), 3);
    balance_health_stop(false);
    balance_group_free(g);
    upstream_free(u);
    mini_server_stop(&m);
}

/* ---------------------------------------------------------------- helpers, compat */

static void cookie_value(void **state)
{
    (void)state;
    const char *h = "a=1; session=abc123 ;x=\"q\"; bare; session2=no";
    size_t n;
    const char *v = balance_cookie_value(h, strlen(h), "session", 7, &n);
    assert_non_null(v);
    assert_int_equal(n, 6);
    assert_memory_equal(v, "abc123", 6);
    v = balance_cookie_value(h, strlen(h), "x", 1, &n);
    assert_non_null(v);
    assert_int_equal(n, 1);
    assert_memory_equal(v, "q", 1);
    assert_null(balance_cookie_value(h, strlen(h), "sess", 4, &n));
    assert_null(balance_cookie_value(h, strlen(h), "bare", 4, &n));
    assert_null(balance_cookie_value("", 0, "a", 1, &n));
}


/* ---------------------------------------------------------------- configuration */

static struct conf *load(const char *upstream_yaml, char *err, size_t errlen)
{
    char text[4096];
    snprintf(text, sizeof text,
             "listen: \"127.0.0.1:8080\"\n"
             "upstreams:\n"
             "  app:\n"
             "%s"
             "routes:\n"
             "  - upstream: app\n", upstream_yaml);
    return conf_load_string("t.yaml", text, strlen(text), err, errlen);
}

static void conf_upstream_keys(void **state)
{
    (void)state;
    char err[512] = "";
    struct conf *c = load("    balance: hash\n"
                          "    hash_key: \"cookie:session\"\n"
                          "    retries: 4\n"
                          "    servers:\n"
                          "      - { address: \"127.0.0.1:9001\", weight: 3, slow_start: 30s }\n"
                          "      - { address: \"127.0.0.1:9002\", backup: true }\n"
                          "      - \"127.0.0.1:9003\"\n"
                          "    health: { path: /health, interval: 30s, timeout: 2s, rise: 2, fall: 3, expect: [200, 204] }\n"
                          "    passive: { max_fails: 5, fail_timeout: 20s, on_5xx: true }\n",
                          err, sizeof err);
    if (!c)
        fail_msg("%s", err);
    const struct conf_upstream *u = &c->upstreams[0];
    assert_int_equal(u->balance, CONF_BALANCE_HASH);
    assert_int_equal(u->hash_key.from, CONF_HASH_COOKIE);
    assert_string_equal(u->hash_key.name, "session");
    assert_int_equal(u->hash_key.name_len, 7);
    assert_int_equal(u->retries, 4);
    assert_int_equal(u->servers[0].weight, 3);
    assert_int_equal(u->servers[0].slow_start, 30000);
    assert_false(u->servers[0].backup);
    assert_true(u->servers[1].backup);
    assert_int_equal(u->servers[2].weight, 1);
    assert_true(u->health.enabled);
    assert_string_equal(u->health.path, "/health");
    assert_int_equal(u->health.interval, 30000);
    assert_int_equal(u->health.timeout, 2000);
    assert_int_equal(u->health.rise, 2);
    assert_int_equal(u->health.fall, 3);
    assert_int_equal(u->health.nexpect, 2);
    assert_int_equal(u->health.expect[0], 200);
    assert_int_equal(u->health.expect[1], 204);
    assert_int_equal(u->passive.max_fails, 5);
    assert_int_equal(u->passive.fail_timeout, 20000);
    assert_true(u->passive.on_5xx);
    struct balance_group *g = group(u);
    assert_true(balance_fail_on_5xx(g));
    assert_string_equal(balance_group_name(g), "app");
    assert_int_equal(balance_group_size(g), 3);
    balance_group_free(g);
    conf_unref(c);

    /* defaults */
    c = load("    servers: [ \"127.0.0.1:9001\" ]\n", err, sizeof err);
    if (!c)
        fail_msg("%s", err);
    u = &c->upstreams[0];
    assert_int_equal(u->balance, CONF_BALANCE_WEIGHTED);
    assert_int_equal(u->hash_key.from, CONF_HASH_NONE);
    assert_false(u->health.enabled);
    assert_int_equal(u->passive.max_fails, 3);
    assert_int_equal(u->passive.fail_timeout, 10000);
    assert_false(u->passive.on_5xx);
    assert_int_equal(u->retries, 2);
    assert_false(u->servers[0].backup);
    assert_int_equal(u->servers[0].slow_start, 0);
    conf_unref(c);

    c = load("    balance: least_conn\n    health: { path: /up }\n    servers: [ \"127.0.0.1:9001\" ]\n",
             err, sizeof err);
    if (!c)
        fail_msg("%s", err);
    u = &c->upstreams[0];
    assert_int_equal(u->balance, CONF_BALANCE_LEAST_CONN);
    assert_string_equal(u->health.path, "/up");
    assert_int_equal(u->health.interval, 5000);
    assert_int_equal(u->health.timeout, 2000);
    assert_int_equal(u->health.rise, 2);
    assert_int_equal(u->health.fall, 3);
    assert_int_equal(u->health.nexpect, 0);
    conf_unref(c);

    const char *keys[] = { "\"header:X-User\"", "path" };
    for (int i = 0; i < 2; i++) {
        char y[256];
        snprintf(y, sizeof y, "    hash_key: %s\n    balance: hash\n    servers: [ \"127.0.0.1:9001\" ]\n",
                 keys[i]);
        c = load(y, err, sizeof err);
        if (!c)
            fail_msg("%s", err);
        assert_int_equal(c->upstreams[0].hash_key.from, i ? CONF_HASH_PATH : CONF_HASH_HEADER);
        if (!i)
            assert_string_equal(c->upstreams[0].hash_key.name, "X-User");
        conf_unref(c);
    }
}

static void conf_upstream_errors(void **state)
{
    (void)state;
    static const struct {
        const char *yaml, *want;
    } cases[] = {
        { "    balance: random\n    servers: [ \"127.0.0.1:9001\" ]\n",
          "t.yaml:4:14: upstreams.app.balance: expected weighted, ip_hash, least_conn or hash" },
        { "    balance: hash\n    servers: [ \"127.0.0.1:9001\" ]\n",
          "t.yaml:4:5: upstreams.app: missing key \"hash_key\" (balance: hash needs one)" },
        { "    hash_key: path\n    servers: [ \"127.0.0.1:9001\" ]\n",
          "t.yaml:4:15: upstreams.app.hash_key: only used with \"balance: hash\"" },
        { "    balance: hash\n    hash_key: \"query:x\"\n    servers: [ \"127.0.0.1:9001\" ]\n",
          "t.yaml:5:15: upstreams.app.hash_key: expected \"header:NAME\", \"cookie:NAME\" or \"path\"" },
        { "    balance: hash\n    hash_key: \"header:\"\n    servers: [ \"127.0.0.1:9001\" ]\n",
          "t.yaml:5:15: upstreams.app.hash_key: expected a header or cookie name after \"header:\"" },
        { "    servers:\n      - { address: \"127.0.0.1:9001\", backup: maybe }\n",
          "t.yaml:5:46: upstreams.app.servers[0].backup: expected true or false" },
        { "    servers:\n      - { address: \"127.0.0.1:9001\", backup: true }\n",
          "t.yaml:5:7: upstreams.app.servers: at least one server must not be a backup" },
        { "    servers:\n      - { address: \"127.0.0.1:9001\", slow_start: soon }\n",
          "t.yaml:5:50: upstreams.app.servers[0].slow_start: expected a duration like 500ms, 10s, 5m, 1h, 1d" },
        { "    servers: [ \"127.0.0.1:9001\" ]\n    health: { path: health }\n",
          "t.yaml:5:21: upstreams.app.health.path: expected a path starting with \"/\"" },
        { "    servers: [ \"127.0.0.1:9001\" ]\n    health: { interval: 0 }\n",
          "t.yaml:5:25: upstreams.app.health.interval: must be greater than zero" },
        { "    servers: [ \"127.0.0.1:9001\" ]\n    health: { fall: 0 }\n",
          "t.yaml:5:21: upstreams.app.health.fall: expected an integer from 1 to 1000" },
        { "    servers: [ \"127.0.0.1:9001\" ]\n    health: { expect: [200, 99] }\n",
          "t.yaml:5:29: upstreams.app.health.expect[1]: expected an integer from 100 to 599" },
        { "    servers: [ \"127.0.0.1:9001\" ]\n    health: { method: HEAD }\n",
          "t.yaml:5:15: upstreams.app.health.method: unknown key" },
        { "    servers: [ \"127.0.0.1:9001\" ]\n    passive: { on_5xx: 1 }\n",
          "t.yaml:5:24: upstreams.app.passive.on_5xx: expected true or false" },
        { "    servers: [ \"127.0.0.1:9001\" ]\n    passive: { fail_timeout: 0 }\n",
          "t.yaml:5:30: upstreams.app.passive.fail_timeout: must be greater than zero" },
        { "    servers: [ \"127.0.0.1:9001\" ]\n    retries: -1\n",
          "t.yaml:5:14: upstreams.app.retries: expected an integer from 0 to 100" },
    };
    int failed = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[512] = "";
        struct conf *c = load(cases[i].yaml, err, sizeof err);
        if (c) {
            print_error("case %zu loaded\n", i);
            conf_unref(c);
            failed++;
        } else if (strcmp(err, cases[i].want)) {
            print_error("case %zu:\n  got  %s\n  want %s\n", i, err, cases[i].want);
            failed++;
        }
    }
    assert_int_equal(failed, 0);
}

int main(void)
{
    log_set_level(LOG_ERROR);       /* state changes are logged at warn: keep the output clean */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(wrr_nginx_sequence_5_1_1),
        cmocka_unit_test(wrr_3_2_exact_and_even_at_every_prefix),
        cmocka_unit_test(wrr_only_available_servers_take_turns),
        cmocka_unit_test(wrr_workers_are_desynchronised_but_exact),
        cmocka_unit_test(iphash_sticky_and_moves_only_from_a_down_server),
        cmocka_unit_test(iphash_follows_weights),
        cmocka_unit_test(leastconn_least_loaded_relative_to_weight),
        cmocka_unit_test(leastconn_counts_across_threads),
        cmocka_unit_test(chash_moves_about_a_third_when_one_of_three_leaves),
        cmocka_unit_test(chash_independent_of_server_order),
        cmocka_unit_test(backup_only_when_all_primaries_are_down),
        cmocka_unit_test(passive_max_fails_within_window_and_recovery),
        cmocka_unit_test(passive_concurrent_failures_change_state_once),
        cmocka_unit_test(slow_start_ramps_weight_linearly),
        cmocka_unit_test(health_checker_marks_down_and_up),
        cmocka_unit_test(health_checker_expect_list_and_timeout),
        cmocka_unit_test(health_checker_carries_across_restarts),
        cmocka_unit_test(cookie_value),
        cmocka_unit_test(conf_upstream_keys),
        cmocka_unit_test(conf_upstream_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
