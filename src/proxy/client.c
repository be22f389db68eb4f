/* proxy/client.c: client connections: reading and parsing request heads, the drive loop (the
 * only loop over a connection's states), local answers, writing, lingering close. */
#include "proxy_int.h"

static void client_free_later(struct client *c);
static int parse_head(struct client *c, struct http_request *r);
static void client_read_head(struct client *c);
void client_defer(struct client *c);

/* The peer's address as family and bytes; an IPv4 client of a dual-stack
 * listener (::ffff:a.b.c.d) counts as IPv4. Returns the byte count. */
size_t peer_addr(const struct client *c, uint8_t *family, uint8_t out[16])
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

size_t addr_text(int family, const uint8_t *a, char *out, size_t len)
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

size_t peer_text(const struct client *c, char *out, size_t len)
{
    uint8_t fam, a[16];
    peer_addr(c, &fam, a);
    return addr_text(fam, a, out, len);
}

/* Read from fd into b. Returns bytes read, 0 on EOF, -1 on EAGAIN (flag
 * cleared), -2 on error. A short read without HUP means drained. */
ssize_t read_into(int fd, struct buf *b, bool *readable, bool hup)
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

/* Read from the client into c->in (taken from the pool if needed), counting
 * the bytes. read_into()'s results, or READ_NOMEM without a buffer. */
ssize_t client_read(struct client *c)
{
    if (!ensure_buf(c->w, &c->in))
        return READ_NOMEM;
    ssize_t n = read_into(c->io.fd, c->in, &c->readable, c->hup);
    if (n > 0)
        obs_add(&c->w->obs->bytes_in, (uint64_t)n);
    return n;
}

static void client_free_later(struct client *c)
{
    c->next_dead = c->w->dead_clients;
    c->w->dead_clients = c;
}

void client_close(struct client *c)
{
    if (c->io.fd < 0)
        return;
    struct worker *w = c->w;
    if (c->x)
        exchange_free(c->x, false);
    loop_timer_stop(w->loop, &c->timer);
    close(c->io.fd);
    c->io.fd = -1;
    if (c->ip_counted) {
        uint8_t fam, a[16];
        peer_addr(c, &fam, a);
        limit_conn_release(fam, a);
        c->ip_counted = false;
    }
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
static void span_written(struct exchange *x, size_t n)
{
    struct stage_state *st = x->st;
    if (st && st->body) {
        st->body_off += n;
    } else if (st && st->xform >= 0) {
        buf_consume(st->tout, n);
    } else {
        buf_consume(x->uin, n);
        x->resp_fwd -= (uint32_t)n;
    }
}

/* Write c->out then, during an exchange, the ready response bytes.
 * Returns false if the connection was closed. */
bool client_flush(struct client *c)
{
    struct exchange *x = c->x;
    while (c->writable) {
        struct iovec iov[2];
        int n = 0;
        size_t outlen = c->out ? buf_len(c->out) : 0;
        if (outlen)
            iov[n++] = (struct iovec){ buf_head(c->out), outlen };
        char *sp;
        size_t slen = ready_span(x, &sp);
        if (slen)
            iov[n++] = (struct iovec){ sp, slen };
        if (n == 0)
            break;
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
        if ((size_t)w < outlen + slen)
            c->writable = false;
        size_t a = done < outlen ? done : outlen;
        if (a)
            buf_consume(c->out, a);
        done -= a;
        if (done)
            span_written(x, done);
        if (w > 0 && !c->writable)
            loop_timer_arm(c->w->loop, &c->timer, (x ? x->conf : c->w->conf)->limits.send_timeout);
    }
    release_if_empty(c->w, &c->out);
    /* During an exchange the client's timer runs only while we wait on the
     * client: its body (body_timeout), a blocked write (send_timeout), or a
     * tunnel (tunnel_timeout). Waiting on the upstream is the upstream's timer. */
    char *sp;
    if (x && c->state == C_EXCHANGE && x->req_done && !x->tunnel && !c->out &&
        !ready_span(x, &sp) && !(x->st && x->st->parked))
        loop_timer_stop(c->w->loop, &c->timer);
    return true;
}

void client_timeout(struct loop *l, struct loop_timer *t)
{
    (void)l;
    struct client *c = container_of(t, struct client, timer);
    switch (c->state) {
    case C_HEAD:
        client_reject(c, NULL, 408, "request head timeout", false, 0);
        break;
    case C_EXCHANGE:
        if (c->x && c->x->st && c->x->st->parked) {
            /* a stage parked it and nothing resumed it in time */
            c->x->st->parked = false;
            exchange_fail(c->x, 504, "parked by a stage past response_timeout");
            break;
        }
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

/* Queue a small local response; the exchange, if any, ends. keep: the
 * connection stays open, and client_drive() reads the next request once
 * this response is written. Nothing is written here: the caller returns to
 * client_drive(), which writes (no recursion into the next request). */
void client_local_response(struct client *c, int status, const char *why, bool keep)
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
        log_rl_info("client request rejected: %d %s", status, why ? why : "");
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
void client_reject(struct client *c, const struct http_request *r, int status,
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
void client_linger(struct client *c)
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
void client_abort(struct client *c)
{
    if (c->io.fd < 0)
        return;
    struct linger lg = { 1, 0 };
    setsockopt(c->io.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    client_close(c);
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

void client_defer(struct client *c)
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
void client_drive(struct client *c)
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

void client_io(struct loop *l, struct loop_io *io, unsigned ev)
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
