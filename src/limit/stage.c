/* limit/stage.c: the request stage of limit/ (see limit.h): allow / deny
 * lists (global, then the route's), then each rate limit of the route; all
 * must pass. A refused request gets 429 (or the limit's status) with
 * Retry-After and the limit's headers, without reaching the upstream; an
 * admitted one carries the most constraining limit's headers back. */
#include "limit.h"

#include "conf/conf.h"
#include "core/log.h"
#include "obs/obs.h"
#include "proxy/stage.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { OUT_ALLOWED, OUT_LIMITED, OUT_DRY_RUN, NOUT };
static const char *const outcome_name[NOUT] = { "allowed", "limited", "dry_run" };

/* Decision counters live in the module, by route (host, prefix) and limit
 * name, so that they survive reloads and /metrics can list them; at most
 * MAX_SERIES distinct ones (labels bounded by the configuration). */
#define MAX_SERIES 1024
struct series {
    char route[256];
    char limit[64];
    _Atomic uint64_t n[NOUT];
};
static struct series series[MAX_SERIES];
static _Atomic uint32_t nseries;
static pthread_mutex_t series_mu = PTHREAD_MUTEX_INITIALIZER;
static _Atomic uint64_t denied_global, denied_route, challenged;

/* A label value as it goes into Prometheus text and JSON unescaped:
 * quotes, backslashes and control characters become '_' (as the cache's
 * figures do; configured names rarely hold them, but may). */
static void label_clean(char *p)
{
    for (; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == '"' || *p == '\\' || *p == 0x7f)
            *p = '_';
}

static void route_label(const struct conf_route *rt, char *out, size_t n)
{
    snprintf(out, n, "%s%s", rt->host ? rt->host : "", rt->prefix);
    label_clean(out);
}

static struct series *series_for(const struct conf_route *rt, const char *limit)
{
    char label[256], name[sizeof series[0].limit];
    route_label(rt, label, sizeof label);
    snprintf(name, sizeof name, "%s", limit);
    label_clean(name);
    pthread_mutex_lock(&series_mu);
    uint32_t n = atomic_load(&nseries);
    struct series *s = NULL;
    for (uint32_t i = 0; i < n && !s; i++)
        if (!strcmp(series[i].route, label) && !strcmp(series[i].limit, name))
            s = &series[i];
    if (!s && n < MAX_SERIES) {
        s = &series[n];
        snprintf(s->route, sizeof s->route, "%s", label);
        snprintf(s->limit, sizeof s->limit, "%s", name);
        atomic_store(&nseries, n + 1);
    }
    pthread_mutex_unlock(&series_mu);
    return s;
}

/* ---------------------------------------------------------------- per route */

struct rlimit {
    const struct conf_rate_limit *c;
    struct limit_gcra g;
    uint64_t seed;              /* route and limit: keys of two limits never meet */
    struct series *s;
};

struct rstate {
    const struct conf *conf;
    const struct conf_route *rt;
    bool challenges;            /* some route challenges: answer the verification path */
    uint32_t n;
    struct rlimit l[];
};

/* Whether any route challenges: then every route answers the challenge's
 * verification path (the page may be on another route than its check). */
static bool conf_challenges(const struct conf *conf)
{
    for (uint32_t i = 0; i < conf->nroutes; i++) {
        if (conf->routes[i].challenge)
            return true;
        for (uint32_t k = 0; k < conf->routes[i].nlimits; k++)
            if (conf->routes[i].limits[k].challenge)
                return true;
    }
    return false;
}

static void *limit_route_new(const struct conf *conf, const struct conf_route *rt)
{
    bool chall = conf_challenges(conf);
    if (!rt->nlimits && !rt->nallow && !rt->ndeny && !conf->nallow && !conf->ndeny && !chall)
        return NULL;
    if (rt->nlimits && limit_table_init(conf->limits.max_keys) < 0) {
        log_error("rate limits: no memory for %u keys: limits off", conf->limits.max_keys);
        return NULL;
    }
    struct rstate *st = calloc(1, sizeof *st + rt->nlimits * sizeof st->l[0]);
    if (!st)
        return NULL;
    st->conf = conf;
    st->rt = rt;
    st->challenges = chall;
    st->n = rt->nlimits;
    char label[256];
    route_label(rt, label, sizeof label);
    for (uint32_t i = 0; i < rt->nlimits; i++) {
        struct rlimit *l = &st->l[i];
        l->c = &rt->limits[i];
        limit_gcra_init(&l->g, l->c->count, l->c->period_ms, l->c->burst);
        char id[512];
        int n = snprintf(id, sizeof id, "%s|%s|%u/%llu|%u", label, l->c->name, l->c->count,
                         (unsigned long long)l->c->period_ms, l->c->burst);
        l->seed = limit_hash(0x5eed, id, (size_t)n);
        l->s = series_for(rt, l->c->name);
    }
    return st;
}

static void limit_route_free(void *p) { free(p); }

/* ---------------------------------------------------------------- per request */

struct lctx {
    struct limit_result r;      /* the most constraining admitted limit */
    const struct conf_rate_limit *c;
    bool have;
};

static int client_addr(struct stage_x *sx, uint8_t out[16])
{
    size_t n;
    const char *ip = stage_client_ip(sx, &n);
    char buf[64];
    if (n >= sizeof buf)
        return 0;
    memcpy(buf, ip, n);
    buf[n] = '\0';
    if (inet_pton(AF_INET, buf, out) == 1)
        return AF_INET;
    if (inet_pton(AF_INET6, buf, out) == 1)
        return AF_INET6;
    return 0;
}

/* The value of cookie `name` in a Cookie header. */
const char *limit_cookie_value(const char *v, size_t vlen, const char *name, size_t *out)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i < vlen;) {
        while (i < vlen && (v[i] == ' ' || v[i] == ';'))
            i++;
        size_t s = i;
        while (i < vlen && v[i] != ';')
            i++;
        if (i - s > nl && !memcmp(v + s, name, nl) && v[s + nl] == '=') {
            *out = i - s - nl - 1;
            return v + s + nl + 1;
        }
    }
    return NULL;
}

/* The key of limit l for this request, hashed; false when a part of it is
 * missing (no such header or cookie: the limit does not apply). */
static bool request_key(struct stage_x *sx, const struct rlimit *l, int fam, const uint8_t *addr,
                        uint64_t *key)
{
    uint64_t h = l->seed;
    for (uint32_t k = 0; k < l->c->nkeys; k++) {
        const char *v = NULL;
        size_t vlen = 0;
        uint8_t net[17];
        switch (l->c->keys[k]) {
        case CONF_LKEY_CLIENT_IP: {
            if (!fam)
                return false;
            unsigned bits = fam == AF_INET ? l->c->v4_prefix : l->c->v6_prefix;
            size_t len = fam == AF_INET ? 4 : 16;
            memcpy(net, addr, len);
            for (size_t i = 0; i < len; i++) {
                unsigned keep = bits > i * 8 ? bits - (unsigned)i * 8 : 0;
                if (keep < 8)
                    net[i] &= (uint8_t)(0xff00u >> keep);
            }
            net[len] = (uint8_t)fam;
            v = (const char *)net;
            vlen = len + 1;
            break;
        }
        case CONF_LKEY_HEADER:
            if (!stage_request_header(sx, l->c->key_names[k], strlen(l->c->key_names[k]), &v, &vlen))
                return false;
            break;
        case CONF_LKEY_COOKIE: {
            const char *cv;
            size_t cl;
            if (!stage_request_header(sx, "Cookie", 6, &cv, &cl) ||
                !(v = limit_cookie_value(cv, cl, l->c->key_names[k], &vlen)))
                return false;
            break;
        }
        case CONF_LKEY_ROUTE:
            v = "route";
            vlen = 5;
            break;
        }
        h = limit_hash(h, v, vlen);
    }
    *key = h;
    return true;
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The limit's fields: RateLimit-Policy / RateLimit (IETF draft), or the
 * X-RateLimit-* ones, or both. */
static int limit_fields(const struct conf_rate_limit *c, const struct limit_result *r,
                        struct stage_field *f, char (*buf)[96])
{
    int n = 0;
    uint64_t window = c->period_ms / 1000 ? c->period_ms / 1000 : 1;
    uint64_t reset = (r->reset_ms + 999) / 1000;
    if (c->headers == CONF_LHDR_IETF || c->headers == CONF_LHDR_BOTH) {
        int a = snprintf(buf[n], 96, "\"%s\";q=%u;w=%llu", c->name, c->count,
                         (unsigned long long)window);
        f[n] = (struct stage_field){ "RateLimit-Policy", buf[n], 16, (size_t)a };
        n++;
        a = snprintf(buf[n], 96, "\"%s\";r=%u;t=%llu", c->name, r->remaining,
                     (unsigned long long)reset);
        f[n] = (struct stage_field){ "RateLimit", buf[n], 9, (size_t)a };
        n++;
    }
    if (c->headers == CONF_LHDR_X || c->headers == CONF_LHDR_BOTH) {
        int a = snprintf(buf[n], 96, "%u", c->count);
        f[n] = (struct stage_field){ "X-RateLimit-Limit", buf[n], 17, (size_t)a };
        n++;
        a = snprintf(buf[n], 96, "%u", r->remaining);
        f[n] = (struct stage_field){ "X-RateLimit-Remaining", buf[n], 21, (size_t)a };
        n++;
        a = snprintf(buf[n], 96, "%llu", (unsigned long long)reset);
        f[n] = (struct stage_field){ "X-RateLimit-Reset", buf[n], 17, (size_t)a };
        n++;
    }
    return n;
}

static enum stage_verdict refuse(struct stage_x *sx, int status, const char *why,
                                 const struct conf_rate_limit *c, const struct limit_result *r)
{
    struct stage_field f[8];
    char buf[8][96];
    int n = 0;
    if (c) {
        n = snprintf(buf[7], 96, "%llu", (unsigned long long)((r->retry_after_ms + 999) / 1000));
        f[0] = (struct stage_field){ "Retry-After", buf[7], 11, (size_t)n };
        n = 1 + limit_fields(c, r, f + 1, buf);
    }
    f[n++] = (struct stage_field){ "Content-Type", "text/plain", 12, 10 };
    struct stage_body *b = stage_body_copy(why, strlen(why));
    int rc = stage_answer(sx, status, f, (size_t)n, b);
    stage_body_unref(b);
    return rc == 0 ? STAGE_ANSWERED : STAGE_CONTINUE;
}

/* allow / deny: a deny match refuses; a non-empty allow list refuses whoever
 * it does not match. Global lists first, then the route's. 0: neither. */
static int access_refused(const struct conf *conf, const struct conf_route *rt, int fam,
                          const uint8_t *addr)
{
    if (!fam)
        return 0;
    if ((conf->ndeny && conf_cidr_match(conf->deny, conf->ndeny, fam, addr)) ||
        (conf->nallow && !conf_cidr_match(conf->allow, conf->nallow, fam, addr)))
        return 1;
    if ((rt->ndeny && conf_cidr_match(rt->deny, rt->ndeny, fam, addr)) ||
        (rt->nallow && !conf_cidr_match(rt->allow, rt->nallow, fam, addr)))
        return 2;
    return 0;
}

static void note_refused(struct stage_x *sx, const char *why)
{
    size_t ipn;
    const char *ip = stage_client_ip(sx, &ipn);
    limit_top_note(ip, ipn, why);
}

static enum stage_verdict challenge(struct stage_x *sx, const struct conf *conf)
{
    atomic_fetch_add_explicit(&challenged, 1, memory_order_relaxed);
    return limit_challenge_page(sx, &conf->challenge) == 0 ? STAGE_ANSWERED : STAGE_CONTINUE;
}

/* The challenge's verification path, and `challenge: true` routes. 1 when
 * *v is the verdict; *passed says whether the client holds a pass. */
static int challenge_first(struct stage_x *sx, const struct rstate *st, bool *passed,
                           enum stage_verdict *v)
{
    static const char verify[] = "/.well-known/portico-challenge";
    const struct conf *conf = st->conf;
    size_t pl;
    const char *path = stage_path(sx, &pl);
    if (pl >= sizeof verify - 1 && !memcmp(path, verify, sizeof verify - 1) &&
        (pl == sizeof verify - 1 || path[sizeof verify - 1] == '?')) {
        *v = limit_challenge_verify(sx, &conf->challenge) == 0 ? STAGE_ANSWERED : STAGE_CONTINUE;
        return 1;
    }
    *passed = limit_challenge_passed(sx, &conf->challenge);
    if (st->rt->challenge && !*passed) {     /* bot fight: everyone proves it once */
        *v = challenge(sx, conf);
        return 1;
    }
    return 0;
}

/* One limit's decision: r, and *wait_ns grown for a paced one. False when
 * it does not apply (no key) or cannot decide. */
static bool decide(struct stage_x *sx, const struct rlimit *l, int fam, const uint8_t *addr,
                   int64_t now, struct limit_result *r, uint64_t *wait_ns)
{
    uint64_t key;
    if (!request_key(sx, l, fam, addr, &key))
        return false;
    if (l->c->delay) {
        /* strict pacing: no instant burst, a queue of `burst` intervals */
        struct limit_gcra strict = { l->g.interval_ns, 0 };
        uint64_t d = 0;
        if (limit_local.pace(limit_local.self, key, &strict, l->g.tolerance_ns, now, r, &d) < 0)
            return false;
        if (r->admitted && d > *wait_ns)
            *wait_ns = d;
        return true;
    }
    return limit_local.take(limit_local.self, key, &l->g, now, r) == 0;
}

static enum stage_verdict limit_request(struct stage_x *sx)
{
    struct rstate *st = stage_route_state(sx);
    struct lctx *cx = stage_ctx(sx);
    if (stage_internal(sx))
        return STAGE_CONTINUE;          /* portico's own (a cache refresh): no client to limit */
    uint8_t addr[16];
    int fam = client_addr(sx, addr);
    const struct conf *conf = st->conf;
    int refused = access_refused(conf, st->rt, fam, addr);
    if (refused) {
        atomic_fetch_add_explicit(refused == 1 ? &denied_global : &denied_route, 1,
                                  memory_order_relaxed);
        note_refused(sx, refused == 1 ? "deny" : "route allow/deny");
        return refuse(sx, 403, "403 Forbidden\n", NULL, NULL);
    }
    bool passed = false;
    enum stage_verdict v;
    if (st->challenges && challenge_first(sx, st, &passed, &v))
        return v;
    int64_t now = now_ns();
    uint64_t wait_ns = 0;
    for (uint32_t i = 0; i < st->n; i++) {
        const struct rlimit *l = &st->l[i];
        struct limit_result r;
        if (!decide(sx, l, fam, addr, now, &r, &wait_ns))
            continue;
        int out = r.admitted ? OUT_ALLOWED : l->c->dry_run ? OUT_DRY_RUN : OUT_LIMITED;
        if (l->s)
            atomic_fetch_add_explicit(&l->s->n[out], 1, memory_order_relaxed);
        if (!r.admitted && l->c->challenge && passed)
            continue;                   /* a pass exempts its holder from this limit */
        if (!r.admitted && l->c->dry_run) {
            size_t ipn;
            const char *ip = stage_client_ip(sx, &ipn);
            log_rl_info("rate limit %s (dry run) would refuse %.*s", l->c->name, (int)ipn, ip);
            continue;
        }
        if (!r.admitted) {
            note_refused(sx, l->c->name);
            if (l->c->challenge)
                return challenge(sx, conf);
            return refuse(sx, l->c->status, l->c->status == 429 ? "429 Too Many Requests\n"
                                                                 : "503 Service Unavailable\n",
                          l->c->headers == CONF_LHDR_NONE ? NULL : l->c, &r);
        }
        if (!cx->have || r.remaining < cx->r.remaining) {
            cx->r = r;
            cx->c = l->c;
            cx->have = true;
        }
    }
    if (wait_ns) {
        /* action: delay: this request's slot is taken; it goes on when due */
        stage_resume_after(sx, (wait_ns + 999999) / 1000000);
        return STAGE_WAIT;
    }
    return STAGE_CONTINUE;
}

/* An admitted request's response says how much of its limit is left. */
static enum stage_body_mode limit_response(struct stage_x *sx)
{
    struct lctx *cx = stage_ctx(sx);
    if (!cx->have || cx->c->headers == CONF_LHDR_NONE)
        return STAGE_BODY_NONE;
    struct stage_field f[6];
    char buf[8][96];
    int n = limit_fields(cx->c, &cx->r, f, buf);
    for (int i = 0; i < n; i++)
        stage_response_edit(sx, STAGE_SET, f[i].name, f[i].name_len, f[i].value, f[i].value_len);
    return STAGE_BODY_NONE;
}

const struct stage_def limit_stage = {
    .name = "limit",
    .ctx_size = sizeof(struct lctx),
    .route_new = limit_route_new,
    .route_free = limit_route_free,
    .on_request = limit_request,
    .on_response = limit_response,
};

void limit_metrics(struct obs_text *t)
{
    uint32_t n = atomic_load(&nseries);
    obs_printf(t, "# HELP portico_ratelimit_decisions_total Rate-limit decisions by route, limit and outcome.\n"
                  "# TYPE portico_ratelimit_decisions_total counter\n");
    for (uint32_t i = 0; i < n; i++)
        for (int o = 0; o < NOUT; o++)
            obs_printf(t, "portico_ratelimit_decisions_total{route=\"%s\",limit=\"%s\",outcome=\"%s\"} %llu\n",
                       series[i].route, series[i].limit, outcome_name[o],
                       (unsigned long long)atomic_load_explicit(&series[i].n[o], memory_order_relaxed));
    obs_printf(t, "# HELP portico_access_denied_total Requests refused by allow / deny lists.\n"
                  "# TYPE portico_access_denied_total counter\n"
                  "portico_access_denied_total{list=\"global\"} %llu\n"
                  "portico_access_denied_total{list=\"route\"} %llu\n",
               (unsigned long long)atomic_load(&denied_global),
               (unsigned long long)atomic_load(&denied_route));
    limit_guard_metrics(t);
    limit_top_metrics(t);
    obs_printf(t, "# HELP portico_challenges_total Challenge pages served.\n"
                  "# TYPE portico_challenges_total counter\nportico_challenges_total %llu\n",
               (unsigned long long)atomic_load(&challenged));
    uint64_t keys, ev, aev;
    limit_table_stats(&keys, &ev, &aev);
    obs_printf(t, "# HELP portico_ratelimit_keys Keys the rate-limit table tracks.\n"
                  "# TYPE portico_ratelimit_keys gauge\nportico_ratelimit_keys %llu\n"
                  "# HELP portico_ratelimit_evictions_total Keys evicted from a full table "
                  "(active: still limited when evicted).\n"
                  "# TYPE portico_ratelimit_evictions_total counter\n"
                  "portico_ratelimit_evictions_total{state=\"idle\"} %llu\n"
                  "portico_ratelimit_evictions_total{state=\"active\"} %llu\n",
               (unsigned long long)keys, (unsigned long long)(ev - aev), (unsigned long long)aev);
}

void limit_status_json(struct obs_text *t)
{
    uint64_t sum[NOUT] = { 0 };
    uint32_t n = atomic_load(&nseries);
    for (uint32_t i = 0; i < n; i++)
        for (int o = 0; o < NOUT; o++)
            sum[o] += atomic_load_explicit(&series[i].n[o], memory_order_relaxed);
    uint64_t keys, ev, aev;
    limit_table_stats(&keys, &ev, &aev);
    obs_printf(t, "{\"allowed\":%llu,\"limited\":%llu,\"dry_run\":%llu,\"denied\":%llu,"
                  "\"keys\":%llu,\"evictions\":%llu,\"top_offenders\":",
               (unsigned long long)sum[OUT_ALLOWED], (unsigned long long)sum[OUT_LIMITED],
               (unsigned long long)sum[OUT_DRY_RUN],
               (unsigned long long)(atomic_load(&denied_global) + atomic_load(&denied_route)),
               (unsigned long long)keys, (unsigned long long)ev);
    limit_top_rows(t, 5);
    obs_printf(t, "}");
}
