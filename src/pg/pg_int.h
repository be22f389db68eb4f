/* pg/pg_int.h: the pooler's internals, shared by the files of src/pg/ and
 * by nothing else (the module's interface is pg.h). See pg.c for the map.
 *
 * Threading: everything here belongs to one worker thread, except what
 * struct pg marks as shared (up[], nclients, the reload handshake) and
 * each worker's cancel-key table (keys_mu).
 */
#ifndef PORTICO_PG_INT_H
#define PORTICO_PG_INT_H

#include "pg.h"

#include "conf/conf.h"
#include "core/loop.h"
#include "obs/obs.h"

#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PG_MAX_WORKERS 256
#define OUT_HIGH (1u << 20)         /* pause the other side above this many unsent bytes */
#define PEND_MAX 100000u            /* outstanding requests of one server */
#define TICK_MS 200

struct pgbuf {
    uint8_t *d;
    uint32_t start, end, cap;
    bool oom;
};

enum cstate { CS_LOGIN, CS_AUTH, CS_WELCOME, CS_IDLE, CS_WAITING, CS_ACTIVE, CS_CLOSED, CS_N };
enum sstate { SS_CONNECT, SS_LOGIN, SS_IDLE, SS_ACTIVE, SS_RESET, SS_CLOSED, SS_N };
enum pend_act { PEND_FWD, PEND_DROP, PEND_FAKE };

struct pend {
    char type;                  /* the request: P B D E C S Q F */
    uint8_t act;
    uint64_t id;                /* P: the statement prepared (0: not tracked) */
};

/* A statement text known to a worker (query + parameter types), named
 * P_<id> on every server of that worker that has it prepared. */
struct stmt {
    struct stmt *next;
    uint64_t hash, id;
    uint32_t refs;
    char sname[24];
    uint32_t query_len, rest_len;   /* query without NUL; rest: param count + types */
    uint8_t data[];                 /* query \0 rest */
};

/* One client's name for a statement. */
struct cstmt {
    struct cstmt *next;
    struct stmt *st;
    uint32_t name_len;
    char name[];
};
#define CSTMT_BUCKETS 64

struct param {
    char name[64];
    char *value;
    bool raw;                   /* value is SQL text as the client wrote it, else a string to quote */
};

struct pset {
    struct param *v;
    uint32_t n;
    uint64_t hash;              /* order-independent: equal sets, equal hashes */
};

struct pstats {                 /* one pool of one worker: single writer */
    _Atomic uint32_t cl[CS_N], sv[SS_N];
    obs_counter xacts, queries, bytes_in, bytes_out, wait_timeouts, slow, errors;
    struct obs_hist wait, xact, query;
};

struct worker;
struct client;
struct server;

/* A pool of one worker for one server: w->pools[idx * nservers + sidx].
 * Clients log in to the primary's (their `pool`); a read-only transaction
 * may run in a replica's (their `cur` while it does). */
struct wpool {
    struct worker *w;
    const struct conf_pg_pool *cp;
    uint32_t idx;                   /* conf pool index */
    uint32_t sidx;                  /* conf server index */
    uint32_t size, min, reserve;    /* this worker's share */
    uint32_t nservers;              /* every state but closed */
    struct server *idle;            /* LIFO */
    struct client *wait_head, *wait_tail;
    uint32_t nwait;
    struct pgbuf params;            /* ParameterStatus messages of the first server login */
    bool have_params;
    uint64_t fail_at;               /* ms of the last failed server login */
    bool is_auth;                   /* one of w->apools: runs auth_query, serves no client */
    /* a pool without a password logs in to its servers with what its
     * clients proved (primary entry only): SCRAM keys, or an md5 secret */
    bool have_keys;
    bool no_creds;                  /* a server asked for a password it had none for */
    uint8_t client_key[32], server_key[32];
    char md5[36];
    struct authq_ent *aent;         /* an auth pool: the current lookup or cached secret */
    char fail_msg[256];
    struct pstats st;
};

struct client {
    struct loop_io io;
    struct loop_timer timer;
    struct worker *w;
    struct client *next, *prev;     /* worker's list */
    struct client *wnext, *wprev;   /* pool wait queue */
    struct client *gnext;           /* graveyard / run queue */
    enum cstate state;
    struct pgbuf in, out;
    struct wpool *pool;             /* the pool it logged in to (the primary's) */
    struct wpool *cur;              /* the pool it waits in or has a server from */
    struct server *srv;
    bool can_read, can_write, eof, queued, counted;
    bool hup;                       /* the peer closed (or reset): read until EOF */
    char user[64], db[64];
    uint32_t key_pid, key_secret;
    _Atomic uint64_t cancel_target;  /* server pid << 32 | key of the attached server; 0 none */
    _Atomic uint32_t cancel_server;  /* index in conf servers */
    struct pg_scram_server *scram;
    uint8_t md5_salt[4];
    struct authq_ent *aent;         /* its auth_query lookup (a reference) */
    bool aq_wait;                   /* waiting for that lookup: input is not read */
    struct pset params;
    struct cstmt **stmts;
    uint32_t nstmts;
    uint64_t wait_start_us, xact_start_us, query_start_us;
    char *slow_text;
    uint32_t slow_len;
};

struct server {
    struct loop_io io;
    struct loop_timer timer;
    struct worker *w;
    struct wpool *pool;
    struct server *next, *prev;     /* idle list */
    struct server *anext, *aprev;   /* worker's list of all */
    struct server *gnext;
    enum sstate state;
    struct pgbuf in, out;
    struct client *client;
    uint32_t sidx;                  /* conf server index */
    bool can_read, can_write, connected;
    bool hup;                       /* the peer closed (or reset): read until EOF */
    bool eof;                       /* read EOF: handle what is buffered, then close */
    uint32_t be_pid, be_key;
    struct pend *pend;
    uint32_t phead, pcount, pcap;
    bool skipping;                  /* after an error, until the next Sync is queued */
    uint64_t *prep;                 /* statement ids prepared here, oldest first */
    uint32_t nprep, capprep;
    struct pset params;
    uint64_t created, last_used;
    struct pg_scram_client scram;
    struct authq_ent *aq;           /* the auth_query lookup it runs (a reference) */
    SSL *ssl;
    bool tls_done;
    char tx;                        /* last ReadyForQuery status */
};

struct cancelreq {
    struct loop_io io;
    struct cancelreq *gnext;
    struct cancelreq *anext, *aprev;    /* worker's cancels in flight */
    uint8_t pkt[16];
    struct worker *w;
};

struct listener {
    struct loop_io io;
    struct worker *w;
};

/* A health check of one server: a TCP connect, bounded by a timer. */
struct probe {
    struct loop_io io;
    struct loop_timer timer;
    struct worker *w;
    uint32_t sidx;
    struct probe *gnext;
    struct probe *anext, *aprev;    /* worker's probes in flight */
};

struct pg_user {
    const char *name, *secret;
    struct pg_scram_secret scram;
    bool has_scram;
};

/* auth_query: one lookup of a user's secret on the primary, shared by the
 * clients that log in as that user meanwhile and, once done, cached for
 * auth.cache. Refcounted: its pool (while current), each client that
 * waits for or uses it, and the server connection running it. */
enum aq_state { AQ_PENDING, AQ_DONE, AQ_FAILED };
struct authq_ent {
    uint32_t refs;
    enum aq_state state;
    bool sent;                      /* the query is on a server connection */
    bool known;                     /* a row with a non-NULL secret came back */
    uint64_t expires;               /* loop ms; AQ_DONE */
    char name[64];
    char *secret;
    struct pg_user u;               /* name, secret and SCRAM verifier when known */
};

struct worker {
    struct pg *pg;
    const struct conf_pg *c;        /* the pooler's configuration this worker runs on */
    const struct pg_user *users;    /* and its users (SCRAM verifiers derived) */
    uint32_t nusers;
    atomic_bool adopt_req;          /* a reload waits for this worker to switch */
    uint32_t idx;
    struct loop *loop;
    pthread_t thread;
    struct listener *lis;
    uint32_t nlis;
    struct wpool *pools;            /* [conf pools x conf servers] */
    struct wpool *apools;           /* [conf pools]: auth_query connections; NULL: none */
    uint32_t npools;
    uint32_t rr;                    /* replica choice */
    uint64_t probed_at;             /* worker 0: the last round of health checks */
    struct probe *pgrave, *probes;
    struct cancelreq *cancels;
    struct client *clients;
    struct client *runq, *cgrave;
    struct server *sgrave;
    struct cancelreq *qgrave;
    struct stmt **stmts;            /* hash table */
    uint32_t stmt_buckets;
    uint64_t next_stmt_id;
    uint32_t next_key;
    struct loop_timer tick;
    pthread_mutex_t keys_mu;        /* guards `keys` (cancel lookups from other workers) */
    struct client **keys;
    uint32_t keys_cap;
    bool stopping;
    atomic_bool stop_req;
    struct server *servers;         /* every server connection not closed */
};

struct pg {
    struct conf *conf;
    const struct conf_pg *c;
    struct worker *w;
    uint32_t nw;
    struct pg_user *users;
    uint32_t nusers;
    _Atomic uint32_t nclients;
    SSL_CTX *ssl;
    uint32_t nsrv, primary, nreplicas;
    struct conf_pg_pool *acp;       /* [conf pools]: auth_query's logins (own strings) */
    _Atomic uint8_t *up;            /* per server: 1 healthy; written by any worker */
    /* a reload in progress: what the workers switch to, and how many did */
    pthread_mutex_t reload_mu;
    pthread_cond_t reload_cv;
    const struct conf_pg *next_c;
    const struct pg_user *next_users;
    uint32_t next_nusers, acks;
    double buckets[CONF_MAX_BUCKETS];
    uint32_t nbuckets;
};

/* the running pooler, for the admin thread; guarded by pg_global_mu */
extern pthread_mutex_t pg_global_mu;
extern struct pg *pg_global;

static inline size_t pgb_len(const struct pgbuf *b) { return b->end - b->start; }
static inline uint8_t *pgb_head(const struct pgbuf *b) { return b->d + b->start; }

/* metric writes: one writer per counter (its worker), readers anywhere */
static inline void cnt_add(obs_counter *c, uint64_t v)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + v, memory_order_relaxed);
}

static inline void gauge_add(_Atomic uint32_t *g, int d)
{
    atomic_store_explicit(g, atomic_load_explicit(g, memory_order_relaxed) + (uint32_t)d,
                          memory_order_relaxed);
}

/* buf.c: growable byte buffers, message writing, sockets */
void pgb_consume(struct pgbuf *b, size_t n);
void pgb_put(struct pgbuf *b, const void *p, size_t n);
void pgb_trim(struct pgbuf *b);
void pgb_free(struct pgbuf *b);
void pgb_u32(struct pgbuf *b, uint32_t v);
void pgb_str(struct pgbuf *b, const char *s);
size_t pgb_begin(struct pgbuf *b, char type);
void pgb_end(struct pgbuf *b, size_t off);
void pgb_error(struct pgbuf *b, const char *severity, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
uint64_t pg_now_us(void);
void pg_set_nodelay(int fd);
int pg_sock_read(int fd, SSL *ssl, struct pgbuf *b, bool *can_read, bool hup, size_t limit);
size_t pg_want_bytes(const struct pgbuf *b, size_t base);
int pg_sock_write(int fd, SSL *ssl, struct pgbuf *b, bool *can_write);

/* track.c: transaction-mode bookkeeping: parameter sets, prepared statements, outstanding responses */
void pg_pset_clear(struct pset *ps);
bool pg_pset_put(struct pset *ps, const char *name, const char *value, size_t vlen, bool raw);
bool pg_pset_copy(struct pset *dst, const struct pset *src);
const struct param *pg_pset_get(const struct pset *ps, const char *name);
void pg_pset_diff_sql(struct pgbuf *q, const struct pset *want, const struct pset *have);
struct stmt *pg_stmt_get(struct worker *w, const char *query, size_t qlen,
                             const uint8_t *rest, size_t rlen);
void pg_stmt_put(struct worker *w, struct stmt *s);
struct stmt *pg_cstmt_find(struct client *c, const char *name, size_t len);
bool pg_cstmt_set(struct client *c, const char *name, size_t len, struct stmt *st);
void pg_cstmt_del(struct client *c, const char *name, size_t len);
void pg_cstmt_clear(struct client *c);
bool pg_server_has(const struct server *s, uint64_t id);
void pg_server_forget(struct server *s, uint64_t id);
bool pg_pend_push_id(struct server *s, char type, uint8_t act, uint64_t id);
bool pg_pend_push(struct server *s, char type, uint8_t act);
struct pend *pg_pend_head(struct server *s);
void pg_pend_pop(struct server *s);
void pg_pend_fakes(struct server *s);

/* server.c: server connections: connect, TLS, login, I/O, close */
void pg_pool_open_server(struct wpool *p);
void pg_server_ready(struct server *s);
void pg_server_pump(struct server *s);
void pg_server_flush(struct server *s);
void pg_server_unidle(struct server *s);
void pg_server_close(struct server *s, const char *why);
void pg_server_free(struct server *s);
void pg_server_check(struct server *s);
const char *pg_error_text(const struct pg_msg *m);

/* relay.c: messages between a client and its server (transaction mode rewriting) */
bool pg_server_client_msg(struct server *s, const struct pg_msg *m, size_t whole);
bool pg_client_msg_active(struct client *c, const struct pg_msg *m, size_t whole);

/* pool.c: connection states, pools, the wait queue, routing */
void pg_client_state(struct client *c, enum cstate s);
void pg_server_state(struct server *s, enum sstate st);
void pg_pool_reroute_waiters(struct wpool *p);
void pg_pool_fail_waiters(struct wpool *p, const char *msg);
void pg_wait_remove(struct client *c);
void pg_pool_release(struct server *s);
bool pg_pool_acquire(struct client *c, struct wpool *p);
void pg_runq_push(struct client *c);
struct wpool *pg_find_pool(struct worker *w, const char *db, const char *user);
struct wpool *pg_route(struct client *c, const struct pg_msg *m);
bool pg_pool_has_credentials(const struct wpool *p);

/* client.c: client connections: accept, read, process, write, close */
void pg_client_flush(struct client *c);
void pg_client_close(struct client *c, const char *why);
void pg_client_free(struct client *c);
void pg_client_fatal(struct client *c, const char *code, const char *msg);
void pg_client_pump(struct client *c);
void pg_listener_io(struct loop *l, struct loop_io *io, unsigned ev);

/* login.c: a client logging in: startup packet, authentication, welcome */
void pg_send_welcome(struct client *c);
void pg_client_startup(struct client *c, const struct pg_startup *st);
void pg_client_auth_msg(struct client *c, const struct pg_msg *m);

/* cancel.c: cancel keys and forwarding CancelRequest to the right server */
void pg_keys_put(struct worker *w, struct client *c, bool add);
bool pg_keys_alloc(struct worker *w, struct client *c);
void pg_cancel_done(struct loop *l, struct cancelreq *q);
void pg_cancel_forward(struct worker *w, uint32_t pid, uint32_t key);

/* stats.c: the figures: histograms, Prometheus metrics, GET /pools */
void pg_hist_add(const struct pg *pg, struct obs_hist *h, uint64_t us);

/* authq.c: looking up the secret of a user the auth file lacks */
bool pg_authq_lookup(struct client *c);
void pg_authq_unref(struct authq_ent *e);
bool pg_authq_send(struct server *s);
bool pg_authq_msg(struct server *s, const struct pg_msg *m);
void pg_authq_server_gone(struct server *s, const char *why);
void pg_authq_pool_failed(struct wpool *p, const char *why);
bool pg_authq_setup(struct pg *pg, char *err, size_t errlen);
bool pg_authq_worker(struct worker *w);
void pg_authq_free(struct pg *pg, struct worker *w);
/* login.c */
void pg_login_challenge(struct client *c);

#endif
