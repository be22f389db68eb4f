/* main.c: command line, signals, start and stop. */
#include "admin/admin.h"
#include "conf/conf.h"
#include "core/log.h"
#include "core/sdnotify.h"
#include "pg/pg.h"
#include "proxy/proxy.h"

#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef PORTICO_VERSION
#define PORTICO_VERSION "dev"
#endif

static void usage(FILE *f)
{
    fprintf(f,
            "usage: portico [-t] -c FILE\n"
            "  -c, --config FILE   configuration file (YAML)\n"
            "  -t, --test          validate the configuration and exit (0: valid, 1: not)\n"
            "  -v, --version       print the version and exit\n"
            "  -h, --help          this help\n"
            "Signals: SIGTERM/SIGINT stop gracefully, SIGHUP reloads the configuration,\n"
            "SIGUSR1 reopens the log files.\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "config", required_argument, NULL, 'c' },
        { "test", no_argument, NULL, 't' },
        { "version", no_argument, NULL, 'v' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *path = NULL;
    bool test_only = false;
    int ch;
    while ((ch = getopt_long(argc, argv, "c:tvh", opts, NULL)) != -1) {
        switch (ch) {
        case 'c': path = optarg; break;
        case 't': test_only = true; break;
        case 'v': printf("portico %s\n", PORTICO_VERSION); return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!path || optind != argc) {
        usage(stderr);
        return 2;
    }

    char err[1024];
    struct conf *conf = conf_load(path, err, sizeof err);
    if (!conf) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    if (test_only) {
        printf("%s: configuration is valid\n", path);
        conf_unref(conf);
        return 0;
    }

    /* Every thread inherits this mask; only sigwait() below sees the signals. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* From here on no thread writes to stderr itself: lines go through the
     * log's ring, so a stderr nobody reads can never stall a worker. */
    log_set_level(conf->log_level);
    log_start();

    struct admin *admin = NULL;
    if (conf->admin_enabled && !(admin = admin_open(conf, err, sizeof err))) {
        log_error("%s", err);
        conf_unref(conf);
        return 1;
    }
    struct proxy *p = proxy_start(conf, err, sizeof err);
    if (!p) {
        log_error("%s", err);
        admin_stop(admin);
        conf_unref(conf);
        return 1;
    }
    struct pg *pg = NULL;
    if (conf->pg.enabled && !(pg = pg_start(conf, err, sizeof err))) {
        log_error("%s", err);
        admin_stop(admin);
        proxy_shutdown(p);
        proxy_wait(p);
        conf_unref(conf);
        return 1;
    }
    if (admin && admin_run(admin, p, err, sizeof err) < 0) {
        log_error("%s", err);
        admin_stop(admin);
        pg_stop(pg);
        proxy_shutdown(p);
        proxy_wait(p);
        conf_unref(conf);
        return 1;
    }
    log_info("portico %s: %u workers, listening on %s%s%s%s", PORTICO_VERSION, conf->workers,
             conf->listen[0].text, conf->nlisten > 1 ? " and more" : "",
             admin ? ", admin on " : "", admin ? conf->admin_listen.text : "");

    sd_notify_send("READY=1\nSTATUS=serving");

    for (;;) {
        int sig = 0;
        if (sigwait(&set, &sig) != 0)
            continue;
        if (sig == SIGTERM || sig == SIGINT) {
            log_info("signal %d: stopping gracefully", sig);
            break;
        }
        if (sig == SIGUSR1) {
            log_info("SIGUSR1: reopening the access log");
            proxy_reopen_logs(p);
            continue;
        }
        if (sig == SIGHUP) {
            log_info("SIGHUP: reloading %s", path);
            if (proxy_reload(p, err, sizeof err) == 0) {   /* logs, and tells systemd, either way */
                struct proxy_gen *g = proxy_gen_get(p);
                log_set_level(proxy_gen_conf(g)->log_level);
                proxy_gen_put(g);
                struct conf *nc = conf_load(path, err, sizeof err);
                if (nc) {
                    pg_reload(pg, nc);          /* logs what it could not apply */
                    conf_unref(nc);
                }
            }
            continue;
        }
        log_info("signal %d ignored", sig);
    }
    sd_notify_send("STOPPING=1");
    admin_stop(admin);
    pg_stop(pg);
    proxy_shutdown(p);
    proxy_wait(p);
    conf_unref(conf);
    log_info("stopped");
    return 0;
}
