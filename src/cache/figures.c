/* cache/figures.c: the cache's counters by route (host and prefix: hits,
 * misses, stale, revalidated, bypass, coalesced, stored) and what reads
 * them: the Prometheus metrics and the "cache" object of /status.
 */
#include "cache_int.h"

#include "obs/obs.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

static const char *const result_name[R_N] = { "hit", "miss", "stale", "revalidated", "bypass" };

/* ---------------------------------------------------------------- counters */

/* Counters by route (host and prefix), kept across reloads like limit/'s. */
#define MAX_SERIES 1024
static struct series series[MAX_SERIES];
static _Atomic uint32_t nseries;
static pthread_mutex_t series_mu = PTHREAD_MUTEX_INITIALIZER;

struct series *cache_series_for(const struct conf_route *rt)
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

void cache_count(struct stage_x *sx, struct series *s, int r)
{
    stage_log_cache(sx, result_name[r]);
    if (s)
        atomic_fetch_add_explicit(&s->n[r], 1, memory_order_relaxed);
}

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
