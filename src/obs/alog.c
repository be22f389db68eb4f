/* obs/alog.c: the access log writer. See obs.h. */
#include "obs.h"

#include "core/fmt.h"

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
        snprintf(err, errlen, "access log: out of memory");
        return NULL;
    }
    l->fd = open_path(path, &l->own_fd);
    if (l->fd < 0) {
        snprintf(err, errlen, "access log %s: %s", path, strerror(errno));
        free(l->path);
        free(l);
        return NULL;
    }
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv, NULL);
    int rc = pthread_create(&l->thread, NULL, writer, l);
    if (rc) {
        snprintf(err, errlen, "access log thread: %s", strerror(rc));
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

void obs_alog_close(struct obs_alog *l)
{
    if (!l)
        return;
    pthread_mutex_lock(&l->mu);
    l->stop = true;
    pthread_cond_signal(&l->cv);
    pthread_mutex_unlock(&l->mu);
    pthread_join(l->thread, NULL);
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
    pthread_mutex_lock(&l->mu);
    if (l->count < OBS_ALOG_QUEUE && !l->stop) {
        unsigned slot = (l->head + l->count) % OBS_ALOG_QUEUE;
        l->queue[slot] = b->data;
        l->qlen[slot] = b->len;
        l->count++;
        b->data = NULL;
        pthread_cond_signal(&l->cv);
    }
    pthread_mutex_unlock(&l->mu);
    if (b->data) {              /* queue full: drop these lines, count them */
        size_t lines = 0;
        for (size_t i = 0; i < b->len; i++)
            lines += b->data[i] == '\n';
        atomic_fetch_add_explicit(&l->dropped, lines, memory_order_relaxed);
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

/* Append s as the body of a JSON string (escaped). Plain bytes go 8 at a
 * time: most values (ids, addresses, paths) have nothing to escape. */
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
        unsigned char c = (unsigned char)s[i++];
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

#define ALOG_MAX_FIELD 512      /* longer values (paths) are cut in the log */
#define ALOG_MAX_LINE (ALOG_MAX_FIELD * 6 * 2 + 1024)

void obs_alog_write(struct obs_alog_buf *b, const struct obs_alog_entry *e)
{
    if (!b->log)
        return;
    if (b->len + ALOG_MAX_LINE > OBS_ALOG_BUF)
        obs_alog_flush(b);
    if (!b->data && !(b->data = malloc(OBS_ALOG_BUF)))
        return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (ts.tv_sec != b->second) {
        struct tm tm;
        gmtime_r(&ts.tv_sec, &tm);
        strftime(b->stamp, sizeof b->stamp, "%Y-%m-%dT%H:%M:%S", &tm);
        b->second = ts.tv_sec;
    }
    char *o = b->data + b->len;
    size_t k = 0;
#define LIT(s) (memcpy(o + k, s, sizeof(s) - 1), k += sizeof(s) - 1)
#define STR(p, n) (k += json_str(o + k, (p), (n) < ALOG_MAX_FIELD ? (n) : ALOG_MAX_FIELD))
#define CSTR(p) STR((p), strlen(p))
    /* formatted by hand: snprintf was most of the log's cost per request */
    unsigned ms = (unsigned)(ts.tv_nsec / 1000000);
    LIT("{\"time\":\"");
    memcpy(o + k, b->stamp, 19);
    k += 19;
    o[k++] = '.';
    o[k++] = (char)('0' + ms / 100);
    o[k++] = (char)('0' + ms / 10 % 10);
    o[k++] = (char)('0' + ms % 10);
    LIT("Z\",\"request_id\":\"");
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
    LIT(",\"cache\":null,\"rate_limit\":null}\n");
#undef LIT
#undef STR
#undef CSTR
    b->len += k;
}
