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
#include <strings.h>
#include <time.h>

static _Atomic uint64_t g_failures, g_blocks, g_refused;

struct gstate {
    const struct conf_route *rt;
    uint64_t seed;
};

struct gctx {
    uint64_t keys[1 + LIMIT_ACCOUNTS];  /* the address's, then the accounts' (0: none) */
    char who[64];                       /* the address, for the log */
};
#define NKEYS (1 + LIMIT_ACCOUNTS)

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

/* ---------------------------------------------------------------- accounts */

/* A decoded value being built: bytes past `cap` are dropped (counted in
 * `len` no further), so a long value is cut, never overflows. */
struct dec {
    char *out;
    size_t len, cap;
};

static void dec_put(struct dec *d, unsigned char c)
{
    if (d->len < d->cap)
        d->out[d->len++] = (char)c;
}

static void dec_utf8(struct dec *d, uint32_t cp)
{
    if (cp < 0x80) {
        dec_put(d, (unsigned char)cp);
    } else if (cp < 0x800) {
        dec_put(d, (unsigned char)(0xc0 | cp >> 6));
        dec_put(d, (unsigned char)(0x80 | (cp & 0x3f)));
    } else if (cp < 0x10000) {
        dec_put(d, (unsigned char)(0xe0 | cp >> 12));
        dec_put(d, (unsigned char)(0x80 | (cp >> 6 & 0x3f)));
        dec_put(d, (unsigned char)(0x80 | (cp & 0x3f)));
    } else {
        dec_put(d, (unsigned char)(0xf0 | cp >> 18));
        dec_put(d, (unsigned char)(0x80 | (cp >> 12 & 0x3f)));
        dec_put(d, (unsigned char)(0x80 | (cp >> 6 & 0x3f)));
        dec_put(d, (unsigned char)(0x80 | (cp & 0x3f)));
    }
}

static int hexdig(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (char)(c | 0x20);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* x-www-form-urlencoded: '+' is a space, %XX a byte; a '%' not followed by
 * two hex digits stays itself (as the common decoders leave it). */
static void form_decode(const char *p, size_t n, struct dec *d)
{
    for (size_t i = 0; i < n; i++) {
        int h, l;
        if (p[i] == '+')
            dec_put(d, ' ');
        else if (p[i] == '%' && i + 2 < n && (h = hexdig(p[i + 1])) >= 0 &&
                 (l = hexdig(p[i + 2])) >= 0) {
            dec_put(d, (unsigned char)(h << 4 | l));
            i += 2;
        } else
            dec_put(d, (unsigned char)p[i]);
    }
}

static bool hex4(const char *p, size_t n, size_t i, uint32_t *v)
{
    if (i + 4 > n)
        return false;
    *v = 0;
    for (int k = 0; k < 4; k++) {
        int h = hexdig(p[i + (size_t)k]);
        if (h < 0)
            return false;
        *v = *v << 4 | (uint32_t)h;
    }
    return true;
}

/* A JSON string whose opening quote is at b[i-1]: decoded into d (d may be
 * NULL: skipped only). Returns the index just past its closing quote, or 0
 * when it does not end within n. An escape JSON does not have is kept as
 * written (such a body is not JSON; what matters is that one spelling
 * always decodes the same way). */
static size_t json_string(const char *b, size_t n, size_t i, struct dec *d)
{
    struct dec skip = { NULL, 0, 0 };
    if (!d)
        d = &skip;
    while (i < n) {
        char c = b[i++];
        if (c == '"')
            return i;
        if (c != '\\') {
            dec_put(d, (unsigned char)c);
            continue;
        }
        if (i >= n)
            return 0;
        c = b[i++];
        uint32_t cp, lo;
        switch (c) {
        case 'b': dec_put(d, '\b'); break;
        case 'f': dec_put(d, '\f'); break;
        case 'n': dec_put(d, '\n'); break;
        case 'r': dec_put(d, '\r'); break;
        case 't': dec_put(d, '\t'); break;
        case 'u':
            if (!hex4(b, n, i, &cp)) {
                dec_put(d, '\\');
                dec_put(d, 'u');
                break;
            }
            i += 4;
            if (cp >= 0xd800 && cp < 0xdc00 && i + 1 < n && b[i] == '\\' && b[i + 1] == 'u' &&
                hex4(b, n, i + 2, &lo) && lo >= 0xdc00 && lo < 0xe000) {
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                i += 6;
            }
            dec_utf8(d, cp);            /* a lone surrogate: its own three bytes */
            break;
        default:                        /* \" \\ \/ and what JSON has not */
            if (c != '"' && c != '\\' && c != '/')
                dec_put(d, '\\');
            dec_put(d, (unsigned char)c);
        }
    }
    return 0;
}

/* Lower ASCII letters and add v to out[] unless empty or already there.
 * False when out[] is full and v is new. */
static bool account_add(struct limit_account *out, int *k, const char *v, size_t len)
{
    char low[LIMIT_ACCOUNT_MAX];
    if (len > LIMIT_ACCOUNT_MAX)
        len = LIMIT_ACCOUNT_MAX;
    if (!len)
        return true;
    for (size_t i = 0; i < len; i++)
        low[i] = (char)(v[i] >= 'A' && v[i] <= 'Z' ? v[i] | 0x20 : v[i]);
    for (int j = 0; j < *k; j++)
        if (out[j].len == len && !memcmp(out[j].v, low, len))
            return true;
    if (*k == LIMIT_ACCOUNTS)
        return false;
    memcpy(out[*k].v, low, len);
    out[*k].len = len;
    (*k)++;
    return true;
}

static int form_accounts(const char *b, size_t n, const char *name,
                         struct limit_account out[LIMIT_ACCOUNTS])
{
    size_t nl = strlen(name);
    int k = 0;
    for (size_t i = 0; i <= n;) {
        const char *amp = memchr(b + i, '&', n - i);
        size_t e = amp ? (size_t)(amp - b) : n;
        const char *eq = memchr(b + i, '=', e - i);
        if (eq) {
            char nb[64];
            struct dec dn = { nb, 0, sizeof nb };
            form_decode(b + i, (size_t)(eq - b) - i, &dn);
            /* a name that decodes longer than the buffer is not `name` */
            if (dn.len == nl && nl < sizeof nb && !memcmp(nb, name, nl)) {
                char vb[LIMIT_ACCOUNT_MAX];
                struct dec dv = { vb, 0, sizeof vb };
                form_decode(eq + 1, e - (size_t)(eq + 1 - b), &dv);
                if (!account_add(out, &k, vb, dv.len))
                    return -1;
            }
        }
        i = e + 1;
    }
    return k;
}

static size_t json_ws(const char *b, size_t n, size_t i)
{
    while (i < n && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r'))
        i++;
    return i;
}

/* Every string followed by ':' is a key, at whatever depth: strings are
 * skipped whole, so a key's spelling inside a value is not one. */
static int json_accounts(const char *b, size_t n, const char *name,
                         struct limit_account out[LIMIT_ACCOUNTS])
{
    size_t nl = strlen(name);
    int k = 0;
    for (size_t i = 0; i < n;) {
        if (b[i] != '"') {
            i++;
            continue;
        }
        char kb[64];
        struct dec dk = { kb, 0, sizeof kb };
        size_t e = json_string(b, n, i + 1, &dk);
        if (!e)
            break;
        i = e;
        size_t c = json_ws(b, n, e);
        if (c >= n || b[c] != ':' || dk.len != nl || nl >= sizeof kb || memcmp(kb, name, nl))
            continue;
        size_t v = json_ws(b, n, c + 1);
        if (v >= n || b[v] != '"') {
            i = v;
            continue;                   /* not a string: no account */
        }
        char vb[LIMIT_ACCOUNT_MAX];
        struct dec dv = { vb, 0, sizeof vb };
        e = json_string(b, n, v + 1, &dv);
        if (!e)
            break;
        if (!account_add(out, &k, vb, dv.len))
            return -1;
        i = e;
    }
    return k;
}

int limit_accounts(const char *b, size_t n, const char *name, enum limit_account_from from,
                   struct limit_account out[LIMIT_ACCOUNTS])
{
    int k = 0;
    switch (from) {
    case LIMIT_ACCOUNT_FORM:
        return form_accounts(b, n, name, out);
    case LIMIT_ACCOUNT_JSON:
        return json_accounts(b, n, name, out);
    default:
        account_add(out, &k, b, n);
        return k;
    }
}

/* More distinct account names than a login has room for: refused, since
 * the application may read any one of them (the last, say) while the guard
 * counted others. */
static enum stage_verdict ambiguous(struct stage_x *sx, struct gctx *cx)
{
    memset(cx->keys, 0, sizeof cx->keys);
    atomic_fetch_add_explicit(&g_refused, 1, memory_order_relaxed);
    struct stage_field f[] = { { "Content-Type", "text/plain", 12, 10 } };
    static const char msg[] = "more than one account in a login\n";
    struct stage_body *b = stage_body_copy(msg, sizeof msg - 1);
    int rc = stage_answer(sx, 400, f, 1, b);
    stage_body_unref(b);
    return rc == 0 ? STAGE_ANSWERED : STAGE_CONTINUE;
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
    const char *v = NULL;
    size_t vl = 0;
    int na = 0;
    struct limit_account acc[LIMIT_ACCOUNTS];
    if (cf->account_from == 1) {                /* every line of the field */
        struct stage_field f;
        size_t nl = strlen(cf->account_name);
        for (uint32_t i = 0; na >= 0 && stage_request_field(sx, i, &f); i++)
            if (f.name_len == nl && !strncasecmp(f.name, cf->account_name, nl) &&
                !account_add(acc, &na, f.value, f.value_len))
                na = -1;
    } else if (cf->account_from > 1 && stage_request_body(sx, &v, &vl))
        na = limit_accounts(v, vl, cf->account_name,
                            cf->account_from == 3 ? LIMIT_ACCOUNT_JSON : LIMIT_ACCOUNT_FORM, acc);
    if (na < 0)
        return ambiguous(sx, cx);
    for (int k = 0; k < na; k++)
        cx->keys[1 + k] = limit_hash(g->seed ^ 0xacc, acc[k].v, acc[k].len);
    int64_t now = now_ns(), until = 0;
    for (int k = 0; k < NKEYS; k++) {
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
    memset(cx->keys, 0, sizeof cx->keys);  /* a refusal is not a failed login */
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
    for (int k = 0; k < NKEYS; k++) {
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
