/* pg/buf.c: growable byte buffers, message writing, sockets. */
#include "pg_int.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static bool pgb_reserve(struct pgbuf *b, size_t n)
{
    if (b->cap - b->end >= n)
        return true;
    if (b->start) {
        memmove(b->d, b->d + b->start, b->end - b->start);
        b->end -= b->start;
        b->start = 0;
        if (b->cap - b->end >= n)
            return true;
    }
    size_t need = (size_t)b->end + n, cap = b->cap ? b->cap : 8192;
    if (need > (size_t)PG_MAX_MSG + (4u << 20)) {
        b->oom = true;
        return false;
    }
    while (cap < need)
        cap *= 2;
    uint8_t *d = realloc(b->d, cap);
    if (!d) {
        b->oom = true;
        return false;
    }
    b->d = d;
    b->cap = (uint32_t)cap;
    return true;
}

void pgb_consume(struct pgbuf *b, size_t n)
{
    b->start += (uint32_t)n;
    if (b->start == b->end)
        b->start = b->end = 0;
}

void pgb_put(struct pgbuf *b, const void *p, size_t n)
{
    if (!pgb_reserve(b, n))
        return;
    memcpy(b->d + b->end, p, n);
    b->end += (uint32_t)n;
}

/* Free the memory of an empty buffer that grew large (idle clients stay small). */
void pgb_trim(struct pgbuf *b)
{
    if (b->start == b->end && b->cap > 65536) {
        free(b->d);
        b->d = NULL;
        b->cap = b->start = b->end = 0;
    }
}

void pgb_free(struct pgbuf *b)
{
    free(b->d);
    memset(b, 0, sizeof *b);
}

void pgb_u32(struct pgbuf *b, uint32_t v)
{
    uint8_t x[4] = { (uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v };
    pgb_put(b, x, 4);
}

void pgb_str(struct pgbuf *b, const char *s) { pgb_put(b, s, strlen(s) + 1); }

/* Start a typed message; returns the offset of its length field. */
size_t pgb_begin(struct pgbuf *b, char type)
{
    pgb_put(b, &type, 1);
    size_t off = b->end;
    pgb_u32(b, 0);
    return off;
}

void pgb_end(struct pgbuf *b, size_t off)
{
    if (b->oom)
        return;
    uint32_t len = b->end - (uint32_t)off;
    b->d[off] = (uint8_t)(len >> 24);
    b->d[off + 1] = (uint8_t)(len >> 16);
    b->d[off + 2] = (uint8_t)(len >> 8);
    b->d[off + 3] = (uint8_t)len;
}

void pgb_error(struct pgbuf *b, const char *severity, const char *code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    size_t o = pgb_begin(b, 'E');
    pgb_put(b, "S", 1);
    pgb_str(b, severity);
    pgb_put(b, "V", 1);
    pgb_str(b, severity);
    pgb_put(b, "C", 1);
    pgb_str(b, code);
    pgb_put(b, "M", 1);
    pgb_str(b, msg);
    pgb_put(b, "", 1);
    pgb_end(b, o);
}

uint64_t pg_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void pg_set_nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* Read what is there into b (growing for a message in progress). 1: got
 * bytes or nothing yet (EAGAIN), 0: EOF, -1: error. */
int pg_sock_read(int fd, SSL *ssl, struct pgbuf *b, bool *can_read, bool hup, size_t limit)
{
    while (*can_read && pgb_len(b) < limit) {
        if (!pgb_reserve(b, 16384))
            return -1;
        size_t room = b->cap - b->end;
        ssize_t n;
        if (ssl) {
            ERR_clear_error();
            int r = SSL_read(ssl, b->d + b->end, (int)(room > INT32_MAX ? INT32_MAX : room));
            if (r <= 0) {
                int e = SSL_get_error(ssl, r);
                if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                    *can_read = false;
                    return 1;
                }
                return e == SSL_ERROR_ZERO_RETURN ? 0 : -1;
            }
            n = r;
        } else {
            n = recv(fd, b->d + b->end, room, 0);   /* not read(): less VFS on the way */
            if (n < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK) {
                    *can_read = false;
                    return 1;
                }
                if (errno == EINTR)
                    continue;
                return -1;
            }
            if (n == 0)
                return 0;
        }
        b->end += (uint32_t)n;
        if ((size_t)n < room && !ssl && !hup) {
            /* a short read: the socket is drained (edge-triggered). Not when
             * the peer closed: its FIN came with the same edge as the data,
             * and no other edge will tell us to read the EOF */
            *can_read = false;
            return 1;
        }
    }
    return 1;
}

/* How much to hold before processing: `base`, or the whole of a larger
 * message whose head is already in b. */
size_t pg_want_bytes(const struct pgbuf *b, size_t base)
{
    if (pgb_len(b) < 5)
        return base;
    const uint8_t *h = pgb_head(b);
    size_t ml = ((size_t)h[1] << 24 | (size_t)h[2] << 16 | (size_t)h[3] << 8 | h[4]) + 1;
    return ml > base ? ml : base;
}

/* Write what b holds. 0: all or blocked, -1: error. */
int pg_sock_write(int fd, SSL *ssl, struct pgbuf *b, bool *can_write)
{
    while (pgb_len(b) && *can_write) {
        ssize_t n;
        if (ssl) {
            ERR_clear_error();
            size_t len = pgb_len(b);
            int r = SSL_write(ssl, pgb_head(b), (int)(len > INT32_MAX ? INT32_MAX : len));
            if (r <= 0) {
                int e = SSL_get_error(ssl, r);
                if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                    *can_write = false;
                    return 0;
                }
                return -1;
            }
            n = r;
        } else {
            n = send(fd, pgb_head(b), pgb_len(b), MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK) {
                    *can_write = false;
                    return 0;
                }
                if (errno == EINTR)
                    continue;
                return -1;
            }
        }
        pgb_consume(b, (size_t)n);
    }
    return 0;
}
