/*
 * test_cache: the SQLite cache file: round trips, invalidation, refresh,
 * LRU eviction, pruning and purges, vacuuming, persistence, the migration
 * from schema 1, the three ways opening can fail, quarantine, noticing other
 * writers, and readers running beside the writer.  Every case works in its
 * own mkdtemp directory.
 */
/* nftw, FTW_DEPTH. */
#define _XOPEN_SOURCE 700

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
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
		.identity_len = body_len,
		.stored_at = 1700000000,
		.expires_at = expires,
	};
	char path[128];

	snprintf(path, sizeof(path), "/%s", key);
	if (cache_put(c, key, family, path, &e) != 0)
		fail_msg("cache_put(%s): %s", key, cache_errmsg(c));
}

/* For eviction, pruning and purges: the same 100-byte body and 5-byte
 * headers everywhere, so an entry's size is strlen(key) + 105. */
#define BODY100 \
	"0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789"

static void put_at(struct cache *c, const char *key, const char *family, const char *path,
		   int64_t stored_at, int64_t expires_at)
{
	struct cache_entry e = {
		.status = 200,
		.headers = "H: 1\n",
		.headers_len = 5,
		.body = BODY100,
		.body_len = 100,
		.identity_len = 100,
		.stored_at = stored_at,
		.expires_at = expires_at,
	};

	if (cache_put(c, key, family, path, &e) != 0)
		fail_msg("cache_put(%s): %s", key, cache_errmsg(c));
}

static int present(struct cache *c, const char *key)
{
	struct cache_entry *e = NULL;
	int rc = cache_get(c, key, &e);

	if (rc < 0)
		fail_msg("cache_get(%s): %s", key, cache_errmsg(c));
	cache_entry_free(&e);
	return rc;
}

/* What a delete's callback was told. */
struct told {
	char keys[32][64];
	int n;
};

static void tell(void *arg, const char *key)
{
	struct told *t = arg;

	if (t->n >= 32)
		fail_msg("too many callbacks");
	snprintf(t->keys[t->n++], sizeof(t->keys[0]), "%s", key);
}

static int was_told(const struct told *t, const char *key)
{
	int n = 0;

	for (int i = 0; i < t->n; i++)
		n += strcmp(t->keys[i], key) == 0;
	return n;
}

/* The callback named exactly these keys, each once. */
static void assert_told(const struct told *t, const char *const *keys, int n)
{
	if (t->n != n)
		fail_msg("told %d keys, want %d", t->n, n);
	for (int i = 0; i < n; i++)
		if (was_told(t, keys[i]) != 1)
			fail_msg("key %s told %d times, want once", keys[i], was_told(t, keys[i]));
}

/* One integer from the file through a connection of the test's own. */
static long long file_int(const char *path, const char *sql)
{
	sqlite3 *db;
	sqlite3_stmt *st;
	long long v;

	assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		fail_msg("%s: %s", sql, sqlite3_errmsg(db));
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	v = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	sqlite3_close(db);
	return v;
}

static void file_exec(const char *path, const char *sql)
{
	sqlite3 *db;

	assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
	if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK)
		fail_msg("%s: %s", sql, sqlite3_errmsg(db));
	sqlite3_close(db);
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

	assert_int_equal(cache_put(c, "empty", "programs", "/empty", &in), 0);
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
	assert_int_equal(bytes, 1 + 5 + 3);
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
	/* Key, headers and body of each. */
	assert_int_equal(bytes, (2 + 5 + 4) + (2 + 5 + 8) + (2 + 0 + 2) + (2 + 5 + 0));

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
	assert_int_equal(bytes, (2 + 0 + 2) + (2 + 5 + 0));
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
	assert_int_equal(sqlite3_column_int(st, 0), 2);
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
	assert_int_equal(sqlite3_exec(db, "PRAGMA user_version = 3", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);
	expect_open_fails(f->path, CACHE_ERR_SCHEMA);
}

/* Version 1 tables are dropped by the migration, so "foreign" means a
 * current version number over tables that are not ours (or ours without
 * the trigger that deletes bodies), or an unversioned file that already has
 * a table of our name. */
static void test_foreign_table_is_corrupt(void **state)
{
	struct fixture *f = *state;
	char path[160];

	snprintf(path, sizeof(path), "%s/foreign2.db", f->dir);
	file_exec(path, "CREATE TABLE entries(x); PRAGMA user_version = 2");
	expect_open_fails(path, CACHE_ERR_CORRUPT);
	snprintf(path, sizeof(path), "%s/foreign0.db", f->dir);
	file_exec(path, "CREATE TABLE entries(x)");
	expect_open_fails(path, CACHE_ERR_CORRUPT);
	/* Early version 2 builds kept the body in entries; never shipped. */
	snprintf(path, sizeof(path), "%s/onetable2.db", f->dir);
	file_exec(path, "CREATE TABLE entries (key TEXT PRIMARY KEY, family TEXT NOT NULL,"
			" path TEXT NOT NULL, status INTEGER NOT NULL, gzip INTEGER NOT NULL,"
			" identity_len INTEGER NOT NULL, stored_at INTEGER NOT NULL,"
			" expires_at INTEGER NOT NULL, accessed_at INTEGER NOT NULL,"
			" size INTEGER NOT NULL, headers BLOB NOT NULL, body BLOB NOT NULL);"
			"PRAGMA user_version = 2");
	expect_open_fails(path, CACHE_ERR_CORRUPT);
	/* Our tables, but nothing to delete the bodies with the entries. */
	snprintf(path, sizeof(path), "%s/notrigger2.db", f->dir);
	file_exec(path, "CREATE TABLE entries (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE,"
			" family TEXT NOT NULL, path TEXT NOT NULL, status INTEGER NOT NULL,"
			" gzip INTEGER NOT NULL, identity_len INTEGER NOT NULL,"
			" stored_at INTEGER NOT NULL, expires_at INTEGER NOT NULL,"
			" accessed_at INTEGER NOT NULL, size INTEGER NOT NULL,"
			" headers BLOB NOT NULL);"
			"CREATE TABLE bodies (id INTEGER PRIMARY KEY, body BLOB NOT NULL);"
			"PRAGMA user_version = 2");
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
			__atomic_add_fetch(&a->hits, 1, __ATOMIC_RELAXED);
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
	/* On a loaded machine a reader may not have run yet: every reader
	 * reads at least once before they stop (bounded: 30 s). */
	for (int t = 0, waited = 0; t < 4 && waited < 30000; waited++)
		if (__atomic_load_n(&args[t].hits, __ATOMIC_RELAXED) > 0)
			t++;
		else
			usleep(1000);
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

static void test_gzip_flag_round_trip(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_ok(f->path);
	static const unsigned char member[] = { 0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0xaa, 0xbb };
	struct cache_entry in = {
		.status = 200,
		.headers = "Content-Type: text/plain\n",
		.headers_len = 25,
		.body = (void *)member,
		.body_len = sizeof(member),
		.gzip = 1,
		.identity_len = 123456,
		.stored_at = 10,
		.expires_at = 20,
	};
	struct cache_entry *e = NULL;
	int64_t bytes = 0;

	assert_int_equal(cache_put(c, "gz", "programs", "/programs", &in), 0);
	assert_int_equal(cache_get(c, "gz", &e), 1);
	assert_int_equal(e->gzip, 1);
	assert_int_equal(e->identity_len, 123456);
	assert_int_equal(e->body_len, sizeof(member));
	assert_memory_equal(e->body, member, sizeof(member));
	cache_entry_free(&e);
	/* The size counted is the stored one, not the identity length. */
	assert_int_equal(cache_usage(c, NULL, &bytes), 0);
	assert_int_equal(bytes, 2 + 25 + (int64_t)sizeof(member));
	cache_close(&c);
}

/* identity_len of a plain body is its length, whatever the caller left. */
static void test_plain_body_identity_len(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_ok(f->path);
	struct cache_entry in = {
		.status = 200,
		.body = "plain",
		.body_len = 5,
		.identity_len = 999,
	};
	struct cache_entry *e = NULL;

	assert_int_equal(cache_put(c, "p", "programs", "/p", &in), 0);
	assert_int_equal(cache_get(c, "p", &e), 1);
	assert_int_equal(e->gzip, 0);
	assert_int_equal(e->identity_len, 5);
	cache_entry_free(&e);
	cache_close(&c);
}

static void test_refresh_updates_headers_and_freshness(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_ok(f->path);
	static const char hdr[] = "ETag: \"v2\"\nCache-Control: max-age=60\n";
	struct cache_entry *e = NULL;
	int64_t bytes = 0;

	put_at(c, "k1", "programs", "/programs", 1000, 1300);
	assert_int_equal(cache_refresh(c, "k1", 1000, hdr, strlen(hdr), 2000, 2060), 1);
	assert_int_equal(cache_get(c, "k1", &e), 1);
	assert_int_equal(e->headers_len, strlen(hdr));
	assert_string_equal(e->headers, hdr);
	assert_int_equal(e->stored_at, 2000);
	assert_int_equal(e->expires_at, 2060);
	assert_int_equal(e->status, 200);
	assert_int_equal(e->body_len, 100);
	assert_memory_equal(e->body, BODY100, 100);
	cache_entry_free(&e);
	/* The size follows the new headers. */
	assert_int_equal(cache_usage(c, NULL, &bytes), 0);
	assert_int_equal(bytes, 2 + (int64_t)strlen(hdr) + 100);
	cache_close(&c);
}

static void test_refresh_absent_is_0(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_ok(f->path);
	int64_t n = -1;

	put_at(c, "k1", "programs", "/programs", 1000, 1300);
	assert_int_equal(cache_refresh(c, "nonesuch", 0, "A: b\n", 5, 2000, 2060), 0);
	assert_int_equal(present(c, "nonesuch"), 0);
	assert_int_equal(cache_usage(c, &n, NULL), 0);
	assert_int_equal(n, 1);
	cache_close(&c);
}

/* Each entry put_at makes with a two-byte key takes 107 bytes. */
#define ENTRY 107

static void test_evict_removes_least_recently_stored(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_ok(f->path);
	static const char *const gone[] = { "k1", "k2", "k3" };
	struct told t = { .n = 0 };
	int64_t n = 0, bytes = 0;

	/* Stored out of key order, so the order has to come from stored_at. */
	put_at(c, "k3", "programs", "/3", 300, 9999);
	put_at(c, "k5", "programs", "/5", 500, 9999);
	put_at(c, "k1", "programs", "/1", 100, 9999);
	put_at(c, "k4", "programs", "/4", 400, 9999);
	put_at(c, "k2", "programs", "/2", 200, 9999);
	/* Room for two and a half: three must go. */
	assert_int_equal(cache_evict(c, 2 * ENTRY + ENTRY / 2, tell, &t), 3);
	assert_told(&t, gone, 3);
	for (int i = 0; i < 3; i++)
		assert_int_equal(present(c, gone[i]), 0);
	assert_int_equal(present(c, "k4"), 1);
	assert_int_equal(present(c, "k5"), 1);
	assert_int_equal(cache_usage(c, &n, &bytes), 0);
	assert_int_equal(n, 2);
	assert_true(bytes <= 2 * ENTRY + ENTRY / 2);
	cache_close(&c);
}

static void test_touched_entry_survives_evict(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_ok(f->path);
	static const char *const gone[] = { "k2" };
	const char *used[] = { "k1", "absent" };
	struct told t = { .n = 0 };
	int64_t bytes = 0;

	put_at(c, "k1", "programs", "/1", 100, 9999);
	put_at(c, "k2", "programs", "/2", 200, 9999);
	put_at(c, "k3", "programs", "/3", 300, 9999);
	/* k1 is the oldest stored, but the most recently used. */
	assert_int_equal(cache_touch(c, used, 2, 400), 0);
	assert_int_equal(cache_evict(c, 2 * ENTRY, tell, &t), 1);
	assert_told(&t, gone, 1);
	assert_int_equal(present(c, "k1"), 1);
	assert_int_equal(present(c, "k2"), 0);
	assert_int_equal(present(c, "k3"), 1);
	assert_int_equal(cache_usage(c, NULL, &bytes), 0);
	assert_true(bytes <= 2 * ENTRY);
	cache_close(&c);
}

/* A late touch with an older time does not make an entry look unused. */
static void test_touch_never_moves_back(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_ok(f->path);
	const char *k1[] = { "k1" };

	put_at(c, "k1", "programs", "/1", 100, 9999);
	put_at(c, "k2", "programs", "/2", 200, 9999);
	assert_int_equal(cache_touch(c, k1, 1, 500), 0);
	assert_int_equal(cache_touch(c, k1, 1, 150), 0);
	assert_int_equal(cache_evict(c, ENTRY, NULL, NULL), 1);
	assert_int_equal(present(c, "k1"), 1);
	assert_int_equal(present(c, "k2"), 0);
	cache_close(&c);
}

/* A put counts as a use at stored_at: an entry stored after another was
 * last touched is the newer one. */
static void test_put_counts_as_use(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_ok(f->path);
	const char *k1[] = { "k1" };

	put_at(c, "k1", "programs", "/1", 100, 9999);
	assert_int_equal(cache_touch(c, k1, 1, 250), 0);
	put_at(c, "k3", "programs", "/3", 300, 9999);
	assert_int_equal(cache_evict(c, ENTRY, NULL, NULL), 1);
	assert_int_equal(present(c, "k1"), 0);
	assert_int_equal(present(c, "k3"), 1);
	cache_close(&c);
}

/* A revalidated entry was just asked for: it counts as used when refreshed. */
static void test_refresh_counts_as_use(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_ok(f->path);

	put_at(c, "k1", "programs", "/1", 100, 9999);
	put_at(c, "k2", "programs", "/2", 200, 9999);
	assert_int_equal(cache_refresh(c, "k1", 100, "H: 2\n", 5, 300, 9999), 1);
	assert_int_equal(cache_evict(c, ENTRY, NULL, NULL), 1);
	assert_int_equal(present(c, "k1"), 1);
	assert_int_equal(present(c, "k2"), 0);
	cache_close(&c);
}

static void test_evict_under_limit_deletes_nothing(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_ok(f->path);
	struct told t = { .n = 0 };
	int64_t n = 0;

	put_at(c, "k1", "programs", "/1", 100, 9999);
	put_at(c, "k2", "programs", "/2", 200, 9999);
	assert_int_equal(cache_evict(c, 2 * ENTRY, tell, &t), 0);
	assert_int_equal(t.n, 0);
	assert_int_equal(cache_usage(c, &n, NULL), 0);
	assert_int_equal(n, 2);
	/* Limit zero empties the cache. */
	assert_int_equal(cache_evict(c, 0, tell, &t), 2);
	assert_int_equal(t.n, 2);
	assert_int_equal(cache_usage(c, &n, NULL), 0);
	assert_int_equal(n, 0);
	cache_close(&c);
}

static void test_prune_removes_expired_only(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_ok(f->path);
	static const char *const gone[] = { "k1" };
	struct told t = { .n = 0 };

	put_at(c, "k1", "programs", "/1", 0, 100);
	put_at(c, "k2", "programs", "/2", 0, 200);
	put_at(c, "k3", "programs", "/3", 0, 300);
	/* expires_at < before: an entry expiring at `before` stays. */
	assert_int_equal(cache_prune(c, 200, tell, &t), 1);
	assert_told(&t, gone, 1);
	assert_int_equal(present(c, "k1"), 0);
	assert_int_equal(present(c, "k2"), 1);
	assert_int_equal(present(c, "k3"), 1);
	/* No callback is fine too. */
	assert_int_equal(cache_prune(c, 301, NULL, NULL), 2);
	assert_int_equal(present(c, "k2"), 0);
	assert_int_equal(present(c, "k3"), 0);
	cache_close(&c);
}

static void test_purge_all(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_ok(f->path);
	static const char *const gone[] = { "k1", "k2", "k3" };
	struct told t = { .n = 0 };
	int64_t n = -1, bytes = -1;

	put_at(c, "k1", "programs", "/1", 0, 100);
	put_at(c, "k2", "record_views", "/2", 0, 200);
	put_at(c, "k3", "entity_slices", "/3", 0, 300);
	assert_int_equal(cache_purge(c, CACHE_PURGE_ALL, NULL, tell, &t), 3);
	assert_told(&t, gone, 3);
	assert_int_equal(cache_usage(c, &n, &bytes), 0);
	assert_int_equal(n, 0);
	assert_int_equal(bytes, 0);
	assert_int_equal(cache_purge(c, CACHE_PURGE_ALL, NULL, tell, &t), 0);
	cache_close(&c);
}

static void test_purge_family(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_ok(f->path);
	static const char *const gone[] = { "p1", "p2" };
	struct told t = { .n = 0 };

	put_at(c, "p1", "programs", "/programs", 0, 100);
	put_at(c, "p2", "programs", "/programs/2", 0, 100);
	put_at(c, "r1", "record_views", "/programs/3", 0, 100);
	assert_int_equal(cache_purge(c, CACHE_PURGE_FAMILY, "programs", tell, &t), 2);
	assert_told(&t, gone, 2);
	assert_int_equal(present(c, "p1"), 0);
	assert_int_equal(present(c, "p2"), 0);
	assert_int_equal(present(c, "r1"), 1);
	assert_int_equal(cache_purge(c, CACHE_PURGE_FAMILY, "program", NULL, NULL), 0);
	cache_close(&c);
}

/* LIKE and GLOB metacharacters in a prefix are plain bytes. */
static void test_purge_prefix_is_literal(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_ok(f->path);
	static const char *const pct[] = { "a1", "a2" };
	static const char *const und[] = { "u1" };
	static const char *const glob[] = { "g1" };
	struct told t = { .n = 0 };

	put_at(c, "a1", "f", "/a%b", 0, 100);
	put_at(c, "a2", "f", "/a%b/x", 0, 100);
	put_at(c, "a3", "f", "/aXb/x", 0, 100);
	put_at(c, "a4", "f", "/a%", 0, 100);
	put_at(c, "u1", "f", "/a_c", 0, 100);
	put_at(c, "u2", "f", "/aYc", 0, 100);
	put_at(c, "g1", "f", "/g*[x]?", 0, 100);
	put_at(c, "g2", "f", "/gzx", 0, 100);
	put_at(c, "g3", "f", "/g", 0, 100);
	assert_int_equal(cache_purge(c, CACHE_PURGE_PREFIX, "/a%b", tell, &t), 2);
	assert_told(&t, pct, 2);
	t.n = 0;
	assert_int_equal(cache_purge(c, CACHE_PURGE_PREFIX, "/a_", tell, &t), 1);
	assert_told(&t, und, 1);
	t.n = 0;
	assert_int_equal(cache_purge(c, CACHE_PURGE_PREFIX, "/g*[", tell, &t), 1);
	assert_told(&t, glob, 1);
	assert_int_equal(present(c, "a3"), 1);
	assert_int_equal(present(c, "a4"), 1);
	assert_int_equal(present(c, "u2"), 1);
	assert_int_equal(present(c, "g2"), 1);
	assert_int_equal(present(c, "g3"), 1);
	cache_close(&c);
}

/* Byte for byte: a prefix may end inside a UTF-8 character, or in 0xff. */
static void test_purge_prefix_is_bytewise(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_ok(f->path);
	static const char *const cafe[] = { "c1" };
	static const char *const high[] = { "h1", "h2" };
	struct told t = { .n = 0 };

	put_at(c, "c1", "f", "/caf\xc3\xa9", 0, 100);
	put_at(c, "c2", "f", "/caf", 0, 100);
	put_at(c, "h1", "f", "/z\xff", 0, 100);
	put_at(c, "h2", "f", "/z\xff\xff/x", 0, 100);
	put_at(c, "h3", "f", "/{", 0, 100); /* "/z" plus one */
	put_at(c, "h4", "f", "/z", 0, 100);
	assert_int_equal(cache_purge(c, CACHE_PURGE_PREFIX, "/caf\xc3", tell, &t), 1);
	assert_told(&t, cafe, 1);
	t.n = 0;
	assert_int_equal(cache_purge(c, CACHE_PURGE_PREFIX, "/z\xff", tell, &t), 2);
	assert_told(&t, high, 2);
	assert_int_equal(present(c, "c2"), 1);
	assert_int_equal(present(c, "h3"), 1);
	assert_int_equal(present(c, "h4"), 1);
	cache_close(&c);
}

static void test_new_file_has_incremental_auto_vacuum(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_ok(f->path);

	cache_close(&c);
	assert_int_equal(file_int(f->path, "PRAGMA auto_vacuum"), 2);
}

static void test_vacuum_gives_space_back(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_ok(f->path);
	static char body[20000];
	struct cache_entry e = { .status = 200, .body = body, .body_len = sizeof(body) };
	struct stat before, after;
	char key[32];

	memset(body, 'b', sizeof(body));
	for (int i = 0; i < 50; i++) {
		snprintf(key, sizeof(key), "k%d", i);
		e.identity_len = sizeof(body);
		assert_int_equal(cache_put(c, key, "programs", "/p", &e), 0);
	}
	/* Everything into the main file first, so its size means something. */
	assert_int_equal(file_int(f->path, "PRAGMA wal_checkpoint(TRUNCATE)"), 0);
	assert_int_equal(stat(f->path, &before), 0);
	assert_true(before.st_size > 50 * 20000);
	assert_int_equal(cache_purge(c, CACHE_PURGE_ALL, NULL, NULL, NULL), 50);
	assert_true(file_int(f->path, "PRAGMA freelist_count") > 200);
	assert_int_equal(cache_vacuum(c), 0);
	assert_int_equal(file_int(f->path, "PRAGMA freelist_count"), 0);
	assert_int_equal(stat(f->path, &after), 0);
	assert_true(after.st_size < before.st_size / 10);
	put(c, "k", "programs", "", "x", 1, 1);
	assert_int_equal(present(c, "k"), 1);
	cache_close(&c);
}

/* The table, index and version kaleidod wrote before schema 2. */
static const char schema_v1_sql[] = "CREATE TABLE entries ("
				    " key TEXT PRIMARY KEY,"
				    " family TEXT NOT NULL,"
				    " status INTEGER NOT NULL,"
				    " headers BLOB NOT NULL,"
				    " body BLOB NOT NULL,"
				    " stored_at INTEGER NOT NULL,"
				    " expires_at INTEGER NOT NULL"
				    ");"
				    "CREATE INDEX entries_family ON entries(family);"
				    "PRAGMA user_version = 1;";

/* True when nothing named cache.db.bad-* sits beside the cache file. */
static int nothing_moved_aside(const struct fixture *f)
{
	char dir[160];
	struct dirent *d;
	int found = 0;
	DIR *dp;

	snprintf(dir, sizeof(dir), "%s/state/kaleidod", f->dir);
	assert_non_null(dp = opendir(dir));
	while ((d = readdir(dp)) != NULL)
		found += strstr(d->d_name, ".bad-") != NULL;
	closedir(dp);
	return found == 0;
}

static void test_migrates_version_1(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_ok(f->path); /* makes the directories */
	struct stat before, after;
	int64_t n = -1;

	cache_close(&c);
	assert_int_equal(unlink(f->path), 0);
	file_exec(f->path, "PRAGMA journal_mode = WAL;");
	file_exec(f->path, schema_v1_sql);
	file_exec(f->path, "INSERT INTO entries VALUES ('old', 'programs', 200, 'H: 1\n', "
			   "zeroblob(50000), 1, 2)");
	assert_int_equal(file_int(f->path, "PRAGMA auto_vacuum"), 0);
	assert_int_equal(stat(f->path, &before), 0);

	c = open_ok(f->path);
	assert_int_equal(present(c, "old"), 0);
	assert_int_equal(cache_usage(c, &n, NULL), 0);
	assert_int_equal(n, 0);
	put_at(c, "new", "programs", "/programs", 1, 2);
	assert_int_equal(present(c, "new"), 1);
	cache_close(&c);

	assert_int_equal(file_int(f->path, "PRAGMA user_version"), 2);
	assert_int_equal(file_int(f->path, "PRAGMA auto_vacuum"), 2);
	assert_int_equal(file_int(f->path, "SELECT count(*) FROM sqlite_schema WHERE name IN"
					   " ('bodies', 'entries_delete_body')"),
			 2);
	/* Migrated in place: the same file, not a fresh one after a quarantine. */
	assert_int_equal(stat(f->path, &after), 0);
	assert_int_equal(after.st_ino, before.st_ino);
	assert_true(nothing_moved_aside(f));
	/* And the old row's pages went with it. */
	assert_true(after.st_size < before.st_size);
}

/* A migration cut short after dropping the old table carries on. */
static void test_migration_resumes(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_ok(f->path);

	cache_close(&c);
	assert_int_equal(unlink(f->path), 0);
	file_exec(f->path, "PRAGMA journal_mode = WAL; PRAGMA user_version = 1;");
	c = open_ok(f->path);
	put_at(c, "new", "programs", "/programs", 1, 2);
	assert_int_equal(present(c, "new"), 1);
	cache_close(&c);
	assert_int_equal(file_int(f->path, "PRAGMA user_version"), 2);
	assert_int_equal(file_int(f->path, "PRAGMA auto_vacuum"), 2);
}

static long long wal_size(const char *path)
{
	char wal[160];
	struct stat st;

	snprintf(wal, sizeof(wal), "%s-wal", path);
	return stat(wal, &st) == 0 ? (long long)st.st_size : 0;
}

/* Empties the WAL into the database and cuts it to nothing, so its size
 * afterwards is what the next commit wrote. */
static void wal_reset(sqlite3 *db, const char *path)
{
	sqlite3_stmt *st;

	assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA wal_checkpoint(TRUNCATE)", -1, &st, NULL),
			 SQLITE_OK);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	assert_int_equal(sqlite3_column_int(st, 0), 0); /* not busy */
	sqlite3_finalize(st);
	assert_int_equal(wal_size(path), 0);
}

/*
 * Touches and refreshes come all the time and must not rewrite the body: a
 * commit that did would add the body's 256 pages and more to the WAL.  Each
 * one here is its own commit, as in the daemon, and may add a few pages
 * (entry row and index pages), never 32 KiB.  The first touch moves
 * accessed_at from a one-byte integer to a four-byte one, and the headers
 * change length on every refresh: rows that change size, which SQLite
 * cannot overwrite in place.
 */
#define BIG_LEN (1024 * 1024)
#define WAL_PER_COMMIT (32 * 1024)

static void test_touch_and_refresh_write_little(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_ok(f->path);
	const char *k[] = { "big" };
	char *body = malloc(BIG_LEN), hdr[64];
	struct cache_entry in = {
		.status = 200,
		.headers = "ETag: \"1\"\n",
		.headers_len = 10,
		.body = body,
		.body_len = BIG_LEN,
		.identity_len = BIG_LEN,
		.stored_at = 100,
		.expires_at = 200,
	};
	struct cache_entry *e = NULL;
	long long w, touched = 0, refreshed = 0;
	int64_t bytes = 0;
	sqlite3 *db;
	int n = 0;

	assert_non_null(body);
	for (size_t i = 0; i < BIG_LEN; i++)
		body[i] = (char)(i * 131 + (i >> 9));
	assert_int_equal(cache_put(c, "big", "programs", "/big", &in), 0);
	/* The put itself writes the body once, and more than a megabyte. */
	assert_true(wal_size(f->path) > BIG_LEN);
	assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
	for (int i = 0; i < 100; i++) {
		wal_reset(db, f->path);
		assert_int_equal(cache_touch(c, k, 1, 1700000000 + i), 0);
		if ((w = wal_size(f->path)) >= WAL_PER_COMMIT)
			fail_msg("touch %d wrote %lld bytes of WAL", i, w);
		touched += w;
	}
	for (int i = 0; i < 100; i++) {
		n = snprintf(hdr, sizeof(hdr), "ETag: \"1\"\nAge: %d\n", i % 2 ? 7 : 12);
		wal_reset(db, f->path);
		assert_int_equal(cache_refresh(c, "big", i == 0 ? in.stored_at : 1700001000 + i - 1,
					       hdr, (size_t)n, 1700001000 + i, 1700002000 + i),
				 1);
		if ((w = wal_size(f->path)) >= WAL_PER_COMMIT)
			fail_msg("refresh %d wrote %lld bytes of WAL", i, w);
		refreshed += w;
	}
	sqlite3_close(db);
	/* A hundred of each write less than the body did once. */
	if (touched >= BIG_LEN || refreshed >= BIG_LEN + BIG_LEN / 2)
		fail_msg("100 touches wrote %lld bytes of WAL, 100 refreshes %lld", touched,
			 refreshed);
	assert_int_equal(cache_get(c, "big", &e), 1);
	assert_int_equal(e->body_len, BIG_LEN);
	assert_memory_equal(e->body, body, BIG_LEN);
	assert_string_equal(e->headers, hdr);
	assert_int_equal(e->expires_at, 1700002000 + 99);
	cache_entry_free(&e);
	assert_int_equal(cache_usage(c, NULL, &bytes), 0);
	assert_int_equal(bytes, 3 + n + BIG_LEN);
	cache_close(&c);
	free(body);
}

/* Every entry has its body, and no body outlives its entry. */
static void assert_bodies_match(const char *path, const char *after, long long want)
{
	long long entries = file_int(path, "SELECT count(*) FROM entries");
	long long bodies = file_int(path, "SELECT count(*) FROM bodies");
	long long joined = file_int(path, "SELECT count(*) FROM entries JOIN bodies USING (id)");

	if (entries != want || bodies != want || joined != want)
		fail_msg("after %s: %lld entries, %lld bodies, %lld joined; want %lld each", after,
			 entries, bodies, joined, want);
}

static void test_no_orphan_bodies(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_ok(f->path);
	struct cache_entry *e = NULL;
	static const char big[3000] = { 'b' };
	char key[16];

	for (int i = 0; i < 8; i++) {
		snprintf(key, sizeof(key), "k%d", i);
		put_at(c, key, i < 4 ? "programs" : "record_views", i % 2 ? "/a/x" : "/b/x",
		       100 + i, 1000 + i);
	}
	assert_bodies_match(f->path, "puts", 8);
	/* Replaced with a longer body, a shorter one, then an empty one. */
	put(c, "k0", "programs", "", big, sizeof(big), 5000);
	put(c, "k0", "programs", "", "short", 5, 5000);
	put(c, "k1", "programs", "", "", 0, 5000);
	assert_bodies_match(f->path, "replace", 8);
	assert_int_equal(cache_get(c, "k0", &e), 1);
	assert_int_equal(e->body_len, 5);
	assert_memory_equal(e->body, "short", 5);
	cache_entry_free(&e);
	assert_int_equal(cache_refresh(c, "k2", 102, "A: b\n", 5, 1500, 2000), 1);
	assert_bodies_match(f->path, "refresh", 8);
	/* k0 (7 bytes now) and k1 (2) were stored at 1700000000 by put(), k2
	 * refreshed at 1500: the least recently used are k3 and k4. */
	assert_int_equal(cache_evict(c, 4 * ENTRY + 7 + 2, NULL, NULL), 2);
	assert_int_equal(present(c, "k3"), 0);
	assert_int_equal(present(c, "k4"), 0);
	assert_bodies_match(f->path, "evict", 6);
	assert_int_equal(cache_prune(c, 1006, NULL, NULL), 1); /* k5 */
	assert_bodies_match(f->path, "prune", 5);
	assert_int_equal(cache_purge(c, CACHE_PURGE_PREFIX, "/b/", NULL, NULL), 2); /* k2, k6 */
	assert_bodies_match(f->path, "purge by prefix", 3);
	assert_int_equal(cache_purge(c, CACHE_PURGE_FAMILY, "record_views", NULL, NULL), 1);
	assert_bodies_match(f->path, "purge by family", 2);
	assert_int_equal(cache_invalidate_family(c, "programs"), 2);
	assert_bodies_match(f->path, "invalidate", 0);
	/* Another connection's delete takes the body too. */
	put_at(c, "x1", "programs", "/x", 1, 1);
	put_at(c, "x2", "programs", "/x", 1, 1);
	file_exec(f->path, "DELETE FROM entries WHERE key = 'x2'");
	assert_bodies_match(f->path, "a delete elsewhere", 1);
	/* A body left behind under the id the next entry gets is overwritten. */
	file_exec(f->path,
		  "INSERT INTO bodies (id, body) SELECT max(id) + 1, 'stale' FROM entries");
	put(c, "x3", "programs", "", "fresh", 5, 1);
	assert_bodies_match(f->path, "a put over a stray body", 2);
	assert_int_equal(cache_get(c, "x3", &e), 1);
	assert_memory_equal(e->body, "fresh", 5);
	cache_entry_free(&e);
	assert_int_equal(cache_purge(c, CACHE_PURGE_ALL, NULL, NULL, NULL), 2);
	assert_bodies_match(f->path, "purge all", 0);
	cache_close(&c);
}

static void test_changed_elsewhere(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_ok(f->path);
	sqlite3 *other;

	assert_int_equal(cache_changed_elsewhere(c), 0);
	/* Its own writes, and its readers, are not "elsewhere". */
	put_at(c, "k1", "programs", "/1", 1, 2);
	assert_int_equal(present(c, "k1"), 1);
	assert_int_equal(cache_changed_elsewhere(c), 0);
	assert_int_equal(sqlite3_open(f->path, &other), SQLITE_OK);
	assert_int_equal(
		sqlite3_exec(other, "DELETE FROM entries WHERE key = 'k1'", NULL, NULL, NULL),
		SQLITE_OK);
	assert_int_equal(cache_changed_elsewhere(c), 1);
	assert_int_equal(cache_changed_elsewhere(c), 0);
	/* A read elsewhere changes nothing. */
	assert_int_equal(sqlite3_exec(other, "SELECT count(*) FROM entries", NULL, NULL, NULL),
			 SQLITE_OK);
	assert_int_equal(cache_changed_elsewhere(c), 0);
	sqlite3_close(other);
	cache_close(&c);
}

/* A 304 refreshes the version it was asked about, not whatever the key
 * holds now: headers of one body must never land on another. */
static void test_refresh_only_its_own_version(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_ok(f->path);
	struct cache_entry *e = NULL;

	put_at(c, "k1", "programs", "/1", 100, 200);
	assert_int_equal(cache_refresh(c, "k1", 150, "ETag: \"2\"\n", 10, 300, 400), 0);
	assert_int_equal(cache_get(c, "k1", &e), 1);
	assert_int_equal(e->stored_at, 100);
	assert_int_equal(e->expires_at, 200);
	assert_string_equal(e->headers, "H: 1\n");
	cache_entry_free(&e);
	cache_close(&c);
}

/* After another process wrote (a purge), a put refuses until the change has
 * been noticed: what it holds may predate that purge. */
static void test_put_refused_after_change_elsewhere(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_ok(f->path);
	struct cache_entry in = { .status = 200,
				  .headers = "",
				  .body = "x",
				  .body_len = 1,
				  .identity_len = 1,
				  .stored_at = 1,
				  .expires_at = 2 };
	sqlite3 *other;

	put_at(c, "k0", "programs", "/0", 1, 2);
	assert_int_equal(cache_changed_elsewhere(c), 0);
	assert_int_equal(sqlite3_open(f->path, &other), SQLITE_OK);
	/* A delete that removes nothing commits nothing: k0 makes it real. */
	assert_int_equal(sqlite3_exec(other, "DELETE FROM entries", NULL, NULL, NULL), SQLITE_OK);
	assert_int_equal(cache_put(c, "k1", "programs", "/1", &in), -2);
	assert_int_equal(present(c, "k1"), 0);
	assert_int_equal(cache_changed_elsewhere(c), 1);
	assert_int_equal(cache_put(c, "k1", "programs", "/1", &in), 0);
	assert_int_equal(present(c, "k1"), 1);
	sqlite3_close(other);
	cache_close(&c);
}

static void test_forget(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_ok(f->path);

	put_at(c, "k1", "programs", "/1", 1, 2);
	put_at(c, "k2", "programs", "/2", 1, 2);
	assert_int_equal(cache_forget(c, "k1"), 0);
	assert_int_equal(cache_forget(c, "nonesuch"), 0);
	assert_int_equal(present(c, "k1"), 0);
	assert_int_equal(present(c, "k2"), 1);
	assert_bodies_match(f->path, "forget", 1);
	cache_close(&c);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(test_round_trip),
		T(test_refresh_only_its_own_version),
		T(test_put_refused_after_change_elsewhere),
		T(test_forget),
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
		T(test_gzip_flag_round_trip),
		T(test_plain_body_identity_len),
		T(test_refresh_updates_headers_and_freshness),
		T(test_refresh_absent_is_0),
		T(test_evict_removes_least_recently_stored),
		T(test_touched_entry_survives_evict),
		T(test_touch_never_moves_back),
		T(test_put_counts_as_use),
		T(test_refresh_counts_as_use),
		T(test_evict_under_limit_deletes_nothing),
		T(test_prune_removes_expired_only),
		T(test_purge_all),
		T(test_purge_family),
		T(test_purge_prefix_is_literal),
		T(test_purge_prefix_is_bytewise),
		T(test_new_file_has_incremental_auto_vacuum),
		T(test_vacuum_gives_space_back),
		T(test_migrates_version_1),
		T(test_migration_resumes),
		T(test_touch_and_refresh_write_little),
		T(test_no_orphan_bodies),
		T(test_changed_elsewhere),
	};
#undef T

	return cmocka_run_group_tests(tests, NULL, NULL);
}
