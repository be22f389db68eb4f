/* limit/gcra.c: the generic cell rate algorithm and the local key table
 * (see limit.h). */
#include "limit.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

void limit_gcra_init(struct limit_gcra *g, uint32_t count, uint64_t period_ms, uint32_t burst)
{
    g->interval_ns = period_ms * 1000000ull / (count ? count : 1);
    if (!g->interval_ns)
        g->interval_ns = 1;
    g->tolerance_ns = g->interval_ns * (uint64_t)burst;
}

void limit_gcra(const struct limit_gcra *g, int64_t *tat, int64_t now_ns, struct limit_result *r)
{
    int64_t t = *tat > now_ns ? *tat : now_ns;      /* an idle key starts afresh */
    int64_t next = t + (int64_t)g->interval_ns;
    int64_t allow_at = next - (int64_t)g->tolerance_ns - (int64_t)g->interval_ns;
    if (allow_at > now_ns) {
        r->admitted = false;
        r->retry_after_ms = (uint64_t)(allow_at - now_ns + 999999) / 1000000;
        r->remaining = 0;
        r->reset_ms = (uint64_t)(t - now_ns + 999999) / 1000000;
        return;
    }
    *tat = next;
    r->admitted = true;
    r->retry_after_ms = 0;
    /* requests still admitted at once: how far `next` is below the limit */
    uint64_t room = (uint64_t)(now_ns + (int64_t)g->tolerance_ns + (int64_t)g->interval_ns - next);
    r->remaining = (uint32_t)(room / g->interval_ns);
    r->reset_ms = (uint64_t)(next - now_ns + 999999) / 1000000;
}

void limit_gcra_delay(const struct limit_gcra *g, uint64_t max_delay_ns, int64_t *tat,
                      int64_t now_ns, struct limit_result *r, uint64_t *delay_ns)
{
    int64_t t = *tat > now_ns ? *tat : now_ns;
    *delay_ns = (uint64_t)(t - now_ns);
    if (*delay_ns > max_delay_ns) {
        r->admitted = false;
        r->retry_after_ms = (*delay_ns - max_delay_ns + 999999) / 1000000;
        r->remaining = 0;
        r->reset_ms = (uint64_t)(t - now_ns + 999999) / 1000000;
        *delay_ns = 0;
        return;
    }
    *tat = t + (int64_t)g->interval_ns;     /* this request's slot, taken now */
    r->admitted = true;
    r->retry_after_ms = 0;
    r->remaining = (uint32_t)((max_delay_ns - *delay_ns) / g->interval_ns);
    r->reset_ms = (uint64_t)(*tat - now_ns + 999999) / 1000000;
}

uint64_t limit_hash(uint64_t seed, const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t h = 0xcbf29ce484222325ull ^ (seed * 0x9e3779b97f4a7c15ull);
    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h ? h : 1;
}

/* ---------------------------------------------------------------- the table */

#define SHARDS 64
#define NIL UINT32_MAX

struct entry {
    uint64_t key;               /* 0: free */
    struct limit_val v;         /* a limit's TAT in v.a; the login guard's counts */
    uint32_t hnext;             /* hash chain */
    uint32_t last;              /* when it was last used, in ms: eviction picks the oldest */
};

struct shard {
    pthread_mutex_t mu;
    struct entry *e;            /* [cap] */
    uint32_t *bucket;           /* [nb]: first entry of each chain */
    uint32_t cap, nb, used;
    uint32_t free;              /* free list through hnext */
    uint64_t rng;               /* eviction's sampling */
    uint64_t evictions, active_evictions;
    char pad[64];
};

static struct shard *S;

static void *block;             /* every shard's entries and buckets, one mapping */
static size_t block_len;

int limit_table_init(uint32_t max_keys)
{
    if (S)
        return 0;
    struct shard *s = calloc(SHARDS, sizeof *s);
    if (!s)
        return -1;
    uint32_t per = max_keys / SHARDS + 1, nb = 1;
    while (nb < per)
        nb <<= 1;
    size_t es = ((size_t)per * sizeof(struct entry) + 63) & ~(size_t)63;
    size_t bs = ((size_t)nb * sizeof(uint32_t) + 63) & ~(size_t)63;
    /* one mapping, on huge pages where the system allows: a decision is a
     * random access, and with 4 KiB pages over tens of MiB the TLB misses
     * cost more than the cache misses */
    block_len = ((es + bs) * SHARDS + (2u << 20) - 1) & ~(size_t)((2u << 20) - 1);
    block = mmap(NULL, block_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (block == MAP_FAILED) {
        block = NULL;
        free(s);
        return -1;
    }
    madvise(block, block_len, MADV_HUGEPAGE);
    char *p = block;
    for (int i = 0; i < SHARDS; i++) {
        struct shard *h = &s[i];
        pthread_mutex_init(&h->mu, NULL);
        h->cap = per;
        h->nb = nb;
        h->e = (struct entry *)(void *)p;
        h->bucket = (uint32_t *)(void *)(p + es);
        p += es + bs;
        for (uint32_t b = 0; b < h->nb; b++)
            h->bucket[b] = NIL;
        for (uint32_t k = 0; k < per; k++)
            h->e[k].hnext = k + 1 < per ? k + 1 : NIL;
        h->free = 0;
        h->rng = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1);
    }
    S = s;
    return 0;
}

void limit_table_free(void)
{
    if (!S)
        return;
    for (int i = 0; i < SHARDS; i++)
        pthread_mutex_destroy(&S[i].mu);
    munmap(block, block_len);
    block = NULL;
    free(S);
    S = NULL;
}

static void chain_remove(struct shard *h, uint32_t i)
{
    uint32_t *pp = &h->bucket[h->e[i].key & (h->nb - 1)];
    while (*pp != i)
        pp = &h->e[*pp].hnext;
    *pp = h->e[i].hnext;
}

#define SAMPLES 8

/* The entry for key, made if absent. A full shard evicts the least recently
 * used of SAMPLES entries picked at random (as Redis does): no list to keep
 * in order on every decision, so a decision touches two cache lines, not
 * five. */
static uint32_t lookup(struct shard *h, uint64_t key, int64_t now)
{
    uint32_t b = (uint32_t)(key & (h->nb - 1));
    uint32_t ms = (uint32_t)(now / 1000000);
    for (uint32_t i = h->bucket[b]; i != NIL; i = h->e[i].hnext) {
        if (h->e[i].key == key) {
            h->e[i].last = ms;
            return i;
        }
    }
    uint32_t i = h->free;
    if (i != NIL) {
        h->free = h->e[i].hnext;
        h->used++;
    } else {
        uint32_t old = NIL;
        for (int k = 0; k < SAMPLES; k++) {
            h->rng ^= h->rng << 13;
            h->rng ^= h->rng >> 7;
            h->rng ^= h->rng << 17;
            uint32_t c = (uint32_t)(h->rng % h->cap);
            if (old == NIL || (int32_t)(h->e[c].last - h->e[old].last) < 0)
                old = c;
        }
        i = old;
        chain_remove(h, i);
        h->evictions++;
        if (h->e[i].v.a > now || h->e[i].v.b > now)
            h->active_evictions++;
    }
    h->e[i] = (struct entry){ .key = key, .last = ms };
    h->e[i].hnext = h->bucket[b];
    h->bucket[b] = i;
    return i;
}

static int local_take(void *self, uint64_t key, const struct limit_gcra *g, int64_t now_ns,
                      struct limit_result *r)
{
    (void)self;
    if (!S)
        return -1;
    struct shard *h = &S[(key >> 58) & (SHARDS - 1)];
    pthread_mutex_lock(&h->mu);
    uint32_t i = lookup(h, key, now_ns);
    limit_gcra(g, &h->e[i].v.a, now_ns, r);
    pthread_mutex_unlock(&h->mu);
    return 0;
}

int limit_table_apply(uint64_t key, int64_t now_ns, void (*fn)(struct limit_val *v, void *arg),
                      void *arg)
{
    if (!S)
        return -1;
    struct shard *h = &S[(key >> 58) & (SHARDS - 1)];
    pthread_mutex_lock(&h->mu);
    uint32_t i = lookup(h, key, now_ns);
    fn(&h->e[i].v, arg);
    pthread_mutex_unlock(&h->mu);
    return 0;
}

struct pace_arg { const struct limit_gcra *g; uint64_t max; int64_t now; struct limit_result *r; uint64_t *delay; };

static void pace_fn(struct limit_val *v, void *arg)
{
    struct pace_arg *p = arg;
    limit_gcra_delay(p->g, p->max, &v->a, p->now, p->r, p->delay);
}

static int local_pace(void *self, uint64_t key, const struct limit_gcra *g, uint64_t max_delay_ns,
                      int64_t now_ns, struct limit_result *r, uint64_t *delay_ns)
{
    (void)self;
    struct pace_arg p = { g, max_delay_ns, now_ns, r, delay_ns };
    return limit_table_apply(key, now_ns, pace_fn, &p);
}

struct check_arg { int64_t now, until; };

static void check_fn(struct limit_val *v, void *arg)
{
    struct check_arg *c = arg;
    c->until = v->b > c->now ? v->b : 0;
}

static int local_guard_check(void *self, uint64_t key, int64_t now_ns, int64_t *blocked_until)
{
    (void)self;
    struct check_arg c = { now_ns, 0 };
    int rc = limit_table_apply(key, now_ns, check_fn, &c);
    *blocked_until = c.until;
    return rc;
}

struct record_arg { bool failed, blocked; uint32_t max; int64_t window, block, now; };

static void record_fn(struct limit_val *v, void *arg)
{
    struct record_arg *r = arg;
    if (!r->failed) {
        v->n = 0;                           /* a success resets the count */
        return;
    }
    if (!v->n || r->now - v->a > r->window) {
        v->a = r->now;                      /* a new window */
        v->n = 0;
    }
    if (++v->n >= r->max && v->b <= r->now) {
        v->b = r->now + r->block;
        v->n = 0;
        r->blocked = true;
    }
}

static int local_guard_record(void *self, uint64_t key, bool failed, uint32_t max_failures,
                              int64_t window_ns, int64_t block_ns, int64_t now_ns, bool *blocked)
{
    (void)self;
    struct record_arg r = { failed, false, max_failures, window_ns, block_ns, now_ns };
    int rc = limit_table_apply(key, now_ns, record_fn, &r);
    *blocked = r.blocked;
    return rc;
}

struct limit_backend limit_local = {
    .take = local_take, .pace = local_pace, .guard_check = local_guard_check,
    .guard_record = local_guard_record, .self = NULL,
};

void limit_table_stats(uint64_t *keys, uint64_t *evictions, uint64_t *active_evictions)
{
    *keys = *evictions = *active_evictions = 0;
    for (int i = 0; S && i < SHARDS; i++) {
        pthread_mutex_lock(&S[i].mu);
        *keys += S[i].used;
        *evictions += S[i].evictions;
        *active_evictions += S[i].active_evictions;
        pthread_mutex_unlock(&S[i].mu);
    }
}
