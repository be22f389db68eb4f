/* cache/fill.c: storing a response and what the upstream's answer does to
 * a stored one.
 *
 *   on_response  the head to store (hop-by-hop fields, Set-Cookie and the
 *                targeted cache fields out), whether it may be stored (RFC
 *                9111 3), its Vary names and purge tags; a successful
 *                unsafe request invalidates its URLs and bumps namespaces.
 *   on_body      fill, up to cache.max_object, and commit once the whole
 *                body is here (before its last bytes reach the client).
 *   on_upstream  a 304 to our validators is merged into the stored
 *                response (RFC 9111 4.3.4) and answered; a 5xx or a dead
 *                origin gets the stale copy within stale-if-error.
 */
#include "cache_int.h"

#include "filter/filter.h"
#include "http/http.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- storing */

static bool hop_or_ours(const char *n, size_t nl)
{
    static const char *const names[] = { "connection", "keep-alive", "proxy-connection", "te",
                                         "transfer-encoding", "upgrade", "trailer",
                                         "content-length", "age", "proxy-authenticate",
                                         "x-cache", "cache-status" };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (nl == strlen(names[i]) && http_ieq(n, names[i], nl))
            return true;
    return false;
}

static bool valid_line(const struct stage_field *f)
{
    for (size_t i = 0; i < f->value_len; i++) {
        unsigned char ch = (unsigned char)f->value[i];
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
            return false;
    }
    return f->name_len > 0;
}

/* Whether a field is named in the response's Connection fields (RFC 9110
 * 7.6.1: hop-by-hop, never stored). */
static bool connection_named(struct stage_x *sx, const char *n, size_t nl)
{
    struct stage_field f;
    for (uint32_t i = 0; stage_response_field(sx, i, &f); i++) {
        if (!(f.name_len == 10 && http_ieq(f.name, "connection", 10)))
            continue;
        struct http_list it = { f.value, f.value + f.value_len };
        const char *e;
        size_t el;
        while (http_list_next(&it, &e, &el))
            if (el == nl && http_ieq(e, n, nl))
                return true;
    }
    return false;
}

/* The head to store: the upstream's fields but hop-by-hop ones (and those
 * Connection names), framing, Age, and Set-Cookie unless the route allows
 * it. Adds Date when the upstream gave none. The targeted cache fields are
 * still there (the policy reads them), strip_targeted() takes them out. */
static char *build_head(struct stage_x *sx, const struct rstate *rs, uint32_t *len, int64_t now)
{
    size_t cap = 256, n = 0;
    struct stage_field f;
    for (uint32_t i = 0; stage_response_field(sx, i, &f); i++)
        cap += f.name_len + f.value_len + 4;
    char *h = malloc(cap);
    if (!h)
        return NULL;
    bool date = false;
    for (uint32_t i = 0; stage_response_field(sx, i, &f); i++) {
        if (hop_or_ours(f.name, f.name_len) || !valid_line(&f) ||
            (!rs->rc->allow_set_cookie && f.name_len == 10 && http_ieq(f.name, "set-cookie", 10)) ||
            connection_named(sx, f.name, f.name_len))
            continue;
        date |= f.name_len == 4 && http_ieq(f.name, "date", 4);
        n += (size_t)sprintf(h + n, "%.*s: %.*s\r\n", (int)f.name_len, f.name, (int)f.value_len, f.value);
    }
    if (!date) {
        char d[32];
        cache_fmt_date(now / 1000, d);
        n += (size_t)sprintf(h + n, "Date: %s\r\n", d);
    }
    *len = (uint32_t)n;
    return h;
}

/* Remove the fields addressed to this cache (Portico-Cache-Control,
 * Surrogate-Control) from a head block, in place. */
static void strip_targeted(char *h, uint32_t *len)
{
    char *w = h, *p = h, *end = h + *len;
    while (p < end) {
        char *eol = memchr(p, '\r', (size_t)(end - p));
        if (!eol)
            break;
        size_t ll = (size_t)(eol + 2 - p);
        bool drop = (ll > 22 && http_ieq(p, "portico-cache-control:", 22)) ||
                    (ll > 18 && http_ieq(p, "surrogate-control:", 18));
        if (!drop) {
            memmove(w, p, ll);
            w += ll;
        }
        p = eol + 2;
    }
    *len = (uint32_t)(w - h);
}

/* Vary's names, lowercase, "a\nb\n"; false for Vary: * (never stored). */
static bool vary_names(struct stage_x *sx, struct cx *cx)
{
    char buf[512];
    size_t n = 0;
    struct stage_field f;
    for (uint32_t i = 0; stage_response_field(sx, i, &f); i++) {
        if (!(f.name_len == 4 && http_ieq(f.name, "vary", 4)))
            continue;
        struct http_list it = { f.value, f.value + f.value_len };
        const char *e;
        size_t el;
        while (http_list_next(&it, &e, &el)) {
            if (el == 1 && e[0] == '*')
                return false;
            if (n + el + 1 > sizeof buf)
                return false;
            for (size_t k = 0; k < el; k++)
                buf[n + k] = (char)(e[k] >= 'A' && e[k] <= 'Z' ? e[k] + 32 : e[k]);
            n += el;
            buf[n++] = '\n';
        }
    }
    if (!n)
        return true;
    if (!(cx->vnames = malloc(n)))
        return false;
    memcpy(cx->vnames, buf, n);
    cx->vnames_len = (uint32_t)n;
    return true;
}

static void collect_tags(struct stage_x *sx, struct cx *cx, const struct rstate *rs)
{
    char buf[1024];
    size_t n = 0, tl = strlen(rs->tag_header);
    struct stage_field f;
    for (uint32_t i = 0; stage_response_field(sx, i, &f); i++) {
        if (!(f.name_len == tl && http_ieq(f.name, rs->tag_header, tl)))
            continue;
        for (const char *p = f.value, *end = f.value + f.value_len; p < end;) {
            while (p < end && (*p == ' ' || *p == ',' || *p == '\t'))
                p++;
            const char *s = p;
            while (p < end && *p != ' ' && *p != ',' && *p != '\t')
                p++;
            size_t l = (size_t)(p - s);
            if (l && n + l + 1 <= sizeof buf) {
                memcpy(buf + n, s, l);
                n += l;
                buf[n++] = '\n';
            }
        }
    }
    if (n && (cx->tags = malloc(n))) {
        memcpy(cx->tags, buf, n);
        cx->tags_len = (uint32_t)n;
    }
}

/* RFC 9111 3: whether this response may be stored, and its times. */
static bool storable(struct stage_x *sx, struct cx *cx, const struct rstate *rs, int status,
                     int64_t now)
{
    const char *v;
    size_t vl;
    if (!cache_method_is(sx, "GET") || (cx->req.flags & CC_NO_STORE) || status < 200 ||
        status == 206 || status == 304 || stage_request_header(sx, "range", 5, &v, &vl))
        return false;
    bool explicit;
    struct cache_cc cc;
    cache_times_of(rs, cx->head, cx->head_len, status, cache_response_age(sx), cx->request_time, now,
                   &cx->t, &cc, &explicit);
    cx->flags = cc.flags;
    if (cc.flags & CC_MUST_UNDERSTAND) {
        if (!cache_understood_status(status))
            return false;               /* RFC 9111 5.2.2.3: as if no-store */
    } else if (cc.flags & CC_NO_STORE) {
        return false;
    }
    if (cc.flags & CC_PRIVATE)
        return false;
    if (stage_request_header(sx, "authorization", 13, &v, &vl) &&
        !(cc.flags & (CC_PUBLIC | CC_MUST_REVALIDATE)) && cc.s_maxage < 0)
        return false;
    if (!rs->rc->allow_set_cookie && stage_response_header(sx, "set-cookie", 10, &v, &vl))
        return false;
    if (!explicit && !cache_heuristic_status(status))
        return false;
    bool validators = cache_block_get(cx->head, cx->head_len, "etag", &v, &vl) ||
                      cache_block_get(cx->head, cx->head_len, "last-modified", &v, &vl);
    if (cx->t.lifetime <= 0 && !(validators && (cc.flags & CC_NO_CACHE || cc.max_age == 0 ||
                                                cc.s_maxage == 0)))
        return false;
    if (stage_response_header(sx, "content-length", 14, &v, &vl)) {
        uint64_t n = 0;
        for (size_t i = 0; i < vl && n <= rs->max_object; i++)
            n = n * 10 + (uint64_t)(v[i] - '0');
        if (n > rs->max_object)
            return false;
        cx->cap = n;
    }
    return vary_names(sx, cx);
}

/* A successful unsafe request: its target, Location and Content-Location
 * (same host) are invalidated, and bump_on_write's namespaces bumped. */
static void invalidate(struct stage_x *sx, struct cx *cx, const struct rstate *rs)
{
    struct cache *c = cache_get();
    cache_purge_key(c, cx->key, cx->key_len);
    static const char *const fields[] = { "location", "content-location" };
    size_t hn;
    const char *host = stage_host(sx, &hn);
    if (!host)
        host = "", hn = 0;
    for (int i = 0; i < 2; i++) {
        const char *v;
        size_t vl;
        if (!stage_response_header(sx, fields[i], strlen(fields[i]), &v, &vl) || !vl)
            continue;
        char key[KEY_MAX];
        size_t kn = 0;
        if (v[0] == '/' && (vl < 2 || v[1] != '/')) {
            kn = cache_make_key(rs->rc, stage_https(sx), host, hn, v, vl, key, sizeof key);
        } else {
            const char *p = memchr(v, ':', vl);
            if (p && (size_t)(v + vl - p) > 3 && p[1] == '/' && p[2] == '/') {
                const char *h = p + 3, *slash = memchr(h, '/', (size_t)(v + vl - h));
                size_t hl = slash ? (size_t)(slash - h) : (size_t)(v + vl - h);
                if (hl == hn && http_ieq(h, host, hn))
                    kn = cache_make_key(rs->rc, stage_https(sx), host, hn, slash ? slash : "/",
                                        slash ? (size_t)(v + vl - slash) : 1, key, sizeof key);
            }
        }
        if (kn)
            cache_purge_key(c, key, kn);
    }
    for (uint32_t i = 0; i < rs->rc->nbump; i++)
        cache_ns_bump(c, rs->rc->bump[i]);
}

enum stage_body_mode cache_on_response(struct stage_x *sx)
{
    struct cx *cx = stage_ctx(sx);
    struct rstate *rs = stage_route_state(sx);
    int status = stage_status(sx);
    if (cx->answered || !cx->key)
        return STAGE_BODY_NONE;
    if (cx->unsafe) {
        if (status >= 200 && status < 400)
            invalidate(sx, cx, rs);
        return STAGE_BODY_NONE;
    }
    int64_t now = cache_now_ms();
    stage_response_edit(sx, STAGE_REMOVE, "Portico-Cache-Control", 21, NULL, 0);
    stage_response_edit(sx, STAGE_REMOVE, "Surrogate-Control", 17, NULL, 0);
    bool bypass = cx->req.flags & CC_NO_CACHE;     /* the client asked for the origin */
    stage_response_edit(sx, STAGE_SET, "X-Cache", 7, bypass ? "BYPASS" : "MISS", bypass ? 6 : 4);
    if (!cx->refresh)                   /* portico's own refresh is not a client's miss */
        cache_count(sx, rs->s, cx->req.flags & CC_NO_CACHE ? R_BYPASS : R_MISS);
    cx->head = build_head(sx, rs, &cx->head_len, now);
    if (!cx->head || !storable(sx, cx, rs, status, now)) {
        cx->rejected = status < 500 && cx->head;
        free(cx->head);
        cx->head = NULL;
        const char *cs = cx->validating ? "portico; fwd=stale" : bypass ? "portico; fwd=request"
                                                                        : "portico; fwd=miss";
        stage_response_edit(sx, STAGE_SET, "Cache-Status", 12, cs, strlen(cs));
        return STAGE_BODY_NONE;
    }
    strip_targeted(cx->head, &cx->head_len);
    collect_tags(sx, cx, rs);
    const char *ct, *cc, *ce;
    size_t ctl, ccl = 0, cel;
    if (rs->cp && status == 200 && !stage_response_header(sx, "content-encoding", 16, &ce, &cel) &&
        stage_response_header(sx, "content-type", 12, &ct, &ctl)) {
        if (!stage_response_header(sx, "cache-control", 13, &cc, &ccl))
            cc = NULL;
        cx->compressible = filter_compressible(rs->cp, ct, ctl, cc, ccl, UINT64_MAX);
    }
    const char *cs = cx->validating ? "portico; fwd=stale; stored"
                     : bypass       ? "portico; fwd=request; stored"
                                    : "portico; fwd=miss; stored";
    stage_response_edit(sx, STAGE_SET, "Cache-Status", 12, cs, strlen(cs));
    cx->status = status;
    cx->store = true;
    if (cx->cap && !(cx->buf = malloc(cx->cap)))
        cx->store = false;
    return cx->store ? STAGE_BODY_WATCH : STAGE_BODY_NONE;
}

static void commit(struct stage_x *sx, struct cx *cx, const struct rstate *rs);

size_t cache_on_body(struct stage_x *sx, const char *in, size_t len, bool end, char *out,
                     size_t out_room, size_t *out_len)
{
    (void)out;
    (void)out_room;
    (void)out_len;
    struct cx *cx = stage_ctx(sx);
    struct rstate *rs = stage_route_state(sx);
    if (!cx->store)
        return len;
    if (len && cx->len + len > cx->cap) {
        size_t nc = cx->cap ? cx->cap : 16384;
        while (nc < cx->len + len)
            nc *= 2;
        if (cx->len + len > rs->max_object) {
            cx->store = false;          /* too big: it streams through, uncached */
            free(cx->buf);
            cx->buf = NULL;
            return len;
        }
        if (nc > rs->max_object)
            nc = rs->max_object;
        char *nb = realloc(cx->buf, nc);
        if (!nb) {
            cx->store = false;
            return len;
        }
        cx->buf = nb;
        cx->cap = nc;
    }
    if (len)
        memcpy(cx->buf + cx->len, in, len);
    cx->len += len;
    if (end) {
        /* the whole body is here: stored now, before its last bytes reach
         * the client, so that its next request (on any connection) hits */
        cx->body_ended = true;
        if (stage_status(sx) == cx->status)
            commit(sx, cx, rs);
        cx->store = false;
        if (cx->lead) {
            cache_pending_done(cache_get(), cx->lead);
            cx->lead = NULL;
        }
    }
    return len;
}

/* ---------------------------------------------------------------- validation and errors */

struct filled {
    struct stage_body b;
    char *data;
};

static void filled_free(struct stage_body *b)
{
    free(((struct filled *)b)->data);
    free(b);
}

static struct stage_body *body_from(char *data, size_t len)
{
    struct filled *f = malloc(sizeof *f);
    if (!f)
        return NULL;
    atomic_init(&f->b.refs, 1);
    f->b.len = len;
    f->b.data = data;
    f->b.release = filled_free;
    f->data = data;
    return &f->b;
}

/* A 304 to our validators: the stored response with the 304's fields
 * (RFC 9111 4.3.4), stored anew. NULL when it cannot be. */
/* Fields a 304 does not update: they describe the stored body and its
 * validator (and framing and hop-by-hop ones are never stored). */
static bool kept_from_stored(const char *n, size_t nl)
{
    static const char *const names[] = { "content-encoding", "content-md5", "content-range",
                                         "etag", "content-length" };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (nl == strlen(names[i]) && http_ieq(n, names[i], nl))
            return true;
    return hop_or_ours(n, nl);
}

static bool update_field(struct stage_x *sx, const struct rstate *rs, const struct stage_field *f)
{
    return !kept_from_stored(f->name, f->name_len) && valid_line(f) &&
           !connection_named(sx, f->name, f->name_len) &&
           (rs->rc->allow_set_cookie || !(f->name_len == 10 && http_ieq(f->name, "set-cookie", 10)));
}

/* A 304 to our validators: the stored response with the 304's fields
 * (RFC 9111 4.3.4), stored anew. NULL when it cannot be. */
static struct cache_obj *merge_304(struct stage_x *sx, struct cx *cx, const struct rstate *rs)
{
    struct cache_obj_view v;
    cache_obj_view(cx->obj, &v);
    size_t cap = v.head_len + 64;
    struct stage_field f;
    for (uint32_t i = 0; stage_response_field(sx, i, &f); i++)
        cap += f.name_len + f.value_len + 4;
    char *h = malloc(cap);
    if (!h)
        return NULL;
    size_t n = 0;
    for (const char *b = v.head, *end = v.head + v.head_len; b < end;) {
        const char *eol = memchr(b, '\r', (size_t)(end - b)), *colon = memchr(b, ':', (size_t)(end - b));
        if (!eol || !colon)
            break;
        bool replaced = false;          /* by a field of the 304 */
        struct stage_field u = { b, NULL, (size_t)(colon - b), 0 };
        for (uint32_t i = 0; !replaced && stage_response_field(sx, i, &f); i++)
            replaced = f.name_len == u.name_len && http_ieq(f.name, b, u.name_len) &&
                       update_field(sx, rs, &f);
        if (!replaced) {
            memcpy(h + n, b, (size_t)(eol + 2 - b));
            n += (size_t)(eol + 2 - b);
        }
        b = eol + 2;
    }
    for (uint32_t i = 0; stage_response_field(sx, i, &f); i++)
        if (update_field(sx, rs, &f))
            n += (size_t)sprintf(h + n, "%.*s: %.*s\r\n", (int)f.name_len, f.name, (int)f.value_len, f.value);
    struct cache_obj_new o = { .key = cx->key, .key_len = cx->key_len, .hash = cx->hash,
                               .head = h, .head_len = n, .body = v.body, .status = v.status };
    bool explicit;
    struct cache_cc cc;
    uint32_t len32 = (uint32_t)n;
    cache_times_of(rs, h, n, v.status, cache_response_age(sx), cx->request_time, cache_now_ms(), &o.t, &cc, &explicit);
    strip_targeted(h, &len32);
    o.head_len = len32;
    o.flags = cc.flags | (v.flags & CACHE_F_COMPRESSIBLE);
    cache_obj_vary(cx->obj, &o.vary, &o.vary_len, &o.vary_names, &o.vary_names_len, &o.tags,
                   &o.tags_len, &o.ns);
    o.ns = rs->ns;
    struct cache_obj *r = cache_insert(cache_get(), &o);
    free(h);
    return r;
}

bool cache_on_upstream(struct stage_x *sx, int status)
{
    struct cx *cx = stage_ctx(sx);
    struct rstate *rs = stage_route_state(sx);
    if (!cx->obj || cx->unsafe)
        return false;
    if (cx->validating && status == 304) {
        struct cache_obj *o = merge_304(sx, cx, rs);
        if (!o)
            return false;
        cache_obj_unref(cx->obj);
        cx->obj = NULL;
        bool ok = cache_answer(sx, cx, o, R_REVALIDATED, cache_now_ms());
        cache_obj_unref(o);
        return ok;
    }
    if (status < 500)
        return false;
    struct cache_obj_view v;
    cache_obj_view(cx->obj, &v);
    int64_t now = cache_now_ms(), stale = cache_current_age(&v, now) - v.t.lifetime;
    int64_t sie = v.t.sie >= 0 ? v.t.sie : rs->sie;
    /* within stale-if-error (RFC 5861; the route's default when the response
     * names none), whether the origin answered 5xx or could not be reached;
     * never what must be revalidated */
    if ((v.flags & (CC_MUST_REVALIDATE | CC_PROXY_REVALIDATE | CC_NO_CACHE)) || stale >= sie * 1000)
        return false;
    return cache_answer(sx, cx, cx->obj, R_STALE, now);
}

/* ---------------------------------------------------------------- the commit */

static void commit(struct stage_x *sx, struct cx *cx, const struct rstate *rs)
{
    if (cx->len < cx->cap) {
        char *nb = realloc(cx->buf, cx->len ? cx->len : 1);
        if (nb)
            cx->buf = nb;
    }
    /* an empty body still gets a buffer: whoever sends a stored body
     * computes data + offset, and NULL + 0 is undefined */
    if (!cx->buf && !(cx->buf = malloc(1)))
        return;
    struct stage_body *b = body_from(cx->buf, cx->len);
    if (!b)
        return;
    cx->buf = NULL;
    char vary[2048];
    size_t vn = cache_vary_values(cx->vnames, cx->vnames_len, cache_vary_field, sx, vary,
                                  sizeof vary);
    if (vn != SIZE_MAX) {
        struct cache_obj_new o = {
            .key = cx->key, .key_len = cx->key_len, .hash = cx->hash, .vary = vary, .vary_len = vn,
            .vary_names = cx->vnames, .vary_names_len = cx->vnames_len, .head = cx->head,
            .head_len = cx->head_len, .body = b, .status = cx->status, .t = cx->t,
            .flags = cx->flags, .ns = rs->ns, .tags = cx->tags, .tags_len = cx->tags_len,
        };
        if (cx->compressible && cx->len >= rs->cp->min_size && cx->len > 0)
            o.flags |= CACHE_F_COMPRESSIBLE;
        struct cache_obj *obj = cache_insert(cache_get(), &o);
        if (obj) {
            atomic_fetch_add_explicit(&rs->s->stored, 1, memory_order_relaxed);
            cache_pass_mark(cache_get(), cx->hash, 0);
        }
        cache_obj_unref(obj);
    }
    stage_body_unref(b);
}
