/*
 * test_cache: the SQLite cache file: round trips, invalidation, persistence,
 * the three ways opening can fail, quarantine, and readers running beside
 * the writer.  Every case works in its own mkdtemp directory.
 */
/* nftw, FTW_DEPTH. */
#define _XOPEN_SOURCE 700

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cache.h"

struct fixture {
	char dir[64];
	char path[128];
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	if (f == NULL)
		return -1;
	snprintf(f->dir, sizeof(f->dir), "/tmp/test_cache.XXXXXX");
	if (mkdtemp(f->dir) == NULL) {
		free(f);
		return -1;
	}
	/* A subdirectory that does not exist yet: cache_open must make it. */
	snprintf(f->path, sizeof(f->path), "%s/state/kaleidod/cache.db", f->dir);
	*state = f;
	return 0;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	chmod(path, 0700); /* so a test that took permissions away still cleans up */
	return remove(path);
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	nftw(f->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

static struct cache *open_ok(const char *path)
{
	enum cache_err why = CACHE_ERR_IO;
	char err[256] = "";
	struct cache *c = cache_open(path, &why, err, sizeof(err));

	if (c == NULL)
		fail_msg("cache_open(%s): %d %s", path, (int)why, err);
	assert_int_equal(why, CACHE_OK);
	return c;
}

static void put(struct cache *c, const char *key, const char *family, const char *headers,
		const void *body, size_t body_len, int64_t expires)
{
	struct cache_entry e = {
		.status = 200,
		.headers = (char *)headers,
		.headers_len = strlen(headers),
		.body = (void *)body,
		.body_len = body_len,
		.stored_at = 1700000000,
		.expires_at = expires,
	};

	if (cache_put(c, key, family, &e) != 0)
		fail_msg("cache_put(%s): %s", key, cache_errmsg(c));
}

static void test_round_trip(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_ok(f->path);
	static const char body[] = "[{\"id\":1}]\0after\0nul\xff";
	struct cache_entry *e = (void *)1;

	assert_string_equal(cache_path(c), f->path);
	assert_int_equal(cache_get(c, "k1", &e), 0);
	assert_null(e);
	put(c, "k1", "programs", "Content-Type: application/json\n", body, sizeof(body),
	    1700000300);
	assert_int_equal(cache_get(c, "k1", &e), 1);
	assert_non_null(e);
	assert_int_equal(e->status, 200);
	assert_int_equal(e->headers_len, strlen("Content-Type: application/json\n"));
	assert_string_equal(e->headers, "Content-Type: application/json\n");
	assert_int_equal(e->body_len, sizeof(body));
	assert_memory_equal(e->body, body, sizeof(body));
	assert_int_equal(e->stored_at, 1700000000);
	assert_int_equal(e->expires_at, 1700000300);
	cache_entry_free(&e);
	assert_null(e);
	/* A key differing only after a newline is a different key. */
	assert_int_equal(cache_get(c, "k1\nx", &e), 0);
	cache_close(&c);
	assert_null(c);
}

static void test_empty_body_and_headers(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_ok(f->path);
	struct cache_entry in = { .status = 204, .stored_at = 1, .expires_at = 2 };
	struct cache_entry *e = NULL;

	assert_int_equal(cache_put(c, "empty", "programs", &in), 0);
	assert_int_equal(cache_get(c, "empty", &e), 1);
	assert_int_equal(e->status, 204);
	assert_int_equal(e->headers_len, 0);
	assert_int_equal(e->body_len, 0);
	assert_non_null(e->headers);
	assert_non_null(e->body);
	cache_entry_free(&e);
	cache_close(&c);
}

static void test_replace(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_ok(f->path);
	struct cache_entry *e = NULL;
	int64_t n = -1, bytes = -1;

	put(c, "k", "programs", "A: 1\n", "old body", 8, 10);
	put(c, "k", "record_views", "B: 2\n", "new", 3, 20);
	assert_int_equal(cache_get(c, "k", &e), 1);
	assert_string_equal(e->headers, "B: 2\n");
	assert_int_equal(e->body_len, 3);
	assert_memory_equal(e->body, "new", 3);
	assert_int_equal(e->expires_at, 20);
	cache_entry_free(&e);
	assert_int_equal(cache_usage(c, &n, &bytes), 0);
	assert_int_equal(n, 1);
	assert_int_equal(bytes, 5 + 3);
	/* The family moved with the replacement. */
	assert_int_equal(cache_invalidate_family(c, "programs"), 0);
	assert_int_equal(cache_invalidate_family(c, "record_views"), 1);
	cache_close(&c);
}

static void test_invalidate_and_usage(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_ok(f->path);
	struct cache_entry *e = NULL;
	int64_t n = -1, bytes = -1;

	assert_int_equal(cache_usage(c, &n, &bytes), 0);
	assert_int_equal(n, 0);
	assert_int_equal(bytes, 0);
	put(c, "p1", "programs", "H: 1\n", "aaaa", 4, 1);
	put(c, "p2", "programs", "H: 2\n", "bbbbbbbb", 8, 1);
	put(c, "r1", "record_views", "", "cc", 2, 1);
	put(c, "e1", "entity_slices", "H: 3\n", "", 0, 1);
	assert_int_equal(cache_usage(c, &n, &bytes), 0);
	assert_int_equal(n, 4);
	assert_int_equal(bytes, (5 + 4) + (5 + 8) + (0 + 2) + (5 + 0));

	assert_int_equal(cache_invalidate_family(c, "programs"), 2);
	assert_int_equal(cache_get(c, "p1", &e), 0);
	assert_int_equal(cache_get(c, "p2", &e), 0);
	assert_int_equal(cache_get(c, "r1", &e), 1);
	cache_entry_free(&e);
	assert_int_equal(cache_get(c, "e1", &e), 1);
	cache_entry_free(&e);
	assert_int_equal(cache_invalidate_family(c, "programs"), 0);
	assert_int_equal(cache_invalidate_family(c, "nonesuch"), 0);
	assert_int_equal(cache_usage(c, &n, &bytes), 0);
	assert_int_equal(n, 2);
	assert_int_equal(bytes, 2 + 5);
	cache_close(&c);
}

static void test_survives_reopen(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_ok(f->path);
	struct cache_entry *e = NULL;
	char big[200000];

	for (size_t i = 0; i < sizeof(big); i++)
		big[i] = (char)(i * 7);
	put(c, "big", "record_views", "X: y\n", big, sizeof(big), 99);
	cache_close(&c);
	c = open_ok(f->path);
	assert_int_equal(cache_get(c, "big", &e), 1);
	assert_int_equal(e->body_len, sizeof(big));
	assert_memory_equal(e->body, big, sizeof(big));
	assert_int_equal(e->expires_at, 99);
	cache_entry_free(&e);
	cache_close(&c);
}

static void test_file_mode(void **state)
{
	struct fixture *f = *state;
	struct cache *c;
	char sub[160];
	struct stat st;
	mode_t old = umask(0);

	c = open_ok(f->path);
	umask(old);
	put(c, "k", "programs", "", "x", 1, 1);
	assert_int_equal(stat(f->path, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);
	snprintf(sub, sizeof(sub), "%s-wal", f->path);
	assert_int_equal(stat(sub, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);
	snprintf(sub, sizeof(sub), "%s/state/kaleidod", f->dir);
	assert_int_equal(stat(sub, &st), 0);
	assert_true(S_ISDIR(st.st_mode));
	assert_int_equal(st.st_mode & 07777, 0700);
	cache_close(&c);
}

static void test_wal_mode(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_ok(f->path);
	sqlite3 *db;
	sqlite3_stmt *st;

	cache_close(&c);
	assert_int_equal(sqlite3_open_v2(f->path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	assert_string_equal((const char *)sqlite3_column_text(st, 0), "wal");
	sqlite3_finalize(st);
	assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	assert_int_equal(sqlite3_column_int(st, 0), 1);
	sqlite3_finalize(st);
	sqlite3_close(db);
}

static void write_file(const char *path, const void *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, data, len), (ssize_t)len);
	close(fd);
}

static void expect_open_fails(const char *path, enum cache_err want)
{
	enum cache_err why = CACHE_OK;
	char err[256] = "";
	struct cache *c = cache_open(path, &why, err, sizeof(err));

	if (c != NULL) {
		cache_close(&c);
		fail_msg("cache_open(%s) succeeded, want error %d", path, (int)want);
	}
	if (why != want)
		fail_msg("cache_open(%s): error %d (%s), want %d", path, (int)why, err, (int)want);
	assert_true(err[0] != '\0');
}

static void test_garbage_is_corrupt(void **state)
{
	struct fixture *f = *state;
	char garbage[8192];
	char path[160];

	for (size_t i = 0; i < sizeof(garbage); i++)
		garbage[i] = (char)(i * 31 + 7);
	snprintf(path, sizeof(path), "%s/garbage.db", f->dir);
	write_file(path, garbage, sizeof(garbage));
	expect_open_fails(path, CACHE_ERR_CORRUPT);
	/* A short text file too. */
	write_file(path, "not a database\n", 15);
	expect_open_fails(path, CACHE_ERR_CORRUPT);
}

static void test_damaged_schema_is_corrupt(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_ok(f->path);
	struct stat st;
	char *buf;
	int fd;

	put(c, "k", "programs", "", "x", 1, 1);
	cache_close(&c);
	/* Keep the header, overwrite the schema page's cell area. */
	assert_int_equal(stat(f->path, &st), 0);
	assert_true(st.st_size >= 4096);
	fd = open(f->path, O_RDWR);
	assert_true(fd >= 0);
	buf = malloc(4096);
	assert_non_null(buf);
	memset(buf, 0xa5, 4096 - 100);
	assert_int_equal(pwrite(fd, buf, 4096 - 100, 100), 4096 - 100);
	close(fd);
	free(buf);
	expect_open_fails(f->path, CACHE_ERR_CORRUPT);
}

static void test_newer_schema(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_ok(f->path);
	sqlite3 *db;

	cache_close(&c);
	assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, "PRAGMA user_version = 2", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);
	expect_open_fails(f->path, CACHE_ERR_SCHEMA);
}

static void test_foreign_table_is_corrupt(void **state)
{
	struct fixture *f = *state;
	char path[160];
	sqlite3 *db;

	snprintf(path, sizeof(path), "%s/foreign.db", f->dir);
	assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, "CREATE TABLE entries(x); PRAGMA user_version = 1", NULL,
				      NULL, NULL),
			 SQLITE_OK);
	sqlite3_close(db);
	expect_open_fails(path, CACHE_ERR_CORRUPT);
}

static void test_unwritable_is_io(void **state)
{
	struct fixture *f = *state;
	char file[160], path[200];

	/* A regular file where a directory should be stops root as well. */
	snprintf(file, sizeof(file), "%s/file", f->dir);
	write_file(file, "x", 1);
	snprintf(path, sizeof(path), "%s/cache.db", file);
	expect_open_fails(path, CACHE_ERR_IO);
	snprintf(path, sizeof(path), "%s/deeper/cache.db", file);
	expect_open_fails(path, CACHE_ERR_IO);
	/* The path itself a directory. */
	expect_open_fails(f->dir, CACHE_ERR_IO);
}

/*
 * A read-only database file.  Root ignores file modes, so the open runs in a
 * child that, when root, gives the tree to uid 65534 and becomes it.  (No
 * skip(): cmocka 1.1.5 reports a skip as "not ok", a failure under TAP.)
 */
static void test_unwritable_file_is_io(void **state)
{
	struct fixture *f = *state;
	static const char *const sub[] = { "", "/state", "/state/kaleidod",
					   "/state/kaleidod/cache.db" };
	struct cache *c = open_ok(f->path);
	char p[160];
	int status;
	pid_t pid;

	cache_close(&c);
	assert_int_equal(chmod(f->path, 0400), 0);
	if (geteuid() == 0) {
		for (size_t i = 0; i < sizeof(sub) / sizeof(sub[0]); i++) {
			snprintf(p, sizeof(p), "%s%s", f->dir, sub[i]);
			assert_int_equal(chown(p, 65534, 65534), 0);
		}
	}
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		enum cache_err why = CACHE_OK;

		if (geteuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0))
			_exit(2);
		c = cache_open(f->path, &why, NULL, 0);
		_exit(c == NULL && why == CACHE_ERR_IO ? 0 : 1);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
}

static void test_quarantine(void **state)
{
	struct fixture *f = *state;
	char newpath[256], first[256], side[300];
	struct stat st;
	time_t before = time(NULL);
	long long stamp;
	struct cache *c;

	c = open_ok(f->path);
	cache_close(&c);
	/* Pretend a crash left a WAL and shm beside it. */
	snprintf(side, sizeof(side), "%s-wal", f->path);
	write_file(side, "wal", 3);
	snprintf(side, sizeof(side), "%s-shm", f->path);
	write_file(side, "shm", 3);

	assert_int_equal(cache_quarantine(f->path, newpath, sizeof(newpath)), 0);
	assert_int_equal(strncmp(newpath, f->path, strlen(f->path)), 0);
	assert_int_equal(sscanf(newpath + strlen(f->path), ".bad-%lld", &stamp), 1);
	assert_true(stamp >= (long long)before && stamp <= (long long)time(NULL));
	assert_int_equal(stat(newpath, &st), 0);
	snprintf(side, sizeof(side), "%s-wal", newpath);
	assert_int_equal(stat(side, &st), 0);
	snprintf(side, sizeof(side), "%s-shm", newpath);
	assert_int_equal(stat(side, &st), 0);
	assert_int_equal(stat(f->path, &st), -1);
	snprintf(side, sizeof(side), "%s-wal", f->path);
	assert_int_equal(stat(side, &st), -1);
	snprintf(side, sizeof(side), "%s-shm", f->path);
	assert_int_equal(stat(side, &st), -1);

	/* A fresh cache opens in its place; a second quarantine in the same
	 * second keeps the first one, and no -wal is fine. */
	c = open_ok(f->path);
	cache_close(&c);
	snprintf(first, sizeof(first), "%s", newpath);
	assert_int_equal(cache_quarantine(f->path, newpath, sizeof(newpath)), 0);
	assert_string_not_equal(newpath, first);
	assert_int_equal(stat(first, &st), 0);
	assert_int_equal(stat(newpath, &st), 0);

	/* Nothing to move. */
	errno = 0;
	assert_int_equal(cache_quarantine(f->path, newpath, sizeof(newpath)), -1);
	assert_int_equal(errno, ENOENT);
}

static void test_quarantine_then_reopen_corrupt(void **state)
{
	struct fixture *f = *state;
	char newpath[256];
	struct cache *c;

	c = open_ok(f->path); /* makes the directories */
	cache_close(&c);
	write_file(f->path, "garbage garbage garbage", 23);
	expect_open_fails(f->path, CACHE_ERR_CORRUPT);
	assert_int_equal(cache_quarantine(f->path, newpath, sizeof(newpath)), 0);
	c = open_ok(f->path);
	cache_close(&c);
}

/* Readers count anything unexpected; cmocka's asserts are not thread-safe. */
struct reader_arg {
	struct cache *c;
	int *stop;
	int errors;
	int hits;
	char msg[256];
};

#define NKEYS 20
#define BODY_LEN 3000

/* A body is one byte repeated: a torn read would show mixed bytes. */
static void make_body(char *buf, int version)
{
	memset(buf, 'a' + version % 26, BODY_LEN);
}

static int uniform(const char *body)
{
	for (int i = 1; i < BODY_LEN; i++)
		if (body[i] != body[0])
			return 0;
	return 1;
}

static void *reader_main(void *p)
{
	struct reader_arg *a = p;
	char name[32];

	while (!__atomic_load_n(a->stop, __ATOMIC_RELAXED)) {
		for (int i = 0; i < NKEYS; i++) {
			struct cache_entry *e = NULL;
			int rc;

			snprintf(name, sizeof(name), "key-%d", i);
			rc = cache_get(a->c, name, &e);
			if (rc != 1) {
				if (a->errors++ == 0)
					snprintf(a->msg, sizeof(a->msg), "get %s: %d %s", name, rc,
						 cache_errmsg(a->c));
				continue;
			}
			a->hits++;
			if (e->body_len != BODY_LEN || e->headers_len != 5 || !uniform(e->body)) {
				if (a->errors++ == 0)
					snprintf(a->msg, sizeof(a->msg), "torn entry %s", name);
			}
			cache_entry_free(&e);
		}
		if (cache_usage(a->c, NULL, NULL) != 0 && a->errors++ == 0)
			snprintf(a->msg, sizeof(a->msg), "usage: %s", cache_errmsg(a->c));
	}
	return NULL;
}

static void test_concurrent_readers(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_ok(f->path);
	struct reader_arg args[4];
	pthread_t th[4];
	int stop = 0;
	char body[BODY_LEN], name[32];
	int64_t n = 0;

	make_body(body, 0);
	for (int i = 0; i < NKEYS; i++) {
		snprintf(name, sizeof(name), "key-%d", i);
		put(c, name, "programs", "V: 0\n", body, BODY_LEN, 1);
	}
	for (int t = 0; t < 4; t++) {
		memset(&args[t], 0, sizeof(args[t]));
		args[t].c = c;
		args[t].stop = &stop;
		assert_int_equal(pthread_create(&th[t], NULL, reader_main, &args[t]), 0);
	}
	/* Replace every key many times, and churn a family the readers do not
	 * read, while they run. */
	for (int v = 1; v <= 60; v++) {
		make_body(body, v);
		for (int i = 0; i < NKEYS; i++) {
			snprintf(name, sizeof(name), "key-%d", i);
			put(c, name, "programs", "V: 1\n", body, BODY_LEN, v);
		}
		snprintf(name, sizeof(name), "tmp-%d", v);
		put(c, name, "scratch", "", "x", 1, v);
		if (v % 10 == 0)
			assert_true(cache_invalidate_family(c, "scratch") >= 1);
	}
	__atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
	for (int t = 0; t < 4; t++) {
		assert_int_equal(pthread_join(th[t], NULL), 0);
		if (args[t].errors != 0)
			fail_msg("reader %d: %d errors, first: %s", t, args[t].errors, args[t].msg);
		assert_true(args[t].hits > 0);
	}
	assert_int_equal(cache_usage(c, &n, NULL), 0);
	assert_int_equal(n, NKEYS);
	cache_close(&c);
}

/* A thread that used the cache and exits before cache_close: its reader is
 * closed by the thread-exit destructor, not twice. */
static void *one_get(void *p)
{
	struct cache_entry *e = NULL;
	intptr_t rc = cache_get(p, "k", &e);

	cache_entry_free(&e);
	return (void *)rc;
}

static void test_reader_thread_exit(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_ok(f->path);
	void *ret;
	pthread_t th;

	put(c, "k", "programs", "", "x", 1, 1);
	for (int i = 0; i < 8; i++) {
		assert_int_equal(pthread_create(&th, NULL, one_get, c), 0);
		assert_int_equal(pthread_join(th, &ret), 0);
		assert_int_equal((intptr_t)ret, 1);
	}
	cache_close(&c);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(test_round_trip),
		T(test_empty_body_and_headers),
		T(test_replace),
		T(test_invalidate_and_usage),
		T(test_survives_reopen),
		T(test_file_mode),
		T(test_wal_mode),
		T(test_garbage_is_corrupt),
		T(test_damaged_schema_is_corrupt),
		T(test_newer_schema),
		T(test_foreign_table_is_corrupt),
		T(test_unwritable_is_io),
		T(test_unwritable_file_is_io),
		T(test_quarantine),
		T(test_quarantine_then_reopen_corrupt),
		T(test_concurrent_readers),
		T(test_reader_thread_exit),
	};
#undef T

	return cmocka_run_group_tests(tests, NULL, NULL);
}
