/* obs/obs.c: see obs.h. */
#include "obs.h"

#include "conf/conf.h"
#include "core/log.h"

#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

_Static_assert(OBS_MAX_BUCKETS == CONF_MAX_BUCKETS, "one bound on histogram buckets");

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

static unsigned bucket_index(const struct obs_worker *w, uint64_t us)
{
    unsigned i = 0;
    while (i < w->nbuckets && us > w->bucket_us[i])
        i++;
    return i;
}

static void hist_record(const struct obs_worker *w, struct obs_hist *h, uint64_t us)
{
    obs_add(&h->bucket[bucket_index(w, us)], 1);
    obs_add(&h->sum_us, us);
    obs_add(&h->count, 1);
}

struct obs_worker *obs_worker_new(struct conf *c)
{
    struct obs_worker *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->layout = conf_ref(c);
    w->nroutes = c->nroutes + 1;
    w->nupstreams = c->nupstreams;
    w->enabled = c->metrics.enabled;
    w->nbuckets = c->metrics.nbuckets;
    for (uint32_t i = 0; i < w->nbuckets; i++)
        w->bucket_us[i] = (uint64_t)(c->metrics.buckets[i] * 1e6 + 0.5);
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
    conf_unref(w->layout);
    free(w->routes);
    free(w->upstreams);
    free(w);
}

void obs_request(struct obs_worker *w, uint32_t route, const char *method, size_t method_len,
                 int status, uint64_t duration_us)
{
    if (!w->enabled)
        return;
    if (route >= w->nroutes)
        route = w->nroutes - 1;
    struct obs_route *r = &w->routes[route];
    obs_add(&r->requests[method_index(method, method_len)][code_index(status)], 1);
    hist_record(w, &r->duration, duration_us);
}

void obs_upstream_time(struct obs_worker *w, uint32_t upstream, uint64_t duration_us)
{
    if (!w->enabled || upstream >= w->nupstreams)
        return;
    hist_record(w, &w->upstreams[upstream].duration, duration_us);
}

/* ---------------------------------------------------------------- names */

static bool same_route(const struct conf_route *a, const struct conf_route *b)
{
    if (!a->host != !b->host)
        return false;
    if (a->host && strcmp(a->host, b->host) != 0)
        return false;
    return strcmp(a->prefix, b->prefix) == 0;
}

static uint64_t route_hash(const struct conf_route *r)
{
    uint64_t h = 1469598103934665603ull;
    for (const char *s = r->host ? r->host : ""; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    h = (h ^ 0xff) * 1099511628211ull;
    for (const char *s = r->prefix; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

void obs_map_routes(const struct conf *from, const struct conf *to, uint32_t *map)
{
    /* an open-addressing table of `to`'s routes: O(routes), whatever their number */
    size_t cap = 16;
    while (cap < (size_t)to->nroutes * 2)
        cap *= 2;
    uint32_t *tab = malloc(cap * sizeof *tab);
    if (tab) {
        memset(tab, 0xff, cap * sizeof *tab);
        for (uint32_t i = 0; i < to->nroutes; i++) {
            size_t k = route_hash(&to->routes[i]) & (cap - 1);
            while (tab[k] != OBS_NONE && !same_route(&to->routes[tab[k]], &to->routes[i]))
                k = (k + 1) & (cap - 1);
            if (tab[k] == OBS_NONE)
                tab[k] = i;         /* the first of duplicates wins */
        }
    }
    for (uint32_t i = 0; i < from->nroutes; i++) {
        map[i] = OBS_NONE;
        if (!tab) {                 /* out of memory: the slow way */
            for (uint32_t j = 0; j < to->nroutes && map[i] == OBS_NONE; j++)
                if (same_route(&from->routes[i], &to->routes[j]))
                    map[i] = j;
            continue;
        }
        size_t k = route_hash(&from->routes[i]) & (cap - 1);
        while (tab[k] != OBS_NONE) {
            if (same_route(&to->routes[tab[k]], &from->routes[i])) {
                map[i] = tab[k];
                break;
            }
            k = (k + 1) & (cap - 1);
        }
    }
    map[from->nroutes] = to->nroutes;
    free(tab);
}

void obs_map_upstreams(const struct conf *from, const struct conf *to, uint32_t *map)
{
    for (uint32_t i = 0; i < from->nupstreams; i++) {
        map[i] = OBS_NONE;
        for (uint32_t j = 0; j < to->nupstreams; j++)
            if (!strcmp(from->upstreams[i].name, to->upstreams[j].name)) {
                map[i] = j;
                break;
            }
    }
}

static uint64_t ld(const obs_counter *c) { return atomic_load_explicit(c, memory_order_relaxed); }

static bool same_buckets(const struct obs_worker *a, const struct obs_worker *b)
{
    return a->nbuckets == b->nbuckets &&
           memcmp(a->bucket_us, b->bucket_us, a->nbuckets * sizeof a->bucket_us[0]) == 0;
}

static void add_hist(struct obs_hist *to, const struct obs_hist *from)
{
    for (unsigned i = 0; i <= OBS_MAX_BUCKETS; i++)
        obs_add(&to->bucket[i], ld(&from->bucket[i]));
    obs_add(&to->sum_us, ld(&from->sum_us));
    obs_add(&to->count, ld(&from->count));
}

static void add_route(struct obs_route *to, const struct obs_route *from, bool hist)
{
    for (unsigned m = 0; m < OBS_NMETHODS; m++)
        for (unsigned k = 0; k < OBS_NCODES; k++)
            obs_add(&to->requests[m][k], ld(&from->requests[m][k]));
    if (hist)
        add_hist(&to->duration, &from->duration);
}

static void add_upstream(struct obs_upstream *to, const struct obs_upstream *from, bool hist)
{
    obs_add(&to->errors, ld(&from->errors));
    if (hist)
        add_hist(&to->duration, &from->duration);
}

/* Sum `from` into `to` (laid out for to->layout); the maps are scratch space. */
static void sum_into(struct obs_worker *to, const struct obs_worker *from, uint32_t *rmap,
                     uint32_t *umap)
{
    bool hist = same_buckets(to, from);
    bool same = to->layout == from->layout;
    if (!same) {
        obs_map_routes(from->layout, to->layout, rmap);
        obs_map_upstreams(from->layout, to->layout, umap);
    }
    for (uint32_t i = 0; i < from->nroutes; i++) {
        uint32_t j = same ? i : rmap[i];
        if (j < to->nroutes)
            add_route(&to->routes[j], &from->routes[i], hist);
    }
    for (uint32_t i = 0; i < from->nupstreams; i++) {
        uint32_t j = same ? i : umap[i];
        if (j < to->nupstreams)
            add_upstream(&to->upstreams[j], &from->upstreams[i], hist);
    }
    obs_add(&to->conns_total, ld(&from->conns_total));
    obs_add(&to->conns_closed, ld(&from->conns_closed));
    obs_add(&to->bytes_in, ld(&from->bytes_in));
    obs_add(&to->bytes_out, ld(&from->bytes_out));
    obs_add(&to->rejected, ld(&from->rejected));
}

void obs_worker_carry(struct obs_worker *to, const struct obs_worker *from)
{
    uint32_t *rmap = malloc(((size_t)from->nroutes + 1) * sizeof *rmap);
    uint32_t *umap = malloc(((size_t)from->nupstreams + 1) * sizeof *umap);
    if (rmap && umap) {
        sum_into(to, from, rmap, umap);
    } else {                    /* out of memory: keep at least the connection gauge right */
        obs_add(&to->conns_total, ld(&from->conns_total));
        obs_add(&to->conns_closed, ld(&from->conns_closed));
    }
    free(rmap);
    free(umap);
}

/* ---------------------------------------------------------------- exposition */

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

static void histogram(struct obs_text *t, const struct obs_worker *lay, const char *name,
                      const char *label, const struct obs_hist *h)
{
    const obs_counter *b = h->bucket;
    uint64_t sum_us = ld(&h->sum_us), count = ld(&h->count);
    uint64_t cum = 0;
    for (unsigned i = 0; i < lay->nbuckets; i++) {
        cum += ld(&b[i]);
        obs_printf(t, "%s_bucket{%s,le=\"%g\"} %llu\n", name, label,
                   lay->layout->metrics.buckets[i], (unsigned long long)cum);
    }
    cum += ld(&b[lay->nbuckets]);
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

void obs_expose(struct obs_text *t, struct obs_worker *const *workers, size_t nworkers)
{
    if (!nworkers)
        return;
    /* Sum every worker into one scratch worker laid out like the first. */
    struct conf *c = workers[0]->layout;
    struct obs_worker *sum = obs_worker_new(c);
    uint32_t *self = malloc(((size_t)c->nroutes + 1) * sizeof *self);
    size_t maxr = 0, maxu = 0;
    for (size_t w = 0; w < nworkers; w++) {
        if (workers[w]->nroutes > maxr)
            maxr = workers[w]->nroutes;
        if (workers[w]->nupstreams > maxu)
            maxu = workers[w]->nupstreams;
    }
    uint32_t *rmap = malloc((maxr + 1) * sizeof *rmap);
    uint32_t *umap = malloc((maxu + 1) * sizeof *umap);
    if (!sum || !self || !rmap || !umap) {
        t->oom = 1;
        goto out;
    }
    for (size_t w = 0; w < nworkers; w++)
        sum_into(sum, workers[w], rmap, umap);
    /* two routes with the same host and prefix are one series (the first) */
    obs_map_routes(c, c, self);
    for (uint32_t r = 0; r < c->nroutes; r++)
        if (self[r] != r && self[r] < sum->nroutes)
            add_route(&sum->routes[self[r]], &sum->routes[r], true);

    char rn[600], e1[700], e2[700], label[1500];
    uint32_t nroutes = sum->nroutes;

    obs_printf(t, "# HELP portico_http_requests_total Requests answered, by route, method and status code.\n"
                  "# TYPE portico_http_requests_total counter\n");
    for (uint32_t r = 0; r < nroutes; r++) {
        if (r < c->nroutes && self[r] != r)
            continue;
        for (unsigned m = 0; m < OBS_NMETHODS; m++) {
            for (unsigned k = 0; k <= CODE_OTHER; k++) {
                uint64_t v = ld(&sum->routes[r].requests[m][k]);
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
        if (r < c->nroutes && self[r] != r)
            continue;
        const struct obs_route *x = &sum->routes[r];
        snprintf(label, sizeof label, "route=\"%s\"", esc(route_name(c, r, rn, sizeof rn), e1, sizeof e1));
        histogram(t, sum, "portico_http_request_duration_seconds", label, &x->duration);
    }

    obs_printf(t, "# HELP portico_upstream_request_duration_seconds Time from sending a request upstream to its response head, by upstream.\n"
                  "# TYPE portico_upstream_request_duration_seconds histogram\n");
    for (uint32_t u = 0; u < c->nupstreams; u++) {
        const struct obs_upstream *x = &sum->upstreams[u];
        snprintf(label, sizeof label, "upstream=\"%s\"", esc(c->upstreams[u].name, e2, sizeof e2));
        histogram(t, sum, "portico_upstream_request_duration_seconds", label, &x->duration);
    }
    obs_printf(t, "# HELP portico_upstream_errors_total Upstream attempts that failed (connect, timeout, reset, bad response).\n"
                  "# TYPE portico_upstream_errors_total counter\n");
    for (uint32_t u = 0; u < c->nupstreams; u++)
        obs_printf(t, "portico_upstream_errors_total{upstream=\"%s\"} %llu\n",
                   esc(c->upstreams[u].name, e2, sizeof e2),
                   (unsigned long long)ld(&sum->upstreams[u].errors));

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
out:
    obs_worker_free(sum);
    free(self);
    free(rmap);
    free(umap);
}

void obs_process_metrics(struct obs_text *t)
{
    /* /proc/self/stat: fields after the command (which may hold spaces and
     * parentheses, so parse from the last ')'): 3 state ... 14 utime 15 stime
     * ... 20 num_threads 22 starttime 23 vsize 24 rss (pages) */
    char buf[1024];
    FILE *f = fopen("/proc/self/stat", "r");
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f)
        fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    unsigned long long v[25] = { 0 };
    if (p) {
        p += 2;                         /* ") " then field 3 */
        for (int i = 3; i <= 24 && *p; i++) {
            char *end;
            v[i] = strtoull(p, &end, 10);
            if (end == p)               /* the state letter (field 3) */
                end = p + 1;
            p = end;
            while (*p == ' ')
                p++;
        }
    }
    long tck = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
    if (tck <= 0)
        tck = 100;
    /* the boot time, to turn starttime (ticks since boot) into a timestamp */
    double boot = 0;
    if ((f = fopen("/proc/stat", "r"))) {
        char line[256];
        while (fgets(line, sizeof line, f))
            if (!strncmp(line, "btime ", 6))
                boot = strtod(line + 6, NULL);
        fclose(f);
    }
    unsigned fds = 0;
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)))
            fds += e->d_name[0] != '.';
        closedir(d);
        if (fds)
            fds--;                      /* the directory's own descriptor */
    }
    struct rlimit rl = { 0, 0 };
    getrlimit(RLIMIT_NOFILE, &rl);
    obs_printf(t, "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n"
                  "# TYPE process_cpu_seconds_total counter\n"
                  "process_cpu_seconds_total %.2f\n"
                  "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
                  "# TYPE process_resident_memory_bytes gauge\n"
                  "process_resident_memory_bytes %llu\n"
                  "# HELP process_virtual_memory_bytes Virtual memory size in bytes.\n"
                  "# TYPE process_virtual_memory_bytes gauge\n"
                  "process_virtual_memory_bytes %llu\n"
                  "# HELP process_open_fds Number of open file descriptors.\n"
                  "# TYPE process_open_fds gauge\n"
                  "process_open_fds %u\n"
                  "# HELP process_max_fds Maximum number of open file descriptors.\n"
                  "# TYPE process_max_fds gauge\n"
                  "process_max_fds %llu\n"
                  "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n"
                  "# TYPE process_start_time_seconds gauge\n"
                  "process_start_time_seconds %.2f\n"
                  "# HELP process_threads Number of OS threads in the process.\n"
                  "# TYPE process_threads gauge\n"
                  "process_threads %llu\n",
               (double)(v[14] + v[15]) / (double)tck, v[24] * (unsigned long long)page, v[23], fds,
               rl.rlim_cur == RLIM_INFINITY ? 0ull : (unsigned long long)rl.rlim_cur,
               boot + (double)v[22] / (double)tck, v[20]);
}

void obs_totals(struct obs_worker *const *workers, size_t nworkers, struct obs_totals *out)
{
    memset(out, 0, sizeof *out);
    if (!nworkers)
        return;
    const struct obs_worker *first = workers[0];
    out->nbuckets = first->nbuckets;
    memcpy(out->bounds, first->layout->metrics.buckets, first->nbuckets * sizeof out->bounds[0]);
    for (size_t w = 0; w < nworkers; w++) {
        const struct obs_worker *x = workers[w];
        bool hist = same_buckets(first, x);
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
            if (!hist)
                continue;
            for (unsigned i = 0; i <= x->nbuckets; i++)
                out->duration_bucket[i] += ld(&rt->duration.bucket[i]);
            out->duration_count += ld(&rt->duration.count);
            out->duration_sum_us += ld(&rt->duration.sum_us);
        }
    }
}

void obs_log_metrics(struct obs_text *t)
{
    struct log_stats st;
    log_get_stats(&st);
    obs_printf(t, "# HELP portico_log_lines_total Diagnostic log lines written to stderr.\n"
                  "# TYPE portico_log_lines_total counter\n"
                  "portico_log_lines_total %llu\n"
                  "# HELP portico_log_lines_dropped_total Diagnostic log lines dropped because stderr did not keep up.\n"
                  "# TYPE portico_log_lines_dropped_total counter\n"
                  "portico_log_lines_dropped_total %llu\n"
                  "# HELP portico_log_lines_suppressed_total Diagnostic log lines held back by rate limits (summarised once a second).\n"
                  "# TYPE portico_log_lines_suppressed_total counter\n"
                  "portico_log_lines_suppressed_total %llu\n",
               (unsigned long long)st.written, (unsigned long long)st.dropped,
               (unsigned long long)st.suppressed);
}
