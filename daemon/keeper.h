/*
 * keeper: keeps the memory copies (hot) and the cache file (cache) in step.
 *
 * Reads go memory first, then the file (and what the file had is promoted
 * into memory).  New answers go into memory at once and into the file from
 * the keeper's own thread, compressed there, so neither the upstream worker
 * nor a client waits for a disk write.  Invalidations and purges act on both
 * at once, and a family generation makes sure an answer fetched before a
 * write is never kept after it.  The thread also does the periodic work:
 * LRU order, pruning past the stale limit, eviction to max_size, vacuum, and
 * noticing a purge done by another process (kaleidod --purge).
 */
#ifndef KD_KEEPER_H
#define KD_KEEPER_H

#include <stdint.h>

#include "cache.h"

struct config;
struct policy;
struct hot;
struct hot_entry;
struct keeper;

/* cache may be NULL (running without a file); the rest is required. */
struct keeper *keeper_new(const struct config *cfg, struct cache *cache, struct hot *hot,
			  struct policy *policy, char *err, size_t errlen);
/* Writes what is still queued, then stops the thread. */
void keeper_free(struct keeper **k);

/* key's entry, fresh or not, or NULL.  A reference. */
struct hot_entry *keeper_lookup(struct keeper *k, const char *key, int family);

/* Told on the keeper thread once a store or refresh is done, with the
 * entry as kept (a stored one carries its gzip copy now); e stays the
 * caller's. */
typedef void (*keeper_done_fn)(void *arg, struct hot_entry *e);

/*
 * Keeps a new answer unless its family's generation is no longer gen: on
 * the keeper thread it is compressed, put in memory, written to the file,
 * and then done(arg, kept entry) is called.  Without done, the answer goes
 * into memory at once too (a client already has it and may ask again).
 * A reference to e is taken.
 */
void keeper_store(struct keeper *k, struct hot_entry *e, unsigned gen, keeper_done_fn done,
		  void *arg);
/* Same, for an entry a 304 made fresh from the version stored at was_at:
 * only headers and freshness change. */
void keeper_refresh(struct keeper *k, struct hot_entry *e, int64_t was_at, unsigned gen,
		    keeper_done_fn done, void *arg);

/* A write changed family: memory forgets it before this returns, and from
 * then on its rows in the file are void; the keeper deletes them (and keeps
 * trying while the file refuses).  Returns the invalidation's number for
 * keeper_await_durable(), or 0 without a file. */
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
