/* cache/store.c: the store. Sixteen shards, each a hash table under its own
 * mutex (held only for lookups and list surgery, never across I/O), with
 * S3-FIFO eviction: new objects enter a small FIFO; one evicted from it
 * unread leaves only its hash in a ghost table, one read since it came goes
 * to the main FIFO, where each read buys one more pass. Objects whose hash
 * is in the ghost go straight to main; the ghost remembers the evictions of
 * the last 90% of a shard's share of the budget, in bytes (S3-FIFO's ghost
 * is as big as main). Bytes are counted globally against the budget; an
 * insert evicts (from its own shard first) until it fits. */
#include "cache.h"

#include "http/http.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define SHARDS 16
#define GHOST 4096
#define PASS 1024
#define NS_MAX 256
#define OVERHEAD 96             /* malloc headers and the like, per object */

enum { Q_SMALL, Q_MAIN };

struct cache_obj {
    atomic_uint refs;           /* the index's while linked, and each reader's */
    atomic_uchar freq;          /* reads since it entered its queue, up to 3 */
    atomic_bool refreshing;     /* a background refresh is under way */
    uint8_t queue;
    bool linked;
    struct cache_obj *hnext;
    struct cache_obj *qprev, *qnext;
    uint64_t hash;
    uint64_t charge;
    uint64_t ns_version;
    int ns;
    int status;
    uint32_t flags;
    struct cache_times t;
    struct stage_body *body;
    _Atomic(struct cache_variant *) var[CACHE_VARIANTS];
    atomic_uchar var_claimed;   /* a bit per encoding: its variant is being made */
    uint32_t key_len, vary_len, vnames_len, head_len, tags_len, etag_len, lm_len;
    const char *key, *vary, *vnames, *head, *tags, *etag, *lm;
    char data[];
};

struct fifo {
    struct cache_obj *head, *tail;      /* head: newest */
    uint64_t bytes;
};

struct cache_pending {
    struct cache_pending *next;
    uint64_t hash;
    uint32_t klen, n, cap;
    struct stage_waker **waiters;
    char key[];
};

struct shard {
    pthread_mutex_t mu;
    struct cache_obj **buckets;
    uint32_t mask, n;
    struct fifo small, main;
    atomic_uint_fast64_t bytes;         /* small + main, readable without the lock */
    /* evicted from small unread: its hash, and gbytes after it went */
    struct { uint64_t hash, at; } ghost[GHOST];
    uint64_t gbytes;                    /* bytes evicted from small, ever */
    struct { uint64_t hash; int64_t until; } pass[PASS];    /* keys found uncacheable */
    struct cache_pending *pending;
};

struct ns {
    char name[CONF_CACHE_NAME];
    atomic_uint_fast64_t version;
};

struct cache {
    struct shard shards[SHARDS];
    atomic_uint_fast64_t budget, bytes, entries, evictions, purges, inserts;
    atomic_uint max_waiters;
    pthread_mutex_t ns_mu;
    atomic_uint nns;
    struct ns ns[NS_MAX];
};

static struct cache *g_cache;
static bool make_room(struct cache *c, uint64_t need, uint32_t first);
static struct fifo *fifo_of(struct shard *s, const struct cache_obj *o);
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;

struct cache *cache_get(void) { return g_cache; }

int cache_configure(const struct conf_cache *cc)
{
    pthread_mutex_lock(&g_mu);
    struct cache *c = g_cache;
    if (!c && (c = calloc(1, sizeof *c))) {
        for (int i = 0; i < SHARDS; i++) {
            pthread_mutex_init(&c->shards[i].mu, NULL);
            c->shards[i].mask = 255;
            c->shards[i].buckets = calloc(256, sizeof(struct cache_obj *));
            if (!c->shards[i].buckets) {
                pthread_mutex_unlock(&g_mu);
                return -1;          /* at start: the process exits */
            }
        }
        pthread_mutex_init(&c->ns_mu, NULL);
        g_cache = c;
    }
    if (c) {
        atomic_store(&c->budget, cc->memory);
        atomic_store(&c->max_waiters, cc->max_waiters);
    }
    pthread_mutex_unlock(&g_mu);
    return c ? 0 : -1;
}

uint64_t cache_hash(const char *key, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ull;         /* FNV-1a, then a final mix */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)key[i]) * 0x100000001b3ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

static struct shard *shard_of(struct cache *c, uint64_t h) { return &c->shards[h & (SHARDS - 1)]; }
static uint32_t bucket_of(const struct shard *s, uint64_t h) { return (uint32_t)(h >> 4) & s->mask; }

/* ---------------------------------------------------------------- objects */

struct cache_obj *cache_obj_ref(struct cache_obj *o)
{
    if (o)
        atomic_fetch_add_explicit(&o->refs, 1, memory_order_relaxed);
    return o;
}

void cache_obj_unref(struct cache_obj *o)
{
    if (o && atomic_fetch_sub_explicit(&o->refs, 1, memory_order_acq_rel) == 1) {
        stage_body_unref(o->body);
        for (int i = 0; i < CACHE_VARIANTS; i++) {
            struct cache_variant *v = atomic_load(&o->var[i]);
            if (v) {
                stage_body_unref(v->body);
                free(v);
            }
        }
        free(o);
    }
}

const struct cache_variant *cache_obj_variant(struct cache_obj *o, int enc)
{
    return enc >= 0 && enc < CACHE_VARIANTS ? atomic_load_explicit(&o->var[enc], memory_order_acquire)
                                            : NULL;
}

const struct cache_variant *cache_obj_add_variant(struct cache *c, struct cache_obj *o, int enc,
                                                  struct cache_variant *v)
{
    struct cache_variant *none = NULL;
    if (!atomic_compare_exchange_strong(&o->var[enc], &none, v)) {
        stage_body_unref(v->body);      /* another thread made it first */
        free(v);
        return none;
    }
    uint64_t more = sizeof *v + v->head_len + OVERHEAD + sizeof(struct stage_body) + v->body->len;
    struct shard *s = shard_of(c, o->hash);
    pthread_mutex_lock(&s->mu);
    if (o->linked) {                    /* counted while it is in the store */
        o->charge += more;
        fifo_of(s, o)->bytes += more;
        atomic_fetch_add_explicit(&s->bytes, more, memory_order_relaxed);
        atomic_fetch_add(&c->bytes, more);
    }
    pthread_mutex_unlock(&s->mu);
    make_room(c, 0, (uint32_t)(o->hash & (SHARDS - 1)));
    return v;
}

bool cache_obj_claim_variant(struct cache_obj *o, int enc)
{
    unsigned char bit = (unsigned char)(1u << enc);
    return !(atomic_fetch_or(&o->var_claimed, bit) & bit);
}

void cache_obj_touch(struct cache_obj *o)
{
    unsigned char f = atomic_load_explicit(&o->freq, memory_order_relaxed);
    if (f < 3)
        atomic_store_explicit(&o->freq, (unsigned char)(f + 1), memory_order_relaxed);
}

bool cache_obj_claim_refresh(struct cache_obj *o)
{
    bool no = false;
    return atomic_compare_exchange_strong(&o->refreshing, &no, true);
}

void cache_obj_release_refresh(struct cache_obj *o) { atomic_store(&o->refreshing, false); }

void cache_obj_view(const struct cache_obj *o, struct cache_obj_view *v)
{
    struct cache *c = g_cache;
    *v = (struct cache_obj_view){
        .status = o->status, .head = o->head, .head_len = o->head_len, .body = o->body,
        .etag = o->etag, .etag_len = o->etag_len, .last_modified = o->lm,
        .last_modified_len = o->lm_len, .t = o->t, .flags = o->flags,
    };
    v->bumped = o->ns >= 0 && c && atomic_load_explicit(&c->ns[o->ns].version,
                                                        memory_order_relaxed) != o->ns_version;
}

void cache_obj_vary(const struct cache_obj *o, const char **vary, size_t *vary_len,
                    const char **names, size_t *names_len, const char **tags, size_t *tags_len,
                    int *ns)
{
    *vary = o->vary;
    *vary_len = o->vary_len;
    *names = o->vnames;
    *names_len = o->vnames_len;
    *tags = o->tags;
    *tags_len = o->tags_len;
    *ns = o->ns;
}

size_t cache_vary_values(const char *names, size_t nlen, cache_field_fn get, void *arg, char *out,
                         size_t cap)
{
    size_t n = 0;
    if (!nlen)
        return 0;                       /* no Vary: names may be NULL (NULL + 0 is UB) */
    const char *p = names, *end = names + nlen;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl)
            break;
        const char *v;
        size_t vl;
        bool has = get(arg, p, (size_t)(nl - p), &v, &vl);
        if (!has) {
            v = "\x01";
            vl = 1;
        }
        if (n + vl + 1 > cap)
            return SIZE_MAX;
        memcpy(out + n, v, vl);
        n += vl;
        out[n++] = '\n';
        p = nl + 1;
    }
    return n;
}

static bool vary_match(const struct cache_obj *o, cache_field_fn get, void *arg)
{
    if (!o->vnames_len)
        return true;
    char buf[2048];
    size_t n = cache_vary_values(o->vnames, o->vnames_len, get, arg, buf, sizeof buf);
    return n == o->vary_len && !memcmp(buf, o->vary, n);
}

/* ---------------------------------------------------------------- FIFOs */

static struct fifo *fifo_of(struct shard *s, const struct cache_obj *o)
{
    return o->queue == Q_SMALL ? &s->small : &s->main;
}

static void fifo_push(struct shard *s, struct cache_obj *o, uint8_t q)
{
    o->queue = q;
    struct fifo *f = fifo_of(s, o);
    o->qprev = NULL;
    o->qnext = f->head;
    if (f->head)
        f->head->qprev = o;
    f->head = o;
    if (!f->tail)
        f->tail = o;
    f->bytes += o->charge;
}

static void fifo_remove(struct shard *s, struct cache_obj *o)
{
    struct fifo *f = fifo_of(s, o);
    if (o->qprev)
        o->qprev->qnext = o->qnext;
    else
        f->head = o->qnext;
    if (o->qnext)
        o->qnext->qprev = o->qprev;
    else
        f->tail = o->qprev;
    f->bytes -= o->charge;
}

/* Take o out of the index and its FIFO (under the shard's lock); the
 * caller drops the index's reference. */
static void unlink_obj(struct cache *c, struct shard *s, struct cache_obj *o)
{
    struct cache_obj **pp = &s->buckets[bucket_of(s, o->hash)];
    while (*pp && *pp != o)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = o->hnext;
    fifo_remove(s, o);
    o->linked = false;
    s->n--;
    atomic_fetch_sub_explicit(&s->bytes, o->charge, memory_order_relaxed);
    atomic_fetch_sub(&c->bytes, o->charge);
    atomic_fetch_sub(&c->entries, 1);
}

/* One S3-FIFO step that frees an object, or NULL when the shard is empty. */
static struct cache_obj *evict_one(struct cache *c, struct shard *s)
{
    for (;;) {
        uint64_t total = s->small.bytes + s->main.bytes;
        bool from_small = s->small.tail && (s->small.bytes * 10 > total || !s->main.tail);
        struct cache_obj *o = from_small ? s->small.tail : s->main.tail;
        if (!o)
            return NULL;
        unsigned char f = atomic_load_explicit(&o->freq, memory_order_relaxed);
        fifo_remove(s, o);
        if (f > 0) {
            /* read since it came: another pass, in main */
            atomic_store_explicit(&o->freq, from_small ? 0 : (unsigned char)(f - 1),
                                  memory_order_relaxed);
            fifo_push(s, o, Q_MAIN);
            continue;
        }
        fifo_push(s, o, o->queue);      /* back, so that unlink_obj finds it */
        if (from_small) {
            s->gbytes += o->charge;
            s->ghost[(o->hash >> 4) % GHOST].hash = o->hash;
            s->ghost[(o->hash >> 4) % GHOST].at = s->gbytes;
        }
        unlink_obj(c, s, o);
        return o;
    }
}

/* The shard to evict from: the inserting one while it holds at least its
 * even share of the budget, else the one holding the most. Evicting only
 * from the inserting shard let the shards drift apart when objects differ
 * in size: an eviction frees whole objects, often more than the insert
 * needed, and the slack goes to whichever shard inserts next, a random walk
 * with nothing pulling it back. On Zipf traces with sizes from 256 B to
 * 64 KiB, shards ended with from 6% to 8 times their share, and the keys of
 * the small ones were evicted early (bench/cache_evict.c). */
static uint32_t victim(struct cache *c, uint32_t own)
{
    uint64_t share = atomic_load(&c->budget) / SHARDS;
    if (atomic_load_explicit(&c->shards[own].bytes, memory_order_relaxed) >= share)
        return own;
    uint32_t best = own;
    uint64_t most = 0;
    for (uint32_t i = 0; i < SHARDS; i++) {
        uint64_t b = atomic_load_explicit(&c->shards[i].bytes, memory_order_relaxed);
        if (b > most) {
            most = b;
            best = i;
        }
    }
    return best;
}

static struct cache_obj *evict_from(struct cache *c, uint32_t i)
{
    struct shard *s = &c->shards[i % SHARDS];
    pthread_mutex_lock(&s->mu);
    struct cache_obj *o = evict_one(c, s);
    pthread_mutex_unlock(&s->mu);
    return o;
}

/* Evict until `need` more bytes fit the budget (see victim()). */
static bool make_room(struct cache *c, uint64_t need, uint32_t first)
{
    while (atomic_load(&c->bytes) + need > atomic_load(&c->budget)) {
        struct cache_obj *o = evict_from(c, victim(c, first));
        /* that shard emptied meanwhile: any other */
        for (uint32_t i = 1; !o && i <= SHARDS; i++)
            o = evict_from(c, first + i);
        if (!o)
            return false;
        cache_obj_unref(o);
        atomic_fetch_add(&c->evictions, 1);
    }
    return true;
}

static void grow(struct shard *s)
{
    uint32_t nm = s->mask * 2 + 1;
    struct cache_obj **nb = calloc((size_t)nm + 1, sizeof *nb);
    if (!nb)
        return;                         /* longer chains, still correct */
    for (uint32_t b = 0; b <= s->mask; b++) {
        struct cache_obj *o = s->buckets[b];
        while (o) {
            struct cache_obj *next = o->hnext;
            uint32_t i = (uint32_t)(o->hash >> 4) & nm;
            o->hnext = nb[i];
            nb[i] = o;
            o = next;
        }
    }
    free(s->buckets);
    s->buckets = nb;
    s->mask = nm;
}

/* ---------------------------------------------------------------- lookup, insert */

/* Whether hash was evicted from small unread within the last 90% of the
 * shard's share of the budget (libCacheSim's ghost-size-ratio 0.9): the
 * ghost holds about as many entries as main. A ghost of every eviction the
 * table could hold (4096 a shard, whatever the budget) let nearly any key
 * seen before skip the small queue at small budgets, and main filled with
 * keys seen twice in a long while: on bench-evict's Zipf traces S3-FIFO then
 * won over LRU by 1.6-5.2 points instead of 2.2-11.5. */
static bool ghost_hit(struct cache *c, const struct shard *s, uint64_t hash)
{
    uint32_t i = (uint32_t)(hash >> 4) % GHOST;
    uint64_t window = atomic_load(&c->budget) / SHARDS / 10 * 9;
    return s->ghost[i].hash == hash && s->gbytes - s->ghost[i].at < window;
}

struct cache_obj *cache_lookup(struct cache *c, uint64_t hash, const char *key, size_t klen,
                               cache_field_fn get, void *arg)
{
    struct shard *s = shard_of(c, hash);
    struct cache_obj *found = NULL;
    pthread_mutex_lock(&s->mu);
    for (struct cache_obj *o = s->buckets[bucket_of(s, hash)]; o; o = o->hnext)
        if (o->hash == hash && o->key_len == klen && !memcmp(o->key, key, klen) &&
            vary_match(o, get, arg)) {
            found = cache_obj_ref(o);
            break;
        }
    pthread_mutex_unlock(&s->mu);
    return found;
}

/* A field's value in a head block, or NULL. */
static const char *head_field(const char *b, size_t len, const char *name, uint32_t *vlen)
{
    const char *v;
    size_t vl;
    if (!http_block_field(b, len, name, strlen(name), &v, &vl))
        return NULL;
    *vlen = (uint32_t)vl;
    return v;
}

static char *put(char *p, const char *s, size_t n, const char **field, uint32_t *len)
{
    if (n)
        memcpy(p, s, n);
    *field = p;
    *len = (uint32_t)n;
    return p + n;
}

static struct cache_obj *obj_new(struct cache *c, const struct cache_obj_new *n)
{
    size_t extra = n->key_len + n->vary_len + n->vary_names_len + n->head_len + n->tags_len;
    struct cache_obj *o = malloc(sizeof *o + extra);
    if (!o)
        return NULL;
    memset(o, 0, sizeof *o);
    for (int i = 0; i < CACHE_VARIANTS; i++)
        atomic_init(&o->var[i], NULL);
    atomic_init(&o->var_claimed, 0);
    atomic_init(&o->refs, 2);           /* the index's and the caller's */
    o->hash = n->hash;
    o->status = n->status;
    o->flags = n->flags;
    o->t = n->t;
    o->ns = n->ns;
    o->ns_version = n->ns >= 0 ? atomic_load(&c->ns[n->ns].version) : 0;
    o->body = stage_body_ref(n->body);
    char *p = o->data;
    p = put(p, n->key, n->key_len, &o->key, &o->key_len);
    p = put(p, n->vary, n->vary_len, &o->vary, &o->vary_len);
    p = put(p, n->vary_names, n->vary_names_len, &o->vnames, &o->vnames_len);
    p = put(p, n->head, n->head_len, &o->head, &o->head_len);
    put(p, n->tags, n->tags_len, &o->tags, &o->tags_len);
    o->etag = head_field(o->head, o->head_len, "etag", &o->etag_len);
    o->lm = head_field(o->head, o->head_len, "last-modified", &o->lm_len);
    o->charge = sizeof *o + extra + OVERHEAD + sizeof(struct stage_body) +
                (n->body ? n->body->len : 0);
    return o;
}

struct cache_obj *cache_insert(struct cache *c, const struct cache_obj_new *n)
{
    struct cache_obj *o = obj_new(c, n);
    if (!o)
        return NULL;
    struct shard *s = shard_of(c, n->hash);
    /* max_object is at most a quarter of the budget (conf_cache.c); its head
     * and metadata come on top */
    if (o->charge > atomic_load(&c->budget) / 2 ||
        !make_room(c, o->charge, (uint32_t)(n->hash & (SHARDS - 1)))) {
        cache_obj_unref(o);
        cache_obj_unref(o);
        return NULL;
    }
    pthread_mutex_lock(&s->mu);
    struct cache_obj **pp = &s->buckets[bucket_of(s, o->hash)];
    while (*pp) {
        struct cache_obj *e = *pp;
        if (e->hash == o->hash && e->key_len == o->key_len && !memcmp(e->key, o->key, o->key_len) &&
            e->vnames_len == o->vnames_len && !memcmp(e->vnames, o->vnames, o->vnames_len) &&
            e->vary_len == o->vary_len && !memcmp(e->vary, o->vary, o->vary_len)) {
            unlink_obj(c, s, e);        /* the same variant: replaced */
            cache_obj_unref(e);
            pp = &s->buckets[bucket_of(s, o->hash)];
            continue;
        }
        pp = &e->hnext;
    }
    bool ghost = ghost_hit(c, s, o->hash);
    uint32_t b = bucket_of(s, o->hash);
    o->hnext = s->buckets[b];
    s->buckets[b] = o;
    o->linked = true;
    fifo_push(s, o, ghost ? Q_MAIN : Q_SMALL);
    if (++s->n > s->mask + 1)
        grow(s);
    atomic_fetch_add_explicit(&s->bytes, o->charge, memory_order_relaxed);
    atomic_fetch_add(&c->bytes, o->charge);
    atomic_fetch_add(&c->entries, 1);
    atomic_fetch_add(&c->inserts, 1);
    pthread_mutex_unlock(&s->mu);
    return o;
}

/* ---------------------------------------------------------------- namespaces */

int cache_ns_id(struct cache *c, const char *name)
{
    pthread_mutex_lock(&c->ns_mu);
    uint32_t n = atomic_load(&c->nns);
    int id = -1;
    for (uint32_t i = 0; i < n && id < 0; i++)
        if (!strcmp(c->ns[i].name, name))
            id = (int)i;
    if (id < 0 && n < NS_MAX && strlen(name) < CONF_CACHE_NAME) {
        strcpy(c->ns[n].name, name);
        atomic_store(&c->ns[n].version, 1);
        atomic_store(&c->nns, n + 1);
        id = (int)n;
    }
    pthread_mutex_unlock(&c->ns_mu);
    return id;
}

/* Only a namespace a route registered (cache_ns_id at its load): a bump of
 * any other name has nothing to invalidate, and making one would let the
 * purge API fill the table that routes' namespaces need. */
uint64_t cache_ns_bump(struct cache *c, const char *name)
{
    uint32_t n = atomic_load(&c->nns);
    for (uint32_t i = 0; i < n; i++)
        if (!strcmp(c->ns[i].name, name))
            return atomic_fetch_add(&c->ns[i].version, 1) + 1;
    return 0;
}

/* ---------------------------------------------------------------- purge */

/* Remove every object for which fn says so; the count. */
static size_t purge_where(struct cache *c, bool (*fn)(const struct cache_obj *o, const void *arg),
                          const void *arg, int only_shard)
{
    size_t n = 0;
    for (int i = 0; i < SHARDS; i++) {
        if (only_shard >= 0 && i != only_shard)
            continue;
        struct shard *s = &c->shards[i];
        pthread_mutex_lock(&s->mu);
        for (uint32_t b = 0; b <= s->mask; b++) {
            struct cache_obj *o = s->buckets[b];
            while (o) {
                struct cache_obj *next = o->hnext;
                if (fn(o, arg)) {
                    unlink_obj(c, s, o);
                    cache_obj_unref(o);
                    n++;
                }
                o = next;
            }
        }
        pthread_mutex_unlock(&s->mu);
    }
    atomic_fetch_add(&c->purges, n);
    return n;
}

struct key_arg {
    const char *s;
    size_t n;
    const char *host;
    size_t hn;
    bool prefix;
};

static bool key_is(const struct cache_obj *o, const void *arg)
{
    const struct key_arg *k = arg;
    return o->key_len == k->n && !memcmp(o->key, k->s, k->n);
}

size_t cache_purge_key(struct cache *c, const char *key, size_t klen)
{
    struct key_arg k = { key, klen, NULL, 0, false };
    return purge_where(c, key_is, &k, (int)(cache_hash(key, klen) & (SHARDS - 1)));
}

/* "scheme://host/path": the host and the path of a key. */
static bool split_key(const char *k, size_t n, const char **host, size_t *hn, const char **path,
                      size_t *pn)
{
    const char *s = memchr(k, ':', n);
    if (!s || (size_t)(k + n - s) < 3 || s[1] != '/' || s[2] != '/')
        return false;
    *host = s + 3;
    const char *slash = memchr(*host, '/', (size_t)(k + n - *host));
    if (!slash)
        return false;
    *hn = (size_t)(slash - *host);
    *path = slash;
    *pn = (size_t)(k + n - slash);
    return true;
}

static bool path_is(const struct cache_obj *o, const void *arg)
{
    const struct key_arg *k = arg;
    const char *h, *p;
    size_t hn, pn;
    if (!split_key(o->key, o->key_len, &h, &hn, &p, &pn))
        return false;
    if (k->host && !(hn == k->hn && http_ieq(h, k->host, hn)))
        return false;
    return k->prefix ? pn >= k->n && !memcmp(p, k->s, k->n) : pn == k->n && !memcmp(p, k->s, k->n);
}

size_t cache_purge_path(struct cache *c, const char *host, size_t hlen, const char *path,
                        size_t plen, bool prefix)
{
    struct key_arg k = { path, plen, host, hlen, prefix };
    return purge_where(c, path_is, &k, -1);
}

static bool tag_is(const struct cache_obj *o, const void *arg)
{
    const struct key_arg *k = arg;
    const char *p = o->tags, *end = o->tags + o->tags_len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl)
            break;
        if ((size_t)(nl - p) == k->n && !memcmp(p, k->s, k->n))
            return true;
        p = nl + 1;
    }
    return false;
}

size_t cache_purge_tag(struct cache *c, const char *tag, size_t tlen)
{
    struct key_arg k = { tag, tlen, NULL, 0, false };
    return purge_where(c, tag_is, &k, -1);
}

/* ---------------------------------------------------------------- coalescing */

bool cache_pending_join(struct cache *c, uint64_t hash, const char *key, size_t klen,
                        struct stage_waker *w, struct cache_pending **lead)
{
    struct shard *s = shard_of(c, hash);
    *lead = NULL;
    pthread_mutex_lock(&s->mu);
    struct cache_pending *p = s->pending;
    while (p && !(p->hash == hash && p->klen == klen && !memcmp(p->key, key, klen)))
        p = p->next;
    if (p) {
        bool joined = false;
        if (p->n < atomic_load(&c->max_waiters)) {
            if (p->n == p->cap) {
                uint32_t nc = p->cap ? p->cap * 2 : 8;
                struct stage_waker **nw = realloc(p->waiters, nc * sizeof *nw);
                if (nw) {
                    p->waiters = nw;
                    p->cap = nc;
                }
            }
            if (p->n < p->cap) {
                p->waiters[p->n++] = w;
                joined = true;
            }
        }
        pthread_mutex_unlock(&s->mu);
        return joined;
    }
    p = calloc(1, sizeof *p + klen);
    if (p) {
        p->hash = hash;
        p->klen = (uint32_t)klen;
        memcpy(p->key, key, klen);
        p->next = s->pending;
        s->pending = p;
        *lead = p;
    }
    pthread_mutex_unlock(&s->mu);
    return false;
}

void cache_pending_done(struct cache *c, struct cache_pending *p)
{
    struct shard *s = shard_of(c, p->hash);
    pthread_mutex_lock(&s->mu);
    struct cache_pending **pp = &s->pending;
    while (*pp && *pp != p)
        pp = &(*pp)->next;
    if (*pp)
        *pp = p->next;
    pthread_mutex_unlock(&s->mu);
    for (uint32_t i = 0; i < p->n; i++)
        stage_waker_wake(p->waiters[i]);
    free(p->waiters);
    free(p);
}

void cache_pass_mark(struct cache *c, uint64_t hash, int64_t until)
{
    struct shard *s = shard_of(c, hash);
    pthread_mutex_lock(&s->mu);
    uint32_t i = (uint32_t)(hash >> 4) % PASS;
    if (until || s->pass[i].hash == hash) {
        s->pass[i].hash = hash;
        s->pass[i].until = until;
    }
    pthread_mutex_unlock(&s->mu);
}

bool cache_pass_check(struct cache *c, uint64_t hash, int64_t now)
{
    struct shard *s = shard_of(c, hash);
    pthread_mutex_lock(&s->mu);
    uint32_t i = (uint32_t)(hash >> 4) % PASS;
    bool pass = s->pass[i].hash == hash && s->pass[i].until > now;
    pthread_mutex_unlock(&s->mu);
    return pass;
}

void cache_stats(struct cache *c, struct cache_stats *st)
{
    st->bytes = atomic_load(&c->bytes);
    st->entries = atomic_load(&c->entries);
    st->budget = atomic_load(&c->budget);
    st->evictions = atomic_load(&c->evictions);
    st->purges = atomic_load(&c->purges);
    st->inserts = atomic_load(&c->inserts);
}
