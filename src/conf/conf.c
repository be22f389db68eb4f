/* conf/conf.c: YAML (libyaml document API) to struct conf, with validation.
 * Every error names file:line:col and the key's path, e.g.
 *   portico.yaml:7:14: upstreams.app.servers[0].weight: expected an integer >= 1
 */
#include "conf_int.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <yaml.h>


__attribute__((format(printf, 4, 5)))
bool conf_bad(struct ctx *x, const yaml_node_t *n, const char *path, const char *fmt, ...)
{
    if (x->failed)
        return false;
    x->failed = true;
    int off = snprintf(x->err, x->errlen, "%s:%zu:%zu: %s: ", x->file,
                       n ? n->start_mark.line + 1 : 1, n ? n->start_mark.column + 1 : 1,
                       path && *path ? path : "(top)");
    if (off < 0 || (size_t)off >= x->errlen)
        return false;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->err + off, x->errlen - (size_t)off, fmt, ap);
    va_end(ap);
    return false;
}

const char *conf_scalar(const yaml_node_t *n)
{
    return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

yaml_node_t *conf_node(struct ctx *x, int id) { return yaml_document_get_node(&x->doc, id); }

/* out = path + "." + key, truncated to fit (paths are for messages only). */
void conf_join(char *out, size_t len, const char *path, const char *key)
{
    size_t n = 0;
    for (const char *s = path; *s && n + 1 < len; s++)
        out[n++] = *s;
    if (*path && n + 1 < len)
        out[n++] = '.';
    for (const char *s = key; *s && n + 1 < len; s++)
        out[n++] = *s;
    out[n] = '\0';
}

/* ---- value parsers ---- */

int conf_parse_duration(const char *s, uint64_t *ms)
{
    if (!s || !isdigit((unsigned char)*s))
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || v > 1000000000ull)
        return -1;
    uint64_t mul;
    if (!strcmp(end, "ms")) mul = 1;
    else if (!strcmp(end, "s")) mul = 1000;
    else if (!strcmp(end, "m")) mul = 60000;
    else if (!strcmp(end, "h")) mul = 3600000;
    else if (!strcmp(end, "d")) mul = 86400000;
    else if (!*end && v == 0) mul = 1;
    else return -1;
    *ms = v * mul;
    return 0;
}

int conf_parse_size(const char *s, uint64_t *bytes)
{
    if (!s || !isdigit((unsigned char)*s))
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || v > (1ull << 40))
        return -1;
    uint64_t mul;
    if (!*end) mul = 1;
    else if (!strcmp(end, "KiB")) mul = 1024;
    else if (!strcmp(end, "MiB")) mul = 1024 * 1024;
    else if (!strcmp(end, "GiB")) mul = 1024 * 1024 * 1024;
    else return -1;
    *bytes = v * mul;
    return 0;
}

bool conf_resolve_names = true;

bool conf_addr_equal(const struct conf_addr *a, const struct conf_addr *b)
{
    return a->len == b->len && memcmp(&a->ss, &b->ss, a->len) == 0;
}

bool conf_parse_addr(const char *s, struct conf_addr *out, char *err, size_t errlen)
{
    char host[256];
    const char *port;
    memset(out, 0, sizeof *out);
    if (strlen(s) >= sizeof out->text) {
        snprintf(err, errlen, "address too long");
        return false;
    }
    if (s[0] == '[') {
        const char *rb = strchr(s, ']');
        if (!rb || rb[1] != ':') {
            snprintf(err, errlen, "expected \"[ipv6]:port\"");
            return false;
        }
        snprintf(host, sizeof host, "%.*s", (int)(rb - s - 1), s + 1);
        port = rb + 2;
    } else {
        const char *colon = strrchr(s, ':');
        if (!colon || colon == s || (size_t)(colon - s) >= sizeof host) {
            snprintf(err, errlen, "expected \"host:port\"");
            return false;
        }
        snprintf(host, sizeof host, "%.*s", (int)(colon - s), s);
        port = colon + 1;
    }
    char *pe;
    long p = strtol(port, &pe, 10);
    if (!*port || *pe || p < 1 || p > 65535) {
        snprintf(err, errlen, "invalid port \"%s\"", port);
        return false;
    }
    if (!strcmp(host, "*")) {
        /* every address: IPv6 with IPv4 mapped in (dual-stack) where the
         * system has IPv6, else IPv4 only */
        int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
        strcpy(host, fd >= 0 ? "::" : "0.0.0.0");
        if (fd >= 0)
            close(fd);
    }
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_NUMERICSERV | AI_ADDRCONFIG |
                                          (conf_resolve_names ? 0 : AI_NUMERICHOST) };
    struct addrinfo *ai = NULL;
    int rc = getaddrinfo(host, port, &hints, &ai);
    if (rc != 0 && (hints.ai_flags &= ~AI_ADDRCONFIG, rc = getaddrinfo(host, port, &hints, &ai)) != 0) {
        snprintf(err, errlen, "cannot resolve \"%s\": %s", host, gai_strerror(rc));
        return false;
    }
    memcpy(&out->ss, ai->ai_addr, ai->ai_addrlen);
    out->len = ai->ai_addrlen;
    freeaddrinfo(ai);
    strcpy(out->text, s);
    return true;
}

/* ---- typed getters: each validates one node and reports with its path ---- */

bool conf_get_duration(struct ctx *x, yaml_node_t *n, const char *path, uint64_t *out)
{
    if (conf_parse_duration(conf_scalar(n), out) < 0)
        return conf_bad(x, n, path, "expected a duration like 500ms, 10s, 5m, 1h, 1d");
    return true;
}

/* A duration that must be > 0: a zero timeout would fire at once. */
bool conf_get_timeout(struct ctx *x, yaml_node_t *n, const char *path, uint64_t *out)
{
    if (!conf_get_duration(x, n, path, out))
        return false;
    if (*out == 0)
        return conf_bad(x, n, path, "must be greater than zero");
    return true;
}

bool conf_get_size(struct ctx *x, yaml_node_t *n, const char *path, uint64_t *out,
                     uint64_t min, uint64_t max)
{
    if (conf_parse_size(conf_scalar(n), out) < 0)
        return conf_bad(x, n, path, "expected a size like 512, 16KiB, 8MiB, 1GiB");
    if (*out < min || *out > max)
        return conf_bad(x, n, path, "must be between %llu and %llu bytes",
                   (unsigned long long)min, (unsigned long long)max);
    return true;
}

bool conf_get_uint(struct ctx *x, yaml_node_t *n, const char *path, uint32_t *out,
                     uint32_t min, uint32_t max)
{
    const char *s = conf_scalar(n);
    char *end;
    if (!s || !isdigit((unsigned char)*s))
        return conf_bad(x, n, path, "expected an integer from %u to %u", min, max);
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return conf_bad(x, n, path, "expected an integer from %u to %u", min, max);
    *out = (uint32_t)v;
    return true;
}

bool conf_get_string(struct ctx *x, yaml_node_t *n, const char *path, char **out)
{
    const char *s = conf_scalar(n);
    if (!s || !*s)
        return conf_bad(x, n, path, "expected a non-empty string");
    free(*out);
    *out = strdup(s);
    return *out != NULL;
}

static bool get_addr(struct ctx *x, yaml_node_t *n, const char *path, struct conf_addr *out)
{
    const char *s = conf_scalar(n);
    char e[200];
    if (!s)
        return conf_bad(x, n, path, "expected an address \"host:port\"");
    if (!conf_parse_addr(s, out, e, sizeof e))
        return conf_bad(x, n, path, "%s", e);
    return true;
}

bool conf_expect_map(struct ctx *x, yaml_node_t *n, const char *path)
{
    if (!n || n->type != YAML_MAPPING_NODE)
        return conf_bad(x, n, path, "expected a mapping");
    return true;
}

bool conf_expect_seq(struct ctx *x, yaml_node_t *n, const char *path)
{
    if (!n || n->type != YAML_SEQUENCE_NODE)
        return conf_bad(x, n, path, "expected a list");
    return true;
}

bool conf_unknown(struct ctx *x, yaml_node_pair_t *p, const char *path, const char *key)
{
    char kp[256];
    conf_join(kp, sizeof kp, path, key);
    return conf_bad(x, conf_node(x, p->key), kp, "unknown key");
}

/* ---- sections ---- */

static bool load_limits(struct ctx *x, yaml_node_t *m, const char *path, struct conf_limits *l)
{
    if (!conf_expect_map(x, m, path))
        return false;
    FOR_PAIRS(x, m, k, v) {
        char kp[256];
        conf_join(kp, sizeof kp, path, k);
        uint64_t sz;
        bool ok;
        if (!strcmp(k, "header_timeout")) ok = conf_get_timeout(x, v, kp, &l->header_timeout);
        else if (!strcmp(k, "idle_timeout")) ok = conf_get_timeout(x, v, kp, &l->idle_timeout);
        else if (!strcmp(k, "body_timeout")) ok = conf_get_timeout(x, v, kp, &l->body_timeout);
        else if (!strcmp(k, "send_timeout")) ok = conf_get_timeout(x, v, kp, &l->send_timeout);
        else if (!strcmp(k, "tunnel_timeout")) ok = conf_get_timeout(x, v, kp, &l->tunnel_timeout);
        else if (!strcmp(k, "max_header_bytes")) {
            ok = conf_get_size(x, v, kp, &sz, 1024, 1024 * 1024);
            l->max_header_bytes = (uint32_t)sz;
        } else if (!strcmp(k, "max_request_line")) {
            ok = conf_get_size(x, v, kp, &sz, 256, 1024 * 1024);
            l->max_request_line = (uint32_t)sz;
        } else if (!strcmp(k, "max_body")) ok = conf_get_size(x, v, kp, &l->max_body, 0, 1ull << 40);
        else if (!strcmp(k, "max_headers")) ok = conf_get_uint(x, v, kp, &l->max_headers, 1, 1000);
        else if (!strcmp(k, "max_connections")) ok = conf_get_uint(x, v, kp, &l->max_connections, 1, 10000000);
        else if (!strcmp(k, "max_keys")) ok = conf_get_uint(x, v, kp, &l->max_keys, 64, 100000000);
        else if (!strcmp(k, "max_connections_per_ip")) ok = conf_get_uint(x, v, kp, &l->max_connections_per_ip, 0, 10000000);
        else ok = conf_unknown(x, p_, path, k);
        if (!ok)
            return false;
    }
    if (l->max_request_line > l->max_header_bytes)
        return conf_bad(x, m, path, "max_request_line must not exceed max_header_bytes");
    return true;
}

/* ---- upstream groups: balancing, health checks, servers ---- */

bool conf_get_bool(struct ctx *x, yaml_node_t *n, const char *path, bool *out)
{
    const char *s = conf_scalar(n);
    if (s && (!strcmp(s, "true") || !strcmp(s, "yes") || !strcmp(s, "on")))
        *out = true;
    else if (s && (!strcmp(s, "false") || !strcmp(s, "no") || !strcmp(s, "off")))
        *out = false;
    else
        return conf_bad(x, n, path, "expected true or false");
    return true;
}

/* An RFC 9110 token: header and cookie names. */
bool conf_is_token(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && !strchr("!#$%&'*+-.^_`|~", *s))
            return false;
    return true;
}

static bool get_hash_key(struct ctx *x, yaml_node_t *n, const char *path, struct conf_hash_key *h)
{
    const char *s = conf_scalar(n);
    const char *name = NULL;
    if (s && !strcmp(s, "path")) {
        h->from = CONF_HASH_PATH;
        h->name[0] = '\0';
        h->name_len = 0;
        return true;
    }
    if (s && !strncmp(s, "header:", 7)) {
        h->from = CONF_HASH_HEADER;
        name = s + 7;
    } else if (s && !strncmp(s, "cookie:", 7)) {
        h->from = CONF_HASH_COOKIE;
        name = s + 7;
    } else {
        return conf_bad(x, n, path, "expected \"header:NAME\", \"cookie:NAME\" or \"path\"");
    }
    if (!conf_is_token(name))
        return conf_bad(x, n, path, "expected a header or cookie name after \"%.7s\"", s);
    if (strlen(name) >= sizeof h->name)
        return conf_bad(x, n, path, "name longer than %zu characters", sizeof h->name - 1);
    strcpy(h->name, name);
    h->name_len = (uint32_t)strlen(name);
    return true;
}

static bool get_status(struct ctx *x, yaml_node_t *n, const char *path, uint16_t *out)
{
    uint32_t v;
    if (!conf_get_uint(x, n, path, &v, 100, 599))
        return false;
    *out = (uint16_t)v;
    return true;
}

static bool load_health(struct ctx *x, yaml_node_t *m, const char *path, struct conf_health *h)
{
    *h = (struct conf_health){ .enabled = true, .path = "/", .interval = 5000, .timeout = 2000,
                               .rise = 2, .fall = 3 };
    if (!conf_expect_map(x, m, path))
        return false;
    FOR_PAIRS(x, m, k, v) {
        char kp[256];
        conf_join(kp, sizeof kp, path, k);
        bool ok;
        if (!strcmp(k, "path")) {
            const char *s = conf_scalar(v);
            if (!s || s[0] != '/')
                return conf_bad(x, v, kp, "expected a path starting with \"/\"");
            if (strlen(s) >= sizeof h->path)
                return conf_bad(x, v, kp, "longer than %zu characters", sizeof h->path - 1);
            for (const char *q = s; *q; q++)
                if ((unsigned char)*q <= ' ' || *q == 0x7f)
                    return conf_bad(x, v, kp, "must not contain spaces or control characters");
            strcpy(h->path, s);
            ok = true;
        } else if (!strcmp(k, "interval")) ok = conf_get_timeout(x, v, kp, &h->interval);
        else if (!strcmp(k, "timeout")) ok = conf_get_timeout(x, v, kp, &h->timeout);
        else if (!strcmp(k, "rise")) ok = conf_get_uint(x, v, kp, &h->rise, 1, 1000);
        else if (!strcmp(k, "fall")) ok = conf_get_uint(x, v, kp, &h->fall, 1, 1000);
        else if (!strcmp(k, "expect")) {
            h->nexpect = 0;
            if (v->type == YAML_SCALAR_NODE) {
                ok = get_status(x, v, kp, &h->expect[0]);
                h->nexpect = 1;
            } else {
                if (!conf_expect_seq(x, v, kp))
                    return false;
                size_t n = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
                if (n == 0 || n > CONF_HEALTH_MAX_EXPECT)
                    return conf_bad(x, v, kp, "expected 1 to %d status codes", CONF_HEALTH_MAX_EXPECT);
                for (size_t i = 0; i < n; i++) {
                    char ip[300];
                    snprintf(ip, sizeof ip, "%.250s[%zu]", kp, i);
                    if (!get_status(x, conf_node(x, v->data.sequence.items.start[i]), ip, &h->expect[i]))
                        return false;
                }
                h->nexpect = (uint32_t)n;
                ok = true;
            }
        } else ok = conf_unknown(x, p_, path, k);
        if (!ok)
            return false;
    }
    return true;
}

static bool load_passive(struct ctx *x, yaml_node_t *m, const char *path, struct conf_passive *pa)
{
    if (!conf_expect_map(x, m, path))
        return false;
    FOR_PAIRS(x, m, k, v) {
        char kp[256];
        conf_join(kp, sizeof kp, path, k);
        bool ok;
        if (!strcmp(k, "max_fails")) ok = conf_get_uint(x, v, kp, &pa->max_fails, 0, 1000000);
        else if (!strcmp(k, "fail_timeout")) ok = conf_get_timeout(x, v, kp, &pa->fail_timeout);
        else if (!strcmp(k, "on_5xx")) ok = conf_get_bool(x, v, kp, &pa->on_5xx);
        else ok = conf_unknown(x, p_, path, k);
        if (!ok)
            return false;
    }
    return true;
}

static bool load_server(struct ctx *x, yaml_node_t *n, const char *path, struct conf_server *s)
{
    s->weight = 1;
    if (n->type == YAML_SCALAR_NODE)        /* shorthand: "host:port" */
        return get_addr(x, n, path, &s->addr);
    if (!conf_expect_map(x, n, path))
        return false;
    bool have_addr = false;
    FOR_PAIRS(x, n, k, v) {
        char kp[256];
        conf_join(kp, sizeof kp, path, k);
        bool ok;
        if (!strcmp(k, "address")) ok = have_addr = get_addr(x, v, kp, &s->addr);
        else if (!strcmp(k, "weight")) ok = conf_get_uint(x, v, kp, &s->weight, 1, 1000);
        else if (!strcmp(k, "backup")) ok = conf_get_bool(x, v, kp, &s->backup);
        else if (!strcmp(k, "slow_start")) ok = conf_get_duration(x, v, kp, &s->slow_start);
        else ok = conf_unknown(x, p_, path, k);
        if (!ok)
            return false;
    }
    if (!have_addr)
        return conf_bad(x, n, path, "missing key \"address\"");
    return true;
}

static bool load_upstream(struct ctx *x, yaml_node_t *m, const char *path, struct conf_upstream *u)
{
    u->keepalive = 64;
    u->connect_timeout = 5000;
    u->response_timeout = 60000;
    u->idle_timeout = 60000;
    u->balance = CONF_BALANCE_WEIGHTED;
    u->passive = (struct conf_passive){ .max_fails = 3, .fail_timeout = 10000, .on_5xx = false };
    u->retries = 2;
    if (!conf_expect_map(x, m, path))
        return false;
    bool have_servers = false;
    yaml_node_t *hash_key = NULL, *servers = NULL;
    char hash_key_path[256] = "";
    FOR_PAIRS(x, m, k, v) {
        char kp[256];
        conf_join(kp, sizeof kp, path, k);
        bool ok;
        if (!strcmp(k, "servers")) {
            if (!conf_expect_seq(x, v, kp))
                return false;
            size_t n = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
            if (n == 0)
                return conf_bad(x, v, kp, "needs at least one server");
            if (n > 1024)
                return conf_bad(x, v, kp, "at most 1024 servers");
            free(u->servers);
            u->servers = calloc(n, sizeof *u->servers);
            if (!u->servers)
                return conf_bad(x, v, kp, "out of memory");
            u->nservers = (uint32_t)n;
            for (size_t i = 0; i < n; i++) {
                char ip[300];
                snprintf(ip, sizeof ip, "%.250s[%zu]", kp, i);
                if (!load_server(x, conf_node(x, v->data.sequence.items.start[i]), ip, &u->servers[i]))
                    return false;
            }
            ok = have_servers = true;
            servers = v;
        } else if (!strcmp(k, "keepalive")) ok = conf_get_uint(x, v, kp, &u->keepalive, 0, 100000);
        else if (!strcmp(k, "connect_timeout")) ok = conf_get_timeout(x, v, kp, &u->connect_timeout);
        else if (!strcmp(k, "response_timeout")) ok = conf_get_timeout(x, v, kp, &u->response_timeout);
        else if (!strcmp(k, "idle_timeout")) ok = conf_get_timeout(x, v, kp, &u->idle_timeout);
        else if (!strcmp(k, "balance")) {
            const char *s = conf_scalar(v);
            if (s && !strcmp(s, "weighted")) u->balance = CONF_BALANCE_WEIGHTED;
            else if (s && !strcmp(s, "ip_hash")) u->balance = CONF_BALANCE_IP_HASH;
            else if (s && !strcmp(s, "least_conn")) u->balance = CONF_BALANCE_LEAST_CONN;
            else if (s && !strcmp(s, "hash")) u->balance = CONF_BALANCE_HASH;
            else return conf_bad(x, v, kp, "expected weighted, ip_hash, least_conn or hash");
            ok = true;
        } else if (!strcmp(k, "hash_key")) {
            ok = get_hash_key(x, v, kp, &u->hash_key);
            hash_key = v;
            snprintf(hash_key_path, sizeof hash_key_path, "%s", kp);
        } else if (!strcmp(k, "health")) ok = load_health(x, v, kp, &u->health);
        else if (!strcmp(k, "passive")) ok = load_passive(x, v, kp, &u->passive);
        else if (!strcmp(k, "retries")) ok = conf_get_uint(x, v, kp, &u->retries, 0, 100);
        else ok = conf_unknown(x, p_, path, k);
        if (!ok)
            return false;
    }
    if (!have_servers)
        return conf_bad(x, m, path, "missing key \"servers\"");
    if (u->balance == CONF_BALANCE_HASH && !hash_key)
        return conf_bad(x, m, path, "missing key \"hash_key\" (balance: hash needs one)");
    if (u->balance != CONF_BALANCE_HASH && hash_key)
        return conf_bad(x, hash_key, hash_key_path, "only used with \"balance: hash\"");
    bool any_primary = false;
    for (uint32_t i = 0; i < u->nservers; i++)
        any_primary |= !u->servers[i].backup;
    if (!any_primary) {
        char kp[256];
        conf_join(kp, sizeof kp, path, "servers");
        return conf_bad(x, servers, kp, "at least one server must not be a backup");
    }
    return true;
}

static struct conf_upstream *find_upstream(struct conf *c, const char *name)
{
    for (uint32_t i = 0; i < c->nupstreams; i++)
        if (!strcmp(c->upstreams[i].name, name))
            return &c->upstreams[i];
    return NULL;
}

/* login_guard: { max_failures: 5, window: 15m, block: 15m, failure_status: [401, 403],
 *   status: 429, account: "header:X" | "form:field" | "json:field" } */
static bool load_guard(struct ctx *x, yaml_node_t *m, const char *path, struct conf_login_guard *g)
{
    if (!conf_expect_map(x, m, path))
        return false;
    *g = (struct conf_login_guard){ .enabled = true, .max_failures = 5, .window_ms = 900000,
                                    .block_ms = 900000, .failure_status = { 401, 403 },
                                    .nfailure_status = 2, .status = 429 };
    FOR_PAIRS(x, m, k, v) {
        char kp[300];
        conf_join(kp, sizeof kp, path, k);
        bool ok = true;
        if (!strcmp(k, "max_failures")) ok = conf_get_uint(x, v, kp, &g->max_failures, 1, 1000000);
        else if (!strcmp(k, "window")) ok = conf_get_timeout(x, v, kp, &g->window_ms);
        else if (!strcmp(k, "block")) ok = conf_get_timeout(x, v, kp, &g->block_ms);
        else if (!strcmp(k, "status")) {
            uint32_t st = 0;
            ok = conf_get_uint(x, v, kp, &st, 403, 429) && (st == 403 || st == 429 ||
                 conf_bad(x, v, kp, "expected 429 or 403"));
            g->status = (uint16_t)st;
        } else if (!strcmp(k, "failure_status")) {
            g->nfailure_status = 0;
            if (v->type == YAML_SEQUENCE_NODE) {
                for (yaml_node_item_t *it = v->data.sequence.items.start; ok && it < v->data.sequence.items.top; it++) {
                    if (g->nfailure_status >= 8)
                        return conf_bad(x, v, kp, "at most 8 statuses");
                    ok = get_status(x, conf_node(x, *it), kp, &g->failure_status[g->nfailure_status++]);
                }
            } else {
                ok = get_status(x, v, kp, &g->failure_status[g->nfailure_status++]);
            }
        } else if (!strcmp(k, "account")) {
            const char *a = conf_scalar(v);
            const char *n = NULL;
            if (a && !strncmp(a, "header:", 7)) g->account_from = 1, n = a + 7;
            else if (a && !strncmp(a, "form:", 5)) g->account_from = 2, n = a + 5;
            else if (a && !strncmp(a, "json:", 5)) g->account_from = 3, n = a + 5;
            if (!n || !*n || strlen(n) >= sizeof g->account_name || (g->account_from == 1 && !conf_is_token(n)))
                return conf_bad(x, v, kp, "expected \"header:NAME\", \"form:FIELD\" or \"json:FIELD\"");
            snprintf(g->account_name, sizeof g->account_name, "%s", n);
        } else {
            ok = conf_unknown(x, p_, path, k);
        }
        if (!ok)
            return false;
    }
    return true;
}

/* challenge: { key_file: PATH, difficulty: 16, ttl: 1h, bind: address | network } */
static bool load_challenge(struct ctx *x, yaml_node_t *m, struct conf_challenge *cc)
{
    if (!conf_expect_map(x, m, "challenge"))
        return false;
    FOR_PAIRS(x, m, k, v) {
        char kp[256];
        conf_join(kp, sizeof kp, "challenge", k);
        bool ok = true;
        if (!strcmp(k, "difficulty")) ok = conf_get_uint(x, v, kp, &cc->difficulty, 1, 28);
        else if (!strcmp(k, "ttl")) ok = conf_get_timeout(x, v, kp, &cc->ttl_ms);
        else if (!strcmp(k, "bind")) {
            const char *b = conf_scalar(v);
            if (b && !strcmp(b, "address")) cc->bind_network = false;
            else if (b && !strcmp(b, "network")) cc->bind_network = true;
            else ok = conf_bad(x, v, kp, "expected address or network");
        } else if (!strcmp(k, "key_file")) {
            const char *path = conf_scalar(v);
            FILE *f = path && *path ? fopen(path, "rb") : NULL;
            if (!f)
                return conf_bad(x, v, kp, "%s: %s", path ? path : "", path && *path ? strerror(errno)
                                                                               : "expected a file name");
            size_t n = fread(cc->key, 1, sizeof cc->key, f);
            fclose(f);
            if (n < 16)
                return conf_bad(x, v, kp, "%s: the key must have at least 16 bytes", path);
            cc->key_len = n;
        } else {
            ok = conf_unknown(x, p_, "challenge", k);
        }
        if (!ok)
            return false;
    }
    return true;
}

/* compression: { encodings: [br, zstd, gzip], min_size: 1KiB, types: [...],
 *                gzip: { level: 5 }, brotli: { level: 4 }, zstd: { level: 3 } } */
static bool load_compression(struct ctx *x, yaml_node_t *m, struct conf_compression *cp)
{
    const char *s = conf_scalar(m);
    if (s && (!strcmp(s, "off") || !strcmp(s, "false"))) {
        cp->enabled = false;
        return true;
    }
    cp->enabled = true;
    if (s && (!strcmp(s, "on") || !strcmp(s, "true") || !strcmp(s, "default")))
        return true;
    if (!conf_expect_map(x, m, "compression"))
        return false;
    static const char *const names[CONF_ENC_N] = { "br", "zstd", "gzip" };
    static const char *const sections[CONF_ENC_N] = { "brotli", "zstd", "gzip" };
    static const uint32_t maxlevel[CONF_ENC_N] = { 11, 19, 9 };
    FOR_PAIRS(x, m, k, v) {
        char kp[256];
        conf_join(kp, sizeof kp, "compression", k);
        bool ok = true;
        int sec = -1;
        for (int i = 0; i < CONF_ENC_N; i++)
            if (!strcmp(k, sections[i]))
                sec = i;
        if (sec >= 0) {
            if (!conf_expect_map(x, v, kp))
                return false;
            FOR_PAIRS(x, v, lk, lv) {
                char lp[300];
                conf_join(lp, sizeof lp, kp, lk);
                uint32_t lvl;
                bool cache = !strcmp(lk, "cache_level");
                if (strcmp(lk, "level") && !cache)
                    return conf_unknown(x, p_, kp, lk);
                if (!conf_get_uint(x, lv, lp, &lvl, sec == CONF_ENC_BR ? 0 : 1, maxlevel[sec]))
                    return false;
                (cache ? cp->cache_level : cp->level)[sec] = (int)lvl;
            }
        } else if (!strcmp(k, "min_size")) {
            ok = conf_get_size(x, v, kp, &cp->min_size, 0, 1ull << 30);
        } else if (!strcmp(k, "encodings")) {
            if (!conf_expect_seq(x, v, kp))
                return false;
            cp->norder = 0;
            for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top; it++) {
                const char *e = conf_scalar(conf_node(x, *it));
                int f = -1;
                for (int i = 0; e && i < CONF_ENC_N; i++)
                    if (!strcmp(e, names[i]))
                        f = i;
                if (f < 0 || cp->norder >= CONF_ENC_N)
                    return conf_bad(x, conf_node(x, *it), kp, "expected br, zstd or gzip, each at most once");
                for (int i = 0; i < cp->norder; i++)
                    if (cp->order[i] == f)
                        return conf_bad(x, conf_node(x, *it), kp, "expected br, zstd or gzip, each at most once");
                cp->order[cp->norder++] = (uint8_t)f;
            }
            if (!cp->norder)
                return conf_bad(x, v, kp, "expected at least one of br, zstd, gzip");
        } else if (!strcmp(k, "types")) {
            if (!conf_expect_seq(x, v, kp))
                return false;
            cp->ntypes = 0;
            for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top; it++) {
                const char *t = conf_scalar(conf_node(x, *it));
                if (!t || !strchr(t, '/') || strlen(t) >= sizeof cp->types[0] || cp->ntypes >= CONF_COMP_MAX_TYPES)
                    return conf_bad(x, conf_node(x, *it), kp, "expected up to %d media types like text/* or application/json",
                               CONF_COMP_MAX_TYPES);
                snprintf(cp->types[cp->ntypes++], sizeof cp->types[0], "%s", t);
            }
        } else {
            ok = conf_unknown(x, p_, "compression", k);
        }
        if (!ok)
            return false;
    }
    return true;
}

static bool check_template(struct ctx *x, yaml_node_t *n, const char *path, const char *v);

const char *const conf_security_names[CONF_SEC_N] = {
    "Strict-Transport-Security", "X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy",
    "Content-Security-Policy", "Permissions-Policy", "Cross-Origin-Opener-Policy",
};
const char *const conf_security_defaults[CONF_SEC_N] = {
    "max-age=31536000; includeSubDomains",
    "nosniff",
    "DENY",
    "strict-origin-when-cross-origin",
    "default-src 'self'; object-src 'none'; base-uri 'self'; frame-ancestors 'none'; form-action 'self'",
    "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
    "same-origin",
};

/* security_headers: default | off | { default: true, <Field>: value | off, override: bool,
 *                                     hide: [ Server, X-Powered-By ] } */
static bool load_security(struct ctx *x, yaml_node_t *v, const char *path, struct conf_security *sec)
{
    const char *s = conf_scalar(v);
    if (s && (!strcmp(s, "off") || !strcmp(s, "false"))) {
        memset(sec, 0, sizeof *sec);
        sec->mode = -1;
        return true;
    }
    sec->enabled = true;
    sec->mode = 1;
    if (s && !strcmp(s, "default"))
        return true;
    if (!conf_expect_map(x, v, path))
        return false;
    FOR_PAIRS(x, v, k, e) {
        char kp[300];
        conf_join(kp, sizeof kp, path, k);
        if (!strcmp(k, "override")) {
            if (!conf_get_bool(x, e, kp, &sec->override))
                return false;
            sec->override_set = true;
            continue;
        }
        if (!strcmp(k, "hide")) {
            if (!conf_expect_seq(x, e, kp))
                return false;
            sec->nhide = 0;
            sec->hide_set = true;
            for (yaml_node_item_t *it = e->data.sequence.items.start; it < e->data.sequence.items.top; it++) {
                const char *n = conf_scalar(conf_node(x, *it));
                if (!n || !*n || !conf_is_token(n) || strlen(n) >= sizeof sec->hide[0] ||
                    sec->nhide >= CONF_SEC_MAX_HIDE)
                    return conf_bad(x, conf_node(x, *it), kp, "expected up to %d header names", CONF_SEC_MAX_HIDE);
                snprintf(sec->hide[sec->nhide++], sizeof sec->hide[0], "%s", n);
            }
            continue;
        }
        int f = -1;
        for (int i = 0; i < CONF_SEC_N; i++)
            if (!strcasecmp(k, conf_security_names[i]))
                f = i;
        if (f < 0)
            return conf_unknown(x, p_, path, k);
        const char *val = conf_scalar(e);
        if (!val || strlen(val) >= sizeof sec->value[0] || !check_template(x, e, kp, val))
            return val ? false : conf_bad(x, e, kp, "expected a value or off");
        sec->set[f] = true;
        snprintf(sec->value[f], sizeof sec->value[0], "%s", strcmp(val, "off") ? val : "");
    }
    return true;
}

/* A route's security headers: the top level's with the route's over them. */
static void merge_security(struct conf_security *route, const struct conf_security *top, bool route_has)
{
    struct conf_security r = *route;
    *route = *top;
    if (!route_has)
        return;
    if (r.mode < 0) {
        route->enabled = false;             /* the route said off */
        return;
    }
    route->enabled = true;
    for (int i = 0; i < CONF_SEC_N; i++)
        if (r.set[i]) {
            route->set[i] = true;
            memcpy(route->value[i], r.value[i], sizeof r.value[i]);
        }
    if (r.override_set)
        route->override = r.override;
    if (r.hide_set) {
        route->nhide = r.nhide;
        memcpy(route->hide, r.hide, sizeof r.hide);
    }
}

static bool load_rate_limits(struct ctx *x, yaml_node_t *v, const char *path, struct conf_route *r);
static bool load_cidrs(struct ctx *x, yaml_node_t *v, const char *path, struct conf_cidr **out,
                       uint32_t *n);

/* A header value template: visible ASCII, SP, HTAB and ${name} for the
 * variables the headers stage knows. */
static bool check_template(struct ctx *x, yaml_node_t *n, const char *path, const char *v)
{
    static const char *const vars[] = { "client_ip", "request_id", "route", "host", "upstream" };
    for (const char *p = v; *p; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch < 0x20 ? ch != '\t' : ch == 0x7f)
            return conf_bad(x, n, path, "control characters are not allowed in a header value");
        if (ch != '$' || p[1] != '{')
            continue;
        const char *e = strchr(p, '}');
        if (!e)
            return conf_bad(x, n, path, "unterminated ${...}");
        size_t len = (size_t)(e - p - 2);
        bool known = false;
        for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
            known |= strlen(vars[i]) == len && !memcmp(vars[i], p + 2, len);
        if (!known)
            return conf_bad(x, n, path, "unknown variable ${%.*s}: expected ${client_ip}, "
                       "${request_id}, ${route}, ${host} or ${upstream}", (int)len, p + 2);
        p = e;
    }
    return true;
}

bool conf_header_reserved(const char *name, bool request)
{
    static const char *const both[] = { "content-length", "transfer-encoding", "connection",
                                        "keep-alive", "upgrade", "te", "trailer",
                                        "proxy-connection" };
    static const char *const req[] = { "host", "x-forwarded-for", "x-forwarded-proto",
                                       "x-forwarded-host", "via", "x-request-id", "expect" };
    for (size_t i = 0; i < sizeof both / sizeof both[0]; i++)
        if (!strcasecmp(name, both[i]))
            return true;
    for (size_t i = 0; request && i < sizeof req / sizeof req[0]; i++)
        if (!strcasecmp(name, req[i]))
            return true;
    return false;
}

static bool add_hdr_op(struct ctx *x, yaml_node_t *n, const char *path, struct conf_hdr_rules *r,
                       const char *name, const char *value, enum conf_hdr_verb verb, bool request)
{
    if (!*name || !conf_is_token(name))
        return conf_bad(x, n, path, "expected a header name");
    if (conf_header_reserved(name, request))
        return conf_bad(x, n, path, "%s is portico's to write (framing, connection or forwarding)", name);
    if (r->n >= 64)
        return conf_bad(x, n, path, "at most 64 header operations");
    struct conf_hdr_op *ops = realloc(r->ops, (r->n + 1) * sizeof *ops);
    if (!ops)
        return conf_bad(x, n, path, "out of memory");
    r->ops = ops;
    struct conf_hdr_op *o = &ops[r->n];
    memset(o, 0, sizeof *o);
    o->verb = (uint8_t)verb;
    if (!(o->name = strdup(name)) || (value && !(o->value = strdup(value))))
        return conf_bad(x, n, path, "out of memory");
    r->n++;
    o->name_len = (uint32_t)strlen(name);
    o->value_len = value ? (uint32_t)strlen(value) : 0;
    return true;
}

/* headers.request / headers.response: { set: {N: V}, add: {N: V}, default: {N: V}, remove: [N] } */
static bool load_hdr_rules(struct ctx *x, yaml_node_t *m, const char *path, struct conf_hdr_rules *r,
                           bool request)
{
    if (!conf_expect_map(x, m, path))
        return false;
    FOR_PAIRS(x, m, k, v) {
        char kp[300];
        conf_join(kp, sizeof kp, path, k);
        if (!strcmp(k, "remove")) {
            if (!conf_expect_seq(x, v, kp))
                return false;
            for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top; it++) {
                yaml_node_t *e = conf_node(x, *it);
                const char *name = conf_scalar(e);
                if (!name || !add_hdr_op(x, e, kp, r, name, NULL, CONF_HDR_REMOVE, request))
                    return name ? false : conf_bad(x, e, kp, "expected a header name");
            }
            continue;
        }
        enum conf_hdr_verb verb;
        if (!strcmp(k, "set")) verb = CONF_HDR_SET;
        else if (!strcmp(k, "add")) verb = CONF_HDR_ADD;
        else if (!strcmp(k, "default")) verb = CONF_HDR_DEFAULT;
        else return conf_unknown(x, p_, path, k);
        if (!conf_expect_map(x, v, kp))
            return false;
        FOR_PAIRS(x, v, hn, hv) {
            char hp[400];
            conf_join(hp, sizeof hp, kp, hn);
            const char *val = conf_scalar(hv);
            if (!val)
                return conf_bad(x, hv, hp, "expected a string value");
            if (!check_template(x, hv, hp, val) || !add_hdr_op(x, kn_, hp, r, hn, val, verb, request))
                return false;
        }
    }
    return true;
}

static bool load_route(struct ctx *x, struct conf *c, yaml_node_t *m, const char *path,
                       struct conf_route *r)
{
    if (!conf_expect_map(x, m, path))
        return false;
    bool route_security = false;
    yaml_node_t *up = NULL;
    FOR_PAIRS(x, m, k, v) {
        char kp[256];
        conf_join(kp, sizeof kp, path, k);
        if (!strcmp(k, "match")) {
            if (!conf_expect_map(x, v, kp))
                return false;
            FOR_PAIRS(x, v, mk, mv) {
                char mp[300];
                conf_join(mp, sizeof mp, kp, mk);
                if (!strcmp(mk, "host")) {
                    if (!conf_get_string(x, mv, mp, &r->host))
                        return false;
                    for (char *q = r->host; *q; q++) {
                        *q = (char)tolower((unsigned char)*q);
                        if (!(isalnum((unsigned char)*q) || *q == '-' || *q == '.' || *q == '_' ||
                              (*q == '*' && q == r->host && q[1] == '.')))
                            return conf_bad(x, mv, mp, "expected a host name or \"*.domain\"");
                    }
                } else if (!strcmp(mk, "prefix")) {
                    if (!conf_get_string(x, mv, mp, &r->prefix))
                        return false;
                    if (r->prefix[0] != '/')
                        return conf_bad(x, mv, mp, "must start with \"/\"");
                } else {
                    return conf_unknown(x, p_, kp, mk);
                }
            }
        } else if (!strcmp(k, "upstream")) {
            const char *name = conf_scalar(v);
            if (!name)
                return conf_bad(x, v, kp, "expected the name of an upstream");
            r->upstream = find_upstream(c, name);
            if (!r->upstream)
                return conf_bad(x, v, kp, "no upstream named \"%s\"", name);
            up = v;
        } else if (!strcmp(k, "audit")) {
            if (!conf_get_bool(x, v, kp, &r->audit))
                return false;
            if (r->audit && !c->audit_log)
                return conf_bad(x, v, kp, "needs a top-level audit_log to write to");
        } else if (!strcmp(k, "rate_limit")) {
            if (!load_rate_limits(x, v, kp, r))
                return false;
        } else if (!strcmp(k, "compression")) {
            bool on = true;
            if (!conf_get_bool(x, v, kp, &on))
                return false;
            r->no_compression = !on;
        } else if (!strcmp(k, "cache")) {
            if (!conf_route_cache_load(x, v, kp, &r->cache))
                return false;
            c->cache_used |= r->cache.enabled;
        } else if (!strcmp(k, "security_headers")) {
            if (!load_security(x, v, kp, &r->security))
                return false;
            route_security = true;
        } else if (!strcmp(k, "challenge")) {
            if (!conf_get_bool(x, v, kp, &r->challenge))
                return false;
        } else if (!strcmp(k, "login_guard")) {
            if (!load_guard(x, v, kp, &r->guard))
                return false;
        } else if (!strcmp(k, "allow")) {
            if (!load_cidrs(x, v, kp, &r->allow, &r->nallow))
                return false;
        } else if (!strcmp(k, "deny")) {
            if (!load_cidrs(x, v, kp, &r->deny, &r->ndeny))
                return false;
        } else if (!strcmp(k, "headers")) {
            if (!conf_expect_map(x, v, kp))
                return false;
            FOR_PAIRS(x, v, hk, hv) {
                char hp[300];
                conf_join(hp, sizeof hp, kp, hk);
                bool ok;
                if (!strcmp(hk, "request")) ok = load_hdr_rules(x, hv, hp, &r->req_headers, true);
                else if (!strcmp(hk, "response")) ok = load_hdr_rules(x, hv, hp, &r->resp_headers, false);
                else ok = conf_unknown(x, p_, kp, hk);
                if (!ok)
                    return false;
            }
        } else {
            return conf_unknown(x, p_, path, k);
        }
    }
    if (!up)
        return conf_bad(x, m, path, "missing key \"upstream\"");
    if (!r->prefix && !(r->prefix = strdup("/")))
        return conf_bad(x, m, path, "out of memory");
    merge_security(&r->security, &c->security, route_security);
    r->prefix_len = strlen(r->prefix);
    r->host_len = r->host ? strlen(r->host) : 0;
    return true;
}

/* access_log: off | { path: stdout | stderr | FILE, format: json, flush: 200ms }
 * audit_log:  off | { path: stdout | stderr | FILE }     (`access` false) */
static bool load_log(struct ctx *x, yaml_node_t *v, const char *name, bool access, struct conf *c)
{
    const char *s = conf_scalar(v);
    if (s && (!strcmp(s, "off") || !strcmp(s, "false")))
        return true;
    if (!conf_expect_map(x, v, name))
        return false;
    char *path = NULL;
    FOR_PAIRS(x, v, k, val) {
        char kp[256];
        conf_join(kp, sizeof kp, name, k);
        bool ok = true;
        if (!strcmp(k, "path")) {
            ok = conf_get_string(x, val, kp, &path);
        } else if (access && !strcmp(k, "flush")) {
            ok = conf_get_timeout(x, val, kp, &c->access_log_flush) &&
                 (c->access_log_flush <= 60000 ||
                  conf_bad(x, val, kp, "at most 1m: lines would wait too long"));
        } else if (access && !strcmp(k, "format")) {
            const char *f = conf_scalar(val);
            ok = (f && !strcmp(f, "json")) || conf_bad(x, val, kp, "the only format is json");
        } else {
            ok = conf_unknown(x, p_, name, k);
        }
        if (!ok) {
            free(path);
            return false;
        }
    }
    if (!path && !access)
        return conf_bad(x, v, name, "missing key \"path\" (a file, stdout or stderr)");
    if (!path && !(path = strdup("stdout")))
        return conf_bad(x, v, name, "out of memory");
    char **dst = access ? &c->access_log : &c->audit_log;
    free(*dst);
    *dst = path;
    return true;
}

/* admin: { listen: "127.0.0.1:9901", token_file: /etc/portico/admin.token,
 *          header_timeout: 5s, idle_timeout: 30s, send_timeout: 10s } */
static bool load_admin(struct ctx *x, yaml_node_t *m, struct conf *c)
{
    if (!conf_expect_map(x, m, "admin"))
        return false;
    c->admin_enabled = true;
    conf_parse_addr("127.0.0.1:9901", &c->admin_listen, x->err, x->errlen);
    FOR_PAIRS(x, m, k, v) {
        char kp[256];
        conf_join(kp, sizeof kp, "admin", k);
        if (!strcmp(k, "listen")) {
            if (!get_addr(x, v, kp, &c->admin_listen))
                return false;
        } else if (!strcmp(k, "header_timeout")) {
            if (!conf_get_timeout(x, v, kp, &c->admin_header_timeout))
                return false;
        } else if (!strcmp(k, "idle_timeout")) {
            if (!conf_get_timeout(x, v, kp, &c->admin_idle_timeout))
                return false;
        } else if (!strcmp(k, "send_timeout")) {
            if (!conf_get_timeout(x, v, kp, &c->admin_send_timeout))
                return false;
        } else if (!strcmp(k, "token_file")) {
            const char *path = conf_scalar(v);
            if (!path || !*path)
                return conf_bad(x, v, kp, "expected a file name");
            FILE *f = fopen(path, "r");
            if (!f)
                return conf_bad(x, v, kp, "%s: %s", path, strerror(errno));
            char tok[512];
            size_t n = fread(tok, 1, sizeof tok - 1, f);
            fclose(f);
            tok[n] = '\0';
            while (n && (tok[n - 1] == '\n' || tok[n - 1] == '\r' || tok[n - 1] == ' ' || tok[n - 1] == '\t'))
                tok[--n] = '\0';
            if (n < 16)
                return conf_bad(x, v, kp, "%s: the token must be at least 16 characters", path);
            for (size_t i = 0; i < n; i++)
                if ((unsigned char)tok[i] <= 0x20 || (unsigned char)tok[i] >= 0x7f)
                    return conf_bad(x, v, kp, "%s: the token must be one line of visible ASCII", path);
            free(c->admin_token);
            if (!(c->admin_token = strdup(tok)))
                return conf_bad(x, v, kp, "out of memory");
        } else {
            return conf_unknown(x, p_, "admin", k);
        }
    }
    return true;
}

bool conf_parse_cidr(const char *s, struct conf_cidr *out)
{
    char ip[64];
    const char *slash = strchr(s, '/');
    size_t n = slash ? (size_t)(slash - s) : strlen(s);
    if (n == 0 || n >= sizeof ip)
        return false;
    memcpy(ip, s, n);
    ip[n] = '\0';
    memset(out, 0, sizeof *out);
    unsigned max;
    if (inet_pton(AF_INET, ip, out->addr) == 1) {
        out->family = AF_INET;
        max = 32;
    } else if (inet_pton(AF_INET6, ip, out->addr) == 1) {
        out->family = AF_INET6;
        max = 128;
    } else {
        return false;
    }
    unsigned bits = max;
    if (slash) {
        char *end;
        if (!isdigit((unsigned char)slash[1]))
            return false;
        unsigned long b = strtoul(slash + 1, &end, 10);
        if (*end || b > max)
            return false;
        bits = (unsigned)b;
    }
    out->bits = (uint8_t)bits;
    for (unsigned i = 0; i < max / 8; i++) {
        unsigned keep = bits > i * 8 ? bits - i * 8 : 0;
        if (keep < 8)
            out->addr[i] &= (uint8_t)(0xff00u >> keep);
    }
    return true;
}

bool conf_cidr_match(const struct conf_cidr *set, uint32_t n, int family, const void *addr)
{
    const uint8_t *a = addr;
    static const uint8_t mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
    if (family == AF_INET6 && memcmp(a, mapped, 12) == 0) {
        family = AF_INET;
        a += 12;
    }
    for (uint32_t i = 0; i < n; i++) {
        const struct conf_cidr *c = &set[i];
        if (c->family != family)
            continue;
        unsigned full = c->bits / 8, rest = c->bits % 8;
        if (memcmp(a, c->addr, full) != 0)
            continue;
        if (rest && (a[full] & (uint8_t)(0xff00u >> rest)) != c->addr[full])
            continue;
        return true;
    }
    return false;
}

/* A list of addresses or CIDR blocks: trusted_proxies, allow, deny. */
static bool load_cidrs(struct ctx *x, yaml_node_t *v, const char *path, struct conf_cidr **out,
                       uint32_t *n)
{
    if (!conf_expect_seq(x, v, path))
        return false;
    size_t len = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
    if (len > 4096)
        return conf_bad(x, v, path, "expected at most 4096 blocks");
    free(*out);
    *out = calloc(len ? len : 1, sizeof **out);
    if (!*out)
        return conf_bad(x, v, path, "out of memory");
    *n = 0;
    for (size_t i = 0; i < len; i++) {
        char ip[300];
        snprintf(ip, sizeof ip, "%s[%zu]", path, i);
        yaml_node_t *e = conf_node(x, v->data.sequence.items.start[i]);
        const char *s = conf_scalar(e);
        if (!s || !conf_parse_cidr(s, &(*out)[*n]))
            return conf_bad(x, e, ip, "expected an address or CIDR block like 10.0.0.0/8 or fd00::/8");
        (*n)++;
    }
    return true;
}

static bool load_trusted(struct ctx *x, yaml_node_t *v, struct conf *c)
{
    return load_cidrs(x, v, "trusted_proxies", &c->trusted, &c->ntrusted);
}

/* rate: "100/min", "10/s", "5000/h" */
static bool get_rate(struct ctx *x, yaml_node_t *n, const char *path, uint32_t *count,
                     uint64_t *period_ms)
{
    const char *s = conf_scalar(n);
    char *end;
    if (!s || !isdigit((unsigned char)*s))
        return conf_bad(x, n, path, "expected a rate like 10/s, 100/min or 5000/h");
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || v == 0 || v > 1000000000ul || *end != '/')
        return conf_bad(x, n, path, "expected a rate like 10/s, 100/min or 5000/h (1 to 10^9 a period)");
    end++;
    if (!strcmp(end, "s")) *period_ms = 1000;
    else if (!strcmp(end, "min") || !strcmp(end, "m")) *period_ms = 60000;
    else if (!strcmp(end, "h")) *period_ms = 3600000;
    else if (!strcmp(end, "d")) *period_ms = 86400000;
    else return conf_bad(x, n, path, "expected a rate like 10/s, 100/min or 5000/h");
    *count = (uint32_t)v;
    return true;
}

static bool get_limit_key(struct ctx *x, yaml_node_t *n, const char *path, struct conf_rate_limit *l)
{
    const char *s = conf_scalar(n);
    if (!s)
        return conf_bad(x, n, path, "expected client_ip, route, \"header:NAME\" or \"cookie:NAME\"");
    if (l->nkeys >= CONF_LIMIT_MAX_KEYS)
        return conf_bad(x, n, path, "at most %d keys", CONF_LIMIT_MAX_KEYS);
    uint8_t k = 0;
    const char *name = NULL;
    if (!strcmp(s, "client_ip")) k = CONF_LKEY_CLIENT_IP;
    else if (!strcmp(s, "route")) k = CONF_LKEY_ROUTE;
    else if (!strncmp(s, "header:", 7)) k = CONF_LKEY_HEADER, name = s + 7;
    else if (!strncmp(s, "cookie:", 7)) k = CONF_LKEY_COOKIE, name = s + 7;
    if (!k || (name && (!*name || !conf_is_token(name) || strlen(name) >= sizeof l->key_names[0])))
        return conf_bad(x, n, path, "expected client_ip, route, \"header:NAME\" or \"cookie:NAME\"");
    l->keys[l->nkeys] = k;
    snprintf(l->key_names[l->nkeys], sizeof l->key_names[0], "%s", name ? name : "");
    l->nkeys++;
    return true;
}

/* rate_limit: { rate: 100/min, burst: 30, key: client_ip | [..], aggregate: { ipv4: 24,
 *   ipv6: 64 }, name: x, dry_run: false, headers: ietf | x-ratelimit | both | none, status: 429 } */
static bool load_rate_limit(struct ctx *x, yaml_node_t *m, const char *path, struct conf_rate_limit *l,
                            uint32_t index)
{
    if (!conf_expect_map(x, m, path))
        return false;
    snprintf(l->name, sizeof l->name, "limit%u", index);
    l->v4_prefix = 32;
    l->v6_prefix = 128;
    l->status = 429;
    bool have_rate = false;
    FOR_PAIRS(x, m, k, v) {
        char kp[300];
        conf_join(kp, sizeof kp, path, k);
        bool ok = true;
        if (!strcmp(k, "rate")) ok = have_rate = get_rate(x, v, kp, &l->count, &l->period_ms);
        else if (!strcmp(k, "burst")) ok = conf_get_uint(x, v, kp, &l->burst, 0, 1000000000);
        else if (!strcmp(k, "dry_run")) ok = conf_get_bool(x, v, kp, &l->dry_run);
        else if (!strcmp(k, "action")) {
            const char *a = conf_scalar(v);
            if (a && !strcmp(a, "reject")) l->delay = l->challenge = false;
            else if (a && !strcmp(a, "delay")) l->delay = true;
            else if (a && !strcmp(a, "challenge")) l->challenge = true;
            else ok = conf_bad(x, v, kp, "expected reject, delay or challenge");
        }
        else if (!strcmp(k, "name")) {
            const char *s = conf_scalar(v);
            if (!s || !*s || !conf_is_token(s) || strlen(s) >= sizeof l->name)
                return conf_bad(x, v, kp, "expected a short name (a token)");
            snprintf(l->name, sizeof l->name, "%s", s);
        } else if (!strcmp(k, "status")) {
            uint32_t st;
            ok = conf_get_uint(x, v, kp, &st, 429, 503) && (st == 429 || st == 503 ||
                 conf_bad(x, v, kp, "expected 429 or 503"));
            l->status = (uint16_t)st;
        } else if (!strcmp(k, "headers")) {
            const char *s = conf_scalar(v);
            if (s && !strcmp(s, "ietf")) l->headers = CONF_LHDR_IETF;
            else if (s && !strcmp(s, "x-ratelimit")) l->headers = CONF_LHDR_X;
            else if (s && !strcmp(s, "both")) l->headers = CONF_LHDR_BOTH;
            else if (s && !strcmp(s, "none")) l->headers = CONF_LHDR_NONE;
            else ok = conf_bad(x, v, kp, "expected ietf, x-ratelimit, both or none");
        } else if (!strcmp(k, "key")) {
            if (v->type == YAML_SEQUENCE_NODE) {
                for (yaml_node_item_t *it = v->data.sequence.items.start; ok && it < v->data.sequence.items.top; it++)
                    ok = get_limit_key(x, conf_node(x, *it), kp, l);
            } else {
                ok = get_limit_key(x, v, kp, l);
            }
        } else if (!strcmp(k, "aggregate")) {
            if (!conf_expect_map(x, v, kp))
                return false;
            FOR_PAIRS(x, v, ak, av) {
                char ap[400];
                conf_join(ap, sizeof ap, kp, ak);
                uint32_t bits;
                if (!strcmp(ak, "ipv4") && conf_get_uint(x, av, ap, &bits, 1, 32)) l->v4_prefix = (uint8_t)bits;
                else if (!strcmp(ak, "ipv6") && conf_get_uint(x, av, ap, &bits, 1, 128)) l->v6_prefix = (uint8_t)bits;
                else if (strcmp(ak, "ipv4") && strcmp(ak, "ipv6")) return conf_unknown(x, p_, kp, ak);
                else return false;
            }
        } else {
            ok = conf_unknown(x, p_, path, k);
        }
        if (!ok)
            return false;
    }
    if (!have_rate)
        return conf_bad(x, m, path, "missing key \"rate\" (like 100/min)");
    if (!l->nkeys) {
        l->keys[0] = CONF_LKEY_CLIENT_IP;
        l->nkeys = 1;
    }
    return true;
}

static bool load_rate_limits(struct ctx *x, yaml_node_t *v, const char *path, struct conf_route *r)
{
    size_t n = v->type == YAML_SEQUENCE_NODE
             ? (size_t)(v->data.sequence.items.top - v->data.sequence.items.start) : 1;
    if (n == 0 || n > 8)
        return conf_bad(x, v, path, "expected one limit or a list of 1 to 8");
    if (!(r->limits = calloc(n, sizeof *r->limits)))
        return conf_bad(x, v, path, "out of memory");
    r->nlimits = (uint32_t)n;
    if (v->type != YAML_SEQUENCE_NODE)
        return load_rate_limit(x, v, path, &r->limits[0], 0);
    for (size_t i = 0; i < n; i++) {
        char ip[300];
        snprintf(ip, sizeof ip, "%s[%zu]", path, i);
        if (!load_rate_limit(x, conf_node(x, v->data.sequence.items.start[i]), ip, &r->limits[i],
                             (uint32_t)i))
            return false;
    }
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < i; j++)
            if (!strcmp(r->limits[i].name, r->limits[j].name))
                return conf_bad(x, v, path, "two limits named \"%s\": give each its own name",
                           r->limits[i].name);
    return true;
}

/* path_normalization: { merge_slashes: false, forward: normalized | original,
 *                       allow_encoded_slash: false } */
static bool load_pathnorm(struct ctx *x, yaml_node_t *m, struct conf_pathnorm *pn)
{
    if (!conf_expect_map(x, m, "path_normalization"))
        return false;
    FOR_PAIRS(x, m, k, v) {
        char kp[256];
        conf_join(kp, sizeof kp, "path_normalization", k);
        if (!strcmp(k, "merge_slashes")) {
            if (!conf_get_bool(x, v, kp, &pn->merge_slashes))
                return false;
        } else if (!strcmp(k, "allow_encoded_slash")) {
            if (!conf_get_bool(x, v, kp, &pn->allow_encoded_slash))
                return false;
        } else if (!strcmp(k, "forward")) {
            const char *s = conf_scalar(v);
            if (s && !strcmp(s, "normalized"))
                pn->forward_normalized = true;
            else if (s && !strcmp(s, "original"))
                pn->forward_normalized = false;
            else
                return conf_bad(x, v, kp, "expected normalized or original");
        } else {
            return conf_unknown(x, p_, "path_normalization", k);
        }
    }
    return true;
}

/* metrics: { enabled: true, buckets: [0.005, 0.01, 25ms, ...] } (seconds, or durations) */
static bool load_metrics(struct ctx *x, yaml_node_t *m, struct conf_metrics *mt)
{
    if (!conf_expect_map(x, m, "metrics"))
        return false;
    FOR_PAIRS(x, m, k, v) {
        char kp[256];
        conf_join(kp, sizeof kp, "metrics", k);
        if (!strcmp(k, "enabled")) {
            if (!conf_get_bool(x, v, kp, &mt->enabled))
                return false;
        } else if (!strcmp(k, "buckets")) {
            if (!conf_expect_seq(x, v, kp))
                return false;
            size_t n = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
            if (n == 0 || n > CONF_MAX_BUCKETS)
                return conf_bad(x, v, kp, "expected 1 to %d upper bounds", CONF_MAX_BUCKETS);
            for (size_t i = 0; i < n; i++) {
                char ip[300];
                snprintf(ip, sizeof ip, "%s[%zu]", kp, i);
                yaml_node_t *b = conf_node(x, v->data.sequence.items.start[i]);
                const char *s = conf_scalar(b);
                uint64_t ms;
                double d = -1;
                char *end = NULL;
                if (s && conf_parse_duration(s, &ms) == 0 && *s && !isdigit((unsigned char)s[strlen(s) - 1]))
                    d = (double)ms / 1000.0;
                else if (s && *s) {
                    errno = 0;
                    d = strtod(s, &end);
                    if (errno || *end || !(d > 0) || d > 1e6)
                        d = -1;
                }
                if (!(d > 0))
                    return conf_bad(x, b, ip, "expected seconds (0.005) or a duration (5ms) above zero");
                if (i && d <= mt->buckets[i - 1])
                    return conf_bad(x, b, ip, "bounds must increase strictly");
                mt->buckets[i] = d;
            }
            mt->nbuckets = (uint32_t)n;
        } else {
            return conf_unknown(x, p_, "metrics", k);
        }
    }
    return true;
}

/* log_level: debug | info | warn | error */
static bool get_log_level(struct ctx *x, yaml_node_t *n, const char *path, enum log_level *out)
{
    static const char *const names[] = { "debug", "info", "warn", "error" };
    const char *s = conf_scalar(n);
    for (int i = 0; s && i < 4; i++)
        if (!strcmp(s, names[i])) {
            *out = (enum log_level)i;
            return true;
        }
    return conf_bad(x, n, path, "expected debug, info, warn or error");
}

static bool load_root(struct ctx *x, struct conf *c, yaml_node_t *root)
{
    if (!root)
        return conf_bad(x, NULL, "", "the file is empty");
    if (!conf_expect_map(x, root, ""))
        return false;
    yaml_node_t *routes = NULL, *upstreams = NULL, *listen = NULL;
    FOR_PAIRS(x, root, k, v) {
        bool ok = true;
        if (!strcmp(k, "listen")) listen = v;
        else if (!strcmp(k, "upstreams")) upstreams = v;
        else if (!strcmp(k, "routes")) routes = v;
        else if (!strcmp(k, "limits")) ok = load_limits(x, v, "limits", &c->limits);
        else if (!strcmp(k, "shutdown_timeout")) ok = conf_get_timeout(x, v, k, &c->shutdown_timeout);
        else if (!strcmp(k, "admin")) ok = load_admin(x, v, c);
        else if (!strcmp(k, "access_log")) ok = load_log(x, v, k, true, c);
        else if (!strcmp(k, "metrics")) ok = load_metrics(x, v, &c->metrics);
        else if (!strcmp(k, "audit_log")) ok = load_log(x, v, k, false, c);
        else if (!strcmp(k, "trusted_proxies")) ok = load_trusted(x, v, c);
        else if (!strcmp(k, "challenge")) ok = load_challenge(x, v, &c->challenge);
        else if (!strcmp(k, "security_headers")) ok = load_security(x, v, k, &c->security);
        else if (!strcmp(k, "compression")) ok = load_compression(x, v, &c->compression);
        else if (!strcmp(k, "cache")) ok = conf_cache_load(x, v, &c->cache);
        else if (!strcmp(k, "allow")) ok = load_cidrs(x, v, k, &c->allow, &c->nallow);
        else if (!strcmp(k, "deny")) ok = load_cidrs(x, v, k, &c->deny, &c->ndeny);
        else if (!strcmp(k, "path_normalization")) ok = load_pathnorm(x, v, &c->pathnorm);
        else if (!strcmp(k, "headers_with_underscores")) {
            const char *s = conf_scalar(v);
            if (s && !strcmp(s, "drop")) c->underscores = CONF_UNDERSCORES_DROP;
            else if (s && !strcmp(s, "allow")) c->underscores = CONF_UNDERSCORES_ALLOW;
            else if (s && !strcmp(s, "reject")) c->underscores = CONF_UNDERSCORES_REJECT;
            else ok = conf_bad(x, v, k, "expected drop, allow or reject");
        }
        else if (!strcmp(k, "log_level")) ok = get_log_level(x, v, k, &c->log_level);
        else if (!strcmp(k, "postgres"))
            ok = conf_pg_load(&x->doc, v, x->file, x->err, x->errlen, &c->pg) || (x->failed = true, false);
        else if (!strcmp(k, "workers")) {
            const char *s = conf_scalar(v);
            if (s && !strcmp(s, "auto")) {
                long n = sysconf(_SC_NPROCESSORS_ONLN);
                c->workers = n > 0 ? (uint32_t)n : 1;
            } else {
                ok = conf_get_uint(x, v, k, &c->workers, 1, 256);
            }
        } else ok = conf_unknown(x, p_, "", k);
        if (!ok)
            return false;
    }

    if (!listen)
        return conf_bad(x, root, "listen", "missing: at least one \"host:port\" to listen on");
    if (listen->type == YAML_SCALAR_NODE) {
        c->listen = calloc(1, sizeof *c->listen);
        c->nlisten = 1;
        if (!c->listen || !get_addr(x, listen, "listen", &c->listen[0]))
            return false;
    } else {
        if (!conf_expect_seq(x, listen, "listen"))
            return false;
        size_t n = (size_t)(listen->data.sequence.items.top - listen->data.sequence.items.start);
        if (n == 0 || n > 64)
            return conf_bad(x, listen, "listen", "expected 1 to 64 addresses");
        c->listen = calloc(n, sizeof *c->listen);
        if (!c->listen)
            return conf_bad(x, listen, "listen", "out of memory");
        c->nlisten = (uint32_t)n;
        for (size_t i = 0; i < n; i++) {
            char ip[32];
            snprintf(ip, sizeof ip, "listen[%zu]", i);
            if (!get_addr(x, conf_node(x, listen->data.sequence.items.start[i]), ip, &c->listen[i]))
                return false;
        }
    }

    if (!upstreams)
        return conf_bad(x, root, "upstreams", "missing: at least one upstream group");
    if (!conf_expect_map(x, upstreams, "upstreams"))
        return false;
    size_t nu = (size_t)(upstreams->data.mapping.pairs.top - upstreams->data.mapping.pairs.start);
    if (nu == 0)
        return conf_bad(x, upstreams, "upstreams", "needs at least one upstream group");
    c->upstreams = calloc(nu, sizeof *c->upstreams);
    if (!c->upstreams)
        return conf_bad(x, upstreams, "upstreams", "out of memory");
    FOR_PAIRS(x, upstreams, k, v) {
        char kp[256];
        conf_join(kp, sizeof kp, "upstreams", k);
        if (!*k)
            return conf_bad(x, kn_, kp, "expected a name");
        if (find_upstream(c, k))
            return conf_bad(x, kn_, kp, "duplicate upstream name");
        struct conf_upstream *u = &c->upstreams[c->nupstreams];
        u->index = c->nupstreams++;
        if (!(u->name = strdup(k)) || !load_upstream(x, v, kp, u))
            return false;
    }

    if (!routes)
        return conf_bad(x, root, "routes", "missing: at least one route");
    if (!conf_expect_seq(x, routes, "routes"))
        return false;
    size_t nr = (size_t)(routes->data.sequence.items.top - routes->data.sequence.items.start);
    if (nr == 0 || nr > 10000)
        return conf_bad(x, routes, "routes", "expected 1 to 10000 routes");
    c->routes = calloc(nr, sizeof *c->routes);
    if (!c->routes)
        return conf_bad(x, routes, "routes", "out of memory");
    for (size_t i = 0; i < nr; i++) {
        char ip[32];
        snprintf(ip, sizeof ip, "routes[%zu]", i);
        c->nroutes++;
        if (!load_route(x, c, conf_node(x, routes->data.sequence.items.start[i]), ip, &c->routes[i]))
            return false;
    }
    return true;
}

static void conf_free(struct conf *c)
{
    if (!c)
        return;
    for (uint32_t i = 0; i < c->nupstreams; i++) {
        free(c->upstreams[i].name);
        free(c->upstreams[i].servers);
    }
    for (uint32_t i = 0; i < c->nroutes; i++) {
        free(c->routes[i].host);
        free(c->routes[i].prefix);
        free(c->routes[i].limits);
        free(c->routes[i].allow);
        free(c->routes[i].deny);
        conf_route_cache_free(&c->routes[i].cache);
        struct conf_hdr_rules *rules[] = { &c->routes[i].req_headers, &c->routes[i].resp_headers };
        for (int k = 0; k < 2; k++) {
            for (uint32_t j = 0; j < rules[k]->n; j++) {
                free(rules[k]->ops[j].name);
                free(rules[k]->ops[j].value);
            }
            free(rules[k]->ops);
        }
    }
    free(c->upstreams);
    free(c->routes);
    free(c->listen);
    free(c->admin_token);
    free(c->trusted);
    free(c->allow);
    free(c->deny);
    free(c->access_log);
    free(c->audit_log);
    conf_pg_free(&c->pg);
    free(c->path);
    free(c);
}

struct conf *conf_load_string(const char *name, const char *text, size_t len,
                              char *err, size_t errlen)
{
    struct ctx x = { .file = name, .err = err, .errlen = errlen };
    struct conf *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "%s: out of memory", name);
        return NULL;
    }
    atomic_init(&c->refs, 1);
    c->workers = 1;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    c->workers = ncpu > 0 ? (uint32_t)ncpu : 1;
    c->shutdown_timeout = 30000;
    conf_cache_defaults(&c->cache);
    c->access_log_flush = 200;
    c->log_level = LOG_INFO;
    c->admin_header_timeout = 5000;
    c->admin_idle_timeout = 30000;
    c->admin_send_timeout = 10000;
    c->limits = (struct conf_limits){
        .header_timeout = 10000, .idle_timeout = 60000, .body_timeout = 60000,
        .send_timeout = 60000, .tunnel_timeout = 3600000, .max_header_bytes = 16384, .max_headers = 100,
        .max_request_line = 8192, .max_body = 16ull << 20, .max_connections = 10000,
        .max_keys = 100000,
    };

    static const double default_buckets[] = {
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
    };
    c->metrics.enabled = true;
    c->pathnorm.forward_normalized = true;
    c->challenge.difficulty = 16;
    c->compression = (struct conf_compression){
        .order = { CONF_ENC_BR, CONF_ENC_ZSTD, CONF_ENC_GZIP }, .norder = 3,
        /* measured (docs/benchmarks.md, "Compression levels"): streamed at each encoding's
         * knee, cached at the strongest level that stays cheap enough to make inline */
        .level = { 3, 3, 5 }, .cache_level = { 6, 10, 9 }, .min_size = 1024,
        .types = { "text/*", "application/json", "application/javascript", "application/xml",
                   "image/svg+xml", "application/wasm", "application/problem+json",
                   "application/ld+json", "application/manifest+json", "application/rss+xml",
                   "application/atom+xml" },
        .ntypes = 11,
    };
    c->challenge.ttl_ms = 3600000;
    c->metrics.nbuckets = sizeof default_buckets / sizeof default_buckets[0];
    memcpy(c->metrics.buckets, default_buckets, sizeof default_buckets);

    yaml_parser_t parser;
    yaml_parser_initialize(&parser);
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    if (!yaml_parser_load(&parser, &x.doc)) {
        snprintf(err, errlen, "%s:%zu:%zu: (yaml): %s%s%s", name,
                 parser.problem_mark.line + 1, parser.problem_mark.column + 1,
                 parser.problem ? parser.problem : "syntax error",
                 parser.context ? " " : "", parser.context ? parser.context : "");
        yaml_parser_delete(&parser);
        conf_free(c);
        return NULL;
    }
    yaml_parser_delete(&parser);
    bool ok = load_root(&x, c, yaml_document_get_root_node(&x.doc));
    yaml_document_delete(&x.doc);
    if (!ok) {
        if (!x.failed)
            snprintf(err, errlen, "%s: out of memory", name);
        conf_free(c);
        return NULL;
    }
    c->path = strdup(name);
    if (!c->path) {
        conf_free(c);
        snprintf(err, errlen, "%s: out of memory", name);
        return NULL;
    }
    return c;
}

struct conf *conf_load(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    char *text = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 > cap) {
            if (cap >= (16u << 20)) {
                fclose(f);
                free(text);
                snprintf(err, errlen, "%s: larger than 16 MiB", path);
                return NULL;
            }
            cap = cap ? cap * 2 : 8192;
            char *t = realloc(text, cap);
            if (!t) {
                fclose(f);
                free(text);
                snprintf(err, errlen, "%s: out of memory", path);
                return NULL;
            }
            text = t;
        }
        size_t n = fread(text + len, 1, cap - len, f);
        len += n;
        if (n == 0)
            break;
    }
    bool ioerr = ferror(f);
    fclose(f);
    if (ioerr) {
        free(text);
        snprintf(err, errlen, "%s: read error", path);
        return NULL;
    }
    struct conf *c = conf_load_string(path, text, len, err, errlen);
    free(text);
    return c;
}

struct conf *conf_ref(struct conf *c)
{
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
    return c;
}

void conf_unref(struct conf *c)
{
    if (c && atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1)
        conf_free(c);
}
