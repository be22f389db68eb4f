/* tests/fuzz/fuzz_common.h: helpers shared by the HTTP fuzz targets.
 * A failed invariant aborts, which libFuzzer reports as a crash with the
 * input saved under build/fuzz/artifacts/. */
#ifndef PORTICO_FUZZ_COMMON_H
#define PORTICO_FUZZ_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/http.h"

#define CHECK(cond) do {                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "%s:%d: invariant failed: %s\n",                \
                    __FILE__, __LINE__, #cond);                             \
            abort();                                                        \
        }                                                                   \
    } while (0)

/* Copy [s, s+n) into out (cap bytes), each 3-byte marker from[k] replaced
 * by to[k]: a target's input names values (a nonce, a signature) that only
 * the run knows. */
static inline size_t fz_expand(const char *s, size_t n, char *out, size_t cap,
                               const char *const *from, const char *const *to, int nmark)
{
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        int m = -1;
        for (int k = 0; k < nmark && m < 0; k++)
            if (n - i >= 3 && !memcmp(s + i, from[k], 3))
                m = k;
        size_t add = m >= 0 ? strlen(to[m]) : 1;
        if (o + add > cap)
            break;
        memcpy(out + o, m >= 0 ? to[m] : s + i, add);
        o += add;
        i += m >= 0 ? 3 : 1;
    }
    return o;
}

/* [p, p+n) lies within [base, base+len). */
static inline int fz_within(const char *base, size_t len, const char *p, size_t n)
{
    uintptr_t b = (uintptr_t)base, q = (uintptr_t)p;
    return p != NULL && q >= b && n <= len && q - b <= len - n;
}

static inline int fz_tchar(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* Checks every header of a successfully parsed head of `head` bytes. */
static inline void fz_check_headers(const char *buf, size_t head, const struct http_msg *m,
                                    const struct http_limits *lim)
{
    CHECK(m->nheaders <= lim->max_headers);
    for (uint32_t i = 0; i < m->nheaders; i++) {
        const struct http_header *h = &m->headers[i];
        CHECK(h->name_len > 0);
        CHECK(fz_within(buf, head, h->name, h->name_len));
        for (uint32_t k = 0; k < h->name_len; k++)
            CHECK(fz_tchar((unsigned char)h->name[k]));
        CHECK(h->name + h->name_len < buf + head && h->name[h->name_len] == ':');
        if (h->value_len) {
            CHECK(fz_within(buf, head, h->value, h->value_len));
            CHECK(h->value[0] != ' ' && h->value[0] != '\t');
            CHECK(h->value[h->value_len - 1] != ' ' && h->value[h->value_len - 1] != '\t');
            for (uint32_t k = 0; k < h->value_len; k++) {
                unsigned char c = (unsigned char)h->value[k];
                CHECK(c == '\t' || (c >= 0x20 && c != 0x7f));
            }
        }
        CHECK(m->kinds[i] <= HTTP_H_UNDERSCORE);
        if (m->kinds[i] == HTTP_H_UNDERSCORE)
            CHECK(memchr(h->name, '_', h->name_len) != NULL);
        /* the classification agrees with the name */
        if (m->kinds[i] == HTTP_H_CONTENT_LENGTH)
            CHECK(h->name_len == 14 && http_ieq(h->name, "content-length", 14));
        if (m->kinds[i] == HTTP_H_TRANSFER_ENCODING)
            CHECK(h->name_len == 17 && http_ieq(h->name, "transfer-encoding", 17));
        if (m->kinds[i] == HTTP_H_HOST)
            CHECK(h->name_len == 4 && http_ieq(h->name, "host", 4));
        if (h->name_len == 14 && http_ieq(h->name, "content-length", 14))
            CHECK(m->kinds[i] == HTTP_H_CONTENT_LENGTH);
        if (h->name_len == 17 && http_ieq(h->name, "transfer-encoding", 17))
            CHECK(m->kinds[i] == HTTP_H_TRANSFER_ENCODING);
        (void)http_connection_lists(m, h->name, h->name_len);
    }
    /* the head ends with an empty line */
    CHECK(head >= 4 && memcmp(buf + head - 4, "\r\n\r\n", 4) == 0);
    CHECK(m->body == HTTP_BODY_NONE || m->body == HTTP_BODY_LENGTH ||
          m->body == HTTP_BODY_CHUNKED || m->body == HTTP_BODY_CLOSE);
    CHECK(m->minor == 0 || m->minor == 1);
    if (m->body == HTTP_BODY_LENGTH)
        CHECK(m->has_cl && !m->has_te);
    if (m->body == HTTP_BODY_CHUNKED)
        CHECK(m->has_te);
    CHECK(m->status == 0 && m->error == NULL);
}

/* Decodes a chunked body to the end of the input, checking the spans. */
static inline void fz_chunked_tail(const char *p, size_t n)
{
    struct http_chunked c;
    http_chunked_init(&c);
    size_t off = 0;
    uint64_t data = 0;
    while (off < n && !http_chunked_done(&c)) {
        size_t doff, dlen;
        long r = http_chunked_feed(&c, p + off, n - off, &doff, &dlen);
        if (r < 0)
            return;
        CHECK((size_t)r <= n - off);
        CHECK(r > 0);
        if (dlen)
            CHECK(doff + dlen <= (size_t)r);
        data += dlen;
        off += (size_t)r;
    }
    if (http_chunked_done(&c))
        CHECK(data == c.total);
}

#endif
