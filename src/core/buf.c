/* core/buf.c: see buf.h. */
#include "buf.h"

#include <stdlib.h>

void buf_pool_init(struct buf_pool *p, uint32_t size, uint32_t max_free)
{
    p->size = size;
    p->nfree = 0;
    p->max_free = max_free;
    p->free = NULL;
    p->live = 0;
}

void buf_pool_drain(struct buf_pool *p)
{
    while (p->free) {
        struct buf *b = p->free;
        p->free = b->next;
        free(b);
    }
    p->nfree = 0;
}

struct buf *buf_get(struct buf_pool *p)
{
    struct buf *b = p->free;
    if (b) {
        p->free = b->next;
        p->nfree--;
    } else {
        b = malloc(sizeof *b + p->size);
        if (!b)
            return NULL;
        b->cap = p->size;
    }
    b->start = b->end = 0;
    b->next = NULL;
    p->live++;
    return b;
}

void buf_put(struct buf_pool *p, struct buf *b)
{
    if (!b)
        return;
    p->live--;
    if (p->nfree >= p->max_free) {
        free(b);
        return;
    }
    b->next = p->free;
    p->free = b;
    p->nfree++;
}
