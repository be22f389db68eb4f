/* proxy/proxy_int.h: what the files of proxy/ share; nothing outside proxy/
 * includes it. The types of a connection, an exchange, a generation and a
 * worker, and the functions one file calls in another. docs/architecture.md
 * says which file holds what. */
#ifndef PORTICO_PROXY_INT_H
#define PORTICO_PROXY_INT_H

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
#include "stage.h"
#include "limit/limit.h"

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
struct http_request;
struct http_response;

#define REQ_TUNNEL 9            /* x->req_body of a tunnel: bytes until either side closes */
#define READ_NOMEM (-3)         /* client_read(): no buffer to read into */
/* Requests one connection may have served in one go before others get a
 * turn: the rest of its pipeline waits for the next loop iteration. */
#define PIPELINE_BATCH 16
#define TSCRATCH 16384          /* a transforming stage's output per call */

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
    bool ip_counted;                /* counted in limits.max_connections_per_ip */
    bool internal;                  /* portico's own request (stage_background) */
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

/* One route's stages, in chain order, built when its generation loads
 * (stage_chains_new); a route that uses no stage has n == 0. */
struct stage_link {
    const struct stage_def *def;
    void *state;                /* what route_new returned */
    uint32_t ctx_off;           /* its context in the exchange's block */
};

struct stage_chain {
    uint32_t n;
    uint32_t ctx_bytes;         /* every context, each aligned */
    bool keep_request_headers;
    struct stage_link links[];
};

/* A stage's view of one exchange (x->sx[i] for link i). */
struct stage_x {
    struct exchange *x;
    uint32_t i;
};

/* A head edit a stage asked for, applied when the head is written. */
struct head_edit {
    const char *name, *value;   /* in the exchange's arena */
    uint32_t name_len, value_len;
    uint8_t verb;               /* enum stage_edit */
};

#define STAGE_MAX_EDITS 32

/* What stages write, allocated on the first edit or answer. */
struct stage_ext {
    struct head_edit req_edits[STAGE_MAX_EDITS], resp_edits[STAGE_MAX_EDITS];
    uint32_t nreq_edits, nresp_edits;
    struct stage_field answer_fields[16];
    uint32_t nanswer_fields;
    const char *answer_block;   /* stage_answer_block: "Name: value\r\n" lines */
    uint32_t answer_block_len;
    char *arena;                /* copies of edit strings and answer fields: in `small`
                                   until it is full, then in one block as large as a head */
    uint32_t arena_len, arena_cap;
    uint32_t small_len;
    char small[512];
};

/* What stages add to an exchange, allocated with it (one calloc) when its
 * route has a chain; NULL otherwise, so a route without stages pays nothing. */
struct stage_state {
    const struct stage_chain *chain;
    struct exchange *x;
    struct loop_timer resume_timer;     /* stage_resume_after() */
    struct stage_waker *waker;          /* stage_waker(): cleared when the exchange ends */
    struct stage_x *sx;         /* [chain->n] */
    char *ctx;                  /* the contexts */
    struct stage_ext *ext;      /* edits and an answer; NULL until one is made */
    uint32_t next;              /* the next stage whose on_request runs */
    uint32_t ran;               /* on_request ran for links [0, ran) */
    bool parked, answered, ended;
    bool upstream_seen;         /* stages_upstream ran: once per exchange */
    const char *cache_result;   /* stage_log_cache(): for the access log */
    int8_t xform;               /* the transforming link, or -1 */
    bool can_transform;         /* during on_response: a transformer may take this body */
    bool body_error;            /* the transformer said the body is corrupt */
    uint32_t watch;             /* links watching the body (bit per link) */
    /* the request head, copied when it must outlive c->in (a park, or a
     * stage keeping request headers), parsed again from this copy */
    char *head;
    uint32_t head_len;
    struct http_request *rcopy;
    const struct http_request *req;     /* during on_request, or rcopy */
    uint32_t in_head;                   /* during on_request: the head's bytes in c->in */
    const struct http_response *resp;   /* during on_response (NULL: an answer's) */
    char *npath;                /* the normalised path and query: w->npath during
                                   on_request, then a copy if the head is kept */
    uint32_t npath_len;
    bool npath_owned;
    /* an answer from memory */
    int answer_status;
    struct stage_body *body;
    size_t body_off;
    /* a transformed body, framed for the client; a decoder for watchers */
    struct buf *tout;
    bool tend;
    struct http_chunked wch;
};

struct exchange {
    struct client *c;
    struct stage_state *st;     /* NULL: the route has no stages */
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
    bool https;                     /* the client used HTTPS (a trusted X-Forwarded-Proto) */
    bool sent_continue;             /* we answered Expect: 100-continue ourselves */
    bool abnormal;                  /* the response body ended before its end */
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
    struct stage_chain **chains;    /* [conf->nroutes] */
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
    char *tscratch;                 /* scratch: a transforming stage's output (TSCRATCH) */
    pthread_mutex_t mbox_mu;        /* guards mbox: wakers other threads hand over */
    struct stage_waker *mbox;
    struct bg_sink *sinks;          /* background requests' far ends, still reading */
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

/* ---------------------------------------------------------------- small helpers */

static inline void set_nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static inline uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static inline bool ensure_buf(struct worker *w, struct buf **b)
{
    if (!*b)
        *b = buf_get(&w->bufs);
    return *b != NULL;
}

static inline void release_if_empty(struct worker *w, struct buf **b)
{
    if (*b && buf_len(*b) == 0) {
        buf_put(&w->bufs, *b);
        *b = NULL;
    }
}

/* ---------------------------------------------------------------- client.c */

size_t peer_addr(const struct client *c, uint8_t *family, uint8_t out[16]);
size_t addr_text(int family, const uint8_t *a, char *out, size_t len);
size_t peer_text(const struct client *c, char *out, size_t len);
ssize_t read_into(int fd, struct buf *b, bool *readable, bool hup);
ssize_t client_read(struct client *c);
void client_close(struct client *c);
bool client_flush(struct client *c);
void client_timeout(struct loop *l, struct loop_timer *t);
void client_local_response(struct client *c, int status, const char *why, bool keep);
void client_reject(struct client *c, const struct http_request *r, int status,
                          const char *why, bool keep, size_t consume);
void client_linger(struct client *c);
void client_abort(struct client *c);
void client_drive(struct client *c);
/* Drive c again from the next loop iteration (not from here). */
void client_defer(struct client *c);
void client_io(struct loop *l, struct loop_io *io, unsigned ev);

/* ---------------------------------------------------------------- upstream.c */

void pool_remove(struct uconn *u);
void uconn_close(struct uconn *u);
bool uconn_drained(struct uconn *u, bool known_empty);
bool uconn_move_to_current(struct uconn *u);
uint32_t obs_upstream_index(const struct exchange *x, uint32_t ui);
void uconn_release(struct uconn *u, bool keep);
void attempt_end(struct exchange *x, bool report, bool ok);
bool upstream_attach(struct exchange *x, bool fresh, int fail_status);
void attempt_failed(struct exchange *x, const char *why, int status, bool retry);

/* ---------------------------------------------------------------- exchange.c */

void exchange_free(struct exchange *x, bool upstream_keep);
void exchange_start(struct client *c, const struct http_request *r, size_t head_len);
void exchange_fail(struct exchange *x, int status, const char *why);
void exchange_pump(struct exchange *x);

/* ---------------------------------------------------------------- route.c */

const struct conf_route *route_match(const struct conf *conf, const struct http_request *r,
                                            const char *path, size_t plen);
bool is_idempotent(const char *m, size_t n);
void balance_key(struct exchange *x, const struct http_request *r);
void client_identity(struct exchange *x, const struct http_request *r);

/* ---------------------------------------------------------------- head.c */

bool nominated(const struct http_msg *m, uint32_t i);
bool build_request_head(struct exchange *x, const struct http_request *r, struct buf *b,
                               const char *npath, size_t nplen);
int response_head(struct exchange *x);

/* ---------------------------------------------------------------- stage_log.c */

void audit_capture(struct audit_info *a, const struct http_request *r);
void audit_write(struct obs_alog_buf *b, const struct audit_info *a, const char *reqid,
                        size_t reqid_len, const char *client, const char *method,
                        size_t method_len, const char *path, size_t path_len,
                        const struct conf_route *rt, const char *server, int status,
                        uint64_t bytes_in, uint64_t bytes_out, uint64_t duration_us);
void alog_write(struct worker *w, const struct obs_alog_entry *e);
void alog_timeout(struct loop *l, struct loop_timer *t);

/* ---------------------------------------------------------------- listener.c */

void accept_retry(struct loop *l, struct loop_timer *t);
void listener_io(struct loop *l, struct loop_io *io, unsigned ev);
int open_listener(const struct conf_addr *a, bool probe, char *err, size_t errlen);
bool conf_listens_on(const struct conf *c, const struct conf_addr *a);
struct listener *listener_new(struct worker *w, const struct conf_addr *a, int fd);
void listener_retire(struct worker *w, struct listener *ls);

/* ---------------------------------------------------------------- gen.c */

struct proxy_gen *gen_ref(struct proxy_gen *g);
void gen_unref(struct proxy_gen *g);
struct proxy_gen *gen_new(struct conf *conf, const struct proxy_gen *old, uint32_t nworkers,
                                 uint64_t id, char *err, size_t errlen);
void wgen_close_pools(struct wgen *wg);
void wgen_free(struct wgen *wg);
bool worker_adopt(struct worker *w, struct proxy_gen *g);
int proxy_reload(struct proxy *p, char *err, size_t errlen);

/* ---------------------------------------------------------------- worker.c */

void worker_reap(struct loop *l, void *arg);
uint32_t bufsize_for(const struct conf *c);

/* ---------------------------------------------------------------- stage.c */

extern const struct stage_def stage_forward, stage_metrics, stage_access_log, stage_audit_log;
struct stage_chain **stage_chains_new(const struct conf *conf);
void stage_chains_free(struct stage_chain **chains, uint32_t n);
struct exchange *exchange_alloc(const struct stage_chain *ch);
void stage_state_release(struct exchange *x);
enum stage_verdict stages_request(struct exchange *x);
void stages_response(struct exchange *x, const struct http_response *r, bool can_transform);
void stages_watch(struct exchange *x, const char *data, size_t len, bool end);
void stages_end(struct exchange *x);
bool stages_upstream(struct exchange *x, const struct http_response *r, int status);
void stage_mbox_drain(struct worker *w);
void stage_sinks_free(struct worker *w);      /* background requests' far ends, at worker stop */
void stage_waker_cancel(struct exchange *x);
bool edits_drop(const struct head_edit *e, uint32_t n, const char *name, size_t nlen,
                bool present_elsewhere);
void edits_put(struct http_hw *hw, const struct head_edit *e, uint32_t n, const struct http_msg *m,
               const struct stage_field *f, uint32_t nf, const char *block, size_t block_len);
void exchange_continue(struct exchange *x);
bool exchange_answer(struct exchange *x);
bool write_answer_head(struct exchange *x, struct buf *b);
bool exchange_replace(struct exchange *x, int status);
void request_id(struct exchange *x, const struct http_request *r);

/* The response bytes ready for the client after its head: upstream bytes
 * framed in x->uin, an answer's body straight from memory, or a
 * transformed body. Their length; *p points at them. */
static inline size_t ready_span(struct exchange *x, char **p)
{
    struct stage_state *st = x ? x->st : NULL;
    if (st && st->body) {
        *p = (char *)st->body->data + st->body_off;
        return x->is_head ? 0 : st->body->len - st->body_off;
    }
    if (st && st->xform >= 0) {
        *p = st->tout ? buf_head(st->tout) : NULL;
        return st->tout ? buf_len(st->tout) : 0;
    }
    *p = x && x->resp_fwd ? buf_head(x->uin) : NULL;
    return x ? x->resp_fwd : 0;
}

int client_start(struct worker *w, struct client *c, int fd);

#endif
