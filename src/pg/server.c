/* pg/server.c: server connections: connect, TLS, login, I/O, close. */
#include "pg_int.h"

#include "core/log.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void server_timer(struct loop *l, struct loop_timer *t);
static void server_io(struct loop *l, struct loop_io *io, unsigned ev);

static const struct conf_pg_server *server_conf(const struct server *s)
{
    return &s->w->c->servers[s->sidx];
}

static void server_fail(struct server *s, const char *msg)
{
    struct wpool *p = s->pool;
    bool login = s->state == SS_CONNECT || s->state == SS_LOGIN;
    if (login) {
        p->fail_at = loop_now(s->w->loop);
        snprintf(p->fail_msg, sizeof p->fail_msg, "%s", msg);
        log_rl_warn("pg: pool %s/%s: server %s: %s", p->cp->database, p->cp->user,
                 server_conf(s)->addr.text, msg);
    }
    if (login && !p->is_auth)   /* the auth user's login failing says nothing of the server */
        atomic_store_explicit(&s->w->pg->up[s->sidx], 0, memory_order_relaxed);
    pg_server_close(s, msg);
    if (login && p->nservers == 0) {
        if (p->sidx != s->w->pg->primary)
            pg_pool_reroute_waiters(p);    /* a replica failed: the primary serves its clients */
        else
            pg_pool_fail_waiters(p, msg);  /* nothing else will serve them: tell them */
    }
}

void pg_pool_open_server(struct wpool *p)
{
    struct worker *w = p->w;
    const struct conf_pg *c = w->c;
    struct server *s = calloc(1, sizeof *s);
    if (!s)
        return;
    s->w = w;
    s->pool = p;
    s->sidx = p->sidx;
    s->state = SS_CONNECT;
    gauge_add(&p->st.sv[SS_CONNECT], 1);
    s->anext = w->servers;
    if (w->servers)
        w->servers->aprev = s;
    w->servers = s;
    p->nservers++;
    s->created = s->last_used = loop_now(w->loop);
    s->io.cb = server_io;
    s->timer.cb = server_timer;
    const struct conf_addr *a = &c->servers[s->sidx].addr;
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    s->io.fd = fd;
    if (fd < 0) {
        server_fail(s, "socket failed");
        return;
    }
    pg_set_nodelay(fd);
    if (connect(fd, (const struct sockaddr *)&a->ss, a->len) < 0 && errno != EINPROGRESS) {
        char m[160];
        snprintf(m, sizeof m, "connect to %s: %s", a->text, strerror(errno));
        server_fail(s, m);
        return;
    }
    if (loop_add(w->loop, &s->io) < 0) {
        server_fail(s, "epoll failed");
        return;
    }
    loop_timer_arm(w->loop, &s->timer, c->server_connect_timeout);
}

static void server_send_startup(struct server *s)
{
    const struct conf_pg_pool *cp = s->pool->cp;
    struct pgbuf *b = &s->out;
    size_t off = b->end;
    pgb_u32(b, 0);
    pgb_u32(b, 196608);
    pgb_str(b, "user");
    pgb_str(b, cp->user);
    pgb_str(b, "database");
    pgb_str(b, cp->database);
    pgb_put(b, "", 1);
    if (!b->oom) {
        uint32_t len = b->end - (uint32_t)off;
        b->d[off] = (uint8_t)(len >> 24);
        b->d[off + 1] = (uint8_t)(len >> 16);
        b->d[off + 2] = (uint8_t)(len >> 8);
        b->d[off + 3] = (uint8_t)len;
    }
    pg_server_state(s, SS_LOGIN);
}

/* TLS: after 'S' to an SSLRequest, the handshake runs here until done. */
static int server_tls_step(struct server *s)
{
    ERR_clear_error();
    int r = SSL_do_handshake(s->ssl);
    if (r == 1) {
        s->tls_done = true;
        server_send_startup(s);
        return 1;
    }
    int e = SSL_get_error(s->ssl, r);
    if (e == SSL_ERROR_WANT_READ) {
        s->can_read = false;
        return 0;
    }
    if (e == SSL_ERROR_WANT_WRITE) {
        s->can_write = false;
        return 0;
    }
    char m[200];
    unsigned long ec = ERR_get_error();
    long vr = SSL_get_verify_result(s->ssl);
    snprintf(m, sizeof m, "TLS handshake with %s failed: %s%s%s", server_conf(s)->addr.text,
             ec ? ERR_reason_error_string(ec) : "connection closed",
             vr != X509_V_OK ? ": " : "", vr != X509_V_OK ? X509_verify_cert_error_string(vr) : "");
    server_fail(s, m);
    return -1;
}

static bool server_start_tls(struct server *s)
{
    struct pg *pg = s->w->pg;
    if (!(s->ssl = SSL_new(pg->ssl)) || SSL_set_fd(s->ssl, s->io.fd) != 1)
        return false;
    SSL_set_connect_state(s->ssl);
    if (s->w->c->sslmode == CONF_PG_SSL_VERIFY_FULL) {
        /* the host part of the address as written is the name to verify */
        char host[80];
        const char *t = server_conf(s)->addr.text;
        const char *colon = strrchr(t, ':');
        size_t n = colon ? (size_t)(colon - t) : strlen(t);
        if (n && t[0] == '[') {
            t++;
            n -= 2;
        }
        snprintf(host, sizeof host, "%.*s", (int)n, t);
        SSL_set_hostflags(s->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        if (!SSL_set1_host(s->ssl, host))
            return false;
        SSL_set_tlsext_host_name(s->ssl, host);
    }
    return true;
}

/* A server finished logging in, or finished a reset: ready for a client. */
void pg_server_ready(struct server *s)
{
    loop_timer_stop(s->w->loop, &s->timer);
    s->last_used = loop_now(s->w->loop);
    s->client = NULL;
    s->pcount = 0;
    s->skipping = false;
    pg_pool_release(s);
}

/* SASL (SCRAM-SHA-256) with a server: with the pool's password, or with
 * the keys a client of the pool proved (pass-through). */
static bool server_sasl(struct server *s, uint32_t code, const struct pg_msg *m,
                        struct pg_rd *r, const struct wpool *home)
{
    const char *pw = s->pool->cp->password;
    size_t o = pgb_begin(&s->out, 'p');
    if (code == 10) {
        bool have = false;
        const char *mech;
        size_t ml;
        while ((mech = pg_rd_str(r, &ml)) && ml)
            have |= !strcmp(mech, "SCRAM-SHA-256");
        char first[200];
        int n = have ? pg_scram_client_first(&s->scram, first, sizeof first) : -1;
        if (n < 0) {
            server_fail(s, have ? "SCRAM failed" : "the server offers no SASL mechanism portico knows");
            return false;
        }
        pgb_str(&s->out, "SCRAM-SHA-256");
        pgb_u32(&s->out, (uint32_t)n);
        pgb_put(&s->out, first, (size_t)n);
    } else {
        char fin[400];
        const char *sf = (const char *)m->body + 4;
        int n = pw ? pg_scram_client_final(&s->scram, pw, sf, m->len - 4, fin, sizeof fin)
                   : pg_scram_client_final_keys(&s->scram, home->client_key, home->server_key, sf,
                                                m->len - 4, fin, sizeof fin);
        if (n < 0) {
            server_fail(s, "malformed SCRAM server-first-message");
            return false;
        }
        pgb_put(&s->out, fin, (size_t)n);
    }
    pgb_end(&s->out, o);
    return true;
}

/* An AuthenticationRequest of a server: answer it with the pool's
 * password, or without one with what the pool's clients proved (SCRAM
 * keys or an md5 secret). false when portico cannot (the server is failed). */
static bool server_auth_request(struct server *s, const struct pg_msg *m)
{
    struct wpool *p = s->pool;
    struct pg_rd r = pg_rd(m->body, m->len);
    uint32_t code = pg_rd_u32(&r);
    const char *pw = p->cp->password;
    struct wpool *home = p->is_auth ? p : &s->w->pools[p->idx * s->w->pg->nsrv + s->w->pg->primary];
    const char *md5 = pw ? pw : home->md5[0] ? home->md5 : NULL;
    if (r.bad) {
        server_fail(s, "malformed authentication request");
        return false;
    }
    if (code == 0 || code == 12) {
        if (code == 12 && !pg_scram_client_check(&s->scram, (const char *)m->body + 4, m->len - 4)) {
            server_fail(s, "the server's SCRAM signature is wrong");
            return false;
        }
        /* AuthenticationOk in the middle of SCRAM: the server never proved
         * it knows the password (PostgreSQL always sends SASLFinal first) */
        if (code == 0 && (s->scram.state == 1 || s->scram.state == 2)) {
            server_fail(s, "the server ended SCRAM without its signature");
            return false;
        }
        return true;
    }
    if ((code == 10 || code == 11) && (pw || home->have_keys))
        return server_sasl(s, code, m, &r, home);
    if (code == 5 && md5) {
        const uint8_t *salt = pg_rd_bytes(&r, 4);
        if (!salt) {
            server_fail(s, "malformed md5 request");
            return false;
        }
        char resp[36];
        pg_md5_response(md5, p->cp->user, salt, resp);
        size_t o = pgb_begin(&s->out, 'p');
        pgb_str(&s->out, resp);
        pgb_end(&s->out, o);
        return true;
    }
    if (code == 3 && pw) {
        size_t o = pgb_begin(&s->out, 'p');
        pgb_str(&s->out, pw);
        pgb_end(&s->out, o);
        return true;
    }
    char err[120];
    home->no_creds |= code == 3 || code == 5 || code == 10 || code == 11;
    if (code == 3 || code == 5 || code == 10 || code == 11)
        snprintf(err, sizeof err, "the server asks for a password and none is configured for this "
                 "pool (nor learnt from a client's login yet)");
    else
        snprintf(err, sizeof err, "unsupported authentication method %u", code);
    server_fail(s, err);
    return false;
}

/* A server idle for server_check_delay is checked before a client gets
 * it: server_check_query, answered like a reset (SS_RESET, then back to
 * the pool's first waiter); one that does not answer within
 * server_connect_timeout (a peer gone without a word, an idle connection
 * a firewall dropped) is closed and replaced. */
void pg_server_check(struct server *s)
{
    const struct conf_pg *cf = s->w->c;
    size_t o = pgb_begin(&s->out, 'Q');
    pgb_str(&s->out, cf->server_check_query);
    pgb_end(&s->out, o);
    pg_server_state(s, SS_RESET);
    loop_timer_arm(s->w->loop, &s->timer, cf->server_connect_timeout);
    pg_server_flush(s);
}

/* The M field of an ErrorResponse, or "error". */
const char *pg_error_text(const struct pg_msg *m)
{
    struct pg_rd r = pg_rd(m->body, m->len);
    for (;;) {
        uint8_t f = pg_rd_u8(&r);
        if (r.bad || f == 0)
            return "error";
        const char *v = pg_rd_str(&r, NULL);
        if (f == 'M' && v)
            return v;
    }
}

/* Messages of a server that has no client (login, reset, idle). */
static bool server_login_msg(struct server *s, const struct pg_msg *m)
{
    struct wpool *p = s->pool;
    struct pg_rd r = pg_rd(m->body, m->len);
    char err[300];
    switch (m->type) {
    case 'R':
        return server_auth_request(s, m);
    case 'S':
        if (s->state == SS_LOGIN && !p->have_params)
            pgb_put(&p->params, m->body - 5, m->len + 5);
        return true;
    case 'K':
        s->be_pid = pg_rd_u32(&r);
        s->be_key = pg_rd_u32(&r);
        return true;
    case 'Z':
        s->tx = m->len >= 1 ? (char)m->body[0] : 'I';
        if (s->state == SS_LOGIN && !p->have_params) {
            p->have_params = true;
            /* clients that logged in before any server did get their welcome now */
            for (struct client *c = p->w->clients; c; c = c->next)
                if (c->pool == p && c->state == CS_WELCOME)
                    pg_runq_push(c);
        }
        if (s->tx != 'I') {
            pg_server_close(s, "not idle after login or reset");
            return false;
        }
        if (s->state == SS_LOGIN)
            atomic_store_explicit(&s->w->pg->up[s->sidx], 1, memory_order_relaxed);
        pg_server_ready(s);
        return false;
    case 'E': {
        snprintf(err, sizeof err, "server error: %s", pg_error_text(m));
        if (s->state == SS_RESET) {
            pg_server_close(s, err);
            return false;
        }
        server_fail(s, err);
        return false;
    }
    case 'N':
    case 'A':
    case 'v':
        return true;
    default:
        if (s->state == SS_RESET)
            return true;        /* the answers to the reset query */
        pg_server_close(s, "unexpected message");
        return false;
    }
}

/* Read and handle what the server sent; the client gets what is for it in
 * one write at the end (not one per message). */
void pg_server_pump(struct server *s)
{
    struct client *last = NULL;
    for (;;) {
        if (s->state == SS_CLOSED)
            goto out;
        struct client *c = s->client;
        if (c && pgb_len(&c->out) >= OUT_HIGH) {
            pg_client_flush(c);
            if (c->state == CS_CLOSED || pgb_len(&c->out) >= OUT_HIGH)
                break;          /* the client is slow: stop reading this server */
        }
        struct pg_msg m;
        long n = pg_msg_next(pgb_head(&s->in), pgb_len(&s->in), PG_MAX_MSG, &m);
        if (n < 0) {
            pg_server_close(s, "malformed message from the server");
            goto out;
        }
        if (n == 0) {
            int r = 1;
            if (!s->eof) {
                pgb_trim(&s->in);
                r = pg_sock_read(s->io.fd, s->ssl, &s->in, &s->can_read, s->hup,
                                 pg_want_bytes(&s->in, 1u << 20));
            }
            if (r < 0) {
                server_fail(s, "read error");
                goto out;
            }
            /* at EOF, what came before it is handled first: often an
             * ErrorResponse that says why the server closed */
            s->eof |= r == 0;
            if (pg_msg_next(pgb_head(&s->in), pgb_len(&s->in), PG_MAX_MSG, &m) == 0)
                break;
            continue;
        }
        bool go;
        if (s->state == SS_ACTIVE && s->pool->is_auth) {
            go = pg_authq_msg(s, &m);
        } else if (s->state == SS_ACTIVE && c) {
            last = c;
            cnt_add(&c->pool->st.bytes_out, (uint64_t)n);
            go = pg_server_client_msg(s, &m, (size_t)n);
        } else {
            go = server_login_msg(s, &m);
        }
        if (s->state != SS_CLOSED)
            pgb_consume(&s->in, (size_t)n);
        if (s->state == SS_CLOSED)
            goto out;
        if (!go)
            break;              /* back in the pool, or given to another client */
    }
    if (s->eof && s->state != SS_CLOSED) {
        server_fail(s, "the server closed the connection");
        goto out;
    }
    pg_server_flush(s);
out:
    if (last && last->state != CS_CLOSED)
        pg_client_flush(last);
}

void pg_server_flush(struct server *s)
{
    if (s->state == SS_CLOSED || s->state == SS_CONNECT || (s->ssl && !s->tls_done))
        return;
    if (s->out.oom) {
        pg_server_close(s, "out of memory");
        return;
    }
    if (pg_sock_write(s->io.fd, s->ssl, &s->out, &s->can_write) < 0) {
        server_fail(s, "write error");
        return;
    }
    pgb_trim(&s->out);
    /* the client was paused while this server's output was full */
    if (s->client && pgb_len(&s->out) < OUT_HIGH && pgb_len(&s->client->in))
        pg_runq_push(s->client);
}

static void server_io(struct loop *l, struct loop_io *io, unsigned ev)
{
    (void)l;
    struct server *s = (struct server *)io;
    if (s->state == SS_CLOSED)
        return;
    if (ev & LOOP_READ)
        s->can_read = true;
    if (ev & LOOP_HUP)
        s->hup = true;
    if (ev & LOOP_WRITE)
        s->can_write = true;
    if (s->state == SS_CONNECT) {
        if (!(ev & (LOOP_WRITE | LOOP_HUP)))
            return;
        int e = 0;
        socklen_t el = sizeof e;
        getsockopt(io->fd, SOL_SOCKET, SO_ERROR, &e, &el);
        if (e) {
            char m[160];
            snprintf(m, sizeof m, "connect to %s: %s", server_conf(s)->addr.text, strerror(e));
            server_fail(s, m);
            return;
        }
        s->connected = true;
        if (s->w->c->sslmode != CONF_PG_SSL_DISABLE) {
            uint8_t req[8] = { 0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f };
            pgb_put(&s->out, req, 8);
            if (send(io->fd, req, 8, MSG_NOSIGNAL) != 8) {
                server_fail(s, "write error");
                return;
            }
            s->out.start = s->out.end = 0;
            pg_server_state(s, SS_LOGIN);
            s->tls_done = false;
            return;                 /* wait for 'S' / 'N' */
        }
        server_send_startup(s);
    }
    if (s->state == SS_LOGIN && s->w->c->sslmode != CONF_PG_SSL_DISABLE && !s->tls_done) {
        if (!s->ssl) {
            if (!s->can_read)
                return;
            uint8_t ans;
            ssize_t n = read(io->fd, &ans, 1);
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                s->can_read = false;
                return;
            }
            if (n != 1 || ans != 'S') {
                server_fail(s, n == 1 ? "the server refused TLS (sslmode requires it)"
                                      : "the server closed the connection");
                return;
            }
            if (!server_start_tls(s)) {
                server_fail(s, "TLS setup failed");
                return;
            }
        }
        s->can_read = s->can_write = true;
        if (server_tls_step(s) <= 0)
            return;
    }
    pg_server_flush(s);
    if (s->state != SS_CLOSED && s->can_read)
        pg_server_pump(s);
}

static void server_timer(struct loop *l, struct loop_timer *t)
{
    (void)l;
    struct server *s = (struct server *)((char *)t - offsetof(struct server, timer));
    if (s->state == SS_CONNECT || s->state == SS_LOGIN)
        server_fail(s, "connect or login timed out");
    else if (s->state == SS_RESET)
        pg_server_close(s, "reset or check timed out");
    else if (s->state == SS_ACTIVE && s->pool->is_auth)
        pg_server_close(s, "auth_query timed out");
}

void pg_server_unidle(struct server *s)
{
    struct wpool *p = s->pool;
    if (s->prev)
        s->prev->next = s->next;
    else if (p->idle == s)
        p->idle = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->next = s->prev = NULL;
}

void pg_server_close(struct server *s, const char *why)
{
    if (s->state == SS_CLOSED)
        return;
    log_debug("pg: server %s closed: %s", server_conf(s)->addr.text, why);
    struct worker *w = s->w;
    if (s->state == SS_IDLE)
        pg_server_unidle(s);
    struct client *orphan = s->client;
    if (orphan) {
        orphan->srv = NULL;
        atomic_store_explicit(&orphan->cancel_target, 0, memory_order_relaxed);
        s->client = NULL;
    }
    if (s->connected && s->state == SS_IDLE && !s->ssl) {
        uint8_t x[5] = { 'X', 0, 0, 0, 4 };
        ssize_t r = send(s->io.fd, x, 5, MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)r;
    }
    pg_server_state(s, SS_CLOSED);
    s->pool->nservers--;
    if (s->aprev)
        s->aprev->anext = s->anext;
    else
        w->servers = s->anext;
    if (s->anext)
        s->anext->aprev = s->aprev;
    loop_timer_stop(w->loop, &s->timer);
    if (s->io.fd >= 0) {
        loop_del(w->loop, &s->io);
        if (s->ssl) {
            SSL_free(s->ssl);
            s->ssl = NULL;
        }
        close(s->io.fd);
        s->io.fd = -1;
    }
    s->gnext = w->sgrave;
    w->sgrave = s;
    if (orphan && orphan->state != CS_CLOSED) {
        /* its transaction (or session) died with the server: say so and close */
        pgb_error(&orphan->out, "FATAL", "08006", "server connection lost: %s", why);
        pg_client_flush(orphan);
        pg_client_close(orphan, "server lost");
    }
    pg_authq_server_gone(s, why);
}

void pg_server_free(struct server *s)
{
    pgb_free(&s->in);
    pgb_free(&s->out);
    free(s->pend);
    free(s->prep);
    pg_pset_clear(&s->params);
    free(s);
}
