/*
 * stripe: which of a few copies of a hot counter the calling thread adds to.
 *
 * Counters every request bumps (stats, histograms, traffic) keep
 * STRIPE_COUNT copies and a reader sums them: with one copy, every hit on
 * every core would write the same cache lines.  Threads take stripes in
 * turn; past STRIPE_COUNT they share.
 */
#ifndef KD_STRIPE_H
#define KD_STRIPE_H

#include <stddef.h>

#define STRIPE_COUNT 16
#define STRIPE_LINE 64 /* bytes: stripes start on their own cache line */

/* The calling thread's stripe, 0 <= n < STRIPE_COUNT, the same each call. */
unsigned stripe_mine(void);

/*
 * STRIPE_COUNT stripes of n relaxed atomic counters each, zeroed, each
 * stripe line-aligned; *stride is a stripe's length in counters.  Free
 * with free(); NULL on ENOMEM.
 */
_Atomic unsigned long long *stripe_alloc(size_t n, size_t *stride);
/* Adds v to counter i of the calling thread's stripe. */
void stripe_add(_Atomic unsigned long long *c, size_t stride, size_t i, unsigned long long v);
/* Counter i summed over the stripes. */
unsigned long long stripe_sum(const _Atomic unsigned long long *c, size_t stride, size_t i);

#endif
