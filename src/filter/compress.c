/* filter/compress.c: compression of response bodies as they stream (see
 * filter.h): the encoding negotiated from Accept-Encoding (q-values,
 * `identity;q=0`, `*`) in the configured order of preference, for the
 * configured media types above min_size; never for a body already encoded,
 * `Cache-Control: no-transform`, a range, HEAD, or an empty one. The body
 * is a transforming stage's: compressed as it flows, in bounded memory, and
 * a text/event-stream is flushed at every read so that events arrive one by
 * one. Vary gets Accept-Encoding, a strong ETag turns weak, Content-Length
 * goes (the framing is portico's). */
#include "filter.h"

#include "conf/conf.h"

#include <brotli/encode.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

static const char *const enc_name[CONF_ENC_N] = { "br", "zstd", "gzip" };

struct cctx {
    int enc;                    /* -1: none chosen */
    bool gunzip;                /* the upstream's gzip, for a client that does not take it */
    bool gzip_ok;               /* the client accepts gzip */
    bool sse;                   /* text/event-stream: flush every piece */
    bool done;
    z_stream *z;
    BrotliEncoderState *br;
    ZSTD_CCtx *zs;
};

static void *compress_route(const struct conf *conf, const struct conf_route *rt)
{
    return conf->compression.enabled && !rt->no_compression ? (void *)&conf->compression : NULL;
}

/* q of a coding in Accept-Encoding: -1 when not listed. `*` matches any
 * coding not listed by name. */
static double q_of(const char *v, size_t n, const char *coding, double *star)
{
    double q = -1;
    *star = -1;
    size_t cl = strlen(coding);
    for (size_t i = 0; i < n;) {
        while (i < n && (v[i] == ' ' || v[i] == ','))
            i++;
        size_t s = i;
        while (i < n && v[i] != ',' && v[i] != ';' && v[i] != ' ')
            i++;
        size_t e = i;
        double qv = 1;
        while (i < n && v[i] != ',') {
            if (v[i] == 'q' && i + 1 < n && v[i + 1] == '=') {
                char tmp[8];
                size_t k = 0;
                for (i += 2; i < n && k < sizeof tmp - 1 && (v[i] == '.' || (v[i] >= '0' && v[i] <= '9')); i++)
                    tmp[k++] = v[i];
                tmp[k] = '\0';
                qv = atof(tmp);
                continue;
            }
            i++;
        }
        if (e - s == cl && !strncasecmp(v + s, coding, cl))
            q = qv;
        else if (e - s == 1 && v[s] == '*')
            *star = qv;
    }
    return q;
}

/* The best encoding the request accepts, in cp's order of preference. */
static void negotiate(struct stage_x *sx, const struct conf_compression *cp, struct cctx *cx)
{
    cx->enc = -1;
    cx->gzip_ok = true;         /* no Accept-Encoding: any coding will do (RFC 9110 12.5.3) */
    const char *v;
    size_t n;
    if (!stage_request_header(sx, "Accept-Encoding", 15, &v, &n))
        return;
    double gstar, gq = q_of(v, n, "gzip", &gstar);
    cx->gzip_ok = gq > 0 || (gq < 0 && gstar > 0);
    double best = 0;
    for (uint8_t i = 0; i < cp->norder; i++) {
        double star, q = q_of(v, n, enc_name[cp->order[i]], &star);
        if (q < 0)
            q = star;               /* not named: what `*` says, if anything */
        if (q > best) {             /* ties: the earlier in our order wins */
            best = q;
            cx->enc = cp->order[i];
        }
    }
}

static enum stage_verdict compress_request(struct stage_x *sx)
{
    negotiate(sx, stage_route_state(sx), stage_ctx(sx));
    return STAGE_CONTINUE;
}

int filter_negotiate(struct stage_x *sx, const struct conf_compression *cp)
{
    struct cctx cx = { 0 };
    negotiate(sx, cp, &cx);
    return cx.enc;
}

static bool type_ok(const struct conf_compression *cp, const char *t, size_t n)
{
    size_t tl = 0;
    while (tl < n && t[tl] != ';' && t[tl] != ' ')
        tl++;
    for (uint32_t i = 0; i < cp->ntypes; i++) {
        const char *c = cp->types[i];
        size_t cl = strlen(c);
        if (cl >= 2 && c[cl - 1] == '*' && c[cl - 2] == '/') {
            if (tl >= cl - 1 && !strncasecmp(t, c, cl - 1))
                return true;
        } else if (tl == cl && !strncasecmp(t, c, cl)) {
            return true;
        }
    }
    return false;
}

static bool has_token(const char *v, size_t n, const char *tok)
{
    size_t tl = strlen(tok);
    for (size_t i = 0; i + tl <= n; i++)
        if (!strncasecmp(v + i, tok, tl))
            return true;
    return false;
}

/* The default levels (conf.c; measured by `make bench-compress` on a corpus of JSON, HTML, CSS
 * and JavaScript, docs/benchmarks.md "Compression levels") are each encoding's knee for
 * streamed bodies, where one more level starts to cost much more CPU than it saves bytes:
 * brotli 3 (78.5% of the corpus saved, about gzip 5's 79.0%, for 56% of its CPU per byte;
 * brotli 4 costs 85% more for 0.7 points more), zstd 3, gzip 5. Cached variants
 * (filter/encode.c, cache_level) are made once, but inline on first demand: brotli 6 and zstd
 * 10 come within 0.3 points of brotli 9 and zstd 12 for an eighth and a half of their CPU, and
 * gzip 9, the strongest, costs 43 ns a byte. */
static bool start(struct cctx *cx, const struct conf_compression *cp)
{
    int lvl = cp->level[cx->enc];
    switch (cx->enc) {
    case CONF_ENC_GZIP:
        if (!(cx->z = calloc(1, sizeof *cx->z)))
            return false;
        if (deflateInit2(cx->z, lvl, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
            free(cx->z);
            cx->z = NULL;
            return false;
        }
        return true;
    case CONF_ENC_BR:
        if (!(cx->br = BrotliEncoderCreateInstance(NULL, NULL, NULL)))
            return false;
        BrotliEncoderSetParameter(cx->br, BROTLI_PARAM_QUALITY, (uint32_t)lvl);
        BrotliEncoderSetParameter(cx->br, BROTLI_PARAM_LGWIN, 18);     /* bounded memory */
        return true;
    case CONF_ENC_ZSTD:
        if (!(cx->zs = ZSTD_createCCtx()))
            return false;
        ZSTD_CCtx_setParameter(cx->zs, ZSTD_c_compressionLevel, lvl);
        ZSTD_CCtx_setParameter(cx->zs, ZSTD_c_windowLog, 19);
        return true;
    }
    return false;
}

static enum stage_body_mode compress_response(struct stage_x *sx)
{
    const struct conf_compression *cp = stage_route_state(sx);
    struct cctx *cx = stage_ctx(sx);
    size_t ml;
    const char *method = stage_method(sx, &ml);
    int status = stage_status(sx);
    const char *v;
    size_t n;
    if (status < 200 || status == 204 || status == 206 || status == 304)
        return STAGE_BODY_NONE;
    if (stage_response_header(sx, "Content-Range", 13, &v, &n))
        return STAGE_BODY_NONE;
    if (stage_response_header(sx, "Content-Encoding", 16, &v, &n)) {
        /* already encoded: never twice; an upstream's gzip is decoded for a
         * client that does not accept it (and may not be transformed) */
        bool gz = n == 4 && !strncasecmp(v, "gzip", 4);
        const char *cc;
        size_t ccl;
        if (!gz || cx->gzip_ok || !stage_body_transformable(sx) ||
            (ml == 4 && !memcmp(method, "HEAD", 4)) ||
            (stage_response_header(sx, "Cache-Control", 13, &cc, &ccl) && has_token(cc, ccl, "no-transform")))
            return STAGE_BODY_NONE;
        if (!(cx->z = calloc(1, sizeof *cx->z)) || inflateInit2(cx->z, 15 + 16) != Z_OK) {
            free(cx->z);
            cx->z = NULL;
            return STAGE_BODY_NONE;
        }
        cx->gunzip = true;
        stage_response_edit(sx, STAGE_REMOVE, "Content-Encoding", 16, NULL, 0);
        if (stage_response_header(sx, "ETag", 4, &v, &n) && n >= 2 && v[0] == '"' && n + 2 < 512) {
            char etag[512] = "W/";
            memcpy(etag + 2, v, n);
            stage_response_edit(sx, STAGE_SET, "ETag", 4, etag, n + 2);
        }
        return STAGE_BODY_TRANSFORM;
    }
    if (cx->enc < 0 || !stage_body_transformable(sx) || (ml == 4 && !memcmp(method, "HEAD", 4)))
        return STAGE_BODY_NONE;
    if (stage_response_header(sx, "Cache-Control", 13, &v, &n) && has_token(v, n, "no-transform"))
        return STAGE_BODY_NONE;
    if (!stage_response_header(sx, "Content-Type", 12, &v, &n) || !type_ok(cp, v, n))
        return STAGE_BODY_NONE;
    cx->sse = n >= 17 && !strncasecmp(v, "text/event-stream", 17);
    const char *cl;
    size_t cll;
    if (stage_response_header(sx, "Content-Length", 14, &cl, &cll)) {
        char tmp[24];
        if (cll >= sizeof tmp)
            return STAGE_BODY_NONE;
        memcpy(tmp, cl, cll);
        tmp[cll] = '\0';
        if ((uint64_t)strtoull(tmp, NULL, 10) < cp->min_size)
            return STAGE_BODY_NONE;
    }
    if (!start(cx, cp))
        return STAGE_BODY_NONE;
    stage_response_edit(sx, STAGE_SET, "Content-Encoding", 16, enc_name[cx->enc],
                        strlen(enc_name[cx->enc]));
    char vary[512];
    size_t vl = 0;
    if (stage_response_header(sx, "Vary", 4, &v, &n) && n + 18 < sizeof vary) {
        if (has_token(v, n, "accept-encoding") || (n == 1 && v[0] == '*')) {
            vl = 0;
        } else {
            memcpy(vary, v, n);
            memcpy(vary + n, ", Accept-Encoding", 17);
            vl = n + 17;
            stage_response_edit(sx, STAGE_SET, "Vary", 4, vary, vl);
        }
    } else {
        stage_response_edit(sx, STAGE_SET, "Vary", 4, "Accept-Encoding", 15);
    }
    if (stage_response_header(sx, "ETag", 4, &v, &n) && n >= 2 && v[0] == '"' && n + 2 < sizeof vary) {
        vary[0] = 'W';          /* another representation: a strong ETag would lie */
        vary[1] = '/';
        memcpy(vary + 2, v, n);
        stage_response_edit(sx, STAGE_SET, "ETag", 4, vary, n + 2);
    }
    return STAGE_BODY_TRANSFORM;
}

static size_t compress_body(struct stage_x *sx, const char *in, size_t len, bool end, char *out,
                            size_t room, size_t *out_len)
{
    struct cctx *cx = stage_ctx(sx);
    *out_len = 0;
    if (cx->done)
        return len;
    bool flush = cx->sse && len;
    if (cx->gunzip) {
        z_stream *z = cx->z;
        z->next_in = (Bytef *)(uintptr_t)in;
        z->avail_in = (uInt)len;
        z->next_out = (Bytef *)out;
        z->avail_out = (uInt)room;
        int rc = inflate(z, Z_NO_FLUSH);
        *out_len = room - z->avail_out;
        if (rc != Z_STREAM_END && rc != Z_OK && rc != Z_BUF_ERROR) {
            stage_body_error(sx);   /* corrupt: the client must not take it for whole */
            return len;
        }
        if (rc == Z_STREAM_END)
            cx->done = true;
        if (end && !cx->done && !*out_len && z->avail_in == 0)
            stage_body_error(sx);   /* the gzip stream stopped short */
        return len - z->avail_in;
    }
    switch (cx->enc) {
    case CONF_ENC_GZIP: {
        z_stream *z = cx->z;
        z->next_in = (Bytef *)(uintptr_t)in;
        z->avail_in = (uInt)len;
        z->next_out = (Bytef *)out;
        z->avail_out = (uInt)room;
        int rc = deflate(z, end ? Z_FINISH : flush ? Z_SYNC_FLUSH : Z_NO_FLUSH);
        *out_len = room - z->avail_out;
        if (rc == Z_STREAM_END)
            cx->done = true;
        return len - z->avail_in;
    }
    case CONF_ENC_BR: {
        size_t ai = len, ao = room;
        const uint8_t *ni = (const uint8_t *)in;
        uint8_t *no = (uint8_t *)out;
        BrotliEncoderOperation op = end ? BROTLI_OPERATION_FINISH
                                  : flush ? BROTLI_OPERATION_FLUSH : BROTLI_OPERATION_PROCESS;
        if (!BrotliEncoderCompressStream(cx->br, op, &ai, &ni, &ao, &no, NULL))
            cx->done = true;
        *out_len = room - ao;
        if (end && BrotliEncoderIsFinished(cx->br))
            cx->done = true;
        return len - ai;
    }
    case CONF_ENC_ZSTD: {
        ZSTD_inBuffer ib = { in, len, 0 };
        ZSTD_outBuffer ob = { out, room, 0 };
        size_t left = ZSTD_compressStream2(cx->zs, &ob, &ib, end ? ZSTD_e_end : flush ? ZSTD_e_flush
                                                                                      : ZSTD_e_continue);
        *out_len = ob.pos;
        if (ZSTD_isError(left) || (end && left == 0))
            cx->done = true;
        return ib.pos;
    }
    }
    return len;
}

static void compress_end(struct stage_x *sx)
{
    struct cctx *cx = stage_ctx(sx);
    if (cx->z) {
        if (cx->gunzip)
            inflateEnd(cx->z);
        else
            deflateEnd(cx->z);
        free(cx->z);
    }
    if (cx->br)
        BrotliEncoderDestroyInstance(cx->br);
    if (cx->zs)
        ZSTD_freeCCtx(cx->zs);
    cx->z = NULL;
    cx->br = NULL;
    cx->zs = NULL;
}

const struct stage_def filter_compress_stage = {
    .name = "compression",
    .ctx_size = sizeof(struct cctx),
    .route_new = compress_route,
    .on_request = compress_request,
    .on_response = compress_response,
    .on_body = compress_body,
    .on_end = compress_end,
};

bool filter_compressible(const struct conf_compression *cp, const char *type, size_t tlen,
                         const char *cc, size_t cclen, uint64_t len)
{
    return type && type_ok(cp, type, tlen) && len >= cp->min_size && len > 0 &&
           !(cc && has_token(cc, cclen, "no-transform"));
}
