/* conf/conf_int.h: what the files of conf/ share (the parse context and the
 * typed getters); nothing outside conf/ includes it. Every getter validates
 * one node and, when it is wrong, writes `file:line:col: key.path: what is
 * wrong` and returns false. */
#ifndef PORTICO_CONF_INT_H
#define PORTICO_CONF_INT_H

#include "conf.h"

#include <yaml.h>

struct ctx {
    yaml_document_t doc;
    const char *file;
    char *err;
    size_t errlen;
    bool failed;
};

/* Iterate a mapping: k is each key (a string), v its value node, p_ the pair. */
#define FOR_PAIRS(x, map, k, v)                                                       \
    for (yaml_node_pair_t *p_ = (map)->data.mapping.pairs.start;                      \
         p_ < (map)->data.mapping.pairs.top; p_++)                                    \
        for (yaml_node_t *kn_ = conf_node(x, p_->key), *v = conf_node(x, p_->value); kn_; kn_ = NULL) \
            for (const char *k = conf_scalar(kn_) ? conf_scalar(kn_) : ""; k; k = NULL)

__attribute__((format(printf, 4, 5)))
bool conf_bad(struct ctx *x, const yaml_node_t *n, const char *path, const char *fmt, ...);
const char *conf_scalar(const yaml_node_t *n);
yaml_node_t *conf_node(struct ctx *x, int id);
/* out = path + "." + key, truncated to fit (paths are for messages only). */
void conf_join(char *out, size_t len, const char *path, const char *key);
bool conf_get_duration(struct ctx *x, yaml_node_t *n, const char *path, uint64_t *out);
bool conf_get_timeout(struct ctx *x, yaml_node_t *n, const char *path, uint64_t *out);
bool conf_get_size(struct ctx *x, yaml_node_t *n, const char *path, uint64_t *out,
                   uint64_t min, uint64_t max);
bool conf_get_uint(struct ctx *x, yaml_node_t *n, const char *path, uint32_t *out,
                   uint32_t min, uint32_t max);
bool conf_get_string(struct ctx *x, yaml_node_t *n, const char *path, char **out);
bool conf_get_bool(struct ctx *x, yaml_node_t *n, const char *path, bool *out);
bool conf_expect_map(struct ctx *x, yaml_node_t *n, const char *path);
bool conf_expect_seq(struct ctx *x, yaml_node_t *n, const char *path);
bool conf_unknown(struct ctx *x, yaml_node_pair_t *p, const char *path, const char *key);
/* An RFC 9110 token: header and cookie names. */
bool conf_is_token(const char *s);

/* conf_cache.c: `cache:` at the top level and on a route. */
void conf_cache_defaults(struct conf_cache *cc);
bool conf_cache_load(struct ctx *x, yaml_node_t *v, struct conf_cache *cc);
bool conf_route_cache_load(struct ctx *x, yaml_node_t *v, const char *path,
                           struct conf_route_cache *rc);
void conf_route_cache_free(struct conf_route_cache *rc);

#endif
