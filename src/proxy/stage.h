/* proxy/stage.h: the request path's extension points.
 *
 * A stage is a module that plugs into every exchange of the routes that use
 * it: rate limits and cache lookups on the request head, header rules and the
 * cache's store decision on the response head, compression and cache fill on
 * the body, logs and metrics at the end. A stage is a `struct stage_def`:
 * a name, the size of its per-exchange context, and callbacks at fixed
 * points, each optional:
 *
 *   route_new    when a configuration loads, once per route: the stage's
 *                state for that route, or NULL when the route does not use
 *                the stage (it is then not in the route's chain and costs
 *                that route nothing).
 *   on_request   the request head has been parsed and routed. Return
 *                STAGE_CONTINUE (the next stage, then the upstream),
 *                STAGE_ANSWERED after stage_answer() (no upstream; the
 *                response stages still see the answer's head), or
 *                STAGE_WAIT (parked until stage_resume(); its timeout keeps
 *                running and a client that goes away ends the exchange).
 *   on_upstream  the upstream answered (r_status its status) or failed
 *                (r_status 502, 503 or 504 with no response): the stage may
 *                answer from memory instead (stage_answer, return true), as
 *                a cache does with a 304 it merges or a stale copy when the
 *                origin fails. The upstream's response is then discarded.
 *   on_response  the response head is known (an upstream's or an answer's):
 *                read it, add, set or remove fields, and return
 *                STAGE_BODY_WATCH to see the body, STAGE_BODY_TRANSFORM to
 *                rewrite it (one transforming stage per response), or
 *                STAGE_BODY_NONE.
 *   on_body      body data, without its framing, in order: a watcher only
 *                reads it; a transformer writes its output to `out` (at most
 *                out_room bytes) and returns how much of `in` it consumed,
 *                the rest being offered again once the client has taken the
 *                output (backpressure, bounded memory). `end` is true once
 *                the whole body has been offered: flush then.
 *   on_end       the exchange is over (status 499 if the client went away):
 *                status, sizes and timings are known. Called for every stage
 *                of the chain, even when the exchange failed or was parked:
 *                drop any reference to the exchange here.
 *
 * on_response and on_end run for every stage of the route's chain, also
 * when an earlier stage answered (a cache hit, a 429) and this one's
 * on_request never ran: its context is then still zeroed. So headers rules
 * apply to answers too, and logs and metrics count them.
 *
 * Callbacks run on the exchange's worker thread and must not block. The
 * `struct stage_x *` they get is valid until on_end returns. Strings given
 * to the stage_* functions are copied when needed; strings they return point
 * into the exchange and last until the next callback.
 */
#ifndef PORTICO_PROXY_STAGE_H
#define PORTICO_PROXY_STAGE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct conf;
struct conf_route;
struct stage_x;

enum stage_verdict {
    STAGE_CONTINUE = 0,
    STAGE_ANSWERED,
    STAGE_WAIT,
};

enum stage_body_mode {
    STAGE_BODY_NONE = 0,
    STAGE_BODY_WATCH,
    STAGE_BODY_TRANSFORM,
};

struct stage_def {
    const char *name;
    uint32_t ctx_size;              /* per-exchange context, zeroed */
    bool keep_request_headers;      /* stage_request_header() after on_request too,
                                       for an exchange that goes upstream or waits
                                       (one answered at once does without a copy) */
    void *(*route_new)(const struct conf *conf, const struct conf_route *route);
    void (*route_free)(void *route_state);
    enum stage_verdict (*on_request)(struct stage_x *sx);
    bool (*on_upstream)(struct stage_x *sx, int r_status);
    enum stage_body_mode (*on_response)(struct stage_x *sx);
    size_t (*on_body)(struct stage_x *sx, const char *in, size_t len, bool end, char *out,
                      size_t out_room, size_t *out_len);
    void (*on_end)(struct stage_x *sx);
};

/* Make a stage known to routes loaded from now on (before proxy_start();
 * the built-in stages and the modules' are registered by the proxy). The
 * order of registration is the order of the chain. At most 32. 0 or -1. */
int stage_register(const struct stage_def *def);

/* ---- what a stage knows of its exchange ---- */

void *stage_ctx(struct stage_x *sx);            /* this stage's per-exchange context */
void *stage_route_state(struct stage_x *sx);    /* what route_new returned */
const struct conf_route *stage_route(struct stage_x *sx);
const char *stage_method(struct stage_x *sx, size_t *len);
/* The request path (normalised, as routes match it) with its query. */
const char *stage_path(struct stage_x *sx, size_t *len);
const char *stage_host(struct stage_x *sx, size_t *len);     /* NULL: none */
const char *stage_client_ip(struct stage_x *sx, size_t *len); /* trusted_proxies applied */
const char *stage_request_id(struct stage_x *sx, size_t *len);
/* Whether the request was made by portico itself (stage_background). */
bool stage_internal(struct stage_x *sx);
/* Whether the client used HTTPS (as a trusted proxy says; portico has no TLS yet). */
bool stage_https(struct stage_x *sx);
/* A request field by name (the first one), during on_request, or at any
 * time for a stage with keep_request_headers. */
bool stage_request_header(struct stage_x *sx, const char *name, size_t name_len,
                          const char **value, size_t *value_len);
/* The i-th field of the request head (when stage_request_header would
 * work); false past the last. For fields on several lines. */
struct stage_field;
bool stage_request_field(struct stage_x *sx, uint32_t i, struct stage_field *f);
/* The request body, during on_request, when it has all arrived with the
 * head (a Content-Length body already in the input buffer: a login form).
 * False otherwise: portico does not wait for a body on a stage's behalf. */
bool stage_request_body(struct stage_x *sx, const char **body, size_t *len);
int stage_status(struct stage_x *sx);           /* 0 until a response head */
/* During on_response: whether STAGE_BODY_TRANSFORM would be honoured (a
 * body that can be rewritten and no other stage rewriting it). */
bool stage_body_transformable(struct stage_x *sx);
/* A field of the response head, during on_response. */
bool stage_response_header(struct stage_x *sx, const char *name, size_t name_len,
                           const char **value, size_t *value_len);
/* The i-th field of the upstream's response head, during on_upstream and
 * on_response; false past the last (and for an answer's head). */
struct stage_field;
bool stage_response_field(struct stage_x *sx, uint32_t i, struct stage_field *f);
uint64_t stage_bytes_in(struct stage_x *sx);
uint64_t stage_bytes_out(struct stage_x *sx);
uint64_t stage_duration_us(struct stage_x *sx);

/* ---- changing heads ---- */

enum stage_edit {
    STAGE_SET,          /* replace every field of the name, or add it */
    STAGE_ADD,          /* add one more */
    STAGE_REMOVE,       /* remove every field of the name */
    STAGE_DEFAULT,      /* set only if no field of the name is there */
};
/* On the request head for the upstream (during on_request), or on the
 * response head for the client (during on_response). The value is checked
 * (no CR, LF or NUL) and copied. 0, or -1 when refused or out of room. */
int stage_request_edit(struct stage_x *sx, enum stage_edit e, const char *name, size_t name_len,
                       const char *value, size_t value_len);
int stage_response_edit(struct stage_x *sx, enum stage_edit e, const char *name, size_t name_len,
                        const char *value, size_t value_len);

/* The cache's result for this exchange ("hit", "miss"...: a string that
 * lives for the process), the access log's `cache` field. */
void stage_log_cache(struct stage_x *sx, const char *result);

/* During on_body: the body cannot be transformed (corrupt input): the
 * client's response ends abnormally (a reset), as a cut upstream body does. */
void stage_body_error(struct stage_x *sx);

/* ---- answering from memory ---- */

/* A body that lives in memory and may outlive the request (a cached
 * response): reference-counted and immutable; written to the client with
 * writev straight from `data`, never copied through a buffer. */
struct stage_body {
    atomic_uint refs;
    size_t len;
    const char *data;
    void (*release)(struct stage_body *b);      /* at the last unref */
};
struct stage_body *stage_body_ref(struct stage_body *b);
void stage_body_unref(struct stage_body *b);
/* A body holding a copy of data (released with free). NULL when out of memory. */
struct stage_body *stage_body_copy(const void *data, size_t len);

struct stage_field {
    const char *name, *value;
    size_t name_len, value_len;
};
/* Answer the request without the upstream (during on_request, then return
 * STAGE_ANSWERED; or on a parked exchange instead of resuming it): status,
 * fields (Content-Length is added), a body or NULL. Takes a reference to
 * body. 0, or -1 when the head does not fit (the client then gets 500). */
int stage_answer(struct stage_x *sx, int status, const struct stage_field *fields, size_t n,
                 struct stage_body *body);

/* The same, with the fields as one block of "Name: value\r\n" lines that the
 * stage has validated (a stored response's head) and keeps unchanged until
 * its on_end, followed by up to 16 fields (copied). */
int stage_answer_block(struct stage_x *sx, int status, const char *block, size_t block_len,
                       const struct stage_field *fields, size_t n, struct stage_body *body);

/* ---- waiting ---- */

/* Continue a parked exchange with the next stage (then the upstream). Call
 * on the exchange's worker thread, from another exchange's callback or a
 * timer, at most once per STAGE_WAIT. */
void stage_resume(struct stage_x *sx);
/* Park for a while: return STAGE_WAIT after calling it, and the exchange
 * resumes by itself in `ms` (a pacing limiter's delay). */
void stage_resume_after(struct stage_x *sx, uint64_t ms);
/* Answer a parked exchange instead (after stage_answer()), or fail it with
 * a status (stage_answer not called: a plain status page). */
void stage_finish(struct stage_x *sx, int status_if_no_answer);

/* Waking a parked exchange from any thread (another worker's exchange that
 * finished the fetch it waited on). stage_waker() is called on the
 * exchange's thread before returning STAGE_WAIT; the handle goes to whoever
 * will wake it, who calls stage_waker_wake() once (any thread) or, if it
 * never will, stage_waker_put(). The exchange's worker then calls cb on the
 * exchange if it is still parked (it may have timed out or its client gone):
 * cb answers (stage_answer + stage_finish) or resumes it. */
struct stage_waker;
struct stage_waker *stage_waker(struct stage_x *sx, void (*cb)(struct stage_x *sx));
void stage_waker_wake(struct stage_waker *w);
void stage_waker_put(struct stage_waker *w);

/* Repeat this exchange's request in the background, as portico's own GET
 * (stage_internal() true) through the same route: the response goes through
 * the route's stages (a cache refreshes an entry) and is then dropped.
 * The request's fields are kept except conditionals, Range and framing.
 * During on_request or on_response. 0 or -1. */
int stage_background(struct stage_x *sx);

#endif
