/* tests/unit/test_buf.c: the buffer pool and the buffer window helpers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "core/buf.h"

static void pool_get_put_reuse(void **state)
{
    (void)state;
    struct buf_pool p;
    buf_pool_init(&p, 1024, 4);
    assert_int_equal(p.size, 1024);
    assert_int_equal(p.nfree, 0);
    assert_int_equal(p.live, 0);
    assert_null(p.free);

    struct buf *a = buf_get(&p);
    assert_non_null(a);
    assert_int_equal(a->cap, 1024);
    assert_int_equal(a->start, 0);
    assert_int_equal(a->end, 0);
    assert_null(a->next);
    assert_int_equal(buf_len(a), 0);
    assert_int_equal(buf_room(a), 1024);
    assert_int_equal(p.live, 1);
    memset(a->data, 'x', a->cap);     /* the whole capacity is usable */

    struct buf *b = buf_get(&p);
    assert_non_null(b);
    assert_ptr_not_equal(a, b);
    assert_int_equal(p.live, 2);

    /* a returned buffer goes on the free list and comes back next, reset */
    a->start = 3;
    a->end = 10;
    buf_put(&p, a);
    assert_int_equal(p.live, 1);
    assert_int_equal(p.nfree, 1);
    struct buf *c = buf_get(&p);
    assert_ptr_equal(c, a);
    assert_int_equal(c->start, 0);
    assert_int_equal(c->end, 0);
    assert_int_equal(c->cap, 1024);
    assert_null(c->next);
    assert_int_equal(p.nfree, 0);
    assert_int_equal(p.live, 2);

    /* LIFO: the most recently returned comes back first */
    buf_put(&p, b);
    buf_put(&p, c);
    assert_int_equal(p.nfree, 2);
    assert_ptr_equal(buf_get(&p), c);
    assert_ptr_equal(buf_get(&p), b);
    buf_put(&p, b);
    buf_put(&p, c);

    assert_int_equal(p.live, 0);
    buf_pool_drain(&p);
    assert_int_equal(p.nfree, 0);
    assert_null(p.free);
}

static void pool_free_list_is_bounded(void **state)
{
    (void)state;
    struct buf_pool p;
    buf_pool_init(&p, 64, 3);
    struct buf *bs[10];
    for (int i = 0; i < 10; i++) {
        bs[i] = buf_get(&p);
        assert_non_null(bs[i]);
    }
    assert_int_equal(p.live, 10);
    for (int i = 0; i < 10; i++) {
        buf_put(&p, bs[i]);
        assert_int_equal(p.live, (uint64_t)(9 - i));
        assert_int_equal(p.nfree, i < 3 ? (uint32_t)(i + 1) : 3u);
    }
    /* the three kept are the first three returned, newest first */
    assert_ptr_equal(buf_get(&p), bs[2]);
    assert_ptr_equal(buf_get(&p), bs[1]);
    assert_ptr_equal(buf_get(&p), bs[0]);
    assert_int_equal(p.nfree, 0);
    struct buf *fresh = buf_get(&p);
    assert_non_null(fresh);
    assert_int_equal(fresh->cap, 64);
    assert_int_equal(p.live, 4);
    buf_put(&p, fresh);
    buf_put(&p, bs[0]);
    buf_put(&p, bs[1]);
    buf_put(&p, bs[2]);
    assert_int_equal(p.nfree, 3);
    assert_int_equal(p.live, 0);
    buf_pool_drain(&p);
    assert_int_equal(p.nfree, 0);

    /* a pool that keeps nothing */
    buf_pool_init(&p, 64, 0);
    struct buf *x = buf_get(&p);
    buf_put(&p, x);
    assert_int_equal(p.nfree, 0);
    assert_null(p.free);
    assert_int_equal(p.live, 0);
    buf_pool_drain(&p);
}

static void pool_put_null(void **state)
{
    (void)state;
    struct buf_pool p;
    buf_pool_init(&p, 64, 2);
    buf_put(&p, NULL);
    assert_int_equal(p.live, 0);
    assert_int_equal(p.nfree, 0);
    /* drain twice is harmless, and the pool works after a drain */
    buf_pool_drain(&p);
    buf_pool_drain(&p);
    struct buf *b = buf_get(&p);
    assert_non_null(b);
    buf_put(&p, b);
    buf_pool_drain(&p);
}

static void buf_append_consume_compact(void **state)
{
    (void)state;
    struct buf_pool p;
    buf_pool_init(&p, 16, 1);
    struct buf *b = buf_get(&p);

    assert_int_equal(buf_append(b, "hello", 5), 5);
    assert_int_equal(buf_len(b), 5);
    assert_int_equal(buf_room(b), 11);
    assert_memory_equal(buf_head(b), "hello", 5);
    assert_ptr_equal(buf_tail(b), b->data + 5);

    /* partial append when the room runs out */
    assert_int_equal(buf_append(b, " world, again", 13), 11);
    assert_int_equal(buf_len(b), 16);
    assert_int_equal(buf_room(b), 0);
    assert_memory_equal(buf_head(b), "hello world, aga", 16);
    assert_int_equal(buf_append(b, "x", 1), 0);
    assert_int_equal(buf_append(b, "", 0), 0);

    /* consume moves the window start */
    buf_consume(b, 6);
    assert_int_equal(b->start, 6);
    assert_int_equal(buf_len(b), 10);
    assert_memory_equal(buf_head(b), "world, aga", 10);
    assert_int_equal(buf_room(b), 0);     /* room is only at the tail */

    /* compact moves the unread bytes to the front */
    buf_compact(b);
    assert_int_equal(b->start, 0);
    assert_int_equal(b->end, 10);
    assert_int_equal(buf_room(b), 6);
    assert_memory_equal(buf_head(b), "world, aga", 10);
    assert_int_equal(buf_append(b, "in!!!!!!", 8), 6);
    assert_memory_equal(buf_head(b), "world, again!!!!", 16);

    /* compact of an already compact buffer changes nothing */
    buf_compact(b);
    assert_int_equal(b->start, 0);
    assert_int_equal(b->end, 16);

    /* consuming everything resets the window to the front */
    buf_consume(b, 10);
    assert_int_equal(b->start, 10);
    buf_consume(b, 6);
    assert_int_equal(b->start, 0);
    assert_int_equal(b->end, 0);
    assert_int_equal(buf_len(b), 0);
    assert_int_equal(buf_room(b), 16);

    /* consume of zero on an empty buffer keeps it empty */
    buf_consume(b, 0);
    assert_int_equal(b->start, 0);
    assert_int_equal(b->end, 0);

    /* compact with overlapping regions (memmove) */
    for (int i = 0; i < 16; i++)
        buf_append(b, &"0123456789abcdef"[i], 1);
    buf_consume(b, 3);
    buf_compact(b);
    assert_int_equal(buf_len(b), 13);
    assert_memory_equal(buf_head(b), "3456789abcdef", 13);

    buf_put(&p, b);
    buf_pool_drain(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(pool_get_put_reuse),
        cmocka_unit_test(pool_free_list_is_bounded),
        cmocka_unit_test(pool_put_null),
        cmocka_unit_test(buf_append_consume_compact),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
