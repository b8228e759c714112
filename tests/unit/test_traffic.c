/*
 * test_traffic: requests counted per label set, read back with the same
 * labels; method names folded to a bounded set; codes out of range as 0;
 * a full table counted as overflow; concurrent counting (four threads
 * claiming the same new series at once) loses nothing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <string.h>

#include "traffic.h"

struct want {
	int family;
	enum traffic_method m;
	unsigned code;
	int outcome;
	unsigned long long n, seen;
	int series;
};

static void find(void *arg, int family, enum traffic_method m, unsigned code, int outcome,
		 unsigned long long n)
{
	struct want *w = arg;

	w->series++;
	if (family == w->family && m == w->m && code == w->code && outcome == w->outcome)
		w->seen += n;
}

static unsigned long long count_of(struct traffic *t, int family, enum traffic_method m,
				   unsigned code, int outcome, int *series)
{
	struct want w = { family, m, code, outcome, 0, 0, 0 };

	traffic_each(t, find, &w);
	if (series != NULL)
		*series = w.series;
	return w.seen;
}

static void test_labels(void **state)
{
	struct traffic *t = traffic_new(3, 6);
	struct histo_snapshot h;
	int series;

	(void)state;
	assert_non_null(t);
	assert_int_equal(traffic_method("get"), TRAFFIC_GET);
	assert_int_equal(traffic_method("PATCH"), TRAFFIC_PATCH);
	assert_int_equal(traffic_method("BREW"), TRAFFIC_OTHER);
	assert_string_equal(traffic_method_name(TRAFFIC_OTHER), "other");
	traffic_count(t, 0, TRAFFIC_GET, 200, 1, 0.0002);
	traffic_count(t, 0, TRAFFIC_GET, 200, 1, 0.0002);
	traffic_count(t, -1, TRAFFIC_POST, 201, 0, 0.06);
	traffic_count(t, 2, TRAFFIC_GET, 200, 2, 0.05);
	traffic_count(t, -1, TRAFFIC_OTHER, 42, 0, 0); /* not a code */
	assert_int_equal(count_of(t, 0, TRAFFIC_GET, 200, 1, &series), 2);
	assert_int_equal(series, 4);
	assert_int_equal(count_of(t, -1, TRAFFIC_POST, 201, 0, NULL), 1);
	assert_int_equal(count_of(t, 2, TRAFFIC_GET, 200, 2, NULL), 1);
	assert_int_equal(count_of(t, -1, TRAFFIC_OTHER, 0, 0, NULL), 1);
	assert_int_equal(count_of(t, 1, TRAFFIC_GET, 200, 1, NULL), 0);
	traffic_durations(t, 1, &h);
	assert_int_equal(h.count, 2);
	assert_int_equal(h.le[1], 2); /* 0.00025 */
	traffic_durations(t, 0, &h);
	assert_int_equal(h.count, 2);
	assert_int_equal(traffic_overflow(t), 0);
	traffic_free(&t);
	assert_null(t);
	assert_null(traffic_new(TRAFFIC_FAMILIES_MAX + 1, 6));
	assert_null(traffic_new(1, 0));
}

static void test_overflow(void **state)
{
	struct traffic *t = traffic_new(TRAFFIC_FAMILIES_MAX, 6);
	unsigned long long n = 0;
	int series;

	(void)state;
	/* 62 families x 8 methods x 6 outcomes x 900 codes > TRAFFIC_SERIES. */
	for (unsigned code = 100; code < 1000; code++)
		for (int f = -1; f < 4; f++)
			traffic_count(t, f, TRAFFIC_GET, code, 1, 0), n++;
	count_of(t, 0, TRAFFIC_GET, 200, 1, &series);
	assert_int_equal(series, TRAFFIC_SERIES);
	assert_int_equal(traffic_overflow(t), n - TRAFFIC_SERIES);
	traffic_free(&t);
}

#define THREADS 4
#define EACH 20000

static void *counter(void *arg)
{
	for (int i = 0; i < EACH; i++)
		traffic_count(arg, i % 3, TRAFFIC_GET, 200 + (unsigned)(i % 5), 1, 0.001);
	return NULL;
}

static void test_threads(void **state)
{
	struct traffic *t = traffic_new(3, 6);
	pthread_t th[THREADS];
	unsigned long long total = 0;
	int series;

	(void)state;
	for (int i = 0; i < THREADS; i++)
		assert_int_equal(pthread_create(&th[i], NULL, counter, t), 0);
	for (int i = 0; i < THREADS; i++)
		pthread_join(th[i], NULL);
	for (int f = 0; f < 3; f++)
		for (unsigned c = 200; c < 205; c++)
			total += count_of(t, f, TRAFFIC_GET, c, 1, &series);
	assert_int_equal(series, 15); /* each label set claimed once */
	assert_int_equal(total, THREADS * EACH);
	traffic_free(&t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_labels),
		cmocka_unit_test(test_overflow),
		cmocka_unit_test(test_threads),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
