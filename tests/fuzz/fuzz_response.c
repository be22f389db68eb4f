/* tests/fuzz/fuzz_response.c: http_parse_response on arbitrary bytes, as the
 * answer to a GET and to a HEAD, under small limits. Checks the same
 * invariants as fuzz_request plus the response rules: errors are 502, the
 * status is 100..599, 1xx/204/304/HEAD responses have no body, and a body
 * delimited by close never leaves the connection reusable. */
#include "fuzz_common.h"

#define MAXH 16

static const struct http_limits limits[] = {
    { .max_request_line = 128, .max_head = 512, .max_headers = MAXH },
    { .max_request_line = 20, .max_head = 64, .max_headers = 2 },
};

static int parse(const char *buf, size_t len, struct http_response *r, struct http_header *h,
                 uint8_t *k, const struct http_limits *lim, bool head_req)
{
    memset(r, 0x5a, sizeof *r);
    r->m.headers = h;
    r->m.kinds = k;
    return http_parse_response(buf, len, r, lim, head_req);
}

static void one(const char *buf, size_t len, const struct http_limits *lim, bool head_req)
{
    struct http_header h[MAXH];
    uint8_t k[MAXH];
    struct http_response r;
    int rc = parse(buf, len, &r, h, k, lim, head_req);

    if (rc == HTTP_ERROR) {
        CHECK(r.m.status == 502);
        CHECK(r.m.error != NULL);
        return;
    }
    if (rc == HTTP_AGAIN) {
        size_t bound = lim->max_head + 1 > lim->max_request_line + 1 ? lim->max_head + 1
                                                                     : lim->max_request_line + 1;
        CHECK(len <= bound);
        return;
    }
    size_t head = (size_t)rc;
    CHECK(head <= len);
    CHECK(head <= lim->max_head);
    fz_check_headers(buf, head, &r.m, lim);
    CHECK(r.status >= 100 && r.status <= 599);
    CHECK(memcmp(buf, "HTTP/1.", 7) == 0);
    if (r.reason_len)
        CHECK(fz_within(buf, head, r.reason, r.reason_len));
    if (r.status < 200 || r.status == 204 || r.status == 304 || head_req)
        CHECK(r.m.body == HTTP_BODY_NONE);
    if (r.m.body == HTTP_BODY_CLOSE)
        CHECK(!r.m.keep_alive);
    if (r.m.has_te && r.m.has_cl && r.m.body != HTTP_BODY_NONE)
        CHECK(!r.m.keep_alive);

    struct http_response r2;
    struct http_header h2[MAXH];
    uint8_t k2[MAXH];
    CHECK(parse(buf, head, &r2, h2, k2, lim, head_req) == rc);
    CHECK(r2.status == r.status && r2.m.body == r.m.body && r2.m.keep_alive == r.m.keep_alive);
    size_t probes[] = { head - 1, head - 2, head / 2, head / 3, 1 };
    for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++) {
        if (probes[i] < head) {
            int p = parse(buf, probes[i], &r2, h2, k2, lim, head_req);
            if (p != HTTP_AGAIN)
                fprintf(stderr, "prefix %zu of head %zu: rc %d (%s)\n", probes[i], head, p,
                        r2.m.error ? r2.m.error : "-");
            CHECK(p == HTTP_AGAIN);
        }
    }
    if (r.m.body == HTTP_BODY_CHUNKED)
        fz_chunked_tail(buf + head, len - head);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    for (size_t i = 0; i < sizeof limits / sizeof limits[0]; i++) {
        one(buf, size, &limits[i], false);
        one(buf, size, &limits[i], true);
    }
    free(buf);
    return 0;
}
