/* core/buf.h: fixed-size byte buffers and a per-thread free list of them.
 *
 * A struct buf is a window [start, end) into `cap` bytes. Buffers belong to
 * active work: a connection takes one when it has bytes to hold and gives it
 * back as soon as it is empty, so idle connections cost no buffer memory.
 * A pool is not thread-safe; each worker has its own.
 */
#ifndef PORTICO_CORE_BUF_H
#define PORTICO_CORE_BUF_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct buf {
    uint32_t start, end, cap;
    struct buf *next;           /* free-list link while pooled */
    char data[];
};

struct buf_pool {
    uint32_t size;              /* capacity of every buffer in this pool */
    uint32_t nfree, max_free;   /* free list length and its bound */
    struct buf *free;
    uint64_t live;              /* buffers handed out and not returned */
};

void buf_pool_init(struct buf_pool *p, uint32_t size, uint32_t max_free);
void buf_pool_drain(struct buf_pool *p);
/* NULL when out of memory. */
struct buf *buf_get(struct buf_pool *p);
/* Return a buffer (NULL is fine). */
void buf_put(struct buf_pool *p, struct buf *b);

static inline size_t buf_len(const struct buf *b) { return b->end - b->start; }
static inline size_t buf_room(const struct buf *b) { return b->cap - b->end; }
static inline char *buf_head(struct buf *b) { return b->data + b->start; }
static inline char *buf_tail(struct buf *b) { return b->data + b->end; }
static inline void buf_consume(struct buf *b, size_t n)
{
    b->start += (uint32_t)n;
    if (b->start == b->end)
        b->start = b->end = 0;
}
/* Move unread bytes to the front so the room at the tail is maximal. */
static inline void buf_compact(struct buf *b)
{
    if (b->start == 0)
        return;
    size_t n = buf_len(b);
    memmove(b->data, b->data + b->start, n);
    b->start = 0;
    b->end = (uint32_t)n;
}
/* Append up to n bytes; returns how many fit. */
static inline size_t buf_append(struct buf *b, const void *p, size_t n)
{
    if (n > buf_room(b))
        n = buf_room(b);
    memcpy(b->data + b->end, p, n);
    b->end += (uint32_t)n;
    return n;
}

#endif
