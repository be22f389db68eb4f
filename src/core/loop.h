/* core/loop.h: one epoll event loop per worker thread, with timers.
 *
 * File events are edge-triggered: a handler is told "readable" or "writable"
 * once per edge and must keep its own flags until it sees EAGAIN. That keeps
 * epoll_ctl out of the request path: an fd is registered once, for both
 * directions, for its whole life.
 *
 * Timers live in a binary min-heap. Re-arming a timer to a later deadline is
 * O(1) (only the deadline field changes); the heap fixes itself lazily when
 * the stale entry reaches the top. Nothing here is thread-safe except
 * loop_wake(): a loop belongs to the thread that runs it.
 */
#ifndef PORTICO_CORE_LOOP_H
#define PORTICO_CORE_LOOP_H

#include <stdbool.h>
#include <stdint.h>

struct loop;

enum {
    LOOP_READ  = 1,   /* readable, or peer closed, or error */
    LOOP_WRITE = 2,   /* writable */
    LOOP_HUP   = 4,   /* the peer closed (or reset): read until 0 / error */
};

/* A watched file descriptor. Embed it in your connection struct. */
struct loop_io {
    int fd;
    void (*cb)(struct loop *l, struct loop_io *io, unsigned events);
};

struct loop_timer {
    uint64_t deadline;          /* ms on the monotonic clock; 0 = not armed */
    uint64_t key;               /* deadline the heap is ordered by */
    uint32_t slot;              /* index in the heap, valid when in_heap */
    bool in_heap;
    void (*cb)(struct loop *l, struct loop_timer *t);
};

struct loop *loop_new(void);
void loop_free(struct loop *l);

/* Register fd for edge-triggered read+write events. 0 or -errno. */
int loop_add(struct loop *l, struct loop_io *io);
/* Remove fd (call before close(); closing alone is enough for epoll but
 * pending events in the current batch are dropped safely either way). */
void loop_del(struct loop *l, struct loop_io *io);

/* Milliseconds on a coarse monotonic clock, cached once per iteration. */
uint64_t loop_now(const struct loop *l);
/* Arm (or re-arm) a timer to fire `ms` from now. */
void loop_timer_arm(struct loop *l, struct loop_timer *t, uint64_t ms);
void loop_timer_stop(struct loop *l, struct loop_timer *t);
static inline bool loop_timer_armed(const struct loop_timer *t) { return t->deadline != 0; }

/* Called once per iteration before the loop sleeps. */
void loop_set_before_sleep(struct loop *l, void (*cb)(struct loop *, void *), void *arg);

/* The next iteration does not sleep: the before-sleep callback deferred
 * work to it (fairness between connections). */
void loop_pending(struct loop *l);
/* Make room for n armed timers now, so that arming one later never needs
 * memory (a timer that cannot be armed would never fire). 0 or -ENOMEM. */
int loop_reserve_timers(struct loop *l, uint32_t n);

/* Run until loop_stop(). Returns 0. */
int loop_run(struct loop *l);
void loop_stop(struct loop *l);
/* For tests that drive a loop themselves (tests/fuzz/fuzz_path.c): one
 * iteration, waiting at most timeout_ms (< 0: not at all) for events.
 * Returns the number of events and timers handled, or -errno. */
int loop_run_once(struct loop *l, int timeout_ms);
/* For tests: move this loop's clock forward by ms; timers due by then fire
 * at the next iteration. */
void loop_advance(struct loop *l, uint64_t ms);
/* Thread-safe: interrupt epoll_wait and run the wake callback in the loop. */
void loop_wake(struct loop *l);
void loop_set_wake(struct loop *l, void (*cb)(struct loop *, void *), void *arg);

/* Monotonic milliseconds, uncached. */
uint64_t loop_clock_ms(void);

#endif
