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
