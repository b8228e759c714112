/*
 * stripe: a thread's stripe, handed out in turn, and striped counters
 * (stripe.h).
 */
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>

#include "stripe.h"

static atomic_uint next_stripe;
static _Thread_local int my_stripe = -1;

unsigned stripe_mine(void)
{
	if (my_stripe < 0)
		my_stripe = (int)(atomic_fetch_add(&next_stripe, 1) % STRIPE_COUNT);
	return (unsigned)my_stripe;
}

_Atomic unsigned long long *stripe_alloc(size_t n, size_t *stride)
{
	_Atomic unsigned long long *c;
	size_t per_line = STRIPE_LINE / sizeof(*c);

	*stride = (n + per_line - 1) / per_line * per_line;
	if (*stride == 0)
		*stride = per_line;
	if (posix_memalign((void **)&c, STRIPE_LINE, STRIPE_COUNT * *stride * sizeof(*c)) != 0)
		return NULL;
	for (size_t i = 0; i < STRIPE_COUNT * *stride; i++)
		atomic_init(&c[i], 0);
	return c;
}

void stripe_add(_Atomic unsigned long long *c, size_t stride, size_t i, unsigned long long v)
{
	atomic_fetch_add_explicit(&c[(size_t)stripe_mine() * stride + i], v, memory_order_relaxed);
}

unsigned long long stripe_sum(const _Atomic unsigned long long *c, size_t stride, size_t i)
{
	unsigned long long sum = 0;

	/* C11 atomic_load takes a non-const pointer before C17's fix. */
	for (size_t s = 0; s < STRIPE_COUNT; s++)
		sum += atomic_load_explicit((_Atomic unsigned long long *)&c[s * stride + i],
					    memory_order_relaxed);
	return sum;
}
