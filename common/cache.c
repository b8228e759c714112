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
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cache.h"

#define CACHE_SCHEMA_VERSION 2
#define BUSY_TIMEOUT_MS 5000
/* The WAL keeps its largest size until told otherwise; a purge of the whole
 * cache would leave a WAL as big as the cache was. */
#define WAL_SIZE_LIMIT (64 * 1024 * 1024)

/*
 * Bodies live in a table of their own, one row per entry under the entry's
 * id, so the updates that come often (cache_touch, cache_refresh) rewrite a
 * small row and never the body.  SQLite overwrites a row in place only while
 * its size stays the same (new headers, or an integer that needs more bytes,
 * change it); otherwise it writes the row anew, overflow pages included, and
 * with secure_delete (Debian's default) the freed pages again as zeros: over
 * 2 MiB of WAL per refresh of a 1 MiB body.  id is an INTEGER PRIMARY KEY
 * because VACUUM may renumber an implicit rowid.  The trigger takes the body
 * with every deleted entry, whoever deletes it; nothing here uses INSERT OR
 * REPLACE on entries, whose conflict deletes fire triggers only with
 * recursive_triggers on (cache_put is an upsert that keeps the id).
 *
 * Small columns before headers, the one blob left in entries.  size is
 * length(key) + length(headers) + length(body) in bytes, kept so eviction and
 * cache_usage read one index (entries_lru covers them) instead of the table.
 */
#define BODY_TRIGGER "entries_delete_body"
#define SCHEMA_SQL                                                      \
	"CREATE TABLE entries ("                                        \
	" id INTEGER PRIMARY KEY,"                                      \
	" key TEXT NOT NULL UNIQUE,"                                    \
	" family TEXT NOT NULL,"                                        \
	" path TEXT NOT NULL,"                                          \
	" status INTEGER NOT NULL,"                                     \
	" gzip INTEGER NOT NULL,"                                       \
	" identity_len INTEGER NOT NULL,"                               \
	" stored_at INTEGER NOT NULL,"                                  \
	" expires_at INTEGER NOT NULL,"                                 \
	" accessed_at INTEGER NOT NULL,"                                \
	" size INTEGER NOT NULL,"                                       \
	" headers BLOB NOT NULL"                                        \
	");"                                                            \
	"CREATE TABLE bodies ("                                         \
	" id INTEGER PRIMARY KEY," /* entries.id */                     \
	" body BLOB NOT NULL"                                           \
	");"                                                            \
	"CREATE TRIGGER " BODY_TRIGGER " AFTER DELETE ON entries BEGIN" \
	" DELETE FROM bodies WHERE id = old.id;"                        \
	" END;"                                                         \
	"CREATE INDEX entries_family ON entries(family);"               \
	"CREATE INDEX entries_lru"                                      \
	" ON entries(accessed_at, stored_at, size);"                    \
	"CREATE INDEX entries_expires ON entries(expires_at);"          \
	"CREATE INDEX entries_path ON entries(path);"                   \
	"PRAGMA user_version = 2;"

/* The writer's statements, prepared once at open. */
enum wstmt {
	W_BEGIN,
	W_COMMIT,
	W_ROLLBACK,
	W_PUT,
	W_PUT_BODY,
	W_REFRESH,
	W_TOUCH,
	W_TOTAL,
	W_LRU,
	W_DEL_ROWID,
	W_PRUNE,
	W_PURGE_ALL,
	W_PURGE_FAMILY,
	W_PURGE_PREFIX,
	W_VACUUM,
	W_DATA_VERSION,
	W_FORGET,
	W_COUNT
};

static const char *const wsql[W_COUNT] = {
	[W_BEGIN] = "BEGIN IMMEDIATE",
	[W_COMMIT] = "COMMIT",
	[W_ROLLBACK] = "ROLLBACK",
	/* An upsert, not INSERT OR REPLACE: the id stays, so W_PUT_BODY
	 * overwrites the entry's own body, and no delete trigger is needed. */
	[W_PUT] = "INSERT INTO entries"
		  " (key, family, path, status, gzip, identity_len, stored_at, expires_at,"
		  " accessed_at, size, headers)"
		  " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?7, ?9, ?10)"
		  " ON CONFLICT (key) DO UPDATE SET family = excluded.family,"
		  " path = excluded.path, status = excluded.status, gzip = excluded.gzip,"
		  " identity_len = excluded.identity_len, stored_at = excluded.stored_at,"
		  " expires_at = excluded.expires_at, accessed_at = excluded.accessed_at,"
		  " size = excluded.size, headers = excluded.headers"
		  " RETURNING id",
	/* An upsert too: a body left under a reused id is overwritten. */
	[W_PUT_BODY] = "INSERT INTO bodies (id, body) VALUES (?1, ?2)"
		       " ON CONFLICT (id) DO UPDATE SET body = excluded.body",
	/* A revalidated entry has just been asked for, so it counts as used.
	 * The size swaps the old headers' length for the new; the body's part
	 * of it stays, and its row is not read or written. */
	[W_REFRESH] = "UPDATE entries SET headers = ?2, stored_at = ?3, expires_at = ?4,"
		      " accessed_at = max(accessed_at, ?3),"
		      " size = size - length(headers) + length(?2)"
		      " WHERE key = ?1 AND stored_at = ?5",
	/* A filter rather than max(): a row that would not change is not
	 * written at all. */
	[W_TOUCH] = "UPDATE entries SET accessed_at = ?2 WHERE key = ?1 AND accessed_at < ?2",
	[W_TOTAL] = "SELECT coalesce(sum(size), 0) FROM entries",
	[W_LRU] = "SELECT id, size FROM entries ORDER BY accessed_at, stored_at",
	/* The deletes take the bodies with them through BODY_TRIGGER. */
	[W_DEL_ROWID] = "DELETE FROM entries WHERE id = ?1 RETURNING key",
	[W_PRUNE] = "DELETE FROM entries WHERE expires_at < ?1 RETURNING key",
	[W_PURGE_ALL] = "DELETE FROM entries RETURNING key",
	[W_PURGE_FAMILY] = "DELETE FROM entries WHERE family = ?1 RETURNING key",
	/* The substr() test on bytes is the definition (LIKE and GLOB would
	 * read % _ * ? [ in paths, and substr() on TEXT counts characters);
	 * the range, from the prefix up to its successor (?2, see
	 * prefix_successor), is what lets the entries_path index find them. */
	[W_PURGE_PREFIX] = "DELETE FROM entries WHERE path >= ?1 AND path < ?2"
			   " AND substr(CAST(path AS BLOB), 1, length(CAST(?1 AS BLOB)))"
			   " = CAST(?1 AS BLOB)"
			   " RETURNING key",
	/* One row per page freed: it must be stepped to the end. */
	[W_VACUUM] = "PRAGMA incremental_vacuum",
	[W_DATA_VERSION] = "PRAGMA data_version",
	[W_FORGET] = "DELETE FROM entries WHERE key = ?1",
};

/* One thread's read-only connection; linked into its cache's list so
 * cache_close can reach the ones whose threads are still alive. */
struct reader {
	struct cache *c;
	sqlite3 *db;
	sqlite3_stmt *get;
	sqlite3_stmt *usage;
	sqlite3_stmt *by_family;
	struct reader *prev, *next;
};

struct cache {
	char *path;

	pthread_mutex_t wlock; /* guards wdb, its statements and data_version */
	sqlite3 *wdb;
	sqlite3_stmt *w[W_COUNT];
	int64_t data_version; /* last seen by cache_changed_elsewhere */
	int data_version_known;
	atomic_int giving_up;  /* cache_give_up(): the writer waits for no lock */
	int changed_pending;   /* another writer was seen inside a rolled-back write */
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
	sqlite3_finalize(r->by_family);
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
			  "SELECT e.status, e.headers, b.body, e.gzip, e.identity_len,"
			  " e.stored_at, e.expires_at"
			  " FROM entries AS e JOIN bodies AS b ON b.id = e.id WHERE e.key = ?1",
			  &r->get)) != SQLITE_OK)
		goto fail;
	/* Answered from the entries_lru index, which holds size. */
	if ((rc = prepare(r->db, "SELECT count(*), coalesce(sum(size), 0) FROM entries",
			  &r->usage)) != SQLITE_OK)
		goto fail;
	/* entries_family and the table: for the status page, not the hot path. */
	if ((rc = prepare(r->db,
			  "SELECT family, count(*), coalesce(sum(size), 0) FROM entries"
			  " GROUP BY family",
			  &r->by_family)) != SQLITE_OK)
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

static enum cache_err sqlite_err_kind(int rc)
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

static int schema_newer(struct cache *c, long long version, enum cache_err *why)
{
	*why = CACHE_ERR_SCHEMA;
	set_err("%s: schema version %lld is newer than this kaleidod's (%d)", c->path, version,
		CACHE_SCHEMA_VERSION);
	return SQLITE_ERROR;
}

/* Runs sql that answers nothing on the writer, keeping its error text. */
static int exec_sql(struct cache *c, const char *sql)
{
	int rc = sqlite3_exec(c->wdb, sql, NULL, NULL, NULL);

	if (rc != SQLITE_OK)
		set_err("%s: %s", c->path, sqlite3_errmsg(c->wdb));
	return rc;
}

/*
 * In one write transaction: reads user_version into *seen and, if it is
 * still `from`, runs sql.  The version is read again under the write lock
 * because another process may have moved the file on since this one looked.
 */
static int txn_if_version(struct cache *c, long long from, const char *sql, long long *seen)
{
	sqlite3 *db = c->wdb;
	int rc;

	if ((rc = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL)) == SQLITE_OK &&
	    (rc = exec_int(db, "PRAGMA user_version", seen)) == SQLITE_OK && *seen == from)
		rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
	if (rc != SQLITE_OK) {
		set_err("%s: %s", c->path, sqlite3_errmsg(db));
		if (sqlite3_get_autocommit(db) == 0)
			sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
	}
	return rc;
}

/* Drops the version 1 table with secure_delete off: on (as Debian builds
 * SQLite) it writes every freed page into the WAL, a whole cache's worth,
 * for content the VACUUM that follows discards anyway. */
static int drop_v1(struct cache *c, long long *seen)
{
	char restore[64];
	long long secure = 1;
	int rc;

	if ((rc = exec_int(c->wdb, "PRAGMA secure_delete", &secure)) != SQLITE_OK) {
		set_err("%s: %s", c->path, sqlite3_errmsg(c->wdb));
		return rc;
	}
	if ((rc = exec_sql(c, "PRAGMA secure_delete = OFF")) != SQLITE_OK)
		return rc;
	rc = txn_if_version(c, 1, "DROP TABLE IF EXISTS entries", seen);
	snprintf(restore, sizeof(restore), "PRAGMA secure_delete = %lld", secure);
	if (rc != SQLITE_OK) {
		sqlite3_exec(c->wdb, restore, NULL, NULL, NULL);
		return rc;
	}
	return exec_sql(c, restore);
}

/*
 * Version 1 rows have no path or size, and this is a cache: they are dropped,
 * not converted.  A version 1 file also predates auto_vacuum, which an
 * existing file only takes through VACUUM, and VACUUM cannot run inside a
 * transaction.  Hence three steps, each harmless to repeat: user_version
 * stays 1 until the last, so a process that dies half way, or a second one
 * migrating at the same time, finds a file it can carry on from.
 */
static int migrate_1_to_2(struct cache *c, long long *seen)
{
	int rc;

	if ((rc = drop_v1(c, seen)) != SQLITE_OK || *seen != 1)
		return rc;
	/* Also set at open; repeated so this step stands on its own. */
	if ((rc = exec_sql(c, "PRAGMA auto_vacuum = INCREMENTAL")) != SQLITE_OK ||
	    (rc = exec_sql(c, "VACUUM")) != SQLITE_OK)
		return rc;
	/* Dropped again: an older kaleidod may have made its table meanwhile. */
	return txn_if_version(c, 1, "DROP TABLE IF EXISTS entries;" SCHEMA_SQL, seen);
}

/* Brings a file at version 0 (new) or 1 to CACHE_SCHEMA_VERSION.  Returns an
 * SQLite code; *why set when it is not SQLITE_OK. */
static int upgrade(struct cache *c, long long version, enum cache_err *why)
{
	int rc = SQLITE_OK;

	if (version == 0)
		rc = txn_if_version(c, 0, SCHEMA_SQL, &version);
	if (rc == SQLITE_OK && version == 1)
		rc = migrate_1_to_2(c, &version);
	if (rc == SQLITE_OK &&
	    (rc = exec_int(c->wdb, "PRAGMA user_version", &version)) != SQLITE_OK)
		set_err("%s: %s", c->path, sqlite3_errmsg(c->wdb));
	if (rc != SQLITE_OK) {
		/* A plain error here is SQL refused by the tables in the file: a
		 * foreign "entries", say.  Not a cache this code can use. */
		*why = (rc & 0xff) == SQLITE_ERROR ? CACHE_ERR_CORRUPT : sqlite_err_kind(rc);
		return rc;
	}
	if (version > CACHE_SCHEMA_VERSION)
		return schema_newer(c, version, why);
	return SQLITE_OK;
}

/* The writer's busy timeout, ended early by cache_give_up(): SQLite's own
 * timeout cannot be cut short from another thread. */
static int writer_busy(void *arg, int count)
{
	struct cache *c = arg;
	const int step_ms = 10;

	if (atomic_load(&c->giving_up) || count * step_ms >= BUSY_TIMEOUT_MS)
		return 0;
	sqlite3_sleep(step_ms);
	return 1;
}

void cache_give_up(struct cache *c)
{
	if (c != NULL)
		atomic_store(&c->giving_up, 1);
}

/* Settings, then the schema check and upgrade, then the statements, on the
 * writer connection.  Returns an SQLite code; *why set when not SQLITE_OK. */
static int setup_writer(struct cache *c, enum cache_err *why)
{
	sqlite3 *db = c->wdb;
	sqlite3_stmt *st = NULL;
	long long version = 0, triggers = 0;
	char sql[64];
	int rc;
	sqlite3_busy_handler(db, writer_busy, c);
	/* Reading the header and the schema is what tells a damaged file. */
	if ((rc = exec_int(db, "PRAGMA user_version", &version)) != SQLITE_OK ||
	    (rc = exec_int(db, "SELECT count(*) FROM sqlite_schema", NULL)) != SQLITE_OK)
		goto fail;
	if (version > CACHE_SCHEMA_VERSION)
		return schema_newer(c, version, why);
	/* Before WAL mode: switching a new file to WAL writes its first page,
	 * and from then on auto_vacuum only changes through VACUUM.  On an
	 * existing file it changes nothing until migrate_1_to_2's VACUUM. */
	if ((rc = sqlite3_exec(db, "PRAGMA auto_vacuum = INCREMENTAL", NULL, NULL, NULL)) !=
	    SQLITE_OK)
		goto fail;
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
	snprintf(sql, sizeof(sql), "PRAGMA journal_size_limit = %d", WAL_SIZE_LIMIT);
	if ((rc = sqlite3_exec(db, "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = OFF", NULL,
			       NULL, NULL)) != SQLITE_OK ||
	    (rc = exec_int(db, sql, NULL)) != SQLITE_OK)
		goto fail;
	if (version < CACHE_SCHEMA_VERSION && (rc = upgrade(c, version, why)) != SQLITE_OK)
		return rc;
	/* A file at version 2 whose tables do not match ours fails here (the
	 * one-table layout of early version 2 builds among them); it is not a
	 * cache this code can use, so it counts as damaged. */
	for (int i = 0; i < W_COUNT; i++) {
		if ((rc = prepare(db, wsql[i], &c->w[i])) != SQLITE_OK) {
			set_err("%s: unexpected schema: %s", c->path, sqlite3_errmsg(db));
			*why = (rc & 0xff) == SQLITE_ERROR ? CACHE_ERR_CORRUPT :
							     sqlite_err_kind(rc);
			return rc;
		}
	}
	/* Statements do not show a missing trigger, and without it every
	 * delete would leave its body behind. */
	if ((rc = exec_int(db,
			   "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger'"
			   " AND name = '" BODY_TRIGGER "' AND tbl_name = 'entries'",
			   &triggers)) != SQLITE_OK)
		goto fail;
	if (triggers != 1) {
		set_err("%s: unexpected schema: no trigger " BODY_TRIGGER, c->path);
		*why = CACHE_ERR_CORRUPT;
		return SQLITE_ERROR;
	}
	return SQLITE_OK;
fail:
	set_err("%s: %s", c->path, sqlite3_errmsg(db));
	*why = sqlite_err_kind(rc);
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
	for (int i = 0; i < W_COUNT; i++)
		sqlite3_finalize(c->w[i]);
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
		*why = sqlite_err_kind(rc);
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
	e->gzip = sqlite3_column_int(r->get, 3) != 0;
	e->identity_len = (size_t)sqlite3_column_int64(r->get, 4);
	e->stored_at = sqlite3_column_int64(r->get, 5);
	e->expires_at = sqlite3_column_int64(r->get, 6);
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

/* Runs a prepared statement to its end, ignoring any rows. */
static int step_done(sqlite3_stmt *st)
{
	int rc;

	while ((rc = sqlite3_step(st)) == SQLITE_ROW)
		;
	sqlite3_reset(st);
	return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Runs a prepared statement that answers one integer. */
static int step_int(sqlite3_stmt *st, int64_t *out)
{
	int rc = sqlite3_step(st);

	if (rc == SQLITE_ROW) {
		*out = sqlite3_column_int64(st, 0);
		rc = SQLITE_OK;
	}
	sqlite3_reset(st);
	return rc;
}

/* The writer's lock is taken up front (BEGIN IMMEDIATE) so the busy timeout
 * applies; wlock is held by the caller of all three. */
static int txn_begin(struct cache *c)
{
	return step_done(c->w[W_BEGIN]);
}

static int txn_commit(struct cache *c)
{
	return step_done(c->w[W_COMMIT]);
}

/*
 * A rollback makes this connection re-read the file, which moves its
 * data_version although nobody else wrote: note first whether someone did,
 * then take the new value as seen, so cache_changed_elsewhere() reports
 * exactly the other writers.
 */
static void rollback(struct cache *c)
{
	int64_t v = 0;

	if (c->data_version_known && step_int(c->w[W_DATA_VERSION], &v) == SQLITE_OK &&
	    v != c->data_version)
		c->changed_pending = 1;
	step_done(c->w[W_ROLLBACK]);
	if (c->data_version_known && step_int(c->w[W_DATA_VERSION], &v) == SQLITE_OK)
		c->data_version = v;
}

/* Keeps the error text, and rolls back what is still open (a failed COMMIT
 * may leave the transaction open).  Returns -1. */
static int txn_fail(struct cache *c, const char *what, int rc)
{
	set_err("cache %s: %s", what,
		rc == SQLITE_NOMEM ? "out of memory" : sqlite3_errmsg(c->wdb));
	if (sqlite3_get_autocommit(c->wdb) == 0)
		rollback(c);
	return -1;
}

/* Runs one bound statement in a transaction of its own, then drops the
 * bindings (they point at the caller's memory).  Returns the number of rows
 * changed, or -1. */
static int write_one(struct cache *c, sqlite3_stmt *st, const char *what)
{
	int rc, changes;

	if ((rc = txn_begin(c)) != SQLITE_OK)
		goto fail;
	rc = step_done(st);
	changes = sqlite3_changes(c->wdb);
	if (rc != SQLITE_OK || (rc = txn_commit(c)) != SQLITE_OK)
		goto fail;
	sqlite3_clear_bindings(st);
	return changes;
fail:
	sqlite3_clear_bindings(st);
	return txn_fail(c, what, rc);
}

/* Both rows of an entry in one transaction; wlock held, statements bound
 * but for the body's id.  0 or -1. */
static int put_txn(struct cache *c)
{
	sqlite3_stmt *st = c->w[W_PUT], *body = c->w[W_PUT_BODY];
	int64_t id = 0;
	int rc;
	if ((rc = txn_begin(c)) != SQLITE_OK)
		goto fail;
	/* Checked inside the write lock: another process's purge that
	 * committed while this put waited must not be undone by it. */
	if (c->data_version_known) {
		int64_t v = 0;

		if ((rc = step_int(c->w[W_DATA_VERSION], &v)) != SQLITE_OK)
			goto fail;
		if (v != c->data_version) {
			rollback(c);
			set_err("cache put: the file was changed by another process");
			return -2;
		}
	}
	/* RETURNING: the row is written by the first step. */
	if ((rc = step_int(st, &id)) == SQLITE_DONE) {
		rollback(c);
		set_err("cache put: no id returned");
		return -1;
	}
	if (rc != SQLITE_OK)
		goto fail;
	sqlite3_bind_int64(body, 1, id);
	if ((rc = step_done(body)) != SQLITE_OK || (rc = txn_commit(c)) != SQLITE_OK)
		goto fail;
	return 0;
fail:
	return txn_fail(c, "put", rc);
}

int cache_put(struct cache *c, const char *key, const char *family, const char *path,
	      const struct cache_entry *e)
{
	sqlite3_stmt *st = c->w[W_PUT], *body = c->w[W_PUT_BODY];
	int64_t size = (int64_t)(strlen(key) + e->headers_len + e->body_len);
	int ret;

	pthread_mutex_lock(&c->wlock);
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, family, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, path, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 4, e->status);
	sqlite3_bind_int(st, 5, e->gzip != 0);
	/* Stored as the header defines it, whatever the caller left there. */
	sqlite3_bind_int64(st, 6, (int64_t)(e->gzip ? e->identity_len : e->body_len));
	sqlite3_bind_int64(st, 7, e->stored_at);
	sqlite3_bind_int64(st, 8, e->expires_at);
	sqlite3_bind_int64(st, 9, size);
	/* A NULL pointer would bind SQL NULL; an empty blob keeps NOT NULL happy. */
	sqlite3_bind_blob64(st, 10, e->headers ? e->headers : "", e->headers_len, SQLITE_STATIC);
	sqlite3_bind_blob64(body, 2, e->body ? e->body : "", e->body_len, SQLITE_STATIC);
	ret = put_txn(c);
	sqlite3_clear_bindings(st);
	sqlite3_clear_bindings(body);
	pthread_mutex_unlock(&c->wlock);
	return ret;
}

int cache_forget(struct cache *c, const char *key)
{
	sqlite3_stmt *st = c->w[W_FORGET];
	int ret;

	pthread_mutex_lock(&c->wlock);
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	ret = write_one(c, st, "forget");
	pthread_mutex_unlock(&c->wlock);
	return ret < 0 ? -1 : 0;
}

int cache_refresh(struct cache *c, const char *key, int64_t old_stored_at, const char *headers,
		  size_t headers_len, int64_t stored_at, int64_t expires_at)
{
	sqlite3_stmt *st = c->w[W_REFRESH];
	int ret;

	pthread_mutex_lock(&c->wlock);
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	sqlite3_bind_blob64(st, 2, headers ? headers : "", headers_len, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, stored_at);
	sqlite3_bind_int64(st, 4, expires_at);
	sqlite3_bind_int64(st, 5, old_stored_at);
	ret = write_one(c, st, "refresh");
	pthread_mutex_unlock(&c->wlock);
	return ret < 0 ? -1 : ret > 0;
}

int cache_touch(struct cache *c, const char *const *keys, size_t n, int64_t when)
{
	sqlite3_stmt *st = c->w[W_TOUCH];
	int rc, ret = 0;

	if (n == 0)
		return 0;
	pthread_mutex_lock(&c->wlock);
	if ((rc = txn_begin(c)) != SQLITE_OK)
		goto fail;
	sqlite3_bind_int64(st, 2, when);
	for (size_t i = 0; i < n; i++) {
		sqlite3_bind_text(st, 1, keys[i], -1, SQLITE_STATIC);
		if ((rc = step_done(st)) != SQLITE_OK)
			goto fail;
	}
	if ((rc = txn_commit(c)) != SQLITE_OK)
		goto fail;
	goto out;
fail:
	ret = txn_fail(c, "touch", rc);
out:
	sqlite3_clear_bindings(st);
	pthread_mutex_unlock(&c->wlock);
	return ret;
}

/*
 * The keys one delete removed, for the caller's callback.  They are told
 * after the commit (a rolled back delete removed nothing), and outside the
 * writer lock, so the callback may call back into the cache.  Without a
 * callback only the count is kept.
 */
struct keylist {
	char **v;
	size_t n, cap;
	int keep;
};

static int keys_add(struct keylist *k, const unsigned char *key)
{
	char **v;

	if (key == NULL)
		return -1;
	if (!k->keep) {
		k->n++;
		return 0;
	}
	if (k->n == k->cap) {
		size_t cap = k->cap > 0 ? k->cap * 2 : 16;

		if ((v = realloc(k->v, cap * sizeof(*v))) == NULL)
			return -1;
		k->v = v;
		k->cap = cap;
	}
	if ((k->v[k->n] = strdup((const char *)key)) == NULL)
		return -1;
	k->n++;
	return 0;
}

/* Tells fn about every key (when ret says the delete happened), frees the
 * list, and passes ret through. */
static int keys_report(struct keylist *k, int ret, cache_key_fn fn, void *arg)
{
	for (size_t i = 0; i < k->n && k->keep; i++) {
		if (ret >= 0)
			fn(arg, k->v[i]);
		free(k->v[i]);
	}
	free(k->v);
	return ret;
}

/* Steps a DELETE ... RETURNING key to its end, collecting the keys.  SQLite
 * does the whole delete on the first step and then hands out the keys. */
static int step_keys(sqlite3_stmt *st, struct keylist *k)
{
	int rc;

	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (keys_add(k, sqlite3_column_text(st, 0)) < 0) {
			rc = SQLITE_NOMEM;
			break;
		}
	}
	sqlite3_reset(st);
	return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Runs one bound DELETE ... RETURNING key in its own transaction; wlock
 * held.  Returns the count deleted, or -1. */
static int delete_txn(struct cache *c, sqlite3_stmt *st, const char *what, struct keylist *k)
{
	int rc;

	if ((rc = txn_begin(c)) != SQLITE_OK)
		goto fail;
	rc = step_keys(st, k);
	sqlite3_clear_bindings(st);
	if (rc != SQLITE_OK || (rc = txn_commit(c)) != SQLITE_OK)
		goto fail;
	return (int)k->n;
fail:
	sqlite3_clear_bindings(st);
	return txn_fail(c, what, rc);
}

/* Appends to a growing array of rowids. */
static int rowid_add(int64_t **v, size_t *n, size_t *cap, int64_t id)
{
	int64_t *nv;

	if (*n == *cap) {
		size_t ncap = *cap > 0 ? *cap * 2 : 64;

		if ((nv = realloc(*v, ncap * sizeof(*nv))) == NULL)
			return -1;
		*v = nv;
		*cap = ncap;
	}
	(*v)[(*n)++] = id;
	return 0;
}

/* Picks least recently used rows until what stays fits, then deletes them,
 * in one transaction; wlock held.  Picking stops early, so a cache under its
 * limit costs one pass over the entries_lru index (for the total). */
static int evict_txn(struct cache *c, int64_t max_bytes, struct keylist *k)
{
	sqlite3_stmt *lru = c->w[W_LRU], *del = c->w[W_DEL_ROWID];
	int64_t total = 0, *ids = NULL;
	size_t n = 0, cap = 0;
	int rc;

	if ((rc = txn_begin(c)) != SQLITE_OK || (rc = step_int(c->w[W_TOTAL], &total)) != SQLITE_OK)
		goto fail;
	while (total > max_bytes && (rc = sqlite3_step(lru)) == SQLITE_ROW) {
		if (rowid_add(&ids, &n, &cap, sqlite3_column_int64(lru, 0)) < 0) {
			rc = SQLITE_NOMEM;
			break;
		}
		total -= sqlite3_column_int64(lru, 1);
	}
	sqlite3_reset(lru);
	if (rc != SQLITE_OK && rc != SQLITE_ROW && rc != SQLITE_DONE)
		goto fail;
	for (size_t i = 0; i < n; i++) {
		sqlite3_bind_int64(del, 1, ids[i]);
		if ((rc = step_keys(del, k)) != SQLITE_OK)
			goto fail;
	}
	if ((rc = txn_commit(c)) != SQLITE_OK)
		goto fail;
	free(ids);
	return (int)k->n;
fail:
	free(ids);
	return txn_fail(c, "evict", rc);
}

int cache_evict(struct cache *c, int64_t max_bytes, cache_key_fn fn, void *arg)
{
	struct keylist k = { .keep = fn != NULL };
	int ret;

	pthread_mutex_lock(&c->wlock);
	ret = evict_txn(c, max_bytes, &k);
	pthread_mutex_unlock(&c->wlock);
	return keys_report(&k, ret, fn, arg);
}

int cache_prune(struct cache *c, int64_t before, cache_key_fn fn, void *arg)
{
	struct keylist k = { .keep = fn != NULL };
	sqlite3_stmt *st = c->w[W_PRUNE];
	int ret;

	pthread_mutex_lock(&c->wlock);
	sqlite3_bind_int64(st, 1, before);
	ret = delete_txn(c, st, "prune", &k);
	pthread_mutex_unlock(&c->wlock);
	return keys_report(&k, ret, fn, arg);
}

/*
 * The least string greater than every string that starts with p (bytewise,
 * as SQLite compares TEXT): p without its trailing 0xff bytes, last byte
 * plus one.  0 with the successor in out (malloc'd), or 1 when there is none
 * (p empty or all 0xff), or -1 out of memory.
 */
static int prefix_successor(const char *p, char **out)
{
	size_t len = strlen(p);

	while (len > 0 && (unsigned char)p[len - 1] == 0xff)
		len--;
	*out = NULL;
	if (len == 0)
		return 1;
	if ((*out = strndup(p, len)) == NULL)
		return -1;
	(*out)[len - 1] = (char)((unsigned char)(*out)[len - 1] + 1);
	return 0;
}

/* Binds the purge statement for kind; *succ keeps the prefix's successor
 * alive until the statement has run.  The statement, or NULL with errbuf set. */
static sqlite3_stmt *purge_bind(struct cache *c, enum cache_purge kind, const char *what,
				char **succ)
{
	sqlite3_stmt *st;
	int rc;

	switch (kind) {
	case CACHE_PURGE_ALL:
		return c->w[W_PURGE_ALL];
	case CACHE_PURGE_FAMILY:
		if (what == NULL)
			break;
		st = c->w[W_PURGE_FAMILY];
		sqlite3_bind_text(st, 1, what, -1, SQLITE_STATIC);
		return st;
	case CACHE_PURGE_PREFIX:
		if (what == NULL)
			break;
		st = c->w[W_PURGE_PREFIX];
		if ((rc = prefix_successor(what, succ)) < 0) {
			set_err("cache purge: out of memory");
			return NULL;
		}
		sqlite3_bind_text(st, 1, what, -1, SQLITE_STATIC);
		/* No successor: an empty blob, which SQLite sorts after all text. */
		if (rc == 0)
			sqlite3_bind_text(st, 2, *succ, -1, SQLITE_STATIC);
		else
			sqlite3_bind_zeroblob(st, 2, 0);
		return st;
	}
	set_err("cache purge: kind %d without what it names", (int)kind);
	return NULL;
}

int cache_purge(struct cache *c, enum cache_purge kind, const char *what, cache_key_fn fn,
		void *arg)
{
	struct keylist k = { .keep = fn != NULL };
	sqlite3_stmt *st;
	char *succ = NULL;
	int ret = -1;

	pthread_mutex_lock(&c->wlock);
	if ((st = purge_bind(c, kind, what, &succ)) != NULL)
		ret = delete_txn(c, st, "purge", &k);
	pthread_mutex_unlock(&c->wlock);
	free(succ);
	return keys_report(&k, ret, fn, arg);
}

int cache_invalidate_family(struct cache *c, const char *family)
{
	return cache_purge(c, CACHE_PURGE_FAMILY, family, NULL, NULL);
}

/*
 * Moves the free pages to the end of the file and cuts them off, then
 * checkpoints: in WAL mode the database file only shrinks when a checkpoint
 * copies the commit back.  PASSIVE neither waits for nor blocks readers; a
 * checkpoint that cannot finish now leaves the shrinking to a later one.
 */
int cache_vacuum(struct cache *c)
{
	int rc, ret = 0;

	pthread_mutex_lock(&c->wlock);
	if ((rc = txn_begin(c)) != SQLITE_OK || (rc = step_done(c->w[W_VACUUM])) != SQLITE_OK ||
	    (rc = txn_commit(c)) != SQLITE_OK) {
		ret = txn_fail(c, "vacuum", rc);
		goto out;
	}
	rc = sqlite3_wal_checkpoint_v2(c->wdb, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
	if (rc != SQLITE_OK && (rc & 0xff) != SQLITE_BUSY)
		ret = txn_fail(c, "checkpoint", rc);
out:
	pthread_mutex_unlock(&c->wlock);
	return ret;
}

/* data_version moves when another connection commits, never for this one's
 * own commits, which is exactly the question. */
int cache_changed_elsewhere(struct cache *c)
{
	int64_t v = 0;
	int rc, ret;

	pthread_mutex_lock(&c->wlock);
	if ((rc = step_int(c->w[W_DATA_VERSION], &v)) != SQLITE_OK) {
		set_err("cache data_version: %s", sqlite3_errmsg(c->wdb));
		ret = -1;
	} else {
		ret = c->data_version_known && (v != c->data_version || c->changed_pending);
		c->data_version = v;
		c->data_version_known = 1;
		c->changed_pending = 0;
	}
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

int cache_usage_by_family(struct cache *c, cache_usage_fn fn, void *arg)
{
	struct reader *r = reader_get(c);
	int rc;

	if (r == NULL)
		return -1;
	while ((rc = sqlite3_step(r->by_family)) == SQLITE_ROW) {
		const char *family = (const char *)sqlite3_column_text(r->by_family, 0);

		fn(arg, family != NULL ? family : "", sqlite3_column_int64(r->by_family, 1),
		   sqlite3_column_int64(r->by_family, 2));
	}
	if (rc != SQLITE_DONE)
		set_err("cache usage: %s", sqlite3_errmsg(r->db));
	sqlite3_reset(r->by_family);
	return rc == SQLITE_DONE ? 0 : -1;
}

const char *cache_errmsg(struct cache *c)
{
	(void)c;
	return errbuf;
}
