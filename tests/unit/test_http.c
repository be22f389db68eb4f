/* tests/unit/test_http.c: the HTTP/1.1 head parsers and the chunked decoder.
 *
 * Every framing decision that could let two parsers disagree on where a
 * message ends is pinned here with its exact status, and every accepted
 * message is also parsed byte by byte to check that the stateless parsers
 * give the same answer whatever the fragmentation.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "http/http.h"

#define MAXH 64

static struct http_header hdrs[MAXH];
static uint8_t kinds[MAXH];
static const struct http_limits big = { .max_request_line = 8192, .max_head = 65536, .max_headers = MAXH };

static int preq_lim(const char *s, size_t len, struct http_request *r, const struct http_limits *lim)
{
    memset(r, 0, sizeof *r);
    r->m.headers = hdrs;
    r->m.kinds = kinds;
    return http_parse_request(s, len, r, lim);
}

static int preqn(const char *s, size_t len, struct http_request *r)
{
    return preq_lim(s, len, r, &big);
}

static int preq(const char *s, struct http_request *r) { return preqn(s, strlen(s), r); }

static int pres_lim(const char *s, size_t len, struct http_response *r,
                    const struct http_limits *lim, bool head)
{
    memset(r, 0, sizeof *r);
    r->m.headers = hdrs;
    r->m.kinds = kinds;
    return http_parse_response(s, len, r, lim, head);
}

static int pres(const char *s, struct http_response *r, bool head)
{
    return pres_lim(s, strlen(s), r, &big, head);
}

/* A slice equals a C string. */
#define assert_slice(p, n, lit) do {                                        \
        const char *lit_ = (lit);                                           \
        assert_non_null(p);                                                 \
        assert_int_equal((n), strlen(lit_));                                \
        assert_memory_equal((p), lit_, strlen(lit_));                       \
    } while (0)

/* The request is rejected with exactly this status. */
#define REJECT_REQN(s, len, st) do {                                        \
        struct http_request r_;                                             \
        int rc_ = preqn((s), (len), &r_);                                   \
        if (rc_ != HTTP_ERROR || r_.m.status != (st))                       \
            print_error("request %.*s: rc %d status %d (%s)\n",             \
                        (int)(len), (s), rc_, r_.m.status,                  \
                        r_.m.error ? r_.m.error : "-");                     \
        assert_int_equal(rc_, HTTP_ERROR);                                  \
        assert_int_equal(r_.m.status, (st));                                \
        assert_non_null(r_.m.error);                                        \
    } while (0)
#define REJECT_REQ(s, st) REJECT_REQN((s), strlen(s), (st))

#define REJECT_RES(s, head) do {                                            \
        struct http_response r_;                                            \
        int rc_ = pres((s), &r_, (head));                                   \
        if (rc_ != HTTP_ERROR)                                              \
            print_error("response %s: rc %d\n", (s), rc_);                  \
        assert_int_equal(rc_, HTTP_ERROR);                                  \
        assert_int_equal(r_.m.status, 502);                                 \
        assert_non_null(r_.m.error);                                        \
    } while (0)

/* Parses completely, and every shorter prefix asks for more bytes. */
static void check_request_incremental(const char *s, size_t head_len)
{
    struct http_request r;
    for (size_t i = 0; i < head_len; i++) {
        int rc = preqn(s, i, &r);
        if (rc != HTTP_AGAIN)
            print_error("prefix %zu of %zu: rc %d status %d (%s)\n", i, head_len, rc,
                        r.m.status, r.m.error ? r.m.error : "-");
        assert_int_equal(rc, HTTP_AGAIN);
    }
    assert_int_equal(preqn(s, head_len, &r), (int)head_len);
    assert_int_equal(preqn(s, strlen(s), &r), (int)head_len);
}

static void check_response_incremental(const char *s, size_t head_len, bool head)
{
    struct http_response r;
    for (size_t i = 0; i < head_len; i++) {
        int rc = pres_lim(s, i, &r, &big, head);
        if (rc != HTTP_AGAIN)
            print_error("prefix %zu of %zu: rc %d (%s)\n", i, head_len, rc,
                        r.m.error ? r.m.error : "-");
        assert_int_equal(rc, HTTP_AGAIN);
    }
    assert_int_equal(pres_lim(s, head_len, &r, &big, head), (int)head_len);
}

/* ------------------------------------------------------------------ */
/* requests: accepted                                                  */

static void req_get_basic(void **state)
{
    (void)state;
    const char *s = "GET /index.html?x=1 HTTP/1.1\r\n"
                    "Host: example.com\r\n"
                    "User-Agent: t/1\r\n"
                    "\r\n";
    struct http_request r;
    assert_int_equal(preq(s, &r), (int)strlen(s));
    assert_slice(r.method, r.method_len, "GET");
    assert_slice(r.target, r.target_len, "/index.html?x=1");
    assert_slice(r.path, r.path_len, "/index.html?x=1");
    assert_slice(r.host, r.host_len, "example.com");
    assert_int_equal(r.m.minor, 1);
    assert_true(r.m.keep_alive);
    assert_int_equal(r.m.body, HTTP_BODY_NONE);
    assert_false(r.m.has_cl);
    assert_false(r.m.has_te);
    assert_false(r.is_head);
    assert_false(r.expect_continue);
    assert_int_equal(r.m.nheaders, 2);
    assert_slice(r.m.headers[0].name, r.m.headers[0].name_len, "Host");
    assert_slice(r.m.headers[0].value, r.m.headers[0].value_len, "example.com");
    assert_int_equal(r.m.kinds[0], HTTP_H_HOST);
    assert_slice(r.m.headers[1].name, r.m.headers[1].name_len, "User-Agent");
    assert_slice(r.m.headers[1].value, r.m.headers[1].value_len, "t/1");
    assert_int_equal(r.m.kinds[1], HTTP_H_OTHER);
    /* zero-copy: the slices point into the caller's buffer */
    assert_ptr_equal(r.method, s);
    assert_ptr_equal(r.m.headers[0].name, s + 30);
    assert_int_equal(r.m.status, 0);
    assert_null(r.m.error);
    check_request_incremental(s, strlen(s));
}

static void req_header_values_trimmed(void **state)
{
    (void)state;
    const char *s = "GET / HTTP/1.1\r\n"
                    "Host:a\r\n"
                    "X-A: \t a  b \t \r\n"
                    "X-Empty:\r\n"
                    "X-Spaces:    \r\n"
                    "X-Obs: caf\xc3\xa9\r\n"
                    "\r\n";
    struct http_request r;
    assert_int_equal(preq(s, &r), (int)strlen(s));
    assert_int_equal(r.m.nheaders, 5);
    assert_slice(r.m.headers[0].value, r.m.headers[0].value_len, "a");
    assert_slice(r.m.headers[1].value, r.m.headers[1].value_len, "a  b");
    assert_int_equal(r.m.headers[2].value_len, 0);
    assert_int_equal(r.m.headers[3].value_len, 0);
    assert_slice(r.m.headers[4].value, r.m.headers[4].value_len, "caf\xc3\xa9");
    check_request_incremental(s, strlen(s));
}

static void req_http10_without_host(void **state)
{
    (void)state;
    const char *s = "GET / HTTP/1.0\r\n\r\n";
    struct http_request r;
    assert_int_equal(preq(s, &r), (int)strlen(s));
    assert_int_equal(r.m.minor, 0);
    assert_null(r.host);
    assert_int_equal(r.host_len, 0);
    assert_false(r.m.keep_alive);
    assert_int_equal(r.m.body, HTTP_BODY_NONE);
    check_request_incremental(s, strlen(s));

    const char *h = "GET / HTTP/1.0\r\nHost: a.example\r\n\r\n";
    assert_int_equal(preq(h, &r), (int)strlen(h));
    assert_slice(r.host, r.host_len, "a.example");
}

static void req_keep_alive_defaults(void **state)
{
    (void)state;
    static const struct { const char *s; bool ka; } cases[] = {
        { "GET / HTTP/1.1\r\nHost: a\r\n\r\n", true },
        { "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", false },
        { "GET / HTTP/1.1\r\nHost: a\r\nConnection: CLOSE\r\n\r\n", false },
        { "GET / HTTP/1.1\r\nHost: a\r\nConnection: x-foo, close\r\n\r\n", false },
        { "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n", true },
        { "GET / HTTP/1.1\r\nHost: a\r\nConnection: x\r\nConnection: close\r\n\r\n", false },
        { "GET / HTTP/1.1\r\nHost: a\r\nConnection: closed\r\n\r\n", true },
        { "GET / HTTP/1.0\r\n\r\n", false },
        { "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true },
        { "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true },
        { "GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", false },
        { "GET / HTTP/1.0\r\nConnection: close\r\n\r\n", false },
        { "GET / HTTP/1.0\r\nKeep-Alive: timeout=5\r\n\r\n", false },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct http_request r;
        assert_int_equal(preq(cases[i].s, &r), (int)strlen(cases[i].s));
        if (r.m.keep_alive != cases[i].ka)
            print_error("case %zu: %s\n", i, cases[i].s);
        assert_int_equal(r.m.keep_alive, cases[i].ka);
    }
}

static void req_higher_minor_is_11(void **state)
{
    (void)state;
    struct http_request r;
    const char *s = "GET / HTTP/1.9\r\nHost: a\r\n\r\n";
    assert_int_equal(preq(s, &r), (int)strlen(s));
    assert_int_equal(r.m.minor, 1);
    assert_true(r.m.keep_alive);
    /* and so it needs a Host */
    REJECT_REQ("GET / HTTP/1.9\r\n\r\n", 400);
}

static void req_absolute_form(void **state)
{
    (void)state;
    struct http_request r;
    const char *s = "GET http://example.com:8080/a/b?c=d HTTP/1.1\r\nHost: other.example\r\n\r\n";
    assert_int_equal(preq(s, &r), (int)strlen(s));
    assert_slice(r.host, r.host_len, "example.com:8080");
    assert_slice(r.path, r.path_len, "/a/b?c=d");
    assert_slice(r.target, r.target_len, "http://example.com:8080/a/b?c=d");
    check_request_incremental(s, strlen(s));

    s = "GET https://secure.example/x HTTP/1.1\r\nHost: secure.example\r\n\r\n";
    assert_int_equal(preq(s, &r), (int)strlen(s));
    assert_slice(r.host, r.host_len, "secure.example");
    assert_slice(r.path, r.path_len, "/x");

    /* the scheme is case-insensitive */
    s = "GET HTTP://Example.COM/ HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_int_equal(preq(s, &r), (int)strlen(s));
    assert_slice(r.host, r.host_len, "Example.COM");
    assert_slice(r.path, r.path_len, "/");

    /* no path: path is left empty, meaning "/" */
    s = "GET http://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n";
    assert_int_equal(preq(s, &r), (int)strlen(s));
    assert_slice(r.host, r.host_len, "example.com");
    assert_null(r.path);
    assert_int_equal(r.path_len, 0);

    /* IP literal authority */
    s = "GET http://[::1]:81/p HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_int_equal(preq(s, &r), (int)strlen(s));
    assert_slice(r.host, r.host_len, "[::1]:81");
    assert_slice(r.path, r.path_len, "/p");

    /* an empty Host is what a client sends with an absolute-form target */
    s = "GET http://example.com/ HTTP/1.1\r\nHost:\r\n\r\n";
    assert_int_equal(preq(s, &r), (int)strlen(s));
    assert_slice(r.host, r.host_len, "example.com");

    /* HTTP/1.0 absolute-form needs no Host */
    s = "GET http://example.com/ HTTP/1.0\r\n\r\n";
    assert_int_equal(preq(s, &r), (int)strlen(s));
    assert_slice(r.host, r.host_len, "example.com");

    REJECT_REQ("GET http://user:pw@example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n", 400);
    REJECT_REQ("GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REJECT_REQ("GET http:// HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REJECT_REQ("GET http://exa mple/ HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REJECT_REQ("GET http://exa<mple/ HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REJECT_REQ("GET ftp://example.com/ HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REJECT_REQ("GET example.com/ HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    /* HTTP/1.1 still needs a Host header with absolute-form */
    REJECT_REQ("GET http://example.com/ HTTP/1.1\r\n\r\n", 400);
    /* and it must be valid even though it is ignored */
    REJECT_REQ("GET http://example.com/ HTTP/1.1\r\nHost: a b\r\n\r\n", 400);
}

static void req_options_asterisk(void **state)
{
    (void)state;
    struct http_request r;
    const char *s = "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_int_equal(preq(s, &r), (int)strlen(s));
    assert_slice(r.method, r.method_len, "OPTIONS");
    assert_slice(r.path, r.path_len, "*");
    REJECT_REQ("GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REJECT_REQ("OPTIONS *x HTTP/1.1\r\nHost: a\r\n\r\n", 400);
}

static void req_leading_empty_line(void **state)
{
    (void)state;
    struct http_request r;
    const char *s = "\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_int_equal(preq(s, &r), (int)strlen(s));
    assert_ptr_equal(r.method, s + 2);
    assert_slice(r.method, r.method_len, "GET");
    check_request_incremental(s, strlen(s));

    s = "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_int_equal(preq(s, &r), (int)strlen(s));
    assert_ptr_equal(r.method, s + 4);

    /* a bare LF or bare CR is not an empty line */
    REJECT_REQ("\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REJECT_REQ("\rGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    /* and the parser does not skip an unbounded number of them */
    REJECT_REQ("\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
}

static void req_incremental_byte_by_byte(void **state)
{
    (void)state;
    static const char *const msgs[] = {
        "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.0\r\n\r\n",
        "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
        "POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HEAD /x HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET http://h.example/p?q HTTP/1.1\r\nHost: h.example\r\n\r\n",
        "PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof msgs / sizeof msgs[0]; i++)
        check_request_incremental(msgs[i], strlen(msgs[i]));
}

static void req_pipelined(void **state)
{
    (void)state;
    const char *s = "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                    "GET /b HTTP/1.1\r\nHost: y\r\n\r\n"
                    "GET /c HTTP/1.1\r\nHost: z\r\nConnection: close\r\n\r\n";
    size_t len = strlen(s), off = 0;
    struct http_request r;

    int rc = preqn(s, len, &r);
    assert_int_equal(rc, (int)(strstr(s, "hello") - s));   /* exactly the first head */
    assert_slice(r.path, r.path_len, "/a");
    assert_int_equal(r.m.body, HTTP_BODY_LENGTH);
    assert_int_equal(r.m.content_length, 5);
    off = (size_t)rc + 5;

    rc = preqn(s + off, len - off, &r);
    assert_int_equal(rc, (int)strlen("GET /b HTTP/1.1\r\nHost: y\r\n\r\n"));
    assert_slice(r.path, r.path_len, "/b");
    assert_slice(r.host, r.host_len, "y");
    assert_true(r.m.keep_alive);
    off += (size_t)rc;

    rc = preqn(s + off, len - off, &r);
    assert_int_equal(rc, (int)(len - off));
    assert_slice(r.path, r.path_len, "/c");
    assert_false(r.m.keep_alive);
}

static void req_methods(void **state)
{
    (void)state;
    struct http_request r;
    const char *s = "HEAD / HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_int_equal(preq(s, &r), (int)strlen(s));
    assert_true(r.is_head);
    /* methods are case-sensitive: "head" is some other method */
    s = "head / HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_int_equal(preq(s, &r), (int)strlen(s));
    assert_false(r.is_head);
    /* any token is a method */
    s = "M-SEARCH! / HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_int_equal(preq(s, &r), (int)strlen(s));
    assert_slice(r.method, r.method_len, "M-SEARCH!");

    REJECT_REQ("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 501);
    REJECT_REQ("G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REJECT_REQ("GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REJECT_REQ(" GET / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REJECT_REQ("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REJECT_REQ("GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400);
    REJECT_REQ("GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REJECT_REQ("GET / \r\nHost: a\r\n\r\n", 400);
    REJECT_REQ("GET /\r\nHost: a\r\n\r\n", 400);
    REJECT_REQ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505);
    REJECT_REQ("PRI * HTTP/1.1\r\nHost: a\r\n\r\n", 505);
}

static void req_header_kinds(void **state)
{
    (void)state;
    const char *s = "GET / HTTP/1.1\r\n"
                    "HOST: a\r\n"
                    "connection: x-hop\r\n"
                    "Expect: 100-continue\r\n"
                    "Upgrade: websocket\r\n"
                    "Keep-Alive: 5\r\n"
                    "Proxy-Connection: close\r\n"
                    "TE: trailers\r\n"
                    "X-Forwarded-For: 1.2.3.4\r\n"
                    "X-Forwarded-Proto: https\r\n"
                    "X-Forwarded-Host: b\r\n"
                    "X-Request-Id: abc\r\n"
                    "Via: 1.1 p\r\n"
                    "HTTP2-Settings: AAA\r\n"
                    "Content-Type: text/plain\r\n"
                    "Contentlength: 3\r\n"
                    "\r\n";
    static const uint8_t want[] = {
        HTTP_H_HOST, HTTP_H_CONNECTION, HTTP_H_EXPECT, HTTP_H_UPGRADE, HTTP_H_KEEP_ALIVE,
        HTTP_H_PROXY_CONNECTION, HTTP_H_TE, HTTP_H_X_FORWARDED_FOR, HTTP_H_X_FORWARDED_PROTO,
        HTTP_H_X_FORWARDED_HOST, HTTP_H_X_REQUEST_ID, HTTP_H_VIA, HTTP_H_HTTP2_SETTINGS,
        HTTP_H_OTHER, HTTP_H_OTHER,
    };
    struct http_request r;
    assert_int_equal(preq(s, &r), (int)strlen(s));
    assert_int_equal(r.m.nheaders, sizeof want);
    for (size_t i = 0; i < sizeof want; i++)
        assert_int_equal(r.m.kinds[i], want[i]);
    assert_true(r.m.has_upgrade);
    assert_false(r.m.conn_upgrade);
    assert_true(r.expect_continue);
    assert_true(http_connection_lists(&r.m, "X-Hop", 5));
    assert_false(http_connection_lists(&r.m, "X-Ho", 4));
    assert_false(http_connection_lists(&r.m, "Keep-Alive", 10));
}

static void req_connection_upgrade(void **state)
{
    (void)state;
    const char *s = "GET /ws HTTP/1.1\r\nHost: a\r\n"
                    "Connection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n";
    struct http_request r;
    assert_int_equal(preq(s, &r), (int)strlen(s));
    assert_true(r.m.conn_upgrade);
    assert_true(r.m.has_upgrade);
    assert_true(r.m.keep_alive);
    assert_true(http_connection_lists(&r.m, "upgrade", 7));
    assert_true(http_connection_lists(&r.m, "KEEP-ALIVE", 10));
    assert_false(http_connection_lists(&r.m, "close", 5));
}

static void req_expect(void **state)
{
    (void)state;
    struct http_request r;
    const char *s = "PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n";
    assert_int_equal(preq(s, &r), (int)strlen(s));
    assert_true(r.expect_continue);
    s = "PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n";
    assert_int_equal(preq(s, &r), (int)strlen(s));
    assert_true(r.expect_continue);
    /* RFC 9110 10.1.1: a server ignores 100-continue from HTTP/1.0 */
    s = "PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n";
    assert_int_equal(preq(s, &r), (int)strlen(s));
    assert_false(r.expect_continue);
    /* the flag does not survive into the next parse */
    s = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    r.expect_continue = true;
    r.m.headers = hdrs;
    r.m.kinds = kinds;
    assert_int_equal(http_parse_request(s, strlen(s), &r, &big), (int)strlen(s));
    assert_false(r.expect_continue);

    REJECT_REQ("PUT / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n", 417);
    REJECT_REQ("PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue, x\r\n\r\n", 417);
    REJECT_REQ("PUT / HTTP/1.1\r\nHost: a\r\nExpect:\r\n\r\n", 417);
}

static void req_body_framing_ok(void **state)
{
    (void)state;
    struct http_request r;
    const char *s = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 42\r\n\r\n";
    assert_int_equal(preq(s, &r), (int)strlen(s));
    assert_int_equal(r.m.body, HTTP_BODY_LENGTH);
    assert_int_equal(r.m.content_length, 42);
    assert_true(r.m.has_cl);
    assert_false(r.m.has_te);

    s = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n";
    assert_int_equal(preq(s, &r), (int)strlen(s));
    assert_int_equal(r.m.body, HTTP_BODY_LENGTH);
    assert_int_equal(r.m.content_length, 0);

    s = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 999999999999999999\r\n\r\n";
    assert_int_equal(preq(s, &r), (int)strlen(s));
    assert_int_equal(r.m.content_length, 999999999999999999ull);

    s = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_int_equal(preq(s, &r), (int)strlen(s));
    assert_int_equal(r.m.body, HTTP_BODY_CHUNKED);
    assert_true(r.m.has_te);
    assert_false(r.m.has_cl);

    /* transfer-coding names are case-insensitive */
    s = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n";
    assert_int_equal(preq(s, &r), (int)strlen(s));
    assert_int_equal(r.m.body, HTTP_BODY_CHUNKED);

    s = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,chunked , \r\n\r\n";
    assert_int_equal(preq(s, &r), (int)strlen(s));
    assert_int_equal(r.m.body, HTTP_BODY_CHUNKED);
}

static void req_duplicate_identical_cl(void **state)
{
    (void)state;
    struct http_request r;
    const char *s = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n";
    assert_int_equal(preq(s, &r), (int)strlen(s));
    assert_int_equal(r.m.body, HTTP_BODY_LENGTH);
    assert_int_equal(r.m.content_length, 5);
    s = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n";
    assert_int_equal(preq(s, &r), (int)strlen(s));
    assert_int_equal(r.m.content_length, 5);
}

/* ------------------------------------------------------------------ */
/* requests: rejected                                                  */

static void req_reject_cl_te(void **state)
{
    (void)state;
    REJECT_REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400);
    REJECT_REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", 400);
    REJECT_REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n", 400);
}

static void req_reject_differing_cl(void **state)
{
    (void)state;
    REJECT_REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400);
    REJECT_REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n", 400);
    REJECT_REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 05\r\nContent-Length: 6\r\n\r\n", 400);
}

static void req_reject_bad_cl(void **state)
{
    (void)state;
    static const char *const vals[] = {
        "5a", "a5", "+5", "-1", "-0", "0x10", "1 2", "1.0", "1e3", "", " ", ",",
        "5;", "\"5\"", "99999999999999999999", "18446744073709551616",
        "18446744073709551615", "1234567890123456789",
    };
    char buf[256];
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        snprintf(buf, sizeof buf, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %s\r\n\r\n", vals[i]);
        REJECT_REQ(buf, 400);
    }
}

static void req_reject_bad_te(void **state)
{
    (void)state;
    /* not a final chunked */
    REJECT_REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400);
    REJECT_REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400);
    REJECT_REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n", 400);
    REJECT_REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", 400);
    REJECT_REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,\r\n\r\n", 400);
    REJECT_REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunkedx\r\n\r\n", 400);
    REJECT_REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;q=1\r\n\r\n", 400);
    REJECT_REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", 400);
    /* chunked twice */
    REJECT_REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400);
    REJECT_REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400);
    /* a well-formed coding we do not implement */
    REJECT_REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501);
    REJECT_REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n", 501);
    /* Transfer-Encoding did not exist in HTTP/1.0 */
    REJECT_REQ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400);
    REJECT_REQ("POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400);
}

static void req_reject_obs_fold(void **state)
{
    (void)state;
    REJECT_REQ("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", 400);
    REJECT_REQ("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tc\r\n\r\n", 400);
    /* whitespace between the start line and the first field */
    REJECT_REQ("GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400);
    REJECT_REQ("GET / HTTP/1.1\r\nTransfer-Encoding:\r\n chunked\r\nHost: a\r\n\r\n", 400);
}

static void req_reject_bare_cr_lf(void **state)
{
    (void)state;
    /* request line */
    REJECT_REQ("GET / HTTP/1.1\nHost: a\r\n\r\n", 400);
    REJECT_REQ("GET / HTTP/1.1\rHost: a\r\n\r\n", 400);
    REJECT_REQ("GET / HTTP/1.1\r\rHost: a\r\n\r\n", 400);
    REJECT_REQ("GET /\r HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REJECT_REQ("GET /\n HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REJECT_REQ("GET / HTTP/1.1\n\n", 400);
    /* header line ends */
    REJECT_REQ("GET / HTTP/1.1\r\nHost: a\n\r\n", 400);
    REJECT_REQ("GET / HTTP/1.1\r\nHost: a\r\r\n\r\n", 400);
    REJECT_REQ("GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", 400);
    /* inside a value */
    REJECT_REQ("GET / HTTP/1.1\r\nHost: a\r\nX: b\rc\r\n\r\n", 400);
    REJECT_REQ("GET / HTTP/1.1\r\nHost: a\r\nX: b\nc\r\n\r\n", 400);
    /* the empty line ending the head */
    REJECT_REQ("GET / HTTP/1.1\r\nHost: a\r\n\n", 400);
    REJECT_REQ("GET / HTTP/1.1\r\nHost: a\r\n\rX", 400);
    /* before the colon */
    REJECT_REQ("GET / HTTP/1.1\r\nHost: a\r\nX\r\n\r\n", 400);
    REJECT_REQ("GET / HTTP/1.1\r\nHost: a\r\nX\n: b\r\n\r\n", 400);
}

static void req_reject_header_syntax(void **state)
{
    (void)state;
    REJECT_REQ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400);
    REJECT_REQ("GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", 400);
    REJECT_REQ("GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\n", 400);
    REJECT_REQ("GET / HTTP/1.1\r\nHost: a\r\n: empty\r\n\r\n", 400);
    REJECT_REQ("GET / HTTP/1.1\r\nHost: a\r\nX(y): z\r\n\r\n", 400);
    REJECT_REQ("GET / HTTP/1.1\r\nHost: a\r\nX\x80: z\r\n\r\n", 400);
    REJECT_REQ("GET / HTTP/1.1\r\nHost: a\r\nno colon\r\n\r\n", 400);
}

static void req_reject_control_chars(void **state)
{
    (void)state;
    REJECT_REQ("GET / HTTP/1.1\r\nHost: a\r\nX: a\x01" "b\r\n\r\n", 400);
    REJECT_REQ("GET / HTTP/1.1\r\nHost: a\r\nX: \x1b[31m\r\n\r\n", 400);
    REJECT_REQ("GET / HTTP/1.1\r\nHost: a\r\nX: a\x7f\r\n\r\n", 400);
    REJECT_REQ("GET / HTTP/1.1\r\nHost: a\r\nX: \x0b" "a\r\n\r\n", 400);
    REJECT_REQ("GET / HTTP/1.1\r\nHost: a\r\nX: a\x0c\r\n\r\n", 400);
    /* HTAB inside a value is fine */
    struct http_request r;
    const char *s = "GET / HTTP/1.1\r\nHost: a\r\nX: a\tb\r\n\r\n";
    assert_int_equal(preq(s, &r), (int)strlen(s));
    assert_slice(r.m.headers[1].value, r.m.headers[1].value_len, "a\tb");
    /* control characters in the target */
    REJECT_REQ("GET /a\x01 HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REJECT_REQ("GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    REJECT_REQ("GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", 400);
}

static void req_reject_nul(void **state)
{
    (void)state;
    static const char v[] = "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n";
    REJECT_REQN(v, sizeof v - 1, 400);
    static const char n[] = "GET / HTTP/1.1\r\nHost: a\r\nX\0: b\r\n\r\n";
    REJECT_REQN(n, sizeof n - 1, 400);
    static const char t[] = "GET /\0 HTTP/1.1\r\nHost: a\r\n\r\n";
    REJECT_REQN(t, sizeof t - 1, 400);
    static const char m[] = "G\0T / HTTP/1.1\r\nHost: a\r\n\r\n";
    REJECT_REQN(m, sizeof m - 1, 400);
    static const char ver[] = "GET / HTTP/1.1\0\r\nHost: a\r\n\r\n";
    REJECT_REQN(ver, sizeof ver - 1, 400);
    static const char h[] = "GET / HTTP/1.1\r\nHost: a\0.example\r\n\r\n";
    REJECT_REQN(h, sizeof h - 1, 400);
    static const char e[] = "GET / HTTP/1.1\r\nHost: a\r\n\0\r\n";
    REJECT_REQN(e, sizeof e - 1, 400);
}

static void req_host(void **state)
{
    (void)state;
    REJECT_REQ("GET / HTTP/1.1\r\n\r\n", 400);
    REJECT_REQ("GET / HTTP/1.1\r\nX-Host: a\r\n\r\n", 400);
    REJECT_REQ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400);
    REJECT_REQ("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400);
    REJECT_REQ("GET / HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n", 400);

    static const char *const bad[] = {
        "a b", "a/b", "a@b", "a\\b", "a?b", "a#b", "a\"b", "a<b", "[::1", "[::1]x",
        "[::g]", "a:8x", "a:-1", "a:80:80", "caf\xc3\xa9", "a\tb",
    };
    static const char *const good[] = {
        "example.com", "EXAMPLE.com:8080", "127.0.0.1", "127.0.0.1:80", "[::1]",
        "[::1]:8080", "[2001:db8::ffff:1.2.3.4]", "xn--n3h.example", "a_b-c~d", "a%20b",
        "host:",
    };
    char buf[256];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", bad[i]);
        REJECT_REQ(buf, 400);
        /* an invalid Host is rejected in HTTP/1.0 too */
        if (bad[i][0]) {
            snprintf(buf, sizeof buf, "GET / HTTP/1.0\r\nHost: %s\r\n\r\n", bad[i]);
            REJECT_REQ(buf, 400);
        }
    }
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        struct http_request r;
        snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", good[i]);
        int rc = preq(buf, &r);
        if (rc <= 0)
            print_error("Host %s: %s\n", good[i], r.m.error);
        assert_int_equal(rc, (int)strlen(buf));
        assert_slice(r.host, r.host_len, good[i]);
    }
}

static void req_version(void **state)
{
    (void)state;
    REJECT_REQ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505);
    REJECT_REQ("GET / HTTP/3.0\r\nHost: a\r\n\r\n", 505);
    REJECT_REQ("GET / HTTP/0.9\r\nHost: a\r\n\r\n", 505);
    REJECT_REQ("GET / HTTP/1.1x\r\nHost: a\r\n\r\n", 400);
    REJECT_REQ("GET / HTTP/11\r\nHost: a\r\n\r\n", 400);
    REJECT_REQ("GET / HTTP/1.\r\nHost: a\r\n\r\n", 400);
    REJECT_REQ("GET / HTTP/1\r\nHost: a\r\n\r\n", 400);
    REJECT_REQ("GET / HTTP/2\r\nHost: a\r\n\r\n", 400);
    REJECT_REQ("GET / http/1.1\r\nHost: a\r\n\r\n", 400);
    REJECT_REQ("GET / HTTPS/1.1\r\nHost: a\r\n\r\n", 400);
    REJECT_REQ("GET / HTTP/1.10\r\nHost: a\r\n\r\n", 400);
    REJECT_REQ("GET / HTTP/a.1\r\nHost: a\r\n\r\n", 400);
    REJECT_REQ("GET / HTTP/1,1\r\nHost: a\r\n\r\n", 400);
    REJECT_REQ("GET / xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", 400);
    /* an incomplete but plausible version waits for more */
    struct http_request r;
    assert_int_equal(preq("GET / HTTP/1.1", &r), HTTP_AGAIN);
    assert_int_equal(preq("GET / HTTP/1.1\r", &r), HTTP_AGAIN);
    assert_int_equal(preq("GET / HTTP/1.1\r\n", &r), HTTP_AGAIN);
}

static void req_limits(void **state)
{
    (void)state;
    const struct http_limits lim = { .max_request_line = 32, .max_head = 128, .max_headers = 4 };
    struct http_request r;
    char buf[512];

    /* request line exactly at the limit is fine: 32 bytes without CRLF */
    snprintf(buf, sizeof buf, "GET /%s HTTP/1.1\r\nHost: a\r\n\r\n", "aaaaaaaaaaaaaaaaaa");
    assert_int_equal(strlen("GET /aaaaaaaaaaaaaaaaaa HTTP/1.1"), 32);
    assert_int_equal(preq_lim(buf, strlen(buf), &r, &lim), (int)strlen(buf));
    /* one more byte is 414, whether the version has arrived or not */
    snprintf(buf, sizeof buf, "GET /%s HTTP/1.1\r\nHost: a\r\n\r\n", "aaaaaaaaaaaaaaaaaaa");
    assert_int_equal(preq_lim(buf, strlen(buf), &r, &lim), HTTP_ERROR);
    assert_int_equal(r.m.status, 414);
    snprintf(buf, sizeof buf, "GET /%s", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
    assert_int_equal(preq_lim(buf, strlen(buf), &r, &lim), HTTP_ERROR);
    assert_int_equal(r.m.status, 414);
    /* and while still incomplete within the limit, wait */
    assert_int_equal(preq_lim("GET /aaaaaaaaaaaaaaaaaa HTTP/1.", 30, &r, &lim), HTTP_AGAIN);

    /* leading empty lines do not count against the request line */
    snprintf(buf, sizeof buf, "\r\n\r\nGET /%s HTTP/1.1\r\nHost: a\r\n\r\n", "aaaaaaaaaaaaaaaaaa");
    assert_int_equal(preq_lim(buf, strlen(buf), &r, &lim), (int)strlen(buf));

    /* four headers fit, five are 431 */
    const char *four = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    assert_int_equal(preq_lim(four, strlen(four), &r, &lim), (int)strlen(four));
    assert_int_equal(r.m.nheaders, 4);
    const char *five = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n";
    assert_int_equal(preq_lim(five, strlen(five), &r, &lim), HTTP_ERROR);
    assert_int_equal(r.m.status, 431);

    /* the head including its final CRLF at exactly max_head is fine */
    const char *pre = "GET / HTTP/1.1\r\nHost: a\r\nX: ";
    size_t fill = 128 - strlen(pre) - 4;
    snprintf(buf, sizeof buf, "%s%.*s\r\n\r\n", pre, (int)fill,
             "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb");
    assert_int_equal(strlen(buf), 128);
    assert_int_equal(preq_lim(buf, strlen(buf), &r, &lim), 128);
    /* one byte more is 431 */
    snprintf(buf, sizeof buf, "%s%.*s\r\n\r\n", pre, (int)fill + 1,
             "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb");
    assert_int_equal(preq_lim(buf, strlen(buf), &r, &lim), HTTP_ERROR);
    assert_int_equal(r.m.status, 431);
    /* an incomplete head already over the limit is 431 without waiting */
    memset(buf, 0, sizeof buf);
    strcpy(buf, "GET / HTTP/1.1\r\nHost: a\r\nX: ");
    memset(buf + strlen(buf), 'c', 200);
    assert_int_equal(preq_lim(buf, strlen(buf), &r, &lim), HTTP_ERROR);
    assert_int_equal(r.m.status, 431);
    strcpy(buf, "GET / HTTP/1.1\r\nHost: a\r\n");
    memset(buf + strlen(buf), 'N', 200);
    assert_int_equal(preq_lim(buf, strlen(buf), &r, &lim), HTTP_ERROR);
    assert_int_equal(r.m.status, 431);
    /* many small complete headers over the limit */
    const struct http_limits many = { .max_request_line = 32, .max_head = 64, .max_headers = 64 };
    const char *lots = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\nF: 6\r\nG: 7\r\n";
    assert_int_equal(preq_lim(lots, strlen(lots), &r, &many), HTTP_ERROR);
    assert_int_equal(r.m.status, 431);
}

/* ------------------------------------------------------------------ */
/* responses                                                           */

static void res_status_line(void **state)
{
    (void)state;
    struct http_response r;
    const char *s = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
    assert_int_equal(pres(s, &r, false), (int)strlen(s));
    assert_int_equal(r.status, 200);
    assert_slice(r.reason, r.reason_len, "OK");
    assert_int_equal(r.m.minor, 1);
    assert_int_equal(r.m.body, HTTP_BODY_LENGTH);
    assert_int_equal(r.m.content_length, 5);
    assert_true(r.m.keep_alive);
    assert_int_equal(r.m.nheaders, 1);
    assert_int_equal(r.m.kinds[0], HTTP_H_CONTENT_LENGTH);
    check_response_incremental(s, strlen(s), false);

    s = "HTTP/1.1 404 Not Found Here\r\nContent-Length: 0\r\n\r\n";
    assert_int_equal(pres(s, &r, false), (int)strlen(s));
    assert_int_equal(r.status, 404);
    assert_slice(r.reason, r.reason_len, "Not Found Here");

    /* empty reason, with and without the second SP */
    s = "HTTP/1.1 204 \r\n\r\n";
    assert_int_equal(pres(s, &r, false), (int)strlen(s));
    assert_int_equal(r.status, 204);
    assert_int_equal(r.reason_len, 0);
    check_response_incremental(s, strlen(s), false);
    s = "HTTP/1.1 204\r\n\r\n";
    assert_int_equal(pres(s, &r, false), (int)strlen(s));
    assert_int_equal(r.status, 204);
    assert_int_equal(r.reason_len, 0);
    check_response_incremental(s, strlen(s), false);

    s = "HTTP/1.1 599 Whatever\r\nContent-Length: 0\r\n\r\n";
    assert_int_equal(pres(s, &r, false), (int)strlen(s));
    assert_int_equal(r.status, 599);
    s = "HTTP/1.1 100 Continue\r\n\r\n";
    assert_int_equal(pres(s, &r, false), (int)strlen(s));
    assert_int_equal(r.status, 100);
    /* obs-text and HTAB are allowed in the reason */
    s = "HTTP/1.1 200 \xc3\xa7" "a\tva\r\nContent-Length: 0\r\n\r\n";
    assert_int_equal(pres(s, &r, false), (int)strlen(s));
}

static void res_invalid_status_lines(void **state)
{
    (void)state;
    REJECT_RES("HTTP/1.1 20 OK\r\n\r\n", false);
    REJECT_RES("HTTP/1.1 2000 OK\r\n\r\n", false);
    REJECT_RES("HTTP/1.1 600 Nope\r\n\r\n", false);
    REJECT_RES("HTTP/1.1 099 Nope\r\n\r\n", false);
    REJECT_RES("HTTP/1.1 abc OK\r\n\r\n", false);
    REJECT_RES("HTTP/1.1 -20 OK\r\n\r\n", false);
    REJECT_RES("HTTP/1.1  200 OK\r\n\r\n", false);
    REJECT_RES("HTTP/1.1 200OK\r\n\r\n", false);
    REJECT_RES("HTTP/1.1\t200 OK\r\n\r\n", false);
    REJECT_RES("HTTP/2 200 OK\r\n\r\n", false);
    REJECT_RES("HTTP/2.0 200 OK\r\n\r\n", false);
    REJECT_RES("HTTP/0.9 200 OK\r\n\r\n", false);
    REJECT_RES("http/1.1 200 OK\r\n\r\n", false);
    REJECT_RES("HTTP/1.1 200 O\x01K\r\n\r\n", false);
    REJECT_RES("HTTP/1.1 200 O\x7fK\r\n\r\n", false);
    REJECT_RES("HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n", false);
    REJECT_RES("HTTP/1.1 200 OK\rContent-Length: 0\r\n\r\n", false);
    REJECT_RES("HTTP/1.1 200 O\rK\r\n\r\n", false);
    REJECT_RES("\r\nHTTP/1.1 200 OK\r\n\r\n", false);
    REJECT_RES("<html>hello</html>\r\n\r\n", false);
    REJECT_RES("HTTP/1.1\r\n\r\n", false);
    static const char nul[] = "HTTP/1.1 200 O\0K\r\n\r\n";
    struct http_response r;
    assert_int_equal(pres_lim(nul, sizeof nul - 1, &r, &big, false), HTTP_ERROR);
    assert_int_equal(r.m.status, 502);
}

static void res_invalid_headers_are_502(void **state)
{
    (void)state;
    REJECT_RES("HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", false);
    REJECT_RES("HTTP/1.1 200 OK\r\nX : a\r\n\r\n", false);
    REJECT_RES("HTTP/1.1 200 OK\r\nX: a\nY: b\r\n\r\n", false);
    REJECT_RES("HTTP/1.1 200 OK\r\nX: a\x01\r\n\r\n", false);
    REJECT_RES("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", false);
    REJECT_RES("HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n", false);
    REJECT_RES("HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n", false);
    REJECT_RES("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", false);
    REJECT_RES("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", false);
    REJECT_RES("HTTP/1.1 200 OK\r\nTransfer-Encoding:\r\n\r\n", false);
    REJECT_RES("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked;x\r\n\r\n", false);
    /* invalid framing is an error even where the body is ignored */
    REJECT_RES("HTTP/1.1 304 Not Modified\r\nContent-Length: x\r\n\r\n", false);
    REJECT_RES("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", true);
    /* 1xx must not carry Transfer-Encoding */
    REJECT_RES("HTTP/1.1 100 Continue\r\nTransfer-Encoding: chunked\r\n\r\n", false);

    const struct http_limits lim = { .max_request_line = 32, .max_head = 64, .max_headers = 2 };
    struct http_response r;
    const char *s = "HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    assert_int_equal(pres_lim(s, strlen(s), &r, &lim, false), HTTP_ERROR);
    assert_int_equal(r.m.status, 502);
    s = "HTTP/1.1 200 OK\r\nA: 1111111111111111111111111111111111111111111111111\r\n\r\n";
    assert_int_equal(pres_lim(s, strlen(s), &r, &lim, false), HTTP_ERROR);
    assert_int_equal(r.m.status, 502);
}

static void res_status_line_limit(void **state)
{
    (void)state;
    const struct http_limits lim = { .max_request_line = 32, .max_head = 256, .max_headers = 8 };
    struct http_response r;
    /* exactly 32 bytes: fine, both whole and piecewise */
    const char *ok = "HTTP/1.1 200 aaaaaaaaaaaaaaaaaaa\r\n\r\n";
    assert_int_equal(strlen(ok), 36);
    for (size_t i = 0; i < strlen(ok); i++)
        assert_int_equal(pres_lim(ok, i, &r, &lim, false), HTTP_AGAIN);
    assert_int_equal(pres_lim(ok, strlen(ok), &r, &lim, false), (int)strlen(ok));
    /* 33 bytes: too long, whether it arrives whole or not */
    const char *bad = "HTTP/1.1 200 aaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    assert_int_equal(pres_lim(bad, strlen(bad), &r, &lim, false), HTTP_ERROR);
    assert_int_equal(r.m.status, 502);
    assert_int_equal(pres_lim(bad, 33, &r, &lim, false), HTTP_ERROR);
    assert_int_equal(r.m.status, 502);
}

static void res_no_body_statuses(void **state)
{
    (void)state;
    struct http_response r;
    const char *s = "HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n";
    assert_int_equal(pres(s, &r, false), (int)strlen(s));
    assert_int_equal(r.m.body, HTTP_BODY_NONE);
    assert_true(r.m.keep_alive);

    s = "HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n";
    assert_int_equal(pres(s, &r, false), (int)strlen(s));
    assert_int_equal(r.m.body, HTTP_BODY_NONE);
    assert_true(r.m.has_cl);
    assert_int_equal(r.m.content_length, 100);
    assert_true(r.m.keep_alive);

    s = "HTTP/1.1 304 Not Modified\r\n\r\n";
    assert_int_equal(pres(s, &r, false), (int)strlen(s));
    assert_int_equal(r.m.body, HTTP_BODY_NONE);
    assert_true(r.m.keep_alive);

    s = "HTTP/1.1 100 Continue\r\n\r\n";
    assert_int_equal(pres(s, &r, false), (int)strlen(s));
    assert_int_equal(r.m.body, HTTP_BODY_NONE);

    s = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
    assert_int_equal(pres(s, &r, false), (int)strlen(s));
    assert_int_equal(r.m.body, HTTP_BODY_NONE);
    assert_true(r.m.conn_upgrade);
    assert_true(r.m.has_upgrade);

    s = "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n";
    assert_int_equal(pres(s, &r, false), (int)strlen(s));
    assert_int_equal(r.m.body, HTTP_BODY_NONE);

    /* HEAD: whatever the framing headers say */
    s = "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n";
    assert_int_equal(pres(s, &r, true), (int)strlen(s));
    assert_int_equal(r.m.body, HTTP_BODY_NONE);
    assert_int_equal(r.m.content_length, 1234);
    assert_true(r.m.keep_alive);
    s = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_int_equal(pres(s, &r, true), (int)strlen(s));
    assert_int_equal(r.m.body, HTTP_BODY_NONE);
    assert_true(r.m.keep_alive);
    s = "HTTP/1.1 200 OK\r\n\r\n";
    assert_int_equal(pres(s, &r, true), (int)strlen(s));
    assert_int_equal(r.m.body, HTTP_BODY_NONE);
    assert_true(r.m.keep_alive);
    check_response_incremental(s, strlen(s), true);
}

static void res_body_framing(void **state)
{
    (void)state;
    struct http_response r;
    const char *s = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_int_equal(pres(s, &r, false), (int)strlen(s));
    assert_int_equal(r.m.body, HTTP_BODY_CHUNKED);
    assert_true(r.m.keep_alive);
    assert_true(r.m.has_te);
    check_response_incremental(s, strlen(s), false);

    /* a coding before the final chunked is relayed as is */
    s = "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
    assert_int_equal(pres(s, &r, false), (int)strlen(s));
    assert_int_equal(r.m.body, HTTP_BODY_CHUNKED);

    s = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    assert_int_equal(pres(s, &r, false), (int)strlen(s));
    assert_int_equal(r.m.body, HTTP_BODY_LENGTH);
    assert_int_equal(r.m.content_length, 0);
    assert_true(r.m.keep_alive);

    s = "HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n";
    assert_int_equal(pres(s, &r, false), (int)strlen(s));
    assert_int_equal(r.m.body, HTTP_BODY_LENGTH);
    assert_int_equal(r.m.content_length, 7);

    /* neither: delimited by close, and so the connection cannot persist */
    s = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n";
    assert_int_equal(pres(s, &r, false), (int)strlen(s));
    assert_int_equal(r.m.body, HTTP_BODY_CLOSE);
    assert_false(r.m.keep_alive);

    /* CL + TE: TE wins, CL is ignored, and the connection is closed after */
    s = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_int_equal(pres(s, &r, false), (int)strlen(s));
    assert_int_equal(r.m.body, HTTP_BODY_CHUNKED);
    assert_true(r.m.has_cl);
    assert_true(r.m.has_te);
    assert_false(r.m.keep_alive);

    /* chunked not final: read to close */
    s = "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n";
    assert_int_equal(pres(s, &r, false), (int)strlen(s));
    assert_int_equal(r.m.body, HTTP_BODY_CLOSE);
    assert_false(r.m.keep_alive);

    s = "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\n";
    assert_int_equal(pres(s, &r, false), (int)strlen(s));
    assert_int_equal(r.m.body, HTTP_BODY_LENGTH);
    assert_false(r.m.keep_alive);
}

static void res_http10(void **state)
{
    (void)state;
    struct http_response r;
    const char *s = "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n";
    assert_int_equal(pres(s, &r, false), (int)strlen(s));
    assert_int_equal(r.m.minor, 0);
    assert_false(r.m.keep_alive);
    s = "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\n";
    assert_int_equal(pres(s, &r, false), (int)strlen(s));
    assert_true(r.m.keep_alive);
    s = "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n";
    assert_int_equal(pres(s, &r, false), (int)strlen(s));
    assert_int_equal(r.m.body, HTTP_BODY_CLOSE);
    assert_false(r.m.keep_alive);
    /* RFC 9112 6.1: Transfer-Encoding in an HTTP/1.0 message means faulty
     * framing; the connection must be closed after it. */
    s = "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_int_equal(pres(s, &r, false), (int)strlen(s));
    assert_false(r.m.keep_alive);
}

static void res_pipelined(void **state)
{
    (void)state;
    const char *s = "HTTP/1.1 100 Continue\r\n\r\n"
                    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi";
    struct http_response r;
    int rc = pres(s, &r, false);
    assert_int_equal(rc, (int)strlen("HTTP/1.1 100 Continue\r\n\r\n"));
    assert_int_equal(r.status, 100);
    rc = pres(s + rc, &r, false);
    assert_int_equal(rc, (int)strlen("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"));
    assert_int_equal(r.status, 200);
}

static void misc_helpers(void **state)
{
    (void)state;
    assert_true(http_ieq("Content-Length", "content-LENGTH", 14));
    assert_false(http_ieq("abc", "abd", 3));
    assert_true(http_ieq("", "", 0));
    /* not a general case fold: only ASCII letters */
    assert_false(http_ieq("[", "{", 1));
    assert_false(http_ieq("@", "`", 1));
    assert_string_equal(http_reason(400), "Bad Request");
    assert_string_equal(http_reason(431), "Request Header Fields Too Large");
    assert_string_equal(http_reason(502), "Bad Gateway");
    assert_string_equal(http_reason(505), "HTTP Version Not Supported");
    assert_string_equal(http_reason(299), "Unknown");
    assert_string_equal(http_reason(0), "Unknown");
    static const int known[] = { 100, 101, 200, 204, 301, 302, 304, 400, 401, 403, 404, 405,
                                 408, 411, 413, 414, 417, 429, 431, 500, 501, 502, 503, 504, 505 };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        const char *r = http_reason(known[i]);
        assert_non_null(r);
        assert_string_not_equal(r, "Unknown");
    }
}

/* ------------------------------------------------------------------ */
/* chunked decoder                                                     */

struct dec {
    long rc;                /* total consumed, or HTTP_ERROR */
    bool done;
    size_t ndata;
    char data[8192];
};

/* Feed `in` in pieces of `step` bytes (0: all at once), collecting data. */
static void decode(const char *in, size_t len, size_t step, struct dec *d)
{
    struct http_chunked c;
    http_chunked_init(&c);
    memset(d, 0, sizeof *d);
    size_t off = 0;
    while (off < len) {
        size_t piece = step && len - off > step ? step : len - off;
        size_t poff = 0;
        while (poff < piece) {
            size_t doff = 99, dlen = 99;
            long r = http_chunked_feed(&c, in + off + poff, piece - poff, &doff, &dlen);
            if (r < 0) {
                d->rc = HTTP_ERROR;
                d->done = http_chunked_done(&c);
                return;
            }
            assert_true((size_t)r <= piece - poff);
            if (dlen) {
                assert_true(doff + dlen <= (size_t)r);
                assert_true(d->ndata + dlen <= sizeof d->data);
                memcpy(d->data + d->ndata, in + off + poff + doff, dlen);
                d->ndata += dlen;
            } else {
                assert_int_equal(doff, 0);
            }
            poff += (size_t)r;
            if (r == 0)
                break;
        }
        off += poff;
        if (poff < piece)
            break;          /* done: the rest is not consumed */
    }
    d->rc = (long)off;
    d->done = http_chunked_done(&c);
}

/* Decodes to `want` (done, consuming `consumed` bytes), the same way whole
 * and byte by byte and in a few other piece sizes. */
static void check_chunked(const char *in, size_t len, const char *want, size_t want_len,
                          size_t consumed)
{
    static const size_t steps[] = { 0, 1, 2, 3, 7 };
    static struct dec d;
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        decode(in, len, steps[i], &d);
        if (d.rc != (long)consumed || !d.done)
            print_error("step %zu: rc %ld done %d\n", steps[i], d.rc, d.done);
        assert_int_equal(d.rc, (long)consumed);
        assert_true(d.done);
        assert_int_equal(d.ndata, want_len);
        if (want_len)
            assert_memory_equal(d.data, want, want_len);
    }
}

#define CHUNKED_OK(in, want) check_chunked((in), strlen(in), (want), strlen(want), strlen(in))

static void check_chunked_error(const char *in, size_t len)
{
    static const size_t steps[] = { 0, 1, 5 };
    static struct dec d;
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        decode(in, len, steps[i], &d);
        if (d.rc != HTTP_ERROR)
            print_error("accepted (step %zu): %.*s\n", steps[i], (int)len, in);
        assert_int_equal(d.rc, HTTP_ERROR);
        assert_false(d.done);
    }
}
#define CHUNKED_BAD(in) check_chunked_error((in), strlen(in))

static void chunked_basic(void **state)
{
    (void)state;
    CHUNKED_OK("5\r\nhello\r\n0\r\n\r\n", "hello");
    CHUNKED_OK("0\r\n\r\n", "");
    CHUNKED_OK("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "hello world");
    CHUNKED_OK("a\r\n0123456789\r\nA\r\nabcdefghij\r\n0\r\n\r\n", "0123456789abcdefghij");
    CHUNKED_OK("00005\r\nhello\r\n000\r\n\r\n", "hello");
    CHUNKED_OK("1\r\n\r\r\n1\r\n\n\r\n0\r\n\r\n", "\r\n");
    static const char bin[] = "3\r\n\0\1\2\r\n0\r\n\r\n";
    check_chunked(bin, sizeof bin - 1, "\0\1\2", 3, sizeof bin - 1);

    char big[4096 + 64], want[4096 + 1];
    memset(want, 'z', 4096);
    want[4096] = 0;
    snprintf(big, sizeof big, "1000\r\n%s\r\n0\r\n\r\n", want);
    CHUNKED_OK(big, want);
}

static void chunked_spans(void **state)
{
    (void)state;
    const char *in = "5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n";
    struct http_chunked c;
    size_t off, len;
    http_chunked_init(&c);
    assert_false(http_chunked_done(&c));
    long r = http_chunked_feed(&c, in, strlen(in), &off, &len);
    assert_int_equal(r, 8);
    assert_int_equal(off, 3);
    assert_int_equal(len, 5);
    assert_memory_equal(in + off, "hello", 5);
    assert_int_equal(c.total, 5);

    r = http_chunked_feed(&c, in + 8, strlen(in) - 8, &off, &len);
    assert_int_equal(r, 2 + 3 + 3);
    assert_int_equal(off, 5);
    assert_int_equal(len, 3);
    assert_memory_equal(in + 8 + off, "abc", 3);
    assert_int_equal(c.total, 8);

    r = http_chunked_feed(&c, in + 16, strlen(in) - 16, &off, &len);
    assert_int_equal(r, (long)strlen(in) - 16);
    assert_int_equal(len, 0);
    assert_true(http_chunked_done(&c));

    /* partial data: the span is what is there, the rest comes next */
    http_chunked_init(&c);
    r = http_chunked_feed(&c, "a\r\n0123", 7, &off, &len);
    assert_int_equal(r, 7);
    assert_int_equal(off, 3);
    assert_int_equal(len, 4);
    assert_int_equal(c.remaining, 6);
    r = http_chunked_feed(&c, "456789\r\n", 8, &off, &len);
    assert_int_equal(r, 6);
    assert_int_equal(off, 0);
    assert_int_equal(len, 6);
    r = http_chunked_feed(&c, "\r\n", 2, &off, &len);
    assert_int_equal(r, 2);
    assert_int_equal(len, 0);
    assert_false(http_chunked_done(&c));

    /* empty input */
    r = http_chunked_feed(&c, "", 0, &off, &len);
    assert_int_equal(r, 0);
    assert_int_equal(len, 0);
}

static void chunked_extensions(void **state)
{
    (void)state;
    CHUNKED_OK("5;name\r\nhello\r\n0\r\n\r\n", "hello");
    CHUNKED_OK("5;name=value\r\nhello\r\n0\r\n\r\n", "hello");
    CHUNKED_OK("5;a=1;b;c=x\r\nhello\r\n0;last\r\n\r\n", "hello");
    CHUNKED_OK("5;q=\"quoted; \\\"value\\\" \\\\\"\r\nhello\r\n0\r\n\r\n", "hello");
    CHUNKED_OK("5;q=\"\"\r\nhello\r\n0\r\n\r\n", "hello");
    CHUNKED_OK("5;q=\"a\";r=b\r\nhello\r\n0\r\n\r\n", "hello");
    CHUNKED_OK("5;q=\"caf\xc3\xa9\"\r\nhello\r\n0\r\n\r\n", "hello");
    /* BWS around ";" and "=" (RFC 9112 7.1.1) */
    CHUNKED_OK("5 ;a\r\nhello\r\n0\r\n\r\n", "hello");
    CHUNKED_OK("5; a\r\nhello\r\n0\r\n\r\n", "hello");
    CHUNKED_OK("5;a= b\r\nhello\r\n0\r\n\r\n", "hello");
    CHUNKED_OK("5;a =b\r\nhello\r\n0\r\n\r\n", "hello");
    CHUNKED_OK("5 ; a = b ; c = \"d\" \r\nhello\r\n0\r\n\r\n", "hello");

    CHUNKED_BAD("5;\r\nhello\r\n0\r\n\r\n");
    CHUNKED_BAD("5;=x\r\nhello\r\n0\r\n\r\n");
    CHUNKED_BAD("5;a=\r\nhello\r\n0\r\n\r\n");
    CHUNKED_BAD("5;a=b c\r\nhello\r\n0\r\n\r\n");
    CHUNKED_BAD("5;a b\r\nhello\r\n0\r\n\r\n");
    CHUNKED_BAD("5;a==b\r\nhello\r\n0\r\n\r\n");
    CHUNKED_BAD("5;a=\"b\r\nhello\r\n0\r\n\r\n");
    CHUNKED_BAD("5;a=\"b\"c\r\nhello\r\n0\r\n\r\n");
    CHUNKED_BAD("5;a=\"\x01\"\r\nhello\r\n0\r\n\r\n");
    CHUNKED_BAD("5;a=\"\\\x01\"\r\nhello\r\n0\r\n\r\n");
    CHUNKED_BAD("5;a=(b)\r\nhello\r\n0\r\n\r\n");
    CHUNKED_BAD("5;a=b(\r\nhello\r\n0\r\n\r\n");
    CHUNKED_BAD("5;a=b\nhello\r\n0\r\n\r\n");
    CHUNKED_BAD("5;a\nhello\r\n0\r\n\r\n");
    CHUNKED_BAD("5;a\rhello\r\n0\r\n\r\n");
    CHUNKED_BAD("5;a\x7f\r\nhello\r\n0\r\n\r\n");

    /* one size line (with extensions) is bounded */
    char line[5000 + 64];
    strcpy(line, "5;a=");
    memset(line + 4, 'x', 5000);
    strcpy(line + 5004, "\r\nhello\r\n0\r\n\r\n");
    CHUNKED_BAD(line);
    /* but the bound is per line */
    char ok[8192];
    size_t n = 0;
    for (int i = 0; i < 3; i++) {
        n += (size_t)sprintf(ok + n, "1;a=");
        memset(ok + n, 'y', 2000);
        n += 2000;
        n += (size_t)sprintf(ok + n, "\r\nx\r\n");
    }
    strcpy(ok + n, "0\r\n\r\n");
    CHUNKED_OK(ok, "xxx");
}

static void chunked_trailers(void **state)
{
    (void)state;
    CHUNKED_OK("5\r\nhello\r\n0\r\nX-Sum: abc\r\n\r\n", "hello");
    CHUNKED_OK("0\r\nA: 1\r\nB:\r\nC: \t x y \r\n\r\n", "");
    CHUNKED_OK("0\r\nA: caf\xc3\xa9\r\n\r\n", "");

    CHUNKED_BAD("0\r\nA: 1\r\n continued\r\n\r\n");      /* obs-fold */
    CHUNKED_BAD("0\r\nA 1\r\n\r\n");
    CHUNKED_BAD("0\r\nA : 1\r\n\r\n");
    CHUNKED_BAD("0\r\n: 1\r\n\r\n");
    CHUNKED_BAD("0\r\nA: 1\n\r\n");
    CHUNKED_BAD("0\r\nA: 1\r\r\n");
    CHUNKED_BAD("0\r\nA: \x01\r\n\r\n");
    CHUNKED_BAD("0\r\nA: 1\r\n\n");
    CHUNKED_BAD("0\r\n\n");
    CHUNKED_BAD("0\r\n\rx");
    CHUNKED_BAD("0\n\r\n");

    /* all trailers together are bounded */
    static char t[40000];
    size_t n = (size_t)sprintf(t, "0\r\n");
    for (int i = 0; i < 20; i++) {
        n += (size_t)sprintf(t + n, "X-%d: ", i);
        memset(t + n, 'v', 1000);
        n += 1000;
        n += (size_t)sprintf(t + n, "\r\n");
    }
    strcpy(t + n, "\r\n");
    CHUNKED_BAD(t);
}

static void chunked_invalid_sizes(void **state)
{
    (void)state;
    CHUNKED_BAD("\r\nhello\r\n0\r\n\r\n");
    CHUNKED_BAD("g\r\n");
    CHUNKED_BAD("5g\r\nhello\r\n0\r\n\r\n");
    CHUNKED_BAD("-5\r\nhello\r\n0\r\n\r\n");
    CHUNKED_BAD("+5\r\nhello\r\n0\r\n\r\n");
    CHUNKED_BAD("0x5\r\nhello\r\n0\r\n\r\n");
    CHUNKED_BAD(" 5\r\nhello\r\n0\r\n\r\n");
    CHUNKED_BAD(";a\r\n");
    CHUNKED_BAD("5\nhello\r\n0\r\n\r\n");
    CHUNKED_BAD("5\rhello\r\n0\r\n\r\n");
    CHUNKED_BAD("5\r\r\nhello\r\n0\r\n\r\n");
    static const char nul[] = "5\0\r\nhello\r\n0\r\n\r\n";
    check_chunked_error(nul, sizeof nul - 1);

    /* 15 hex digits is the most we take (sizes below 2^60) */
    struct http_chunked c;
    size_t off, len;
    http_chunked_init(&c);
    assert_int_equal(http_chunked_feed(&c, "fffffffffffffff\r\nab", 19, &off, &len), 19);
    assert_int_equal(len, 2);
    assert_int_equal(c.remaining, 0xfffffffffffffffull - 2);
    assert_int_equal(c.total, 0xfffffffffffffffull);
    CHUNKED_BAD("1000000000000000\r\n");
    CHUNKED_BAD("ffffffffffffffff\r\n");
    CHUNKED_BAD("10000000000000000\r\n");
    /* leading zeros are valid grammar (RFC 9112 7.1) and do not count */
    static const char zeros[] = "0000000000000000\r\n\r\n";
    check_chunked(zeros, sizeof zeros - 1, "", 0, sizeof zeros - 1);
    static const char padded[] = "000000000000000000000000000005\r\nhello\r\n0\r\n\r\n";
    check_chunked(padded, sizeof padded - 1, "hello", 5, sizeof padded - 1);
    CHUNKED_BAD("00001000000000000000\r\n");
}

static void chunked_bad_data_end(void **state)
{
    (void)state;
    CHUNKED_BAD("5\r\nhelloX\r\n0\r\n\r\n");
    CHUNKED_BAD("5\r\nhello\n0\r\n\r\n");
    CHUNKED_BAD("5\r\nhello\rX0\r\n\r\n");
    CHUNKED_BAD("5\r\nhello\r\r\n0\r\n\r\n");
    CHUNKED_BAD("5\r\nhello0\r\n\r\n");
    CHUNKED_BAD("5\r\nhello world\r\n0\r\n\r\n");
    CHUNKED_BAD("5\r\nhell\r\n0\r\n\r\n");
}

static void chunked_done_detection(void **state)
{
    (void)state;
    const char *in = "5\r\nhello\r\n0\r\n\r\n";
    size_t n = strlen(in);
    static struct dec d;
    for (size_t i = 0; i < n; i++) {
        decode(in, i, 1, &d);
        assert_int_equal(d.rc, (long)i);
        assert_false(d.done);
    }
    decode(in, n, 1, &d);
    assert_true(d.done);

    /* bytes after the end belong to the next message */
    const char *pipe = "3\r\nabc\r\n0\r\nT: 1\r\n\r\nGET / HTTP/1.1\r\n";
    size_t end = strlen("3\r\nabc\r\n0\r\nT: 1\r\n\r\n");
    check_chunked(pipe, strlen(pipe), "abc", 3, end);

    struct http_chunked c;
    size_t off, len;
    http_chunked_init(&c);
    long r = http_chunked_feed(&c, "0\r\n\r\nXYZ", 8, &off, &len);
    assert_int_equal(r, 5);
    assert_true(http_chunked_done(&c));
    r = http_chunked_feed(&c, "XYZ", 3, &off, &len);
    assert_int_equal(r, 0);
    assert_int_equal(len, 0);
    assert_true(http_chunked_done(&c));
}

/* Empty list elements in Content-Length and hostless Host values are rejected. */
static void request_strict_cl_list_and_host(void **state)
{
    (void)state;
    struct http_request r;
    assert_int_equal(preq("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5,\r\n\r\n", &r), HTTP_ERROR);
    assert_int_equal(r.m.status, 400);
    assert_int_equal(preq("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: ,5\r\n\r\n", &r), HTTP_ERROR);
    assert_int_equal(r.m.status, 400);
    assert_int_equal(preq("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n", &r), (int)strlen("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n"));
    assert_int_equal(r.m.content_length, 5);
    assert_int_equal(preq("GET / HTTP/1.1\r\nHost: []\r\n\r\n", &r), HTTP_ERROR);
    assert_int_equal(r.m.status, 400);
    assert_int_equal(preq("GET / HTTP/1.1\r\nHost: :80\r\n\r\n", &r), HTTP_ERROR);
    assert_int_equal(r.m.status, 400);
    assert_int_equal(preq("GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", &r), (int)strlen("GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n"));
    /* an empty Host is valid and names no host */
    assert_int_equal(preq("GET / HTTP/1.1\r\nHost:\r\n\r\n", &r), (int)strlen("GET / HTTP/1.1\r\nHost:\r\n\r\n"));
    assert_null(r.host);
    /* no fragment in a request-target */
    assert_int_equal(preq("GET /a#b HTTP/1.1\r\nHost: x\r\n\r\n", &r), HTTP_ERROR);
    assert_int_equal(r.m.status, 400);
}


/* ------------------------------------------------------------------ */
/* head writer, re-framing, paths, scanning (issue 9)                   */

static void hw_bounds(void **state)
{
    (void)state;
    char buf[32];
    memset(buf, 'Z', sizeof buf);
    struct http_hw w;
    http_hw_init(&w, buf, 16);
    http_hw_status(&w, 200, NULL, 0);       /* "HTTP/1.1 200 OK\r\n" is 17 bytes */
    assert_true(w.overflow);
    for (size_t i = 16; i < sizeof buf; i++)
        assert_int_equal(buf[i], 'Z');      /* never past the end */
    http_hw_init(&w, buf, 17);
    http_hw_status(&w, 200, NULL, 0);
    assert_false(w.overflow);
    assert_int_equal(http_hw_len(&w), 17);
    assert_memory_equal(buf, "HTTP/1.1 200 OK\r\n", 17);
    http_hw_lit(&w, "x");                   /* exactly full: one more byte overflows */
    assert_true(w.overflow);
    http_hw_init(&w, buf, 10);
    http_hw_field(&w, "Host", 4, "ab", 2);  /* 10 bytes: fits exactly */
    assert_false(w.overflow);
    assert_memory_equal(buf, "Host: ab\r\n", 10);
    http_hw_init(&w, buf, 9);
    http_hw_field(&w, "Host", 4, "ab", 2);
    assert_true(w.overflow);
    assert_int_equal(http_hw_len(&w), 0);
    http_hw_init(&w, buf, 21);
    http_hw_u64(&w, 0);
    http_hw_u64(&w, 18446744073709551615ull);
    assert_false(w.overflow);
    assert_memory_equal(buf, "018446744073709551615", 21);
}

static void reframe_all(const char *in, size_t len, size_t step, bool strip, char *out,
                        size_t *out_len, long *rc)
{
    struct http_chunked c;
    http_chunked_init(&c);
    char work[4096];
    size_t have = 0, o = 0, off = 0;
    *rc = 0;
    while (off < len || have) {
        size_t piece = step && len - off > step ? step : len - off;
        memcpy(work + have, in + off, piece);
        have += piece;
        off += piece;
        size_t wl;
        long n = http_chunked_reframe(&c, work, have, strip, &wl);
        if (n < 0) {
            *rc = HTTP_ERROR;
            return;
        }
        assert_true(wl <= (size_t)n);
        memcpy(out + o, work, wl);
        o += wl;
        memmove(work, work + n, have - (size_t)n);
        have -= (size_t)n;
        if (http_chunked_done(&c) || (piece == 0 && n == 0))
            break;
    }
    *out_len = o;
    *rc = http_chunked_done(&c) ? 1 : 0;
}

static void check_reframe(const char *in, const char *want, const char *want_strip)
{
    static const size_t steps[] = { 0, 1, 2, 5 };
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        for (int strip = 0; strip < 2; strip++) {
            char out[4096];
            size_t n = 0;
            long rc;
            reframe_all(in, strlen(in), steps[i], strip, out, &n, &rc);
            const char *w = strip ? want_strip : want;
            if (rc != 1 || n != strlen(w) || memcmp(out, w, n) != 0)
                fail_msg("reframe (step %zu, strip %d) of [%s]: rc %ld, got [%.*s] want [%s]",
                         steps[i], strip, in, rc, (int)n, out, w);
        }
    }
}

static void chunked_reframe(void **state)
{
    (void)state;
    check_reframe("5\r\nhello\r\n0\r\n\r\n", "5\r\nhello\r\n0\r\n\r\n", "hello");
    /* extensions dropped, leading zeros and case canonical */
    check_reframe("005;a=b ; c=\"x y\"\r\nhello\r\n00A\r\n0123456789\r\n0;z\r\n\r\n",
                  "5\r\nhello\r\na\r\n0123456789\r\n0\r\n\r\n", "hello0123456789");
    /* trailers: allowed ones canonical, the others dropped */
    check_reframe("1\r\nx\r\n0\r\nX-Checksum:   abc  \r\nContent-Length: 5\r\nHost: evil\r\n"
                  "X-T:v\r\n\r\n",
                  "1\r\nx\r\n0\r\nX-Checksum: abc\r\nX-T:v\r\n\r\n", "x");
    check_reframe("0\r\n\r\n", "0\r\n\r\n", "");

    /* malformed: rejected, whatever the pieces */
    static const char *const bad[] = {
        "5\nhello\r\n0\r\n\r\n", "5\r\nhelloX\r\n0\r\n\r\n", "g\r\n", "5 ;\r\n",
        "0\r\nBad Name: x\r\n\r\n", "1\r\nx\r\n0\r\n\r", 
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char out[256];
        size_t n;
        long rc;
        reframe_all(bad[i], strlen(bad[i]), 0, false, out, &n, &rc);
        if (rc == 1)
            fail_msg("accepted: [%s]", bad[i]);
    }
    /* a size line longer than the limit fails without waiting for its end */
    static char longline[5000];
    memset(longline, '0', sizeof longline);
    struct http_chunked c;
    http_chunked_init(&c);
    size_t wl;
    assert_int_equal(http_chunked_reframe(&c, longline, sizeof longline, false, &wl), HTTP_ERROR);
    /* nothing after the last chunk is consumed */
    char tail[] = "0\r\n\r\nGET";
    http_chunked_init(&c);
    assert_int_equal(http_chunked_reframe(&c, tail, sizeof tail - 1, false, &wl), 5);
    assert_true(http_chunked_done(&c));
}

static void check_norm(const char *in, unsigned flags, const char *want)
{
    char out[512];
    long n = http_normalize_path(in, strlen(in), out, flags);
    if (!want) {
        if (n >= 0)
            fail_msg("normalised [%s] to [%.*s], want rejection", in, (int)n, out);
        return;
    }
    if (n < 0 || (size_t)n != strlen(want) || memcmp(out, want, (size_t)n) != 0)
        fail_msg("normalised [%s] to [%.*s] (%ld), want [%s]", in, n < 0 ? 0 : (int)n, out, n,
                 want);
    assert_true((size_t)n <= strlen(in));
}

static void path_normalize(void **state)
{
    (void)state;
    check_norm("/", 0, "/");
    check_norm("/auth/login", 0, "/auth/login");
    check_norm("/./auth/", 0, "/auth/");
    check_norm("/%61uth/", 0, "/auth/");
    check_norm("/%2e%2E/auth/", 0, "/auth/");
    check_norm("/a/b/../c", 0, "/a/c");
    check_norm("/a/b/..", 0, "/a/");
    check_norm("/a/.", 0, "/a/");
    check_norm("/a/./b/./", 0, "/a/b/");
    check_norm("/../../x", 0, "/x");
    check_norm("/..", 0, "/");
    check_norm("//auth/", 0, "//auth/");
    check_norm("//auth/", HTTP_PATH_MERGE_SLASHES, "/auth/");
    check_norm("/a//b///c/", HTTP_PATH_MERGE_SLASHES, "/a/b/c/");
    check_norm("/a%7e%7E/", 0, "/a~~/");
    check_norm("/a%3f%20b", 0, "/a%3F%20b");
    check_norm("/x?a=/../%2f&b=%00", 0, "/x?a=/../%2f&b=%00");   /* the query is kept */
    check_norm("/a/../b?q", 0, "/b?q");
    check_norm("/a%2fb", 0, NULL);
    check_norm("/a%2Fb", 0, NULL);
    check_norm("/a%5cb", 0, NULL);
    check_norm("/a%2fb", HTTP_PATH_ALLOW_ENCODED_SLASH, "/a%2Fb");
    check_norm("/a%00b", HTTP_PATH_ALLOW_ENCODED_SLASH, NULL);
    check_norm("/a%", 0, NULL);
    check_norm("/a%4", 0, NULL);
    check_norm("/a%4g", 0, NULL);
    check_norm("/a%4?x", 0, NULL);
}

static bool scan_says(const char *s, size_t step)
{
    uint32_t scanned = 0;
    size_t len = strlen(s);
    bool any = false;
    for (size_t n = step; ; n += step) {
        if (n > len)
            n = len;
        any |= http_head_scan(s, n, &scanned, 64);
        if (n == len)
            return any;
    }
}

static void head_scan(void **state)
{
    (void)state;
    /* a complete head is always seen, however it arrives */
    const char *full = "GET /xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                       " HTTP/1.1\r\nHost: a\r\nX-Long: yyyyyyyyyyyyyyyyyyyy\r\n\r\n";
    for (size_t step = 1; step < 8; step++)
        assert_true(scan_says(full, step));
    /* a long header line in pieces: not worth parsing until it ends the head */
    char big[2048];
    int n = snprintf(big, sizeof big, "GET / HTTP/1.1\r\nX: ");
    memset(big + n, 'a', 1500);
    big[n + 1500] = 0;
    uint32_t scanned = 0;
    assert_true(http_head_scan(big, 10, &scanned, 64));        /* request line incomplete */
    assert_true(http_head_scan(big, 20, &scanned, 64));        /* ... and complete */
    int yes = 0;
    for (size_t l = 120; l <= strlen(big); l += 100)
        yes += http_head_scan(big, l, &scanned, 64);
    assert_int_equal(yes, 0);
    /* a bare LF is worth parsing at once (the parser answers 400) */
    scanned = 0;
    assert_true(scan_says("GET / HTTP/1.1\r\nHost: a\nX: b", 3));
}

static void underscore_headers(void **state)
{
    (void)state;
    struct http_header h[8];
    uint8_t k[8];
    struct http_request r = { .m = { .headers = h, .kinds = k } };
    struct http_limits lim = { 1024, 4096, 8 };
    const char *s = "GET / HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 1.2.3.4\r\n\r\n";
    assert_int_equal(http_parse_request(s, strlen(s), &r, &lim), (int)strlen(s));
    assert_true(r.m.has_underscore);
    assert_int_equal(k[1], HTTP_H_UNDERSCORE);
    s = "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n";
    assert_int_equal(http_parse_request(s, strlen(s), &r, &lim), (int)strlen(s));
    assert_false(r.m.has_underscore);
    /* leading zeros in Content-Length are valid and do not overflow */
    s = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0000000000000000000000000000005\r\n\r\n";
    assert_int_equal(http_parse_request(s, strlen(s), &r, &lim), (int)strlen(s));
    assert_int_equal(r.m.content_length, 5);
    s = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0001000000000000000000\r\n\r\n";
    assert_int_equal(http_parse_request(s, strlen(s), &r, &lim), HTTP_ERROR);
}

/* Every byte value in a Host and in a header value, against the grammar
 * written out here independently of the parser's tables: reg-name is
 * unreserved / sub-delims / '%' (RFC 3986 3.2.2); a field value takes
 * VCHAR, obs-text, SP and HTAB (RFC 9110 5.5); CR and LF end the line or
 * are bare (400). Each byte also at the line's end and split over two
 * reads (HTTP_AGAIN, then the same answer). */
static void test_every_byte_in_host_and_value(void **state)
{
    (void)state;
    for (int c = 0; c < 256; c++) {
        bool reg = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                   (c && strchr("-._~!$&'()*+,;=%", c));
        bool val = c == '\t' || (c >= 0x20 && c != 0x7f);
        char req[96];
        struct http_request r;
        int n = snprintf(req, sizeof req, "GET / HTTP/1.1\r\nHost: a%cb\r\n\r\n", c);
        if (c == 0 || c == '\r' || c == '\n')
            n = 0;                      /* framing bytes: covered by the value test */
        if (n > 0) {
            int got = preqn(req, (size_t)n, &r);
            if (reg)
                assert_int_equal(got, n);
            else if (c != ':' && c != ' ' && c != '\t')
                assert_int_equal(got, HTTP_ERROR);
        }
        for (int at_end = 0; at_end < 2; at_end++) {
            char h[96];
            const char *pre = at_end ? "GET / HTTP/1.1\r\nHost: x\r\nX-A: ab"
                                     : "GET / HTTP/1.1\r\nHost: x\r\nX-A: a";
            const char *post = at_end ? "\r\n\r\n" : "b\r\n\r\n";
            size_t pl = strlen(pre), len = pl + 1 + strlen(post);
            memcpy(h, pre, pl);
            h[pl] = (char)c;
            memcpy(h + pl + 1, post, strlen(post));
            int got = preqn(h, len, &r);
            if (val) {
                assert_int_equal(got, (int)len);
                size_t vl = at_end && (c == ' ' || c == '\t') ? 2 : 3;   /* OWS trimmed */
                assert_int_equal(r.m.headers[1].value_len, vl);
            } else {
                assert_int_equal(got, HTTP_ERROR);
                assert_int_equal(r.m.status, 400);
            }
            /* the same bytes cut just after the odd byte: more to come, or the same error */
            size_t cut = pl + 1;
            got = preqn(h, cut, &r);
            if (val || c == '\r')
                assert_int_equal(got, HTTP_AGAIN);
            else if (c != '\n')
                assert_true(got == HTTP_AGAIN || got == HTTP_ERROR);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(req_get_basic),
        cmocka_unit_test(req_header_values_trimmed),
        cmocka_unit_test(req_http10_without_host),
        cmocka_unit_test(req_keep_alive_defaults),
        cmocka_unit_test(req_higher_minor_is_11),
        cmocka_unit_test(req_absolute_form),
        cmocka_unit_test(req_options_asterisk),
        cmocka_unit_test(req_leading_empty_line),
        cmocka_unit_test(req_incremental_byte_by_byte),
        cmocka_unit_test(req_pipelined),
        cmocka_unit_test(req_methods),
        cmocka_unit_test(req_header_kinds),
        cmocka_unit_test(req_connection_upgrade),
        cmocka_unit_test(req_expect),
        cmocka_unit_test(req_body_framing_ok),
        cmocka_unit_test(req_duplicate_identical_cl),
        cmocka_unit_test(req_reject_cl_te),
        cmocka_unit_test(req_reject_differing_cl),
        cmocka_unit_test(req_reject_bad_cl),
        cmocka_unit_test(req_reject_bad_te),
        cmocka_unit_test(req_reject_obs_fold),
        cmocka_unit_test(req_reject_bare_cr_lf),
        cmocka_unit_test(req_reject_header_syntax),
        cmocka_unit_test(req_reject_control_chars),
        cmocka_unit_test(req_reject_nul),
        cmocka_unit_test(req_host),
        cmocka_unit_test(req_version),
        cmocka_unit_test(req_limits),
        cmocka_unit_test(res_status_line),
        cmocka_unit_test(res_invalid_status_lines),
        cmocka_unit_test(res_invalid_headers_are_502),
        cmocka_unit_test(res_status_line_limit),
        cmocka_unit_test(res_no_body_statuses),
        cmocka_unit_test(res_body_framing),
        cmocka_unit_test(res_http10),
        cmocka_unit_test(res_pipelined),
        cmocka_unit_test(misc_helpers),
        cmocka_unit_test(chunked_basic),
        cmocka_unit_test(chunked_spans),
        cmocka_unit_test(chunked_extensions),
        cmocka_unit_test(chunked_trailers),
        cmocka_unit_test(chunked_invalid_sizes),
        cmocka_unit_test(chunked_bad_data_end),
        cmocka_unit_test(chunked_done_detection),
        cmocka_unit_test(hw_bounds),
        cmocka_unit_test(chunked_reframe),
        cmocka_unit_test(path_normalize),
        cmocka_unit_test(head_scan),
        cmocka_unit_test(underscore_headers),
        cmocka_unit_test(request_strict_cl_list_and_host),
        cmocka_unit_test(test_every_byte_in_host_and_value),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
