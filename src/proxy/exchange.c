/* proxy/exchange.c: one exchange, a request and its response: start, the pump that moves
 * bytes both ways, body framing, finish or fail. */
#include "proxy_int.h"

static long reframe_in_place(struct http_chunked *ch, struct buf *b, char *p, size_t avail,
                             bool strip, bool *progress);
static bool frame_response(struct exchange *x);
static bool frame_body(struct exchange *x);
static int frame_request(struct exchange *x);
static void exchange_finish(struct exchange *x);

/* The exchange is over: its stages hear how it ended (logs, metrics), its
 * upstream connection goes back to the pool (upstream_keep) or is closed,
 * and it is freed. The caller no longer uses x. */
void exchange_free(struct exchange *x, bool upstream_keep)
{
    struct worker *w = x->c->w;
    attempt_end(x, false, false);
    if (!x->status)
        x->status = 499;        /* no status: the client went away (nginx's 499) */
    if (x->st) {
        stages_end(x);
        stage_state_release(x);
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

/* A complete request head is at the front of c->in: route it and start
 * proxying it, or answer it. */
/* Route a request head: its normalised path (so that /./auth/ and /%61uth/
 * meet the rules for /auth/) into w->npath, and the route, or answer it
 * (400, 404, OPTIONS *, 413). NULL when answered. */
static const struct conf_route *exchange_route(struct client *c, const struct http_request *r,
                                               size_t head_len, size_t *nplen)
{
    struct worker *w = c->w;
    struct conf *conf = w->conf;
    const struct http_msg *m = &r->m;
    bool has_body = m->body == HTTP_BODY_CHUNKED || (m->body == HTTP_BODY_LENGTH && m->content_length);
    if (m->has_underscore && conf->underscores == CONF_UNDERSCORES_REJECT) {
        client_reject(c, r, 400, "header name with an underscore", false, 0);
        return NULL;
    }
    const char *path = "/";
    size_t plen = 1;
    *nplen = 0;
    if (r->path && r->path[0] == '/') {
        const struct conf_pathnorm *pn = &conf->pathnorm;
        long n = http_normalize_path(r->path, r->path_len, w->npath,
                                     (pn->merge_slashes ? HTTP_PATH_MERGE_SLASHES : 0) |
                                     (pn->allow_encoded_slash ? HTTP_PATH_ALLOW_ENCODED_SLASH : 0));
        if (n < 0) {
            client_reject(c, r, 400, "invalid path encoding", false, 0);
            return NULL;
        }
        path = w->npath;
        plen = *nplen = (size_t)n;
    }
    const struct conf_route *rt = route_match(conf, r, path, plen);
    if (!rt) {
        bool star = r->path && r->path[0] == '*';
        client_reject(c, r, star ? 200 : 404, "no route", m->keep_alive && !has_body, head_len);
        return NULL;
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
        return NULL;
    }
    return rt;
}

/* A new exchange for a routed request, with room for its route's stages. */
static struct exchange *exchange_new(struct client *c, const struct http_request *r,
                                     const struct conf_route *rt, size_t head_len)
{
    struct worker *w = c->w;
    const struct http_msg *m = &r->m;
    bool has_body = m->body == HTTP_BODY_CHUNKED || (m->body == HTTP_BODY_LENGTH && m->content_length);
    uint32_t ri = (uint32_t)(rt - w->conf->routes);
    struct exchange *x = exchange_alloc(w->cur->g->chains[ri]);
    if (!x)
        return NULL;
    x->c = c;
    c->x = x;
    x->wg = w->cur;
    x->wg->users++;
    x->conf = w->conf;
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
    x->path_len = (uint16_t)(r->target_len < sizeof x->path ? r->target_len : sizeof x->path);
    memcpy(x->path, r->target, x->path_len);
    x->idempotent = is_idempotent(r->method, r->method_len);
    return x;
}

/* Keep the request head (and its normalised path) past c->in: a parked
 * exchange, or a stage that reads request fields later. The copy is parsed
 * again, once, into st->rcopy. False when out of memory. */
static bool exchange_keep_head(struct exchange *x, const struct http_request *r, size_t head_len,
                               const char *npath, size_t nplen)
{
    struct stage_state *st = x->st;
    struct worker *w = x->c->w;
    if (st->rcopy)
        return true;
    uint32_t nh = x->conf->limits.max_headers;
    st->head = malloc(head_len + (nplen ? nplen : 1));
    st->rcopy = calloc(1, sizeof *st->rcopy + nh * (sizeof(struct http_header) + 1));
    if (!st->head || !st->rcopy)
        return false;
    memcpy(st->head, buf_head(x->c->in), head_len);
    st->head_len = (uint32_t)head_len;
    st->rcopy->m.headers = (struct http_header *)(void *)(st->rcopy + 1);
    st->rcopy->m.kinds = (uint8_t *)(st->rcopy->m.headers + nh);
    struct http_limits lim = w->lim;
    lim.max_headers = nh;
    if (http_parse_request(st->head, head_len, st->rcopy, &lim) != (int)head_len)
        return false;
    (void)r;
    if (nplen && !st->npath_owned) {
        if (!(st->npath = malloc(nplen)))
            return false;
        memcpy(st->npath, npath, nplen);
        st->npath_len = (uint32_t)nplen;
        st->npath_owned = true;
    }
    st->req = st->rcopy;
    return true;
}

/* The request stages said continue: build the upstream head, send what the
 * client waits for, and attach an upstream connection. consume: head bytes
 * still at the front of c->in. */
static void exchange_forward(struct exchange *x, const struct http_request *r, const char *npath,
                             size_t nplen, size_t consume)
{
    struct client *c = x->c;
    struct worker *w = c->w;
    if (!x->client_len)
        client_identity(x, r);          /* a route without the forward stage */
    balance_key(x, r);
    if (!(x->uhead = buf_get(&w->bufs)) || !build_request_head(x, r, x->uhead, npath, nplen)) {
        exchange_fail(x, 431, "request head too large to forward");
        return;
    }
    if (consume)
        buf_consume(c->in, consume);
    if (x->st) {
        x->st->req = x->st->rcopy;      /* c->in moves on: only a copy stays readable */
        if (!x->st->npath_owned)
            x->st->npath = NULL;        /* w->npath is the next request's */
    }
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
        loop_timer_arm(w->loop, &c->timer, x->conf->limits.body_timeout);
    if (upstream_attach(x, false, 502))
        exchange_pump(x);
}

/* Act on the request stages' verdict. */
static void exchange_verdict(struct exchange *x, enum stage_verdict v, const struct http_request *r,
                             const char *npath, size_t nplen, size_t consume)
{
    struct client *c = x->c;
    /* a stage that reads request fields later gets a copy of the head, made
     * only now: an exchange answered at once (a cache hit) does without */
    bool keep = v == STAGE_WAIT || (v == STAGE_CONTINUE && x->st->chain->keep_request_headers);
    if (keep && consume && !exchange_keep_head(x, r, consume, npath, nplen)) {
        exchange_fail(x, 503, "out of memory");
        return;
    }
    if (v == STAGE_CONTINUE) {
        exchange_forward(x, r, npath, nplen, consume);
        return;
    }
    if (consume)
        buf_consume(c->in, consume);
    if (!x->st->npath_owned)
        x->st->npath = NULL;            /* w->npath is the next request's */
    x->st->req = x->st->rcopy;          /* c->in moved on: only a copy stays readable */
    if (v == STAGE_ANSWERED) {
        exchange_answer(x);
        return;
    }
    /* parked: the upstream's response_timeout bounds the wait */
    x->st->parked = true;
    x->st->req = x->st->rcopy;
    loop_timer_arm(c->w->loop, &c->timer, x->route->upstream->response_timeout);
}

/* A complete request head is at the front of c->in: route it, run its
 * route's request stages, then proxy it, answer it or park it. */
void exchange_start(struct client *c, const struct http_request *r, size_t head_len)
{
    c->scanned = 0;
    c->seq++;
    size_t nplen;
    const struct conf_route *rt = exchange_route(c, r, head_len, &nplen);
    if (!rt)
        return;
    const char *npath = nplen ? c->w->npath : NULL;
    struct exchange *x = exchange_new(c, r, rt, head_len);
    if (!x) {
        client_local_response(c, 503, "out of memory", false);
        return;
    }
    if (!x->st) {
        exchange_forward(x, r, npath, nplen, head_len);
        return;
    }
    struct stage_state *st = x->st;
    if (!st->npath && nplen) {
        /* the worker's scratch, valid during on_request; a kept head has
         * its own copy (exchange_keep_head) */
        st->npath = (char *)npath;
        st->npath_len = (uint32_t)nplen;
    }
    st->req = st->rcopy ? st->rcopy : r;
    st->in_head = (uint32_t)head_len;
    enum stage_verdict v = stages_request(x);
    st->in_head = 0;
    exchange_verdict(x, v, r, npath, nplen, head_len);
}

/* A parked exchange resumes (stage_resume): the rest of its request stages,
 * on the kept copy of its head. */
void exchange_continue(struct exchange *x)
{
    struct stage_state *st = x->st;
    loop_timer_stop(x->c->w->loop, &x->c->timer);
    st->req = st->rcopy;
    enum stage_verdict v = stages_request(x);
    exchange_verdict(x, v, st->rcopy, st->npath, st->npath_len, 0);
}

/* A stage answered (stage_answer): no upstream. The response stages see the
 * answer's head; the body is written from memory. A request body is not
 * read: the connection closes after the answer. */
bool exchange_answer(struct exchange *x)
{
    struct client *c = x->c;
    struct stage_state *st = x->st;
    x->status = st->answer_status;
    if (!x->req_done && frame_request(x) == 0 && x->req_done) {
        /* the whole (small) body is already here: drop it, keep the connection */
        buf_consume(c->in, x->req_fwd);
        x->req_fwd = 0;
    }
    if (!x->req_done)
        x->client_keep = false;
    if (c->w->draining)
        x->client_keep = false;
    stages_response(x, NULL, false);
    if (!ensure_buf(c->w, &c->out) || !write_answer_head(x, c->out)) {
        stage_body_unref(st->body);
        st->body = NULL;
        st->answered = false;
        exchange_fail(x, 500, "answer head too large");
        return false;
    }
    x->resp_head_done = x->resp_done = true;
    loop_timer_arm(c->w->loop, &c->timer, x->conf->limits.send_timeout);
    return true;
}

/* A stage answers instead of the upstream (stages_upstream said so): the
 * upstream's response, if any, is dropped with its connection. False when
 * the exchange ended. */
bool exchange_replace(struct exchange *x, int status)
{
    struct worker *w = x->c->w;
    attempt_end(x, true, status < 500);
    if (x->u) {
        struct uconn *u = x->u;
        x->u = NULL;
        uconn_release(u, false);
    }
    buf_put(&w->bufs, x->uin);
    x->uin = NULL;
    x->resp_fwd = 0;
    x->upstream_keep = false;
    x->st->parked = false;
    loop_timer_stop(w->loop, &x->c->timer);
    return exchange_answer(x);
}

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

/* The stages watching the body see what frame_response added to x->uin
 * from `from` on, without its framing. */
static void watch_new(struct exchange *x, uint32_t from)
{
    struct stage_state *st = x->st;
    char *p = buf_head(x->uin) + from;
    size_t len = x->resp_fwd - from;
    if (x->resp_body != HTTP_BODY_CHUNKED || x->dechunk) {
        if (len)
            stages_watch(x, p, len, false);
    } else {
        while (len) {
            size_t off, dlen;
            long n = http_chunked_feed(&st->wch, p, len, &off, &dlen);
            if (n <= 0)
                break;          /* canonical bytes we framed ourselves */
            if (dlen)
                stages_watch(x, p + off, dlen, false);
            p += n;
            len -= (size_t)n;
        }
    }
    if (x->resp_done) {
        stages_watch(x, NULL, 0, true);
        st->watch = 0;
    }
}

/* Frame newly arrived response body bytes: extend resp_fwd over them. */
static bool frame_response(struct exchange *x)
{
    if (x->st && x->st->watch) {
        uint32_t from = x->resp_fwd;
        bool ok = frame_body(x);
        if (ok)
            watch_new(x, from);
        return ok;
    }
    return frame_body(x);
}

static bool frame_body(struct exchange *x)
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
                log_rl_warn("upstream %s %s: invalid chunked body", x->route->upstream->name,
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
 * After it: the client's response is cut, so end the connection so that
 * it cannot look complete. x is freed either way. */
void exchange_fail(struct exchange *x, int status, const char *why)
{
    struct client *c = x->c;
    if (x->resp_head_done || x->tunnel) {
        log_rl_warn("exchange aborted after response head: %s", why);
        client_abort(c);
        return;
    }
    if (status >= 500)
        log_rl_warn("upstream %s: %d %s", x->route->upstream->name, status, why);
    if (status >= 500 && x->st && stages_upstream(x, NULL, status)) {
        /* a stale copy instead of the error; our caller takes x as ended,
         * so the answer is written from the next loop iteration */
        if (exchange_replace(x, status))
            client_defer(c);
        return;
    }
    client_local_response(c, status, why, false);
}

/* Body bytes a transforming stage turned into output, framed for the
 * client (chunked for HTTP/1.1, as they are for 1.0), appended to st->tout. */
static bool tout_append(struct exchange *x, const char *data, size_t n, bool last)
{
    struct buf *t = x->st->tout;
    char hex[16];
    size_t hl = 0;
    bool chunked = x->req_minor >= 1;
    if (chunked && n) {
        static const char digits[] = "0123456789abcdef";
        char tmp[16];
        size_t k = 0;
        for (size_t v = n; v; v >>= 4)
            tmp[k++] = digits[v & 15];
        while (k)
            hex[hl++] = tmp[--k];
        hex[hl++] = '\r';
        hex[hl++] = '\n';
    }
    size_t need = hl + n + (chunked && n ? 2 : 0) + (chunked && last ? 5 : 0);
    if (need > buf_room(t))
        return false;
    buf_append(t, hex, hl);
    buf_append(t, data, n);
    if (chunked && n)
        buf_append(t, "\r\n", 2);
    if (chunked && last)
        buf_append(t, "0\r\n\r\n", 5);
    return true;
}

/* Offer the body read so far (x->resp_fwd bytes, unframed) to the
 * transforming stage while its output has room: backpressure is the
 * client taking st->tout. */
static bool transform_step(struct exchange *x)
{
    struct stage_state *st = x->st;
    struct worker *w = x->c->w;
    const struct stage_link *l = &st->chain->links[st->xform];
    while (!st->tend) {
        if (!ensure_buf(w, &st->tout) || (!w->tscratch && !(w->tscratch = malloc(TSCRATCH))))
            return true;
        if (!buf_len(st->tout))
            st->tout->start = st->tout->end = 0;
        else if (buf_room(st->tout) < 128)
            buf_compact(st->tout);
        size_t room = buf_room(st->tout);
        if (room < 128)
            return true;
        size_t cap = room - 32 < TSCRATCH ? room - 32 : TSCRATCH;
        size_t in = x->resp_fwd, outl = 0;
        bool end = x->resp_done;
        if (!in && !end)
            return true;
        size_t used = l->def->on_body(&st->sx[st->xform], in ? buf_head(x->uin) : "", in, end,
                                      w->tscratch, cap, &outl);
        if (st->body_error) {
            exchange_fail(x, 502, "a stage could not transform the response body");
            return false;
        }
        used = used < in ? used : in;
        outl = outl < cap ? outl : cap;
        if (used) {
            buf_consume(x->uin, used);
            x->resp_fwd -= (uint32_t)used;
        }
        bool last = end && used == in && !outl;
        if ((outl || last) && !tout_append(x, w->tscratch, outl, last))
            return true;
        if (last)
            st->tend = true;
        else if (!used && !outl)
            return true;
    }
    return true;
}

/* What a step of the pump did. PUMP_ENDED: the exchange is over and freed
 * (the step called exchange_fail, exchange_finish, client_close or the
 * like): the caller must not touch x again and returns at once. This is
 * the one ownership rule: who freed an exchange is said by a return value. */
enum pump { PUMP_IDLE, PUMP_MOVED, PUMP_ENDED };

/* 1. client -> portico: body or tunnel bytes; while waiting on the upstream,
 * notice a client that goes away (pipelined bytes are kept). */
static enum pump pump_client_read(struct exchange *x)
{
    struct client *c = x->c;
    struct worker *w = c->w;
    enum pump r = PUMP_IDLE;
    bool body = !x->req_done && c->readable && !x->client_eof;
    bool watch = x->req_done && c->readable && !x->tunnel && !x->resp_done;
    if (watch && c->in && buf_room(c->in) == 0)
        buf_compact(c->in);
    if (body || (watch && (!c->in || buf_room(c->in)))) {
        ssize_t n = client_read(c);
        if (n == READ_NOMEM) {
            exchange_fail(x, 503, "out of memory");
            return PUMP_ENDED;
        }
        if (n > 0) {
            r = PUMP_MOVED;
            if (body)
                loop_timer_arm(w->loop, &c->timer, x->tunnel ? x->conf->limits.tunnel_timeout
                                                             : x->conf->limits.body_timeout);
        } else if ((n == 0 || n == -2) && body && x->tunnel) {
            /* half-close: pass it on, keep relaying the other way */
            x->client_eof = true;
            x->req_done = true;
            if (x->u)
                shutdown(x->u->io.fd, SHUT_WR);
        } else if (n == 0 || n == -2) {
            /* the client went away: cancel the upstream work */
            client_close(c);
            return PUMP_ENDED;
        }
    }
    bool was_done = x->req_done;
    int st = frame_request(x);
    if (st) {
        exchange_fail(x, st, st == 413 ? "chunked body over max_body" : "invalid chunked body");
        return PUMP_ENDED;
    }
    if (!was_done && x->req_done && !(c->out && buf_len(c->out)) && !x->resp_fwd)
        loop_timer_stop(w->loop, &c->timer);
    return r;
}

/* A write to a reused keep-alive connection failed before any body byte:
 * the server closed it as we used it; same server, new connection. */
static enum pump pump_reconnect(struct exchange *x, const char *why)
{
    log_rl_debug("reused upstream connection failed (%s): reconnecting", why);
    uconn_close(x->u);
    x->stale_retried = true;
    return upstream_attach(x, true, 502) ? PUMP_MOVED : PUMP_ENDED;
}

/* 2. portico -> upstream: the head, then validated body bytes, in one writev. */
static enum pump pump_upstream_write(struct exchange *x)
{
    struct client *c = x->c;
    struct worker *w = c->w;
    struct uconn *u = x->u;
    enum pump r = PUMP_IDLE;
    struct iovec iov[2];
    int n = 0;
    size_t hl = x->uhead ? buf_len(x->uhead) - x->uhead_sent : 0;
    if (hl)
        iov[n++] = (struct iovec){ buf_head(x->uhead) + x->uhead_sent, hl };
    if (x->req_fwd)
        iov[n++] = (struct iovec){ buf_head(c->in), x->req_fwd };
    if (n) {
        ssize_t wr = writev(u->io.fd, iov, n);
        if (wr < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            int e = errno;
            if (u->reused && !x->body_started && !x->stale_retried)
                return pump_reconnect(x, strerror(e));
            /* nothing sent yet: any request may go elsewhere */
            attempt_failed(x, strerror(e), 502,
                           x->idempotent || (x->uhead_sent == 0 && !x->body_started));
            return PUMP_ENDED;
        }
        if (wr < 0 || (size_t)wr < hl + x->req_fwd)
            u->writable = false;
        if (wr > 0) {
            loop_timer_arm(w->loop, &u->timer, x->route->upstream->response_timeout);
            size_t done = (size_t)wr, a = done < hl ? done : hl;
            x->uhead_sent += (uint32_t)a;
            done -= a;
            if (done) {
                x->body_started = true;
                buf_consume(c->in, done);
                x->req_fwd -= (uint32_t)done;
            }
            r = PUMP_MOVED;
        }
    }
    bool head_sent = x->uhead && x->uhead_sent >= buf_len(x->uhead);
    if (head_sent && x->req_done && x->req_fwd == 0 && x->req_body != REQ_TUNNEL) {
        x->req_sent = true;
        loop_timer_arm(w->loop, &u->timer, x->route->upstream->response_timeout);
    } else if (head_sent && !x->req_done && x->req_fwd == 0 && !x->resp_head_done) {
        /* everything we have is sent: we wait on the client, whose pace
         * body_timeout governs, not the upstream's timer */
        loop_timer_stop(w->loop, &u->timer);
    }
    return r;
}

/* 2'. a tunnel: client bytes as they come. */
static enum pump pump_tunnel_write(struct exchange *x)
{
    struct client *c = x->c;
    struct uconn *u = x->u;
    ssize_t wr = write(u->io.fd, buf_head(c->in), x->req_fwd);
    if (wr > 0) {
        buf_consume(c->in, (size_t)wr);
        x->req_fwd -= (uint32_t)wr;
        loop_timer_arm(c->w->loop, &c->timer, x->conf->limits.tunnel_timeout);
        if (!x->req_fwd && x->client_eof)
            shutdown(u->io.fd, SHUT_WR);
        return PUMP_MOVED;
    }
    if (wr < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        u->writable = false;
    } else if (wr < 0 && errno != EINTR) {
        client_close(c);
        return PUMP_ENDED;
    }
    return PUMP_IDLE;
}

/* The upstream closed (n == 0) or reset (n == -2) its side. */
static enum pump pump_upstream_eof(struct exchange *x, ssize_t n)
{
    struct uconn *u = x->u;
    bool nothing = !x->resp_head_done && buf_len(x->uin) == 0;
    if (x->resp_head_done && ((x->resp_body == HTTP_BODY_CLOSE && n == 0) || x->tunnel)) {
        uconn_close(u);             /* the end of a close-delimited body, or of a tunnel */
        x->resp_done = true;
        return PUMP_MOVED;
    }
    if (nothing && u->reused && !x->body_started && !x->stale_retried)
        return pump_reconnect(x, "closed");
    if (!x->resp_head_done) {
        attempt_failed(x, n == 0 ? "closed before responding" : "connection reset", 502,
                       x->idempotent);
        return PUMP_ENDED;
    }
    /* cut mid-body (or reset): the client's message must not look complete either */
    exchange_fail(x, 502, n == 0 ? "upstream closed mid-body" : "upstream reset mid-body");
    return PUMP_ENDED;
}

/* 3. upstream -> portico. */
static enum pump pump_upstream_read(struct exchange *x)
{
    struct client *c = x->c;
    struct worker *w = c->w;
    struct uconn *u = x->u;
    if (!ensure_buf(w, &x->uin)) {
        exchange_fail(x, 502, "out of memory");
        return PUMP_ENDED;
    }
    /* compact when all is ready for the client or the window has moved
     * far: a partial chunk line at the end must get room */
    if (buf_room(x->uin) == 0 && x->uin->start > 0 &&
        (x->resp_fwd == buf_len(x->uin) || x->uin->start >= x->uin->cap / 2))
        buf_compact(x->uin);
    if (!buf_room(x->uin) && !x->uin->start)
        return PUMP_IDLE;
    ssize_t n = read_into(u->io.fd, x->uin, &u->readable, u->hup);
    if (n > 0) {
        if (x->tunnel)
            loop_timer_arm(w->loop, &c->timer, x->conf->limits.tunnel_timeout);
        else
            loop_timer_arm(w->loop, &u->timer, x->route->upstream->response_timeout);
        return PUMP_MOVED;
    }
    return n == 0 || n == -2 ? pump_upstream_eof(x, n) : PUMP_IDLE;
}

/* 4. the response head, then body framing (and a transforming stage). */
static enum pump pump_response(struct exchange *x)
{
    enum pump r = PUMP_IDLE;
    if (!x->resp_head_done && x->uin && buf_len(x->uin)) {
        int h = response_head(x);
        if (h < 0)
            return PUMP_ENDED;
        if (h > 0)
            r = PUMP_MOVED;
    }
    if (x->resp_head_done && x->uin && !frame_response(x)) {
        exchange_fail(x, 502, "invalid chunked response body");
        return PUMP_ENDED;
    }
    if (x->st && x->st->xform >= 0 && x->resp_head_done && !transform_step(x))
        return PUMP_ENDED;
    return r;
}

/* 5. portico -> client, and the end of the exchange once all is written. */
static enum pump pump_client_write(struct exchange *x)
{
    struct client *c = x->c;
    enum pump r = PUMP_IDLE;
    char *sp;
    size_t ready = ready_span(x, &sp);
    if (c->writable && ((c->out && buf_len(c->out)) || ready)) {
        size_t before = ready + (c->out ? buf_len(c->out) : 0);
        if (!client_flush(c))
            return PUMP_ENDED;
        if (ready_span(x, &sp) + (c->out ? buf_len(c->out) : 0) != before)
            r = PUMP_MOVED;
    }
    bool drained = x->resp_fwd == 0 && !ready_span(x, &sp) &&
                   (!x->st || x->st->xform < 0 || x->st->tend);
    if (x->resp_done && x->resp_head_done && drained && !c->out) {
        if (x->tunnel) {
            client_close(c);        /* the tunnel ended upstream side */
        } else if (!x->req_done) {
            /* the server answered before the body ended: stop reading it,
             * but lingering, so the response is not reset away */
            client_linger(c);
        } else {
            exchange_finish(x);
        }
        return PUMP_ENDED;
    }
    if (x->tunnel && x->client_eof && !x->req_fwd && x->u == NULL) {
        client_close(c);
        return PUMP_ENDED;
    }
    return r;
}

/* Move bytes both ways until nothing more can move: the only place bytes
 * move while an exchange is active, run from either side's events. */
void exchange_pump(struct exchange *x)
{
    struct client *c = x->c;
    if (x->st && x->st->parked) {
        /* nothing moves while parked; a client that goes away ends it */
        if (c->hup)
            client_close(c);
        return;
    }
    for (;;) {
        enum pump r[5] = { PUMP_IDLE, PUMP_IDLE, PUMP_IDLE, PUMP_IDLE, PUMP_IDLE };
        if ((r[0] = pump_client_read(x)) == PUMP_ENDED)
            return;
        struct uconn *u = x->u;
        if (u && !u->connecting && u->writable && !x->req_sent)
            r[1] = pump_upstream_write(x);
        else if (x->tunnel && u && u->writable && x->req_fwd)
            r[1] = pump_tunnel_write(x);
        if (r[1] == PUMP_ENDED)
            return;
        if (c->in && !x->req_fwd)
            release_if_empty(c->w, &c->in);
        u = x->u;
        if (u && !u->connecting && u->readable && !x->resp_done &&
            (r[2] = pump_upstream_read(x)) == PUMP_ENDED)
            return;
        if ((r[3] = pump_response(x)) == PUMP_ENDED || (r[4] = pump_client_write(x)) == PUMP_ENDED)
            return;
        if (r[0] != PUMP_MOVED && r[1] != PUMP_MOVED && r[2] != PUMP_MOVED &&
            r[3] != PUMP_MOVED && r[4] != PUMP_MOVED)
            return;
    }
}
