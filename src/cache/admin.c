/* cache/admin.c: invalidation on the admin listener.
 *
 *   POST /cache/purge?url=http://host/path?q   one URL, every variant (the
 *                    host may be left out: /path purges it on every host)
 *   POST /cache/purge?prefix=/rest/           every URL under a path prefix
 *                    (http://host/rest/ for one host)
 *   POST /cache/purge?tag=product-42          every response tagged so
 *   POST /cache/bump?namespace=feed           every entry of the namespace
 *                    becomes stale at once (O(1)): the next request
 *                    revalidates or refetches
 */
#include "cache.h"

#include "obs/obs.h"

#include <stdio.h>
#include <string.h>

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                          : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* The value of parameter `name` in a query, percent-decoded into out (cache.h). */
bool cache_admin_param(const char *q, size_t qn, const char *name, char *out, size_t cap,
                       size_t *len)
{
    size_t nl = strlen(name);
    for (const char *p = q, *end = q + qn; p < end;) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *e = amp ? amp : end;
        if ((size_t)(e - p) > nl && p[nl] == '=' && !memcmp(p, name, nl)) {
            size_t n = 0;
            for (const char *s = p + nl + 1; s < e; s++) {
                if (n + 1 >= cap)
                    return false;
                if (*s == '%' && e - s > 2 && hexval(s[1]) >= 0 && hexval(s[2]) >= 0) {
                    out[n++] = (char)(hexval(s[1]) * 16 + hexval(s[2]));
                    s += 2;
                } else {
                    out[n++] = *s == '+' ? ' ' : *s;
                }
            }
            out[n] = '\0';
            *len = n;
            /* no NUL (%00): split_url and cache_ns_bump read the value as a
             * C string, so one would purge or bump another name than asked */
            return n > 0 && !memchr(out, '\0', n);
        }
        if (!amp)
            break;
        p = amp + 1;
    }
    return false;
}

/* "http://host/path" or "/path": the host (NULL: any) and the path. */
static bool split_url(const char *u, size_t n, const char **host, size_t *hn, const char **path,
                      size_t *pn)
{
    *host = NULL;
    *hn = 0;
    if (n && u[0] == '/') {
        *path = u;
        *pn = n;
        return true;
    }
    const char *s = strstr(u, "://");
    if (!s)
        return false;
    *host = s + 3;
    const char *slash = strchr(*host, '/');
    *hn = slash ? (size_t)(slash - *host) : strlen(*host);
    *path = slash ? slash : "/";
    *pn = slash ? (size_t)(u + n - slash) : 1;
    return *hn > 0;
}

int cache_admin(const char *path, size_t plen, const char *q, size_t qn, struct obs_text *t)
{
    struct cache *c = cache_get();
    char v[4096];
    size_t vn;
    const char *host, *p;
    size_t hn, pn;
    if (plen == 12 && !memcmp(path, "/cache/purge", 12)) {
        size_t n;
        if (!c)
            n = 0;
        else if (cache_admin_param(q, qn, "url", v, sizeof v, &vn) &&
                 split_url(v, vn, &host, &hn, &p, &pn))
            n = cache_purge_path(c, host, hn, p, pn, false);
        else if (cache_admin_param(q, qn, "prefix", v, sizeof v, &vn) &&
                 split_url(v, vn, &host, &hn, &p, &pn))
            n = cache_purge_path(c, host, hn, p, pn, true);
        else if (cache_admin_param(q, qn, "tag", v, sizeof v, &vn))
            n = cache_purge_tag(c, v, vn);
        else {
            obs_printf(t, "{\"error\":\"expected url=URL, prefix=PATH or tag=TAG\"}\n");
            return 400;
        }
        obs_printf(t, "{\"purged\":%zu}\n", n);
        return 200;
    }
    if (plen == 11 && !memcmp(path, "/cache/bump", 11)) {
        if (!cache_admin_param(q, qn, "namespace", v, sizeof v, &vn) || vn >= CONF_CACHE_NAME) {
            obs_printf(t, "{\"error\":\"expected namespace=NAME\"}\n");
            return 400;
        }
        if (!c) {
            obs_printf(t, "{\"error\":\"no route caches: nothing to bump\"}\n");
            return 409;
        }
        uint64_t ver = cache_ns_bump(c, v);
        if (!ver) {
            obs_printf(t, "{\"error\":\"no route caches under this namespace\"}\n");
            return 404;
        }
        obs_printf(t, "{\"namespace\":\"");
        for (size_t i = 0; i < vn; i++)
            obs_printf(t, v[i] == '"' || v[i] == '\\' ? "\\%c" : (unsigned char)v[i] < 0x20 ? "?" : "%c", v[i]);
        obs_printf(t, "\",\"version\":%llu}\n", (unsigned long long)ver);
        return 200;
    }
    obs_printf(t, "{\"error\":\"not found: POST /cache/purge or /cache/bump\"}\n");
    return 404;
}
