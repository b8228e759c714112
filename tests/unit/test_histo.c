/*
 * test_histo: observations land in the right bucket (an observation equal
 * to a bound counts in that bound's bucket, as Prometheus's le means),
 * buckets read back cumulative, series stay apart, the sum is in seconds,
 * and concurrent observations are all counted.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>

#include "histo.h"

static void test_buckets(void **state)
{
	struct histo *h = histo_new(2);
	struct histo_snapshot s;

	(void)state;
	assert_non_null(h);
	histo_observe(h, 0, 0.00005); /* below the first bound */
	histo_observe(h, 0, 0.0001);  /* on it: le="0.0001" */
	histo_observe(h, 0, 0.003);   /* (0.0025, 0.005] */
	histo_observe(h, 0, 31);      /* past the last: +Inf only */
	histo_observe(h, 0, -1);      /* a clock step back counts as 0 */
	histo_observe(h, 1, 0.2);
	histo_read(h, 0, &s);
	assert_int_equal(s.le[0], 3);
	assert_int_equal(s.le[3], 3); /* 0.001 */
	assert_int_equal(s.le[4], 3); /* 0.0025 */
	assert_int_equal(s.le[5], 4); /* 0.005 */
	assert_int_equal(s.le[HISTO_BOUNDS - 1], 4);
	assert_int_equal(s.count, 5);
	assert_true(s.sum > 31.0031 && s.sum < 31.0032);
	for (int b = 1; b < HISTO_BOUNDS; b++) {
		assert_true(s.le[b] >= s.le[b - 1]);
		assert_true(histo_bounds[b] > histo_bounds[b - 1]);
	}
	histo_read(h, 1, &s);
	assert_int_equal(s.le[9], 0);  /* 0.1 */
	assert_int_equal(s.le[10], 1); /* 0.25 */
	assert_int_equal(s.count, 1);
	/* Out of range: nothing counted, nothing read, no crash. */
	histo_observe(h, 2, 1);
	histo_read(h, 2, &s);
	assert_int_equal(s.count, 0);
	histo_free(&h);
	assert_null(h);
	assert_null(histo_new(0));
}

#define THREADS 4
#define EACH 50000

static void *observer(void *arg)
{
	for (int i = 0; i < EACH; i++)
		histo_observe(arg, 0, 0.001);
	return NULL;
}

static void test_threads(void **state)
{
	struct histo *h = histo_new(1);
	pthread_t t[THREADS];
	struct histo_snapshot s;

	(void)state;
	for (int i = 0; i < THREADS; i++)
		assert_int_equal(pthread_create(&t[i], NULL, observer, h), 0);
	for (int i = 0; i < THREADS; i++)
		pthread_join(t[i], NULL);
	histo_read(h, 0, &s);
	assert_int_equal(s.count, THREADS * EACH);
	assert_int_equal(s.le[3], THREADS * EACH);
	assert_int_equal(s.le[2], 0);
	assert_true(s.sum > THREADS * EACH * 0.001 * 0.999 &&
		    s.sum < THREADS * EACH * 0.001 * 1.001);
	histo_free(&h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_buckets),
		cmocka_unit_test(test_threads),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
