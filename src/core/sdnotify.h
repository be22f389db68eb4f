/* core/sdnotify.h: the systemd readiness protocol (sd_notify(3)), without
 * libsystemd: one datagram to the AF_UNIX socket named by $NOTIFY_SOCKET.
 *
 * A no-op when the variable is unset (not started by systemd with
 * Type=notify). Safe from any thread; failures are ignored, as systemd's own
 * sd_notify() callers do: readiness reporting must never stop the service.
 */
#ifndef PORTICO_CORE_SDNOTIFY_H
#define PORTICO_CORE_SDNOTIFY_H

/* Send `state`, e.g. "READY=1" or "RELOADING=1\nMONOTONIC_USEC=...".
 * 1 if sent, 0 without $NOTIFY_SOCKET, -1 on error. */
int sd_notify_send(const char *state);

/* "RELOADING=1" with the MONOTONIC_USEC systemd >= 253 asks for. */
int sd_notify_reloading(void);

#endif
