/* proxy/upstream.c: upstream connections and their keep-alive pools, choosing a server for an
 * attempt, and what happens when an attempt fails (retries). */
#include "proxy_int.h"

static void uconn_free_later(struct uconn *u);
static void uconn_timeout(struct loop *l, struct loop_timer *t);
static void uconn_io(struct loop *l, struct loop_io *io, unsigned ev);
static struct uconn *uconn_get(struct worker *w, struct wgen *wg, const struct conf_upstream *up,
                               uint32_t server, bool fresh, int *err);

static void uconn_free_later(struct uconn *u)
{
    u->next = u->w->dead_uconns;
    u->w->dead_uconns = u;
}

void pool_remove(struct uconn *u)
{
    struct upool *p = u->pool;
    if (u->prev)
        u->prev->next = u->next;
    else
        p->head = u->next;
    if (u->next)
        u->next->prev = u->prev;
    u->prev = u->next = NULL;
    u->pooled = false;
    p->n--;
}

void uconn_close(struct uconn *u)
{
    if (u->io.fd < 0)
        return;
    if (u->pooled)
        pool_remove(u);
    loop_timer_stop(u->w->loop, &u->timer);
    close(u->io.fd);
    u->io.fd = -1;
    if (u->x)
        u->x->u = NULL;
    u->x = NULL;
    uconn_free_later(u);
}

static void uconn_timeout(struct loop *l, struct loop_timer *t)
{
    (void)l;
    struct uconn *u = container_of(t, struct uconn, timer);
    struct exchange *x = u->x;
    if (!x) {                   /* idle in the pool too long */
        uconn_close(u);
        return;
    }
    struct client *c = x->c;
    if (u->connecting) {
        attempt_failed(x, "connect timeout", 504, true);
    } else if (x->resp_fwd || (c->out && buf_len(c->out))) {
        /* We stopped reading because the client is slow (backpressure):
         * not the upstream's fault; the client's send_timeout decides. */
        loop_timer_arm(u->w->loop, &u->timer, x->route->upstream->response_timeout);
        return;
    } else if (x->resp_head_done) {
        exchange_fail(x, 504, "upstream response timeout");
    } else {
        attempt_failed(x, "response timeout", 504, x->idempotent);
    }
    client_drive(c);            /* write what the failure queued */
}

static void uconn_io(struct loop *l, struct loop_io *io, unsigned ev)
{
    (void)l;
    struct uconn *u = container_of(io, struct uconn, io);
    if (u->io.fd < 0)
        return;
    if (!u->x) {
        /* Idle: any readability means the server closed or misbehaves. */
        if (ev & (LOOP_READ | LOOP_HUP))
            uconn_close(u);
        return;
    }
    if (ev & LOOP_READ)
        u->readable = true;
    if (ev & LOOP_WRITE)
        u->writable = true;
    if (ev & LOOP_HUP)
        u->hup = true;
    struct exchange *x = u->x;
    struct client *c = x->c;
    if (u->connecting) {
        if (!(ev & (LOOP_WRITE | LOOP_HUP)))
            return;
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(u->io.fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            attempt_failed(x, strerror(err), 502, true);
            client_drive(c);
            return;
        }
        u->connecting = false;
        loop_timer_stop(u->w->loop, &u->timer);
    }
    client_drive(c);
}

/* Whether an upstream connection is known to hold no unread byte, so that
 * the next request's response cannot be one the server sent too much of.
 * After a short read the socket was empty and anything arriving later
 * raises an event (which closes an idle connection); otherwise ask. */
bool uconn_drained(struct uconn *u, bool known_empty)
{
    if (known_empty)
        return true;
    char b;
    ssize_t n = recv(u->io.fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

/* Take an idle pooled connection, or open a new one. */
static struct uconn *uconn_get(struct worker *w, struct wgen *wg, const struct conf_upstream *up,
                               uint32_t server, bool fresh, int *err)
{
    struct upool *pool = &wg->pools[wg->pool_base[up->index] + server];
    struct uconn *u;
    while (!fresh && (u = pool->head)) {
        pool_remove(u);
        /* pooled in this very iteration: bytes that arrived after its last
         * read have not raised their event yet */
        if (!uconn_drained(u, u->pooled_iter != w->iter)) {
            uconn_close(u);
            continue;
        }
        loop_timer_stop(w->loop, &u->timer);
        u->reused = true;
        return u;
    }
    const struct conf_addr *a = &up->servers[server].addr;
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *err = errno;
        return NULL;
    }
    set_nodelay(fd);
    int rc = connect(fd, (const struct sockaddr *)&a->ss, a->len);
    if (rc < 0 && errno != EINPROGRESS) {
        *err = errno;
        close(fd);
        return NULL;
    }
    u = calloc(1, sizeof *u);
    if (!u) {
        *err = ENOMEM;
        close(fd);
        return NULL;
    }
    u->io.fd = fd;
    u->io.cb = uconn_io;
    u->timer.cb = uconn_timeout;
    u->w = w;
    u->wg = wg;
    u->pool = pool;
    u->connecting = rc < 0;
    u->writable = rc == 0;
    if (loop_add(w->loop, &u->io) < 0) {
        *err = errno;
        close(fd);
        free(u);
        return NULL;
    }
    if (u->connecting)
        loop_timer_arm(w->loop, &u->timer, up->connect_timeout);
    return u;
}

/* A connection of an older generation goes to the pool of the same server
 * in the newest one, if it still has it (a reload keeps warm connections). */
bool uconn_move_to_current(struct uconn *u)
{
    struct wgen *cur = u->w->cur;
    if (!u->wg->pool_map)
        return false;
    uint32_t j = u->wg->pool_map[u->pool - u->wg->pools];
    if (j == UINT32_MAX)
        return false;
    u->wg = cur;
    u->pool = &cur->pools[j];
    return true;
}

/* Index of upstream `ui` (of x's snapshot) in the worker's metrics layout. */
uint32_t obs_upstream_index(const struct exchange *x, uint32_t ui)
{
    return x->wg->up_map ? x->wg->up_map[ui] : ui;
}

void uconn_release(struct uconn *u, bool keep)
{
    struct worker *w = u->w;
    u->x = NULL;
    if (keep && u->wg != w->cur)
        uconn_move_to_current(u);
    if (!keep || u->hup || w->draining || u->wg != w->cur || u->pool->n >= u->pool->max ||
        u->io.fd < 0) {
        uconn_close(u);
        return;
    }
    u->readable = false;
    u->pooled = true;
    u->pooled_iter = w->iter;
    u->next = u->pool->head;
    u->prev = NULL;
    if (u->next)
        u->next->prev = u;
    u->pool->head = u;
    u->pool->n++;
    loop_timer_arm(w->loop, &u->timer, u->pool->idle_timeout);
}

/* The current attempt is over: give its server back to the balancer,
 * reporting how it went when `report` (passive health). */
void attempt_end(struct exchange *x, bool report, bool ok)
{
    if (!x->holding)
        return;
    if (report)
        balance_report(x->group, x->server, ok, loop_now(x->c->w->loop));
    balance_release(x->group, x->server);
    x->holding = false;
}

/* Choose a server (skipping those this request tried) and attach a pooled or
 * new connection to it. Without one: 503 when every server is down, 502 when
 * the attempts are used up. With fresh, the same server again on a new
 * connection (a reused keep-alive connection the server had closed).
 * When every server has been tried, answer fail_status (the status of the
 * last failure). Returns false when the exchange has ended (x is freed). */
bool upstream_attach(struct exchange *x, bool fresh, int fail_status)
{
    struct worker *w = x->c->w;
    const struct conf_upstream *up = x->route->upstream;
    for (;;) {
        if (!fresh) {
            struct balance_ctx ctx = { .now_ms = loop_now(w->loop) };
            if (up->balance == CONF_BALANCE_IP_HASH) {
                ctx.addr = x->key;
                ctx.addr_len = x->key_len;
            } else if (up->balance == CONF_BALANCE_HASH) {
                ctx.key = x->key;
                ctx.key_len = x->key_len;
            }
            int s = balance_choose(x->group, x->wg->bw[up->index], &ctx, x->tried);
            if (s < 0) {
                exchange_fail(x, s == BALANCE_NONE ? 503 : fail_status,
                              s == BALANCE_NONE ? "no server available" : "every server failed");
                return false;
            }
            x->server = s;
            x->holding = true;
            x->tried[s / 64] |= 1ull << (s % 64);
        }
        int err = 0;
        struct uconn *u = uconn_get(w, x->wg, up, (uint32_t)x->server, fresh, &err);
        if (u) {
            u->x = x;
            x->u = u;
            x->uhead_sent = 0;
            x->req_sent = false;
            x->up_t0_us = now_us();
            if (!u->connecting)
                loop_timer_arm(w->loop, &u->timer, up->response_timeout);
            return true;
        }
        log_rl_warn("upstream %s %s: connect: %s", up->name, up->servers[x->server].addr.text,
                 strerror(err));
        attempt_end(x, true, false);
        fresh = false;
        fail_status = 502;
        if (x->attempts >= up->retries) {
            exchange_fail(x, 502, "upstream connect failed");
            return false;
        }
        x->attempts++;
    }
}

/* The current attempt failed before a response head. Close its connection,
 * report the failure, and try another server when nothing of the request
 * body is lost (`retry`: the failure allows it); otherwise answer `status`. */
void attempt_failed(struct exchange *x, const char *why, int status, bool retry)
{
    const struct conf_upstream *up = x->route->upstream;
    log_rl_warn("upstream %s %s: %s", up->name, up->servers[x->server].addr.text, why);
    uint32_t ui = obs_upstream_index(x, up->index);
    if (ui < x->c->w->obs->nupstreams)
        obs_add(&x->c->w->obs->upstreams[ui].errors, 1);
    if (x->u)
        uconn_close(x->u);
    attempt_end(x, true, false);
    if (retry && !x->body_started && !x->resp_head_done && x->attempts < up->retries) {
        x->attempts++;
        if (upstream_attach(x, false, status))
            exchange_pump(x);
        return;
    }
    exchange_fail(x, status, why);
}
