/*
 * l2: the cluster's shared second cache level, in Redis ([cluster]
 * shared_cache = yes).
 *
 * A fetch the object table decided to make (a miss in memory and in the
 * file) first asks Redis: an answer another instance kept there is taken
 * as if the API had given it, and the API is not asked.  Otherwise the
 * fetch takes a short lease on the key (SET NX PX), so that the cluster
 * asks the API once: instances that find the lease taken wait for the
 * holder's answer to appear, polling, and fetch themselves only if it
 * does not come within the lease.  What the holder gets is stored for the
 * others (the headers, the gzip body, SET ... EX for the TTL and the stale
 * window).
 *
 * An answer in Redis carries the generations of its family and of the
 * prefix purges (cluster.h) it was fetched under, and counts only while
 * both are still Redis's: a write or a purge anywhere in the cluster makes
 * every older answer invisible at once, without deleting anything.  A
 * fetch stores only if the generations did not move while it ran, and
 * while this instance has an invalidation of its own not yet published
 * (cluster_settled), it neither reads nor stores that family.
 *
 * The same thread shares the upstream token when [cluster] share_token is
 * set (l2_token_ask() below): one login for the whole cluster.
 *
 * One thread (kd-l2) with its own connection does all the talking; a
 * fetch never blocks on Redis.  With Redis away or slow, every fetch goes
 * to the API as it would without a cluster.
 */
#ifndef KD_L2_H
#define KD_L2_H

#include <stddef.h>

struct cluster;
struct config;
struct entry;
struct l2;
struct l2_ticket;

enum l2_answer {
	L2_HIT,   /* the cluster's copy: take it, ask nobody */
	L2_FETCH, /* ask the API; this fetch holds the lease (the ticket) */
	L2_ALONE, /* ask the API, store nothing: Redis away, the family
		   * unsettled, the holder too slow, or kaleidod stopping */
};

/*
 * The answer to l2_lookup(), exactly once, on the l2 thread (or on the
 * caller's when kaleidod is stopping).  e (L2_HIT) is the caller's
 * reference; t (L2_FETCH) goes back through l2_store().
 */
typedef void (*l2_answer_fn)(void *arg, enum l2_answer a, struct entry *e, struct l2_ticket *t);

/* Made before the upstream (whose broker it may be), started once the
 * cluster is: requests made meanwhile wait.  NULL on ENOMEM. */
struct l2 *l2_new(const struct config *cfg);
/* Starts the thread, talking to c's Redis; the broker's answers go to up.
 * 0, or -1 with a message in err. */
int l2_start(struct l2 *l, struct cluster *c, char *err, size_t errlen);
/* Stops the thread, answers what is queued (L2_ALONE) and drops stores
 * not yet made; later lookups are answered L2_ALONE at once, stores
 * dropped.  For shutdown, before waiting for the flights to end.  l may be
 * NULL; again is harmless. */
void l2_stop(struct l2 *l);
/* l2_stop(), then frees: nothing may ask any more. */
void l2_free(struct l2 **l);

/* Asks for key (family's, at path) on behalf of a fetch. */
void l2_lookup(struct l2 *l, const char *key, int family, const char *path, l2_answer_fn fn,
	       void *arg);

/* The fetch that held *t is over: e (NULL: nothing to keep) is stored for
 * the cluster if the generations still hold, and the lease is given back.
 * Never blocks; takes *t. */
void l2_store(struct l2 *l, struct l2_ticket **t, struct entry *e);

/*
 * [cluster] share_token: upstream.h's token broker (arg is the l2).  A
 * token another instance got and stored in Redis is handed over, unless
 * it is the one the asker holds (it failed or is due for refresh); else
 * the asker takes a lease and asks the API, and what it got is stored for
 * the others, who wait for it meanwhile.  Never blocks.
 */
struct upstream;
void l2_token_ask(void *arg, struct upstream *up, const char *held);
void l2_token_got(void *arg, const char *token, double expires_at);

struct l2_info {
	unsigned long long lookups, hits, fetches, waits, alone, stored, errors;
	/* share_token: tokens taken from another instance, waits for one,
	 * tokens this instance got and stored for the others */
	unsigned long long token_shared, token_waits, token_stored;
};
void l2_info(struct l2 *l, struct l2_info *out); /* l may be NULL: zeros */

#endif
