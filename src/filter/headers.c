/* filter/headers.c: the `headers:` stage (see filter.h). */
#include "filter.h"

#include "conf/conf.h"

#include <string.h>

static void *headers_route(const struct conf *conf, const struct conf_route *rt)
{
    (void)conf;
    return rt->req_headers.n || rt->resp_headers.n ? (void *)rt : NULL;
}

static const char *variable(struct stage_x *sx, const char *name, size_t n, size_t *len)
{
#define IS(lit) (n == sizeof(lit) - 1 && !memcmp(name, lit, n))
    if (IS("client_ip"))
        return stage_client_ip(sx, len);
    if (IS("request_id"))
        return stage_request_id(sx, len);
    if (IS("route")) {
        *len = strlen(stage_route(sx)->prefix);
        return stage_route(sx)->prefix;
    }
    if (IS("upstream")) {
        *len = strlen(stage_route(sx)->upstream->name);
        return stage_route(sx)->upstream->name;
    }
    if (IS("host")) {
        const char *h = stage_host(sx, len);
        return h ? h : "";
    }
#undef IS
    *len = 0;
    return "";
}

long filter_render(struct stage_x *sx, const char *tpl, size_t len, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        const char *e = NULL;
        if (tpl[i] == '$' && i + 1 < len && tpl[i + 1] == '{')
            e = memchr(tpl + i, '}', len - i);
        const char *v = tpl + i;
        size_t vlen = 1, skip = 1;
        if (e) {                /* names were checked when the configuration loaded */
            v = variable(sx, tpl + i + 2, (size_t)(e - tpl - i - 2), &vlen);
            skip = (size_t)(e - tpl - i) + 1;
        }
        if (o + vlen > cap)
            return -1;
        memcpy(out + o, v, vlen);
        o += vlen;
        i += skip;
    }
    return (long)o;
}

static void apply(struct stage_x *sx, const struct conf_hdr_rules *rules, bool request)
{
    char val[4096];
    for (uint32_t i = 0; i < rules->n; i++) {
        const struct conf_hdr_op *op = &rules->ops[i];
        enum stage_edit e = op->verb == CONF_HDR_SET ? STAGE_SET
                          : op->verb == CONF_HDR_ADD ? STAGE_ADD
                          : op->verb == CONF_HDR_DEFAULT ? STAGE_DEFAULT : STAGE_REMOVE;
        long n = 0;
        if (e != STAGE_REMOVE && (n = filter_render(sx, op->value, op->value_len, val, sizeof val)) < 0)
            continue;
        if (request)
            stage_request_edit(sx, e, op->name, op->name_len, val, (size_t)n);
        else
            stage_response_edit(sx, e, op->name, op->name_len, val, (size_t)n);
    }
}

static enum stage_verdict headers_request(struct stage_x *sx)
{
    const struct conf_route *rt = stage_route_state(sx);
    apply(sx, &rt->req_headers, true);
    return STAGE_CONTINUE;
}

static enum stage_body_mode headers_response(struct stage_x *sx)
{
    const struct conf_route *rt = stage_route_state(sx);
    apply(sx, &rt->resp_headers, false);
    return STAGE_BODY_NONE;
}

const struct stage_def filter_headers_stage = {
    .name = "headers",
    .route_new = headers_route,
    .on_request = headers_request,
    .on_response = headers_response,
};
