/* obs/obs.c: see obs.h. */
#include "obs.h"

#include "conf/conf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const double obs_bucket_bounds[OBS_NBUCKETS] = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
};

static const char *const method_names[OBS_NMETHODS] = {
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "OTHER",
};

/* Status codes with a series of their own; others fall into "other" of their class. */
static const int codes[OBS_NCODES] = {
    100, 101, 200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308, 400, 401, 403, 404,
    405, 408, 413, 414, 417, 429, 431, 500, 501, 502, 503, 504, 505, 0, 0,
};
#define CODE_OTHER (OBS_NCODES - 2)     /* any other code */

static unsigned method_index(const char *m, size_t n)
{
    for (unsigned i = 0; i < OBS_NMETHODS - 1; i++)
        if (strlen(method_names[i]) == n && memcmp(m, method_names[i], n) == 0)
            return i;
    return OBS_NMETHODS - 1;
}

static unsigned code_index(int status)
{
    for (unsigned i = 0; i < CODE_OTHER; i++)
        if (codes[i] == status)
            return i;
    return CODE_OTHER;
}

static unsigned bucket_index(uint64_t us)
{
    double s = (double)us / 1e6;
    unsigned i = 0;
    while (i < OBS_NBUCKETS && s > obs_bucket_bounds[i])
        i++;
    return i;
}

struct obs_worker *obs_worker_new(const struct conf *c)
{
    struct obs_worker *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->nroutes = c->nroutes + 1;
    w->nupstreams = c->nupstreams;
    w->routes = calloc(w->nroutes, sizeof *w->routes);
    w->upstreams = calloc(w->nupstreams ? w->nupstreams : 1, sizeof *w->upstreams);
    if (!w->routes || !w->upstreams) {
        obs_worker_free(w);
        return NULL;
    }
    return w;
}

void obs_worker_free(struct obs_worker *w)
{
    if (!w)
        return;
    free(w->routes);
    free(w->upstreams);
    free(w);
}

void obs_request(struct obs_worker *w, uint32_t route, const char *method, size_t method_len,
                 int status, uint64_t duration_us)
{
    if (route >= w->nroutes)
        route = w->nroutes - 1;
    struct obs_route *r = &w->routes[route];
    obs_add(&r->requests[method_index(method, method_len)][code_index(status)], 1);
    obs_add(&r->duration_bucket[bucket_index(duration_us)], 1);
    obs_add(&r->duration_sum_us, duration_us);
    obs_add(&r->duration_count, 1);
}

void obs_upstream_time(struct obs_worker *w, uint32_t upstream, uint64_t duration_us)
{
    if (upstream >= w->nupstreams)
        return;
    struct obs_upstream *u = &w->upstreams[upstream];
    obs_add(&u->duration_bucket[bucket_index(duration_us)], 1);
    obs_add(&u->duration_sum_us, duration_us);
    obs_add(&u->duration_count, 1);
}

void obs_printf(struct obs_text *t, const char *fmt, ...)
{
    if (t->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->buf ? t->buf + t->len : NULL, t->buf ? t->cap - t->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->oom = 1;
            return;
        }
        if (t->buf && t->len + (size_t)n < t->cap) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap ? t->cap * 2 : 16384;
        while (cap < t->len + (size_t)n + 1)
            cap *= 2;
        char *b = realloc(t->buf, cap);
        if (!b) {
            t->oom = 1;
            return;
        }
        t->buf = b;
        t->cap = cap;
    }
}

static uint64_t ld(const obs_counter *c) { return atomic_load_explicit(c, memory_order_relaxed); }

/* Label values are names from the configuration; escape them anyway. */
static const char *esc(const char *s, char *out, size_t len)
{
    size_t n = 0;
    for (; *s && n + 2 < len; s++) {
        if (*s == '"' || *s == '\\')
            out[n++] = '\\';
        out[n++] = *s;
    }
    out[n] = '\0';
    return out;
}

static void histogram(struct obs_text *t, const char *name, const char *label,
                      const uint64_t *b, uint64_t sum_us, uint64_t count)
{
    uint64_t cum = 0;
    for (unsigned i = 0; i < OBS_NBUCKETS; i++) {
        cum += b[i];
        obs_printf(t, "%s_bucket{%s,le=\"%g\"} %llu\n", name, label, obs_bucket_bounds[i],
                   (unsigned long long)cum);
    }
    cum += b[OBS_NBUCKETS];
    obs_printf(t, "%s_bucket{%s,le=\"+Inf\"} %llu\n", name, label, (unsigned long long)cum);
    obs_printf(t, "%s_sum{%s} %.6f\n", name, label, (double)sum_us / 1e6);
    obs_printf(t, "%s_count{%s} %llu\n", name, label, (unsigned long long)count);
}

static const char *route_name(const struct conf *c, uint32_t i, char *buf, size_t len)
{
    if (i >= c->nroutes)
        return "none";
    const struct conf_route *r = &c->routes[i];
    snprintf(buf, len, "%s%s", r->host ? r->host : "", r->prefix);
    return buf;
}

void obs_expose(struct obs_text *t, const struct conf *c, struct obs_worker *const *workers,
                size_t nworkers)
{
    uint32_t nroutes = c->nroutes + 1;
    char rn[600], e1[700], e2[700], label[1500];

    obs_printf(t, "# HELP portico_http_requests_total Requests answered, by route, method and status code.\n"
                  "# TYPE portico_http_requests_total counter\n");
    for (uint32_t r = 0; r < nroutes; r++) {
        for (unsigned m = 0; m < OBS_NMETHODS; m++) {
            for (unsigned k = 0; k <= CODE_OTHER; k++) {
                uint64_t v = 0;
                for (size_t w = 0; w < nworkers; w++)
                    v += ld(&workers[w]->routes[r].requests[m][k]);
                if (!v)
                    continue;
                char code[8];
                if (k == CODE_OTHER)
                    snprintf(code, sizeof code, "other");
                else
                    snprintf(code, sizeof code, "%d", codes[k]);
                obs_printf(t, "portico_http_requests_total{route=\"%s\",method=\"%s\",code=\"%s\"} %llu\n",
                           esc(route_name(c, r, rn, sizeof rn), e1, sizeof e1), method_names[m], code,
                           (unsigned long long)v);
            }
        }
    }

    obs_printf(t, "# HELP portico_http_request_duration_seconds Time from a request's first byte to its response's last, by route.\n"
                  "# TYPE portico_http_request_duration_seconds histogram\n");
    for (uint32_t r = 0; r < nroutes; r++) {
        uint64_t b[OBS_NBUCKETS + 1] = { 0 }, sum = 0, count = 0;
        for (size_t w = 0; w < nworkers; w++) {
            const struct obs_route *x = &workers[w]->routes[r];
            for (unsigned i = 0; i <= OBS_NBUCKETS; i++)
                b[i] += ld(&x->duration_bucket[i]);
            sum += ld(&x->duration_sum_us);
            count += ld(&x->duration_count);
        }
        snprintf(label, sizeof label, "route=\"%s\"", esc(route_name(c, r, rn, sizeof rn), e1, sizeof e1));
        histogram(t, "portico_http_request_duration_seconds", label, b, sum, count);
    }

    obs_printf(t, "# HELP portico_upstream_request_duration_seconds Time from sending a request upstream to its response head, by upstream.\n"
                  "# TYPE portico_upstream_request_duration_seconds histogram\n");
    for (uint32_t u = 0; u < c->nupstreams; u++) {
        uint64_t b[OBS_NBUCKETS + 1] = { 0 }, sum = 0, count = 0;
        for (size_t w = 0; w < nworkers; w++) {
            const struct obs_upstream *x = &workers[w]->upstreams[u];
            for (unsigned i = 0; i <= OBS_NBUCKETS; i++)
                b[i] += ld(&x->duration_bucket[i]);
            sum += ld(&x->duration_sum_us);
            count += ld(&x->duration_count);
        }
        snprintf(label, sizeof label, "upstream=\"%s\"", esc(c->upstreams[u].name, e2, sizeof e2));
        histogram(t, "portico_upstream_request_duration_seconds", label, b, sum, count);
    }
    obs_printf(t, "# HELP portico_upstream_errors_total Upstream attempts that failed (connect, timeout, reset, bad response).\n"
                  "# TYPE portico_upstream_errors_total counter\n");
    for (uint32_t u = 0; u < c->nupstreams; u++) {
        uint64_t v = 0;
        for (size_t w = 0; w < nworkers; w++)
            v += ld(&workers[w]->upstreams[u].errors);
        obs_printf(t, "portico_upstream_errors_total{upstream=\"%s\"} %llu\n",
                   esc(c->upstreams[u].name, e2, sizeof e2), (unsigned long long)v);
    }

    struct obs_totals tot;
    obs_totals(workers, nworkers, &tot);
    uint64_t rejected = 0;
    for (size_t w = 0; w < nworkers; w++)
        rejected += ld(&workers[w]->rejected);
    obs_printf(t, "# HELP portico_connections_active Client connections open now.\n"
                  "# TYPE portico_connections_active gauge\n"
                  "portico_connections_active %llu\n"
                  "# HELP portico_connections_total Client connections accepted.\n"
                  "# TYPE portico_connections_total counter\n"
                  "portico_connections_total %llu\n"
                  "# HELP portico_bytes_received_total Bytes read from clients.\n"
                  "# TYPE portico_bytes_received_total counter\n"
                  "portico_bytes_received_total %llu\n"
                  "# HELP portico_bytes_sent_total Bytes written to clients.\n"
                  "# TYPE portico_bytes_sent_total counter\n"
                  "portico_bytes_sent_total %llu\n"
                  "# HELP portico_http_rejected_total Malformed requests refused before any upstream saw them.\n"
                  "# TYPE portico_http_rejected_total counter\n"
                  "portico_http_rejected_total %llu\n",
               (unsigned long long)tot.conns_active, (unsigned long long)tot.conns_total,
               (unsigned long long)tot.bytes_in, (unsigned long long)tot.bytes_out,
               (unsigned long long)rejected);
}

void obs_totals(struct obs_worker *const *workers, size_t nworkers, struct obs_totals *out)
{
    memset(out, 0, sizeof *out);
    for (size_t w = 0; w < nworkers; w++) {
        const struct obs_worker *x = workers[w];
        uint64_t total = ld(&x->conns_total), closed = ld(&x->conns_closed);
        out->conns_total += total;
        out->conns_active += total >= closed ? total - closed : 0;
        out->bytes_in += ld(&x->bytes_in);
        out->bytes_out += ld(&x->bytes_out);
        for (uint32_t r = 0; r < x->nroutes; r++) {
            const struct obs_route *rt = &x->routes[r];
            for (unsigned m = 0; m < OBS_NMETHODS; m++)
                for (unsigned k = 0; k <= CODE_OTHER; k++) {
                    uint64_t v = ld(&rt->requests[m][k]);
                    int code = k == CODE_OTHER ? 0 : codes[k];
                    out->requests += v;
                    if (code >= 500)
                        out->errors_5xx += v;
                    else if (code >= 400)
                        out->errors_4xx += v;
                }
            for (unsigned i = 0; i <= OBS_NBUCKETS; i++)
                out->duration_bucket[i] += ld(&rt->duration_bucket[i]);
            out->duration_count += ld(&rt->duration_count);
            out->duration_sum_us += ld(&rt->duration_sum_us);
        }
    }
}
