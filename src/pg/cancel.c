/* pg/cancel.c: cancel keys and forwarding CancelRequest to the right server. */
#include "pg_int.h"

#include <errno.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

void pg_keys_put(struct worker *w, struct client *c, bool add)
{
    pthread_mutex_lock(&w->keys_mu);
    uint32_t i = c->key_pid & 0xffffff;
    if (i < w->keys_cap)
        w->keys[i] = add ? c : NULL;
    pthread_mutex_unlock(&w->keys_mu);
}

bool pg_keys_alloc(struct worker *w, struct client *c)
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

void pg_cancel_done(struct loop *l, struct cancelreq *q)
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
    pg_cancel_done(l, q);
}

void pg_cancel_forward(struct worker *w, uint32_t pid, uint32_t key)
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
