/* pg/track.c: transaction-mode bookkeeping: parameter sets, prepared statements, outstanding responses. */
#include "pg_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

void pg_pset_clear(struct pset *ps)
{
    for (uint32_t i = 0; i < ps->n; i++)
        free(ps->v[i].value);
    free(ps->v);
    ps->v = NULL;
    ps->n = 0;
    ps->hash = 0;
}

/* Set (value != NULL) or remove a parameter. false when out of memory. */
bool pg_pset_put(struct pset *ps, const char *name, const char *value, size_t vlen, bool raw)
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

bool pg_pset_copy(struct pset *dst, const struct pset *src)
{
    pg_pset_clear(dst);
    for (uint32_t i = 0; i < src->n; i++)
        if (!pg_pset_put(dst, src->v[i].name, src->v[i].value, strlen(src->v[i].value), src->v[i].raw))
            return false;
    return true;
}

const struct param *pg_pset_get(const struct pset *ps, const char *name)
{
    for (uint32_t i = 0; i < ps->n; i++)
        if (!strcmp(ps->v[i].name, name))
            return &ps->v[i];
    return NULL;
}

/* The SQL that makes a server's parameters the client's: SETs and RESETs. */
void pg_pset_diff_sql(struct pgbuf *q, const struct pset *want, const struct pset *have)
{
    for (uint32_t i = 0; i < want->n; i++) {
        const struct param *p = &want->v[i];
        const struct param *h = pg_pset_get(have, p->name);
        if (h && h->raw == p->raw && !strcmp(h->value, p->value))
            continue;
        pgb_put(q, "SET ", 4);
        pgb_put(q, p->name, strlen(p->name));
        pgb_put(q, " = ", 3);
        if (p->raw) {
            pgb_put(q, p->value, strlen(p->value));
        } else {
            pgb_put(q, "'", 1);
            for (const char *s = p->value; *s; s++)
                pgb_put(q, s, *s == '\'' ? 0 : 1), *s == '\'' ? pgb_put(q, "''", 2) : (void)0;
            pgb_put(q, "'", 1);
        }
        pgb_put(q, ";", 1);
    }
    for (uint32_t i = 0; i < have->n; i++) {
        if (pg_pset_get(want, have->v[i].name))
            continue;
        pgb_put(q, "RESET ", 6);
        pgb_put(q, have->v[i].name, strlen(have->v[i].name));
        pgb_put(q, ";", 1);
    }
}

struct stmt *pg_stmt_get(struct worker *w, const char *query, size_t qlen,
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

void pg_stmt_put(struct worker *w, struct stmt *s)
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

struct stmt *pg_cstmt_find(struct client *c, const char *name, size_t len)
{
    if (!c->stmts)
        return NULL;
    struct cstmt *e = *cstmt_slot(c, name, len);
    return e ? e->st : NULL;
}

bool pg_cstmt_set(struct client *c, const char *name, size_t len, struct stmt *st)
{
    if (!c->stmts && !(c->stmts = calloc(CSTMT_BUCKETS, sizeof *c->stmts)))
        return false;
    struct cstmt **b = cstmt_slot(c, name, len);
    if (*b) {
        pg_stmt_put(c->w, (*b)->st);
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

void pg_cstmt_del(struct client *c, const char *name, size_t len)
{
    if (!c->stmts)
        return;
    struct cstmt **b = cstmt_slot(c, name, len);
    struct cstmt *e = *b;
    if (!e)
        return;
    *b = e->next;
    pg_stmt_put(c->w, e->st);
    free(e);
    c->nstmts--;
}

void pg_cstmt_clear(struct client *c)
{
    if (!c->stmts)
        return;
    for (int i = 0; i < CSTMT_BUCKETS; i++)
        for (struct cstmt *e = c->stmts[i], *n; e; e = n) {
            n = e->next;
            pg_stmt_put(c->w, e->st);
            free(e);
        }
    free(c->stmts);
    c->stmts = NULL;
    c->nstmts = 0;
}

bool pg_server_has(const struct server *s, uint64_t id)
{
    for (uint32_t i = s->nprep; i-- > 0;)
        if (s->prep[i] == id)
            return true;
    return false;
}

void pg_server_forget(struct server *s, uint64_t id)
{
    for (uint32_t i = 0; i < s->nprep; i++)
        if (s->prep[i] == id) {
            memmove(&s->prep[i], &s->prep[i + 1], (s->nprep - i - 1) * sizeof *s->prep);
            s->nprep--;
            return;
        }
}

bool pg_pend_push_id(struct server *s, char type, uint8_t act, uint64_t id)
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

bool pg_pend_push(struct server *s, char type, uint8_t act) { return pg_pend_push_id(s, type, act, 0); }

struct pend *pg_pend_head(struct server *s) { return s->pcount ? &s->pend[s->phead] : NULL; }

void pg_pend_pop(struct server *s)
{
    s->phead = (s->phead + 1) % s->pcap;
    s->pcount--;
}

/* Answer the faked requests at the head of the queue (nothing is before them). */
void pg_pend_fakes(struct server *s)
{
    struct pend *h;
    while ((h = pg_pend_head(s)) && h->act == PEND_FAKE) {
        if (s->client) {
            char t = h->type == 'P' ? '1' : '3';
            uint8_t m[5] = { (uint8_t)t, 0, 0, 0, 4 };
            pgb_put(&s->client->out, m, 5);
        }
        pg_pend_pop(s);
    }
}
