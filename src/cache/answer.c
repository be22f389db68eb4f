/* cache/answer.c: answering a request from a stored response: Age,
 * X-Cache and Cache-Status, a 304 to the client's conditionals, a 206 or
 * 416 for a single range (If-Range honoured), the compressed variant the
 * client accepts (or Vary: Accept-Encoding on the stored one), and the
 * 504 of only-if-cached. A HEAD gets the same head; the proxy sends no body.
 */
#include "cache_int.h"

#include "core/fmt.h"
#include "filter/filter.h"
#include "http/http.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- answering */

struct slice {
    struct stage_body b;
    struct stage_body *parent;
};

static void slice_free(struct stage_body *b)
{
    struct slice *s = (struct slice *)b;
    stage_body_unref(s->parent);
    free(s);
}

static struct stage_body *slice_of(struct stage_body *parent, size_t off, size_t len)
{
    struct slice *s = malloc(sizeof *s);
    if (!s)
        return NULL;
    atomic_init(&s->b.refs, 1);
    s->b.len = len;
    s->b.data = parent->data + off;
    s->b.release = slice_free;
    s->parent = stage_body_ref(parent);
    return &s->b;
}

/* A single "bytes=" range of a body of len bytes: 1 satisfiable (*from,
 * *to), 0 not a single range we serve (send it all), -1 unsatisfiable. */
static int parse_range(const char *v, size_t n, size_t len, size_t *from, size_t *to)
{
    if (n < 7 || !http_ieq(v, "bytes=", 6) || memchr(v, ',', n))
        return 0;
    const char *p = v + 6, *end = v + n, *dash = memchr(p, '-', (size_t)(end - p));
    if (!dash)
        return 0;
    uint64_t a = 0, b = 0;
    bool ha = false, hb = false;
    for (const char *q = p; q < dash; q++, ha = true) {
        if (*q < '0' || *q > '9' || a > (1ull << 50))
            return 0;
        a = a * 10 + (uint64_t)(*q - '0');
    }
    for (const char *q = dash + 1; q < end; q++, hb = true) {
        if (*q < '0' || *q > '9' || b > (1ull << 50))
            return 0;
        b = b * 10 + (uint64_t)(*q - '0');
    }
    if (!ha && !hb)
        return 0;
    if (!ha) {                          /* the last b bytes */
        if (b == 0 || len == 0)
            return -1;
        *from = b >= len ? 0 : len - b;
        *to = len - 1;
        return 1;
    }
    if (hb && b < a)
        return 0;
    if (a >= len)
        return -1;
    *from = a;
    *to = hb && b < len ? b : len - 1;
    return 1;
}

/* Whether a client's conditional request is satisfied by the stored one:
 * If-None-Match (weak comparison), else If-Modified-Since. */
static bool not_modified(struct stage_x *sx, const struct cache_obj_view *v)
{
    const char *h;
    size_t hl;
    if (v->status != 200)
        return false;
    if (stage_request_header(sx, "if-none-match", 13, &h, &hl)) {
        if (hl == 1 && h[0] == '*')
            return true;                /* RFC 9110 13.1.2: any current representation */
        return v->etag && cache_etag_match(h, hl, v->etag, v->etag_len);
    }
    if (stage_request_header(sx, "if-modified-since", 17, &h, &hl)) {
        /* RFC 9111 4.3.2: Last-Modified, or the Date when there is none */
        const char *lv = v->last_modified;
        size_t ll = v->last_modified_len;
        if (!lv && !cache_block_get(v->head, v->head_len, "date", &lv, &ll))
            return false;
        int64_t ims = cache_http_date(h, hl), lm = cache_http_date(lv, ll);
        return ims >= 0 && lm >= 0 && lm <= ims;
    }
    return false;
}

/* If-Range: the range applies only to the stored representation it names. */
static bool if_range_ok(struct stage_x *sx, const struct cache_obj_view *v)
{
    const char *h;
    size_t hl;
    if (!stage_request_header(sx, "if-range", 8, &h, &hl))
        return true;
    if (hl && h[0] == '"')              /* a strong comparison */
        return v->etag && v->etag_len == hl && !memcmp(v->etag, h, hl);
    return v->last_modified && v->last_modified_len == hl && !memcmp(v->last_modified, h, hl);
}

/* Whether the stored Vary already names Accept-Encoding. */
static bool varies_on_ae(const struct cache_obj_view *v)
{
    for (const char *p = v->head, *end = v->head + v->head_len; p < end;) {
        const char *eol = memchr(p, '\r', (size_t)(end - p));
        if (!eol)
            break;
        if (eol - p > 5 && http_ieq(p, "vary:", 5))
            for (const char *q = p + 5; q + 15 <= eol; q++)
                if (http_ieq(q, "accept-encoding", 15))
                    return true;
        p = eol + 2;
    }
    return false;
}

/* The representation to answer with: a compressed variant the client
 * accepts (made now if it is the first to ask), or the stored one. */
static void representation(struct stage_x *sx, const struct rstate *rs, struct cache_obj *obj,
                           struct cache_obj_view *v, bool *add_vary)
{
    *add_vary = false;
    if (!rs->cp || !(v->flags & CACHE_F_COMPRESSIBLE) || !v->body)
        return;
    const char *rh;
    size_t rl;
    int enc = stage_request_header(sx, "range", 5, &rh, &rl) ? -1 : filter_negotiate(sx, rs->cp);
    const struct cache_variant *var = enc >= 0 ? cache_obj_variant(obj, enc) : NULL;
    if (enc >= 0 && !var)
        var = cache_variant_make(obj, v, enc, rs->cp->cache_level[enc]);
    if (var) {
        v->head = var->head;
        v->head_len = var->head_len;
        v->body = var->body;
    } else {
        *add_vary = !varies_on_ae(v);
    }
}

/* Signed decimal (core/fmt.h's, with a sign): no printf on a hit. */
static size_t fmt_i64(char *out, int64_t v)
{
    size_t k = v < 0;
    out[0] = '-';
    return k + fmt_u64(out + k, v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v);
}

/* Answer from obj (the context keeps the reference until on_end). */
bool cache_answer(struct stage_x *sx, struct cx *cx, struct cache_obj *obj, int result,
                  int64_t now)
{
    struct cache_obj_view v;
    cache_obj_view(obj, &v);
    int64_t age = cache_current_age(&v, now), ttl = v.t.lifetime - age;
    char agebuf[24], status_buf[96], crange[64];
    size_t agelen = fmt_i64(agebuf, age / 1000);
    static const char *const xc[R_N] = { "HIT", "MISS", "STALE", "REVALIDATED", "BYPASS" };
    size_t sl = 18;
    memcpy(status_buf, "portico; hit; ttl=", sl);
    sl += fmt_i64(status_buf + sl, ttl >= 0 ? ttl / 1000 : -((-ttl + 999) / 1000));
    if (result == R_REVALIDATED) {
        memcpy(status_buf + sl, "; fwd=stale; fwd-status=304", 27);
        sl += 27;
    }
    status_buf[sl] = '\0';
    struct stage_field f[6] = {
        { "Via", "1.1 portico", 3, 11 },
        { "Age", agebuf, 3, agelen },
        { "X-Cache", xc[result], 7, strlen(xc[result]) },
        { "Cache-Status", status_buf, 12, sl },
    };
    size_t nf = 4;
    bool modified = !not_modified(sx, &v), add_vary;
    representation(sx, (const struct rstate *)stage_route_state(sx), obj, &v, &add_vary);
    if (add_vary)
        f[nf++] = (struct stage_field){ "Vary", "Accept-Encoding", 4, 15 };
    int status = v.status;
    struct stage_body *body = stage_body_ref(v.body);
    const char *rh;
    size_t rl, from, to;
    if (!modified) {
        status = 304;
        stage_body_unref(body);
        body = NULL;
    } else if (v.status == 200 && cache_method_is(sx, "GET") && v.body &&
               stage_request_header(sx, "range", 5, &rh, &rl) && if_range_ok(sx, &v)) {
        int r = parse_range(rh, rl, v.body->len, &from, &to);
        if (r != 0) {
            if (r > 0)
                snprintf(crange, sizeof crange, "bytes %zu-%zu/%zu", from, to, v.body->len);
            else
                snprintf(crange, sizeof crange, "bytes */%zu", v.body->len);
            f[nf++] = (struct stage_field){ "Content-Range", crange, 13, strlen(crange) };
            stage_body_unref(body);
            body = r > 0 ? slice_of(v.body, from, to - from + 1) : NULL;
            status = r > 0 ? 206 : 416;
            if (r > 0 && !body)
                return false;
        }
    }
    int rc = stage_answer_block(sx, status, status == 416 ? NULL : v.head,
                                status == 416 ? 0 : v.head_len, f, nf, body);
    stage_body_unref(body);
    if (rc < 0)
        return false;
    cache_obj_touch(obj);
    if (cx->obj != obj) {
        cache_obj_unref(cx->obj);
        cx->obj = cache_obj_ref(obj);
    }
    cx->answered = true;
    cache_count(sx, ((struct rstate *)stage_route_state(sx))->s, result);
    return true;
}

void cache_answer_504(struct stage_x *sx, struct cx *cx)
{
    static const struct stage_field f[] = { { "Cache-Status", "portico; fwd=miss; detail=only-if-cached", 12, 40 } };
    stage_answer(sx, 504, f, 1, NULL);
    cx->answered = true;
}
