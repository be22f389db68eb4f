/* Unit tests for the metrics registry in obs/: configurable buckets, the
 * `metrics:` keys, carrying counts across a reload by name, route and
 * upstream maps, and exposition summing workers laid out for different
 * snapshots. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "conf/conf.h"
#include "obs/obs.h"

static struct conf *load(const char *text)
{
    char err[512];
    struct conf *c = conf_load_string("t.yaml", text, strlen(text), err, sizeof err);
    if (!c)
        fail_msg("%s", err);
    return c;
}

static void load_err(const char *text, const char *want)
{
    char err[512];
    struct conf *c = conf_load_string("t.yaml", text, strlen(text), err, sizeof err);
    assert_null(c);
    assert_string_equal(err, want);
}

#define HEAD                                              \
    "listen: [ \"127.0.0.1:8080\" ]\n"                    \
    "upstreams:\n"                                        \
    "  app: { servers: [ \"127.0.0.1:9001\" ] }\n"        \
    "  db: { servers: [ \"127.0.0.1:9002\" ] }\n"

/* Two snapshots: B drops route /old/, adds /new/, keeps "/" and api.x/v1/
 * (in another position) and renames upstream db to db2. */
#define CONF_A HEAD                                       \
    "routes:\n"                                           \
    "  - { match: { prefix: /old/ }, upstream: db }\n"    \
    "  - { match: { host: api.x, prefix: /v1/ }, upstream: app }\n" \
    "  - { upstream: app }\n"
#define CONF_B                                            \
    "listen: [ \"127.0.0.1:8080\" ]\n"                    \
    "upstreams:\n"                                        \
    "  db2: { servers: [ \"127.0.0.1:9002\" ] }\n"        \
    "  app: { servers: [ \"127.0.0.1:9001\" ] }\n"        \
    "routes:\n"                                           \
    "  - { match: { host: api.x, prefix: /v1/ }, upstream: app }\n" \
    "  - { match: { prefix: /new/ }, upstream: db2 }\n"   \
    "  - { upstream: app }\n"

/* The value of one exposition line starting with `series `, or -1. */
static double sample(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (!strncmp(p, series, n) && p[n] == ' ')
            return strtod(p + n + 1, NULL);
    }
    return -1;
}

static void test_metrics_keys(void **state)
{
    (void)state;
    struct conf *c = load(HEAD "routes: [ { upstream: app } ]\n");
    assert_true(c->metrics.enabled);
    assert_int_equal(c->metrics.nbuckets, 14);
    assert_true(c->metrics.buckets[0] == 0.001 && c->metrics.buckets[13] == 30);
    conf_unref(c);

    c = load(HEAD "routes: [ { upstream: app } ]\n"
             "metrics: { enabled: false, buckets: [ 0.005, 25ms, 1, 2s ] }\n");
    assert_false(c->metrics.enabled);
    assert_int_equal(c->metrics.nbuckets, 4);
    assert_true(c->metrics.buckets[0] == 0.005 && c->metrics.buckets[1] == 0.025 &&
                c->metrics.buckets[2] == 1 && c->metrics.buckets[3] == 2);
    conf_unref(c);

    load_err(HEAD "routes: [ { upstream: app } ]\nmetrics: { buckets: [ 0.1, 0.1 ] }\n",
             "t.yaml:6:28: metrics.buckets[1]: bounds must increase strictly");
    load_err(HEAD "routes: [ { upstream: app } ]\nmetrics: { buckets: [ 0 ] }\n",
             "t.yaml:6:23: metrics.buckets[0]: expected seconds (0.005) or a duration (5ms) above zero");
    load_err(HEAD "routes: [ { upstream: app } ]\nmetrics: { buckets: [ fast ] }\n",
             "t.yaml:6:23: metrics.buckets[0]: expected seconds (0.005) or a duration (5ms) above zero");
    load_err(HEAD "routes: [ { upstream: app } ]\nmetrics: { buckets: [] }\n",
             "t.yaml:6:21: metrics.buckets: expected 1 to 30 upper bounds");
    load_err(HEAD "routes: [ { upstream: app } ]\nmetrics: { enabled: maybe }\n",
             "t.yaml:6:21: metrics.enabled: expected true or false");
    load_err(HEAD "routes: [ { upstream: app } ]\nmetrics: { bucket: [ 1 ] }\n",
             "t.yaml:6:12: metrics.bucket: unknown key");
}

static void test_buckets_are_upper_bounds(void **state)
{
    (void)state;
    struct conf *c = load(HEAD "routes: [ { upstream: app } ]\nmetrics: { buckets: [ 10ms, 100ms ] }\n");
    struct obs_worker *w = obs_worker_new(c);
    assert_non_null(w);
    obs_request(w, 0, "GET", 3, 200, 10000);     /* exactly 10ms: le="0.01" */
    obs_request(w, 0, "GET", 3, 200, 10001);
    obs_request(w, 0, "GET", 3, 200, 5000000);   /* +Inf */
    assert_int_equal(w->routes[0].duration.bucket[0], 1);
    assert_int_equal(w->routes[0].duration.bucket[1], 1);
    assert_int_equal(w->routes[0].duration.bucket[2], 1);
    struct obs_text t = { 0 };
    obs_expose(&t, &w, 1);
    assert_false(t.oom);
    assert_true(sample(t.buf, "portico_http_request_duration_seconds_bucket{route=\"/\",le=\"0.01\"}") == 1);
    assert_true(sample(t.buf, "portico_http_request_duration_seconds_bucket{route=\"/\",le=\"0.1\"}") == 2);
    assert_true(sample(t.buf, "portico_http_request_duration_seconds_bucket{route=\"/\",le=\"+Inf\"}") == 3);
    free(t.buf);
    obs_worker_free(w);
    conf_unref(c);
}

static void test_disabled_records_nothing_per_request(void **state)
{
    (void)state;
    struct conf *c = load(HEAD "routes: [ { upstream: app } ]\nmetrics: { enabled: false }\n");
    struct obs_worker *w = obs_worker_new(c);
    obs_request(w, 0, "GET", 3, 200, 100);
    obs_upstream_time(w, 0, 100);
    obs_add(&w->conns_total, 1);
    struct obs_totals tot;
    obs_totals(&w, 1, &tot);
    assert_int_equal(tot.requests, 0);
    assert_int_equal(tot.conns_total, 1);
    assert_int_equal(w->upstreams[0].duration.count, 0);
    obs_worker_free(w);
    conf_unref(c);
}

static void test_maps_by_name(void **state)
{
    (void)state;
    struct conf *a = load(CONF_A), *b = load(CONF_B);
    uint32_t rm[4], um[2];
    obs_map_routes(a, b, rm);
    assert_int_equal(rm[0], OBS_NONE);  /* /old/ is gone */
    assert_int_equal(rm[1], 0);         /* api.x/v1/ moved up */
    assert_int_equal(rm[2], 2);         /* / */
    assert_int_equal(rm[3], 3);         /* "no route" to "no route" */
    obs_map_upstreams(a, b, um);
    assert_int_equal(um[0], 1);         /* app */
    assert_int_equal(um[1], OBS_NONE);  /* db was renamed */
    conf_unref(a);
    conf_unref(b);
}

static void test_carry_across_reload(void **state)
{
    (void)state;
    struct conf *a = load(CONF_A), *b = load(CONF_B);
    struct obs_worker *wa = obs_worker_new(a);
    for (int i = 0; i < 5; i++)
        obs_request(wa, 2, "GET", 3, 200, 1000);        /* "/" */
    obs_request(wa, 1, "POST", 4, 503, 1000);           /* api.x/v1/ */
    obs_request(wa, 0, "GET", 3, 200, 1000);            /* /old/: dropped */
    obs_request(wa, OBS_NONE, "GET", 3, 404, 0);        /* no route */
    obs_upstream_time(wa, 0, 2000);
    obs_add(&wa->upstreams[1].errors, 4);
    obs_add(&wa->conns_total, 9);
    obs_add(&wa->conns_closed, 2);

    struct obs_worker *wb = obs_worker_new(b);
    obs_worker_carry(wb, wa);
    assert_int_equal(wb->routes[2].duration.count, 5);
    assert_int_equal(wb->routes[0].duration.count, 1);
    assert_int_equal(wb->routes[1].duration.count, 0);  /* /new/ starts at zero */
    assert_int_equal(wb->routes[3].duration.count, 1);
    assert_int_equal(wb->upstreams[1].duration.count, 1);
    assert_int_equal(wb->upstreams[0].errors, 0);
    assert_int_equal(wb->conns_total, 9);
    assert_int_equal(wb->conns_closed, 2);

    /* new buckets: histograms restart, counters carry on */
    struct conf *c = load(CONF_B "metrics: { buckets: [ 1 ] }\n");
    struct obs_worker *wc = obs_worker_new(c);
    obs_worker_carry(wc, wb);
    assert_int_equal(wc->routes[2].duration.count, 0);
    struct obs_totals tot;
    obs_totals(&wc, 1, &tot);
    assert_int_equal(tot.requests, 7);
    assert_int_equal(tot.nbuckets, 1);
    assert_true(tot.bounds[0] == 1);

    obs_worker_free(wa);
    obs_worker_free(wb);
    obs_worker_free(wc);
    conf_unref(a);
    conf_unref(b);
    conf_unref(c);
}

static void test_expose_mixed_layouts(void **state)
{
    (void)state;
    /* one worker still on A while another has switched to B: one set of
     * series, named after the first worker's layout */
    struct conf *a = load(CONF_A), *b = load(CONF_B);
    struct obs_worker *ws[2] = { obs_worker_new(b), obs_worker_new(a) };
    obs_request(ws[0], 2, "GET", 3, 200, 1000);
    obs_request(ws[1], 2, "GET", 3, 200, 1000);
    obs_request(ws[1], 1, "GET", 3, 200, 1000);
    obs_request(ws[1], 0, "GET", 3, 200, 1000);     /* /old/ is not in B: left out */
    struct obs_text t = { 0 };
    obs_expose(&t, ws, 2);
    assert_false(t.oom);
    assert_true(sample(t.buf, "portico_http_requests_total{route=\"/\",method=\"GET\",code=\"200\"}") == 2);
    assert_true(sample(t.buf, "portico_http_requests_total{route=\"api.x/v1/\",method=\"GET\",code=\"200\"}") == 1);
    assert_null(strstr(t.buf, "route=\"/old/\""));
    assert_non_null(strstr(t.buf, "portico_upstream_errors_total{upstream=\"db2\"} 0\n"));
    free(t.buf);
    obs_worker_free(ws[0]);
    obs_worker_free(ws[1]);
    conf_unref(a);
    conf_unref(b);
}

static void test_duplicate_routes_are_one_series(void **state)
{
    (void)state;
    struct conf *c = load(HEAD "routes:\n  - { upstream: app }\n  - { upstream: db }\n");
    struct obs_worker *w = obs_worker_new(c);
    obs_request(w, 0, "GET", 3, 200, 1000);
    obs_request(w, 1, "GET", 3, 200, 1000);
    struct obs_text t = { 0 };
    obs_expose(&t, &w, 1);
    assert_true(sample(t.buf, "portico_http_requests_total{route=\"/\",method=\"GET\",code=\"200\"}") == 2);
    /* exactly one histogram for "/" */
    const char *first = strstr(t.buf, "portico_http_request_duration_seconds_count{route=\"/\"}");
    assert_non_null(first);
    assert_null(strstr(first + 1, "portico_http_request_duration_seconds_count{route=\"/\"}"));
    free(t.buf);
    obs_worker_free(w);
    conf_unref(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_metrics_keys),
        cmocka_unit_test(test_buckets_are_upper_bounds),
        cmocka_unit_test(test_disabled_records_nothing_per_request),
        cmocka_unit_test(test_maps_by_name),
        cmocka_unit_test(test_carry_across_reload),
        cmocka_unit_test(test_expose_mixed_layouts),
        cmocka_unit_test(test_duplicate_routes_are_one_series),
    };
    return cmocka_run_group_tests_name("metrics", tests, NULL, NULL);
}
