/*
 * stats: the daemon's counters, per cacheable family and in total.
 *
 * Every request thread bumps them, so they are relaxed atomics rather than
 * a lock: a reader wants plausible numbers, not a consistent cut across
 * counters.  Row i holds family i; the last row holds the total.
 *
 * Each thread adds into a stripe of its own (threads take stripes in turn;
 * past STRIPES they share), and a read sums the stripes: with one set of
 * counters, every hit on every core would write the same cache lines.
 */
#include <assert.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "stats.h"

#define STRIPES 16
#define LINE 64

struct stats {
	int nfamilies;
	size_t stride;                 /* counters per stripe, a whole number of lines */
	_Atomic unsigned long long *c; /* STRIPES * stride, line-aligned */
};

static atomic_uint next_stripe;
static _Thread_local int my_stripe = -1;

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
	size_t n, i;

	if (nfamilies < 0) {
		errno = EINVAL;
		return NULL;
	}
	n = ((size_t)nfamilies + 1) * STATS_COUNTERS;
	if ((s = malloc(sizeof(*s))) == NULL)
		return NULL;
	s->nfamilies = nfamilies;
	s->stride = (n * sizeof(s->c[0]) + LINE - 1) / LINE * LINE / sizeof(s->c[0]);
	if (posix_memalign((void **)&s->c, LINE, STRIPES * s->stride * sizeof(s->c[0])) != 0) {
		free(s);
		return NULL;
	}
	for (i = 0; i < STRIPES * s->stride; i++)
		atomic_init(&s->c[i], 0);
	return s;
}

void stats_free(struct stats **s)
{
	if (*s != NULL)
		free((*s)->c);
	free(*s);
	*s = NULL;
}

/* The calling thread's stripe. */
static _Atomic unsigned long long *stripe(struct stats *s)
{
	if (my_stripe < 0)
		my_stripe = (int)(atomic_fetch_add(&next_stripe, 1) % STRIPES);
	return s->c + (size_t)my_stripe * s->stride;
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
	_Atomic unsigned long long *mine = stripe(s);

	if (family >= 0)
		atomic_fetch_add_explicit(&mine[slot(s, family, c)], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&mine[slot(s, -1, c)], 1, memory_order_relaxed);
}

unsigned long long stats_get(const struct stats *s, int family, enum stats_counter c)
{
	size_t at = slot(s, family, c);
	unsigned long long sum = 0;

	/* C11 atomic_load takes a non-const pointer before C17's fix. */
	for (size_t i = 0; i < STRIPES; i++)
		sum += atomic_load_explicit((_Atomic unsigned long long *)&s->c[i * s->stride + at],
					    memory_order_relaxed);
	return sum;
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
