/* admin/admin.h: the admin listener: liveness, readiness, Prometheus
 * metrics and a JSON status, on its own address (default 127.0.0.1:9901).
 *
 * It runs in one thread of its own with an event loop (core/loop.h): many
 * connections at once, keep-alive, per-connection header, idle and send
 * timeouts (admin.*_timeout), request heads of at most 8 KiB, so no client
 * can stall /health. POST /reload runs proxy_reload() in a helper thread
 * (it waits for every worker to switch) and is answered when it returns.
 * It is for probes, scrapers and operators, never on the request path. `GET /health` and `GET /ready` are
 * open (Kubernetes probes cannot send a token); everything else needs
 * `Authorization: Bearer <token>` when admin.token_file is set.
 */
#ifndef PORTICO_ADMIN_H
#define PORTICO_ADMIN_H

#include <stddef.h>

struct proxy;
struct admin;

struct conf;

/* Bind the admin address (before the proxy's listeners, so that once the
 * proxy accepts, the admin port does too); NULL with err set on failure. */
struct admin *admin_open(const struct conf *c, char *err, size_t errlen);
/* Start answering, for the running proxy. 0, or -1 with err set. */
int admin_run(struct admin *a, struct proxy *p, char *err, size_t errlen);
/* Stop the thread (if running) and close the listener. NULL is fine. */
void admin_stop(struct admin *a);

#endif
