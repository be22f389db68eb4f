/* balance/lb_leastconn.c: the fewest attempts in flight relative to weight.
 *
 * The counts are the per-server atomics that balance_choose() increments and
 * balance_release() decrements, so they cover every worker. Server a is less
 * loaded than b when active_a / weight_a < active_b / weight_b, compared as
 * active_a * weight_b < active_b * weight_a (effective weights, so slow_start
 * applies). Ties (common at low load, when everything is at 0) are broken by
 * smooth WRR among the tied servers, as nginx does, so an idle group still
 * spreads by weight. The counts are read without a lock, so two workers
 * picking at the same instant may both choose the same server: harmless.
 * Cost: two passes over the servers.
 */
#include "lb.h"

#include <string.h>

static uint32_t leastconn_pick(const struct balance_group *g, struct balance_worker *w,
                               const struct balance_ctx *ctx, const struct lb_set *set)
{
    uint64_t ba = 0, bw = 1;
    uint32_t best = UINT32_MAX, ties = 0;
    uint64_t act[64], wt[64];       /* the first 64 servers' values, reused by pass 2 */
    for (uint32_t i = 0; i < g->n; i++) {
        if (!lb_in(set, i))
            continue;
        uint64_t a = atomic_load_explicit(&g->st[i].active, memory_order_relaxed);
        uint64_t ew = lb_weight(g, i, ctx->now_ms);
        if (i < 64) {
            act[i] = a;
            wt[i] = ew;
        }
        if (best == UINT32_MAX || a * bw < ba * ew) {
            best = i;
            ba = a;
            bw = ew;
            ties = 1;
        } else if (a * bw == ba * ew) {
            ties++;
        }
    }
    if (ties < 2)
        return best;
    struct lb_set tied;
    memset(tied.bits, 0, ((g->n + 63) / 64) * sizeof tied.bits[0]);
    tied.count = 0;
    tied.backup = set->backup;
    for (uint32_t i = best; i < g->n; i++) {
        if (!lb_in(set, i))
            continue;
        uint64_t a, ew;
        if (i < 64) {
            a = act[i];
            ew = wt[i];
        } else {
            a = atomic_load_explicit(&g->st[i].active, memory_order_relaxed);
            ew = lb_weight(g, i, ctx->now_ms);
        }
        if (a * bw == ba * ew)
            lb_add(&tied, i);
    }
    if (tied.count < 2)
        return best;        /* the counts moved under us: the first is as good */
    return lb_wrr_pick(g, w, ctx, &tied);
}

const struct lb_ops lb_leastconn_ops = {
    .name = "least_conn",
    .pick = leastconn_pick,
};
