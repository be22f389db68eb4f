/* cache/cache_int.h: what the files of the cache's stage share; nothing
 * outside cache/ includes it (the module's interface is cache.h). The
 * per-route and per-exchange state, the counters by route, and the
 * functions one file calls in another, by the file that holds them:
 *
 *   stage.c    registration, per-route and per-exchange setup, on_request
 *              (lookup, coalescing, validation) and on_end
 *   fresh.c    keys and freshness (RFC 9111 4.2)
 *   answer.c   answering from the store: 304, 206/416, variants, HEAD
 *   fill.c     storing (on_response, on_body, the commit), validation and
 *              errors (on_upstream: 304 merging, stale-if-error)
 *   figures.c  the counters by route, metrics and /status
 */
#ifndef PORTICO_CACHE_INT_H
#define PORTICO_CACHE_INT_H

#include "cache.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KEY_MAX 4096

enum { R_HIT, R_MISS, R_STALE, R_REVALIDATED, R_BYPASS, R_N };

/* Counters by route (host and prefix), kept across reloads like limit/'s. */
struct series {
    char route[256];
    _Atomic uint64_t n[R_N];
    _Atomic uint64_t coalesced, stored;
    _Atomic uint32_t expect_permille;
};

/* ---------------------------------------------------------------- per route */

struct rstate {
    const struct conf_route_cache *rc;
    const struct conf_compression *cp;  /* NULL: the route does not compress */
    struct series *s;
    int ns;
    int64_t swr, sie, heuristic_max;    /* seconds */
    uint64_t max_object, lock_timeout_ms;
    char tag_header[CONF_CACHE_NAME];
};

/* ---------------------------------------------------------------- per exchange */

struct cx {
    struct cache_obj *obj;      /* answered from, or being validated */
    struct cache_pending *lead; /* the fetch others wait on: ours */
    char *key;
    uint32_t key_len;
    uint64_t hash;
    struct cache_cc req;
    int64_t request_time;
    bool unsafe, validating, answered, store, body_ended, refresh, waiting;
    bool rejected;              /* the response came and policy would not store it */
    bool compressible;          /* its head allows compressed variants (the length is checked at commit) */
    /* the response being stored */
    int status;
    uint32_t flags;
    struct cache_times t;
    char *head, *vnames, *tags;
    uint32_t head_len, vnames_len, tags_len;
    char *buf;
    size_t len, cap;
};

/* ---------------------------------------------------------------- stage.c */

/* Wall-clock milliseconds (ages are kept in ms). */
int64_t cache_now_ms(void);
/* A request field as a Vary secondary key sees it (a cache_field_fn; arg
 * is the stage_x). */
bool cache_vary_field(void *arg, const char *n, size_t nl, const char **v, size_t *vl);
bool cache_method_is(struct stage_x *sx, const char *m);

/* ---------------------------------------------------------------- fresh.c */

/* scheme://host/path?query for a host and a target; 0 if it does not fit. */
size_t cache_make_key(const struct conf_route_cache *rc, bool https, const char *host, size_t hn,
                      const char *target, size_t tn, char *out, size_t cap);
/* The request's key, as cache_make_key. */
size_t cache_request_key(struct stage_x *sx, const struct rstate *rs, char *out, size_t cap);
/* The first field called `name` in a head block ("Name: value\r\n" lines). */
bool cache_block_get(const char *b, size_t len, const char *name, const char **v, size_t *vl);
/* Statuses whose caching semantics RFC 9110 defines (must-understand). */
bool cache_understood_status(int s);
/* Statuses that may get a heuristic lifetime. */
bool cache_heuristic_status(int s);
/* The response's Age: -1 when invalid (treated as stale), 0 when absent. */
int64_t cache_response_age(struct stage_x *sx);
/* RFC 9111 4.2: the times of a response (its head block), the directives
 * obeyed, and whether it has an explicit lifetime. */
void cache_times_of(const struct rstate *rs, const char *b, size_t len, int status, int64_t age,
                    int64_t request_time, int64_t response_time, struct cache_times *t,
                    struct cache_cc *cc, bool *explicit);
int64_t cache_current_age(const struct cache_obj_view *v, int64_t now);

/* ---------------------------------------------------------------- answer.c */

/* Answer from obj (the context keeps the reference until on_end) and count
 * the result (R_*). False when no answer could be made. */
bool cache_answer(struct stage_x *sx, struct cx *cx, struct cache_obj *obj, int result,
                  int64_t now);
/* only-if-cached and nothing usable stored. */
void cache_answer_504(struct stage_x *sx, struct cx *cx);

/* ---------------------------------------------------------------- fill.c */

/* The stage's on_response, on_body and on_upstream (proxy/stage.h). */
enum stage_body_mode cache_on_response(struct stage_x *sx);
size_t cache_on_body(struct stage_x *sx, const char *in, size_t len, bool end, char *out,
                     size_t out_room, size_t *out_len);
bool cache_on_upstream(struct stage_x *sx, int status);

/* ---------------------------------------------------------------- figures.c */

/* The counters of a route (shared by the routes with its host and prefix),
 * or NULL when the table is full. */
struct series *cache_series_for(const struct conf_route *rt);
/* Count a result (R_*) in the access log's cache field and on s. */
void cache_count(struct stage_x *sx, struct series *s, int r);

#endif
