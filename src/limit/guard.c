/* limit/guard.c: the login guard (login_guard: on a route). Responses with
 * a failure status (401, 403) count against the client address and, when
 * configured, the account (a header, or a form or JSON field of a body that
 * arrived with the head); `max_failures` within `window` block the key for
 * `block`: its requests get 429 (or 403) without reaching the upstream. A
 * success resets the key's count. Counts live in the rate-limit table. */
#include "limit.h"

#include "conf/conf.h"
#include "core/log.h"
#include "obs/obs.h"
#include "proxy/stage.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static _Atomic uint64_t g_failures, g_blocks, g_refused;

struct gstate {
    const struct conf_route *rt;
    uint64_t seed;
};

struct gctx {
    uint64_t keys[2];           /* the address's, the account's (0: none) */
    char who[64];               /* the address, for the log */
};

static void *guard_route_new(const struct conf *conf, const struct conf_route *rt)
{
    if (!rt->guard.enabled)
        return NULL;
    if (limit_table_init(conf->limits.max_keys) < 0)
        return NULL;
    struct gstate *g = calloc(1, sizeof *g);
    if (!g)
        return NULL;
    g->rt = rt;
    char id[300];
    int n = snprintf(id, sizeof id, "guard|%s%s", rt->host ? rt->host : "", rt->prefix);
    g->seed = limit_hash(0x6a7d, id, (size_t)n);
    return g;
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* A form field (a=1&user=alice) or a JSON string field ("user": "alice"). */
bool limit_body_field(const char *b, size_t n, const char *name, bool json, const char **v,
                      size_t *vl)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i + nl < n; i++) {
        if (json) {
            if (b[i] != '"' || i + nl + 1 >= n || memcmp(b + i + 1, name, nl) || b[i + nl + 1] != '"')
                continue;
            size_t j = i + nl + 2;
            while (j < n && (b[j] == ' ' || b[j] == '\t' || b[j] == '\n' || b[j] == '\r'))
                j++;
            if (j >= n || b[j] != ':')
                continue;
            for (j++; j < n && (b[j] == ' ' || b[j] == '\t' || b[j] == '\n' || b[j] == '\r'); j++)
                ;
            if (j >= n || b[j] != '"')
                return false;
            size_t s = ++j;
            while (j < n && b[j] != '"')
                j += b[j] == '\\' ? 2 : 1;
            if (j > n)
                return false;
            *v = b + s;
            *vl = j - s;
            return true;
        }
        if ((i == 0 || b[i - 1] == '&') && !memcmp(b + i, name, nl) && b[i + nl] == '=') {
            size_t s = i + nl + 1, j = s;
            while (j < n && b[j] != '&')
                j++;
            *v = b + s;
            *vl = j - s;
            return true;
        }
    }
    return false;
}

static enum stage_verdict guard_request(struct stage_x *sx)
{
    struct gstate *g = stage_route_state(sx);
    struct gctx *cx = stage_ctx(sx);
    const struct conf_login_guard *cf = &g->rt->guard;
    if (stage_internal(sx))
        return STAGE_CONTINUE;
    size_t n;
    const char *ip = stage_client_ip(sx, &n);
    snprintf(cx->who, sizeof cx->who, "%.*s", (int)n, ip);
    cx->keys[0] = limit_hash(g->seed, ip, n);
    const char *v = NULL, *body;
    size_t vl = 0, bl;
    if (cf->account_from == 1)
        stage_request_header(sx, cf->account_name, strlen(cf->account_name), &v, &vl);
    else if (cf->account_from && stage_request_body(sx, &body, &bl))
        limit_body_field(body, bl, cf->account_name, cf->account_from == 3, &v, &vl);
    if (v && vl)
        cx->keys[1] = limit_hash(g->seed ^ 0xacc, v, vl);
    int64_t now = now_ns(), until = 0;
    for (int k = 0; k < 2; k++) {
        int64_t u = 0;
        if (cx->keys[k] && limit_local.guard_check(limit_local.self, cx->keys[k], now, &u) == 0 &&
            u > until)
            until = u;
    }
    if (!until)
        return STAGE_CONTINUE;
    atomic_fetch_add_explicit(&g_refused, 1, memory_order_relaxed);
    limit_top_note(cx->who, strlen(cx->who), "login_guard");
    char ra[32];
    int rl = snprintf(ra, sizeof ra, "%lld", (long long)((until - now + 999999999) / 1000000000));
    struct stage_field f[] = { { "Retry-After", ra, 11, (size_t)rl },
                               { "Content-Type", "text/plain", 12, 10 } };
    static const char msg[] = "too many failed logins: try again later\n";
    struct stage_body *b = stage_body_copy(msg, sizeof msg - 1);
    int rc = stage_answer(sx, cf->status, f, 2, b);
    stage_body_unref(b);
    cx->keys[0] = cx->keys[1] = 0;          /* a refusal is not a failed login */
    return rc == 0 ? STAGE_ANSWERED : STAGE_CONTINUE;
}

static enum stage_body_mode guard_response(struct stage_x *sx)
{
    struct gstate *g = stage_route_state(sx);
    struct gctx *cx = stage_ctx(sx);
    const struct conf_login_guard *cf = &g->rt->guard;
    int status = stage_status(sx);
    if (!cx->keys[0] || status < 200)
        return STAGE_BODY_NONE;
    bool failed = false;
    for (uint8_t i = 0; i < cf->nfailure_status; i++)
        failed |= cf->failure_status[i] == status;
    if (!failed && status >= 400)
        return STAGE_BODY_NONE;             /* neither a failed login nor a success */
    if (failed)
        atomic_fetch_add_explicit(&g_failures, 1, memory_order_relaxed);
    int64_t now = now_ns();
    for (int k = 0; k < 2; k++) {
        bool blocked = false;
        if (!cx->keys[k] ||
            limit_local.guard_record(limit_local.self, cx->keys[k], failed, cf->max_failures,
                                     (int64_t)cf->window_ms * 1000000, (int64_t)cf->block_ms * 1000000,
                                     now, &blocked) < 0)
            continue;
        if (blocked) {
            atomic_fetch_add_explicit(&g_blocks, 1, memory_order_relaxed);
            log_rl_warn("login guard %s%s: %s %s blocked for %llu s after %u failed logins",
                        g->rt->host ? g->rt->host : "", g->rt->prefix,
                        k ? "an account of" : "address", cx->who,
                        (unsigned long long)(cf->block_ms / 1000), cf->max_failures);
        }
    }
    return STAGE_BODY_NONE;
}

const struct stage_def limit_guard_stage = {
    .name = "login_guard",
    .ctx_size = sizeof(struct gctx),
    .route_new = guard_route_new,
    .route_free = free,
    .on_request = guard_request,
    .on_response = guard_response,
};

void limit_guard_metrics(struct obs_text *t)
{
    obs_printf(t, "# HELP portico_login_failures_total Responses a login guard counted as failed logins.\n"
                  "# TYPE portico_login_failures_total counter\nportico_login_failures_total %llu\n"
                  "# HELP portico_login_blocks_total Keys (addresses or accounts) a login guard blocked.\n"
                  "# TYPE portico_login_blocks_total counter\nportico_login_blocks_total %llu\n"
                  "# HELP portico_login_refused_total Requests refused while their key was blocked.\n"
                  "# TYPE portico_login_refused_total counter\nportico_login_refused_total %llu\n",
               (unsigned long long)atomic_load(&g_failures), (unsigned long long)atomic_load(&g_blocks),
               (unsigned long long)atomic_load(&g_refused));
}
