/* obs/obs.h: request metrics kept per worker and summed when scraped, and
 * their Prometheus text exposition.
 *
 * Each worker owns a struct obs_worker and is its only writer: updates are
 * relaxed atomic load+store pairs (plain moves on x86, no lock prefix), so
 * the request path pays a few instructions per metric. A scrape reads every
 * worker's values with relaxed loads and sums them; it may see one worker a
 * request ahead of another, never a torn value.
 *
 * Labels are bounded by the configuration: routes x method classes x a fixed
 * set of status codes, so no input can grow the registry. An obs_worker is
 * laid out for one configuration snapshot (its `layout`: the routes, the
 * upstreams, the histogram buckets). On a reload the worker makes a new one
 * for the new snapshot and carries the old counts over by name
 * (obs_worker_carry), so counters of routes and upstreams that stay keep
 * counting; requests still in flight on the old snapshot are recorded into
 * the new one through obs_map_routes / obs_map_upstreams.
 */
#ifndef PORTICO_OBS_H
#define PORTICO_OBS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

struct conf;

#define OBS_MAX_BUCKETS 30          /* histogram upper bounds (+Inf extra); = CONF_MAX_BUCKETS */
#define OBS_NMETHODS 9
#define OBS_NCODES 32
#define OBS_NONE UINT32_MAX         /* obs_map_*: no such route or upstream in the target */

typedef _Atomic uint64_t obs_counter;

/* A duration histogram: per-bucket (not cumulative) counts, the last one +Inf. */
struct obs_hist {
    obs_counter bucket[OBS_MAX_BUCKETS + 1];
    obs_counter sum_us;
    obs_counter count;
};

/* Per-route counters of one worker. */
struct obs_route {
    obs_counter requests[OBS_NMETHODS][OBS_NCODES];
    struct obs_hist duration;
};

/* Per-upstream counters of one worker. */
struct obs_upstream {
    struct obs_hist duration;
    obs_counter errors;             /* attempts that failed (connect, timeout, reset) */
};

struct obs_worker {
    struct conf *layout;            /* a reference: route and upstream names, buckets */
    struct obs_route *routes;       /* [layout->nroutes + 1]: the last one is "no route" */
    struct obs_upstream *upstreams; /* [layout->nupstreams] */
    uint32_t nroutes, nupstreams, nbuckets;
    bool enabled;                   /* layout->metrics.enabled */
    uint64_t bucket_us[OBS_MAX_BUCKETS];
    obs_counter conns_total;
    obs_counter conns_active;       /* gauge, kept as accepted - closed */
    obs_counter conns_closed;
    obs_counter bytes_in, bytes_out;
    obs_counter rejected;           /* malformed requests answered 4xx by the parser */
};

/* Allocate a worker's counters laid out for `c` (takes a reference to it).
 * NULL on out of memory. */
struct obs_worker *obs_worker_new(struct conf *c);
void obs_worker_free(struct obs_worker *w);

/* Add everything counted in `from` to `to`: routes by host+prefix, upstreams
 * by name, histograms only when the bucket bounds are the same (otherwise
 * they start again from zero). Both belong to the calling worker. */
void obs_worker_carry(struct obs_worker *to, const struct obs_worker *from);

/* map[i] for each route i of `from` (and its "no route" slot at
 * from->nroutes): the index of the route with the same host and prefix in
 * `to` (the first one, if several), to->nroutes for "no route", or OBS_NONE.
 * obs_map_upstreams: by name, map[i] for i < from->nupstreams. */
void obs_map_routes(const struct conf *from, const struct conf *to, uint32_t *map);
void obs_map_upstreams(const struct conf *from, const struct conf *to, uint32_t *map);

static inline void obs_add(obs_counter *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

/* Record one finished request: route index in w's layout (nroutes or
 * OBS_NONE for "no route"), method, status, total duration. */
void obs_request(struct obs_worker *w, uint32_t route, const char *method, size_t method_len,
                 int status, uint64_t duration_us);
/* Record one upstream attempt that produced a response head (upstream index
 * in w's layout; OBS_NONE: not counted). */
void obs_upstream_time(struct obs_worker *w, uint32_t upstream, uint64_t duration_us);

/* Prometheus text exposition (format 0.0.4) of the sum over `workers`, plus
 * whatever the caller appends (upstream health, process metrics). Series are
 * named after workers[0]'s layout; a worker laid out for another snapshot
 * (one that has not switched yet during a reload) is mapped by name. */
struct obs_text {
    char *buf;
    size_t len, cap;
    int oom;
};
void obs_printf(struct obs_text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void obs_expose(struct obs_text *t, struct obs_worker *const *workers, size_t nworkers);

/* The standard process metrics every Prometheus client library exports
 * (process_cpu_seconds_total, process_resident_memory_bytes,
 * process_virtual_memory_bytes, process_open_fds, process_max_fds,
 * process_start_time_seconds, process_threads), read from /proc/self. The
 * CPU alert and the dashboard in deploy/ use them. */
void obs_process_metrics(struct obs_text *t);

/* The diagnostic log's counters (core/log.h): portico_log_lines_total (written),
 * portico_log_lines_dropped_total (the ring was full: stderr did not keep up),
 * portico_log_lines_suppressed_total (held back by a rate limit, summarised). */
void obs_log_metrics(struct obs_text *t);

/* Totals over workers, for the status page. The histogram is over the
 * buckets of workers[0]'s layout (workers with other buckets are left out of
 * it); `bounds` are those buckets in seconds. */
struct obs_totals {
    uint64_t requests, errors_5xx, errors_4xx, conns_active, conns_total, bytes_in, bytes_out;
    uint32_t nbuckets;
    double bounds[OBS_MAX_BUCKETS];
    uint64_t duration_bucket[OBS_MAX_BUCKETS + 1];
    uint64_t duration_count, duration_sum_us;
};
void obs_totals(struct obs_worker *const *workers, size_t nworkers, struct obs_totals *out);

/* ---- access log ----
 *
 * JSON lines, one per request, written by a background thread so that a
 * worker never blocks on a slow disk or pipe. Each worker formats lines into
 * its own obs_alog_buf and hands full buffers (and partial ones, when the
 * caller decides: the proxy after access_log.flush) to the writer. The
 * hand-off queue is bounded: if the writer falls behind by more than
 * OBS_ALOG_QUEUE buffers, lines are dropped, counted and warned about (at
 * most once a second) rather than memory growing without bound. The audit
 * log is a second writer of the same kind with its own line format.
 */
#define OBS_ALOG_BUF (64 * 1024)
#define OBS_ALOG_QUEUE 256

struct obs_alog;

struct obs_alog_buf {
    struct obs_alog *log;
    char *data;                     /* OBS_ALOG_BUF bytes, NULL when the log is off */
    size_t len;
    time_t second;                  /* cache of the formatted time, per second */
    char stamp[24];                 /* "2026-11-22T05:30:00" */
};

struct obs_alog_entry {
    const char *request_id;
    size_t request_id_len;
    const char *client;             /* address text */
    const char *method, *path, *route, *upstream, *server;
    size_t method_len, path_len;
    int status;
    uint64_t bytes_in, bytes_out;
    uint64_t duration_us, upstream_us;  /* upstream_us 0: no upstream answered */
    const char *cache;              /* the cache's result (hit, miss...); NULL: not cached */
};

/* Open "stdout", "stderr" or a file (appended to). NULL with err on failure. */
struct obs_alog *obs_alog_open(const char *path, char *err, size_t errlen);
/* Reopen the file (after log rotation). Thread-safe. */
void obs_alog_reopen(struct obs_alog *l);
/* Flush everything queued and stop the writer. */
void obs_alog_close(struct obs_alog *l);
uint64_t obs_alog_dropped(const struct obs_alog *l);

void obs_alog_buf_init(struct obs_alog_buf *b, struct obs_alog *l);
void obs_alog_buf_free(struct obs_alog_buf *b);
void obs_alog_write(struct obs_alog_buf *b, const struct obs_alog_entry *e);
/* Hand what is buffered to the writer. */
void obs_alog_flush(struct obs_alog_buf *b);

/* ---- audit log ----
 *
 * One JSON line per request on a route with `audit: true`: who (client
 * address, X-Forwarded-For as received, the Basic-auth user name, never a
 * password or token), what (method, host, target, route), when, where it went
 * (upstream, server) and the outcome. Written with an obs_alog of its own. */
struct obs_audit_entry {
    const char *request_id;
    size_t request_id_len;
    const char *client;             /* address text */
    const char *forwarded_for, *user, *user_agent, *host;   /* NULL: absent */
    size_t forwarded_for_len, user_len, user_agent_len, host_len;
    const char *method, *path, *route, *upstream, *server;  /* upstream, server: NULL ok */
    size_t method_len, path_len;
    int status;                     /* 499: the client went away first */
    uint64_t bytes_in, bytes_out, duration_us;
};
void obs_audit_write(struct obs_alog_buf *b, const struct obs_audit_entry *e);

/* "success" (1xx-3xx), "denied" (401, 403, 407, 429), "aborted" (499: the
 * client went away before the response), "failure" (any other). */
const char *obs_audit_outcome(int status);

/* The user name of an `Authorization: Basic <base64 user:password>` value:
 * its length (copied to out, at most outlen bytes, cut there), or 0 when the
 * value is not Basic, not valid base64 or has no ':'. Only the bytes before
 * the ':' are ever decoded into out: the password is not copied anywhere. */
size_t obs_basic_user(const char *value, size_t len, char *out, size_t outlen);

#endif
