/* proxy/stage_bg.c: what happens to an exchange away from its own events:
 * wakers (another thread ends an exchange's wait) and background requests
 * (portico repeats a request on its own, a cache refreshing an entry). */
#include "proxy_int.h"

#include <fcntl.h>

/* ---------------------------------------------------------------- wakers */

struct stage_waker {
    atomic_uint refs;           /* the exchange's, and the holder's until it wakes or puts */
    struct worker *w;
    struct exchange *x;         /* NULL once the exchange has ended (worker thread only) */
    uint32_t link;
    void (*cb)(struct stage_x *sx);
    struct stage_waker *next;   /* in w->mbox */
};

static void waker_unref(struct stage_waker *k)
{
    if (atomic_fetch_sub_explicit(&k->refs, 1, memory_order_acq_rel) == 1)
        free(k);
}

struct stage_waker *stage_waker(struct stage_x *sx, void (*cb)(struct stage_x *sx))
{
    struct exchange *x = sx->x;
    if (x->st->waker)
        stage_waker_cancel(x);          /* one wait at a time: the newest counts */
    struct stage_waker *k = calloc(1, sizeof *k);
    if (!k)
        return NULL;
    atomic_init(&k->refs, 2);
    k->w = x->c->w;
    k->x = x;
    k->link = sx->i;
    k->cb = cb;
    x->st->waker = k;
    return k;
}

/* Any thread: the holder's reference goes into the worker's mailbox. */
void stage_waker_wake(struct stage_waker *k)
{
    struct worker *w = k->w;
    pthread_mutex_lock(&w->mbox_mu);
    k->next = w->mbox;
    w->mbox = k;
    pthread_mutex_unlock(&w->mbox_mu);
    loop_wake(w->loop);
}

void stage_waker_put(struct stage_waker *k)
{
    if (k)
        waker_unref(k);
}

/* The exchange ends: a later wake finds no one. */
void stage_waker_cancel(struct exchange *x)
{
    struct stage_waker *k = x->st->waker;
    if (!k)
        return;
    k->x = NULL;
    x->st->waker = NULL;
    waker_unref(k);
}

/* On the worker: run the callbacks of the wakers handed over, oldest first. */
void stage_mbox_drain(struct worker *w)
{
    pthread_mutex_lock(&w->mbox_mu);
    struct stage_waker *list = w->mbox, *rev = NULL;
    w->mbox = NULL;
    pthread_mutex_unlock(&w->mbox_mu);
    while (list) {
        struct stage_waker *n = list->next;
        list->next = rev;
        rev = list;
        list = n;
    }
    while (rev) {
        struct stage_waker *k = rev;
        rev = k->next;
        struct exchange *x = k->x;
        if (x && x->st->waker == k) {
            stage_waker_cancel(x);
            if (x->st->parked)
                k->cb(&x->st->sx[k->link]);
        }
        waker_unref(k);
    }
}

/* ---------------------------------------------------------------- background requests */

/* The far end of a background request's socket: reads and drops the
 * response until portico closes its side. */
struct bg_sink {
    struct loop_io io;
    struct worker *w;
    struct bg_sink *next, **prev;   /* in w->sinks, so that a worker that stops frees them */
};

static void sink_free(struct loop *l, struct bg_sink *k)
{
    loop_del(l, &k->io);
    close(k->io.fd);
    *k->prev = k->next;
    if (k->next)
        k->next->prev = k->prev;
    free(k);
}

static void sink_io(struct loop *l, struct loop_io *io, unsigned ev)
{
    (void)ev;
    char scratch[16384];
    for (;;) {
        ssize_t n = read(io->fd, scratch, sizeof scratch);
        if (n > 0)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n < 0 && errno == EINTR)
            continue;
        sink_free(l, container_of(io, struct bg_sink, io));
        return;
    }
}

/* Fields a background request does not repeat: its framing, the
 * connection's, and what would make it conditional or partial. */
static bool bg_drops(const struct http_header *h, uint8_t kind)
{
    static const char *const names[] = { "if-none-match", "if-modified-since", "if-match",
                                         "if-unmodified-since", "if-range", "range",
                                         "cache-control", "pragma" };
    if (kind == HTTP_H_CONNECTION || kind == HTTP_H_CONTENT_LENGTH ||
        kind == HTTP_H_TRANSFER_ENCODING || kind == HTTP_H_EXPECT || kind == HTTP_H_UPGRADE ||
        kind == HTTP_H_KEEP_ALIVE || kind == HTTP_H_PROXY_CONNECTION || kind == HTTP_H_TE)
        return true;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (h->name_len == strlen(names[i]) && http_ieq(h->name, names[i], h->name_len))
            return true;
    return false;
}

static size_t bg_head(const struct http_request *r, char *out, size_t cap)
{
    struct http_hw hw;
    http_hw_init(&hw, out, cap);
    http_hw_lit(&hw, "GET ");
    http_hw_put(&hw, r->path, r->path_len);
    http_hw_lit(&hw, " HTTP/1.1\r\n");
    for (uint32_t i = 0; i < r->m.nheaders; i++) {
        const struct http_header *h = &r->m.headers[i];
        if (!bg_drops(h, r->m.kinds[i]))
            http_hw_field(&hw, h->name, h->name_len, h->value, h->value_len);
    }
    http_hw_lit(&hw, "Connection: close\r\n\r\n");
    return hw.overflow ? 0 : http_hw_len(&hw);
}

int stage_background(struct stage_x *sx)
{
    struct exchange *x = sx->x;
    struct worker *w = x->c->w;
    const struct http_request *r = x->st->req;
    if (!r || !r->path || w->draining)
        return -1;
    size_t cap = x->conf->limits.max_header_bytes;
    char *head = malloc(cap);
    size_t len = head ? bg_head(r, head, cap) : 0;
    int sv[2] = { -1, -1 };
    struct client *c = NULL;
    struct bg_sink *sink = NULL;
    if (!len || socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
        goto fail;
    if (write(sv[1], head, len) != (ssize_t)len)
        goto fail;
    c = calloc(1, sizeof *c);
    sink = calloc(1, sizeof *sink);
    if (!c || !sink)
        goto fail;
    c->internal = true;
    c->peer.v4.sin_family = AF_INET;
    c->peer.v4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sink->io.fd = sv[1];
    sink->io.cb = sink_io;
    if (loop_add(w->loop, &sink->io) < 0)
        goto fail;
    sv[1] = -1;                         /* the sink's now */
    sink->w = w;
    sink->next = w->sinks;
    sink->prev = &w->sinks;
    if (w->sinks)
        w->sinks->prev = &sink->next;
    w->sinks = sink;
    atomic_fetch_add_explicit(&w->p->nconns, 1, memory_order_relaxed);
    if (client_start(w, c, sv[0]) < 0) {
        atomic_fetch_sub_explicit(&w->p->nconns, 1, memory_order_relaxed);
        close(sv[0]);
        free(c);
        free(head);
        return -1;                      /* the sink sees the close and goes */
    }
    free(head);
    return 0;
fail:
    free(head);
    free(c);
    free(sink);
    if (sv[0] >= 0)
        close(sv[0]);
    if (sv[1] >= 0)
        close(sv[1]);
    return -1;
}

/* The worker stops: the far ends of background requests still running
 * (their clients were closed just before) go with it. */
void stage_sinks_free(struct worker *w)
{
    while (w->sinks)
        sink_free(w->loop, w->sinks);
}
