/*
 * keeper: the cache file's reader and writer, driven by the object table.
 *
 * The table reads through it (its backend's load) when memory has nothing,
 * and hands it what it kept (its backend's write): the write goes to the
 * keeper's own thread, so neither the upstream worker nor a client waits for
 * a disk write.  Invalidations and purges reach the file from here, and the
 * thread also does the periodic work: LRU order, pruning past the stale
 * limit, eviction to max_size, vacuum, and noticing a purge done by another
 * process (kaleidod --purge).
 */
#ifndef KD_KEEPER_H
#define KD_KEEPER_H

#include <stdint.h>

#include "cache.h"

struct config;
struct entry;
struct keeper;
struct objtab;
struct objtab_backend;
struct policy;

/* cache may be NULL (running without a file); the rest is required. */
struct keeper *keeper_new(const struct config *cfg, struct cache *cache, struct objtab *tab,
			  struct policy *policy, char *err, size_t errlen);
/* Writes what is still queued, then stops the threads. */
void keeper_free(struct keeper **k);

/* The table's backend: reads from and writes to the file. */
void keeper_backend(struct keeper *k, struct objtab_backend *out);

/* Called on the compressing thread with the entry to keep (e itself, or a
 * copy with a gzip body); e stays the caller's. */
typedef void (*keeper_done_fn)(void *arg, struct entry *e);
/* Makes e's gzip copy (what the file stores, and what memory serves to
 * clients that take gzip) off the caller's thread, then calls done. */
void keeper_compress(struct keeper *k, struct entry *e, keeper_done_fn done, void *arg);

/* A write changed family: its rows in the file are void from now on, the
 * table forgets it (objtab_invalidate(), called here, in the one order
 * that leaves no old copy to reload), and the keeper deletes the rows (and
 * keeps trying while the file refuses).  Returns the invalidation's number
 * for keeper_await_durable(), or 0 without a file. */
unsigned long long keeper_invalidate(struct keeper *k, int family);

/*
 * A write's answer waits for this: parks the caller (park(arg) is called
 * here) until the deletes of invalidation `seq` and all before it are
 * committed to the file, so no crash can bring the pre-write lists back;
 * then unpark(arg) is called from another thread.  The wait is bounded
 * (KEEPER_DURABLE_WAIT, counted by keeper_expire_waits()) for a file that
 * refuses writes.  Returns 1 when parked, 0 when there is nothing to wait
 * for (already durable, no file, or stopping).
 */
#define KEEPER_DURABLE_WAIT 2 /* s */
int keeper_await_durable(struct keeper *k, unsigned long long seq, void (*park)(void *),
			 void (*unpark)(void *), void *arg);
/* Ends the waits older than KEEPER_DURABLE_WAIT (run a few times a second). */
void keeper_expire_waits(struct keeper *k);
/* Ends every wait, and parks nobody from now on (shutdown). */
void keeper_release_waits(struct keeper *k);

/*
 * Deletes what a purge names, in memory and in the file.  It runs on the
 * file thread after every write queued before it, so the answers clients
 * already have are found and purged, never written after it; the caller,
 * a serve thread, is parked meanwhile (park(arg) is called here and
 * unpark(arg) later from another thread, *parked set) and never blocks.
 * Without a file the purge is done at once (*parked 0).  The ticket goes
 * to keeper_purge_result() once the caller is resumed.  NULL on ENOMEM.
 */
struct keeper_purge;
struct keeper_purge *keeper_purge_start(struct keeper *k, enum cache_purge kind, const char *what,
					void (*park)(void *), void (*unpark)(void *), void *arg,
					int *parked);
#define KEEPER_PURGE_PENDING (-2L) /* not done: the daemon is stopping */
/* The count purged, -1 when the file refused, or KEEPER_PURGE_PENDING; frees
 * the ticket and NULLs *t. */
long keeper_purge_result(struct keeper_purge **t);

struct keeper_counters {
	unsigned long long evicted, pruned, purged, write_errors;
	int64_t max_bytes;
};
void keeper_counters(struct keeper *k, struct keeper_counters *out);

/* Rate-limited warning about the cache (one line a minute at most, with a
 * count of what was held back): a broken disk fails on every request. */
void keeper_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
