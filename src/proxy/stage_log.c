/* proxy/stage_log.c: access and audit log lines. */
#include "proxy_int.h"

static void copy_cut(char *dst, size_t cap, uint16_t *len, const char *src, size_t n);

static void copy_cut(char *dst, size_t cap, uint16_t *len, const char *src, size_t n)
{
    if (n > cap)
        n = cap;
    memcpy(dst, src, n);
    *len = (uint16_t)n;
}

/* Copy what an audit line records from the request head (valid only while
 * it is being handled). */
void audit_capture(struct audit_info *a, const struct http_request *r)
{
    const struct http_msg *m = &r->m;
    if (r->host) {
        copy_cut(a->host, sizeof a->host, &a->host_len, r->host, r->host_len);
        a->has_host = true;
    }
    for (uint32_t i = 0; i < m->nheaders; i++) {
        const struct http_header *h = &m->headers[i];
        if (m->kinds[i] == HTTP_H_X_FORWARDED_FOR && !a->has_xff) {
            copy_cut(a->xff, sizeof a->xff, &a->xff_len, h->value, h->value_len);
            a->has_xff = true;
        } else if (h->name_len == 10 && http_ieq(h->name, "user-agent", 10) && !a->has_ua) {
            copy_cut(a->ua, sizeof a->ua, &a->ua_len, h->value, h->value_len);
            a->has_ua = true;
        } else if (h->name_len == 13 && http_ieq(h->name, "authorization", 13) && !a->has_user) {
            size_t n = obs_basic_user(h->value, h->value_len, a->user, sizeof a->user);
            a->user_len = (uint16_t)(n < sizeof a->user ? n : sizeof a->user);
            a->has_user = n > 0;
        }
    }
}

void audit_write(struct obs_alog_buf *b, const struct audit_info *a, const char *reqid,
                        size_t reqid_len, const char *client, const char *method,
                        size_t method_len, const char *path, size_t path_len,
                        const struct conf_route *rt, const char *server, int status,
                        uint64_t bytes_in, uint64_t bytes_out, uint64_t duration_us)
{
    struct obs_audit_entry e = {
        .request_id = reqid, .request_id_len = reqid_len, .client = client,
        .forwarded_for = a->has_xff ? a->xff : NULL, .forwarded_for_len = a->xff_len,
        .user = a->has_user ? a->user : NULL, .user_len = a->user_len,
        .user_agent = a->has_ua ? a->ua : NULL, .user_agent_len = a->ua_len,
        .host = a->has_host ? a->host : NULL, .host_len = a->host_len,
        .method = method, .method_len = method_len, .path = path, .path_len = path_len,
        .route = rt->prefix, .upstream = rt->upstream->name, .server = server,
        .status = status, .bytes_in = bytes_in, .bytes_out = bytes_out,
        .duration_us = duration_us,
    };
    obs_audit_write(b, &e);
}

/* Buffer one access log line. A full buffer goes to the writer at once;
 * a partial one when the timer armed by its first line fires, so that under
 * load the hand-off (a lock, a wake-up and a write(2) in the writer) is paid
 * once per 64 KiB, not once per loop iteration. */
void alog_write(struct worker *w, const struct obs_alog_entry *e)
{
    obs_alog_write(&w->alog, e);
    if (w->alog.len && !loop_timer_armed(&w->alog_timer))
        loop_timer_arm(w->loop, &w->alog_timer, w->conf->access_log_flush);
}

void alog_timeout(struct loop *l, struct loop_timer *t)
{
    (void)l;
    struct worker *w = container_of(t, struct worker, alog_timer);
    obs_alog_flush(&w->alog);
}

/* ---------------------------------------------------------------- built-in stages */

/* Stages that are on every route return this from route_new: they need no
 * per-route state, only to be in the chain. */
static void *on_every_route(const struct conf *conf, const struct conf_route *rt)
{
    (void)conf;
    (void)rt;
    return (void *)&on_every_route;
}

/* How the exchange ended: its status (499: the client went away before a
 * status), the server that answered, and how long it took. */
static int outcome(const struct exchange *x, const char **server, uint64_t *dur)
{
    *dur = now_us() - x->t0_us;
    *server = x->upstream_us ? x->route->upstream->servers[x->server].addr.text : NULL;
    return x->status ? x->status : 499;
}

static void metrics_end(struct stage_x *sx)
{
    struct exchange *x = sx->x;
    struct worker *w = x->c->w;
    const char *server;
    uint64_t dur;
    int status = outcome(x, &server, &dur);
    uint32_t ri = (uint32_t)(x->route - x->conf->routes);
    obs_request(w->obs, x->wg->route_map ? x->wg->route_map[ri] : ri, x->method, x->method_len,
                status, dur);
}

const struct stage_def stage_metrics = {
    .name = "metrics", .route_new = on_every_route, .on_end = metrics_end,
};

static void *access_log_route(const struct conf *conf, const struct conf_route *rt)
{
    return conf->access_log ? on_every_route(conf, rt) : NULL;
}

static void access_log_end(struct stage_x *sx)
{
    struct exchange *x = sx->x;
    struct worker *w = x->c->w;
    if (!w->alog.log)
        return;
    const char *server;
    uint64_t dur;
    int status = outcome(x, &server, &dur);
    struct obs_alog_entry e = {
        .request_id = x->reqid, .request_id_len = x->reqid_len, .client = x->client,
        .method = x->method, .method_len = x->method_len, .path = x->path,
        .path_len = x->path_len, .route = x->route->prefix, .upstream = x->route->upstream->name,
        .server = server, .status = status, .bytes_in = x->bytes_in,
        .bytes_out = x->bytes_out, .duration_us = dur, .upstream_us = x->upstream_us,
        .cache = x->st ? x->st->cache_result : NULL,
    };
    alog_write(w, &e);
}

const struct stage_def stage_access_log = {
    .name = "access_log", .route_new = access_log_route, .on_end = access_log_end,
};

static void *audit_route(const struct conf *conf, const struct conf_route *rt)
{
    return conf->audit_log && rt->audit ? on_every_route(conf, rt) : NULL;
}

/* What the audit line needs from the request head, while it is there. */
static enum stage_verdict audit_request(struct stage_x *sx)
{
    struct audit_info *a = stage_ctx(sx);
    if (sx->x->st->req)
        audit_capture(a, sx->x->st->req);
    return STAGE_CONTINUE;
}

static void audit_end(struct stage_x *sx)
{
    struct exchange *x = sx->x;
    struct worker *w = x->c->w;
    if (!w->audit.log && !x->wg->g->audit)
        return;
    const char *server;
    uint64_t dur;
    int status = outcome(x, &server, &dur);
    /* to the audit log of the configuration the request started on, even if
     * a reload has since moved or removed it */
    struct obs_alog_buf *ab = &w->audit, tmp;
    struct alog_ref *own = x->wg->g->audit;
    if (own && own->log != w->audit.log) {
        obs_alog_buf_init(&tmp, own->log);
        ab = &tmp;
    }
    audit_write(ab, stage_ctx(sx), x->reqid, x->reqid_len, x->client, x->method, x->method_len,
                x->path, x->path_len, x->route, server, status, x->bytes_in, x->bytes_out, dur);
    if (ab == &tmp) {
        obs_alog_flush(&tmp);
        obs_alog_buf_free(&tmp);
    }
}

const struct stage_def stage_audit_log = {
    .name = "audit_log", .ctx_size = sizeof(struct audit_info), .route_new = audit_route,
    .on_request = audit_request, .on_end = audit_end,
};

/* forward: who the client is (trusted_proxies), first, so that every later
 * stage (and the balancer) sees it; the head writer puts X-Forwarded-For,
 * -Proto, -Host, Via and X-Request-Id from it. */
static enum stage_verdict forward_request(struct stage_x *sx)
{
    struct exchange *x = sx->x;
    const struct http_request *r = x->st->req;
    if (!r)
        return STAGE_CONTINUE;
    client_identity(x, r);
    request_id(x, r);
    return STAGE_CONTINUE;
}

const struct stage_def stage_forward = {
    .name = "forward", .route_new = on_every_route, .on_request = forward_request,
};
