/* pg/pg.h: the PostgreSQL pooler: the v3 wire protocol on both sides,
 * client and server authentication (SCRAM-SHA-256, md5, trust), pools per
 * (database, user) in transaction or session mode, spread over worker
 * threads that each run a core/loop.
 *
 * Threads: pg_start() binds `postgres.listen` (one SO_REUSEPORT socket per
 * worker per address) and starts conf->workers threads. A worker owns its
 * clients, its server connections and its share of every pool: pool_size is
 * split over the workers (worker i gets pool_size / n, the first
 * pool_size % n one more), so the server never sees more than pool_size
 * connections of a pool and nothing on the query path takes a lock. The
 * only shared things are the cancel-key table (one mutex per worker, taken
 * at login, logout and cancel), the client count (an atomic) and the metric
 * counters (per worker, single writer, summed when scraped).
 *
 * The parsers below are pure functions on byte ranges (zero-copy: results
 * point into the input) and are what the unit tests and the fuzz target
 * exercise. Every length is checked before it is used.
 */
#ifndef PORTICO_PG_H
#define PORTICO_PG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct conf;
struct obs_text;

/* ---- framing ---- */

/* Largest message accepted from either side (PostgreSQL's own limit for a
 * field is 1 GiB; a pooler that buffers a whole message needs a lower one). */
#define PG_MAX_MSG (64u << 20)
/* Largest startup packet (PostgreSQL allows 10000 bytes). */
#define PG_MAX_STARTUP 10000u

struct pg_msg {
    char type;                  /* 'Q', 'P', 'Z', ... */
    uint32_t len;               /* body length (the length field minus 4) */
    const uint8_t *body;
};

/* One typed message at p[0..n). Returns the bytes it takes (5 + len) when it
 * is complete, 0 when more bytes are needed, -1 when the length is
 * impossible (below 4, or over `max`). */
long pg_msg_next(const uint8_t *p, size_t n, uint32_t max, struct pg_msg *m);

enum pg_startup_kind { PG_STARTUP, PG_SSL_REQUEST, PG_GSSENC_REQUEST, PG_CANCEL_REQUEST };

#define PG_MAX_PARAMS 32

/* The first, untyped packet of a connection. */
struct pg_startup {
    enum pg_startup_kind kind;
    uint32_t version;           /* 196608 for 3.0 */
    const char *user, *database;    /* point into the packet; database defaults to user */
    uint32_t nparams;           /* other parameters (application_name, options, ...) */
    const char *names[PG_MAX_PARAMS], *values[PG_MAX_PARAMS];
    uint32_t cancel_pid, cancel_key;    /* PG_CANCEL_REQUEST */
};

/* Parse the startup packet at p[0..n): bytes taken, 0 for more, -1 when
 * malformed (wrong length, unknown code, protocol other than 3.x, missing
 * user, unterminated strings, too many parameters). `reason` says why. */
long pg_startup_parse(const uint8_t *p, size_t n, struct pg_startup *s, const char **reason);

/* A reader over a message body: each getter checks the room left and sets
 * `bad` (returning 0 / NULL) instead of reading past the end. */
struct pg_rd {
    const uint8_t *p;
    size_t n, off;
    bool bad;
};
static inline struct pg_rd pg_rd(const uint8_t *p, size_t n) { return (struct pg_rd){ p, n, 0, false }; }
uint8_t pg_rd_u8(struct pg_rd *r);
uint16_t pg_rd_u16(struct pg_rd *r);
uint32_t pg_rd_u32(struct pg_rd *r);
/* A NUL-terminated string; its length in *len. NULL (and bad) if unterminated. */
const char *pg_rd_str(struct pg_rd *r, size_t *len);
/* n raw bytes. */
const uint8_t *pg_rd_bytes(struct pg_rd *r, size_t n);

/* Check a client message's body against its type: every string terminated,
 * every count matched by its items, nothing left over (where the format
 * says so). Unknown types are refused. true when well formed. */
bool pg_client_msg_valid(const struct pg_msg *m);

/* The fields the pooler reads from Parse ('P'), Bind ('B'), Describe /
 * Close ('D'/'C'). Pointers into the body. */
struct pg_parse {
    const char *name, *query;
    size_t name_len, query_len;
    const uint8_t *rest;        /* parameter count and types */
    size_t rest_len;
};
bool pg_parse_parse(const struct pg_msg *m, struct pg_parse *out);
/* Bind: the portal name then the statement name; stmt_off is where the
 * statement name starts in the body, stmt_len its length (no NUL). */
bool pg_parse_bind(const struct pg_msg *m, size_t *stmt_off, size_t *stmt_len);
/* Describe / Close: 'S' or 'P' and the name. */
bool pg_parse_target(const struct pg_msg *m, char *what, const char **name, size_t *name_len);

/* A `SET name = value` / `SET name TO value` / `RESET name` / `RESET ALL`
 * that is the whole statement (a trailing ';' allowed), as sent in a simple
 * query. SET LOCAL and SET TRANSACTION are not session state: false.
 * For RESET ALL, name is "" and reset_all is true. Name is lowercased into
 * `name` (up to 63 bytes); value points into q. */
struct pg_set {
    char name[64];
    const char *value;
    size_t value_len;
    bool reset, reset_all;
};
bool pg_parse_set(const char *q, size_t len, struct pg_set *out);
/* Whether a query starts a read-only transaction (BEGIN READ ONLY,
 * START TRANSACTION READ ONLY). */
bool pg_query_read_only(const char *q, size_t len);

/* ---- authentication ---- */

/* A SCRAM-SHA-256 verifier: "SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>". */
struct pg_scram_secret {
    uint32_t iterations;
    uint8_t salt[64];
    size_t salt_len;
    uint8_t stored_key[32], server_key[32];
};
bool pg_scram_parse_secret(const char *s, struct pg_scram_secret *out);
/* Derive a verifier from a plain password with `salt` (random when NULL). */
bool pg_scram_from_password(const char *password, const uint8_t *salt, size_t salt_len,
                            uint32_t iterations, struct pg_scram_secret *out);

/* The server side of one SCRAM exchange (portico checking a client). */
struct pg_scram_server {
    struct pg_scram_secret secret;
    char nonce[128];            /* client nonce + server nonce */
    char client_first_bare[512];
    char server_first[512];
    int state;
    uint8_t client_key[32];     /* after a proof that checked: ClientKey */
};
/* Handle client-first-message; write server-first-message. Its length, or -1. */
int pg_scram_server_first(struct pg_scram_server *s, const struct pg_scram_secret *secret,
                          const char *msg, size_t len, char *out, size_t outlen);
/* Handle client-final-message: verify the proof; write server-final-message.
 * Its length, -1 when malformed, -2 when the proof is wrong (bad password). */
int pg_scram_server_final(struct pg_scram_server *s, const char *msg, size_t len,
                          char *out, size_t outlen);

/* The client side (portico logging in to a server with a password). */
struct pg_scram_client {
    char nonce[64];
    char client_first_bare[128];
    uint8_t server_signature[32];
    int state;          /* 0 none, 1 first sent, 2 final sent, 3 the server's signature checked */
};
int pg_scram_client_first(struct pg_scram_client *c, char *out, size_t outlen);
int pg_scram_client_final(struct pg_scram_client *c, const char *password,
                          const char *server_first, size_t len, char *out, size_t outlen);
/* The same from the keys instead of a password: ClientKey (learnt from a
 * client that proved it, pg_scram_server.client_key) and ServerKey (from
 * the verifier). This is how a user whose password portico never sees
 * logs in to the server (PgBouncer's SCRAM pass-through). */
int pg_scram_client_final_keys(struct pg_scram_client *c, const uint8_t client_key[32],
                               const uint8_t server_key[32], const char *server_first, size_t len,
                               char *out, size_t outlen);
bool pg_scram_client_check(struct pg_scram_client *c, const char *server_final, size_t len);

/* "md5" + md5(md5(password + user) + salt) in hex, into out[36] (with NUL).
 * `secret` is the plain password or the stored "md5..." hash. */
void pg_md5_response(const char *secret, const char *user, const uint8_t salt[4], char out[36]);

/* ---- running ---- */

struct pg;
/* Bind the listeners and start the workers. NULL with err set on failure. */
struct pg *pg_start(struct conf *c, char *err, size_t errlen);
/* Reload (SIGHUP, after the proxy accepted the same file): apply `c`'s
 * postgres: section to the running pooler. Pool sizes, passwords, the auth
 * file, timeouts, slow_query and the other limits change at once (each
 * worker switches between two events; connections stay). A change to
 * listen, servers, the pools' database/user/pool_mode or TLS takes a
 * restart: -1 with a warning logged, the pooler keeps running as it was.
 * Takes its own reference to `c`. Call from one thread at a time (main). */
int pg_reload(struct pg *p, struct conf *c);
/* Close the listeners, end every client and server connection, join. */
void pg_stop(struct pg *p);

/* For the admin listener (any thread). Nothing is written when no pooler runs. */
void pg_metrics(struct obs_text *t);
/* {"clients":..,"pools":[{"database":..,"user":..,"cl_active":..,...}]}, no newline */
void pg_pools_json(struct obs_text *t);
/* true when a pooler runs (the admin status adds a "postgres" member). */
bool pg_running(void);

#endif
