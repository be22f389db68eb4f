/* tests/unit/test_cache_store.c: the cache's store (cache/store.c): insert
 * and lookup, Vary variants, the byte budget and S3-FIFO eviction, purges,
 * namespaces, references that outlive eviction, and request coalescing with
 * real wakers.
 *
 * The store is a process-wide singleton (cache_configure creates it once and
 * only changes its budget afterwards), so every test starts from an empty
 * store: the group's setup purges everything (every key is
 * "http://host/path") and sets the default budget back. Counters
 * (evictions, purges, inserts) are global and only grow, so tests compare
 * differences.
 *
 * Coalescing: a waiter is a stage_waker, which belongs to an exchange on a
 * worker. Those are the proxy's internals (proxy/proxy_int.h); the test
 * builds the few fields stage_waker(), stage_waker_wake() and
 * stage_mbox_drain() use (a worker with a real loop and mailbox, a client,
 * an exchange with its stage state), so the wake path is the real one, up
 * to the callback the cache stage would run. Run it under `make unit SAN=1`
 * too: the reference tests read objects after their eviction.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cmocka.h>

#include "cache/cache.h"
#include "proxy/proxy_int.h"

#define BUDGET (1u << 20)

static struct cache *C;

static void budget(uint64_t bytes, uint32_t max_waiters)
{
    struct conf_cache cc = { .memory = bytes, .max_object = bytes / 4, .max_waiters = max_waiters };
    assert_int_equal(cache_configure(&cc), 0);
}

static void purge_all(void) { cache_purge_path(C, NULL, 0, "/", 1, true); }

static int setup(void **state)
{
    (void)state;
    budget(BUDGET, 1000);
    C = cache_get();
    purge_all();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    purge_all();
    struct cache_stats st;
    cache_stats(C, &st);
    return st.entries == 0 && st.bytes == 0 ? 0 : -1;
}

static struct cache_stats stats(void)
{
    struct cache_stats st;
    cache_stats(C, &st);
    return st;
}

/* ---------------------------------------------------------------- helpers */

/* A request's fields, for Vary. */
struct req {
    const char *name[4], *value[4];
};

static bool req_get(void *arg, const char *name, size_t nlen, const char **v, size_t *vlen)
{
    const struct req *r = arg;
    for (int i = 0; r && i < 4 && r->name[i]; i++)
        if (strlen(r->name[i]) == nlen && !strncasecmp(r->name[i], name, nlen)) {
            *v = r->value[i];
            *vlen = strlen(r->value[i]);
            return true;
        }
    return false;
}

struct spec {
    const char *key;
    const char *vnames, *vary;  /* Vary names and the request's values */
    size_t body;                /* its length; bytes are a pattern of the key */
    int status;
    int ns;
    const char *tags;
    const char *head;
};

static char pattern(const char *key, size_t i) { return (char)('a' + (strlen(key) * 7 + i) % 26); }

/* Insert; the store's reference for the caller (may be NULL). */
static struct cache_obj *put_spec(const struct spec *s)
{
    char *data = malloc(s->body + 1);
    assert_non_null(data);
    for (size_t i = 0; i < s->body; i++)
        data[i] = pattern(s->key, i);
    struct stage_body *b = stage_body_copy(data, s->body);
    free(data);
    assert_non_null(b);
    const char *head = s->head ? s->head : "Content-Type: text/plain\r\nETag: \"v1\"\r\n";
    struct cache_obj_new n = {
        .key = s->key, .key_len = strlen(s->key), .hash = cache_hash(s->key, strlen(s->key)),
        .vary = s->vary, .vary_len = s->vary ? strlen(s->vary) : 0,
        .vary_names = s->vnames, .vary_names_len = s->vnames ? strlen(s->vnames) : 0,
        .head = head, .head_len = strlen(head), .body = b, .status = s->status ? s->status : 200,
        .t = { .stored = 1000, .initial_age = 0, .lifetime = 60, .swr = -1, .sie = -1 },
        .ns = s->ns, .tags = s->tags, .tags_len = s->tags ? strlen(s->tags) : 0,
    };
    if (!s->ns)
        n.ns = -1;              /* 0 in a spec: no namespace (pass ns_id + 1) */
    else
        n.ns = s->ns - 1;
    struct cache_obj *o = cache_insert(C, &n);
    stage_body_unref(b);
    return o;
}

static struct cache_obj *put(const char *key, size_t body)
{
    return put_spec(&(struct spec){ .key = key, .body = body });
}

static void put_unref(const char *key, size_t body)
{
    struct cache_obj *o = put(key, body);
    assert_non_null(o);
    cache_obj_unref(o);
}

static struct cache_obj *get_req(const char *key, const struct req *r)
{
    return cache_lookup(C, cache_hash(key, strlen(key)), key, strlen(key), req_get, (void *)r);
}

static struct cache_obj *get(const char *key) { return get_req(key, NULL); }

static bool has(const char *key)
{
    struct cache_obj *o = get(key);
    cache_obj_unref(o);
    return o != NULL;
}

/* Whether o's body is the pattern of key, in full. */
static bool body_is(const struct cache_obj *o, const char *key, size_t len)
{
    struct cache_obj_view v;
    cache_obj_view(o, &v);
    if (!v.body || v.body->len != len)
        return false;
    for (size_t i = 0; i < len; i++)
        if (v.body->data[i] != pattern(key, i))
            return false;
    return true;
}

/* The charge of an object as put() makes it for key with a body of len:
 * measured on the empty store. */
static uint64_t charge_of(const char *key, size_t len)
{
    uint64_t before = stats().bytes;
    struct cache_obj *o = put(key, len);
    assert_non_null(o);
    uint64_t ch = stats().bytes - before;
    cache_obj_unref(o);
    assert_int_equal(cache_purge_key(C, key, strlen(key)), 1);
    return ch;
}

/* ---------------------------------------------------------------- insert, lookup */

static void insert_lookup(void **state)
{
    (void)state;
    struct cache_stats s0 = stats();
    const char *head = "ETag: W/\"e1\"\r\nLast-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\nX: y\r\n";
    struct cache_obj *o = put_spec(&(struct spec){ .key = "http://a.example/x?q=1", .body = 100,
                                                    .status = 203, .head = head });
    assert_non_null(o);
    struct cache_obj *l = get("http://a.example/x?q=1");
    assert_ptr_equal(l, o);
    struct cache_obj_view v;
    cache_obj_view(l, &v);
    assert_int_equal(v.status, 203);
    assert_int_equal(v.t.stored, 1000);
    assert_int_equal(v.t.lifetime, 60);
    assert_false(v.bumped);
    assert_true(body_is(l, "http://a.example/x?q=1", 100));
    assert_non_null(v.etag);
    assert_int_equal(v.etag_len, 6);
    assert_memory_equal(v.etag, "W/\"e1\"", 6);
    assert_non_null(v.last_modified);
    assert_int_equal(v.last_modified_len, 29);
    assert_int_equal(cache_http_date(v.last_modified, v.last_modified_len), 784111777);
    assert_int_equal(v.head_len, strlen(head));     /* a copy, not NUL-terminated */
    assert_memory_equal(v.head, head, v.head_len);
    assert_ptr_not_equal(v.head, head);
    cache_obj_unref(l);
    cache_obj_unref(o);
    /* other keys: nothing, including a prefix, an extension, another case */
    assert_false(has("http://a.example/x?q="));
    assert_false(has("http://a.example/x?q=12"));
    assert_false(has("http://a.example/X?q=1"));
    assert_false(has("https://a.example/x?q=1"));
    /* the same hash with another key is not a hit */
    const char *k = "http://a.example/x?q=1";
    assert_null(cache_lookup(C, cache_hash(k, strlen(k)), "http://a.example/y?q=1", strlen(k),
                             req_get, NULL));
    /* no ETag or Last-Modified in the head: none in the view */
    o = put_spec(&(struct spec){ .key = "http://a.example/bare", .head = "X: y\r\n" });
    cache_obj_view(o, &v);
    assert_null(v.etag);
    assert_null(v.last_modified);
    assert_int_equal(v.body->len, 0);
    cache_obj_unref(o);
    /* no body at all (a 204, a HEAD's answer) */
    struct cache_obj_new nb = { .key = "http://a.example/nobody", .key_len = 22,
                                .hash = cache_hash("http://a.example/nobody", 22), .head = "X: 1\r\n",
                                .head_len = 6, .status = 204, .ns = -1 };
    o = cache_insert(C, &nb);
    assert_non_null(o);
    cache_obj_view(o, &v);
    assert_null(v.body);
    assert_int_equal(v.status, 204);
    cache_obj_unref(o);
    struct cache_stats s1 = stats();
    assert_int_equal(s1.entries, 3);
    assert_int_equal(s1.inserts - s0.inserts, 3);
    assert_int_equal(s1.evictions, s0.evictions);
}

static void many_keys(void **state)
{
    (void)state;
    /* enough keys to grow every shard's table several times */
    budget(64u << 20, 1000);
    char k[64];
    for (int i = 0; i < 20000; i++) {
        snprintf(k, sizeof k, "http://h/%d", i);
        put_unref(k, 0);
    }
    assert_int_equal(stats().entries, 20000);
    for (int i = 0; i < 20000; i += 7) {
        snprintf(k, sizeof k, "http://h/%d", i);
        struct cache_obj *o = get(k);
        assert_non_null(o);
        assert_true(body_is(o, k, 0));
        cache_obj_unref(o);
    }
    assert_false(has("http://h/20000"));
}

/* ---------------------------------------------------------------- Vary */

static void vary_values(void **state)
{
    (void)state;
    char out[64];
    struct req r = { { "Accept-Encoding", "X-Lang" }, { "gzip, br", "fr" } };
    const char *names = "accept-encoding\nx-lang\n";
    assert_int_equal(cache_vary_values(names, strlen(names), req_get, &r, out, sizeof out), 12);
    assert_memory_equal(out, "gzip, br\nfr\n", 12);
    /* a missing field is \x01, so that "absent" and "empty" differ */
    struct req r2 = { { "x-lang", NULL }, { "", NULL } };
    assert_int_equal(cache_vary_values(names, strlen(names), req_get, &r2, out, sizeof out), 3);
    assert_memory_equal(out, "\x01\n\n", 3);
    /* no names: no values (the stage passes NULL when the response has no Vary) */
    assert_int_equal(cache_vary_values("", 0, req_get, &r, out, sizeof out), 0);
    assert_int_equal(cache_vary_values(NULL, 0, req_get, &r, out, sizeof out), 0);
    assert_int_equal(cache_vary_values(NULL, 0, req_get, &r, NULL, 0), 0);
    /* exactly the capacity fits, one byte less does not */
    assert_int_equal(cache_vary_values(names, strlen(names), req_get, &r, out, 12), 12);
    assert_int_equal(cache_vary_values(names, strlen(names), req_get, &r, out, 11), SIZE_MAX);
    assert_int_equal(cache_vary_values(names, strlen(names), req_get, &r, out, 0), SIZE_MAX);
    /* a last name without its newline is not read */
    assert_int_equal(cache_vary_values("accept-encoding\nx-lang", 22, req_get, &r, out, sizeof out),
                     9);
}

static void vary_variants(void **state)
{
    (void)state;
    const char *k = "http://v.example/page";
    const char *n = "accept-encoding\n";
    struct cache_obj *gz = put_spec(&(struct spec){ .key = k, .vnames = n, .vary = "gzip\n",
                                                     .body = 10, .status = 200 });
    struct cache_obj *br = put_spec(&(struct spec){ .key = k, .vnames = n, .vary = "br\n",
                                                     .body = 20, .status = 201 });
    struct cache_obj *none = put_spec(&(struct spec){ .key = k, .vnames = n, .vary = "\x01\n",
                                                       .body = 30, .status = 202 });
    assert_non_null(gz);
    assert_non_null(br);
    assert_non_null(none);
    assert_int_equal(stats().entries, 3);
    struct req rgz = { { "Accept-Encoding" }, { "gzip" } }, rbr = { { "accept-encoding" }, { "br" } },
               rzs = { { "accept-encoding" }, { "zstd" } }, rempty = { { "accept-encoding" }, { "" } };
    struct cache_obj *o = get_req(k, &rgz);
    assert_ptr_equal(o, gz);
    cache_obj_unref(o);
    o = get_req(k, &rbr);
    assert_ptr_equal(o, br);
    cache_obj_unref(o);
    o = get_req(k, NULL);
    assert_ptr_equal(o, none);
    cache_obj_unref(o);
    assert_null(get_req(k, &rzs));
    assert_null(get_req(k, &rempty));           /* empty is not absent */
    /* the same variant again replaces it; the others stay */
    struct cache_obj *gz2 = put_spec(&(struct spec){ .key = k, .vnames = n, .vary = "gzip\n",
                                                      .body = 40, .status = 203 });
    assert_non_null(gz2);
    assert_int_equal(stats().entries, 3);
    o = get_req(k, &rgz);
    assert_ptr_equal(o, gz2);
    assert_true(body_is(o, k, 40));
    cache_obj_unref(o);
    /* the replaced one is still whole for whoever holds it */
    assert_true(body_is(gz, k, 10));
    struct cache_obj_view v;
    cache_obj_view(gz, &v);
    assert_int_equal(v.status, 200);
    /* what a stored object says of its variant */
    const char *vy, *vn, *tg;
    size_t vyl, vnl, tgl;
    int ns;
    cache_obj_vary(br, &vy, &vyl, &vn, &vnl, &tg, &tgl, &ns);
    assert_int_equal(vyl, 3);
    assert_memory_equal(vy, "br\n", 3);
    assert_int_equal(vnl, strlen(n));
    assert_memory_equal(vn, n, vnl);
    assert_int_equal(tgl, 0);
    assert_int_equal(ns, -1);
    cache_obj_unref(gz);
    cache_obj_unref(gz2);
    cache_obj_unref(br);
    cache_obj_unref(none);
    /* other Vary names under the same key are other variants; the newest
     * matching one wins (a response without Vary matches every request) */
    struct cache_obj *plain = put_spec(&(struct spec){ .key = k, .body = 50, .status = 204 });
    assert_int_equal(stats().entries, 4);
    o = get_req(k, &rbr);
    assert_ptr_equal(o, plain);
    cache_obj_unref(o);
    cache_obj_unref(plain);
    /* every variant goes with a purge of the key */
    assert_int_equal(cache_purge_key(C, k, strlen(k)), 4);
    assert_null(get_req(k, &rgz));
    assert_int_equal(stats().entries, 0);
}

static void replace_same_key(void **state)
{
    (void)state;
    const char *k = "http://r.example/a";
    struct cache_obj *a = put(k, 100);
    uint64_t bytes1 = stats().bytes;
    struct cache_obj *b = put(k, 100);
    assert_ptr_not_equal(a, b);
    assert_int_equal(stats().entries, 1);
    assert_int_equal(stats().bytes, bytes1);       /* the old one's bytes are given back */
    struct cache_obj *o = get(k);
    assert_ptr_equal(o, b);
    cache_obj_unref(o);
    assert_true(body_is(a, k, 100));
    cache_obj_unref(a);
    cache_obj_unref(b);
    /* a bigger replacement: bytes grow by the difference only */
    put_unref(k, 1100);
    assert_int_equal(stats().bytes, bytes1 + 1000);
    assert_int_equal(stats().entries, 1);
}

/* ---------------------------------------------------------------- the budget */

static void budget_never_exceeded(void **state)
{
    (void)state;
    const uint64_t mem = 256 * 1024;
    budget(mem, 1000);
    struct cache_stats s0 = stats();
    char k[64];
    uint64_t max_bytes = 0;
    /* four times the budget, in objects of varied sizes */
    for (int i = 0; i < 4000; i++) {
        snprintf(k, sizeof k, "http://b/%d", i);
        struct cache_obj *o = put(k, (size_t)(i * 37) % 1000);
        assert_non_null(o);
        cache_obj_unref(o);
        struct cache_stats s = stats();
        if (s.bytes > mem)
            fail_msg("after %d inserts: %llu bytes over a budget of %llu", i + 1,
                     (unsigned long long)s.bytes, (unsigned long long)mem);
        if (s.bytes > max_bytes)
            max_bytes = s.bytes;
    }
    struct cache_stats s1 = stats();
    assert_int_equal(s1.inserts - s0.inserts, 4000);
    assert_true(s1.evictions > s0.evictions);
    /* every insert stayed or was evicted, none lost from the count */
    assert_int_equal(s1.inserts - s0.inserts, s1.entries + (s1.evictions - s0.evictions));
    assert_true(max_bytes > mem - 2048);    /* it fills up to the budget */
    /* what is counted is what is there */
    uint64_t found = 0;
    for (int i = 0; i < 4000; i++) {
        snprintf(k, sizeof k, "http://b/%d", i);
        found += has(k);
    }
    assert_int_equal(found, s1.entries);
}

static void budget_exact_fit(void **state)
{
    (void)state;
    /* objects of one size: a budget of exactly k of them holds k, and the
     * next insert evicts exactly one */
    uint64_t ch = charge_of("http://f/000", 500);
    const uint64_t k = 40;
    budget(ch * k, 1000);
    struct cache_stats s0 = stats();
    char key[64];
    for (uint64_t i = 0; i < k; i++) {
        snprintf(key, sizeof key, "http://f/%03u", (unsigned)i);
        put_unref(key, 500);
    }
    struct cache_stats s1 = stats();
    assert_int_equal(s1.bytes, ch * k);
    assert_int_equal(s1.entries, k);
    assert_int_equal(s1.evictions, s0.evictions);
    put_unref("http://f/999", 500);
    struct cache_stats s2 = stats();
    assert_int_equal(s2.bytes, ch * k);
    assert_int_equal(s2.entries, k);
    assert_int_equal(s2.evictions - s1.evictions, 1);
}

static void budget_half(void **state)
{
    (void)state;
    /* the largest object is half the budget (max_object, at most a quarter,
     * plus its head and metadata): at it, stored; one byte over, refused (and
     * nothing evicted to make room for it) */
    const uint64_t mem = 64 * 1024;
    budget(mem, 1000);
    uint64_t fixed = charge_of("http://q/big", 0);
    size_t max_body = (size_t)(mem / 2 - fixed);
    assert_int_equal(charge_of("http://q/big", max_body), mem / 2);
    put_unref("http://q/small", 10);
    struct cache_stats s0 = stats();
    assert_null(put("http://q/big", max_body + 1));
    struct cache_stats s1 = stats();
    assert_int_equal(s1.entries, s0.entries);
    assert_int_equal(s1.bytes, s0.bytes);
    assert_int_equal(s1.evictions, s0.evictions);
    assert_int_equal(s1.inserts, s0.inserts);
    assert_true(has("http://q/small"));
    assert_false(has("http://q/big"));
    struct cache_obj *o = put("http://q/big", max_body);
    assert_non_null(o);
    assert_true(body_is(o, "http://q/big", max_body));
    cache_obj_unref(o);
    /* a refused replacement leaves the stored one in place */
    assert_null(put("http://q/big", max_body + 1));
    o = get("http://q/big");
    assert_non_null(o);
    assert_true(body_is(o, "http://q/big", max_body));
    cache_obj_unref(o);
    /* two objects at the maximum fill the budget exactly */
    purge_all();
    put_unref("http://q/bg1", max_body);        /* keys of the same length */
    put_unref("http://q/bg2", max_body);
    assert_int_equal(stats().bytes, mem);
    assert_int_equal(stats().entries, 2);
}

static void budget_shrinks(void **state)
{
    (void)state;
    /* a reload with a smaller budget: the next insert evicts down to it,
     * from other shards than its own if it must */
    char k[64];
    for (int i = 0; i < 500; i++) {
        snprintf(k, sizeof k, "http://s/%d", i);
        put_unref(k, 1000);
    }
    assert_int_equal(stats().entries, 500);
    budget(64 * 1024, 1000);
    put_unref("http://s/new", 1000);
    assert_true(stats().bytes <= 64 * 1024);
    assert_true(has("http://s/new"));
    /* down to a budget smaller than what one shard holds */
    budget(4 * 1024, 1000);
    put_unref("http://s/new2", 500);
    assert_true(stats().bytes <= 4 * 1024);
    assert_true(has("http://s/new2"));
}

/* S3-FIFO: an object read since it came survives a scan of objects read
 * once (plain LRU would evict it), and one that comes back soon after its
 * eviction (its hash in the ghost) goes straight to the main queue. */
static void eviction_scan_resistance(void **state)
{
    (void)state;
    uint64_t ch = charge_of("http://e/hot", 200);
    budget(ch * 200, 1000);
    struct cache_obj *hot = put("http://e/hot", 200);
    cache_obj_touch(hot);
    cache_obj_unref(hot);
    char k[64];
    for (int i = 0; i < 20000; i++) {
        snprintf(k, sizeof k, "http://e/cold/%d", i);
        put_unref(k, 200);
        if (i == 10000)
            assert_true(has("http://e/hot"));
    }
    assert_true(has("http://e/hot"));
    assert_false(has("http://e/cold/0"));
    /* the ghost: one evicted unread and inserted again soon goes to main,
     * and a scan does not evict it; one never seen before does go */
    purge_all();
    put_unref("http://e/ghosted", 200);
    int n = 0;
    for (; has("http://e/ghosted"); n++) {
        snprintf(k, sizeof k, "http://e/scan1/%d", n);
        put_unref(k, 200);
    }
    assert_true(n < 2000);
    put_unref("http://e/ghosted", 200);
    put_unref("http://e/fresh", 200);
    for (int i = 0; i < 2000; i++) {
        snprintf(k, sizeof k, "http://e/scan2/%d", i);
        put_unref(k, 200);
    }
    assert_true(has("http://e/ghosted"));
    assert_false(has("http://e/fresh"));
    /* ... but the ghost is as big as main (90% of a shard's share, in
     * bytes), not every eviction the table can hold: one evicted long ago
     * (here 10,000 evictions, 50 shares' worth) is a stranger again */
    purge_all();
    put_unref("http://e/old", 200);
    for (int i = 0; i < 10000; i++) {
        snprintf(k, sizeof k, "http://e/scan3/%d", i);
        put_unref(k, 200);
    }
    assert_false(has("http://e/old"));
    put_unref("http://e/old", 200);
    for (int i = 0; i < 2000; i++) {
        snprintf(k, sizeof k, "http://e/scan4/%d", i);
        put_unref(k, 200);
    }
    assert_false(has("http://e/old"));
}

/* Objects of different sizes: every shard keeps about its share of the
 * budget. Evicting only from the inserting shard let them drift apart (an
 * eviction frees whole objects, often more than needed, and the slack went
 * to whichever shard inserted next): after 60,000 inserts of 256 B to 64 KiB
 * some shards held a tenth of their share and others several times it. */
static void fill_and_check_balance(void)
{
    enum { N = 60000 };
    uint64_t fixed = charge_of("http://w/0000000", 0);
    const uint64_t mem = 4u << 20;
    budget(mem, 1000);
    static uint32_t size[N];
    uint64_t x = 0x9e3779b97f4a7c15ull;
    char k[64];
    for (int i = 0; i < N; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        size[i] = (uint32_t)(256u << (x % 9)) - (uint32_t)(x >> 40) % 256;   /* 1 B .. 64 KiB */
        snprintf(k, sizeof k, "http://w/%07d", i);
        put_unref(k, size[i]);
    }
    uint64_t sh[16] = { 0 };
    for (int i = 0; i < N; i++) {
        snprintf(k, sizeof k, "http://w/%07d", i);
        uint64_t h = cache_hash(k, strlen(k));
        if (has(k))
            sh[h & 15] += fixed + size[i];
    }
    uint64_t total = 0;
    if (getenv("DEBUG_SHARDS"))        /* DEBUG_SHARDS=1: each shard's share, always */
        for (int i = 0; i < 16; i++)
            fprintf(stderr, "shard %d: %.2f\n", i, (double)sh[i] * 16 / (double)mem);
    for (int i = 0; i < 16; i++) {
        total += sh[i];
        if (sh[i] < mem / 16 / 2 || sh[i] > mem / 16 * 3 / 2)
            fail_msg("shard %d holds %.2f of its share", i, (double)sh[i] * 16 / (double)mem);
    }
    assert_int_equal(total, stats().bytes);
}

static void eviction_shards_balanced(void **state)
{
    (void)state;
    fill_and_check_balance();
}

/* A compressed variant added to a stored object is counted in the budget
 * (globally and in its shard's share) and given back with the object. */
static void variants_counted(void **state)
{
    (void)state;
    struct cache_obj *o = put("http://var/1", 1000);
    uint64_t b0 = stats().bytes;
    struct cache_variant *v = malloc(sizeof *v + 8);
    assert_non_null(v);
    v->body = stage_body_copy("zzzzzzzzzz", 10);
    v->head_len = 8;
    memcpy(v->head, "X: gz\r\n", 8);
    assert_ptr_equal(cache_obj_add_variant(C, o, 0, v), v);
    assert_ptr_equal(cache_obj_variant(o, 0), v);
    assert_null(cache_obj_variant(o, 1));
    assert_null(cache_obj_variant(o, CACHE_VARIANTS));
    uint64_t b1 = stats().bytes;
    assert_true(b1 > b0 + 10 + 8);
    /* a second one for the same encoding: the first stays, the second is freed */
    struct cache_variant *v2 = malloc(sizeof *v2);
    assert_non_null(v2);
    v2->body = stage_body_copy("y", 1);
    v2->head_len = 0;
    assert_ptr_equal(cache_obj_add_variant(C, o, 0, v2), v);
    assert_int_equal(stats().bytes, b1);
    /* given back whole with the object; readable while referenced */
    assert_int_equal(cache_purge_key(C, "http://var/1", 12), 1);
    assert_int_equal(stats().bytes, 0);
    assert_memory_equal(cache_obj_variant(o, 0)->body->data, "zzzzzzzzzz", 10);
    cache_obj_unref(o);
    /* and the shard's own count went back with it: the shards still share
     * the budget evenly (a shard count left wrong by the variant would make
     * its shard the fullest forever, and every other insert evict from it) */
    static char big[40000];
    for (int i = 0; i < 256; i++) {
        char k[64];
        snprintf(k, sizeof k, "http://var/%d", i);
        struct cache_obj *p = put(k, 100);
        struct cache_variant *pv = malloc(sizeof *pv);
        assert_non_null(pv);
        pv->body = stage_body_copy(big, sizeof big);
        pv->head_len = 0;
        cache_obj_add_variant(C, p, i % CACHE_VARIANTS, pv);
        cache_obj_unref(p);
    }
    purge_all();
    fill_and_check_balance();
}

/* ---------------------------------------------------------------- purge */

static void purge_forms(void **state)
{
    (void)state;
    struct cache_stats s0 = stats();
    put_unref("http://a.example/rest/1", 10);
    put_unref("http://a.example/rest/2?x=1", 10);
    put_unref("http://a.example/restless", 10);
    put_unref("http://a.example/other", 10);
    put_unref("http://b.example/rest/1", 10);
    put_unref("https://b.example/rest/3", 10);
    cache_obj_unref(put_spec(&(struct spec){ .key = "http://a.example/p/1",
                                             .tags = "product-42\nlist\n" }));
    cache_obj_unref(put_spec(&(struct spec){ .key = "http://a.example/p/2", .tags = "product-4\n" }));
    cache_obj_unref(put_spec(&(struct spec){ .key = "http://a.example/p/3",
                                             .tags = "list\nproduct-42\n" }));
    cache_obj_unref(put_spec(&(struct spec){ .key = "http://a.example/p/4",
                                             .tags = "product-421\n" }));
    assert_int_equal(stats().entries, 10);
    /* by key: that key only, exact */
    assert_int_equal(cache_purge_key(C, "http://a.example/rest", 21), 0);
    assert_int_equal(cache_purge_key(C, "http://a.example/rest/1", 23), 1);
    assert_int_equal(cache_purge_key(C, "http://a.example/rest/1", 23), 0);
    assert_true(has("http://b.example/rest/1"));
    /* by tag: whole tags only */
    assert_int_equal(cache_purge_tag(C, "product-42", 10), 2);
    assert_false(has("http://a.example/p/1"));
    assert_false(has("http://a.example/p/3"));
    assert_true(has("http://a.example/p/2"));
    assert_true(has("http://a.example/p/4"));
    assert_int_equal(cache_purge_tag(C, "product-42", 10), 0);
    assert_int_equal(cache_purge_tag(C, "", 0), 0);
    assert_int_equal(cache_purge_tag(C, "list\n", 5), 0);
    /* by path on one host (the host compared without case) */
    assert_int_equal(cache_purge_path(C, "B.EXAMPLE", 9, "/rest/1", 7, false), 1);
    assert_true(has("http://a.example/restless"));
    /* the path with its query is the key's path: an exact path purge does
     * not take a URL with a query */
    assert_int_equal(cache_purge_path(C, "a.example", 9, "/rest/2", 7, false), 0);
    assert_int_equal(cache_purge_path(C, "a.example", 9, "/rest/2?x=1", 11, false), 1);
    /* by prefix on any host: the string prefix of the path */
    put_unref("http://a.example/rest/5", 10);
    assert_int_equal(cache_purge_path(C, NULL, 0, "/rest/", 6, true), 2);  /* a/rest/5, b/rest/3 */
    assert_true(has("http://a.example/restless"));
    assert_int_equal(cache_purge_path(C, NULL, 0, "/rest", 5, true), 1);
    assert_false(has("http://a.example/restless"));
    /* by prefix on one host */
    put_unref("http://c.example/x/1", 10);
    put_unref("http://d.example/x/1", 10);
    assert_int_equal(cache_purge_path(C, "c.example", 9, "/x/", 3, true), 1);
    assert_true(has("http://d.example/x/1"));
    assert_int_equal(cache_purge_path(C, "nowhere", 7, "/", 1, true), 0);
    struct cache_stats s1 = stats();
    assert_int_equal(s1.purges - s0.purges, 9);
    /* what remains: a/other, a/p/2, a/p/4, d/x/1 */
    assert_int_equal(s1.entries, 4);
    assert_int_equal(cache_purge_path(C, NULL, 0, "/", 1, true), 4);
    assert_int_equal(stats().entries, 0);
    assert_int_equal(stats().bytes, 0);
}

/* ---------------------------------------------------------------- namespaces */

static void namespaces_bump(void **state)
{
    (void)state;
    int feed = cache_ns_id(C, "feed"), prof = cache_ns_id(C, "profiles");
    assert_true(feed >= 0);
    assert_true(prof >= 0);
    assert_int_not_equal(feed, prof);
    assert_int_equal(cache_ns_id(C, "feed"), feed);
    struct cache_obj *f1 = put_spec(&(struct spec){ .key = "http://n/feed/1", .ns = feed + 1 });
    struct cache_obj *p1 = put_spec(&(struct spec){ .key = "http://n/prof/1", .ns = prof + 1 });
    struct cache_obj *x1 = put_spec(&(struct spec){ .key = "http://n/none/1" });
    struct cache_obj_view v;
    cache_obj_view(f1, &v);
    assert_false(v.bumped);
    const char *vy, *vn, *tg;
    size_t vyl, vnl, tgl;
    int ns;
    cache_obj_vary(f1, &vy, &vyl, &vn, &vnl, &tg, &tgl, &ns);
    assert_int_equal(ns, feed);
    uint64_t ver = cache_ns_bump(C, "feed");
    assert_true(ver > 0);
    assert_int_equal(cache_ns_bump(C, "feed"), ver + 1);
    cache_obj_view(f1, &v);
    assert_true(v.bumped);
    cache_obj_view(p1, &v);
    assert_false(v.bumped);
    cache_obj_view(x1, &v);
    assert_false(v.bumped);
    /* still stored and found: the stage decides what a bumped entry is worth */
    struct cache_obj *o = get("http://n/feed/1");
    assert_ptr_equal(o, f1);
    cache_obj_unref(o);
    /* stored after the bump: current */
    struct cache_obj *f2 = put_spec(&(struct spec){ .key = "http://n/feed/2", .ns = feed + 1 });
    cache_obj_view(f2, &v);
    assert_false(v.bumped);
    cache_obj_unref(f1);
    cache_obj_unref(f2);
    cache_obj_unref(p1);
    cache_obj_unref(x1);
    /* bumping a name no route registered does nothing and makes nothing
     * (the purge API cannot fill the table routes need) */
    assert_int_equal(cache_ns_bump(C, "brand-new"), 0);
    assert_int_equal(cache_ns_bump(C, "brand-new"), 0);
    assert_int_equal(cache_ns_id(C, "brand-new"), prof + 1);     /* made only now */
    assert_true(cache_ns_bump(C, "brand-new") > 0);
}

static void namespaces_bump_is_o1(void **state)
{
    (void)state;
    /* a bump touches no object: with 50,000 entries in the namespace, it
     * removes, evicts and walks nothing, and 10,000 bumps take little time */
    budget(256u << 20, 1000);
    int big = cache_ns_id(C, "big");
    char k[64];
    for (int i = 0; i < 50000; i++) {
        snprintf(k, sizeof k, "http://o/%d", i);
        struct cache_obj *o = put_spec(&(struct spec){ .key = k, .ns = big + 1 });
        cache_obj_unref(o);
    }
    struct cache_stats s0 = stats();
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < 10000; i++)
        cache_ns_bump(C, "big");
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    struct cache_stats s1 = stats();
    assert_int_equal(s1.entries, s0.entries);
    assert_int_equal(s1.bytes, s0.bytes);
    assert_int_equal(s1.purges, s0.purges);
    assert_int_equal(s1.evictions, s0.evictions);
    /* a walk of 50,000 objects per bump would be 500 million visits */
    if (ms > 500)
        fail_msg("10,000 bumps took %.0f ms", ms);
    struct cache_obj *o = get("http://o/49999");
    struct cache_obj_view v;
    cache_obj_view(o, &v);
    assert_true(v.bumped);
    cache_obj_unref(o);
}

/* Runs last among the namespace tests: fills the table. */
static void namespaces_table_full(void **state)
{
    (void)state;
    char name[80];
    memset(name, 'n', sizeof name);
    name[CONF_CACHE_NAME] = '\0';               /* one too long */
    assert_int_equal(cache_ns_id(C, name), -1);
    assert_int_equal(cache_ns_bump(C, name), 0);
    name[CONF_CACHE_NAME - 1] = '\0';           /* the longest */
    assert_true(cache_ns_id(C, name) >= 0);
    int last = -1, n = 0;
    for (int i = 0; i < 1000; i++) {
        snprintf(name, sizeof name, "ns-%d", i);
        int id = cache_ns_id(C, name);
        if (id < 0)
            break;
        assert_true(id > last);
        last = id;
        n++;
    }
    assert_true(n < 1000);
    assert_int_equal(last, 255);                /* NS_MAX: ids 0..255 */
    assert_int_equal(cache_ns_id(C, "another"), -1);
    assert_int_equal(cache_ns_bump(C, "another"), 0);
    /* the existing ones still work */
    assert_true(cache_ns_id(C, "feed") >= 0);
    assert_true(cache_ns_bump(C, "feed") > 0);
}

/* ---------------------------------------------------------------- references */

static void reference_outlives_eviction(void **state)
{
    (void)state;
    uint64_t ch = charge_of("http://ref/held", 3000);
    budget(ch * 8, 1000);
    struct cache_obj *held = put("http://ref/held", 3000);
    assert_non_null(held);
    /* a reader's own reference, as the stage takes one per hit */
    struct cache_obj *reader = get("http://ref/held");
    assert_ptr_equal(reader, held);
    cache_obj_unref(held);
    char k[64];
    for (int i = 0; i < 100; i++) {
        snprintf(k, sizeof k, "http://ref/%d", i);
        put_unref(k, 3000);
    }
    assert_false(has("http://ref/held"));
    assert_true(stats().bytes <= ch * 8);
    /* evicted, not counted, and still whole for its reader (ASan: no
     * use after free) */
    assert_true(body_is(reader, "http://ref/held", 3000));
    struct cache_obj_view v;
    cache_obj_view(reader, &v);
    assert_int_equal(v.head_len, strlen("Content-Type: text/plain\r\nETag: \"v1\"\r\n"));
    assert_memory_equal(v.head, "Content-Type: text/plain\r\nETag: \"v1\"\r\n", v.head_len);
    assert_memory_equal(v.etag, "\"v1\"", 4);
    /* a touch or a refresh claim on an evicted object is harmless */
    cache_obj_touch(reader);
    assert_true(cache_obj_claim_refresh(reader));
    cache_obj_release_refresh(reader);
    /* the body outlives the object too, for a writev in flight */
    struct stage_body *b = stage_body_ref(v.body);
    cache_obj_unref(reader);
    assert_int_equal(b->len, 3000);
    assert_int_equal(b->data[2999], pattern("http://ref/held", 2999));
    stage_body_unref(b);
    /* purged while referenced: the same */
    struct cache_obj *p = put("http://ref/purged", 100);
    assert_int_equal(cache_purge_key(C, "http://ref/purged", 17), 1);
    assert_true(body_is(p, "http://ref/purged", 100));
    cache_obj_unref(p);
    /* cache_obj_ref and unref of NULL are no-ops */
    assert_null(cache_obj_ref(NULL));
    cache_obj_unref(NULL);
}

static void refresh_claim(void **state)
{
    (void)state;
    struct cache_obj *o = put("http://rf/1", 1);
    assert_true(cache_obj_claim_refresh(o));
    assert_false(cache_obj_claim_refresh(o));
    assert_false(cache_obj_claim_refresh(o));
    cache_obj_release_refresh(o);
    assert_true(cache_obj_claim_refresh(o));
    cache_obj_release_refresh(o);
    cache_obj_unref(o);
}

/* ---------------------------------------------------------------- hit-for-miss */

static void pass_marks(void **state)
{
    (void)state;
    const uint64_t h = cache_hash("http://p/1", 10), other = cache_hash("http://p/2", 10);
    /* same shard (low 4 bits) and same slot ((h >> 4) % 1024): a collision */
    const uint64_t twin = h + (1024u << 4);
    assert_false(cache_pass_check(C, h, 0));
    cache_pass_mark(C, h, 5000);
    assert_true(cache_pass_check(C, h, 4999));
    assert_false(cache_pass_check(C, h, 5000));         /* until is exclusive */
    assert_false(cache_pass_check(C, other, 10));
    assert_false(cache_pass_check(C, twin, 10));
    /* clearing another key, even in the same slot, leaves the mark */
    cache_pass_mark(C, other, 0);
    cache_pass_mark(C, twin, 0);
    assert_true(cache_pass_check(C, h, 10));
    /* until 0 clears its own */
    cache_pass_mark(C, h, 0);
    assert_false(cache_pass_check(C, h, 10));
    /* lossy: a colliding key's mark replaces it */
    cache_pass_mark(C, h, 5000);
    cache_pass_mark(C, twin, 6000);
    assert_false(cache_pass_check(C, h, 10));
    assert_true(cache_pass_check(C, twin, 10));
    cache_pass_mark(C, twin, 0);
    assert_false(cache_pass_check(C, twin, 10));
    /* marks are not objects: nothing stored, counted or purged */
    assert_int_equal(stats().entries, 0);
    assert_int_equal(stats().bytes, 0);
}

/* ---------------------------------------------------------------- threads */

struct hammer {
    int id;
    uint64_t hits;
    int bad;                    /* cmocka's checks belong to the main thread */
};

static void *hammer_run(void *arg)
{
    struct hammer *h = arg;
    char k[64];
    uint64_t x = 88172645463325252ull + (uint64_t)h->id;
    for (int i = 0; i < 30000; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        snprintf(k, sizeof k, "http://t/%u", (unsigned)(x % 3000));
        struct cache_obj *o = get(k);
        if (o) {
            h->hits++;
            cache_obj_touch(o);
            if (!body_is(o, k, (size_t)(x % 3000) % 700))
                h->bad++;
            cache_obj_unref(o);
        } else {
            struct cache_obj *n = put(k, (size_t)(x % 3000) % 700);
            cache_obj_unref(n);
        }
        if (i % 5000 == 4999)
            cache_purge_tag(C, "none", 4);
    }
    return NULL;
}

static void threads(void **state)
{
    (void)state;
    /* four threads reading, inserting and evicting on a small budget: the
     * counts stay consistent (ASan/UBSan: no races on freed objects) */
    const uint64_t mem = 512 * 1024;
    budget(mem, 1000);
    struct cache_stats s0 = stats();
    pthread_t t[4];
    struct hammer h[4];
    for (int i = 0; i < 4; i++) {
        h[i] = (struct hammer){ .id = i };
        assert_int_equal(pthread_create(&t[i], NULL, hammer_run, &h[i]), 0);
    }
    uint64_t hits = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        hits += h[i].hits;
        assert_int_equal(h[i].bad, 0);
    }
    struct cache_stats s1 = stats();
    assert_true(hits > 0);
    assert_true(s1.evictions > s0.evictions);
    /* two threads missing on one key both insert it, and the second replaces
     * the first (counted as neither an eviction nor a purge) */
    assert_true(s1.entries + (s1.evictions - s0.evictions) <= s1.inserts - s0.inserts);
    /* an insert's room and its link are not one step: concurrent inserts may
     * overshoot by what the others were inserting, never more */
    assert_true(s1.bytes <= mem + 3 * 2048);
    uint64_t found = 0;
    char k[64];
    for (int i = 0; i < 3000; i++) {
        snprintf(k, sizeof k, "http://t/%d", i);
        found += has(k);
    }
    assert_int_equal(found, s1.entries);
}

/* ---------------------------------------------------------------- coalescing */

/* The parts of a worker and its exchanges that wakers use. */
struct fake_x {
    struct client c;
    struct exchange x;
    struct stage_state st;
    struct stage_x sx[1];
    int woken;
};

static struct worker *W;
static struct fake_x FX[8];

static void woken_cb(struct stage_x *sx)
{
    for (int i = 0; i < 8; i++)
        if (sx == &FX[i].sx[0])
            FX[i].woken++;
}

static void fakes_init(void)
{
    if (!W) {
        W = calloc(1, sizeof *W);
        assert_non_null(W);
        W->loop = loop_new();
        assert_non_null(W->loop);
        pthread_mutex_init(&W->mbox_mu, NULL);
    }
    for (int i = 0; i < 8; i++) {
        struct fake_x *f = &FX[i];
        memset(f, 0, sizeof *f);
        f->c.w = W;
        f->x.c = &f->c;
        f->x.st = &f->st;
        f->st.x = &f->x;
        f->st.sx = f->sx;
        f->sx[0] = (struct stage_x){ &f->x, 0 };
        f->st.parked = true;
    }
}

/* What the stage does on a miss: a waker, then join; the waker is given
 * back when it is not kept. */
static bool join(int i, const char *key, uint64_t hash, struct cache_pending **lead)
{
    struct stage_waker *w = stage_waker(&FX[i].sx[0], woken_cb);
    assert_non_null(w);
    bool joined = cache_pending_join(C, hash, key, strlen(key), w, lead);
    if (!joined)
        stage_waker_put(w);
    return joined;
}

static void end_all(void)
{
    for (int i = 0; i < 8; i++)
        stage_waker_cancel(&FX[i].x);
}

static void coalesce_one_fetch(void **state)
{
    (void)state;
    fakes_init();
    const char *k = "http://c/feed";
    uint64_t h = cache_hash(k, strlen(k));
    struct cache_pending *lead = NULL, *l2 = NULL;
    /* the first miss leads; the next ones wait */
    assert_false(join(0, k, h, &lead));
    assert_non_null(lead);
    for (int i = 1; i < 4; i++) {
        assert_true(join(i, k, h, &l2));
        assert_null(l2);
    }
    /* another key, or another key with the same hash, leads its own */
    struct cache_pending *other = NULL, *same_hash = NULL;
    assert_false(join(4, "http://c/other", cache_hash("http://c/other", 14), &other));
    assert_non_null(other);
    assert_false(join(5, "http://c/feeD", h, &same_hash));
    assert_non_null(same_hash);
    assert_ptr_not_equal(same_hash, lead);
    /* nobody is woken before the fetch ends */
    stage_mbox_drain(W);
    for (int i = 0; i < 8; i++)
        assert_int_equal(FX[i].woken, 0);
    /* the fetch is over: every waiter is woken once, through its worker's
     * mailbox; the leader is not */
    cache_pending_done(C, lead);
    assert_non_null(W->mbox);
    stage_mbox_drain(W);
    assert_null(W->mbox);
    assert_int_equal(FX[0].woken, 0);
    for (int i = 1; i < 4; i++)
        assert_int_equal(FX[i].woken, 1);
    stage_mbox_drain(W);
    for (int i = 1; i < 4; i++)
        assert_int_equal(FX[i].woken, 1);
    /* the next miss on the key leads a new fetch */
    struct cache_pending *lead2 = NULL;
    assert_false(join(6, k, h, &lead2));
    assert_non_null(lead2);
    cache_pending_done(C, lead2);
    cache_pending_done(C, other);
    cache_pending_done(C, same_hash);
    stage_mbox_drain(W);
    assert_int_equal(FX[4].woken + FX[5].woken + FX[6].woken, 0);
    end_all();
}

static void coalesce_max_waiters(void **state)
{
    (void)state;
    fakes_init();
    budget(BUDGET, 3);
    const char *k = "http://c/max";
    uint64_t h = cache_hash(k, strlen(k));
    struct cache_pending *lead = NULL, *l = NULL;
    assert_false(join(0, k, h, &lead));
    assert_non_null(lead);
    for (int i = 1; i <= 3; i++)
        assert_true(join(i, k, h, &l));
    /* the fourth waiter is refused, and told not to lead: it goes upstream
     * uncoalesced */
    l = (struct cache_pending *)1;
    assert_false(join(4, k, h, &l));
    assert_null(l);
    cache_pending_done(C, lead);
    stage_mbox_drain(W);
    for (int i = 1; i <= 3; i++)
        assert_int_equal(FX[i].woken, 1);
    assert_int_equal(FX[4].woken, 0);
    end_all();
    /* max_waiters 0: no coalescing at all, the leader still registers */
    budget(BUDGET, 0);
    fakes_init();
    assert_false(join(0, k, h, &lead));
    assert_non_null(lead);
    assert_false(join(1, k, h, &l));
    assert_null(l);
    cache_pending_done(C, lead);
    stage_mbox_drain(W);
    assert_int_equal(FX[1].woken, 0);
    end_all();
    budget(BUDGET, 1000);
}

static void coalesce_waiter_gone(void **state)
{
    (void)state;
    fakes_init();
    const char *k = "http://c/gone";
    uint64_t h = cache_hash(k, strlen(k));
    struct cache_pending *lead = NULL, *l = NULL;
    assert_false(join(0, k, h, &lead));
    assert_true(join(1, k, h, &l));
    assert_true(join(2, k, h, &l));
    assert_true(join(3, k, h, &l));
    /* 1's exchange ended (its client left): the wake finds no one; 2 is no
     * longer parked (its lock_timeout resumed it): no callback either */
    stage_waker_cancel(&FX[1].x);
    FX[2].st.parked = false;
    cache_pending_done(C, lead);
    stage_mbox_drain(W);
    assert_int_equal(FX[1].woken, 0);
    assert_int_equal(FX[2].woken, 0);
    assert_int_equal(FX[3].woken, 1);
    end_all();
}

struct done_arg {
    struct cache_pending *p;
};

static void *done_thread(void *arg)
{
    cache_pending_done(C, ((struct done_arg *)arg)->p);
    return NULL;
}

static void coalesce_other_thread(void **state)
{
    (void)state;
    /* the leader may be on another worker: its wake crosses threads */
    fakes_init();
    const char *k = "http://c/thread";
    uint64_t h = cache_hash(k, strlen(k));
    struct done_arg a = { NULL };
    struct cache_pending *l = NULL;
    assert_false(join(0, k, h, &a.p));
    for (int i = 1; i < 8; i++)
        assert_true(join(i, k, h, &l));
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, done_thread, &a), 0);
    pthread_join(t, NULL);
    stage_mbox_drain(W);
    for (int i = 1; i < 8; i++)
        assert_int_equal(FX[i].woken, 1);
    end_all();
}

static void coalesce_many_waiters(void **state)
{
    (void)state;
    /* past the waiter array's growth steps (8, 16, 32...), each waiter on
     * its own exchange (one exchange has one waker at a time); they are no
     * longer parked when woken, so only the wake and its release run */
    fakes_init();
    enum { N = 300 };
    struct fake_x *fx = calloc(N, sizeof *fx);
    assert_non_null(fx);
    const char *k = "http://c/many";
    uint64_t h = cache_hash(k, strlen(k));
    struct cache_pending *lead = NULL, *l = NULL;
    assert_false(join(0, k, h, &lead));
    for (int i = 0; i < N; i++) {
        fx[i].c.w = W;
        fx[i].x.c = &fx[i].c;
        fx[i].x.st = &fx[i].st;
        fx[i].st.x = &fx[i].x;
        fx[i].st.sx = fx[i].sx;
        fx[i].sx[0] = (struct stage_x){ &fx[i].x, 0 };
        fx[i].st.parked = false;        /* woken but not called back */
        struct stage_waker *w = stage_waker(&fx[i].sx[0], woken_cb);
        assert_true(cache_pending_join(C, h, k, strlen(k), w, &l));
    }
    cache_pending_done(C, lead);
    stage_mbox_drain(W);
    for (int i = 0; i < N; i++)
        stage_waker_cancel(&fx[i].x);
    free(fx);
    end_all();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(insert_lookup, setup, teardown),
        cmocka_unit_test_setup_teardown(many_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(vary_values, setup, teardown),
        cmocka_unit_test_setup_teardown(vary_variants, setup, teardown),
        cmocka_unit_test_setup_teardown(replace_same_key, setup, teardown),
        cmocka_unit_test_setup_teardown(budget_never_exceeded, setup, teardown),
        cmocka_unit_test_setup_teardown(budget_exact_fit, setup, teardown),
        cmocka_unit_test_setup_teardown(budget_half, setup, teardown),
        cmocka_unit_test_setup_teardown(budget_shrinks, setup, teardown),
        cmocka_unit_test_setup_teardown(eviction_scan_resistance, setup, teardown),
        cmocka_unit_test_setup_teardown(eviction_shards_balanced, setup, teardown),
        cmocka_unit_test_setup_teardown(variants_counted, setup, teardown),
        cmocka_unit_test_setup_teardown(purge_forms, setup, teardown),
        cmocka_unit_test_setup_teardown(namespaces_bump, setup, teardown),
        cmocka_unit_test_setup_teardown(namespaces_bump_is_o1, setup, teardown),
        cmocka_unit_test_setup_teardown(namespaces_table_full, setup, teardown),
        cmocka_unit_test_setup_teardown(reference_outlives_eviction, setup, teardown),
        cmocka_unit_test_setup_teardown(refresh_claim, setup, teardown),
        cmocka_unit_test_setup_teardown(pass_marks, setup, teardown),
        cmocka_unit_test_setup_teardown(threads, setup, teardown),
        cmocka_unit_test_setup_teardown(coalesce_one_fetch, setup, teardown),
        cmocka_unit_test_setup_teardown(coalesce_max_waiters, setup, teardown),
        cmocka_unit_test_setup_teardown(coalesce_waiter_gone, setup, teardown),
        cmocka_unit_test_setup_teardown(coalesce_other_thread, setup, teardown),
        cmocka_unit_test_setup_teardown(coalesce_many_waiters, setup, teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    if (W) {
        loop_free(W->loop);
        pthread_mutex_destroy(&W->mbox_mu);
        free(W);
    }
    return rc;
}
