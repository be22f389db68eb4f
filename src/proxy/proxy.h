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

#include <stddef.h>
#include <stdint.h>

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

/* Reopen the access log file (SIGUSR1, after rotation). Thread-safe. */
void proxy_reopen_logs(struct proxy *p);

/* For the admin listener (any thread, until proxy_wait()): the running
 * configuration, each worker's metrics, and each upstream's group. */
struct obs_worker;
struct balance_group;
const struct conf *proxy_conf(const struct proxy *p);
size_t proxy_obs(const struct proxy *p, struct obs_worker **out, size_t max);
struct balance_group *proxy_group(const struct proxy *p, uint32_t upstream);

#endif
