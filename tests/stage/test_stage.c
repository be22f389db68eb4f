/* tests/stage/test_stage.c: a stage built only into the test binary
 * (build/tests/portico-stagetest), so that the stage interface is proven
 * on real processes before the cache, limits and filters depend on it.
 * It acts on routes by their prefix:
 *
 *   /answer/   answers from memory (one static, reference-counted body) with
 *              STAGE_ANSWERED; the upstream never sees the request.
 *   /wait/     parks the request (STAGE_WAIT); a request to /wait/release
 *              resumes every parked one (they then go to the upstream) and
 *              answers "released N"; /wait/answer answers them from memory
 *              instead. A parked client that goes away leaves the list.
 *   /upper/    transforms the response body: ASCII letters to upper case,
 *              at most 100 bytes per call (so backpressure and many calls
 *              are exercised).
 *   /watch/    watches the body; at the end appends "watch <status>
 *              <bytes> <fnv1a>" to the file named by $STAGETEST_LOG.
 */
#include "conf/conf.h"
#include "proxy/stage.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool starts(const struct conf_route *rt, const char *p)
{
    return !strncmp(rt->prefix, p, strlen(p));
}

static void *route_new(const struct conf *conf, const struct conf_route *rt)
{
    (void)conf;
    if (starts(rt, "/answer/") || starts(rt, "/wait/") || starts(rt, "/upper/") ||
        starts(rt, "/watch/"))
        return (void *)rt;
    return NULL;
}

struct waiter {
    struct waiter *prev, *next;
    struct stage_x *sx;
    bool listed;
    uint64_t bytes, hash;
};

static _Thread_local struct waiter *waiting;

static void unlist(struct waiter *w)
{
    if (!w->listed)
        return;
    if (w->prev)
        w->prev->next = w->next;
    else
        waiting = w->next;
    if (w->next)
        w->next->prev = w->prev;
    w->listed = false;
}

static void body_keep(struct stage_body *b) { (void)b; }
static struct stage_body answer_body = {
    .refs = 1, .len = 21, .data = "answered from memory\n", .release = body_keep,
};

static int answer(struct stage_x *sx, const char *tag)
{
    struct stage_field f[] = {
        { "Content-Type", "text/plain", 12, 10 },
        { "X-Stage", tag, 7, strlen(tag) },
    };
    return stage_answer(sx, 200, f, 2, &answer_body);
}

static enum stage_verdict on_request(struct stage_x *sx)
{
    const struct conf_route *rt = stage_route_state(sx);
    size_t plen;
    const char *path = stage_path(sx, &plen);
    if (starts(rt, "/answer/"))
        return answer(sx, "answer") == 0 ? STAGE_ANSWERED : STAGE_CONTINUE;
    if (!starts(rt, "/wait/"))
        return STAGE_CONTINUE;
    bool release = plen >= 13 && !memcmp(path, "/wait/release", 13);
    bool answer_all = plen >= 12 && !memcmp(path, "/wait/answer", 12);
    if (release || answer_all) {
        int n = 0;
        while (waiting) {
            struct waiter *w = waiting;
            unlist(w);
            n++;
            if (answer_all) {
                answer(w->sx, "waited");
                stage_finish(w->sx, 500);
            } else {
                stage_resume(w->sx);
            }
        }
        static char msg[64];
        int len = snprintf(msg, sizeof msg, "released %d\n", n);
        struct stage_body *b = stage_body_copy(msg, (size_t)len);
        struct stage_field f[] = { { "X-Stage", "release", 7, 7 } };
        int rc = stage_answer(sx, 200, f, 1, b);
        stage_body_unref(b);
        return rc == 0 ? STAGE_ANSWERED : STAGE_CONTINUE;
    }
    struct waiter *w = stage_ctx(sx);
    w->sx = sx;
    w->next = waiting;
    if (waiting)
        waiting->prev = w;
    waiting = w;
    w->listed = true;
    return STAGE_WAIT;
}

static enum stage_body_mode on_response(struct stage_x *sx)
{
    const struct conf_route *rt = stage_route_state(sx);
    if (starts(rt, "/upper/")) {
        stage_response_edit(sx, STAGE_SET, "X-Transformed", 13, "upper", 5);
        return STAGE_BODY_TRANSFORM;
    }
    if (starts(rt, "/watch/"))
        return STAGE_BODY_WATCH;
    return STAGE_BODY_NONE;
}

static size_t on_body(struct stage_x *sx, const char *in, size_t len, bool end, char *out,
                      size_t room, size_t *out_len)
{
    (void)end;
    struct waiter *w = stage_ctx(sx);
    if (!out) {                 /* watching */
        if (!w->hash)
            w->hash = 1469598103934665603ull;
        for (size_t i = 0; i < len; i++)
            w->hash = (w->hash ^ (unsigned char)in[i]) * 1099511628211ull;
        w->bytes += len;
        *out_len = 0;
        return len;
    }
    size_t n = len < room ? len : room;
    if (n > 100)
        n = 100;
    for (size_t i = 0; i < n; i++)
        out[i] = in[i] >= 'a' && in[i] <= 'z' ? (char)(in[i] - 32) : in[i];
    *out_len = n;
    return n;
}

static void on_end(struct stage_x *sx)
{
    struct waiter *w = stage_ctx(sx);
    unlist(w);                  /* a parked client that went away */
    const struct conf_route *rt = stage_route_state(sx);
    const char *log = getenv("STAGETEST_LOG");
    if (log && (starts(rt, "/watch/") || starts(rt, "/wait/"))) {
        FILE *f = fopen(log, "a");
        if (f) {
            fprintf(f, "%s %d %llu %016llx\n", starts(rt, "/watch/") ? "watch" : "wait",
                    stage_status(sx), (unsigned long long)w->bytes,
                    (unsigned long long)(w->bytes ? w->hash : 0));
            fclose(f);
        }
    }
}

static const struct stage_def test_stage = {
    .name = "test",
    .ctx_size = sizeof(struct waiter),
    .route_new = route_new,
    .on_request = on_request,
    .on_response = on_response,
    .on_body = on_body,
    .on_end = on_end,
};

__attribute__((constructor)) static void register_test_stage(void)
{
    stage_register(&test_stage);
}
