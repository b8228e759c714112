/*
 * fuzz_cache_control: Cache-Control values (policy_parse_cache_control()),
 * from a client's request or the API's answer, and what the answer's
 * directives make of a family's TTL (policy_ttl()).
 *
 * Input: a header value; a NUL byte, if any, splits it into two values a
 * and b (a field given twice is read as "a, b").
 *
 * Invariants:
 *  - flags are 0 or 1; max-age and s-maxage are -1 or within 0..2^31
 *    (RFC 9111 1.2.2);
 *  - without quoted strings, parsing "a,b" gives a's and b's directives
 *    together: each flag set in either, each age the smaller present;
 *  - policy_ttl() is 0 for no-store, no-cache and private, never above the
 *    family's TTL, and capped by s-maxage, else by max-age.
 */
#include "config.h"
#include "fuzz.h"
#include "policy.h"

#define DELTA_MAX 2147483648L

static struct config *cfg;
static struct policy *pol;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char err[256];

	/* the three default families (300 s) and one that caches nothing */
	if ((cfg = config_new()) == NULL ||
	    config_set(cfg, "family.never", "paths", "/never", NULL, err, sizeof(err)) < 0 ||
	    config_set(cfg, "family.never", "ttl", "0", NULL, err, sizeof(err)) < 0 ||
	    config_set(cfg, "family.long", "paths", "/long", NULL, err, sizeof(err)) < 0 ||
	    config_set(cfg, "family.long", "ttl", "4294967295", NULL, err, sizeof(err)) < 0 ||
	    (pol = policy_new(cfg)) == NULL)
		abort();
	return 0;
}

static void check_cc(const struct policy_cc *cc)
{
	FUZZ_CHECK((cc->no_store | cc->no_cache | cc->only_if_cached | cc->private_) <= 1 &&
			   cc->no_store >= 0 && cc->no_cache >= 0 && cc->only_if_cached >= 0 &&
			   cc->private_ >= 0,
		   "a flag is neither 0 nor 1");
	FUZZ_CHECK(cc->max_age >= -1 && cc->max_age <= DELTA_MAX, "max-age %ld", cc->max_age);
	FUZZ_CHECK(cc->s_maxage >= -1 && cc->s_maxage <= DELTA_MAX, "s-maxage %ld", cc->s_maxage);
}

static long min_age(long a, long b)
{
	if (a < 0)
		return b;
	if (b < 0)
		return a;
	return a < b ? a : b;
}

static void check_ttl(const struct policy_cc *cc)
{
	for (int f = -1; f <= policy_family_count(pol); f++) {
		unsigned ttl = policy_ttl(pol, f, cc);
		unsigned fam =
			f >= 0 && f < policy_family_count(pol) ? policy_family_ttl(pol, f) : 0;
		unsigned long want = fam;

		FUZZ_CHECK(policy_ttl(pol, f, NULL) == fam, "family %d without directives", f);
		if (cc->no_store || cc->no_cache || cc->private_)
			want = 0;
		else if (cc->s_maxage >= 0)
			want = (unsigned long)cc->s_maxage < want ? (unsigned long)cc->s_maxage :
								    want;
		else if (cc->max_age >= 0)
			want = (unsigned long)cc->max_age < want ? (unsigned long)cc->max_age :
								   want;
		FUZZ_CHECK(ttl == want, "family %d: ttl %u, want %lu", f, ttl, want);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *a = fuzz_part(data, size, 0), *b = fuzz_part(data, size, 1);
	struct policy_cc ca, cb, cab;

	policy_parse_cache_control(a, &ca);
	check_cc(&ca);
	check_ttl(&ca);
	if (b != NULL) {
		size_t al = strlen(a), bl = strlen(b);
		char *ab = fuzz_xmalloc(al + bl + 2);

		memcpy(ab, a, al);
		ab[al] = ',';
		memcpy(ab + al + 1, b, bl + 1);
		policy_parse_cache_control(b, &cb);
		policy_parse_cache_control(ab, &cab);
		check_cc(&cb);
		check_cc(&cab);
		/* a quote may run across the comma: only quote-free values compose */
		if (strchr(ab, '"') == NULL) {
			FUZZ_CHECK(cab.no_store == (ca.no_store | cb.no_store) &&
					   cab.no_cache == (ca.no_cache | cb.no_cache) &&
					   cab.only_if_cached ==
						   (ca.only_if_cached | cb.only_if_cached) &&
					   cab.private_ == (ca.private_ | cb.private_),
				   "\"a,b\" flags differ from a's and b's");
			FUZZ_CHECK(cab.max_age == min_age(ca.max_age, cb.max_age) &&
					   cab.s_maxage == min_age(ca.s_maxage, cb.s_maxage),
				   "\"a,b\" ages %ld/%ld, a %ld/%ld, b %ld/%ld", cab.max_age,
				   cab.s_maxage, ca.max_age, ca.s_maxage, cb.max_age, cb.s_maxage);
		}
		free(ab);
	}
	policy_parse_cache_control(NULL, &cab);
	FUZZ_CHECK(cab.max_age == -1 && cab.s_maxage == -1 && !cab.no_store, "NULL is not clear");
	free(a);
	free(b);
	return 0;
}
