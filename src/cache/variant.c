/* cache/variant.c: compressed variants of stored responses, made once per
 * encoding and kept with the stored response (cache.h). A small body is
 * compressed at once by the worker that first needs it (well under a
 * millisecond at the default cache levels); a larger one by a background
 * thread, the stored body being served meanwhile, so that no worker ever
 * blocks its other connections on a big body (brotli 6 takes about 200 ms
 * over 8 MiB). */
#include "cache.h"

#include "filter/filter.h"
#include "http/http.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define INLINE_MAX (64 * 1024)  /* bodies compressed by the worker itself */
#define QUEUE_MAX 256           /* variants waiting for the background thread */

struct job {
    struct cache_obj *obj;      /* a reference */
    int enc, level;
};

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct job q[QUEUE_MAX];
    unsigned head, n;
    bool started;
} bg = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, { { 0 } }, 0, 0, false };

/* The stored head for a compressed body: Content-Encoding, Accept-Encoding
 * in Vary, a strong ETag made weak (RFC 9110 8.8.1: not the same bytes). */
static struct cache_variant *make_variant(const struct cache_obj_view *v, int enc, int level)
{
    struct stage_body *b = filter_encode(enc, level, v->body->data, v->body->len);
    if (!b)
        return NULL;
    struct cache_variant *var = malloc(sizeof *var + v->head_len + 96);
    if (!var) {
        stage_body_unref(b);
        return NULL;
    }
    size_t n = 0;
    bool vary = false;
    for (const char *p = v->head, *end = v->head + v->head_len; p < end;) {
        const char *eol = memchr(p, '\r', (size_t)(end - p)), *colon = memchr(p, ':', (size_t)(end - p));
        if (!eol || !colon)
            break;
        size_t nl = (size_t)(colon - p), ll = (size_t)(eol - p);
        const char *val = colon + 2 <= eol ? colon + 2 : eol;
        if (nl == 4 && http_ieq(p, "etag", 4) && val < eol && *val == '"') {
            n += (size_t)sprintf(var->head + n, "ETag: W/%.*s\r\n", (int)(eol - val), val);
        } else if (nl == 4 && http_ieq(p, "vary", 4)) {
            vary = true;
            memcpy(var->head + n, p, ll);
            n += ll;
            n += (size_t)sprintf(var->head + n, ", Accept-Encoding\r\n");
        } else {
            memcpy(var->head + n, p, ll + 2);
            n += ll + 2;
        }
        p = eol + 2;
    }
    n += (size_t)sprintf(var->head + n, "Content-Encoding: %s\r\n%s", filter_enc_name[enc],
                         vary ? "" : "Vary: Accept-Encoding\r\n");
    var->head_len = n;
    var->body = b;
    return var;
}

static void *compressor(void *arg)
{
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&bg.mu);
        while (!bg.n)
            pthread_cond_wait(&bg.cv, &bg.mu);
        struct job j = bg.q[bg.head];
        bg.head = (bg.head + 1) % QUEUE_MAX;
        bg.n--;
        pthread_mutex_unlock(&bg.mu);
        struct cache_obj_view v;
        cache_obj_view(j.obj, &v);
        struct cache_variant *var = make_variant(&v, j.enc, j.level);
        if (var)
            cache_obj_add_variant(cache_get(), j.obj, j.enc, var);
        cache_obj_unref(j.obj);
    }
    return NULL;
}

/* Hand a variant to the background thread (once per object and encoding). */
static void queue(struct cache_obj *obj, int enc, int level)
{
    if (!cache_obj_claim_variant(obj, enc))
        return;                         /* already asked for */
    pthread_mutex_lock(&bg.mu);
    if (!bg.started) {
        pthread_t t;
        pthread_attr_t a;
        pthread_attr_init(&a);
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        bg.started = pthread_create(&t, &a, compressor, NULL) == 0;
        pthread_attr_destroy(&a);
    }
    if (bg.started && bg.n < QUEUE_MAX) {
        bg.q[(bg.head + bg.n) % QUEUE_MAX] = (struct job){ cache_obj_ref(obj), enc, level };
        bg.n++;
        pthread_cond_signal(&bg.cv);
    }
    pthread_mutex_unlock(&bg.mu);
}

const struct cache_variant *cache_variant_make(struct cache_obj *obj,
                                               const struct cache_obj_view *v, int enc, int level)
{
    if (v->body->len > INLINE_MAX) {
        queue(obj, enc, level);
        return NULL;
    }
    struct cache_variant *var = make_variant(v, enc, level);
    return var ? cache_obj_add_variant(cache_get(), obj, enc, var) : NULL;
}
