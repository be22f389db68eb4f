/* proxy/head.c: the heads portico writes, through the bounded writer: the request head
 * for the upstream and the response head (and interim heads) for the client. */
#include "proxy_int.h"

static uint64_t splitmix(uint64_t *s);
static size_t make_request_id(struct worker *w, char *out);
static bool is_hop_by_hop(const struct http_msg *m, uint32_t i);
static void put_target(struct http_hw *hw, const struct exchange *x, const struct http_request *r,
                       const char *npath, size_t nplen);
static void put_forwarded(struct http_hw *hw, const struct exchange *x, const struct http_msg *m);
static void put_response_fields(struct http_hw *hw, const struct http_msg *m, bool tunnel,
                                const struct stage_ext *ext);
static bool out_write(struct buf *b, void (*put)(struct http_hw *, void *), void *arg);
static void put_interim(struct http_hw *hw, void *arg);
static void put_te(struct http_hw *hw, const struct exchange *x, const struct http_msg *m);
static void put_final(struct http_hw *hw, void *arg);
static bool te_other_than_chunked(const struct http_msg *m);
static void response_framing(struct exchange *x, const struct http_response *r);

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* 16 hex digits of v, a byte per nibble at once (the digits' order is the
 * bytes' in memory: any order will do for random bits). */
static void hex16(uint64_t v, char *out)
{
    for (int half = 0; half < 2; half++, v >>= 32) {
        uint64_t x = v & 0xffffffffu;
        x = (x | x << 16) & 0x0000ffff0000ffffull;
        x = (x | x << 8) & 0x00ff00ff00ff00ffull;
        x = (x | x << 4) & 0x0f0f0f0f0f0f0f0full;
        /* '0' + x, and 'a' - '0' - 10 more for the nibbles over 9 */
        uint64_t over9 = ((x + 0x0606060606060606ull) >> 4) & 0x0101010101010101ull;
        x += 0x3030303030303030ull + over9 * ('a' - '0' - 10);
        memcpy(out + 8 * half, &x, 8);
    }
}

static size_t make_request_id(struct worker *w, char *out)
{
    uint64_t s = w->reqid_seed ^ (w->reqid_n++ * 0x2545f4914f6cdd1dull);
    uint64_t a = splitmix(&s), b = splitmix(&s);
    hex16(a, out);
    hex16(b, out + 16);
    return 32;
}

/* A field named in Connection (RFC 9110 7.6.1) is for this hop only. */
bool nominated(const struct http_msg *m, uint32_t i)
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
    if (x->https)
        http_hw_lit(hw, "X-Forwarded-Proto: https\r\n");
    else
        http_hw_lit(hw, "X-Forwarded-Proto: http\r\n");
}

/* The request's id: the client's first non-empty X-Request-Id (not one
 * named in Connection), else a new one. */
void request_id(struct exchange *x, const struct http_request *r)
{
    const struct http_msg *m = &r->m;
    for (uint32_t i = 0; i < m->nheaders; i++) {
        const struct http_header *h = &m->headers[i];
        if (m->kinds[i] != HTTP_H_X_REQUEST_ID || !h->value_len || nominated(m, i))
            continue;
        x->reqid_len = (uint8_t)(h->value_len < sizeof x->reqid ? h->value_len : sizeof x->reqid);
        memcpy(x->reqid, h->value, x->reqid_len);
        return;
    }
    x->reqid_len = (uint8_t)make_request_id(x->c->w, x->reqid);
}

/* Build the upstream request head into b through the bounded writer.
 * False if it does not fit (the client gets 431). */
bool build_request_head(struct exchange *x, const struct http_request *r, struct buf *b,
                               const char *npath, size_t nplen)
{
    const struct http_msg *m = &r->m;
    struct http_hw hw;
    http_hw_init(&hw, buf_tail(b), buf_room(b));
    http_hw_put(&hw, r->method, r->method_len);
    http_hw_lit(&hw, " ");
    put_target(&hw, x, r, npath, nplen);
    http_hw_lit(&hw, " HTTP/1.1\r\n");

    bool have_host = false;
    bool drop_underscores = x->conf->underscores == CONF_UNDERSCORES_DROP;
    const struct stage_ext *ext = x->st ? x->st->ext : NULL;
    uint32_t nedits = ext ? ext->nreq_edits : 0;
    for (uint32_t i = 0; i < m->nheaders; i++) {
        const struct http_header *h = &m->headers[i];
        if (nedits && edits_drop(ext->req_edits, nedits, h->name, h->name_len, false))
            continue;           /* a stage sets or removes it */
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
        case HTTP_H_X_REQUEST_ID:       /* request_id() chose ours */
            continue;
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
    if (!x->reqid_len)
        request_id(x, r);
    http_hw_field(&hw, "X-Request-Id", 12, x->reqid, x->reqid_len);
    http_hw_lit(&hw, "Via: 1.1 portico\r\n");
    if (nedits)
        edits_put(&hw, ext->req_edits, nedits, m, NULL, 0, NULL, 0);
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

/* Fields of an upstream head that go on to the client: not hop-by-hop
 * (Upgrade is kept for a 101). */
static void put_response_fields(struct http_hw *hw, const struct http_msg *m, bool tunnel,
                                const struct stage_ext *ext)
{
    uint32_t nedits = ext ? ext->nresp_edits : 0;
    for (uint32_t i = 0; i < m->nheaders; i++) {
        const struct http_header *h = &m->headers[i];
        if (!(m->kinds[i] == HTTP_H_UPGRADE && tunnel) && is_hop_by_hop(m, i))
            continue;
        if (nedits && edits_drop(ext->resp_edits, nedits, h->name, h->name_len, false))
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
    put_response_fields(hw, &a->r->m, false, NULL);
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
    const struct stage_ext *ext = x->st ? x->st->ext : NULL;
    bool xform = x->st && x->st->xform >= 0;
    http_hw_status(hw, r->status, r->reason, r->reason_len);
    put_response_fields(hw, m, x->tunnel, ext);
    if (ext && ext->nresp_edits)
        edits_put(hw, ext->resp_edits, ext->nresp_edits, m, NULL, 0, NULL, 0);
    if (xform) {
        /* a transformed body has a length nobody knows yet */
        if (x->req_minor >= 1)
            http_hw_lit(hw, "Transfer-Encoding: chunked\r\n");
    } else if (m->has_cl && !m->has_te && r->status >= 200 && r->status != 204) {
        http_hw_lit(hw, "Content-Length: ");
        http_hw_u64(hw, m->content_length);
        http_hw_lit(hw, "\r\n");
    }
    if (!xform && ((x->resp_body == HTTP_BODY_CHUNKED && !x->dechunk) ||
                   (a->te_other && x->resp_body != HTTP_BODY_NONE)))
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

/* The response stages see the head; a transformer (one at most) takes a
 * body it can rewrite: not a HEAD's, an empty one, a tunnel or one with
 * transfer codings. Its output is framed by portico (chunked for HTTP/1.1,
 * close-delimited for 1.0), so the input is read without its framing. */
static void response_stages(struct exchange *x, const struct http_response *r, bool te_other)
{
    bool can = !x->is_head && !x->tunnel && !te_other && x->resp_body != HTTP_BODY_NONE &&
               !(x->resp_body == HTTP_BODY_LENGTH && x->resp_remaining == 0);
    stages_response(x, r, can);
    if (x->st->xform >= 0) {
        x->dechunk = true;
        if (x->req_minor == 0)
            x->client_keep = false;
    } else if (x->st->watch) {
        http_chunked_init(&x->st->wch);
        bool empty = x->resp_body == HTTP_BODY_NONE ||
                     (x->resp_body == HTTP_BODY_LENGTH && x->resp_remaining == 0);
        if (empty) {
            stages_watch(x, NULL, 0, true);
            x->st->watch = 0;
        }
    }
}

/* The head of a stage's answer (stage_answer): its fields with the
 * response stages' edits, Content-Length, and Connection. */
/* An answer block's lines, but those a response edit removes or replaces. */
static void put_block(struct http_hw *hw, const struct stage_ext *ext, const char *b, size_t len)
{
    if (!ext->nresp_edits) {
        http_hw_put(hw, b, len);
        return;
    }
    const char *end = b + len;
    while (b < end) {
        const char *eol = memchr(b, '\r', (size_t)(end - b));
        const char *colon = memchr(b, ':', (size_t)(end - b));
        if (!eol || !colon || colon > eol)
            break;
        if (!edits_drop(ext->resp_edits, ext->nresp_edits, b, (size_t)(colon - b), false))
            http_hw_put(hw, b, (size_t)(eol + 2 - b));
        b = eol + 2;
    }
}

bool write_answer_head(struct exchange *x, struct buf *b)
{
    const struct stage_state *st = x->st;
    const struct stage_ext *ext = st->ext;
    if (!buf_len(b))
        b->start = b->end = 0;
    struct http_hw hw;
    http_hw_init(&hw, buf_tail(b), buf_room(b));
    http_hw_status(&hw, st->answer_status, NULL, 0);
    if (ext && ext->answer_block)
        put_block(&hw, ext, ext->answer_block, ext->answer_block_len);
    for (uint32_t i = 0; ext && i < ext->nanswer_fields; i++) {
        const struct stage_field *f = &ext->answer_fields[i];
        if (ext->nresp_edits && edits_drop(ext->resp_edits, ext->nresp_edits, f->name,
                                           f->name_len, false))
            continue;
        http_hw_field(&hw, f->name, f->name_len, f->value, f->value_len);
    }
    if (ext && ext->nresp_edits)
        edits_put(&hw, ext->resp_edits, ext->nresp_edits, NULL, ext->answer_fields,
                  ext->nanswer_fields, ext->answer_block, ext->answer_block_len);
    if (st->answer_status != 204 && st->answer_status != 304) {
        http_hw_lit(&hw, "Content-Length: ");
        http_hw_u64(&hw, st->body ? st->body->len : 0);
        http_hw_lit(&hw, "\r\n");
    }
    if (!x->client_keep)
        http_hw_lit(&hw, "Connection: close\r\n");
    else if (x->req_minor == 0)
        http_hw_lit(&hw, "Connection: keep-alive\r\n");
    http_hw_lit(&hw, "\r\n");
    if (hw.overflow)
        return false;
    b->end += (uint32_t)http_hw_len(&hw);
    return true;
}

/* Parse the response head at the front of x->uin and queue the client
 * head: interim (1xx) heads go on to HTTP/1.1 clients as they come.
 * Returns 1 when done, 0 when more bytes are needed, -1 if x was ended. */
int response_head(struct exchange *x)
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
            log_rl_warn("upstream %s %s: bad response: %s", x->route->upstream->name,
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
                log_rl_debug("interim %d response not relayed: no room", r.status);
            buf_consume(x->uin, (size_t)n);
            continue;
        }
        if (r.status >= 200 && r.status != 101 && x->st && stages_upstream(x, &r, r.status))
            return exchange_replace(x, r.status) ? 1 : -1;
        response_framing(x, &r);
        if (x->st)
            response_stages(x, &r, a.te_other);
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
