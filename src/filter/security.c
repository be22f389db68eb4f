/* filter/security.c: security_headers (see filter.h): on the response head,
 * the fields security audits ask for, each unless the upstream set its own
 * (or always, with override); Strict-Transport-Security only when the
 * client used HTTPS; upstream fields such as Server and X-Powered-By
 * removed. The route's configuration is the top level's with the route's
 * own security_headers over it (conf.c). */
#include "filter.h"

#include "conf/conf.h"

#include <string.h>

static void *security_route(const struct conf *conf, const struct conf_route *rt)
{
    (void)conf;
    return rt->security.enabled ? (void *)&rt->security : NULL;
}

static enum stage_body_mode security_response(struct stage_x *sx)
{
    const struct conf_security *sec = stage_route_state(sx);
    char val[1024];
    for (int i = 0; i < CONF_SEC_N; i++) {
        const char *v = sec->set[i] ? sec->value[i] : conf_security_defaults[i];
        if (!*v)
            continue;                               /* `off` */
        if (i == CONF_SEC_HSTS && !stage_https(sx))
            continue;                               /* HSTS over plain HTTP is ignored, and wrong */
        long n = filter_render(sx, v, strlen(v), val, sizeof val);
        if (n < 0)
            continue;
        const char *name = conf_security_names[i];
        stage_response_edit(sx, sec->override ? STAGE_SET : STAGE_DEFAULT, name, strlen(name), val,
                            (size_t)n);
    }
    for (uint32_t i = 0; i < sec->nhide; i++)
        stage_response_edit(sx, STAGE_REMOVE, sec->hide[i], strlen(sec->hide[i]), NULL, 0);
    return STAGE_BODY_NONE;
}

const struct stage_def filter_security_stage = {
    .name = "security_headers",
    .route_new = security_route,
    .on_response = security_response,
};
