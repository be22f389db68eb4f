/* pg/pool.c: connection states, pools, the wait queue, routing. */
#include "pg_int.h"

#include <stdlib.h>
#include <string.h>

void pg_client_state(struct client *c, enum cstate s)
{
    if (c->pool && c->counted)
        gauge_add(&c->pool->st.cl[c->state], -1);
    c->state = s;
    if (c->pool) {
        gauge_add(&c->pool->st.cl[s], 1);
        c->counted = true;
    }
}

void pg_server_state(struct server *s, enum sstate st)
{
    gauge_add(&s->pool->st.sv[s->state], -1);
    s->state = st;
    gauge_add(&s->pool->st.sv[st], 1);
}

void pg_pool_reroute_waiters(struct wpool *p)
{
    struct wpool *home = &p->w->pools[p->idx * p->w->pg->nsrv + p->w->pg->primary];
    while (p->wait_head) {
        struct client *c = p->wait_head;
        pg_wait_remove(c);
        if (pg_pool_acquire(c, home))
            pg_runq_push(c);
    }
}

void pg_pool_fail_waiters(struct wpool *p, const char *msg)
{
    if (p->is_auth)
        pg_authq_pool_failed(p, msg);
    while (p->wait_head) {
        struct client *c = p->wait_head;
        pgb_error(&c->out, "FATAL", "08006", "%s", msg);
        pg_client_flush(c);
        pg_client_close(c, "server unavailable");
    }
    for (struct client *c = p->w->clients, *n; c; c = n) {
        n = c->next;
        if (c->pool == p && c->state == CS_WELCOME) {
            pgb_error(&c->out, "FATAL", "08006", "%s", msg);
            pg_client_flush(c);
            pg_client_close(c, "server unavailable");
        }
    }
}

static void client_timer_arm(struct client *c, uint64_t ms)
{
    if (ms)
        loop_timer_arm(c->w->loop, &c->timer, ms);
    else
        loop_timer_stop(c->w->loop, &c->timer);
}

void pg_wait_remove(struct client *c)
{
    struct wpool *p = c->cur;
    if (c->wprev)
        c->wprev->wnext = c->wnext;
    else
        p->wait_head = c->wnext;
    if (c->wnext)
        c->wnext->wprev = c->wprev;
    else
        p->wait_tail = c->wprev;
    c->wnext = c->wprev = NULL;
    p->nwait--;
}

/* Put a client on a server: replay its parameters if the server's differ. */
static void attach(struct client *c, struct server *s)
{
    struct wpool *p = c->pool;
    uint64_t now = pg_now_us();
    if (c->state == CS_WAITING) {
        uint64_t us = now - c->wait_start_us;
        pg_hist_add(c->w->pg, &p->st.wait, us);
        loop_timer_stop(c->w->loop, &c->timer);
    }
    c->srv = s;
    s->client = c;
    c->xact_start_us = c->query_start_us = now;
    pg_server_state(s, SS_ACTIVE);
    pg_client_state(c, CS_ACTIVE);
    s->last_used = loop_now(c->w->loop);
    atomic_store_explicit(&c->cancel_server, s->sidx, memory_order_relaxed);
    atomic_store_explicit(&c->cancel_target, (uint64_t)s->be_pid << 32 | s->be_key,
                          memory_order_relaxed);
    if (c->params.hash != s->params.hash) {
        struct pgbuf q = { 0 };
        pg_pset_diff_sql(&q, &c->params, &s->params);
        if (pgb_len(&q)) {
            pgb_put(&q, "", 1);
            if (!q.oom) {
                size_t o = pgb_begin(&s->out, 'Q');
                pgb_put(&s->out, pgb_head(&q), pgb_len(&q));
                pgb_end(&s->out, o);
                pg_pend_push(s, 'Q', PEND_DROP);
            }
        }
        pgb_free(&q);
        pg_pset_copy(&s->params, &c->params);
    }
}

/* A server is free (logged in, reset, or done with a transaction). */
void pg_pool_release(struct server *s)
{
    struct wpool *p = s->pool;
    struct worker *w = s->w;
    const struct conf_pg *cf = w->c;
    uint64_t now = loop_now(w->loop);
    if (w->stopping || (cf->server_lifetime && now - s->created > cf->server_lifetime) ||
        p->nservers > p->size + p->reserve) {
        pg_server_state(s, SS_IDLE);
        pg_server_close(s, "lifetime");
        bool lookup = p->aent && p->aent->state == AQ_PENDING && !p->aent->sent;
        if ((p->wait_head || lookup) && p->nservers < p->size)
            pg_pool_open_server(p);
        return;
    }
    if (p->is_auth && pg_authq_send(s))
        return;                 /* the caller flushes s */
    if (p->wait_head) {
        struct client *c = p->wait_head;
        pg_wait_remove(c);
        pg_server_state(s, SS_IDLE);
        attach(c, s);
        pg_runq_push(c);
        return;
    }
    pg_server_state(s, SS_IDLE);
    s->next = p->idle;
    s->prev = NULL;
    if (p->idle)
        p->idle->prev = s;
    p->idle = s;
}

/* Whether p can log in to its server yet: a password, what a client of
 * the pool proved (pass-through), or no server asked for one so far. */
bool pg_pool_has_credentials(const struct wpool *p)
{
    const struct wpool *home = p->is_auth ? p : &p->w->pools[p->idx * p->w->pg->nsrv + p->w->pg->primary];
    return p->cp->password || home->have_keys || home->md5[0] || !home->no_creds;
}

/* A client needs a server: attach one now (true) or queue it (false). */
bool pg_pool_acquire(struct client *c, struct wpool *p)
{
    struct worker *w = c->w;
    c->cur = p;
    while (p->idle) {
        struct server *s = p->idle;
        pg_server_unidle(s);
        const struct conf_pg *cf = w->c;
        uint64_t now = loop_now(w->loop);
        if (cf->server_lifetime && now - s->created > cf->server_lifetime) {
            pg_server_close(s, "lifetime");
            continue;
        }
        if (cf->server_check_query && now - s->last_used >= cf->server_check_delay) {
            pg_server_check(s);     /* it goes to the first waiter once it answers */
            continue;
        }
        attach(c, s);
        return true;
    }
    pg_client_state(c, CS_WAITING);
    c->wait_start_us = pg_now_us();
    c->wprev = p->wait_tail;
    c->wnext = NULL;
    if (p->wait_tail)
        p->wait_tail->wnext = c;
    else
        p->wait_head = c;
    p->wait_tail = c;
    p->nwait++;
    client_timer_arm(c, w->c->query_wait_timeout);
    if (p->nservers < p->size)
        pg_pool_open_server(p);
    return false;
}

void pg_runq_push(struct client *c)
{
    if (c->queued || c->state == CS_CLOSED)
        return;
    c->queued = true;
    c->gnext = c->w->runq;
    c->w->runq = c;
}

struct wpool *pg_find_pool(struct worker *w, const char *db, const char *user)
{
    uint32_t ns = w->pg->nsrv;
    for (uint32_t i = 0; i < w->npools; i += ns)
        if (!strcmp(w->pools[i].cp->database, db) && !strcmp(w->pools[i].cp->user, user))
            return &w->pools[i + w->pg->primary];
    return NULL;
}

/* Where a client's next transaction runs: a healthy replica (by weight)
 * for a read-only pool or a transaction that starts read-only (transaction
 * mode), else the primary. */
struct wpool *pg_route(struct client *c, const struct pg_msg *m)
{
    struct worker *w = c->w;
    struct pg *pg = w->pg;
    struct wpool *home = c->pool;
    if (!pg->nreplicas)
        return home;
    bool ro = home->cp->read_only;
    if (!ro && home->cp->mode == CONF_PG_TRANSACTION) {
        struct pg_parse pp;
        if (m->type == 'Q')
            ro = pg_query_read_only((const char *)m->body, m->len ? m->len - 1 : 0);
        else if (m->type == 'P' && pg_parse_parse(m, &pp))
            ro = pg_query_read_only(pp.query, pp.query_len);
    }
    if (!ro)
        return home;
    const struct conf_pg *cf = w->c;
    uint32_t total = 0;
    for (uint32_t i = 0; i < cf->nservers; i++)
        if (cf->servers[i].role == CONF_PG_REPLICA && atomic_load_explicit(&pg->up[i], memory_order_relaxed))
            total += cf->servers[i].weight;
    if (!total)
        return home;            /* no healthy replica: the primary answers reads too */
    uint32_t r = w->rr++ % total;
    for (uint32_t i = 0; i < cf->nservers; i++) {
        if (cf->servers[i].role != CONF_PG_REPLICA || !atomic_load_explicit(&pg->up[i], memory_order_relaxed))
            continue;
        if (r < cf->servers[i].weight)
            return &w->pools[home->idx * pg->nsrv + i];
        r -= cf->servers[i].weight;
    }
    return home;
}
