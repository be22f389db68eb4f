/* core/log.h: the diagnostic log (stderr), one line per event.
 *
 * Lines look like `2026-11-22T03:40:00.123Z warn upstream app 127.0.0.1:9001: connect: refused`.
 * Safe from any thread. A line is at most LOG_LINE_MAX bytes and always
 * reaches stderr whole, in one write(2) with whole lines around it.
 *
 * Two modes:
 *   - before log_start() (and in unit tests, `portico -t`): each line is
 *     written synchronously by the calling thread;
 *   - after log_start(): a caller only copies its line into a bounded
 *     in-memory ring (LOG_RING_BYTES) and a background thread writes the ring
 *     to stderr. A caller never blocks on stderr, however slow or stuck it is
 *     (a pipe nobody reads): when the ring is full the line is dropped and
 *     counted (log_get_stats().dropped, portico_log_lines_dropped_total), and
 *     the writer reports the drops in one line once it can write again.
 *
 * Rate limiting, for anything that input can trigger (bad requests, failing
 * upstreams): LOG_RATELIMITED(level, fmt, ...) or log_rl_info/log_rl_warn
 * write at most LOG_RL_PER_SEC lines a second per call site; the rest are
 * counted (log_get_stats().suppressed) and, once a second, summarised in one
 * line per call site with the first suppressed line as a sample:
 *   `... info suppressed 9731 similar lines in 1s (more than 10/s from
 *    proxy/proxy.c:915), e.g.: client request rejected: 400 bad request`
 * To share one limit among several call sites (a category), declare a
 * `static struct log_rl name = LOG_RL_INIT("category", per_sec);` and call
 * log_rl_msg(&name, level, fmt, ...). A struct log_rl must have static
 * storage duration: once it has suppressed a line it stays on a list the
 * writer reads.
 */
#ifndef PORTICO_CORE_LOG_H
#define PORTICO_CORE_LOG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

#define LOG_LINE_MAX 1024
#define LOG_RING_BYTES (256 * 1024)
#define LOG_RL_PER_SEC 10

/* The threshold: lines below it are not formatted (default LOG_INFO).
 * Thread-safe; the configuration's log_level, at start and on reload. */
void log_set_level(enum log_level lvl);
enum log_level log_get_level(void);
static inline bool log_enabled(enum log_level lvl) { return lvl >= log_get_level(); }
const char *log_level_name(enum log_level lvl);

void log_msg(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

/* Start the background writer: from now on no caller writes to stderr
 * itself. Call once, from the main thread, with the signals the process
 * waits for already blocked (the writer blocks every signal anyway).
 * Registers log_stop() with atexit(). 0, or -1 (then lines stay synchronous). */
int log_start(void);
/* Write what is in the ring (for at most about a second if stderr does not
 * take it) and stop the writer. Lines logged after this are dropped, never
 * written synchronously: a stuck stderr must not hold up the exit. */
void log_stop(void);

struct log_stats {
    uint64_t written;       /* lines handed to stderr */
    uint64_t dropped;       /* lines lost because the ring was full */
    uint64_t suppressed;    /* lines held back by rate limits (summarised instead) */
};
void log_get_stats(struct log_stats *out);

/* ---- rate-limited lines ---- */

struct log_rl {
    const char *site;               /* "file:line" or a category, for the summary */
    uint32_t per_sec;               /* lines written per second; 0 means LOG_RL_PER_SEC */
    _Atomic int64_t sec;            /* the current one-second window */
    _Atomic uint32_t n;             /* lines seen in the window */
    _Atomic uint64_t suppressed;    /* held back since the last summary */
    _Atomic int level;              /* of the last suppressed line, for the summary */
    atomic_bool listed;             /* on the writer's list */
    atomic_bool sample_lock;
    struct log_rl *next;
    char sample[256];               /* the first line held back since the last summary */
};

#define LOG_STR_(x) #x
#define LOG_STR(x) LOG_STR_(x)
#define LOG_RL_INIT(site_, per_sec_) { .site = (site_), .per_sec = (per_sec_) }

void log_rl_msg(struct log_rl *rl, enum log_level lvl, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define LOG_RATELIMITED(lvl, ...)                                                            \
    do {                                                                                     \
        static struct log_rl log_rl_site_ =                                                  \
            LOG_RL_INIT(__FILE__ ":" LOG_STR(__LINE__), LOG_RL_PER_SEC);                     \
        log_rl_msg(&log_rl_site_, (lvl), __VA_ARGS__);                                       \
    } while (0)

#define log_rl_debug(...) LOG_RATELIMITED(LOG_DEBUG, __VA_ARGS__)
#define log_rl_info(...)  LOG_RATELIMITED(LOG_INFO, __VA_ARGS__)
#define log_rl_warn(...)  LOG_RATELIMITED(LOG_WARN, __VA_ARGS__)
#define log_rl_error(...) LOG_RATELIMITED(LOG_ERROR, __VA_ARGS__)

/* Write one summary line for each site that held lines back since its last
 * summary. The writer calls it once a second; tests may call it. */
void log_rl_summarise(void);

#endif
