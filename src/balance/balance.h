/* balance/balance.h: choosing a server of an upstream group.
 *
 * For now one algorithm: round robin over the group's servers, weighted by
 * repeating each server `weight` times in the cycle. The state is a cursor
 * that the caller owns (one per worker per group), so picking never takes a
 * lock. The balancing issue replaces this with smooth weighted round robin,
 * ip_hash, least_conn and consistent hashing behind the same call.
 */
#ifndef PORTICO_BALANCE_H
#define PORTICO_BALANCE_H

#include <stdint.h>

struct conf_upstream;

struct balance_cursor {
    uint32_t server;        /* index of the current server */
    uint32_t used;          /* picks of it in this cycle */
};

/* Index of the next server to try. `skip` is a server to avoid when another
 * exists (the one that just failed), or UINT32_MAX. */
uint32_t balance_pick(const struct conf_upstream *u, struct balance_cursor *cur, uint32_t skip);

#endif
