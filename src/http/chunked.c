/* http/chunked.c: the chunked transfer coding (RFC 9112 7.1): the incremental
 * decoder and the canonical re-framing on top of it. See http.h. */
#include "http_int.h"

/* ---- chunked decoder ---- */

enum {
    CH_SIZE0,       /* first hex digit */
    CH_SIZE,        /* more hex digits */
    CH_EXT_BWS,     /* whitespace after the size or an extension part */
    CH_EXT_NAME0,   /* after ';' and BWS: first char of ext name */
    CH_EXT_NAME,
    CH_EXT_NAME_BWS, /* whitespace after an ext name: "=" may follow */
    CH_EXT_EQ_BWS,  /* after '=' */
    CH_EXT_VAL,     /* token value */
    CH_EXT_QUOTED,
    CH_EXT_QESC,
    CH_SIZE_LF,
    CH_DATA,
    CH_DATA_CR,
    CH_DATA_LF,
    CH_TRAILER0,    /* start of a trailer line, or the final CRLF */
    CH_TRAILER_NAME,
    CH_TRAILER_VAL,
    CH_TRAILER_LF,
    CH_FINAL_LF,
    CH_DONE,
};

#define CH_MAX_LINE 4096        /* a size line with its extensions */
#define CH_MAX_TRAILERS 16384   /* all trailer lines together */

void http_chunked_init(struct http_chunked *c)
{
    memset(c, 0, sizeof *c);
    c->state = CH_SIZE0;
}

bool http_chunked_done(const struct http_chunked *c) { return c->state == CH_DONE; }

long http_chunked_feed(struct http_chunked *c, const char *in, size_t len,
                       size_t *data_off, size_t *data_len)
{
    size_t i = 0;
    *data_len = 0;
    *data_off = 0;
    while (i < len && c->state != CH_DONE) {
        unsigned char ch = (unsigned char)in[i];
        if (c->state == CH_DATA) {
            size_t n = len - i;
            if (n > c->remaining)
                n = (size_t)c->remaining;
            *data_off = i;
            *data_len = n;
            c->remaining -= n;
            if (c->remaining == 0)
                c->state = CH_DATA_CR;
            return (long)(i + n);
        }
        if (c->state <= CH_SIZE_LF && ++c->line > CH_MAX_LINE)
            return HTTP_ERROR;
        if (c->state >= CH_TRAILER0 && c->state <= CH_FINAL_LF && ++c->trailer_bytes > CH_MAX_TRAILERS)
            return HTTP_ERROR;
        switch (c->state) {
        case CH_SIZE0:
        case CH_SIZE: {
            int h = hexval(ch);
            if (h >= 0) {
                /* leading zeros are valid and do not count: the bound keeps
                 * sizes below 2^60 */
                if ((c->remaining || h) && ++c->digits > 15)
                    return HTTP_ERROR;
                c->remaining = (c->remaining << 4) | (uint64_t)h;
                c->state = CH_SIZE;
                break;
            }
            if (c->state == CH_SIZE0)
                return HTTP_ERROR;
            if (ch == '\r') { c->state = CH_SIZE_LF; break; }
            if (ch == ';') { c->state = CH_EXT_NAME0; break; }
            if (ch == ' ' || ch == '\t') { c->state = CH_EXT_BWS; break; }
            return HTTP_ERROR;
        }
        case CH_EXT_BWS:
            if (ch == ' ' || ch == '\t') break;
            if (ch == ';') { c->state = CH_EXT_NAME0; break; }
            if (ch == '\r') { c->state = CH_SIZE_LF; break; }
            return HTTP_ERROR;
        case CH_EXT_NAME0:
            if (ch == ' ' || ch == '\t') break;
            if (!tchar[ch]) return HTTP_ERROR;
            c->state = CH_EXT_NAME;
            break;
        case CH_EXT_NAME:
            if (tchar[ch]) break;
            if (ch == '=') { c->state = CH_EXT_EQ_BWS; break; }
            if (ch == ';') { c->state = CH_EXT_NAME0; break; }
            if (ch == '\r') { c->state = CH_SIZE_LF; break; }
            if (ch == ' ' || ch == '\t') { c->state = CH_EXT_NAME_BWS; break; }
            return HTTP_ERROR;
        case CH_EXT_NAME_BWS:
            if (ch == ' ' || ch == '\t') break;
            if (ch == '=') { c->state = CH_EXT_EQ_BWS; break; }
            if (ch == ';') { c->state = CH_EXT_NAME0; break; }
            if (ch == '\r') { c->state = CH_SIZE_LF; break; }
            return HTTP_ERROR;
        case CH_EXT_EQ_BWS:
            if (ch == ' ' || ch == '\t') break;
            if (ch == '"') { c->state = CH_EXT_QUOTED; break; }
            if (!tchar[ch]) return HTTP_ERROR;
            c->state = CH_EXT_VAL;
            break;
        case CH_EXT_VAL:
            if (tchar[ch]) break;
            if (ch == ';') { c->state = CH_EXT_NAME0; break; }
            if (ch == '\r') { c->state = CH_SIZE_LF; break; }
            if (ch == ' ' || ch == '\t') { c->state = CH_EXT_BWS; break; }
            return HTTP_ERROR;
        case CH_EXT_QUOTED:
            /* qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text */
            if (ch == '"') { c->state = CH_EXT_BWS; break; }
            if (ch == '\\') { c->state = CH_EXT_QESC; break; }
            if (ch == '\t' || (ch >= 0x20 && ch != 0x7f)) break;
            return HTTP_ERROR;
        case CH_EXT_QESC:
            if (ch == '\t' || (ch >= 0x20 && ch != 0x7f)) { c->state = CH_EXT_QUOTED; break; }
            return HTTP_ERROR;
        case CH_SIZE_LF:
            if (ch != '\n') return HTTP_ERROR;
            c->line = 0;
            c->digits = 0;
            if (c->remaining == 0) {
                c->state = CH_TRAILER0;
            } else {
                if (c->total + c->remaining < c->total)
                    return HTTP_ERROR;
                c->total += c->remaining;
                c->state = CH_DATA;
            }
            break;
        case CH_DATA_CR:
            if (ch != '\r') return HTTP_ERROR;
            c->state = CH_DATA_LF;
            break;
        case CH_DATA_LF:
            if (ch != '\n') return HTTP_ERROR;
            c->state = CH_SIZE0;
            c->remaining = 0;
            break;
        case CH_TRAILER0:
            if (ch == '\r') { c->state = CH_FINAL_LF; break; }
            if (!tchar[ch]) return HTTP_ERROR;
            c->state = CH_TRAILER_NAME;
            break;
        case CH_TRAILER_NAME:
            if (tchar[ch]) break;
            if (ch == ':') { c->state = CH_TRAILER_VAL; break; }
            return HTTP_ERROR;
        case CH_TRAILER_VAL:
            if (ch == '\r') { c->state = CH_TRAILER_LF; break; }
            if (is_value_char(ch)) break;
            return HTTP_ERROR;
        case CH_TRAILER_LF:
            if (ch != '\n') return HTTP_ERROR;
            c->state = CH_TRAILER0;
            break;
        case CH_FINAL_LF:
            if (ch != '\n') return HTTP_ERROR;
            c->state = CH_DONE;
            break;
        default:
            return HTTP_ERROR;
        }
        i++;
    }
    return (long)i;
}

/* ---- chunked re-framing ---- */

bool http_trailer_allowed(const char *n, size_t len)
{
    static const char *const deny[] = {
        /* framing, routing, connection */
        "transfer-encoding", "content-length", "host", "connection", "keep-alive",
        "proxy-connection", "te", "trailer", "upgrade",
        /* request modifiers: controls and conditionals */
        "cache-control", "expect", "max-forwards", "pragma", "range", "if-match",
        "if-none-match", "if-modified-since", "if-unmodified-since", "if-range",
        /* authentication */
        "authorization", "proxy-authorization", "www-authenticate", "proxy-authenticate",
        "authentication-info", "proxy-authentication-info", "cookie", "set-cookie",
        /* response control data */
        "age", "date", "expires", "location", "retry-after", "vary", "warning",
        /* content metadata */
        "content-encoding", "content-type", "content-range", "content-location",
        "content-language",
    };
    for (size_t i = 0; i < sizeof deny / sizeof deny[0]; i++)
        if (strlen(deny[i]) == len && http_ieq(n, deny[i], len))
            return false;
    return true;
}

static size_t put_hex(char *out, uint64_t v)
{
    static const char hex[] = "0123456789abcdef";
    char tmp[16];
    size_t n = 0;
    do {
        tmp[n++] = hex[v & 15];
        v >>= 4;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

long http_chunked_reframe(struct http_chunked *c, char *buf, size_t len, bool strip,
                          size_t *out_len)
{
    size_t rp = 0, wp = 0;
    while (rp < len && c->state != CH_DONE) {
        size_t off, dlen;
        if (c->state == CH_DATA) {
            long n = http_chunked_feed(c, buf + rp, len - rp, &off, &dlen);
            if (n < 0)
                return HTTP_ERROR;
            if (wp != rp + off)
                memmove(buf + wp, buf + rp + off, dlen);
            wp += dlen;
            rp += (size_t)n;
            continue;
        }
        /* a line (size, trailer, final CRLF) or the CRLF after data: only
         * whole, so that its canonical form fits where it was */
        size_t avail = len - rp;
        size_t unit;
        if (c->state == CH_DATA_CR || c->state == CH_DATA_LF) {
            unit = c->state == CH_DATA_CR ? 2 : 1;
            if (avail < unit)
                break;
        } else {
            size_t look = avail < CH_MAX_LINE + 2 ? avail : CH_MAX_LINE + 2;
            const char *lf = memchr(buf + rp, '\n', look);
            if (!lf) {
                if (avail > CH_MAX_LINE + 1)
                    return HTTP_ERROR;
                break;
            }
            unit = (size_t)(lf - (buf + rp)) + 1;
        }
        uint8_t before = c->state;
        long n = http_chunked_feed(c, buf + rp, unit, &off, &dlen);
        if (n < 0 || (size_t)n != unit || dlen)
            return HTTP_ERROR;
        char *o = buf + wp;
        if (strip) {
            /* nothing but data */
        } else if (before == CH_DATA_CR || before == CH_DATA_LF) {
            if (c->state == CH_SIZE0) {
                o[0] = '\r';
                o[1] = '\n';
                wp += 2;
            }
        } else if (before == CH_TRAILER0 && c->state == CH_DONE) {
            o[0] = '\r';
            o[1] = '\n';
            wp += 2;
        } else if (before == CH_TRAILER0) {
            /* a trailer field, validated by the decoder: name ":" OWS value OWS */
            const char *line = buf + rp;
            const char *colon = memchr(line, ':', unit);
            size_t nlen = (size_t)(colon - line);
            const char *v = colon + 1, *ve = line + unit - 2;
            bool sp = v < ve && (*v == ' ' || *v == '\t');
            while (v < ve && (*v == ' ' || *v == '\t'))
                v++;
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            if (http_trailer_allowed(line, nlen)) {
                /* "name:" [SP] value CRLF, never longer than the raw line */
                size_t vlen = (size_t)(ve - v);
                memmove(o, line, nlen);
                o[nlen] = ':';
                size_t k = nlen + 1;
                if (sp)
                    o[k++] = ' ';
                memmove(o + k, v, vlen);
                k += vlen;
                o[k++] = '\r';
                o[k++] = '\n';
                wp += k;
            }
        } else {
            /* a size line: CH_DATA with the size in remaining, or the last chunk */
            uint64_t size = c->state == CH_DATA ? c->remaining : 0;
            char tmp[18];
            size_t k = put_hex(tmp, size);
            tmp[k++] = '\r';
            tmp[k++] = '\n';
            memcpy(o, tmp, k);
            wp += k;
        }
        rp += unit;
    }
    *out_len = wp;
    return (long)rp;
}
