/*
 * cache: the SQLite file that keeps upstream answers across restarts.
 *
 * One table of entries keyed by the policy's cache key.  WAL mode, one
 * writer connection (guarded by a mutex) and one read connection per calling
 * thread, so hits never wait on a write.  Bodies are stored in the identity
 * encoding.  Nothing here knows HTTP beyond status, header text and body.
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
	void *body;
	size_t body_len;
	int64_t stored_at;  /* unix seconds */
	int64_t expires_at; /* unix seconds; fresh while now < expires_at */
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

/* Inserts or replaces.  family is the family name, for invalidation.  0 or -1. */
int cache_put(struct cache *c, const char *key, const char *family, const struct cache_entry *e);

/* Deletes every entry of a family; returns the count deleted, or -1. */
int cache_invalidate_family(struct cache *c, const char *family);

/* Entry count and total body+header bytes.  0 or -1. */
int cache_usage(struct cache *c, int64_t *entries, int64_t *bytes);

/* The last error on this thread's connection, for the caller's log line. */
const char *cache_errmsg(struct cache *c);

#endif
