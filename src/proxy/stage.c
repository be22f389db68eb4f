/* proxy/stage.c: stages (see stage.h): the registry, each route's chain, the
 * calls at each point of an exchange, and the functions stages call. */
#include "proxy_int.h"

#include "cache/cache.h"
#include "filter/filter.h"
#include "limit/limit.h"

#define STAGE_MAX 32

/* Chain order: identity first (limits key on it), the modules' stages,
 * stages registered by the embedding program, then the ones that record
 * the outcome. */
static const struct stage_def *registered[STAGE_MAX];
static uint32_t nregistered;

int stage_register(const struct stage_def *def)
{
    if (nregistered >= STAGE_MAX || !def || !def->name)
        return -1;
    registered[nregistered++] = def;
    return 0;
}

static uint32_t all_stages(const struct stage_def **out)
{
    uint32_t n = 0;
    out[n++] = &stage_forward;
    out[n++] = &limit_stage;
    out[n++] = &limit_guard_stage;
    out[n++] = &cache_stage;
    out[n++] = &filter_headers_stage;
    out[n++] = &filter_security_stage;
    out[n++] = &filter_compress_stage;
    for (uint32_t i = 0; i < nregistered && n < STAGE_MAX; i++)
        out[n++] = registered[i];
    out[n++] = &stage_metrics;
    out[n++] = &stage_access_log;
    out[n++] = &stage_audit_log;
    return n;
}

/* ---------------------------------------------------------------- chains */

void stage_chains_free(struct stage_chain **chains, uint32_t n)
{
    for (uint32_t r = 0; chains && r < n; r++) {
        struct stage_chain *ch = chains[r];
        for (uint32_t i = 0; ch && i < ch->n; i++)
            if (ch->links[i].def->route_free)
                ch->links[i].def->route_free(ch->links[i].state);
        free(ch);
    }
    free(chains);
}

/* Every route's chain for conf: the stages whose route_new wants the route.
 * NULL when out of memory. */
struct stage_chain **stage_chains_new(const struct conf *conf)
{
    const struct stage_def *defs[STAGE_MAX + 8];
    uint32_t nd = all_stages(defs);
    struct stage_chain **chains = calloc(conf->nroutes ? conf->nroutes : 1, sizeof *chains);
    if (!chains)
        return NULL;
    for (uint32_t r = 0; r < conf->nroutes; r++) {
        struct stage_chain *ch = calloc(1, sizeof *ch + nd * sizeof ch->links[0]);
        if (!ch) {
            stage_chains_free(chains, conf->nroutes);
            return NULL;
        }
        chains[r] = ch;
        for (uint32_t i = 0; i < nd; i++) {
            void *st = defs[i]->route_new ? defs[i]->route_new(conf, &conf->routes[r]) : NULL;
            if (!st)
                continue;
            struct stage_link *l = &ch->links[ch->n++];
            l->def = defs[i];
            l->state = st;
            l->ctx_off = ch->ctx_bytes;
            ch->ctx_bytes += (defs[i]->ctx_size + 15u) & ~15u;
            ch->keep_request_headers |= defs[i]->keep_request_headers;
        }
    }
    return chains;
}

/* An exchange with room for its route's stages, zeroed. */
struct exchange *exchange_alloc(const struct stage_chain *ch)
{
    if (!ch || !ch->n)
        return calloc(1, sizeof(struct exchange));
    size_t base = (sizeof(struct exchange) + 15u) & ~(size_t)15u;
    size_t st = (sizeof(struct stage_state) + 15u) & ~(size_t)15u;
    size_t sx = ((size_t)ch->n * sizeof(struct stage_x) + 15u) & ~(size_t)15u;
    char *m = calloc(1, base + st + sx + ch->ctx_bytes);
    if (!m)
        return NULL;
    struct exchange *x = (struct exchange *)(void *)m;
    x->st = (struct stage_state *)(void *)(m + base);
    x->st->chain = ch;
    x->st->x = x;
    x->st->sx = (struct stage_x *)(void *)(m + base + st);
    x->st->ctx = m + base + st + sx;
    x->st->xform = -1;
    for (uint32_t i = 0; i < ch->n; i++)
        x->st->sx[i] = (struct stage_x){ x, i };
    return x;
}

/* What exchange_free releases of the stages' state (not the block itself). */
void stage_state_release(struct exchange *x)
{
    struct stage_state *st = x->st;
    if (!st)
        return;
    if (loop_timer_armed(&st->resume_timer))
        loop_timer_stop(x->c->w->loop, &st->resume_timer);
    stage_waker_cancel(x);
    if (st->ext) {
        free(st->ext->arena);
        free(st->ext);
    }
    if (st->head) {
        free(st->head);
        free(st->rcopy);
    }
    if (st->npath_owned)
        free(st->npath);
    if (st->body)
        stage_body_unref(st->body);
    if (st->tout)
        buf_put(&x->c->w->bufs, st->tout);
}

/* ---------------------------------------------------------------- the calls */

/* Run the request stages from st->next on. */
enum stage_verdict stages_request(struct exchange *x)
{
    struct stage_state *st = x->st;
    while (st->next < st->chain->n) {
        uint32_t i = st->next++;
        const struct stage_def *d = st->chain->links[i].def;
        st->ran = i + 1;
        if (!d->on_request)
            continue;
        enum stage_verdict v = d->on_request(&st->sx[i]);
        if (v != STAGE_CONTINUE)
            return v;
    }
    return STAGE_CONTINUE;
}

/* The response head is known: each stage may edit it and ask for the body. */
void stages_response(struct exchange *x, const struct http_response *r, bool can_transform)
{
    struct stage_state *st = x->st;
    st->resp = r;
    st->can_transform = can_transform;
    for (uint32_t i = 0; i < st->chain->n; i++) {
        const struct stage_def *d = st->chain->links[i].def;
        if (!d->on_response)
            continue;
        enum stage_body_mode m = d->on_response(&st->sx[i]);
        if (m == STAGE_BODY_WATCH && d->on_body)
            st->watch |= 1u << i;
        else if (m == STAGE_BODY_TRANSFORM && d->on_body && can_transform && st->xform < 0)
            st->xform = (int8_t)i;
    }
    st->resp = NULL;
}

/* Body data (without framing) for the watchers. */
void stages_watch(struct exchange *x, const char *data, size_t len, bool end)
{
    struct stage_state *st = x->st;
    for (uint32_t i = 0; st->watch >> i; i++) {
        if (!(st->watch & (1u << i)))
            continue;
        size_t outl = 0;
        st->chain->links[i].def->on_body(&st->sx[i], data, len, end, NULL, 0, &outl);
    }
}

/* The upstream answered (status) or failed: a stage may answer instead. */
bool stages_upstream(struct exchange *x, const struct http_response *r, int status)
{
    struct stage_state *st = x->st;
    if (!st || st->answered || st->upstream_seen)
        return false;
    st->upstream_seen = true;
    st->resp = r;
    bool answered = false;
    for (uint32_t i = 0; i < st->ran && !answered; i++) {
        const struct stage_def *d = st->chain->links[i].def;
        answered = d->on_upstream && d->on_upstream(&st->sx[i], status) && st->answered;
    }
    st->resp = NULL;
    return answered;
}

void stages_end(struct exchange *x)
{
    struct stage_state *st = x->st;
    if (st->ended)
        return;
    st->ended = true;
    for (uint32_t i = 0; i < st->chain->n; i++)
        if (st->chain->links[i].def->on_end)
            st->chain->links[i].def->on_end(&st->sx[i]);
}

/* ---------------------------------------------------------------- for stages */

void *stage_ctx(struct stage_x *sx)
{
    return sx->x->st->ctx + sx->x->st->chain->links[sx->i].ctx_off;
}

void *stage_route_state(struct stage_x *sx) { return sx->x->st->chain->links[sx->i].state; }

const struct conf_route *stage_route(struct stage_x *sx) { return sx->x->route; }

const char *stage_method(struct stage_x *sx, size_t *len)
{
    *len = sx->x->method_len;
    return sx->x->method;
}

const char *stage_path(struct stage_x *sx, size_t *len)
{
    struct stage_state *st = sx->x->st;
    if (st->npath) {
        *len = st->npath_len;
        return st->npath;
    }
    *len = sx->x->path_len;
    return sx->x->path;
}

const char *stage_host(struct stage_x *sx, size_t *len)
{
    const struct http_request *r = sx->x->st->req;
    if (!r || !r->host) {
        *len = 0;
        return NULL;
    }
    *len = r->host_len;
    return r->host;
}

const char *stage_client_ip(struct stage_x *sx, size_t *len)
{
    *len = sx->x->client_len;
    return sx->x->client;
}

const char *stage_request_id(struct stage_x *sx, size_t *len)
{
    *len = sx->x->reqid_len;
    return sx->x->reqid;
}

static bool find_field(const struct http_msg *m, const char *name, size_t nlen, const char **v,
                       size_t *vlen)
{
    for (uint32_t i = 0; m && i < m->nheaders; i++) {
        const struct http_header *h = &m->headers[i];
        if (h->name_len == nlen && http_ieq(h->name, name, nlen)) {
            *v = h->value;
            *vlen = h->value_len;
            return true;
        }
    }
    return false;
}

bool stage_request_header(struct stage_x *sx, const char *name, size_t name_len,
                          const char **value, size_t *value_len)
{
    const struct http_request *r = sx->x->st->req;
    return r && find_field(&r->m, name, name_len, value, value_len);
}

bool stage_request_field(struct stage_x *sx, uint32_t i, struct stage_field *f)
{
    const struct http_request *r = sx->x->st->req;
    if (!r || i >= r->m.nheaders)
        return false;
    const struct http_header *h = &r->m.headers[i];
    *f = (struct stage_field){ h->name, h->value, h->name_len, h->value_len };
    return true;
}

bool stage_https(struct stage_x *sx) { return sx->x->https; }

void stage_log_cache(struct stage_x *sx, const char *result) { sx->x->st->cache_result = result; }

bool stage_internal(struct stage_x *sx) { return sx->x->c->internal; }

void stage_body_error(struct stage_x *sx) { sx->x->st->body_error = true; }

bool stage_body_transformable(struct stage_x *sx)
{
    return sx->x->st->can_transform && sx->x->st->xform < 0;
}

bool stage_request_body(struct stage_x *sx, const char **body, size_t *len)
{
    struct exchange *x = sx->x;
    struct stage_state *st = x->st;
    struct buf *in = x->c->in;
    if (!st->in_head || x->req_body != HTTP_BODY_LENGTH || !in ||
        buf_len(in) - st->in_head < x->req_remaining)
        return false;
    *body = buf_head(in) + st->in_head;
    *len = (size_t)x->req_remaining;
    return true;
}

int stage_status(struct stage_x *sx) { return sx->x->status; }

bool stage_response_header(struct stage_x *sx, const char *name, size_t name_len,
                           const char **value, size_t *value_len)
{
    struct stage_state *st = sx->x->st;
    if (st->resp)
        return find_field(&st->resp->m, name, name_len, value, value_len);
    if (st->ext && st->answered && st->ext->answer_block &&
        http_block_field(st->ext->answer_block, st->ext->answer_block_len, name, name_len, value,
                    value_len))
        return true;
    for (uint32_t i = 0; st->ext && st->answered && i < st->ext->nanswer_fields; i++) {
        const struct stage_field *f = &st->ext->answer_fields[i];
        if (f->name_len == name_len && http_ieq(f->name, name, name_len)) {
            *value = f->value;
            *value_len = f->value_len;
            return true;
        }
    }
    return false;
}

bool stage_response_field(struct stage_x *sx, uint32_t i, struct stage_field *f)
{
    const struct http_response *r = sx->x->st->resp;
    if (!r || i >= r->m.nheaders)
        return false;
    const struct http_header *h = &r->m.headers[i];
    *f = (struct stage_field){ h->name, h->value, h->name_len, h->value_len };
    return true;
}

uint64_t stage_bytes_in(struct stage_x *sx) { return sx->x->bytes_in; }
uint64_t stage_bytes_out(struct stage_x *sx) { return sx->x->bytes_out; }
uint64_t stage_duration_us(struct stage_x *sx) { return now_us() - sx->x->t0_us; }

/* ---------------------------------------------------------------- edits */

static struct stage_ext *ext_of(struct exchange *x)
{
    struct stage_ext *e = x->st->ext;
    if (!e && (e = malloc(sizeof *e))) {
        /* the arrays are read only up to their counts: only those are zeroed */
        e->nreq_edits = e->nresp_edits = e->nanswer_fields = 0;
        e->answer_block = NULL;
        e->answer_block_len = 0;
        e->arena = NULL;
        e->arena_len = e->arena_cap = e->small_len = 0;
        x->st->ext = e;
    }
    return e;
}

/* A copy of s in the exchange's arena (one block, as large as a head may
 * be, allocated on the first edit: what was handed out never moves). */
static const char *arena_copy(struct exchange *x, const char *s, size_t n)
{
    struct stage_ext *e = x->st->ext;
    if (!e->arena && n <= sizeof e->small - e->small_len) {
        char *p = e->small + e->small_len;      /* most answers' fields fit here */
        memcpy(p, s, n);
        e->small_len += (uint32_t)n;
        return p;
    }
    if (!e->arena) {
        e->arena_cap = x->conf->limits.max_header_bytes + 4096;
        if (!(e->arena = malloc(e->arena_cap)))
            return NULL;
    }
    if (n > e->arena_cap - e->arena_len)
        return NULL;
    char *p = e->arena + e->arena_len;
    memcpy(p, s, n);
    e->arena_len += (uint32_t)n;
    return p;
}

static bool valid_name(const char *n, size_t len) { return http_token(n, len); }

static bool valid_value(const char *v, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)v[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return false;
    }
    return true;
}

static int add_edit(struct exchange *x, bool request, enum stage_edit e, const char *name,
                    size_t nlen, const char *value, size_t vlen)
{
    char nm[64];
    if (!valid_name(name, nlen) || (e != STAGE_REMOVE && !valid_value(value, vlen)) ||
        nlen >= sizeof nm)
        return -1;
    memcpy(nm, name, nlen);
    nm[nlen] = '\0';
    if (conf_header_reserved(nm, request))
        return -1;                      /* framing, connection, forwarding: portico's */
    struct stage_ext *ext = ext_of(x);
    if (!ext)
        return -1;
    uint32_t *n = request ? &ext->nreq_edits : &ext->nresp_edits;
    struct head_edit *list = request ? ext->req_edits : ext->resp_edits;
    if (*n >= STAGE_MAX_EDITS)
        return -1;
    const char *nc = arena_copy(x, name, nlen);
    const char *vc = e == STAGE_REMOVE ? "" : arena_copy(x, value, vlen);
    if (!nc || !vc)
        return -1;
    list[(*n)++] = (struct head_edit){ nc, vc, (uint32_t)nlen,
                                       e == STAGE_REMOVE ? 0 : (uint32_t)vlen, (uint8_t)e };
    return 0;
}

int stage_request_edit(struct stage_x *sx, enum stage_edit e, const char *name, size_t name_len,
                       const char *value, size_t value_len)
{
    return add_edit(sx->x, true, e, name, name_len, value, value_len);
}

int stage_response_edit(struct stage_x *sx, enum stage_edit e, const char *name, size_t name_len,
                        const char *value, size_t value_len)
{
    return add_edit(sx->x, false, e, name, name_len, value, value_len);
}

/* Whether an edit list removes or replaces the field `name` (so the head
 * writer drops the original). */
bool edits_drop(const struct head_edit *e, uint32_t n, const char *name, size_t nlen,
                bool present_elsewhere)
{
    (void)present_elsewhere;
    for (uint32_t i = 0; i < n; i++)
        if ((e[i].verb == STAGE_SET || e[i].verb == STAGE_REMOVE) && e[i].name_len == nlen &&
            http_ieq(e[i].name, name, nlen))
            return true;
    return false;
}

/* Write the fields an edit list adds; `has` says whether the original head
 * had a field of a name (for STAGE_DEFAULT). */
void edits_put(struct http_hw *hw, const struct head_edit *e, uint32_t n, const struct http_msg *m,
               const struct stage_field *f, uint32_t nf, const char *block, size_t block_len)
{
    for (uint32_t i = 0; i < n; i++) {
        if (e[i].verb == STAGE_REMOVE)
            continue;
        bool earlier = false;           /* an earlier stage set it: the first one wins */
        for (uint32_t k = 0; !earlier && e[i].verb != STAGE_ADD && k < i; k++)
            earlier = (e[k].verb == STAGE_SET || e[k].verb == STAGE_DEFAULT) &&
                      e[k].name_len == e[i].name_len && http_ieq(e[k].name, e[i].name, e[k].name_len);
        if (earlier)
            continue;
        if (e[i].verb == STAGE_DEFAULT) {
            const char *v;
            size_t vl;
            bool there = m ? find_field(m, e[i].name, e[i].name_len, &v, &vl) : false;
            const char *bv;
            size_t bvl;
            there = there || (block && http_block_field(block, block_len, e[i].name, e[i].name_len,
                                                   &bv, &bvl));
            for (uint32_t k = 0; !there && k < nf; k++)
                there = f[k].name_len == e[i].name_len && http_ieq(f[k].name, e[i].name, f[k].name_len);
            for (uint32_t k = 0; !there && k < i; k++)     /* an earlier stage's field */
                there = e[k].verb != STAGE_REMOVE && e[k].name_len == e[i].name_len &&
                        http_ieq(e[k].name, e[i].name, e[k].name_len);
            if (there)
                continue;
        }
        http_hw_field(hw, e[i].name, e[i].name_len, e[i].value, e[i].value_len);
    }
}

/* ---------------------------------------------------------------- bodies from memory */

struct stage_body *stage_body_ref(struct stage_body *b)
{
    if (b)
        atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed);
    return b;
}

void stage_body_unref(struct stage_body *b)
{
    if (b && atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) == 1)
        b->release(b);
}

static void body_free(struct stage_body *b) { free(b); }

struct stage_body *stage_body_copy(const void *data, size_t len)
{
    struct stage_body *b = malloc(sizeof *b + (len ? len : 1));
    if (!b)
        return NULL;
    char *d = (char *)(b + 1);
    memcpy(d, data, len);
    atomic_init(&b->refs, 1);
    b->len = len;
    b->data = d;
    b->release = body_free;
    return b;
}

int stage_answer_block(struct stage_x *sx, int status, const char *block, size_t block_len,
                       const struct stage_field *fields, size_t n, struct stage_body *body)
{
    struct exchange *x = sx->x;
    struct stage_ext *e = ext_of(x);
    if (!e || status < 200 || status > 599 || n > sizeof e->answer_fields / sizeof e->answer_fields[0] ||
        block_len > UINT32_MAX)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (!valid_name(fields[i].name, fields[i].name_len) ||
            !valid_value(fields[i].value, fields[i].value_len))
            return -1;
        const char *nc = arena_copy(x, fields[i].name, fields[i].name_len);
        const char *vc = arena_copy(x, fields[i].value, fields[i].value_len);
        if (!nc || !vc)
            return -1;
        e->answer_fields[i] = (struct stage_field){ nc, vc, fields[i].name_len, fields[i].value_len };
    }
    e->nanswer_fields = (uint32_t)n;
    e->answer_block = block_len ? block : NULL;
    e->answer_block_len = (uint32_t)block_len;
    stage_body_unref(x->st->body);
    x->st->body = stage_body_ref(body);
    x->st->body_off = 0;
    x->st->answer_status = status;
    x->st->answered = true;
    return 0;
}

int stage_answer(struct stage_x *sx, int status, const struct stage_field *fields, size_t n,
                 struct stage_body *body)
{
    return stage_answer_block(sx, status, NULL, 0, fields, n, body);
}

void stage_resume(struct stage_x *sx)
{
    struct exchange *x = sx->x;
    if (!x->st->parked)
        return;
    x->st->parked = false;
    exchange_continue(x);
    client_drive(x->c);
}

static void resume_timeout(struct loop *l, struct loop_timer *t)
{
    (void)l;
    struct stage_state *st = container_of(t, struct stage_state, resume_timer);
    stage_resume(&st->sx[st->next ? st->next - 1 : 0]);
}

void stage_resume_after(struct stage_x *sx, uint64_t ms)
{
    struct stage_state *st = sx->x->st;
    st->resume_timer.cb = resume_timeout;
    loop_timer_arm(sx->x->c->w->loop, &st->resume_timer, ms);
}

void stage_finish(struct stage_x *sx, int status_if_no_answer)
{
    struct exchange *x = sx->x;
    struct client *c = x->c;
    if (!x->st->parked)
        return;
    x->st->parked = false;
    if (x->st->answered)
        exchange_answer(x);
    else
        exchange_fail(x, status_if_no_answer, "stage");
    client_drive(c);
}
