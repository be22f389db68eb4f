/* admin/admin.c: see admin.h. */
#include "admin.h"
#include "status_page.h"

#include "balance/balance.h"
#include "conf/conf.h"
#include "core/log.h"
#include "core/loop.h"
#include "http/http.h"
#include "obs/obs.h"
#include "proxy/proxy.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define ADMIN_MAX_REQUEST 8192
#define ADMIN_IO_TIMEOUT_MS 2000
#define ADMIN_MAX_WORKERS 256

struct admin {
    struct proxy *p;
    int fd, stopfd;
    pthread_t thread;
    bool running;
    uint64_t started_ms;
};

static void respond(int fd, int status, const char *ctype, const char *body, size_t len,
                    const char *extra)
{
    char head[512];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "Cache-Control: no-store\r\n%sConnection: close\r\n\r\n",
                     status, http_reason(status), ctype, len, extra ? extra : "");
    struct iovec iov[2] = { { head, (size_t)n }, { (void *)body, len } };
    struct msghdr msg = { .msg_iov = iov, .msg_iovlen = 2 };
    size_t left = (size_t)n + len;
    while (left) {
        ssize_t w = sendmsg(fd, &msg, MSG_NOSIGNAL);
        if (w <= 0)
            return;
        left -= (size_t)w;
        while (msg.msg_iovlen && (size_t)w >= msg.msg_iov[0].iov_len) {
            w -= (ssize_t)msg.msg_iov[0].iov_len;
            msg.msg_iov++;
            msg.msg_iovlen--;
        }
        if (msg.msg_iovlen) {
            msg.msg_iov[0].iov_base = (char *)msg.msg_iov[0].iov_base + w;
            msg.msg_iov[0].iov_len -= (size_t)w;
        }
    }
}

static void text(int fd, int status, const char *body)
{
    respond(fd, status, "text/plain; charset=utf-8", body, strlen(body), NULL);
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
    obs_printf(t, "]}\n");
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

static void serve_request(struct admin *a, int fd, const struct http_request *r,
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
    if (PATH_IS("/reload")) {
        if (!post) {
            respond(fd, 405, "text/plain", "POST only\n", 10, "Allow: POST\r\n");
            return;
        }
    } else if (!get && !head) {
        respond(fd, 405, "text/plain", "GET only\n", 9, "Allow: GET, HEAD\r\n");
        return;
    }
    if (PATH_IS("/")) {
        /* The status page holds no data (its script fetches /status with the
         * token), so it is open; the policy forbids every outside source. */
        respond(fd, 200, "text/html; charset=utf-8", status_page_html, head ? 0 : status_page_len,
                "Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; "
                "style-src 'unsafe-inline'; connect-src 'self'; img-src data:; "
                "base-uri 'none'; form-action 'none'; frame-ancestors 'none'\r\n"
                "X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n");
        return;
    }
    if (PATH_IS("/health")) {
        text(fd, 200, "ok\n");
        return;
    }
    if (PATH_IS("/ready")) {
        if (ready(g))
            text(fd, 200, "ready\n");
        else
            text(fd, 503, "not ready: an upstream has no server up\n");
        return;
    }
    if (!token_ok(proxy_gen_conf(g), r)) {
        respond(fd, 401, "text/plain", "unauthorized\n", 13,
                "WWW-Authenticate: Bearer realm=\"portico admin\"\r\n");
        return;
    }
    struct obs_text t = { 0 };
    if (PATH_IS("/reload")) {
        char err[1024];
        if (proxy_reload(a->p, err, sizeof err) == 0) {
            struct proxy_reload_stats st;
            proxy_reload_stats(a->p, &st);
            obs_printf(&t, "{\"reloaded\":true,\"generation\":%llu}\n",
                       (unsigned long long)st.generation);
            if (!t.oom)
                respond(fd, 200, "application/json", t.buf, t.len, NULL);
        } else {
            obs_printf(&t, "{\"reloaded\":false,\"error\":\"");
            json_text(&t, err);
            obs_printf(&t, "\"}\n");
            /* the request was fine; the file it asked to load was not */
            if (!t.oom)
                respond(fd, 422, "application/json", t.buf, t.len, NULL);
        }
    } else if (PATH_IS("/metrics")) {
        struct obs_worker *ws[ADMIN_MAX_WORKERS];
        size_t nw = proxy_obs_lock(a->p, ws, ADMIN_MAX_WORKERS);
        obs_expose(&t, ws, nw);
        proxy_obs_unlock(a->p);
        upstream_metrics(g, &t);
        reload_metrics(a, &t);
        log_metrics(g, &t);
        obs_process_metrics(&t);
        if (!t.oom)
            respond(fd, 200, "text/plain; version=0.0.4; charset=utf-8", t.buf, head ? 0 : t.len, NULL);
    } else if (PATH_IS("/status")) {
        status_json(a, g, &t);
        if (!t.oom)
            respond(fd, 200, "application/json", t.buf, head ? 0 : t.len, NULL);
    } else {
        text(fd, 404, "not found: try /, /health, /ready, /metrics, /status, POST /reload\n");
        return;
    }
    if (t.oom)
        text(fd, 500, "out of memory\n");
    free(t.buf);
#undef PATH_IS
}

static void serve(struct admin *a, int fd)
{
    struct timeval tv = { ADMIN_IO_TIMEOUT_MS / 1000, (ADMIN_IO_TIMEOUT_MS % 1000) * 1000 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    char buf[ADMIN_MAX_REQUEST];
    size_t len = 0;
    struct http_header hdrs[64];
    uint8_t kinds[64];
    struct http_limits lim = { 4096, sizeof buf, 64 };
    struct http_request r;
    int n;
    for (;;) {
        ssize_t got = read(fd, buf + len, sizeof buf - len);
        if (got <= 0)
            return;
        len += (size_t)got;
        r.m.headers = hdrs;
        r.m.kinds = kinds;
        n = http_parse_request(buf, len, &r, &lim);
        if (n != HTTP_AGAIN)
            break;
        if (len == sizeof buf) {
            text(fd, 431, "request head too large\n");
            return;
        }
    }
    if (n < 0) {
        text(fd, r.m.status, "bad request\n");
        return;
    }
    /* A body (none is expected) is left unread: the answer says
     * Connection: close and the socket is closed after it. */
    struct proxy_gen *g = proxy_gen_get(a->p);
    serve_request(a, fd, &r, g);
    proxy_gen_put(g);
}

static void *admin_main(void *arg)
{
    struct admin *a = arg;
    for (;;) {
        struct pollfd pfd[2] = { { a->fd, POLLIN, 0 }, { a->stopfd, POLLIN, 0 } };
        if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (pfd[1].revents)
            break;
        if (!(pfd[0].revents & POLLIN))
            continue;
        int fd = accept4(a->fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        serve(a, fd);
        close(fd);
    }
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
    a->fd = socket(c->admin_listen.ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    a->stopfd = eventfd(0, EFD_CLOEXEC);
    int one = 1;
    if (a->fd >= 0)
        setsockopt(a->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (a->fd < 0 || a->stopfd < 0 ||
        bind(a->fd, (const struct sockaddr *)&c->admin_listen.ss, c->admin_listen.len) < 0 ||
        listen(a->fd, 64) < 0) {
        snprintf(err, errlen, "admin listen %s: %s", c->admin_listen.text, strerror(errno));
        if (a->fd >= 0)
            close(a->fd);
        if (a->stopfd >= 0)
            close(a->stopfd);
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
    uint64_t one = 1;
    ssize_t w = write(a->stopfd, &one, sizeof one);
    (void)w;
    if (a->running)
        pthread_join(a->thread, NULL);
    close(a->fd);
    close(a->stopfd);
    free(a);
}
