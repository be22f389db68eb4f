/* http/write.c: what portico writes and scans around the parsers: the
 * bounded head writer, head scanning, request path normalisation. See http.h. */
#include "http_int.h"

/* ---- head scanning ---- */

bool http_head_scan(const char *buf, size_t len, uint32_t *scanned, uint32_t max_request_line)
{
    size_t from = *scanned;
    if (from >= len)
        return false;
    *scanned = (uint32_t)len;
    /* the request line: its errors (method, target, 414) are found early,
     * and parsing it is bounded by max_request_line */
    if (!memchr(buf, '\n', from) && len <= (size_t)max_request_line + 16)
        return true;
    /* a blank line may end the head; start 3 back for a CRLFCRLF that
     * spans two reads */
    size_t s = from > 3 ? from - 3 : 0;
    for (const char *p = buf + s, *end = buf + len; p < end;) {
        const char *lf = memchr(p, '\n', (size_t)(end - p));
        const char *cr = memchr(p, '\r', (size_t)((lf ? lf : end) - p));
        if (cr && cr + 1 < end && cr[1] != '\n')
            return true;                        /* bare CR */
        if (!lf)
            return false;
        if (lf == buf || lf[-1] != '\r')
            return true;                        /* bare LF */
        if (lf - buf >= 3 && lf[-2] == '\n' && lf[-3] == '\r')
            return true;                        /* CRLF CRLF */
        if (lf - buf == 1)
            return true;                        /* a leading empty line */
        p = lf + 1;
    }
    return false;
}

/* ---- head writer ---- */

void http_hw_put(struct http_hw *w, const void *s, size_t n)
{
    if ((size_t)(w->end - w->p) < n) {
        w->overflow = true;
        w->end = w->p;                          /* nothing fits any more */
        return;
    }
    memcpy(w->p, s, n);
    w->p += n;
}

void http_hw_u64(struct http_hw *w, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[sizeof tmp - ++n] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    http_hw_put(w, tmp + sizeof tmp - n, n);
}

void http_hw_field(struct http_hw *w, const char *name, size_t name_len, const char *value,
                   size_t value_len)
{
    size_t n = name_len + value_len + 4;
    if ((size_t)(w->end - w->p) < n) {
        w->overflow = true;
        w->end = w->p;
        return;
    }
    char *p = w->p;
    memcpy(p, name, name_len);
    p += name_len;
    *p++ = ':';
    *p++ = ' ';
    memcpy(p, value, value_len);
    p += value_len;
    *p++ = '\r';
    *p++ = '\n';
    w->p = p;
}

void http_hw_status(struct http_hw *w, int status, const char *reason, size_t reason_len)
{
    if (status < 100 || status > 999)
        status = 502;
    char line[13] = "HTTP/1.1 000 ";
    line[9] = (char)('0' + status / 100);
    line[10] = (char)('0' + status / 10 % 10);
    line[11] = (char)('0' + status % 10);
    http_hw_put(w, line, sizeof line);
    if (!reason) {
        reason = http_reason(status);
        reason_len = strlen(reason);
    }
    http_hw_put(w, reason, reason_len);
    http_hw_lit(w, "\r\n");
}

/* ---- request paths ---- */

static bool unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '.' || c == '_' || c == '~';
}

long http_normalize_path(const char *in, size_t len, char *out, unsigned flags)
{
    const char *q = memchr(in, '?', len);
    size_t plen = q ? (size_t)(q - in) : len;
    size_t o = 0;
    /* 1. percent-decoding of unreserved characters, upper-case hex elsewhere */
    for (size_t i = 0; i < plen; i++) {
        unsigned char ch = (unsigned char)in[i];
        if (ch != '%') {
            out[o++] = (char)ch;
            continue;
        }
        if (i + 2 >= plen)
            return -1;
        int hi = hexval((unsigned char)in[i + 1]), lo = hexval((unsigned char)in[i + 2]);
        if (hi < 0 || lo < 0)
            return -1;
        unsigned char d = (unsigned char)(hi * 16 + lo);
        if (d == 0)
            return -1;
        if ((d == '/' || d == '\\') && !(flags & HTTP_PATH_ALLOW_ENCODED_SLASH))
            return -1;
        if (unreserved(d)) {
            out[o++] = (char)d;
        } else {
            static const char hex[] = "0123456789ABCDEF";
            out[o++] = '%';
            out[o++] = hex[d >> 4];
            out[o++] = hex[d & 15];
        }
        i += 2;
    }
    /* 2. dot segments (RFC 3986 5.2.4) and, optionally, empty segments, in
     * place: the output (w) never passes the segment being read (r) */
    size_t w = o;
    if (o && out[0] == '/') {
        w = 0;
        for (size_t r = 0; r < o;) {
            size_t s = r + 1, e = s;
            while (e < o && out[e] != '/')
                e++;
            size_t seg = e - s;
            bool last = e >= o;
            bool dot = seg == 1 && out[s] == '.';
            bool dotdot = seg == 2 && out[s] == '.' && out[s + 1] == '.';
            if (dotdot) {
                while (w > 0 && out[w - 1] != '/')
                    w--;
                if (w > 0)
                    w--;
            } else if (!dot && !(seg == 0 && !last && (flags & HTTP_PATH_MERGE_SLASHES))) {
                out[w++] = '/';
                memmove(out + w, out + s, seg);
                w += seg;
            }
            if (last && (dot || dotdot) && (w == 0 || out[w - 1] != '/'))
                out[w++] = '/';
            r = e;
        }
        if (w == 0)
            out[w++] = '/';
    }
    if (q) {
        memmove(out + w, q, len - plen);
        w += len - plen;
    }
    return (long)w;
}

bool http_block_field(const char *b, size_t len, const char *name, size_t nlen, const char **v,
                      size_t *vlen)
{
    const char *end = b + len;
    while (b < end) {
        const char *eol = memchr(b, '\r', (size_t)(end - b));
        if (!eol)
            break;
        if ((size_t)(eol - b) > nlen && b[nlen] == ':' && http_ieq(b, name, nlen)) {
            const char *p = b + nlen + 1;
            while (p < eol && (*p == ' ' || *p == '\t'))
                p++;
            *v = p;
            *vlen = (size_t)(eol - p);
            return true;
        }
        b = eol + 2;
    }
    return false;
}
