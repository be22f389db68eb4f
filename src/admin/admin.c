/* admin/admin.c: see admin.h. */
#include "admin.h"
#include "status_page.h"

#include "balance/balance.h"
#include "cache/cache.h"
#include "conf/conf.h"
#include "core/log.h"
#include "core/loop.h"
#include "http/http.h"
#include "limit/limit.h"
#include "obs/obs.h"
#include "pg/pg.h"
#include "proxy/proxy.h"

#include <errno.h>
#include <stddef.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <sys/socket.h>
#include <unistd.h>

#define ADMIN_MAX_REQUEST 8192     /* a request head; more is answered 431 */
#define ADMIN_MAX_CONNS 256        /* at the limit the least recently active one is closed */
#define ADMIN_MAX_PER_TURN 32      /* pipelined requests served before others get a turn */
#define ADMIN_MAX_WORKERS 256
#define ADMIN_ACCEPT_RETRY_MS 100  /* after EMFILE/ENFILE/ENOMEM */

/* One admin connection, owned by the admin thread.
 *   READ:   waiting for (the rest of) a request head; header timeout from its first
 *           byte (or from accept), idle timeout between keep-alive requests
 *   WRITE:  a response is being written; send timeout between two writes that progress
 *   RELOAD: POST /reload runs in the reload thread; no timer, no reads, and the
 *           connection is never closed in this state (the reload will answer it) */
enum aconn_state { AC_READ, AC_WRITE, AC_RELOAD };

struct aconn {
    struct loop_io io;
    struct loop_timer timer;
    struct admin *a;
    struct aconn *prev, *next;      /* a->conns, all connections */
    struct aconn *rq_next;          /* a->rq_head: waiting for their turn to reload */
    enum aconn_state st;
    bool readable, eof, close_after, is_head, resume;
    bool dead;                      /* closed: on a->grave until the loop sleeps */
    uint64_t last_active;           /* ms, for eviction at ADMIN_MAX_CONNS */
    size_t inlen;
    char head[768];                 /* the response head being written */
    size_t headlen;
    const char *body;               /* static, or body_owned */
    char *body_owned;
    size_t bodylen, off;            /* off: bytes of head+body written */
    char in[ADMIN_MAX_REQUEST];
};

struct admin {
    struct proxy *p;
    int fd;
    struct loop *loop;
    struct loop_io lio;
    struct loop_timer accept_timer;
    pthread_t thread;
    bool running;
    atomic_bool stopping;
    uint64_t started_ms;
    struct aconn *conns;
    unsigned nconns;
    /* Closed connections, freed before the loop sleeps: one closed from
     * another's callback (eviction, a reload's queue) may still have an
     * event later in the same epoll batch. */
    struct aconn *grave;
    uint64_t header_timeout, idle_timeout, send_timeout;   /* from the running conf */
    /* POST /reload: one at a time in a thread of its own, since proxy_reload()
     * blocks until every worker has switched; the rest queue behind it. */
    bool rbusy;
    pthread_t rthread;
    atomic_bool rdone;
    int rrc;
    char rerr[1024];
    struct aconn *rconn, *rq_head, *rq_tail;
};

static void conn_close(struct aconn *c);
static void conn_drive(struct aconn *c);

/* Queue a response on c: a head built here and `len` bytes of body (none for
 * HEAD). `owned`: body was malloc'd and is freed with the connection's
 * response. The caller drives the connection to write it. */
static void respond_owned(struct aconn *c, int status, const char *ctype, const char *body,
                          size_t len, const char *extra, char *owned)
{
    int n = snprintf(c->head, sizeof c->head,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "Cache-Control: no-store\r\n%s%s\r\n",
                     status, http_reason(status), ctype, len, extra ? extra : "",
                     c->close_after ? "Connection: close\r\n" : "");
    if (n < 0 || (size_t)n >= sizeof c->head) {     /* the extras are constants that fit */
        n = snprintf(c->head, sizeof c->head,
                     "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n"
                     "Connection: close\r\n\r\n");
        c->close_after = true;
        len = 0;
    }
    c->headlen = (size_t)n;
    c->body = body;
    c->body_owned = owned;
    c->bodylen = c->is_head ? 0 : len;
    c->off = 0;
    c->st = AC_WRITE;
}

static void respond(struct aconn *c, int status, const char *ctype, const char *body, size_t len,
                    const char *extra)
{
    respond_owned(c, status, ctype, body, len, extra, NULL);
}

static void text(struct aconn *c, int status, const char *body)
{
    respond(c, status, "text/plain; charset=utf-8", body, strlen(body), NULL);
}

static const char *state_name(enum balance_state s)
{
    switch (s) {
    case BALANCE_UP: return "up";
    default: return "down";
    }
}

static bool ready(const struct proxy_gen *g)
{
    const struct conf *c = proxy_gen_conf(g);
    uint64_t now = loop_clock_ms();
    for (uint32_t u = 0; u < c->nupstreams; u++) {
        struct balance_group *bg = proxy_gen_group(g, u);
        bool any = false;
        for (uint32_t s = 0; s < balance_group_size(bg) && !any; s++)
            any = balance_server_state(bg, (int)s, now) == BALANCE_UP;
        if (!any)
            return false;
    }
    return true;
}

static void upstream_metrics(const struct proxy_gen *g, struct obs_text *t)
{
    const struct conf *c = proxy_gen_conf(g);
    uint64_t now = loop_clock_ms();
    obs_printf(t, "# HELP portico_upstream_up Whether a server is in service (1) or out (0).\n"
                  "# TYPE portico_upstream_up gauge\n");
    for (uint32_t u = 0; u < c->nupstreams; u++) {
        struct balance_group *bg = proxy_gen_group(g, u);
        for (uint32_t s = 0; s < balance_group_size(bg); s++)
            obs_printf(t, "portico_upstream_up{upstream=\"%s\",server=\"%s\"} %d\n",
                       balance_group_name(bg), balance_server_name(bg, (int)s),
                       balance_server_state(bg, (int)s, now) == BALANCE_UP);
    }
    obs_printf(t, "# HELP portico_upstream_active_requests Requests in flight per server.\n"
                  "# TYPE portico_upstream_active_requests gauge\n");
    for (uint32_t u = 0; u < c->nupstreams; u++) {
        struct balance_group *bg = proxy_gen_group(g, u);
        for (uint32_t s = 0; s < balance_group_size(bg); s++)
            obs_printf(t, "portico_upstream_active_requests{upstream=\"%s\",server=\"%s\"} %u\n",
                       balance_group_name(bg), balance_server_name(bg, (int)s),
                       balance_server_active(bg, (int)s));
    }
    obs_printf(t, "# HELP portico_upstream_state_changes_total Times a server went up or down.\n"
                  "# TYPE portico_upstream_state_changes_total counter\n");
    for (uint32_t u = 0; u < c->nupstreams; u++) {
        struct balance_group *bg = proxy_gen_group(g, u);
        for (uint32_t s = 0; s < balance_group_size(bg); s++)
            obs_printf(t, "portico_upstream_state_changes_total{upstream=\"%s\",server=\"%s\"} %llu\n",
                       balance_group_name(bg), balance_server_name(bg, (int)s),
                       (unsigned long long)balance_server_changes(bg, (int)s));
    }
}

static void log_metrics(const struct proxy_gen *g, struct obs_text *t)
{
    uint64_t access, audit;
    proxy_gen_log_drops(g, &access, &audit);
    obs_printf(t, "# HELP portico_access_log_dropped_total Access log lines dropped because the writer fell behind.\n"
                  "# TYPE portico_access_log_dropped_total counter\n"
                  "portico_access_log_dropped_total %llu\n"
                  "# HELP portico_audit_log_dropped_total Audit log lines dropped because the writer fell behind.\n"
                  "# TYPE portico_audit_log_dropped_total counter\n"
                  "portico_audit_log_dropped_total %llu\n",
               (unsigned long long)access, (unsigned long long)audit);
}

static void reload_metrics(struct admin *a, struct obs_text *t)
{
    struct proxy_reload_stats st;
    proxy_reload_stats(a->p, &st);
    obs_printf(t, "# HELP portico_config_generation Number of the running configuration (1 at start, +1 per reload).\n"
                  "# TYPE portico_config_generation gauge\n"
                  "portico_config_generation %llu\n"
                  "# HELP portico_config_reloads_total Configuration reloads, by result.\n"
                  "# TYPE portico_config_reloads_total counter\n"
                  "portico_config_reloads_total{result=\"success\"} %llu\n"
                  "portico_config_reloads_total{result=\"failure\"} %llu\n"
                  "# HELP portico_config_last_reload_successful Whether the last reload was applied (1) or refused (0); 1 before any.\n"
                  "# TYPE portico_config_last_reload_successful gauge\n"
                  "portico_config_last_reload_successful %d\n"
                  "# HELP portico_config_loaded_timestamp_seconds When the running configuration was loaded.\n"
                  "# TYPE portico_config_loaded_timestamp_seconds gauge\n"
                  "portico_config_loaded_timestamp_seconds %lld\n",
               (unsigned long long)st.generation, (unsigned long long)st.ok,
               (unsigned long long)st.failed, st.last_attempt == 0 || st.last_ok,
               (long long)st.loaded_at);
}

/* JSON string body (escaped), for messages that may quote file contents. */
static void json_text(struct obs_text *t, const char *s)
{
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            obs_printf(t, "\\%c", ch);
        else if (ch < 0x20 || ch >= 0x7f)
            obs_printf(t, "\\u%04x", ch);
        else
            obs_printf(t, "%c", ch);
    }
}

static void status_json(struct admin *a, const struct proxy_gen *g, struct obs_text *t)
{
    struct obs_worker *ws[ADMIN_MAX_WORKERS];
    struct obs_totals tot;
    size_t n = proxy_obs_lock(a->p, ws, ADMIN_MAX_WORKERS);
    obs_totals(ws, n, &tot);
    proxy_obs_unlock(a->p);
    struct proxy_reload_stats st;
    proxy_reload_stats(a->p, &st);
    const struct conf *c = proxy_gen_conf(g);
    uint64_t now = loop_clock_ms();
    obs_printf(t, "{\"uptime_seconds\":%.3f,\"workers\":%zu,\"requests\":%llu,\"errors_4xx\":%llu,"
                  "\"errors_5xx\":%llu,\"connections_active\":%llu,\"connections_total\":%llu,"
                  "\"bytes_in\":%llu,\"bytes_out\":%llu,\"duration_sum_seconds\":%.6f,"
                  "\"duration_buckets\":[",
               (double)(now - a->started_ms) / 1000.0, n, (unsigned long long)tot.requests,
               (unsigned long long)tot.errors_4xx, (unsigned long long)tot.errors_5xx,
               (unsigned long long)tot.conns_active, (unsigned long long)tot.conns_total,
               (unsigned long long)tot.bytes_in, (unsigned long long)tot.bytes_out,
               (double)tot.duration_sum_us / 1e6);
    for (unsigned i = 0; i < tot.nbuckets; i++)
        obs_printf(t, "%s{\"le\":%g,\"count\":%llu}", i ? "," : "", tot.bounds[i],
                   (unsigned long long)tot.duration_bucket[i]);
    obs_printf(t, "%s{\"le\":\"+Inf\",\"count\":%llu}", tot.nbuckets ? "," : "",
               (unsigned long long)tot.duration_bucket[tot.nbuckets]);
    obs_printf(t, "],\"config\":{\"path\":\"");
    json_text(t, c->path);
    obs_printf(t, "\",\"generation\":%llu,\"loaded_at\":%lld,\"reloads_ok\":%llu,"
                  "\"reloads_failed\":%llu,\"last_reload_ok\":%s,\"last_error\":",
               (unsigned long long)st.generation, (long long)st.loaded_at,
               (unsigned long long)st.ok, (unsigned long long)st.failed,
               st.last_attempt == 0 || st.last_ok ? "true" : "false");
    if (st.last_error[0]) {
        obs_printf(t, "\"");
        json_text(t, st.last_error);
        obs_printf(t, "\"");
    } else {
        obs_printf(t, "null");
    }
    obs_printf(t, "},\"upstreams\":[");
    for (uint32_t u = 0; u < c->nupstreams; u++) {
        struct balance_group *bg = proxy_gen_group(g, u);
        obs_printf(t, "%s{\"name\":\"%s\",\"servers\":[", u ? "," : "", balance_group_name(bg));
        for (uint32_t s = 0; s < balance_group_size(bg); s++)
            obs_printf(t, "%s{\"address\":\"%s\",\"state\":\"%s\",\"backup\":%s,\"active\":%u,"
                          "\"state_changes\":%llu}",
                       s ? "," : "", balance_server_name(bg, (int)s),
                       state_name(balance_server_state(bg, (int)s, now)),
                       balance_server_backup(bg, (int)s) ? "true" : "false",
                       balance_server_active(bg, (int)s),
                       (unsigned long long)balance_server_changes(bg, (int)s));
        obs_printf(t, "]}");
    }
    obs_printf(t, "]");
    bool limited = c->nallow || c->ndeny;
    for (uint32_t i = 0; i < c->nroutes && !limited; i++)
        limited = c->routes[i].nlimits || c->routes[i].guard.enabled || c->routes[i].nallow ||
                  c->routes[i].ndeny;
    if (limited) {              /* the status page's rate limiting card */
        obs_printf(t, ",\"rate_limit\":");
        limit_status_json(t);
    }
    if (c->cache_used || cache_get()) {     /* the status page's cache card */
        obs_printf(t, ",\"cache\":");
        cache_status_json(t);
    }
    if (pg_running()) {         /* the pooler's pools, as GET /pools has them */
        obs_printf(t, ",\"postgres\":");
        pg_pools_json(t);
    }
    obs_printf(t, "}\n");
}

/* Constant-time comparison of the presented token. */
static bool token_ok(const struct conf *c, const struct http_request *r)
{
    if (!c->admin_token)
        return true;
    size_t tl = strlen(c->admin_token);
    for (uint32_t i = 0; i < r->m.nheaders; i++) {
        const struct http_header *h = &r->m.headers[i];
        if (h->name_len != 13 || !http_ieq(h->name, "authorization", 13))
            continue;
        if (h->value_len != 7 + tl || !http_ieq(h->value, "bearer ", 7))
            return false;
        unsigned char diff = 0;
        for (size_t k = 0; k < tl; k++)
            diff |= (unsigned char)(h->value[7 + k] ^ c->admin_token[k]);
        return diff == 0;
    }
    return false;
}

static void reload_start(struct admin *a, struct aconn *c);

static void serve_request(struct admin *a, struct aconn *c, const struct http_request *r,
                          const struct proxy_gen *g)
{
    const char *path = r->path ? r->path : "/";
    size_t plen = r->path ? r->path_len : 1;
    const char *q = memchr(path, '?', plen);
    if (q)
        plen = (size_t)(q - path);
#define PATH_IS(lit) (plen == sizeof(lit) - 1 && memcmp(path, lit, plen) == 0)
    bool get = r->method_len == 3 && memcmp(r->method, "GET", 3) == 0;
    bool head = r->is_head;
    bool post = r->method_len == 4 && memcmp(r->method, "POST", 4) == 0;
    bool cache = plen > 7 && memcmp(path, "/cache/", 7) == 0;
    if (PATH_IS("/reload") || cache) {
        if (!post) {
            respond(c, 405, "text/plain", "POST only\n", 10, "Allow: POST\r\n");
            return;
        }
    } else if (!get && !head) {
        respond(c, 405, "text/plain", "GET only\n", 9, "Allow: GET, HEAD\r\n");
        return;
    }
    if (PATH_IS("/")) {
        /* The status page holds no data (its script fetches /status with the
         * token), so it is open; the policy forbids every outside source. */
        respond(c, 200, "text/html; charset=utf-8", status_page_html, status_page_len,
                "Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; "
                "style-src 'unsafe-inline'; connect-src 'self'; img-src data:; "
                "base-uri 'none'; form-action 'none'; frame-ancestors 'none'\r\n"
                "X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n");
        return;
    }
    if (PATH_IS("/health")) {
        text(c, 200, "ok\n");
        return;
    }
    if (PATH_IS("/ready")) {
        if (ready(g))
            text(c, 200, "ready\n");
        else
            text(c, 503, "not ready: an upstream has no server up\n");
        return;
    }
    if (!token_ok(proxy_gen_conf(g), r)) {
        respond(c, 401, "text/plain", "unauthorized\n", 13,
                "WWW-Authenticate: Bearer realm=\"portico admin\"\r\n");
        return;
    }
    if (PATH_IS("/reload")) {
        reload_start(a, c);
        return;
    }
    struct obs_text t = { 0 };
    if (cache) {                /* purge and bump (cache/admin.c) */
        int st = q ? cache_admin(path, plen, q + 1, r->path_len - plen - 1, &t)
                   : cache_admin(path, plen, "", 0, &t);
        if (!t.oom) {
            respond_owned(c, st, "application/json", t.buf, t.len, NULL, t.buf);
            return;
        }
        free(t.buf);
        text(c, 500, "out of memory\n");
        return;
    }
    if (PATH_IS("/metrics")) {
        struct obs_worker *ws[ADMIN_MAX_WORKERS];
        size_t nw = proxy_obs_lock(a->p, ws, ADMIN_MAX_WORKERS);
        obs_expose(&t, ws, nw);
        proxy_obs_unlock(a->p);
        upstream_metrics(g, &t);
        reload_metrics(a, &t);
        log_metrics(g, &t);
        obs_log_metrics(&t);
        limit_metrics(&t);
        cache_metrics(&t);
        obs_process_metrics(&t);
        pg_metrics(&t);
        if (!t.oom) {
            respond_owned(c, 200, "text/plain; version=0.0.4; charset=utf-8", t.buf, t.len, NULL,
                          t.buf);
            return;
        }
    } else if (PATH_IS("/limits/top")) {
        limit_top_json(&t, 64);     /* the most refused clients */
        obs_printf(&t, "\n");
        if (!t.oom) {
            respond_owned(c, 200, "application/json", t.buf, t.len, NULL, t.buf);
            return;
        }
    } else if (PATH_IS("/pools")) {
        pg_pools_json(&t);      /* the pooler's SHOW POOLS */
        obs_printf(&t, "\n");
        if (!t.oom) {
            respond_owned(c, 200, "application/json", t.buf, t.len, NULL, t.buf);
            return;
        }
    } else if (PATH_IS("/status")) {
        status_json(a, g, &t);
        if (!t.oom) {
            respond_owned(c, 200, "application/json", t.buf, t.len, NULL, t.buf);
            return;
        }
    } else {
        text(c, 404, "not found: try /, /health, /ready, /metrics, /status, /pools, /limits/top, POST /reload, POST /cache/purge, POST /cache/bump\n");
        return;
    }
    free(t.buf);
    text(c, 500, "out of memory\n");
#undef PATH_IS
}

/* ---------------------------------------------------------------- POST /reload */

static void *reload_main(void *arg)
{
    struct admin *a = arg;
    a->rrc = proxy_reload(a->p, a->rerr, sizeof a->rerr);
    if (a->rrc == 0) {
        struct proxy_gen *g = proxy_gen_get(a->p);
        log_set_level(proxy_gen_conf(g)->log_level);
        proxy_gen_put(g);
    }
    atomic_store(&a->rdone, true);
    loop_wake(a->loop);
    return NULL;
}

/* Run the reload for c now, or queue c behind the one running. */
static void reload_start(struct admin *a, struct aconn *c)
{
    c->st = AC_RELOAD;
    loop_timer_stop(a->loop, &c->timer);
    if (a->rbusy) {
        c->rq_next = NULL;
        if (a->rq_tail)
            a->rq_tail->rq_next = c;
        else
            a->rq_head = c;
        a->rq_tail = c;
        return;
    }
    a->rbusy = true;
    a->rconn = c;
    atomic_store(&a->rdone, false);
    int rc = pthread_create(&a->rthread, NULL, reload_main, a);
    if (rc) {
        a->rbusy = false;
        a->rconn = NULL;
        c->close_after = true;
        text(c, 503, "cannot start the reload: no thread\n");
    }
}

/* The reload thread has finished (admin thread, from the wake callback):
 * answer its connection and start the next queued one. */
static void reload_finish(struct admin *a)
{
    pthread_join(a->rthread, NULL);
    a->rbusy = false;
    struct aconn *c = a->rconn;
    a->rconn = NULL;
    struct obs_text t = { 0 };
    int status;
    if (a->rrc == 0) {
        struct proxy_reload_stats st;
        proxy_reload_stats(a->p, &st);
        obs_printf(&t, "{\"reloaded\":true,\"generation\":%llu}\n",
                   (unsigned long long)st.generation);
        status = 200;
    } else {
        obs_printf(&t, "{\"reloaded\":false,\"error\":\"");
        json_text(&t, a->rerr);
        obs_printf(&t, "\"}\n");
        status = 422;   /* the request was fine; the file it asked to load was not */
    }
    if (t.oom) {
        free(t.buf);
        text(c, 500, "out of memory\n");
    } else {
        respond_owned(c, status, "application/json", t.buf, t.len, NULL, t.buf);
    }
    while (a->rq_head && !a->rbusy) {
        struct aconn *n = a->rq_head;
        a->rq_head = n->rq_next;
        if (!a->rq_head)
            a->rq_tail = NULL;
        reload_start(a, n);
        if (n->st != AC_RELOAD)
            conn_drive(n);
    }
    conn_drive(c);
}

/* ---------------------------------------------------------------- connections */

static void conn_timer_cb(struct loop *l, struct loop_timer *t)
{
    (void)l;
    struct aconn *c = (struct aconn *)((char *)t - offsetof(struct aconn, timer));
    if (c->dead)
        return;
    if (c->resume) {                /* not a timeout: its turn came again */
        c->resume = false;
        conn_drive(c);
        return;
    }
    conn_close(c);                  /* header, idle or send timeout */
}

static void conn_free_response(struct aconn *c)
{
    free(c->body_owned);
    c->body_owned = NULL;
    c->body = NULL;
    c->bodylen = c->headlen = c->off = 0;
}

static void conn_close(struct aconn *c)
{
    struct admin *a = c->a;
    if (c->dead)
        return;
    c->dead = true;
    loop_timer_stop(a->loop, &c->timer);
    loop_del(a->loop, &c->io);
    close(c->io.fd);
    c->io.fd = -1;
    if (c->prev)
        c->prev->next = c->next;
    else
        a->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    a->nconns--;
    conn_free_response(c);
    c->next = a->grave;
    a->grave = c;
}

static void bury(struct loop *l, void *arg)
{
    (void)l;
    struct admin *a = arg;
    while (a->grave) {
        struct aconn *c = a->grave;
        a->grave = c->next;
        free(c);
    }
}

/* Write what is queued. 1: all written, 0: the socket is full, -1: error. */
static int conn_flush(struct aconn *c)
{
    while (c->off < c->headlen + c->bodylen) {
        struct iovec iov[2];
        int n = 0;
        if (c->off < c->headlen)
            iov[n++] = (struct iovec){ c->head + c->off, c->headlen - c->off };
        size_t boff = c->off > c->headlen ? c->off - c->headlen : 0;
        if (c->bodylen > boff)
            iov[n++] = (struct iovec){ (char *)c->body + boff, c->bodylen - boff };
        struct msghdr msg = { .msg_iov = iov, .msg_iovlen = (size_t)n };
        ssize_t w = sendmsg(c->io.fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
        }
        c->off += (size_t)w;
        c->last_active = loop_now(c->a->loop);
        loop_timer_arm(c->a->loop, &c->timer, c->a->send_timeout);
    }
    return 1;
}

/* Read into c->in while there is room. false: the connection failed. */
static bool conn_read(struct aconn *c)
{
    while (c->readable && !c->eof && c->inlen < sizeof c->in) {
        ssize_t got = read(c->io.fd, c->in + c->inlen, sizeof c->in - c->inlen);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                c->readable = false;
                break;
            }
            return false;
        }
        if (got == 0) {
            c->eof = true;
            break;
        }
        bool first = c->inlen == 0;
        c->inlen += (size_t)got;
        c->last_active = loop_now(c->a->loop);
        if (first)      /* a request has begun: the whole head within header_timeout */
            loop_timer_arm(c->a->loop, &c->timer, c->a->header_timeout);
    }
    return true;
}

/* Parse and serve the request at the start of c->in, if it is complete.
 * 1: served (a response is queued or a reload runs), 0: waiting for bytes,
 * -1: close the connection. */
static int conn_serve_one(struct aconn *c)
{
    struct admin *a = c->a;
    struct http_header hdrs[64];
    uint8_t kinds[64];
    struct http_limits lim = { 4096, sizeof c->in, 64 };
    struct http_request r;
    r.m.headers = hdrs;
    r.m.kinds = kinds;
    int n = c->inlen ? http_parse_request(c->in, c->inlen, &r, &lim) : HTTP_AGAIN;
    if (n == HTTP_AGAIN) {
        if (c->inlen == sizeof c->in) {
            c->close_after = true;
            c->is_head = false;
            text(c, 431, "request head too large\n");
            return 1;
        }
        return c->eof ? -1 : 0;
    }
    c->is_head = false;
    if (n < 0) {
        c->close_after = true;
        text(c, r.m.status, "bad request\n");
        return 1;
    }
    c->is_head = r.is_head;
    /* No admin request has a body: one that comes with a body is answered
     * and the connection closed, so its bytes are never read as a request. */
    bool body = r.m.body == HTTP_BODY_CHUNKED ||
                (r.m.body == HTTP_BODY_LENGTH && r.m.content_length > 0);
    c->close_after = !r.m.keep_alive || body || c->eof || atomic_load(&a->stopping);
    struct proxy_gen *g = proxy_gen_get(a->p);
    const struct conf *conf = proxy_gen_conf(g);
    a->header_timeout = conf->admin_header_timeout;
    a->idle_timeout = conf->admin_idle_timeout;
    a->send_timeout = conf->admin_send_timeout;
    serve_request(a, c, &r, g);
    proxy_gen_put(g);
    /* the parsed request points into c->in: drop it only now */
    memmove(c->in, c->in + n, c->inlen - (size_t)n);
    c->inlen -= (size_t)n;
    return 1;
}

/* Move c as far as it can go: write what is queued, then serve the next
 * request (pipelined ones in a bounded loop, never by recursion). */
static void conn_drive(struct aconn *c)
{
    struct admin *a = c->a;
    for (int turn = 0; turn < ADMIN_MAX_PER_TURN; turn++) {
        if (c->st == AC_RELOAD)
            return;
        if (c->st == AC_WRITE) {
            int w = conn_flush(c);
            if (w < 0) {
                conn_close(c);
                return;
            }
            if (w == 0) {
                if (!loop_timer_armed(&c->timer))
                    loop_timer_arm(a->loop, &c->timer, a->send_timeout);
                return;
            }
            conn_free_response(c);
            if (c->close_after) {
                /* let the client read the response before the close */
                shutdown(c->io.fd, SHUT_WR);
                conn_close(c);
                return;
            }
            c->st = AC_READ;
            /* between requests: the idle timeout, or the header timeout of
             * one already begun (pipelined) */
            loop_timer_arm(a->loop, &c->timer, c->inlen ? a->header_timeout : a->idle_timeout);
        }
        if (!conn_read(c)) {
            conn_close(c);
            return;
        }
        int s = conn_serve_one(c);
        if (s < 0) {
            conn_close(c);
            return;
        }
        if (s == 0)
            return;
    }
    /* Served ADMIN_MAX_PER_TURN requests: let the other connections have
     * the thread, and come back on the next loop iteration. */
    c->resume = true;
    loop_timer_stop(a->loop, &c->timer);
    loop_timer_arm(a->loop, &c->timer, 1);
}

static void conn_io(struct loop *l, struct loop_io *io, unsigned events)
{
    (void)l;
    struct aconn *c = (struct aconn *)io;
    if (c->dead)            /* closed earlier in this batch */
        return;
    if (events & LOOP_READ)
        c->readable = true;
    if (c->resume)          /* a turn is already scheduled */
        return;
    conn_drive(c);
}

/* At ADMIN_MAX_CONNS: close the least recently active connection that is not
 * waiting for a reload, so that a probe always gets in. a->conns is newest
 * first, so among equally old ones the earliest accepted goes. */
static bool evict_one(struct admin *a)
{
    struct aconn *victim = NULL;
    for (struct aconn *c = a->conns; c; c = c->next)
        if (c->st != AC_RELOAD && (!victim || c->last_active <= victim->last_active))
            victim = c;
    if (!victim)
        return false;
    conn_close(victim);
    return true;
}

static void listener_io(struct loop *l, struct loop_io *io, unsigned events)
{
    (void)events;
    struct admin *a = (struct admin *)((char *)io - offsetof(struct admin, lio));
    while (!atomic_load(&a->stopping)) {
        int fd = accept4(a->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                /* out of descriptors or memory: the queue is not drained and
                 * no new edge will come for it, so try again shortly */
                log_rl_warn("admin: accept: %s", strerror(errno));
                loop_timer_arm(l, &a->accept_timer, ADMIN_ACCEPT_RETRY_MS);
            }
            return;
        }
        if (a->nconns >= ADMIN_MAX_CONNS && !evict_one(a)) {
            close(fd);
            continue;
        }
        struct aconn *c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            continue;
        }
        c->a = a;
        c->io.fd = fd;
        c->io.cb = conn_io;
        c->timer.cb = conn_timer_cb;
        c->st = AC_READ;
        c->last_active = loop_now(l);
        if (loop_add(l, &c->io) < 0) {
            close(fd);
            free(c);
            continue;
        }
        c->next = a->conns;
        if (a->conns)
            a->conns->prev = c;
        a->conns = c;
        a->nconns++;
        /* nothing sent yet: the head must still arrive within header_timeout */
        loop_timer_arm(l, &c->timer, a->header_timeout);
    }
}

static void accept_retry(struct loop *l, struct loop_timer *t)
{
    struct admin *a = (struct admin *)((char *)t - offsetof(struct admin, accept_timer));
    listener_io(l, &a->lio, LOOP_READ);
}

static void admin_wake(struct loop *l, void *arg)
{
    struct admin *a = arg;
    if (atomic_load(&a->stopping)) {
        loop_stop(l);
        return;
    }
    if (a->rbusy && atomic_load(&a->rdone))
        reload_finish(a);
}

static void *admin_main(void *arg)
{
    struct admin *a = arg;
    loop_run(a->loop);
    /* stopping: a reload in progress finishes (it is bounded by the
     * workers' switch), then every connection is closed unanswered */
    if (a->rbusy)
        pthread_join(a->rthread, NULL);
    a->rbusy = false;
    while (a->conns)
        conn_close(a->conns);
    bury(a->loop, a);
    return NULL;
}

struct admin *admin_open(const struct conf *c, char *err, size_t errlen)
{
    struct admin *a = calloc(1, sizeof *a);
    if (!a) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    a->started_ms = loop_clock_ms();
    a->header_timeout = c->admin_header_timeout;
    a->idle_timeout = c->admin_idle_timeout;
    a->send_timeout = c->admin_send_timeout;
    a->fd = socket(c->admin_listen.ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    a->loop = loop_new();
    int one = 1;
    if (a->fd >= 0)
        setsockopt(a->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (a->fd < 0 || !a->loop ||
        bind(a->fd, (const struct sockaddr *)&c->admin_listen.ss, c->admin_listen.len) < 0 ||
        listen(a->fd, 128) < 0) {
        snprintf(err, errlen, "admin listen %s: %s", c->admin_listen.text,
                 a->loop ? strerror(errno) : "out of memory");
        if (a->fd >= 0)
            close(a->fd);
        loop_free(a->loop);
        free(a);
        return NULL;
    }
    /* one timer per connection and the accept retry: never out of memory later */
    if (loop_reserve_timers(a->loop, ADMIN_MAX_CONNS + 1) < 0) {
        snprintf(err, errlen, "admin listen %s: out of memory", c->admin_listen.text);
        close(a->fd);
        loop_free(a->loop);
        free(a);
        return NULL;
    }
    a->lio.fd = a->fd;
    a->lio.cb = listener_io;
    a->accept_timer.cb = accept_retry;
    loop_set_wake(a->loop, admin_wake, a);
    loop_set_before_sleep(a->loop, bury, a);
    if (loop_add(a->loop, &a->lio) < 0) {
        snprintf(err, errlen, "admin listen %s: epoll: %s", c->admin_listen.text, strerror(errno));
        close(a->fd);
        loop_free(a->loop);
        free(a);
        return NULL;
    }
    return a;
}

int admin_run(struct admin *a, struct proxy *p, char *err, size_t errlen)
{
    a->p = p;
    int rc = pthread_create(&a->thread, NULL, admin_main, a);
    if (rc) {
        snprintf(err, errlen, "admin thread: %s", strerror(rc));
        return -1;
    }
    a->running = true;
    return 0;
}

void admin_stop(struct admin *a)
{
    if (!a)
        return;
    atomic_store(&a->stopping, true);
    loop_wake(a->loop);
    if (a->running)
        pthread_join(a->thread, NULL);
    while (a->conns)
        conn_close(a->conns);
    bury(a->loop, a);
    close(a->fd);
    loop_free(a->loop);
    free(a);
}
