/* tests/fuzz/fuzz_chunked.c: the incremental chunked decoder.
 *
 * Input: one byte that seeds how the rest is split, then the body. The body
 * is decoded whole, in pseudo-random pieces and (when short) byte by byte;
 * all three must agree on error or not, on done, on how many bytes were
 * consumed and on the concatenated data. Also: a decoder that is neither
 * done nor failed consumes all it is given, data spans lie within what was
 * consumed, and nothing after the end of the body is consumed.
 */
#include "fuzz_common.h"

struct result {
    bool error, done;
    size_t consumed;
    size_t ndata;
    char *data;
    uint64_t total;
};

static uint32_t rng(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

/* mode 0: whole; 1: random pieces; 2: one byte at a time */
static void decode(const char *in, size_t len, int mode, uint32_t seed, struct result *res)
{
    struct http_chunked c;
    http_chunked_init(&c);
    res->error = res->done = false;
    res->consumed = res->ndata = 0;
    uint32_t s = seed * 2654435761u + 1;
    uint32_t maxpiece = 1 + seed % 64;
    size_t off = 0;
    while (off < len) {
        size_t piece = len - off;
        if (mode == 1) {
            size_t want = 1 + rng(&s) % maxpiece;
            if (want < piece)
                piece = want;
        } else if (mode == 2) {
            piece = 1;
        }
        size_t poff = 0;
        while (poff < piece) {
            size_t doff = (size_t)-1, dlen = (size_t)-1;
            long r = http_chunked_feed(&c, in + off + poff, piece - poff, &doff, &dlen);
            if (r < 0) {
                CHECK(r == HTTP_ERROR);
                res->error = true;
                res->consumed = off + poff;
                return;
            }
            CHECK((size_t)r <= piece - poff);
            CHECK(dlen != (size_t)-1 && doff != (size_t)-1);
            if (dlen) {
                CHECK(doff < (size_t)r && dlen <= (size_t)r - doff);
                /* a span ends what was consumed */
                CHECK(doff + dlen == (size_t)r);
                memcpy(res->data + res->ndata, in + off + poff + doff, dlen);
                res->ndata += dlen;
            } else {
                CHECK(doff == 0);
            }
            poff += (size_t)r;
            if (r == 0) {
                /* no progress only when done */
                CHECK(http_chunked_done(&c));
                break;
            }
        }
        off += poff;
        if (http_chunked_done(&c))
            break;
    }
    res->consumed = off;
    res->done = http_chunked_done(&c);
    res->total = c.total;
    if (!res->done)
        CHECK(off == len);
    if (res->done) {
        CHECK(res->total == res->ndata);
        /* nothing more is taken */
        size_t doff, dlen;
        if (off < len)
            CHECK(http_chunked_feed(&c, in + off, len - off, &doff, &dlen) == 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint32_t seed = data[0];
    size_t len = size - 1;
    char *in = malloc(len ? len : 1);
    struct result res[3];
    for (int i = 0; i < 3; i++)
        res[i].data = malloc(len ? len : 1);
    memcpy(in, data + 1, len);

    int modes = len <= 4096 ? 3 : 2;
    for (int m = 0; m < modes; m++)
        decode(in, len, m, seed, &res[m]);
    for (int m = 1; m < modes; m++) {
        CHECK(res[m].error == res[0].error);
        if (res[0].error)
            continue;       /* where it stops depends on the piece it was in */
        CHECK(res[m].done == res[0].done);
        CHECK(res[m].consumed == res[0].consumed);
        CHECK(res[m].ndata == res[0].ndata);
        CHECK(memcmp(res[m].data, res[0].data, res[0].ndata) == 0);
        CHECK(res[m].total == res[0].total);
    }
    free(in);
    for (int i = 0; i < 3; i++)
        free(res[i].data);
    return 0;
}
