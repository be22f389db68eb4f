/* conf/conf_cache.c: `cache:` at the top level (the store: its memory budget,
 * the largest object, defaults for stale serving, request coalescing) and on
 * a route (whether and how its responses are cached). */
#include "conf_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void conf_cache_defaults(struct conf_cache *cc)
{
    *cc = (struct conf_cache){
        .memory = 256ull << 20,
        .max_object = 8ull << 20,
        .lock_timeout_ms = 5000,
        .max_waiters = 1000,
        .heuristic_max_ms = 86400000,
    };
    memcpy(cc->tag_header, "Cache-Tag", sizeof "Cache-Tag");
}

static bool get_name(struct ctx *x, yaml_node_t *n, const char *path, char out[CONF_CACHE_NAME])
{
    const char *s = conf_scalar(n);
    if (!s || !*s || strlen(s) >= CONF_CACHE_NAME)
        return conf_bad(x, n, path, "expected a name of 1 to %d characters", CONF_CACHE_NAME - 1);
    for (const char *p = s; *p; p++)
        if (*p <= ' ' || *p >= 0x7f || *p == '&' || *p == '=' || *p == '?' || *p == '#')
            return conf_bad(x, n, path, "names are printable ASCII without spaces, &, =, ? or #");
    memcpy(out, s, strlen(s) + 1);
    return true;
}

bool conf_cache_load(struct ctx *x, yaml_node_t *v, struct conf_cache *cc)
{
    if (!conf_expect_map(x, v, "cache"))
        return false;
    bool max_object_set = false;
    FOR_PAIRS(x, v, k, n) {
        char kp[128];
        conf_join(kp, sizeof kp, "cache", k);
        bool ok;
        if (!strcmp(k, "memory"))
            ok = conf_get_size(x, n, kp, &cc->memory, 1u << 20, 1ull << 40);
        else if (!strcmp(k, "max_object"))
            ok = (max_object_set = conf_get_size(x, n, kp, &cc->max_object, 1, 1ull << 32));
        else if (!strcmp(k, "stale_while_revalidate"))
            ok = conf_get_duration(x, n, kp, &cc->stale_while_revalidate_ms);
        else if (!strcmp(k, "stale_if_error"))
            ok = conf_get_duration(x, n, kp, &cc->stale_if_error_ms);
        else if (!strcmp(k, "lock_timeout"))
            ok = conf_get_timeout(x, n, kp, &cc->lock_timeout_ms);
        else if (!strcmp(k, "max_waiters"))
            ok = conf_get_uint(x, n, kp, &cc->max_waiters, 0, 1000000);
        else if (!strcmp(k, "heuristic_max"))
            ok = conf_get_duration(x, n, kp, &cc->heuristic_max_ms);
        else if (!strcmp(k, "tag_header")) {
            ok = get_name(x, n, kp, cc->tag_header) &&
                 (conf_is_token(cc->tag_header) ||
                  conf_bad(x, n, kp, "expected a header field name"));
        } else
            ok = conf_unknown(x, p_, "cache", k);
        if (!ok)
            return false;
    }
    if (!max_object_set && cc->max_object > cc->memory / 4)
        cc->max_object = cc->memory / 4;        /* the default follows a small budget */
    if (cc->max_object > cc->memory / 4)
        return conf_bad(x, v, "cache.max_object", "must be at most a quarter of cache.memory");
    return true;
}

/* A list of names (or one name) into *out. */
static bool get_names(struct ctx *x, yaml_node_t *n, const char *path,
                      char (**out)[CONF_CACHE_NAME], uint32_t *count)
{
    size_t len = 1;
    if (n && n->type == YAML_SEQUENCE_NODE)
        len = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
    else if (!conf_scalar(n))
        return conf_bad(x, n, path, "expected a name or a list of names");
    if (len == 0 || len > 64)
        return conf_bad(x, n, path, "expected 1 to 64 names");
    free(*out);
    *count = 0;
    if (!(*out = calloc(len, sizeof **out)))
        return conf_bad(x, n, path, "out of memory");
    for (size_t i = 0; i < len; i++) {
        yaml_node_t *item = n->type == YAML_SEQUENCE_NODE
                                ? conf_node(x, n->data.sequence.items.start[i]) : n;
        char ip[160];
        snprintf(ip, sizeof ip, "%s[%zu]", path, i);
        if (!get_name(x, item, n->type == YAML_SEQUENCE_NODE ? ip : path, (*out)[i]))
            return false;
        (*count)++;
    }
    return true;
}

static bool get_key(struct ctx *x, yaml_node_t *v, const char *path, struct conf_route_cache *rc)
{
    if (!conf_expect_map(x, v, path))
        return false;
    FOR_PAIRS(x, v, k, n) {
        char kp[200];
        conf_join(kp, sizeof kp, path, k);
        if (strcmp(k, "query"))
            return conf_unknown(x, p_, path, k);
        const char *s = conf_scalar(n);
        if (s && !strcmp(s, "keep")) rc->query = CONF_CACHE_QUERY_KEEP;
        else if (s && !strcmp(s, "sort")) rc->query = CONF_CACHE_QUERY_SORT;
        else if (s && !strcmp(s, "ignore")) rc->query = CONF_CACHE_QUERY_IGNORE;
        else if (n && n->type == YAML_SEQUENCE_NODE) {
            rc->query = CONF_CACHE_QUERY_LIST;
            if (!get_names(x, n, kp, &rc->keep, &rc->nkeep))
                return false;
        } else
            return conf_bad(x, n, kp, "expected keep, sort, ignore or a list of parameter names");
    }
    return true;
}

static bool get_ratio(struct ctx *x, yaml_node_t *n, const char *path, uint32_t *permille)
{
    const char *s = conf_scalar(n);
    char *end;
    double d = s ? strtod(s, &end) : -1;
    if (!s || end == s || *end || !(d >= 0 && d <= 1))
        return conf_bad(x, n, path, "expected a ratio from 0 to 1, like 0.7");
    *permille = (uint32_t)(d * 1000 + 0.5);
    return true;
}

static bool route_key(struct ctx *x, const char *k, yaml_node_t *n, const char *kp,
                      struct conf_route_cache *rc)
{
    uint64_t ms;
    if (!strcmp(k, "ttl")) return conf_get_duration(x, n, kp, &rc->ttl_ms);
    if (!strcmp(k, "override")) return conf_get_bool(x, n, kp, &rc->override);
    if (!strcmp(k, "allow_set_cookie")) return conf_get_bool(x, n, kp, &rc->allow_set_cookie);
    if (!strcmp(k, "namespace")) return get_name(x, n, kp, rc->ns);
    if (!strcmp(k, "bump_on_write")) return get_names(x, n, kp, &rc->bump, &rc->nbump);
    if (!strcmp(k, "key")) return get_key(x, n, kp, rc);
    if (!strcmp(k, "expect_hit_ratio")) return get_ratio(x, n, kp, &rc->expect_hit_permille);
    if (!strcmp(k, "stale_while_revalidate")) {
        if (!conf_get_duration(x, n, kp, &ms))
            return false;
        rc->swr_ms = (int64_t)ms;
        return true;
    }
    if (!strcmp(k, "stale_if_error")) {
        if (!conf_get_duration(x, n, kp, &ms))
            return false;
        rc->sie_ms = (int64_t)ms;
        return true;
    }
    return false;
}

bool conf_route_cache_load(struct ctx *x, yaml_node_t *v, const char *path,
                           struct conf_route_cache *rc)
{
    rc->swr_ms = rc->sie_ms = -1;
    if (v && v->type == YAML_SCALAR_NODE)
        return conf_get_bool(x, v, path, &rc->enabled);
    if (!conf_expect_map(x, v, path))
        return false;
    rc->enabled = true;
    FOR_PAIRS(x, v, k, n) {
        char kp[200];
        conf_join(kp, sizeof kp, path, k);
        if (!route_key(x, k, n, kp, rc))
            return x->failed ? false : conf_unknown(x, p_, path, k);
    }
    if (rc->override && !rc->ttl_ms)
        return conf_bad(x, v, path, "override: true needs a ttl");
    return true;
}

void conf_route_cache_free(struct conf_route_cache *rc)
{
    free(rc->keep);
    free(rc->bump);
    rc->keep = rc->bump = NULL;
}
