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
    HTTP_H_UNDERSCORE,          /* any other name with an '_' (X_Forwarded_For) */
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
    bool has_underscore;            /* a header name contains '_' */
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
/* A field in a head block of "Name: value\r\n" lines (stored or built by
 * portico, so already validated): its first value, OWS stripped. */
bool http_block_field(const char *b, size_t len, const char *name, size_t nlen, const char **v,
                      size_t *vlen);
/* Whether s is an RFC 9110 token (a field name): non-empty, tchar only. */
bool http_token(const char *s, size_t n);

/* The elements of a comma-separated list value (RFC 9110 5.6.1), without
 * empty elements and OWS: `struct http_list it = { v, v + n };` then
 * `while (http_list_next(&it, &e, &len))`. */
struct http_list { const char *p, *end; };
bool http_list_next(struct http_list *it, const char **elem, size_t *len);

/* Whether more bytes of a request head make parsing it worthwhile. The head
 * parsers are stateless and cost O(head) per call; calling one on every
 * read of a head sent in small pieces costs O(head^2). This looks only at
 * the bytes after *scanned (updated), and says yes (true) when the head may
 * be complete (a blank line), when a line is malformed (bare CR or LF: the
 * parser gives the status), or while the request line is incomplete and
 * short (its errors come early). Otherwise parsing would say HTTP_AGAIN, or
 * find an error that waits for the end of the head. Start with 0 per head. */
bool http_head_scan(const char *buf, size_t len, uint32_t *scanned, uint32_t max_request_line);

/* ---- head writer: every head portico writes goes through one of these ----
 *
 * Writes into a fixed span and never past its end: a write that does not
 * fit sets `overflow` and every later write is dropped, so building a head
 * is a straight run of calls and one check at the end. */
struct http_hw {
    char *start, *p, *end;
    bool overflow;
};

static inline void http_hw_init(struct http_hw *w, char *buf, size_t cap)
{
    w->start = w->p = buf;
    w->end = buf + cap;
    w->overflow = false;
}
static inline size_t http_hw_len(const struct http_hw *w) { return (size_t)(w->p - w->start); }
void http_hw_put(struct http_hw *w, const void *s, size_t n);
#define http_hw_lit(w, lit) http_hw_put(w, lit, sizeof(lit) - 1)
void http_hw_u64(struct http_hw *w, uint64_t v);
/* "name: value\r\n" */
void http_hw_field(struct http_hw *w, const char *name, size_t name_len, const char *value,
                   size_t value_len);
/* "HTTP/1.1 200 OK\r\n"; reason NULL: the standard phrase */
void http_hw_status(struct http_hw *w, int status, const char *reason, size_t reason_len);

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

/* Re-frame chunked bytes in canonical form, in place: only what was
 * validated goes on, never bytes the decoder tolerated. buf[0..len) holds
 * raw bytes; each complete unit (size line, data, the CRLF after data, a
 * trailer line, the final CRLF) is consumed and its canonical form written
 * at the front: "%x\r\n" sizes without leading zeros or extensions, data
 * as is, trailer fields that RFC 9110 6.5.1 allows as "name: value\r\n"
 * (others dropped). With `strip`, only the data is written (the framing is
 * removed, for an HTTP/1.0 recipient). Returns the raw bytes consumed, or
 * HTTP_ERROR; *out_len (<= the return value) is the canonical length at
 * buf[0]. A unit that has not arrived whole is left unconsumed: keep
 * buf[consumed..len) and call again with more bytes after it. */
long http_chunked_reframe(struct http_chunked *c, char *buf, size_t len, bool strip,
                          size_t *out_len);
/* Whether a trailer field may be forwarded (RFC 9110 6.5.1: not framing,
 * routing, request modifiers, authentication, response control or content
 * metadata). */
bool http_trailer_allowed(const char *name, size_t len);

/* ---- request paths ---- */

enum {
    HTTP_PATH_MERGE_SLASHES = 1,        /* "//" -> "/" */
    HTTP_PATH_ALLOW_ENCODED_SLASH = 2,  /* keep %2F and %5C instead of rejecting */
};

/* Normalise the path of an origin-form target (the part before '?', which
 * with the query after it is copied to out): percent-encoded unreserved
 * characters decoded, other percent-encodings upper-cased, dot segments
 * removed (RFC 3986 6.2.2), optionally merged slashes. Rejects (-1) a
 * malformed percent-encoding, an encoded NUL, and an encoded '/' or '\'
 * unless allowed. Returns the length written to out (at most len: the
 * result is never longer than the input), or -1. */
long http_normalize_path(const char *in, size_t len, char *out, unsigned flags);

/* Reason phrase of a status code ("Bad Request"), or "Unknown". */
const char *http_reason(int status);

#endif
