/*
 * fuzz_cache_control: Cache-Control values (policy_parse_cache_control()),
 * from a client's request or the API's answer, and what an answer's headers
 * make of a family's TTL: policy_ttl(), policy_answer_ttl() (Cache-Control,
 * Expires, Date, Age, Vary), policy_age(), policy_stale_limits(), and the
 * Vary rules policy_vary_beyond_key(), policy_vary_same() and
 * policy_vary_carried().
 *
 * Input: up to eight parts separated by NUL bytes: Cache-Control a,
 * Cache-Control b (only read together with a, as "a,b": a field given
 * twice), Expires, Date, Age, Vary, and two requests' fields as
 * "name[=value]" words separated by blanks.  A missing part is an absent
 * field.
 *
 * Invariants:
 *  - flags are 0 or 1; max-age, s-maxage, stale-while-revalidate and
 *    stale-if-error are -1 or within 0..2^31 (RFC 9111 1.2.2);
 *  - without quoted strings, "a,b" parses as a's and b's directives
 *    together: each flag set in either, each age the smaller present;
 *  - policy_ttl() is 0 for no-store, no-cache and private, never above the
 *    family's TTL, and capped by s-maxage, else by max-age;
 *  - policy_answer_ttl() is 0 with no-store, no-cache, private, a bad
 *    max-age or s-maxage, or a Vary with '*'; never more than policy_ttl();
 *    exactly policy_ttl() when Expires cannot apply (no Expires, or a
 *    max-age or s-maxage); the API's Age is read as delta-seconds and
 *    taken off what the answer gets without it;
 *  - policy_stale_limits() never exceeds kaleidod's settings, is 0 for
 *    must-revalidate, proxy-revalidate or s-maxage, and is capped by the
 *    answer's own stale-while-revalidate and stale-if-error;
 *  - policy_vary_same() is symmetric, true of a request and itself unless
 *    Vary names "*" (or a name too long to compare), never true with "*";
 *    policy_vary_carried() is "not the same as a request without fields",
 *    never true when Vary names nothing beyond Accept-Encoding, and false
 *    for a request without fields but for "*" and overlong names.
 */
#include <strings.h>

#include "config.h"
#include "fuzz.h"
#include "hdr.h"
#include "policy.h"

#define DELTA_MAX 2147483648L
#define NOW 1764864000 /* 2025-12-04T16:00:00Z: Dates and Expires are read against it */

static struct config *cfg;
static struct policy *pol;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char err[256];

	/* the three default families (300 s), one that caches nothing, one for ever */
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
	const int flags[] = { cc->no_store, cc->no_cache,        cc->only_if_cached,
			      cc->private_, cc->must_revalidate, cc->bad_age };
	const long ages[] = { cc->max_age, cc->s_maxage, cc->stale_while_rev, cc->stale_if_error };

	for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++)
		FUZZ_CHECK(flags[i] == 0 || flags[i] == 1, "flag %zu is %d", i, flags[i]);
	for (size_t i = 0; i < sizeof(ages) / sizeof(ages[0]); i++)
		FUZZ_CHECK(ages[i] >= -1 && ages[i] <= DELTA_MAX, "age %zu is %ld", i, ages[i]);
}

static long min_age(long a, long b)
{
	if (a < 0)
		return b;
	if (b < 0)
		return a;
	return a < b ? a : b;
}

static unsigned long cap(unsigned long v, long age)
{
	return age >= 0 && (unsigned long)age < v ? (unsigned long)age : v;
}

/* family -1 and one past the last are no family: 0 */
static unsigned family_ttl(int f)
{
	return f >= 0 && f < policy_family_count(pol) ? policy_family_ttl(pol, f) : 0;
}

static void check_ttl(const struct policy_cc *cc)
{
	for (int f = -1; f <= policy_family_count(pol); f++) {
		unsigned long want = family_ttl(f);

		FUZZ_CHECK(policy_ttl(pol, f, NULL) == want, "family %d without directives", f);
		if (cc->no_store || cc->no_cache || cc->private_)
			want = 0;
		else if (cc->s_maxage >= 0)
			want = cap(want, cc->s_maxage);
		else
			want = cap(want, cc->max_age);
		FUZZ_CHECK(policy_ttl(pol, f, cc) == want, "family %d: ttl %u, want %lu", f,
			   policy_ttl(pol, f, cc), want);
	}
}

static void compose(const char *a, const char *b, const struct policy_cc *ca)
{
	size_t al = strlen(a), bl = strlen(b);
	char *ab = fuzz_xmalloc(al + bl + 2);
	struct policy_cc cb, cab;

	memcpy(ab, a, al);
	ab[al] = ',';
	memcpy(ab + al + 1, b, bl + 1);
	policy_parse_cache_control(b, &cb);
	policy_parse_cache_control(ab, &cab);
	check_cc(&cb);
	check_cc(&cab);
	/* a quote may run across the comma: only quote-free values compose */
	if (strchr(ab, '"') == NULL) {
		FUZZ_CHECK(cab.no_store == (ca->no_store | cb.no_store) &&
				   cab.no_cache == (ca->no_cache | cb.no_cache) &&
				   cab.only_if_cached == (ca->only_if_cached | cb.only_if_cached) &&
				   cab.private_ == (ca->private_ | cb.private_) &&
				   cab.must_revalidate ==
					   (ca->must_revalidate | cb.must_revalidate) &&
				   cab.bad_age == (ca->bad_age | cb.bad_age),
			   "\"a,b\" flags differ from a's and b's");
		FUZZ_CHECK(cab.max_age == min_age(ca->max_age, cb.max_age) &&
				   cab.s_maxage == min_age(ca->s_maxage, cb.s_maxage) &&
				   cab.stale_while_rev ==
					   min_age(ca->stale_while_rev, cb.stale_while_rev) &&
				   cab.stale_if_error ==
					   min_age(ca->stale_if_error, cb.stale_if_error),
			   "\"a,b\" ages differ from the smaller of a's and b's");
	}
	free(ab);
}

/* Builds an answer's header list from the parts that are present. */
static struct hdr *answer(char *const *parts, int with_expires, int with_age)
{
	static const char *const names[] = {
		"Cache-Control", NULL, "Expires", "Date", "Age", "Vary"
	};
	struct hdr *h = hdr_new();

	if (h == NULL)
		abort();
	for (int i = 0; i < 6; i++) {
		if (names[i] == NULL || parts[i] == NULL || (i == 2 && !with_expires) ||
		    (i == 4 && !with_age))
			continue;
		/* a value hdr_add() refuses (CR, LF) cannot reach the policy: left out */
		hdr_add(h, names[i], strlen(names[i]), parts[i], strlen(parts[i]));
	}
	return h;
}

/* Delta-seconds as policy.c reads them: digits only, capped at 2^31; else -1. */
static long delta(const char *s)
{
	long v = 0;

	if (s == NULL || *s == '\0')
		return -1;
	for (; *s != '\0'; s++) {
		if (*s < '0' || *s > '9')
			return -1;
		if (v < DELTA_MAX)
			v = v * 10 + (*s - '0');
	}
	return v < DELTA_MAX ? v : DELTA_MAX;
}

static void check_answer(char *const *parts)
{
	struct hdr *h = answer(parts, 1, 1), *noage = answer(parts, 1, 0);
	struct hdr *plain = answer(parts, 0, 0);
	const char *vary = hdr_get(h, "Vary"), *agev = hdr_get(h, "Age");
	struct policy_cc cc;
	long a = delta(agev);
	unsigned swr, sie;

	policy_parse_cache_control(hdr_get(h, "Cache-Control"), &cc);
	for (int f = -1; f <= policy_family_count(pol); f++) {
		unsigned age = 1, age2 = 1, age3 = 1;
		unsigned r = policy_answer_ttl(pol, f, h, NOW, &age);
		unsigned r_noage = policy_answer_ttl(pol, f, noage, NOW, &age2);
		unsigned r_plain = policy_answer_ttl(pol, f, plain, NOW, &age3);
		unsigned ttl = policy_ttl(pol, f, &cc);
		int never = cc.bad_age || (vary != NULL && strchr(vary, '*') != NULL);

		FUZZ_CHECK(age == (a > 0 ? (unsigned)a : 0) && age == policy_age(h),
			   "Age \"%s\" read as %u", agev, age);
		FUZZ_CHECK(age2 == 0 && age3 == 0, "an Age without the field");
		FUZZ_CHECK(r == (r_noage > age ? r_noage - age : 0), "Age %u: %u, without it %u",
			   age, r, r_noage);
		FUZZ_CHECK(r_noage <= ttl && r_noage <= family_ttl(f), "family %d: %u over %u", f,
			   r_noage, ttl);
		if (never)
			FUZZ_CHECK(r_noage == 0, "family %d: stored for %u despite %s", f, r_noage,
				   cc.bad_age ? "a bad age" : "Vary: *");
		else
			FUZZ_CHECK(r_plain == ttl, "family %d: %u without Expires, want %u", f,
				   r_plain, ttl);
		if (!never && (cc.max_age >= 0 || cc.s_maxage >= 0))
			FUZZ_CHECK(r_noage == ttl, "family %d: Expires overrode max-age (%u, %u)",
				   f, r_noage, ttl);
	}

	for (unsigned cfg_swr = 0; cfg_swr <= 60; cfg_swr += 60) {
		unsigned cfg_sie = 604800;

		policy_stale_limits(h, cfg_swr, cfg_sie, &swr, &sie);
		if (cc.must_revalidate || cc.s_maxage >= 0)
			FUZZ_CHECK(swr == 0 && sie == 0, "stale allowed despite %s",
				   cc.must_revalidate ? "must-revalidate" : "s-maxage");
		else
			FUZZ_CHECK(swr == cap(cfg_swr, cc.stale_while_rev) &&
					   sie == cap(cfg_sie, cc.stale_if_error),
				   "stale limits %u/%u from %u/%u", swr, sie, cfg_swr, cfg_sie);
	}
	hdr_free(&h);
	hdr_free(&noage);
	hdr_free(&plain);
}

/* A request's fields, from "name[=value]" words separated by blanks. */
struct fields {
	char *text; /* the words, cut in place */
	char *name[64];
	char *value[64];
	int n;
};

static void fields_parse(struct fields *f, const char *words)
{
	char *p;

	f->n = 0;
	if ((f->text = strdup(words != NULL ? words : "")) == NULL)
		abort();
	for (p = f->text; *p != '\0' && f->n < 64;) {
		char *eq;

		p += strspn(p, " \t");
		if (*p == '\0')
			break;
		f->name[f->n] = p;
		p += strcspn(p, " \t");
		if (*p != '\0')
			*p++ = '\0';
		eq = strchr(f->name[f->n], '=');
		if (eq != NULL)
			*eq++ = '\0';
		f->value[f->n] = eq != NULL ? eq : (char *)"";
		f->n++;
	}
}

static const char *field_get(void *arg, const char *name)
{
	const struct fields *f = arg;

	for (int i = 0; i < f->n; i++)
		if (strcasecmp(f->name[i], name) == 0)
			return f->value[i];
	return NULL;
}

static const char *all_fields(void *arg, const char *name)
{
	return "present";
}

static void check_vary(const char *vary, const char *words_a, const char *words_b)
{
	struct fields fa, fb;
	int beyond = policy_vary_beyond_key(vary), star = 0, overlong = 0;
	int carried_a, carried_all, same_ab, same_ba, same_aa;

	fields_parse(&fa, words_a);
	fields_parse(&fb, words_b);
	for (const char *p = vary; *p != '\0';) {
		size_t n;

		p += strspn(p, " \t,");
		n = strcspn(p, " \t,");
		star |= n == 1 && *p == '*';
		overlong |= n >= 128;
		p += n;
	}
	carried_a = policy_vary_carried(vary, field_get, &fa);
	carried_all = policy_vary_carried(vary, all_fields, NULL);
	same_ab = policy_vary_same(vary, field_get, &fa, field_get, &fb);
	same_ba = policy_vary_same(vary, field_get, &fb, field_get, &fa);
	same_aa = policy_vary_same(vary, field_get, &fa, field_get, &fa);

	FUZZ_CHECK(beyond == 0 || beyond == 1, "beyond %d", beyond);
	FUZZ_CHECK(!star || beyond, "\"*\" is beyond the key");
	FUZZ_CHECK(same_ab == same_ba, "policy_vary_same is not symmetric");
	FUZZ_CHECK(same_aa == !(star || overlong), "a request and itself: %d", same_aa);
	FUZZ_CHECK(!star || (!same_ab && carried_a), "\"*\" matched");
	FUZZ_CHECK(carried_a == !policy_vary_same(vary, field_get, &fa, NULL, NULL),
		   "carried is not \"differs from a request without fields\"");
	FUZZ_CHECK(!carried_all || beyond, "carried, but nothing beyond Accept-Encoding named");
	FUZZ_CHECK(policy_vary_carried(vary, field_get, &(struct fields){ .n = 0 }) ==
			   (star || overlong),
		   "a request without fields carries one");
	free(fa.text);
	free(fb.text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *parts[8];
	struct policy_cc ca;

	for (int i = 0; i < 8; i++)
		parts[i] = fuzz_part(data, size, i);

	policy_parse_cache_control(parts[0], &ca);
	check_cc(&ca);
	check_ttl(&ca);
	if (parts[1] != NULL)
		compose(parts[0], parts[1], &ca);
	policy_parse_cache_control(NULL, &ca);
	FUZZ_CHECK(ca.max_age == -1 && ca.s_maxage == -1 && ca.stale_while_rev == -1 &&
			   ca.stale_if_error == -1 && !ca.no_store && !ca.bad_age,
		   "NULL is not clear");

	check_answer(parts);
	if (parts[5] != NULL)
		check_vary(parts[5], parts[6], parts[7]);

	for (int i = 0; i < 8; i++)
		free(parts[i]);
	return 0;
}
