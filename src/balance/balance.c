/* balance/balance.c: the group and its per-server state, availability,
 * dispatch to the algorithm (lb_*.c), passive health. See balance.h. */
#include "lb.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"

/* ---------------------------------------------------------------- helpers */

uint64_t lb_mix(uint64_t x)
{
    /* the MurmurHash3 64-bit finaliser: a bijection with full avalanche */
    x ^= x >> 33;
    x *= UINT64_C(0xff51afd7ed558ccd);
    x ^= x >> 33;
    x *= UINT64_C(0xc4ceb9fe1a85ec53);
    x ^= x >> 33;
    return x;
}

uint64_t lb_hash(const void *p, size_t n)
{
    const unsigned char *s = p;
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= UINT64_C(0x100000001b3);
    }
    return lb_mix(h ^ n);
}

uint64_t lb_weight(const struct balance_group *g, uint32_t i, uint64_t now)
{
    uint64_t w = (uint64_t)g->sc[i].weight * LB_WSCALE;
    uint64_t ss = g->sc[i].slow_start;
    if (!ss)
        return w;
    uint64_t at = atomic_load_explicit(&g->st[i].recovered_at, memory_order_relaxed);
    if (!at)
        return w;
    uint64_t elapsed = now > at ? now - at : 0;
    if (elapsed >= ss)
        return w;
    uint64_t e = w * elapsed / ss;
    return e ? e : 1;
}

static const struct lb_ops *lb_ops_for(enum conf_balance b)
{
    switch (b) {
    case CONF_BALANCE_WEIGHTED:   return &lb_wrr_ops;
    case CONF_BALANCE_IP_HASH:    return &lb_iphash_ops;
    case CONF_BALANCE_LEAST_CONN: return &lb_leastconn_ops;
    case CONF_BALANCE_HASH:       return &lb_chash_ops;
    }
    return NULL;
}

/* Count a transition of server s and tell the workers' smooth-WRR state.
 * The group is const for the workers (its configuration never changes) but
 * its atomics are not: every group is allocated by balance_group_new(), never
 * defined const, so writing them through the cast is well defined. */
static void changed(const struct balance_group *g, uint32_t s)
{
    atomic_fetch_add_explicit(&g->st[s].changes, 1, memory_order_relaxed);
    atomic_fetch_add_explicit((atomic_uint *)&g->gen, 1, memory_order_release);
}

static void recovered(const struct balance_group *g, uint32_t s, uint64_t now)
{
    atomic_store_explicit(&g->st[s].recovered_at, now ? now : 1, memory_order_relaxed);
}

/* ---------------------------------------------------------------- groups */

struct balance_group *balance_group_new(const struct conf_upstream *u, char *err, size_t errlen)
{
    if (u->nservers == 0 || u->nservers > BALANCE_MAX_SERVERS) {
        snprintf(err, errlen, "upstream %s: %u servers (1 to %d allowed)", u->name, u->nservers,
                 BALANCE_MAX_SERVERS);
        return NULL;
    }
    const struct lb_ops *ops = lb_ops_for(u->balance);
    if (!ops) {
        snprintf(err, errlen, "upstream %s: unknown balancing algorithm %d", u->name,
                 (int)u->balance);
        return NULL;
    }
    struct balance_group *g = calloc(1, sizeof *g);
    if (!g)
        goto oom;
    g->ops = ops;
    g->n = u->nservers;
    g->health = u->health;
    g->passive = u->passive;
    atomic_init(&g->gen, 0);
    g->name = strdup(u->name ? u->name : "");
    g->sc = calloc(g->n, sizeof *g->sc);
    size_t stsize = ((size_t)g->n * sizeof *g->st + 63) / 64 * 64;
    g->st = aligned_alloc(64, stsize);
    if (!g->name || !g->sc || !g->st)
        goto oom;
    memset(g->st, 0, stsize);
    for (uint32_t i = 0; i < g->n; i++) {
        const struct conf_server *cs = &u->servers[i];
        g->sc[i] = (struct lb_server_conf){ .addr = cs->addr, .weight = cs->weight ? cs->weight : 1,
                                            .backup = cs->backup, .slow_start = cs->slow_start };
        struct lb_server *st = &g->st[i];
        atomic_init(&st->hc_down, false);
        atomic_init(&st->down_until, 0);
        atomic_init(&st->fail_word, 0);
        atomic_init(&st->recovered_at, 0);
        atomic_init(&st->active, 0);
        atomic_init(&st->changes, 0);
    }
    if (ops->init && ops->init(g) < 0)
        goto oom;
    return g;
oom:
    snprintf(err, errlen, "upstream %s: out of memory", u->name);
    balance_group_free(g);
    return NULL;
}

void balance_group_free(struct balance_group *g)
{
    if (!g)
        return;
    if (g->ops && g->ops->fini)
        g->ops->fini(g);
    free(g->name);
    free(g->sc);
    free(g->st);
    free(g);
}

void balance_group_inherit(struct balance_group *g, const struct balance_group *old)
{
    for (uint32_t i = 0; i < g->n; i++) {
        const struct conf_addr *a = &g->sc[i].addr;
        for (uint32_t j = 0; j < old->n; j++) {
            const struct conf_addr *b = &old->sc[j].addr;
            if (!conf_addr_equal(a, b) || strcmp(a->text, b->text))
                continue;
            const struct lb_server *o = &old->st[j];
            struct lb_server *n = &g->st[i];
            if (g->health.enabled)
                atomic_store_explicit(&n->hc_down, atomic_load(&o->hc_down), memory_order_relaxed);
            atomic_store_explicit(&n->down_until, atomic_load(&o->down_until), memory_order_relaxed);
            atomic_store_explicit(&n->fail_word, atomic_load(&o->fail_word), memory_order_relaxed);
            atomic_store_explicit(&n->recovered_at, atomic_load(&o->recovered_at), memory_order_relaxed);
            atomic_store_explicit(&n->changes, atomic_load(&o->changes), memory_order_relaxed);
            break;
        }
    }
    atomic_fetch_add_explicit(&g->gen, 1, memory_order_release);
}

struct balance_worker *balance_worker_new(const struct balance_group *g, uint32_t seed)
{
    struct balance_worker *w = calloc(1, sizeof *w + (size_t)g->n * sizeof w->cur[0]);
    if (!w)
        return NULL;
    w->g = g;
    w->seed = seed;
    /* cur[] is reset (and desynchronised by seed) on the first pick */
    w->gen = atomic_load_explicit(&g->gen, memory_order_acquire) - 1;
    return w;
}

void balance_worker_free(struct balance_worker *w) { free(w); }

uint32_t balance_group_size(const struct balance_group *g) { return g->n; }
const char *balance_group_name(const struct balance_group *g) { return g->name; }

const char *balance_server_name(const struct balance_group *g, int s)
{
    return s >= 0 && (uint32_t)s < g->n ? g->sc[s].addr.text : "?";
}

bool balance_server_backup(const struct balance_group *g, int s)
{
    return s >= 0 && (uint32_t)s < g->n && g->sc[s].backup;
}

uint32_t balance_server_active(const struct balance_group *g, int s)
{
    return atomic_load_explicit(&g->st[s].active, memory_order_relaxed);
}

uint64_t balance_server_changes(const struct balance_group *g, int s)
{
    return atomic_load_explicit(&g->st[s].changes, memory_order_relaxed);
}

bool balance_fail_on_5xx(const struct balance_group *g) { return g->passive.on_5xx; }

enum balance_state balance_server_state(const struct balance_group *g, int s, uint64_t now)
{
    if (atomic_load_explicit(&g->st[s].hc_down, memory_order_relaxed))
        return BALANCE_DOWN_ACTIVE;
    uint64_t du = atomic_load_explicit(&g->st[s].down_until, memory_order_relaxed);
    return du && du > now ? BALANCE_DOWN_PASSIVE : BALANCE_UP;
}

/* ---------------------------------------------------------------- passive health */

/* A passive down period that ended at `du` is over: whoever wins the CAS logs
 * the change and puts the server on probation. */
static void passive_revive(const struct balance_group *g, uint32_t s, uint64_t du, uint64_t now)
{
    struct lb_server *st = &g->st[s];
    if (!atomic_compare_exchange_strong_explicit(&st->down_until, &du, 0, memory_order_acq_rel,
                                                 memory_order_relaxed))
        return;
    atomic_store_explicit(&st->fail_word, LB_FW_MAKE(now, 0) | LB_FW_PROBATION,
                          memory_order_relaxed);
    recovered(g, s, now);
    changed(g, s);
    log_info("upstream %s server %s: down -> up (passive: fail_timeout %llums elapsed, on probation)",
             g->name, g->sc[s].addr.text, (unsigned long long)g->passive.fail_timeout);
}

void balance_report(const struct balance_group *g, int server, bool ok, uint64_t now)
{
    if (server < 0 || (uint32_t)server >= g->n)
        return;
    uint32_t s = (uint32_t)server;
    struct lb_server *st = &g->st[s];
    uint64_t w = atomic_load_explicit(&st->fail_word, memory_order_relaxed);
    if (ok) {
        /* the common case: one load. A success only ends probation. */
        if (w & LB_FW_PROBATION)
            atomic_compare_exchange_strong_explicit(&st->fail_word, &w, w & ~LB_FW_PROBATION,
                                                    memory_order_relaxed, memory_order_relaxed);
        return;
    }
    uint32_t max = g->passive.max_fails;
    uint64_t window = g->passive.fail_timeout;
    if (!max || g->n == 1)
        return;                 /* off; or nowhere else to go, as nginx: never out */
    uint64_t du = atomic_load_explicit(&st->down_until, memory_order_acquire);
    if (du) {
        if (du > now)
            return;             /* already out: late reports of attempts in flight */
        passive_revive(g, s, du, now);
        du = 0;
        w = atomic_load_explicit(&st->fail_word, memory_order_relaxed);
    }
    bool trip, probation;
    uint64_t count;
    for (;;) {
        uint64_t nw;
        uint64_t start = LB_FW_START(w);
        count = w & LB_FW_COUNT_MASK;
        probation = w & LB_FW_PROBATION;
        if (probation) {
            trip = true;
            nw = 0;
        } else {
            if (count == 0 || (now > start && now - start >= window)) {
                start = now;        /* a new window opens with this failure */
                count = 1;
            } else if (count < LB_FW_COUNT_MASK) {
                count++;
            }
            trip = count >= max;
            nw = trip ? 0 : LB_FW_MAKE(start, count);
        }
        if (atomic_compare_exchange_weak_explicit(&st->fail_word, &w, nw, memory_order_relaxed,
                                                  memory_order_relaxed))
            break;
    }
    if (!trip)
        return;
    if (!atomic_compare_exchange_strong_explicit(&st->down_until, &du, now + window,
                                                 memory_order_acq_rel, memory_order_relaxed))
        return;                 /* another worker took it out first */
    changed(g, s);
    if (probation)
        log_warn("upstream %s server %s: up -> down (passive: failed again after coming back; "
                 "out for %llums)", g->name, g->sc[s].addr.text, (unsigned long long)window);
    else
        log_warn("upstream %s server %s: up -> down (passive: %llu failures within %llums; "
                 "out for %llums)", g->name, g->sc[s].addr.text, (unsigned long long)count,
                 (unsigned long long)window, (unsigned long long)window);
}

/* ---------------------------------------------------------------- active health */

void lb_set_active_down(const struct balance_group *g, uint32_t s, bool down, uint64_t now,
                        const char *reason)
{
    struct lb_server *st = &g->st[s];
    bool was = atomic_load_explicit(&st->hc_down, memory_order_relaxed);
    if (was == down)
        return;
    atomic_store_explicit(&st->hc_down, down, memory_order_release);
    if (!down)
        recovered(g, s, now);
    changed(g, s);
    if (down)
        log_warn("upstream %s server %s: up -> down (health check: %s)", g->name,
                 g->sc[s].addr.text, reason);
    else
        log_info("upstream %s server %s: down -> up (health check: %s)", g->name,
                 g->sc[s].addr.text, reason);
}

/* ---------------------------------------------------------------- picking */

static bool available(const struct balance_group *g, uint32_t s, uint64_t now)
{
    const struct lb_server *st = &g->st[s];
    if (atomic_load_explicit(&st->hc_down, memory_order_relaxed))
        return false;
    uint64_t du = atomic_load_explicit(&st->down_until, memory_order_relaxed);
    if (!du)
        return true;
    if (du > now)
        return false;
    passive_revive(g, s, du, now);
    return true;
}

static uint32_t first_in(const struct lb_set *set, uint32_t words)
{
    for (uint32_t k = 0; k < words; k++)
        if (set->bits[k])
            return k * 64 + (uint32_t)__builtin_ctzll(set->bits[k]);
    return 0;   /* not reached: callers check count */
}

/* Reset the smooth-WRR weights after an availability change (stale current
 * weights of a server that left or came back would skew the next picks),
 * then advance by a few picks so workers do not move in lockstep. */
static void worker_resync(const struct balance_group *g, struct balance_worker *w,
                          const struct balance_ctx *ctx, const struct lb_set *set, unsigned gen)
{
    memset(w->cur, 0, (size_t)g->n * sizeof w->cur[0]);
    w->gen = gen;
    if (set->count < 2)
        return;
    for (uint32_t k = w->seed % set->count; k > 0; k--)
        lb_wrr_pick(g, w, ctx, set);
}

int balance_choose(const struct balance_group *g, struct balance_worker *w,
                   const struct balance_ctx *ctx, const uint64_t *tried)
{
    struct lb_set prim, back;
    uint32_t words = (g->n + 63) / 64;
    memset(prim.bits, 0, words * sizeof prim.bits[0]);
    memset(back.bits, 0, words * sizeof back.bits[0]);
    prim.count = back.count = 0;
    prim.backup = false;
    back.backup = true;
    bool any = false;
    for (uint32_t i = 0; i < g->n; i++) {
        if (!available(g, i, ctx->now_ms))
            continue;
        any = true;
        if (tried && ((tried[i / 64] >> (i % 64)) & 1u))
            continue;
        lb_add(g->sc[i].backup ? &back : &prim, i);
    }
    const struct lb_set *set = prim.count ? &prim : &back;
    if (!set->count)
        return any ? BALANCE_EXHAUSTED : BALANCE_NONE;
    /* only the first `words` words are set: lb_in() is only asked about i < n */

    unsigned gen = atomic_load_explicit(&g->gen, memory_order_acquire);
    if (gen != w->gen)
        worker_resync(g, w, ctx, set, gen);

    uint32_t s = set->count == 1 ? first_in(set, words) : g->ops->pick(g, w, ctx, set);
    atomic_fetch_add_explicit(&g->st[s].active, 1, memory_order_relaxed);
    return (int)s;
}

void balance_release(const struct balance_group *g, int server)
{
    if (server < 0 || (uint32_t)server >= g->n)
        return;
    atomic_uint *a = &g->st[server].active;
    unsigned v = atomic_load_explicit(a, memory_order_relaxed);
    /* never wrap below zero, even on a caller's double release */
    while (v && !atomic_compare_exchange_weak_explicit(a, &v, v - 1, memory_order_relaxed,
                                                       memory_order_relaxed))
        ;
}

const char *balance_cookie_value(const char *h, size_t len, const char *name, size_t nlen,
                                 size_t *vlen)
{
    size_t i = 0;
    while (i < len) {
        while (i < len && (h[i] == ' ' || h[i] == '\t' || h[i] == ';'))
            i++;
        size_t ks = i;
        while (i < len && h[i] != '=' && h[i] != ';')
            i++;
        size_t ke = i;
        while (ke > ks && (h[ke - 1] == ' ' || h[ke - 1] == '\t'))
            ke--;
        if (i >= len || h[i] != '=') {
            continue;           /* a pair without "=": skip it */
        }
        i++;
        size_t vs = i;
        while (i < len && h[i] != ';')
            i++;
        size_t ve = i;
        while (vs < ve && (h[vs] == ' ' || h[vs] == '\t'))
            vs++;
        while (ve > vs && (h[ve - 1] == ' ' || h[ve - 1] == '\t'))
            ve--;
        if (ve - vs >= 2 && h[vs] == '"' && h[ve - 1] == '"') {
            vs++;
            ve--;
        }
        if (ke - ks == nlen && !memcmp(h + ks, name, nlen)) {
            *vlen = ve - vs;
            return h + vs;
        }
    }
    return NULL;
}
