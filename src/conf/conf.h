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

struct conf_addr {
    struct sockaddr_storage ss;
    socklen_t len;
    char text[80];              /* as written: "127.0.0.1:8080", "[::1]:80", "app:9000" */
};

struct conf_server {
    struct conf_addr addr;
    uint32_t weight;            /* >= 1 */
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
};

struct conf_route {
    char *host;                 /* NULL: any; "*.example.com": suffix; else exact (lowercase) */
    char *prefix;               /* path prefix, "/" by default */
    size_t host_len, prefix_len;
    struct conf_upstream *upstream;
};

struct conf_limits {
    uint64_t header_timeout;    /* ms to receive a whole request head */
    uint64_t idle_timeout;      /* ms a keep-alive client may sit idle */
    uint64_t body_timeout;      /* ms between two reads of a request body */
    uint64_t send_timeout;      /* ms between two writes to a slow client */
    uint32_t max_header_bytes;
    uint32_t max_headers;
    uint32_t max_request_line;
    uint64_t max_body;
    uint32_t max_connections;   /* per process */
};

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
};

/* Load and validate. On error returns NULL and writes a message to err. */
struct conf *conf_load(const char *path, char *err, size_t errlen);
/* Same, from a string in memory; `name` stands for the file in messages. */
struct conf *conf_load_string(const char *name, const char *text, size_t len,
                              char *err, size_t errlen);
struct conf *conf_ref(struct conf *c);
void conf_unref(struct conf *c);

/* Parse "host:port", "[v6]:port" or "*:port" (resolving host names). */
bool conf_parse_addr(const char *s, struct conf_addr *out, char *err, size_t errlen);
/* Value parsers shared with the tests: 0 on success, -1 if malformed. */
int conf_parse_duration(const char *s, uint64_t *ms);
int conf_parse_size(const char *s, uint64_t *bytes);

#endif
