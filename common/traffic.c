/*
 * traffic: the series table of requests by label set (traffic.h).
 *
 * A series key packs family + 1 (6 bits), the method (3), the outcome (3)
 * and the code (10) into 22 bits; slot i holds key + 1, or 0 while free.
 * Keys are only ever added, so a reader that sees a slot's key sees a
 * series whose counter only grows.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <strings.h>

#include "check.h"
#include "stripe.h"
#include "traffic.h"

struct traffic {
	int nfamilies, noutcomes;
	_Atomic uint32_t keys[TRAFFIC_SERIES];
	size_t stride;
	_Atomic unsigned long long *n; /* TRAFFIC_SERIES counters and the overflow */
	struct histo *dur;
};

static const char *const method_names[TRAFFIC_METHODS] = {
	"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other",
};

struct traffic *traffic_new(int nfamilies, int noutcomes)
{
	struct traffic *t;

	if (nfamilies < 0 || nfamilies > TRAFFIC_FAMILIES_MAX || noutcomes < 1 ||
	    noutcomes > TRAFFIC_OUTCOMES_MAX) {
		errno = EINVAL;
		return NULL;
	}
	if ((t = calloc(1, sizeof(*t))) == NULL)
		return NULL;
	t->nfamilies = nfamilies;
	t->noutcomes = noutcomes;
	for (size_t i = 0; i < TRAFFIC_SERIES; i++)
		atomic_init(&t->keys[i], 0);
	t->n = stripe_alloc(TRAFFIC_SERIES + 1, &t->stride);
	t->dur = histo_new(noutcomes);
	if (t->n == NULL || t->dur == NULL) {
		traffic_free(&t);
		return NULL;
	}
	return t;
}

void traffic_free(struct traffic **t)
{
	if (*t == NULL)
		return;
	free((*t)->n);
	histo_free(&(*t)->dur);
	free(*t);
	*t = NULL;
}

enum traffic_method traffic_method(const char *method)
{
	for (int m = 0; m < TRAFFIC_OTHER; m++)
		if (strcasecmp(method, method_names[m]) == 0)
			return (enum traffic_method)m;
	return TRAFFIC_OTHER;
}

const char *traffic_method_name(enum traffic_method m)
{
	return (int)m >= 0 && m < TRAFFIC_METHODS ? method_names[m] : "other";
}

/* The slot of key, claimed if new; TRAFFIC_SERIES when the table is full. */
static size_t series(struct traffic *t, uint32_t key)
{
	/* Fibonacci hashing spreads the packed fields over the table. */
	size_t i = (size_t)((key * 2654435769u) >> 21) % TRAFFIC_SERIES;

	for (size_t probes = 0; probes < TRAFFIC_SERIES; probes++, i = (i + 1) % TRAFFIC_SERIES) {
		uint32_t seen = atomic_load_explicit(&t->keys[i], memory_order_acquire);

		if (seen == 0) {
			uint32_t want = 0;

			if (atomic_compare_exchange_strong(&t->keys[i], &want, key + 1))
				return i;
			seen = want; /* another thread claimed it first: whose key? */
		}
		if (seen == key + 1)
			return i;
	}
	return TRAFFIC_SERIES;
}

void traffic_count(struct traffic *t, int family, enum traffic_method m, unsigned code, int outcome,
		   double seconds)
{
	uint32_t key;

	ASSERT(family >= -1 && family < t->nfamilies);
	ASSERT(outcome >= 0 && outcome < t->noutcomes);
	ASSERT((int)m >= 0 && m < TRAFFIC_METHODS);
	if (code < 100 || code > 999)
		code = 0;
	key = (uint32_t)(family + 1) | (uint32_t)m << 6 | (uint32_t)outcome << 9 | code << 12;
	stripe_add(t->n, t->stride, series(t, key), 1);
	histo_observe(t->dur, outcome, seconds);
}

void traffic_each(const struct traffic *t, traffic_fn fn, void *arg)
{
	for (size_t i = 0; i < TRAFFIC_SERIES; i++) {
		uint32_t key =
			atomic_load_explicit((_Atomic uint32_t *)&t->keys[i], memory_order_acquire);

		if (key-- == 0)
			continue;
		fn(arg, (int)(key & 63) - 1, (enum traffic_method)(key >> 6 & 7), key >> 12,
		   (int)(key >> 9 & 7), stripe_sum(t->n, t->stride, i));
	}
}

unsigned long long traffic_overflow(const struct traffic *t)
{
	return stripe_sum(t->n, t->stride, TRAFFIC_SERIES);
}

void traffic_durations(const struct traffic *t, int outcome, struct histo_snapshot *out)
{
	histo_read(t->dur, outcome, out);
}
