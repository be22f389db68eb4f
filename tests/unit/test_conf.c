/* Unit tests for conf/: value parsers, defaults, and the exact
 * file:line:col: key.path: message of every kind of mistake. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "conf/conf.h"

static struct conf *load(const char *text, char *err, size_t errlen)
{
    err[0] = '\0';
    return conf_load_string("t.yaml", text, strlen(text), err, errlen);
}

#define BASE                                                    \
    "listen: [ \"127.0.0.1:8080\" ]\n"                          \
    "upstreams:\n"                                              \
    "  app:\n"                                                  \
    "    servers:\n"                                            \
    "      - { address: \"127.0.0.1:9001\", weight: 3 }\n"      \
    "      - \"127.0.0.1:9002\"\n"                              \
    "routes:\n"                                                 \
    "  - match: { host: \"API.example.com\", prefix: /v1/ }\n"  \
    "    upstream: app\n"                                       \
    "  - upstream: app\n"

static void test_durations_and_sizes(void **state)
{
    (void)state;
    uint64_t v;
    assert_int_equal(conf_parse_duration("500ms", &v), 0);
    assert_int_equal(v, 500);
    assert_int_equal(conf_parse_duration("10s", &v), 0);
    assert_int_equal(v, 10000);
    assert_int_equal(conf_parse_duration("5m", &v), 0);
    assert_int_equal(v, 300000);
    assert_int_equal(conf_parse_duration("1h", &v), 0);
    assert_int_equal(v, 3600000);
    assert_int_equal(conf_parse_duration("2d", &v), 0);
    assert_int_equal(v, 172800000);
    assert_int_equal(conf_parse_duration("0", &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(conf_parse_duration("10", &v), -1);
    assert_int_equal(conf_parse_duration("-1s", &v), -1);
    assert_int_equal(conf_parse_duration("1.5s", &v), -1);
    assert_int_equal(conf_parse_duration("s", &v), -1);
    assert_int_equal(conf_parse_duration("99999999999999999999s", &v), -1);

    assert_int_equal(conf_parse_size("16KiB", &v), 0);
    assert_int_equal(v, 16384);
    assert_int_equal(conf_parse_size("8MiB", &v), 0);
    assert_int_equal(v, 8u << 20);
    assert_int_equal(conf_parse_size("1GiB", &v), 0);
    assert_int_equal(v, 1u << 30);
    assert_int_equal(conf_parse_size("512", &v), 0);
    assert_int_equal(v, 512);
    assert_int_equal(conf_parse_size("16KB", &v), -1);
    assert_int_equal(conf_parse_size("", &v), -1);
}

static void test_valid_and_defaults(void **state)
{
    (void)state;
    char err[512];
    struct conf *c = load(BASE, err, sizeof err);
    assert_non_null(c);
    assert_int_equal(c->nlisten, 1);
    assert_int_equal(c->nupstreams, 1);
    assert_string_equal(c->upstreams[0].name, "app");
    assert_int_equal(c->upstreams[0].nservers, 2);
    assert_int_equal(c->upstreams[0].servers[0].weight, 3);
    assert_int_equal(c->upstreams[0].servers[1].weight, 1);
    assert_string_equal(c->upstreams[0].servers[1].addr.text, "127.0.0.1:9002");
    assert_int_equal(c->upstreams[0].keepalive, 64);
    assert_int_equal(c->upstreams[0].connect_timeout, 5000);
    assert_int_equal(c->nroutes, 2);
    assert_string_equal(c->routes[0].host, "api.example.com");   /* lowercased */
    assert_string_equal(c->routes[0].prefix, "/v1/");
    assert_null(c->routes[1].host);
    assert_string_equal(c->routes[1].prefix, "/");
    assert_ptr_equal(c->routes[1].upstream, &c->upstreams[0]);
    assert_int_equal(c->limits.max_header_bytes, 16384);
    assert_int_equal(c->limits.max_body, 16u << 20);
    assert_int_equal(c->limits.header_timeout, 10000);
    assert_int_equal(c->shutdown_timeout, 30000);
    assert_true(c->workers >= 1);
    /* references */
    conf_ref(c);
    conf_unref(c);
    conf_unref(c);
}

static void test_limits(void **state)
{
    (void)state;
    char err[512];
    struct conf *c = load(BASE "limits: { header_timeout: 2s, max_body: 1MiB, max_headers: 10,"
                               " max_request_line: 1KiB, max_header_bytes: 4KiB }\n"
                               "workers: 3\nshutdown_timeout: 5s\n", err, sizeof err);
    assert_non_null(c);
    assert_int_equal(c->limits.header_timeout, 2000);
    assert_int_equal(c->limits.max_body, 1u << 20);
    assert_int_equal(c->limits.max_headers, 10);
    assert_int_equal(c->limits.max_request_line, 1024);
    assert_int_equal(c->workers, 3);
    assert_int_equal(c->shutdown_timeout, 5000);
    conf_unref(c);
}

struct bad_case {
    const char *text;
    const char *error;          /* expected message, exactly */
};

static void test_errors(void **state)
{
    (void)state;
    static const struct bad_case cases[] = {
        { BASE "bogus: 1\n", "t.yaml:11:1: bogus: unknown key" },
        { BASE "limits: { header_timeout: 10x }\n",
          "t.yaml:11:27: limits.header_timeout: expected a duration like 500ms, 10s, 5m, 1h, 1d" },
        { BASE "limits: { idle_timeout: 0 }\n",
          "t.yaml:11:25: limits.idle_timeout: must be greater than zero" },
        { BASE "limits: { max_body: lots }\n",
          "t.yaml:11:21: limits.max_body: expected a size like 512, 16KiB, 8MiB, 1GiB" },
        { BASE "limits: { max_headers: -3 }\n",
          "t.yaml:11:24: limits.max_headers: expected an integer from 1 to 1000" },
        { BASE "limits: [ 1 ]\n", "t.yaml:11:9: limits: expected a mapping" },
        { BASE "workers: many\n", "t.yaml:11:10: workers: expected an integer from 1 to 256" },
        { "listen: [ \"127.0.0.1:8080\" ]\n"
          "upstreams:\n"
          "  app:\n"
          "    servers:\n"
          "      - { address: \"127.0.0.1:9001\", weight: 0 }\n"
          "routes: [ { upstream: app } ]\n",
          "t.yaml:5:46: upstreams.app.servers[0].weight: expected an integer from 1 to 1000" },
        { "listen: [ \"127.0.0.1:8080\" ]\n"
          "upstreams:\n"
          "  app:\n"
          "    servers: []\n"
          "routes: [ { upstream: app } ]\n",
          "t.yaml:4:14: upstreams.app.servers: needs at least one server" },
        { "listen: [ \"127.0.0.1:8080\" ]\n"
          "upstreams:\n"
          "  app: { servers: [ \"127.0.0.1:99999\" ] }\n"
          "routes: [ { upstream: app } ]\n",
          "t.yaml:3:21: upstreams.app.servers[0]: invalid port \"99999\"" },
        { "listen: [ \"127.0.0.1:8080\" ]\n"
          "upstreams:\n"
          "  app: { servers: [ { weight: 2 } ] }\n"
          "routes: [ { upstream: app } ]\n",
          "t.yaml:3:21: upstreams.app.servers[0]: missing key \"address\"" },
        { "listen: [ \"127.0.0.1:8080\" ]\n"
          "upstreams:\n"
          "  app: { servers: [ \"127.0.0.1:9001\" ], keepalived: 3 }\n"
          "routes: [ { upstream: app } ]\n",
          "t.yaml:3:41: upstreams.app.keepalived: unknown key" },
        { "listen: [ \"127.0.0.1:8080\" ]\n"
          "upstreams:\n"
          "  app: { servers: [ \"127.0.0.1:9001\" ] }\n"
          "routes:\n"
          "  - match: { prefix: /x }\n"
          "    upstream: nope\n",
          "t.yaml:6:15: routes[0].upstream: no upstream named \"nope\"" },
        { "listen: [ \"127.0.0.1:8080\" ]\n"
          "upstreams:\n"
          "  app: { servers: [ \"127.0.0.1:9001\" ] }\n"
          "routes:\n"
          "  - match: { prefix: x }\n"
          "    upstream: app\n",
          "t.yaml:5:22: routes[0].match.prefix: must start with \"/\"" },
        { "listen: [ \"127.0.0.1:8080\" ]\n"
          "upstreams:\n"
          "  app: { servers: [ \"127.0.0.1:9001\" ] }\n"
          "routes:\n"
          "  - match: { path: /x }\n"
          "    upstream: app\n",
          "t.yaml:5:14: routes[0].match.path: unknown key" },
        { "listen: [ \"127.0.0.1:8080\" ]\n"
          "upstreams:\n"
          "  app: { servers: [ \"127.0.0.1:9001\" ] }\n"
          "routes:\n"
          "  - match: { prefix: /x }\n",
          "t.yaml:5:5: routes[0]: missing key \"upstream\"" },
        { "upstreams:\n"
          "  app: { servers: [ \"127.0.0.1:9001\" ] }\n"
          "routes: [ { upstream: app } ]\n",
          "t.yaml:1:1: listen: missing: at least one \"host:port\" to listen on" },
        { "listen: [ \"nohostport\" ]\n"
          "upstreams:\n"
          "  app: { servers: [ \"127.0.0.1:9001\" ] }\n"
          "routes: [ { upstream: app } ]\n",
          "t.yaml:1:11: listen[0]: expected \"host:port\"" },
        { "", "t.yaml:1:1: (top): the file is empty" },
        { "- 1\n", "t.yaml:1:1: (top): expected a mapping" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[512];
        struct conf *c = load(cases[i].text, err, sizeof err);
        if (c)
            fail_msg("case %zu loaded but should fail with: %s", i, cases[i].error);
        if (strcmp(err, cases[i].error) != 0)
            fail_msg("case %zu:\n  got:  %s\n  want: %s", i, err, cases[i].error);
    }
}

static void test_yaml_syntax_error(void **state)
{
    (void)state;
    char err[512];
    struct conf *c = load("listen: [\n", err, sizeof err);
    assert_null(c);
    assert_true(strncmp(err, "t.yaml:2:1: ", 12) == 0);
}

static void expect_err(const char *text, const char *want)
{
    char err[512];
    struct conf *c = load(text, err, sizeof err);
    assert_null(c);
    assert_string_equal(err, want);
}

static void test_log_keys(void **state)
{
    (void)state;
    char err[512];
    struct conf *c = load(BASE "access_log: { path: /tmp/a.log, flush: 50ms }\n"
                          "audit_log: { path: /tmp/b.log }\n", err, sizeof err);
    assert_non_null(c);
    assert_string_equal(c->access_log, "/tmp/a.log");
    assert_int_equal(c->access_log_flush, 50);
    assert_string_equal(c->audit_log, "/tmp/b.log");
    assert_false(c->routes[0].audit);
    conf_unref(c);
    c = load(BASE "access_log: {}\n", err, sizeof err);
    assert_non_null(c);
    assert_string_equal(c->access_log, "stdout");
    assert_int_equal(c->access_log_flush, 200);
    assert_null(c->audit_log);
    conf_unref(c);

    expect_err(BASE "access_log: { flush: 0 }\n", "t.yaml:11:22: access_log.flush: must be greater than zero");
    expect_err(BASE "access_log: { flush: 2m }\n",
               "t.yaml:11:22: access_log.flush: at most 1m: lines would wait too long");
    expect_err(BASE "audit_log: { flush: 1s }\n", "t.yaml:11:14: audit_log.flush: unknown key");
    expect_err(BASE "audit_log: {}\n", "t.yaml:11:12: audit_log: missing key \"path\" (a file, stdout or stderr)");
    expect_err(BASE "audit_log: [ x ]\n", "t.yaml:11:12: audit_log: expected a mapping");
    /* a route's audit may come before audit_log in the file */
    c = load(BASE "    audit: true\naudit_log: { path: stderr }\n", err, sizeof err);
    assert_non_null(c);
    assert_true(c->routes[1].audit);
    assert_false(c->routes[0].audit);
    conf_unref(c);
}

static void test_log_level_and_admin_timeouts(void **state)
{
    (void)state;
    char err[512];
    struct conf *c = load(BASE, err, sizeof err);
    assert_non_null(c);
    assert_int_equal(c->log_level, LOG_INFO);
    conf_unref(c);
    static const char *const names[] = { "debug", "info", "warn", "error" };
    for (int i = 0; i < 4; i++) {
        char text[1024];
        snprintf(text, sizeof text, "%slog_level: %s\n", BASE, names[i]);
        c = load(text, err, sizeof err);
        assert_non_null(c);
        assert_int_equal(c->log_level, i);
        conf_unref(c);
    }
    expect_err(BASE "log_level: verbose\n", "t.yaml:11:12: log_level: expected debug, info, warn or error");
    expect_err(BASE "log_level: [ info ]\n", "t.yaml:11:12: log_level: expected debug, info, warn or error");

    c = load(BASE "admin: { listen: \"127.0.0.1:9901\" }\n", err, sizeof err);
    assert_non_null(c);
    assert_int_equal(c->admin_header_timeout, 5000);
    assert_int_equal(c->admin_idle_timeout, 30000);
    assert_int_equal(c->admin_send_timeout, 10000);
    conf_unref(c);
    c = load(BASE "admin: { header_timeout: 1s, idle_timeout: 2s, send_timeout: 3s }\n", err, sizeof err);
    assert_non_null(c);
    assert_int_equal(c->admin_header_timeout, 1000);
    assert_int_equal(c->admin_idle_timeout, 2000);
    assert_int_equal(c->admin_send_timeout, 3000);
    conf_unref(c);
    expect_err(BASE "admin: { idle_timeout: 0s }\n", "t.yaml:11:24: admin.idle_timeout: must be greater than zero");
    expect_err(BASE "admin: { send_timeout: soon }\n",
               "t.yaml:11:24: admin.send_timeout: expected a duration like 500ms, 10s, 5m, 1h, 1d");
}

static void test_missing_file(void **state)
{
    (void)state;
    char err[512];
    assert_null(conf_load("/nonexistent/portico.yaml", err, sizeof err));
    assert_string_equal(err, "/nonexistent/portico.yaml: No such file or directory");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_durations_and_sizes),
        cmocka_unit_test(test_valid_and_defaults),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_yaml_syntax_error),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_log_keys),
        cmocka_unit_test(test_log_level_and_admin_timeouts),
    };
    return cmocka_run_group_tests_name("conf", tests, NULL, NULL);
}
