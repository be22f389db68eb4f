/* tests/fuzz/fuzz_path.c: the whole request path, in process.
 *
 * The real exchange code (src/proxy/proxy.c: head building, framing,
 * retries, local responses, pipelining, tunnels, 1xx, re-chunking, pools)
 * runs on one worker whose loop this harness turns one iteration at a time
 * (proxy_inline_*, see proxy.h). Both peers are played from the input over
 * loopback TCP: the client (a connected pair whose far end is adopted as a
 * client connection) and the upstream servers (listening sockets the
 * harness owns, whose ports are written into the configurations).
 *
 * Input:
 *   byte 0        configuration variant (% NVARIANTS, see variants[] below)
 *   then records  separated by the 3-byte marker FE FF <op>; the bytes
 *                 before the first marker are client bytes (op 'C'); a
 *                 record's payload is everything up to the next marker.
 *     C  the (current) client sends the payload
 *     U  the current upstream connection sends the payload (the open one
 *        that most recently received bytes from portico, else the newest)
 *     N  the current upstream connection closes (FIN)
 *     R  the current upstream connection resets (RST)
 *     Z  the current upstream connection shuts its write side
 *     H  the client shuts its write side
 *     X  the client closes
 *     K  another client connects, and plays from now on (4 at most)
 *     D  the proxy drains as on SIGTERM (proxy_shutdown)
 *     P  the client stops / starts reading what portico sends it
 *     Q  the servers stop / start reading what portico sends them
 *     T  the clock moves forward: ms = advance[payload[0] % 12] (1 s if empty)
 *     W  nothing (the loop runs after every record anyway)
 *   After every record the loop runs until nothing moves (bounded). At the
 *   end the upstream connections close, then the client, then the clock
 *   moves an hour, and the proxy is freed.
 *
 * Environment: FUZZ_PATH_VERBOSE=1 keeps portico's log on stderr and traces
 * the records; FUZZ_PATH_FDS=1 aborts if an input leaves a descriptor open;
 * FUZZ_PATH_LOG=file appends why a check failed to file (-fork mode keeps no
 * child's stderr; for ASan reports use ASAN_OPTIONS=log_path=...).
 * FUZZ_PATH_STRICT=1 aborts if a client connection survives the end, or if
 * what portico sent an upstream is not a sequence of well-formed, correctly
 * framed requests (check_upstream).
 * Generate the seeds with tests/fuzz/gen_path_corpus.py.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "cache/cache.h"
#include "conf/conf.h"
#include "core/log.h"
#include "http/http.h"
#include "proxy/proxy.h"

#define NVARIANTS 9
#define MAXUP 32
#define MAXCL 4                 /* client connections per input */
#define PUMP_ITERS 256          /* loop iterations per record, at most */
#define INPUT_ITERS 20000       /* loop iterations per input, at most */

/* Configurations. LISTEN, UP1, UP2 (harness upstreams) and DEAD (a bound
 * port nobody listens on: connect is refused) are replaced by ports. */
static const char *const variants[NVARIANTS] = {
    /* 0: the quick start */
    "listen: [ \"127.0.0.1:LISTEN\" ]\n"
    "upstreams:\n"
    "  app:\n"
    "    servers:\n"
    "      - { address: \"127.0.0.1:UP1\" }\n"
    "    keepalive: 64\n"
    "    connect_timeout: 2s\n"
    "    response_timeout: 30s\n"
    "routes:\n"
    "  - match: { prefix: / }\n"
    "    upstream: app\n"
    "limits: { header_timeout: 10s, idle_timeout: 60s, max_header_bytes: 16KiB, max_body: 16MiB }\n",

    /* 1: host routes, no catch-all (unknown hosts get a local 404) */
    "listen: [ \"127.0.0.1:LISTEN\" ]\n"
    "trusted_proxies: [ \"10.0.0.0/8\", \"::1\" ]\n"
    "upstreams:\n"
    "  app: { servers: [ { address: \"127.0.0.1:UP1\" } ], keepalive: 4 }\n"
    "  api: { servers: [ { address: \"127.0.0.1:UP2\" } ], retries: 0, response_timeout: 5s }\n"
    "routes:\n"
    "  - match: { host: example.com, prefix: /api/ }\n"
    "    upstream: api\n"
    "  - match: { host: \"*.example.org\" }\n"
    "    upstream: app\n"
    "  - match: { host: example.com }\n"
    "    upstream: app\n",

    /* 2: small limits, so that they are reachable */
    "listen: [ \"127.0.0.1:LISTEN\" ]\n"
    "upstreams:\n"
    "  app:\n"
    "    servers: [ { address: \"127.0.0.1:UP1\" } ]\n"
    "    keepalive: 1\n"
    "    connect_timeout: 100ms\n"
    "    response_timeout: 1s\n"
    "    idle_timeout: 2s\n"
    "routes: [ { match: { prefix: / }, upstream: app } ]\n"
    "headers_with_underscores: reject\n"
    "limits: { max_header_bytes: 1024, max_request_line: 256, max_headers: 8, max_body: 100,\n"
    "          header_timeout: 1s, idle_timeout: 2s, body_timeout: 1s, send_timeout: 1s,\n"
    "          tunnel_timeout: 5s }\n",

    /* 3: two servers, retries, passive health on 5xx */
    "listen: [ \"127.0.0.1:LISTEN\" ]\n"
    "upstreams:\n"
    "  app:\n"
    "    servers:\n"
    "      - { address: \"127.0.0.1:UP1\" }\n"
    "      - { address: \"127.0.0.1:UP2\" }\n"
    "    balance: least_conn\n"
    "    retries: 2\n"
    "    keepalive: 2\n"
    "    response_timeout: 3s\n"
    "    passive: { max_fails: 1, fail_timeout: 10s, on_5xx: true }\n"
    "routes: [ { match: { prefix: / }, upstream: app } ]\n",

    /* 4: hashing, access and audit logs, a trusted proxy in front */
    "listen: [ \"127.0.0.1:LISTEN\" ]\n"
    "trusted_proxies: [ \"127.0.0.0/8\", \"192.0.2.0/24\" ]\n"
    "access_log: { path: /dev/null, flush: 10ms }\n"
    "audit_log: { path: /dev/null }\n"
    "upstreams:\n"
    "  app:\n"
    "    servers:\n"
    "      - { address: \"127.0.0.1:UP1\" }\n"
    "      - { address: \"127.0.0.1:UP2\", weight: 3 }\n"
    "    balance: hash\n"
    "    hash_key: \"cookie:session\"\n"
    "  sticky:\n"
    "    servers:\n"
    "      - { address: \"127.0.0.1:UP1\" }\n"
    "      - { address: \"127.0.0.1:UP2\", backup: true }\n"
    "    balance: ip_hash\n"
    "routes:\n"
    "  - { match: { prefix: /admin }, upstream: sticky, audit: true }\n"
    "  - { match: { prefix: / }, upstream: app }\n",

    /* 5: large heads, no keep-alive upstream, weighted with slow start */
    "listen: [ \"127.0.0.1:LISTEN\" ]\n"
    "upstreams:\n"
    "  app:\n"
    "    servers:\n"
    "      - { address: \"127.0.0.1:UP1\", weight: 2 }\n"
    "      - { address: \"127.0.0.1:UP2\", slow_start: 5s }\n"
    "    keepalive: 0\n"
    "    retries: 1\n"
    "routes: [ { match: { prefix: / }, upstream: app } ]\n"
    "limits: { max_header_bytes: 64KiB, max_request_line: 64KiB, max_headers: 1000 }\n",

    /* 6: a server that refuses connections first, header hashing, few
     * headers, every path normalisation option */
    "listen: [ \"127.0.0.1:LISTEN\" ]\n"
    "path_normalization: { merge_slashes: true, forward: original, allow_encoded_slash: true }\n"
    "headers_with_underscores: allow\n"
    "upstreams:\n"
    "  app:\n"
    "    servers:\n"
    "      - { address: \"127.0.0.1:DEAD\" }\n"
    "      - { address: \"127.0.0.1:UP1\" }\n"
    "    balance: hash\n"
    "    hash_key: \"header:X-User\"\n"
    "    retries: 1\n"
    "    keepalive: 1\n"
    "  files:\n"
    "    servers: [ { address: \"127.0.0.1:UP2\" } ]\n"
    "    balance: hash\n"
    "    hash_key: path\n"
    "routes:\n"
    "  - { match: { prefix: /static/ }, upstream: files }\n"
    "  - { match: { host: \"*.example.com\", prefix: / }, upstream: app }\n"
    "  - { match: { prefix: / }, upstream: app }\n"
    "limits: { max_headers: 4, max_body: 1MiB }\n",

    /* 7: the quick start with short timeouts (for the clock records) */
    "listen: [ \"127.0.0.1:LISTEN\" ]\n"
    "upstreams:\n"
    "  app:\n"
    "    servers: [ { address: \"127.0.0.1:UP1\" } ]\n"
    "    connect_timeout: 1s\n"
    "    response_timeout: 2s\n"
    "    idle_timeout: 3s\n"
    "routes: [ { match: { prefix: / }, upstream: app } ]\n"
    "limits: { header_timeout: 1s, idle_timeout: 2s, body_timeout: 1s, send_timeout: 1s,\n"
    "          tunnel_timeout: 3s }\n",

    /* 8: stages: the test stage (tests/stage/test_stage.c: answers from
     * memory, parks and resumes, transforms and watches bodies), headers:
     * rules, trusted proxies, merged slashes; the cache (src/cache/) on
     * /c/ (a namespace, a query key list, stale windows) and /cw/ (writes
     * bump the namespace; cookies stored), with a budget of 1 MiB, objects
     * up to 64 KiB and at most 2 requests waiting on one fetch, so that
     * eviction, the size limit and the waiters' bound are all reachable */
    "listen: [ \"127.0.0.1:LISTEN\" ]\n"
    "upstreams:\n"
    "  app:\n"
    "    servers: [ { address: \"127.0.0.1:UP1\" } ]\n"
    "    response_timeout: 2s\n"
    "trusted_proxies: [ \"127.0.0.0/8\" ]\n"
    "path_normalization: { merge_slashes: true }\n"
    "cache: { memory: 1MiB, max_object: 64KiB, lock_timeout: 1s, max_waiters: 2,\n"
    "         stale_if_error: 30s }\n"
    "routes:\n"
    "  - match: { prefix: /c/ }\n"
    "    upstream: app\n"
    "    cache: { ttl: 10s, namespace: feed, stale_while_revalidate: 5s,\n"
    "             key: { query: [ page, id ] } }\n"
    "  - match: { prefix: /cw/ }\n"
    "    upstream: app\n"
    "    cache: { bump_on_write: [ feed ], allow_set_cookie: true, key: { query: sort } }\n"
    "  - { match: { prefix: /answer/ }, upstream: app }\n"
    "  - { match: { prefix: /wait/ }, upstream: app }\n"
    "  - { match: { prefix: /upper/ }, upstream: app }\n"
    "  - { match: { prefix: /watch/ }, upstream: app }\n"
    "  - { match: { prefix: /bot/ }, upstream: app, challenge: true }\n"
    "  - match: { prefix: /rl/ }\n"
    "    upstream: app\n"
    "    rate_limit: [ { rate: 2/s, burst: 1, name: a, key: [ client_ip, \"header:X-K\" ] },\n"
    "                  { rate: 1/min, action: challenge, name: c },\n"
    "                  { rate: 5/s, action: delay, burst: 2, name: d } ]\n"
    "    login_guard: { max_failures: 2, account: \"form:u\" }\n"
    "  - match: { prefix: / }\n"
    "    upstream: app\n"
    "    headers:\n"
    "      request: { set: { X-Client: \"${client_ip} ${request_id}\" }, remove: [ Cookie ] }\n"
    "      response: { set: { Cache-Control: \"max-age=60\" }, default: { X-A: b },\n"
    "                  remove: [ Server ], add: { X-Route: \"${route} ${host}\" } }\n"
    "challenge: { difficulty: 2 }\n"
    "compression: { min_size: 16 }\n"
    "security_headers: { hide: [ Server ] }\n"
    "limits: { max_header_bytes: 2KiB, max_request_line: 1KiB, max_keys: 256,\n"
    "          max_connections_per_ip: 4 }\n",
};

static const uint64_t advance_ms[12] = {
    1, 10, 100, 500, 1000, 2001, 5000, 10001, 30001, 60001, 120001, 3600000,
};

static struct {
    bool ready;
    bool verbose, check_fds, strict;
    int lsn_client;             /* the harness's clients connect here */
    int lsn_up[2];              /* upstream servers UP1, UP2 */
    int dead;                   /* bound, not listening: DEAD */
    struct conf *conf[NVARIANTS];
    int base_fds;
    char sink[65536];
} G;

struct upc {
    int fd;
    bool eof;                   /* portico closed (or shut) its side */
    uint64_t last_rx;           /* order of the last bytes received from portico */
    char *rx;                   /* FUZZ_PATH_STRICT: everything received, for check_upstream() */
    size_t rx_len, rx_cap;
};

struct run {
    struct proxy *p;
    int cl[MAXCL];              /* the harness's ends of the client connections, or -1 */
    bool cl_eof[MAXCL];         /* portico closed (or shut) its side */
    int ncl, cur;               /* clients opened; the one that plays now */
    int cfd;                    /* cl[cur] */
    bool c_pause;
    bool drained;               /* after D no client connects any more */
    bool u_pause;               /* the servers do not read (record Q) */
    struct upc up[MAXUP];
    int nup;
    uint64_t seq;
    unsigned iters;
};

/* A failed check: say why on stderr and, with FUZZ_PATH_LOG=file, append it
 * there too (in -fork mode libFuzzer keeps the input but not the child's
 * stderr), then abort. */
__attribute__((format(printf, 1, 2), noreturn))
static void fail(const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "fuzz_path: %s\n", msg);
    const char *path = getenv("FUZZ_PATH_LOG");
    FILE *f = path && *path ? fopen(path, "a") : NULL;
    if (f) {
        fprintf(f, "%ld pid %d: %s\n", (long)time(NULL), (int)getpid(), msg);
        fclose(f);
    }
    abort();
}

static void die(const char *what)
{
    fail("%s: %s", what, strerror(errno));
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

static uint16_t bound_port(int fd)
{
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    if (getsockname(fd, (struct sockaddr *)&a, &len) < 0)
        die("getsockname");
    return ntohs(a.sin_port);
}

/* A loopback TCP socket bound to an ephemeral port; listening if backlog > 0. */
static int loopback_socket(int backlog)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket");
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0)
        die("bind");
    if (backlog > 0 && listen(fd, backlog) < 0)
        die("listen");
    return fd;
}

static void replace(char *s, size_t cap, const char *tok, unsigned v)
{
    char num[16];
    snprintf(num, sizeof num, "%u", v);
    size_t tl = strlen(tok), nl = strlen(num);
    for (char *p = strstr(s, tok); p; p = strstr(p + nl, tok)) {
        size_t rest = strlen(p + tl);
        if ((size_t)(p - s) + nl + rest + 1 > cap)
            abort();
        memmove(p + nl, p + tl, rest + 1);
        memcpy(p, num, nl);
    }
}

static void load_confs(void);

static void setup(void)
{
    const char *v = getenv("FUZZ_PATH_VERBOSE");
    G.verbose = v && *v && *v != '0';
    v = getenv("FUZZ_PATH_FDS");
    G.check_fds = v && *v && *v != '0';
    v = getenv("FUZZ_PATH_STRICT");
    G.strict = v && *v && *v != '0';
    if (!G.verbose)
        log_set_level((enum log_level)(LOG_ERROR + 1));
    signal(SIGPIPE, SIG_IGN);
    conf_resolve_names = false;

    /* Socket buffers (accepted sockets inherit the listener's): towards
     * portico big, so that a pipelined burst arrives in one piece; from
     * portico small, so that a client or server that does not read (records
     * P, Q) pushes back after a few KiB, not after megabytes. */
    G.lsn_client = loopback_socket(64);
    setsockopt(G.lsn_client, SOL_SOCKET, SO_RCVBUF, &(int){ 4 << 20 }, sizeof(int));
    setsockopt(G.lsn_client, SOL_SOCKET, SO_SNDBUF, &(int){ 8192 }, sizeof(int));
    for (int i = 0; i < 2; i++) {
        G.lsn_up[i] = loopback_socket(256);
        setsockopt(G.lsn_up[i], SOL_SOCKET, SO_RCVBUF, &(int){ 8192 }, sizeof(int));
    }
    G.dead = loopback_socket(0);
    load_confs();
    G.base_fds = count_fds();
    G.ready = true;
}

/* The configurations, with a port for `listen:` that was free a moment ago
 * (portico refuses an address another process serves: when a process on
 * the machine took it since, this is called again for a new one). */
static void load_confs(void)
{
    int tmp = loopback_socket(0);
    unsigned listen_port = bound_port(tmp);
    close(tmp);
    for (int i = 0; i < NVARIANTS; i++) {
        if (G.conf[i])
            conf_unref(G.conf[i]);
        char text[4096];
        snprintf(text, sizeof text, "%s", variants[i]);
        replace(text, sizeof text, "LISTEN", listen_port);
        replace(text, sizeof text, "UP1", bound_port(G.lsn_up[0]));
        replace(text, sizeof text, "UP2", bound_port(G.lsn_up[1]));
        replace(text, sizeof text, "DEAD", bound_port(G.dead));
        char err[1024];
        char name[32];
        snprintf(name, sizeof name, "variant%d.yaml", i);
        G.conf[i] = conf_load_string(name, text, strlen(text), err, sizeof err);
        if (!G.conf[i]) {
            fprintf(stderr, "fuzz_path: %s\n", err);
            abort();
        }
        G.conf[i]->workers = 1;
    }
}

/* ---- the peers ---- */

static void up_close(struct upc *u, bool rst)
{
    if (u->fd < 0)
        return;
    if (rst) {
        struct linger l = { 1, 0 };
        setsockopt(u->fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    }
    close(u->fd);
    u->fd = -1;
}

#define RX_MAX (8u << 20)

static void keep_rx(struct upc *u, const char *p, size_t n)
{
    if (u->rx_len + n > RX_MAX)
        n = RX_MAX - u->rx_len;
    if (u->rx_len + n > u->rx_cap) {
        size_t cap = u->rx_cap ? u->rx_cap : 4096;
        while (cap < u->rx_len + n)
            cap *= 2;
        char *q = realloc(u->rx, cap);
        if (!q)
            abort();
        u->rx = q;
        u->rx_cap = cap;
    }
    memcpy(u->rx + u->rx_len, p, n);
    u->rx_len += n;
}

/* FUZZ_PATH_STRICT: what portico sent on an upstream connection is a
 * sequence of well-formed requests, each framed as it says (no bytes that a
 * server could read as a smuggled request). The last one may be cut short
 * (the connection was closed mid-request); a tunnel's bytes are not HTTP. */
static void check_upstream(const struct upc *u, int idx)
{
    static struct http_header hdrs[1000];
    static uint8_t kinds[1000];
    const struct http_limits lim = { 1u << 20, 4u << 20, 1000 };
    size_t pos = 0;
    const char *why = NULL;
    while (pos < u->rx_len && !why) {
        struct http_request r;
        r.m.headers = hdrs;
        r.m.kinds = kinds;
        int n = http_parse_request(u->rx + pos, u->rx_len - pos, &r, &lim);
        if (n == HTTP_AGAIN)
            return;
        if (n < 0) {
            why = r.m.error;
            break;
        }
        pos += (size_t)n;
        if (r.m.conn_upgrade && r.m.has_upgrade)
            return;             /* may have become a tunnel */
        if (r.m.body == HTTP_BODY_LENGTH) {
            if (r.m.content_length > u->rx_len - pos)
                return;
            pos += r.m.content_length;
        } else if (r.m.body == HTTP_BODY_CHUNKED) {
            struct http_chunked c;
            http_chunked_init(&c);
            while (pos < u->rx_len && !http_chunked_done(&c)) {
                size_t off, dlen;
                long k = http_chunked_feed(&c, u->rx + pos, u->rx_len - pos, &off, &dlen);
                if (k < 0) {
                    why = "invalid chunked body";
                    break;
                }
                pos += (size_t)k;
            }
            if (!why && !http_chunked_done(&c))
                return;
        }
    }
    if (!why)
        return;
    fail("upstream %d: portico sent an invalid request at byte %zu: %s\n%.*s", idx, pos, why,
         (int)(u->rx_len - pos < 400 ? u->rx_len - pos : 400), u->rx + pos);
}

/* Accept portico's upstream connections, read and discard what it sends
 * both peers. True if anything happened. */
static bool service(struct run *r)
{
    bool did = false;
    for (int i = 0; i < 2; i++) {
        for (;;) {
            int fd = accept4(G.lsn_up[i], NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0)
                break;
            did = true;
            if (r->nup == MAXUP) {
                close(fd);
                continue;
            }
            if (G.verbose)
                fprintf(stderr, "fuzz_path: upstream %d accepted (UP%d)\n", r->nup, i + 1);
            r->up[r->nup++] = (struct upc){ .fd = fd };
        }
    }
    for (int i = 0; i < r->nup; i++) {
        struct upc *u = &r->up[i];
        while (u->fd >= 0 && !u->eof && !r->u_pause) {
            ssize_t n = read(u->fd, G.sink, sizeof G.sink);
            if (n > 0) {
                if (G.verbose)
                    fprintf(stderr, "fuzz_path: upstream %d got %zd bytes: %.*s\n", i, n,
                            (int)(n < 300 ? n : 300), G.sink);
                u->last_rx = ++r->seq;
                if (G.strict)
                    keep_rx(u, G.sink, (size_t)n);
                did = true;
                continue;
            }
            if (n < 0 && (errno == EAGAIN || errno == EINTR))
                break;
            if (G.verbose)
                fprintf(stderr, "fuzz_path: upstream %d: portico closed\n", i);
            u->eof = true;          /* closed or reset */
            did = true;
        }
    }
    for (int i = 0; i < r->ncl; i++) {
        while (r->cl[i] >= 0 && !r->c_pause && !r->cl_eof[i]) {
            ssize_t n = read(r->cl[i], G.sink, sizeof G.sink);
            if (n > 0) {
                if (G.verbose)
                    fprintf(stderr, "fuzz_path: client %d got %zd bytes: %.*s\n", i, n,
                            (int)(n < 300 ? n : 300), G.sink);
                did = true;
                continue;
            }
            if (n < 0 && (errno == EAGAIN || errno == EINTR))
                break;
            if (G.verbose)
                fprintf(stderr, "fuzz_path: client %d: portico closed\n", i);
            r->cl_eof[i] = true;
            did = true;
        }
    }
    return did;
}

/* Run the loop until nothing moves on either side (bounded). */
static void pump(struct run *r)
{
    int idle = 0;
    for (int i = 0; i < PUMP_ITERS && r->iters < INPUT_ITERS; i++, r->iters++) {
        int n = proxy_inline_run(r->p, 0);
        bool did = service(r);
        if (n <= 0 && !did) {
            if (++idle >= 2)
                break;
        } else {
            idle = 0;
        }
    }
}

/* The upstream connection that plays the server now: the open one that most
 * recently received bytes, else the newest open one. */
static struct upc *current_up(struct run *r)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        struct upc *best = NULL;
        for (int i = 0; i < r->nup; i++) {
            struct upc *u = &r->up[i];
            if (u->fd < 0)
                continue;
            if (!best || u->last_rx > best->last_rx ||
                (u->last_rx == best->last_rx && (!u->eof || best->eof)))
                best = u;
        }
        if (best)
            return best;
        pump(r);
    }
    return NULL;
}

/* A new client connection, which plays from now on: a loopback pair whose
 * far end the proxy adopts. */
static void client_open(struct run *r)
{
    if (r->ncl == MAXCL)
        return;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket");
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &(int){ 4 << 20 }, sizeof(int));
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &(int){ 8192 }, sizeof(int));
    struct sockaddr_in a;
    socklen_t alen = sizeof a;
    getsockname(G.lsn_client, (struct sockaddr *)&a, &alen);
    /* non-blocking: a signal (libFuzzer's timers) cannot cut it short; on a
     * loaded machine the handshake may finish after connect() returns */
    if (connect(fd, (struct sockaddr *)&a, alen) < 0 && errno != EINPROGRESS && errno != EINTR)
        die("connect");
    struct pollfd pw = { .fd = fd, .events = POLLOUT };
    int err = 0;
    socklen_t elen = sizeof err;
    if (poll(&pw, 1, 5000) != 1 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0 || err) {
        errno = err ? err : ETIMEDOUT;
        die("connect");
    }
    struct sockaddr_in peer;
    socklen_t plen = sizeof peer;
    int sfd = -1;
    struct pollfd pr = { .fd = G.lsn_client, .events = POLLIN };
    for (int i = 0; i < 50 && sfd < 0; i++) {
        sfd = accept4(G.lsn_client, (struct sockaddr *)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (sfd < 0)
            poll(&pr, 1, 100);
    }
    if (sfd < 0)
        die("accept");
    if (proxy_inline_client(r->p, sfd, (struct sockaddr *)&peer, plen) < 0)
        die("proxy_inline_client");
    r->cur = r->ncl++;
    r->cl[r->cur] = r->cfd = fd;
    r->cl_eof[r->cur] = false;
}

static void send_bytes(struct run *r, int fd, const uint8_t *d, size_t n)
{
    size_t off = 0;
    int stalls = 0;
    while (off < n) {
        ssize_t w = send(fd, d + off, n - off, MSG_NOSIGNAL);
        if (w > 0) {
            off += (size_t)w;
            stalls = 0;
            continue;
        }
        if (w < 0 && (errno == EAGAIN || errno == EINTR) && ++stalls <= 8) {
            pump(r);
            continue;
        }
        break;                  /* the other side is gone, or it does not read */
    }
}

static void record(struct run *r, uint8_t op, const uint8_t *d, size_t n)
{
    if (G.verbose)
        fprintf(stderr, "fuzz_path: record %c, %zu bytes\n", op, n);
    struct upc *u;
    switch (op) {
    case 'C':
        if (r->cfd >= 0 && n)
            send_bytes(r, r->cfd, d, n);
        break;
    case 'U':
        if (n && (u = current_up(r)))
            send_bytes(r, u->fd, d, n);
        break;
    case 'N':
    case 'R':
        if ((u = current_up(r)))
            up_close(u, op == 'R');
        break;
    case 'Z':
        if ((u = current_up(r)))
            shutdown(u->fd, SHUT_WR);
        break;
    case 'H':
        if (r->cfd >= 0)
            shutdown(r->cfd, SHUT_WR);
        break;
    case 'X':
        if (r->cfd >= 0)
            close(r->cfd);
        r->cl[r->cur] = r->cfd = -1;
        break;
    case 'K':
        if (!r->drained)        /* a draining proxy has closed its listeners */
            client_open(r);
        break;
    case 'D':
        proxy_shutdown(r->p);
        r->drained = true;
        break;
    case 'P':
        r->c_pause = !r->c_pause;
        break;
    case 'Q':
        r->u_pause = !r->u_pause;
        break;
    case 'T':
        proxy_inline_advance(r->p, n ? advance_ms[d[0] % 12] : 1000);
        break;
    default:
        break;
    }
    pump(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!G.ready)
        setup();
    if (size < 1)
        return 0;
    struct run r = { .cfd = -1, .cl = { -1, -1, -1, -1 } };
    char err[512];
    unsigned variant = data[0] % NVARIANTS;
    r.p = proxy_inline_new(G.conf[variant], err, sizeof err);
    for (int tries = 0; !r.p && strstr(err, "in use") && tries < 5; tries++) {
        load_confs();
        r.p = proxy_inline_new(G.conf[variant], err, sizeof err);
    }
    if (!r.p)
        fail("proxy_inline_new: %s", err);

    client_open(&r);

    /* the records */
    size_t i = 1;
    uint8_t op = 'C';
    while (i <= size) {
        size_t j = i;
        while (j + 2 < size && !(data[j] == 0xfe && data[j + 1] == 0xff))
            j++;
        size_t end = j + 2 < size ? j : size;
        record(&r, op, data + i, end - i);
        if (end == size)
            break;
        op = data[end + 2];
        i = end + 3;
    }

    /* the end: servers close, then the client; then every timer is due
     * (with loop iterations of its own, whatever the records used) */
    if (G.verbose)
        fprintf(stderr, "fuzz_path: the end, after %u loop iterations\n", r.iters);
    r.c_pause = r.u_pause = false;
    r.iters = INPUT_ITERS - 12 * PUMP_ITERS < r.iters ? INPUT_ITERS - 12 * PUMP_ITERS : r.iters;
    for (int round = 0; round < 4 && proxy_inline_nclients(r.p); round++) {
        /* a retry may have opened another connection, with its own timer */
        for (int k = 0; k < r.nup; k++)
            up_close(&r.up[k], false);
        pump(&r);
        for (int k = 0; k < r.ncl; k++) {
            if (r.cl[k] >= 0)
                close(r.cl[k]);
            r.cl[k] = -1;
        }
        r.cfd = -1;
        pump(&r);
        proxy_inline_advance(r.p, 3600000);
        pump(&r);
    }
    if (G.strict && proxy_inline_nclients(r.p)) {
        fail("%u client connection(s) still open at the end", proxy_inline_nclients(r.p));
    }
    proxy_inline_free(r.p);
    /* the cache's store is the process's and outlives the proxy: empty it,
     * so that no input is answered from what an earlier one stored */
    if (cache_get())
        cache_purge_path(cache_get(), NULL, 0, "/", 1, true);
    for (int k = 0; k < r.ncl; k++)
        if (r.cl[k] >= 0)
            close(r.cl[k]);
    for (int k = 0; k < r.nup; k++) {
        up_close(&r.up[k], false);
        if (G.strict)
            check_upstream(&r.up[k], k);
        free(r.up[k].rx);
    }
    for (int k = 0; k < 2; k++) {      /* connections made after the last service() */
        int fd;
        while ((fd = accept4(G.lsn_up[k], NULL, NULL, SOCK_CLOEXEC)) >= 0)
            close(fd);
    }
    if (G.check_fds) {
        int n = count_fds();
        if (n != G.base_fds) {
            char list[1500];
            size_t len = 0;
            DIR *d = opendir("/proc/self/fd");
            struct dirent *e;
            while (d && (e = readdir(d)) && len + 300 < sizeof list) {
                char path[300], target[256];
                snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
                ssize_t k = readlink(path, target, sizeof target - 1);
                if (e->d_name[0] != '.' && k > 0)
                    len += (size_t)snprintf(list + len, sizeof list - len, " %s:%.*s", e->d_name,
                                            (int)k, target);
            }
            if (d)
                closedir(d);
            list[len] = '\0';
            fail("%d descriptors open after the input, %d before:%s", n, G.base_fds, list);
        }
    }
    return 0;
}
