/* bench/cache_evict.c: the cache store's eviction against plain LRU, in hit
 * ratio, on Zipf-distributed traces (`make bench-evict`).
 *
 * For each popularity skew (alpha 0.8, 1.0, 1.2) one trace of REQUESTS
 * requests over KEYS keys is generated (a seeded xorshift, so every run and
 * every policy sees the same requests), with object sizes either fixed (4 KiB
 * bodies) or varied (log-uniform from 256 B to 64 KiB, drawn once per key,
 * independent of popularity). Each trace is replayed
 *
 *   - through the real store (cache/store.c: cache_lookup, cache_obj_touch on
 *     a hit as the cache stage does, cache_insert on a miss as the stage does
 *     once the upstream has answered), with cache.memory set to 1%, 5% and 10%
 *     of the working set; and
 *   - through a plain LRU (one global list, a hit moves to the front, evict
 *     from the back until the new object fits) written here, with the same
 *     byte budget and the same charge per object as the store counts it
 *     (key, head, body and the store's per-object metadata), and the store's
 *     rule that an object charged over half the budget is not stored (none
 *     is, at these sizes).
 *
 * The working set is the sum of the charges of every key the trace requests.
 * Hit ratio = hits / requests, over the whole trace (the first request for a
 * key is a miss for both); for varied sizes the byte hit ratio too.
 *
 * Bodies are headers pointing into one shared zeroed buffer: the store
 * counts body->len, so what is evicted is exactly what a real body of that
 * length would make it evict, without allocating a gigabyte.
 *
 * Environment: EVICT_REQUESTS [1000000], EVICT_KEYS [100000], EVICT_SEED;
 * EVICT_DIAG=1 also prints, before each store row, how its budget ended up
 * spread over the store's 16 shards (the least and the most any held, as a
 * fraction of an even share), from a lookup of every key.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache/cache.h"

#define MAX_BODY (64u * 1024)
#define HEAD "Content-Type: application/json\r\nETag: \"0123456789abcdef\"\r\n"

static uint32_t REQUESTS = 1000000, KEYS = 100000;
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
    uint64_t x = rng_state;     /* xorshift64* */
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545f4914f6cdd1dull;
}

static double unif(void) { return (double)(rnd() >> 11) / 9007199254740992.0; }

/* ---------------------------------------------------------------- traces */

/* A Zipf(alpha) trace over KEYS keys: the rank drawn by inverting the CDF,
 * then a fixed random permutation from rank to key id, so that popular keys
 * are not the first ids (nor neighbours in any table). */
static uint32_t *make_trace(double alpha, const uint32_t *perm)
{
    double *cdf = malloc(KEYS * sizeof *cdf);
    uint32_t *t = malloc(REQUESTS * sizeof *t);
    if (!cdf || !t)
        abort();
    double sum = 0;
    for (uint32_t r = 0; r < KEYS; r++)
        cdf[r] = (sum += 1.0 / pow((double)(r + 1), alpha));
    for (uint32_t r = 0; r < KEYS; r++)
        cdf[r] /= sum;
    for (uint32_t i = 0; i < REQUESTS; i++) {
        double u = unif();
        uint32_t lo = 0, hi = KEYS - 1;
        while (lo < hi) {
            uint32_t mid = lo + (hi - lo) / 2;
            if (cdf[mid] < u)
                lo = mid + 1;
            else
                hi = mid;
        }
        t[i] = perm[lo];
    }
    free(cdf);
    return t;
}

/* ---------------------------------------------------------------- the store */

static char zeroes[MAX_BODY];

static void body_release(struct stage_body *b) { free(b); }

static struct stage_body *body_of(size_t len)
{
    struct stage_body *b = malloc(sizeof *b);
    if (!b)
        abort();
    atomic_init(&b->refs, 1);
    b->len = len;
    b->data = zeroes;
    b->release = body_release;
    return b;
}

static bool no_field(void *arg, const char *name, size_t nlen, const char **v, size_t *vlen)
{
    (void)arg, (void)name, (void)nlen, (void)v, (void)vlen;
    return false;
}

/* Keys of one length whatever the run and id, so the charge depends only on
 * the body; the run number keeps one run's keys out of the ghost of the
 * store's earlier runs (the store is a process-wide singleton). */
static size_t key_of(char *out, unsigned run, uint32_t id)
{
    return (size_t)snprintf(out, 64, "http://bench.example/r%03u/obj/%07u", run, (unsigned)id);
}

static struct cache_obj *store_insert(struct cache *c, const char *key, size_t kn, size_t body)
{
    struct stage_body *b = body_of(body);
    struct cache_obj_new n = {
        .key = key, .key_len = kn, .hash = cache_hash(key, kn), .head = HEAD,
        .head_len = sizeof HEAD - 1, .body = b, .status = 200,
        .t = { .stored = 0, .lifetime = 1 << 30, .swr = -1, .sie = -1 }, .ns = -1,
    };
    struct cache_obj *o = cache_insert(c, &n);
    stage_body_unref(b);
    return o;
}

static void set_budget(uint64_t bytes)
{
    struct conf_cache cc = { .memory = bytes, .max_object = bytes / 4, .max_waiters = 1000 };
    if (cache_configure(&cc) < 0)
        abort();
}

/* The store's charge for a key of KEYLEN bytes is fixed + body: measured
 * with two inserts into the empty store, so the LRU counts what it counts. */
static uint64_t charge_fixed;

static void measure_charge(struct cache *c)
{
    char k[64];
    uint64_t ch[2];
    for (int i = 0; i < 2; i++) {
        struct cache_stats s0, s1;
        cache_stats(c, &s0);
        size_t kn = key_of(k, 999, (uint32_t)i);
        cache_obj_unref(store_insert(c, k, kn, i ? 1000 : 0));
        cache_stats(c, &s1);
        ch[i] = s1.bytes - s0.bytes;
    }
    cache_purge_path(c, NULL, 0, "/", 1, true);
    if (ch[1] != ch[0] + 1000) {
        fprintf(stderr, "cache_evict: the store's charge is not fixed + body\n");
        exit(2);
    }
    charge_fixed = ch[0];
}

struct result {
    uint64_t hits, hit_bytes, bytes, evictions;
    double secs;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);     /* CPU time: the machine may be shared */
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static struct result run_store(struct cache *c, unsigned run, const uint32_t *trace,
                               const uint32_t *size, uint64_t budget)
{
    struct result r = { 0 };
    cache_purge_path(c, NULL, 0, "/", 1, true);
    set_budget(budget);
    struct cache_stats s0, s1;
    cache_stats(c, &s0);
    char k[64];
    double t0 = now_s();
    for (uint32_t i = 0; i < REQUESTS; i++) {
        uint32_t id = trace[i];
        size_t kn = key_of(k, run, id);
        uint64_t h = cache_hash(k, kn);
        r.bytes += size[id];
        struct cache_obj *o = cache_lookup(c, h, k, kn, no_field, NULL);
        if (o) {
            cache_obj_touch(o);
            r.hits++;
            r.hit_bytes += size[id];
        } else {
            o = store_insert(c, k, kn, size[id]);
        }
        cache_obj_unref(o);
    }
    r.secs = now_s() - t0;
    cache_stats(c, &s1);
    if (s1.bytes > budget) {
        fprintf(stderr, "cache_evict: the store holds %llu bytes, over its budget of %llu\n",
                (unsigned long long)s1.bytes, (unsigned long long)budget);
        exit(1);
    }
    r.evictions = s1.evictions - s0.evictions;
    if (getenv("EVICT_DIAG")) {
        /* how the budget is spread over the 16 shards at the end */
        uint64_t sh[16] = { 0 };
        for (uint32_t id = 0; id < KEYS; id++) {
            size_t kn = key_of(k, run, id);
            uint64_t h = cache_hash(k, kn);
            struct cache_obj *o = cache_lookup(c, h, k, kn, no_field, NULL);
            if (o)
                sh[h & 15] += charge_fixed + size[id];
            cache_obj_unref(o);
        }
        uint64_t mn = UINT64_MAX, mx = 0;
        for (int i = 0; i < 16; i++) {
            mn = sh[i] < mn ? sh[i] : mn;
            mx = sh[i] > mx ? sh[i] : mx;
        }
        fprintf(stderr, "  shards: min %.2f max %.2f of an even share\n",
                (double)mn * 16 / (double)budget, (double)mx * 16 / (double)budget);
    }
    cache_purge_path(c, NULL, 0, "/", 1, true);
    return r;
}

/* ---------------------------------------------------------------- plain LRU */

/* Key ids are dense (0..KEYS-1), so the index is an array. */
static struct result run_lru(const uint32_t *trace, const uint32_t *size, uint64_t budget)
{
    struct result r = { 0 };
    int32_t *prev = malloc(KEYS * sizeof *prev), *next = malloc(KEYS * sizeof *next);
    bool *in = calloc(KEYS, sizeof *in);
    if (!prev || !next || !in)
        abort();
    int32_t head = -1, tail = -1;       /* head: most recently used */
    uint64_t used = 0;
    double t0 = now_s();
    for (uint32_t i = 0; i < REQUESTS; i++) {
        uint32_t id = trace[i];
        uint64_t ch = charge_fixed + size[id];
        r.bytes += size[id];
        if (in[id]) {
            r.hits++;
            r.hit_bytes += size[id];
            if (head == (int32_t)id)
                continue;
            /* unlink, then to the front */
            next[prev[id]] = next[id];
            if (next[id] >= 0)
                prev[next[id]] = prev[id];
            else
                tail = prev[id];
        } else {
            if (ch > budget / 2)       /* as cache_insert */
                continue;
            while (used + ch > budget && tail >= 0) {
                int32_t v = tail;
                tail = prev[v];
                if (tail >= 0)
                    next[tail] = -1;
                else
                    head = -1;
                in[v] = false;
                used -= charge_fixed + size[v];
                r.evictions++;
            }
            in[id] = true;
            used += ch;
        }
        prev[id] = -1;
        next[id] = head;
        if (head >= 0)
            prev[head] = (int32_t)id;
        head = (int32_t)id;
        if (tail < 0)
            tail = (int32_t)id;
    }
    r.secs = now_s() - t0;
    free(prev);
    free(next);
    free(in);
    return r;
}

/* ---------------------------------------------------------------- main */

int main(void)
{
    const char *e;
    if ((e = getenv("EVICT_REQUESTS")))
        REQUESTS = (uint32_t)strtoul(e, NULL, 10);
    if ((e = getenv("EVICT_KEYS")))
        KEYS = (uint32_t)strtoul(e, NULL, 10);
    if ((e = getenv("EVICT_SEED")))
        rng_state = strtoull(e, NULL, 10) | 1;
    if (KEYS < 2 || REQUESTS < 1) {
        fprintf(stderr, "cache_evict: EVICT_KEYS >= 2, EVICT_REQUESTS >= 1\n");
        return 2;
    }
    set_budget(1ull << 30);
    struct cache *c = cache_get();
    measure_charge(c);

    uint32_t *perm = malloc(KEYS * sizeof *perm);
    uint32_t *fixed = malloc(KEYS * sizeof *fixed), *varied = malloc(KEYS * sizeof *varied);
    if (!perm || !fixed || !varied)
        abort();
    for (uint32_t i = 0; i < KEYS; i++)
        perm[i] = i;
    for (uint32_t i = KEYS - 1; i > 0; i--) {
        uint32_t j = (uint32_t)(rnd() % (i + 1));
        uint32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    for (uint32_t i = 0; i < KEYS; i++) {
        fixed[i] = 4096;
        varied[i] = (uint32_t)(256.0 * pow(2.0, 8.0 * unif()));    /* 256 B .. 64 KiB */
    }

    printf("cache eviction: the store (S3-FIFO, 16 shards) against plain LRU, same byte budget\n");
    printf("%u requests over %u keys per trace; per-object charge %llu bytes + body; "
           "hit ratio over the whole trace (cold start included)\n\n",
           REQUESTS, KEYS, (unsigned long long)charge_fixed);
    printf("%-6s %-7s %7s %10s | %8s %8s %8s | %9s %9s | %10s %10s\n", "alpha", "sizes",
           "budget", "MiB", "store", "LRU", "diff", "store B", "LRU B", "store evic",
           "LRU evic");
    static const double alphas[] = { 0.8, 1.0, 1.2 };
    static const double fracs[] = { 0.01, 0.05, 0.10 };
    unsigned run = 0;
    double store_secs = 0, lru_secs = 0;
    for (size_t a = 0; a < 3; a++) {
        uint32_t *trace = make_trace(alphas[a], perm);
        for (int sv = 0; sv < 2; sv++) {
            const uint32_t *size = sv ? varied : fixed;
            /* the working set: every key the trace asks for */
            bool *seen = calloc(KEYS, sizeof *seen);
            if (!seen)
                abort();
            uint64_t ws = 0;
            for (uint32_t i = 0; i < REQUESTS; i++)
                if (!seen[trace[i]]) {
                    seen[trace[i]] = true;
                    ws += charge_fixed + size[trace[i]];
                }
            free(seen);
            for (size_t f = 0; f < 3; f++) {
                uint64_t budget = (uint64_t)((double)ws * fracs[f]);
                struct result s = run_store(c, run++, trace, size, budget);
                struct result l = run_lru(trace, size, budget);
                store_secs += s.secs;
                lru_secs += l.secs;
                double hs = (double)s.hits / REQUESTS, hl = (double)l.hits / REQUESTS;
                printf("%-6.1f %-7s %6.0f%% %10.1f | %7.2f%% %7.2f%% %+7.2f | ", alphas[a],
                       sv ? "varied" : "4KiB", fracs[f] * 100, (double)budget / 1048576.0,
                       100 * hs, 100 * hl, 100 * (hs - hl));
                if (sv)
                    printf("%8.2f%% %8.2f%%", 100.0 * (double)s.hit_bytes / (double)s.bytes,
                           100.0 * (double)l.hit_bytes / (double)l.bytes);
                else
                    printf("%9s %9s", "-", "-");
                printf(" | %10llu %10llu\n", (unsigned long long)s.evictions,
                       (unsigned long long)l.evictions);
                fflush(stdout);
            }
        }
        free(trace);
    }
    printf("\ndiff: store minus LRU, in points of hit ratio. store B / LRU B: byte hit ratio.\n");
    printf("CPU time: store %.1f s (%.0f ns per request, one thread), LRU %.1f s\n", store_secs,
           store_secs * 1e9 / ((double)run * REQUESTS), lru_secs);
    free(perm);
    free(fixed);
    free(varied);
    return 0;
}
