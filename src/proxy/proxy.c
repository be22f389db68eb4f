/* proxy/proxy.c: workers, client connections, the request path, upstream
 * connections and keep-alive pools. See proxy.h and docs/architecture.md.
 *
 * The request path is a short chain of explicit stages, each a function:
 *
 *   client_read_head -> exchange_start (route, limits, build upstream head)
 *     -> upstream_attach (pool or connect) -> exchange_pump (stream both ways)
 *     -> response_head (parse, filter, build client head) -> exchange_finish
 *
 * exchange_pump is the only place bytes move while an exchange is active. It
 * runs from either side's events and loops until nothing more can be done:
 * it is level-triggered over edge-triggered epoll, kept honest by per-side
 * `readable` / `writable` flags cleared only on EAGAIN or a short read.
 *
 * Memory: an idle keep-alive client is a struct client and nothing else;
 * buffers come from the worker's pool when bytes arrive and go back as soon
 * as they are empty. Objects are freed only between loop iterations (the
 * graveyards), never inside a callback that may still see them.
 */
#include "proxy.h"

#include "balance/balance.h"
#include "conf/conf.h"
#include "core/buf.h"
#include "core/fmt.h"
#include "core/log.h"
#include "core/loop.h"
#include "core/sdnotify.h"
#include "http/http.h"
#include "obs/obs.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define container_of(p, T, m) ((T *)(void *)((char *)(p) - offsetof(T, m)))

struct worker;
struct exchange;
struct wgen;

enum client_state {
    C_IDLE,         /* keep-alive, waiting for the first byte of a request */
    C_HEAD,         /* reading a request head */
    C_EXCHANGE,     /* a request is being proxied */
    C_CLOSING,      /* writing a local response, then close */
    C_LINGER,       /* response written and write side shut: drain, then close */
};

struct client {
    struct loop_io io;
    struct loop_timer timer;
    struct worker *w;
    struct buf *in;             /* bytes from the client, not yet forwarded */
    struct buf *out;            /* heads and local responses to the client */
    struct exchange *x;
    struct client *next_dead;
    struct client *next_ready;      /* deferred to the next loop iteration */
    struct client *prev, *next;     /* the worker's list of open clients */
    uint32_t scanned;               /* head bytes http_head_scan() has seen */
    uint32_t seq;                   /* requests started or answered: drive progress */
    union {
        struct sockaddr sa;
        struct sockaddr_in v4;
        struct sockaddr_in6 v6;
    } peer;
    uint8_t state;
    bool readable, writable, hup, deferred;
};

struct upool {
    struct uconn *head;         /* idle connections, most recent first */
    uint32_t n;
    uint32_t max;               /* the upstream's keepalive */
    uint64_t idle_timeout;      /* the upstream's idle_timeout, ms */
};

struct uconn {
    struct loop_io io;
    struct loop_timer timer;
    struct worker *w;
    struct exchange *x;         /* NULL while idle in a pool */
    struct wgen *wg;            /* the generation whose pool it belongs to */
    struct upool *pool;         /* where it goes back when idle: in wg->pools */
    struct uconn *prev, *next;  /* pool list, or graveyard (next) */
    bool readable, writable, hup, connecting, reused, pooled;
    uint64_t pooled_iter;       /* the worker's loop iteration it went idle in */
};

struct exchange {
    struct client *c;
    struct uconn *u;
    struct wgen *wg;            /* the generation this request started on (counted in users) */
    struct conf *conf;          /* wg's snapshot (wg holds the reference) */
    const struct conf_route *route;
    struct balance_group *group;    /* the route's upstream group */
    int server;                     /* current attempt's server, valid while holding */
    bool holding;                   /* balance_choose() not yet matched by a release */
    bool stale_retried;             /* a dead keep-alive connection was replaced once */
    bool idempotent;                /* GET HEAD OPTIONS PUT DELETE TRACE: may be re-sent */
    uint32_t attempts;              /* attempts after the first */
    uint64_t tried[BALANCE_TRIED_WORDS];
    uint64_t t0_us, up_t0_us;       /* request start; current attempt's start */
    char method[8];                 /* for metrics: the method, truncated */
    uint8_t method_len;
    uint8_t reqid_len;
    uint16_t path_len;
    char reqid[64];                 /* X-Request-Id sent upstream (for the access log) */
    char path[256];                 /* request target, cut, for the access log */
    char client[48];                /* the client's address as text (X-Forwarded-For, log):
                                       the peer, or from a trusted proxy's X-Forwarded-For */
    uint8_t client_len;
    uint8_t client_family;          /* AF_INET / AF_INET6: client_addr's */
    uint8_t client_addr[16];        /* the client's address, for ip_hash */
    bool trusted_peer;              /* the connection comes from trusted_proxies */
    bool sent_continue;             /* we answered Expect: 100-continue ourselves */
    bool abnormal;                  /* the response body ended before its end */
    struct audit_info *audit;       /* the route has audit on: what the audit line needs */
    uint64_t bytes_in, bytes_out, upstream_us;
    uint16_t key_len;               /* hash key (ip or hash_key), kept for retries */
    char key[256];
    struct buf *uhead;          /* request head for the upstream; kept for a retry */
    uint32_t uhead_sent;
    struct buf *uin;            /* bytes from the upstream */

    /* request body, client -> upstream */
    uint8_t req_body;           /* enum http_body, or REQ_TUNNEL */
    bool req_done;              /* all of the body has been read and validated */
    bool body_started;          /* a body byte has gone upstream: no retry */
    bool req_sent;              /* head and body fully written upstream */
    bool expect_continue;
    uint32_t req_fwd;           /* validated bytes at the head of c->in, unsent */
    uint64_t req_remaining;
    uint64_t req_total;
    struct http_chunked req_ch;

    /* response, upstream -> client */
    uint8_t resp_body;          /* enum http_body */
    bool resp_head_done;
    bool resp_done;             /* the whole body has been read from upstream */
    bool dechunk;               /* strip chunked framing (HTTP/1.0 client) */
    bool client_keep, upstream_keep;
    bool is_head, upgrade, tunnel, client_eof;
    uint8_t req_minor;
    uint32_t resp_fwd;          /* bytes at the head of uin ready for the client */
    uint64_t resp_remaining;
    struct http_chunked resp_ch;
    int status;
};

#define REQ_TUNNEL 9

/* Request headers an audit line records, copied (cut) while the head is parsed. */
struct audit_info {
    char user[64], ua[256], xff[256], host[256];
    uint16_t user_len, ua_len, xff_len, host_len;
    bool has_user, has_ua, has_xff, has_host;
};

struct listener {
    struct loop_io io;
    struct worker *w;
    struct listener *next_dead;
    struct conf_addr addr;      /* the bound address, to match it across reloads */
};

/* A generation: one configuration snapshot and what is built from it for the
 * whole process (upstream groups, the access log, listening sockets for
 * addresses the previous generation did not have). proxy_reload() builds
 * one, publishes it as p->gen and wakes the workers; each worker adopts it
 * (worker_adopt) and keeps older ones only while requests started on them
 * are in flight. Reference-counted: p->gen holds one, each worker's wgen one. */
struct proxy_gen {
    atomic_int refs;
    uint64_t id;                /* 1, 2, ...: a reload's number */
    struct conf *conf;          /* a reference */
    struct balance_group **groups;  /* [conf->nupstreams], shared by the workers */
    struct alog_ref *alog;      /* a reference; NULL: access_log off */
    struct alog_ref *audit;     /* a reference; NULL: audit_log off */
    int *lfd;                   /* [nworkers][conf->nlisten]: sockets opened for this
                                   generation; -1 where a worker reuses its own or took it */
    uint32_t nworkers;
};

/* The access log writer, shared by generations that log to the same place. */
struct alog_ref {
    atomic_int refs;
    struct obs_alog *log;
    char *path;
};

/* A worker's part of a generation: keep-alive pools and balancing state. */
struct wgen {
    struct proxy_gen *g;        /* a reference */
    struct wgen *next;          /* older generations still in use */
    uint32_t users;             /* exchanges that started on it */
    struct upool *pools;        /* [pool_base[u] + server] */
    uint32_t *pool_base;
    uint32_t npools;
    struct balance_worker **bw; /* [upstream index] */
    uint32_t *route_map;        /* route / upstream index -> index in the worker's obs */
    uint32_t *up_map;           /* layout; NULL while that layout is this snapshot */
    uint32_t *pool_map;         /* older generation: pool index -> the same upstream name
                                   and server address in the newest one, or UINT32_MAX */
};

struct worker {
    struct proxy *p;
    uint32_t id;
    pthread_t thread;
    struct loop *loop;
    struct conf *conf;          /* cur->g->conf: what new requests use */
    struct wgen *cur;           /* the newest generation, then older ones in use */
    atomic_uint_fast64_t gen_id;    /* id of cur->g, for proxy_reload() to wait on */
    struct listener **listeners;    /* [nlisteners]; NULL where a bind failed */
    uint32_t nlisteners;
    struct buf_pool bufs;
    struct obs_worker *obs;     /* replaced (under p->mu) when a reload changes its layout */
    struct obs_alog_buf alog;
    struct obs_alog_buf audit;      /* flushed every loop iteration: audit lines are few */
    struct http_header *hdrs;
    uint8_t *kinds;
    uint32_t max_headers;       /* room in hdrs / kinds */
    struct http_limits lim;
    struct client *dead_clients;
    struct uconn *dead_uconns;
    struct listener *dead_listeners;
    struct client *clients;
    uint32_t nclients;
    bool draining;
    struct loop_timer drain_timer;
    struct loop_timer alog_timer;   /* hands buffered access log lines over after access_log.flush */
    uint64_t reqid_seed, reqid_n;
    uint64_t iter;                  /* loop iterations, counted in worker_reap */
    struct client *ready;           /* clients with work deferred to the next iteration */
    struct loop_timer accept_timer; /* retries accept() after EMFILE and the like */
    char *npath;                    /* scratch: the normalised request path */
};

struct proxy {
    pthread_mutex_t mu;             /* guards gen, and workers' obs pointers against scrapes */
    pthread_mutex_t reload_mu;      /* one reload at a time */
    struct proxy_gen *gen;          /* the current generation */
    uint32_t bufsize;               /* every worker's buffer size, fixed at start */
    uint64_t maxfd;                 /* RLIMIT_NOFILE after raising it */
    struct worker *workers;
    uint32_t nworkers;
    atomic_uint nconns;
    atomic_bool stopping;
    struct proxy_reload_stats stats;    /* under reload_mu; read under mu */
};

/* ---------------------------------------------------------------- utils */

static void set_nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static size_t make_request_id(struct worker *w, char *out)
{
    static const char hex[] = "0123456789abcdef";
    uint64_t s = w->reqid_seed ^ (w->reqid_n++ * 0x2545f4914f6cdd1dull);
    uint64_t a = splitmix(&s), b = splitmix(&s);
    for (int i = 0; i < 16; i++) {
        out[i] = hex[(a >> (i * 4)) & 15];
        out[16 + i] = hex[(b >> (i * 4)) & 15];
    }
    return 32;
}

/* The peer's address as family and bytes; an IPv4 client of a dual-stack
 * listener (::ffff:a.b.c.d) counts as IPv4. Returns the byte count. */
static size_t peer_addr(const struct client *c, uint8_t *family, uint8_t out[16])
{
    static const uint8_t mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
    if (c->peer.sa.sa_family == AF_INET6) {
        const uint8_t *a = (const uint8_t *)&c->peer.v6.sin6_addr;
        if (memcmp(a, mapped, 12) != 0) {
            *family = AF_INET6;
            memcpy(out, a, 16);
            return 16;
        }
        *family = AF_INET;
        memcpy(out, a + 12, 4);
        return 4;
    }
    *family = AF_INET;
    memcpy(out, &c->peer.v4.sin_addr, 4);
    return 4;
}

static size_t addr_text(int family, const uint8_t *a, char *out, size_t len)
{
    if (family == AF_INET && len >= 16) {
        /* the common case, without inet_ntop's printf machinery */
        size_t n = 0;
        for (int i = 0; i < 4; i++) {
            if (i)
                out[n++] = '.';
            n += fmt_u64(out + n, a[i]);
        }
        out[n] = '\0';
        return n;
    }
    if (!inet_ntop(family, a, out, (socklen_t)len))
        return 0;
    return strlen(out);
}

static size_t peer_text(const struct client *c, char *out, size_t len)
{
    uint8_t fam, a[16];
    peer_addr(c, &fam, a);
    return addr_text(fam, a, out, len);
}

/* ---------------------------------------------------------------- forward decls */

static void client_close(struct client *c);
static void client_linger(struct client *c);
static void client_drive(struct client *c);
static void client_local_response(struct client *c, int status, const char *why, bool keep);
static void client_reject(struct client *c, const struct http_request *r, int status,
                          const char *why, bool keep, size_t consume);
static void exchange_pump(struct exchange *x);
static void exchange_fail(struct exchange *x, int status, const char *why);
static void uconn_close(struct uconn *u);
static void close_pools(struct worker *w);
static void wgen_close_pools(struct wgen *wg);
static bool upstream_attach(struct exchange *x, bool fresh, int fail_status);
static void attempt_failed(struct exchange *x, const char *why, int status, bool retry);

/* ---------------------------------------------------------------- buffers */

static bool ensure_buf(struct worker *w, struct buf **b)
{
    if (!*b)
        *b = buf_get(&w->bufs);
    return *b != NULL;
}

static void release_if_empty(struct worker *w, struct buf **b)
{
    if (*b && buf_len(*b) == 0) {
        buf_put(&w->bufs, *b);
        *b = NULL;
    }
}

/* Read from fd into b. Returns bytes read, 0 on EOF, -1 on EAGAIN (flag
 * cleared), -2 on error. A short read without HUP means drained. */
static ssize_t read_into(int fd, struct buf *b, bool *readable, bool hup)
{
    if (buf_room(b) == 0)
        buf_compact(b);
    size_t room = buf_room(b);
    if (room == 0)
        return -1;
    ssize_t n = read(fd, buf_tail(b), room);
    if (n > 0) {
        b->end += (uint32_t)n;
        if ((size_t)n < room && !hup)
            *readable = false;
        return n;
    }
    if (n == 0)
        return 0;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
        *readable = false;
        return -1;
    }
    if (errno == EINTR)
        return -1;
    return -2;
}

#define READ_NOMEM (-3)

/* Read from the client into c->in (taken from the pool if needed), counting
 * the bytes. read_into()'s results, or READ_NOMEM without a buffer. */
static ssize_t client_read(struct client *c)
{
    if (!ensure_buf(c->w, &c->in))
        return READ_NOMEM;
    ssize_t n = read_into(c->io.fd, c->in, &c->readable, c->hup);
    if (n > 0)
        obs_add(&c->w->obs->bytes_in, (uint64_t)n);
    return n;
}

/* ---------------------------------------------------------------- upstream conns */

static void uconn_free_later(struct uconn *u)
{
    u->next = u->w->dead_uconns;
    u->w->dead_uconns = u;
}

static void pool_remove(struct uconn *u)
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

static void uconn_close(struct uconn *u)
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
static bool uconn_drained(struct uconn *u, bool known_empty)
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
static bool uconn_move_to_current(struct uconn *u)
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
static uint32_t obs_upstream_index(const struct exchange *x, uint32_t ui)
{
    return x->wg->up_map ? x->wg->up_map[ui] : ui;
}

static void uconn_release(struct uconn *u, bool keep)
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
static void attempt_end(struct exchange *x, bool report, bool ok)
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
static bool upstream_attach(struct exchange *x, bool fresh, int fail_status)
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
        log_warn("upstream %s %s: connect: %s", up->name, up->servers[x->server].addr.text,
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
static void attempt_failed(struct exchange *x, const char *why, int status, bool retry)
{
    const struct conf_upstream *up = x->route->upstream;
    log_warn("upstream %s %s: %s", up->name, up->servers[x->server].addr.text, why);
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

/* ---------------------------------------------------------------- client lifecycle */

static void client_free_later(struct client *c)
{
    c->next_dead = c->w->dead_clients;
    c->w->dead_clients = c;
}

static void copy_cut(char *dst, size_t cap, uint16_t *len, const char *src, size_t n)
{
    if (n > cap)
        n = cap;
    memcpy(dst, src, n);
    *len = (uint16_t)n;
}

/* Copy what an audit line records from the request head (valid only while
 * it is being handled). */
static void audit_capture(struct audit_info *a, const struct http_request *r)
{
    const struct http_msg *m = &r->m;
    if (r->host) {
        copy_cut(a->host, sizeof a->host, &a->host_len, r->host, r->host_len);
        a->has_host = true;
    }
    for (uint32_t i = 0; i < m->nheaders; i++) {
        const struct http_header *h = &m->headers[i];
        if (m->kinds[i] == HTTP_H_X_FORWARDED_FOR && !a->has_xff) {
            copy_cut(a->xff, sizeof a->xff, &a->xff_len, h->value, h->value_len);
            a->has_xff = true;
        } else if (h->name_len == 10 && http_ieq(h->name, "user-agent", 10) && !a->has_ua) {
            copy_cut(a->ua, sizeof a->ua, &a->ua_len, h->value, h->value_len);
            a->has_ua = true;
        } else if (h->name_len == 13 && http_ieq(h->name, "authorization", 13) && !a->has_user) {
            size_t n = obs_basic_user(h->value, h->value_len, a->user, sizeof a->user);
            a->user_len = (uint16_t)(n < sizeof a->user ? n : sizeof a->user);
            a->has_user = n > 0;
        }
    }
}

static void audit_write(struct obs_alog_buf *b, const struct audit_info *a, const char *reqid,
                        size_t reqid_len, const char *client, const char *method,
                        size_t method_len, const char *path, size_t path_len,
                        const struct conf_route *rt, const char *server, int status,
                        uint64_t bytes_in, uint64_t bytes_out, uint64_t duration_us)
{
    struct obs_audit_entry e = {
        .request_id = reqid, .request_id_len = reqid_len, .client = client,
        .forwarded_for = a->has_xff ? a->xff : NULL, .forwarded_for_len = a->xff_len,
        .user = a->has_user ? a->user : NULL, .user_len = a->user_len,
        .user_agent = a->has_ua ? a->ua : NULL, .user_agent_len = a->ua_len,
        .host = a->has_host ? a->host : NULL, .host_len = a->host_len,
        .method = method, .method_len = method_len, .path = path, .path_len = path_len,
        .route = rt->prefix, .upstream = rt->upstream->name, .server = server,
        .status = status, .bytes_in = bytes_in, .bytes_out = bytes_out,
        .duration_us = duration_us,
    };
    obs_audit_write(b, &e);
}

/* Buffer one access log line. A full buffer goes to the writer at once;
 * a partial one when the timer armed by its first line fires, so that under
 * load the hand-off (a lock, a wake-up and a write(2) in the writer) is paid
 * once per 64 KiB, not once per loop iteration. */
static void alog_write(struct worker *w, const struct obs_alog_entry *e)
{
    obs_alog_write(&w->alog, e);
    if (w->alog.len && !loop_timer_armed(&w->alog_timer))
        loop_timer_arm(w->loop, &w->alog_timer, w->conf->access_log_flush);
}

static void alog_timeout(struct loop *l, struct loop_timer *t)
{
    (void)l;
    struct worker *w = container_of(t, struct worker, alog_timer);
    obs_alog_flush(&w->alog);
}

static void exchange_free(struct exchange *x, bool upstream_keep)
{
    struct worker *w = x->c->w;
    attempt_end(x, false, false);
    /* a request that ends without a status: the client went away (nginx's 499) */
    uint64_t dur = now_us() - x->t0_us;
    int status = x->status ? x->status : 499;
    const char *server = x->upstream_us ? x->route->upstream->servers[x->server].addr.text : NULL;
    uint32_t ri = (uint32_t)(x->route - x->conf->routes);
    obs_request(w->obs, x->wg->route_map ? x->wg->route_map[ri] : ri, x->method, x->method_len,
                status, dur);
    if (w->alog.log) {
        struct obs_alog_entry e = {
            .request_id = x->reqid, .request_id_len = x->reqid_len, .client = x->client,
            .method = x->method, .method_len = x->method_len, .path = x->path,
            .path_len = x->path_len, .route = x->route->prefix,
            .upstream = x->route->upstream->name,
            .server = server, .status = status, .bytes_in = x->bytes_in,
            .bytes_out = x->bytes_out, .duration_us = dur, .upstream_us = x->upstream_us,
        };
        alog_write(w, &e);
    }
    if (x->audit) {
        /* to the audit log of the configuration the request started on, even
         * if a reload has since moved or removed it */
        struct obs_alog_buf *ab = &w->audit, tmp;
        struct alog_ref *own = x->wg->g->audit;
        if (own && own->log != w->audit.log) {
            obs_alog_buf_init(&tmp, own->log);
            ab = &tmp;
        }
        audit_write(ab, x->audit, x->reqid, x->reqid_len, x->client, x->method, x->method_len,
                    x->path, x->path_len, x->route, server, status, x->bytes_in, x->bytes_out,
                    dur);
        if (ab == &tmp) {
            obs_alog_flush(&tmp);
            obs_alog_buf_free(&tmp);
        }
        free(x->audit);
    }
    if (x->u) {
        struct uconn *u = x->u;
        x->u = NULL;
        uconn_release(u, upstream_keep);
    }
    buf_put(&w->bufs, x->uhead);
    buf_put(&w->bufs, x->uin);
    x->wg->users--;             /* an older wgen with no users goes in worker_reap() */
    x->c->x = NULL;
    free(x);
}

static void client_close(struct client *c)
{
    if (c->io.fd < 0)
        return;
    struct worker *w = c->w;
    if (c->x)
        exchange_free(c->x, false);
    loop_timer_stop(w->loop, &c->timer);
    close(c->io.fd);
    c->io.fd = -1;
    buf_put(&w->bufs, c->in);
    buf_put(&w->bufs, c->out);
    c->in = c->out = NULL;
    if (c->prev)
        c->prev->next = c->next;
    else
        w->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    w->nclients--;
    obs_add(&w->obs->conns_closed, 1);
    atomic_fetch_sub_explicit(&w->p->nconns, 1, memory_order_relaxed);
    client_free_later(c);
}

/* Write c->out then, during an exchange, the ready part of x->uin.
 * Returns false if the connection was closed. */
static bool client_flush(struct client *c)
{
    struct exchange *x = c->x;
    while (c->writable) {
        struct iovec iov[2];
        int n = 0;
        size_t outlen = c->out ? buf_len(c->out) : 0;
        if (outlen)
            iov[n++] = (struct iovec){ buf_head(c->out), outlen };
        if (x && x->resp_fwd)
            iov[n++] = (struct iovec){ buf_head(x->uin), x->resp_fwd };
        if (n == 0)
            break;
        size_t want = outlen + (x ? x->resp_fwd : 0);
        ssize_t w = writev(c->io.fd, iov, n);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                c->writable = false;
                break;
            }
            if (errno == EINTR)
                continue;
            client_close(c);
            return false;
        }
        size_t done = (size_t)w;
        obs_add(&c->w->obs->bytes_out, done);
        if (x)
            x->bytes_out += done;
        if ((size_t)w < want)
            c->writable = false;
        size_t a = done < outlen ? done : outlen;
        if (a)
            buf_consume(c->out, a);
        done -= a;
        if (done) {
            buf_consume(x->uin, done);
            x->resp_fwd -= (uint32_t)done;
        }
        if (w > 0 && !c->writable)
            loop_timer_arm(c->w->loop, &c->timer, (x ? x->conf : c->w->conf)->limits.send_timeout);
    }
    release_if_empty(c->w, &c->out);
    /* During an exchange the client's timer runs only while we wait on the
     * client: its body (body_timeout), a blocked write (send_timeout), or a
     * tunnel (idle_timeout). Waiting on the upstream is the upstream's timer. */
    if (x && c->state == C_EXCHANGE && x->req_done && !x->tunnel &&
        !c->out && !x->resp_fwd)
        loop_timer_stop(c->w->loop, &c->timer);
    return true;
}

static void client_timeout(struct loop *l, struct loop_timer *t)
{
    (void)l;
    struct client *c = container_of(t, struct client, timer);
    switch (c->state) {
    case C_HEAD:
        client_reject(c, NULL, 408, "request head timeout", false, 0);
        break;
    case C_EXCHANGE:
        if (c->x && !c->x->tunnel && c->x->req_fwd && !(c->out && buf_len(c->out))) {
            /* we hold body bytes the upstream has not taken: it is the slow
             * side, and its response_timeout decides */
            loop_timer_arm(c->w->loop, &c->timer, c->x->conf->limits.body_timeout);
            return;
        }
        if (c->x && !c->x->req_done && !c->x->resp_head_done && !c->x->tunnel)
            exchange_fail(c->x, 408, "request body timeout");
        else
            client_close(c);    /* idle tunnel, or a client that stopped reading */
        break;
    default:
        client_close(c);
    }
    client_drive(c);
}

/* Queue a small local response. keep: the connection may stay open. */
/* Queue a small local response; the exchange, if any, ends. keep: the
 * connection stays open, and client_drive() reads the next request once
 * this response is written. Nothing is written here: the caller returns to
 * client_drive(), which writes (no recursion into the next request). */
static void client_local_response(struct client *c, int status, const char *why, bool keep)
{
    struct worker *w = c->w;
    if (c->x) {
        c->x->status = status;
        exchange_free(c->x, false);
    }
    if (!ensure_buf(w, &c->out)) {
        client_close(c);
        return;
    }
    if (status >= 400)
        log_info("client request rejected: %d %s", status, why ? why : "");
    keep = keep && !w->draining;
    struct buf *b = c->out;
    if (!buf_len(b))
        b->start = b->end = 0;
    struct http_hw hw;
    http_hw_init(&hw, buf_tail(b), buf_room(b));
    http_hw_status(&hw, status, NULL, 0);
    if (status == 200) {
        /* OPTIONS * with no route to forward it to (RFC 9110 9.3.7) */
        http_hw_lit(&hw, "Allow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS\r\n"
                         "Content-Length: 0\r\n");
    } else {
        const char *reason = http_reason(status);
        http_hw_lit(&hw, "Content-Type: text/plain\r\nContent-Length: ");
        http_hw_u64(&hw, (uint64_t)(status >= 100 && status <= 999 ? 5 : 0) + strlen(reason));
        http_hw_lit(&hw, "\r\n");
    }
    if (status == 503)
        http_hw_lit(&hw, "Retry-After: 1\r\n");
    if (!keep)
        http_hw_lit(&hw, "Connection: close\r\n");
    http_hw_lit(&hw, "\r\n");
    if (status != 200) {
        char code[4] = { (char)('0' + status / 100 % 10), (char)('0' + status / 10 % 10),
                         (char)('0' + status % 10), ' ' };
        http_hw_put(&hw, code, 4);
        const char *reason = http_reason(status);
        http_hw_put(&hw, reason, strlen(reason));
        http_hw_lit(&hw, "\n");
    }
    if (hw.overflow) {          /* no room behind what is still unsent */
        client_close(c);
        return;
    }
    b->end += (uint32_t)http_hw_len(&hw);
    c->state = keep ? C_IDLE : C_CLOSING;
    c->scanned = 0;
    c->seq++;
    if (!keep) {
        buf_put(&w->bufs, c->in);
        c->in = NULL;
    }
    loop_timer_arm(w->loop, &c->timer, w->conf->limits.send_timeout);
}

/* Answer a request that never became an exchange (malformed, no route, too
 * large, too slow): count it, log it, answer it. `r` is NULL when the head
 * could not be parsed. `consume` head bytes are dropped from c->in after
 * logging (r points into them), so that a kept connection moves on. */
static void client_reject(struct client *c, const struct http_request *r, int status,
                          const char *why, bool keep, size_t consume)
{
    struct worker *w = c->w;
    const char *method = r ? r->method : "";
    size_t mlen = r ? r->method_len : 0;
    obs_request(w->obs, UINT32_MAX, method, mlen, status, 0);
    if (status != 404 && status >= 400)
        obs_add(&w->obs->rejected, 1);
    if (w->alog.log) {
        char client[64];
        peer_text(c, client, sizeof client);
        struct obs_alog_entry e = {
            .request_id = "", .client = client, .method = method, .method_len = mlen,
            .path = r ? r->target : "", .path_len = r ? r->target_len : 0, .route = "",
            .status = status,
        };
        alog_write(w, &e);
    }
    if (consume)
        buf_consume(c->in, consume);
    client_local_response(c, status, why, keep);
}

/* Lingering close (as nginx does): after the last response, shut the write
 * side and read whatever the client still sends for a moment, so that
 * closing with unread bytes does not reset the connection and destroy the
 * response before the client has read it. */
static void client_linger(struct client *c)
{
    struct worker *w = c->w;
    if (c->state != C_LINGER) {
        if (c->x)
            exchange_free(c->x, false);
        c->state = C_LINGER;
        buf_put(&w->bufs, c->in);
        buf_put(&w->bufs, c->out);
        c->in = c->out = NULL;
        shutdown(c->io.fd, SHUT_WR);
        loop_timer_arm(w->loop, &c->timer, 2000);
    }
    char sink[4096];
    for (int i = 0; i < 64; i++) {
        ssize_t n = read(c->io.fd, sink, sizeof sink);
        if (n > 0)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        break;
    }
    client_close(c);
}

/* End the connection so that the client cannot take a cut response for a
 * whole one: a reset, not a FIN (which ends a close-delimited body). */
static void client_abort(struct client *c)
{
    if (c->io.fd < 0)
        return;
    struct linger lg = { 1, 0 };
    setsockopt(c->io.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    client_close(c);
}

/* ---------------------------------------------------------------- request head */

/* The first route whose host and path prefix match; `path` is the
 * normalised path (path_normalization), "/" for OPTIONS *. */
static const struct conf_route *route_match(const struct conf *conf, const struct http_request *r,
                                            const char *path, size_t plen)
{
    const char *host = r->host;
    size_t hlen = r->host_len;
    if (host) {                 /* drop the port */
        size_t i = hlen;
        if (host[0] == '[') {
            const char *rb = memchr(host, ']', hlen);
            i = rb ? (size_t)(rb - host + 1) : hlen;
        } else {
            const char *colon = memchr(host, ':', hlen);
            if (colon)
                i = (size_t)(colon - host);
        }
        hlen = i;
        if (hlen && host[hlen - 1] == '.')
            hlen--;
    }
    for (uint32_t i = 0; i < conf->nroutes; i++) {
        const struct conf_route *rt = &conf->routes[i];
        if (rt->host) {
            if (!host)
                continue;
            if (rt->host[0] == '*') {   /* "*.example.com" matches sub.example.com */
                size_t sl = rt->host_len - 1;
                if (hlen <= sl || !http_ieq(host + hlen - sl, rt->host + 1, sl))
                    continue;
            } else if (hlen != rt->host_len || !http_ieq(host, rt->host, hlen)) {
                continue;
            }
        }
        if (plen < rt->prefix_len || memcmp(path, rt->prefix, rt->prefix_len) != 0)
            continue;
        return rt;
    }
    return NULL;
}

/* A field named in Connection (RFC 9110 7.6.1) is for this hop only. */
static bool nominated(const struct http_msg *m, uint32_t i)
{
    return m->conn_other && m->kinds[i] != HTTP_H_CONNECTION &&
           http_connection_lists(m, m->headers[i].name, m->headers[i].name_len);
}

static bool is_hop_by_hop(const struct http_msg *m, uint32_t i)
{
    switch (m->kinds[i]) {
    case HTTP_H_CONNECTION:
    case HTTP_H_KEEP_ALIVE:
    case HTTP_H_PROXY_CONNECTION:
    case HTTP_H_TE:
    case HTTP_H_TRANSFER_ENCODING:
    case HTTP_H_CONTENT_LENGTH:
    case HTTP_H_UPGRADE:
    case HTTP_H_HTTP2_SETTINGS:
        return true;
    default:
        return nominated(m, i);
    }
}

static bool is_idempotent(const char *m, size_t n)
{
    static const char *const list[] = { "GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE" };
    for (size_t i = 0; i < sizeof list / sizeof list[0]; i++)
        if (strlen(list[i]) == n && memcmp(m, list[i], n) == 0)
            return true;
    return false;
}

/* Copy what the upstream's balancing hashes on into x->key: the client
 * address for ip_hash, the configured header, cookie or path for hash. */
static void balance_key(struct exchange *x, const struct http_request *r)
{
    const struct conf_upstream *up = x->route->upstream;
    const struct client *c = x->c;
    const char *k = NULL;
    size_t n = 0;
    if (up->balance == CONF_BALANCE_IP_HASH) {
        (void)c;
        k = (const char *)x->client_addr;
        n = x->client_family == AF_INET6 ? 16 : 4;
    } else if (up->balance == CONF_BALANCE_HASH) {
        const struct conf_hash_key *hk = &up->hash_key;
        const struct http_msg *m = &r->m;
        if (hk->from == CONF_HASH_PATH && r->path) {
            const char *q = memchr(r->path, '?', r->path_len);
            k = r->path;
            n = q ? (size_t)(q - r->path) : r->path_len;
        }
        for (uint32_t i = 0; !k && i < m->nheaders; i++) {
            const struct http_header *h = &m->headers[i];
            if (hk->from == CONF_HASH_HEADER && h->name_len == hk->name_len &&
                http_ieq(h->name, hk->name, h->name_len)) {
                k = h->value;
                n = h->value_len;
            } else if (hk->from == CONF_HASH_COOKIE && h->name_len == 6 &&
                       http_ieq(h->name, "cookie", 6)) {
                k = balance_cookie_value(h->value, h->value_len, hk->name, hk->name_len, &n);
            }
        }
    }
    if (n > sizeof x->key)
        n = sizeof x->key;
    if (k)
        memcpy(x->key, k, n);
    x->key_len = k ? (uint16_t)n : 0;
}

/* Build the upstream request head into b. False if it does not fit. */
/* The request target for the upstream: origin-form, normalised or not. */
static void put_target(struct http_hw *hw, const struct exchange *x, const struct http_request *r,
                       const char *npath, size_t nplen)
{
    if (r->path && r->path[0] == '/') {
        if (npath && x->conf->pathnorm.forward_normalized)
            http_hw_put(hw, npath, nplen);
        else
            http_hw_put(hw, r->path, r->path_len);
    } else if (r->path) {
        http_hw_lit(hw, "*");
    } else {
        /* absolute-form without a path: "/" plus any query */
        http_hw_lit(hw, "/");
        const char *q = memchr(r->target, '?', r->target_len);
        if (q)
            http_hw_put(hw, q, (size_t)(r->target + r->target_len - q));
    }
}

/* X-Forwarded-For: the incoming chain only from a trusted proxy, then the
 * peer; X-Forwarded-Proto: a trusted proxy's, else ours. */
static void put_forwarded(struct http_hw *hw, const struct exchange *x, const struct http_msg *m)
{
    http_hw_lit(hw, "X-Forwarded-For: ");
    for (uint32_t j = 0; x->trusted_peer && j < m->nheaders; j++) {
        if (m->kinds[j] != HTTP_H_X_FORWARDED_FOR || nominated(m, j))
            continue;
        struct http_list it = { m->headers[j].value, m->headers[j].value + m->headers[j].value_len };
        const char *e;
        size_t n;
        while (http_list_next(&it, &e, &n)) {
            http_hw_put(hw, e, n);
            http_hw_lit(hw, ", ");
        }
    }
    char peer[64];
    size_t pl = peer_text(x->c, peer, sizeof peer);
    http_hw_put(hw, peer, pl);
    http_hw_lit(hw, "\r\n");
    const char *proto = "http";
    size_t plen = 4;
    for (uint32_t j = 0; x->trusted_peer && j < m->nheaders; j++) {
        if (m->kinds[j] != HTTP_H_X_FORWARDED_PROTO || nominated(m, j))
            continue;
        const struct http_header *h = &m->headers[j];
        if (h->value_len == 5 && http_ieq(h->value, "https", 5))
            proto = "https", plen = 5;
        else if (h->value_len == 4 && http_ieq(h->value, "http", 4))
            proto = "http", plen = 4;
    }
    http_hw_field(hw, "X-Forwarded-Proto", 17, proto, plen);
}

/* Build the upstream request head into b through the bounded writer.
 * False if it does not fit (the client gets 431). */
static bool build_request_head(struct exchange *x, const struct http_request *r, struct buf *b,
                               const char *npath, size_t nplen)
{
    struct client *c = x->c;
    const struct http_msg *m = &r->m;
    struct http_hw hw;
    http_hw_init(&hw, buf_tail(b), buf_room(b));
    http_hw_put(&hw, r->method, r->method_len);
    http_hw_lit(&hw, " ");
    put_target(&hw, x, r, npath, nplen);
    http_hw_lit(&hw, " HTTP/1.1\r\n");

    bool have_host = false, have_reqid = false;
    bool drop_underscores = x->conf->underscores == CONF_UNDERSCORES_DROP;
    for (uint32_t i = 0; i < m->nheaders; i++) {
        const struct http_header *h = &m->headers[i];
        switch (m->kinds[i]) {
        case HTTP_H_HOST:
            if (r->host != h->value && r->host)      /* absolute-form wins */
                continue;
            have_host = true;
            break;
        case HTTP_H_EXPECT:
        case HTTP_H_X_FORWARDED_FOR:                 /* ours are added below */
        case HTTP_H_X_FORWARDED_PROTO:
        case HTTP_H_X_FORWARDED_HOST:
            continue;
        case HTTP_H_UNDERSCORE:
            if (drop_underscores)
                continue;
            break;
        case HTTP_H_X_REQUEST_ID:
            if (have_reqid || !h->value_len || nominated(m, i))
                continue;
            have_reqid = true;
            x->reqid_len = (uint8_t)(h->value_len < sizeof x->reqid ? h->value_len : sizeof x->reqid);
            memcpy(x->reqid, h->value, x->reqid_len);
            break;
        default:
            if (is_hop_by_hop(m, i))
                continue;
        }
        http_hw_field(&hw, h->name, h->name_len, h->value, h->value_len);
    }
    if (!have_host) {
        if (r->host)
            http_hw_field(&hw, "Host", 4, r->host, r->host_len);
        else    /* as nginx: the upstream's name */
            http_hw_field(&hw, "Host", 4, x->route->upstream->name,
                          strlen(x->route->upstream->name));
    }
    put_forwarded(&hw, x, m);
    if (r->host)
        http_hw_field(&hw, "X-Forwarded-Host", 16, r->host, r->host_len);
    if (!have_reqid) {
        x->reqid_len = (uint8_t)make_request_id(c->w, x->reqid);
        http_hw_field(&hw, "X-Request-Id", 12, x->reqid, x->reqid_len);
    }
    http_hw_lit(&hw, "Via: 1.1 portico\r\n");
    if (m->body == HTTP_BODY_CHUNKED) {
        http_hw_lit(&hw, "Transfer-Encoding: chunked\r\n");
    } else if (m->has_cl) {
        http_hw_lit(&hw, "Content-Length: ");
        http_hw_u64(&hw, m->content_length);
        http_hw_lit(&hw, "\r\n");
    }
    if (x->upgrade) {
        for (uint32_t i = 0; i < m->nheaders; i++)
            if (m->kinds[i] == HTTP_H_UPGRADE)
                http_hw_field(&hw, "Upgrade", 7, m->headers[i].value, m->headers[i].value_len);
        http_hw_lit(&hw, "Connection: upgrade\r\n");
    }
    http_hw_lit(&hw, "\r\n");
    if (hw.overflow)
        return false;
    b->end += (uint32_t)http_hw_len(&hw);
    return true;
}

/* The client's address: the peer, or, when the peer is a trusted proxy,
 * the right-most address of X-Forwarded-For that is not a trusted proxy
 * itself (the left-most if all are). */
static void client_identity(struct exchange *x, const struct http_request *r)
{
    const struct conf *conf = x->conf;
    const struct http_msg *m = &r->m;
    uint8_t fam, a[16];
    peer_addr(x->c, &fam, a);
    x->trusted_peer = conf->ntrusted && conf_cidr_match(conf->trusted, conf->ntrusted, fam, a);
    x->client_family = fam;
    memcpy(x->client_addr, a, 16);
    if (x->trusted_peer) {
        /* the elements, right to left: headers last to first */
        bool found = false;
        uint8_t leftmost_fam = 0, leftmost[16] = { 0 };
        for (uint32_t j = m->nheaders; j-- > 0 && !found;) {
            if (m->kinds[j] != HTTP_H_X_FORWARDED_FOR || nominated(m, j))
                continue;
            const char *v = m->headers[j].value, *end = v + m->headers[j].value_len;
            while (end > v && !found) {
                const char *e = end;
                while (e > v && e[-1] != ',')
                    e--;
                const char *s0 = e, *s1 = end;
                while (s0 < s1 && (*s0 == ' ' || *s0 == '\t'))
                    s0++;
                while (s1 > s0 && (s1[-1] == ' ' || s1[-1] == '\t'))
                    s1--;
                char ip[64];
                uint8_t b[16];
                size_t n = (size_t)(s1 - s0);
                if (n && n < sizeof ip) {
                    memcpy(ip, s0, n);
                    ip[n] = '\0';
                    int f = inet_pton(AF_INET, ip, b) == 1 ? AF_INET
                          : inet_pton(AF_INET6, ip, b) == 1 ? AF_INET6 : 0;
                    if (!f) {
                        /* not an address: believe the chain no further than
                         * the trusted hop that passed it on */
                        found = true;
                        if (leftmost_fam) {
                            x->client_family = leftmost_fam;
                            memcpy(x->client_addr, leftmost, 16);
                        }
                    } else if (!conf_cidr_match(conf->trusted, conf->ntrusted, f, b)) {
                        x->client_family = (uint8_t)f;
                        memcpy(x->client_addr, b, 16);
                        found = true;
                    } else {
                        leftmost_fam = (uint8_t)f;
                        memcpy(leftmost, b, 16);
                    }
                }
                end = e > v ? e - 1 : v;
            }
        }
        if (!found && leftmost_fam) {
            x->client_family = leftmost_fam;
            memcpy(x->client_addr, leftmost, 16);
        }
    }
    x->client_len = (uint8_t)addr_text(x->client_family, x->client_addr, x->client,
                                       sizeof x->client);
}

/* A complete request head is at the front of c->in: start proxying it. */
/* A complete request head is at the front of c->in: route it and start
 * proxying it, or answer it. */
static void exchange_start(struct client *c, const struct http_request *r, size_t head_len)
{
    struct worker *w = c->w;
    struct conf *conf = w->conf;
    const struct http_msg *m = &r->m;
    bool has_body = m->body == HTTP_BODY_CHUNKED || (m->body == HTTP_BODY_LENGTH && m->content_length);
    c->scanned = 0;
    c->seq++;

    if (m->has_underscore && conf->underscores == CONF_UNDERSCORES_REJECT) {
        client_reject(c, r, 400, "header name with an underscore", false, 0);
        return;
    }
    /* match on the normalised path, so that /./auth/ and /%61uth/ meet the
     * rules for /auth/ */
    const char *path = "/", *npath = NULL;
    size_t plen = 1, nplen = 0;
    if (r->path && r->path[0] == '/') {
        const struct conf_pathnorm *pn = &conf->pathnorm;
        long n = http_normalize_path(r->path, r->path_len, w->npath,
                                     (pn->merge_slashes ? HTTP_PATH_MERGE_SLASHES : 0) |
                                     (pn->allow_encoded_slash ? HTTP_PATH_ALLOW_ENCODED_SLASH : 0));
        if (n < 0) {
            client_reject(c, r, 400, "invalid path encoding", false, 0);
            return;
        }
        path = npath = w->npath;
        plen = nplen = (size_t)n;
    }
    const struct conf_route *rt = route_match(conf, r, path, plen);
    if (!rt) {
        bool star = r->path && r->path[0] == '*';
        client_reject(c, r, star ? 200 : 404, "no route", m->keep_alive && !has_body, head_len);
        return;
    }
    if (m->body == HTTP_BODY_LENGTH && m->content_length > conf->limits.max_body) {
        if (rt->audit && w->audit.log) {
            struct audit_info a = { .has_user = false };
            audit_capture(&a, r);
            char client[64];
            peer_text(c, client, sizeof client);
            audit_write(&w->audit, &a, "", 0, client, r->method, r->method_len, r->target,
                        r->target_len < 256 ? r->target_len : 256, rt, NULL, 413,
                        head_len, 0, 0);
        }
        client_reject(c, r, 413, "Content-Length over max_body", false, 0);
        return;
    }

    struct exchange *x = calloc(1, sizeof *x);
    if (!x) {
        client_local_response(c, 503, "out of memory", false);
        return;
    }
    x->c = c;
    c->x = x;
    x->wg = w->cur;
    x->wg->users++;
    x->conf = conf;
    x->route = rt;
    x->is_head = r->is_head;
    x->expect_continue = r->expect_continue && has_body;
    x->upgrade = m->conn_upgrade && m->has_upgrade && m->minor >= 1;
    x->client_keep = m->keep_alive;
    x->req_body = (uint8_t)m->body;
    x->req_remaining = m->body == HTTP_BODY_LENGTH ? m->content_length : 0;
    x->req_done = !has_body;
    http_chunked_init(&x->req_ch);
    x->dechunk = m->minor == 0;
    x->req_minor = (uint8_t)m->minor;     /* an HTTP/1.0 client cannot take chunked */
    c->state = C_EXCHANGE;

    x->group = x->wg->g->groups[rt->upstream->index];
    x->t0_us = now_us();
    x->method_len = (uint8_t)(r->method_len < sizeof x->method ? r->method_len : sizeof x->method);
    memcpy(x->method, r->method, x->method_len);
    x->bytes_in = head_len;
    if (rt->audit && w->audit.log && (x->audit = calloc(1, sizeof *x->audit)))
        audit_capture(x->audit, r);
    if (w->alog.log || x->audit) {
        x->path_len = (uint16_t)(r->target_len < sizeof x->path ? r->target_len : sizeof x->path);
        memcpy(x->path, r->target, x->path_len);
    }
    x->idempotent = is_idempotent(r->method, r->method_len);
    client_identity(x, r);
    balance_key(x, r);
    if (!(x->uhead = buf_get(&w->bufs)) || !build_request_head(x, r, x->uhead, npath, nplen)) {
        exchange_fail(x, 431, "request head too large to forward");
        return;
    }
    buf_consume(c->in, head_len);
    if (x->expect_continue) {
        if (!ensure_buf(w, &c->out)) {
            exchange_fail(x, 503, "out of memory");
            return;
        }
        buf_append(c->out, "HTTP/1.1 100 Continue\r\n\r\n", 25);
        x->sent_continue = true;
    }
    if (x->req_done)
        loop_timer_stop(w->loop, &c->timer);
    else
        loop_timer_arm(w->loop, &c->timer, conf->limits.body_timeout);

    if (upstream_attach(x, false, 502))
        exchange_pump(x);
}

/* Parse the parts of a head with a complete line worth parsing (the
 * parser is stateless: calling it on every small read would be quadratic). */
static int parse_head(struct client *c, struct http_request *r)
{
    struct worker *w = c->w;
    r->m.headers = w->hdrs;
    r->m.kinds = w->kinds;
    return http_parse_request(buf_head(c->in), buf_len(c->in), r, &w->lim);
}

/* Read and parse a request head; start the exchange or answer it. Returns
 * to client_drive() in every case: the next pipelined request is its
 * business, in a bounded loop. */
static void client_read_head(struct client *c)
{
    struct worker *w = c->w;
    for (;;) {
        if (c->in && buf_len(c->in)) {
            size_t len = buf_len(c->in);
            bool full = len >= w->lim.max_head;
            if (http_head_scan(buf_head(c->in), len, &c->scanned, w->lim.max_request_line) || full) {
                struct http_request r;
                int n = parse_head(c, &r);
                if (n > 0) {
                    exchange_start(c, &r, (size_t)n);
                    return;
                }
                if (n == HTTP_ERROR) {
                    client_reject(c, NULL, r.m.status, r.m.error, false, 0);
                    return;
                }
            }
            if (full) {
                client_reject(c, NULL, 431, "request head too large", false, 0);
                return;
            }
            if (c->state == C_IDLE) {
                c->state = C_HEAD;
                loop_timer_arm(w->loop, &c->timer, w->conf->limits.header_timeout);
            }
        }
        if (!c->readable)
            break;
        ssize_t n = client_read(c);
        if (n == READ_NOMEM) {
            client_local_response(c, 503, "out of memory", false);
            return;
        }
        if (n == 0 || n == -2) {
            /* closed: quietly if between requests, otherwise it gave up */
            client_close(c);
            return;
        }
        if (n < 0)
            break;
    }
    release_if_empty(w, &c->in);
    if (w->draining && c->state == C_IDLE)
        client_close(c);
}

/* ---------------------------------------------------------------- the exchange */

/* Parse the response head at the front of x->uin and queue the client head.
 * Returns 1 when done, 0 when more bytes are needed, -1 if x was ended. */
/* Fields of an upstream head that go on to the client: not hop-by-hop
 * (Upgrade is kept for a 101). */
static void put_response_fields(struct http_hw *hw, const struct http_msg *m, bool tunnel)
{
    for (uint32_t i = 0; i < m->nheaders; i++) {
        const struct http_header *h = &m->headers[i];
        if (!(m->kinds[i] == HTTP_H_UPGRADE && tunnel) && is_hop_by_hop(m, i))
            continue;
        http_hw_field(hw, h->name, h->name_len, h->value, h->value_len);
    }
}

/* Write a head into c->out through the writer: at its tail, or after
 * compacting it. False if it cannot fit. */
static bool out_write(struct buf *b, void (*put)(struct http_hw *, void *), void *arg)
{
    for (int pass = 0; pass < 2; pass++) {
        if (!buf_len(b))
            b->start = b->end = 0;
        else if (pass)
            buf_compact(b);
        struct http_hw hw;
        http_hw_init(&hw, buf_tail(b), buf_room(b));
        put(&hw, arg);
        if (!hw.overflow) {
            b->end += (uint32_t)http_hw_len(&hw);
            return true;
        }
    }
    return false;
}

struct head_args {
    struct exchange *x;
    const struct http_response *r;
    bool te_other;
};

static void put_interim(struct http_hw *hw, void *arg)
{
    const struct head_args *a = arg;
    http_hw_status(hw, a->r->status, a->r->reason, a->r->reason_len);
    put_response_fields(hw, &a->r->m, false);
    http_hw_lit(hw, "\r\n");
}

/* Transfer-Encoding for the client: every coding of the upstream's, in
 * order, and chunked last unless the framing is removed (HTTP/1.0). */
static void put_te(struct http_hw *hw, const struct exchange *x, const struct http_msg *m)
{
    http_hw_lit(hw, "Transfer-Encoding: ");
    bool first = true;
    for (uint32_t i = 0; i < m->nheaders; i++) {
        if (m->kinds[i] != HTTP_H_TRANSFER_ENCODING)
            continue;
        struct http_list it = { m->headers[i].value, m->headers[i].value + m->headers[i].value_len };
        const char *e;
        size_t n;
        while (http_list_next(&it, &e, &n)) {
            if (n == 7 && http_ieq(e, "chunked", 7))
                continue;
            if (!first)
                http_hw_lit(hw, ", ");
            http_hw_put(hw, e, n);
            first = false;
        }
    }
    if (x->resp_body == HTTP_BODY_CHUNKED && !x->dechunk) {
        if (!first)
            http_hw_lit(hw, ", ");
        http_hw_lit(hw, "chunked");
    }
    http_hw_lit(hw, "\r\n");
}

static void put_final(struct http_hw *hw, void *arg)
{
    const struct head_args *a = arg;
    const struct exchange *x = a->x;
    const struct http_response *r = a->r;
    const struct http_msg *m = &r->m;
    http_hw_status(hw, r->status, r->reason, r->reason_len);
    put_response_fields(hw, m, x->tunnel);
    if (m->has_cl && !m->has_te && r->status >= 200 && r->status != 204) {
        http_hw_lit(hw, "Content-Length: ");
        http_hw_u64(hw, m->content_length);
        http_hw_lit(hw, "\r\n");
    }
    if ((x->resp_body == HTTP_BODY_CHUNKED && !x->dechunk) ||
        (a->te_other && x->resp_body != HTTP_BODY_NONE))
        put_te(hw, x, m);
    http_hw_lit(hw, "Via: 1.1 portico\r\n");
    if (x->tunnel)
        http_hw_lit(hw, "Connection: upgrade\r\n");
    else if (!x->client_keep)
        http_hw_lit(hw, "Connection: close\r\n");
    else if (x->req_minor == 0)
        http_hw_lit(hw, "Connection: keep-alive\r\n");
    http_hw_lit(hw, "\r\n");
}

/* Whether the upstream's Transfer-Encoding has a coding besides chunked. */
static bool te_other_than_chunked(const struct http_msg *m)
{
    for (uint32_t i = 0; m->has_te && i < m->nheaders; i++) {
        if (m->kinds[i] != HTTP_H_TRANSFER_ENCODING)
            continue;
        struct http_list it = { m->headers[i].value, m->headers[i].value + m->headers[i].value_len };
        const char *e;
        size_t n;
        while (http_list_next(&it, &e, &n))
            if (!(n == 7 && http_ieq(e, "chunked", 7)))
                return true;
    }
    return false;
}

/* A final response head has been parsed: decide the framing both ways. */
static void response_framing(struct exchange *x, const struct http_response *r)
{
    struct worker *w = x->c->w;
    const struct http_msg *m = &r->m;
    x->status = r->status;
    x->tunnel = r->status == 101;
    x->upstream_us = now_us() - x->up_t0_us;
    if (!x->upstream_us)
        x->upstream_us = 1;
    obs_upstream_time(w->obs, obs_upstream_index(x, x->route->upstream->index), x->upstream_us);
    if (x->holding)
        balance_report(x->group, x->server,
                       !(r->status >= 500 && balance_fail_on_5xx(x->group)), loop_now(w->loop));
    x->resp_body = (uint8_t)m->body;
    x->resp_remaining = m->content_length;
    x->upstream_keep = m->keep_alive && m->minor >= 1 && !x->tunnel;
    http_chunked_init(&x->resp_ch);
    if (x->resp_body != HTTP_BODY_CHUNKED)
        x->dechunk = false;
    if (x->resp_body == HTTP_BODY_CLOSE || x->dechunk || w->draining)
        x->client_keep = false;
    if (!x->req_done)
        x->client_keep = false;     /* answered before the body ended */
}

/* Parse the response head at the front of x->uin and queue the client
 * head: interim (1xx) heads go on to HTTP/1.1 clients as they come.
 * Returns 1 when done, 0 when more bytes are needed, -1 if x was ended. */
static int response_head(struct exchange *x)
{
    struct client *c = x->c;
    struct worker *w = c->w;
    for (;;) {
        struct http_response r;
        r.m.headers = w->hdrs;
        r.m.kinds = w->kinds;
        int n = http_parse_response(buf_head(x->uin), buf_len(x->uin), &r, &w->lim, x->is_head);
        if (n == HTTP_AGAIN) {
            if (buf_len(x->uin) >= w->lim.max_head) {
                exchange_fail(x, 502, "upstream response head too large");
                return -1;
            }
            return 0;
        }
        const char *bad = n < 0 ? r.m.error : NULL;
        if (n > 0 && r.status == 101 && !x->upgrade)
            bad = "101 to a request that did not ask to upgrade";
        struct head_args a = { .x = x, .r = &r };
        if (n > 0 && !bad)
            a.te_other = te_other_than_chunked(&r.m);
        if (a.te_other && x->req_minor == 0 && r.status >= 200)
            bad = "a transfer coding an HTTP/1.0 client cannot take";
        if (bad) {
            log_warn("upstream %s %s: bad response: %s", x->route->upstream->name,
                     x->route->upstream->servers[x->server].addr.text, bad);
            attempt_end(x, true, false);
            exchange_fail(x, 502, bad);
            return -1;
        }
        if (!ensure_buf(w, &c->out)) {
            exchange_fail(x, 502, "out of memory");
            return -1;
        }
        if (r.status < 200 && r.status != 101) {
            /* RFC 9110 15.2: relayed to HTTP/1.1 clients (103 Early Hints),
             * never to HTTP/1.0 ones; a 100 only if we did not send ours */
            if (x->req_minor >= 1 && !(r.status == 100 && x->sent_continue) &&
                !out_write(c->out, put_interim, &a))
                log_debug("interim %d response not relayed: no room", r.status);
            buf_consume(x->uin, (size_t)n);
            continue;
        }
        response_framing(x, &r);
        if (!out_write(c->out, put_final, &a)) {
            exchange_fail(x, 502, "upstream response head too large");
            return -1;
        }
        buf_consume(x->uin, (size_t)n);
        x->resp_head_done = true;
        /* RFC 9112 6.3: a message ends right after its head when its length is zero */
        if (x->resp_body == HTTP_BODY_NONE ||
            (x->resp_body == HTTP_BODY_LENGTH && x->resp_remaining == 0))
            x->resp_done = true;
        if (x->tunnel) {
            x->req_body = REQ_TUNNEL;
            x->req_done = false;
            x->resp_body = HTTP_BODY_CLOSE;    /* bytes flow until either side closes */
            x->resp_done = false;
            x->client_keep = x->upstream_keep = false;
            /* idle both ways is the tunnel's timeout, on the client's timer */
            loop_timer_stop(w->loop, &x->u->timer);
            loop_timer_arm(w->loop, &c->timer, x->conf->limits.tunnel_timeout);
        }
        /* the request head is no longer needed for a retry */
        if (x->uhead_sent >= buf_len(x->uhead)) {
            buf_put(&w->bufs, x->uhead);
            x->uhead = NULL;
        }
        return 1;
    }
}

/* Frame newly arrived response body bytes: extend resp_fwd over them. */
/* Re-frame chunked bytes at p (avail of them, ending at b's end) in place:
 * the canonical output stays at p, unconsumed bytes move up behind it.
 * Returns the output length, or -1. */
static long reframe_in_place(struct http_chunked *ch, struct buf *b, char *p, size_t avail,
                             bool strip, bool *progress)
{
    size_t out;
    long n = http_chunked_reframe(ch, p, avail, strip, &out);
    if (n < 0)
        return -1;
    if ((size_t)n != out) {
        memmove(p + out, p + n, avail - (size_t)n);
        b->end -= (uint32_t)((size_t)n - out);
    }
    *progress = n > 0;
    return (long)out;
}

/* Frame newly arrived response body bytes: extend resp_fwd over them. */
static bool frame_response(struct exchange *x)
{
    struct buf *b = x->uin;
    while (!x->resp_done && x->resp_fwd < buf_len(b)) {
        size_t avail = buf_len(b) - x->resp_fwd;
        char *p = buf_head(b) + x->resp_fwd;
        switch (x->resp_body) {
        case HTTP_BODY_LENGTH: {
            size_t n = avail < x->resp_remaining ? avail : (size_t)x->resp_remaining;
            x->resp_fwd += (uint32_t)n;
            x->resp_remaining -= n;
            if (!x->resp_remaining)
                x->resp_done = true;
            break;
        }
        case HTTP_BODY_CLOSE:
            x->resp_fwd += (uint32_t)avail;
            break;
        case HTTP_BODY_CHUNKED: {
            bool progress;
            long out = reframe_in_place(&x->resp_ch, b, p, avail, x->dechunk, &progress);
            if (out < 0) {
                log_warn("upstream %s %s: invalid chunked body", x->route->upstream->name,
                         x->route->upstream->servers[x->server].addr.text);
                return false;
            }
            x->resp_fwd += (uint32_t)out;
            if (http_chunked_done(&x->resp_ch))
                x->resp_done = true;
            else if (!progress)
                return true;        /* a size or trailer line has not arrived whole */
            break;
        }
        default:
            x->resp_done = true;
        }
    }
    if (x->resp_done && x->resp_fwd < buf_len(b))
        x->upstream_keep = false;       /* bytes after the response: not reusable */
    return true;
}

/* Validate newly arrived request body bytes: extend req_fwd over them. */
/* Validate newly arrived request body bytes: extend req_fwd over them.
 * Chunked bodies are re-framed in canonical form. 0, or a status (400, 413). */
static int frame_request(struct exchange *x)
{
    struct client *c = x->c;
    struct buf *b = c->in;
    uint32_t before = x->req_fwd;
    while (!x->req_done && b && x->req_fwd < buf_len(b)) {
        size_t avail = buf_len(b) - x->req_fwd;
        switch (x->req_body) {
        case HTTP_BODY_LENGTH: {
            size_t n = avail < x->req_remaining ? avail : (size_t)x->req_remaining;
            x->req_fwd += (uint32_t)n;
            x->req_remaining -= n;
            if (!x->req_remaining)
                x->req_done = true;
            break;
        }
        case HTTP_BODY_CHUNKED: {
            bool progress;
            long out = reframe_in_place(&x->req_ch, b, buf_head(b) + x->req_fwd, avail, false,
                                        &progress);
            if (out < 0)
                return 400;
            x->req_fwd += (uint32_t)out;
            if (x->req_ch.total > x->conf->limits.max_body)
                return 413;
            if (http_chunked_done(&x->req_ch))
                x->req_done = true;
            else if (!progress)
                goto out;           /* a size or trailer line has not arrived whole */
            break;
        }
        case REQ_TUNNEL:
            x->req_fwd += (uint32_t)avail;
            break;
        default:
            x->req_done = true;
        }
    }
out:
    x->bytes_in += x->req_fwd - before;    /* body bytes, for the access log */
    return 0;
}

/* Finish an exchange whose response has been fully written. */
/* Finish an exchange whose response has been fully written. The upstream
 * connection is pooled only when it holds no unread byte; the client
 * waits for its next request (client_drive() reads it), or is closed
 * with a lingering close. */
static void exchange_finish(struct exchange *x)
{
    struct client *c = x->c;
    struct worker *w = c->w;
    bool keep = x->client_keep && !w->draining;
    bool ukeep = x->upstream_keep && x->resp_done && x->req_sent && x->resp_fwd == 0 &&
                 x->uin && buf_len(x->uin) == 0 && x->u && uconn_drained(x->u, !x->u->readable);
    exchange_free(x, ukeep);
    if (!keep) {
        client_linger(c);
        return;
    }
    c->state = C_IDLE;
    c->seq++;
    loop_timer_arm(w->loop, &c->timer, w->conf->limits.idle_timeout);
    release_if_empty(w, &c->in);
}

/* The exchange cannot go on. Before the response head: answer `status`.
 * After it: the client's response is cut, so close. */
/* The exchange cannot go on. Before the response head: answer `status`.
 * After it: the client's response is cut, so end the connection so that
 * it cannot look complete. x is freed either way. */
static void exchange_fail(struct exchange *x, int status, const char *why)
{
    struct client *c = x->c;
    if (x->resp_head_done || x->tunnel) {
        log_warn("exchange aborted after response head: %s", why);
        client_abort(c);
        return;
    }
    if (status >= 500)
        log_warn("upstream %s: %d %s", x->route->upstream->name, status, why);
    client_local_response(c, status, why, false);
}

static void exchange_pump(struct exchange *x)
{
    struct client *c = x->c;
    struct worker *w = c->w;
    bool progress = true;
    while (progress && c->x == x) {
        progress = false;
        struct uconn *u = x->u;

        /* 1. client -> portico: body bytes (or tunnel bytes) */
        if (!x->req_done && c->readable && !x->client_eof) {
            ssize_t n = client_read(c);
            if (n == READ_NOMEM) {
                exchange_fail(x, 503, "out of memory");
                return;
            }
            if (n > 0) {
                progress = true;
                loop_timer_arm(w->loop, &c->timer, x->tunnel ? x->conf->limits.tunnel_timeout
                                                             : x->conf->limits.body_timeout);
            } else if (n == 0 || n == -2) {
                if (x->tunnel) {
                    /* half-close: pass it on, keep relaying the other way */
                    x->client_eof = true;
                    x->req_done = true;
                    if (x->u)
                        shutdown(x->u->io.fd, SHUT_WR);
                } else {
                    /* the client went away mid-body: cancel the upstream work */
                    client_close(c);
                    return;
                }
            }
        } else if (x->req_done && c->readable && !x->tunnel && !x->resp_done) {
            /* Watch for the client going away while we wait; keep any
             * pipelined bytes for the next request. */
            if (c->in && buf_room(c->in) == 0)
                buf_compact(c->in);
            if (!c->in || buf_room(c->in)) {
                ssize_t n = client_read(c);
                if (n == READ_NOMEM) {
                    exchange_fail(x, 503, "out of memory");
                    return;
                }
                if (n == 0 || n == -2) {
                    client_close(c);
                    return;
                }
                if (n > 0)
                    progress = true;
            }
        }
        bool was_done = x->req_done;
        int st = frame_request(x);
        if (st) {
            exchange_fail(x, st, st == 413 ? "chunked body over max_body" : "invalid chunked body");
            return;
        }
        if (!was_done && x->req_done && !(c->out && buf_len(c->out)) && !x->resp_fwd)
            loop_timer_stop(w->loop, &c->timer);

        /* 2. portico -> upstream: the head, then validated body bytes */
        if (u && !u->connecting && u->writable && !x->req_sent) {
            struct iovec iov[2];
            int n = 0;
            size_t hl = x->uhead ? buf_len(x->uhead) - x->uhead_sent : 0;
            if (hl)
                iov[n++] = (struct iovec){ buf_head(x->uhead) + x->uhead_sent, hl };
            if (x->req_fwd)
                iov[n++] = (struct iovec){ buf_head(c->in), x->req_fwd };
            if (n) {
                size_t want = hl + x->req_fwd;
                ssize_t wr = writev(u->io.fd, iov, n);
                if (wr < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                    int e = errno;
                    if (u->reused && !x->body_started && !x->stale_retried) {
                        /* the server closed an idle keep-alive connection as
                         * we used it: same server, new connection */
                        log_debug("reused upstream connection failed (%s): reconnecting", strerror(e));
                        uconn_close(u);
                        x->stale_retried = true;
                        if (!upstream_attach(x, true, 502))
                            return;
                        progress = true;
                        continue;
                    }
                    /* nothing sent yet: any request may go elsewhere */
                    attempt_failed(x, strerror(e), 502,
                                   x->idempotent || (x->uhead_sent == 0 && !x->body_started));
                    return;
                }
                if (wr < 0 || (size_t)wr < want)
                    u->writable = false;
                if (wr > 0) {
                    loop_timer_arm(w->loop, &u->timer, x->route->upstream->response_timeout);
                    size_t done = (size_t)wr;
                    size_t a = done < hl ? done : hl;
                    x->uhead_sent += (uint32_t)a;
                    done -= a;
                    if (done) {
                        x->body_started = true;
                        buf_consume(c->in, done);
                        x->req_fwd -= (uint32_t)done;
                    }
                    progress = true;
                }
            }
            bool head_sent = x->uhead && x->uhead_sent >= buf_len(x->uhead);
            if (head_sent && x->req_done && x->req_fwd == 0 && x->req_body != REQ_TUNNEL) {
                x->req_sent = true;
                loop_timer_arm(w->loop, &u->timer, x->route->upstream->response_timeout);
            } else if (head_sent && !x->req_done && x->req_fwd == 0 && !x->resp_head_done) {
                /* everything we have is sent: we wait on the client, whose
                 * pace body_timeout governs, not the upstream's timer */
                loop_timer_stop(w->loop, &u->timer);
            }
        } else if (x->tunnel && u && u->writable && x->req_fwd) {
            ssize_t wr = write(u->io.fd, buf_head(c->in), x->req_fwd);
            if (wr > 0) {
                buf_consume(c->in, (size_t)wr);
                x->req_fwd -= (uint32_t)wr;
                progress = true;
                loop_timer_arm(w->loop, &c->timer, x->conf->limits.tunnel_timeout);
                if (!x->req_fwd && x->client_eof)
                    shutdown(u->io.fd, SHUT_WR);
            } else if (wr < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                u->writable = false;
            } else if (wr < 0 && errno != EINTR) {
                client_close(c);
                return;
            }
        }
        if (c->in && !x->req_fwd)
            release_if_empty(w, &c->in);

        /* 3. upstream -> portico */
        u = x->u;
        if (u && !u->connecting && u->readable && !x->resp_done) {
            if (!ensure_buf(w, &x->uin)) {
                exchange_fail(x, 502, "out of memory");
                return;
            }
            /* compact when all is ready for the client or the window has
                 * moved far: a partial chunk line at the end must get room */
            if (buf_room(x->uin) == 0 && x->uin->start > 0 &&
                (x->resp_fwd == buf_len(x->uin) || x->uin->start >= x->uin->cap / 2))
                buf_compact(x->uin);
            if (buf_room(x->uin) || x->uin->start) {
                ssize_t n = read_into(u->io.fd, x->uin, &u->readable, u->hup);
                if (n > 0) {
                    progress = true;
                    if (x->tunnel)
                        loop_timer_arm(w->loop, &c->timer, x->conf->limits.tunnel_timeout);
                    else
                        loop_timer_arm(w->loop, &u->timer, x->route->upstream->response_timeout);
                } else if (n == 0 || n == -2) {
                    bool nothing = !x->resp_head_done && buf_len(x->uin) == 0;
                    bool stale = nothing && u->reused && !x->body_started && !x->stale_retried;
                    if (x->resp_head_done && x->resp_body == HTTP_BODY_CLOSE && n == 0) {
                        uconn_close(u);
                        x->resp_done = true;
                        progress = true;
                    } else if (stale) {
                        uconn_close(u);
                        x->stale_retried = true;
                        if (!upstream_attach(x, true, 502))
                            return;
                        progress = true;
                        continue;
                    } else if (!x->resp_head_done) {
                        attempt_failed(x, n == 0 ? "closed before responding" : "connection reset",
                                       502, x->idempotent);
                        return;
                    } else if (x->tunnel) {
                        uconn_close(u);
                        x->resp_done = true;
                        progress = true;
                    } else {
                        /* cut mid-body (or reset): the client's message must
                         * not look complete either */
                        exchange_fail(x, 502, n == 0 ? "upstream closed mid-body"
                                                     : "upstream reset mid-body");
                        return;
                    }
                }
            }
        }

        /* 4. response head, then body framing */
        if (!x->resp_head_done && x->uin && buf_len(x->uin)) {
            int r = response_head(x);
            if (r < 0)
                return;
            if (r > 0)
                progress = true;
        }
        if (x->resp_head_done && x->uin && !frame_response(x)) {
            exchange_fail(x, 502, "invalid chunked response body");
            return;
        }

        /* 5. portico -> client */
        if (c->writable && ((c->out && buf_len(c->out)) || x->resp_fwd)) {
            uint32_t before = x->resp_fwd + (c->out ? buf_len(c->out) : 0);
            if (!client_flush(c))
                return;
            if (x->resp_fwd + (c->out ? buf_len(c->out) : 0) != before)
                progress = true;
        }
        if (x->resp_done && x->resp_head_done && x->resp_fwd == 0 && !c->out && x->c == c) {
            if (x->tunnel) {
                client_close(c);        /* the tunnel ended upstream side */
                return;
            }
            if (!x->req_done) {
                /* the server answered before the body ended: stop reading
                 * it, but lingering, so the response is not reset away */
                x->status = x->status ? x->status : 502;
                client_linger(c);
                return;
            }
            exchange_finish(x);
            return;
        }
        if (x->tunnel && x->client_eof && !x->req_fwd && x->u == NULL) {
            client_close(c);
            return;
        }
    }
}

/* ---------------------------------------------------------------- client events */

/* Requests one connection may have served in one go before others get a
 * turn: the rest of its pipeline waits for the next loop iteration. */
#define PIPELINE_BATCH 16

static void client_defer(struct client *c)
{
    struct worker *w = c->w;
    if (c->deferred)
        return;
    c->deferred = true;
    c->next_ready = w->ready;
    w->ready = c;
    loop_pending(w->loop);
}

/* Drive a client connection as far as it can go: the only loop over its
 * states. Handlers set the next state and return here; none calls into the
 * next request (pipelined requests are served by iteration, never by
 * recursion, and at most PIPELINE_BATCH in a row). */
static void client_drive(struct client *c)
{
    struct worker *w = c->w;
    for (unsigned turn = 0; c->io.fd >= 0; turn++) {
        uint8_t st = c->state;
        struct exchange *x = c->x;
        uint32_t seq = c->seq;
        switch (st) {
        case C_IDLE:
        case C_HEAD:
            if (c->out) {
                /* the previous answer is written before the next request
                 * is read: a client that does not read stops being served */
                if (!client_flush(c) || c->out)
                    return;
                loop_timer_arm(w->loop, &c->timer, st == C_IDLE ? w->conf->limits.idle_timeout
                                                                : w->conf->limits.header_timeout);
            }
            if (turn >= PIPELINE_BATCH && c->in && buf_len(c->in)) {
                client_defer(c);
                return;
            }
            client_read_head(c);
            break;
        case C_EXCHANGE:
            exchange_pump(x);
            break;
        case C_CLOSING:
            if (client_flush(c) && !c->out)
                client_linger(c);
            return;
        case C_LINGER:
            client_linger(c);
            return;
        }
        if (c->state == st && c->x == x && c->seq == seq)
            return;
    }
}

static void client_io(struct loop *l, struct loop_io *io, unsigned ev)
{
    (void)l;
    struct client *c = container_of(io, struct client, io);
    if (c->io.fd < 0)
        return;
    if (ev & LOOP_READ)
        c->readable = true;
    if (ev & LOOP_WRITE)
        c->writable = true;
    if (ev & LOOP_HUP)
        c->hup = true;
    if (c->state == C_CLOSING && (ev & LOOP_HUP) && !(ev & LOOP_WRITE)) {
        /* nothing to read any more: just finish writing */
    }
    client_drive(c);
}

static void listener_accept(struct listener *ls);

/* accept() ran out of descriptors or memory: the listener is
 * edge-triggered, so nothing would call it again until the next arrival.
 * Try every listener again in a moment. */
static void accept_retry(struct loop *l, struct loop_timer *t)
{
    (void)l;
    struct worker *w = container_of(t, struct worker, accept_timer);
    for (uint32_t i = 0; i < w->nlisteners; i++)
        if (w->listeners[i] && w->listeners[i]->io.fd >= 0)
            listener_accept(w->listeners[i]);
}

static void listener_io(struct loop *l, struct loop_io *io, unsigned ev)
{
    (void)l;
    (void)ev;
    struct listener *ls = container_of(io, struct listener, io);
    if (io->fd < 0)
        return;                 /* retired earlier in this batch */
    listener_accept(ls);
}

static void listener_accept(struct listener *ls)
{
    struct worker *w = ls->w;
    struct loop *l = w->loop;
    /* Edge-triggered: accept until the queue is empty, or connections that
     * arrived in the same burst would wait for the next one. */
    while (!w->draining) {
        struct client tmp;
        socklen_t alen = sizeof tmp.peer;
        int fd = accept4(ls->io.fd, &tmp.peer.sa, &alen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                if (!loop_timer_armed(&w->accept_timer)) {
                    log_warn("accept: %s; retrying in 100ms", strerror(errno));
                    obs_add(&w->obs->rejected, 1);
                    loop_timer_arm(l, &w->accept_timer, 100);
                }
                return;
            }
            log_warn("accept: %s", strerror(errno));
            return;
        }
        unsigned n = atomic_fetch_add_explicit(&w->p->nconns, 1, memory_order_relaxed);
        if (n >= w->conf->limits.max_connections) {
            atomic_fetch_sub_explicit(&w->p->nconns, 1, memory_order_relaxed);
            static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                                       "Retry-After: 1\r\nConnection: close\r\n\r\n";
            ssize_t r = write(fd, busy, sizeof busy - 1);
            (void)r;
            close(fd);
            continue;
        }
        struct client *c = calloc(1, sizeof *c);
        if (!c) {
            atomic_fetch_sub_explicit(&w->p->nconns, 1, memory_order_relaxed);
            close(fd);
            continue;
        }
        c->peer = tmp.peer;
        c->io.fd = fd;
        c->io.cb = client_io;
        c->timer.cb = client_timeout;
        c->w = w;
        c->state = C_IDLE;
        set_nodelay(fd);
        if (loop_add(l, &c->io) < 0) {
            atomic_fetch_sub_explicit(&w->p->nconns, 1, memory_order_relaxed);
            close(fd);
            free(c);
            continue;
        }
        c->next = w->clients;
        if (c->next)
            c->next->prev = c;
        w->clients = c;
        w->nclients++;
        obs_add(&w->obs->conns_total, 1);
        /* the first bytes are usually there already (or will be soon) */
        loop_timer_arm(l, &c->timer, w->conf->limits.header_timeout);
    }
}

/* ---------------------------------------------------------------- listeners */

static bool any_v6(const struct conf_addr *a)
{
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&a->ss;
    return a->ss.ss_family == AF_INET6 && IN6_IS_ADDR_UNSPECIFIED(&s6->sin6_addr);
}

/* A listening socket for a. Ours share each address with SO_REUSEPORT
 * (one per worker); with `probe`, first make sure that no other process
 * serves it, since SO_REUSEPORT would silently share its traffic: a socket
 * without SO_REUSEPORT cannot bind where anyone listens. "[::]" and "*"
 * take IPv4 too (dual-stack). */
static int open_listener(const struct conf_addr *a, bool probe, char *err, size_t errlen)
{
    int one = 1, v6only = any_v6(a) ? 0 : 1;
    if (probe) {
        int pfd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (pfd >= 0) {
            setsockopt(pfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
            if (a->ss.ss_family == AF_INET6)
                setsockopt(pfd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only);
            int rc = bind(pfd, (const struct sockaddr *)&a->ss, a->len);
            int e = errno;
            close(pfd);
            if (rc < 0 && e == EADDRINUSE) {
                snprintf(err, errlen, "listen %s: %s", a->text, strerror(e));
                return -1;
            }
        }
    }
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "listen %s: socket: %s", a->text, strerror(errno));
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (a->ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only);
    if (bind(fd, (const struct sockaddr *)&a->ss, a->len) < 0 || listen(fd, 4096) < 0) {
        snprintf(err, errlen, "listen %s: %s", a->text, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static bool conf_listens_on(const struct conf *c, const struct conf_addr *a)
{
    for (uint32_t i = 0; i < c->nlisten; i++)
        if (conf_addr_equal(&c->listen[i], a))
            return true;
    return false;
}

/* Watch fd (a bound, listening socket; taken over, closed on failure). */
static struct listener *listener_new(struct worker *w, const struct conf_addr *a, int fd)
{
    struct listener *ls = calloc(1, sizeof *ls);
    if (!ls) {
        log_error("worker %u: listen %s: out of memory", w->id, a->text);
        close(fd);
        return NULL;
    }
    ls->io.fd = fd;
    ls->io.cb = listener_io;
    ls->w = w;
    ls->addr = *a;
    int rc = loop_add(w->loop, &ls->io);
    if (rc < 0) {
        log_error("worker %u: listen %s: epoll: %s", w->id, a->text, strerror(-rc));
        close(fd);
        free(ls);
        return NULL;
    }
    return ls;
}

/* Stop listening. The struct is freed in worker_reap(): an event for it may
 * still be in the batch being dispatched. */
static void listener_retire(struct worker *w, struct listener *ls)
{
    if (!ls)
        return;
    if (ls->io.fd >= 0) {
        loop_del(w->loop, &ls->io);
        close(ls->io.fd);
        ls->io.fd = -1;
    }
    ls->next_dead = w->dead_listeners;
    w->dead_listeners = ls;
}

/* ---------------------------------------------------------------- generations */

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

static struct proxy_gen *gen_ref(struct proxy_gen *g)
{
    atomic_fetch_add_explicit(&g->refs, 1, memory_order_relaxed);
    return g;
}

/* Drop a reference; the last one frees the generation. Its groups must no
 * longer be in the health checker (proxy_reload restarts it first). */
static void gen_unref(struct proxy_gen *g)
{
    if (!g || atomic_fetch_sub_explicit(&g->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (size_t i = 0; g->lfd && i < (size_t)g->nworkers * g->conf->nlisten; i++)
        if (g->lfd[i] >= 0)
            close(g->lfd[i]);
    free(g->lfd);
    for (uint32_t i = 0; g->groups && i < g->conf->nupstreams; i++)
        balance_group_free(g->groups[i]);
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
static struct proxy_gen *gen_new(struct conf *conf, const struct proxy_gen *old, uint32_t nworkers,
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
    if (!g->lfd || !g->groups) {
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

static void wgen_close_pools(struct wgen *wg)
{
    for (uint32_t i = 0; wg->pools && i < wg->npools; i++)
        while (wg->pools[i].head)
            uconn_close(wg->pools[i].head);
}

static void wgen_free(struct wgen *wg)
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

/* Switch this worker to generation g: its listeners (kept where the address
 * stays, taken from g or opened here where it is new, closed where it is
 * gone), request limits, access log, metrics layout (counts carried over by
 * name) and a fresh wgen for new requests. Requests in flight finish on the
 * generation they started on; its idle pooled connections are closed.
 * False when out of memory: the worker keeps its generation. */
static bool worker_adopt(struct worker *w, struct proxy_gen *g)
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

    w->lim = (struct http_limits){ c->limits.max_request_line, c->limits.max_header_bytes,
                                   c->limits.max_headers };
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

/* ---------------------------------------------------------------- workers */

static void worker_reap(struct loop *l, void *arg)
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
    loop_free(w->loop);
}

static uint32_t bufsize_for(const struct conf *c)
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

struct proxy *proxy_start(struct conf *conf, char *err, size_t errlen)
{
    struct proxy *p = calloc(1, sizeof *p);
    if (!p) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_mutex_init(&p->reload_mu, NULL);
    p->nworkers = conf->workers;
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

/* ---------------------------------------------------------------- reload */

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

/* ---------------------------------------------------------------- for the admin thread */

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

/* ================================================================ test hook: the inline proxy
 * For tests/fuzz/fuzz_path.c (see proxy.h): one worker whose loop the caller
 * runs in its own thread, and clients adopted from connected sockets. Only
 * this section belongs to the fuzz harness; it reuses gen_new, worker_init
 * and proxy_free and adds no behaviour to the proxy. */

struct proxy *proxy_inline_new(struct conf *conf, char *err, size_t errlen)
{
    struct proxy *p = calloc(1, sizeof *p);
    if (!p) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_mutex_init(&p->reload_mu, NULL);
    p->nworkers = 1;
    p->bufsize = bufsize_for(conf);
    p->maxfd = raise_fd_limit(conf);
    p->gen = gen_new(conf, NULL, 1, 1, err, errlen);
    p->workers = calloc(1, sizeof *p->workers);
    if (!p->gen || !p->workers || !worker_init(p, &p->workers[0], 0, err, errlen)) {
        if (!p->workers)
            snprintf(err, errlen, "out of memory");
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
    c->io.fd = fd;
    c->io.cb = client_io;
    c->timer.cb = client_timeout;
    c->w = w;
    c->state = C_IDLE;
    set_nodelay(fd);
    int rc = loop_add(w->loop, &c->io);
    if (rc < 0) {
        free(c);
        return rc;
    }
    atomic_fetch_add_explicit(&p->nconns, 1, memory_order_relaxed);
    c->next = w->clients;
    if (c->next)
        c->next->prev = c;
    w->clients = c;
    w->nclients++;
    obs_add(&w->obs->conns_total, 1);
    loop_timer_arm(w->loop, &c->timer, w->conf->limits.header_timeout);
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
