/* proxy/gen.c: generations: a configuration and what is built from it, how a reload
 * builds one and how each worker adopts it; what the admin thread reads. */
#include "proxy_int.h"

static void alog_unref(struct alog_ref *a);
static struct alog_ref *alog_open(const char *what, const char *path, char *err, size_t errlen);
static void wgen_pool_map(struct wgen *old, const struct wgen *cur);
static void wgen_hand_over_pools(struct wgen *old);
static struct wgen *wgen_new(struct worker *w, struct proxy_gen *g);
static void worker_maps(struct worker *w);
static int reload_locked(struct proxy *p, char *err, size_t errlen);

static void alog_unref(struct alog_ref *a)
{
    if (a && atomic_fetch_sub_explicit(&a->refs, 1, memory_order_acq_rel) == 1) {
        obs_alog_close(a->log);
        free(a->path);
        free(a);
    }
}

/* Open a log writer; `what` ("access log", "audit log") names it in errors. */
static struct alog_ref *alog_open(const char *what, const char *path, char *err, size_t errlen)
{
    struct alog_ref *a = calloc(1, sizeof *a);
    if (!a || !(a->path = strdup(path))) {
        free(a);
        snprintf(err, errlen, "%s: out of memory", what);
        return NULL;
    }
    char why[512];
    if (!(a->log = obs_alog_open(path, why, sizeof why))) {
        snprintf(err, errlen, "%s %s", what, why);
        free(a->path);
        free(a);
        return NULL;
    }
    atomic_init(&a->refs, 1);
    return a;
}

struct proxy_gen *gen_ref(struct proxy_gen *g)
{
    atomic_fetch_add_explicit(&g->refs, 1, memory_order_relaxed);
    return g;
}

/* Drop a reference; the last one frees the generation. Its groups must no
 * longer be in the health checker (proxy_reload restarts it first). */
void gen_unref(struct proxy_gen *g)
{
    if (!g || atomic_fetch_sub_explicit(&g->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (size_t i = 0; g->lfd && i < (size_t)g->nworkers * g->conf->nlisten; i++)
        if (g->lfd[i] >= 0)
            close(g->lfd[i]);
    free(g->lfd);
    for (uint32_t i = 0; g->groups && i < g->conf->nupstreams; i++)
        balance_group_free(g->groups[i]);
    stage_chains_free(g->chains, g->conf->nroutes);
    free(g->groups);
    alog_unref(g->alog);
    alog_unref(g->audit);
    conf_unref(g->conf);
    free(g);
}

/* Build generation `id` for conf (taking a reference) to follow `old` (NULL
 * at start): upstream groups, each inheriting its servers' health from old's
 * group of the same name; the access log (old's writer if the path is the
 * same); and, for every address old did not listen on, one socket per
 * worker, so that a port in use refuses the reload before anything changed.
 * NULL with err on failure, with nothing left open. */
struct proxy_gen *gen_new(struct conf *conf, const struct proxy_gen *old, uint32_t nworkers,
                                 uint64_t id, char *err, size_t errlen)
{
    struct proxy_gen *g = calloc(1, sizeof *g);
    if (!g) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    atomic_init(&g->refs, 1);
    g->id = id;
    g->conf = conf_ref(conf);
    g->nworkers = nworkers;
    size_t nfd = (size_t)nworkers * conf->nlisten;
    g->lfd = malloc(nfd * sizeof *g->lfd);
    for (size_t i = 0; g->lfd && i < nfd; i++)
        g->lfd[i] = -1;
    g->groups = calloc(conf->nupstreams, sizeof *g->groups);
    g->chains = stage_chains_new(conf);     /* each route's stages */
    if (!g->lfd || !g->groups || !g->chains) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (uint32_t i = 0; i < conf->nupstreams; i++) {
        if (!(g->groups[i] = balance_group_new(&conf->upstreams[i], err, errlen)))
            goto fail;
        for (uint32_t j = 0; old && j < old->conf->nupstreams; j++)
            if (!strcmp(old->conf->upstreams[j].name, conf->upstreams[i].name))
                balance_group_inherit(g->groups[i], old->groups[j]);
    }
    if (conf->access_log) {
        if (old && old->alog && !strcmp(old->alog->path, conf->access_log)) {
            g->alog = old->alog;
            atomic_fetch_add_explicit(&g->alog->refs, 1, memory_order_relaxed);
        } else if (!(g->alog = alog_open("access log", conf->access_log, err, errlen))) {
            goto fail;
        }
    }
    if (conf->audit_log) {
        if (old && old->audit && !strcmp(old->audit->path, conf->audit_log)) {
            g->audit = old->audit;
            atomic_fetch_add_explicit(&g->audit->refs, 1, memory_order_relaxed);
        } else if (old && old->alog && !strcmp(old->alog->path, conf->audit_log)) {
            g->audit = old->alog;       /* one writer per file */
            atomic_fetch_add_explicit(&g->audit->refs, 1, memory_order_relaxed);
        } else if (g->alog && !strcmp(g->alog->path, conf->audit_log)) {
            g->audit = g->alog;
            atomic_fetch_add_explicit(&g->audit->refs, 1, memory_order_relaxed);
        } else if (!(g->audit = alog_open("audit log", conf->audit_log, err, errlen))) {
            goto fail;
        }
    }
    for (uint32_t a = 0; a < conf->nlisten; a++) {
        if (old && conf_listens_on(old->conf, &conf->listen[a]))
            continue;
        for (uint32_t w = 0; w < nworkers; w++) {
            int fd = open_listener(&conf->listen[a], w == 0, err, errlen);
            if (fd < 0)
                goto fail;
            g->lfd[(size_t)w * conf->nlisten + a] = fd;
        }
    }
    return g;
fail:
    gen_unref(g);
    return NULL;
}

void wgen_close_pools(struct wgen *wg)
{
    for (uint32_t i = 0; wg->pools && i < wg->npools; i++)
        while (wg->pools[i].head)
            uconn_close(wg->pools[i].head);
}

void wgen_free(struct wgen *wg)
{
    wgen_close_pools(wg);
    for (uint32_t i = 0; wg->bw && i < wg->g->conf->nupstreams; i++)
        balance_worker_free(wg->bw[i]);
    free(wg->bw);
    free(wg->pools);
    free(wg->pool_base);
    free(wg->route_map);
    free(wg->up_map);
    free(wg->pool_map);
    gen_unref(wg->g);
    free(wg);
}

/* old->pool_map: each of old's pools to the pool of the same upstream name
 * and server address in cur. Without memory: NULL, nothing moves. */
static void wgen_pool_map(struct wgen *old, const struct wgen *cur)
{
    const struct conf *oc = old->g->conf, *nc = cur->g->conf;
    free(old->pool_map);
    old->pool_map = malloc((old->npools ? old->npools : 1) * sizeof *old->pool_map);
    if (!old->pool_map)
        return;
    for (uint32_t i = 0; i < oc->nupstreams; i++) {
        const struct conf_upstream *ou = &oc->upstreams[i], *nu = NULL;
        for (uint32_t j = 0; j < nc->nupstreams && !nu; j++)
            if (!strcmp(nc->upstreams[j].name, ou->name))
                nu = &nc->upstreams[j];
        for (uint32_t k = 0; k < ou->nservers; k++) {
            uint32_t to = UINT32_MAX;
            const struct conf_addr *a = &ou->servers[k].addr;
            for (uint32_t m = 0; nu && m < nu->nservers && to == UINT32_MAX; m++) {
                const struct conf_addr *b = &nu->servers[m].addr;
                if (conf_addr_equal(a, b))
                    to = cur->pool_base[nu->index] + m;
            }
            old->pool_map[old->pool_base[i] + k] = to;
        }
    }
}

/* Move old's idle connections into cur's pools where the server stays; close
 * the others (and any beyond the new keepalive). */
static void wgen_hand_over_pools(struct wgen *old)
{
    for (uint32_t i = 0; i < old->npools; i++) {
        while (old->pools[i].head) {
            struct uconn *u = old->pools[i].head;
            pool_remove(u);
            u->x = NULL;
            if (!uconn_move_to_current(u) || u->pool->n >= u->pool->max) {
                u->pooled = false;
                uconn_close(u);
                continue;
            }
            u->pooled = true;
            u->prev = NULL;
            u->next = u->pool->head;
            if (u->next)
                u->next->prev = u;
            u->pool->head = u;
            u->pool->n++;
        }
    }
}

static struct wgen *wgen_new(struct worker *w, struct proxy_gen *g)
{
    const struct conf *c = g->conf;
    struct wgen *wg = calloc(1, sizeof *wg);
    if (!wg)
        return NULL;
    wg->g = gen_ref(g);
    wg->pool_base = calloc(c->nupstreams, sizeof *wg->pool_base);
    wg->bw = calloc(c->nupstreams, sizeof *wg->bw);
    if (!wg->pool_base || !wg->bw)
        goto fail;
    for (uint32_t i = 0; i < c->nupstreams; i++) {
        wg->pool_base[i] = wg->npools;
        wg->npools += c->upstreams[i].nservers;
        if (!(wg->bw[i] = balance_worker_new(g->groups[i], w->id)))
            goto fail;
    }
    wg->pools = calloc(wg->npools ? wg->npools : 1, sizeof *wg->pools);
    if (!wg->pools)
        goto fail;
    for (uint32_t i = 0; i < c->nupstreams; i++) {
        for (uint32_t k = 0; k < c->upstreams[i].nservers; k++) {
            wg->pools[wg->pool_base[i] + k].max = c->upstreams[i].keepalive;
            wg->pools[wg->pool_base[i] + k].idle_timeout = c->upstreams[i].idle_timeout;
        }
    }
    return wg;
fail:
    wgen_free(wg);
    return NULL;
}

/* Point every generation's route and upstream indexes at the worker's
 * metrics layout (identity, NULL maps, for the generation it was made for).
 * Without memory a map stays NULL: obs clamps indexes, so a request of an
 * old generation is then miscounted, never out of bounds. */
static void worker_maps(struct worker *w)
{
    const struct conf *lay = w->obs->layout;
    for (struct wgen *wg = w->cur; wg; wg = wg->next) {
        free(wg->route_map);
        free(wg->up_map);
        wg->route_map = wg->up_map = NULL;
        const struct conf *c = wg->g->conf;
        if (c == lay)
            continue;
        wg->route_map = malloc(((size_t)c->nroutes + 1) * sizeof *wg->route_map);
        wg->up_map = malloc(((size_t)c->nupstreams + 1) * sizeof *wg->up_map);
        if (wg->route_map)
            obs_map_routes(c, lay, wg->route_map);
        if (wg->up_map)
            obs_map_upstreams(c, lay, wg->up_map);
    }
}

/* The worker's listeners for g: kept where the address stays, taken from g
 * or opened here where it is new, retired where it is gone. */
static void adopt_listeners(struct worker *w, struct proxy_gen *g, struct listener **nl)
{
    const struct conf *c = g->conf;
    for (uint32_t i = 0; i < c->nlisten; i++) {
        const struct conf_addr *a = &c->listen[i];
        for (uint32_t j = 0; j < w->nlisteners && !nl[i]; j++) {
            if (w->listeners[j] && conf_addr_equal(&w->listeners[j]->addr, a)) {
                nl[i] = w->listeners[j];
                w->listeners[j] = NULL;
            }
        }
        if (nl[i])
            continue;
        size_t slot = (size_t)w->id * c->nlisten + i;
        int fd = g->lfd[slot];
        g->lfd[slot] = -1;
        if (fd < 0) {
            /* the address is new to this worker but not to the generation
             * before g (this worker missed it): bind here */
            char err[256];
            fd = open_listener(a, false, err, sizeof err);
            if (fd < 0) {
                log_error("worker %u: %s", w->id, err);
                continue;
            }
        }
        nl[i] = listener_new(w, a, fd);
    }
    for (uint32_t j = 0; j < w->nlisteners; j++) {
        if (w->listeners[j]) {
            log_info("worker %u: no longer listening on %s", w->id, w->listeners[j]->addr.text);
            listener_retire(w, w->listeners[j]);
        }
    }
    free(w->listeners);
    w->listeners = nl;
    w->nlisteners = c->nlisten;

}

/* The worker's access and audit log buffers for g's writers (the old
 * writers live while the worker's old wgen does). */
static void adopt_logs(struct worker *w, const struct proxy_gen *g)
{
    struct obs_alog *al = g->alog ? g->alog->log : NULL;
    if (w->alog.log != al) {
        obs_alog_flush(&w->alog);           /* the old writer lives while our old wgen does */
        obs_alog_buf_free(&w->alog);
        obs_alog_buf_init(&w->alog, al);
    }
    struct obs_alog *au = g->audit ? g->audit->log : NULL;
    if (w->audit.log != au) {
        obs_alog_flush(&w->audit);
        obs_alog_buf_free(&w->audit);
        obs_alog_buf_init(&w->audit, au);
    }
}

/* Switch this worker to generation g: its listeners (kept where the address
 * stays, taken from g or opened here where it is new, closed where it is
 * gone), request limits, access log, metrics layout (counts carried over by
 * name) and a fresh wgen for new requests. Requests in flight finish on the
 * generation they started on; its idle pooled connections are closed.
 * False when out of memory: the worker keeps its generation. */
bool worker_adopt(struct worker *w, struct proxy_gen *g)
{
    struct conf *c = g->conf;
    struct wgen *wg = wgen_new(w, g);
    struct listener **nl = calloc(c->nlisten, sizeof *nl);
    struct obs_worker *obs = NULL;
    if (wg && nl && (!w->obs || w->obs->layout != c))
        obs = obs_worker_new(c);
    if (wg && nl && c->limits.max_headers > w->max_headers) {
        struct http_header *h = realloc(w->hdrs, c->limits.max_headers * sizeof *h);
        if (h)
            w->hdrs = h;
        uint8_t *k = h ? realloc(w->kinds, c->limits.max_headers) : NULL;
        if (k) {
            w->kinds = k;
            w->max_headers = c->limits.max_headers;
        }
    }
    if (!wg || !nl || (!obs && !w->obs) || c->limits.max_headers > w->max_headers) {
        log_error("worker %u: out of memory switching to configuration %llu; keeping %llu", w->id,
                  (unsigned long long)g->id, (unsigned long long)atomic_load(&w->gen_id));
        if (wg)
            wgen_free(wg);
        free(nl);
        obs_worker_free(obs);
        return false;
    }

    adopt_listeners(w, g, nl);

    w->lim = (struct http_limits){ c->limits.max_request_line, c->limits.max_header_bytes,
                                   c->limits.max_headers };
    adopt_logs(w, g);
    if (obs) {
        struct obs_worker *old = w->obs;
        if (old)
            obs_worker_carry(obs, old);
        pthread_mutex_lock(&w->p->mu);
        w->obs = obs;
        pthread_mutex_unlock(&w->p->mu);
        obs_worker_free(old);
    }
    wg->next = w->cur;
    w->cur = wg;
    w->conf = c;
    for (struct wgen *o = wg->next; o; o = o->next) {
        wgen_pool_map(o, wg);
        wgen_hand_over_pools(o);
    }
    worker_maps(w);
    atomic_store(&w->gen_id, g->id);
    return true;
}

static int reload_locked(struct proxy *p, char *err, size_t errlen)
{
    if (atomic_load(&p->stopping)) {
        snprintf(err, errlen, "shutting down");
        return -1;
    }
    struct proxy_gen *old = p->gen;     /* only reload_mu holders replace it */
    struct conf *c = conf_load(old->conf->path, err, errlen);
    if (!c)
        return -1;
    if (c->workers != p->nworkers) {
        log_warn("reload: workers %u -> %u takes a restart; still %u", p->nworkers, c->workers,
                 p->nworkers);
        c->workers = p->nworkers;
    }
    if (bufsize_for(c) > p->bufsize) {
        snprintf(err, errlen, "%s: limits.max_header_bytes: raising it to %u takes a restart "
                 "(buffers were sized for %u at start)", c->path, c->limits.max_header_bytes,
                 p->bufsize - 4096);
        conf_unref(c);
        return -1;
    }
    const struct conf *oc = old->conf;
    if (c->admin_enabled != oc->admin_enabled ||
        (c->admin_enabled && !conf_addr_equal(&c->admin_listen, &oc->admin_listen)))
        log_warn("reload: a new admin.listen takes a restart; the admin listener stays %s%s",
                 oc->admin_enabled ? "on " : "off", oc->admin_enabled ? oc->admin_listen.text : "");
    struct proxy_gen *g = gen_new(c, old, p->nworkers, old->id + 1, err, errlen);
    conf_unref(c);
    if (!g)
        return -1;

    pthread_mutex_lock(&p->mu);
    p->gen = g;
    pthread_mutex_unlock(&p->mu);
    /* the checker must let go of old's groups before old can be freed; it
     * keeps each server's counts and schedule for the new ones */
    balance_health_stop(true);
    int hrc = balance_health_start(g->groups, g->conf->nupstreams);
    if (hrc < 0)
        log_error("health checks not restarted: %s", strerror(-hrc));
    for (uint32_t i = 0; i < p->nworkers; i++)
        loop_wake(p->workers[i].loop);
    /* Wait until every worker has switched, so that when this returns every
     * new request is served by the new configuration. A worker switches at
     * its next loop iteration: microseconds, unless it is out of memory. */
    uint64_t deadline = loop_clock_ms() + 10000;
    for (uint32_t i = 0; i < p->nworkers; i++) {
        while (atomic_load(&p->workers[i].gen_id) != g->id && !atomic_load(&p->stopping)) {
            if (loop_clock_ms() > deadline) {
                log_warn("reload: worker %u has not switched to configuration %llu yet", i,
                         (unsigned long long)g->id);
                break;
            }
            struct timespec ts = { 0, 1000000 };
            nanosleep(&ts, NULL);
        }
    }
    gen_unref(old);
    log_info("configuration %llu loaded from %s: %u routes, %u upstreams, %u listeners",
             (unsigned long long)g->id, g->conf->path, g->conf->nroutes, g->conf->nupstreams,
             g->conf->nlisten);
    return 0;
}

int proxy_reload(struct proxy *p, char *err, size_t errlen)
{
    pthread_mutex_lock(&p->reload_mu);
    sd_notify_reloading();
    int rc = reload_locked(p, err, errlen);
    pthread_mutex_lock(&p->mu);
    p->stats.last_attempt = time(NULL);
    p->stats.last_ok = rc == 0;
    if (rc == 0) {
        p->stats.ok++;
        p->stats.generation = p->gen->id;
        p->stats.loaded_at = p->stats.last_attempt;
        p->stats.last_error[0] = '\0';
    } else {
        p->stats.failed++;
        snprintf(p->stats.last_error, sizeof p->stats.last_error, "%s", err);
    }
    pthread_mutex_unlock(&p->mu);
    if (rc < 0)
        log_error("reload refused: %s; configuration %llu keeps serving", err,
                  (unsigned long long)p->gen->id);
    char msg[128];
    snprintf(msg, sizeof msg, "READY=1\nSTATUS=serving configuration %llu%s",
             (unsigned long long)p->gen->id, rc < 0 ? " (last reload refused)" : "");
    sd_notify_send(msg);
    pthread_mutex_unlock(&p->reload_mu);
    return rc;
}

void proxy_reload_stats(struct proxy *p, struct proxy_reload_stats *out)
{
    pthread_mutex_lock(&p->mu);
    *out = p->stats;
    pthread_mutex_unlock(&p->mu);
}

struct proxy_gen *proxy_gen_get(struct proxy *p)
{
    pthread_mutex_lock(&p->mu);
    struct proxy_gen *g = gen_ref(p->gen);
    pthread_mutex_unlock(&p->mu);
    return g;
}

void proxy_gen_put(struct proxy_gen *g) { gen_unref(g); }

const struct conf *proxy_gen_conf(const struct proxy_gen *g) { return g->conf; }

struct balance_group *proxy_gen_group(const struct proxy_gen *g, uint32_t upstream)
{
    return upstream < g->conf->nupstreams ? g->groups[upstream] : NULL;
}

size_t proxy_obs_lock(struct proxy *p, struct obs_worker **out, size_t max)
{
    pthread_mutex_lock(&p->mu);
    size_t n = 0;
    for (uint32_t i = 0; i < p->nworkers && n < max; i++)
        if (p->workers[i].obs)
            out[n++] = p->workers[i].obs;
    return n;
}

void proxy_obs_unlock(struct proxy *p) { pthread_mutex_unlock(&p->mu); }

void proxy_reopen_logs(struct proxy *p)
{
    struct proxy_gen *g = proxy_gen_get(p);
    if (g->alog)
        obs_alog_reopen(g->alog->log);
    if (g->audit && g->audit != g->alog)
        obs_alog_reopen(g->audit->log);
    proxy_gen_put(g);
}

void proxy_gen_log_drops(const struct proxy_gen *g, uint64_t *access, uint64_t *audit)
{
    *access = g->alog ? obs_alog_dropped(g->alog->log) : 0;
    *audit = g->audit ? obs_alog_dropped(g->audit->log) : 0;
}
