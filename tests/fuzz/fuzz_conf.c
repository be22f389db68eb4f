/* libFuzzer target for the configuration loader: any bytes must give either
 * a valid snapshot or a `file:line:col: key.path: message` error, never a
 * crash, a leak or undefined behaviour. Host names are not resolved (see
 * conf_resolve_names), so inputs never wait on DNS. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "conf/conf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    conf_resolve_names = false;
    char err[1024];
    err[0] = '\0';
    struct conf *c = conf_load_string("f.yaml", (const char *)data, size, err, sizeof err);
    if (c) {
        /* a loaded snapshot is consistent */
        if (c->nlisten == 0 || c->nupstreams == 0 || c->nroutes == 0)
            abort();
        for (uint32_t i = 0; i < c->nroutes; i++)
            if (!c->routes[i].upstream || c->routes[i].prefix[0] != '/')
                abort();
        conf_unref(c);
    } else if (strncmp(err, "f.yaml", 6) != 0) {
        abort();                /* every error names the file */
    }
    return 0;
}
