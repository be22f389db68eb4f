/* filter/encode.c: a whole body compressed at once, for the cache's stored
 * variants (filter.h). The output is sized by each library's bound, so one
 * call does it; the body is then trimmed to its length. */
#include "filter.h"

#include "conf/conf.h"

#include <brotli/encode.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

const char *const filter_enc_name[] = { "br", "zstd", "gzip" };

struct enc_body {
    struct stage_body b;
    char data[];
};

static void enc_free(struct stage_body *b) { free(b); }

static size_t gzip_all(int level, const char *in, size_t len, char *out, size_t cap)
{
    z_stream z = { 0 };
    if (deflateInit2(&z, level, Z_DEFLATED, 15 + 16, 9, Z_DEFAULT_STRATEGY) != Z_OK)
        return 0;
    z.next_in = (Bytef *)(uintptr_t)in;
    z.avail_in = (uInt)len;
    z.next_out = (Bytef *)out;
    z.avail_out = (uInt)cap;
    int rc = deflate(&z, Z_FINISH);
    size_t n = rc == Z_STREAM_END ? z.total_out : 0;
    deflateEnd(&z);
    return n;
}

struct stage_body *filter_encode(int enc, int level, const char *data, size_t len)
{
    if (len > (1u << 30))
        return NULL;
    size_t cap = enc == CONF_ENC_BR ? BrotliEncoderMaxCompressedSize(len)
               : enc == CONF_ENC_ZSTD ? ZSTD_compressBound(len)
               : compressBound((uLong)len) + 32;
    if (!cap)
        return NULL;
    struct enc_body *e = malloc(sizeof *e + cap);
    if (!e)
        return NULL;
    size_t n = 0;
    if (enc == CONF_ENC_BR) {
        n = cap;
        if (!BrotliEncoderCompress(level, 22, BROTLI_MODE_TEXT, len, (const uint8_t *)data, &n,
                                   (uint8_t *)e->data))
            n = 0;
    } else if (enc == CONF_ENC_ZSTD) {
        size_t r = ZSTD_compress(e->data, cap, data, len, level);
        n = ZSTD_isError(r) ? 0 : r;
    } else if (enc == CONF_ENC_GZIP) {
        n = gzip_all(level, data, len, e->data, cap);
    }
    if (!n) {
        free(e);
        return NULL;
    }
    struct enc_body *t = realloc(e, sizeof *e + n);
    if (t)
        e = t;
    atomic_init(&e->b.refs, 1);
    e->b.len = n;
    e->b.data = e->data;
    e->b.release = enc_free;
    return &e->b;
}
