/*
 * flight: runs the object table's fetches against the API.
 *
 * objtab_lookup() decides who fetches (one request per key; the rest wait
 * in the table) and objtab_fetch_start() starts the fetches kaleidod makes
 * by itself (stale while revalidate, refresh-ahead, warm-up).  A flight
 * takes such a fetch to the API: an upstream transfer nobody streams, whose
 * answer goes to a collector (collect.c) alone, is turned into an entry,
 * compressed, and handed to objtab_fetch_done(), which keeps it and wakes
 * the waiters.  A fetch with a base (an expired entry) is conditional; a
 * 304 then refreshes the base instead of transferring the body again.
 */
#ifndef KD_FLIGHT_H
#define KD_FLIGHT_H

#include "upstream.h"

struct collected;
struct config;
struct entry;
struct hdr;
struct keeper;
struct objtab;
struct objtab_fetch;
struct policy;
struct flights;

struct flights *flights_new(const struct config *cfg, struct upstream *up, struct keeper *keeper,
			    struct objtab *tab, struct policy *policy);
/* With a shared cache ([cluster] shared_cache), a flight asks it before
 * the API (l2.h).  Set once, before the first flight; l2 outlives them. */
struct l2;
void flights_set_l2(struct flights *fs, struct l2 *l2);
/* Every flight must have ended (upstream_shutdown() ends them). */
void flights_free(struct flights **fs);
/* Waits up to seconds for every flight to end, its keeping included:
 * waiters are resumed only then, and libmicrohttpd must not stop with a
 * connection suspended.  1 when none runs. */
int flights_drain(struct flights *fs, double seconds);

/*
 * Sends the table's fetch f to the API for target (path and query), with
 * the client's end-to-end fields (NULL: none).  f stays the caller's (the
 * flight takes its own reference).  It always ends in objtab_fetch_done():
 * a fetch that cannot start ends at once, with an error.
 */
void flight_run(struct flights *fs, struct objtab_fetch *f, const char *target,
		const struct hdr *headers);

/*
 * A whole answer (COLLECT_WHOLE) of a transfer the front streamed itself
 * (a client's no-cache): kept when it
 * is a storable 200 and gen is still the family's generation, in memory at
 * once (the client may ask again as soon as it has the last byte) and in
 * the file once compressed.  On the upstream worker, from the collector's
 * done().
 */
void flight_keep_streamed(struct flights *fs, const char *key, int family, const char *path,
			  unsigned gen, const struct collected *c);

#endif
