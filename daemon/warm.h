/*
 * warm: fetches each family's base list (/programs, /entity_slices,
 * /record_views) before anyone asks: once authenticated at start, and
 * again shortly before each copy expires, so the first request of the day
 * is a hit and the base lists never expire while the daemon runs.
 * ([cache] refresh_ahead; a no-op when it is off.)
 */
#ifndef KD_WARM_H
#define KD_WARM_H

#include <stdint.h>

struct config;
struct upstream;
struct objtab;
struct flights;
struct policy;
struct stats;
struct warm;

struct warm *warm_new(const struct config *cfg, struct upstream *up, struct objtab *tab,
		      struct flights *flights, struct policy *policy, struct stats *stats);
void warm_free(struct warm **w);

/* Called a few times a second from the main thread. */
void warm_tick(struct warm *w);

/* 1 once every base list has been fresh in the cache (stays 1). */
int warm_done(struct warm *w);
/* When the family's base list now held (memory or file, fresh or not) was
 * stored, unix seconds; -1 when none is, or the family has no base list
 * kept warm. */
int64_t warm_base_stored_at(struct warm *w, int family);

#endif
