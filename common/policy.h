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
 * "/programs/x"; not "/programsx"), a segment "*" standing for any one
 * segment.  The longest covering prefix wins; on
 * a tie, the earlier family.  A family is skipped for paths its except
 * prefixes cover.  -1 when none.
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
	int must_revalidate;  /* must-revalidate or proxy-revalidate */
	int bad_age;          /* max-age or s-maxage present but not a number: stale */
	long max_age;         /* -1 when absent */
	long s_maxage;        /* -1 when absent */
	long stale_while_rev; /* stale-while-revalidate=N, -1 when absent */
	long stale_if_error;  /* stale-if-error=N, -1 when absent */
};

/* Parses a Cache-Control value (NULL allowed: all clear).  Unknown directives are ignored. */
void policy_parse_cache_control(const char *value, struct policy_cc *out);

/*
 * Seconds an upstream answer may be served fresh: the family TTL, capped by
 * max-age (s-maxage wins over max-age).  0 means do not store (no-store, no-cache,
 * private, or a zero TTL).
 */
unsigned policy_ttl(const struct policy *p, int family, const struct policy_cc *response_cc);

struct hdr;
/*
 * What an answer's own headers allow (RFC 9111), for a cache that keeps a
 * family's answers for the family's TTL when they say nothing:
 * - 0 (do not store) for no-store, no-cache, private or Vary: * (other
 *   Vary fields: the caller keeps only the variant for requests without
 *   them, policy_vary_carried());
 * - freshness from s-maxage, else max-age, else Expires minus Date (now
 *   when Date is absent or invalid), each capped by the family's TTL; an
 *   invalid max-age or Expires, or one already past, means stale (0);
 * - less the API's Age, which *age receives (0 when absent or invalid).
 * Returns the seconds the answer stays fresh from now.
 */
unsigned policy_answer_ttl(const struct policy *p, int family, const struct hdr *h, int64_t now,
			   unsigned *age);
/*
 * How long past its expiry a stored answer with these headers may still be
 * served: *swr while a refresh runs behind it, *sie when the API fails.
 * kaleidod's settings (cfg_swr, cfg_sie), capped by the answer's own
 * stale-while-revalidate and stale-if-error, and 0 when it says
 * must-revalidate, proxy-revalidate or s-maxage (RFC 9111 4.2.4, 5.2.2).
 */
/* The API's Age in seconds (0 when absent or not delta-seconds). */
unsigned policy_age(const struct hdr *h);
/* Whether a Vary value names a field besides Accept-Encoding (which the
 * cache handles itself), "*" included. */
int policy_vary_beyond_key(const char *vary);
/*
 * Whether two requests select the same variant of an answer with this
 * Vary (RFC 9111 4.1): every field it names has the same value in both, or
 * is absent from both.  Fields kaleidod sets itself on the way up
 * (Accept-Encoding, Authorization, Host, Via, X-Forwarded-*...) are not
 * compared; "*" never matches.  get_x(arg_x, name) gives a request's value
 * of a field, or NULL; get_b NULL stands for a request without fields.
 */
int policy_vary_same(const char *vary, const char *(*get_a)(void *arg, const char *name),
		     void *arg_a, const char *(*get_b)(void *arg, const char *name), void *arg_b);
/* Whether a request carries a field that Vary names, so that a variant
 * stored for requests without such fields is not its answer. */
int policy_vary_carried(const char *vary, const char *(*get)(void *arg, const char *name),
			void *arg);
void policy_stale_limits(const struct hdr *h, unsigned cfg_swr, unsigned cfg_sie, unsigned *swr,
			 unsigned *sie);

#endif
