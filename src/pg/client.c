/* pg/client.c: client connections: accept, read, process, write, close. */
#include "pg_int.h"

#include "core/log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

void pg_client_flush(struct client *c)
{
    if (c->state == CS_CLOSED)
        return;
    if (c->out.oom) {
        pg_client_close(c, "out of memory");
        return;
    }
    if (pg_sock_write(c->io.fd, NULL, &c->out, &c->can_write) < 0) {
        pg_client_close(c, "write error");
        return;
    }
    pgb_trim(&c->out);
}

void pg_client_close(struct client *c, const char *why)
{
    if (c->state == CS_CLOSED)
        return;
    struct worker *w = c->w;
    log_debug("pg: client closed: %s", why);
    if (c->state == CS_WAITING)
        pg_wait_remove(c);
    struct server *s = c->srv;
    if (s) {
        c->srv = NULL;
        s->client = NULL;
        const struct conf_pg *cf = w->c;
        if (s->pcount == 0 && s->tx == 'I' && pgb_len(&s->out) == 0) {
            if (c->pool->cp->mode == CONF_PG_SESSION && cf->server_reset_query) {
                /* DISCARD ALL drops prepared statements and settings too */
                s->nprep = 0;
                pg_pset_clear(&s->params);
                size_t o = pgb_begin(&s->out, 'Q');
                pgb_str(&s->out, cf->server_reset_query);
                pgb_end(&s->out, o);
                pg_server_state(s, SS_RESET);
                loop_timer_arm(w->loop, &s->timer, cf->server_connect_timeout);
                pg_server_flush(s);
            } else {
                pg_server_state(s, SS_IDLE);
                pg_server_ready(s);
            }
        } else {
            /* mid-transaction or mid-response: the session is not clean */
            pg_server_close(s, "client left mid-transaction");
        }
    }
    if (c->key_pid)
        pg_keys_put(w, c, false);
    pg_client_state(c, CS_CLOSED);
    if (c->pool)
        atomic_fetch_sub(&w->pg->nclients, 1);
    loop_timer_stop(w->loop, &c->timer);
    loop_del(w->loop, &c->io);
    close(c->io.fd);
    c->io.fd = -1;
    if (c->prev)
        c->prev->next = c->next;
    else
        w->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->next = c->prev = NULL;
    c->gnext = w->cgrave;
    w->cgrave = c;
}

void pg_client_free(struct client *c)
{
    pg_authq_unref(c->aent);
    pgb_free(&c->in);
    pgb_free(&c->out);
    free(c->scram);
    pg_pset_clear(&c->params);
    pg_cstmt_clear(c);
    free(c->slow_text);
    free(c);
}

/* Refuse a client at login and close once the error is written. */
void pg_client_fatal(struct client *c, const char *code, const char *msg)
{
    pgb_error(&c->out, "FATAL", code, "%s", msg);
    pg_client_flush(c);
    pg_client_close(c, msg);
}

/* Process what the client sent, as far as possible. */
static void client_process(struct client *c)
{
    for (;;) {
        if (c->state == CS_CLOSED || c->state == CS_WAITING || c->state == CS_WELCOME || c->aq_wait)
            return;
        if (c->srv && pgb_len(&c->srv->out) >= OUT_HIGH)
            return;     /* pg_server_flush() will run us again */
        const uint8_t *p = pgb_head(&c->in);
        size_t n = pgb_len(&c->in);
        if (c->state == CS_LOGIN) {
            struct pg_startup st;
            const char *why = "";
            long k = pg_startup_parse(p, n, &st, &why);
            if (k == 0)
                return;
            if (k < 0) {
                pg_client_fatal(c, "08P01", why);
                return;
            }
            pg_client_startup(c, &st);
            if (c->state != CS_CLOSED)
                pgb_consume(&c->in, (size_t)k);
            continue;
        }
        struct pg_msg m;
        long k = pg_msg_next(p, n, PG_MAX_MSG, &m);
        if (k == 0)
            return;
        if (k < 0 || !(m.type == 'p' ? c->state == CS_AUTH : pg_client_msg_valid(&m))) {
            pg_client_fatal(c, "08P01", k < 0 ? "invalid message length" : "invalid message");
            return;
        }
        if (c->state == CS_AUTH) {
            pg_client_auth_msg(c, &m);
            if (c->state != CS_CLOSED)
                pgb_consume(&c->in, (size_t)k);
            continue;
        }
        if (m.type == 'X') {
            pg_client_close(c, "terminate");
            return;
        }
        if (m.type == 'p') {
            pg_client_fatal(c, "08P01", "unexpected password message");
            return;
        }
        if (c->state == CS_IDLE) {
            if (m.type == 'S' || m.type == 'H') {
                /* a Sync with no server: answer it here, nothing is open */
                if (m.type == 'S') {
                    uint8_t z[6] = { 'Z', 0, 0, 0, 5, 'I' };
                    pgb_put(&c->out, z, 6);
                }
                pgb_consume(&c->in, (size_t)k);
                continue;
            }
            if (!pg_pool_acquire(c, pg_route(c, &m)))
                return;
        }
        struct server *s = c->srv;
        if (!pg_client_msg_active(c, &m, (size_t)k)) {
            pg_client_fatal(c, "08P01", "protocol error");
            return;
        }
        pgb_consume(&c->in, (size_t)k);
        if (s->state != SS_CLOSED && s->client == c) {
            if (pgb_len(&s->out) >= 65536)
                pg_server_flush(s);
        }
    }
}

void pg_client_pump(struct client *c)
{
    if (c->state == CS_CLOSED)
        return;
    /* read while there is nothing complete waiting to be processed */
    size_t limit = c->state == CS_WAITING ? 65536 : 1u << 20;
    if (!c->eof && c->can_read) {
        size_t want = c->state == CS_LOGIN ? PG_MAX_STARTUP : pg_want_bytes(&c->in, limit);
        int r = pg_sock_read(c->io.fd, NULL, &c->in, &c->can_read, c->hup, want);
        if (r <= 0)
            c->eof = true;
    }
    client_process(c);
    if (c->state == CS_CLOSED)
        return;
    if (c->srv)
        pg_server_flush(c->srv);
    pg_client_flush(c);
    if (c->state == CS_CLOSED)
        return;
    if (c->eof && pgb_len(&c->in) == 0) {
        pg_client_close(c, "client closed the connection");
        return;
    }
    if (c->eof && c->state != CS_WAITING && c->state != CS_WELCOME) {
        /* a partial message at EOF: nothing more will come */
        struct pg_msg m;
        if (c->state == CS_LOGIN || pg_msg_next(pgb_head(&c->in), pgb_len(&c->in), PG_MAX_MSG, &m) == 0)
            pg_client_close(c, "client closed mid-message");
        return;
    }
    if (c->can_read && !c->eof && c->state != CS_WAITING && c->state != CS_WELCOME &&
        !(c->srv && pgb_len(&c->srv->out) >= OUT_HIGH))
        pg_runq_push(c);       /* more may be readable: come back after others had a turn */
}

static void client_io(struct loop *l, struct loop_io *io, unsigned ev)
{
    (void)l;
    struct client *c = (struct client *)io;
    if (ev & LOOP_READ)
        c->can_read = true;
    if (ev & LOOP_HUP)
        c->hup = true;
    if (ev & LOOP_WRITE) {
        c->can_write = true;
        pg_client_flush(c);
        /* a server paused on this client's full output can go on */
        if (c->state != CS_CLOSED && c->srv && pgb_len(&c->out) < OUT_HIGH && c->srv->can_read)
            pg_server_pump(c->srv);
        else if (c->state != CS_CLOSED && c->srv && pgb_len(&c->out) < OUT_HIGH && pgb_len(&c->srv->in))
            pg_server_pump(c->srv);
    }
    if (c->state != CS_CLOSED && (ev & LOOP_READ))
        pg_client_pump(c);
}

static void client_timer(struct loop *l, struct loop_timer *t)
{
    (void)l;
    struct client *c = (struct client *)((char *)t - offsetof(struct client, timer));
    if (c->state == CS_WAITING) {
        cnt_add(&c->pool->st.wait_timeouts, 1);
        pg_client_fatal(c, "08P01", "query_wait_timeout");
    } else if (c->state == CS_LOGIN || c->state == CS_AUTH || c->state == CS_WELCOME) {
        pg_client_fatal(c, "08P01", "client_login_timeout");
    }
}

void pg_listener_io(struct loop *l, struct loop_io *io, unsigned ev)
{
    (void)ev;
    struct listener *li = (struct listener *)io;
    struct worker *w = li->w;
    for (;;) {
        int fd = accept4(io->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                log_rl_warn("pg: accept: %s", strerror(errno));
            return;
        }
        pg_set_nodelay(fd);
        struct client *c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            continue;
        }
        c->w = w;
        c->io.fd = fd;
        c->io.cb = client_io;
        c->timer.cb = client_timer;
        c->state = CS_LOGIN;
        if (loop_add(l, &c->io) < 0) {
            close(fd);
            free(c);
            continue;
        }
        c->next = w->clients;
        if (w->clients)
            w->clients->prev = c;
        w->clients = c;
        loop_timer_arm(l, &c->timer, w->c->client_login_timeout);
    }
}
