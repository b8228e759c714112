/*
 * policy: what the cache may keep and for how long; no I/O.
 *
 * Decides which request paths form a cached family, which writes invalidate
 * which family, how a request maps to a cache key (query parameters sorted so
 * ?a=1&b=2 and ?b=2&a=1 share one entry), and what Cache-Control says.
 */
#ifndef KD_POLICY_H
#define KD_POLICY_H

#include <stddef.h>
#include <stdint.h>

struct config;
struct policy;

struct policy *policy_new(const struct config *cfg);
void policy_free(struct policy **p);

int policy_family_count(const struct policy *p);
const char *policy_family_name(const struct policy *p, int family);
unsigned policy_family_ttl(const struct policy *p, int family);

/*
 * The family whose prefix covers path (the path part of a target, no query):
 * the prefix itself or anything below it ("/programs", "/programs/",
 * "/programs/x"; not "/programsx").  The longest covering prefix wins; on a
 * tie, the earlier family.  -1 when none.
 */
int policy_family(const struct policy *p, const char *path, size_t pathlen);

/*
 * Families a successful write (any method but GET/HEAD) to path invalidates, as
 * a bitmask over family indexes: every family with a prefix covering path
 * (not only the longest match), plus every family whose invalidated_by
 * prefixes cover it.  0 for GET and HEAD (compared case-sensitively).
 */
uint32_t policy_invalidates(const struct policy *p, const char *method, const char *path,
			    size_t pathlen);

/*
 * The cache key for a request: upstream URL, upstream client id, method, path
 * and canonical query, separated so no two distinct requests collide.
 * malloc'd; NULL on ENOMEM.
 */
char *policy_cache_key(const char *upstream_url, const char *client_id, const char *method,
		       const char *target);

/* The query sorted by parameter name (stable for repeated names), empty
 * parameters dropped, bytes otherwise untouched.  malloc'd. */
char *policy_canonical_query(const char *query, size_t len);

struct policy_cc {
	int no_store;
	int no_cache;
	int only_if_cached;
	int private_;
	long max_age;  /* -1 when absent */
	long s_maxage; /* -1 when absent */
};

/* Parses a Cache-Control value (NULL allowed: all clear).  Unknown directives are ignored. */
void policy_parse_cache_control(const char *value, struct policy_cc *out);

/*
 * Seconds an upstream answer may be served fresh: the family TTL, capped by
 * max-age (s-maxage wins over max-age).  0 means do not store (no-store, no-cache,
 * private, or a zero TTL).
 */
unsigned policy_ttl(const struct policy *p, int family, const struct policy_cc *response_cc);

#endif
