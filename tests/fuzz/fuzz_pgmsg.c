/* tests/fuzz/fuzz_pgmsg.c: the PostgreSQL message parsers (src/pg/proto.c).
 *
 * Input: a client's byte stream: a startup packet, then typed messages, as
 * portico reads them. Every parser runs on what the framer hands it; the
 * invariants: a complete message lies within the input, a truncated prefix of
 * a complete message is "need more" (never an error, never a different
 * message), and every pointer a parser returns lies within the message body
 * with its length.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pg/pg.h"

#define CHECK(cond) do {                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "%s:%d: invariant failed: %s\n",                \
                    __FILE__, __LINE__, #cond);                             \
            abort();                                                        \
        }                                                                   \
    } while (0)

static bool within(const uint8_t *base, size_t len, const void *p, size_t n)
{
    uintptr_t b = (uintptr_t)base, q = (uintptr_t)p;
    return p && q >= b && n <= len && q - b <= len - n;
}

static void body(const struct pg_msg *m)
{
    bool valid = pg_client_msg_valid(m);
    struct pg_parse pp;
    if (m->type == 'P' && pg_parse_parse(m, &pp)) {
        CHECK(valid);
        CHECK(within(m->body, m->len, pp.name, pp.name_len + 1));
        CHECK(within(m->body, m->len, pp.query, pp.query_len + 1));
        CHECK(within(m->body, m->len, pp.rest, pp.rest_len));
        struct pg_set s;
        if (pg_parse_set(pp.query, pp.query_len, &s) && !s.reset) {
            CHECK(within(m->body, m->len, s.value, s.value_len));
            CHECK(strlen(s.name) < sizeof s.name);
        }
        pg_query_read_only(pp.query, pp.query_len);
    }
    size_t off, nl;
    if (m->type == 'B' && pg_parse_bind(m, &off, &nl))
        CHECK(within(m->body, m->len, m->body + off, nl + 1));
    char what;
    const char *name;
    if ((m->type == 'D' || m->type == 'C') && pg_parse_target(m, &what, &name, &nl))
        CHECK(within(m->body, m->len, name, nl + 1));
    if (m->type == 'Q' && valid) {
        struct pg_set s;
        if (pg_parse_set((const char *)m->body, m->len - 1, &s) && !s.reset)
            CHECK(within(m->body, m->len, s.value, s.value_len));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct pg_startup st;
    const char *why = NULL;
    long k = pg_startup_parse(data, size, &st, &why);
    if (k < 0) {
        CHECK(why != NULL);
        return 0;
    }
    if (k == 0)
        return 0;
    CHECK((size_t)k <= size);
    for (long cut = 0; cut < k; cut++) {            /* a prefix never errs */
        struct pg_startup t;
        CHECK(pg_startup_parse(data, (size_t)cut, &t, NULL) <= 0);
        CHECK(pg_startup_parse(data, (size_t)cut, &t, NULL) == 0 || cut >= 4);
    }
    if (st.kind == PG_STARTUP) {
        CHECK(within(data, size, st.user, strlen(st.user) + 1));
        CHECK(within(data, size, st.database, strlen(st.database) + 1));
    }
    const uint8_t *p = data + k;
    size_t n = size - (size_t)k;
    while (n) {
        struct pg_msg m;
        long r = pg_msg_next(p, n, 1u << 20, &m);
        if (r <= 0)
            break;
        CHECK((size_t)r <= n && (size_t)r == (size_t)m.len + 5);
        CHECK(m.body == p + 5);
        for (long cut = 0; cut < r && cut < 64; cut++) {
            struct pg_msg t;
            CHECK(pg_msg_next(p, (size_t)cut, 1u << 20, &t) == 0);
        }
        body(&m);
        p += r;
        n -= (size_t)r;
    }
    return 0;
}
