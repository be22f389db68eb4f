/* limit/gcra.c: the generic cell rate algorithm and the local key table
 * (see limit.h). */
#include "limit.h"

#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

void limit_gcra_init(struct limit_gcra *g, uint32_t count, uint64_t period_ms, uint32_t burst)
{
    g->interval_ns = period_ms * 1000000ull / (count ? count : 1);
    if (!g->interval_ns)
        g->interval_ns = 1;
    g->tolerance_ns = g->interval_ns * (uint64_t)burst;
}

/* The decision itself, inlined into the table's hot path. */
static inline __attribute__((always_inline)) void gcra(const struct limit_gcra *g, int64_t *tat,
                                                       int64_t now_ns, struct limit_result *r)
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

void limit_gcra(const struct limit_gcra *g, int64_t *tat, int64_t now_ns, struct limit_result *r)
{
    gcra(g, tat, now_ns, r);
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

/* A 64-bit hash, 8 bytes a step (a multiply-rotate per word, then
 * MurmurHash3's finaliser): a key made of an address costs a few
 * multiplies, not a multiply per byte. Never 0 (the table's empty slot).
 * Mixed with a secret drawn at start, so that a client choosing the values
 * of a header or cookie key cannot aim them at one shard or one slot (keys
 * live only as long as the process, so nothing needs them stable across
 * restarts). */
static uint64_t secret;

__attribute__((constructor)) static void hash_secret(void)
{
    if (getrandom(&secret, sizeof secret, GRND_NONBLOCK) != (ssize_t)sizeof secret) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        secret = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid() << 32;
    }
}

static inline uint64_t rotl(uint64_t x, int r) { return x << r | x >> (64 - r); }

uint64_t limit_hash(uint64_t seed, const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t h = (seed ^ secret ^ 0x9e3779b97f4a7c15ull) * 0xbf58476d1ce4e5b9ull ^ len;
    for (; len >= 8; p += 8, len -= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = rotl(h ^ w * 0x87c37b91114253d5ull, 31) * 0x4cf5ad432745937full;
    }
    if (len) {
        uint64_t w = 0;
        memcpy(&w, p, len);
        h = rotl(h ^ w * 0x87c37b91114253d5ull, 31) * 0x4cf5ad432745937full;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h ? h : 1;
}

/* ---------------------------------------------------------------- the table
 *
 * Two tables of the same shape: the rate limits' (a slot is 16 bytes: the
 * key's 64-bit hash and its TAT, four to a cache line) and the login
 * guard's (32 bytes: the key, its window's end, its block's end, its
 * failures). Each is split into shards (at most MAX_SHARDS, chosen by the
 * key's top bits), and a shard is a region of slots of its own under
 * linear probing (the home slot, the first of a cache line, from the key's
 * low 32 bits), with one spinlock. At most half the slots are used, so a
 * decision finds its key in its home line: one cache miss (with a million
 * keys, 0.05 lines more per lookup on average).
 *
 * Bounds: limits.max_keys keys in both tables together (one counter, moved
 * only when a key comes or goes), and a shard at most 7/8 full whatever the
 * others hold (keys crafted to fall into one shard stay there). A new key
 * over either bound first makes room in its shard: the keys whose state has
 * expired go (an idle GCRA key, TAT <= now, is exactly as if absent; a
 * guard key neither blocked nor in a window of failures likewise), found
 * by a sweep from the shard's hand; when the sweep finds none, the key
 * closest to expiry among those swept goes, an active eviction. Both are
 * counted. Keys leave by backward shifting, so no tombstones build up.
 *
 * Why a spinlock and not a mutex: the critical section is a probe, a few
 * arithmetic operations and at most SCAN slots of sweep, never I/O; and
 * glibc's mutex unlock is a locked instruction, which on x86 keeps the next
 * decision's table load from starting before it (measured in a loop of
 * random read-modify-writes under one lock: 63 ns against 30 ns). A holder preempted on a busy machine
 * makes the waiter yield after a short spin. */

#define MAX_SHARDS 64
#define MIN_REGION 1024         /* fewer shards rather than regions smaller than this */
#define SCAN 256                /* slots a sweep looks at, at most */
#define SCAN_IDLE 16            /* ... and at least, once it has removed an expired key */
#define NONE UINT32_MAX

struct shard {
    _Alignas(64) _Atomic uint32_t lock;
    uint32_t used;              /* keys in the region */
    uint32_t hand;              /* where the next sweep starts */
    uint64_t evictions, active_evictions;
};

struct table {
    uint64_t *slot;             /* nshards regions of `per` slots of `words` words; key 0: empty */
    struct shard *sh;
    uint32_t per;               /* slots a region has */
    uint32_t cap;               /* keys a region may hold: 7/8 of per, so one slot is always empty */
    uint32_t words;             /* 2: key, TAT. 4: key, window end, block end, failures */
    uint32_t bits;              /* log2 of the shards */
    size_t stride;              /* words a region has: per x words */
    int64_t (*expires)(const uint64_t *s);   /* when the key's state is as if absent */
    size_t map_len;
};

static int64_t rate_expires(const uint64_t *s) { return (int64_t)s[1]; }

static int64_t guard_expires(const uint64_t *s)
{
    int64_t w = s[3] ? (int64_t)s[1] : 0, b = (int64_t)s[2];
    return w > b ? w : b;
}

static struct table rate_t = { .words = 2, .expires = rate_expires };
static struct table guard_t = { .words = 4, .expires = guard_expires };
static _Atomic uint64_t nkeys;  /* in both tables */
static uint64_t max_keys;

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline void lock(struct shard *h)
{
    while (atomic_exchange_explicit(&h->lock, 1, memory_order_acquire))
        for (unsigned spin = 0; atomic_load_explicit(&h->lock, memory_order_relaxed); spin++)
            if (spin < 128)
                cpu_relax();
            else
                sched_yield();
}

static inline void unlock(struct shard *h)
{
    atomic_store_explicit(&h->lock, 0, memory_order_release);
}

static inline uint32_t shard_of(const struct table *t, uint64_t key)
{
    return (uint32_t)(key >> (63 - t->bits) >> 1);
}

/* A key's home is the first slot of a cache line (per is a multiple of
 * 4), so that its probe reads a whole line before it needs the next. */
static inline uint32_t home_of(const struct table *t, uint64_t key)
{
    return (uint32_t)(((key & 0xffffffffu) * (t->per >> 2)) >> 32) << 2;
}

static inline uint64_t *region(const struct table *t, uint32_t si)
{
    return t->slot + (size_t)si * t->stride;
}

static inline uint64_t *at(const struct table *t, uint64_t *base, uint32_t i)
{
    return base + (size_t)i * t->words;
}

static int table_init(struct table *t, uint64_t keys, bool huge)
{
    uint64_t slots = keys * 2;
    uint32_t bits = 0;
    while ((1u << bits) < MAX_SHARDS && (slots >> (bits + 1)) >= MIN_REGION)
        bits++;
    uint32_t n = 1u << bits;
    uint64_t per = ((slots + n - 1) / n + 3) & ~(uint64_t)3;    /* regions start on a cache line */
    size_t len = (size_t)(n * per * t->words * sizeof(uint64_t));
    size_t huge_len = (len + (2u << 20) - 1) & ~(size_t)((2u << 20) - 1);
    struct shard *sh = aligned_alloc(64, n * sizeof *sh);
    if (!sh)
        return -1;
    /* zero pages: every slot empty, and memory taken only as keys arrive */
    void *m = mmap(NULL, huge_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        free(sh);
        return -1;
    }
    /* the rate table on huge pages where the system allows: a decision is a
     * random access, and with 4 KiB pages over tens of MiB a TLB miss
     * would come with every cache miss */
    if (huge)
        madvise(m, huge_len, MADV_HUGEPAGE);
    for (uint32_t i = 0; i < n; i++) {
        memset(&sh[i], 0, sizeof sh[i]);
        atomic_init(&sh[i].lock, 0);
    }
    t->slot = m;
    t->sh = sh;
    t->per = (uint32_t)per;
    t->cap = (uint32_t)(per - per / 8);
    t->bits = bits;
    t->stride = (size_t)per * t->words;
    t->map_len = huge_len;
    return 0;
}

static void table_free(struct table *t)
{
    if (!t->slot)
        return;
    munmap(t->slot, t->map_len);
    free(t->sh);
    t->slot = NULL;
    t->sh = NULL;
}

int limit_table_init(uint32_t keys)
{
    if (rate_t.slot)
        return 0;
    if (table_init(&rate_t, keys, true) < 0)
        return -1;
    if (table_init(&guard_t, keys, false) < 0) {
        table_free(&rate_t);
        return -1;
    }
    max_keys = keys;
    atomic_store(&nkeys, 0);
    return 0;
}

void limit_table_free(void)
{
    table_free(&rate_t);
    table_free(&guard_t);
}

/* Remove the key in slot j of a region: the keys after it in its run move
 * back where their probe would find them (no tombstones). */
static void remove_at(struct table *t, struct shard *h, uint64_t *base, uint32_t j)
{
    uint32_t i = j, k = j;
    for (;;) {
        if (++k == t->per)
            k = 0;
        uint64_t *s = at(t, base, k);
        if (!s[0])
            break;                          /* the region always has an empty slot */
        uint32_t home = home_of(t, s[0]);
        /* the key at k stays if its home lies cyclically in (i, k] */
        if (i <= k ? (i < home && home <= k) : (i < home || home <= k))
            continue;
        memcpy(at(t, base, i), s, t->words * sizeof *s);
        i = k;
    }
    memset(at(t, base, i), 0, t->words * sizeof *base);
    h->used--;
    atomic_fetch_sub_explicit(&nkeys, 1, memory_order_relaxed);
}

/* Room for one key in a region: the expired keys met from the hand go (at
 * least SCAN_IDLE slots looked at once one has gone); when SCAN slots hold
 * none, the key that expires first among them goes (active). Returns how
 * many went: 0 only when the SCAN slots were all empty. A region at its cap
 * (`full`) is swept until a key goes, however far: keys crafted to share a
 * home make one long run and leave wide empty stretches, and the region
 * must keep an empty slot or a probe would never end. */
static uint32_t make_room(struct table *t, struct shard *h, uint64_t *base, int64_t now, bool full)
{
    uint32_t n = full || t->per < SCAN ? t->per : SCAN, i = h->hand, removed = 0, victim = NONE;
    int64_t first = INT64_MAX;
    for (uint32_t seen = 0; seen < n; seen++) {
        uint64_t *s = at(t, base, i);
        if (s[0]) {
            int64_t e = t->expires(s);
            if (e <= now) {
                remove_at(t, h, base, i);   /* a key from further on may move into i: look again */
                removed++;
                continue;
            }
            if (e < first) {
                first = e;
                victim = i;
            }
        }
        if (removed && seen + 1 >= SCAN_IDLE)
            break;
        if (full && victim != NONE && seen + 1 >= SCAN)
            break;                          /* a victim, and SCAN slots looked at */
        if (++i == t->per)
            i = 0;
    }
    h->hand = i;
    if (!removed && victim != NONE) {
        remove_at(t, h, base, victim);      /* nothing moved before it: removed is 0 */
        removed = 1;
        h->active_evictions++;
    }
    h->evictions += removed;
    return removed;
}

/* A key absent from its region (locked): made, within the bounds. Out of
 * the hot path: a decision on a known key never comes here. */
static __attribute__((noinline)) uint64_t *insert(struct table *t, struct shard *h, uint64_t *base,
                                                  uint32_t home, uint32_t i, uint64_t key, int64_t now)
{
    uint64_t before = atomic_fetch_add_explicit(&nkeys, 1, memory_order_relaxed);
    bool full = h->used >= t->cap;
    if ((before >= max_keys || full) && make_room(t, h, base, now, full)) {
        for (i = home; at(t, base, i)[0]; )     /* keys may have moved back: the first empty */
            if (++i == t->per)
                i = 0;
    }
    /* nothing could go: the sweep met no key, so this region is nearly
     * empty while others hold the table's keys (crafted keys can do that);
     * the key is kept all the same, over max_keys until the next key
     * elsewhere makes room (the slots are there: memory stays bounded), as
     * a limit forgotten at once would be no limit */
    uint64_t *s = at(t, base, i);
    s[0] = key;                                 /* the rest of an empty slot is zero */
    h->used++;
    return s;
}

/* The slot of key in its region (locked), made if absent and `make`; NULL
 * when absent and not made. `words` is the table's, as a constant. */
static inline __attribute__((always_inline)) uint64_t *
find(struct table *t, uint32_t words, struct shard *h, uint64_t *base, uint32_t home, uint64_t key,
     int64_t now, bool make)
{
    uint32_t i = home;
    for (;;) {
        uint64_t *s = base + (size_t)i * words;
        if (s[0] == key)
            return s;
        if (!s[0])
            break;
        if (++i == t->per)
            i = 0;
    }
    return make ? insert(t, h, base, home, i, key, now) : NULL;
}

/* The shard of key locked, its region and the key's home slot, whose
 * cache line is asked for before the lock is taken. */
struct spot { struct shard *h; uint64_t *base; uint32_t home; };

static inline struct spot enter(struct table *t, uint64_t key)
{
    uint32_t si = shard_of(t, key);
    struct spot p = { &t->sh[si], region(t, si), home_of(t, key) };
    __builtin_prefetch(at(t, p.base, p.home), 1);
    lock(p.h);
    return p;
}

static int local_take(void *self, uint64_t key, const struct limit_gcra *g, int64_t now_ns,
                      struct limit_result *r)
{
    (void)self;
    struct table *t = &rate_t;
    if (!t->slot)
        return -1;
    struct spot p = enter(t, key);
    uint64_t *s = find(t, 2, p.h, p.base, p.home, key, now_ns, true);
    int64_t tat = s ? (int64_t)s[1] : 0;
    gcra(g, &tat, now_ns, r);
    if (s)
        s[1] = (uint64_t)tat;
    unlock(p.h);
    return 0;
}

static int local_pace(void *self, uint64_t key, const struct limit_gcra *g, uint64_t max_delay_ns,
                      int64_t now_ns, struct limit_result *r, uint64_t *delay_ns)
{
    (void)self;
    struct table *t = &rate_t;
    if (!t->slot)
        return -1;
    struct spot p = enter(t, key);
    uint64_t *s = find(t, 2, p.h, p.base, p.home, key, now_ns, true);
    int64_t tat = s ? (int64_t)s[1] : 0;
    limit_gcra_delay(g, max_delay_ns, &tat, now_ns, r, delay_ns);
    if (s)
        s[1] = (uint64_t)tat;
    unlock(p.h);
    return 0;
}

/* The guard's slot: s[1] the failures' window end, s[2] the block's end,
 * s[3] the failures in the window. A check never makes a key. */
static int local_guard_check(void *self, uint64_t key, int64_t now_ns, int64_t *blocked_until)
{
    (void)self;
    struct table *t = &guard_t;
    *blocked_until = 0;
    if (!t->slot)
        return -1;
    struct spot p = enter(t, key);
    uint64_t *s = find(t, 4, p.h, p.base, p.home, key, now_ns, false);
    if (s && (int64_t)s[2] > now_ns)
        *blocked_until = (int64_t)s[2];
    unlock(p.h);
    return 0;
}

static int local_guard_record(void *self, uint64_t key, bool failed, uint32_t max_failures,
                              int64_t window_ns, int64_t block_ns, int64_t now_ns, bool *blocked)
{
    (void)self;
    struct table *t = &guard_t;
    *blocked = false;
    if (!t->slot)
        return -1;
    struct spot p = enter(t, key);
    /* a success resets the count: nothing to make for a key not there */
    uint64_t *s = find(t, 4, p.h, p.base, p.home, key, now_ns, failed);
    if (s && !failed) {
        s[3] = 0;
    } else if (s) {
        if (!s[3] || now_ns > (int64_t)s[1]) {
            s[1] = (uint64_t)(now_ns + window_ns);    /* a new window */
            s[3] = 0;
        }
        if (++s[3] >= max_failures && (int64_t)s[2] <= now_ns) {
            s[2] = (uint64_t)(now_ns + block_ns);
            s[3] = 0;
            *blocked = true;
        }
    }
    unlock(p.h);
    return 0;
}

struct limit_backend limit_local = {
    .take = local_take, .pace = local_pace, .guard_check = local_guard_check,
    .guard_record = local_guard_record, .self = NULL,
};

void limit_table_stats(uint64_t *keys, uint64_t *evictions, uint64_t *active_evictions)
{
    *keys = atomic_load_explicit(&nkeys, memory_order_relaxed);
    *evictions = *active_evictions = 0;
    struct table *ts[2] = { &rate_t, &guard_t };
    for (int k = 0; k < 2; k++) {
        struct table *t = ts[k];
        for (uint32_t i = 0; t->slot && i < 1u << t->bits; i++) {
            lock(&t->sh[i]);
            *evictions += t->sh[i].evictions;
            *active_evictions += t->sh[i].active_evictions;
            unlock(&t->sh[i]);
        }
    }
}
