/* pg/authq.c: auth_query, PgBouncer's auth_user / auth_query: the secret of
 * a user that the auth file lacks is looked up on the primary with
 * `postgres.auth.query` (by default `SELECT usename, passwd FROM pg_shadow
 * WHERE usename = $1`), run as `postgres.auth.user`.
 *
 * Each worker has, per configured pool, an auth pool (w->apools[k]): at
 * most one server connection, logged in as the auth user to the database
 * `auth.database` (or the pool's), opened when a lookup needs it and closed
 * by the idle timeout like any other. A pool serves one user, so a pool has
 * one entry at a time (p->aent): the lookup in progress, which every client
 * logging in meanwhile waits for, or its result, reused for `auth.cache`
 * (found or not). A failed lookup (the server refuses the auth user, the
 * query errs, the connection dies or times out) refuses the clients that
 * waited and is not cached.
 *
 * The user name travels as a Bind parameter, never inside the SQL text.
 * The secret is the last column of the first row: a SCRAM verifier or an
 * md5 hash (what pg_shadow holds); NULL or no row means "no such user",
 * and the client fails at the end of the exchange like a wrong password.
 */
#include "pg_int.h"

#include "core/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define AQ_MAX_SECRET 1024

void pg_authq_unref(struct authq_ent *e)
{
    if (!e || --e->refs)
        return;
    free(e->secret);
    free(e);
}

/* Send the lookup of p's pending entry on s (logged in, no client).
 * false when there is none to send: s goes idle. */
bool pg_authq_send(struct server *s)
{
    struct wpool *p = s->pool;
    struct authq_ent *e = p->aent;
    if (!e || e->state != AQ_PENDING || e->sent)
        return false;
    struct pgbuf *o = &s->out;
    size_t k = pgb_begin(o, 'P');
    pgb_put(o, "", 1);
    pgb_str(o, s->w->c->auth_query);
    pgb_put(o, "\0\0", 2);                     /* no parameter types: the server infers */
    pgb_end(o, k);
    k = pgb_begin(o, 'B');
    pgb_put(o, "\0\0\0\1\0\0\0\1", 8);          /* portal, statement, 1 format: text, 1 parameter */
    pgb_u32(o, (uint32_t)strlen(e->name));
    pgb_put(o, e->name, strlen(e->name));
    pgb_put(o, "\0\0", 2);                     /* results: text */
    pgb_end(o, k);
    k = pgb_begin(o, 'E');
    pgb_put(o, "\0\0\0\0\0", 5);
    pgb_end(o, k);
    k = pgb_begin(o, 'S');
    pgb_end(o, k);
    e->sent = true;
    e->refs++;
    s->aq = e;
    s->client = NULL;
    pg_server_state(s, SS_ACTIVE);
    /* a lookup that hangs must not hold its clients until their login timeout */
    loop_timer_arm(s->w->loop, &s->timer, s->w->c->server_connect_timeout);
    return true;
}

/* Start p's pending lookup: on an idle connection, or open one. */
static void authq_kick(struct wpool *p)
{
    struct server *s = p->idle;
    const struct conf_pg *cf = p->w->c;
    if (s && cf->server_check_query && loop_now(p->w->loop) - s->last_used >= cf->server_check_delay) {
        pg_server_close(s, "idle too long to trust");  /* a new login is the check */
        s = NULL;
    }
    if (s) {
        pg_server_unidle(s);
        if (pg_authq_send(s))
            pg_server_flush(s);
        else
            pg_pool_release(s);
        return;
    }
    if (p->nservers == 0)
        pg_pool_open_server(p);
}

/* The secret in e is final: derive what logging in needs from it. */
static void authq_resolve(struct authq_ent *e)
{
    e->u.name = e->name;
    e->u.secret = e->secret ? e->secret : "";
    e->known = e->secret != NULL;
    if (!e->known)
        return;
    if (!strncmp(e->secret, "SCRAM-SHA-256$", 14))
        e->u.has_scram = pg_scram_parse_secret(e->secret, &e->u.scram);
    else if (strncmp(e->secret, "md5", 3) || strlen(e->secret) != 35)
        e->u.has_scram = pg_scram_from_password(e->secret, NULL, 0, 4096, &e->u.scram);
}

/* A lookup ended (done or failed): resume or refuse the clients waiting. */
static void authq_finish(struct worker *w, struct authq_ent *e, const char *why)
{
    if (why) {
        e->state = AQ_FAILED;
        log_rl_warn("pg: auth_query for user \"%s\" failed: %s", e->name, why);
    } else {
        e->state = AQ_DONE;
        e->expires = loop_now(w->loop) + w->c->auth_cache;
        authq_resolve(e);
    }
    for (struct client *c = w->clients, *n; c; c = n) {
        n = c->next;
        if (c->aent != e || !c->aq_wait)
            continue;
        c->aq_wait = false;
        if (why) {
            pg_client_fatal(c, "08006", "the password of this user could not be looked up (auth_query)");
            continue;
        }
        pg_login_challenge(c);
        pg_runq_push(c);                        /* write the challenge */
    }
}

/* A client needs the secret of its user: true when the answer is known
 * now (c->aent set), false when it waits (or was refused). */
bool pg_authq_lookup(struct client *c)
{
    struct worker *w = c->w;
    struct wpool *p = &w->apools[c->pool->idx];
    struct authq_ent *e = p->aent;
    uint64_t now = loop_now(w->loop);
    if (e && (e->state == AQ_FAILED || (e->state == AQ_DONE && now >= e->expires))) {
        p->aent = NULL;
        pg_authq_unref(e);
        e = NULL;
    }
    if (!e && p->nservers == 0 && p->fail_at && now - p->fail_at < 1000) {
        /* the auth user could not log in a moment ago: no new attempt yet */
        pg_client_fatal(c, "08006", "the password of this user could not be looked up (auth_query)");
        return false;
    }
    if (!e) {
        if (!(e = calloc(1, sizeof *e))) {
            pg_client_fatal(c, "53200", "out of memory");
            return false;
        }
        snprintf(e->name, sizeof e->name, "%s", c->user);
        e->refs = 1;
        e->state = AQ_PENDING;
        p->aent = e;
        authq_kick(p);
    }
    e->refs++;
    c->aent = e;
    if (e->state == AQ_DONE)
        return true;
    c->aq_wait = true;
    return false;
}

/* The answers to a lookup, on the auth connection s. false: stop reading
 * (the server went back to its pool, or was closed). */
bool pg_authq_msg(struct server *s, const struct pg_msg *m)
{
    struct authq_ent *e = s->aq;
    struct pg_rd r = pg_rd(m->body, m->len);
    switch (m->type) {
    case 'D': {
        uint16_t ncols = pg_rd_u16(&r);
        uint32_t len = 0;
        for (uint16_t i = 0; i < ncols && !r.bad; i++) {
            len = pg_rd_u32(&r);
            if (len != UINT32_MAX && i + 1 < ncols)
                pg_rd_bytes(&r, len);
        }
        if (r.bad || ncols == 0 || e->secret || len == UINT32_MAX)
            return true;                        /* NULL: no password, no login */
        const uint8_t *v = pg_rd_bytes(&r, len);
        if (v && len && len < AQ_MAX_SECRET && !memchr(v, 0, len))
            e->secret = strndup((const char *)v, len);
        return true;
    }
    case 'E': {
        char why[300];
        snprintf(why, sizeof why, "server error: %s", pg_error_text(m));
        e->state = AQ_FAILED;
        s->aq = NULL;
        authq_finish(s->w, e, why);
        pg_authq_unref(e);
        return true;                            /* the ReadyForQuery follows */
    }
    case 'Z':
        s->tx = m->len >= 1 ? (char)m->body[0] : 'I';
        if (s->aq) {
            s->aq = NULL;
            authq_finish(s->w, e, NULL);
            pg_authq_unref(e);
        }
        if (s->tx != 'I') {
            pg_server_close(s, "not idle after auth_query");
            return false;
        }
        pg_server_state(s, SS_IDLE);
        pg_server_ready(s);
        return false;
    case '1': case '2': case 'C': case 'n': case 'N': case 'S': case 'A':
        return true;
    default:
        pg_server_close(s, "unexpected message after auth_query");
        return false;
    }
}

/* The auth connection s closes: a lookup it was running fails. */
void pg_authq_server_gone(struct server *s, const char *why)
{
    struct authq_ent *e = s->aq;
    if (!e)
        return;
    s->aq = NULL;
    authq_finish(s->w, e, why);
    pg_authq_unref(e);
}

/* No auth connection could log in: the pending lookup fails. */
void pg_authq_pool_failed(struct wpool *p, const char *why)
{
    struct authq_ent *e = p->aent;
    if (!e || e->state != AQ_PENDING || e->sent)
        return;
    p->aent = NULL;
    authq_finish(p->w, e, why);
    pg_authq_unref(e);
}

/* pg_start(): the logins of the auth connections, one per pool. */
bool pg_authq_setup(struct pg *pg, char *err, size_t errlen)
{
    const struct conf_pg *cf = pg->c;
    if (!cf->auth_user)
        return true;
    if (!(pg->acp = calloc(cf->npools, sizeof *pg->acp))) {
        snprintf(err, errlen, "out of memory");
        return false;
    }
    for (uint32_t k = 0; k < cf->npools; k++) {
        struct conf_pg_pool *a = &pg->acp[k];
        a->database = strdup(cf->auth_dbname ? cf->auth_dbname : cf->pools[k].database);
        a->user = strdup(cf->auth_user);
        a->password = cf->auth_password ? strdup(cf->auth_password) : NULL;
        a->mode = CONF_PG_TRANSACTION;
        a->pool_size = 1;
        if (!a->database || !a->user || (cf->auth_password && !a->password)) {
            snprintf(err, errlen, "out of memory");
            return false;
        }
    }
    return true;
}

/* A worker's auth pools: one connection each at most. */
bool pg_authq_worker(struct worker *w)
{
    struct pg *pg = w->pg;
    if (!pg->acp)
        return true;
    uint32_t n = pg->c->npools;
    if (!(w->apools = calloc(n, sizeof *w->apools)))
        return false;
    for (uint32_t k = 0; k < n; k++) {
        struct wpool *p = &w->apools[k];
        p->w = w;
        p->cp = &pg->acp[k];
        p->idx = k;
        p->sidx = pg->primary;
        p->size = 1;
        p->is_auth = true;
    }
    return true;
}

void pg_authq_free(struct pg *pg, struct worker *w)
{
    if (w && w->apools) {
        for (uint32_t k = 0; k < pg->c->npools; k++) {
            pg_authq_unref(w->apools[k].aent);
            pgb_free(&w->apools[k].params);
        }
        free(w->apools);
        w->apools = NULL;
    }
    if (!w && pg->acp) {
        for (uint32_t k = 0; k < pg->c->npools; k++) {
            free(pg->acp[k].database);
            free(pg->acp[k].user);
            free(pg->acp[k].password);
        }
        free(pg->acp);
        pg->acp = NULL;
    }
}
