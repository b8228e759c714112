/*
 * hitcache: a serve thread's own view of the entries it serves most, with
 * HIT responses of its own.
 *
 * A hit through the shared table takes the table's lock and bumps shared
 * reference counts, and queueing one shared libmicrohttpd response takes
 * that response's mutex: on many cores, every hit on a popular list would
 * bounce the same cache lines between all threads.  A thread's copy needs
 * none of that: it stays valid while its entry is still the one in the
 * table (entry_current(), a load of a field that only changes when the
 * entry leaves), and its responses are the thread's alone.
 *
 * One hitcache per serve thread, used only by that thread: no locks.
 */
#ifndef KD_HITCACHE_H
#define KD_HITCACHE_H

#include <stdint.h>

struct MHD_Connection;
struct entry;
struct hitcache;

struct hitcache *hitcache_new(void);
void hitcache_free(struct hitcache **hc);

/*
 * key's entry if this thread holds it and it is still current, marked
 * used; NULL otherwise.  Borrowed: valid until the thread's next call into
 * this hitcache; take a reference to keep it longer.
 */
struct entry *hitcache_get(struct hitcache *hc, const char *key, uint64_t hash);
/* Remembers e (a reference is taken) if it is current. */
void hitcache_keep(struct hitcache *hc, struct entry *e, uint64_t hash);
/* Queues this thread's own "X-Cache: HIT" response for e on conn: 1
 * queued, 0 failed, -1 when the thread does not hold e (the caller builds
 * a response for this hit alone). */
int hitcache_queue_hit(struct hitcache *hc, struct entry *e, uint64_t hash,
		       struct MHD_Connection *conn, int gzip, int64_t now);
/* Lets go of entries that have left the table (run about once a second). */
void hitcache_sweep(struct hitcache *hc);

#endif
