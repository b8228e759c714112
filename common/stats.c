/*
 * stats: the daemon's counters, per cacheable family and in total.
 *
 * Every request thread bumps them, so they are relaxed atomics rather than
 * a lock: a reader wants plausible numbers, not a consistent cut across
 * counters.  Row i holds family i; the last row holds the total.
 *
 * Each thread adds into a stripe of its own (stripe.h), and a read sums
 * the stripes.
 */
#include <assert.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "stats.h"
#include "stripe.h"

struct stats {
	int nfamilies;
	size_t stride;                 /* counters per stripe, a whole number of lines */
	_Atomic unsigned long long *c; /* striped (stripe.h) */
};

static const char *const counter_names[STATS_COUNTERS] = {
	[STATS_REQUESTS] = "requests",
	[STATS_HITS] = "hits",
	[STATS_MISSES] = "misses",
	[STATS_STALE] = "stale",
	[STATS_BYPASS] = "bypass",
	[STATS_UPSTREAM_ERRORS] = "upstream_errors",
	[STATS_INVALIDATIONS] = "invalidations",
	[STATS_LOCAL_GRANTS] = "local_grants",
	[STATS_FORWARDED] = "forwarded",
	[STATS_REVALIDATED] = "revalidated",
	[STATS_COALESCED] = "coalesced",
	[STATS_REFRESHES] = "refreshes",
};

struct stats *stats_new(int nfamilies)
{
	struct stats *s;

	if (nfamilies < 0) {
		errno = EINVAL;
		return NULL;
	}
	if ((s = malloc(sizeof(*s))) == NULL)
		return NULL;
	s->nfamilies = nfamilies;
	s->c = stripe_alloc(((size_t)nfamilies + 1) * STATS_COUNTERS, &s->stride);
	if (s->c == NULL) {
		free(s);
		return NULL;
	}
	return s;
}

void stats_free(struct stats **s)
{
	if (*s != NULL)
		free((*s)->c);
	free(*s);
	*s = NULL;
}

/* Index of counter c in row family; -1 is the total. */
static size_t slot(const struct stats *s, int family, enum stats_counter c)
{
	assert(family >= -1 && family < s->nfamilies);
	assert((int)c >= 0 && c < STATS_COUNTERS);
	if (family < 0)
		family = s->nfamilies;
	return (size_t)family * STATS_COUNTERS + (size_t)c;
}

void stats_inc(struct stats *s, int family, enum stats_counter c)
{
	if (family >= 0)
		stripe_add(s->c, s->stride, slot(s, family, c), 1);
	stripe_add(s->c, s->stride, slot(s, -1, c), 1);
}

unsigned long long stats_get(const struct stats *s, int family, enum stats_counter c)
{
	return stripe_sum(s->c, s->stride, slot(s, family, c));
}

const char *stats_counter_name(enum stats_counter c)
{
	if ((int)c < 0 || c >= STATS_COUNTERS)
		return "unknown";
	return counter_names[c];
}

/* One row as {name: n, ...}; NULL on ENOMEM. */
static cJSON *row_json(const struct stats *s, int family)
{
	cJSON *o = cJSON_CreateObject();
	int c;

	if (o == NULL)
		goto fail;
	for (c = 0; c < STATS_COUNTERS; c++)
		if (cJSON_AddNumberToObject(o, counter_names[c],
					    (double)stats_get(s, family, (enum stats_counter)c)) ==
		    NULL)
			goto fail;
	return o;
fail:
	cJSON_Delete(o);
	return NULL;
}

/* The caller owns the result (cJSON_Delete); NULL on ENOMEM.  A family
 * without a name in names (or names NULL) is keyed by its number. */
cJSON *stats_json(const struct stats *s, const char *const *names)
{
	cJSON *root = NULL, *fam, *row;
	char num[16];
	const char *key;
	int f;

	root = cJSON_CreateObject();
	if (root == NULL)
		goto fail;
	row = row_json(s, -1);
	if (row == NULL || !cJSON_AddItemToObject(root, "total", row)) {
		cJSON_Delete(row);
		goto fail;
	}
	fam = cJSON_AddObjectToObject(root, "families");
	if (fam == NULL)
		goto fail;
	for (f = 0; f < s->nfamilies; f++) {
		key = names != NULL ? names[f] : NULL;
		if (key == NULL) {
			snprintf(num, sizeof(num), "%d", f);
			key = num;
		}
		row = row_json(s, f);
		if (row == NULL || !cJSON_AddItemToObject(fam, key, row)) {
			cJSON_Delete(row);
			goto fail;
		}
	}
	return root;
fail:
	cJSON_Delete(root);
	return NULL;
}
