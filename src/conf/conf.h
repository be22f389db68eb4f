/* conf/conf.h: the configuration, loaded from YAML into plain typed structs.
 *
 * conf_load() parses and validates a whole file and returns an immutable
 * snapshot, or NULL with `err` holding `file:line:col: key.path: message`.
 * Modules never see YAML. A snapshot is reference-counted: the proxy holds
 * one reference per worker and one per request in flight, so a reload can
 * swap in a new snapshot while old requests finish on the one they started
 * with.
 */
#ifndef PORTICO_CONF_H
#define PORTICO_CONF_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "core/log.h"

struct conf_addr {
    struct sockaddr_storage ss;
    socklen_t len;
    char text[80];              /* as written: "127.0.0.1:8080", "[::1]:80", "app:9000" */
};

/* `balance:` of an upstream group (see balance/balance.h for the algorithms). */
enum conf_balance {
    CONF_BALANCE_WEIGHTED = 0,  /* smooth weighted round robin (the default) */
    CONF_BALANCE_IP_HASH,       /* by client address, sticky while the server is up */
    CONF_BALANCE_LEAST_CONN,    /* fewest requests in flight relative to weight */
    CONF_BALANCE_HASH,          /* consistent hashing on `hash_key` */
};

/* `hash_key:` "header:NAME", "cookie:NAME" or "path" (for balance: hash). */
enum conf_hash_from {
    CONF_HASH_NONE = 0,
    CONF_HASH_HEADER,
    CONF_HASH_COOKIE,
    CONF_HASH_PATH,             /* the request target's path, without the query */
};

struct conf_hash_key {
    enum conf_hash_from from;
    char name[128];             /* header or cookie name as written; "" for path */
    uint32_t name_len;
};

#define CONF_HEALTH_MAX_EXPECT 32

/* `health:` active checks; enabled only when the key is present. */
struct conf_health {
    bool enabled;
    char path[256];             /* GET target, starts with "/"; default "/" */
    uint64_t interval;          /* ms between two checks of one server; default 5s */
    uint64_t timeout;           /* ms for connect + response status line; default 2s */
    uint32_t rise;              /* consecutive successes to mark up; default 2 */
    uint32_t fall;              /* consecutive failures to mark down; default 3 */
    uint32_t nexpect;           /* 0: any 2xx status is healthy */
    uint16_t expect[CONF_HEALTH_MAX_EXPECT];
};

/* `passive:` failures seen by real requests. */
struct conf_passive {
    uint32_t max_fails;         /* failures within fail_timeout that take a server out; 0 = off */
    uint64_t fail_timeout;      /* ms: the counting window and how long the server stays out */
    bool on_5xx;                /* a 5xx response counts as a failure */
};

struct conf_server {
    struct conf_addr addr;
    uint32_t weight;            /* >= 1 */
    bool backup;                /* used only when every primary server is unavailable */
    uint64_t slow_start;        /* ms over which a recovered server's weight ramps up; 0 = off */
};

struct conf_upstream {
    char *name;
    struct conf_server *servers;
    uint32_t nservers;
    uint32_t index;             /* position in conf.upstreams */
    uint32_t keepalive;         /* idle connections kept per worker per server */
    uint64_t connect_timeout;   /* ms */
    uint64_t response_timeout;  /* ms: from request sent to response head, and between reads */
    uint64_t idle_timeout;      /* ms an idle pooled connection is kept */
    enum conf_balance balance;
    struct conf_hash_key hash_key;  /* from != NONE exactly when balance == HASH */
    struct conf_health health;
    struct conf_passive passive;
    uint32_t retries;           /* further servers tried after a failed attempt; default 2 */
};

/* `headers:` on a route: one operation on a request or response header. */
enum conf_hdr_verb {
    CONF_HDR_SET,               /* replace every field of that name (or add one) */
    CONF_HDR_ADD,               /* add a field, keeping those there */
    CONF_HDR_REMOVE,            /* remove every field of that name */
    CONF_HDR_DEFAULT,           /* set only when absent (the upstream's value wins) */
};

struct conf_hdr_op {
    char *name;                 /* a token */
    char *value;                /* a template: text with ${client_ip}, ${request_id}, ${route},
                                   ${host}, ${upstream}; NULL for remove */
    uint32_t name_len, value_len;
    uint8_t verb;               /* enum conf_hdr_verb */
};

struct conf_hdr_rules {
    struct conf_hdr_op *ops;
    uint32_t n;
};

/* `rate_limit:` one limit of a route (GCRA, limit/limit.h). */
enum conf_limit_key {
    CONF_LKEY_CLIENT_IP = 1,    /* the client address (trusted_proxies applied), aggregated */
    CONF_LKEY_HEADER,           /* a request header's value */
    CONF_LKEY_COOKIE,           /* a cookie's value */
    CONF_LKEY_ROUTE,            /* the route as a whole */
};

#define CONF_LIMIT_MAX_KEYS 4

enum conf_limit_headers {
    CONF_LHDR_IETF = 0,         /* RateLimit-Policy and RateLimit (the IETF draft) */
    CONF_LHDR_X,                /* X-RateLimit-Limit, -Remaining, -Reset */
    CONF_LHDR_BOTH,
    CONF_LHDR_NONE,
};

struct conf_rate_limit {
    char name[64];              /* the policy's name: `name:`, or "limitN" */
    uint32_t count;             /* `rate: count/period` */
    uint64_t period_ms;
    uint32_t burst;             /* requests allowed at once beyond the steady rate */
    uint8_t nkeys;
    uint8_t keys[CONF_LIMIT_MAX_KEYS];          /* enum conf_limit_key; all together make the key */
    char key_names[CONF_LIMIT_MAX_KEYS][64];    /* header or cookie names */
    uint8_t v4_prefix, v6_prefix;   /* `aggregate:` client_ip to a network (32/128: none) */
    bool dry_run;               /* count and log, never refuse */
    bool delay;                 /* action: delay: pace early requests instead of refusing */
    bool challenge;             /* action: challenge: a proof-of-work page instead of 429 */
    uint8_t headers;            /* enum conf_limit_headers */
    uint16_t status;            /* 429 (default) or 503 */
};

/* `security_headers:` response fields audits ask for (filter/security.c). */
enum {
    CONF_SEC_HSTS, CONF_SEC_NOSNIFF, CONF_SEC_FRAME, CONF_SEC_REFERRER, CONF_SEC_CSP,
    CONF_SEC_PERMISSIONS, CONF_SEC_COOP, CONF_SEC_N
};
#define CONF_SEC_MAX_HIDE 16

struct conf_security {
    bool enabled;               /* `default` or a map; `off` or absent: not at all */
    int8_t mode;                /* as written at this level: 1 on, -1 off, 0 not said */
    bool set[CONF_SEC_N];       /* this level says something of field i */
    char value[CONF_SEC_N][512];    /* "" with set: `off` (not added) */
    bool override;              /* replace the upstream's own values */
    bool override_set;
    char hide[CONF_SEC_MAX_HIDE][64];   /* upstream fields removed (Server, X-Powered-By) */
    uint32_t nhide;
    bool hide_set;
};

/* The field names, in enum order, and the defaults of `security_headers: default`. */
extern const char *const conf_security_names[CONF_SEC_N];
extern const char *const conf_security_defaults[CONF_SEC_N];

/* `compression:` (filter/compress.c). */
enum { CONF_ENC_BR, CONF_ENC_ZSTD, CONF_ENC_GZIP, CONF_ENC_N };
#define CONF_COMP_MAX_TYPES 32

struct conf_compression {
    bool enabled;               /* the section is there (routes may turn it off) */
    uint8_t order[CONF_ENC_N];  /* the server's preference: encodings in order */
    uint8_t norder;
    int level[CONF_ENC_N];      /* br 0-11, zstd 1-19, gzip 1-9: bodies as they stream */
    int cache_level[CONF_ENC_N];    /* the cache's stored variants, compressed once */
    uint64_t min_size;          /* smaller bodies (by Content-Length) go as they are */
    char types[CONF_COMP_MAX_TYPES][64];    /* media types; "text/" + "*" matches a whole type */
    uint32_t ntypes;
};

/* `cache:` at the top level: the store (cache/), shared by every route
 * that caches and kept across reloads. */
#define CONF_CACHE_NAME 64
struct conf_cache {
    uint64_t memory;            /* the byte budget: keys, heads, bodies, metadata */
    uint64_t max_object;        /* larger responses stream through, not stored */
    uint64_t stale_while_revalidate_ms;     /* routes' default */
    uint64_t stale_if_error_ms;             /* routes' default */
    uint64_t lock_timeout_ms;   /* a coalesced miss waits this long, then goes upstream */
    uint32_t max_waiters;       /* requests waiting on one fetch; more go upstream */
    uint64_t heuristic_max_ms;  /* cap of the Last-Modified heuristic (10% of its age) */
    char tag_header[CONF_CACHE_NAME];   /* the response field with purge tags */
};

enum conf_cache_query {
    CONF_CACHE_QUERY_KEEP = 0,  /* the query as sent */
    CONF_CACHE_QUERY_SORT,      /* parameters sorted: ?b=1&a=2 and ?a=2&b=1 meet */
    CONF_CACHE_QUERY_IGNORE,    /* no query in the key */
    CONF_CACHE_QUERY_LIST,      /* only the parameters named in `keep`, sorted */
};

/* `cache:` on a route. */
struct conf_route_cache {
    bool enabled;
    uint64_t ttl_ms;            /* freshness when the response gives none (0: RFC 9111 only) */
    bool override;              /* ttl wins over the response's own freshness */
    bool allow_set_cookie;      /* store responses that set cookies (their Set-Cookie is not stored) */
    uint8_t query;              /* enum conf_cache_query */
    char (*keep)[CONF_CACHE_NAME];      /* query parameters kept (CONF_CACHE_QUERY_LIST) */
    uint32_t nkeep;
    char ns[CONF_CACHE_NAME];   /* the namespace its entries belong to ("" none) */
    char (*bump)[CONF_CACHE_NAME];      /* bump_on_write: namespaces a successful write bumps */
    uint32_t nbump;
    int64_t swr_ms, sie_ms;     /* stale_while_revalidate / stale_if_error; -1: the top level's */
    uint32_t expect_hit_permille;       /* expect_hit_ratio x 1000 (0: no expectation) */
};

/* `login_guard:` failed logins per client address (and account). */
struct conf_login_guard {
    bool enabled;
    uint32_t max_failures;      /* failures within `window` that block */
    uint64_t window_ms, block_ms;
    uint16_t failure_status[8]; /* responses that count as failures (401, 403) */
    uint8_t nfailure_status;
    uint16_t status;            /* the answer while blocked: 429 or 403 */
    uint8_t account_from;       /* 0 none, 1 header, 2 form field, 3 JSON field */
    char account_name[64];
};

struct conf_route {
    char *host;                 /* NULL: any; "*.example.com": suffix; else exact (lowercase) */
    char *prefix;               /* path prefix, "/" by default */
    size_t host_len, prefix_len;
    struct conf_upstream *upstream;
    bool audit;                 /* every request is written to the audit log */
    struct conf_hdr_rules req_headers;  /* headers.request */
    struct conf_hdr_rules resp_headers; /* headers.response */
    struct conf_rate_limit *limits; /* rate_limit: all must pass */
    uint32_t nlimits;
    struct conf_cidr *allow, *deny; /* the route's own, checked after the global ones */
    uint32_t nallow, ndeny;
    struct conf_login_guard guard;
    bool challenge;             /* challenge: true: every client without a pass ("bot fight") */
    struct conf_security security;  /* the top level's, with this route's security_headers over it */
    bool no_compression;        /* compression: off on this route */
    struct conf_route_cache cache;
};

/* `challenge:` the proof-of-work challenge's settings. */
struct conf_challenge {
    unsigned char key[64];      /* from key_file; empty: a random key per process */
    size_t key_len;
    uint32_t difficulty;        /* leading zero bits of SHA-256 (default 16) */
    uint64_t ttl_ms;            /* how long a pass is good (default 1h) */
    bool bind_network;          /* bind passes to the /24 (IPv6: /64), not the address */
};

struct conf_limits {
    uint64_t header_timeout;    /* ms to receive a whole request head */
    uint64_t idle_timeout;      /* ms a keep-alive client may sit idle */
    uint64_t body_timeout;      /* ms between two reads of a request body */
    uint64_t send_timeout;      /* ms between two writes to a slow client */
    uint64_t tunnel_timeout;    /* ms a tunnel (WebSocket, Upgrade) may be idle both ways */
    uint32_t max_header_bytes;
    uint32_t max_headers;
    uint32_t max_request_line;
    uint64_t max_body;
    uint32_t max_connections;   /* per process */
    uint32_t max_keys;          /* rate-limit keys tracked at once (fixed at start) */
    uint32_t max_connections_per_ip;    /* 0: no limit */
};

/* `headers_with_underscores:` request header names with '_' (X_Forwarded_For),
 * which CGI, WSGI and FastCGI map onto the same variable as their '-' twins. */
enum conf_underscores {
    CONF_UNDERSCORES_DROP = 0,  /* removed before forwarding (the default, as nginx) */
    CONF_UNDERSCORES_ALLOW,
    CONF_UNDERSCORES_REJECT,    /* 400 */
};

/* `trusted_proxies:` one CIDR block. */
struct conf_cidr {
    uint8_t family;             /* AF_INET or AF_INET6 */
    uint8_t bits;
    uint8_t addr[16];           /* network order, masked */
};

/* `path_normalization:` how request paths are matched and forwarded. */
struct conf_pathnorm {
    bool merge_slashes;         /* "//" counts as "/" */
    bool forward_normalized;    /* the upstream gets the normalised path (default) */
    bool allow_encoded_slash;   /* %2F and %5C pass instead of 400 */
};

#define CONF_MAX_BUCKETS 30

/* `metrics:` what the request path records for /metrics. */
struct conf_metrics {
    bool enabled;               /* false: no per-request series (requests, durations) */
    uint32_t nbuckets;          /* histogram upper bounds, strictly increasing */
    double buckets[CONF_MAX_BUCKETS];   /* seconds; +Inf is implicit */
};

/* ---- postgres: the PostgreSQL pooler (parsed in conf_pg.c) ---- */

enum conf_pg_mode { CONF_PG_TRANSACTION = 0, CONF_PG_SESSION };
enum conf_pg_auth { CONF_PG_AUTH_SCRAM = 0, CONF_PG_AUTH_MD5, CONF_PG_AUTH_TRUST };
enum conf_pg_sslmode { CONF_PG_SSL_DISABLE = 0, CONF_PG_SSL_REQUIRE, CONF_PG_SSL_VERIFY_FULL };
enum conf_pg_role { CONF_PG_PRIMARY = 0, CONF_PG_REPLICA };

/* One entry of postgres.auth.file: `"user" "secret"`, where the secret is a
 * plain password, "md5" + md5(password + user) in hex, or a SCRAM verifier
 * "SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>" (base64). */
struct conf_pg_user {
    char *name;
    char *secret;
};

struct conf_pg_server {
    struct conf_addr addr;
    enum conf_pg_role role;
    uint32_t weight;            /* >= 1 */
};

/* postgres.pools[]: one pool per (database, user). */
struct conf_pg_pool {
    char *database;             /* the name clients ask for (and the server's) */
    char *user;
    char *password;             /* portico -> server; NULL: the auth file's plain password */
    enum conf_pg_mode mode;
    uint32_t pool_size;         /* server connections, whole process */
    uint32_t min_pool_size;     /* kept open even when idle */
    uint32_t reserve_pool;      /* extra connections once a client waited reserve_pool_timeout */
    bool read_only;             /* every transaction of this pool goes to the replicas */
};

struct conf_pg {
    bool enabled;               /* a `postgres:` section is present */
    struct conf_addr *listen;
    uint32_t nlisten;
    struct conf_pg_server *servers;
    uint32_t nservers;
    struct conf_pg_pool *pools;
    uint32_t npools;
    enum conf_pg_auth auth;
    char *auth_file;
    struct conf_pg_user *users;     /* the auth file, read when the configuration loads */
    uint32_t nusers;
    /* auth_query: a secret the file lacks is looked up on the primary */
    char *auth_user;                /* the role that runs auth_query; NULL: no lookups */
    char *auth_password;            /* its password; NULL: the auth file's plain one */
    char *auth_dbname;              /* where it runs; NULL: the database the client asks for */
    char *auth_query;               /* $1 is the user name; the row's last column is the secret */
    uint64_t auth_cache;            /* ms a looked-up secret (or its absence) is reused */
    uint32_t max_client_conn;       /* whole process */
    uint64_t query_wait_timeout;    /* ms a client may wait for a server; 0 = forever */
    uint64_t reserve_pool_timeout;  /* ms */
    uint64_t server_lifetime;       /* ms; 0 = unlimited */
    uint64_t server_idle_timeout;   /* ms; 0 = unlimited */
    uint64_t server_connect_timeout;    /* ms */
    uint64_t client_login_timeout;  /* ms from connect to a finished login */
    uint64_t health_interval;       /* ms between two health checks of a server */
    char *server_reset_query;       /* session mode, when a client leaves; NULL: none */
    char *server_check_query;       /* run on a server idle server_check_delay before reuse; NULL: none */
    uint64_t server_check_delay;    /* ms */
    uint64_t slow_query;            /* ms; 0 = the slow query log is off */
    uint32_t slow_query_max_chars;  /* statement text kept in a slow query line */
    enum conf_pg_sslmode sslmode;
    char *sslrootcert;              /* CA file for verify-full; NULL: the system's */
    uint32_t max_prepared;          /* prepared statements kept per server connection */
};

/* Called by conf.c for the `postgres:` key: fills *pg or returns false with
 * err set as `file:line:col: postgres.key: what is wrong`. `doc` is the
 * libyaml document and `node` the section's node (opaque here so that this
 * header does not pull in yaml.h). */
bool conf_pg_load(void *doc, void *node, const char *file, char *err, size_t errlen,
                  struct conf_pg *pg);
void conf_pg_free(struct conf_pg *pg);
/* The secret of a user of the auth file, or NULL. */
const char *conf_pg_secret(const struct conf_pg *pg, const char *user);

struct conf {
    atomic_int refs;
    char *path;
    struct conf_addr *listen;
    uint32_t nlisten;
    uint32_t workers;           /* resolved: "auto" is the CPU count */
    struct conf_upstream *upstreams;
    uint32_t nupstreams;
    struct conf_route *routes;
    uint32_t nroutes;
    struct conf_limits limits;
    uint64_t shutdown_timeout;  /* ms */
    char *access_log;           /* "stdout", "stderr" or a file; NULL: off */
    uint64_t access_log_flush;  /* ms a buffered line may wait before it is written */
    char *audit_log;            /* "stdout", "stderr" or a file; NULL: off */
    bool admin_enabled;         /* an `admin:` section is present */
    struct conf_addr admin_listen;
    char *admin_token;          /* from admin.token_file; NULL: no token required */
    uint64_t admin_header_timeout;  /* ms to receive a whole admin request head; default 5s */
    uint64_t admin_idle_timeout;    /* ms an admin keep-alive connection may sit idle; 30s */
    uint64_t admin_send_timeout;    /* ms between two writes to a slow admin client; 10s */
    enum log_level log_level;   /* `log_level:` the diagnostic log's threshold; default info */
    struct conf_metrics metrics;
    enum conf_underscores underscores;
    struct conf_cidr *trusted;  /* trusted_proxies */
    uint32_t ntrusted;
    struct conf_pathnorm pathnorm;
    struct conf_pg pg;          /* postgres: (pg.enabled false when absent) */
    struct conf_cidr *allow, *deny; /* allow / deny: who may use any route */
    uint32_t nallow, ndeny;
    struct conf_challenge challenge;
    struct conf_security security;  /* security_headers: at the top level */
    struct conf_compression compression;
    struct conf_cache cache;    /* always set: defaults when there is no `cache:` */
    bool cache_used;            /* a route caches (the store is needed) */
};

/* Whether addr (AF_INET / AF_INET6 bytes, v4-mapped IPv6 counts as IPv4) is
 * in one of the blocks. */
bool conf_cidr_match(const struct conf_cidr *set, uint32_t n, int family, const void *addr);
/* Whether a header field is portico's to write, so that no rule (headers:)
 * or stage may set or remove it: framing and connection fields, and on
 * requests Host and the forwarding fields. */
bool conf_header_reserved(const char *name, bool request);
/* Parse "10.0.0.0/8", "::1", "fd00::/8" (no prefix: a single address). */
bool conf_parse_cidr(const char *s, struct conf_cidr *out);

/* Load and validate. On error returns NULL and writes a message to err. */
struct conf *conf_load(const char *path, char *err, size_t errlen);
/* Same, from a string in memory; `name` stands for the file in messages. */
struct conf *conf_load_string(const char *name, const char *text, size_t len,
                              char *err, size_t errlen);
struct conf *conf_ref(struct conf *c);
void conf_unref(struct conf *c);

/* Whether conf_parse_addr() may resolve host names (default true). The
 * config fuzzer turns it off: a lookup per input would stall it on DNS. */
extern bool conf_resolve_names;

/* Whether two addresses are the same socket address (as resolved). */
bool conf_addr_equal(const struct conf_addr *a, const struct conf_addr *b);

/* Parse "host:port", "[v6]:port" or "*:port" (resolving host names). */
bool conf_parse_addr(const char *s, struct conf_addr *out, char *err, size_t errlen);
/* Value parsers shared with the tests: 0 on success, -1 if malformed. */
int conf_parse_duration(const char *s, uint64_t *ms);
int conf_parse_size(const char *s, uint64_t *bytes);

#endif
