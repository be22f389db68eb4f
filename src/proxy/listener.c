/* proxy/listener.c: listening sockets: binding (and refusing an address another process
 * serves), accepting, retrying after running out of descriptors. */
#include "proxy_int.h"

static void listener_accept(struct listener *ls);
static bool any_v6(const struct conf_addr *a);

/* accept() ran out of descriptors or memory: the listener is
 * edge-triggered, so nothing would call it again until the next arrival.
 * Try every listener again in a moment. */
void accept_retry(struct loop *l, struct loop_timer *t)
{
    (void)l;
    struct worker *w = container_of(t, struct worker, accept_timer);
    for (uint32_t i = 0; i < w->nlisteners; i++)
        if (w->listeners[i] && w->listeners[i]->io.fd >= 0)
            listener_accept(w->listeners[i]);
}

void listener_io(struct loop *l, struct loop_io *io, unsigned ev)
{
    (void)l;
    (void)ev;
    struct listener *ls = container_of(io, struct listener, io);
    if (io->fd < 0)
        return;                 /* retired earlier in this batch */
    listener_accept(ls);
}

/* A new client connection on fd (peer filled in): watched, listed, and
 * given the header timeout. 0, or -errno from epoll (nothing to undo but
 * the caller's own counts). */
int client_start(struct worker *w, struct client *c, int fd)
{
    c->io.fd = fd;
    c->io.cb = client_io;
    c->timer.cb = client_timeout;
    c->w = w;
    c->state = C_IDLE;
    set_nodelay(fd);
    int rc = loop_add(w->loop, &c->io);
    if (rc < 0)
        return rc;
    c->next = w->clients;
    if (c->next)
        c->next->prev = c;
    w->clients = c;
    w->nclients++;
    obs_add(&w->obs->conns_total, 1);
    /* the first bytes are usually there already (or will be soon) */
    loop_timer_arm(w->loop, &c->timer, w->conf->limits.header_timeout);
    return 0;
}

/* limits.max_connections_per_ip: count the new connection against its
 * address, or answer 429 and close it. False when it was refused. */
static bool admit_per_ip(struct worker *w, struct client *c, int fd)
{
    uint32_t per_ip = w->conf->limits.max_connections_per_ip;
    if (!per_ip)
        return true;
    uint8_t fam, a[16];
    peer_addr(c, &fam, a);
    if (limit_conn_take(fam, a, per_ip)) {
        c->ip_counted = true;
        return true;
    }
    static const char many[] = "HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\n"
                               "Retry-After: 1\r\nConnection: close\r\n\r\n";
    ssize_t r = write(fd, many, sizeof many - 1);
    (void)r;
    close(fd);
    obs_add(&w->obs->rejected, 1);
    return false;
}

static void listener_accept(struct listener *ls)
{
    struct worker *w = ls->w;
    struct loop *l = w->loop;
    /* Edge-triggered: accept until the queue is empty, or connections that
     * arrived in the same burst would wait for the next one. */
    while (!w->draining) {
        struct client tmp;
        socklen_t alen = sizeof tmp.peer;
        int fd = accept4(ls->io.fd, &tmp.peer.sa, &alen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                if (!loop_timer_armed(&w->accept_timer)) {
                    log_rl_warn("accept: %s; retrying in 100ms", strerror(errno));
                    obs_add(&w->obs->rejected, 1);
                    loop_timer_arm(l, &w->accept_timer, 100);
                }
                return;
            }
            log_rl_warn("accept: %s", strerror(errno));
            return;
        }
        unsigned n = atomic_fetch_add_explicit(&w->p->nconns, 1, memory_order_relaxed);
        if (n >= w->conf->limits.max_connections) {
            atomic_fetch_sub_explicit(&w->p->nconns, 1, memory_order_relaxed);
            static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                                       "Retry-After: 1\r\nConnection: close\r\n\r\n";
            ssize_t r = write(fd, busy, sizeof busy - 1);
            (void)r;
            close(fd);
            continue;
        }
        struct client *c = calloc(1, sizeof *c);
        if (!c) {
            atomic_fetch_sub_explicit(&w->p->nconns, 1, memory_order_relaxed);
            close(fd);
            continue;
        }
        c->peer = tmp.peer;
        if (!admit_per_ip(w, c, fd)) {
            atomic_fetch_sub_explicit(&w->p->nconns, 1, memory_order_relaxed);
            free(c);
            continue;
        }
        if (client_start(w, c, fd) < 0) {
            atomic_fetch_sub_explicit(&w->p->nconns, 1, memory_order_relaxed);
            if (c->ip_counted) {
                uint8_t fam, a[16];
                peer_addr(c, &fam, a);
                limit_conn_release(fam, a);
            }
            close(fd);
            free(c);
        }
    }
}

static bool any_v6(const struct conf_addr *a)
{
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&a->ss;
    return a->ss.ss_family == AF_INET6 && IN6_IS_ADDR_UNSPECIFIED(&s6->sin6_addr);
}

/* A listening socket for a. Ours share each address with SO_REUSEPORT
 * (one per worker); with `probe`, first make sure that no other process
 * serves it, since SO_REUSEPORT would silently share its traffic: a socket
 * without SO_REUSEPORT cannot bind where anyone listens. "[::]" and "*"
 * take IPv4 too (dual-stack). */
int open_listener(const struct conf_addr *a, bool probe, char *err, size_t errlen)
{
    int one = 1, v6only = any_v6(a) ? 0 : 1;
    if (probe) {
        int pfd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (pfd >= 0) {
            setsockopt(pfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
            if (a->ss.ss_family == AF_INET6)
                setsockopt(pfd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only);
            int rc = bind(pfd, (const struct sockaddr *)&a->ss, a->len);
            int e = errno;
            close(pfd);
            if (rc < 0 && e == EADDRINUSE) {
                snprintf(err, errlen, "listen %s: %s", a->text, strerror(e));
                return -1;
            }
        }
    }
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "listen %s: socket: %s", a->text, strerror(errno));
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (a->ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only);
    if (bind(fd, (const struct sockaddr *)&a->ss, a->len) < 0 || listen(fd, 4096) < 0) {
        snprintf(err, errlen, "listen %s: %s", a->text, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

bool conf_listens_on(const struct conf *c, const struct conf_addr *a)
{
    for (uint32_t i = 0; i < c->nlisten; i++)
        if (conf_addr_equal(&c->listen[i], a))
            return true;
    return false;
}

/* Watch fd (a bound, listening socket; taken over, closed on failure). */
struct listener *listener_new(struct worker *w, const struct conf_addr *a, int fd)
{
    struct listener *ls = calloc(1, sizeof *ls);
    if (!ls) {
        log_error("worker %u: listen %s: out of memory", w->id, a->text);
        close(fd);
        return NULL;
    }
    ls->io.fd = fd;
    ls->io.cb = listener_io;
    ls->w = w;
    ls->addr = *a;
    int rc = loop_add(w->loop, &ls->io);
    if (rc < 0) {
        log_error("worker %u: listen %s: epoll: %s", w->id, a->text, strerror(-rc));
        close(fd);
        free(ls);
        return NULL;
    }
    return ls;
}

/* Stop listening. The struct is freed in worker_reap(): an event for it may
 * still be in the batch being dispatched. */
void listener_retire(struct worker *w, struct listener *ls)
{
    if (!ls)
        return;
    if (ls->io.fd >= 0) {
        loop_del(w->loop, &ls->io);
        close(ls->io.fd);
        ls->io.fd = -1;
    }
    ls->next_dead = w->dead_listeners;
    w->dead_listeners = ls;
}
