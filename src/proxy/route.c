/* proxy/route.c: routing: the route a request takes (on its normalised path), who the
 * client is (trusted proxies), what the balancer hashes on. */
#include "proxy_int.h"

/* The first route whose host and path prefix match; `path` is the
 * normalised path (path_normalization), "/" for OPTIONS *. */
const struct conf_route *route_match(const struct conf *conf, const struct http_request *r,
                                            const char *path, size_t plen)
{
    const char *host = r->host;
    size_t hlen = r->host_len;
    if (host) {                 /* drop the port */
        size_t i = hlen;
        if (host[0] == '[') {
            const char *rb = memchr(host, ']', hlen);
            i = rb ? (size_t)(rb - host + 1) : hlen;
        } else {
            const char *colon = memchr(host, ':', hlen);
            if (colon)
                i = (size_t)(colon - host);
        }
        hlen = i;
        if (hlen && host[hlen - 1] == '.')
            hlen--;
    }
    for (uint32_t i = 0; i < conf->nroutes; i++) {
        const struct conf_route *rt = &conf->routes[i];
        if (rt->host) {
            if (!host)
                continue;
            if (rt->host[0] == '*') {   /* "*.example.com" matches sub.example.com */
                size_t sl = rt->host_len - 1;
                if (hlen <= sl || !http_ieq(host + hlen - sl, rt->host + 1, sl))
                    continue;
            } else if (hlen != rt->host_len || !http_ieq(host, rt->host, hlen)) {
                continue;
            }
        }
        if (plen < rt->prefix_len || memcmp(path, rt->prefix, rt->prefix_len) != 0)
            continue;
        return rt;
    }
    return NULL;
}

bool is_idempotent(const char *m, size_t n)
{
    static const char *const list[] = { "GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE" };
    for (size_t i = 0; i < sizeof list / sizeof list[0]; i++)
        if (strlen(list[i]) == n && memcmp(m, list[i], n) == 0)
            return true;
    return false;
}

/* Copy what the upstream's balancing hashes on into x->key: the client
 * address for ip_hash, the configured header, cookie or path for hash. */
void balance_key(struct exchange *x, const struct http_request *r)
{
    const struct conf_upstream *up = x->route->upstream;
    const struct client *c = x->c;
    const char *k = NULL;
    size_t n = 0;
    if (up->balance == CONF_BALANCE_IP_HASH) {
        (void)c;
        k = (const char *)x->client_addr;
        n = x->client_family == AF_INET6 ? 16 : 4;
    } else if (up->balance == CONF_BALANCE_HASH) {
        const struct conf_hash_key *hk = &up->hash_key;
        const struct http_msg *m = &r->m;
        if (hk->from == CONF_HASH_PATH && r->path) {
            const char *q = memchr(r->path, '?', r->path_len);
            k = r->path;
            n = q ? (size_t)(q - r->path) : r->path_len;
        }
        for (uint32_t i = 0; !k && i < m->nheaders; i++) {
            const struct http_header *h = &m->headers[i];
            if (hk->from == CONF_HASH_HEADER && h->name_len == hk->name_len &&
                http_ieq(h->name, hk->name, h->name_len)) {
                k = h->value;
                n = h->value_len;
            } else if (hk->from == CONF_HASH_COOKIE && h->name_len == 6 &&
                       http_ieq(h->name, "cookie", 6)) {
                k = balance_cookie_value(h->value, h->value_len, hk->name, hk->name_len, &n);
            }
        }
    }
    if (n > sizeof x->key)
        n = sizeof x->key;
    if (k)
        memcpy(x->key, k, n);
    x->key_len = k ? (uint16_t)n : 0;
}

/* The client's address: the peer, or, when the peer is a trusted proxy,
 * the right-most address of X-Forwarded-For that is not a trusted proxy
 * itself (the left-most if all are). */
void client_identity(struct exchange *x, const struct http_request *r)
{
    const struct conf *conf = x->conf;
    const struct http_msg *m = &r->m;
    uint8_t fam, a[16];
    peer_addr(x->c, &fam, a);
    x->trusted_peer = conf->ntrusted && conf_cidr_match(conf->trusted, conf->ntrusted, fam, a);
    /* the scheme the client used: a trusted proxy's X-Forwarded-Proto (the
     * last one it sent), plain HTTP otherwise (portico has no TLS yet) */
    x->https = false;
    for (uint32_t j = 0; x->trusted_peer && j < m->nheaders; j++) {
        if (m->kinds[j] != HTTP_H_X_FORWARDED_PROTO || nominated(m, j))
            continue;
        const struct http_header *h = &m->headers[j];
        if (h->value_len == 5 && http_ieq(h->value, "https", 5))
            x->https = true;
        else if (h->value_len == 4 && http_ieq(h->value, "http", 4))
            x->https = false;
    }
    x->client_family = fam;
    memcpy(x->client_addr, a, 16);
    if (x->trusted_peer) {
        /* the elements, right to left: headers last to first */
        bool found = false;
        uint8_t leftmost_fam = 0, leftmost[16] = { 0 };
        for (uint32_t j = m->nheaders; j-- > 0 && !found;) {
            if (m->kinds[j] != HTTP_H_X_FORWARDED_FOR || nominated(m, j))
                continue;
            const char *v = m->headers[j].value, *end = v + m->headers[j].value_len;
            while (end > v && !found) {
                const char *e = end;
                while (e > v && e[-1] != ',')
                    e--;
                const char *s0 = e, *s1 = end;
                while (s0 < s1 && (*s0 == ' ' || *s0 == '\t'))
                    s0++;
                while (s1 > s0 && (s1[-1] == ' ' || s1[-1] == '\t'))
                    s1--;
                char ip[64];
                uint8_t b[16];
                size_t n = (size_t)(s1 - s0);
                if (n && n < sizeof ip) {
                    memcpy(ip, s0, n);
                    ip[n] = '\0';
                    int f = inet_pton(AF_INET, ip, b) == 1 ? AF_INET
                          : inet_pton(AF_INET6, ip, b) == 1 ? AF_INET6 : 0;
                    if (!f) {
                        /* not an address: believe the chain no further than
                         * the trusted hop that passed it on */
                        found = true;
                        if (leftmost_fam) {
                            x->client_family = leftmost_fam;
                            memcpy(x->client_addr, leftmost, 16);
                        }
                    } else if (!conf_cidr_match(conf->trusted, conf->ntrusted, f, b)) {
                        x->client_family = (uint8_t)f;
                        memcpy(x->client_addr, b, 16);
                        found = true;
                    } else {
                        leftmost_fam = (uint8_t)f;
                        memcpy(leftmost, b, 16);
                    }
                }
                end = e > v ? e - 1 : v;
            }
        }
        if (!found && leftmost_fam) {
            x->client_family = leftmost_fam;
            memcpy(x->client_addr, leftmost, 16);
        }
    }
    x->client_len = (uint8_t)addr_text(x->client_family, x->client_addr, x->client,
                                       sizeof x->client);
}
