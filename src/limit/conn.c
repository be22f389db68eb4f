/* limit/conn.c: open connections per client address for
 * limits.max_connections_per_ip (see limit.h): one small open-addressing
 * table for the process, under one lock (taken once per connection, not
 * per request). An address without connections leaves the table. */
#include "limit.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define SLOTS 65536             /* power of two; more addresses than this are not limited */

struct slot {
    uint8_t addr[16];
    uint8_t family;             /* 0: free */
    uint32_t n;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct slot *T;
static uint32_t used;

static uint32_t slot_of(int family, const uint8_t *addr, bool insert)
{
    size_t len = family == 2 /* AF_INET */ ? 4 : 16;
    uint64_t h = limit_hash((uint64_t)family, addr, len);
    for (uint32_t i = 0; i < SLOTS; i++) {
        uint32_t k = (uint32_t)(h + i) & (SLOTS - 1);
        struct slot *s = &T[k];
        if (s->family == family && !memcmp(s->addr, addr, len))
            return k;
        if (!s->family) {
            if (!insert || used >= SLOTS * 3 / 4)
                return UINT32_MAX;
            s->family = (uint8_t)family;
            memcpy(s->addr, addr, len);
            s->n = 0;
            used++;
            return k;
        }
    }
    return UINT32_MAX;
}

bool limit_conn_take(int family, const uint8_t *addr, uint32_t max)
{
    bool ok = true;
    pthread_mutex_lock(&mu);
    if (!T)
        T = calloc(SLOTS, sizeof *T);
    uint32_t k = T ? slot_of(family, addr, true) : UINT32_MAX;
    if (k != UINT32_MAX) {
        if (T[k].n >= max)
            ok = false;
        else
            T[k].n++;
    }
    pthread_mutex_unlock(&mu);
    return ok;
}

/* Remove slot k, moving up the entries of its probe run (linear probing). */
static void slot_delete(uint32_t k)
{
    T[k].family = 0;
    used--;
    for (uint32_t j = (k + 1) & (SLOTS - 1); T[j].family; j = (j + 1) & (SLOTS - 1)) {
        struct slot s = T[j];
        T[j].family = 0;
        used--;
        uint32_t to = slot_of(s.family, s.addr, true);
        T[to].n = s.n;
    }
}

void limit_conn_release(int family, const uint8_t *addr)
{
    pthread_mutex_lock(&mu);
    uint32_t k = T ? slot_of(family, addr, false) : UINT32_MAX;
    if (k != UINT32_MAX && T[k].n && --T[k].n == 0)
        slot_delete(k);
    pthread_mutex_unlock(&mu);
}
