/*
 * objtab: the object table, one record per cache key.
 *
 * A record holds everything kaleidod knows about its key: the current entry,
 * the fetch under way with the requests waiting for it, what recent fetches
 * taught (cooldown, too large), and the entry still on its way to the file.
 * One call, objtab_lookup(), looks at all of it under its bucket's lock and
 * returns a verdict; the caller only ever acts on the verdict.
 *
 * Generations and invalidation live here alone.  Each family has a
 * generation, bumped by every invalidation and purge: a fetch remembers the
 * generation it started under, and its answer is handed to its waiters but
 * never kept once the family has moved on.
 *
 * The table knows nothing of HTTP servers or of SQLite: the file is reached
 * through the backend callbacks, and the clock is passed in, so the unit
 * tests drive it with a fake one.
 *
 * Locks: one mutex per bucket group (shard) guards its records, their
 * fetches and waiters; the LRU lock guards the byte count and the LRU list.
 * Order: shard, then LRU (eviction, which goes the other way, only tries).
 * No callback is ever called with a lock held, except park().
 */
#ifndef KD_OBJTAB_H
#define KD_OBJTAB_H

#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

struct entry;
struct hdr;
struct objtab;
struct objtab_fetch;

/* How the table reaches the file (the keeper in the daemon). */
struct objtab_backend {
	/* key's entry in the file, or NULL; called with no lock held. */
	struct entry *(*load)(void *arg, const char *key, int family);
	/* A kept entry to write (take a reference to keep it): the table
	 * holds it as pending, found by lookups, until the backend calls
	 * objtab_written(e) once it is in the file or given up.  was_at: for
	 * a 304, the stored_at of the version it refreshed, else 0.  Returns
	 * 0 queued, -1 not (then nothing is pending).  No lock is held. */
	int (*write)(void *arg, struct entry *e, unsigned gen, int64_t was_at);
	void *arg;
};

struct objtab_config {
	size_t max_bytes; /* memory for entries; the least recently used go first */
	int nfamilies;
	/* Seconds past expiry an entry may still be served while one refresh
	 * runs (stale-while-revalidate); NULL: none. */
	unsigned (*stale_window)(const struct entry *e, void *arg);
	void *stale_arg;
	int64_t (*now)(void); /* wall clock, seconds; NULL: clock_wall() */
};

#define OBJTAB_TOO_LARGE_FOR 600 /* s a too-large key goes straight to the API */
#define OBJTAB_COOLDOWN_FOR 10   /* s without background refreshes after a failed fetch */

struct objtab *objtab_new(const struct objtab_config *cfg);
/* Every fetch must have ended. */
void objtab_free(struct objtab **t);
/* Set once, before the first lookup (the backend needs the table too). */
void objtab_set_backend(struct objtab *t, const struct objtab_backend *b);

/* The hash the table uses for keys (FNV-1a), for others keyed the same. */
uint64_t objtab_hash(const char *key);

/*
 * A request waiting for a fetch.  Embedded in the waiting request, so
 * queueing cannot fail; its fields are the table's.
 */
struct objtab_waiter {
	void (*unpark)(void *);
	void *arg;
	int queued;
	STAILQ_ENTRY(objtab_waiter) link;
};

enum objtab_ask_flags {
	OBJTAB_CACHED_ONLY = 1, /* only-if-cached: never fetch, never wait */
	OBJTAB_NO_WAIT = 2,     /* a HEAD: a refresh may start, but a miss passes */
};

struct objtab_ask {
	const char *key;
	uint64_t hash; /* objtab_hash(key) */
	int family;
	int64_t now;
	unsigned flags;
	/* Whether an entry may answer this request (its Vary); NULL: always. */
	int (*usable)(const struct entry *e, void *arg);
	void *arg; /* usable()'s */
	/* BUSY and MISS queue the asker: park(arg) is called under the
	 * bucket's lock, and w->unpark(w->arg) once the fetch ended. */
	void (*park)(void *);
	struct objtab_waiter *w;
};

enum objtab_verdict {
	OBJTAB_HIT,   /* entry: fresh, serve it */
	OBJTAB_STALE, /* entry: expired but within its stale window; fetch:
			 a refresh for the caller to run, or NULL */
	OBJTAB_BUSY,  /* fetch: under way, and the caller waits for it */
	OBJTAB_MISS,  /* fetch: the caller's to run, and it waits for it too
			 (NULL: out of memory, or CACHED_ONLY: nothing to run) */
	OBJTAB_PASS,  /* the cache cannot help: go to the API alone (a variant,
			 a key too large to keep, a HEAD on a miss) */
};

struct objtab_answer {
	struct entry *entry;        /* a reference, or NULL; on BUSY, MISS and
				       PASS an expired copy (stale-if-error) */
	struct objtab_fetch *fetch; /* a reference, or NULL */
};

enum objtab_verdict objtab_lookup(struct objtab *t, const struct objtab_ask *ask,
				  struct objtab_answer *ans);

/* A fetch for key unless one runs: the caller runs it (warm-up and
 * refresh-ahead).  A reference, or NULL. */
struct objtab_fetch *objtab_fetch_start(struct objtab *t, const char *key, int family);

/* A waiter going away before the end (client gone). */
void objtab_leave(struct objtab_fetch *f, struct objtab_waiter *w);
struct objtab_fetch *objtab_fetch_ref(struct objtab_fetch *f);
void objtab_fetch_unref(struct objtab_fetch **f);

/* What the fetch is for, while it runs. */
const char *objtab_fetch_key(const struct objtab_fetch *f);
int objtab_fetch_family(const struct objtab_fetch *f);
/* The version the fetch revalidates (validators go with it), or NULL. */
struct entry *objtab_fetch_base(const struct objtab_fetch *f);
/* The fields the fetch is sent with (Vary): set once, before it starts. */
void objtab_fetch_set_request(struct objtab_fetch *f, struct hdr *adopted);
const struct hdr *objtab_fetch_request(const struct objtab_fetch *f);

enum objtab_outcome {
	OBJTAB_ENTRY,  /* an answer (any status) */
	OBJTAB_ERROR,  /* no answer: an error code and detail */
	OBJTAB_DIRECT, /* too large to keep: each waiter fetches on its own */
};

struct objtab_result {
	enum objtab_outcome outcome;
	struct entry *entry; /* ENTRY: borrowed; the table takes its own reference */
	int keep;            /* ENTRY: a storable answer */
	int revalidated;     /* ENTRY: a 304 made the base fresh again */
	int err;             /* ERROR */
	const char *detail;  /* ERROR */
};

/*
 * The end of a fetch.  A kept answer becomes the key's entry (unless the
 * family's generation moved, or a 304's base is no longer the version
 * held): in memory when it fits, and through the backend's write; the notes are updated; then every
 * waiter is unparked.  Once per fetch.
 */
void objtab_fetch_done(struct objtab *t, struct objtab_fetch *f, const struct objtab_result *res);

/* After the end, for the waiters. */
enum objtab_outcome objtab_fetch_outcome(const struct objtab_fetch *f);
/* The answer (a 304 shows as the refreshed base, with *revalidated set).
 * Borrowed: valid while the caller holds its reference on f. */
struct entry *objtab_fetch_entry(const struct objtab_fetch *f, int *revalidated);
int objtab_fetch_error(const struct objtab_fetch *f, const char **detail);

/* The generation of family now, for an answer fetched outside the table. */
unsigned objtab_gen(struct objtab *t, int family);
/*
 * Keeps e (a reference is taken) as its key's entry if gen is still its
 * family's and, when base is given, the table still holds base's version or
 * nothing: in memory when it fits, and (write) through the backend.  1 kept,
 * 0 not.
 */
int objtab_store(struct objtab *t, struct entry *e, unsigned gen, const struct entry *base,
		 int write);
/* The backend wrote e (or gave up): it is no longer pending. */
void objtab_written(struct objtab *t, struct entry *e);

/* Bumps the family's generation (every family when family < 0), forgets its
 * entries and pending writes, and detaches its running fetches: their
 * waiters still get their answers, newcomers start a new fetch. */
void objtab_invalidate(struct objtab *t, int family);
/* Forgets key's entry (the file evicted or pruned it). */
void objtab_drop(struct objtab *t, const char *key);

/* Keys of entries used since the last call, for the file's LRU order.
 * *keys is a malloc'd array of malloc'd strings.  Returns the count, -1 ENOMEM. */
int objtab_used_keys(struct objtab *t, char ***keys);
void objtab_usage(struct objtab *t, int64_t *entries, int64_t *bytes);
/* Records that hold only notes past their time go (the main loop's tick). */
void objtab_sweep(struct objtab *t);

#endif
