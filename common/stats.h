/*
 * stats: the daemon's counters, lock-free, per family and in total.
 */
#ifndef KD_STATS_H
#define KD_STATS_H

#include <cjson/cJSON.h>

enum stats_counter {
	STATS_REQUESTS = 0, /* every request the front saw (per family when cacheable) */
	STATS_HITS,
	STATS_MISSES,
	STATS_STALE,
	STATS_BYPASS,
	STATS_UPSTREAM_ERRORS, /* 502/504 answered, or stale served because of one */
	STATS_INVALIDATIONS,
	STATS_LOCAL_GRANTS, /* tokens issued by the local token endpoint */
	STATS_FORWARDED,    /* requests sent upstream */
	STATS_REVALIDATED,  /* expired entries the API confirmed with a 304 */
	STATS_COALESCED,    /* requests that waited on another's fetch */
	STATS_REFRESHES,    /* fetches kaleidod started itself (warm-up, ahead, behind) */
	STATS_COUNTERS
};

struct stats;

/* nfamilies families plus the total. NULL on ENOMEM. */
struct stats *stats_new(int nfamilies);
void stats_free(struct stats **s);

/* family -1 counts only in the total; otherwise in both. */
void stats_inc(struct stats *s, int family, enum stats_counter c);
unsigned long long stats_get(const struct stats *s, int family, enum stats_counter c);

const char *stats_counter_name(enum stats_counter c);

/* {"total": {...}, "families": {"programs": {...}, ...}}; names[i] names family i. */
cJSON *stats_json(const struct stats *s, const char *const *names);

#endif
