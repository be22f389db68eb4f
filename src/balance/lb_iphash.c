/* balance/lb_iphash.c: the client's address picks the server.
 *
 * Each tier (primaries, backups) has a table of cumulative weights built once
 * per group. The whole address (4 or 16 bytes) is hashed; h mod total weight
 * lands on a server in proportion to its weight. If that server cannot be
 * used, h is rehashed and the lookup repeated (up to 20 times, then a scan in
 * index order from the last landing point). The probe sequence depends only
 * on the address, so a client stays on its server while that server is up,
 * and when a server goes down only its own clients move; they come back when
 * it does. Weights are the configured ones: slow_start would move clients.
 * Cost: O(log servers) per probe, one probe unless servers are down.
 */
#include "lb.h"

#include <stdlib.h>

struct tier {
    uint32_t n;
    uint64_t total;
    uint64_t *cum;          /* cum[k] = sum of weights of members 0..k */
    uint32_t *server;       /* member k's server index */
};

struct iphash {
    struct tier t[2];       /* [0] primaries, [1] backups */
};

static int iphash_init(struct balance_group *g)
{
    struct iphash *ih = calloc(1, sizeof *ih);
    if (!ih)
        return -1;
    g->algo = ih;
    for (int b = 0; b < 2; b++) {
        struct tier *t = &ih->t[b];
        t->cum = calloc(g->n, sizeof *t->cum);
        t->server = calloc(g->n, sizeof *t->server);
        if (!t->cum || !t->server)
            return -1;
        for (uint32_t i = 0; i < g->n; i++) {
            if (g->sc[i].backup != (b == 1))
                continue;
            t->total += g->sc[i].weight;
            t->cum[t->n] = t->total;
            t->server[t->n++] = i;
        }
    }
    return 0;
}

static void iphash_fini(struct balance_group *g)
{
    struct iphash *ih = g->algo;
    if (!ih)
        return;
    for (int b = 0; b < 2; b++) {
        free(ih->t[b].cum);
        free(ih->t[b].server);
    }
    free(ih);
    g->algo = NULL;
}

/* The member whose weight range holds x (0 <= x < total). */
static uint32_t lookup(const struct tier *t, uint64_t x)
{
    uint32_t lo = 0, hi = t->n - 1;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (t->cum[mid] > x)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

static uint32_t iphash_pick(const struct balance_group *g, struct balance_worker *w,
                            const struct balance_ctx *ctx, const struct lb_set *set)
{
    if (!ctx->addr || !ctx->addr_len)
        return lb_wrr_pick(g, w, ctx, set);
    const struct iphash *ih = g->algo;
    const struct tier *t = &ih->t[set->backup ? 1 : 0];
    uint64_t h = lb_hash(ctx->addr, ctx->addr_len);
    uint32_t k = 0;
    for (int probe = 0; probe < 20; probe++) {
        k = lookup(t, h % t->total);
        if (lb_in(set, t->server[k]))
            return t->server[k];
        h = lb_mix(h + UINT64_C(0x9e3779b97f4a7c15));
    }
    for (uint32_t j = 0; j < t->n; j++) {
        uint32_t s = t->server[(k + j) % t->n];
        if (lb_in(set, s))
            return s;
    }
    return lb_wrr_pick(g, w, ctx, set);     /* not reached: set is within the tier */
}

const struct lb_ops lb_iphash_ops = {
    .name = "ip_hash",
    .init = iphash_init,
    .fini = iphash_fini,
    .pick = iphash_pick,
};
