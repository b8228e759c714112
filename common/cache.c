/*
 * cache: the SQLite file that keeps upstream answers across restarts.
 *
 * Shape (see libraries.md): WAL, so readers never wait for the writer; one
 * writer connection behind a mutex, which also keeps SQLite's WAL-reset race
 * (it needs two writers or checkpointers) out of reach; one read-only
 * connection per calling thread, made on first use and closed when the
 * thread exits.  Statements are prepared once per connection: preparing per
 * call roughly doubles the cost of a small hit.
 *
 * Errors are returned, and the text of the last one is kept per thread for
 * cache_errmsg(), because the reader connections are per thread too.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cache.h"

#define CACHE_SCHEMA_VERSION 1
#define BUSY_TIMEOUT_MS 5000

static const char schema_sql[] = "CREATE TABLE IF NOT EXISTS entries ("
				 " key TEXT PRIMARY KEY,"
				 " family TEXT NOT NULL,"
				 " status INTEGER NOT NULL,"
				 " headers BLOB NOT NULL,"
				 " body BLOB NOT NULL,"
				 " stored_at INTEGER NOT NULL,"
				 " expires_at INTEGER NOT NULL"
				 ");"
				 "CREATE INDEX IF NOT EXISTS entries_family ON entries(family);"
				 "PRAGMA user_version = 1;";

/* One thread's read-only connection; linked into its cache's list so
 * cache_close can reach the ones whose threads are still alive. */
struct reader {
	struct cache *c;
	sqlite3 *db;
	sqlite3_stmt *get;
	sqlite3_stmt *usage;
	struct reader *prev, *next;
};

struct cache {
	char *path;

	pthread_mutex_t wlock; /* guards wdb and its statements */
	sqlite3 *wdb;
	sqlite3_stmt *begin, *commit, *rollback, *put, *inval;

	pthread_key_t rkey;    /* this thread's struct reader */
	pthread_mutex_t rlock; /* guards the readers list */
	struct reader *readers;
};

static _Thread_local char errbuf[512];

static void set_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void set_err(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(errbuf, sizeof(errbuf), fmt, ap);
	va_end(ap);
}

static void reader_close(struct reader *r)
{
	sqlite3_finalize(r->get);
	sqlite3_finalize(r->usage);
	sqlite3_close(r->db);
	free(r);
}

/* Thread-exit destructor.  cache_close deletes the key before it frees the
 * list, so this never runs on a reader cache_close already closed, as long as
 * no thread is exiting while cache_close runs (see cache_close). */
static void reader_destroy(void *arg)
{
	struct reader *r = arg;
	struct cache *c = r->c;

	pthread_mutex_lock(&c->rlock);
	if (r->prev != NULL)
		r->prev->next = r->next;
	else
		c->readers = r->next;
	if (r->next != NULL)
		r->next->prev = r->prev;
	pthread_mutex_unlock(&c->rlock);
	reader_close(r);
}

static int prepare(sqlite3 *db, const char *sql, sqlite3_stmt **st)
{
	return sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, st, NULL);
}

/* This thread's reader, opened on first use.  NULL with errbuf set. */
static struct reader *reader_get(struct cache *c)
{
	struct reader *r = pthread_getspecific(c->rkey);
	int rc;

	if (r != NULL)
		return r;
	if ((r = calloc(1, sizeof(*r))) == NULL) {
		set_err("out of memory");
		return NULL;
	}
	r->c = c;
	rc = sqlite3_open_v2(c->path, &r->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL);
	if (rc != SQLITE_OK)
		goto fail;
	sqlite3_busy_timeout(r->db, BUSY_TIMEOUT_MS);
	if ((rc = prepare(r->db,
			  "SELECT status, headers, body, stored_at, expires_at"
			  " FROM entries WHERE key = ?1",
			  &r->get)) != SQLITE_OK)
		goto fail;
	/* length() of a blob reads no content pages, so this stays cheap. */
	if ((rc = prepare(r->db,
			  "SELECT count(*), coalesce(sum(length(headers) + length(body)), 0)"
			  " FROM entries",
			  &r->usage)) != SQLITE_OK)
		goto fail;
	if (pthread_setspecific(c->rkey, r) != 0) {
		set_err("pthread_setspecific failed");
		reader_close(r);
		return NULL;
	}
	pthread_mutex_lock(&c->rlock);
	r->next = c->readers;
	if (c->readers != NULL)
		c->readers->prev = r;
	c->readers = r;
	pthread_mutex_unlock(&c->rlock);
	return r;
fail:
	set_err("%s: read connection: %s", c->path,
		r->db ? sqlite3_errmsg(r->db) : sqlite3_errstr(rc));
	reader_close(r);
	return NULL;
}

/* Creates every missing directory above path, mode 0700. */
static int mkdir_parents(const char *path)
{
	char *dir = strdup(path);
	int ret = -1;

	if (dir == NULL)
		goto out;
	for (char *p = dir + 1; (p = strchr(p, '/')) != NULL; p++) {
		*p = '\0';
		if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
			set_err("mkdir %s: %s", dir, strerror(errno));
			goto out;
		}
		*p = '/';
	}
	ret = 0;
out:
	free(dir);
	return ret;
}

static enum cache_err classify(int rc)
{
	switch (rc & 0xff) {
	case SQLITE_NOTADB:
	case SQLITE_CORRUPT:
		return CACHE_ERR_CORRUPT;
	default:
		return CACHE_ERR_IO;
	}
}

/* Runs a pragma or statement that answers at most one integer. */
static int exec_int(sqlite3 *db, const char *sql, long long *out)
{
	sqlite3_stmt *st = NULL;
	int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);

	if (rc == SQLITE_OK) {
		rc = sqlite3_step(st);
		if (rc == SQLITE_ROW) {
			if (out != NULL)
				*out = sqlite3_column_int64(st, 0);
			rc = SQLITE_OK;
		} else if (rc == SQLITE_DONE) {
			rc = SQLITE_OK;
		}
	}
	sqlite3_finalize(st);
	return rc;
}

/* Settings, then the schema check, on the writer connection.  Returns an
 * SQLite code; *why set when it is not SQLITE_OK. */
static int setup_writer(struct cache *c, enum cache_err *why)
{
	sqlite3 *db = c->wdb;
	sqlite3_stmt *st = NULL;
	long long version = 0;
	int rc;

	sqlite3_busy_timeout(db, BUSY_TIMEOUT_MS);
	/* Reading the header and the schema is what tells a damaged file. */
	if ((rc = exec_int(db, "PRAGMA user_version", &version)) != SQLITE_OK ||
	    (rc = exec_int(db, "SELECT count(*) FROM sqlite_schema", NULL)) != SQLITE_OK)
		goto fail;
	if (version > CACHE_SCHEMA_VERSION) {
		*why = CACHE_ERR_SCHEMA;
		set_err("%s: schema version %lld is newer than this kaleidod's (%d)", c->path,
			version, CACHE_SCHEMA_VERSION);
		return SQLITE_ERROR;
	}
	/* journal_mode answers the mode in force: anything but "wal" means the
	 * file cannot hold a WAL (read-only medium), which readers depend on. */
	if ((rc = sqlite3_prepare_v2(db, "PRAGMA journal_mode = WAL", -1, &st, NULL)) != SQLITE_OK)
		goto fail;
	rc = sqlite3_step(st);
	if (rc != SQLITE_ROW) {
		sqlite3_finalize(st);
		goto fail;
	}
	if (strcmp((const char *)sqlite3_column_text(st, 0), "wal") != 0) {
		sqlite3_finalize(st);
		*why = CACHE_ERR_IO;
		set_err("%s: cannot switch to WAL mode", c->path);
		return SQLITE_ERROR;
	}
	sqlite3_finalize(st);
	if ((rc = sqlite3_exec(db, "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = OFF", NULL,
			       NULL, NULL)) != SQLITE_OK)
		goto fail;
	if (version == 0) {
		/* Checked again inside the write lock: another process may have
		 * created the schema since. */
		if ((rc = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL)) != SQLITE_OK)
			goto fail;
		if ((rc = exec_int(db, "PRAGMA user_version", &version)) == SQLITE_OK &&
		    version == 0)
			rc = sqlite3_exec(db, schema_sql, NULL, NULL, NULL);
		if (rc == SQLITE_OK)
			rc = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
		if (rc != SQLITE_OK) {
			set_err("%s: %s", c->path, sqlite3_errmsg(db));
			sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
			*why = classify(rc);
			return rc;
		}
		if (version > CACHE_SCHEMA_VERSION) {
			*why = CACHE_ERR_SCHEMA;
			set_err("%s: schema version %lld is newer than this kaleidod's (%d)",
				c->path, version, CACHE_SCHEMA_VERSION);
			return SQLITE_ERROR;
		}
	}
	if ((rc = prepare(db, "BEGIN IMMEDIATE", &c->begin)) != SQLITE_OK ||
	    (rc = prepare(db, "COMMIT", &c->commit)) != SQLITE_OK ||
	    (rc = prepare(db, "ROLLBACK", &c->rollback)) != SQLITE_OK)
		goto fail;
	/* A file at version 1 whose table does not match ours fails here; it is
	 * not a cache this code can use, so it counts as damaged. */
	if ((rc = prepare(db,
			  "INSERT OR REPLACE INTO entries"
			  " (key, family, status, headers, body, stored_at, expires_at)"
			  " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
			  &c->put)) != SQLITE_OK ||
	    (rc = prepare(db, "DELETE FROM entries WHERE family = ?1", &c->inval)) != SQLITE_OK) {
		set_err("%s: unexpected schema: %s", c->path, sqlite3_errmsg(db));
		*why = rc == SQLITE_ERROR ? CACHE_ERR_CORRUPT : classify(rc);
		return rc;
	}
	return SQLITE_OK;
fail:
	set_err("%s: %s", c->path, sqlite3_errmsg(db));
	*why = classify(rc);
	return rc;
}

/* Frees a cache, whole or half-opened.  Readers go first, so the writer's
 * close is the last one and checkpoints and removes the WAL. */
static void cache_destroy(struct cache *c, int key_made)
{
	if (key_made) {
		pthread_setspecific(c->rkey, NULL);
		pthread_key_delete(c->rkey);
	}
	while (c->readers != NULL) {
		struct reader *r = c->readers;

		c->readers = r->next;
		reader_close(r);
	}
	sqlite3_finalize(c->begin);
	sqlite3_finalize(c->commit);
	sqlite3_finalize(c->rollback);
	sqlite3_finalize(c->put);
	sqlite3_finalize(c->inval);
	sqlite3_close(c->wdb);
	pthread_mutex_destroy(&c->wlock);
	pthread_mutex_destroy(&c->rlock);
	free(c->path);
	free(c);
}

struct cache *cache_open(const char *path, enum cache_err *why, char *err, size_t errlen)
{
	struct cache *c = NULL;
	enum cache_err dummy;
	int key_made = 0, fd, rc;

	if (why == NULL)
		why = &dummy;
	*why = CACHE_ERR_IO;
	if ((c = calloc(1, sizeof(*c))) == NULL) {
		set_err("out of memory");
		goto fail;
	}
	pthread_mutex_init(&c->wlock, NULL);
	pthread_mutex_init(&c->rlock, NULL);
	if ((c->path = strdup(path)) == NULL) {
		set_err("out of memory");
		goto fail;
	}
	if (pthread_key_create(&c->rkey, reader_destroy) != 0) {
		set_err("pthread_key_create failed");
		goto fail;
	}
	key_made = 1;
	if (mkdir_parents(path) < 0)
		goto fail;
	/* Made here, not by SQLite, so the file is private from its first byte;
	 * SQLite gives -wal and -shm the mode of the database file. */
	if ((fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600)) < 0) {
		set_err("%s: %s", path, strerror(errno));
		goto fail;
	}
	close(fd);
	rc = sqlite3_open_v2(path, &c->wdb, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
	if (rc != SQLITE_OK) {
		set_err("%s: %s", path, c->wdb ? sqlite3_errmsg(c->wdb) : sqlite3_errstr(rc));
		*why = classify(rc);
		goto fail;
	}
	sqlite3_extended_result_codes(c->wdb, 1);
	/* SQLite falls back to read-only without a word; writes would fail later. */
	if (sqlite3_db_readonly(c->wdb, "main") != 0) {
		set_err("%s: opened read-only", path);
		goto fail;
	}
	if (setup_writer(c, why) != SQLITE_OK)
		goto fail;
	*why = CACHE_OK;
	return c;
fail:
	if (err != NULL && errlen > 0)
		snprintf(err, errlen, "%s", errbuf);
	if (c != NULL)
		cache_destroy(c, key_made);
	return NULL;
}

/*
 * Every other thread must have stopped using the cache (and not be exiting)
 * before this is called: their readers are closed here, and a thread exit
 * racing it would close a reader twice.  Threads that live on keep a dead
 * thread-specific slot, which the deleted key makes unreachable.
 */
void cache_close(struct cache **c)
{
	if (c == NULL || *c == NULL)
		return;
	cache_destroy(*c, 1);
	*c = NULL;
}

const char *cache_path(const struct cache *c)
{
	return c->path;
}

/* Moves one file if it exists; a missing -wal or -shm is normal. */
static int move_aside(const char *from, const char *to, int must_exist)
{
	if (rename(from, to) == 0)
		return 0;
	return (!must_exist && errno == ENOENT) ? 0 : -1;
}

int cache_quarantine(const char *path, char *newpath, size_t newlen)
{
	char bad[4096], from[4096], to[4096 + 8];
	long long now = (long long)time(NULL);
	struct stat st;
	int n;

	/* Two quarantines in one second must not overwrite the first. */
	for (int i = 0;; i++) {
		n = i == 0 ? snprintf(bad, sizeof(bad), "%s.bad-%lld", path, now) :
			     snprintf(bad, sizeof(bad), "%s.bad-%lld.%d", path, now, i);
		if (n < 0 || (size_t)n + 4 >= sizeof(bad)) {
			errno = ENAMETOOLONG;
			return -1;
		}
		if (lstat(bad, &st) < 0 && errno == ENOENT)
			break;
		if (i == 100) {
			errno = EEXIST;
			return -1;
		}
	}
	if (newpath != NULL && newlen > 0 && (size_t)n >= newlen) {
		errno = ENAMETOOLONG;
		return -1;
	}
	if (move_aside(path, bad, 1) < 0)
		return -1;
	/* A WAL left beside a new database would be replayed into it. */
	snprintf(from, sizeof(from), "%s-wal", path);
	snprintf(to, sizeof(to), "%s-wal", bad);
	if (move_aside(from, to, 0) < 0)
		return -1;
	snprintf(from, sizeof(from), "%s-shm", path);
	snprintf(to, sizeof(to), "%s-shm", bad);
	if (move_aside(from, to, 0) < 0)
		return -1;
	if (newpath != NULL && newlen > 0)
		snprintf(newpath, newlen, "%s", bad);
	return 0;
}

static void *copy_blob(const void *p, size_t len)
{
	/* One spare NUL: callers may treat the headers as a C string. */
	char *out = malloc(len + 1);

	if (out == NULL)
		return NULL;
	if (len > 0)
		memcpy(out, p, len);
	out[len] = '\0';
	return out;
}

int cache_get(struct cache *c, const char *key, struct cache_entry **out)
{
	struct reader *r = reader_get(c);
	struct cache_entry *e = NULL;
	int rc, ret = -1;

	*out = NULL;
	if (r == NULL)
		return -1;
	sqlite3_bind_text(r->get, 1, key, -1, SQLITE_STATIC);
	rc = sqlite3_step(r->get);
	if (rc == SQLITE_DONE) {
		ret = 0;
		goto out;
	}
	if (rc != SQLITE_ROW) {
		set_err("cache get: %s", sqlite3_errmsg(r->db));
		goto out;
	}
	if ((e = calloc(1, sizeof(*e))) == NULL)
		goto nomem;
	e->status = (long)sqlite3_column_int64(r->get, 0);
	e->headers_len = (size_t)sqlite3_column_bytes(r->get, 1);
	if ((e->headers = copy_blob(sqlite3_column_blob(r->get, 1), e->headers_len)) == NULL)
		goto nomem;
	e->body_len = (size_t)sqlite3_column_bytes(r->get, 2);
	if ((e->body = copy_blob(sqlite3_column_blob(r->get, 2), e->body_len)) == NULL)
		goto nomem;
	e->stored_at = sqlite3_column_int64(r->get, 3);
	e->expires_at = sqlite3_column_int64(r->get, 4);
	*out = e;
	e = NULL;
	ret = 1;
	goto out;
nomem:
	set_err("cache get: out of memory");
out:
	/* Reset ends the read transaction, so checkpoints are not held back. */
	sqlite3_reset(r->get);
	sqlite3_clear_bindings(r->get);
	cache_entry_free(&e);
	return ret;
}

void cache_entry_free(struct cache_entry **e)
{
	if (e == NULL || *e == NULL)
		return;
	free((*e)->headers);
	free((*e)->body);
	free(*e);
	*e = NULL;
}

/* Runs a prepared statement that answers no rows. */
static int step_done(sqlite3_stmt *st)
{
	int rc = sqlite3_step(st);

	sqlite3_reset(st);
	return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Runs st inside BEGIN IMMEDIATE (the writer's lock taken up front, so the
 * busy timeout applies) on the writer connection; wlock held by the caller.
 * Returns the number of rows changed, or -1 with errbuf set. */
static int write_txn(struct cache *c, sqlite3_stmt *st, const char *what)
{
	int rc, changes;

	if ((rc = step_done(c->begin)) != SQLITE_OK)
		goto fail;
	rc = sqlite3_step(st);
	changes = sqlite3_changes(c->wdb);
	sqlite3_reset(st);
	if (rc != SQLITE_DONE)
		goto fail_rollback;
	if ((rc = step_done(c->commit)) != SQLITE_OK)
		goto fail_rollback;
	return changes;
fail_rollback:
	set_err("cache %s: %s", what, sqlite3_errmsg(c->wdb));
	if (sqlite3_get_autocommit(c->wdb) == 0)
		step_done(c->rollback);
	return -1;
fail:
	set_err("cache %s: %s", what, sqlite3_errmsg(c->wdb));
	return -1;
}

int cache_put(struct cache *c, const char *key, const char *family, const struct cache_entry *e)
{
	sqlite3_stmt *st = c->put;
	int ret;

	pthread_mutex_lock(&c->wlock);
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, family, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, e->status);
	/* A NULL pointer would bind SQL NULL; an empty blob keeps NOT NULL happy. */
	sqlite3_bind_blob64(st, 4, e->headers ? e->headers : "", e->headers_len, SQLITE_STATIC);
	sqlite3_bind_blob64(st, 5, e->body ? e->body : "", e->body_len, SQLITE_STATIC);
	sqlite3_bind_int64(st, 6, e->stored_at);
	sqlite3_bind_int64(st, 7, e->expires_at);
	ret = write_txn(c, st, "put");
	sqlite3_clear_bindings(st);
	pthread_mutex_unlock(&c->wlock);
	return ret < 0 ? -1 : 0;
}

int cache_invalidate_family(struct cache *c, const char *family)
{
	int ret;

	pthread_mutex_lock(&c->wlock);
	sqlite3_bind_text(c->inval, 1, family, -1, SQLITE_STATIC);
	ret = write_txn(c, c->inval, "invalidate");
	sqlite3_clear_bindings(c->inval);
	pthread_mutex_unlock(&c->wlock);
	return ret;
}

int cache_usage(struct cache *c, int64_t *entries, int64_t *bytes)
{
	struct reader *r = reader_get(c);
	int rc, ret = -1;

	if (r == NULL)
		return -1;
	rc = sqlite3_step(r->usage);
	if (rc == SQLITE_ROW) {
		if (entries != NULL)
			*entries = sqlite3_column_int64(r->usage, 0);
		if (bytes != NULL)
			*bytes = sqlite3_column_int64(r->usage, 1);
		ret = 0;
	} else {
		set_err("cache usage: %s", sqlite3_errmsg(r->db));
	}
	sqlite3_reset(r->usage);
	return ret;
}

const char *cache_errmsg(struct cache *c)
{
	(void)c;
	return errbuf;
}
