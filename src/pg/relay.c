/* pg/relay.c: messages between a client and its server (transaction mode rewriting). */
#include "pg_int.h"

#include "core/log.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static void slow_log(struct client *c, uint64_t us)
{
    const struct conf_pg *cf = c->w->c;
    if (!cf->slow_query || us < cf->slow_query * 1000)
        return;
    cnt_add(&c->pool->st.slow, 1);
    /* the statement only: parameters travel in Bind and are never logged */
    char text[1024];
    size_t n = 0;
    for (uint32_t i = 0; i < c->slow_len && n + 2 < sizeof text; i++) {
        unsigned char ch = (unsigned char)c->slow_text[i];
        text[n++] = ch < 0x20 || ch == 0x7f ? ' ' : ch == '"' ? '\'' : (char)ch;
    }
    text[n] = '\0';
    /* its own limit: a burst of slow queries must not hide other warnings */
    static struct log_rl slow_rl = LOG_RL_INIT("pg slow query", 100);
    log_rl_msg(&slow_rl, LOG_WARN, "pg: slow query: pool=%s/%s duration_ms=%.1f statement=\"%s%s\"", c->pool->cp->database,
             c->pool->cp->user, (double)us / 1000.0, text,
             c->slow_len >= cf->slow_query_max_chars ? "..." : "");
}

static void note_statement(struct client *c, const char *q, size_t len)
{
    const struct conf_pg *cf = c->w->c;
    if (!cf->slow_query)
        return;
    if (len > cf->slow_query_max_chars)
        len = cf->slow_query_max_chars;
    char *t = realloc(c->slow_text, len ? len : 1);
    if (!t)
        return;
    memcpy(t, q, len);
    c->slow_text = t;
    c->slow_len = (uint32_t)len;
}

/* ReadyForQuery for the client of s: count the query (`counted`: it was
 * the client's, not one portico injected) and, in transaction mode, give
 * the server back to the pool when the transaction is over (false then). */
static bool ready_for_query(struct server *s, const struct pg_msg *m, bool counted)
{
    struct client *c = s->client;
    s->tx = m->len >= 1 ? (char)m->body[0] : 'I';
    if (counted) {
        uint64_t now = pg_now_us();
        uint64_t us = now - c->query_start_us;
        pg_hist_add(s->w->pg, &c->pool->st.query, us);
        cnt_add(&c->pool->st.queries, 1);
        slow_log(c, us);
        c->query_start_us = now;
    }
    if (s->tx != 'I' || s->pcount != 0 || c->pool->cp->mode != CONF_PG_TRANSACTION)
        return true;
    uint64_t us = pg_now_us() - c->xact_start_us;
    pg_hist_add(s->w->pg, &c->pool->st.xact, us);
    cnt_add(&c->pool->st.xacts, 1);
    c->srv = NULL;
    atomic_store_explicit(&c->cancel_target, 0, memory_order_relaxed);
    pg_client_state(c, CS_IDLE);
    s->client = NULL;
    s->last_used = loop_now(s->w->loop);
    pg_pool_release(s);
    if (pgb_len(&c->in) || c->can_read)
        pg_runq_push(c);       /* it may have the next request buffered */
    return false;
}

/* One message from a server that serves a client. false: stop (the server
 * or the client went away, or the server went back to the pool). */
bool pg_server_client_msg(struct server *s, const struct pg_msg *m, size_t whole)
{
    struct client *c = s->client;
    struct pend *h = pg_pend_head(s);
    bool drop = h && h->act == PEND_DROP;
    bool done = false;          /* the head request is answered */
    char t = m->type;
    if (!h) {
        /* nothing asked: asynchronous messages only (notices, parameters,
         * notifications), or a server that is going away */
        if (t == 'N' || t == 'S' || t == 'A') {
            pgb_put(&c->out, m->body - 5, whole);
            return true;
        }
        if (t == 'E') {
            pgb_put(&c->out, m->body - 5, whole);
            return true;
        }
        pg_server_close(s, "unexpected message from the server");
        return false;
    }
    switch (t) {
    case '1': done = h->type == 'P'; break;
    case '2': done = h->type == 'B'; break;
    case '3': done = h->type == 'C'; break;
    case 'T':
    case 'n': done = h->type == 'D'; break;
    case 'C':
    case 'I':
    case 's': done = h->type == 'E'; break;
    case 'V': done = false; break;
    case 'Z': done = true; break;
    case 'E':
        if (h->type == 'Q' || h->type == 'F' || h->type == 'S') {
            drop = drop && h->type == 'Q';
            break;
        }
        /* an error in an extended-protocol batch: the server skips to
         * Sync, so the statements of Parses up to there were not made */
        do {
            if (h->type == 'P' && h->id)
                pg_server_forget(s, h->id);
            pg_pend_pop(s);
        } while ((h = pg_pend_head(s)) && h->type != 'S');
        if (!h)
            s->skipping = true;
        pgb_put(&c->out, m->body - 5, whole);
        return true;
    default:
        break;
    }
    if (!drop)
        pgb_put(&c->out, m->body - 5, whole);
    if (!done)
        return true;
    char htype = h->type;
    pg_pend_pop(s);
    if (t == 'Z' && !ready_for_query(s, m, htype != 'Q' || !drop))
        return false;
    pg_pend_fakes(s);
    return true;
}

/* Track SET / RESET / DISCARD in a simple query (transaction mode). */
static void track_query(struct client *c, struct server *s, const char *q, size_t len)
{
    /* most queries are none of these: a look at the first three letters */
    size_t i = 0;
    while (i < len && (q[i] == ' ' || q[i] == '\n' || q[i] == '\t' || q[i] == '\r'))
        i++;
    if (len - i < 3)
        return;
    char a = (char)(q[i] | 0x20), b = (char)(q[i + 1] | 0x20), d = (char)(q[i + 2] | 0x20);
    if (!(a == 's' && b == 'e' && d == 't') && !(a == 'r' && b == 'e' && d == 's') &&
        !(a == 'd' && b == 'i' && d == 's') && !(a == 'd' && b == 'e' && d == 'a'))
        return;         /* not SET, RESET, DISCARD or DEALLOCATE */
    struct pg_set set;
    if (pg_parse_set(q, len, &set)) {
        if (set.reset_all) {
            pg_pset_clear(&c->params);
            pg_pset_clear(&s->params);
        } else {
            pg_pset_put(&c->params, set.name, set.reset ? NULL : set.value, set.value_len, true);
            pg_pset_put(&s->params, set.name, set.reset ? NULL : set.value, set.value_len, true);
        }
        return;
    }
    if (len - i >= 11 && !strncasecmp(q + i, "DISCARD ALL", 11)) {
        pg_pset_clear(&c->params);
        pg_pset_clear(&s->params);
        s->nprep = 0;
    } else if (len - i >= 14 && !strncasecmp(q + i, "DEALLOCATE ALL", 14)) {
        s->nprep = 0;
    }
}

/* Make sure the server has statement st prepared; inject a Parse if not. */
static bool ensure_prepared(struct server *s, struct stmt *st, uint8_t act)
{
    if (pg_server_has(s, st->id))
        return true;
    uint32_t max = s->w->c->max_prepared;
    if (max && s->nprep >= max) {
        /* forget the oldest: Close it on the server, drop the answer */
        size_t o = pgb_begin(&s->out, 'C');
        pgb_put(&s->out, "S", 1);
        char name[24];
        snprintf(name, sizeof name, "P_%" PRIx64, s->prep[0]);
        pgb_str(&s->out, name);
        pgb_end(&s->out, o);
        if (!pg_pend_push(s, 'C', PEND_DROP))
            return false;
        pg_server_forget(s, s->prep[0]);
    }
    size_t o = pgb_begin(&s->out, 'P');
    pgb_str(&s->out, st->sname);
    pgb_put(&s->out, st->data, st->query_len + 1u + st->rest_len);
    pgb_end(&s->out, o);
    if (!s->skipping) {
        if (s->nprep == s->capprep) {
            uint32_t cap = s->capprep ? s->capprep * 2 : 16;
            uint64_t *n = realloc(s->prep, cap * sizeof *n);
            if (!n)
                return false;
            s->prep = n;
            s->capprep = cap;
        }
        s->prep[s->nprep++] = st->id;
    }
    return pg_pend_push_id(s, 'P', act, st->id);
}

/* Parse: a named statement (transaction mode) becomes the worker's P_<n>,
 * prepared on this server unless it already is. false: malformed or out
 * of memory; *ok false when the queue of outstanding answers is full. */
static bool client_parse(struct client *c, const struct pg_msg *m, size_t whole, bool *ok)
{
    struct server *s = c->srv;
    struct pg_parse pp;
    if (!pg_parse_parse(m, &pp))
        return false;
    note_statement(c, pp.query, pp.query_len);
    if (c->pool->cp->mode != CONF_PG_TRANSACTION || pp.name_len == 0) {
        pgb_put(&s->out, m->body - 5, whole);
        *ok = pg_pend_push(s, 'P', PEND_FWD);
        return true;
    }
    struct stmt *st = pg_stmt_get(c->w, pp.query, pp.query_len, pp.rest, pp.rest_len);
    if (!st || !pg_cstmt_set(c, pp.name, pp.name_len, st)) {
        if (st)
            pg_stmt_put(c->w, st);
        return false;
    }
    if (pg_server_has(s, st->id) && !s->skipping) {
        *ok = pg_pend_push(s, 'P', PEND_FAKE);
        pg_pend_fakes(s);
    } else {
        /* ensure_prepared's Parse answers for the client's */
        *ok = ensure_prepared(s, st, PEND_FWD);
    }
    return true;
}

/* Bind / Describe: a client's statement name becomes the server's, and the
 * statement is prepared there first if it is not yet. false: malformed. */
static bool client_bind_describe(struct client *c, const struct pg_msg *m, size_t whole)
{
    struct server *s = c->srv;
    struct pgbuf *o = &s->out;
    size_t off, nl;
    const char *name;
    char what = 'S';
    if (m->type == 'B') {
        if (!pg_parse_bind(m, &off, &nl))
            return false;
        name = (const char *)m->body + off;
    } else {
        if (!pg_parse_target(m, &what, &name, &nl))
            return false;
        off = 1;
    }
    bool track = c->pool->cp->mode == CONF_PG_TRANSACTION;
    struct stmt *st = track && what == 'S' && nl ? pg_cstmt_find(c, name, nl) : NULL;
    if (!st) {
        pgb_put(o, m->body - 5, whole);
        return true;
    }
    note_statement(c, (const char *)st->data, st->query_len);
    if (!ensure_prepared(s, st, PEND_DROP))
        return false;
    size_t k = pgb_begin(o, m->type);
    pgb_put(o, m->body, off);
    pgb_str(o, st->sname);
    pgb_put(o, m->body + off + nl + 1, m->len - off - nl - 1);
    pgb_end(o, k);
    return true;
}

/* Close: of a client's statement, only its name goes (the server keeps
 * the statement for other clients), answered here. false: malformed. */
static bool client_close_msg(struct client *c, const struct pg_msg *m, size_t whole, bool *ok)
{
    struct server *s = c->srv;
    char what;
    const char *name;
    size_t nl;
    if (!pg_parse_target(m, &what, &name, &nl))
        return false;
    if (c->pool->cp->mode == CONF_PG_TRANSACTION && what == 'S' && nl) {
        pg_cstmt_del(c, name, nl);
        *ok = pg_pend_push(s, 'C', PEND_FAKE);
        pg_pend_fakes(s);
    } else {
        pgb_put(&s->out, m->body - 5, whole);
        *ok = pg_pend_push(s, 'C', PEND_FWD);
    }
    return true;
}

/* One client message with a server attached. false: stop processing. */
bool pg_client_msg_active(struct client *c, const struct pg_msg *m, size_t whole)
{
    struct server *s = c->srv;
    struct pgbuf *o = &s->out;
    bool ok = true;
    if (s->pcount == 0)
        c->query_start_us = pg_now_us();
    switch (m->type) {
    case 'Q':
        if (c->pool->cp->mode == CONF_PG_TRANSACTION)
            track_query(c, s, (const char *)m->body, m->len ? m->len - 1 : 0);
        note_statement(c, (const char *)m->body, m->len ? m->len - 1 : 0);
        pgb_put(o, m->body - 5, whole);
        ok = pg_pend_push(s, 'Q', PEND_FWD);
        break;
    case 'P':
        if (!client_parse(c, m, whole, &ok))
            return false;
        break;
    case 'B':
    case 'D':
        if (!client_bind_describe(c, m, whole))
            return false;
        ok = pg_pend_push(s, m->type, PEND_FWD);
        break;
    case 'C':
        if (!client_close_msg(c, m, whole, &ok))
            return false;
        break;
    case 'E':
    case 'S':
    case 'F':
        pgb_put(o, m->body - 5, whole);
        ok = pg_pend_push(s, m->type, PEND_FWD);
        break;
    default:        /* H d c f: no answer of their own */
        pgb_put(o, m->body - 5, whole);
        break;
    }
    cnt_add(&c->pool->st.bytes_in, whole);
    return ok;
}
