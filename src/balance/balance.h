/* balance/balance.h: upstream groups, balancing algorithms, passive and
 * active health checks.
 *
 * A `struct balance_group` is the run-time state of one configured upstream
 * (`struct conf_upstream`): which servers are up, their failure windows, how
 * many requests each has in flight, when each last recovered. One group is
 * shared by every worker thread; everything in it that changes is an atomic,
 * so picking a server never takes a lock. A worker also keeps a small private
 * `struct balance_worker` per group (the smooth-WRR current weights).
 *
 * Algorithms (conf `balance:`), one file each behind a table of callbacks:
 *   weighted    lb_wrr.c       smooth weighted round robin (nginx's): the
 *                              sequence is as even as possible at every
 *                              prefix; 5,1,1 gives a a b a c a a.
 *   ip_hash     lb_iphash.c    hash of the whole client address, weighted;
 *                              a client stays on its server while it is up and
 *                              only the clients of a server that goes down move.
 *   least_conn  lb_leastconn.c fewest requests in flight relative to weight,
 *                              counted across all workers.
 *   hash        lb_chash.c     consistent hashing (a ring with virtual nodes,
 *                              built once per group) on the request's
 *                              `hash_key`; removing one of N servers moves
 *                              about 1/N of the keys.
 * ip_hash and hash fall back to weighted round robin when the caller has no
 * key (empty address or key bytes).
 *
 * Availability. A server is available when the active checker has not marked
 * it down and it is not inside a passive "down" period. Primary servers are
 * chosen among available primaries; `backup: true` servers only when no
 * primary is available (or every available primary was already tried by this
 * request). `slow_start` ramps the weight of a server that has just come back
 * (from either kind of down) linearly from ~0 to its full weight; it applies
 * to weighted and least_conn (hashing ignores weights changing over time,
 * otherwise keys would move while the ramp runs).
 *
 * Time: every `now_ms` is milliseconds on CLOCK_MONOTONIC, the clock of
 * loop_now() / loop_clock_ms() in core/loop.h.
 *
 * One request, as the proxy drives it (g, w: the route's group and this
 * worker's state for it; u: the conf_upstream):
 *
 *     uint64_t tried[BALANCE_TRIED_WORDS] = { 0 };   // in the exchange
 *     for (attempt = 0; attempt <= u->retries; attempt++) {
 *         struct balance_ctx ctx = { .now_ms = loop_now(loop), .addr = ..., .key = ... };
 *         int s = balance_choose(g, w, &ctx, tried);
 *         if (s == BALANCE_NONE)       -> 503 with Retry-After
 *         if (s == BALANCE_EXHAUSTED)  -> 502
 *         tried[s / 64] |= UINT64_C(1) << (s % 64);
 *         ... connect to u->servers[s], send, read the response head ...
 *         balance_report(g, s, ok, loop_now(loop));   // ok: see balance_report
 *         balance_release(g, s);                      // when this attempt ends
 *         if (ok || !retryable) break;
 *     }
 *
 * Threading summary:
 *   balance_group_new/free           one thread, not concurrently with anything
 *                                    else on that group (see ownership below)
 *   balance_worker_new/free,
 *   balance_choose                   a worker uses only its own balance_worker;
 *                                    any number of workers on the same group
 *   balance_release, balance_report,
 *   getters                          any thread, any time while the group lives
 *   balance_health_start/stop        one controlling thread (main)
 */
#ifndef PORTICO_BALANCE_H
#define PORTICO_BALANCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct conf_upstream;

/* ------------------------------------------------------------------ groups */

struct balance_group;
struct balance_worker;

#define BALANCE_MAX_SERVERS 1024        /* the configuration's limit */
#define BALANCE_TRIED_WORDS (BALANCE_MAX_SERVERS / 64)

/* balance_choose() results that are not a server index. */
#define BALANCE_NONE      (-1)  /* every server (primary and backup) is down: answer 503 */
#define BALANCE_EXHAUSTED (-2)  /* some are up but this request tried them all: answer 502 */

/* Create the run-time state of `u`. Everything needed is copied: the group
 * does not reference `u` (or its conf snapshot) afterwards. All servers start
 * up, with full weight. The consistent-hash ring and the ip_hash weight table
 * are built here, once. Returns NULL with `err` filled on failure (out of
 * memory, too many servers).
 * Cost: O(servers) plus, for `hash`, O(V log V) for V ring points (160 per
 * unit of weight, at most 2^20). */
struct balance_group *balance_group_new(const struct conf_upstream *u, char *err, size_t errlen);

/* Free a group. The caller guarantees that no worker will call anything on it
 * any more, and that the health checker is stopped or was started without it.
 * The natural owner is whatever owns the conf snapshot: create the groups with
 * the snapshot and free them when its last reference goes. */
void balance_group_free(struct balance_group *g);

/* On a reload: give the servers of a new group `g` the run-time state of the
 * servers with the same address in `old` (the same upstream in the previous
 * configuration): down or up (active verdict only if g has health checks,
 * since nothing else would bring it back), the passive failure window, the
 * slow_start ramp, the transition count. A server down before the reload
 * stays down after it. Call before g is shared with anyone. */
void balance_group_inherit(struct balance_group *g, const struct balance_group *old);

/* Per-worker picking state for one group (smooth-WRR current weights and a
 * rotation counter). Owned and used by one thread only. `seed` (e.g. the
 * worker id) desynchronises workers so they do not all send their first
 * request to the same server. NULL on out of memory. Free it before its group. */
struct balance_worker *balance_worker_new(const struct balance_group *g, uint32_t seed);
void balance_worker_free(struct balance_worker *w);

/* What a pick may need to know about the request. */
struct balance_ctx {
    uint64_t now_ms;            /* monotonic ms (loop_now()) */
    const void *addr;           /* ip_hash: client address bytes: 4 (in_addr) or 16
                                   (in6_addr); NULL/0 falls back to weighted */
    size_t addr_len;
    const void *key;            /* hash: bytes of the hash_key (header value, cookie
                                   value or path); NULL/0 falls back to weighted */
    size_t key_len;
};

/* Choose a server for one attempt of a request.
 *
 * `tried` is NULL or an array of BALANCE_TRIED_WORDS words (bit i of word i/64
 * = server i was already tried by this request); those servers are skipped.
 * Returns a server index (an index into u->servers of the conf_upstream the
 * group was made from), BALANCE_NONE or BALANCE_EXHAUSTED.
 *
 * On success the server's in-flight count is incremented: the caller MUST call
 * balance_release(g, server) exactly once when that attempt ends, whether it
 * succeeded or not (least_conn depends on it; the count is also the gauge of
 * requests in flight per server).
 *
 * Lock-free. Cost: one pass over the group's servers reading a few relaxed
 * atomics each (plus an O(log V) ring search for hash, O(1) expected for
 * ip_hash), one atomic increment. A server whose passive down period has
 * expired is brought back here (one CAS, logged) by whichever worker sees it
 * first. */
int balance_choose(const struct balance_group *g, struct balance_worker *w,
                   const struct balance_ctx *ctx, const uint64_t *tried);

/* The attempt on `server` that balance_choose() returned has ended. */
void balance_release(const struct balance_group *g, int server);

/* Passive health: report how an attempt on `server` went. `ok` false for a
 * connect error or timeout, a reset, a response timeout, and a 5xx when
 * balance_fail_on_5xx(g). `max_fails` failures within `fail_timeout` take the
 * server out for `fail_timeout`; afterwards it is tried again, and a single
 * failure before its first success takes it out again at once. Successes do
 * not reset the count inside the window. A group of one server ignores
 * passive failures (as nginx does): taking it out would only turn errors
 * into 503s for fail_timeout. Lock-free; ok == true costs one
 * relaxed load. Thread-safe; the transition is logged and counted once. */
void balance_report(const struct balance_group *g, int server, bool ok, uint64_t now_ms);

/* Whether the upstream's `passive.on_5xx` is set: the caller reports a 5xx
 * response as a failure only then. */
bool balance_fail_on_5xx(const struct balance_group *g);

/* Helper for hash_key "cookie:NAME": find NAME's value in one Cookie header
 * value ("a=1; b=2"). Returns a pointer into `hdr` and its length, or NULL. */
const char *balance_cookie_value(const char *hdr, size_t len, const char *name, size_t name_len,
                                 size_t *value_len);

/* ------------------------------------------------------ state, for metrics */

enum balance_state {
    BALANCE_UP = 0,
    BALANCE_DOWN_PASSIVE,       /* taken out by failures of real requests */
    BALANCE_DOWN_ACTIVE,        /* marked down by the health checker (wins over passive) */
};

uint32_t balance_group_size(const struct balance_group *g);
const char *balance_group_name(const struct balance_group *g);
const char *balance_server_name(const struct balance_group *g, int server);   /* "host:port" */
bool balance_server_backup(const struct balance_group *g, int server);
enum balance_state balance_server_state(const struct balance_group *g, int server, uint64_t now_ms);
/* Attempts in flight on the server, from all workers. */
uint32_t balance_server_active(const struct balance_group *g, int server);
/* How many times the server changed state (up->down or down->up, passive or
 * active) since the group was created. Monotonic. */
uint64_t balance_server_changes(const struct balance_group *g, int server);

/* ------------------------------------------------------ active health checks */

/* Start the process's one health-check thread for the groups whose upstream
 * has a `health:` section (others are ignored; n may be 0). Every `interval`
 * per server it connects (non-blocking, bounded by `timeout` for the whole
 * check), sends `GET <path> HTTP/1.1` with `Host: <address>` and
 * `Connection: close`, and reads the status line: a status in `expect` (any
 * 2xx when unset) is a success, anything else (refused, timeout, reset, other
 * status, malformed) a failure. `fall` failures in a row mark the server down,
 * `rise` successes in a row mark it up again; transitions are logged and
 * counted. The first check of each server starts at once, unless a
 * balance_health_stop(true) kept its counts and schedule: a server of the
 * same group name and address then goes on where it was (reloads).
 * The array is copied; the groups must outlive balance_health_stop().
 * Returns 0, -EALREADY if it is running, or -errno. Call from one thread. */
int balance_health_start(struct balance_group *const *groups, size_t n);

/* Stop the checker and wait for its thread (returns within a few ms: the
 * thread sleeps in poll() on an eventfd). Idempotent. On reload: stop with
 * `keep` (each check's counts and schedule are kept for the next start),
 * swap the groups, start again with the new ones; without `keep` what was
 * kept is forgotten. */
void balance_health_stop(bool keep);

#endif
