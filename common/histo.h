/*
 * histo: latency histograms with fixed buckets, for the Prometheus
 * exposition: lock-free to observe (striped counters), summed to read.
 *
 * One histo holds nseries independent histograms (one per label value,
 * e.g. per cache outcome).  The buckets run from 100 us to 30 s, which
 * covers a hit from memory and an API call that times out.
 */
#ifndef KD_HISTO_H
#define KD_HISTO_H

#define HISTO_BOUNDS 17 /* finite upper bounds; +Inf is one more bucket */

/* The upper bounds, in seconds, ascending. */
extern const double histo_bounds[HISTO_BOUNDS];

struct histo;

struct histo *histo_new(int nseries); /* NULL on ENOMEM or nseries < 1 */
void histo_free(struct histo **h);

/* One observation of seconds (negative counts as 0) in series. */
void histo_observe(struct histo *h, int series, double seconds);

struct histo_snapshot {
	/* Cumulative, as Prometheus wants: le[i] observations <= histo_bounds[i];
	 * count is every observation (the +Inf bucket). */
	unsigned long long le[HISTO_BOUNDS];
	unsigned long long count;
	double sum; /* seconds */
};
/* Plausible, not a consistent cut: counts may lead the sum by a few. */
void histo_read(const struct histo *h, int series, struct histo_snapshot *out);

#endif
