/* tests/fuzz/fuzz_request.c: http_parse_request on arbitrary bytes.
 *
 * The input is parsed under two sets of small limits. Besides the sanitizers,
 * it checks that a successful parse returns a head length within the input
 * and the limits, with every slice inside that head; that the result does
 * not depend on bytes after the head or on how the head was fragmented
 * (shorter prefixes ask for more bytes); that an error carries one of the
 * documented statuses; and that the parser never asks for more bytes once
 * the limits are exceeded. A chunked body after the head is decoded too.
 */
#include "fuzz_common.h"

#define MAXH 16

static const struct http_limits limits[] = {
    { .max_request_line = 128, .max_head = 512, .max_headers = MAXH },
    { .max_request_line = 24, .max_head = 64, .max_headers = 2 },
};

static int parse(const char *buf, size_t len, struct http_request *r,
                 struct http_header *h, uint8_t *k, const struct http_limits *lim)
{
    memset(r, 0x5a, sizeof *r);          /* no reliance on the caller zeroing it */
    r->m.headers = h;
    r->m.kinds = k;
    return http_parse_request(buf, len, r, lim);
}

static void one(const char *buf, size_t len, const struct http_limits *lim)
{
    struct http_header h[MAXH];
    uint8_t k[MAXH];
    struct http_request r;
    int rc = parse(buf, len, &r, h, k, lim);

    if (rc == HTTP_ERROR) {
        int s = r.m.status;
        CHECK(s == 400 || s == 414 || s == 417 || s == 431 || s == 501 || s == 505);
        CHECK(r.m.error != NULL);
        return;
    }
    if (rc == HTTP_AGAIN) {
        /* bounded buffering: leading empty lines (at most 4), the request
         * line (target within the limit, then " HTTP/1.1\r"), or the head */
        size_t line_bound = 8 + lim->max_request_line + 10;
        size_t bound = lim->max_head + 1 > line_bound ? lim->max_head + 1 : line_bound;
        CHECK(len <= bound);
        return;
    }
    CHECK(rc > 0);
    size_t head = (size_t)rc;
    CHECK(head <= len);
    CHECK(head <= lim->max_head);
    fz_check_headers(buf, head, &r.m, lim);
    CHECK(r.m.body != HTTP_BODY_CLOSE);
    if (r.m.body == HTTP_BODY_CHUNKED)
        CHECK(!r.m.has_cl && r.m.minor == 1);
    CHECK(fz_within(buf, head, r.method, r.method_len) && r.method_len > 0);
    CHECK(fz_within(buf, head, r.target, r.target_len) && r.target_len > 0);
    CHECK(r.method + r.method_len <= r.target);
    CHECK((size_t)(r.target + r.target_len - r.method) + 9 <= lim->max_request_line);
    if (r.host || r.host_len)
        CHECK(r.host_len == 0 || fz_within(buf, head, r.host, r.host_len));
    /* HTTP/1.1 needs a Host field, but an empty one is valid and names no
     * host: then host is NULL unless the target is in absolute form. */
    if (r.host)
        CHECK(r.host_len > 0);
    if (r.path || r.path_len)
        CHECK(fz_within(buf, head, r.path, r.path_len));
    CHECK(!(r.method_len == 7 && memcmp(r.method, "CONNECT", 7) == 0));
    CHECK(r.is_head == (r.method_len == 4 && memcmp(r.method, "HEAD", 4) == 0));
    if (r.expect_continue)
        CHECK(r.m.minor == 1);

    /* the same head alone gives the same answer */
    struct http_request r2;
    struct http_header h2[MAXH];
    uint8_t k2[MAXH];
    CHECK(parse(buf, head, &r2, h2, k2, lim) == rc);
    CHECK(r2.m.nheaders == r.m.nheaders && r2.m.body == r.m.body &&
          r2.m.content_length == r.m.content_length && r2.m.keep_alive == r.m.keep_alive);
    /* and shorter prefixes ask for more */
    size_t probes[] = { head - 1, head - 2, head / 2, head / 3, 1 };
    for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++) {
        if (probes[i] < head) {
            int p = parse(buf, probes[i], &r2, h2, k2, lim);
            if (p != HTTP_AGAIN)
                fprintf(stderr, "prefix %zu of head %zu: rc %d status %d (%s)\n", probes[i],
                        head, p, r2.m.status, r2.m.error ? r2.m.error : "-");
            CHECK(p == HTTP_AGAIN);
        }
    }
    if (r.m.body == HTTP_BODY_CHUNKED)
        fz_chunked_tail(buf + head, len - head);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* a private copy, so ASan sees any read past the end */
    char *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    for (size_t i = 0; i < sizeof limits / sizeof limits[0]; i++)
        one(buf, size, &limits[i]);
    free(buf);
    return 0;
}
