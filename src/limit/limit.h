/* limit/limit.h: rate limits (GCRA), allow / deny lists, and the request
 * stage that applies them.
 *
 * A limit is the generic cell rate algorithm: a key's "theoretical arrival
 * time" (TAT) advances by one emission interval T = period / count per
 * request; a request is admitted while TAT - now <= burst x T, so a key
 * gets `burst` + 1 requests at once and then one every T. Exact: the
 * decision for a key is taken under its shard's lock, whatever worker asks.
 *
 * Keys live in a process-wide table (gcra.c) of at most limits.max_keys
 * keys, fixed at start: 16 bytes a slot (the key's hash and its TAT), half
 * the slots used at most, so a decision is one cache miss. It is sharded
 * by hash, one spinlock per shard, never held across I/O. A key whose TAT
 * has passed is idle (it is as if absent); when the table (or a shard) is
 * full, idle keys go first, then the one closest to idle among those a
 * bounded sweep looks at, and portico_ratelimit_evictions_total counts
 * them (the active ones apart). The login guard's keys are in a table of
 * the same kind, under the same max_keys.
 *
 * The decision goes through struct limit_backend, so that a cluster-wide
 * store (Redis, a later issue) can replace the local table without
 * changing the request path.
 */
#ifndef PORTICO_LIMIT_H
#define PORTICO_LIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct obs_text;
struct stage_def;
struct stage_x;

struct limit_result {
    bool admitted;
    uint64_t retry_after_ms;    /* refused: when one request will be admitted again */
    uint32_t remaining;         /* requests admitted at once from now */
    uint64_t reset_ms;          /* when the key is back to a full burst */
};

/* Emission interval and tolerance of a limit, in ns. */
struct limit_gcra {
    uint64_t interval_ns;       /* T = period / count */
    uint64_t tolerance_ns;      /* burst x T */
};

void limit_gcra_init(struct limit_gcra *g, uint32_t count, uint64_t period_ms, uint32_t burst);

/* The decision for one key whose TAT is *tat (0: never seen), at now_ns:
 * updates *tat when admitted. Pure: the tests drive it with their clock. */
void limit_gcra(const struct limit_gcra *g, int64_t *tat, int64_t now_ns, struct limit_result *r);

/* `action: delay` (nginx's limit_req without nodelay): requests are paced
 * at the rate; one that comes early waits (*delay_ns) if its wait is at
 * most max_delay_ns (burst x T), else it is refused. */
void limit_gcra_delay(const struct limit_gcra *g, uint64_t max_delay_ns, int64_t *tat,
                      int64_t now_ns, struct limit_result *r, uint64_t *delay_ns);

/* Every decision goes through a backend: the local table (limit_local)
 * today; a cluster-wide store (Redis, a later issue) implements the same
 * four operations and the request path does not change. Each returns 0, or
 * -1 when it cannot decide (then the request is admitted: limits fail
 * open). `key` is a 64-bit hash of the limit (or guard) and the key's bytes. */
struct limit_backend {
    /* One request under GCRA limit g. */
    int (*take)(void *self, uint64_t key, const struct limit_gcra *g, int64_t now_ns,
                struct limit_result *r);
    /* One request paced under g (action: delay): *delay_ns to wait. */
    int (*pace)(void *self, uint64_t key, const struct limit_gcra *g, uint64_t max_delay_ns,
                int64_t now_ns, struct limit_result *r, uint64_t *delay_ns);
    /* The login guard: when the key is blocked until (0: it is not). */
    int (*guard_check)(void *self, uint64_t key, int64_t now_ns, int64_t *blocked_until);
    /* A login's outcome: a failure counts (within window_ns; max_failures
     * block for block_ns, *blocked says so), a success resets. */
    int (*guard_record)(void *self, uint64_t key, bool failed, uint32_t max_failures,
                        int64_t window_ns, int64_t block_ns, int64_t now_ns, bool *blocked);
    void *self;
};

/* The local tables: at most `max_keys` keys. Call once at start (before
 * workers run); later calls keep the first tables. 0 or -1 (out of memory). */
int limit_table_init(uint32_t max_keys);
void limit_table_free(void);
extern struct limit_backend limit_local;

/* The table's figures: keys in use, evictions. */
void limit_table_stats(uint64_t *keys, uint64_t *evictions, uint64_t *active_evictions);

/* 64-bit hash of bytes, seeded (per limit) and mixed with a secret drawn
 * at start (clients cannot aim keys at one slot). */
uint64_t limit_hash(uint64_t seed, const void *data, size_t len);

/* The stage: allow / deny, then every rate limit of the route. */
extern const struct stage_def limit_stage;
/* The login guard (login_guard: on a route). */
extern const struct stage_def limit_guard_stage;

/* limits.max_connections_per_ip: count a new connection from addr (AF_INET
 * or AF_INET6 bytes); false when the address already has `max` open. */
bool limit_conn_take(int family, const uint8_t *addr, uint32_t max);
void limit_conn_release(int family, const uint8_t *addr);

/* Prometheus text for /metrics: decisions per route, limit and outcome,
 * denials by list, the table's keys and evictions. */
void limit_metrics(struct obs_text *t);
void limit_guard_metrics(struct obs_text *t);

/* What the keys are read from (stage.c, guard.c; tests/fuzz/fuzz_limitkeys.c):
 * the value of cookie `name` in a Cookie field (NULL: none). */
const char *limit_cookie_value(const char *v, size_t vlen, const char *name, size_t *out);

/* The account names a login gives, in the form the application reads them,
 * so that spellings of one name count as one: a form body's fields
 * (a=1&user=alice) with names and values percent-decoded and '+' a space;
 * a JSON body's string members, keys at any depth, with their escapes
 * decoded (\uXXXX and surrogate pairs to UTF-8); a header's value as it is
 * (LIMIT_ACCOUNT_HEADER). Then ASCII letters lowered, and a value cut at
 * LIMIT_ACCOUNT_MAX bytes. Every occurrence counts, since applications
 * differ on which of a repeated field they read: the distinct non-empty
 * values go to out[]. Returns how many (0 to LIMIT_ACCOUNTS), or -1 when
 * there are more distinct ones than that (the guard refuses the request). */
#define LIMIT_ACCOUNTS 4
#define LIMIT_ACCOUNT_MAX 128
enum limit_account_from { LIMIT_ACCOUNT_HEADER, LIMIT_ACCOUNT_FORM, LIMIT_ACCOUNT_JSON };
struct limit_account {
    size_t len;
    char v[LIMIT_ACCOUNT_MAX];
};
int limit_accounts(const char *b, size_t n, const char *name, enum limit_account_from from,
                   struct limit_account out[LIMIT_ACCOUNTS]);

/* The proof-of-work challenge (challenge.c). */
struct conf_challenge;
bool limit_challenge_passed(struct stage_x *sx, const struct conf_challenge *cc);
int limit_challenge_page(struct stage_x *sx, const struct conf_challenge *cc);
int limit_challenge_verify(struct stage_x *sx, const struct conf_challenge *cc);
/* A pass ("EXPIRY.HMAC" of the binding and the expiry): made, and checked
 * against a binding (an address or network) at time `now` (seconds). */
size_t limit_pass_make(const struct conf_challenge *cc, const char *bind, long long exp, char *out,
                       size_t cap);
bool limit_pass_check(const struct conf_challenge *cc, const char *bind, const char *v, size_t vl,
                      long long now);

/* The top offenders (Space-Saving, bounded): note a refusal of client `key`
 * by `why`; JSON for GET /limits/top (at most max); metrics by rank. */
void limit_top_note(const char *key, size_t len, const char *why);
void limit_top_json(struct obs_text *t, uint32_t max);
void limit_top_metrics(struct obs_text *t);
void limit_top_rows(struct obs_text *t, uint32_t max);
/* A JSON object for /status: decisions, logins, keys, the top offenders. */
void limit_status_json(struct obs_text *t);

#endif
