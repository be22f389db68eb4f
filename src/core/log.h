/* core/log.h: the diagnostic log (stderr), one line per event.
 *
 * Lines look like `2026-11-22T03:40:00.123Z warn upstream app 127.0.0.1:9001: connect: refused`.
 * Safe from any thread; a line is written with one write(2) so lines never interleave.
 */
#ifndef PORTICO_CORE_LOG_H
#define PORTICO_CORE_LOG_H

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

void log_set_level(enum log_level lvl);
void log_msg(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

#endif
