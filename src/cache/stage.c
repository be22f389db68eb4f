/* cache/stage.c: the cache as a stage of the request path.
 *
 *   on_request   GET and HEAD: build the key, look it up; a fresh object
 *                (or a stale one the request or stale-while-revalidate
 *                allows) is answered from memory; a stale one is validated
 *                (our If-None-Match / If-Modified-Since upstream); a miss
 *                waits on a fetch of the same key already under way, or
 *                becomes that fetch. Unsafe methods remember their key.
 *   on_upstream  a 304 to our validators is merged into the stored object
 *                and answered; a 5xx or a dead origin gets the stale copy
 *                within stale-if-error.
 *   on_response  decide whether to store (RFC 9111 3) and watch the body;
 *                a successful unsafe request invalidates and bumps.
 *   on_body      fill, up to cache.max_object.
 *   on_end       commit, then wake the requests that waited on this fetch.
 *
 * This file holds the stage's registration, the per-route and per-exchange
 * setup, on_request (and the wake of a request that waited) and on_end. The
 * rest, sharing cache_int.h: keys and freshness (fresh.c), answering from
 * the store (answer.c), storing, validation and errors: on_upstream,
 * on_response, on_body and the commit (fill.c), and the counters by route
 * with their metrics and /status (figures.c).
 */
#include "cache_int.h"

#include "http/http.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PASS_SECONDS 120        /* how long a key found uncacheable skips coalescing */

/* ---------------------------------------------------------------- per route */

static void *route_new(const struct conf *conf, const struct conf_route *route)
{
    const struct conf_route_cache *rc = &route->cache;
    if (!rc->enabled || cache_configure(&conf->cache) < 0)
        return NULL;
    struct rstate *rs = calloc(1, sizeof *rs);
    if (!rs)
        return NULL;
    rs->rc = rc;
    rs->cp = conf->compression.enabled && !route->no_compression ? &conf->compression : NULL;
    rs->s = cache_series_for(route);
    rs->ns = rc->ns[0] ? cache_ns_id(cache_get(), rc->ns) : -1;
    rs->swr = (rc->swr_ms >= 0 ? (uint64_t)rc->swr_ms : conf->cache.stale_while_revalidate_ms) / 1000;
    rs->sie = (rc->sie_ms >= 0 ? (uint64_t)rc->sie_ms : conf->cache.stale_if_error_ms) / 1000;
    rs->heuristic_max = (int64_t)(conf->cache.heuristic_max_ms / 1000);
    rs->max_object = conf->cache.max_object;
    rs->lock_timeout_ms = conf->cache.lock_timeout_ms;
    memcpy(rs->tag_header, conf->cache.tag_header, sizeof rs->tag_header);
    return rs;
}

static void route_free(void *st) { free(st); }

/* ---------------------------------------------------------------- per exchange */

/* Wall-clock milliseconds: ages are kept in ms so that a lifetime ends
 * when it ends, not at the next whole second (HTTP's fields are seconds). */
int64_t cache_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME_COARSE, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int elem_cmp(const void *a, const void *b)
{
    const struct stage_field *x = a, *y = b;
    size_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
    int c = memcmp(x->name, y->name, n);
    return c ? c : (x->name_len > y->name_len) - (x->name_len < y->name_len);
}

/* A request field as a Vary secondary key sees it: every line of it
 * combined, whitespace dropped, and for Accept-Language, lowercase with
 * its elements in order (so that "en, fr" and "fr,en" select the same
 * variant). Into a per-thread scratch buffer, read at once by the caller. */
bool cache_vary_field(void *arg, const char *n, size_t nl, const char **v, size_t *vl)
{
    static _Thread_local char scratch[2048];
    struct stage_field f;
    size_t len = 0;
    bool any = false, lang = nl == 15 && http_ieq(n, "accept-language", 15);
    for (uint32_t i = 0; stage_request_field(arg, i, &f); i++) {
        if (!(f.name_len == nl && http_ieq(f.name, n, nl)))
            continue;
        if (any && len < sizeof scratch)
            scratch[len++] = ',';
        any = true;
        for (size_t k = 0; k < f.value_len && len < sizeof scratch; k++)
            if (f.value[k] != ' ' && f.value[k] != '\t')
                scratch[len++] = (char)(lang && f.value[k] >= 'A' && f.value[k] <= 'Z'
                                            ? f.value[k] + 32 : f.value[k]);
    }
    if (!any)
        return false;
    if (lang) {
        struct stage_field e[32];
        size_t ne = 0;
        char sorted[sizeof scratch];
        for (size_t p = 0; p < len && ne < 32;) {
            const char *c = memchr(scratch + p, ',', len - p);
            size_t el = c ? (size_t)(c - scratch - p) : len - p;
            if (el)
                e[ne++] = (struct stage_field){ scratch + p, NULL, el, 0 };
            p += el + 1;
        }
        qsort(e, ne, sizeof e[0], elem_cmp);
        size_t o = 0;
        for (size_t i = 0; i < ne; i++) {
            if (i)
                sorted[o++] = ',';
            memcpy(sorted + o, e[i].name, e[i].name_len);
            o += e[i].name_len;
        }
        memcpy(scratch, sorted, o);
        len = o;
    }
    *v = scratch;
    *vl = len;
    return true;
}

bool cache_method_is(struct stage_x *sx, const char *m)
{
    size_t n;
    const char *s = stage_method(sx, &n);
    return n == strlen(m) && !memcmp(s, m, n);
}

/* ---------------------------------------------------------------- the request */

static bool is_unsafe(struct stage_x *sx)
{
    return !cache_method_is(sx, "GET") && !cache_method_is(sx, "HEAD") &&
           !cache_method_is(sx, "OPTIONS") && !cache_method_is(sx, "TRACE");
}

static void request_cc(struct stage_x *sx, struct cache_cc *cc)
{
    const char *v;
    size_t vl;
    cache_cc_init(cc);
    if (stage_request_header(sx, "cache-control", 13, &v, &vl))
        cache_cc_parse(cc, v, vl);
    else if (stage_request_header(sx, "pragma", 6, &v, &vl) && vl >= 8 &&
             http_ieq(v, "no-cache", 8))
        cc->flags |= CC_NO_CACHE;
}

/* A stored object found for the request: answer it (true) or keep it to
 * validate upstream (false). */
static bool use_stored(struct stage_x *sx, struct cx *cx, const struct rstate *rs,
                       struct cache_obj *obj, int64_t now)
{
    struct cache_obj_view v;
    cache_obj_view(obj, &v);
    /* ms; the request's directives are whole seconds */
    int64_t age = cache_current_age(&v, now), fresh = v.t.lifetime - age;
    bool usable = !(v.flags & CC_NO_CACHE) && !v.bumped && !(cx->req.flags & CC_NO_CACHE) &&
                  !cx->refresh;
    if (usable && fresh > 0 && (cx->req.max_age < 0 || age / 1000 <= cx->req.max_age) &&
        (cx->req.min_fresh < 0 || fresh / 1000 >= cx->req.min_fresh))
        return cache_answer(sx, cx, obj, R_HIT, now);
    bool mustrev = v.flags & (CC_MUST_REVALIDATE | CC_PROXY_REVALIDATE);
    int64_t stale = -fresh;
    if (usable && !mustrev && stale >= 0 &&
        ((cx->req.flags & CC_MAX_STALE_ANY) ||
         (cx->req.max_stale >= 0 && stale <= cx->req.max_stale * 1000)))
        return cache_answer(sx, cx, obj, R_STALE, now);
    /* a window of N seconds after the end of freshness: none when N is 0 */
    int64_t swr = v.t.swr >= 0 ? v.t.swr : rs->swr;
    if (usable && !mustrev && stale >= 0 && stale < swr * 1000 && cx->req.max_age < 0 &&
        cx->req.min_fresh < 0) {
        if (cache_obj_claim_refresh(obj) && stage_background(sx) < 0)
            cache_obj_release_refresh(obj);
        return cache_answer(sx, cx, obj, R_STALE, now);
    }
    return false;
}

/* Send our validators instead of the client's (we answer its conditionals
 * ourselves once we know the stored response is current). */
static void validate(struct stage_x *sx, struct cx *cx, struct cache_obj *obj)
{
    struct cache_obj_view v;
    cache_obj_view(obj, &v);
    cx->obj = obj;
    if (!v.etag && !v.last_modified)
        return;
    if (v.etag)
        stage_request_edit(sx, STAGE_SET, "If-None-Match", 13, v.etag, v.etag_len);
    else
        stage_request_edit(sx, STAGE_REMOVE, "If-None-Match", 13, NULL, 0);
    if (v.last_modified)
        stage_request_edit(sx, STAGE_SET, "If-Modified-Since", 17, v.last_modified,
                           v.last_modified_len);
    else
        stage_request_edit(sx, STAGE_REMOVE, "If-Modified-Since", 17, NULL, 0);
    stage_request_edit(sx, STAGE_REMOVE, "If-Range", 8, NULL, 0);
    stage_request_edit(sx, STAGE_REMOVE, "Range", 5, NULL, 0);
    cx->validating = true;
}

static void woken(struct stage_x *sx);

/* The key, copied for the callbacks after on_request (a hit does without). */
static bool keep_key(struct cx *cx, const char *key, size_t kn)
{
    if (!(cx->key = malloc(kn)))
        return false;
    memcpy(cx->key, key, kn);
    cx->key_len = (uint32_t)kn;
    return true;
}

static enum stage_verdict on_request(struct stage_x *sx)
{
    struct cx *cx = stage_ctx(sx);
    struct rstate *rs = stage_route_state(sx);
    struct cache *c = cache_get();
    char key[KEY_MAX];
    size_t kn = cache_request_key(sx, rs, key, sizeof key);
    bool get = cache_method_is(sx, "GET") || cache_method_is(sx, "HEAD");
    cx->unsafe = is_unsafe(sx);
    if (!kn || (!get && !cx->unsafe))
        return STAGE_CONTINUE;
    cx->hash = cache_hash(key, kn);
    if (!get) {
        keep_key(cx, key, kn);          /* a write: invalidated if it succeeds */
        return STAGE_CONTINUE;
    }
    request_cc(sx, &cx->req);
    int64_t now = cache_now_ms();
    cx->request_time = now;
    cx->refresh = stage_internal(sx);
    struct cache_obj *obj = cache_lookup(c, cx->hash, key, kn, cache_vary_field, sx);
    if (obj && use_stored(sx, cx, rs, obj, now)) {
        cache_obj_unref(obj);
        return STAGE_ANSWERED;
    }
    if (cx->req.flags & CC_ONLY_IF_CACHED) {
        cache_obj_unref(obj);
        cache_answer_504(sx, cx);
        return STAGE_ANSWERED;
    }
    const char *rv;
    size_t rl;
    if (!keep_key(cx, key, kn)) {     /* going upstream: on_response and on_end need it */
        cache_obj_unref(obj);
        return STAGE_CONTINUE;
    }
    if (obj)
        validate(sx, cx, obj);
    else if (!cx->refresh && !(cx->req.flags & CC_NO_CACHE) && cache_method_is(sx, "GET") &&
             !stage_request_header(sx, "range", 5, &rv, &rl) && !cache_pass_check(c, cx->hash, now)) {
        struct stage_waker *w = stage_waker(sx, woken);
        if (w && cache_pending_join(c, cx->hash, key, kn, w, &cx->lead)) {
            cx->waiting = true;
            atomic_fetch_add_explicit(&rs->s->coalesced, 1, memory_order_relaxed);
            stage_resume_after(sx, rs->lock_timeout_ms);
            return STAGE_WAIT;
        }
        stage_waker_put(w);
    }
    return STAGE_CONTINUE;
}

/* The fetch this exchange waited on is over: answer from what it stored,
 * or go upstream. */
static void woken(struct stage_x *sx)
{
    struct cx *cx = stage_ctx(sx);
    struct rstate *rs = stage_route_state(sx);
    struct cache *c = cache_get();
    int64_t now = cache_now_ms();
    cx->waiting = false;
    struct cache_obj *obj = cache_lookup(c, cx->hash, cx->key, cx->key_len, cache_vary_field, sx);
    bool done = obj && use_stored(sx, cx, rs, obj, now);
    cache_obj_unref(obj);
    if (done) {
        stage_finish(sx, 500);
        return;
    }
    /* nothing stored: the fetch was abandoned (its client went away) or
     * failed. Wait on the next one, or be it, so that one impatient client
     * does not set all its waiters on the origin at once; but not for a key
     * found uncacheable. The lock_timeout timer still bounds the wait. */
    struct stage_waker *w = cache_pass_check(c, cx->hash, now) ? NULL : stage_waker(sx, woken);
    if (w && cache_pending_join(c, cx->hash, cx->key, cx->key_len, w, &cx->lead)) {
        cx->waiting = true;
        return;
    }
    stage_waker_put(w);
    stage_resume(sx);
}

/* ---------------------------------------------------------------- the end */

static void on_end(struct stage_x *sx)
{
    struct cx *cx = stage_ctx(sx);
    struct rstate *rs = stage_route_state(sx);
    struct cache *c = cache_get();
    (void)rs;
    if (cx->lead && cx->rejected)       /* the next misses need not wait on each other */
        cache_pass_mark(c, cx->hash, cache_now_ms() + PASS_SECONDS * 1000);
    if (cx->refresh && cx->obj)
        cache_obj_release_refresh(cx->obj);
    if (cx->lead)
        cache_pending_done(c, cx->lead);
    cache_obj_unref(cx->obj);
    free(cx->buf);
    free(cx->head);
    free(cx->vnames);
    free(cx->tags);
    free(cx->key);
}

const struct stage_def cache_stage = {
    .name = "cache",
    .ctx_size = sizeof(struct cx),
    .keep_request_headers = true,
    .route_new = route_new,
    .route_free = route_free,
    .on_request = on_request,
    .on_upstream = cache_on_upstream,
    .on_response = cache_on_response,
    .on_body = cache_on_body,
    .on_end = on_end,
};
