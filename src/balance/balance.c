/* balance/balance.c: see balance.h. */
#include "balance.h"

#include "conf/conf.h"

uint32_t balance_pick(const struct conf_upstream *u, struct balance_cursor *cur, uint32_t skip)
{
    uint32_t n = u->nservers;
    if (cur->server >= n)
        cur->server = cur->used = 0;
    for (uint32_t tries = 0; tries <= n; tries++) {
        if (cur->used >= u->servers[cur->server].weight) {
            cur->server = (cur->server + 1) % n;
            cur->used = 0;
        }
        uint32_t s = cur->server;
        cur->used++;
        if (s != skip || n == 1)
            return s;
        cur->used = u->servers[s].weight;    /* move on from the failed one */
    }
    return cur->server;
}
