/* conf/conf_pg.c: the `postgres:` section (the pooler) to struct conf_pg.
 *
 * Kept apart from conf.c so that the pooler's keys live in one file; the
 * messages have the same shape as conf.c's:
 *   portico.yaml:31:20: postgres.pools[0].pool_size: expected an integer from 1 to 10000
 * The auth file is read here, when the configuration loads (and so again on
 * every reload), so a missing or malformed file refuses the configuration.
 */
#include "conf.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

struct pgx {
    yaml_document_t *doc;
    const char *file;
    char *err;
    size_t errlen;
};

__attribute__((format(printf, 4, 5)))
static bool bad(struct pgx *x, const yaml_node_t *n, const char *path, const char *fmt, ...)
{
    int off = snprintf(x->err, x->errlen, "%s:%zu:%zu: %s: ", x->file,
                       n ? n->start_mark.line + 1 : 1, n ? n->start_mark.column + 1 : 1, path);
    if (off < 0 || (size_t)off >= x->errlen)
        return false;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->err + off, x->errlen - (size_t)off, fmt, ap);
    va_end(ap);
    return false;
}

static const char *scalar(const yaml_node_t *n)
{
    return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

static yaml_node_t *node(struct pgx *x, int id) { return yaml_document_get_node(x->doc, id); }

static bool get_uint(struct pgx *x, yaml_node_t *n, const char *path, uint32_t *out,
                     uint32_t min, uint32_t max)
{
    const char *s = scalar(n);
    char *end;
    if (!s || !isdigit((unsigned char)*s))
        return bad(x, n, path, "expected an integer from %u to %u", min, max);
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return bad(x, n, path, "expected an integer from %u to %u", min, max);
    *out = (uint32_t)v;
    return true;
}

static bool get_duration(struct pgx *x, yaml_node_t *n, const char *path, uint64_t *out)
{
    if (conf_parse_duration(scalar(n), out) < 0)
        return bad(x, n, path, "expected a duration like 500ms, 10s, 5m, 1h, 1d (0 for none)");
    return true;
}

static bool get_string(struct pgx *x, yaml_node_t *n, const char *path, char **out)
{
    const char *s = scalar(n);
    if (!s || !*s)
        return bad(x, n, path, "expected a non-empty string");
    free(*out);
    if (!(*out = strdup(s)))
        return bad(x, n, path, "out of memory");
    return true;
}

/* A query, or "" for none (NULL). */
static bool get_query(struct pgx *x, yaml_node_t *n, const char *path, char **out)
{
    const char *s = scalar(n);
    if (!s)
        return bad(x, n, path, "expected a query, or \"\" for none");
    free(*out);
    *out = NULL;
    if (*s && !(*out = strdup(s)))
        return bad(x, n, path, "out of memory");
    return true;
}

static bool get_bool(struct pgx *x, yaml_node_t *n, const char *path, bool *out)
{
    const char *s = scalar(n);
    if (s && (!strcmp(s, "true") || !strcmp(s, "yes") || !strcmp(s, "on")))
        *out = true;
    else if (s && (!strcmp(s, "false") || !strcmp(s, "no") || !strcmp(s, "off")))
        *out = false;
    else
        return bad(x, n, path, "expected true or false");
    return true;
}

static bool get_addr(struct pgx *x, yaml_node_t *n, const char *path, struct conf_addr *out)
{
    const char *s = scalar(n);
    char e[200];
    if (!s)
        return bad(x, n, path, "expected an address \"host:port\"");
    if (!conf_parse_addr(s, out, e, sizeof e))
        return bad(x, n, path, "%s", e);
    return true;
}

/* One of `names` (NULL-terminated); its index in *out. */
static bool get_enum(struct pgx *x, yaml_node_t *n, const char *path, const char *const *names,
                     const char *expected, int *out)
{
    const char *s = scalar(n);
    for (int i = 0; s && names[i]; i++)
        if (!strcmp(s, names[i])) {
            *out = i;
            return true;
        }
    return bad(x, n, path, "expected %s", expected);
}

static void join(char *out, size_t len, const char *path, const char *key)
{
    snprintf(out, len, "%s.%s", path, key);
}

#define FOR_PAIRS(x, map, k, v)                                                       \
    for (yaml_node_pair_t *p_ = (map)->data.mapping.pairs.start;                      \
         p_ < (map)->data.mapping.pairs.top; p_++)                                    \
        for (yaml_node_t *kn_ = node(x, p_->key), *v = node(x, p_->value); kn_; kn_ = NULL) \
            for (const char *k = scalar(kn_) ? scalar(kn_) : ""; k; k = NULL)

static bool unknown(struct pgx *x, yaml_node_t *kn, const char *path, const char *key)
{
    char kp[256];
    join(kp, sizeof kp, path, key);
    return bad(x, kn, kp, "unknown key");
}

static size_t seq_len(const yaml_node_t *n)
{
    return (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
}

/* ---- the auth file: lines of `"user" "secret"`; '#' or ';' start comments ---- */

static char *quoted(char **pp)
{
    char *p = *pp;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p != '"')
        return NULL;
    char *start = ++p, *o = p;
    for (;; p++) {
        if (!*p || *p == '\n')
            return NULL;
        if (*p == '"') {
            if (p[1] == '"') {          /* "" is a quote inside the value */
                *o++ = '"';
                p++;
                continue;
            }
            break;
        }
        *o++ = *p;
    }
    *o = '\0';
    *pp = p + 1;
    return start;
}

static bool load_auth_file(struct pgx *x, yaml_node_t *n, const char *path, struct conf_pg *pg)
{
    FILE *f = fopen(pg->auth_file, "r");
    if (!f)
        return bad(x, n, path, "%s: %s", pg->auth_file, strerror(errno));
    char line[4096];
    uint32_t lineno = 0, cap = 0;
    bool ok = true;
    while (ok && fgets(line, sizeof line, f)) {
        lineno++;
        char *p = line;
        while (*p == ' ' || *p == '\t')
            p++;
        if (!*p || *p == '\n' || *p == '\r' || *p == '#' || *p == ';')
            continue;
        char *user = quoted(&p);
        char *secret = user ? quoted(&p) : NULL;
        if (!user || !secret || !*user) {
            ok = bad(x, n, path, "%s:%u: expected \"user\" \"password\"", pg->auth_file, lineno);
            break;
        }
        if (pg->nusers == cap) {
            cap = cap ? cap * 2 : 16;
            struct conf_pg_user *u = realloc(pg->users, cap * sizeof *u);
            if (!u) {
                ok = bad(x, n, path, "out of memory");
                break;
            }
            pg->users = u;
        }
        struct conf_pg_user *u = &pg->users[pg->nusers];
        u->name = strdup(user);
        u->secret = strdup(secret);
        if (!u->name || !u->secret) {
            free(u->name);
            free(u->secret);
            ok = bad(x, n, path, "out of memory");
            break;
        }
        pg->nusers++;
    }
    fclose(f);
    return ok;
}

const char *conf_pg_secret(const struct conf_pg *pg, const char *user)
{
    for (uint32_t i = 0; i < pg->nusers; i++)
        if (!strcmp(pg->users[i].name, user))
            return pg->users[i].secret;
    return NULL;
}

/* ---- sections ---- */

#define AUTH_QUERY_DEFAULT "SELECT usename, passwd FROM pg_shadow WHERE usename = $1"

static bool load_auth(struct pgx *x, yaml_node_t *m, struct conf_pg *pg)
{
    static const char *const types[] = { "scram-sha-256", "md5", "trust", NULL };
    const char *path = "postgres.auth";
    if (!m || m->type != YAML_MAPPING_NODE)
        return bad(x, m, path, "expected a mapping like { type: scram-sha-256, file: users.txt }");
    yaml_node_t *filenode = NULL, *querynode = NULL;
    FOR_PAIRS(x, m, k, v) {
        char kp[256];
        join(kp, sizeof kp, path, k);
        int e;
        bool ok = true;
        if (!strcmp(k, "type")) {
            ok = get_enum(x, v, kp, types, "scram-sha-256, md5 or trust", &e);
            pg->auth = (enum conf_pg_auth)e;
        } else if (!strcmp(k, "file")) {
            ok = get_string(x, v, kp, &pg->auth_file);
            filenode = v;
        } else if (!strcmp(k, "query")) {
            ok = get_string(x, v, kp, &pg->auth_query);
            querynode = v;
        } else if (!strcmp(k, "user")) {
            ok = get_string(x, v, kp, &pg->auth_user) &&
                 (strlen(pg->auth_user) <= 63 || bad(x, v, kp, "at most 63 bytes"));
        } else if (!strcmp(k, "password")) ok = get_string(x, v, kp, &pg->auth_password);
        else if (!strcmp(k, "database")) {
            ok = get_string(x, v, kp, &pg->auth_dbname) &&
                 (strlen(pg->auth_dbname) <= 63 || bad(x, v, kp, "at most 63 bytes"));
        } else if (!strcmp(k, "cache")) ok = get_duration(x, v, kp, &pg->auth_cache);
        else ok = unknown(x, kn_, path, k);
        if (!ok)
            return false;
    }
    if (filenode && !load_auth_file(x, filenode, "postgres.auth.file", pg))
        return false;
    if (querynode && !pg->auth_user)
        return bad(x, querynode, "postgres.auth.query", "needs postgres.auth.user, the role that runs it");
    if (pg->auth_user) {
        if (!pg->auth_query && !(pg->auth_query = strdup(AUTH_QUERY_DEFAULT)))
            return bad(x, m, path, "out of memory");
        const char *sec = pg->auth_password ? NULL : conf_pg_secret(pg, pg->auth_user);
        if (sec && strncmp(sec, "SCRAM-SHA-256$", 14) && !(pg->auth_password = strdup(sec)))
            return bad(x, m, path, "out of memory");
    }
    if (!filenode && !pg->auth_user && pg->auth != CONF_PG_AUTH_TRUST)
        return bad(x, m, path, "missing key \"file\" (the users and their passwords) or \"user\" "
                               "(the role that looks them up with auth.query)");
    return true;
}

static bool load_server(struct pgx *x, yaml_node_t *n, const char *path, struct conf_pg_server *s)
{
    static const char *const roles[] = { "primary", "replica", NULL };
    s->weight = 1;
    s->role = CONF_PG_PRIMARY;
    if (scalar(n))
        return get_addr(x, n, path, &s->addr);
    if (!n || n->type != YAML_MAPPING_NODE)
        return bad(x, n, path, "expected \"host:port\" or { address: \"host:port\", role: primary }");
    bool have = false;
    FOR_PAIRS(x, n, k, v) {
        char kp[256];
        join(kp, sizeof kp, path, k);
        int e;
        bool ok;
        if (!strcmp(k, "address")) ok = have = get_addr(x, v, kp, &s->addr);
        else if (!strcmp(k, "weight")) ok = get_uint(x, v, kp, &s->weight, 1, 1000);
        else if (!strcmp(k, "role")) {
            ok = get_enum(x, v, kp, roles, "primary or replica", &e);
            s->role = (enum conf_pg_role)e;
        } else ok = unknown(x, kn_, path, k);
        if (!ok)
            return false;
    }
    if (!have)
        return bad(x, n, path, "missing key \"address\"");
    return true;
}

static bool load_pool(struct pgx *x, yaml_node_t *n, const char *path, struct conf_pg_pool *p)
{
    static const char *const modes[] = { "transaction", "session", NULL };
    if (!n || n->type != YAML_MAPPING_NODE)
        return bad(x, n, path, "expected a mapping like { database: app, user: app, pool_size: 20 }");
    p->pool_size = 20;
    FOR_PAIRS(x, n, k, v) {
        char kp[256];
        join(kp, sizeof kp, path, k);
        int e;
        bool ok;
        if (!strcmp(k, "database")) ok = get_string(x, v, kp, &p->database);
        else if (!strcmp(k, "user")) ok = get_string(x, v, kp, &p->user);
        else if (!strcmp(k, "password")) ok = get_string(x, v, kp, &p->password);
        else if (!strcmp(k, "pool_size")) ok = get_uint(x, v, kp, &p->pool_size, 1, 10000);
        else if (!strcmp(k, "min_pool_size")) ok = get_uint(x, v, kp, &p->min_pool_size, 0, 10000);
        else if (!strcmp(k, "reserve_pool")) ok = get_uint(x, v, kp, &p->reserve_pool, 0, 10000);
        else if (!strcmp(k, "read_only")) ok = get_bool(x, v, kp, &p->read_only);
        else if (!strcmp(k, "pool_mode")) {
            ok = get_enum(x, v, kp, modes, "transaction or session", &e);
            p->mode = (enum conf_pg_mode)e;
        } else ok = unknown(x, kn_, path, k);
        if (!ok)
            return false;
    }
    if (!p->database)
        return bad(x, n, path, "missing key \"database\"");
    if (!p->user)
        return bad(x, n, path, "missing key \"user\"");
    if (strlen(p->database) > 63 || strlen(p->user) > 63)
        return bad(x, n, path, "database and user names are at most 63 bytes");
    if (p->min_pool_size > p->pool_size)
        return bad(x, n, path, "min_pool_size must not exceed pool_size");
    return true;
}

/* postgres.listen: an address or a list of them. */
static bool load_listen(struct pgx *x, yaml_node_t *m, yaml_node_t *listen, struct conf_pg *pg)
{
    if (!listen)
        return bad(x, m, "postgres.listen", "missing: at least one \"host:port\" to listen on");
    size_t n = listen->type == YAML_SCALAR_NODE ? 1 :
               listen->type == YAML_SEQUENCE_NODE ? seq_len(listen) : 0;
    if (n == 0 || n > 64)
        return bad(x, listen, "postgres.listen", "expected 1 to 64 addresses");
    if (!(pg->listen = calloc(n, sizeof *pg->listen)))
        return bad(x, listen, "postgres.listen", "out of memory");
    pg->nlisten = (uint32_t)n;
    for (size_t i = 0; i < n; i++) {
        char ip[64];
        snprintf(ip, sizeof ip, "postgres.listen[%zu]", i);
        yaml_node_t *a = listen->type == YAML_SCALAR_NODE ? listen
                         : node(x, listen->data.sequence.items.start[i]);
        if (!get_addr(x, a, listen->type == YAML_SCALAR_NODE ? "postgres.listen" : ip, &pg->listen[i]))
            return false;
    }
    return true;
}

/* postgres.servers: a list, with a primary. */
static bool load_servers(struct pgx *x, yaml_node_t *m, yaml_node_t *servers, struct conf_pg *pg)
{
    if (!servers)
        return bad(x, m, "postgres.servers", "missing: at least one server");
    if (servers->type != YAML_SEQUENCE_NODE || seq_len(servers) == 0 || seq_len(servers) > 64)
        return bad(x, servers, "postgres.servers", "expected a list of 1 to 64 servers");
    size_t n = seq_len(servers);
    if (!(pg->servers = calloc(n, sizeof *pg->servers)))
        return bad(x, servers, "postgres.servers", "out of memory");
    bool primary = false;
    for (size_t i = 0; i < n; i++) {
        char ip[64];
        snprintf(ip, sizeof ip, "postgres.servers[%zu]", i);
        pg->nservers++;
        if (!load_server(x, node(x, servers->data.sequence.items.start[i]), ip, &pg->servers[i]))
            return false;
        primary |= pg->servers[i].role == CONF_PG_PRIMARY;
    }
    if (!primary)
        return bad(x, servers, "postgres.servers", "needs a server with role: primary");
    return true;
}

/* postgres.pools: one per (database, user); the server password defaults
 * to the auth file's plain one. */
static bool load_pools(struct pgx *x, yaml_node_t *m, yaml_node_t *pools, struct conf_pg *pg)
{
    if (!pools)
        return bad(x, m, "postgres.pools", "missing: at least one pool { database, user }");
    if (pools->type != YAML_SEQUENCE_NODE || seq_len(pools) == 0 || seq_len(pools) > 10000)
        return bad(x, pools, "postgres.pools", "expected a list of 1 to 10000 pools");
    size_t n = seq_len(pools);
    if (!(pg->pools = calloc(n, sizeof *pg->pools)))
        return bad(x, pools, "postgres.pools", "out of memory");
    for (size_t i = 0; i < n; i++) {
        char ip[64];
        snprintf(ip, sizeof ip, "postgres.pools[%zu]", i);
        yaml_node_t *pn = node(x, pools->data.sequence.items.start[i]);
        struct conf_pg_pool *p = &pg->pools[i];
        pg->npools++;
        if (!load_pool(x, pn, ip, p))
            return false;
        for (size_t j = 0; j < i; j++)
            if (!strcmp(pg->pools[j].database, p->database) && !strcmp(pg->pools[j].user, p->user))
                return bad(x, pn, ip, "a pool for database \"%s\" and user \"%s\" is already defined",
                           p->database, p->user);
        if (!p->password) {
            const char *sec = conf_pg_secret(pg, p->user);
            bool plain = sec && strncmp(sec, "md5", 3) != 0 && strncmp(sec, "SCRAM-SHA-256$", 14) != 0;
            if (plain && !(p->password = strdup(sec)))
                return bad(x, pn, ip, "out of memory");
        }
    }
    return true;
}

bool conf_pg_load(void *docp, void *nodep, const char *file, char *err, size_t errlen,
                  struct conf_pg *pg)
{
    struct pgx x = { .doc = docp, .file = file, .err = err, .errlen = errlen };
    yaml_node_t *m = nodep;
    const char *path = "postgres";
    static const char *const sslmodes[] = { "disable", "require", "verify-full", NULL };

    conf_pg_free(pg);
    *pg = (struct conf_pg){
        .enabled = true, .auth = CONF_PG_AUTH_SCRAM, .max_client_conn = 1000,
        .query_wait_timeout = 120000, .reserve_pool_timeout = 5000, .server_lifetime = 3600000,
        .server_idle_timeout = 600000, .server_connect_timeout = 5000,
        .client_login_timeout = 60000, .health_interval = 5000, .slow_query = 0,
        .slow_query_max_chars = 200, .max_prepared = 200, .auth_cache = 10000,
        .server_check_delay = 30000,
    };
    if (!(pg->server_reset_query = strdup("DISCARD ALL")) ||
        !(pg->server_check_query = strdup("SELECT 1")))
        return bad(&x, m, path, "out of memory");
    if (!m || m->type != YAML_MAPPING_NODE)
        return bad(&x, m, path, "expected a mapping");
    yaml_node_t *listen = NULL, *servers = NULL, *pools = NULL;
    bool have_auth = false;
    FOR_PAIRS(&x, m, k, v) {
        char kp[256];
        join(kp, sizeof kp, path, k);
        int e;
        bool ok = true;
        if (!strcmp(k, "listen")) listen = v;
        else if (!strcmp(k, "servers")) servers = v;
        else if (!strcmp(k, "pools")) pools = v;
        else if (!strcmp(k, "auth")) ok = have_auth = load_auth(&x, v, pg);
        else if (!strcmp(k, "max_client_conn")) ok = get_uint(&x, v, kp, &pg->max_client_conn, 1, 1000000);
        else if (!strcmp(k, "query_wait_timeout")) ok = get_duration(&x, v, kp, &pg->query_wait_timeout);
        else if (!strcmp(k, "reserve_pool_timeout")) ok = get_duration(&x, v, kp, &pg->reserve_pool_timeout);
        else if (!strcmp(k, "server_lifetime")) ok = get_duration(&x, v, kp, &pg->server_lifetime);
        else if (!strcmp(k, "server_idle_timeout")) ok = get_duration(&x, v, kp, &pg->server_idle_timeout);
        else if (!strcmp(k, "server_connect_timeout")) {
            ok = get_duration(&x, v, kp, &pg->server_connect_timeout) &&
                 (pg->server_connect_timeout > 0 || bad(&x, v, kp, "must be greater than zero"));
        } else if (!strcmp(k, "client_login_timeout")) {
            ok = get_duration(&x, v, kp, &pg->client_login_timeout) &&
                 (pg->client_login_timeout > 0 || bad(&x, v, kp, "must be greater than zero"));
        } else if (!strcmp(k, "health_interval")) {
            ok = get_duration(&x, v, kp, &pg->health_interval) &&
                 (pg->health_interval > 0 || bad(&x, v, kp, "must be greater than zero"));
        } else if (!strcmp(k, "server_reset_query")) ok = get_query(&x, v, kp, &pg->server_reset_query);
        else if (!strcmp(k, "server_check_query")) ok = get_query(&x, v, kp, &pg->server_check_query);
        else if (!strcmp(k, "server_check_delay")) ok = get_duration(&x, v, kp, &pg->server_check_delay); else if (!strcmp(k, "slow_query")) ok = get_duration(&x, v, kp, &pg->slow_query);
        else if (!strcmp(k, "slow_query_max_chars"))
            ok = get_uint(&x, v, kp, &pg->slow_query_max_chars, 16, 65536);
        else if (!strcmp(k, "max_prepared_statements"))
            ok = get_uint(&x, v, kp, &pg->max_prepared, 0, 100000);
        else if (!strcmp(k, "sslmode")) {
            ok = get_enum(&x, v, kp, sslmodes, "disable, require or verify-full", &e);
            pg->sslmode = (enum conf_pg_sslmode)e;
        } else if (!strcmp(k, "sslrootcert")) ok = get_string(&x, v, kp, &pg->sslrootcert);
        else ok = unknown(&x, kn_, path, k);
        if (!ok)
            return false;
    }

    if (!have_auth)
        return bad(&x, m, "postgres.auth", "missing: { type: scram-sha-256 | md5 | trust, file: ... }");
    return load_listen(&x, m, listen, pg) && load_servers(&x, m, servers, pg) &&
           load_pools(&x, m, pools, pg);
}

void conf_pg_free(struct conf_pg *pg)
{
    free(pg->listen);
    free(pg->servers);
    for (uint32_t i = 0; i < pg->npools; i++) {
        free(pg->pools[i].database);
        free(pg->pools[i].user);
        free(pg->pools[i].password);
    }
    free(pg->pools);
    for (uint32_t i = 0; i < pg->nusers; i++) {
        free(pg->users[i].name);
        free(pg->users[i].secret);
    }
    free(pg->users);
    free(pg->auth_file);
    free(pg->auth_user);
    free(pg->auth_password);
    free(pg->auth_dbname);
    free(pg->auth_query);
    free(pg->server_reset_query);
    free(pg->server_check_query);
    free(pg->sslrootcert);
    memset(pg, 0, sizeof *pg);
}
