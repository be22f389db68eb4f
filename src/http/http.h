/* http/http.h: strict, zero-copy HTTP/1.1 message parsing (RFC 9110, 9112).
 *
 * The head parsers are stateless: call them again with the whole buffer when
 * more bytes arrive. They return the length of the head (> 0) when complete,
 * HTTP_AGAIN when more bytes are needed, or HTTP_ERROR with `status` set to
 * the response a server owes the client (400, 414, 431, 417, 501, 505) and
 * `error` to a short reason for logs and metrics. Parsed parts point into the
 * caller's buffer, which must stay put while they are used.
 *
 * Anything that could make two parsers disagree on where a message ends is an
 * error: Content-Length with Transfer-Encoding in a request, differing
 * Content-Length values, a transfer coding other than a lone final "chunked",
 * obs-fold, bare CR or LF, whitespace before a colon, control characters.
 *
 * The chunked decoder is incremental and keeps its state between calls.
 */
#ifndef PORTICO_HTTP_H
#define PORTICO_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HTTP_AGAIN 0
#define HTTP_ERROR (-1)

struct http_header {
    const char *name, *value;
    uint32_t name_len, value_len;
};

struct http_limits {
    uint32_t max_request_line;  /* request line or status line, without CRLF */
    uint32_t max_head;          /* the whole head including the final CRLF */
    uint32_t max_headers;       /* number of header fields */
};

enum http_body {
    HTTP_BODY_NONE,
    HTTP_BODY_LENGTH,
    HTTP_BODY_CHUNKED,
    HTTP_BODY_CLOSE,            /* responses only: delimited by close */
};

/* Header names the proxy cares about, classified once while parsing. */
enum http_hdr_kind {
    HTTP_H_OTHER = 0,
    HTTP_H_CONNECTION,
    HTTP_H_CONTENT_LENGTH,
    HTTP_H_TRANSFER_ENCODING,
    HTTP_H_HOST,
    HTTP_H_EXPECT,
    HTTP_H_UPGRADE,
    HTTP_H_KEEP_ALIVE,
    HTTP_H_PROXY_CONNECTION,
    HTTP_H_TE,
    HTTP_H_X_FORWARDED_FOR,
    HTTP_H_X_FORWARDED_PROTO,
    HTTP_H_X_FORWARDED_HOST,
    HTTP_H_X_REQUEST_ID,
    HTTP_H_VIA,
    HTTP_H_HTTP2_SETTINGS,
};

/* Fields common to requests and responses. */
struct http_msg {
    struct http_header *headers;    /* caller's array of max_headers entries */
    uint8_t *kinds;                 /* caller's array: enum http_hdr_kind per header */
    uint32_t nheaders;
    int minor;                      /* HTTP/1.minor: 0 or 1 */
    enum http_body body;
    uint64_t content_length;        /* when body == HTTP_BODY_LENGTH */
    bool keep_alive;                /* persistence after this message */
    bool conn_upgrade;              /* Connection lists "upgrade" */
    bool conn_other;                /* Connection lists a token other than close,
                                       keep-alive, upgrade: a header to drop */
    bool has_upgrade;               /* an Upgrade header is present */
    bool has_cl, has_te;
    int status;                     /* on HTTP_ERROR: the status to answer */
    const char *error;              /* on HTTP_ERROR: why */
};

struct http_request {
    struct http_msg m;
    const char *method, *target;
    uint32_t method_len, target_len;
    const char *host;               /* Host, or the authority of an absolute-form target */
    uint32_t host_len;
    const char *path;               /* origin-form path+query (from absolute-form too) */
    uint32_t path_len;
    bool expect_continue;
    bool is_head;
};

struct http_response {
    struct http_msg m;
    int status;                     /* 100..599 */
    const char *reason;
    uint32_t reason_len;
};

/* Parse a request head. `req->m.headers` and `req->m.kinds` must point to
 * arrays of lim->max_headers entries. */
int http_parse_request(const char *buf, size_t len, struct http_request *req,
                       const struct http_limits *lim);

/* Parse a response head to a request made with `method_head` (HEAD) or not.
 * Errors set m.status to 502: the upstream sent something we cannot relay. */
int http_parse_response(const char *buf, size_t len, struct http_response *res,
                        const struct http_limits *lim, bool method_head);

/* True when `name` (a header name) is listed as a token in the message's
 * Connection header(s): such a header is hop-by-hop and is not forwarded. */
bool http_connection_lists(const struct http_msg *m, const char *name, size_t name_len);

/* Case-insensitive ASCII comparison of equal-length strings. */
bool http_ieq(const char *a, const char *b, size_t n);

/* ---- chunked transfer coding (RFC 9112 section 7.1) ---- */

struct http_chunked {
    uint64_t remaining;             /* bytes left in the current chunk-data */
    uint64_t total;                 /* sum of chunk sizes so far */
    uint32_t line;                  /* bytes in the current size or trailer line */
    uint32_t trailer_bytes;
    uint8_t state;
    uint8_t digits;
};

void http_chunked_init(struct http_chunked *c);
/* Consume bytes from `in`. Returns the number consumed (>= 0) or HTTP_ERROR
 * (-1) on malformed input. When the consumed bytes end with chunk data,
 * *data_off and *data_len give that data's span within `in` (the span is
 * part of what was consumed); it stops after each data span so that a caller
 * that strips the framing sees every piece. *data_len is 0 otherwise. */
long http_chunked_feed(struct http_chunked *c, const char *in, size_t len,
                       size_t *data_off, size_t *data_len);
bool http_chunked_done(const struct http_chunked *c);

/* Reason phrase of a status code ("Bad Request"), or "Unknown". */
const char *http_reason(int status);

#endif
