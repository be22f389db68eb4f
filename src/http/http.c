/* http/http.c: see http.h. The grammar comments cite RFC 9110 / 9112. */
#include "http_int.h"

#include <string.h>

/* tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
 *         "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA */
const uint8_t http_tchar[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1,
    ['+'] = 1, ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1,
    ['~'] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1,
    ['7'] = 1, ['8'] = 1, ['9'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1,
    ['H'] = 1, ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1,
    ['O'] = 1, ['P'] = 1, ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1,
    ['V'] = 1, ['W'] = 1, ['X'] = 1, ['Y'] = 1, ['Z'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1,
    ['h'] = 1, ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1,
    ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1,
    ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1, ['z'] = 1,
};

bool http_ieq(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (lower((unsigned char)a[i]) != lower((unsigned char)b[i]))
            return false;
    return true;
}

static bool name_is(const char *p, size_t n, const char *lit, size_t litlen)
{
    return n == litlen && http_ieq(p, lit, n);
}
#define NAME_IS(p, n, lit) name_is(p, n, lit, sizeof(lit) - 1)

static uint8_t classify(const char *n, size_t len)
{
    switch (lower((unsigned char)n[0])) {
    case 'c':
        if (NAME_IS(n, len, "connection")) return HTTP_H_CONNECTION;
        if (NAME_IS(n, len, "content-length")) return HTTP_H_CONTENT_LENGTH;
        break;
    case 'e':
        if (NAME_IS(n, len, "expect")) return HTTP_H_EXPECT;
        break;
    case 'h':
        if (NAME_IS(n, len, "host")) return HTTP_H_HOST;
        if (NAME_IS(n, len, "http2-settings")) return HTTP_H_HTTP2_SETTINGS;
        break;
    case 'k':
        if (NAME_IS(n, len, "keep-alive")) return HTTP_H_KEEP_ALIVE;
        break;
    case 'p':
        if (NAME_IS(n, len, "proxy-connection")) return HTTP_H_PROXY_CONNECTION;
        break;
    case 't':
        if (NAME_IS(n, len, "transfer-encoding")) return HTTP_H_TRANSFER_ENCODING;
        if (NAME_IS(n, len, "te")) return HTTP_H_TE;
        break;
    case 'u':
        if (NAME_IS(n, len, "upgrade")) return HTTP_H_UPGRADE;
        break;
    case 'v':
        if (NAME_IS(n, len, "via")) return HTTP_H_VIA;
        break;
    case 'x':
        if (NAME_IS(n, len, "x-forwarded-for")) return HTTP_H_X_FORWARDED_FOR;
        if (NAME_IS(n, len, "x-forwarded-proto")) return HTTP_H_X_FORWARDED_PROTO;
        if (NAME_IS(n, len, "x-forwarded-host")) return HTTP_H_X_FORWARDED_HOST;
        if (NAME_IS(n, len, "x-request-id")) return HTTP_H_X_REQUEST_ID;
        break;
    }
    return HTTP_H_OTHER;
}

/* Iterate over the comma-separated elements of a list value (RFC 9110 5.6.1),
 * skipping empty elements and OWS. Returns false at the end. */
bool http_list_next(struct http_list *it, const char **elem, size_t *len)
{
    for (;;) {
        while (it->p < it->end && (*it->p == ' ' || *it->p == '\t' || *it->p == ','))
            it->p++;
        if (it->p >= it->end)
            return false;
        const char *s = it->p;
        while (it->p < it->end && *it->p != ',')
            it->p++;
        const char *e = it->p;
        while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        if (e > s) {
            *elem = s;
            *len = (size_t)(e - s);
            return true;
        }
    }
}

static int fail(struct http_msg *m, int status, const char *why)
{
    m->status = status;
    m->error = why;
    return HTTP_ERROR;
}

/* Find the end of the line starting at p: returns a pointer to its CR, or
 * NULL if the CRLF has not arrived. *bad is set for a bare CR or bare LF. */
static const char *line_end(const char *p, const char *end, bool *bad)
{
    const char *cr = memchr(p, '\r', (size_t)(end - p));
    const char *lf = memchr(p, '\n', (size_t)((cr ? cr : end) - p));
    if (lf) {                   /* LF before any CR: bare LF */
        *bad = true;
        return NULL;
    }
    if (!cr)
        return NULL;
    if (cr + 1 >= end)
        return NULL;
    if (cr[1] != '\n') {
        *bad = true;
        return NULL;
    }
    return cr;
}

/* Parse `1*DIGIT` into *out; false on empty, junk or a value >= 10^18.
 * Leading zeros are valid grammar and do not count towards the bound. */
static bool parse_u64(const char *p, size_t n, uint64_t *out)
{
    if (n == 0)
        return false;
    uint64_t v = 0;
    size_t sig = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return false;
        if (v || p[i] != '0') {
            if (++sig > 18)
                return false;
            v = v * 10 + (uint64_t)(p[i] - '0');
        }
    }
    *out = v;
    return true;
}

/* Parse the header block from p (just after the start line's CRLF).
 * Returns the head length, HTTP_AGAIN or HTTP_ERROR. */
static int parse_headers(const char *buf, const char *p, const char *end, struct http_msg *m,
                         const struct http_limits *lim, int too_big_status, int bad_status)
{
    m->nheaders = 0;
    m->has_underscore = false;
    for (;;) {
        if ((size_t)(p - buf) > lim->max_head)
            return fail(m, too_big_status, "head too large");
        if (p >= end)
            return HTTP_AGAIN;
        if (*p == '\r') {
            if (p + 1 >= end)
                return HTTP_AGAIN;
            if (p[1] != '\n')
                return fail(m, bad_status, "bare CR");
            size_t n = (size_t)(p + 2 - buf);
            if (n > lim->max_head)
                return fail(m, too_big_status, "head too large");
            return (int)n;
        }
        if (*p == '\n')
            return fail(m, bad_status, "bare LF");
        if (*p == ' ' || *p == '\t')
            return fail(m, bad_status, "obs-fold");
        const char *name = p;
        bool underscore = false;
        while (p < end && tchar[(unsigned char)*p])
            underscore |= *p++ == '_';
        if (p >= end) {
            if ((size_t)(p - buf) > lim->max_head)
                return fail(m, too_big_status, "head too large");
            return HTTP_AGAIN;
        }
        if (*p != ':') {
            if (*p == ' ' || *p == '\t')
                return fail(m, bad_status, "whitespace before colon");
            return fail(m, bad_status, "invalid header name");
        }
        if (p == name)
            return fail(m, bad_status, "empty header name");
        size_t name_len = (size_t)(p - name);
        p++;
        /* the common case in one pass: value characters up to CRLF (SP and
         * HTAB are value characters, so the whole line is valid); anything
         * else takes the exact path below, whose errors take precedence */
        const char *eol = p;
        while (eol < end && is_value_char((unsigned char)*eol))
            eol++;
        if (!(eol + 1 < end && eol[0] == '\r' && eol[1] == '\n')) {
            bool bad = false;
            eol = line_end(p, end, &bad);
            if (bad)
                return fail(m, bad_status, "bare CR or LF in header");
            if (!eol) {
                if ((size_t)(end - buf) > lim->max_head)
                    return fail(m, too_big_status, "head too large");
                return HTTP_AGAIN;
            }
            for (const char *q = p; q < eol; q++)
                if (!is_value_char((unsigned char)*q))
                    return fail(m, bad_status, "control character in header value");
        }
        const char *v = p, *ve = eol;
        while (v < ve && (*v == ' ' || *v == '\t'))
            v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        if (m->nheaders >= lim->max_headers)
            return fail(m, too_big_status, "too many headers");
        struct http_header *h = &m->headers[m->nheaders];
        h->name = name;
        h->name_len = (uint32_t)name_len;
        h->value = v;
        h->value_len = (uint32_t)(ve - v);
        m->kinds[m->nheaders] = underscore ? HTTP_H_UNDERSCORE : classify(name, name_len);
        m->has_underscore |= underscore;
        m->nheaders++;
        p = eol + 2;
    }
}

/* Interpret the framing and connection headers common to both directions.
 * `is_request` selects the stricter request rules. */
static int interpret(struct http_msg *m, bool is_request, int err)
{
    bool cl_seen = false, te_chunked_last = false, te_bad = false, te_unknown = false;
    uint64_t cl = 0;
    int nchunked = 0;
    m->has_cl = m->has_te = m->conn_upgrade = m->has_upgrade = m->conn_other = false;
    bool conn_close = false, conn_keep = false;

    for (uint32_t i = 0; i < m->nheaders; i++) {
        const struct http_header *h = &m->headers[i];
        struct http_list it = { h->value, h->value + h->value_len };
        const char *e;
        size_t n;
        switch (m->kinds[i]) {
        case HTTP_H_CONTENT_LENGTH: {
            /* A list of identical values is the same length (RFC 9110 8.6);
             * anything but digits, or values that differ, is an error. */
            bool any = false;
            /* no empty list elements here: "5," or ",5" is not a length */
            for (uint32_t k = 0, elem = 0; k <= h->value_len; k++) {
                if (k == h->value_len || h->value[k] == ',') {
                    if (elem == 0)
                        return fail(m, err, "invalid Content-Length");
                    elem = 0;
                } else if (h->value[k] != ' ' && h->value[k] != '\t') {
                    elem++;
                }
            }
            while (http_list_next(&it, &e, &n)) {
                uint64_t v;
                if (!parse_u64(e, n, &v))
                    return fail(m, err, "invalid Content-Length");
                if (cl_seen && v != cl)
                    return fail(m, err, "differing Content-Length");
                cl = v;
                cl_seen = any = true;
            }
            if (!any)
                return fail(m, err, "invalid Content-Length");
            break;
        }
        case HTTP_H_TRANSFER_ENCODING:
            m->has_te = true;
            {
                bool any = false;
                while (http_list_next(&it, &e, &n)) {
                    any = true;
                    if (te_chunked_last)
                        te_bad = true;          /* a coding after chunked */
                    if (NAME_IS(e, n, "chunked")) {
                        te_chunked_last = true;
                        nchunked++;
                    } else {
                        te_chunked_last = false;
                        for (size_t k = 0; k < n; k++)
                            if (!tchar[(unsigned char)e[k]])
                                te_bad = true;
                        te_unknown = true;
                    }
                }
                if (!any)
                    te_bad = true;
            }
            break;
        case HTTP_H_CONNECTION:
            while (http_list_next(&it, &e, &n)) {
                if (NAME_IS(e, n, "close"))
                    conn_close = true;
                else if (NAME_IS(e, n, "keep-alive"))
                    conn_keep = true;
                else if (NAME_IS(e, n, "upgrade"))
                    m->conn_upgrade = true;
                else
                    m->conn_other = true;
            }
            break;
        case HTTP_H_UPGRADE:
            m->has_upgrade = true;
            break;
        default:
            break;
        }
    }

    m->has_cl = cl_seen;
    m->content_length = cl;
    m->keep_alive = m->minor >= 1 ? !conn_close : (conn_keep && !conn_close);

    if (m->has_te) {
        if (m->minor == 0 && is_request)
            return fail(m, 400, "Transfer-Encoding in HTTP/1.0");
        if (is_request) {
            if (cl_seen)
                return fail(m, 400, "Content-Length with Transfer-Encoding");
            if (te_bad || nchunked > 1 || !te_chunked_last)
                return fail(m, 400, "invalid Transfer-Encoding");
            if (te_unknown)
                return fail(m, 501, "unsupported transfer coding");
            m->body = HTTP_BODY_CHUNKED;
        } else {
            if (te_bad || nchunked > 1)
                return fail(m, err, "invalid Transfer-Encoding");
            /* RFC 9112 6.3: chunked final means chunked; otherwise the body
             * runs to the close. Content-Length is ignored (and dropped). */
            m->body = te_chunked_last ? HTTP_BODY_CHUNKED : HTTP_BODY_CLOSE;
            /* RFC 9112 6.1: TE in HTTP/1.0 means faulty framing: close after */
            m->keep_alive = m->keep_alive && m->body == HTTP_BODY_CHUNKED && !cl_seen &&
                            m->minor >= 1;
        }
    } else if (cl_seen) {
        m->body = HTTP_BODY_LENGTH;
    } else {
        m->body = is_request ? HTTP_BODY_NONE : HTTP_BODY_CLOSE;
    }
    return 0;
}

bool http_connection_lists(const struct http_msg *m, const char *name, size_t name_len)
{
    for (uint32_t i = 0; i < m->nheaders; i++) {
        if (m->kinds[i] != HTTP_H_CONNECTION)
            continue;
        struct http_list it = { m->headers[i].value, m->headers[i].value + m->headers[i].value_len };
        const char *e;
        size_t n;
        while (http_list_next(&it, &e, &n))
            if (n == name_len && http_ieq(e, name, n))
                return true;
    }
    return false;
}

/* host = uri-host [ ":" port ], uri-host = IP-literal / IPv4address / reg-name */
/* reg-name's characters (RFC 3986 3.2.2: unreserved, sub-delims and
 * pct-encoded's '%'), a table so that a host costs a load per character */
static const uint8_t reg_name_char[256] = {
    ['-'] = 1, ['.'] = 1, ['_'] = 1, ['~'] = 1, ['!'] = 1, ['$'] = 1, ['&'] = 1, ['\''] = 1,
    ['('] = 1, [')'] = 1, ['*'] = 1, ['+'] = 1, [','] = 1, [';'] = 1, ['='] = 1, ['%'] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
    ['8'] = 1, ['9'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1,
    ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1,
    ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1,
    ['y'] = 1, ['z'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1,
    ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1,
    ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1,
    ['Y'] = 1, ['Z'] = 1,
};

static bool valid_host(const char *h, size_t n)
{
    if (n == 0)
        return false;
    size_t i = 0;
    if (h[0] == '[') {
        for (i = 1; i < n && h[i] != ']'; i++) {
            unsigned char c = (unsigned char)h[i];
            if (!((c >= '0' && c <= '9') || (lower(c) >= 'a' && lower(c) <= 'f') ||
                  c == ':' || c == '.'))
                return false;
        }
        if (i >= n || i == 1)
            return false;               /* unterminated, or "[]" */
        i++;
    } else {
        if (h[0] == ':')
            return false;               /* a port without a host */
        while (i < n && reg_name_char[(unsigned char)h[i]])
            i++;
    }
    if (i == n)
        return true;
    if (h[i] != ':')
        return false;
    for (i++; i < n; i++)
        if (h[i] < '0' || h[i] > '9')
            return false;
    return true;
}

/* HTTP-version = "HTTP/" DIGIT "." DIGIT. Returns the minor version (0 or 1,
 * a higher 1.x is treated as 1.1), -1 if malformed, -2 if major != 1. */
static int parse_version(const char *p, size_t n)
{
    if (n != 8 || memcmp(p, "HTTP/", 5) != 0 || p[6] != '.' ||
        p[5] < '0' || p[5] > '9' || p[7] < '0' || p[7] > '9')
        return -1;
    if (p[5] != '1')
        return -2;
    return p[7] == '0' ? 0 : 1;
}

int http_parse_request(const char *buf, size_t len, struct http_request *req,
                       const struct http_limits *lim)
{
    struct http_msg *m = &req->m;
    const char *p = buf, *end = buf + len;
    m->status = 0;
    m->error = NULL;
    m->nheaders = 0;
    req->expect_continue = false;
    req->host = req->path = NULL;
    req->host_len = req->path_len = 0;

    /* RFC 9112 2.2: ignore at least one empty line before the request-line. */
    for (int i = 0; i < 4 && p < end && *p == '\r'; i++) {
        if (p + 1 >= end)
            return HTTP_AGAIN;
        if (p[1] != '\n')
            return fail(m, 400, "bare CR");
        p += 2;
    }
    const char *line = p;

    /* method = token */
    while (p < end && tchar[(unsigned char)*p])
        p++;
    if (p >= end)
        return (size_t)(p - line) > lim->max_request_line ? fail(m, 501, "method too long") : HTTP_AGAIN;
    if (p == line || *p != ' ')
        return fail(m, 400, "invalid method");
    req->method = line;
    req->method_len = (uint32_t)(p - line);
    p++;

    /* request-target: visible ASCII only */
    const char *t = p;
    while (p < end && (unsigned char)*p > 0x20 && (unsigned char)*p < 0x7f)
        p++;
    if ((size_t)(p - line) > lim->max_request_line)
        return fail(m, 414, "request-target too long");
    if (p >= end)
        return HTTP_AGAIN;
    if (p == t || *p != ' ')
        return fail(m, 400, "invalid request-target");
    if (memchr(t, '#', (size_t)(p - t)))
        return fail(m, 400, "fragment in request-target");   /* RFC 9112 3.2 */
    req->target = t;
    req->target_len = (uint32_t)(p - t);
    p++;

    const char *v = p;
    bool bad = false;
    const char *eol = line_end(p, end, &bad);
    if (bad)
        return fail(m, 400, "bare CR or LF in request line");
    if (!eol) {
        /* not counting a final CR whose LF has not arrived */
        size_t vn = (size_t)(end - v) - (end > v && end[-1] == '\r');
        return vn > 8 ? fail(m, 400, "invalid HTTP version") : HTTP_AGAIN;
    }
    int minor = parse_version(v, (size_t)(eol - v));
    if (minor == -1)
        return fail(m, 400, "invalid HTTP version");
    if (minor == -2)
        return fail(m, 505, "unsupported HTTP version");
    m->minor = minor;
    if ((size_t)(eol - line) > lim->max_request_line)
        return fail(m, 414, "request line too long");

    int r = parse_headers(buf, eol + 2, end, m, lim, 431, 400);
    if (r <= 0)
        return r;

    /* methods are case-sensitive (RFC 9110 9.1) */
    req->is_head = req->method_len == 4 && memcmp(req->method, "HEAD", 4) == 0;
    if (req->method_len == 7 && memcmp(req->method, "CONNECT", 7) == 0)
        return fail(m, 501, "CONNECT not supported");
    if (req->method_len == 3 && memcmp(req->method, "PRI", 3) == 0)
        return fail(m, 505, "HTTP/2 preface");

    /* request-target forms (RFC 9112 3.2) */
    if (t[0] == '/') {
        req->path = t;
        req->path_len = req->target_len;
    } else if (req->target_len == 1 && t[0] == '*') {
        if (!(req->method_len == 7 && memcmp(req->method, "OPTIONS", 7) == 0))
            return fail(m, 400, "asterisk-form only for OPTIONS");
        req->path = t;
        req->path_len = 1;
    } else if (req->target_len > 7 && (http_ieq(t, "http://", 7) ||
               (req->target_len > 8 && http_ieq(t, "https://", 8)))) {
        const char *a = t + (t[4] == ':' ? 7 : 8), *te = t + req->target_len;
        const char *slash = a;
        while (slash < te && *slash != '/' && *slash != '?')
            slash++;
        for (const char *q = a; q < slash; q++)
            if (*q == '@')
                return fail(m, 400, "userinfo in request-target");
        if (slash == a || !valid_host(a, (size_t)(slash - a)))
            return fail(m, 400, "invalid authority in request-target");
        req->host = a;
        req->host_len = (uint32_t)(slash - a);
        if (slash < te && *slash == '/') {
            req->path = slash;
            req->path_len = (uint32_t)(te - slash);
        } else {
            /* "http://h" or "http://h?q": the path is "/" */
            req->path = NULL;
            req->path_len = 0;
        }
    } else {
        return fail(m, 400, "invalid request-target");
    }

    const char *host_hdr = NULL;
    uint32_t host_hdr_len = 0;
    int nhost = 0;
    for (uint32_t i = 0; i < m->nheaders; i++) {
        switch (m->kinds[i]) {
        case HTTP_H_HOST:
            nhost++;
            host_hdr = m->headers[i].value;
            host_hdr_len = m->headers[i].value_len;
            break;
        case HTTP_H_EXPECT:
            if (NAME_IS(m->headers[i].value, m->headers[i].value_len, "100-continue"))
                req->expect_continue = true;
            else
                return fail(m, 417, "unsupported expectation");
            break;
        default:
            break;
        }
    }
    if (nhost > 1)
        return fail(m, 400, "more than one Host");
    /* An empty Host is valid (RFC 9112 3.2: a target without an authority);
     * it just names no host to route on. */
    if (nhost == 1 && host_hdr_len && !valid_host(host_hdr, host_hdr_len))
        return fail(m, 400, "invalid Host");
    if (nhost == 0 && m->minor >= 1)
        return fail(m, 400, "missing Host");
    if (!req->host && nhost == 1 && host_hdr_len) {
        req->host = host_hdr;
        req->host_len = host_hdr_len;
    }
    if (interpret(m, true, 400) < 0)
        return HTTP_ERROR;
    if (req->expect_continue && m->minor == 0)
        req->expect_continue = false;   /* RFC 9110 10.1.1: ignore for 1.0 */
    return r;
}

int http_parse_response(const char *buf, size_t len, struct http_response *res,
                        const struct http_limits *lim, bool method_head)
{
    struct http_msg *m = &res->m;
    const char *p = buf, *end = buf + len;
    m->status = 0;
    m->error = NULL;
    m->nheaders = 0;

    bool bad = false;
    const char *eol = line_end(p, end, &bad);
    if (bad)
        return fail(m, 502, "bare CR or LF in status line");
    if (!eol) {
        size_t n = len - (len > 0 && buf[len - 1] == '\r');
        return n > lim->max_request_line ? fail(m, 502, "status line too long") : HTTP_AGAIN;
    }
    if ((size_t)(eol - p) > lim->max_request_line)
        return fail(m, 502, "status line too long");
    /* status-line = HTTP-version SP status-code SP [ reason-phrase ] */
    if (eol - p < 12 || p[8] != ' ' || p[12] != ' ' ||
        p[9] < '1' || p[9] > '5' || p[10] < '0' || p[10] > '9' || p[11] < '0' || p[11] > '9') {
        /* RFC 9112 4 allows an empty reason without the final SP; accept that too */
        if (!(eol - p == 12 && p[8] == ' ' && p[9] >= '1' && p[9] <= '5' &&
              p[10] >= '0' && p[10] <= '9' && p[11] >= '0' && p[11] <= '9'))
            return fail(m, 502, "invalid status line");
    }
    int minor = parse_version(p, 8);
    if (minor < 0)
        return fail(m, 502, "invalid HTTP version in response");
    m->minor = minor;
    res->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    res->reason = eol - p > 12 ? p + 13 : eol;
    res->reason_len = (uint32_t)(eol - res->reason);
    for (const char *q = res->reason; q < eol; q++)
        if (!is_value_char((unsigned char)*q))
            return fail(m, 502, "control character in reason phrase");

    int r = parse_headers(buf, eol + 2, end, m, lim, 502, 502);
    if (r <= 0)
        return r;
    if (interpret(m, false, 502) < 0)
        return HTTP_ERROR;
    if (res->status < 200 || res->status == 204 || res->status == 304 || method_head) {
        /* No body, whatever the headers say (RFC 9112 6.3 rules 1 and 2).
         * A 304 or HEAD response's Content-Length describes the
         * representation, not this message. */
        if (res->status < 200 && m->has_te)
            return fail(m, 502, "Transfer-Encoding in 1xx");
        if (m->body == HTTP_BODY_CLOSE && res->status >= 200)
            m->keep_alive = m->keep_alive && !m->has_te;
        m->body = HTTP_BODY_NONE;
    }
    if (m->body == HTTP_BODY_CLOSE)
        m->keep_alive = false;          /* the body ends with the connection */
    return r;
}

bool http_token(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!tchar[(unsigned char)s[i]])
            return false;
    return n > 0;
}

const char *http_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 203: return "Non-Authoritative Information";
    case 204: return "No Content";
    case 205: return "Reset Content";
    case 206: return "Partial Content";
    case 300: return "Multiple Choices";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 407: return "Proxy Authentication Required";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 416: return "Range Not Satisfiable";
    case 417: return "Expectation Failed";
    case 421: return "Misdirected Request";
    case 422: return "Unprocessable Content";
    case 425: return "Too Early";
    case 426: return "Upgrade Required";
    case 428: return "Precondition Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 451: return "Unavailable For Legal Reasons";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}
