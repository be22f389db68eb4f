/* balance/lb.h: private to src/balance (and its unit tests): the group's
 * layout, the table of callbacks each algorithm fills, shared helpers.
 *
 * Adding an algorithm: one new lb_*.c defining a `const struct lb_ops`, one
 * entry in lb_ops_for() in balance.c, one value in enum conf_balance.
 */
#ifndef PORTICO_BALANCE_LB_H
#define PORTICO_BALANCE_LB_H

#include "balance.h"

#include <stdalign.h>
#include <stdatomic.h>

#include "conf/conf.h"

/* Effective weights are the configured weight times this, so that slow_start
 * can ramp a weight-1 server in fine steps. Smooth WRR is scale-invariant, so
 * sequences are the same as with the plain weights. */
#define LB_WSCALE 1000u

/* What the group copies from each conf_server. Immutable after creation. */
struct lb_server_conf {
    struct conf_addr addr;
    uint32_t weight;
    bool backup;
    uint64_t slow_start;        /* ms, 0 = off */
};

/* Passive failure window, packed in one atomic word so a failure is counted
 * with one CAS: bits 0-22 failures in the window, bit 23 "on probation" (just
 * back from a passive down: the next failure takes it out again), bits 24-63
 * the window's start in ms. */
#define LB_FW_COUNT_MASK ((UINT64_C(1) << 23) - 1)
#define LB_FW_PROBATION  (UINT64_C(1) << 23)
#define LB_FW_START(w)   ((w) >> 24)
#define LB_FW_MAKE(start, count) (((uint64_t)(start) << 24) | (uint64_t)(count))

/* Run-time state of one server, written by any worker and by the checker.
 * One cache line each, so workers touching different servers do not share
 * lines. */
struct lb_server {
    alignas(64) atomic_bool hc_down;    /* active checks say down (written by the checker) */
    _Atomic uint64_t down_until;        /* passive: out until this ms; 0 = not out */
    _Atomic uint64_t fail_word;         /* passive window, see LB_FW_* */
    _Atomic uint64_t recovered_at;      /* ms it last came back (slow_start); 0 = full weight */
    atomic_uint active;                 /* attempts in flight, all workers */
    _Atomic uint64_t changes;           /* state transitions, for metrics */
};

/* The servers a pick may return: one tier (primaries, or backups when no
 * primary can be used), available, not yet tried by the request. Only the
 * first (n + 63) / 64 words are initialised: ask lb_in() about i < n only. */
struct lb_set {
    uint64_t bits[BALANCE_TRIED_WORDS];
    uint32_t count;
    bool backup;
};

static inline bool lb_in(const struct lb_set *s, uint32_t i)
{
    return (s->bits[i / 64] >> (i % 64)) & 1u;
}

static inline void lb_add(struct lb_set *s, uint32_t i)
{
    s->bits[i / 64] |= UINT64_C(1) << (i % 64);
    s->count++;
}

struct balance_group;
struct balance_worker;

/* One algorithm. `init` builds immutable per-group tables in g->algo (may be
 * NULL); `fini` frees them. `pick` is called only with set->count >= 2 and
 * must return a member of `set`; it runs concurrently in many workers, so it
 * may write only `w` and read `g`. */
struct lb_ops {
    const char *name;
    int (*init)(struct balance_group *g);       /* 0, or -1 on out of memory */
    void (*fini)(struct balance_group *g);
    uint32_t (*pick)(const struct balance_group *g, struct balance_worker *w,
                     const struct balance_ctx *ctx, const struct lb_set *set);
};

struct balance_group {
    char *name;
    const struct lb_ops *ops;
    uint32_t n;
    struct lb_server_conf *sc;  /* [n] */
    struct lb_server *st;       /* [n], 64-byte aligned */
    struct conf_health health;
    struct conf_passive passive;
    atomic_uint gen;            /* bumped on every availability change */
    void *algo;                 /* the algorithm's tables (ops->init) */
};

struct balance_worker {
    const struct balance_group *g;
    unsigned gen;               /* g->gen when cur[] was last reset */
    uint32_t seed;
    int64_t cur[];              /* smooth WRR current weights, [g->n] */
};

extern const struct lb_ops lb_wrr_ops;
extern const struct lb_ops lb_iphash_ops;
extern const struct lb_ops lb_leastconn_ops;
extern const struct lb_ops lb_chash_ops;

/* Smooth WRR over `set` with effective weights; shared by the hash
 * algorithms for requests without a key and by least_conn for ties. */
uint32_t lb_wrr_pick(const struct balance_group *g, struct balance_worker *w,
                     const struct balance_ctx *ctx, const struct lb_set *set);

/* Effective weight of server i now (configured weight x LB_WSCALE, ramped by
 * slow_start); always >= 1. */
uint64_t lb_weight(const struct balance_group *g, uint32_t i, uint64_t now);

/* 64-bit hashing: FNV-1a finished with a strong mix, and the mix alone. */
uint64_t lb_hash(const void *p, size_t n);
uint64_t lb_mix(uint64_t x);

/* Set the active-check verdict of a server (the checker's only write; tests
 * use it too). Logs and counts a change; `reason` says why. */
void lb_set_active_down(const struct balance_group *g, uint32_t s, bool down, uint64_t now,
                        const char *reason);

#endif
