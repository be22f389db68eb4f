/* pg/pg.c: the pooler at run time: its workers, start, reload and stop,
 * and health checks of the servers. See pg.h for the threading contract.
 *
 * The other files of the running pooler, sharing pg_int.h:
 *   client.c  client connections: accept, read, process, write, close
 *   login.c   a client logging in: startup, authentication, welcome
 *   pool.c    connection states, pools, the wait queue, routing
 *   server.c  server connections: connect, TLS, login, I/O, close
 *   relay.c   messages between a client and its server
 *   track.c   parameter sets, prepared statements, outstanding responses
 *   cancel.c  cancel keys and CancelRequest forwarding
 *   buf.c     byte buffers and sockets
 *   stats.c   metrics and GET /pools
 *
 * A client and a server connection each have one state, changed only by
 * client_state() / server_state(), which also keep the per-pool gauges.
 *
 *   client: LOGIN -> (AUTH) -> WELCOME? -> IDLE <-> WAITING -> ACTIVE -> IDLE ...
 *   server: CONNECT -> LOGIN -> IDLE <-> ACTIVE  (session mode: ACTIVE -> RESET -> IDLE)
 *
 * Transaction mode in one paragraph: a client without a server that sends a
 * message gets one from its pool (or waits in the pool's FIFO queue). Every
 * message forwarded to the server that the server answers is recorded in
 * the server's `pend` queue, with what to do with the answer: pass it on,
 * drop it (portico injected the request: a Parse of a statement the client
 * prepared elsewhere, a SET to replay its parameters) or fake it (portico
 * answered itself: ParseComplete for a statement the server already has,
 * CloseComplete for a statement portico only forgets). When ReadyForQuery
 * says idle and nothing is pending, the server goes back to the pool.
*/
#include "pg_int.h"

#include "core/log.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* This worker's share of each pool (the shares of all workers add up to the pool). */
static void worker_shares(struct worker *w);

pthread_mutex_t pg_global_mu = PTHREAD_MUTEX_INITIALIZER;
struct pg *pg_global;

static void probe_done(struct probe *q, bool up)
{
    struct worker *w = q->w;
    if (q->io.fd < 0)
        return;
    struct pg *pg = w->pg;
    uint8_t was = atomic_exchange_explicit(&pg->up[q->sidx], up ? 1 : 0, memory_order_relaxed);
    if (was != (uint8_t)up)
        log_rl_warn("pg: server %s is %s", w->c->servers[q->sidx].addr.text, up ? "up" : "down");
    loop_timer_stop(w->loop, &q->timer);
    loop_del(w->loop, &q->io);
    close(q->io.fd);
    q->io.fd = -1;
    if (q->aprev)
        q->aprev->anext = q->anext;
    else
        w->probes = q->anext;
    if (q->anext)
        q->anext->aprev = q->aprev;
    q->gnext = w->pgrave;
    w->pgrave = q;
}

static void probe_io(struct loop *l, struct loop_io *io, unsigned ev)
{
    (void)l;
    struct probe *q = (struct probe *)io;
    if (!(ev & (LOOP_WRITE | LOOP_HUP)) || q->io.fd < 0)
        return;
    int e = 0;
    socklen_t el = sizeof e;
    getsockopt(io->fd, SOL_SOCKET, SO_ERROR, &e, &el);
    probe_done(q, e == 0);
}

static void probe_timer(struct loop *l, struct loop_timer *t)
{
    (void)l;
    probe_done((struct probe *)((char *)t - offsetof(struct probe, timer)), false);
}

static void probe_start(struct worker *w, uint32_t sidx)
{
    const struct conf_addr *a = &w->c->servers[sidx].addr;
    struct probe *q = calloc(1, sizeof *q);
    if (!q)
        return;
    q->w = w;
    q->sidx = sidx;
    q->io.cb = probe_io;
    q->timer.cb = probe_timer;
    q->io.fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (q->io.fd < 0) {
        free(q);
        return;
    }
    q->anext = w->probes;
    if (w->probes)
        w->probes->aprev = q;
    w->probes = q;
    if ((connect(q->io.fd, (const struct sockaddr *)&a->ss, a->len) < 0 && errno != EINPROGRESS) ||
        loop_add(w->loop, &q->io) < 0) {
        probe_done(q, false);
        return;
    }
    loop_timer_arm(w->loop, &q->timer, w->c->server_connect_timeout);
}

/* Close p's idle servers that are too old, or idle too long beyond min_pool_size. */
static void close_idle(struct wpool *p, const struct conf_pg *cf, uint64_t now)
{
    for (struct server *s = p->idle, *n; s; s = n) {
        n = s->next;
        if ((cf->server_lifetime && now - s->created > cf->server_lifetime) ||
            (cf->server_idle_timeout && now - s->last_used > cf->server_idle_timeout &&
             p->nservers > p->min))
            pg_server_close(s, "idle timeout or lifetime");
    }
}

static void worker_tick(struct loop *l, struct loop_timer *t)
{
    struct worker *w = (struct worker *)((char *)t - offsetof(struct worker, tick));
    const struct conf_pg *cf = w->c;
    uint64_t now = loop_now(l);
    for (uint32_t i = 0; w->apools && i < cf->npools; i++)
        close_idle(&w->apools[i], cf, now);
    for (uint32_t i = 0; i < w->npools; i++) {
        struct wpool *p = &w->pools[i];
        close_idle(p, cf, now);
        bool recent_fail = p->fail_at && now - p->fail_at < 1000;
        /* min_pool_size: once the pool can log in (pass-through pools
         * learn how from their first client) */
        if (!recent_fail && pg_pool_has_credentials(p))
            while (p->nservers < p->min)
                pg_pool_open_server(p);
        /* waiters: retry after a failure, and the reserve after reserve_pool_timeout */
        if (p->wait_head && !recent_fail) {
            uint64_t waited = (pg_now_us() - p->wait_head->wait_start_us) / 1000;
            uint32_t limit = p->size + (waited >= cf->reserve_pool_timeout ? p->reserve : 0);
            /* connections on their way serve the waiters first */
            uint32_t coming = atomic_load_explicit(&p->st.sv[SS_CONNECT], memory_order_relaxed) +
                              atomic_load_explicit(&p->st.sv[SS_LOGIN], memory_order_relaxed);
            while (p->nservers < limit && coming < p->nwait) {
                pg_pool_open_server(p);
                coming++;
            }
        }
    }
    if (w->idx == 0 && !w->stopping && now - w->probed_at >= cf->health_interval) {
        w->probed_at = now;
        for (uint32_t i = 0; i < cf->nservers; i++)
            probe_start(w, i);
    }
    if (!w->stopping)
        loop_timer_arm(l, &w->tick, TICK_MS);
}

static void worker_before_sleep(struct loop *l, void *arg)
{
    (void)l;
    struct worker *w = arg;
    int rounds = 0;
    for (; w->runq && rounds < 64; rounds++) {
        struct client *q = w->runq;
        w->runq = NULL;
        while (q) {
            struct client *c = q;
            q = c->gnext;
            c->queued = false;
            if (c->state == CS_CLOSED)
                continue;
            if (c->state == CS_WELCOME && c->pool->have_params)
                pg_send_welcome(c);
            pg_client_pump(c);
        }
    }
    if (w->runq)
        loop_wake(w->loop);     /* more to do: do not sleep */
    while (w->cgrave) {
        struct client *c = w->cgrave;
        if (c->queued)      /* still on the run queue: free it next time */
            break;
        w->cgrave = c->gnext;
        pg_client_free(c);
    }
    while (w->sgrave) {
        struct server *s = w->sgrave;
        w->sgrave = s->gnext;
        pg_server_free(s);
    }
    while (w->pgrave) {
        struct probe *q = w->pgrave;
        w->pgrave = q->gnext;
        free(q);
    }
    while (w->qgrave) {
        struct cancelreq *q = w->qgrave;
        w->qgrave = q->gnext;
        free(q);
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    loop_run(w->loop);
    /* free what the stop closed, now that no event of the last batch can
     * still point at it */
    worker_before_sleep(w->loop, w);
    return NULL;
}

/* A reload: switch to the configuration pg_reload() prepared, between two
 * events of this worker's loop, and tell it so. */
static void worker_adopt(struct worker *w)
{
    struct pg *pg = w->pg;
    pthread_mutex_lock(&pg->reload_mu);
    w->c = pg->next_c;
    w->users = pg->next_users;
    w->nusers = pg->next_nusers;
    worker_shares(w);
    atomic_store(&w->adopt_req, false);
    pg->acks++;
    pthread_cond_broadcast(&pg->reload_cv);
    pthread_mutex_unlock(&pg->reload_mu);
}

static void worker_wake_cb(struct loop *l, void *arg)
{
    struct worker *w = arg;
    if (atomic_load(&w->adopt_req) && !w->stopping)
        worker_adopt(w);
    if (!atomic_load(&w->stop_req) || w->stopping)
        return;     /* a reload, or a wake-up to serve the run queue */
    w->stopping = true;
    for (uint32_t i = 0; i < w->nlis; i++) {
        loop_del(l, &w->lis[i].io);
        close(w->lis[i].io.fd);
        w->lis[i].io.fd = -1;
    }
    while (w->clients)
        pg_client_close(w->clients, "shutting down");
    while (w->servers)
        pg_server_close(w->servers, "shutting down");
    while (w->probes)
        probe_done(w->probes, atomic_load(&w->pg->up[w->probes->sidx]));
    while (w->cancels)
        pg_cancel_done(l, w->cancels);
    /* not freed here: events later in this batch may name what was closed
     * (worker_main frees the graveyards once the loop returned) */
    loop_stop(l);
}

static int bind_listener(const struct conf_addr *a, char *err, size_t errlen)
{
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "postgres.listen %s: %s", a->text, strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (a->ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, (const struct sockaddr *)&a->ss, a->len) < 0 || listen(fd, 4096) < 0) {
        snprintf(err, errlen, "postgres.listen %s: %s", a->text, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static void pg_free(struct pg *pg)
{
    if (!pg)
        return;
    for (uint32_t i = 0; i < pg->nw; i++) {
        struct worker *w = &pg->w[i];
        for (uint32_t k = 0; k < w->nlis; k++)
            if (w->lis[k].io.fd >= 0)
                close(w->lis[k].io.fd);
        free(w->lis);
        for (uint32_t k = 0; k < w->npools; k++)
            pgb_free(&w->pools[k].params);
        free(w->pools);
        if (w->stmts) {
            for (uint32_t k = 0; k < w->stmt_buckets; k++)
                for (struct stmt *s = w->stmts[k], *n; s; s = n) {
                    n = s->next;
                    free(s);
                }
            free(w->stmts);
        }
        pg_authq_free(pg, w);
        free(w->keys);
        pthread_mutex_destroy(&w->keys_mu);
        loop_free(w->loop);
    }
    pg_authq_free(pg, NULL);
    free(pg->w);
    pthread_mutex_destroy(&pg->reload_mu);
    pthread_cond_destroy(&pg->reload_cv);
    free(pg->users);
    free((void *)pg->up);
    if (pg->ssl)
        SSL_CTX_free(pg->ssl);
    if (pg->conf)
        conf_unref(pg->conf);
    free(pg);
}

/* The users of the auth file, with SCRAM verifiers derived once from plain
 * passwords (PBKDF2 is slow on purpose: not at every login). */
static bool build_users(const struct conf_pg *cf, struct pg_user **out, uint32_t *n,
                        char *err, size_t errlen)
{
    *out = NULL;
    *n = 0;
    if (!cf->nusers)
        return true;
    struct pg_user *us = calloc(cf->nusers, sizeof *us);
    if (!us) {
        snprintf(err, errlen, "out of memory");
        return false;
    }
    for (uint32_t i = 0; i < cf->nusers; i++) {
        struct pg_user *u = &us[i];
        u->name = cf->users[i].name;
        u->secret = cf->users[i].secret;
        if (!strncmp(u->secret, "SCRAM-SHA-256$", 14))
            u->has_scram = pg_scram_parse_secret(u->secret, &u->scram);
        else if (strncmp(u->secret, "md5", 3) || strlen(u->secret) != 35)
            u->has_scram = pg_scram_from_password(u->secret, NULL, 0, 4096, &u->scram);
        if (!strncmp(u->secret, "SCRAM-SHA-256$", 14) && !u->has_scram) {
            snprintf(err, errlen, "postgres.auth.file: user \"%s\": malformed SCRAM secret", u->name);
            free(us);
            return false;
        }
    }
    *out = us;
    *n = cf->nusers;
    return true;
}

static void worker_shares(struct worker *w)
{
    uint32_t nw = w->pg->nw, i = w->idx;
    for (uint32_t j = 0; j < w->npools; j++) {
        struct wpool *p = &w->pools[j];
        const struct conf_pg_pool *cp = p->cp = &w->c->pools[p->idx];
        p->size = cp->pool_size / nw + (i < cp->pool_size % nw);
        p->min = cp->min_pool_size / nw + (i < cp->min_pool_size % nw);
        p->reserve = cp->reserve_pool / nw + (i < cp->reserve_pool % nw);
        if (p->size == 0)
            p->size = 1;    /* more workers than connections: each may open one */
    }
}

/* SO_REUSEPORT would let the pooler share a port with the HTTP side and
 * split its connections between them: refuse that. */
static bool check_ports(const struct conf *conf, char *err, size_t errlen)
{
    const struct conf_pg *cf = &conf->pg;
    for (uint32_t i = 0; i < cf->nlisten; i++) {
        bool clash = conf->admin_enabled && conf_addr_equal(&cf->listen[i], &conf->admin_listen);
        for (uint32_t k = 0; k < conf->nlisten && !clash; k++)
            clash = conf_addr_equal(&cf->listen[i], &conf->listen[k]);
        if (clash) {
            snprintf(err, errlen, "postgres.listen %s: also an HTTP or admin address", cf->listen[i].text);
            return false;
        }
    }
    return true;
}

/* The TLS context for server connections (sslmode require / verify-full). */
static bool tls_context(struct pg *pg, const struct conf_pg *cf, char *err, size_t errlen)
{
    if (cf->sslmode == CONF_PG_SSL_DISABLE)
        return true;
    if (!(pg->ssl = SSL_CTX_new(TLS_client_method()))) {
        snprintf(err, errlen, "postgres: TLS context: out of memory");
        return false;
    }
    SSL_CTX_set_min_proto_version(pg->ssl, TLS1_2_VERSION);
    if (cf->sslmode == CONF_PG_SSL_VERIFY_FULL) {
        SSL_CTX_set_verify(pg->ssl, SSL_VERIFY_PEER, NULL);
        int ok = cf->sslrootcert ? SSL_CTX_load_verify_locations(pg->ssl, cf->sslrootcert, NULL)
                                 : SSL_CTX_set_default_verify_paths(pg->ssl);
        if (ok != 1) {
            snprintf(err, errlen, "postgres.sslrootcert: cannot load %s",
                     cf->sslrootcert ? cf->sslrootcert : "the system's CA certificates");
            return false;
        }
    } else {
        SSL_CTX_set_verify(pg->ssl, SSL_VERIFY_NONE, NULL);
    }
    return true;
}

/* Worker i: its loop, listeners and pool shares. false with err set (the
 * caller frees what was made: pg_free() copes with a half-made worker). */
static bool worker_init(struct pg *pg, uint32_t i, char *err, size_t errlen)
{
    const struct conf_pg *cf = pg->c;
    struct worker *w = &pg->w[i];
    w->pg = pg;
    w->c = cf;
    w->users = pg->users;
    w->nusers = pg->nusers;
    w->idx = i;
    w->next_key = 1;
    pthread_mutex_init(&w->keys_mu, NULL);
    w->loop = loop_new();
    w->lis = calloc(cf->nlisten, sizeof *w->lis);
    w->pools = calloc((size_t)cf->npools * pg->nsrv, sizeof *w->pools);
    if (!w->loop || !w->lis || !w->pools) {
        snprintf(err, errlen, "out of memory");
        return false;
    }
    for (uint32_t k = 0; k < cf->nlisten; k++)
        w->lis[k].io.fd = -1;
    for (uint32_t k = 0; k < cf->nlisten; k++) {
        int fd = bind_listener(&cf->listen[k], err, errlen);
        if (fd < 0)
            return false;
        w->lis[k].io.fd = fd;
        w->lis[k].io.cb = pg_listener_io;
        w->lis[k].w = w;
        w->nlis++;
        loop_add(w->loop, &w->lis[k].io);
    }
    w->npools = cf->npools * pg->nsrv;
    for (uint32_t j = 0; j < w->npools; j++) {
        uint32_t k = j / pg->nsrv;
        struct wpool *p = &w->pools[j];
        const struct conf_pg_pool *cp = &cf->pools[k];
        p->w = w;
        p->cp = cp;
        p->idx = k;
        p->sidx = j % pg->nsrv;
    }
    worker_shares(w);
    if (!pg_authq_worker(w)) {
        snprintf(err, errlen, "out of memory");
        return false;
    }
    w->tick.cb = worker_tick;
    loop_timer_arm(w->loop, &w->tick, TICK_MS);
    loop_set_before_sleep(w->loop, worker_before_sleep, w);
    loop_set_wake(w->loop, worker_wake_cb, w);
    return true;
}

struct pg *pg_start(struct conf *conf, char *err, size_t errlen)
{
    const struct conf_pg *cf = &conf->pg;
    struct pg *pg = calloc(1, sizeof *pg);
    if (!pg) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&pg->reload_mu, NULL);
    pthread_cond_init(&pg->reload_cv, NULL);
    pg->conf = conf_ref(conf);
    pg->c = cf;
    if (!check_ports(conf, err, errlen)) {
        pg_free(pg);
        return NULL;
    }
    pg->nbuckets = conf->metrics.nbuckets;
    memcpy(pg->buckets, conf->metrics.buckets, sizeof pg->buckets);
    if (!build_users(cf, &pg->users, &pg->nusers, err, errlen)) {
        pg_free(pg);
        return NULL;
    }
    if (!tls_context(pg, cf, err, errlen)) {
        pg_free(pg);
        return NULL;
    }
    pg->nsrv = cf->nservers;
    if (!(pg->up = calloc(pg->nsrv, sizeof *pg->up))) {
        snprintf(err, errlen, "out of memory");
        pg_free(pg);
        return NULL;
    }
    pg->primary = UINT32_MAX;
    for (uint32_t i = 0; i < pg->nsrv; i++) {
        atomic_init(&pg->up[i], 1);
        if (cf->servers[i].role == CONF_PG_REPLICA)
            pg->nreplicas++;
        else if (pg->primary == UINT32_MAX)
            pg->primary = i;
    }
    if (!pg_authq_setup(pg, err, errlen)) {
        pg_free(pg);
        return NULL;
    }
    pg->nw = conf->workers ? conf->workers : 1;
    if (pg->nw > PG_MAX_WORKERS)
        pg->nw = PG_MAX_WORKERS;
    if (!(pg->w = calloc(pg->nw, sizeof *pg->w))) {
        snprintf(err, errlen, "out of memory");
        pg_free(pg);
        return NULL;
    }
    for (uint32_t i = 0; i < pg->nw; i++) {
        if (!worker_init(pg, i, err, errlen)) {
            pg->nw = i + 1;
            pg_free(pg);
            return NULL;
        }
    }
    for (uint32_t i = 0; i < pg->nw; i++) {
        if (pthread_create(&pg->w[i].thread, NULL, worker_main, &pg->w[i]) != 0) {
            snprintf(err, errlen, "postgres: cannot start a worker thread");
            for (uint32_t k = 0; k < i; k++) {
                atomic_store(&pg->w[k].stop_req, true);
                loop_wake(pg->w[k].loop);
                pthread_join(pg->w[k].thread, NULL);
            }
            pg_free(pg);
            return NULL;
        }
    }
    pthread_mutex_lock(&pg_global_mu);
    pg_global = pg;
    pthread_mutex_unlock(&pg_global_mu);
    log_info("pg: pooler on %s%s, %u pools, %u workers", cf->listen[0].text,
             cf->nlisten > 1 ? " and more" : "", cf->npools, pg->nw);
    return pg;
}

static bool str_eq(const char *a, const char *b) { return a == b || (a && b && !strcmp(a, b)); }

/* Whether two postgres: sections would run the same pooler. */
static bool conf_pg_same(const struct conf_pg *a, const struct conf_pg *b)
{
    if (a->enabled != b->enabled || a->nlisten != b->nlisten || a->nservers != b->nservers ||
        a->npools != b->npools || a->nusers != b->nusers || a->auth != b->auth ||
        a->max_client_conn != b->max_client_conn || a->query_wait_timeout != b->query_wait_timeout ||
        a->reserve_pool_timeout != b->reserve_pool_timeout || a->server_lifetime != b->server_lifetime ||
        a->server_idle_timeout != b->server_idle_timeout ||
        a->server_connect_timeout != b->server_connect_timeout ||
        a->client_login_timeout != b->client_login_timeout || a->health_interval != b->health_interval ||
        !str_eq(a->server_reset_query, b->server_reset_query) || a->slow_query != b->slow_query ||
        !str_eq(a->server_check_query, b->server_check_query) ||
        a->server_check_delay != b->server_check_delay ||
        a->slow_query_max_chars != b->slow_query_max_chars || a->sslmode != b->sslmode ||
        !str_eq(a->sslrootcert, b->sslrootcert) || a->max_prepared != b->max_prepared ||
        !str_eq(a->auth_user, b->auth_user) || !str_eq(a->auth_password, b->auth_password) ||
        !str_eq(a->auth_dbname, b->auth_dbname) || !str_eq(a->auth_query, b->auth_query) ||
        a->auth_cache != b->auth_cache)
        return false;
    for (uint32_t i = 0; i < a->nlisten; i++)
        if (!conf_addr_equal(&a->listen[i], &b->listen[i]))
            return false;
    for (uint32_t i = 0; i < a->nservers; i++)
        if (!conf_addr_equal(&a->servers[i].addr, &b->servers[i].addr) ||
            a->servers[i].role != b->servers[i].role || a->servers[i].weight != b->servers[i].weight)
            return false;
    for (uint32_t i = 0; i < a->npools; i++) {
        const struct conf_pg_pool *x = &a->pools[i], *y = &b->pools[i];
        if (!str_eq(x->database, y->database) || !str_eq(x->user, y->user) ||
            !str_eq(x->password, y->password) || x->mode != y->mode || x->pool_size != y->pool_size ||
            x->min_pool_size != y->min_pool_size || x->reserve_pool != y->reserve_pool ||
            x->read_only != y->read_only)
            return false;
    }
    for (uint32_t i = 0; i < a->nusers; i++)
        if (!str_eq(a->users[i].name, b->users[i].name) || !str_eq(a->users[i].secret, b->users[i].secret))
            return false;
    return true;
}

/* What a running pooler cannot change: its sockets, its servers, its pools'
 * identities and modes, TLS, the auth_query login. */
static bool conf_pg_hot(const struct conf_pg *a, const struct conf_pg *b)
{
    if (a->nlisten != b->nlisten || a->nservers != b->nservers || a->npools != b->npools ||
        a->sslmode != b->sslmode || !str_eq(a->sslrootcert, b->sslrootcert) ||
        !str_eq(a->auth_user, b->auth_user) || !str_eq(a->auth_password, b->auth_password) ||
        !str_eq(a->auth_dbname, b->auth_dbname))
        return false;
    for (uint32_t i = 0; i < a->nlisten; i++)
        if (!conf_addr_equal(&a->listen[i], &b->listen[i]))
            return false;
    for (uint32_t i = 0; i < a->nservers; i++)
        if (!conf_addr_equal(&a->servers[i].addr, &b->servers[i].addr) ||
            a->servers[i].role != b->servers[i].role || a->servers[i].weight != b->servers[i].weight)
            return false;
    for (uint32_t i = 0; i < a->npools; i++)
        if (strcmp(a->pools[i].database, b->pools[i].database) || strcmp(a->pools[i].user, b->pools[i].user) ||
            a->pools[i].mode != b->pools[i].mode)
            return false;
    return true;
}

int pg_reload(struct pg *pg, struct conf *nc)
{
    if (!pg || !nc->pg.enabled) {
        if ((pg != NULL) != nc->pg.enabled)
            log_warn("postgres: the section was %s; restart portico to apply it", pg ? "removed" : "added");
        return pg || nc->pg.enabled ? -1 : 0;
    }
    if (conf_pg_same(pg->c, &nc->pg))
        return 0;
    if (!conf_pg_hot(pg->c, &nc->pg)) {
        log_warn("postgres: listen, servers, the pools' database/user/pool_mode, TLS or auth.user/password/database changed; "
                 "restart portico to apply them (the pooler keeps its running configuration)");
        return -1;
    }
    char err[256];
    struct pg_user *users;
    uint32_t nusers;
    if (!build_users(&nc->pg, &users, &nusers, err, sizeof err)) {
        log_warn("postgres: reload refused: %s", err);
        return -1;
    }
    /* every worker switches in its own thread; the old configuration is
     * released once none runs on it */
    pthread_mutex_lock(&pg->reload_mu);
    pg->next_c = &nc->pg;
    pg->next_users = users;
    pg->next_nusers = nusers;
    pg->acks = 0;
    for (uint32_t i = 0; i < pg->nw; i++) {
        atomic_store(&pg->w[i].adopt_req, true);
        loop_wake(pg->w[i].loop);
    }
    while (pg->acks < pg->nw)
        pthread_cond_wait(&pg->reload_cv, &pg->reload_mu);
    pthread_mutex_unlock(&pg->reload_mu);
    pthread_mutex_lock(&pg_global_mu);          /* the admin thread reads pg->c under it */
    struct conf *old = pg->conf;
    struct pg_user *old_users = pg->users;
    pg->conf = conf_ref(nc);
    pg->c = &nc->pg;
    pg->users = users;
    pg->nusers = nusers;
    pthread_mutex_unlock(&pg_global_mu);
    free(old_users);
    conf_unref(old);
    log_info("postgres: configuration reloaded");
    return 0;
}

void pg_stop(struct pg *pg)
{
    if (!pg)
        return;
    pthread_mutex_lock(&pg_global_mu);
    pg_global = NULL;
    pthread_mutex_unlock(&pg_global_mu);
    for (uint32_t i = 0; i < pg->nw; i++) {
        atomic_store(&pg->w[i].stop_req, true);
        loop_wake(pg->w[i].loop);
    }
    for (uint32_t i = 0; i < pg->nw; i++)
        pthread_join(pg->w[i].thread, NULL);
    pg_free(pg);
}
