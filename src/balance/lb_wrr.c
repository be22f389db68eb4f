/* balance/lb_wrr.c: smooth weighted round robin, as in nginx.
 *
 * Each pick adds every candidate's effective weight to its current weight,
 * takes the candidate with the highest current weight (the lowest index on a
 * tie) and subtracts the total of the candidates' weights from it. Over any
 * window of W picks (W = sum of weights) each server gets exactly its weight,
 * and no prefix of the sequence strays from the ideal share by more than one
 * pick: weights 5,1,1 give a a b a c a a, never a a a a a b c.
 *
 * The current weights live in the worker's struct balance_worker, so picking
 * writes nothing shared. Only candidates (available, untried, right tier)
 * take part, so a server that is down neither receives nor accumulates turns.
 * Cost: O(servers) per pick.
 */
#include "lb.h"

uint32_t lb_wrr_pick(const struct balance_group *g, struct balance_worker *w,
                     const struct balance_ctx *ctx, const struct lb_set *set)
{
    int64_t total = 0;
    uint32_t best = UINT32_MAX;
    for (uint32_t i = 0; i < g->n; i++) {
        if (!lb_in(set, i))
            continue;
        int64_t ew = (int64_t)lb_weight(g, i, ctx->now_ms);
        w->cur[i] += ew;
        total += ew;
        if (best == UINT32_MAX || w->cur[i] > w->cur[best])
            best = i;
    }
    w->cur[best] -= total;
    return best;
}

const struct lb_ops lb_wrr_ops = {
    .name = "weighted",
    .pick = lb_wrr_pick,
};
