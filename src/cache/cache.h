/* cache/cache.h: the RFC 9111 response cache.
 *
 * One store per process, shared by every worker and kept across reloads:
 * sharded, one mutex per shard, never held across I/O. A stored response
 * (struct cache_obj) is immutable once complete and reference-counted, so a
 * hit is written with writev straight from it while it may be replaced or
 * evicted. The store counts keys, heads, bodies and metadata against
 * `cache.memory` and evicts with S3-FIFO (a small probationary FIFO, a main
 * FIFO with a frequency bit per object, and a ghost of recent evictions).
 *
 * The cache is a stage (cache_stage, in cache/stage.c): lookup and coalescing
 * on the request, validation and stale-if-error on the upstream's answer,
 * the store decision on the response head, the fill on the body, the commit
 * at the end. cache/policy.c holds RFC 9111's rules as pure functions. The
 * stage's files (stage.c, fresh.c, answer.c, fill.c, figures.c) share
 * cache_int.h, which says which holds what.
 */
#ifndef PORTICO_CACHE_CACHE_H
#define PORTICO_CACHE_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conf/conf.h"
#include "proxy/stage.h"

extern const struct stage_def cache_stage;

/* ---- policy (policy.c) ---- */

enum {
    CC_NO_STORE = 1u << 0,
    CC_NO_CACHE = 1u << 1,
    CC_PRIVATE = 1u << 2,
    CC_PUBLIC = 1u << 3,
    CC_MUST_REVALIDATE = 1u << 4,
    CC_PROXY_REVALIDATE = 1u << 5,
    CC_ONLY_IF_CACHED = 1u << 6,
    CC_IMMUTABLE = 1u << 7,
    CC_NO_TRANSFORM = 1u << 8,
    CC_MAX_STALE_ANY = 1u << 9,
    CC_MUST_UNDERSTAND = 1u << 10,
    CACHE_F_COMPRESSIBLE = 1u << 16,    /* stored: a compressed variant may be made */
};

/* Cache-Control directives; -1: absent. */
struct cache_cc {
    uint32_t flags;
    int64_t max_age, s_maxage, max_stale, min_fresh, swr, sie;
};

void cache_cc_init(struct cache_cc *cc);
/* Add one Cache-Control field value's directives (fields accumulate). */
void cache_cc_parse(struct cache_cc *cc, const char *v, size_t len);
/* An HTTP-date (IMF-fixdate, RFC 850, asctime) in Unix seconds, or -1. */
int64_t cache_http_date(const char *v, size_t len);
/* Write t as an IMF-fixdate (29 bytes + NUL). */
void cache_fmt_date(int64_t t, char out[32]);
/* Whether an If-None-Match list matches an entity tag (weak comparison). */
bool cache_etag_match(const char *list, size_t list_len, const char *etag, size_t etag_len);

/* ---- the store (store.c) ---- */

struct cache;
struct cache_obj;

struct cache_times {
    int64_t stored;             /* response_time: when the response arrived (Unix ms) */
    int64_t initial_age;        /* RFC 9111 4.2.3 corrected_initial_age (ms) */
    int64_t lifetime;           /* freshness lifetime (ms) */
    int64_t swr, sie;           /* stale-while-revalidate, stale-if-error (s), -1 none */
};

/* A stored response, as the stage reads it. */
struct cache_obj_view {
    int status;
    const char *head;           /* its fields, "Name: value\r\n" each */
    size_t head_len;
    struct stage_body *body;
    const char *etag, *last_modified;   /* into head; NULL: none */
    size_t etag_len, last_modified_len;
    struct cache_times t;
    uint32_t flags;             /* CC_* of the response (NO_CACHE, MUST_REVALIDATE...) */
    bool bumped;                /* its namespace was bumped since it was stored */
};

struct cache *cache_get(void);          /* the process's store, or NULL */
/* Create the store or change its budget (a reload): 0 or -1. */
int cache_configure(const struct conf_cache *cc);

/* A request field getter, for Vary. */
typedef bool (*cache_field_fn)(void *arg, const char *name, size_t nlen, const char **v,
                               size_t *vlen);

uint64_t cache_hash(const char *key, size_t len);
/* The request's values of the Vary names ("name\n" each) as "value\n" each
 * (a missing field is "\x01"): the secondary key. SIZE_MAX if over cap. */
size_t cache_vary_values(const char *names, size_t nlen, cache_field_fn get, void *arg, char *out,
                         size_t cap);
/* The newest stored response for key whose Vary fields match the request,
 * with a reference (cache_obj_unref), or NULL. */
struct cache_obj *cache_lookup(struct cache *c, uint64_t hash, const char *key, size_t klen,
                               cache_field_fn get, void *arg);
void cache_obj_view(const struct cache_obj *o, struct cache_obj_view *v);
struct cache_obj *cache_obj_ref(struct cache_obj *o);
void cache_obj_unref(struct cache_obj *o);
/* Count a hit on it (eviction keeps frequently used objects). */
void cache_obj_touch(struct cache_obj *o);
/* Claim its background refresh: true for the one caller that should do it. */
bool cache_obj_claim_refresh(struct cache_obj *o);
void cache_obj_release_refresh(struct cache_obj *o);

/* What a new object is made of (copied, except body which is referenced). */
struct cache_obj_new {
    const char *key;
    size_t key_len;
    uint64_t hash;
    const char *vary;           /* request values of the Vary fields, "name:value\n"... */
    size_t vary_len;
    const char *vary_names;     /* the Vary field's names, lowercase, "a\nb\n" */
    size_t vary_names_len;
    const char *head;
    size_t head_len;
    struct stage_body *body;
    int status;
    struct cache_times t;
    uint32_t flags;
    int ns;                     /* namespace id, -1 none */
    const char *tags;           /* purge tags, "t1\nt2\n" */
    size_t tags_len;
};
/* Store a response, replacing the one with the same key and Vary values.
 * Returns it with a reference for the caller, or NULL (too big, no memory). */
struct cache_obj *cache_insert(struct cache *c, const struct cache_obj_new *n);
/* The Vary names and values of a stored object (for an updated copy). */
void cache_obj_vary(const struct cache_obj *o, const char **vary, size_t *vary_len,
                    const char **names, size_t *names_len, const char **tags, size_t *tags_len,
                    int *ns);

/* A compressed variant of a stored response (filter/'s encodings): its own
 * head (Content-Encoding, Vary: Accept-Encoding, a weak ETag) and body,
 * made once on first demand and kept with the object, counted in the
 * budget, freed with it. */
struct cache_variant {
    struct stage_body *body;
    size_t head_len;
    char head[];
};
#define CACHE_VARIANTS 3
const struct cache_variant *cache_obj_variant(struct cache_obj *o, int enc);
/* Attach v (taken over) unless one is there already: the one attached. */
const struct cache_variant *cache_obj_add_variant(struct cache *c, struct cache_obj *o, int enc,
                                                  struct cache_variant *v);
/* True for the one caller that should make o's variant for enc. */
bool cache_obj_claim_variant(struct cache_obj *o, int enc);
/* variant.c: the variant for enc, compressed now when the body is small;
 * for a larger body it is made by a background thread and NULL is returned
 * (serve the stored body this time). */
const struct cache_variant *cache_variant_make(struct cache_obj *obj,
                                               const struct cache_obj_view *v, int enc, int level);

/* Namespaces: a small table of names, each with a version; bumping one makes
 * every object stored under an older version stale, in O(1). */
int cache_ns_id(struct cache *c, const char *name);    /* -1: table full */
/* the new version; 0 when no route registered the name (nothing to bump) */
uint64_t cache_ns_bump(struct cache *c, const char *name);

/* Invalidation: the number of objects removed. A key is the scheme, host
 * and path (cache/fresh.c: "http://host/path?query"); `url` purges every
 * variant of one key, `prefix` keys that start with it after the host
 * (any host when host is NULL), `tag` objects carrying it. */
size_t cache_purge_key(struct cache *c, const char *key, size_t klen);
size_t cache_purge_path(struct cache *c, const char *host, size_t hlen, const char *path,
                        size_t plen, bool prefix);
size_t cache_purge_tag(struct cache *c, const char *tag, size_t tlen);

/* Coalescing: one fetch per key at a time; others wait for its result. */
struct cache_pending;
/* Join the fetch in progress for key (true: *w registered, wait for its
 * wake), or become its leader (false, *lead set; NULL when too many wait or
 * out of memory: go upstream uncoalesced). */
bool cache_pending_join(struct cache *c, uint64_t hash, const char *key, size_t klen,
                        struct stage_waker *w, struct cache_pending **lead);
/* The leader's fetch is over (stored or not): wake every waiter. */
void cache_pending_done(struct cache *c, struct cache_pending *p);

/* Keys whose last response could not be stored (Varnish's hit-for-miss):
 * their misses do not wait on one another until `until` (Unix ms);
 * until 0 clears the mark. A small lossy table per shard. */
void cache_pass_mark(struct cache *c, uint64_t hash, int64_t until);
bool cache_pass_check(struct cache *c, uint64_t hash, int64_t now);

struct cache_stats {
    uint64_t bytes, entries, budget;
    uint64_t evictions, purges, inserts;
};
void cache_stats(struct cache *c, struct cache_stats *s);

/* ---- figures (figures.c) ---- */
struct obs_text;
void cache_metrics(struct obs_text *t);         /* Prometheus text */
void cache_status_json(struct obs_text *t);     /* the "cache" object of /status */

/* ---- the admin API (admin.c) ---- */
/* POST /cache/purge?url=|prefix=|tag= and /cache/bump?namespace=: writes a
 * JSON answer to t and returns its status. */
int cache_admin(const char *path, size_t plen, const char *query, size_t qlen, struct obs_text *t);
/* Its query decoder: the value of parameter `name` (the first element
 * "name=..." of the query), percent-decoded ('+' is a space) into out, NUL
 * terminated, its length in *len. False when absent, empty, too long for
 * cap, or holding a NUL (%00). Exposed for tests/fuzz/fuzz_cacheadmin.c. */
bool cache_admin_param(const char *q, size_t qn, const char *name, char *out, size_t cap,
                       size_t *len);

#endif
