/* balance/lb_chash.c: consistent hashing with virtual nodes.
 *
 * Each tier (primaries, backups) has a ring built once per group: every
 * server puts 160 points per unit of weight on it (scaled down if the ring
 * would exceed 2^20 points, keeping at least 16 per server). A point's
 * position is a hash of the server's address text and the point's number, not
 * of its index, so the ring of a group is the same whatever the order of the
 * servers in the file, and removing one server from the configuration leaves
 * every other point where it was. A key goes to the owner of the first point
 * at or after the key's hash (wrapping), skipping servers that cannot be used.
 * So removing or losing one of N servers moves only the keys it owned, about
 * 1/N of them, and they come back when it does. Weights are the configured
 * ones (slow_start would move keys).
 * Cost: O(log V) for the search, plus a short walk when servers are down.
 */
#include "lb.h"

#include <stdlib.h>
#include <string.h>

#define VNODES_PER_WEIGHT 160u
#define MAX_POINTS (1u << 20)
#define MIN_VNODES 16u

struct point {
    uint64_t hash;
    uint32_t server;
};

struct ring {
    uint32_t n;
    struct point *p;
};

struct chash {
    struct ring r[2];       /* [0] primaries, [1] backups */
};

static int point_cmp(const void *a, const void *b)
{
    const struct point *x = a, *y = b;
    if (x->hash != y->hash)
        return x->hash < y->hash ? -1 : 1;
    return x->server < y->server ? -1 : x->server > y->server;
}

static int build(const struct balance_group *g, struct ring *r, bool backup)
{
    uint64_t want = 0;
    uint32_t members = 0;
    for (uint32_t i = 0; i < g->n; i++)
        if (g->sc[i].backup == backup) {
            want += (uint64_t)g->sc[i].weight * VNODES_PER_WEIGHT;
            members++;
        }
    if (!members)
        return 0;
    /* scale to fit, in 1/1024ths, never below MIN_VNODES per server */
    uint64_t scale = want > MAX_POINTS ? (uint64_t)MAX_POINTS * 1024 / want : 1024;
    uint64_t total = 0;
    for (uint32_t i = 0; i < g->n; i++)
        if (g->sc[i].backup == backup) {
            uint64_t v = (uint64_t)g->sc[i].weight * VNODES_PER_WEIGHT * scale / 1024;
            total += v < MIN_VNODES ? MIN_VNODES : v;
        }
    r->p = malloc(total * sizeof *r->p);
    if (!r->p)
        return -1;
    for (uint32_t i = 0; i < g->n; i++) {
        if (g->sc[i].backup != backup)
            continue;
        uint64_t v = (uint64_t)g->sc[i].weight * VNODES_PER_WEIGHT * scale / 1024;
        if (v < MIN_VNODES)
            v = MIN_VNODES;
        const char *text = g->sc[i].addr.text;
        uint64_t base = lb_hash(text, strlen(text));
        for (uint64_t k = 0; k < v; k++) {
            r->p[r->n].hash = lb_mix(base + (k + 1) * UINT64_C(0x9e3779b97f4a7c15));
            r->p[r->n].server = i;
            r->n++;
        }
    }
    qsort(r->p, r->n, sizeof *r->p, point_cmp);
    return 0;
}

static int chash_init(struct balance_group *g)
{
    struct chash *ch = calloc(1, sizeof *ch);
    if (!ch)
        return -1;
    g->algo = ch;
    if (build(g, &ch->r[0], false) < 0 || build(g, &ch->r[1], true) < 0)
        return -1;
    return 0;
}

static void chash_fini(struct balance_group *g)
{
    struct chash *ch = g->algo;
    if (!ch)
        return;
    free(ch->r[0].p);
    free(ch->r[1].p);
    free(ch);
    g->algo = NULL;
}

static uint32_t chash_pick(const struct balance_group *g, struct balance_worker *w,
                           const struct balance_ctx *ctx, const struct lb_set *set)
{
    if (!ctx->key || !ctx->key_len)
        return lb_wrr_pick(g, w, ctx, set);
    const struct chash *ch = g->algo;
    const struct ring *r = &ch->r[set->backup ? 1 : 0];
    uint64_t h = lb_hash(ctx->key, ctx->key_len);
    /* first point with hash >= h */
    uint32_t lo = 0, hi = r->n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (r->p[mid].hash < h)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (uint32_t j = 0; j < r->n; j++) {
        uint32_t s = r->p[(lo + j) % r->n].server;
        if (lb_in(set, s))
            return s;
    }
    return lb_wrr_pick(g, w, ctx, set);     /* not reached: set is within the tier */
}

const struct lb_ops lb_chash_ops = {
    .name = "hash",
    .init = chash_init,
    .fini = chash_fini,
    .pick = chash_pick,
};
