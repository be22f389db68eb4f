/* limit/top.c: the top offending clients, by refusals (rate limits, login
 * guard, allow/deny), in bounded memory: the Space-Saving algorithm (Metwally
 * et al.) with TOP_K counters. A key not counted takes the place of the
 * least counted one and inherits its count as its error bound, so every key
 * refused more than N/TOP_K times is in the table and its count is over by
 * at most `error`. One lock: it is taken only for refusals. */
#include "limit.h"

#include "obs/obs.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOP_K 64

struct counter {
    char key[64];               /* the client address */
    char why[64];               /* what refused it last: a limit's name, "login_guard", "deny" */
    uint64_t count, error;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct counter top[TOP_K];
static uint32_t ntop;

void limit_top_note(const char *key, size_t len, const char *why)
{
    if (len >= sizeof top[0].key)
        len = sizeof top[0].key - 1;
    pthread_mutex_lock(&mu);
    struct counter *c = NULL, *min = NULL;
    for (uint32_t i = 0; i < ntop && !c; i++) {
        if (strlen(top[i].key) == len && !memcmp(top[i].key, key, len))
            c = &top[i];
        else if (!min || top[i].count < min->count)
            min = &top[i];
    }
    if (!c && ntop < TOP_K) {
        c = &top[ntop++];
        memset(c, 0, sizeof *c);
    } else if (!c) {
        c = min;                /* the least counted goes; its count is our error bound */
        c->error = c->count;
    }
    if (c->key[0] == '\0' || strlen(c->key) != len || memcmp(c->key, key, len)) {
        memcpy(c->key, key, len);
        c->key[len] = '\0';
    }
    snprintf(c->why, sizeof c->why, "%s", why);
    c->count++;
    pthread_mutex_unlock(&mu);
}

static int by_count(const void *a, const void *b)
{
    const struct counter *x = a, *y = b;
    return x->count < y->count ? 1 : x->count > y->count ? -1 : strcmp(x->key, y->key);
}

static uint32_t snapshot(struct counter *out)
{
    pthread_mutex_lock(&mu);
    uint32_t n = ntop;
    memcpy(out, top, n * sizeof *out);
    pthread_mutex_unlock(&mu);
    qsort(out, n, sizeof *out, by_count);
    return n;
}

void limit_top_json(struct obs_text *t, uint32_t max)
{
    struct counter s[TOP_K];
    uint32_t n = snapshot(s);
    if (max < n)
        n = max;
    obs_printf(t, "{\"top\":[");
    for (uint32_t i = 0; i < n; i++)
        obs_printf(t, "%s{\"client\":\"%s\",\"refused\":%llu,\"error\":%llu,\"last_by\":\"%s\"}",
                   i ? "," : "", s[i].key, (unsigned long long)s[i].count,
                   (unsigned long long)s[i].error, s[i].why);
    obs_printf(t, "],\"tracked\":%u,\"capacity\":%d}", n, TOP_K);
}

void limit_top_metrics(struct obs_text *t)
{
    struct counter s[TOP_K];
    uint32_t n = snapshot(s);
    if (n > 10)
        n = 10;                 /* ten ranks: the label space stays bounded */
    obs_printf(t, "# HELP portico_ratelimit_top_offender_refusals Refusals of the most refused "
                  "clients (Space-Saving estimate), by rank.\n"
                  "# TYPE portico_ratelimit_top_offender_refusals gauge\n");
    for (uint32_t i = 0; i < n; i++)
        obs_printf(t, "portico_ratelimit_top_offender_refusals{rank=\"%u\",client=\"%s\"} %llu\n",
                   i + 1, s[i].key, (unsigned long long)s[i].count);
}

/* The top of it for /status (a table on the status page). */
void limit_top_rows(struct obs_text *t, uint32_t max)
{
    struct counter s[TOP_K];
    uint32_t n = snapshot(s);
    if (max < n)
        n = max;
    obs_printf(t, "[");
    for (uint32_t i = 0; i < n; i++)
        obs_printf(t, "%s{\"client\":\"%s\",\"refused\":%llu,\"last_by\":\"%s\"}", i ? "," : "",
                   s[i].key, (unsigned long long)s[i].count, s[i].why);
    obs_printf(t, "]");
}
