/* pg/stats.c: the figures: histograms, Prometheus metrics, GET /pools. */
#include "pg_int.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

void pg_hist_add(const struct pg *pg, struct obs_hist *h, uint64_t us)
{
    double s = (double)us / 1e6;
    uint32_t i = 0;
    while (i < pg->nbuckets && s > pg->buckets[i])
        i++;
    cnt_add(&h->bucket[i], 1);
    cnt_add(&h->sum_us, us);
    cnt_add(&h->count, 1);
}

struct pool_sum {
    uint64_t cl[CS_N], sv[SS_N];
    uint64_t xacts, queries, bytes_in, bytes_out, wait_timeouts, slow;
    uint64_t hb[3][OBS_MAX_BUCKETS + 1], hsum[3], hcount[3];
};

#define LD(x) atomic_load_explicit(&(x), memory_order_relaxed)

bool pg_running(void)
{
    pthread_mutex_lock(&pg_global_mu);
    bool r = pg_global != NULL;
    pthread_mutex_unlock(&pg_global_mu);
    return r;
}

static void pool_sum(const struct pg *pg, uint32_t k, struct pool_sum *o)
{
    memset(o, 0, sizeof *o);
    for (uint32_t j = 0; j < pg->nw * pg->nsrv; j++) {
        const struct pstats *st = &pg->w[j / pg->nsrv].pools[k * pg->nsrv + j % pg->nsrv].st;
        for (int j = 0; j < CS_N; j++)
            o->cl[j] += LD(st->cl[j]);
        for (int j = 0; j < SS_N; j++)
            o->sv[j] += LD(st->sv[j]);
        o->xacts += LD(st->xacts);
        o->queries += LD(st->queries);
        o->bytes_in += LD(st->bytes_in);
        o->bytes_out += LD(st->bytes_out);
        o->wait_timeouts += LD(st->wait_timeouts);
        o->slow += LD(st->slow);
        const struct obs_hist *h[3] = { &st->wait, &st->xact, &st->query };
        for (int q = 0; q < 3; q++) {
            for (uint32_t b = 0; b <= pg->nbuckets; b++)
                o->hb[q][b] += LD(h[q]->bucket[b]);
            o->hsum[q] += LD(h[q]->sum_us);
            o->hcount[q] += LD(h[q]->count);
        }
    }
}

/* The per-pool gauges: clients and servers by state, pool sizes. */
static void metrics_gauges(struct obs_text *t, const struct conf_pg *cf, const struct pool_sum *sums)
{
    static const struct { const char *name, *help; int kind; int idx; } gauges[] = {
        { "portico_pg_clients_active", "Clients logged in and not waiting for a server.", 0, CS_IDLE },
        { "portico_pg_clients_waiting", "Clients waiting for a server connection.", 0, CS_WAITING },
        { "portico_pg_servers_active", "Server connections serving a client.", 1, SS_ACTIVE },
        { "portico_pg_servers_idle", "Server connections idle in the pool.", 1, SS_IDLE },
        { "portico_pg_servers_used", "Server connections being reset after a session, or checked before reuse.", 1, SS_RESET },
        { "portico_pg_servers_login", "Server connections connecting or logging in.", 1, SS_LOGIN },
    };
    for (size_t g = 0; g < sizeof gauges / sizeof gauges[0]; g++) {
        obs_printf(t, "# HELP %s %s\n# TYPE %s gauge\n", gauges[g].name, gauges[g].help, gauges[g].name);
        for (uint32_t k = 0; k < cf->npools; k++) {
            uint64_t v;
            if (gauges[g].kind == 0 && gauges[g].idx == CS_IDLE)
                v = sums[k].cl[CS_IDLE] + sums[k].cl[CS_ACTIVE];
            else if (gauges[g].kind == 0)
                v = sums[k].cl[gauges[g].idx];
            else if (gauges[g].idx == SS_LOGIN)
                v = sums[k].sv[SS_LOGIN] + sums[k].sv[SS_CONNECT];
            else
                v = sums[k].sv[gauges[g].idx];
            obs_printf(t, "%s{database=\"%s\",user=\"%s\"} %" PRIu64 "\n", gauges[g].name,
                       cf->pools[k].database, cf->pools[k].user, v);
        }
    }
}

/* The per-pool histograms: wait, transaction and query durations. */
static void metrics_hists(struct obs_text *t, const struct pg *pg, const struct pool_sum *sums)
{
    const struct conf_pg *cf = pg->c;
    static const char *const hn[3][2] = {
        { "portico_pg_wait_duration_seconds", "Time clients waited for a server connection." },
        { "portico_pg_transaction_duration_seconds", "Transaction durations (transaction mode)." },
        { "portico_pg_query_duration_seconds", "Query durations, from the request to ReadyForQuery." },
    };
    for (int q = 0; q < 3; q++) {
        obs_printf(t, "# HELP %s %s\n# TYPE %s histogram\n", hn[q][0], hn[q][1], hn[q][0]);
        for (uint32_t k = 0; k < cf->npools; k++) {
            uint64_t cum = 0;
            for (uint32_t b = 0; b <= pg->nbuckets; b++) {
                cum += sums[k].hb[q][b];
                if (b < pg->nbuckets)
                    obs_printf(t, "%s_bucket{database=\"%s\",user=\"%s\",le=\"%g\"} %" PRIu64 "\n",
                               hn[q][0], cf->pools[k].database, cf->pools[k].user, pg->buckets[b], cum);
                else
                    obs_printf(t, "%s_bucket{database=\"%s\",user=\"%s\",le=\"+Inf\"} %" PRIu64 "\n",
                               hn[q][0], cf->pools[k].database, cf->pools[k].user, cum);
            }
            obs_printf(t, "%s_sum{database=\"%s\",user=\"%s\"} %.6f\n", hn[q][0], cf->pools[k].database,
                       cf->pools[k].user, (double)sums[k].hsum[q] / 1e6);
            obs_printf(t, "%s_count{database=\"%s\",user=\"%s\"} %" PRIu64 "\n", hn[q][0],
                       cf->pools[k].database, cf->pools[k].user, sums[k].hcount[q]);
        }
    }
}

void pg_metrics(struct obs_text *t)
{
    pthread_mutex_lock(&pg_global_mu);
    struct pg *pg = pg_global;
    if (!pg) {
        pthread_mutex_unlock(&pg_global_mu);
        return;
    }
    const struct conf_pg *cf = pg->c;
    struct pool_sum *sums = calloc(cf->npools ? cf->npools : 1, sizeof *sums);
    if (!sums) {
        pthread_mutex_unlock(&pg_global_mu);
        t->oom = 1;
        return;
    }
    for (uint32_t k = 0; k < cf->npools; k++)
        pool_sum(pg, k, &sums[k]);
    metrics_gauges(t, cf, sums);
    obs_printf(t, "# HELP portico_pg_pool_size Server connections a pool may open.\n"
                  "# TYPE portico_pg_pool_size gauge\n");
    for (uint32_t k = 0; k < cf->npools; k++)
        obs_printf(t, "portico_pg_pool_size{database=\"%s\",user=\"%s\"} %u\n",
                   cf->pools[k].database, cf->pools[k].user, cf->pools[k].pool_size);
    static const struct { const char *name, *help; size_t off; } counters[] = {
        { "portico_pg_transactions_total", "Transactions served (transaction mode).", offsetof(struct pool_sum, xacts) },
        { "portico_pg_queries_total", "Queries served (simple queries and Syncs).", offsetof(struct pool_sum, queries) },
        { "portico_pg_client_bytes_total", "Bytes from clients to servers.", offsetof(struct pool_sum, bytes_in) },
        { "portico_pg_server_bytes_total", "Bytes from servers to clients.", offsetof(struct pool_sum, bytes_out) },
        { "portico_pg_wait_timeouts_total", "Clients that gave up after query_wait_timeout.", offsetof(struct pool_sum, wait_timeouts) },
        { "portico_pg_slow_queries_total", "Queries that took longer than slow_query.", offsetof(struct pool_sum, slow) },
    };
    for (size_t g = 0; g < sizeof counters / sizeof counters[0]; g++) {
        obs_printf(t, "# HELP %s %s\n# TYPE %s counter\n", counters[g].name, counters[g].help, counters[g].name);
        for (uint32_t k = 0; k < cf->npools; k++)
            obs_printf(t, "%s{database=\"%s\",user=\"%s\"} %" PRIu64 "\n", counters[g].name,
                       cf->pools[k].database, cf->pools[k].user,
                       *(const uint64_t *)((const char *)&sums[k] + counters[g].off));
    }
    metrics_hists(t, pg, sums);
    obs_printf(t, "# HELP portico_pg_server_up Whether a PostgreSQL server passes its health checks (1) or not (0).\n"
                  "# TYPE portico_pg_server_up gauge\n");
    for (uint32_t i = 0; i < cf->nservers; i++)
        obs_printf(t, "portico_pg_server_up{server=\"%s\",role=\"%s\"} %u\n", cf->servers[i].addr.text,
                   cf->servers[i].role == CONF_PG_REPLICA ? "replica" : "primary",
                   (unsigned)atomic_load_explicit(&pg->up[i], memory_order_relaxed));
    obs_printf(t, "# HELP portico_pg_clients Client connections (all pools, logging in too).\n"
                  "# TYPE portico_pg_clients gauge\nportico_pg_clients %u\n",
               atomic_load(&pg->nclients));
    free(sums);
    pthread_mutex_unlock(&pg_global_mu);
}

/* p95 from a per-bucket histogram: the upper bound of the bucket it falls in. */
static double hist_p(const struct pg *pg, const uint64_t *b, uint64_t count, double q)
{
    if (!count)
        return 0;
    uint64_t want = (uint64_t)((double)count * q + 0.999999), cum = 0;
    for (uint32_t i = 0; i <= pg->nbuckets; i++) {
        cum += b[i];
        if (cum >= want)
            return i < pg->nbuckets ? pg->buckets[i] : pg->buckets[pg->nbuckets - 1];
    }
    return 0;
}

void pg_pools_json(struct obs_text *t)
{
    pthread_mutex_lock(&pg_global_mu);
    struct pg *pg = pg_global;
    if (!pg) {
        obs_printf(t, "{\"pools\":[]}");
        pthread_mutex_unlock(&pg_global_mu);
        return;
    }
    const struct conf_pg *cf = pg->c;
    obs_printf(t, "{\"clients\":%u,\"max_client_conn\":%u,\"servers\":[", atomic_load(&pg->nclients),
               cf->max_client_conn);
    for (uint32_t i = 0; i < cf->nservers; i++)
        obs_printf(t, "%s{\"address\":\"%s\",\"role\":\"%s\",\"weight\":%u,\"up\":%s}", i ? "," : "",
                   cf->servers[i].addr.text, cf->servers[i].role == CONF_PG_REPLICA ? "replica" : "primary",
                   cf->servers[i].weight,
                   atomic_load_explicit(&pg->up[i], memory_order_relaxed) ? "true" : "false");
    obs_printf(t, "],\"pools\":[");
    for (uint32_t k = 0; k < cf->npools; k++) {
        struct pool_sum s;
        pool_sum(pg, k, &s);
        const struct conf_pg_pool *cp = &cf->pools[k];
        double wait_avg = s.hcount[0] ? (double)s.hsum[0] / (double)s.hcount[0] / 1e6 : 0;
        obs_printf(t, "%s{\"database\":\"%s\",\"user\":\"%s\",\"pool_mode\":\"%s\",\"pool_size\":%u,"
                      "\"cl_active\":%" PRIu64 ",\"cl_waiting\":%" PRIu64 ",\"cl_login\":%" PRIu64 ","
                      "\"sv_active\":%" PRIu64 ",\"sv_idle\":%" PRIu64 ",\"sv_used\":%" PRIu64 ","
                      "\"sv_login\":%" PRIu64 ",\"transactions\":%" PRIu64 ",\"queries\":%" PRIu64 ","
                      "\"bytes_in\":%" PRIu64 ",\"bytes_out\":%" PRIu64 ",\"wait_timeouts\":%" PRIu64 ","
                      "\"slow_queries\":%" PRIu64 ",\"avg_wait_seconds\":%.6f,"
                      "\"query_p95_seconds\":%g}",
                   k ? "," : "", cp->database, cp->user,
                   cp->mode == CONF_PG_TRANSACTION ? "transaction" : "session", cp->pool_size,
                   s.cl[CS_IDLE] + s.cl[CS_ACTIVE], s.cl[CS_WAITING], s.cl[CS_AUTH] + s.cl[CS_WELCOME],
                   s.sv[SS_ACTIVE], s.sv[SS_IDLE], s.sv[SS_RESET], s.sv[SS_LOGIN] + s.sv[SS_CONNECT],
                   s.xacts, s.queries, s.bytes_in, s.bytes_out, s.wait_timeouts, s.slow, wait_avg,
                   hist_p(pg, s.hb[2], s.hcount[2], 0.95));
    }
    obs_printf(t, "]}");
    pthread_mutex_unlock(&pg_global_mu);
}
