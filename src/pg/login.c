/* pg/login.c: a client logging in: startup packet, authentication, welcome. */
#include "pg_int.h"

#include "core/log.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct pg_user *find_user(const struct worker *w, const char *name)
{
    for (uint32_t i = 0; i < w->nusers; i++)
        if (!strcmp(w->users[i].name, name))
            return &w->users[i];
    return NULL;
}

void pg_send_welcome(struct client *c)
{
    struct wpool *p = c->pool;
    struct pgbuf *o = &c->out;
    /* the pool's ParameterStatus, with the values this client asked for */
    const uint8_t *b = pgb_head(&p->params);
    size_t n = pgb_len(&p->params);
    while (n) {
        struct pg_msg m;
        long k = pg_msg_next(b, n, PG_MAX_MSG, &m);
        if (k <= 0)
            break;
        struct pg_rd r = pg_rd(m.body, m.len);
        const char *name = pg_rd_str(&r, NULL);
        const struct param *mine = name ? pg_pset_get(&c->params, name) : NULL;
        if (mine && !mine->raw) {
            size_t off = pgb_begin(o, 'S');
            pgb_str(o, name);
            pgb_str(o, mine->value);
            pgb_end(o, off);
        } else {
            pgb_put(o, b, (size_t)k);
        }
        b += k;
        n -= (size_t)k;
    }
    size_t off = pgb_begin(o, 'K');
    pgb_u32(o, c->key_pid);
    pgb_u32(o, c->key_secret);
    pgb_end(o, off);
    off = pgb_begin(o, 'Z');
    pgb_put(o, "I", 1);
    pgb_end(o, off);
    loop_timer_stop(c->w->loop, &c->timer);
    pg_client_state(c, CS_IDLE);
}

static void auth_ok(struct client *c)
{
    size_t off = pgb_begin(&c->out, 'R');
    pgb_u32(&c->out, 0);
    pgb_end(&c->out, off);
    if (c->pool->have_params) {
        pg_send_welcome(c);
        return;
    }
    pg_client_state(c, CS_WELCOME);
    /* the first login of a pool needs a server's parameters: open one */
    struct wpool *p = c->pool;
    if (p->nservers == 0)
        pg_pool_open_server(p);
}

void pg_client_startup(struct client *c, const struct pg_startup *st)
{
    struct worker *w = c->w;
    struct pg *pg = w->pg;
    const struct conf_pg *cf = w->c;
    if (st->kind == PG_SSL_REQUEST || st->kind == PG_GSSENC_REQUEST) {
        pgb_put(&c->out, "N", 1);        /* no encryption on the client side: go on in plain text */
        return;
    }
    if (st->kind == PG_CANCEL_REQUEST) {
        pg_cancel_forward(w, st->cancel_pid, st->cancel_key);
        pg_client_close(c, "cancel request");
        return;
    }
    if (strlen(st->user) >= sizeof c->user || strlen(st->database) >= sizeof c->db) {
        pg_client_fatal(c, "08004", "user or database name too long");
        return;
    }
    strcpy(c->user, st->user);
    strcpy(c->db, st->database);
    struct wpool *p = pg_find_pool(w, c->db, c->user);
    if (!p) {
        char m[200];
        snprintf(m, sizeof m, "no pool for database \"%s\" and user \"%s\"", c->db, c->user);
        pg_client_fatal(c, "3D000", m);
        return;
    }
    if (atomic_fetch_add(&pg->nclients, 1) >= cf->max_client_conn) {
        atomic_fetch_sub(&pg->nclients, 1);
        pg_client_fatal(c, "53300", "no more connections allowed (max_client_conn)");
        return;
    }
    c->pool = p;
    pg_client_state(c, CS_AUTH);
    for (uint32_t i = 0; i < st->nparams; i++) {
        const char *n = st->names[i];
        if (!strcmp(n, "options") || !strcmp(n, "replication") || strlen(n) >= 64)
            continue;
        pg_pset_put(&c->params, n, st->values[i], strlen(st->values[i]), false);
    }
    if (!pg_keys_alloc(w, c)) {
        pg_client_fatal(c, "53300", "too many clients");
        return;
    }
    if (cf->auth == CONF_PG_AUTH_TRUST) {
        auth_ok(c);
        return;
    }
    pg_login_challenge(c);
}

/* A client proved its password: a pool that has none of its own logs in
 * to its servers with what the proof gave (PgBouncer's pass-through): the
 * SCRAM ClientKey and the verifier's ServerKey, or the md5 secret. */
static void learn_credentials(struct client *c, const struct pg_user *u)
{
    struct wpool *p = c->pool;
    if (p->cp->password || !u)
        return;
    if (c->scram) {
        memcpy(p->client_key, c->scram->client_key, sizeof p->client_key);
        memcpy(p->server_key, c->scram->secret.server_key, sizeof p->server_key);
        p->have_keys = true;
    } else if (!strncmp(u->secret, "md5", 3) && strlen(u->secret) == 35) {
        snprintf(p->md5, sizeof p->md5, "%s", u->secret);
    }
}

/* The user a client logs in as: from the auth file, else what auth_query
 * found (NULL: unknown, or not looked up yet). */
static const struct pg_user *client_user(const struct client *c)
{
    const struct pg_user *u = find_user(c->w, c->user);
    if (!u && c->aent && c->aent->state == AQ_DONE && c->aent->known)
        u = &c->aent->u;
    return u;
}

/* Ask a client for its password: SCRAM, or md5 when the configuration says
 * md5 and the secret allows it. A user the auth file lacks is looked up
 * first (auth_query); the client then waits and comes back here. */
void pg_login_challenge(struct client *c)
{
    const struct conf_pg *cf = c->w->c;
    const struct pg_user *u = find_user(c->w, c->user);
    if (!u && c->w->apools && !c->aent) {
        if (!pg_authq_lookup(c))
            return;             /* authq.c calls again once the lookup ends */
    }
    u = client_user(c);
    bool scram = cf->auth == CONF_PG_AUTH_SCRAM ||
                 (u && !strncmp(u->secret, "SCRAM-SHA-256$", 14));
    if (scram) {
        if (!(c->scram = calloc(1, sizeof *c->scram))) {
            pg_client_fatal(c, "53200", "out of memory");
            return;
        }
        size_t off = pgb_begin(&c->out, 'R');
        pgb_u32(&c->out, 10);
        pgb_str(&c->out, "SCRAM-SHA-256");
        pgb_put(&c->out, "", 1);
        pgb_end(&c->out, off);
    } else {
        if (RAND_bytes(c->md5_salt, 4) != 1) {
            pg_client_fatal(c, "53200", "no randomness");
            return;
        }
        size_t off = pgb_begin(&c->out, 'R');
        pgb_u32(&c->out, 5);
        pgb_put(&c->out, c->md5_salt, 4);
        pgb_end(&c->out, off);
    }
}

static void auth_failed(struct client *c)
{
    char m[160];
    snprintf(m, sizeof m, "password authentication failed for user \"%s\"", c->user);
    log_rl_info("pg: %s", m);
    pg_client_fatal(c, "28P01", m);
}

/* The client's first SCRAM message: answer with server-first-message. */
static void scram_first(struct client *c, const struct pg_user *u, struct pg_rd *r)
{
    char out[512];
    size_t ml;
    const char *mech = pg_rd_str(r, &ml);
    uint32_t len = pg_rd_u32(r);
    const uint8_t *data = r->bad ? NULL : pg_rd_bytes(r, len);
    if (!mech || strcmp(mech, "SCRAM-SHA-256") || !data) {
        pg_client_fatal(c, "08P01", "malformed SASL initial response");
        return;
    }
    /* an unknown user or a secret that cannot do SCRAM still goes
     * through the exchange, with a made-up verifier, and fails at the end */
    struct pg_scram_secret sec;
    bool have = u && u->has_scram;
    if (have)
        sec = u->scram;
    else
        pg_scram_from_password("\x01no such user", (const uint8_t *)"portico-nouser00", 16,
                               4096, &sec);
    int n = pg_scram_server_first(c->scram, &sec, (const char *)data, len, out, sizeof out);
    if (n < 0) {
        pg_client_fatal(c, "08P01", "malformed SCRAM client-first-message");
        return;
    }
    c->scram->state = have ? 1 : 3;
    size_t off = pgb_begin(&c->out, 'R');
    pgb_u32(&c->out, 11);
    pgb_put(&c->out, out, (size_t)n);
    pgb_end(&c->out, off);
}

/* The client's final SCRAM message: check the proof, log in or refuse. */
static void scram_final(struct client *c, const struct pg_user *u, const struct pg_msg *m)
{
    char out[512];
    bool known = c->scram->state == 1;
    c->scram->state = 1;
    int n = pg_scram_server_final(c->scram, (const char *)m->body, m->len, out, sizeof out);
    if (n == -1) {
        pg_client_fatal(c, "08P01", "malformed SCRAM client-final-message");
        return;
    }
    if (n < 0 || !known) {
        auth_failed(c);
        return;
    }
    size_t off = pgb_begin(&c->out, 'R');
    pgb_u32(&c->out, 12);
    pgb_put(&c->out, out, (size_t)n);
    pgb_end(&c->out, off);
    learn_credentials(c, u);
    OPENSSL_cleanse(c->scram, sizeof *c->scram);
    free(c->scram);
    c->scram = NULL;
    auth_ok(c);
}

void pg_client_auth_msg(struct client *c, const struct pg_msg *m)
{
    const struct pg_user *u = client_user(c);
    if (m->type != 'p') {
        pg_client_fatal(c, "08P01", "expected a password message");
        return;
    }
    struct pg_rd r = pg_rd(m->body, m->len);
    if (c->scram) {
        if (c->scram->state == 0)
            scram_first(c, u, &r);
        else
            scram_final(c, u, m);
        return;
    }
    size_t len;
    const char *pw = pg_rd_str(&r, &len);
    if (!pw) {
        pg_client_fatal(c, "08P01", "malformed password message");
        return;
    }
    if (!u || !strncmp(u->secret, "SCRAM-SHA-256$", 14)) {
        auth_failed(c);
        return;
    }
    char want[36];
    pg_md5_response(u->secret, c->user, c->md5_salt, want);
    if (len != 35 || CRYPTO_memcmp(want, pw, 35) != 0) {
        auth_failed(c);
        return;
    }
    learn_credentials(c, u);
    auth_ok(c);
}
