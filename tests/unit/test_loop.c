/* tests/unit/test_loop.c: the epoll loop, its timers and its wake-up.
 *
 * Every test arms a guard timer so that a broken loop fails the test instead
 * of hanging it. Orders are checked against deadlines, never against wall
 * time, so the tests hold on a loaded machine.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/loop.h"

#define GUARD_MS 5000

struct rec {
    int ids[2048];
    int n;
    bool guard_fired;
    struct loop_timer guard;
};

struct tt {
    struct loop_timer t;        /* first: the callback casts back */
    int id;
    uint64_t due;               /* the deadline it was last armed for */
    struct rec *rec;
    int stop_after;             /* stop the loop once rec->n reaches this */
    int repeat;                 /* re-arm itself this many more times */
};

static void guard_cb(struct loop *l, struct loop_timer *t)
{
    struct rec *r = (struct rec *)((char *)t - offsetof(struct rec, guard));
    r->guard_fired = true;
    loop_stop(l);
}

static void start_guard(struct loop *l, struct rec *r)
{
    memset(&r->guard, 0, sizeof r->guard);
    r->guard.cb = guard_cb;
    loop_timer_arm(l, &r->guard, GUARD_MS);
}

static void tt_cb(struct loop *l, struct loop_timer *t)
{
    struct tt *x = (struct tt *)t;
    /* never early, and disarmed while its callback runs */
    assert_true(loop_now(l) >= x->due);
    assert_false(loop_timer_armed(t));
    assert_true(x->rec->n < (int)(sizeof x->rec->ids / sizeof x->rec->ids[0]));
    x->rec->ids[x->rec->n++] = x->id;
    if (x->repeat > 0) {
        x->repeat--;
        x->due = loop_now(l) + 5;
        loop_timer_arm(l, t, 5);
    }
    if (x->stop_after && x->rec->n >= x->stop_after)
        loop_stop(l);
}

static void tt_init(struct tt *x, struct rec *r, int id)
{
    memset(x, 0, sizeof *x);
    x->t.cb = tt_cb;
    x->id = id;
    x->rec = r;
}

static void tt_arm(struct loop *l, struct tt *x, uint64_t ms)
{
    x->due = loop_now(l) + (ms ? ms : 1);
    loop_timer_arm(l, &x->t, ms);
    assert_true(loop_timer_armed(&x->t));
}

static void run(struct loop *l, struct rec *r)
{
    start_guard(l, r);
    assert_int_equal(loop_run(l), 0);
    assert_false(r->guard_fired);
    loop_timer_stop(l, &r->guard);
}

static void assert_ids(const struct rec *r, const int *want, int n)
{
    if (r->n != n) {
        print_error("fired %d timers, want %d:", r->n, n);
        for (int i = 0; i < r->n; i++)
            print_error(" %d", r->ids[i]);
        print_error("\n");
    }
    assert_int_equal(r->n, n);
    for (int i = 0; i < n; i++)
        assert_int_equal(r->ids[i], want[i]);
}

static void timers_fire_in_order(void **state)
{
    (void)state;
    struct loop *l = loop_new();
    assert_non_null(l);
    static struct rec r;
    memset(&r, 0, sizeof r);
    struct tt t[4];
    static const uint64_t ms[4] = { 30, 10, 20, 5 };
    for (int i = 0; i < 4; i++) {
        tt_init(&t[i], &r, (int)ms[i]);
        tt_arm(l, &t[i], ms[i]);
    }
    t[0].stop_after = 4;
    run(l, &r);
    static const int want[] = { 5, 10, 20, 30 };
    assert_ids(&r, want, 4);
    for (int i = 0; i < 4; i++)
        assert_false(loop_timer_armed(&t[i].t));
    loop_free(l);
}

static void timer_zero_ms_still_fires(void **state)
{
    (void)state;
    struct loop *l = loop_new();
    static struct rec r;
    memset(&r, 0, sizeof r);
    struct tt a;
    tt_init(&a, &r, 1);
    a.stop_after = 1;
    tt_arm(l, &a, 0);
    run(l, &r);
    static const int want[] = { 1 };
    assert_ids(&r, want, 1);
    loop_free(l);
}

static void timer_rearm_later_is_lazy(void **state)
{
    (void)state;
    struct loop *l = loop_new();
    static struct rec r;
    memset(&r, 0, sizeof r);
    struct tt a, b;
    tt_init(&a, &r, 1);
    tt_init(&b, &r, 2);
    tt_arm(l, &a, 10);
    tt_arm(l, &b, 20);
    tt_arm(l, &a, 40);          /* later: the heap keeps the old key */
    assert_int_equal(a.t.key, loop_now(l) + 10);
    assert_int_equal(a.t.deadline, loop_now(l) + 40);
    a.stop_after = 2;
    run(l, &r);
    static const int want[] = { 2, 1 };
    assert_ids(&r, want, 2);
    loop_free(l);
}

static void timer_rearm_earlier(void **state)
{
    (void)state;
    struct loop *l = loop_new();
    static struct rec r;
    memset(&r, 0, sizeof r);
    struct tt a, b;
    tt_init(&a, &r, 1);
    tt_init(&b, &r, 2);
    tt_arm(l, &a, 100);
    tt_arm(l, &b, 50);
    tt_arm(l, &a, 10);          /* earlier: re-keyed at once */
    assert_int_equal(a.t.key, a.t.deadline);
    b.stop_after = 2;
    run(l, &r);
    static const int want[] = { 1, 2 };
    assert_ids(&r, want, 2);
    loop_free(l);
}

static void timer_stop(void **state)
{
    (void)state;
    struct loop *l = loop_new();
    static struct rec r;
    memset(&r, 0, sizeof r);
    struct tt a, b, c, d, e;
    tt_init(&a, &r, 1);
    tt_init(&b, &r, 2);
    tt_init(&c, &r, 3);
    tt_init(&d, &r, 4);
    tt_init(&e, &r, 5);

    /* stopping a timer that was never armed is harmless */
    loop_timer_stop(l, &e.t);
    assert_false(loop_timer_armed(&e.t));

    tt_arm(l, &a, 10);
    tt_arm(l, &b, 20);
    tt_arm(l, &c, 30);
    tt_arm(l, &d, 15);
    loop_timer_stop(l, &b.t);
    assert_false(loop_timer_armed(&b.t));
    loop_timer_stop(l, &b.t);   /* twice is fine */
    /* a lazily re-armed timer can be stopped too */
    tt_arm(l, &d, 60);
    loop_timer_stop(l, &d.t);
    /* and a stopped timer can be armed again */
    tt_arm(l, &e, 5);
    loop_timer_stop(l, &e.t);
    tt_arm(l, &e, 25);
    /* nothing stopped fires later either */
    struct tt z;
    tt_init(&z, &r, 99);
    z.stop_after = 4;
    tt_arm(l, &z, 80);
    run(l, &r);
    static const int want[] = { 1, 5, 3, 99 };
    assert_ids(&r, want, 4);
    loop_free(l);
}

static void timer_rearms_itself(void **state)
{
    (void)state;
    struct loop *l = loop_new();
    static struct rec r;
    memset(&r, 0, sizeof r);
    struct tt a;
    tt_init(&a, &r, 7);
    a.repeat = 4;
    a.stop_after = 5;
    tt_arm(l, &a, 1);
    run(l, &r);
    static const int want[] = { 7, 7, 7, 7, 7 };
    assert_ids(&r, want, 5);
    assert_false(loop_timer_armed(&a.t));
    loop_free(l);
}

/* A timer re-armed to a later deadline, overdue together with a timer whose
 * deadline is earlier, must not fire first: the loop is late, say after a
 * slow iteration, and both are due in the same run. */
struct late_ctx {
    struct tt x, a, b;
    bool done;
};

static void late_before_sleep(struct loop *l, void *arg)
{
    struct late_ctx *c = arg;
    if (c->done)
        return;
    c->done = true;
    tt_arm(l, &c->x, 5);
    tt_arm(l, &c->a, 10);
    tt_arm(l, &c->b, 15);
    tt_arm(l, &c->a, 20);       /* lazy: a keeps its key of +10 */
    struct timespec ts = { 0, 60 * 1000000L };
    nanosleep(&ts, NULL);       /* the iteration is slow: all are overdue */
}

static void timers_overdue_fire_in_deadline_order(void **state)
{
    (void)state;
    struct loop *l = loop_new();
    static struct rec r;
    memset(&r, 0, sizeof r);
    static struct late_ctx c;
    memset(&c, 0, sizeof c);
    tt_init(&c.x, &r, 5);
    tt_init(&c.a, &r, 20);
    tt_init(&c.b, &r, 15);
    c.x.stop_after = c.a.stop_after = c.b.stop_after = 3;
    loop_set_before_sleep(l, late_before_sleep, &c);
    run(l, &r);
    static const int want[] = { 5, 15, 20 };
    assert_ids(&r, want, 3);
    loop_free(l);
}

/* Many timers, random deadlines, re-arms both ways and stops; the heap grows
 * past its first allocation. Each live timer fires once, in deadline order. */
static void timers_many_random(void **state)
{
    (void)state;
    enum { N = 700 };
    struct loop *l = loop_new();
    static struct rec r;
    memset(&r, 0, sizeof r);
    static struct tt t[N];
    static bool stopped[N];
    srand(12345);
    for (int i = 0; i < N; i++) {
        tt_init(&t[i], &r, i);
        stopped[i] = false;
        tt_arm(l, &t[i], 1 + (uint64_t)(rand() % 60));
    }
    int live = N;
    for (int i = 0; i < N; i++) {
        switch (rand() % 4) {
        case 0:
            tt_arm(l, &t[i], 1 + (uint64_t)(rand() % 80));
            break;
        case 1:
            if (rand() % 3 == 0) {
                loop_timer_stop(l, &t[i].t);
                stopped[i] = true;
                live--;
            }
            break;
        default:
            break;
        }
    }
    for (int i = 0; i < N; i++)
        t[i].stop_after = live;
    run(l, &r);
    assert_int_equal(r.n, live);
    static int seen[N];
    memset(seen, 0, sizeof seen);
    uint64_t last = 0;
    for (int k = 0; k < r.n; k++) {
        int i = r.ids[k];
        assert_false(stopped[i]);
        assert_int_equal(seen[i], 0);
        seen[i] = 1;
        if (t[i].due < last)
            print_error("timer %d due %llu fired after one due %llu\n", i,
                        (unsigned long long)t[i].due, (unsigned long long)last);
        assert_true(t[i].due >= last);
        last = t[i].due;
    }
    loop_free(l);
}

/* ---- wake ---- */

struct wake_ctx {
    int calls;
    pthread_t loop_thread;
    bool right_thread;
    struct loop *l;
};

static void wake_cb(struct loop *l, void *arg)
{
    struct wake_ctx *w = arg;
    w->calls++;
    w->right_thread = pthread_equal(pthread_self(), w->loop_thread);
    loop_stop(l);
}

static void *waker(void *arg)
{
    struct wake_ctx *w = arg;
    struct timespec ts = { 0, 30 * 1000000L };
    nanosleep(&ts, NULL);
    loop_wake(w->l);
    return NULL;
}

static void loop_wake_from_thread(void **state)
{
    (void)state;
    struct loop *l = loop_new();
    static struct rec r;
    memset(&r, 0, sizeof r);
    struct wake_ctx w = { .loop_thread = pthread_self(), .l = l };
    loop_set_wake(l, wake_cb, &w);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, waker, &w), 0);
    run(l, &r);
    pthread_join(th, NULL);
    assert_int_equal(w.calls, 1);
    assert_true(w.right_thread);
    loop_free(l);

    /* wakes before the loop runs are not lost, and coalesce */
    l = loop_new();
    memset(&r, 0, sizeof r);
    struct wake_ctx w2 = { .loop_thread = pthread_self(), .l = l };
    loop_set_wake(l, wake_cb, &w2);
    loop_wake(l);
    loop_wake(l);
    loop_wake(l);
    run(l, &r);
    assert_int_equal(w2.calls, 1);
    loop_free(l);
}

/* ---- fd events ---- */

struct writer {
    struct loop_timer t;        /* first */
    int fd;
    const char *msg;
    bool close_it;
};

struct io_ctx {
    struct loop_io io;          /* first */
    int nread, nwrite, nevents;
    char got[64];
    size_t ngot;
    bool eof;
    bool script;                /* drive the fd_events sequence */
    struct writer *w;
    struct loop *l;
};

static void io_cb(struct loop *l, struct loop_io *io, unsigned ev)
{
    struct io_ctx *c = (struct io_ctx *)io;
    c->nevents++;
    if (ev & LOOP_WRITE)
        c->nwrite++;
    if (!(ev & LOOP_READ))
        return;
    c->nread++;
    for (;;) {              /* edge-triggered: read until EAGAIN */
        ssize_t n = read(io->fd, c->got + c->ngot, sizeof c->got - c->ngot);
        if (n > 0) {
            c->ngot += (size_t)n;
            continue;
        }
        if (n == 0)
            c->eof = true;
        break;
    }
    if (!c->script)
        return;
    /* 1: "ping" was there before the loop ran; the peer writes "pong" later.
     * 2: "pong" arrived on a new edge; the peer closes later.
     * 3: EOF. */
    if (c->nread == 1 && c->ngot == 4) {
        c->w->msg = "pong";
        loop_timer_arm(l, &c->w->t, 10);
    } else if (c->nread == 2 && c->ngot == 8) {
        c->w->msg = NULL;
        c->w->close_it = true;
        loop_timer_arm(l, &c->w->t, 10);
    } else if (c->eof) {
        loop_stop(l);
    }
}

static void writer_cb(struct loop *l, struct loop_timer *t)
{
    (void)l;
    struct writer *w = (struct writer *)t;
    if (w->msg)
        assert_int_equal(write(w->fd, w->msg, strlen(w->msg)), (ssize_t)strlen(w->msg));
    if (w->close_it) {
        close(w->fd);
        w->fd = -1;
    }
}

static void stop_cb(struct loop *l, struct loop_timer *t)
{
    (void)t;
    loop_stop(l);
}

static void loop_fd_events(void **state)
{
    (void)state;
    struct loop *l = loop_new();
    static struct rec r;
    memset(&r, 0, sizeof r);
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);

    struct writer w;
    memset(&w, 0, sizeof w);
    w.t.cb = writer_cb;
    w.fd = sv[1];
    struct io_ctx c;
    memset(&c, 0, sizeof c);
    c.io.fd = sv[0];
    c.io.cb = io_cb;
    c.script = true;
    c.w = &w;
    assert_int_equal(loop_add(l, &c.io), 0);
    /* registering twice is refused */
    assert_int_equal(loop_add(l, &c.io), -EEXIST);

    assert_int_equal(write(sv[1], "ping", 4), 4);
    run(l, &r);
    /* one edge per write and one for the close: edge-triggered, so the
     * handler is not called again for bytes it has already drained */
    assert_int_equal(c.nread, 3);
    assert_true(c.nwrite >= 1);
    assert_int_equal(c.ngot, 8);
    assert_memory_equal(c.got, "pingpong", 8);
    assert_true(c.eof);
    assert_int_equal(w.fd, -1);

    loop_del(l, &c.io);
    close(sv[0]);
    loop_free(l);
}

static void loop_del_stops_events(void **state)
{
    (void)state;
    struct loop *l = loop_new();
    static struct rec r;
    memset(&r, 0, sizeof r);
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
    struct io_ctx c;
    memset(&c, 0, sizeof c);
    c.io.fd = sv[0];
    c.io.cb = io_cb;
    assert_int_equal(loop_add(l, &c.io), 0);
    loop_del(l, &c.io);
    assert_int_equal(write(sv[1], "x", 1), 1);
    struct loop_timer stop;
    memset(&stop, 0, sizeof stop);
    stop.cb = stop_cb;
    loop_timer_arm(l, &stop, 30);
    run(l, &r);
    assert_int_equal(c.nevents, 0);
    close(sv[0]);
    close(sv[1]);

    /* an fd that is not open cannot be added */
    struct loop_io bad = { .fd = sv[0], .cb = io_cb };
    assert_int_equal(loop_add(l, &bad), -EBADF);
    loop_free(l);
}

/* ---- before_sleep and stop ---- */

static void count_and_stop(struct loop *l, void *arg)
{
    int *n = arg;
    if (++*n == 3)
        loop_stop(l);
}

static void loop_before_sleep_and_stop(void **state)
{
    (void)state;
    struct loop *l = loop_new();
    static struct rec r;
    memset(&r, 0, sizeof r);
    int n = 0;
    /* a short periodic timer makes iterations happen */
    struct tt a;
    tt_init(&a, &r, 1);
    a.repeat = 100;
    tt_arm(l, &a, 1);
    loop_set_before_sleep(l, count_and_stop, &n);
    run(l, &r);
    assert_int_equal(n, 3);
    assert_true(r.n >= 1 && r.n <= 3);
    loop_timer_stop(l, &a.t);
    loop_free(l);

    loop_free(NULL);
}

static void loop_clock(void **state)
{
    (void)state;
    struct loop *l = loop_new();
    uint64_t a = loop_clock_ms();
    assert_true(loop_now(l) <= a);
    assert_true(a - loop_now(l) < 1000);
    struct timespec ts = { 0, 20 * 1000000L };
    nanosleep(&ts, NULL);
    uint64_t b = loop_clock_ms();
    assert_true(b >= a + 19);
    loop_free(l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(timers_fire_in_order),
        cmocka_unit_test(timer_zero_ms_still_fires),
        cmocka_unit_test(timer_rearm_later_is_lazy),
        cmocka_unit_test(timer_rearm_earlier),
        cmocka_unit_test(timer_stop),
        cmocka_unit_test(timer_rearms_itself),
        cmocka_unit_test(timers_overdue_fire_in_deadline_order),
        cmocka_unit_test(timers_many_random),
        cmocka_unit_test(loop_wake_from_thread),
        cmocka_unit_test(loop_fd_events),
        cmocka_unit_test(loop_del_stops_events),
        cmocka_unit_test(loop_before_sleep_and_stop),
        cmocka_unit_test(loop_clock),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
