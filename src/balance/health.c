/* balance/health.c: active health checks, one thread per process.
 *
 * The thread owns one `struct check` per server of every group that has a
 * `health:` section and drives them all with non-blocking sockets and one
 * poll(): connect, send the request, read until the status line, close. The
 * only state it shares is the verdict, written to the group's atomics through
 * lb_set_active_down(); the consecutive success/failure counts are its own.
 *
 * Timing: a server's checks start every `interval` (measured from the start
 * of the previous one; if a check lasts longer, the next starts when it
 * ends), each bounded by `timeout` as a whole. So a server that stops
 * answering is marked down at most (fall - 1) x interval + timeout after its
 * first failed check began, and back up (rise - 1) x interval + its response
 * time after its first good one.
 *
 * Stopping: balance_health_stop() writes an eventfd the thread always polls,
 * so it returns as soon as the thread wakes, whatever the intervals.
 */
#include "lb.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/log.h"
#include "core/loop.h"

enum phase { IDLE, CONNECTING, SENDING, RECEIVING };

struct check {
    struct balance_group *g;
    uint32_t s;
    enum phase phase;
    int fd;
    uint64_t due;           /* IDLE: when the next check starts */
    uint64_t deadline;      /* otherwise: when this one times out */
    uint32_t oks, fails;    /* in a row */
    char req[512];
    size_t req_len, sent;
    char resp[256];
    size_t got;
};

/* What a check knows that a reload must not forget: kept by
 * balance_health_stop() for the next start, matched by group name and
 * server address, so that frequent reloads neither reset the counts (a dead
 * server that never reaches `fall`) nor make every check due at once. */
struct carry {
    char *group;
    struct conf_addr addr;
    uint32_t oks, fails;
    uint64_t due;
};

static struct {
    pthread_mutex_t mu;     /* serialises start and stop */
    struct carry *carry;    /* from the last stop */
    size_t ncarry;
    bool running;
    pthread_t thread;
    int efd;
    struct check *checks;
    size_t n;
    struct pollfd *pfd;     /* [n + 1] */
    size_t *pidx;           /* pfd[k + 1] belongs to checks[pidx[k]] */
} H = { .mu = PTHREAD_MUTEX_INITIALIZER, .efd = -1 };

static bool expected(const struct conf_health *h, int status)
{
    if (!h->nexpect)
        return status >= 200 && status <= 299;
    for (uint32_t i = 0; i < h->nexpect; i++)
        if (h->expect[i] == status)
            return true;
    return false;
}

/* "HTTP/1.x SSS[ reason]" in the first line: the status, or -1. */
static int status_of(const char *b, size_t n)
{
    if (n < 12 || memcmp(b, "HTTP/1.", 7) || b[7] < '0' || b[7] > '9' || b[8] != ' ')
        return -1;
    for (int i = 9; i < 12; i++)
        if (b[i] < '0' || b[i] > '9')
            return -1;
    if (n > 12 && b[12] != ' ' && b[12] != '\r' && b[12] != '\n')
        return -1;
    return (b[9] - '0') * 100 + (b[10] - '0') * 10 + (b[11] - '0');
}

static void finish(struct check *c, bool ok, const char *why, uint64_t now)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->phase = IDLE;
    const struct conf_health *h = &c->g->health;
    bool down = atomic_load_explicit(&c->g->st[c->s].hc_down, memory_order_relaxed);
    char reason[160];
    if (ok) {
        c->fails = 0;
        if (c->oks < UINT32_MAX)
            c->oks++;
        if (down && c->oks >= h->rise) {
            snprintf(reason, sizeof reason, "%u good checks in a row", c->oks);
            lb_set_active_down(c->g, c->s, false, now, reason);
        }
    } else {
        c->oks = 0;
        if (c->fails < UINT32_MAX)
            c->fails++;
        log_debug("upstream %s server %s: health check failed: %s", c->g->name,
                  c->g->sc[c->s].addr.text, why);
        if (!down && c->fails >= h->fall) {
            snprintf(reason, sizeof reason, "%s, %u failed checks in a row", why, c->fails);
            lb_set_active_down(c->g, c->s, true, now, reason);
        }
    }
}

static void start(struct check *c, uint64_t now)
{
    const struct conf_addr *a = &c->g->sc[c->s].addr;
    c->due = now + c->g->health.interval;
    c->deadline = now + c->g->health.timeout;
    c->sent = c->got = 0;
    c->fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        finish(c, false, strerror(errno), now);
        return;
    }
    if (connect(c->fd, (const struct sockaddr *)&a->ss, a->len) == 0) {
        c->phase = SENDING;
    } else if (errno == EINPROGRESS) {
        c->phase = CONNECTING;
    } else {
        char why[100];
        snprintf(why, sizeof why, "connect: %s", strerror(errno));
        finish(c, false, why, now);
    }
}

/* Advance a check after poll() reported `rev` on its socket. */
static void step(struct check *c, short rev, uint64_t now)
{
    char why[100];
    if (c->phase == CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
            err = errno;
        if (err) {
            snprintf(why, sizeof why, "connect: %s", strerror(err));
            finish(c, false, why, now);
            return;
        }
        if (!(rev & POLLOUT)) {
            if (rev & (POLLERR | POLLHUP | POLLNVAL))
                finish(c, false, "connect: closed", now);
            return;
        }
        c->phase = SENDING;
    }
    if (c->phase == SENDING) {
        while (c->sent < c->req_len) {
            ssize_t k = send(c->fd, c->req + c->sent, c->req_len - c->sent, MSG_NOSIGNAL);
            if (k < 0 && errno == EINTR)
                continue;
            if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                return;
            if (k <= 0) {
                snprintf(why, sizeof why, "send: %s", k < 0 ? strerror(errno) : "closed");
                finish(c, false, why, now);
                return;
            }
            c->sent += (size_t)k;
        }
        c->phase = RECEIVING;
    }
    if (c->phase == RECEIVING) {
        for (;;) {
            ssize_t k = recv(c->fd, c->resp + c->got, sizeof c->resp - 1 - c->got, 0);
            if (k < 0 && errno == EINTR)
                continue;
            if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                return;
            if (k < 0) {
                snprintf(why, sizeof why, "recv: %s", strerror(errno));
                finish(c, false, why, now);
                return;
            }
            c->got += (size_t)k;
            bool line = memchr(c->resp, '\n', c->got) != NULL;
            if (!line && k > 0 && c->got < sizeof c->resp - 1)
                continue;
            if (!line && c->got == 0) {
                finish(c, false, "closed without a response", now);
                return;
            }
            int st = status_of(c->resp, c->got);
            if (st < 0) {
                finish(c, false, "malformed status line", now);
            } else if (!expected(&c->g->health, st)) {
                snprintf(why, sizeof why, "status %d", st);
                finish(c, false, why, now);
            } else {
                finish(c, true, NULL, now);
            }
            return;
        }
    }
}

static void *run(void *arg)
{
    (void)arg;
    for (;;) {
        uint64_t now = loop_clock_ms();
        uint64_t next = now + 60000;
        size_t np = 0;
        for (size_t i = 0; i < H.n; i++) {
            struct check *c = &H.checks[i];
            if (c->phase != IDLE && c->deadline <= now)
                finish(c, false, c->phase == CONNECTING ? "connect timeout" : "timeout", now);
            if (c->phase == IDLE && c->due <= now)
                start(c, now);
            if (c->phase == IDLE) {
                if (c->due < next)
                    next = c->due;
                continue;
            }
            if (c->deadline < next)
                next = c->deadline;
            H.pfd[np + 1] = (struct pollfd){ .fd = c->fd,
                                             .events = c->phase == RECEIVING ? POLLIN : POLLOUT };
            H.pidx[np++] = i;
        }
        H.pfd[0] = (struct pollfd){ .fd = H.efd, .events = POLLIN };
        int wait = next > now ? (int)(next - now) : 0;
        int rc = poll(H.pfd, np + 1, wait);
        if (rc < 0 && errno != EINTR) {
            log_error("health checks: poll: %s", strerror(errno));
            usleep(100000);
            continue;
        }
        if (rc <= 0)
            continue;
        if (H.pfd[0].revents)
            break;
        now = loop_clock_ms();
        for (size_t k = 0; k < np; k++)
            if (H.pfd[k + 1].revents)
                step(&H.checks[H.pidx[k]], H.pfd[k + 1].revents, now);
    }
    return NULL;
}

static void carry_free(void)
{
    for (size_t i = 0; i < H.ncarry; i++)
        free(H.carry[i].group);
    free(H.carry);
    H.carry = NULL;
    H.ncarry = 0;
}

/* Keep each check's counts and schedule (a check in flight is due again
 * at once). Without memory nothing is kept: the next start begins afresh. */
static void carry_save(void)
{
    carry_free();
    if (!H.n || !(H.carry = calloc(H.n, sizeof *H.carry)))
        return;
    uint64_t now = loop_clock_ms();
    for (size_t i = 0; i < H.n; i++) {
        const struct check *c = &H.checks[i];
        struct carry *k = &H.carry[H.ncarry];
        if (!(k->group = strdup(c->g->name)))
            continue;
        k->addr = c->g->sc[c->s].addr;
        k->oks = c->oks;
        k->fails = c->fails;
        k->due = c->phase == IDLE ? c->due : now;
        H.ncarry++;
    }
}

static void carry_load(struct check *c, uint64_t now)
{
    const struct conf_addr *a = &c->g->sc[c->s].addr;
    for (size_t i = 0; i < H.ncarry; i++) {
        const struct carry *k = &H.carry[i];
        if (strcmp(k->group, c->g->name) || !conf_addr_equal(&k->addr, a))
            continue;
        c->oks = k->oks;
        c->fails = k->fails;
        /* the same schedule, within the (maybe new) interval */
        c->due = k->due < now + c->g->health.interval ? k->due : now + c->g->health.interval;
        return;
    }
}

static void release(void)
{
    for (size_t i = 0; i < H.n; i++)
        if (H.checks[i].fd >= 0)
            close(H.checks[i].fd);
    free(H.checks);
    free(H.pfd);
    free(H.pidx);
    H.checks = NULL;
    H.pfd = NULL;
    H.pidx = NULL;
    H.n = 0;
    if (H.efd >= 0)
        close(H.efd);
    H.efd = -1;
}

int balance_health_start(struct balance_group *const *groups, size_t ngroups)
{
    pthread_mutex_lock(&H.mu);
    if (H.running) {
        pthread_mutex_unlock(&H.mu);
        return -EALREADY;
    }
    size_t n = 0;
    for (size_t i = 0; i < ngroups; i++)
        if (groups[i] && groups[i]->health.enabled)
            n += groups[i]->n;
    int rc = 0;
    H.efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    H.checks = calloc(n ? n : 1, sizeof *H.checks);
    H.pfd = calloc(n + 1, sizeof *H.pfd);
    H.pidx = calloc(n ? n : 1, sizeof *H.pidx);
    if (H.efd < 0 || !H.checks || !H.pfd || !H.pidx) {
        rc = H.efd < 0 ? -errno : -ENOMEM;
        goto fail;
    }
    uint64_t now = loop_clock_ms();
    for (size_t i = 0; i < ngroups; i++) {
        struct balance_group *g = groups[i];
        if (!g || !g->health.enabled)
            continue;
        for (uint32_t s = 0; s < g->n; s++) {
            struct check *c = &H.checks[H.n++];
            c->g = g;
            c->s = s;
            c->fd = -1;
            c->phase = IDLE;
            c->due = now;
            carry_load(c, now);
            int len = snprintf(c->req, sizeof c->req,
                               "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: portico-health\r\n"
                               "Connection: close\r\n\r\n", g->health.path, g->sc[s].addr.text);
            c->req_len = len > 0 && (size_t)len < sizeof c->req ? (size_t)len : 0;
        }
    }
    if (H.n == 0) {             /* nothing to check: no thread */
        release();
        H.running = true;
        pthread_mutex_unlock(&H.mu);
        return 0;
    }
    rc = -pthread_create(&H.thread, NULL, run, NULL);
    if (rc)
        goto fail;
    H.running = true;
    log_info("health checks: %zu servers in %zu groups", H.n, ngroups);
    pthread_mutex_unlock(&H.mu);
    return 0;
fail:
    release();
    pthread_mutex_unlock(&H.mu);
    return rc;
}

void balance_health_stop(bool keep)
{
    pthread_mutex_lock(&H.mu);
    if (!H.running) {
        if (!keep)
            carry_free();
        pthread_mutex_unlock(&H.mu);
        return;
    }
    if (H.n) {
        uint64_t one = 1;
        ssize_t w = write(H.efd, &one, sizeof one);
        (void)w;
        pthread_join(H.thread, NULL);
    }
    if (keep)
        carry_save();
    else
        carry_free();
    release();
    H.running = false;
    pthread_mutex_unlock(&H.mu);
}
