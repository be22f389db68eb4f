/* tests/unit/test_pg.c: the PostgreSQL protocol parsers, the SQL snippets
 * the pooler reads (SET, BEGIN READ ONLY), SCRAM-SHA-256 both ways and md5,
 * checked against values PostgreSQL itself produced. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "conf/conf.h"
#include "pg/pg.h"

static size_t put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
    return 4;
}

static void framing(void **state)
{
    (void)state;
    struct pg_msg m = { 0 };
    const uint8_t q[] = { 'Q', 0, 0, 0, 13, 'S', 'E', 'L', 'E', 'C', 'T', ' ', '1', 0, 'X' };
    for (size_t n = 0; n < 14; n++)
        assert_int_equal(pg_msg_next(q, n, PG_MAX_MSG, &m), 0);     /* need more, at every cut */
    assert_int_equal(pg_msg_next(q, sizeof q, PG_MAX_MSG, &m), 14);
    assert_int_equal(m.type, 'Q');
    assert_int_equal(m.len, 9);
    assert_memory_equal(m.body, "SELECT 1", 9);
    assert_true(pg_client_msg_valid(&m));

    const uint8_t short_len[] = { 'Q', 0, 0, 0, 3 };
    assert_int_equal(pg_msg_next(short_len, 5, PG_MAX_MSG, &m), -1);
    const uint8_t huge[] = { 'Q', 0x7f, 0xff, 0xff, 0xff };
    assert_int_equal(pg_msg_next(huge, 5, PG_MAX_MSG, &m), -1);
    const uint8_t empty[] = { 'S', 0, 0, 0, 4 };
    assert_int_equal(pg_msg_next(empty, 5, PG_MAX_MSG, &m), 5);
    assert_true(pg_client_msg_valid(&m));
}

static void client_messages(void **state)
{
    (void)state;
    struct pg_msg m = { 'Q', 8, (const uint8_t *)"SELECT 1" };   /* no NUL */
    assert_false(pg_client_msg_valid(&m));
    m = (struct pg_msg){ 'Q', 10, (const uint8_t *)"SELECT 1\0x" };  /* bytes after */
    assert_false(pg_client_msg_valid(&m));

    /* Parse "s1", "SELECT $1", one type */
    uint8_t p[64];
    size_t n = 0;
    memcpy(p, "s1\0SELECT $1\0", 13);
    n = 13;
    p[n++] = 0;
    p[n++] = 1;
    n += put32(p + n, 23);
    m = (struct pg_msg){ 'P', (uint32_t)n, p };
    assert_true(pg_client_msg_valid(&m));
    struct pg_parse pp;
    assert_true(pg_parse_parse(&m, &pp));
    assert_int_equal(pp.name_len, 2);
    assert_memory_equal(pp.query, "SELECT $1", 9);
    assert_int_equal(pp.rest_len, 6);
    m.len = (uint32_t)n - 1;                            /* one type byte missing */
    assert_false(pg_client_msg_valid(&m));
    assert_false(pg_parse_parse(&m, &pp));

    /* Bind: portal "", stmt "s1", 0 formats, 1 param "42", 0 result formats */
    n = 0;
    memcpy(p, "\0s1\0", 4);
    n = 4;
    p[n++] = 0, p[n++] = 0;
    p[n++] = 0, p[n++] = 1;
    n += put32(p + n, 2);
    p[n++] = '4', p[n++] = '2';
    p[n++] = 0, p[n++] = 0;
    m = (struct pg_msg){ 'B', (uint32_t)n, p };
    assert_true(pg_client_msg_valid(&m));
    size_t off, sl;
    assert_true(pg_parse_bind(&m, &off, &sl));
    assert_int_equal(off, 1);
    assert_int_equal(sl, 2);
    put32(p + 8, 200);                                  /* a parameter longer than the message */
    assert_false(pg_client_msg_valid(&m));
    put32(p + 8, 0xffffffffu);                          /* NULL: no bytes follow, so 2 are extra */
    assert_false(pg_client_msg_valid(&m));

    /* Describe / Close */
    m = (struct pg_msg){ 'D', 4, (const uint8_t *)"Ss1\0" };
    char what;
    const char *name;
    size_t nl;
    assert_true(pg_client_msg_valid(&m));
    assert_true(pg_parse_target(&m, &what, &name, &nl));
    assert_int_equal(what, 'S');
    assert_int_equal(nl, 2);
    m = (struct pg_msg){ 'C', 4, (const uint8_t *)"Xs1\0" };
    assert_false(pg_client_msg_valid(&m));
    m = (struct pg_msg){ 'E', 1, (const uint8_t *)"" };  /* Execute without the row count */
    assert_false(pg_client_msg_valid(&m));
    m = (struct pg_msg){ 'z', 0, (const uint8_t *)"" };
    assert_false(pg_client_msg_valid(&m));
    m = (struct pg_msg){ 'S', 1, (const uint8_t *)"x" };  /* Sync carries nothing */
    assert_false(pg_client_msg_valid(&m));
}

static void startup_packets(void **state)
{
    (void)state;
    uint8_t p[256];
    size_t n = 8;
    const char kv[] = "user\0app\0database\0db\0application_name\0psql\0";
    memcpy(p + 8, kv, sizeof kv);      /* sizeof includes the final NUL terminator */
    n += sizeof kv;
    put32(p, (uint32_t)n);
    put32(p + 4, 196608);
    struct pg_startup st;
    const char *why;
    for (size_t k = 0; k < n; k++)
        assert_int_equal(pg_startup_parse(p, k, &st, &why), 0);
    assert_int_equal(pg_startup_parse(p, n, &st, &why), (long)n);
    assert_int_equal(st.kind, PG_STARTUP);
    assert_string_equal(st.user, "app");
    assert_string_equal(st.database, "db");
    assert_int_equal(st.nparams, 1);
    assert_string_equal(st.names[0], "application_name");

    put32(p + 4, 2 << 16);                              /* protocol 2 */
    assert_int_equal(pg_startup_parse(p, n, &st, &why), -1);
    put32(p + 4, 196608);
    p[n - 1] = 'x';                                     /* unterminated */
    assert_int_equal(pg_startup_parse(p, n, &st, &why), -1);

    uint8_t ssl[8];
    put32(ssl, 8);
    put32(ssl + 4, 80877103);
    assert_int_equal(pg_startup_parse(ssl, 8, &st, &why), 8);
    assert_int_equal(st.kind, PG_SSL_REQUEST);
    put32(ssl + 4, 80877104);
    assert_int_equal(pg_startup_parse(ssl, 8, &st, &why), 8);
    assert_int_equal(st.kind, PG_GSSENC_REQUEST);

    uint8_t cancel[16];
    put32(cancel, 16);
    put32(cancel + 4, 80877102);
    put32(cancel + 8, 0x01000002);
    put32(cancel + 12, 0xdeadbeef);
    assert_int_equal(pg_startup_parse(cancel, 16, &st, &why), 16);
    assert_int_equal(st.kind, PG_CANCEL_REQUEST);
    assert_int_equal(st.cancel_pid, 0x01000002);
    assert_int_equal(st.cancel_key, 0xdeadbeef);

    uint8_t bad[4];
    put32(bad, 4);                                      /* known to be wrong from 4 bytes */
    assert_int_equal(pg_startup_parse(bad, 4, &st, &why), -1);
    put32(bad, 1u << 20);
    assert_int_equal(pg_startup_parse(bad, 4, &st, &why), -1);

    /* no user */
    n = 8;
    memcpy(p + 8, "database\0db\0", 13);
    n += 13;
    put32(p, (uint32_t)n);
    put32(p + 4, 196608);
    assert_int_equal(pg_startup_parse(p, n, &st, &why), -1);
}

static void set_statements(void **state)
{
    (void)state;
    struct pg_set s;
#define Q(x) x, strlen(x)
    assert_true(pg_parse_set(Q("SET search_path TO pg_catalog, public"), &s));
    assert_string_equal(s.name, "search_path");
    assert_int_equal(s.value_len, strlen("pg_catalog, public"));
    assert_memory_equal(s.value, "pg_catalog, public", s.value_len);
    assert_true(pg_parse_set(Q("  set  SESSION DateStyle = 'ISO, MDY' ;  "), &s));
    assert_string_equal(s.name, "datestyle");
    assert_memory_equal(s.value, "'ISO, MDY'", s.value_len);
    assert_true(pg_parse_set(Q("SET TIME ZONE 'UTC'"), &s));
    assert_string_equal(s.name, "timezone");
    assert_true(pg_parse_set(Q("SET x.y = 'a;b'"), &s));
    assert_memory_equal(s.value, "'a;b'", s.value_len);
    assert_true(pg_parse_set(Q("RESET work_mem"), &s));
    assert_true(s.reset && !s.reset_all);
    assert_true(pg_parse_set(Q("reset all;"), &s));
    assert_true(s.reset_all);
    assert_true(pg_parse_set(Q("/* c */ -- d\nSET a = 1"), &s));
    assert_false(pg_parse_set(Q("SET LOCAL a = 1"), &s));
    assert_false(pg_parse_set(Q("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"), &s));
    assert_false(pg_parse_set(Q("SET ROLE admin"), &s));
    assert_false(pg_parse_set(Q("SET a = 1; SELECT 1"), &s));
    assert_false(pg_parse_set(Q("SET a = 'unterminated"), &s));
    assert_false(pg_parse_set(Q("SETTINGS"), &s));
    assert_false(pg_parse_set(Q("SET a ="), &s));
    assert_false(pg_parse_set(Q("SELECT 1"), &s));

    assert_true(pg_query_read_only(Q("BEGIN READ ONLY")));
    assert_true(pg_query_read_only(Q("begin transaction isolation level repeatable read, read only")));
    assert_true(pg_query_read_only(Q("START TRANSACTION READ ONLY")));
    assert_false(pg_query_read_only(Q("BEGIN READ WRITE")));
    assert_false(pg_query_read_only(Q("BEGIN")));
    assert_false(pg_query_read_only(Q("SELECT 'BEGIN READ ONLY'")));
#undef Q
}

/* A verifier PostgreSQL 15 made for password "apppass". */
static const char APP_VERIFIER[] =
    "SCRAM-SHA-256$4096:yt+OXdOUEpWUuSAZJT4C9w==$cs2zZJ56Zg2CGXWmWQkKozmITILu4LDGlzKpiBiy3Lg=:"
    "8SEqD7Q4bLvsArFzARU2N6Uqht6VDD/LdVxXO9GhuBs=";

static void scram_verifier(void **state)
{
    (void)state;
    struct pg_scram_secret pgs, mine;
    assert_true(pg_scram_parse_secret(APP_VERIFIER, &pgs));
    assert_int_equal(pgs.iterations, 4096);
    assert_int_equal(pgs.salt_len, 16);
    assert_true(pg_scram_from_password("apppass", pgs.salt, pgs.salt_len, 4096, &mine));
    assert_memory_equal(mine.stored_key, pgs.stored_key, 32);
    assert_memory_equal(mine.server_key, pgs.server_key, 32);
    assert_true(pg_scram_from_password("apppasS", pgs.salt, pgs.salt_len, 4096, &mine));
    assert_memory_not_equal(mine.stored_key, pgs.stored_key, 32);

    assert_false(pg_scram_parse_secret("SCRAM-SHA-256$4096:abc$x:y", &mine));
    assert_false(pg_scram_parse_secret("SCRAM-SHA-256$0:yt+OXdOUEpWUuSAZJT4C9w==$a:b", &mine));
    assert_false(pg_scram_parse_secret("md5abc", &mine));
}

/* portico's client against portico's server: right and wrong passwords. */
static int scram_exchange(const char *stored_for, const char *client_pw)
{
    struct pg_scram_secret sec;
    assert_true(pg_scram_from_password(stored_for, NULL, 0, 4096, &sec));
    struct pg_scram_client c;
    struct pg_scram_server s;
    char m1[256], m2[256], m3[256], m4[256];
    int n1 = pg_scram_client_first(&c, m1, sizeof m1);
    assert_true(n1 > 0);
    int n2 = pg_scram_server_first(&s, &sec, m1, (size_t)n1, m2, sizeof m2);
    assert_true(n2 > 0);
    int n3 = pg_scram_client_final(&c, client_pw, m2, (size_t)n2, m3, sizeof m3);
    assert_true(n3 > 0);
    int n4 = pg_scram_server_final(&s, m3, (size_t)n3, m4, sizeof m4);
    if (n4 < 0)
        return n4;
    assert_true(pg_scram_client_check(&c, m4, (size_t)n4));
    m4[2] ^= 1;                                         /* a forged server signature */
    assert_false(pg_scram_client_check(&c, m4, (size_t)n4));
    return n4;
}

static void scram_round_trip(void **state)
{
    (void)state;
    assert_true(scram_exchange("s3cret", "s3cret") > 0);
    assert_int_equal(scram_exchange("s3cret", "s3creT"), -2);
}

/* Pass-through: the ClientKey a server-side exchange recovers from a good
 * proof logs in to another server holding the same verifier, without the
 * password; a wrong key does not. */
static void scram_pass_through(void **state)
{
    (void)state;
    struct pg_scram_secret sec;
    assert_true(pg_scram_from_password("s3cret", NULL, 0, 4096, &sec));
    struct pg_scram_client c;
    struct pg_scram_server s;
    char m1[256], m2[256], m3[256], m4[256];
    int n1 = pg_scram_client_first(&c, m1, sizeof m1);
    int n2 = pg_scram_server_first(&s, &sec, m1, (size_t)n1, m2, sizeof m2);
    int n3 = pg_scram_client_final(&c, "s3cret", m2, (size_t)n2, m3, sizeof m3);
    assert_true(pg_scram_server_final(&s, m3, (size_t)n3, m4, sizeof m4) > 0);
    uint8_t ck[32];
    memcpy(ck, s.client_key, 32);
    for (int wrong = 0; wrong < 2; wrong++) {
        struct pg_scram_client c2;
        struct pg_scram_server s2;
        ck[0] ^= (uint8_t)wrong;
        n1 = pg_scram_client_first(&c2, m1, sizeof m1);
        n2 = pg_scram_server_first(&s2, &sec, m1, (size_t)n1, m2, sizeof m2);
        n3 = pg_scram_client_final_keys(&c2, ck, sec.server_key, m2, (size_t)n2, m3, sizeof m3);
        assert_true(n3 > 0);
        int n4 = pg_scram_server_final(&s2, m3, (size_t)n3, m4, sizeof m4);
        if (wrong) {
            assert_int_equal(n4, -2);
        } else {
            assert_true(n4 > 0);
            assert_true(pg_scram_client_check(&c2, m4, (size_t)n4));
        }
    }
}

/* A server-first-message asking for more PBKDF2 iterations than portico
 * runs for a login is refused at once (the bound, 10,000,000, accepted:
 * checked with a key-based final, which runs no PBKDF2). */
static void scram_server_iterations_bounded(void **state)
{
    (void)state;
    const uint8_t ck[32] = { 1 }, sk[32] = { 2 };
    const char *iters[] = { "10000001", "999999999", "10000000" };
    for (int i = 0; i < 3; i++) {
        struct pg_scram_client c;
        char m1[256], m2[256], m3[512];
        int n1 = pg_scram_client_first(&c, m1, sizeof m1);
        assert_true(n1 > 0);
        const char *r = strstr(m1, "r=");
        assert_non_null(r);
        int n2 = snprintf(m2, sizeof m2, "r=%sXYZ,s=c2FsdHNhbHQ=,i=%s", r + 2, iters[i]);
        int n3 = pg_scram_client_final_keys(&c, ck, sk, m2, (size_t)n2, m3, sizeof m3);
        if (i < 2)
            assert_true(n3 < 0);
        else
            assert_true(n3 > 0);
        /* and through the password path, which would run PBKDF2 */
        if (i < 2) {
            struct pg_scram_client c2;
            n1 = pg_scram_client_first(&c2, m1, sizeof m1);
            r = strstr(m1, "r=");
            n2 = snprintf(m2, sizeof m2, "r=%sXYZ,s=c2FsdHNhbHQ=,i=%s", r + 2, iters[i]);
            assert_true(pg_scram_client_final(&c2, "pw", m2, (size_t)n2, m3, sizeof m3) < 0);
        }
    }
}

static void scram_malformed(void **state)
{
    (void)state;
    struct pg_scram_secret sec;
    assert_true(pg_scram_from_password("pw", NULL, 0, 4096, &sec));
    struct pg_scram_server s;
    char out[512];
    const char *bad_first[] = { "", "n,", "p=tls-server-end-point,,n=,r=abc", "n,,n=,", "n,,r=abc",
                                "n,,n=,r=" };
    for (size_t i = 0; i < sizeof bad_first / sizeof *bad_first; i++)
        assert_int_equal(pg_scram_server_first(&s, &sec, bad_first[i], strlen(bad_first[i]), out,
                                               sizeof out), -1);
    assert_true(pg_scram_server_first(&s, &sec, "n,,n=,r=abcdef", 14, out, sizeof out) > 0);
    /* wrong nonce, missing proof, proof not base64, proof not last */
    const char *bad_final[] = { "c=biws,r=abcdefXX,p=AAAA", "c=biws,r=abcdef", "c=biws,r=x,p=!!!!",
                                "p=AAAA,c=biws" };
    for (size_t i = 0; i < sizeof bad_final / sizeof *bad_final; i++) {
        struct pg_scram_server t = s;
        assert_int_equal(pg_scram_server_final(&t, bad_final[i], strlen(bad_final[i]), out, sizeof out), -1);
    }
}

static void md5_response(void **state)
{
    (void)state;
    /* PostgreSQL stores md5user/md5pass as md57541d4e65fae11bd07f18dc6fe2b02bc */
    const uint8_t salt[4] = { 1, 2, 3, 4 };
    char a[36], b[36];
    pg_md5_response("md5pass", "md5user", salt, a);
    pg_md5_response("md57541d4e65fae11bd07f18dc6fe2b02bc", "md5user", salt, b);
    assert_string_equal(a, "md5b5dfd8fbdd6fc9174cc8e85dfa598fa2");
    assert_string_equal(b, a);
}

static void config_section(void **state)
{
    (void)state;
    char err[512];
    const char *base = "listen: [ \"127.0.0.1:8080\" ]\nupstreams: { app: { servers: [ \"127.0.0.1:9001\" ] } }\n"
                       "routes: [ { upstream: app } ]\n";
    char text[2048];
    snprintf(text, sizeof text,
             "%spostgres:\n  listen: [ \"127.0.0.1:6432\" ]\n"
             "  servers: [ { address: \"127.0.0.1:5432\", role: primary }, { address: \"127.0.0.1:5433\", role: replica, weight: 2 } ]\n"
             "  auth: { type: trust }\n"
             "  pools:\n    - { database: app, user: app, pool_mode: session, pool_size: 7, password: pw }\n"
             "  query_wait_timeout: 3s\n  slow_query: 500ms\n",
             base);
    struct conf *c = conf_load_string("t.yaml", text, strlen(text), err, sizeof err);
    assert_non_null(c);
    assert_true(c->pg.enabled);
    assert_int_equal(c->pg.nservers, 2);
    assert_int_equal(c->pg.servers[1].role, CONF_PG_REPLICA);
    assert_int_equal(c->pg.servers[1].weight, 2);
    assert_int_equal(c->pg.pools[0].mode, CONF_PG_SESSION);
    assert_int_equal(c->pg.pools[0].pool_size, 7);
    assert_int_equal(c->pg.query_wait_timeout, 3000);
    assert_int_equal(c->pg.slow_query, 500);
    assert_int_equal(c->pg.auth, CONF_PG_AUTH_TRUST);
    conf_unref(c);

    snprintf(text, sizeof text,
             "%spostgres:\n  listen: [ \"127.0.0.1:6432\" ]\n  servers: [ \"127.0.0.1:5432\" ]\n"
             "  auth: { type: trust }\n  pools:\n    - { database: app, user: app, pool_size: 0 }\n",
             base);
    assert_null(conf_load_string("t.yaml", text, strlen(text), err, sizeof err));
    assert_string_equal(err, "t.yaml:9:46: postgres.pools[0].pool_size: expected an integer from 1 to 10000");

    snprintf(text, sizeof text,
             "%spostgres:\n  listen: [ \"127.0.0.1:6432\" ]\n  servers: [ \"127.0.0.1:5432\" ]\n"
             "  auth: { type: scram-sha-256, file: /nonexistent/users.txt }\n  pools: [ { database: a, user: b } ]\n",
             base);
    assert_null(conf_load_string("t.yaml", text, strlen(text), err, sizeof err));
    assert_non_null(strstr(err, "t.yaml:7:38: postgres.auth.file: /nonexistent/users.txt: No such file"));

    snprintf(text, sizeof text,
             "%spostgres:\n  listen: [ \"127.0.0.1:6432\" ]\n  servers: [ { address: \"127.0.0.1:5432\", role: replica } ]\n"
             "  auth: { type: trust }\n  pools: [ { database: a, user: b } ]\n",
             base);
    assert_null(conf_load_string("t.yaml", text, strlen(text), err, sizeof err));
    assert_string_equal(err, "t.yaml:6:12: postgres.servers: needs a server with role: primary");

    /* auth_query: no file needed; the query defaults to pg_shadow's */
    snprintf(text, sizeof text,
             "%spostgres:\n  listen: [ \"127.0.0.1:6432\" ]\n  servers: [ \"127.0.0.1:5432\" ]\n"
             "  auth: { type: md5, user: lookup, password: pw, database: postgres, cache: 30s }\n"
             "  pools: [ { database: a, user: b } ]\n",
             base);
    c = conf_load_string("t.yaml", text, strlen(text), err, sizeof err);
    assert_non_null(c);
    assert_string_equal(c->pg.auth_user, "lookup");
    assert_string_equal(c->pg.auth_password, "pw");
    assert_string_equal(c->pg.auth_dbname, "postgres");
    assert_string_equal(c->pg.auth_query, "SELECT usename, passwd FROM pg_shadow WHERE usename = $1");
    assert_int_equal(c->pg.auth_cache, 30000);
    assert_null(c->pg.auth_file);
    conf_unref(c);

    snprintf(text, sizeof text, "%spostgres:\n  listen: [ \"127.0.0.1:6432\" ]\n  bogus: 1\n", base);
    assert_null(conf_load_string("t.yaml", text, strlen(text), err, sizeof err));
    assert_string_equal(err, "t.yaml:6:3: postgres.bogus: unknown key");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(framing),
        cmocka_unit_test(client_messages),
        cmocka_unit_test(startup_packets),
        cmocka_unit_test(set_statements),
        cmocka_unit_test(scram_verifier),
        cmocka_unit_test(scram_round_trip),
        cmocka_unit_test(scram_pass_through),
        cmocka_unit_test(scram_malformed),
        cmocka_unit_test(scram_server_iterations_bounded),
        cmocka_unit_test(md5_response),
        cmocka_unit_test(config_section),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
