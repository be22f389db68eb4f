/* pg/pg.c: the pooler at run time: workers, client and server connections,
 * pools, the wait queue, transaction-mode bookkeeping (outstanding
 * responses, prepared statements, session parameters), cancel forwarding
 * and the figures. See pg.h for the threading contract.
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
#include "pg.h"

#include "conf/conf.h"
#include "core/log.h"
#include "core/loop.h"
#include "obs/obs.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PG_MAX_WORKERS 256
#define OUT_HIGH (1u << 20)         /* pause the other side above this many unsent bytes */
#define PEND_MAX 100000u            /* outstanding requests of one server */
#define TICK_MS 200

/* ------------------------------------------------------------------ */
/* growable byte buffers                                               */

struct pgbuf {
    uint8_t *d;
    uint32_t start, end, cap;
    bool oom;
};

static inline size_t pb_len(const struct pgbuf *b) { return b->end - b->start; }
static inline uint8_t *pb_head(const struct pgbuf *b) { return b->d + b->start; }

static bool pb_reserve(struct pgbuf *b, size_t n)
{
    if (b->cap - b->end >= n)
        return true;
    if (b->start) {
        memmove(b->d, b->d + b->start, b->end - b->start);
        b->end -= b->start;
        b->start = 0;
        if (b->cap - b->end >= n)
            return true;
    }
    size_t need = (size_t)b->end + n, cap = b->cap ? b->cap : 8192;
    if (need > (size_t)PG_MAX_MSG + (4u << 20)) {
        b->oom = true;
        return false;
    }
    while (cap < need)
        cap *= 2;
    uint8_t *d = realloc(b->d, cap);
    if (!d) {
        b->oom = true;
        return false;
    }
    b->d = d;
    b->cap = (uint32_t)cap;
    return true;
}

static void pb_consume(struct pgbuf *b, size_t n)
{
    b->start += (uint32_t)n;
    if (b->start == b->end)
        b->start = b->end = 0;
}

static void pb_put(struct pgbuf *b, const void *p, size_t n)
{
    if (!pb_reserve(b, n))
        return;
    memcpy(b->d + b->end, p, n);
    b->end += (uint32_t)n;
}

/* Free the memory of an empty buffer that grew large (idle clients stay small). */
static void pb_trim(struct pgbuf *b)
{
    if (b->start == b->end && b->cap > 65536) {
        free(b->d);
        b->d = NULL;
        b->cap = b->start = b->end = 0;
    }
}

static void pb_free(struct pgbuf *b)
{
    free(b->d);
    memset(b, 0, sizeof *b);
}

static void pb_u32(struct pgbuf *b, uint32_t v)
{
    uint8_t x[4] = { (uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v };
    pb_put(b, x, 4);
}

static void pb_str(struct pgbuf *b, const char *s) { pb_put(b, s, strlen(s) + 1); }

/* Start a typed message; returns the offset of its length field. */
static size_t pb_begin(struct pgbuf *b, char type)
{
    pb_put(b, &type, 1);
    size_t off = b->end;
    pb_u32(b, 0);
    return off;
}

static void pb_end(struct pgbuf *b, size_t off)
{
    if (b->oom)
        return;
    uint32_t len = b->end - (uint32_t)off;
    b->d[off] = (uint8_t)(len >> 24);
    b->d[off + 1] = (uint8_t)(len >> 16);
    b->d[off + 2] = (uint8_t)(len >> 8);
    b->d[off + 3] = (uint8_t)len;
}

static void pb_error(struct pgbuf *b, const char *severity, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void pb_error(struct pgbuf *b, const char *severity, const char *code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    size_t o = pb_begin(b, 'E');
    pb_put(b, "S", 1);
    pb_str(b, severity);
    pb_put(b, "V", 1);
    pb_str(b, severity);
    pb_put(b, "C", 1);
    pb_str(b, code);
    pb_put(b, "M", 1);
    pb_str(b, msg);
    pb_put(b, "", 1);
    pb_end(b, o);
}

/* ------------------------------------------------------------------ */
/* objects                                                             */

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
    uint32_t be_pid, be_key;
    struct pend *pend;
    uint32_t phead, pcount, pcap;
    bool skipping;                  /* after an error, until the next Sync is queued */
    uint64_t *prep;                 /* statement ids prepared here, oldest first */
    uint32_t nprep, capprep;
    struct pset params;
    uint64_t created, last_used;
    struct pg_scram_client scram;
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

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static struct pg *g_pg;

/* ------------------------------------------------------------------ */
/* figures                                                             */

static inline void cnt_add(obs_counter *c, uint64_t v)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + v, memory_order_relaxed);
}

static inline void gauge_add(_Atomic uint32_t *g, int d)
{
    atomic_store_explicit(g, atomic_load_explicit(g, memory_order_relaxed) + (uint32_t)d,
                          memory_order_relaxed);
}

static void hist_add(const struct pg *pg, struct obs_hist *h, uint64_t us)
{
    double s = (double)us / 1e6;
    uint32_t i = 0;
    while (i < pg->nbuckets && s > pg->buckets[i])
        i++;
    cnt_add(&h->bucket[i], 1);
    cnt_add(&h->sum_us, us);
    cnt_add(&h->count, 1);
}

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void client_state(struct client *c, enum cstate s)
{
    if (c->pool && c->counted)
        gauge_add(&c->pool->st.cl[c->state], -1);
    c->state = s;
    if (c->pool) {
        gauge_add(&c->pool->st.cl[s], 1);
        c->counted = true;
    }
}

static void server_state(struct server *s, enum sstate st)
{
    gauge_add(&s->pool->st.sv[s->state], -1);
    s->state = st;
    gauge_add(&s->pool->st.sv[st], 1);
}

/* ------------------------------------------------------------------ */
/* parameter sets                                                      */

static uint64_t fnv(const void *p, size_t n, uint64_t h)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 1099511628211ull;
    }
    return h;
}

static void pset_rehash(struct pset *ps)
{
    uint64_t h = 0;
    for (uint32_t i = 0; i < ps->n; i++) {
        uint64_t e = fnv(ps->v[i].name, strlen(ps->v[i].name) + 1, 14695981039346656037ull);
        e = fnv(ps->v[i].value, strlen(ps->v[i].value), e);
        e = fnv(&ps->v[i].raw, 1, e);
        h += e * 0x9E3779B97F4A7C15ull;
    }
    ps->hash = h;
}

static void pset_clear(struct pset *ps)
{
    for (uint32_t i = 0; i < ps->n; i++)
        free(ps->v[i].value);
    free(ps->v);
    ps->v = NULL;
    ps->n = 0;
    ps->hash = 0;
}

/* Set (value != NULL) or remove a parameter. false when out of memory. */
static bool pset_put(struct pset *ps, const char *name, const char *value, size_t vlen, bool raw)
{
    uint32_t i = 0;
    while (i < ps->n && strcmp(ps->v[i].name, name))
        i++;
    if (!value) {
        if (i < ps->n) {
            free(ps->v[i].value);
            ps->v[i] = ps->v[--ps->n];
        }
        pset_rehash(ps);
        return true;
    }
    char *v = strndup(value, vlen);
    if (!v)
        return false;
    if (i == ps->n) {
        if (ps->n >= 64) {
            free(v);
            return false;
        }
        struct param *nv = realloc(ps->v, (ps->n + 1) * sizeof *nv);
        if (!nv) {
            free(v);
            return false;
        }
        ps->v = nv;
        snprintf(ps->v[ps->n].name, sizeof ps->v[0].name, "%s", name);
        ps->v[ps->n].value = NULL;
        ps->n++;
    }
    free(ps->v[i].value);
    ps->v[i].value = v;
    ps->v[i].raw = raw;
    pset_rehash(ps);
    return true;
}

static bool pset_copy(struct pset *dst, const struct pset *src)
{
    pset_clear(dst);
    for (uint32_t i = 0; i < src->n; i++)
        if (!pset_put(dst, src->v[i].name, src->v[i].value, strlen(src->v[i].value), src->v[i].raw))
            return false;
    return true;
}

static const struct param *pset_get(const struct pset *ps, const char *name)
{
    for (uint32_t i = 0; i < ps->n; i++)
        if (!strcmp(ps->v[i].name, name))
            return &ps->v[i];
    return NULL;
}

/* The SQL that makes a server's parameters the client's: SETs and RESETs. */
static void pset_diff_sql(struct pgbuf *q, const struct pset *want, const struct pset *have)
{
    for (uint32_t i = 0; i < want->n; i++) {
        const struct param *p = &want->v[i];
        const struct param *h = pset_get(have, p->name);
        if (h && h->raw == p->raw && !strcmp(h->value, p->value))
            continue;
        pb_put(q, "SET ", 4);
        pb_put(q, p->name, strlen(p->name));
        pb_put(q, " = ", 3);
        if (p->raw) {
            pb_put(q, p->value, strlen(p->value));
        } else {
            pb_put(q, "'", 1);
            for (const char *s = p->value; *s; s++)
                pb_put(q, s, *s == '\'' ? 0 : 1), *s == '\'' ? pb_put(q, "''", 2) : (void)0;
            pb_put(q, "'", 1);
        }
        pb_put(q, ";", 1);
    }
    for (uint32_t i = 0; i < have->n; i++) {
        if (pset_get(want, have->v[i].name))
            continue;
        pb_put(q, "RESET ", 6);
        pb_put(q, have->v[i].name, strlen(have->v[i].name));
        pb_put(q, ";", 1);
    }
}

/* ------------------------------------------------------------------ */
/* prepared statements                                                 */

static struct stmt *stmt_get(struct worker *w, const char *query, size_t qlen,
                             const uint8_t *rest, size_t rlen)
{
    uint64_t h = fnv(query, qlen, 14695981039346656037ull);
    h = fnv(rest, rlen, h);
    if (!w->stmts) {
        w->stmt_buckets = 1024;
        if (!(w->stmts = calloc(w->stmt_buckets, sizeof *w->stmts)))
            return NULL;
    }
    struct stmt **b = &w->stmts[h & (w->stmt_buckets - 1)];
    for (struct stmt *s = *b; s; s = s->next)
        if (s->hash == h && s->query_len == qlen && s->rest_len == rlen &&
            !memcmp(s->data, query, qlen) && !memcmp(s->data + qlen + 1, rest, rlen)) {
            s->refs++;
            return s;
        }
    struct stmt *s = malloc(sizeof *s + qlen + 1 + rlen);
    if (!s)
        return NULL;
    s->hash = h;
    s->id = ++w->next_stmt_id;
    s->refs = 1;
    s->query_len = (uint32_t)qlen;
    s->rest_len = (uint32_t)rlen;
    memcpy(s->data, query, qlen);
    s->data[qlen] = 0;
    memcpy(s->data + qlen + 1, rest, rlen);
    snprintf(s->sname, sizeof s->sname, "P_%" PRIx64, s->id);
    s->next = *b;
    *b = s;
    return s;
}

static void stmt_put(struct worker *w, struct stmt *s)
{
    if (--s->refs)
        return;
    struct stmt **b = &w->stmts[s->hash & (w->stmt_buckets - 1)];
    while (*b != s)
        b = &(*b)->next;
    *b = s->next;
    free(s);
}

static struct cstmt **cstmt_slot(struct client *c, const char *name, size_t len)
{
    uint64_t h = fnv(name, len, 14695981039346656037ull);
    struct cstmt **b = &c->stmts[h % CSTMT_BUCKETS];
    while (*b && !((*b)->name_len == len && !memcmp((*b)->name, name, len)))
        b = &(*b)->next;
    return b;
}

static struct stmt *cstmt_find(struct client *c, const char *name, size_t len)
{
    if (!c->stmts)
        return NULL;
    struct cstmt *e = *cstmt_slot(c, name, len);
    return e ? e->st : NULL;
}

static bool cstmt_set(struct client *c, const char *name, size_t len, struct stmt *st)
{
    if (!c->stmts && !(c->stmts = calloc(CSTMT_BUCKETS, sizeof *c->stmts)))
        return false;
    struct cstmt **b = cstmt_slot(c, name, len);
    if (*b) {
        stmt_put(c->w, (*b)->st);
        (*b)->st = st;
        return true;
    }
    struct cstmt *e = malloc(sizeof *e + len);
    if (!e)
        return false;
    e->next = NULL;
    e->st = st;
    e->name_len = (uint32_t)len;
    memcpy(e->name, name, len);
    *b = e;
    c->nstmts++;
    return true;
}

static void cstmt_del(struct client *c, const char *name, size_t len)
{
    if (!c->stmts)
        return;
    struct cstmt **b = cstmt_slot(c, name, len);
    struct cstmt *e = *b;
    if (!e)
        return;
    *b = e->next;
    stmt_put(c->w, e->st);
    free(e);
    c->nstmts--;
}

static void cstmt_clear(struct client *c)
{
    if (!c->stmts)
        return;
    for (int i = 0; i < CSTMT_BUCKETS; i++)
        for (struct cstmt *e = c->stmts[i], *n; e; e = n) {
            n = e->next;
            stmt_put(c->w, e->st);
            free(e);
        }
    free(c->stmts);
    c->stmts = NULL;
    c->nstmts = 0;
}

static bool server_has(const struct server *s, uint64_t id)
{
    for (uint32_t i = s->nprep; i-- > 0;)
        if (s->prep[i] == id)
            return true;
    return false;
}

static void server_forget(struct server *s, uint64_t id)
{
    for (uint32_t i = 0; i < s->nprep; i++)
        if (s->prep[i] == id) {
            memmove(&s->prep[i], &s->prep[i + 1], (s->nprep - i - 1) * sizeof *s->prep);
            s->nprep--;
            return;
        }
}

/* ------------------------------------------------------------------ */
/* forward declarations                                                */

static void client_close(struct client *c, const char *why);
static void server_close(struct server *s, const char *why);
static void client_pump(struct client *c);
static void client_flush(struct client *c);
static void server_flush(struct server *s);
static void server_pump(struct server *s);
static void pool_release(struct server *s);
static void pool_open_server(struct wpool *p);
static void runq_push(struct client *c);

/* ------------------------------------------------------------------ */
/* outstanding responses                                               */

static bool pend_push_id(struct server *s, char type, uint8_t act, uint64_t id)
{
    if (s->skipping && type != 'S')
        return true;            /* the server discards it: no answer will come */
    if (type == 'S')
        s->skipping = false;
    if (s->pcount == s->pcap) {
        if (s->pcap >= PEND_MAX)
            return false;
        uint32_t cap = s->pcap ? s->pcap * 2 : 16;
        struct pend *n = malloc(cap * sizeof *n);
        if (!n)
            return false;
        for (uint32_t i = 0; i < s->pcount; i++)
            n[i] = s->pend[(s->phead + i) % s->pcap];
        free(s->pend);
        s->pend = n;
        s->pcap = cap;
        s->phead = 0;
    }
    s->pend[(s->phead + s->pcount) % s->pcap] = (struct pend){ type, act, id };
    s->pcount++;
    return true;
}

static bool pend_push(struct server *s, char type, uint8_t act) { return pend_push_id(s, type, act, 0); }

static struct pend *pend_head(struct server *s) { return s->pcount ? &s->pend[s->phead] : NULL; }

static void server_forget(struct server *s, uint64_t id);

static void pend_pop(struct server *s)
{
    s->phead = (s->phead + 1) % s->pcap;
    s->pcount--;
}

/* Answer the faked requests at the head of the queue (nothing is before them). */
static void pend_fakes(struct server *s)
{
    struct pend *h;
    while ((h = pend_head(s)) && h->act == PEND_FAKE) {
        if (s->client) {
            char t = h->type == 'P' ? '1' : '3';
            uint8_t m[5] = { (uint8_t)t, 0, 0, 0, 4 };
            pb_put(&s->client->out, m, 5);
        }
        pend_pop(s);
    }
}

/* ------------------------------------------------------------------ */
/* sockets                                                             */

static void set_nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* Read what is there into b (growing for a message in progress). 1: got
 * bytes or nothing yet (EAGAIN), 0: EOF, -1: error. */
static int sock_read(int fd, SSL *ssl, struct pgbuf *b, bool *can_read, bool hup, size_t limit)
{
    while (*can_read && pb_len(b) < limit) {
        if (!pb_reserve(b, 16384))
            return -1;
        size_t room = b->cap - b->end;
        ssize_t n;
        if (ssl) {
            ERR_clear_error();
            int r = SSL_read(ssl, b->d + b->end, (int)(room > INT32_MAX ? INT32_MAX : room));
            if (r <= 0) {
                int e = SSL_get_error(ssl, r);
                if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                    *can_read = false;
                    return 1;
                }
                return e == SSL_ERROR_ZERO_RETURN ? 0 : -1;
            }
            n = r;
        } else {
            n = read(fd, b->d + b->end, room);
            if (n < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK) {
                    *can_read = false;
                    return 1;
                }
                if (errno == EINTR)
                    continue;
                return -1;
            }
            if (n == 0)
                return 0;
        }
        b->end += (uint32_t)n;
        if ((size_t)n < room && !ssl && !hup) {
            /* a short read: the socket is drained (edge-triggered). Not when
             * the peer closed: its FIN came with the same edge as the data,
             * and no other edge will tell us to read the EOF */
            *can_read = false;
            return 1;
        }
    }
    return 1;
}

/* How much to hold before processing: `base`, or the whole of a larger
 * message whose head is already in b. */
static size_t want_bytes(const struct pgbuf *b, size_t base)
{
    if (pb_len(b) < 5)
        return base;
    const uint8_t *h = pb_head(b);
    size_t ml = ((size_t)h[1] << 24 | (size_t)h[2] << 16 | (size_t)h[3] << 8 | h[4]) + 1;
    return ml > base ? ml : base;
}

/* Write what b holds. 0: all or blocked, -1: error. */
static int sock_write(int fd, SSL *ssl, struct pgbuf *b, bool *can_write)
{
    while (pb_len(b) && *can_write) {
        ssize_t n;
        if (ssl) {
            ERR_clear_error();
            size_t len = pb_len(b);
            int r = SSL_write(ssl, pb_head(b), (int)(len > INT32_MAX ? INT32_MAX : len));
            if (r <= 0) {
                int e = SSL_get_error(ssl, r);
                if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                    *can_write = false;
                    return 0;
                }
                return -1;
            }
            n = r;
        } else {
            n = send(fd, pb_head(b), pb_len(b), MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK) {
                    *can_write = false;
                    return 0;
                }
                if (errno == EINTR)
                    continue;
                return -1;
            }
        }
        pb_consume(b, (size_t)n);
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* servers                                                             */

static const struct conf_pg_server *server_conf(const struct server *s)
{
    return &s->w->c->servers[s->sidx];
}

static void server_timer(struct loop *l, struct loop_timer *t);
static void server_io(struct loop *l, struct loop_io *io, unsigned ev);

static bool pool_acquire(struct client *c, struct wpool *p);
static void wait_remove(struct client *c);

static void pool_reroute_waiters(struct wpool *p)
{
    struct wpool *home = &p->w->pools[p->idx * p->w->pg->nsrv + p->w->pg->primary];
    while (p->wait_head) {
        struct client *c = p->wait_head;
        wait_remove(c);
        if (pool_acquire(c, home))
            runq_push(c);
    }
}

static void pool_fail_waiters(struct wpool *p, const char *msg)
{
    while (p->wait_head) {
        struct client *c = p->wait_head;
        pb_error(&c->out, "FATAL", "08006", "%s", msg);
        client_flush(c);
        client_close(c, "server unavailable");
    }
    for (struct client *c = p->w->clients, *n; c; c = n) {
        n = c->next;
        if (c->pool == p && c->state == CS_WELCOME) {
            pb_error(&c->out, "FATAL", "08006", "%s", msg);
            client_flush(c);
            client_close(c, "server unavailable");
        }
    }
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
    if (login)
        atomic_store_explicit(&s->w->pg->up[s->sidx], 0, memory_order_relaxed);
    server_close(s, msg);
    if (login && p->nservers == 0) {
        if (p->sidx != s->w->pg->primary)
            pool_reroute_waiters(p);    /* a replica failed: the primary serves its clients */
        else
            pool_fail_waiters(p, msg);  /* nothing else will serve them: tell them */
    }
}

static void pool_open_server(struct wpool *p)
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
    set_nodelay(fd);
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
    pb_u32(b, 0);
    pb_u32(b, 196608);
    pb_str(b, "user");
    pb_str(b, cp->user);
    pb_str(b, "database");
    pb_str(b, cp->database);
    pb_put(b, "", 1);
    if (!b->oom) {
        uint32_t len = b->end - (uint32_t)off;
        b->d[off] = (uint8_t)(len >> 24);
        b->d[off + 1] = (uint8_t)(len >> 16);
        b->d[off + 2] = (uint8_t)(len >> 8);
        b->d[off + 3] = (uint8_t)len;
    }
    server_state(s, SS_LOGIN);
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
static void server_ready(struct server *s)
{
    loop_timer_stop(s->w->loop, &s->timer);
    s->client = NULL;
    s->pcount = 0;
    s->skipping = false;
    pool_release(s);
}

/* Messages of a server that has no client (login, reset, idle). */
static bool server_login_msg(struct server *s, const struct pg_msg *m)
{
    struct wpool *p = s->pool;
    struct pg_rd r = pg_rd(m->body, m->len);
    char err[300];
    switch (m->type) {
    case 'R': {
        uint32_t code = pg_rd_u32(&r);
        const char *pw = p->cp->password;
        if (r.bad) {
            server_fail(s, "malformed authentication request");
            return false;
        }
        if (code == 0)
            return true;
        if (!pw && code != 0) {
            server_fail(s, "the server asks for a password and none is configured for this pool");
            return false;
        }
        if (code == 3) {
            size_t o = pb_begin(&s->out, 'p');
            pb_str(&s->out, pw);
            pb_end(&s->out, o);
        } else if (code == 5) {
            const uint8_t *salt = pg_rd_bytes(&r, 4);
            if (!salt) {
                server_fail(s, "malformed md5 request");
                return false;
            }
            char resp[36];
            pg_md5_response(pw, p->cp->user, salt, resp);
            size_t o = pb_begin(&s->out, 'p');
            pb_str(&s->out, resp);
            pb_end(&s->out, o);
        } else if (code == 10) {
            bool have = false;
            const char *mech;
            size_t ml;
            while ((mech = pg_rd_str(&r, &ml)) && ml)
                have |= !strcmp(mech, "SCRAM-SHA-256");
            if (!have) {
                server_fail(s, "the server offers no SASL mechanism portico knows");
                return false;
            }
            char first[200];
            int n = pg_scram_client_first(&s->scram, first, sizeof first);
            if (n < 0) {
                server_fail(s, "SCRAM failed");
                return false;
            }
            size_t o = pb_begin(&s->out, 'p');
            pb_str(&s->out, "SCRAM-SHA-256");
            pb_u32(&s->out, (uint32_t)n);
            pb_put(&s->out, first, (size_t)n);
            pb_end(&s->out, o);
        } else if (code == 11) {
            char fin[400];
            int n = pg_scram_client_final(&s->scram, pw, (const char *)m->body + 4, m->len - 4,
                                          fin, sizeof fin);
            if (n < 0) {
                server_fail(s, "malformed SCRAM server-first-message");
                return false;
            }
            size_t o = pb_begin(&s->out, 'p');
            pb_put(&s->out, fin, (size_t)n);
            pb_end(&s->out, o);
        } else if (code == 12) {
            if (!pg_scram_client_check(&s->scram, (const char *)m->body + 4, m->len - 4)) {
                server_fail(s, "the server's SCRAM signature is wrong");
                return false;
            }
        } else {
            snprintf(err, sizeof err, "unsupported authentication method %u", code);
            server_fail(s, err);
            return false;
        }
        return true;
    }
    case 'S':
        if (s->state == SS_LOGIN && !p->have_params)
            pb_put(&p->params, m->body - 5, m->len + 5);
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
                    runq_push(c);
        }
        if (s->tx != 'I') {
            server_close(s, "not idle after login or reset");
            return false;
        }
        if (s->state == SS_LOGIN)
            atomic_store_explicit(&s->w->pg->up[s->sidx], 1, memory_order_relaxed);
        server_ready(s);
        return false;
    case 'E': {
        const char *msg = "error";
        for (;;) {
            uint8_t f = pg_rd_u8(&r);
            if (r.bad || f == 0)
                break;
            const char *v = pg_rd_str(&r, NULL);
            if (f == 'M' && v)
                msg = v;
        }
        snprintf(err, sizeof err, "server error: %s", msg);
        if (s->state == SS_RESET) {
            server_close(s, err);
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
        server_close(s, "unexpected message");
        return false;
    }
}

/* ------------------------------------------------------------------ */
/* server -> client                                                    */

static void slow_log(struct client *c, uint64_t us)
{
    const struct conf_pg *cf = c->w->c;
    if (!cf->slow_query || us < cf->slow_query * 1000)
        return;
    cnt_add(&c->pool->st.slow, 1);
    /* the statement only: parameters travel in Bind and are never logged */
    char text[1024];
    size_t n = 0;
    for (uint32_t i = 0; i < c->slow_len && n + 2 < sizeof text; i++) {
        unsigned char ch = (unsigned char)c->slow_text[i];
        text[n++] = ch < 0x20 || ch == 0x7f ? ' ' : ch == '"' ? '\'' : (char)ch;
    }
    text[n] = '\0';
    /* its own limit: a burst of slow queries must not hide other warnings */
    static struct log_rl slow_rl = LOG_RL_INIT("pg slow query", 100);
    log_rl_msg(&slow_rl, LOG_WARN, "pg: slow query: pool=%s/%s duration_ms=%.1f statement=\"%s%s\"", c->pool->cp->database,
             c->pool->cp->user, (double)us / 1000.0, text,
             c->slow_len >= cf->slow_query_max_chars ? "..." : "");
}

static void note_statement(struct client *c, const char *q, size_t len)
{
    const struct conf_pg *cf = c->w->c;
    if (!cf->slow_query)
        return;
    if (len > cf->slow_query_max_chars)
        len = cf->slow_query_max_chars;
    char *t = realloc(c->slow_text, len ? len : 1);
    if (!t)
        return;
    memcpy(t, q, len);
    c->slow_text = t;
    c->slow_len = (uint32_t)len;
}

/* One message from a server that serves a client. false: stop (the server
 * or the client went away, or the server went back to the pool). */
static bool server_client_msg(struct server *s, const struct pg_msg *m, size_t whole)
{
    struct client *c = s->client;
    struct pend *h = pend_head(s);
    bool drop = h && h->act == PEND_DROP;
    bool done = false;          /* the head request is answered */
    char t = m->type;
    if (!h) {
        /* nothing asked: asynchronous messages only (notices, parameters,
         * notifications), or a server that is going away */
        if (t == 'N' || t == 'S' || t == 'A') {
            pb_put(&c->out, m->body - 5, whole);
            return true;
        }
        if (t == 'E') {
            pb_put(&c->out, m->body - 5, whole);
            return true;
        }
        server_close(s, "unexpected message from the server");
        return false;
    }
    switch (t) {
    case '1': done = h->type == 'P'; break;
    case '2': done = h->type == 'B'; break;
    case '3': done = h->type == 'C'; break;
    case 'T':
    case 'n': done = h->type == 'D'; break;
    case 'C':
    case 'I':
    case 's': done = h->type == 'E'; break;
    case 'V': done = false; break;
    case 'Z': done = true; break;
    case 'E':
        if (h->type == 'Q' || h->type == 'F' || h->type == 'S') {
            drop = drop && h->type == 'Q';
            break;
        }
        /* an error in an extended-protocol batch: the server skips to
         * Sync, so the statements of Parses up to there were not made */
        do {
            if (h->type == 'P' && h->id)
                server_forget(s, h->id);
            pend_pop(s);
        } while ((h = pend_head(s)) && h->type != 'S');
        if (!h)
            s->skipping = true;
        pb_put(&c->out, m->body - 5, whole);
        return true;
    default:
        break;
    }
    if (!drop)
        pb_put(&c->out, m->body - 5, whole);
    if (!done)
        return true;
    char htype = h->type;
    pend_pop(s);
    if (t == 'Z') {
        s->tx = m->len >= 1 ? (char)m->body[0] : 'I';
        if (htype != 'Q' || !drop) {
            uint64_t now = now_us();
            uint64_t us = now - c->query_start_us;
            hist_add(s->w->pg, &c->pool->st.query, us);
            cnt_add(&c->pool->st.queries, 1);
            slow_log(c, us);
            c->query_start_us = now;
        }
        if (s->tx == 'I' && s->pcount == 0 && c->pool->cp->mode == CONF_PG_TRANSACTION) {
            uint64_t us = now_us() - c->xact_start_us;
            hist_add(s->w->pg, &c->pool->st.xact, us);
            cnt_add(&c->pool->st.xacts, 1);
            c->srv = NULL;
            atomic_store_explicit(&c->cancel_target, 0, memory_order_relaxed);
            client_state(c, CS_IDLE);
            s->client = NULL;
            s->last_used = loop_now(s->w->loop);
            pool_release(s);
            if (pb_len(&c->in) || c->can_read)
                runq_push(c);       /* it may have the next request buffered */
            return false;
        }
    }
    pend_fakes(s);
    return true;
}

/* Read and handle what the server sent; the client gets what is for it in
 * one write at the end (not one per message). */
static void server_pump(struct server *s)
{
    struct client *last = NULL;
    for (;;) {
        if (s->state == SS_CLOSED)
            goto out;
        struct client *c = s->client;
        if (c && pb_len(&c->out) >= OUT_HIGH) {
            client_flush(c);
            if (c->state == CS_CLOSED || pb_len(&c->out) >= OUT_HIGH)
                break;          /* the client is slow: stop reading this server */
        }
        struct pg_msg m;
        long n = pg_msg_next(pb_head(&s->in), pb_len(&s->in), PG_MAX_MSG, &m);
        if (n < 0) {
            server_close(s, "malformed message from the server");
            goto out;
        }
        if (n == 0) {
            pb_trim(&s->in);
            int r = sock_read(s->io.fd, s->ssl, &s->in, &s->can_read, s->hup, want_bytes(&s->in, 1u << 20));
            if (r <= 0) {
                server_fail(s, r == 0 ? "the server closed the connection" : "read error");
                goto out;
            }
            if (pg_msg_next(pb_head(&s->in), pb_len(&s->in), PG_MAX_MSG, &m) == 0)
                break;
            continue;
        }
        bool go;
        if (s->state == SS_ACTIVE && c) {
            last = c;
            cnt_add(&c->pool->st.bytes_out, (uint64_t)n);
            go = server_client_msg(s, &m, (size_t)n);
        } else {
            go = server_login_msg(s, &m);
        }
        if (s->state != SS_CLOSED)
            pb_consume(&s->in, (size_t)n);
        if (s->state == SS_CLOSED)
            goto out;
        if (!go)
            break;              /* back in the pool, or given to another client */
    }
    server_flush(s);
out:
    if (last && last->state != CS_CLOSED)
        client_flush(last);
}

static void server_flush(struct server *s)
{
    if (s->state == SS_CLOSED || s->state == SS_CONNECT || (s->ssl && !s->tls_done))
        return;
    if (s->out.oom) {
        server_close(s, "out of memory");
        return;
    }
    if (sock_write(s->io.fd, s->ssl, &s->out, &s->can_write) < 0) {
        server_fail(s, "write error");
        return;
    }
    pb_trim(&s->out);
    /* the client was paused while this server's output was full */
    if (s->client && pb_len(&s->out) < OUT_HIGH && pb_len(&s->client->in))
        runq_push(s->client);
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
            pb_put(&s->out, req, 8);
            if (send(io->fd, req, 8, MSG_NOSIGNAL) != 8) {
                server_fail(s, "write error");
                return;
            }
            s->out.start = s->out.end = 0;
            server_state(s, SS_LOGIN);
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
    server_flush(s);
    if (s->state != SS_CLOSED && s->can_read)
        server_pump(s);
}

static void server_timer(struct loop *l, struct loop_timer *t)
{
    (void)l;
    struct server *s = (struct server *)((char *)t - offsetof(struct server, timer));
    if (s->state == SS_CONNECT || s->state == SS_LOGIN)
        server_fail(s, "connect or login timed out");
    else if (s->state == SS_RESET)
        server_close(s, "reset timed out");
}

static void server_unidle(struct server *s)
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

static void server_close(struct server *s, const char *why)
{
    if (s->state == SS_CLOSED)
        return;
    log_debug("pg: server %s closed: %s", server_conf(s)->addr.text, why);
    struct worker *w = s->w;
    if (s->state == SS_IDLE)
        server_unidle(s);
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
    server_state(s, SS_CLOSED);
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
        pb_error(&orphan->out, "FATAL", "08006", "server connection lost: %s", why);
        client_flush(orphan);
        client_close(orphan, "server lost");
    }
}

static void server_free(struct server *s)
{
    pb_free(&s->in);
    pb_free(&s->out);
    free(s->pend);
    free(s->prep);
    pset_clear(&s->params);
    free(s);
}

/* ------------------------------------------------------------------ */
/* pools                                                               */

static void client_timer_arm(struct client *c, uint64_t ms)
{
    if (ms)
        loop_timer_arm(c->w->loop, &c->timer, ms);
    else
        loop_timer_stop(c->w->loop, &c->timer);
}

static void wait_remove(struct client *c)
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
    uint64_t now = now_us();
    if (c->state == CS_WAITING) {
        uint64_t us = now - c->wait_start_us;
        hist_add(c->w->pg, &p->st.wait, us);
        loop_timer_stop(c->w->loop, &c->timer);
    }
    c->srv = s;
    s->client = c;
    c->xact_start_us = c->query_start_us = now;
    server_state(s, SS_ACTIVE);
    client_state(c, CS_ACTIVE);
    s->last_used = loop_now(c->w->loop);
    atomic_store_explicit(&c->cancel_server, s->sidx, memory_order_relaxed);
    atomic_store_explicit(&c->cancel_target, (uint64_t)s->be_pid << 32 | s->be_key,
                          memory_order_relaxed);
    if (c->params.hash != s->params.hash) {
        struct pgbuf q = { 0 };
        pset_diff_sql(&q, &c->params, &s->params);
        if (pb_len(&q)) {
            pb_put(&q, "", 1);
            if (!q.oom) {
                size_t o = pb_begin(&s->out, 'Q');
                pb_put(&s->out, pb_head(&q), pb_len(&q));
                pb_end(&s->out, o);
                pend_push(s, 'Q', PEND_DROP);
            }
        }
        pb_free(&q);
        pset_copy(&s->params, &c->params);
    }
}

/* A server is free (logged in, reset, or done with a transaction). */
static void pool_release(struct server *s)
{
    struct wpool *p = s->pool;
    struct worker *w = s->w;
    const struct conf_pg *cf = w->c;
    uint64_t now = loop_now(w->loop);
    if (w->stopping || (cf->server_lifetime && now - s->created > cf->server_lifetime) ||
        p->nservers > p->size + p->reserve) {
        server_state(s, SS_IDLE);
        server_close(s, "lifetime");
        if (p->wait_head && p->nservers < p->size)
            pool_open_server(p);
        return;
    }
    if (p->wait_head) {
        struct client *c = p->wait_head;
        wait_remove(c);
        server_state(s, SS_IDLE);
        attach(c, s);
        runq_push(c);
        return;
    }
    server_state(s, SS_IDLE);
    s->next = p->idle;
    s->prev = NULL;
    if (p->idle)
        p->idle->prev = s;
    p->idle = s;
}

/* A client needs a server: attach one now (true) or queue it (false). */
static bool pool_acquire(struct client *c, struct wpool *p)
{
    struct worker *w = c->w;
    c->cur = p;
    while (p->idle) {
        struct server *s = p->idle;
        server_unidle(s);
        const struct conf_pg *cf = w->c;
        if (cf->server_lifetime && loop_now(w->loop) - s->created > cf->server_lifetime) {
            server_close(s, "lifetime");
            continue;
        }
        attach(c, s);
        return true;
    }
    client_state(c, CS_WAITING);
    c->wait_start_us = now_us();
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
        pool_open_server(p);
    return false;
}

/* ------------------------------------------------------------------ */
/* clients                                                             */

static void runq_push(struct client *c)
{
    if (c->queued || c->state == CS_CLOSED)
        return;
    c->queued = true;
    c->gnext = c->w->runq;
    c->w->runq = c;
}

static void keys_put(struct worker *w, struct client *c, bool add)
{
    pthread_mutex_lock(&w->keys_mu);
    uint32_t i = c->key_pid & 0xffffff;
    if (i < w->keys_cap)
        w->keys[i] = add ? c : NULL;
    pthread_mutex_unlock(&w->keys_mu);
}

static bool keys_alloc(struct worker *w, struct client *c)
{
    /* pid: worker index in the top byte, a slot below; secret: random */
    pthread_mutex_lock(&w->keys_mu);
    uint32_t slot = UINT32_MAX;
    for (uint32_t tries = 0; tries < w->keys_cap; tries++) {
        uint32_t i = (w->next_key + tries) % w->keys_cap;
        if (i && !w->keys[i]) {
            slot = i;
            break;
        }
    }
    if (slot == UINT32_MAX && w->keys_cap < (1u << 24)) {
        uint32_t cap = w->keys_cap ? w->keys_cap * 2 : 1024;
        struct client **k = realloc(w->keys, cap * sizeof *k);
        if (k) {
            memset(k + w->keys_cap, 0, (cap - w->keys_cap) * sizeof *k);
            slot = w->keys_cap ? w->keys_cap : 1;
            w->keys = k;
            w->keys_cap = cap;
        }
    }
    if (slot != UINT32_MAX) {
        w->keys[slot] = c;
        w->next_key = slot + 1;
    }
    pthread_mutex_unlock(&w->keys_mu);
    if (slot == UINT32_MAX)
        return false;
    c->key_pid = (w->idx + 1) << 24 | slot;
    if (RAND_bytes((unsigned char *)&c->key_secret, sizeof c->key_secret) != 1)
        c->key_secret = (uint32_t)random();
    return true;
}

static void client_flush(struct client *c)
{
    if (c->state == CS_CLOSED)
        return;
    if (c->out.oom) {
        client_close(c, "out of memory");
        return;
    }
    if (sock_write(c->io.fd, NULL, &c->out, &c->can_write) < 0) {
        client_close(c, "write error");
        return;
    }
    pb_trim(&c->out);
}

static void client_close(struct client *c, const char *why)
{
    if (c->state == CS_CLOSED)
        return;
    struct worker *w = c->w;
    log_debug("pg: client closed: %s", why);
    if (c->state == CS_WAITING)
        wait_remove(c);
    struct server *s = c->srv;
    if (s) {
        c->srv = NULL;
        s->client = NULL;
        const struct conf_pg *cf = w->c;
        if (s->pcount == 0 && s->tx == 'I' && pb_len(&s->out) == 0) {
            if (c->pool->cp->mode == CONF_PG_SESSION && cf->server_reset_query) {
                /* DISCARD ALL drops prepared statements and settings too */
                s->nprep = 0;
                pset_clear(&s->params);
                size_t o = pb_begin(&s->out, 'Q');
                pb_str(&s->out, cf->server_reset_query);
                pb_end(&s->out, o);
                server_state(s, SS_RESET);
                loop_timer_arm(w->loop, &s->timer, cf->server_connect_timeout);
                server_flush(s);
            } else {
                server_state(s, SS_IDLE);
                server_ready(s);
            }
        } else {
            /* mid-transaction or mid-response: the session is not clean */
            server_close(s, "client left mid-transaction");
        }
    }
    if (c->key_pid)
        keys_put(w, c, false);
    client_state(c, CS_CLOSED);
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

static void client_free(struct client *c)
{
    pb_free(&c->in);
    pb_free(&c->out);
    free(c->scram);
    pset_clear(&c->params);
    cstmt_clear(c);
    free(c->slow_text);
    free(c);
}

/* Refuse a client at login and close once the error is written. */
static void client_fatal(struct client *c, const char *code, const char *msg)
{
    pb_error(&c->out, "FATAL", code, "%s", msg);
    client_flush(c);
    client_close(c, msg);
}

static struct wpool *find_pool(struct worker *w, const char *db, const char *user)
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
static struct wpool *route(struct client *c, const struct pg_msg *m)
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

static const struct pg_user *find_user(const struct worker *w, const char *name)
{
    for (uint32_t i = 0; i < w->nusers; i++)
        if (!strcmp(w->users[i].name, name))
            return &w->users[i];
    return NULL;
}

static void send_welcome(struct client *c)
{
    struct wpool *p = c->pool;
    struct pgbuf *o = &c->out;
    /* the pool's ParameterStatus, with the values this client asked for */
    const uint8_t *b = pb_head(&p->params);
    size_t n = pb_len(&p->params);
    while (n) {
        struct pg_msg m;
        long k = pg_msg_next(b, n, PG_MAX_MSG, &m);
        if (k <= 0)
            break;
        struct pg_rd r = pg_rd(m.body, m.len);
        const char *name = pg_rd_str(&r, NULL);
        const struct param *mine = name ? pset_get(&c->params, name) : NULL;
        if (mine && !mine->raw) {
            size_t off = pb_begin(o, 'S');
            pb_str(o, name);
            pb_str(o, mine->value);
            pb_end(o, off);
        } else {
            pb_put(o, b, (size_t)k);
        }
        b += k;
        n -= (size_t)k;
    }
    size_t off = pb_begin(o, 'K');
    pb_u32(o, c->key_pid);
    pb_u32(o, c->key_secret);
    pb_end(o, off);
    off = pb_begin(o, 'Z');
    pb_put(o, "I", 1);
    pb_end(o, off);
    loop_timer_stop(c->w->loop, &c->timer);
    client_state(c, CS_IDLE);
}

static void auth_ok(struct client *c)
{
    size_t off = pb_begin(&c->out, 'R');
    pb_u32(&c->out, 0);
    pb_end(&c->out, off);
    if (c->pool->have_params) {
        send_welcome(c);
        return;
    }
    client_state(c, CS_WELCOME);
    /* the first login of a pool needs a server's parameters: open one */
    struct wpool *p = c->pool;
    if (p->nservers == 0)
        pool_open_server(p);
}

static void cancel_forward(struct worker *w, uint32_t pid, uint32_t key);

static void client_startup(struct client *c, const struct pg_startup *st)
{
    struct worker *w = c->w;
    struct pg *pg = w->pg;
    const struct conf_pg *cf = w->c;
    if (st->kind == PG_SSL_REQUEST || st->kind == PG_GSSENC_REQUEST) {
        pb_put(&c->out, "N", 1);        /* no encryption on the client side: go on in plain text */
        return;
    }
    if (st->kind == PG_CANCEL_REQUEST) {
        cancel_forward(w, st->cancel_pid, st->cancel_key);
        client_close(c, "cancel request");
        return;
    }
    if (strlen(st->user) >= sizeof c->user || strlen(st->database) >= sizeof c->db) {
        client_fatal(c, "08004", "user or database name too long");
        return;
    }
    strcpy(c->user, st->user);
    strcpy(c->db, st->database);
    struct wpool *p = find_pool(w, c->db, c->user);
    if (!p) {
        char m[200];
        snprintf(m, sizeof m, "no pool for database \"%s\" and user \"%s\"", c->db, c->user);
        client_fatal(c, "3D000", m);
        return;
    }
    if (atomic_fetch_add(&pg->nclients, 1) >= cf->max_client_conn) {
        atomic_fetch_sub(&pg->nclients, 1);
        client_fatal(c, "53300", "no more connections allowed (max_client_conn)");
        return;
    }
    c->pool = p;
    client_state(c, CS_AUTH);
    for (uint32_t i = 0; i < st->nparams; i++) {
        const char *n = st->names[i];
        if (!strcmp(n, "options") || !strcmp(n, "replication") || strlen(n) >= 64)
            continue;
        pset_put(&c->params, n, st->values[i], strlen(st->values[i]), false);
    }
    if (!keys_alloc(w, c)) {
        client_fatal(c, "53300", "too many clients");
        return;
    }
    if (cf->auth == CONF_PG_AUTH_TRUST) {
        auth_ok(c);
        return;
    }
    const struct pg_user *u = find_user(w, c->user);
    bool scram = cf->auth == CONF_PG_AUTH_SCRAM ||
                 (u && !strncmp(u->secret, "SCRAM-SHA-256$", 14));
    if (scram) {
        if (!(c->scram = calloc(1, sizeof *c->scram))) {
            client_fatal(c, "53200", "out of memory");
            return;
        }
        size_t off = pb_begin(&c->out, 'R');
        pb_u32(&c->out, 10);
        pb_str(&c->out, "SCRAM-SHA-256");
        pb_put(&c->out, "", 1);
        pb_end(&c->out, off);
    } else {
        if (RAND_bytes(c->md5_salt, 4) != 1) {
            client_fatal(c, "53200", "no randomness");
            return;
        }
        size_t off = pb_begin(&c->out, 'R');
        pb_u32(&c->out, 5);
        pb_put(&c->out, c->md5_salt, 4);
        pb_end(&c->out, off);
    }
}

static void auth_failed(struct client *c)
{
    char m[160];
    snprintf(m, sizeof m, "password authentication failed for user \"%s\"", c->user);
    log_rl_info("pg: %s", m);
    client_fatal(c, "28P01", m);
}

static void client_auth_msg(struct client *c, const struct pg_msg *m)
{
    const struct pg_user *u = find_user(c->w, c->user);
    if (m->type != 'p') {
        client_fatal(c, "08P01", "expected a password message");
        return;
    }
    struct pg_rd r = pg_rd(m->body, m->len);
    if (c->scram) {
        char out[512];
        if (c->scram->state == 0) {
            size_t ml;
            const char *mech = pg_rd_str(&r, &ml);
            uint32_t len = pg_rd_u32(&r);
            const uint8_t *data = r.bad ? NULL : pg_rd_bytes(&r, len);
            if (!mech || strcmp(mech, "SCRAM-SHA-256") || !data) {
                client_fatal(c, "08P01", "malformed SASL initial response");
                return;
            }
            /* an unknown user or a secret that cannot do SCRAM still goes
             * through the exchange, with a made-up verifier, and fails at the end */
            struct pg_scram_secret sec;
            bool have = u && u->has_scram;
            if (have)
                sec = u->scram;
            else
                pg_scram_from_password("\x01no such user", (const uint8_t *)"portico-nouser00", 16,
                                       4096, &sec);
            int n = pg_scram_server_first(c->scram, &sec, (const char *)data, len, out, sizeof out);
            if (n < 0) {
                client_fatal(c, "08P01", "malformed SCRAM client-first-message");
                return;
            }
            c->scram->state = have ? 1 : 3;
            size_t off = pb_begin(&c->out, 'R');
            pb_u32(&c->out, 11);
            pb_put(&c->out, out, (size_t)n);
            pb_end(&c->out, off);
            return;
        }
        bool known = c->scram->state == 1;
        c->scram->state = 1;
        int n = pg_scram_server_final(c->scram, (const char *)m->body, m->len, out, sizeof out);
        if (n == -1) {
            client_fatal(c, "08P01", "malformed SCRAM client-final-message");
            return;
        }
        if (n < 0 || !known) {
            auth_failed(c);
            return;
        }
        size_t off = pb_begin(&c->out, 'R');
        pb_u32(&c->out, 12);
        pb_put(&c->out, out, (size_t)n);
        pb_end(&c->out, off);
        free(c->scram);
        c->scram = NULL;
        auth_ok(c);
        return;
    }
    size_t len;
    const char *pw = pg_rd_str(&r, &len);
    if (!pw) {
        client_fatal(c, "08P01", "malformed password message");
        return;
    }
    if (!u || !strncmp(u->secret, "SCRAM-SHA-256$", 14)) {
        auth_failed(c);
        return;
    }
    char want[36];
    pg_md5_response(u->secret, c->user, c->md5_salt, want);
    if (len != 35 || CRYPTO_memcmp(want, pw, 35) != 0) {
        auth_failed(c);
        return;
    }
    auth_ok(c);
}

/* Track SET / RESET / DISCARD in a simple query (transaction mode). */
static void track_query(struct client *c, struct server *s, const char *q, size_t len)
{
    struct pg_set set;
    if (pg_parse_set(q, len, &set)) {
        if (set.reset_all) {
            pset_clear(&c->params);
            pset_clear(&s->params);
        } else {
            pset_put(&c->params, set.name, set.reset ? NULL : set.value, set.value_len, true);
            pset_put(&s->params, set.name, set.reset ? NULL : set.value, set.value_len, true);
        }
        return;
    }
    size_t i = 0;
    while (i < len && (q[i] == ' ' || q[i] == '\n' || q[i] == '\t' || q[i] == '\r'))
        i++;
    if (len - i >= 11 && !strncasecmp(q + i, "DISCARD ALL", 11)) {
        pset_clear(&c->params);
        pset_clear(&s->params);
        s->nprep = 0;
    } else if (len - i >= 14 && !strncasecmp(q + i, "DEALLOCATE ALL", 14)) {
        s->nprep = 0;
    }
}

/* Make sure the server has statement st prepared; inject a Parse if not. */
static bool ensure_prepared(struct server *s, struct stmt *st, uint8_t act)
{
    if (server_has(s, st->id))
        return true;
    uint32_t max = s->w->c->max_prepared;
    if (max && s->nprep >= max) {
        /* forget the oldest: Close it on the server, drop the answer */
        size_t o = pb_begin(&s->out, 'C');
        pb_put(&s->out, "S", 1);
        char name[24];
        snprintf(name, sizeof name, "P_%" PRIx64, s->prep[0]);
        pb_str(&s->out, name);
        pb_end(&s->out, o);
        if (!pend_push(s, 'C', PEND_DROP))
            return false;
        server_forget(s, s->prep[0]);
    }
    size_t o = pb_begin(&s->out, 'P');
    pb_str(&s->out, st->sname);
    pb_put(&s->out, st->data, st->query_len + 1u + st->rest_len);
    pb_end(&s->out, o);
    if (!s->skipping) {
        if (s->nprep == s->capprep) {
            uint32_t cap = s->capprep ? s->capprep * 2 : 16;
            uint64_t *n = realloc(s->prep, cap * sizeof *n);
            if (!n)
                return false;
            s->prep = n;
            s->capprep = cap;
        }
        s->prep[s->nprep++] = st->id;
    }
    return pend_push_id(s, 'P', act, st->id);
}

/* One client message with a server attached. false: stop processing. */
static bool client_msg_active(struct client *c, const struct pg_msg *m, size_t whole)
{
    struct server *s = c->srv;
    struct pgbuf *o = &s->out;
    bool track = c->pool->cp->mode == CONF_PG_TRANSACTION;
    bool ok = true;
    if (s->pcount == 0)
        c->query_start_us = now_us();
    switch (m->type) {
    case 'Q':
        if (track)
            track_query(c, s, (const char *)m->body, m->len ? m->len - 1 : 0);
        note_statement(c, (const char *)m->body, m->len ? m->len - 1 : 0);
        pb_put(o, m->body - 5, whole);
        ok = pend_push(s, 'Q', PEND_FWD);
        break;
    case 'P': {
        struct pg_parse pp;
        if (!pg_parse_parse(m, &pp))
            return false;
        note_statement(c, pp.query, pp.query_len);
        if (!track || pp.name_len == 0) {
            pb_put(o, m->body - 5, whole);
            ok = pend_push(s, 'P', PEND_FWD);
            break;
        }
        struct stmt *st = stmt_get(c->w, pp.query, pp.query_len, pp.rest, pp.rest_len);
        if (!st || !cstmt_set(c, pp.name, pp.name_len, st)) {
            if (st)
                stmt_put(c->w, st);
            return false;
        }
        if (server_has(s, st->id) && !s->skipping) {
            ok = pend_push(s, 'P', PEND_FAKE);
            pend_fakes(s);
        } else {
            /* ensure_prepared's Parse answers for the client's */
            ok = ensure_prepared(s, st, PEND_FWD);
        }
        break;
    }
    case 'B':
    case 'D': {
        size_t off, nl;
        const char *name;
        char what = 'S';
        if (m->type == 'B') {
            if (!pg_parse_bind(m, &off, &nl))
                return false;
            name = (const char *)m->body + off;
        } else {
            if (!pg_parse_target(m, &what, &name, &nl))
                return false;
            off = 1;
        }
        struct stmt *st = track && what == 'S' && nl ? cstmt_find(c, name, nl) : NULL;
        if (st) {
            note_statement(c, (const char *)st->data, st->query_len);
            if (!ensure_prepared(s, st, PEND_DROP))
                return false;
            size_t k = pb_begin(o, m->type);
            pb_put(o, m->body, off);
            pb_str(o, st->sname);
            pb_put(o, m->body + off + nl + 1, m->len - off - nl - 1);
            pb_end(o, k);
        } else {
            pb_put(o, m->body - 5, whole);
        }
        ok = pend_push(s, m->type, PEND_FWD);
        break;
    }
    case 'C': {
        char what;
        const char *name;
        size_t nl;
        if (!pg_parse_target(m, &what, &name, &nl))
            return false;
        if (track && what == 'S' && nl) {
            /* the server keeps it for other clients; only this name goes */
            cstmt_del(c, name, nl);
            ok = pend_push(s, 'C', PEND_FAKE);
            pend_fakes(s);
        } else {
            pb_put(o, m->body - 5, whole);
            ok = pend_push(s, 'C', PEND_FWD);
        }
        break;
    }
    case 'E':
    case 'S':
    case 'F':
        pb_put(o, m->body - 5, whole);
        ok = pend_push(s, m->type, PEND_FWD);
        break;
    default:        /* H d c f: no answer of their own */
        pb_put(o, m->body - 5, whole);
        break;
    }
    cnt_add(&c->pool->st.bytes_in, whole);
    return ok;
}

/* Process what the client sent, as far as possible. */
static void client_process(struct client *c)
{
    for (;;) {
        if (c->state == CS_CLOSED || c->state == CS_WAITING || c->state == CS_WELCOME)
            return;
        if (c->srv && pb_len(&c->srv->out) >= OUT_HIGH)
            return;     /* server_flush() will run us again */
        const uint8_t *p = pb_head(&c->in);
        size_t n = pb_len(&c->in);
        if (c->state == CS_LOGIN) {
            struct pg_startup st;
            const char *why = "";
            long k = pg_startup_parse(p, n, &st, &why);
            if (k == 0)
                return;
            if (k < 0) {
                client_fatal(c, "08P01", why);
                return;
            }
            client_startup(c, &st);
            if (c->state != CS_CLOSED)
                pb_consume(&c->in, (size_t)k);
            continue;
        }
        struct pg_msg m;
        long k = pg_msg_next(p, n, PG_MAX_MSG, &m);
        if (k == 0)
            return;
        if (k < 0 || !(m.type == 'p' ? c->state == CS_AUTH : pg_client_msg_valid(&m))) {
            client_fatal(c, "08P01", k < 0 ? "invalid message length" : "invalid message");
            return;
        }
        if (c->state == CS_AUTH) {
            client_auth_msg(c, &m);
            if (c->state != CS_CLOSED)
                pb_consume(&c->in, (size_t)k);
            continue;
        }
        if (m.type == 'X') {
            client_close(c, "terminate");
            return;
        }
        if (m.type == 'p') {
            client_fatal(c, "08P01", "unexpected password message");
            return;
        }
        if (c->state == CS_IDLE) {
            if (m.type == 'S' || m.type == 'H') {
                /* a Sync with no server: answer it here, nothing is open */
                if (m.type == 'S') {
                    uint8_t z[6] = { 'Z', 0, 0, 0, 5, 'I' };
                    pb_put(&c->out, z, 6);
                }
                pb_consume(&c->in, (size_t)k);
                continue;
            }
            if (!pool_acquire(c, route(c, &m)))
                return;
        }
        struct server *s = c->srv;
        if (!client_msg_active(c, &m, (size_t)k)) {
            client_fatal(c, "08P01", "protocol error");
            return;
        }
        pb_consume(&c->in, (size_t)k);
        if (s->state != SS_CLOSED && s->client == c) {
            if (pb_len(&s->out) >= 65536)
                server_flush(s);
        }
    }
}

static void client_pump(struct client *c)
{
    if (c->state == CS_CLOSED)
        return;
    /* read while there is nothing complete waiting to be processed */
    size_t limit = c->state == CS_WAITING ? 65536 : 1u << 20;
    if (!c->eof && c->can_read) {
        size_t want = c->state == CS_LOGIN ? PG_MAX_STARTUP : want_bytes(&c->in, limit);
        int r = sock_read(c->io.fd, NULL, &c->in, &c->can_read, c->hup, want);
        if (r <= 0)
            c->eof = true;
    }
    client_process(c);
    if (c->state == CS_CLOSED)
        return;
    if (c->srv)
        server_flush(c->srv);
    client_flush(c);
    if (c->state == CS_CLOSED)
        return;
    if (c->eof && pb_len(&c->in) == 0) {
        client_close(c, "client closed the connection");
        return;
    }
    if (c->eof && c->state != CS_WAITING && c->state != CS_WELCOME) {
        /* a partial message at EOF: nothing more will come */
        struct pg_msg m;
        if (c->state == CS_LOGIN || pg_msg_next(pb_head(&c->in), pb_len(&c->in), PG_MAX_MSG, &m) == 0)
            client_close(c, "client closed mid-message");
        return;
    }
    if (c->can_read && !c->eof && c->state != CS_WAITING && c->state != CS_WELCOME &&
        !(c->srv && pb_len(&c->srv->out) >= OUT_HIGH))
        runq_push(c);       /* more may be readable: come back after others had a turn */
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
        client_flush(c);
        /* a server paused on this client's full output can go on */
        if (c->state != CS_CLOSED && c->srv && pb_len(&c->out) < OUT_HIGH && c->srv->can_read)
            server_pump(c->srv);
        else if (c->state != CS_CLOSED && c->srv && pb_len(&c->out) < OUT_HIGH && pb_len(&c->srv->in))
            server_pump(c->srv);
    }
    if (c->state != CS_CLOSED && (ev & LOOP_READ))
        client_pump(c);
}

static void client_timer(struct loop *l, struct loop_timer *t)
{
    (void)l;
    struct client *c = (struct client *)((char *)t - offsetof(struct client, timer));
    if (c->state == CS_WAITING) {
        cnt_add(&c->pool->st.wait_timeouts, 1);
        client_fatal(c, "08P01", "query_wait_timeout");
    } else if (c->state == CS_LOGIN || c->state == CS_AUTH || c->state == CS_WELCOME) {
        client_fatal(c, "08P01", "client_login_timeout");
    }
}

static void listener_io(struct loop *l, struct loop_io *io, unsigned ev)
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
        set_nodelay(fd);
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

/* ------------------------------------------------------------------ */
/* cancel                                                              */

static void cancel_done(struct loop *l, struct cancelreq *q)
{
    struct worker *w = q->w;
    loop_del(l, &q->io);
    close(q->io.fd);
    q->io.fd = -1;
    if (q->aprev)
        q->aprev->anext = q->anext;
    else
        w->cancels = q->anext;
    if (q->anext)
        q->anext->aprev = q->aprev;
    q->gnext = w->qgrave;
    w->qgrave = q;
}

static void cancel_io(struct loop *l, struct loop_io *io, unsigned ev)
{
    struct cancelreq *q = (struct cancelreq *)io;
    if (io->fd < 0 || !(ev & (LOOP_WRITE | LOOP_HUP)))
        return;
    if (ev & LOOP_WRITE) {
        int e = 0;
        socklen_t el = sizeof e;
        getsockopt(io->fd, SOL_SOCKET, SO_ERROR, &e, &el);
        if (!e) {
            uint8_t pkt[16] = { 0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e };
            memcpy(pkt + 8, q->pkt + 8, 8);
            ssize_t r = send(io->fd, pkt, 16, MSG_NOSIGNAL);
            (void)r;
        }
    }
    cancel_done(l, q);
}

static void cancel_forward(struct worker *w, uint32_t pid, uint32_t key)
{
    struct pg *pg = w->pg;
    uint32_t wi = (pid >> 24) - 1, slot = pid & 0xffffff;
    if (wi >= pg->nw)
        return;
    struct worker *tw = &pg->w[wi];
    uint64_t target = 0;
    uint32_t sidx = 0;
    pthread_mutex_lock(&tw->keys_mu);
    if (slot < tw->keys_cap && tw->keys[slot] && tw->keys[slot]->key_secret == key) {
        target = atomic_load_explicit(&tw->keys[slot]->cancel_target, memory_order_relaxed);
        sidx = atomic_load_explicit(&tw->keys[slot]->cancel_server, memory_order_relaxed);
    }
    pthread_mutex_unlock(&tw->keys_mu);
    if (!target || sidx >= w->c->nservers)
        return;
    const struct conf_addr *a = &w->c->servers[sidx].addr;
    struct cancelreq *q = calloc(1, sizeof *q);
    if (!q)
        return;
    q->w = w;
    q->io.cb = cancel_io;
    uint32_t spid = (uint32_t)(target >> 32), skey = (uint32_t)target;
    uint8_t v[8] = { (uint8_t)(spid >> 24), (uint8_t)(spid >> 16), (uint8_t)(spid >> 8), (uint8_t)spid,
                     (uint8_t)(skey >> 24), (uint8_t)(skey >> 16), (uint8_t)(skey >> 8), (uint8_t)skey };
    memcpy(q->pkt + 8, v, 8);
    q->io.fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (q->io.fd < 0 || (connect(q->io.fd, (const struct sockaddr *)&a->ss, a->len) < 0 &&
                         errno != EINPROGRESS) || loop_add(w->loop, &q->io) < 0) {
        if (q->io.fd >= 0)
            close(q->io.fd);
        free(q);
        return;
    }
    q->anext = w->cancels;
    if (w->cancels)
        w->cancels->aprev = q;
    w->cancels = q;
}

/* ------------------------------------------------------------------ */
/* health checks: worker 0 connects to every server each health_interval  */

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

/* ------------------------------------------------------------------ */
/* workers                                                             */

static void worker_tick(struct loop *l, struct loop_timer *t)
{
    struct worker *w = (struct worker *)((char *)t - offsetof(struct worker, tick));
    const struct conf_pg *cf = w->c;
    uint64_t now = loop_now(l);
    for (uint32_t i = 0; i < w->npools; i++) {
        struct wpool *p = &w->pools[i];
        /* idle servers: too old, or idle too long beyond min_pool_size */
        for (struct server *s = p->idle, *n; s; s = n) {
            n = s->next;
            if ((cf->server_lifetime && now - s->created > cf->server_lifetime) ||
                (cf->server_idle_timeout && now - s->last_used > cf->server_idle_timeout &&
                 p->nservers > p->min))
                server_close(s, "idle timeout or lifetime");
        }
        bool recent_fail = p->fail_at && now - p->fail_at < 1000;
        if (!recent_fail)
            while (p->nservers < p->min)
                pool_open_server(p);
        /* waiters: retry after a failure, and the reserve after reserve_pool_timeout */
        if (p->wait_head && !recent_fail) {
            uint64_t waited = (now_us() - p->wait_head->wait_start_us) / 1000;
            uint32_t limit = p->size + (waited >= cf->reserve_pool_timeout ? p->reserve : 0);
            /* connections on their way serve the waiters first */
            uint32_t coming = atomic_load_explicit(&p->st.sv[SS_CONNECT], memory_order_relaxed) +
                              atomic_load_explicit(&p->st.sv[SS_LOGIN], memory_order_relaxed);
            while (p->nservers < limit && coming < p->nwait) {
                pool_open_server(p);
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
                send_welcome(c);
            client_pump(c);
        }
    }
    if (w->runq)
        loop_wake(w->loop);     /* more to do: do not sleep */
    while (w->cgrave) {
        struct client *c = w->cgrave;
        if (c->queued)      /* still on the run queue: free it next time */
            break;
        w->cgrave = c->gnext;
        client_free(c);
    }
    while (w->sgrave) {
        struct server *s = w->sgrave;
        w->sgrave = s->gnext;
        server_free(s);
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

static void worker_shares(struct worker *w);

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
        client_close(w->clients, "shutting down");
    while (w->servers)
        server_close(w->servers, "shutting down");
    while (w->probes)
        probe_done(w->probes, atomic_load(&w->pg->up[w->probes->sidx]));
    while (w->cancels)
        cancel_done(l, w->cancels);
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
            pb_free(&w->pools[k].params);
        free(w->pools);
        if (w->stmts) {
            for (uint32_t k = 0; k < w->stmt_buckets; k++)
                for (struct stmt *s = w->stmts[k], *n; s; s = n) {
                    n = s->next;
                    free(s);
                }
            free(w->stmts);
        }
        free(w->keys);
        pthread_mutex_destroy(&w->keys_mu);
        loop_free(w->loop);
    }
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

/* This worker's share of each pool (the shares of all workers add up to the pool). */
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
    /* SO_REUSEPORT would let the pooler share a port with the HTTP side and
     * split its connections between them: refuse that */
    for (uint32_t i = 0; i < cf->nlisten; i++) {
        bool clash = conf->admin_enabled && conf_addr_equal(&cf->listen[i], &conf->admin_listen);
        for (uint32_t k = 0; k < conf->nlisten && !clash; k++)
            clash = conf_addr_equal(&cf->listen[i], &conf->listen[k]);
        if (clash) {
            snprintf(err, errlen, "postgres.listen %s: also an HTTP or admin address", cf->listen[i].text);
            pg_free(pg);
            return NULL;
        }
    }
    pg->nbuckets = conf->metrics.nbuckets;
    memcpy(pg->buckets, conf->metrics.buckets, sizeof pg->buckets);
    if (!build_users(cf, &pg->users, &pg->nusers, err, errlen)) {
        pg_free(pg);
        return NULL;
    }
    if (cf->sslmode != CONF_PG_SSL_DISABLE) {
        if (!(pg->ssl = SSL_CTX_new(TLS_client_method()))) {
            snprintf(err, errlen, "postgres: TLS context: out of memory");
            pg_free(pg);
            return NULL;
        }
        SSL_CTX_set_min_proto_version(pg->ssl, TLS1_2_VERSION);
        if (cf->sslmode == CONF_PG_SSL_VERIFY_FULL) {
            SSL_CTX_set_verify(pg->ssl, SSL_VERIFY_PEER, NULL);
            int ok = cf->sslrootcert ? SSL_CTX_load_verify_locations(pg->ssl, cf->sslrootcert, NULL)
                                     : SSL_CTX_set_default_verify_paths(pg->ssl);
            if (ok != 1) {
                snprintf(err, errlen, "postgres.sslrootcert: cannot load %s",
                         cf->sslrootcert ? cf->sslrootcert : "the system's CA certificates");
                pg_free(pg);
                return NULL;
            }
        } else {
            SSL_CTX_set_verify(pg->ssl, SSL_VERIFY_NONE, NULL);
        }
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
    pg->nw = conf->workers ? conf->workers : 1;
    if (pg->nw > PG_MAX_WORKERS)
        pg->nw = PG_MAX_WORKERS;
    if (!(pg->w = calloc(pg->nw, sizeof *pg->w))) {
        snprintf(err, errlen, "out of memory");
        pg_free(pg);
        return NULL;
    }
    for (uint32_t i = 0; i < pg->nw; i++) {
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
            pg->nw = i + 1;
            pg_free(pg);
            return NULL;
        }
        for (uint32_t k = 0; k < cf->nlisten; k++)
            w->lis[k].io.fd = -1;
        for (uint32_t k = 0; k < cf->nlisten; k++) {
            int fd = bind_listener(&cf->listen[k], err, errlen);
            if (fd < 0) {
                pg->nw = i + 1;
                pg_free(pg);
                return NULL;
            }
            w->lis[k].io.fd = fd;
            w->lis[k].io.cb = listener_io;
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
        w->tick.cb = worker_tick;
        loop_timer_arm(w->loop, &w->tick, TICK_MS);
        loop_set_before_sleep(w->loop, worker_before_sleep, w);
        loop_set_wake(w->loop, worker_wake_cb, w);
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
    pthread_mutex_lock(&g_mu);
    g_pg = pg;
    pthread_mutex_unlock(&g_mu);
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
        a->slow_query_max_chars != b->slow_query_max_chars || a->sslmode != b->sslmode ||
        !str_eq(a->sslrootcert, b->sslrootcert) || a->max_prepared != b->max_prepared)
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
 * identities and modes, TLS. */
static bool conf_pg_hot(const struct conf_pg *a, const struct conf_pg *b)
{
    if (a->nlisten != b->nlisten || a->nservers != b->nservers || a->npools != b->npools ||
        a->sslmode != b->sslmode || !str_eq(a->sslrootcert, b->sslrootcert))
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
        log_warn("postgres: listen, servers, the pools' database/user/pool_mode or TLS changed; "
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
    pthread_mutex_lock(&g_mu);          /* the admin thread reads pg->c under it */
    struct conf *old = pg->conf;
    struct pg_user *old_users = pg->users;
    pg->conf = conf_ref(nc);
    pg->c = &nc->pg;
    pg->users = users;
    pg->nusers = nusers;
    pthread_mutex_unlock(&g_mu);
    free(old_users);
    conf_unref(old);
    log_info("postgres: configuration reloaded");
    return 0;
}

void pg_stop(struct pg *pg)
{
    if (!pg)
        return;
    pthread_mutex_lock(&g_mu);
    g_pg = NULL;
    pthread_mutex_unlock(&g_mu);
    for (uint32_t i = 0; i < pg->nw; i++) {
        atomic_store(&pg->w[i].stop_req, true);
        loop_wake(pg->w[i].loop);
    }
    for (uint32_t i = 0; i < pg->nw; i++)
        pthread_join(pg->w[i].thread, NULL);
    pg_free(pg);
}

/* ------------------------------------------------------------------ */
/* figures for the admin listener                                      */

bool pg_running(void)
{
    pthread_mutex_lock(&g_mu);
    bool r = g_pg != NULL;
    pthread_mutex_unlock(&g_mu);
    return r;
}

struct pool_sum {
    uint64_t cl[CS_N], sv[SS_N];
    uint64_t xacts, queries, bytes_in, bytes_out, wait_timeouts, slow;
    uint64_t hb[3][OBS_MAX_BUCKETS + 1], hsum[3], hcount[3];
};

#define LD(x) atomic_load_explicit(&(x), memory_order_relaxed)

static void pool_sum(const struct pg *pg, uint32_t k, struct pool_sum *o)
{
    memset(o, 0, sizeof *o);
    for (uint32_t j = 0; j < pg->nw * pg->nsrv; j++) {
        const struct pstats *st = &pg->w[j / pg->nsrv].pools[k * pg->nsrv + j % pg->nsrv].st;
        for (int j = 0; j < CS_N; j++)
            o->cl[j] += LD(st->cl[j]);
        for (int j = 0; j < SS_N; j++)
            o->sv[j] += LD(st->sv[j]);
        o->xacts += LD(st->xacts);
        o->queries += LD(st->queries);
        o->bytes_in += LD(st->bytes_in);
        o->bytes_out += LD(st->bytes_out);
        o->wait_timeouts += LD(st->wait_timeouts);
        o->slow += LD(st->slow);
        const struct obs_hist *h[3] = { &st->wait, &st->xact, &st->query };
        for (int q = 0; q < 3; q++) {
            for (uint32_t b = 0; b <= pg->nbuckets; b++)
                o->hb[q][b] += LD(h[q]->bucket[b]);
            o->hsum[q] += LD(h[q]->sum_us);
            o->hcount[q] += LD(h[q]->count);
        }
    }
}

void pg_metrics(struct obs_text *t)
{
    pthread_mutex_lock(&g_mu);
    struct pg *pg = g_pg;
    if (!pg) {
        pthread_mutex_unlock(&g_mu);
        return;
    }
    const struct conf_pg *cf = pg->c;
    static const struct { const char *name, *help; int kind; int idx; } gauges[] = {
        { "portico_pg_clients_active", "Clients logged in and not waiting for a server.", 0, CS_IDLE },
        { "portico_pg_clients_waiting", "Clients waiting for a server connection.", 0, CS_WAITING },
        { "portico_pg_servers_active", "Server connections serving a client.", 1, SS_ACTIVE },
        { "portico_pg_servers_idle", "Server connections idle in the pool.", 1, SS_IDLE },
        { "portico_pg_servers_used", "Server connections being reset after a session.", 1, SS_RESET },
        { "portico_pg_servers_login", "Server connections connecting or logging in.", 1, SS_LOGIN },
    };
    struct pool_sum *sums = calloc(cf->npools ? cf->npools : 1, sizeof *sums);
    if (!sums) {
        pthread_mutex_unlock(&g_mu);
        t->oom = 1;
        return;
    }
    for (uint32_t k = 0; k < cf->npools; k++)
        pool_sum(pg, k, &sums[k]);
    for (size_t g = 0; g < sizeof gauges / sizeof gauges[0]; g++) {
        obs_printf(t, "# HELP %s %s\n# TYPE %s gauge\n", gauges[g].name, gauges[g].help, gauges[g].name);
        for (uint32_t k = 0; k < cf->npools; k++) {
            uint64_t v;
            if (gauges[g].kind == 0 && gauges[g].idx == CS_IDLE)
                v = sums[k].cl[CS_IDLE] + sums[k].cl[CS_ACTIVE];
            else if (gauges[g].kind == 0)
                v = sums[k].cl[gauges[g].idx];
            else if (gauges[g].idx == SS_LOGIN)
                v = sums[k].sv[SS_LOGIN] + sums[k].sv[SS_CONNECT];
            else
                v = sums[k].sv[gauges[g].idx];
            obs_printf(t, "%s{database=\"%s\",user=\"%s\"} %" PRIu64 "\n", gauges[g].name,
                       cf->pools[k].database, cf->pools[k].user, v);
        }
    }
    obs_printf(t, "# HELP portico_pg_pool_size Server connections a pool may open.\n"
                  "# TYPE portico_pg_pool_size gauge\n");
    for (uint32_t k = 0; k < cf->npools; k++)
        obs_printf(t, "portico_pg_pool_size{database=\"%s\",user=\"%s\"} %u\n",
                   cf->pools[k].database, cf->pools[k].user, cf->pools[k].pool_size);
    static const struct { const char *name, *help; size_t off; } counters[] = {
        { "portico_pg_transactions_total", "Transactions served (transaction mode).", offsetof(struct pool_sum, xacts) },
        { "portico_pg_queries_total", "Queries served (simple queries and Syncs).", offsetof(struct pool_sum, queries) },
        { "portico_pg_client_bytes_total", "Bytes from clients to servers.", offsetof(struct pool_sum, bytes_in) },
        { "portico_pg_server_bytes_total", "Bytes from servers to clients.", offsetof(struct pool_sum, bytes_out) },
        { "portico_pg_wait_timeouts_total", "Clients that gave up after query_wait_timeout.", offsetof(struct pool_sum, wait_timeouts) },
        { "portico_pg_slow_queries_total", "Queries that took longer than slow_query.", offsetof(struct pool_sum, slow) },
    };
    for (size_t g = 0; g < sizeof counters / sizeof counters[0]; g++) {
        obs_printf(t, "# HELP %s %s\n# TYPE %s counter\n", counters[g].name, counters[g].help, counters[g].name);
        for (uint32_t k = 0; k < cf->npools; k++)
            obs_printf(t, "%s{database=\"%s\",user=\"%s\"} %" PRIu64 "\n", counters[g].name,
                       cf->pools[k].database, cf->pools[k].user,
                       *(const uint64_t *)((const char *)&sums[k] + counters[g].off));
    }
    static const char *const hn[3][2] = {
        { "portico_pg_wait_duration_seconds", "Time clients waited for a server connection." },
        { "portico_pg_transaction_duration_seconds", "Transaction durations (transaction mode)." },
        { "portico_pg_query_duration_seconds", "Query durations, from the request to ReadyForQuery." },
    };
    for (int q = 0; q < 3; q++) {
        obs_printf(t, "# HELP %s %s\n# TYPE %s histogram\n", hn[q][0], hn[q][1], hn[q][0]);
        for (uint32_t k = 0; k < cf->npools; k++) {
            uint64_t cum = 0;
            for (uint32_t b = 0; b <= pg->nbuckets; b++) {
                cum += sums[k].hb[q][b];
                if (b < pg->nbuckets)
                    obs_printf(t, "%s_bucket{database=\"%s\",user=\"%s\",le=\"%g\"} %" PRIu64 "\n",
                               hn[q][0], cf->pools[k].database, cf->pools[k].user, pg->buckets[b], cum);
                else
                    obs_printf(t, "%s_bucket{database=\"%s\",user=\"%s\",le=\"+Inf\"} %" PRIu64 "\n",
                               hn[q][0], cf->pools[k].database, cf->pools[k].user, cum);
            }
            obs_printf(t, "%s_sum{database=\"%s\",user=\"%s\"} %.6f\n", hn[q][0], cf->pools[k].database,
                       cf->pools[k].user, (double)sums[k].hsum[q] / 1e6);
            obs_printf(t, "%s_count{database=\"%s\",user=\"%s\"} %" PRIu64 "\n", hn[q][0],
                       cf->pools[k].database, cf->pools[k].user, sums[k].hcount[q]);
        }
    }
    obs_printf(t, "# HELP portico_pg_server_up Whether a PostgreSQL server passes its health checks (1) or not (0).\n"
                  "# TYPE portico_pg_server_up gauge\n");
    for (uint32_t i = 0; i < cf->nservers; i++)
        obs_printf(t, "portico_pg_server_up{server=\"%s\",role=\"%s\"} %u\n", cf->servers[i].addr.text,
                   cf->servers[i].role == CONF_PG_REPLICA ? "replica" : "primary",
                   (unsigned)atomic_load_explicit(&pg->up[i], memory_order_relaxed));
    obs_printf(t, "# HELP portico_pg_clients Client connections (all pools, logging in too).\n"
                  "# TYPE portico_pg_clients gauge\nportico_pg_clients %u\n",
               atomic_load(&pg->nclients));
    free(sums);
    pthread_mutex_unlock(&g_mu);
}

/* p95 from a per-bucket histogram: the upper bound of the bucket it falls in. */
static double hist_p(const struct pg *pg, const uint64_t *b, uint64_t count, double q)
{
    if (!count)
        return 0;
    uint64_t want = (uint64_t)((double)count * q + 0.999999), cum = 0;
    for (uint32_t i = 0; i <= pg->nbuckets; i++) {
        cum += b[i];
        if (cum >= want)
            return i < pg->nbuckets ? pg->buckets[i] : pg->buckets[pg->nbuckets - 1];
    }
    return 0;
}

void pg_pools_json(struct obs_text *t)
{
    pthread_mutex_lock(&g_mu);
    struct pg *pg = g_pg;
    if (!pg) {
        obs_printf(t, "{\"pools\":[]}");
        pthread_mutex_unlock(&g_mu);
        return;
    }
    const struct conf_pg *cf = pg->c;
    obs_printf(t, "{\"clients\":%u,\"max_client_conn\":%u,\"servers\":[", atomic_load(&pg->nclients),
               cf->max_client_conn);
    for (uint32_t i = 0; i < cf->nservers; i++)
        obs_printf(t, "%s{\"address\":\"%s\",\"role\":\"%s\",\"weight\":%u,\"up\":%s}", i ? "," : "",
                   cf->servers[i].addr.text, cf->servers[i].role == CONF_PG_REPLICA ? "replica" : "primary",
                   cf->servers[i].weight,
                   atomic_load_explicit(&pg->up[i], memory_order_relaxed) ? "true" : "false");
    obs_printf(t, "],\"pools\":[");
    for (uint32_t k = 0; k < cf->npools; k++) {
        struct pool_sum s;
        pool_sum(pg, k, &s);
        const struct conf_pg_pool *cp = &cf->pools[k];
        double wait_avg = s.hcount[0] ? (double)s.hsum[0] / (double)s.hcount[0] / 1e6 : 0;
        obs_printf(t, "%s{\"database\":\"%s\",\"user\":\"%s\",\"pool_mode\":\"%s\",\"pool_size\":%u,"
                      "\"cl_active\":%" PRIu64 ",\"cl_waiting\":%" PRIu64 ",\"cl_login\":%" PRIu64 ","
                      "\"sv_active\":%" PRIu64 ",\"sv_idle\":%" PRIu64 ",\"sv_used\":%" PRIu64 ","
                      "\"sv_login\":%" PRIu64 ",\"transactions\":%" PRIu64 ",\"queries\":%" PRIu64 ","
                      "\"bytes_in\":%" PRIu64 ",\"bytes_out\":%" PRIu64 ",\"wait_timeouts\":%" PRIu64 ","
                      "\"slow_queries\":%" PRIu64 ",\"avg_wait_seconds\":%.6f,"
                      "\"query_p95_seconds\":%g}",
                   k ? "," : "", cp->database, cp->user,
                   cp->mode == CONF_PG_TRANSACTION ? "transaction" : "session", cp->pool_size,
                   s.cl[CS_IDLE] + s.cl[CS_ACTIVE], s.cl[CS_WAITING], s.cl[CS_AUTH] + s.cl[CS_WELCOME],
                   s.sv[SS_ACTIVE], s.sv[SS_IDLE], s.sv[SS_RESET], s.sv[SS_LOGIN] + s.sv[SS_CONNECT],
                   s.xacts, s.queries, s.bytes_in, s.bytes_out, s.wait_timeouts, s.slow, wait_avg,
                   hist_p(pg, s.hb[2], s.hcount[2], 0.95));
    }
    obs_printf(t, "]}");
    pthread_mutex_unlock(&g_mu);
}
