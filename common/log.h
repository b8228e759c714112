/*
 * log: the daemon's one way to say something, in the shape of relayd's log.c.
 *
 * Lines go to stderr; under systemd (JOURNAL_STREAM set) each line carries a
 * "<N>" priority prefix that journald understands.  Secrets are redacted here,
 * at the boundary: any registered secret that appears in a message is
 * replaced by "***" before the line is written, so a careless format string
 * cannot leak a client secret or a bearer token.
 *
 * Only the daemon layer calls the logging functions; common/ modules return
 * errors instead.  Thread-safe: one write(2) per line.
 */
#ifndef KD_LOG_H
#define KD_LOG_H

#include <stdarg.h>
#include <stddef.h>

enum log_level { LOG_LVL_ERROR = 0, LOG_LVL_WARN, LOG_LVL_INFO, LOG_LVL_DEBUG };

/* Sets the program name and the threshold; reads JOURNAL_STREAM once. */
void log_init(const char *progname, enum log_level level);
void log_setlevel(enum log_level level);
enum log_level log_getlevel(void);

/* "error|warn|info|debug" to a level; returns -1 on an unknown name. */
int log_level_parse(const char *name, enum log_level *out);
const char *log_level_name(enum log_level level);

/*
 * Registers a string that must never be printed (a secret, a token).  Strings
 * shorter than 4 bytes are ignored.  The log keeps its own copy; the oldest
 * registration is dropped once LOG_MAX_SECRETS are held, so rotating tokens
 * do not grow it.  log_forget_secret() drops one early.
 */
#define LOG_MAX_SECRETS 16
void log_add_secret(const char *secret);
void log_forget_secret(const char *secret);

/*
 * Formats into out (always NUL-terminated) with every registered secret
 * replaced by "***".  Exposed for the tests and for bodies that may echo
 * configuration.
 */
void log_redact(char *out, size_t outlen, const char *in);

/*
 * The last LOG_RECENT warnings and errors logged, redacted as written: fn gets each, newest first, with its
 * wall-clock time, under the log's lock (fn must not log).
 */
#define LOG_RECENT 10
#define LOG_RECENT_LEN 256
typedef void (*log_recent_fn)(void *arg, double at, enum log_level level, const char *text);
void log_recent(log_recent_fn fn, void *arg);

#define LOG_PRINTF(a, b) __attribute__((format(printf, a, b)))

void log_warn(const char *fmt, ...) LOG_PRINTF(1, 2); /* appends strerror(errno) */
void log_warnx(const char *fmt, ...) LOG_PRINTF(1, 2);
void log_info(const char *fmt, ...) LOG_PRINTF(1, 2);
void log_debug(const char *fmt, ...) LOG_PRINTF(1, 2);
void log_error(const char *fmt, ...) LOG_PRINTF(1, 2);
void log_vlog(enum log_level level, const char *fmt, va_list ap) LOG_PRINTF(2, 0);
__attribute__((noreturn)) void fatal(const char *fmt, ...) LOG_PRINTF(1, 2);
__attribute__((noreturn)) void fatalx(const char *fmt, ...) LOG_PRINTF(1, 2);

#endif
