/* obs/alog.c: the JSON-lines writers of the access and audit logs. See obs.h. */
#include "obs.h"

#include "core/fmt.h"
#include "core/log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct obs_alog {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    char *queue[OBS_ALOG_QUEUE];
    size_t qlen[OBS_ALOG_QUEUE];
    unsigned head, count;
    bool stop, reopen;
    int fd;
    bool own_fd;
    char *path;
    atomic_uint_fast64_t dropped;
    _Atomic int64_t warned_at;      /* second of the last "dropping lines" warning */
};

static int open_path(const char *path, bool *own)
{
    if (!strcmp(path, "stdout")) {
        *own = false;
        return STDOUT_FILENO;
    }
    if (!strcmp(path, "stderr")) {
        *own = false;
        return STDERR_FILENO;
    }
    *own = true;
    return open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
}

static void write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;             /* nowhere to report it but the log itself */
        p += w;
        n -= (size_t)w;
    }
}

static void *writer(void *arg)
{
    struct obs_alog *l = arg;
    pthread_mutex_lock(&l->mu);
    for (;;) {
        while (!l->count && !l->stop && !l->reopen)
            pthread_cond_wait(&l->cv, &l->mu);
        if (l->reopen) {
            l->reopen = false;
            if (l->own_fd) {
                bool own;
                int fd = open_path(l->path, &own);
                if (fd >= 0) {
                    close(l->fd);
                    l->fd = fd;
                }
            }
        }
        if (!l->count && l->stop)
            break;
        if (!l->count)
            continue;
        char *buf = l->queue[l->head];
        size_t len = l->qlen[l->head];
        l->head = (l->head + 1) % OBS_ALOG_QUEUE;
        l->count--;
        int fd = l->fd;
        pthread_mutex_unlock(&l->mu);
        write_all(fd, buf, len);
        free(buf);
        pthread_mutex_lock(&l->mu);
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

struct obs_alog *obs_alog_open(const char *path, char *err, size_t errlen)
{
    struct obs_alog *l = calloc(1, sizeof *l);
    if (!l || !(l->path = strdup(path))) {
        free(l);
        snprintf(err, errlen, "%s: out of memory", path);
        return NULL;
    }
    l->fd = open_path(path, &l->own_fd);
    if (l->fd < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        free(l->path);
        free(l);
        return NULL;
    }
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv, NULL);
    int rc = pthread_create(&l->thread, NULL, writer, l);
    if (rc) {
        snprintf(err, errlen, "%s: writer thread: %s", path, strerror(rc));
        if (l->own_fd)
            close(l->fd);
        free(l->path);
        free(l);
        return NULL;
    }
    return l;
}

void obs_alog_reopen(struct obs_alog *l)
{
    if (!l)
        return;
    pthread_mutex_lock(&l->mu);
    l->reopen = true;
    pthread_cond_signal(&l->cv);
    pthread_mutex_unlock(&l->mu);
}

#define ALOG_CLOSE_MS 5000      /* how long obs_alog_close waits for a blocked writer */

void obs_alog_close(struct obs_alog *l)
{
    if (!l)
        return;
    pthread_mutex_lock(&l->mu);
    l->stop = true;
    pthread_cond_signal(&l->cv);
    unsigned queued = l->count;
    pthread_mutex_unlock(&l->mu);
    /* A writer blocked on a pipe nobody reads would hold up the stop (or a
     * reload) forever: give it ALOG_CLOSE_MS, then leave it behind with what
     * it holds (the process is exiting, or the log was replaced). */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ALOG_CLOSE_MS / 1000;
    ts.tv_nsec += (long)(ALOG_CLOSE_MS % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    if (pthread_timedjoin_np(l->thread, NULL, &ts) != 0) {
        log_error("%s: the writer has been blocked for %d ms (a pipe nobody reads?); "
                  "leaving it behind with %u buffers not written", l->path, ALOG_CLOSE_MS, queued);
        pthread_detach(l->thread);
        return;                 /* l stays allocated: the writer still uses it */
    }
    if (l->own_fd)
        close(l->fd);
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->cv);
    free(l->path);
    free(l);
}

uint64_t obs_alog_dropped(const struct obs_alog *l)
{
    return l ? atomic_load_explicit(&((struct obs_alog *)l)->dropped, memory_order_relaxed) : 0;
}

void obs_alog_buf_init(struct obs_alog_buf *b, struct obs_alog *l)
{
    memset(b, 0, sizeof *b);
    b->log = l;
}

void obs_alog_buf_free(struct obs_alog_buf *b)
{
    free(b->data);
    b->data = NULL;
}

void obs_alog_flush(struct obs_alog_buf *b)
{
    if (!b->log || !b->len)
        return;
    struct obs_alog *l = b->log;
    bool queued = false;
    pthread_mutex_lock(&l->mu);
    if (l->count < OBS_ALOG_QUEUE && !l->stop) {
        unsigned slot = (l->head + l->count) % OBS_ALOG_QUEUE;
        l->queue[slot] = b->data;
        l->qlen[slot] = b->len;
        l->count++;
        b->data = NULL;
        queued = true;
    }
    pthread_mutex_unlock(&l->mu);
    if (queued)                 /* after unlocking: the writer need not wait for our lock */
        pthread_cond_signal(&l->cv);
    if (b->data) {              /* queue full: drop these lines, count them */
        size_t lines = 0;
        for (size_t i = 0; i < b->len; i++)
            lines += b->data[i] == '\n';
        atomic_fetch_add_explicit(&l->dropped, lines, memory_order_relaxed);
        int64_t now = (int64_t)time(NULL), last = atomic_load(&l->warned_at);
        if (now != last && atomic_compare_exchange_strong(&l->warned_at, &last, now))
            log_warn("%s: the writer is behind, %zu lines dropped (%llu in all)", l->path, lines,
                     (unsigned long long)atomic_load(&l->dropped));
    }
    b->len = 0;
}

/* Bytes a JSON string can hold as they are: printable ASCII but '"' and '\\'. */
static const unsigned char json_plain[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
};

/* Whether none of 8 bytes needs escaping: each is in 0x20..0x7e and is not
 * '"' or '\\'. The classic "has a byte less than n" test, (v - n*ones) &
 * ~v & highs, is exact for whether any byte qualifies (n <= 0x80). */
static inline int plain8(uint64_t v)
{
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    uint64_t q = v ^ (ones * '"'), b = v ^ (ones * '\\'), d = v ^ (ones * 0x7f);
    uint64_t bad = ((v - ones * 0x20) & ~v) | ((q - ones) & ~q) | ((b - ones) & ~b) |
                   ((d - ones) & ~d) | v;
    return (bad & highs) == 0;
}

/* Length of the well-formed UTF-8 sequence (RFC 3629: no overlong forms, no
 * surrogates, nothing above U+10FFFF) of 2 to 4 bytes at s, or 0. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    unsigned char lo = 0x80, hi = 0xbf;     /* the allowed range of the second byte */
    if (c >= 0xc2 && c <= 0xdf)
        len = 2;
    else if (c >= 0xe0 && c <= 0xef)
        len = 3, lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
    else if (c >= 0xf0 && c <= 0xf4)
        len = 4, lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
    else
        return 0;
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    return len;
}

/* Append s as the body of a JSON string (escaped). Plain bytes go 8 at a
 * time: most values (ids, addresses, paths) have nothing to escape.
 * Well-formed UTF-8 is kept as it is; any other byte that is not printable
 * ASCII, and '"' and '\\', are escaped (a stray byte >= 0x80 as \u00XX). */
static size_t json_str(char *o, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t k = 0, i = 0;
    while (i < n) {
        uint64_t v;
        if (i + 8 <= n && (memcpy(&v, s + i, 8), plain8(v))) {
            memcpy(o + k, &v, 8);
            i += 8;
            k += 8;
            continue;
        }
        unsigned char c = (unsigned char)s[i];
        size_t u = c >= 0x80 ? utf8_len((const unsigned char *)s + i, n - i) : 0;
        if (u) {
            memcpy(o + k, s + i, u);
            k += u;
            i += u;
            continue;
        }
        i++;
        if (json_plain[c]) {
            o[k++] = (char)c;
        } else if (c == '"' || c == '\\') {
            o[k++] = '\\';
            o[k++] = (char)c;
        } else {
            o[k++] = '\\';
            o[k++] = 'u';
            o[k++] = '0';
            o[k++] = '0';
            o[k++] = hex[c >> 4];
            o[k++] = hex[c & 15];
        }
    }
    return k;
}

/* Microseconds as milliseconds with three decimals: 1234567 -> "1234.567". */
static size_t put_ms(char *o, uint64_t us)
{
    size_t k = fmt_u64(o, us / 1000);
    unsigned f = (unsigned)(us % 1000);
    o[k++] = '.';
    o[k++] = (char)('0' + f / 100);
    o[k++] = (char)('0' + f / 10 % 10);
    o[k++] = (char)('0' + f % 10);
    return k;
}

/* "2026-11-22T05:30:00.123Z", with the part up to the second cached per second. */
static size_t put_time(struct obs_alog_buf *b, char *o)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (ts.tv_sec != b->second) {
        struct tm tm;
        gmtime_r(&ts.tv_sec, &tm);
        strftime(b->stamp, sizeof b->stamp, "%Y-%m-%dT%H:%M:%S", &tm);
        b->second = ts.tv_sec;
    }
    unsigned ms = (unsigned)(ts.tv_nsec / 1000000);
    memcpy(o, b->stamp, 19);
    o[19] = '.';
    o[20] = (char)('0' + ms / 100);
    o[21] = (char)('0' + ms / 10 % 10);
    o[22] = (char)('0' + ms % 10);
    o[23] = 'Z';
    return 24;
}

#define ALOG_MAX_FIELD 512      /* longer values (paths) are cut in the log */
#define ALOG_FIXED 1024         /* a line's names, numbers and punctuation, with room */

/* Output bytes a string field can take: cut at ALOG_MAX_FIELD input bytes,
 * at most 6 output bytes ("\u00XX") for each. */
_Static_assert(ALOG_FIXED + 13 * 6 * ALOG_MAX_FIELD <= OBS_ALOG_BUF,
               "a line of up to 13 string fields fits in an empty buffer");
static size_t room(size_t n) { return 6 * (n < ALOG_MAX_FIELD ? n : ALOG_MAX_FIELD); }
static size_t sroom(const char *s) { return s ? room(strlen(s)) : 0; }

/* Make sure `need` bytes fit in b's buffer (handing a full one over first).
 * False without memory: the line is not written. */
static bool reserve(struct obs_alog_buf *b, size_t need)
{
    if (b->len + need > OBS_ALOG_BUF)
        obs_alog_flush(b);
    if (!b->data && !(b->data = malloc(OBS_ALOG_BUF)))
        return false;
    return true;
}

void obs_alog_write(struct obs_alog_buf *b, const struct obs_alog_entry *e)
{
    if (!b->log)
        return;
    size_t need = ALOG_FIXED + room(e->request_id_len) + sroom(e->client) + room(e->method_len) +
                  room(e->path_len) + sroom(e->route) + sroom(e->upstream) + sroom(e->server);
    if (!reserve(b, need))
        return;
    char *o = b->data + b->len;
    size_t k = 0;
#define LIT(s) (memcpy(o + k, s, sizeof(s) - 1), k += sizeof(s) - 1)
#define STR(p, n) (k += json_str(o + k, (p), (n) < ALOG_MAX_FIELD ? (n) : ALOG_MAX_FIELD))
#define CSTR(p) STR((p), strlen(p))
    /* formatted by hand: snprintf was most of the log's cost per request */
    LIT("{\"time\":\"");
    k += put_time(b, o + k);
    LIT("\",\"request_id\":\"");
    STR(e->request_id, e->request_id_len);
    LIT("\",\"client\":\"");
    CSTR(e->client);
    LIT("\",\"method\":\"");
    STR(e->method, e->method_len);
    LIT("\",\"path\":\"");
    STR(e->path, e->path_len);
    LIT("\",\"route\":\"");
    CSTR(e->route);
    LIT("\",\"status\":");
    k += fmt_u64(o + k, e->status > 0 ? (uint64_t)e->status : 0);
    LIT(",\"bytes_in\":");
    k += fmt_u64(o + k, e->bytes_in);
    LIT(",\"bytes_out\":");
    k += fmt_u64(o + k, e->bytes_out);
    LIT(",\"duration_ms\":");
    k += put_ms(o + k, e->duration_us);
    LIT(",\"upstream_ms\":");
    if (e->upstream_us)
        k += put_ms(o + k, e->upstream_us);
    else
        LIT("null");
    LIT(",\"upstream\":");
    if (e->upstream) {
        LIT("\"");
        CSTR(e->upstream);
        LIT("\"");
    } else {
        LIT("null");
    }
    LIT(",\"server\":");
    if (e->server) {
        LIT("\"");
        CSTR(e->server);
        LIT("\"");
    } else {
        LIT("null");
    }
    LIT(",\"cache\":");
    if (e->cache) {
        LIT("\"");
        CSTR(e->cache);
        LIT("\"");
    } else {
        LIT("null");
    }
    LIT(",\"rate_limit\":null}\n");
#undef LIT
#undef STR
#undef CSTR
    b->len += k;
}

/* ---------------------------------------------------------------- audit */

const char *obs_audit_outcome(int status)
{
    if (status == 499)
        return "aborted";
    if (status == 401 || status == 403 || status == 407 || status == 429)
        return "denied";
    if (status >= 100 && status < 400)
        return "success";
    return "failure";
}

static int b64val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

size_t obs_basic_user(const char *v, size_t len, char *out, size_t outlen)
{
    /* "Basic" 1*SP token68 (RFC 7617); the scheme is case-insensitive */
    if (len < 6 || strncasecmp(v, "basic ", 6) != 0)
        return 0;
    size_t i = 6;
    while (i < len && v[i] == ' ')
        i++;
    size_t n = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (; i < len; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c == '=')
            break;
        int d = b64val(c);
        if (d < 0)
            return 0;
        acc = (acc << 6) | (uint32_t)d;
        bits += 6;
        if (bits < 8)
            continue;
        bits -= 8;
        char ch = (char)((acc >> bits) & 0xff);
        if (ch == ':')
            return n;               /* the rest is the password: never decoded */
        if (n < outlen)
            out[n] = ch;
        n++;
        if (n > 4096)               /* a bound on the work for any input */
            return 0;
    }
    return 0;                       /* no ':': not user:password */
}

void obs_audit_write(struct obs_alog_buf *b, const struct obs_audit_entry *e)
{
    if (!b->log)
        return;
    size_t need = ALOG_FIXED + room(e->request_id_len) + sroom(e->client) +
                  room(e->forwarded_for_len) + room(e->user_len) + room(e->user_agent_len) +
                  room(e->host_len) + room(e->method_len) + room(e->path_len) + sroom(e->route) +
                  sroom(e->upstream) + sroom(e->server);
    if (!reserve(b, need))
        return;
    char *o = b->data + b->len;
    size_t k = 0;
#define LIT(s) (memcpy(o + k, s, sizeof(s) - 1), k += sizeof(s) - 1)
#define STR(p, n) (k += json_str(o + k, (p), (n) < ALOG_MAX_FIELD ? (n) : ALOG_MAX_FIELD))
#define OPT(p, n)                                                                  \
    do {                                                                           \
        if (p) {                                                                   \
            LIT("\"");                                                             \
            STR((p), (n));                                                         \
            LIT("\"");                                                             \
        } else {                                                                   \
            LIT("null");                                                           \
        }                                                                          \
    } while (0)
    LIT("{\"time\":\"");
    k += put_time(b, o + k);
    LIT("\",\"request_id\":\"");
    STR(e->request_id, e->request_id_len);
    LIT("\",\"client\":\"");
    STR(e->client, strlen(e->client));
    LIT("\",\"forwarded_for\":");
    OPT(e->forwarded_for, e->forwarded_for_len);
    LIT(",\"user\":");
    OPT(e->user, e->user_len);
    LIT(",\"user_agent\":");
    OPT(e->user_agent, e->user_agent_len);
    LIT(",\"method\":\"");
    STR(e->method, e->method_len);
    LIT("\",\"host\":");
    OPT(e->host, e->host_len);
    LIT(",\"path\":\"");
    STR(e->path, e->path_len);
    LIT("\",\"route\":\"");
    STR(e->route, strlen(e->route));
    LIT("\",\"upstream\":");
    OPT(e->upstream, e->upstream ? strlen(e->upstream) : 0);
    LIT(",\"server\":");
    OPT(e->server, e->server ? strlen(e->server) : 0);
    LIT(",\"status\":");
    k += fmt_u64(o + k, e->status > 0 ? (uint64_t)e->status : 0);
    LIT(",\"outcome\":\"");
    const char *oc = obs_audit_outcome(e->status);
    memcpy(o + k, oc, strlen(oc));
    k += strlen(oc);
    LIT("\",\"bytes_in\":");
    k += fmt_u64(o + k, e->bytes_in);
    LIT(",\"bytes_out\":");
    k += fmt_u64(o + k, e->bytes_out);
    LIT(",\"duration_ms\":");
    k += put_ms(o + k, e->duration_us);
    LIT("}\n");
#undef LIT
#undef STR
#undef OPT
    b->len += k;
}
