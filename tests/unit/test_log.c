/* tests/unit/test_log.c: the diagnostic log: line format, levels, rate
 * limits and their summaries, and the ring that never blocks a caller. The
 * tests run in order in one process: the synchronous ones first, then
 * log_start() (which cannot be undone). stderr is a pipe the test reads. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"

static int rd = -1;             /* the read end of the pipe that is now stderr */
static char got[1 << 20];

static void capture(void)
{
    /* cmocka reports through the stdio stream: keep that on the real stderr */
    int keep = dup(STDERR_FILENO);
    assert_true(keep >= 0);
    stderr = fdopen(keep, "w");
    setvbuf(stderr, NULL, _IONBF, 0);
    int p[2];
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    fcntl(p[0], F_SETFL, O_NONBLOCK);
    fcntl(p[0], F_SETPIPE_SZ, 1 << 20);
    fcntl(p[1], F_SETPIPE_SZ, 1 << 20);
    assert_int_equal(dup2(p[1], STDERR_FILENO), STDERR_FILENO);
    close(p[1]);
    rd = p[0];
}

/* Everything written so far (waiting up to wait_ms for at least `min` bytes). */
static size_t drain(size_t min, int wait_ms)
{
    size_t n = 0;
    for (int t = 0;; t++) {
        ssize_t r = read(rd, got + n, sizeof got - 1 - n);
        if (r > 0) {
            n += (size_t)r;
            continue;
        }
        if (n >= min || t >= wait_ms)
            break;
        struct timespec ts = { 0, 1000000 };
        nanosleep(&ts, NULL);
    }
    got[n] = '\0';
    return n;
}

static size_t count(const char *s, const char *needle)
{
    size_t n = 0;
    for (const char *p = s; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

static void format_and_levels(void **state)
{
    (void)state;
    log_set_level(LOG_INFO);
    log_debug("hidden %d", 1);
    log_info("shown %d", 2);
    log_warn("two\nlines\rhere");
    log_set_level(LOG_ERROR);
    log_warn("hidden too");
    log_error("the end");
    log_set_level(LOG_INFO);
    drain(1, 100);
    assert_null(strstr(got, "hidden"));
    /* 2026-11-22T03:40:00.123Z info shown 2 */
    char lvl[8];
    int n = 0;
    assert_int_equal(sscanf(got, "%*4d-%*2d-%*2dT%*2d:%*2d:%*2d.%*3dZ %7s shown 2%n", lvl, &n), 1);
    assert_string_equal(lvl, "info");
    assert_non_null(strstr(got, " warn two lines here\n"));   /* one event, one line */
    assert_non_null(strstr(got, " error the end\n"));
    assert_int_equal(count(got, "\n"), 3);
}

static void long_lines_are_cut(void **state)
{
    (void)state;
    static char big[5000];
    memset(big, 'x', sizeof big - 1);
    log_info("%s", big);
    size_t n = drain(1, 100);
    assert_int_equal(n, LOG_LINE_MAX - 1);          /* cut, and still one line */
    assert_int_equal(got[n - 1], '\n');
    assert_int_equal(count(got, "\n"), 1);
}

static void rate_limit_counts_and_summarises(void **state)
{
    (void)state;
    struct log_stats before, after;
    log_get_stats(&before);
    /* wait for the start of a second so the burst fits in one window */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    time_t s0 = ts.tv_sec;
    do
        clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    while (ts.tv_sec == s0);
    for (int i = 0; i < 1000; i++)
        log_rl_info("client request rejected: %d number %d", 400, i);
    log_rl_summarise();
    drain(1, 100);
    log_get_stats(&after);
    assert_int_equal(count(got, "client request rejected: 400 number"), LOG_RL_PER_SEC + 1);
    assert_int_equal(after.suppressed - before.suppressed, 1000 - LOG_RL_PER_SEC);
    char want[200];
    snprintf(want, sizeof want, "info suppressed %d similar lines in 1s (more than %d/s from ",
             1000 - LOG_RL_PER_SEC, LOG_RL_PER_SEC);
    assert_non_null(strstr(got, want));
    /* the sample is the first line held back */
    snprintf(want, sizeof want, "), e.g.: client request rejected: 400 number %d\n", LOG_RL_PER_SEC);
    assert_non_null(strstr(got, want));
    assert_non_null(strstr(got, "test_log.c:"));
    /* nothing more to summarise: no second summary */
    log_rl_summarise();
    assert_int_equal(drain(0, 20), 0);
    /* a level below the threshold is neither written nor counted */
    log_set_level(LOG_WARN);
    for (int i = 0; i < 100; i++)
        log_rl_info("quiet %d", i);
    log_set_level(LOG_INFO);
    log_get_stats(&before);
    assert_int_equal(before.suppressed, after.suppressed);
    assert_int_equal(drain(0, 20), 0);
}

static void category_limit_is_shared(void **state)
{
    (void)state;
    static struct log_rl cat = LOG_RL_INIT("upstream errors", 3);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    time_t s0 = ts.tv_sec;
    do
        clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    while (ts.tv_sec == s0);
    for (int i = 0; i < 10; i++) {
        log_rl_msg(&cat, LOG_WARN, "site A %d", i);
        log_rl_msg(&cat, LOG_WARN, "site B %d", i);
    }
    log_rl_summarise();
    drain(1, 100);
    assert_int_equal(count(got, "warn site "), 3);
    assert_non_null(strstr(got, "warn suppressed 17 similar lines in 1s (more than 3/s from upstream "
                                "errors), e.g.: site B 1\n"));
}

static void ring_never_blocks(void **state)
{
    (void)state;
    /* a stderr nobody reads: shrink the pipe and fill it */
    fcntl(STDERR_FILENO, F_SETPIPE_SZ, 4096);
    assert_int_equal(log_start(), 0);
    struct log_stats before, after;
    log_get_stats(&before);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < 200000; i++)
        log_warn("line %d of a flood nobody reads, padded to about a hundred bytes ....", i);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    assert_true(secs < 5.0);                /* it returned: nobody blocked on the pipe */
    log_get_stats(&after);
    assert_true(after.dropped - before.dropped > 100000);
    /* now read: the writer catches up and says how many lines were lost */
    char *p = got;
    size_t total = 0;
    for (int t = 0; t < 3000 && !strstr(got, "lines dropped because stderr did not keep up"); t++) {
        ssize_t r = read(rd, p, sizeof got - 1 - total);
        if (r > 0) {
            total += (size_t)r;
            p += r;
            *p = '\0';
            if (total > sizeof got / 2) {           /* keep only the tail */
                memmove(got, got + total - 4096, 4096);
                total = 4096;
                p = got + total;
                *p = '\0';
            }
            continue;
        }
        struct timespec ts = { 0, 1000000 };
        nanosleep(&ts, NULL);
    }
    assert_non_null(strstr(got, "lines dropped because stderr did not keep up"));
    /* every line that came out is whole */
    log_stop();
}

int main(void)
{
    capture();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(format_and_levels),
        cmocka_unit_test(long_lines_are_cut),
        cmocka_unit_test(rate_limit_counts_and_summarises),
        cmocka_unit_test(category_limit_is_shared),
        cmocka_unit_test(ring_never_blocks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
