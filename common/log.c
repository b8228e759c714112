/*
 * log: relayd-style logging to stderr with secret redaction at the boundary.
 *
 * Every line is formatted on the stack and handed to the kernel in a single
 * write(2), so lines from concurrent threads never interleave.  Under systemd
 * (JOURNAL_STREAM set) a "<N>" syslog priority replaces the program name, so
 * journald files each line at the right priority.
 *
 * The secret registry owns copies of the strings it protects; a mutex guards
 * it because tokens are added and forgotten by the refresh thread while
 * request threads log.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

/* One line as written: prefix, message, newline. */
#define LOG_LINE_MAX 4096
/*
 * The message is formatted into a larger buffer than the line so that a
 * secret straddling the line's end is still whole when it is redacted.
 */
#define LOG_MSG_MAX (2 * LOG_LINE_MAX)
#define LOG_SECRET_MIN 4
#define LOG_REDACTED "***"

struct log_secret {
	char *s;
	size_t len;
};

static char log_progname[64] = "kaleidod";
static int log_journal;
static int log_level = LOG_LVL_INFO;

static pthread_mutex_t log_mtx = PTHREAD_MUTEX_INITIALIZER;
static struct log_secret log_secrets[LOG_MAX_SECRETS];
static int log_nsecrets;

/* The last warnings and errors, redacted, for the status page. */
static struct {
	time_t at;
	enum log_level level;
	char text[LOG_RECENT_LEN];
} log_recent_ring[LOG_RECENT];
static unsigned long long log_recent_next; /* under log_mtx */

static const char *const level_names[] = { "error", "warn", "info", "debug" };
/* The word on the line; "warning" reads better there than the config name. */
static const char *const level_words[] = { "error", "warning", "info", "debug" };
static const int level_prio[] = { 3, 4, 6, 7 };

void log_init(const char *progname, enum log_level level)
{
	const char *js = getenv("JOURNAL_STREAM");

	if (progname != NULL && *progname != '\0')
		snprintf(log_progname, sizeof(log_progname), "%s", progname);
	log_journal = js != NULL && *js != '\0';
	log_setlevel(level);
}

void log_setlevel(enum log_level level)
{
	if (level > LOG_LVL_DEBUG)
		level = LOG_LVL_DEBUG;
	__atomic_store_n(&log_level, (int)level, __ATOMIC_RELAXED);
}

enum log_level log_getlevel(void)
{
	return (enum log_level)__atomic_load_n(&log_level, __ATOMIC_RELAXED);
}

int log_level_parse(const char *name, enum log_level *out)
{
	int i;

	if (name == NULL)
		return -1;
	for (i = 0; i <= LOG_LVL_DEBUG; i++) {
		if (strcasecmp(name, level_names[i]) == 0) {
			*out = (enum log_level)i;
			return 0;
		}
	}
	/* syslog's spelling, which people type out of habit */
	if (strcasecmp(name, "warning") == 0) {
		*out = LOG_LVL_WARN;
		return 0;
	}
	return -1;
}

const char *log_level_name(enum log_level level)
{
	if ((int)level < 0 || level > LOG_LVL_DEBUG)
		return "unknown";
	return level_names[level];
}

static void secret_drop(int i)
{
	explicit_bzero(log_secrets[i].s, log_secrets[i].len);
	free(log_secrets[i].s);
	memmove(&log_secrets[i], &log_secrets[i + 1],
		(size_t)(log_nsecrets - i - 1) * sizeof(log_secrets[0]));
	log_nsecrets--;
	log_secrets[log_nsecrets].s = NULL;
	log_secrets[log_nsecrets].len = 0;
}

static int secret_find(const char *secret, size_t len)
{
	int i;

	for (i = 0; i < log_nsecrets; i++)
		if (log_secrets[i].len == len && memcmp(log_secrets[i].s, secret, len) == 0)
			return i;
	return -1;
}

void log_add_secret(const char *secret)
{
	size_t len;
	char *copy;
	int i;

	if (secret == NULL)
		return;
	len = strlen(secret);
	if (len < LOG_SECRET_MIN)
		return;
	copy = strdup(secret);
	/*
	 * Carrying on without the copy would let the secret reach the log; a
	 * process that cannot allocate a few bytes is beyond saving anyway.
	 */
	if (copy == NULL)
		abort();

	pthread_mutex_lock(&log_mtx);
	/* Registered again: it becomes the newest, so eviction by age never
	 * drops the secret in use (a SIGHUP back to an older one, say). */
	if ((i = secret_find(secret, len)) >= 0)
		secret_drop(i);
	if (log_nsecrets == LOG_MAX_SECRETS)
		secret_drop(0);
	log_secrets[log_nsecrets].s = copy;
	log_secrets[log_nsecrets].len = len;
	log_nsecrets++;
	pthread_mutex_unlock(&log_mtx);
}

void log_forget_secret(const char *secret)
{
	int i;

	if (secret == NULL)
		return;
	pthread_mutex_lock(&log_mtx);
	i = secret_find(secret, strlen(secret));
	if (i >= 0)
		secret_drop(i);
	pthread_mutex_unlock(&log_mtx);
}

/*
 * Caller holds log_mtx.  A character is hidden when any occurrence of any
 * secret covers it, so overlapping or adjacent occurrences (of one secret or
 * of two) collapse into a single "***" and no fragment survives between them.
 */
static void redact_locked(char *out, size_t outlen, const char *in)
{
	size_t i, o = 0, n = strlen(in), covered = 0;
	int k, hiding = 0;

	if (outlen == 0)
		return;
	for (i = 0; i < n; i++) {
		for (k = 0; k < log_nsecrets; k++) {
			const struct log_secret *s = &log_secrets[k];

			if (i + s->len > covered && s->len <= n - i &&
			    memcmp(in + i, s->s, s->len) == 0)
				covered = i + s->len;
		}
		if (i < covered) {
			if (!hiding) {
				if (o + sizeof(LOG_REDACTED) > outlen)
					break;
				memcpy(out + o, LOG_REDACTED, sizeof(LOG_REDACTED) - 1);
				o += sizeof(LOG_REDACTED) - 1;
				hiding = 1;
			}
			continue;
		}
		hiding = 0;
		if (o + 1 >= outlen)
			break;
		out[o++] = in[i];
	}
	out[o] = '\0';
}

void log_redact(char *out, size_t outlen, const char *in)
{
	pthread_mutex_lock(&log_mtx);
	redact_locked(out, outlen, in);
	pthread_mutex_unlock(&log_mtx);
}

/*
 * Formats, redacts and writes one line.  err is an errno value to append
 * (log_warn, fatal) or 0.  errno is preserved for the caller.
 */
static void log_emit(enum log_level level, int err, const char *fmt, va_list ap)
	__attribute__((format(printf, 3, 0)));

static void log_emit(enum log_level level, int err, const char *fmt, va_list ap)
{
	char msg[LOG_MSG_MAX], line[LOG_LINE_MAX], ebuf[128];
	int saved_errno = errno, n, plen, k;
	size_t len, maxsec = 0;
	ssize_t w;

	n = vsnprintf(msg, sizeof(msg), fmt, ap);
	if (n < 0) {
		snprintf(msg, sizeof(msg), "(unformattable message: %s)", fmt);
		n = 0;
	}
	len = strlen(msg);
	if (err != 0 && (size_t)n < sizeof(msg))
		snprintf(msg + len, sizeof(msg) - len, ": %s", strerror_r(err, ebuf, sizeof(ebuf)));

	if (log_journal)
		plen = snprintf(line, sizeof(line), "<%d>%s: ", level_prio[level],
				level_words[level]);
	else
		plen = snprintf(line, sizeof(line), "%s: %s: ", log_progname, level_words[level]);

	pthread_mutex_lock(&log_mtx);
	/*
	 * vsnprintf may have cut a secret short, leaving a prefix that no longer
	 * matches; drop as much of the tail as the longest secret could span.
	 */
	if ((size_t)n >= sizeof(msg)) {
		for (k = 0; k < log_nsecrets; k++)
			if (log_secrets[k].len > maxsec)
				maxsec = log_secrets[k].len;
		len = strlen(msg);
		msg[len > maxsec ? len - maxsec : 0] = '\0';
	}
	/* keep one byte for the newline that replaces the terminator */
	redact_locked(line + plen, sizeof(line) - (size_t)plen - 1, msg);
	if (level <= LOG_LVL_WARN) {
		unsigned i = (unsigned)(log_recent_next++ % LOG_RECENT);

		log_recent_ring[i].at = time(NULL);
		log_recent_ring[i].level = level;
		snprintf(log_recent_ring[i].text, sizeof(log_recent_ring[i].text), "%s",
			 line + plen);
	}
	pthread_mutex_unlock(&log_mtx);

	len = strlen(line);
	line[len++] = '\n';
	do
		w = write(STDERR_FILENO, line, len);
	while (w < 0 && errno == EINTR);

	errno = saved_errno;
}

void log_recent(log_recent_fn fn, void *arg)
{
	unsigned long long n, first;

	pthread_mutex_lock(&log_mtx);
	n = log_recent_next < LOG_RECENT ? log_recent_next : LOG_RECENT;
	first = log_recent_next - n;
	for (unsigned long long k = n; k-- > 0;) {
		unsigned i = (unsigned)((first + k) % LOG_RECENT);

		fn(arg, (double)log_recent_ring[i].at, log_recent_ring[i].level,
		   log_recent_ring[i].text);
	}
	pthread_mutex_unlock(&log_mtx);
}

static int log_wanted(enum log_level level)
{
	return (int)level <= __atomic_load_n(&log_level, __ATOMIC_RELAXED);
}

void log_vlog(enum log_level level, const char *fmt, va_list ap)
{
	if (level > LOG_LVL_DEBUG)
		level = LOG_LVL_DEBUG;
	if (log_wanted(level))
		log_emit(level, 0, fmt, ap);
}

void log_warn(const char *fmt, ...)
{
	int err = errno;
	va_list ap;

	if (!log_wanted(LOG_LVL_WARN))
		return;
	va_start(ap, fmt);
	log_emit(LOG_LVL_WARN, err, fmt, ap);
	va_end(ap);
}

void log_warnx(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vlog(LOG_LVL_WARN, fmt, ap);
	va_end(ap);
}

void log_info(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vlog(LOG_LVL_INFO, fmt, ap);
	va_end(ap);
}

void log_debug(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vlog(LOG_LVL_DEBUG, fmt, ap);
	va_end(ap);
}

void log_error(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vlog(LOG_LVL_ERROR, fmt, ap);
	va_end(ap);
}

void fatal(const char *fmt, ...)
{
	int err = errno;
	va_list ap;

	va_start(ap, fmt);
	log_emit(LOG_LVL_ERROR, err, fmt, ap);
	va_end(ap);
	exit(1);
}

void fatalx(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_emit(LOG_LVL_ERROR, 0, fmt, ap);
	va_end(ap);
	exit(1);
}
