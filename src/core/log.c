/* core/log.c: see log.h. */
#include "log.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LOG_CHUNK 4096          /* one write(2): at most PIPE_BUF, whole lines */
#define LOG_STOP_MS 1000        /* how long log_stop waits for a stuck stderr */

static _Atomic int min_level = LOG_INFO;
static const char *const names[] = { "debug", "info", "warn", "error" };

static atomic_uint_fast64_t n_written, n_dropped, n_suppressed;

/* The ring: bytes of whole lines, [head, head + len) modulo LOG_RING_BYTES. */
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    atomic_bool running;        /* lines go to the ring (set once, never cleared) */
    bool stop;                  /* under mu: the writer is asked to finish */
    bool writer_alive;
    size_t head, len;
    char buf[LOG_RING_BYTES];
} R = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };

/* Sites with lines held back: pushed once each, never removed. */
static _Atomic(struct log_rl *) rl_list;

void log_set_level(enum log_level lvl) { atomic_store_explicit(&min_level, (int)lvl, memory_order_relaxed); }
enum log_level log_get_level(void) { return (enum log_level)atomic_load_explicit(&min_level, memory_order_relaxed); }
const char *log_level_name(enum log_level lvl) { return lvl <= LOG_ERROR ? names[lvl] : "?"; }

void log_get_stats(struct log_stats *out)
{
    out->written = atomic_load_explicit(&n_written, memory_order_relaxed);
    out->dropped = atomic_load_explicit(&n_dropped, memory_order_relaxed);
    out->suppressed = atomic_load_explicit(&n_suppressed, memory_order_relaxed);
}

static void write_sync(const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(STDERR_FILENO, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
}

/* Hand one formatted line (ending in '\n') to stderr or to the ring. */
static void emit(const char *line, size_t len)
{
    if (!atomic_load_explicit(&R.running, memory_order_acquire)) {
        write_sync(line, len);
        atomic_fetch_add_explicit(&n_written, 1, memory_order_relaxed);
        return;
    }
    bool wake = false, ok = false;
    pthread_mutex_lock(&R.mu);
    if (len <= LOG_RING_BYTES - R.len) {
        size_t tail = (R.head + R.len) % LOG_RING_BYTES;
        size_t first = LOG_RING_BYTES - tail < len ? LOG_RING_BYTES - tail : len;
        memcpy(R.buf + tail, line, first);
        memcpy(R.buf, line + first, len - first);
        wake = R.len == 0;
        R.len += len;
        ok = true;
    }
    pthread_mutex_unlock(&R.mu);
    if (!ok)
        atomic_fetch_add_explicit(&n_dropped, 1, memory_order_relaxed);
    else if (wake)
        pthread_cond_signal(&R.cv);
}

static size_t format_line(char *line, enum log_level lvl, const char *fmt, va_list ap)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, LOG_LINE_MAX, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, log_level_name(lvl));
    if (n < 0)
        n = 0;
    size_t room = LOG_LINE_MAX - (size_t)n - 1;     /* keep one byte for '\n' */
    int m = vsnprintf(line + n, room, fmt, ap);
    if (m < 0)
        m = 0;
    size_t len = (size_t)n + ((size_t)m < room ? (size_t)m : room - 1);
    /* one event, one line: a message never breaks the line format */
    for (size_t i = (size_t)n; i < len; i++)
        if (line[i] == '\n' || line[i] == '\r')
            line[i] = ' ';
    line[len++] = '\n';
    return len;
}

static void vlog(enum log_level lvl, const char *fmt, va_list ap)
{
    char line[LOG_LINE_MAX];
    size_t len = format_line(line, lvl, fmt, ap);
    emit(line, len);
}

void log_msg(enum log_level lvl, const char *fmt, ...)
{
    if (!log_enabled(lvl))
        return;
    va_list ap;
    va_start(ap, fmt);
    vlog(lvl, fmt, ap);
    va_end(ap);
}

/* ---- rate limits ---- */

static int64_t mono_sec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (int64_t)ts.tv_sec;
}

static void sample_lock(struct log_rl *rl)
{
    while (atomic_exchange_explicit(&rl->sample_lock, true, memory_order_acquire))
        ;
}

static void sample_unlock(struct log_rl *rl)
{
    atomic_store_explicit(&rl->sample_lock, false, memory_order_release);
}

static void rl_summary(struct log_rl *rl)
{
    if (!atomic_load_explicit(&rl->suppressed, memory_order_relaxed))
        return;
    char sample[sizeof rl->sample];
    sample_lock(rl);
    uint64_t n = atomic_exchange_explicit(&rl->suppressed, 0, memory_order_relaxed);
    memcpy(sample, rl->sample, sizeof sample);
    rl->sample[0] = '\0';
    sample_unlock(rl);
    if (n)
        log_msg((enum log_level)atomic_load_explicit(&rl->level, memory_order_relaxed),
                "suppressed %llu similar lines in 1s (more than %u/s from %s), e.g.: %s",
                (unsigned long long)n, rl->per_sec ? rl->per_sec : LOG_RL_PER_SEC, rl->site,
                sample);
}

void log_rl_summarise(void)
{
    for (struct log_rl *rl = atomic_load_explicit(&rl_list, memory_order_acquire); rl; rl = rl->next)
        rl_summary(rl);
}

void log_rl_msg(struct log_rl *rl, enum log_level lvl, const char *fmt, ...)
{
    if (!log_enabled(lvl))
        return;
    uint32_t limit = rl->per_sec ? rl->per_sec : LOG_RL_PER_SEC;
    int64_t now = mono_sec();
    int64_t cur = atomic_load_explicit(&rl->sec, memory_order_relaxed);
    if (cur != now && atomic_compare_exchange_strong(&rl->sec, &cur, now)) {
        atomic_store_explicit(&rl->n, 0, memory_order_relaxed);
        /* a new window: summarise the last one now if the writer has not */
        rl_summary(rl);
    }
    va_list ap;
    va_start(ap, fmt);
    if (atomic_fetch_add_explicit(&rl->n, 1, memory_order_relaxed) < limit) {
        vlog(lvl, fmt, ap);
        va_end(ap);
        return;
    }
    atomic_fetch_add_explicit(&n_suppressed, 1, memory_order_relaxed);
    atomic_store_explicit(&rl->level, (int)lvl, memory_order_relaxed);
    if (!atomic_exchange_explicit(&rl->listed, true, memory_order_acq_rel)) {
        struct log_rl *head = atomic_load_explicit(&rl_list, memory_order_relaxed);
        do
            rl->next = head;
        while (!atomic_compare_exchange_weak_explicit(&rl_list, &head, rl, memory_order_release,
                                                      memory_order_relaxed));
    }
    /* format only the first line held back since the last summary */
    sample_lock(rl);
    if (atomic_fetch_add_explicit(&rl->suppressed, 1, memory_order_relaxed) == 0)
        vsnprintf(rl->sample, sizeof rl->sample, fmt, ap);
    sample_unlock(rl);
    va_end(ap);
}

/* ---- the writer ---- */

/* Write n bytes of whole lines, waiting for stderr to take them (poll, then
 * at most LOG_CHUNK bytes per write so a pipe never blocks us mid-line).
 * Gives up on what is left when asked to stop and stderr stays stuck. */
static void write_out(const char *p, size_t n)
{
    while (n) {
        struct pollfd pfd = { STDERR_FILENO, POLLOUT, 0 };
        int r = poll(&pfd, 1, 1000);
        if (r < 0 && errno == EINTR)
            continue;
        if (r == 0) {
            pthread_mutex_lock(&R.mu);
            bool stop = R.stop;
            pthread_mutex_unlock(&R.mu);
            if (stop)
                return;         /* the process is exiting: leave the rest */
            continue;
        }
        if (r < 0 || (pfd.revents & (POLLERR | POLLNVAL)))
            return;             /* stderr is gone: nothing can be written */
        size_t k = n;
        if (k > LOG_CHUNK) {
            k = LOG_CHUNK;
            while (k && p[k - 1] != '\n')
                k--;
            if (!k)
                k = LOG_CHUNK;
        }
        ssize_t w = write(STDERR_FILENO, p, k);
        if (w < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
}

static void *writer(void *arg)
{
    (void)arg;
    static char out[LOG_RING_BYTES];
    uint64_t reported = 0;
    int64_t last_summary = mono_sec();
    pthread_mutex_lock(&R.mu);
    for (;;) {
        if (!R.len && !R.stop) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += 1;
            pthread_cond_timedwait(&R.cv, &R.mu, &ts);
        }
        size_t n = R.len, first = LOG_RING_BYTES - R.head < n ? LOG_RING_BYTES - R.head : n;
        memcpy(out, R.buf + R.head, first);
        memcpy(out + first, R.buf, n - first);
        R.head = (R.head + n) % LOG_RING_BYTES;
        R.len = 0;
        bool stop = R.stop;
        pthread_mutex_unlock(&R.mu);
        if (n) {
            size_t lines = 0;
            for (size_t i = 0; i < n; i++)
                lines += out[i] == '\n';
            write_out(out, n);
            atomic_fetch_add_explicit(&n_written, lines, memory_order_relaxed);
        }
        int64_t now = mono_sec();
        if (now != last_summary || stop) {
            last_summary = now;
            log_rl_summarise();
            uint64_t d = atomic_load_explicit(&n_dropped, memory_order_relaxed);
            if (d != reported) {
                log_warn("log: %llu lines dropped because stderr did not keep up (%llu in all)",
                         (unsigned long long)(d - reported), (unsigned long long)d);
                reported = d;
            }
        }
        pthread_mutex_lock(&R.mu);
        if (stop && !R.len)
            break;
    }
    R.writer_alive = false;
    pthread_mutex_unlock(&R.mu);
    return NULL;
}

int log_start(void)
{
    if (atomic_load(&R.running))
        return 0;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&R.thread, NULL, writer, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc) {
        log_warn("log: no writer thread (%s): lines are written synchronously", strerror(rc));
        return -1;
    }
    R.writer_alive = true;
    atomic_store_explicit(&R.running, true, memory_order_release);
    atexit(log_stop);
    return 0;
}

void log_stop(void)
{
    pthread_mutex_lock(&R.mu);
    bool alive = R.writer_alive && !R.stop;
    R.stop = true;
    pthread_mutex_unlock(&R.mu);
    if (!alive)
        return;
    pthread_cond_signal(&R.cv);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += LOG_STOP_MS / 1000 + 1;    /* the writer's poll gives up after 1 s */
    if (pthread_timedjoin_np(R.thread, NULL, &ts) != 0)
        pthread_detach(R.thread);           /* stuck in write(2): leave it, we are exiting */
}
