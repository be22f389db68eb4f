/* core/loop.c: epoll + lazy binary-heap timers. See loop.h for the contract. */
#include "loop.h"

#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define LOOP_BATCH 256

struct loop {
    int epfd;
    bool stop;
    bool pending;               /* loop_pending(): do not sleep next time */
    uint64_t now;
    uint64_t skew;              /* loop_advance(): ms added to the clock (tests) */
    struct loop_timer **heap;
    uint32_t nheap, capheap;
    struct loop_io wake_io;
    void (*wake_cb)(struct loop *, void *);
    void *wake_arg;
    void (*before_sleep)(struct loop *, void *);
    void *before_sleep_arg;
};

uint64_t loop_clock_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void wake_read(struct loop *l, struct loop_io *io, unsigned ev)
{
    (void)ev;
    uint64_t v;
    while (read(io->fd, &v, sizeof v) == (ssize_t)sizeof v)
        ;
    if (l->wake_cb)
        l->wake_cb(l, l->wake_arg);
}

struct loop *loop_new(void)
{
    struct loop *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    l->wake_io.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    l->wake_io.cb = wake_read;
    l->now = loop_clock_ms();
    if (l->epfd < 0 || l->wake_io.fd < 0 || loop_add(l, &l->wake_io) < 0) {
        loop_free(l);
        return NULL;
    }
    return l;
}

void loop_free(struct loop *l)
{
    if (!l)
        return;
    if (l->epfd >= 0)
        close(l->epfd);
    if (l->wake_io.fd >= 0)
        close(l->wake_io.fd);
    free(l->heap);
    free(l);
}

int loop_add(struct loop *l, struct loop_io *io)
{
    struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = io };
    return epoll_ctl(l->epfd, EPOLL_CTL_ADD, io->fd, &ev) < 0 ? -errno : 0;
}

void loop_del(struct loop *l, struct loop_io *io)
{
    if (io->fd >= 0)
        epoll_ctl(l->epfd, EPOLL_CTL_DEL, io->fd, NULL);
}

uint64_t loop_now(const struct loop *l) { return l->now; }

/* ---- timer heap ---- */

static void heap_set(struct loop *l, uint32_t i, struct loop_timer *t)
{
    l->heap[i] = t;
    t->slot = i;
}

static void heap_up(struct loop *l, uint32_t i)
{
    struct loop_timer *t = l->heap[i];
    while (i > 0) {
        uint32_t p = (i - 1) / 2;
        if (l->heap[p]->key <= t->key)
            break;
        heap_set(l, i, l->heap[p]);
        i = p;
    }
    heap_set(l, i, t);
}

static void heap_down(struct loop *l, uint32_t i)
{
    struct loop_timer *t = l->heap[i];
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= l->nheap)
            break;
        if (c + 1 < l->nheap && l->heap[c + 1]->key < l->heap[c]->key)
            c++;
        if (t->key <= l->heap[c]->key)
            break;
        heap_set(l, i, l->heap[c]);
        i = c;
    }
    heap_set(l, i, t);
}

static void heap_remove(struct loop *l, struct loop_timer *t)
{
    uint32_t i = t->slot;
    t->in_heap = false;
    l->nheap--;
    if (i == l->nheap)
        return;
    heap_set(l, i, l->heap[l->nheap]);
    heap_down(l, i);
    heap_up(l, l->heap[i]->slot);
}

static bool heap_insert(struct loop *l, struct loop_timer *t)
{
    if (l->nheap == l->capheap) {
        uint32_t cap = l->capheap ? l->capheap * 2 : 256;
        struct loop_timer **h = realloc(l->heap, cap * sizeof *h);
        if (!h)
            return false;
        l->heap = h;
        l->capheap = cap;
    }
    t->key = t->deadline;
    t->in_heap = true;
    heap_set(l, l->nheap++, t);
    heap_up(l, t->slot);
    return true;
}

void loop_timer_arm(struct loop *l, struct loop_timer *t, uint64_t ms)
{
    t->deadline = l->now + (ms ? ms : 1);
    if (t->in_heap) {
        if (t->deadline >= t->key)
            return;             /* later: fixed lazily when it surfaces */
        t->key = t->deadline;
        heap_up(l, t->slot);
        return;
    }
    if (!heap_insert(l, t)) {
        /* Out of memory for the heap: fire as soon as possible rather than
         * never; callers treat a timer firing early as a timeout. */
        t->deadline = 0;
    }
}

void loop_timer_stop(struct loop *l, struct loop_timer *t)
{
    t->deadline = 0;
    if (t->in_heap)
        heap_remove(l, t);
}

static int next_timeout(struct loop *l)
{
    while (l->nheap) {
        struct loop_timer *t = l->heap[0];
        if (t->deadline != t->key) {        /* stale: re-key lazily */
            heap_remove(l, t);
            if (t->deadline)
                heap_insert(l, t);
            continue;
        }
        if (t->key <= l->now)
            return 0;
        /* epoll_wait takes an int: a deadline weeks away waits in steps */
        uint64_t d = t->key - l->now;
        return d > INT_MAX ? INT_MAX : (int)d;
    }
    return -1;
}

static int run_timers(struct loop *l)
{
    int fired = 0;
    while (l->nheap) {
        struct loop_timer *t = l->heap[0];
        if (t->key > l->now)
            break;
        heap_remove(l, t);
        if (t->deadline != t->key) {
            /* re-armed later: re-key it, even if that deadline has passed
             * too, so that overdue timers still fire in deadline order */
            heap_insert(l, t);
            continue;
        }
        t->deadline = 0;
        t->cb(l, t);
        fired++;
    }
    return fired;
}

void loop_set_before_sleep(struct loop *l, void (*cb)(struct loop *, void *), void *arg)
{
    l->before_sleep = cb;
    l->before_sleep_arg = arg;
}

void loop_set_wake(struct loop *l, void (*cb)(struct loop *, void *), void *arg)
{
    l->wake_cb = cb;
    l->wake_arg = arg;
}

void loop_wake(struct loop *l)
{
    uint64_t one = 1;
    ssize_t r = write(l->wake_io.fd, &one, sizeof one);
    (void)r;
}

void loop_stop(struct loop *l) { l->stop = true; }

void loop_pending(struct loop *l) { l->pending = true; }

int loop_reserve_timers(struct loop *l, uint32_t n)
{
    if (n <= l->capheap)
        return 0;
    struct loop_timer **h = realloc(l->heap, n * sizeof *h);
    if (!h)
        return -ENOMEM;
    l->heap = h;
    l->capheap = n;
    return 0;
}

/* One iteration: before_sleep, wait for events (at most max_ms when >= 0),
 * dispatch them, run due timers. Returns events + timers handled (+1 when
 * work was deferred to this iteration), or -errno. */
static int loop_iterate(struct loop *l, int max_ms)
{
    struct epoll_event evs[LOOP_BATCH];
    if (l->before_sleep)
        l->before_sleep(l, l->before_sleep_arg);
    if (l->stop)
        return 0;
    int timeout = next_timeout(l);
    if (max_ms >= 0 && (timeout < 0 || timeout > max_ms))
        timeout = max_ms;
    bool pending = l->pending;
    if (pending) {
        timeout = 0;            /* work was deferred to this iteration */
        l->pending = false;
    }
    int n = epoll_wait(l->epfd, evs, LOOP_BATCH, timeout);
    l->now = loop_clock_ms() + l->skew;
    if (n < 0 && errno != EINTR)
        return -errno;
    for (int i = 0; i < n; i++) {
        struct loop_io *io = evs[i].data.ptr;
        unsigned e = 0;
        if (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
            e |= LOOP_READ;
        if (evs[i].events & (EPOLLOUT | EPOLLHUP | EPOLLERR))
            e |= LOOP_WRITE;
        if (evs[i].events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
            e |= LOOP_HUP;
        io->cb(l, io, e);
    }
    return (n > 0 ? n : 0) + run_timers(l) + pending;
}

int loop_run(struct loop *l)
{
    while (!l->stop) {
        int rc = loop_iterate(l, -1);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int loop_run_once(struct loop *l, int timeout_ms)
{
    return loop_iterate(l, timeout_ms < 0 ? 0 : timeout_ms);
}

void loop_advance(struct loop *l, uint64_t ms)
{
    l->skew += ms;
    l->now += ms;
}
