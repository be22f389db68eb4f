/* proxy/proxy.h: the HTTP/1.1 reverse proxy: workers, client connections,
 * routing, upstream connections and their keep-alive pools.
 *
 * proxy_start() binds every listener (SO_REUSEPORT, one socket per worker per
 * address) in the calling thread, so that an address in use is reported
 * before anything runs, then starts `conf->workers` threads. Each worker owns
 * an event loop, its listeners, its client connections and its upstream
 * keep-alive pools; workers share nothing on the request path.
 */
#ifndef PORTICO_PROXY_H
#define PORTICO_PROXY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>

struct conf;
struct proxy;

/* Start serving. Takes a reference to conf. NULL with err filled on failure. */
struct proxy *proxy_start(struct conf *conf, char *err, size_t errlen);
/* Graceful stop (thread-safe, callable from a signal-handling thread): stop
 * accepting, close idle connections, let requests in flight finish, and
 * force-close whatever remains after conf->shutdown_timeout. */
void proxy_shutdown(struct proxy *p);
/* Wait for the workers to exit and free everything. */
void proxy_wait(struct proxy *p);

/* Reopen the access and audit log files (SIGUSR1, after rotation). Thread-safe. */
void proxy_reopen_logs(struct proxy *p);

/* Reload (SIGHUP, POST /reload): load the configuration file again, validate
 * it, build a new generation (upstream groups that keep their servers'
 * health by name, the access log, sockets for new listen addresses) and
 * switch every worker to it. New requests use the new configuration as soon
 * as this returns; requests in flight finish on the one they started on;
 * listeners whose address stays keep their sockets (no connection is
 * refused), new addresses are bound, removed ones closed. On any error
 * (invalid file, port in use, out of memory) nothing changes: -1 with err
 * set, logged. Some keys take a restart and are kept as they are, with a
 * warning: workers, admin.listen, and a larger limits.max_header_bytes
 * (that one refuses the reload). Serialised; call from any thread but a
 * worker. 0 on success. */
int proxy_reload(struct proxy *p, char *err, size_t errlen);

struct proxy_reload_stats {
    uint64_t generation;        /* the running configuration: 1 at start, +1 per reload */
    uint64_t ok, failed;        /* reloads since start */
    time_t loaded_at;           /* when the running configuration was loaded */
    time_t last_attempt;        /* 0: no reload yet */
    bool last_ok;
    char last_error[512];
};
void proxy_reload_stats(struct proxy *p, struct proxy_reload_stats *out);

/* For the admin listener (any thread, until proxy_wait()). A generation is
 * the running configuration with its upstream groups; hold it with
 * proxy_gen_get() for as long as you use what it points to. */
struct obs_worker;
struct balance_group;
struct proxy_gen;
struct proxy_gen *proxy_gen_get(struct proxy *p);
void proxy_gen_put(struct proxy_gen *g);
const struct conf *proxy_gen_conf(const struct proxy_gen *g);
struct balance_group *proxy_gen_group(const struct proxy_gen *g, uint32_t upstream);
/* Lines the access and audit log writers dropped because they fell behind. */
void proxy_gen_log_drops(const struct proxy_gen *g, uint64_t *access, uint64_t *audit);
/* Each worker's metrics, locked against a reload replacing them: call
 * proxy_obs_unlock() when done reading (do not call into the proxy between). */
size_t proxy_obs_lock(struct proxy *p, struct obs_worker **out, size_t max);
void proxy_obs_unlock(struct proxy *p);

/* Test hook (tests/fuzz/fuzz_path.c): a proxy with one worker whose loop is
 * not run in a thread but one iteration at a time by the caller, so that a
 * whole exchange runs deterministically in one thread. No listener and no
 * health checker: clients are adopted from connected sockets. */
struct proxy *proxy_inline_new(struct conf *conf, char *err, size_t errlen);
/* Adopt fd (connected, non-blocking; closed by the proxy from now on, except
 * when this fails) as a client whose address is peer. 0 or -errno. */
int proxy_inline_client(struct proxy *p, int fd, const struct sockaddr *peer,
                        socklen_t len);
/* One loop iteration, waiting at most timeout_ms for events (0: poll).
 * Returns the number of events and timers handled, or -errno. */
int proxy_inline_run(struct proxy *p, int timeout_ms);
/* Move the worker's clock forward (timeouts due by then fire at the next run). */
void proxy_inline_advance(struct proxy *p, uint64_t ms);
/* Client connections still open. */
uint32_t proxy_inline_nclients(const struct proxy *p);
/* Close every connection and free everything. */
void proxy_inline_free(struct proxy *p);

#endif
