/*
 * cache: the SQLite file that keeps upstream answers across restarts.
 *
 * Entries keyed by the policy's cache key, their bodies in a table of their
 * own (so recording use or a 304 rewrites a small row, never the body).  WAL
 * mode, one writer connection (guarded by a mutex) and one read connection
 * per calling thread, so hits never wait on a write.  Bodies are stored as
 * the caller gives them (gzip or identity, flagged).  Eviction (LRU by
 * accessed_at), pruning, purges and incremental vacuum live here too.
 * Nothing here knows HTTP beyond status, header text and body.
 */
#ifndef KD_CACHE_H
#define KD_CACHE_H

#include <stddef.h>
#include <stdint.h>

struct cache;

struct cache_entry {
	long status;
	char *headers; /* hdr_serialize() text */
	size_t headers_len;
	void *body; /* as stored: gzip when gzip is set */
	size_t body_len;
	int gzip;            /* body is the gzip member of the identity body */
	size_t identity_len; /* length of the identity body (body_len when !gzip) */
	int64_t stored_at;   /* unix seconds */
	int64_t expires_at;  /* unix seconds; fresh while now < expires_at */
};

enum cache_err {
	CACHE_OK = 0,
	CACHE_ERR_CORRUPT, /* not a database, or damaged: move it aside */
	CACHE_ERR_IO,      /* cannot open/create/write (permissions, read-only, full) */
	CACHE_ERR_SCHEMA,  /* written by a newer kaleidod */
};

/*
 * Opens (creating directories and the file as needed, mode 0600) and checks
 * the schema.  On failure returns NULL, sets *why, and writes a message into err.
 */
struct cache *cache_open(const char *path, enum cache_err *why, char *err, size_t errlen);
/* Only once every other thread has stopped using c: it closes their read
 * connections, so a thread still calling in (or exiting) would race it. */
void cache_close(struct cache **c);
const char *cache_path(const struct cache *c);

/*
 * Renames a bad file (and its -wal/-shm) to "PATH.bad-UNIXTIME" so a fresh one
 * can be made.  Returns 0, or -1 with errno.
 */
int cache_quarantine(const char *path, char *newpath, size_t newlen);

/* 1 found (*out malloc'd, free with cache_entry_free; headers and body each
 * have a NUL after their length), 0 absent, -1 error.  Expiry is not checked:
 * the caller compares expires_at, and may still serve a stale entry. */
int cache_get(struct cache *c, const char *key, struct cache_entry **out);
void cache_entry_free(struct cache_entry **e);

/* Inserts or replaces.  family is the family name (for invalidation), path
 * the request path without its query (for purges by prefix).  The entry
 * counts as used at stored_at.  0, -1 on error, or -2 (nothing written)
 * when another process changed the file since cache_changed_elsewhere()
 * last looked: call it to take note, then decide again. */
int cache_put(struct cache *c, const char *key, const char *family, const char *path,
	      const struct cache_entry *e);

/* After a 304: new stored headers and freshness for the version stored at
 * old_stored_at, body untouched.  1 updated, 0 no such entry or another
 * version there (then write the whole entry), -1 error. */
int cache_refresh(struct cache *c, const char *key, int64_t old_stored_at, const char *headers,
		  size_t headers_len, int64_t stored_at, int64_t expires_at);

/* Deletes key's entry, if any: a newer answer that could not be stored must
 * not leave an older one to be served.  0 or -1. */
int cache_forget(struct cache *c, const char *key);

/* Records that these entries were used at `when` (for LRU eviction), in one
 * transaction.  Absent keys are ignored.  0 or -1. */
int cache_touch(struct cache *c, const char *const *keys, size_t n, int64_t when);

/* Told the key of every entry a delete below removed. */
typedef void (*cache_key_fn)(void *arg, const char *key);

/* Deletes every entry of a family; returns the count deleted, or -1. */
int cache_invalidate_family(struct cache *c, const char *family);

/* Deletes least recently used entries until the entries take at most
 * max_bytes (the size counted by cache_usage).  Returns the count, or -1. */
int cache_evict(struct cache *c, int64_t max_bytes, cache_key_fn fn, void *arg);

/* Deletes entries with expires_at < before.  Returns the count, or -1. */
int cache_prune(struct cache *c, int64_t before, cache_key_fn fn, void *arg);

enum cache_purge {
	CACHE_PURGE_ALL = 0,
	CACHE_PURGE_FAMILY, /* what: a family name */
	CACHE_PURGE_PREFIX, /* what: a path prefix, compared byte for byte */
};
/* Deletes what a purge names.  Returns the count, or -1. */
int cache_purge(struct cache *c, enum cache_purge kind, const char *what, cache_key_fn fn,
		void *arg);

/* Gives free pages back to the filesystem (incremental auto-vacuum).  0 or -1. */
int cache_vacuum(struct cache *c);

/* 1 when another connection (another process: kaleidod --purge) committed a
 * change since the last call, 0 when not, -1 on error.  The first call
 * answers 0.  Only from one thread (the writer connection's). */
int cache_changed_elsewhere(struct cache *c);

/* Entry count and total size (key, headers and body as stored).  0 or -1. */
int cache_usage(struct cache *c, int64_t *entries, int64_t *bytes);
/* fn once per family present in the file, with its entries and bytes.
 * 0, or -1 (cache_errmsg()). */
typedef void (*cache_usage_fn)(void *arg, const char *family, int64_t entries, int64_t bytes);
int cache_usage_by_family(struct cache *c, cache_usage_fn fn, void *arg);

/* From now on writes fail at once instead of waiting out another process's
 * lock (the daemon is stopping).  Thread-safe; also ends a wait under way. */
void cache_give_up(struct cache *c);

/* The last error on this thread's connection, for the caller's log line. */
const char *cache_errmsg(struct cache *c);

#endif
