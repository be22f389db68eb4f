/* Unit tests for the access log writer in obs/: one line per entry through
 * the real writer thread into a file, JSON escaping of every kind of byte
 * (checked against a byte-at-a-time reference on random strings), field
 * cuts, null fields, and flushing on close. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "obs/obs.h"

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    static char buf[1 << 22];
    *len = fread(buf, 1, sizeof buf - 1, f);
    buf[*len] = '\0';
    fclose(f);
    return buf;
}

/* Well-formed UTF-8 at s (RFC 3629, table 3-7 of Unicode): its length or 0. */
static size_t ref_utf8(const unsigned char *s, size_t n)
{
    static const struct { unsigned char a, b, lo, hi; size_t len; } t[] = {
        { 0xc2, 0xdf, 0x80, 0xbf, 2 }, { 0xe0, 0xe0, 0xa0, 0xbf, 3 }, { 0xe1, 0xec, 0x80, 0xbf, 3 },
        { 0xed, 0xed, 0x80, 0x9f, 3 }, { 0xee, 0xef, 0x80, 0xbf, 3 }, { 0xf0, 0xf0, 0x90, 0xbf, 4 },
        { 0xf1, 0xf3, 0x80, 0xbf, 4 }, { 0xf4, 0xf4, 0x80, 0x8f, 4 },
    };
    for (size_t r = 0; r < sizeof t / sizeof t[0]; r++) {
        if (s[0] < t[r].a || s[0] > t[r].b)
            continue;
        if (n < t[r].len || s[1] < t[r].lo || s[1] > t[r].hi)
            return 0;
        for (size_t i = 2; i < t[r].len; i++)
            if ((s[i] & 0xc0) != 0x80)
                return 0;
        return t[r].len;
    }
    return 0;
}

/* The escaping JSON needs, one byte at a time (the reference). */
static size_t ref_escape(char *o, const char *s, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        size_t u = c >= 0x80 ? ref_utf8((const unsigned char *)s + i, n - i) : 0;
        if (u) {
            memcpy(o + k, s + i, u);
            k += u;
            i += u - 1;
            continue;
        }
        if (c == '"' || c == '\\')
            k += (size_t)sprintf(o + k, "\\%c", c);
        else if (c < 0x20 || c >= 0x7f)
            k += (size_t)sprintf(o + k, "\\u%04x", c);
        else
            o[k++] = (char)c;
    }
    o[k] = '\0';
    return k;
}

struct fixture {
    char path[64];
    struct obs_alog *log;
    struct obs_alog_buf buf;
};

static void open_log(struct fixture *f)
{
    snprintf(f->path, sizeof f->path, "/tmp/portico-test-alog-%d.log", (int)getpid());
    unlink(f->path);
    char err[256];
    f->log = obs_alog_open(f->path, err, sizeof err);
    assert_non_null(f->log);
    obs_alog_buf_init(&f->buf, f->log);
}

static char *close_log(struct fixture *f, size_t *len)
{
    obs_alog_flush(&f->buf);
    obs_alog_buf_free(&f->buf);
    obs_alog_close(f->log);
    char *text = slurp(f->path, len);
    unlink(f->path);
    return text;
}

static void test_one_line_with_all_fields(void **state)
{
    (void)state;
    struct fixture f;
    open_log(&f);
    struct obs_alog_entry e = {
        .request_id = "abc", .request_id_len = 3, .client = "10.0.0.1", .method = "GET",
        .method_len = 3, .path = "/a?b=1", .path_len = 6, .route = "/", .upstream = "app",
        .server = "10.0.0.2:80", .status = 200, .bytes_in = 41, .bytes_out = 1234,
        .duration_us = 1234567, .upstream_us = 999,
    };
    obs_alog_write(&f.buf, &e);
    e.upstream = e.server = NULL;
    e.upstream_us = 0;
    e.status = 404;
    obs_alog_write(&f.buf, &e);
    size_t len;
    char *text = close_log(&f, &len);
    char *second = strchr(text, '\n');
    assert_non_null(second);
    second++;
    /* the time is the only field that varies */
    assert_memory_equal(text, "{\"time\":\"", 9);
    second[-1] = '\0';
    assert_int_equal(strlen(text), 9 + 23 + strlen(strchr(text, 'Z')));   /* 2026-12-01T23:16:07.391 */
    assert_string_equal(strchr(text, 'Z'),
                        "Z\",\"request_id\":\"abc\",\"client\":\"10.0.0.1\",\"method\":\"GET\","
                        "\"path\":\"/a?b=1\",\"route\":\"/\",\"status\":200,\"bytes_in\":41,\"bytes_out\":1234,"
                        "\"duration_ms\":1234.567,\"upstream_ms\":0.999,\"upstream\":\"app\","
                        "\"server\":\"10.0.0.2:80\",\"cache\":null,\"rate_limit\":null}");
    const char *want2 = "\"status\":404,\"bytes_in\":41,\"bytes_out\":1234,\"duration_ms\":1234.567,"
                        "\"upstream_ms\":null,\"upstream\":null,\"server\":null,\"cache\":null,"
                        "\"rate_limit\":null}\n";
    assert_non_null(strstr(second, want2));
    assert_int_equal(strlen(strstr(second, want2)), strlen(want2));
    assert_int_equal(obs_alog_dropped(NULL), 0);
}

static void test_escaping_matches_reference(void **state)
{
    (void)state;
    struct fixture f;
    open_log(&f);
    enum { N = 3000 };
    static char paths[N][48];
    static size_t lens[N];
    srand(7);
    for (int t = 0; t < N; t++) {
        lens[t] = (size_t)(rand() % 48);
        for (size_t i = 0; i < lens[t]; i++) {
            int r = rand() % 10;     /* mostly plain, some of every other kind */
            paths[t][i] = (char)(r < 5 ? 0x20 + rand() % 95 : r < 7 ? "\"\\\x7f\t"[rand() % 4]
                                 : r < 8 ? 0x80 + rand() % 64 : r < 9 ? 0xc2 + rand() % 51
                                 : rand() % 256);
        }
        struct obs_alog_entry e = { .request_id = "", .client = "c", .method = "GET", .method_len = 3,
                                    .path = paths[t], .path_len = lens[t], .route = "/", .status = 200 };
        obs_alog_write(&f.buf, &e);
    }
    size_t len;
    char *text = close_log(&f, &len);
    char want[48 * 6 + 1];
    char *line = text;
    for (int t = 0; t < N; t++) {
        char *nl = strchr(line, '\n');
        assert_non_null(nl);
        *nl = '\0';
        char *p = strstr(line, "\"path\":\"");
        assert_non_null(p);
        p += 8;
        char *end = strstr(p, "\",\"route\":\"/\",\"status\":200,");
        assert_non_null(end);
        size_t wl = ref_escape(want, paths[t], lens[t]);
        assert_int_equal((size_t)(end - p), wl);
        assert_memory_equal(p, want, wl);
        line = nl + 1;
    }
    assert_int_equal(*line, '\0');
}

static void test_long_fields_are_cut(void **state)
{
    (void)state;
    struct fixture f;
    open_log(&f);
    static char path[5000];
    memset(path, 'a', sizeof path);
    path[0] = '/';
    struct obs_alog_entry e = { .request_id = "", .client = "c", .method = "GET", .method_len = 3,
                                .path = path, .path_len = sizeof path, .route = "/", .status = 200 };
    obs_alog_write(&f.buf, &e);
    size_t len;
    char *text = close_log(&f, &len);
    char *p = strstr(text, "\"path\":\"") + 8;
    char *end = strchr(p, '"');
    assert_int_equal(end - p, 512);
    assert_int_equal(text[len - 1], '\n');
}

static void test_basic_user(void **state)
{
    (void)state;
    char out[8];
    /* "alice:s3cr3t" */
    assert_int_equal(obs_basic_user("Basic YWxpY2U6czNjcjN0", 22, out, sizeof out), 5);
    assert_memory_equal(out, "alice", 5);
    assert_int_equal(obs_basic_user("basic   YWxpY2U6czNjcjN0", 24, out, sizeof out), 5);
    /* ":pw" (empty user) and "bob:" (empty password) */
    assert_int_equal(obs_basic_user("Basic OnB3", 10, out, sizeof out), 0);
    assert_int_equal(obs_basic_user("Basic Ym9iOg==", 14, out, sizeof out), 3);
    assert_memory_equal(out, "bob", 3);
    /* a long user is cut to the room given, its length still reported */
    /* "verylongusername:x" */
    assert_int_equal(obs_basic_user("Basic dmVyeWxvbmd1c2VybmFtZTp4", 30, out, sizeof out), 16);
    assert_memory_equal(out, "verylong", 8);
    /* not Basic, not base64, no colon */
    assert_int_equal(obs_basic_user("Bearer YWxpY2U6eA==", 19, out, sizeof out), 0);
    assert_int_equal(obs_basic_user("Basic YW*pY2U6eA==", 18, out, sizeof out), 0);
    assert_int_equal(obs_basic_user("Basic YWxpY2U=", 14, out, sizeof out), 0);   /* "alice" */
    assert_int_equal(obs_basic_user("Basic", 5, out, sizeof out), 0);
    assert_int_equal(obs_basic_user("", 0, out, sizeof out), 0);
    /* the password is never written past the user name */
    char big[64];
    memset(big, '#', sizeof big);
    assert_int_equal(obs_basic_user("Basic YWxpY2U6czNjcjN0", 22, big, sizeof big), 5);
    for (size_t i = 5; i < sizeof big; i++)
        assert_int_equal(big[i], '#');
}

static void test_outcome(void **state)
{
    (void)state;
    assert_string_equal(obs_audit_outcome(200), "success");
    assert_string_equal(obs_audit_outcome(101), "success");
    assert_string_equal(obs_audit_outcome(302), "success");
    assert_string_equal(obs_audit_outcome(304), "success");
    assert_string_equal(obs_audit_outcome(401), "denied");
    assert_string_equal(obs_audit_outcome(403), "denied");
    assert_string_equal(obs_audit_outcome(407), "denied");
    assert_string_equal(obs_audit_outcome(429), "denied");
    assert_string_equal(obs_audit_outcome(404), "failure");
    assert_string_equal(obs_audit_outcome(413), "failure");
    assert_string_equal(obs_audit_outcome(502), "failure");
    assert_string_equal(obs_audit_outcome(499), "aborted");
    assert_string_equal(obs_audit_outcome(0), "failure");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_line_with_all_fields),
        cmocka_unit_test(test_escaping_matches_reference),
        cmocka_unit_test(test_long_fields_are_cut),
        cmocka_unit_test(test_basic_user),
        cmocka_unit_test(test_outcome),
    };
    return cmocka_run_group_tests_name("alog", tests, NULL, NULL);
}
