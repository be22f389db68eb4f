/* proxy/worker.c: worker threads: start, the per-iteration reap, graceful drain, stop;
 * and the inline (threadless) proxy the whole-path fuzzer drives. */
#include "proxy_int.h"

static void drain_timeout(struct loop *l, struct loop_timer *t);
static void worker_wake(struct loop *l, void *arg);
static void *worker_main(void *arg);
static void close_pools(struct worker *w);
static void worker_free(struct worker *w);
static bool worker_init(struct proxy *p, struct worker *w, uint32_t id, char *err, size_t errlen);
static void proxy_free(struct proxy *p);
static uint64_t raise_fd_limit(const struct conf *c);

void worker_reap(struct loop *l, void *arg)
{
    struct worker *w = arg;
    w->iter++;
    /* connections whose pipelined requests were deferred: their turn */
    struct client *ready = w->ready;
    w->ready = NULL;
    while (ready) {
        struct client *c = ready;
        ready = c->next_ready;
        c->deferred = false;
        if (c->io.fd >= 0)
            client_drive(c);
    }
    if (w->audit.len)
        obs_alog_flush(&w->audit);
    while (w->dead_clients) {
        struct client *c = w->dead_clients;
        w->dead_clients = c->next_dead;
        free(c);
    }
    while (w->dead_uconns) {
        struct uconn *u = w->dead_uconns;
        w->dead_uconns = u->next;
        free(u);
    }
    while (w->dead_listeners) {
        struct listener *ls = w->dead_listeners;
        w->dead_listeners = ls->next_dead;
        free(ls);
    }
    /* older generations whose last request has ended */
    for (struct wgen **pp = w->cur ? &w->cur->next : NULL; pp && *pp;) {
        struct wgen *o = *pp;
        if (o->users == 0) {
            *pp = o->next;
            wgen_free(o);
        } else {
            pp = &o->next;
        }
    }
    if (w->draining && w->nclients == 0)
        loop_stop(l);
}

static void drain_timeout(struct loop *l, struct loop_timer *t)
{
    struct worker *w = container_of(t, struct worker, drain_timer);
    log_warn("worker %u: shutdown timeout, closing %u connections", w->id, w->nclients);
    while (w->clients)
        client_close(w->clients);
    loop_stop(l);
}

/* Runs in the worker when proxy_shutdown() or proxy_reload() wakes it. */
static void worker_wake(struct loop *l, void *arg)
{
    struct worker *w = arg;
    stage_mbox_drain(w);        /* exchanges another thread woke */
    if (w->draining)
        return;
    if (!atomic_load(&w->p->stopping)) {
        pthread_mutex_lock(&w->p->mu);
        struct proxy_gen *g = gen_ref(w->p->gen);
        pthread_mutex_unlock(&w->p->mu);
        if (g != w->cur->g)
            worker_adopt(w, g);
        gen_unref(g);
        return;
    }
    w->draining = true;
    obs_alog_flush(&w->alog);
    for (uint32_t i = 0; i < w->nlisteners; i++) {
        listener_retire(w, w->listeners[i]);
        w->listeners[i] = NULL;
    }
    w->drain_timer.cb = drain_timeout;
    loop_timer_arm(l, &w->drain_timer, w->conf->shutdown_timeout);
    close_pools(w);
    /* Close connections idle right now; busy ones close after their
     * current response (draining turns keep-alive off). */
    struct client *c = w->clients;
    while (c) {
        struct client *next = c->next;
        if (c->state == C_IDLE && !(c->in && buf_len(c->in)))
            client_close(c);
        c = next;
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    loop_run(w->loop);
    return NULL;
}

static void close_pools(struct worker *w)
{
    for (struct wgen *wg = w->cur; wg; wg = wg->next)
        wgen_close_pools(wg);
}

static void worker_free(struct worker *w)
{
    if (!w->loop)
        return;
    while (w->clients)
        client_close(w->clients);
    stage_mbox_drain(w);        /* wakers handed over for exchanges now gone */
    stage_sinks_free(w);
    close_pools(w);
    for (uint32_t i = 0; i < w->nlisteners; i++)
        listener_retire(w, w->listeners[i]);
    worker_reap(w->loop, w);
    while (w->cur) {
        struct wgen *wg = w->cur;
        w->cur = wg->next;
        wgen_free(wg);
    }
    worker_reap(w->loop, w);
    buf_pool_drain(&w->bufs);
    obs_alog_flush(&w->alog);
    obs_alog_buf_free(&w->alog);
    obs_alog_flush(&w->audit);
    obs_alog_buf_free(&w->audit);
    obs_worker_free(w->obs);
    free(w->listeners);
    free(w->hdrs);
    free(w->kinds);
    free(w->npath);
    free(w->tscratch);
    loop_free(w->loop);
}

uint32_t bufsize_for(const struct conf *c)
{
    uint32_t b = c->limits.max_header_bytes + 4096;
    return b < 32768 ? 32768 : b;
}

static bool worker_init(struct proxy *p, struct worker *w, uint32_t id, char *err, size_t errlen)
{
    w->p = p;
    w->id = id;
    w->loop = loop_new();
    if (!w->loop) {
        snprintf(err, errlen, "event loop: %s", strerror(errno));
        return false;
    }
    buf_pool_init(&w->bufs, p->bufsize, 256);
    obs_alog_buf_init(&w->alog, NULL);
    obs_alog_buf_init(&w->audit, NULL);
    if (getrandom(&w->reqid_seed, sizeof w->reqid_seed, 0) != sizeof w->reqid_seed)
        w->reqid_seed = (uint64_t)loop_clock_ms() * 0x9e3779b97f4a7c15ull + id;
    w->alog_timer.cb = alog_timeout;
    w->accept_timer.cb = accept_retry;
    if (!(w->npath = malloc(p->bufsize))) {
        snprintf(err, errlen, "out of memory");
        return false;
    }
    /* a timer per connection each way, reserved now: arming one later never
     * needs memory (descriptors bound the connections there can be) */
    uint64_t ntimers = 2ull * p->gen->conf->limits.max_connections + 64;
    if (ntimers > p->maxfd + 64)
        ntimers = p->maxfd + 64;
    if (loop_reserve_timers(w->loop, (uint32_t)ntimers) < 0) {
        snprintf(err, errlen, "out of memory for %llu timers", (unsigned long long)ntimers);
        return false;
    }
    loop_set_before_sleep(w->loop, worker_reap, w);
    loop_set_wake(w->loop, worker_wake, w);
    pthread_mutex_init(&w->mbox_mu, NULL);
    if (!worker_adopt(w, p->gen)) {
        snprintf(err, errlen, "out of memory");
        return false;
    }
    for (uint32_t i = 0; i < w->nlisteners; i++) {
        if (!w->listeners[i]) {
            snprintf(err, errlen, "listen %s: cannot watch the socket", w->conf->listen[i].text);
            return false;
        }
    }
    return true;
}

static void proxy_free(struct proxy *p)
{
    for (uint32_t i = 0; p->workers && i < p->nworkers; i++)
        worker_free(&p->workers[i]);
    free(p->workers);
    gen_unref(p->gen);
    pthread_mutex_destroy(&p->mu);
    pthread_mutex_destroy(&p->reload_mu);
    free(p);
}

/* Every connection is a descriptor, and a proxied one two: raise the
 * soft limit towards what max_connections needs, or say that it cannot. */
static uint64_t raise_fd_limit(const struct conf *c)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return 1024;
    uint64_t need = 2ull * c->limits.max_connections +
                    (uint64_t)c->workers * (c->nlisten + 8) + 256;
    if (rl.rlim_cur < need) {
        struct rlimit nl = rl;
        nl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= need ? need : rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &nl) == 0)
            rl = nl;
        if (rl.rlim_cur < c->limits.max_connections + 64ull)
            log_warn("open files limit %llu is below the %llu that limits.max_connections %u "
                     "needs; raise it (LimitNOFILE=, ulimit -n) or lower max_connections",
                     (unsigned long long)rl.rlim_cur, (unsigned long long)need,
                     c->limits.max_connections);
    }
    return rl.rlim_cur;
}

/* A proxy with its first generation and room for nworkers workers (not yet
 * initialised). NULL with err on failure. */
static struct proxy *proxy_alloc(struct conf *conf, uint32_t nworkers, char *err, size_t errlen)
{
    struct proxy *p = calloc(1, sizeof *p);
    if (!p) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_mutex_init(&p->reload_mu, NULL);
    p->nworkers = nworkers;
    p->bufsize = bufsize_for(conf);
    p->maxfd = raise_fd_limit(conf);
    p->gen = gen_new(conf, NULL, p->nworkers, 1, err, errlen);
    p->workers = calloc(p->nworkers, sizeof *p->workers);
    if (!p->gen || !p->workers) {
        if (p->gen)
            snprintf(err, errlen, "out of memory");
        proxy_free(p);
        return NULL;
    }
    return p;
}

struct proxy *proxy_start(struct conf *conf, char *err, size_t errlen)
{
    struct proxy *p = proxy_alloc(conf, conf->workers, err, errlen);
    if (!p)
        return NULL;
    p->stats.generation = 1;
    p->stats.loaded_at = time(NULL);
    for (uint32_t i = 0; i < p->nworkers; i++) {
        if (!worker_init(p, &p->workers[i], i, err, errlen)) {
            proxy_free(p);
            return NULL;
        }
    }
    for (uint32_t i = 0; i < p->nworkers; i++) {
        int rc = pthread_create(&p->workers[i].thread, NULL, worker_main, &p->workers[i]);
        if (rc) {
            snprintf(err, errlen, "pthread_create: %s", strerror(rc));
            atomic_store(&p->stopping, true);
            for (uint32_t j = 0; j < i; j++)
                loop_wake(p->workers[j].loop);
            for (uint32_t j = 0; j < i; j++)
                pthread_join(p->workers[j].thread, NULL);
            proxy_free(p);
            return NULL;
        }
    }
    /* one health checker for the process, whatever the number of workers */
    int hrc = balance_health_start(p->gen->groups, conf->nupstreams);
    if (hrc < 0)
        log_error("health checks not started: %s", strerror(-hrc));
    return p;
}

void proxy_shutdown(struct proxy *p)
{
    atomic_store(&p->stopping, true);
    for (uint32_t i = 0; i < p->nworkers; i++)
        loop_wake(p->workers[i].loop);
}

void proxy_wait(struct proxy *p)
{
    for (uint32_t i = 0; i < p->nworkers; i++)
        pthread_join(p->workers[i].thread, NULL);
    balance_health_stop(false);
    proxy_free(p);
}

struct proxy *proxy_inline_new(struct conf *conf, char *err, size_t errlen)
{
    struct proxy *p = proxy_alloc(conf, 1, err, errlen);
    if (!p)
        return NULL;
    if (!worker_init(p, &p->workers[0], 0, err, errlen)) {
        proxy_free(p);
        return NULL;
    }
    struct worker *w = &p->workers[0];
    w->reqid_seed = 1;              /* reproducible request ids */
    for (uint32_t i = 0; i < w->nlisteners; i++) {  /* clients come from proxy_inline_client */
        listener_retire(w, w->listeners[i]);
        w->listeners[i] = NULL;
    }
    p->stats.generation = 1;
    return p;
}

/* Adopt a connected socket as a client, as listener_io does after accept4()
 * (keep the two in step). */
int proxy_inline_client(struct proxy *p, int fd, const struct sockaddr *peer, socklen_t len)
{
    struct worker *w = &p->workers[0];
    struct client *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    memcpy(&c->peer, peer, len < sizeof c->peer ? len : sizeof c->peer);
    int rc = client_start(w, c, fd);           /* as listener_accept does */
    if (rc < 0) {
        free(c);
        return rc;
    }
    atomic_fetch_add_explicit(&p->nconns, 1, memory_order_relaxed);
    return 0;
}

int proxy_inline_run(struct proxy *p, int timeout_ms)
{
    return loop_run_once(p->workers[0].loop, timeout_ms);
}

void proxy_inline_advance(struct proxy *p, uint64_t ms)
{
    loop_advance(p->workers[0].loop, ms);
}

uint32_t proxy_inline_nclients(const struct proxy *p)
{
    return p->workers[0].nclients;
}

void proxy_inline_free(struct proxy *p)
{
    proxy_free(p);
}
