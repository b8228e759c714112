/*
 * histo: fixed-bucket histograms on striped counters (histo.h).
 *
 * A series is HISTO_BOUNDS + 1 bucket counters (not cumulative: an
 * observation bumps one) and the sum in nanoseconds, so an observation is
 * two relaxed atomic adds on the thread's own stripe.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "histo.h"
#include "stripe.h"

const double histo_bounds[HISTO_BOUNDS] = { 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
					    0.01,   0.025,   0.05,   0.1,   0.25,   0.5,
					    1,      2.5,     5,      10,    30 };

#define PER_SERIES (HISTO_BOUNDS + 2) /* the buckets, +Inf, the sum */

struct histo {
	int nseries;
	size_t stride;
	_Atomic unsigned long long *c;
};

struct histo *histo_new(int nseries)
{
	struct histo *h;

	if (nseries < 1) {
		errno = EINVAL;
		return NULL;
	}
	if ((h = malloc(sizeof(*h))) == NULL)
		return NULL;
	h->nseries = nseries;
	if ((h->c = stripe_alloc((size_t)nseries * PER_SERIES, &h->stride)) == NULL) {
		free(h);
		return NULL;
	}
	return h;
}

void histo_free(struct histo **h)
{
	if (*h != NULL)
		free((*h)->c);
	free(*h);
	*h = NULL;
}

void histo_observe(struct histo *h, int series, double seconds)
{
	size_t base, b = 0;

	if (h == NULL || series < 0 || series >= h->nseries)
		return;
	if (!(seconds > 0)) /* also NaN */
		seconds = 0;
	/* 17 bounds: a linear scan beats a binary search's branches. */
	while (b < HISTO_BOUNDS && seconds > histo_bounds[b])
		b++;
	base = (size_t)series * PER_SERIES;
	stripe_add(h->c, h->stride, base + b, 1);
	/* 2^64 ns is 584 years of summed latency. */
	stripe_add(h->c, h->stride, base + HISTO_BOUNDS + 1,
		   seconds < 1e9 ? (unsigned long long)(seconds * 1e9) : 1000000000000000000ULL);
}

void histo_read(const struct histo *h, int series, struct histo_snapshot *out)
{
	unsigned long long run = 0;
	size_t base;

	*out = (struct histo_snapshot){ 0 };
	if (h == NULL || series < 0 || series >= h->nseries)
		return;
	base = (size_t)series * PER_SERIES;
	for (size_t b = 0; b < HISTO_BOUNDS; b++) {
		run += stripe_sum(h->c, h->stride, base + b);
		out->le[b] = run;
	}
	out->count = run + stripe_sum(h->c, h->stride, base + HISTO_BOUNDS);
	out->sum = (double)stripe_sum(h->c, h->stride, base + HISTO_BOUNDS + 1) / 1e9;
}
