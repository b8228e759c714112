/*
 * Unit tests for common/log.c: level names, the redaction registry, the line
 * format on stderr (plain and journald), truncation, fatal's exit status and
 * whole lines under concurrent writers.  stderr is captured by dup2 onto a
 * file in a private mkdtemp directory.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "log.h"

static char tmpdir[] = "/tmp/test_log.XXXXXX";
static int saved_stderr = -1;
static char capture_path[sizeof(tmpdir) + 32];

static void capture_start(void)
{
	static int n;
	int fd;

	snprintf(capture_path, sizeof(capture_path), "%s/stderr.%d", tmpdir, n++);
	fd = open(capture_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	fflush(stderr);
	saved_stderr = dup(STDERR_FILENO);
	assert_true(saved_stderr >= 0);
	assert_true(dup2(fd, STDERR_FILENO) >= 0);
	close(fd);
}

/* Restores stderr and returns what was written meanwhile (caller frees). */
static char *capture_end(void)
{
	char *buf;
	FILE *fp;
	long len;

	fflush(stderr);
	assert_true(dup2(saved_stderr, STDERR_FILENO) >= 0);
	close(saved_stderr);
	saved_stderr = -1;
	fp = fopen(capture_path, "r");
	assert_non_null(fp);
	fseek(fp, 0, SEEK_END);
	len = ftell(fp);
	rewind(fp);
	buf = calloc(1, (size_t)len + 1);
	assert_non_null(buf);
	assert_int_equal(fread(buf, 1, (size_t)len, fp), (size_t)len);
	fclose(fp);
	unlink(capture_path);
	return buf;
}

static int count_char(const char *s, char c)
{
	int n = 0;

	for (; *s != '\0'; s++)
		n += *s == c;
	return n;
}

static int group_setup(void **state)
{
	(void)state;
	return mkdtemp(tmpdir) != NULL ? 0 : -1;
}

static int group_teardown(void **state)
{
	(void)state;
	return rmdir(tmpdir);
}

/* Each test starts with an empty registry, plain stderr and level info. */
static const char *const test_secrets[] = {
	"hunter22", "abcdef",   "defghi",   "abab",     "s3cr3t-token", "secret0",
	"secret1",  "secret2",  "secret3",  "secret4",  "secret5",      "secret6",
	"secret7",  "secret8",  "secret9",  "secret10", "secret11",     "secret12",
	"secret13", "secret14", "secret15", "secret16", "secret17",
};

static int reset(void **state)
{
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(test_secrets) / sizeof(test_secrets[0]); i++)
		log_forget_secret(test_secrets[i]);
	unsetenv("JOURNAL_STREAM");
	log_init("kaleidod", LOG_LVL_INFO);
	return 0;
}

static void test_level_parse(void **state)
{
	enum log_level l;

	(void)state;
	assert_int_equal(log_level_parse("error", &l), 0);
	assert_int_equal(l, LOG_LVL_ERROR);
	assert_int_equal(log_level_parse("warn", &l), 0);
	assert_int_equal(l, LOG_LVL_WARN);
	assert_int_equal(log_level_parse("warning", &l), 0);
	assert_int_equal(l, LOG_LVL_WARN);
	assert_int_equal(log_level_parse("INFO", &l), 0);
	assert_int_equal(l, LOG_LVL_INFO);
	assert_int_equal(log_level_parse("debug", &l), 0);
	assert_int_equal(l, LOG_LVL_DEBUG);
	l = LOG_LVL_INFO;
	assert_int_equal(log_level_parse("verbose", &l), -1);
	assert_int_equal(log_level_parse("", &l), -1);
	assert_int_equal(log_level_parse("info ", &l), -1);
	assert_int_equal(log_level_parse(NULL, &l), -1);
	assert_int_equal(l, LOG_LVL_INFO);

	assert_string_equal(log_level_name(LOG_LVL_ERROR), "error");
	assert_string_equal(log_level_name(LOG_LVL_WARN), "warn");
	assert_string_equal(log_level_name(LOG_LVL_INFO), "info");
	assert_string_equal(log_level_name(LOG_LVL_DEBUG), "debug");

	log_setlevel(LOG_LVL_DEBUG);
	assert_int_equal(log_getlevel(), LOG_LVL_DEBUG);
	log_setlevel(LOG_LVL_ERROR);
	assert_int_equal(log_getlevel(), LOG_LVL_ERROR);
}

static void test_redact_basic(void **state)
{
	char out[256];

	(void)state;
	log_redact(out, sizeof(out), "secret is hunter22.");
	assert_string_equal(out, "secret is hunter22.");
	log_add_secret("hunter22");
	log_redact(out, sizeof(out), "secret is hunter22.");
	assert_string_equal(out, "secret is ***.");
	log_redact(out, sizeof(out), "hunter22hunter22 and hunter22, hunter2");
	assert_string_equal(out, "*** and ***, hunter2");
	log_redact(out, sizeof(out), "");
	assert_string_equal(out, "");
}

static void test_redact_short_ignored(void **state)
{
	char out[64];

	(void)state;
	log_add_secret("abc");
	log_add_secret("");
	log_add_secret(NULL);
	log_redact(out, sizeof(out), "abc abc");
	assert_string_equal(out, "abc abc");
}

static void test_redact_overlapping(void **state)
{
	char out[64];

	(void)state;
	/* two secrets sharing "def": neither may leave a fragment behind */
	log_add_secret("abcdef");
	log_add_secret("defghi");
	log_redact(out, sizeof(out), "x abcdefghi y");
	assert_string_equal(out, "x *** y");
	log_redact(out, sizeof(out), "defghi abcdef");
	assert_string_equal(out, "*** ***");

	/* one secret overlapping itself */
	log_add_secret("abab");
	log_redact(out, sizeof(out), "<ababab>");
	assert_string_equal(out, "<***>");
}

static void test_redact_forget(void **state)
{
	char out[64];

	(void)state;
	log_add_secret("s3cr3t-token");
	log_add_secret("s3cr3t-token"); /* a duplicate registers once */
	log_redact(out, sizeof(out), "Bearer s3cr3t-token");
	assert_string_equal(out, "Bearer ***");
	log_forget_secret("s3cr3t-token");
	log_redact(out, sizeof(out), "Bearer s3cr3t-token");
	assert_string_equal(out, "Bearer s3cr3t-token");
	log_forget_secret("s3cr3t-token"); /* forgetting twice is harmless */
	log_forget_secret("never-added");
}

static void test_redact_oldest_dropped(void **state)
{
	char out[64], name[16];
	int i;

	(void)state;
	for (i = 0; i < LOG_MAX_SECRETS + 2; i++) {
		snprintf(name, sizeof(name), "secret%d", i);
		log_add_secret(name);
	}
	/* secret0 and secret1 were the oldest; secret10.. must not match as secret1 */
	log_redact(out, sizeof(out), "secret0|");
	assert_string_equal(out, "secret0|");
	log_redact(out, sizeof(out), "secret1|");
	assert_string_equal(out, "secret1|");
	log_redact(out, sizeof(out), "secret2|secret17");
	assert_string_equal(out, "***|***");
}

/* Registering a secret again makes it the newest: rotation never evicts it. */
static void test_redact_reregistered_kept(void **state)
{
	char out[64], name[16];
	int i;

	(void)state;
	log_add_secret("the-client-secret");
	for (i = 0; i < LOG_MAX_SECRETS - 1; i++) {
		snprintf(name, sizeof(name), "token%d", i);
		log_add_secret(name);
	}
	log_add_secret("the-client-secret");
	log_add_secret("token-new");
	log_redact(out, sizeof(out), "the-client-secret|token0|token1");
	assert_string_equal(out, "***|token0|***");
}

static void test_redact_truncation(void **state)
{
	char out[8];

	(void)state;
	memset(out, 'Z', sizeof(out));
	log_redact(out, sizeof(out), "0123456789");
	assert_string_equal(out, "0123456");

	log_add_secret("hunter22");
	memset(out, 'Z', sizeof(out));
	log_redact(out, 6, "abcd hunter22");
	/* no room for the whole marker: stop rather than print part of it */
	assert_string_equal(out, "abcd ");
	log_redact(out, 1, "abc");
	assert_string_equal(out, "");
}

static void test_line_format(void **state)
{
	char *got;

	(void)state;
	capture_start();
	log_info("hello %d", 42);
	log_debug("not shown");
	log_warnx("careful");
	log_error("broken");
	got = capture_end();
	assert_string_equal(got, "kaleidod: info: hello 42\n"
				 "kaleidod: warning: careful\n"
				 "kaleidod: error: broken\n");
	free(got);

	log_setlevel(LOG_LVL_DEBUG);
	capture_start();
	log_debug("now shown");
	got = capture_end();
	assert_string_equal(got, "kaleidod: debug: now shown\n");
	free(got);

	log_setlevel(LOG_LVL_ERROR);
	capture_start();
	log_info("quiet");
	log_warnx("quiet");
	log_error("loud");
	got = capture_end();
	assert_string_equal(got, "kaleidod: error: loud\n");
	free(got);
}

static void test_warn_errno(void **state)
{
	char *got;

	(void)state;
	capture_start();
	errno = ENOENT;
	log_warn("open %s", "/nonexistent");
	/* logging must not clobber the errno the caller may still need */
	assert_int_equal(errno, ENOENT);
	got = capture_end();
	assert_string_equal(got,
			    "kaleidod: warning: open /nonexistent: No such file or directory\n");
	free(got);
}

static void test_journal_prefix(void **state)
{
	char *got;

	(void)state;
	setenv("JOURNAL_STREAM", "8:12345", 1);
	log_init("kaleidod", LOG_LVL_DEBUG);
	capture_start();
	log_error("e");
	log_warnx("w");
	log_info("i");
	log_debug("d");
	got = capture_end();
	assert_string_equal(got, "<3>error: e\n<4>warning: w\n<6>info: i\n<7>debug: d\n");
	free(got);

	/* read once at log_init, as the header promises */
	unsetenv("JOURNAL_STREAM");
	capture_start();
	log_info("still journal");
	got = capture_end();
	assert_string_equal(got, "<6>info: still journal\n");
	free(got);

	log_init("otherd", LOG_LVL_INFO);
	capture_start();
	log_info("plain");
	got = capture_end();
	assert_string_equal(got, "otherd: info: plain\n");
	free(got);
}

static void test_log_redacts(void **state)
{
	char *got;

	(void)state;
	log_add_secret("hunter22");
	capture_start();
	log_info("client_secret=%s&x=%s", "hunter22", "hunter22");
	errno = EACCES;
	log_warn("token %s", "hunter22");
	got = capture_end();
	assert_null(strstr(got, "hunter22"));
	assert_string_equal(got, "kaleidod: info: client_secret=***&x=***\n"
				 "kaleidod: warning: token ***: Permission denied\n");
	free(got);
}

struct seen {
	int n;
	char text[LOG_RECENT + 2][LOG_RECENT_LEN];
	enum log_level level[LOG_RECENT + 2];
};

static void collect(void *arg, double at, enum log_level level, const char *text)
{
	struct seen *s = arg;

	assert_true(at > 1e9); /* a wall-clock time */
	assert_true(s->n < LOG_RECENT + 2);
	s->level[s->n] = level;
	snprintf(s->text[s->n++], LOG_RECENT_LEN, "%s", text);
}

/* The status page's last errors: warnings and errors only, newest first,
 * redacted, at most LOG_RECENT of them. */
static void test_recent(void **state)
{
	struct seen s = { 0 };
	char *got;

	(void)state;
	log_add_secret("sekrit-token");
	capture_start();
	log_info("not kept");
	log_error("first sekrit-token");
	log_warnx("second");
	got = capture_end();
	free(got);
	log_recent(collect, &s);
	assert_true(s.n >= 2);
	assert_string_equal(s.text[0], "second");
	assert_int_equal(s.level[0], LOG_LVL_WARN);
	assert_string_equal(s.text[1], "first ***");
	assert_int_equal(s.level[1], LOG_LVL_ERROR);
	capture_start();
	for (int i = 0; i < LOG_RECENT + 3; i++)
		log_warnx("w%d", i);
	got = capture_end();
	free(got);
	s.n = 0;
	log_recent(collect, &s);
	assert_int_equal(s.n, LOG_RECENT);
	assert_string_equal(s.text[0], "w12");
	assert_string_equal(s.text[LOG_RECENT - 1], "w3");
}

static void test_long_line(void **state)
{
	char *big, *got, *p;
	size_t n = 10000;
	int i;

	(void)state;
	big = malloc(n + 1);
	assert_non_null(big);
	memset(big, 'x', n);
	big[n] = '\0';
	capture_start();
	log_info("%s", big);
	got = capture_end();
	/* one line, cut to fit the 4 KiB line buffer, still ending in a newline */
	assert_int_equal(count_char(got, '\n'), 1);
	assert_int_equal(strlen(got), 4095);
	assert_int_equal(got[4094], '\n');
	free(got);

	/*
	 * Redaction shrinks the text, so the formatting buffer's tail reaches the
	 * line.  Place a secret across the end of that buffer (8 KiB): its cut
	 * prefix "hunt" must not survive.
	 */
	log_add_secret("hunter22");
	for (i = 0, p = big; i < 909; i++, p += 9)
		memcpy(p, "hunter22.", 9);
	memcpy(p, "xxxxxx", 6);
	memcpy(p + 6, "hunter22", 8);
	assert_int_equal(p + 6 - big, 8187);
	capture_start();
	log_info("%s", big);
	got = capture_end();
	assert_int_equal(count_char(got, '\n'), 1);
	assert_null(strstr(got, "hunt"));
	assert_non_null(strstr(got, "***.***."));
	free(got);
	free(big);
}

static void test_fatal_exits(void **state)
{
	pid_t pid;
	int status;
	char *got;

	(void)state;
	capture_start();
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		errno = EPERM;
		fatal("cannot %s", "bind");
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 1);

	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		fatalx("bad config");
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 1);
	got = capture_end();
	assert_string_equal(got, "kaleidod: error: cannot bind: Operation not permitted\n"
				 "kaleidod: error: bad config\n");
	free(got);
}

#define NTHREADS 8
#define NLINES 200

static void *writer(void *arg)
{
	char payload[301];
	int i, id = (int)(intptr_t)arg;

	memset(payload, 'a' + id, sizeof(payload) - 1);
	payload[sizeof(payload) - 1] = '\0';
	for (i = 0; i < NLINES; i++) {
		log_info("T%d %s", id, payload);
		if (i % 50 == 0) {
			log_add_secret("hunter22");
			log_forget_secret("hunter22");
		}
	}
	return NULL;
}

static void test_threads_whole_lines(void **state)
{
	pthread_t t[NTHREADS];
	char *got, *line, *save = NULL;
	int i, lines = 0;

	(void)state;
	capture_start();
	for (i = 0; i < NTHREADS; i++)
		assert_int_equal(pthread_create(&t[i], NULL, writer, (void *)(intptr_t)i), 0);
	for (i = 0; i < NTHREADS; i++)
		pthread_join(t[i], NULL);
	got = capture_end();
	for (line = strtok_r(got, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
		int id;
		size_t k;

		assert_int_equal(sscanf(line, "kaleidod: info: T%d ", &id), 1);
		assert_true(id >= 0 && id < NTHREADS);
		line = strchr(line + strlen("kaleidod: info: T"), ' ') + 1;
		assert_int_equal(strlen(line), 300);
		for (k = 0; k < 300; k++)
			assert_int_equal(line[k], 'a' + id);
		lines++;
	}
	assert_int_equal(lines, NTHREADS * NLINES);
	free(got);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup(test_level_parse, reset),
		cmocka_unit_test_setup(test_redact_basic, reset),
		cmocka_unit_test_setup(test_redact_short_ignored, reset),
		cmocka_unit_test_setup(test_redact_overlapping, reset),
		cmocka_unit_test_setup(test_redact_forget, reset),
		cmocka_unit_test_setup(test_redact_oldest_dropped, reset),
		cmocka_unit_test_setup(test_redact_reregistered_kept, reset),
		cmocka_unit_test_setup(test_redact_truncation, reset),
		cmocka_unit_test_setup(test_line_format, reset),
		cmocka_unit_test_setup(test_warn_errno, reset),
		cmocka_unit_test_setup(test_journal_prefix, reset),
		cmocka_unit_test_setup(test_log_redacts, reset),
		cmocka_unit_test_setup(test_recent, reset),
		cmocka_unit_test_setup(test_long_line, reset),
		cmocka_unit_test_setup(test_fatal_exits, reset),
		cmocka_unit_test_setup(test_threads_whole_lines, reset),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
