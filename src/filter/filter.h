/* filter/filter.h: stages that change heads and bodies on their way through.
 *
 * filter_headers_stage: `headers:` on a route (conf_route.req_headers,
 * .resp_headers): set, add, default or remove request fields before the
 * upstream sees them and response fields before the client does, with value
 * templates ${client_ip}, ${request_id}, ${route}, ${host}, ${upstream}. A
 * route without `headers:` does not have the stage in its chain.
 */
#ifndef PORTICO_FILTER_H
#define PORTICO_FILTER_H

#include "proxy/stage.h"

extern const struct stage_def filter_headers_stage;

/* filter_security_stage: security_headers (the top level's, and a route's
 * over them): Strict-Transport-Security (HTTPS only), X-Content-Type-Options,
 * X-Frame-Options, Referrer-Policy, Content-Security-Policy,
 * Permissions-Policy, Cross-Origin-Opener-Policy, each unless the upstream
 * set it (or always with override); `hide` removes upstream fields. */
extern const struct stage_def filter_security_stage;

/* filter_compress_stage: `compression:` gzip, brotli and zstd as bodies
 * stream (filter/compress.c). */
extern const struct stage_def filter_compress_stage;

/* For the cache, which stores compressed variants of what it holds
 * (compressed once, at the strong cache levels, served many times):
 * the encoding (CONF_ENC_*) a request accepts best in cp's order of
 * preference, or -1 for identity; whether a response of that media type,
 * Cache-Control and length may be compressed (Content-Encoding is the
 * caller's to check); and a whole body compressed (NULL on failure). */
struct conf_compression;
int filter_negotiate(struct stage_x *sx, const struct conf_compression *cp);
bool filter_compressible(const struct conf_compression *cp, const char *type, size_t tlen,
                         const char *cc, size_t cclen, uint64_t len);
struct stage_body *filter_encode(int enc, int level, const char *data, size_t len);
extern const char *const filter_enc_name[];

/* Expand a template into out (at most cap bytes). Returns the length, or
 * -1 when it does not fit. Exposed for the unit tests. */
long filter_render(struct stage_x *sx, const char *tpl, size_t len, char *out, size_t cap);

#endif
