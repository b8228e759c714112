/*
 * Unit tests for common/stats.c: counting per family and in total, the JSON
 * shape, and exactness under concurrent increments.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "stats.h"

static const char *const names[] = { "programs", "entity_slices", "record_views" };

static void test_inc(void **state)
{
	struct stats *s = stats_new(3);

	(void)state;
	assert_non_null(s);
	stats_inc(s, 0, STATS_HITS);
	stats_inc(s, 0, STATS_HITS);
	stats_inc(s, 2, STATS_HITS);
	stats_inc(s, -1, STATS_FORWARDED);
	stats_inc(s, 1, STATS_FORWARDED);
	assert_int_equal(stats_get(s, 0, STATS_HITS), 2);
	assert_int_equal(stats_get(s, 1, STATS_HITS), 0);
	assert_int_equal(stats_get(s, 2, STATS_HITS), 1);
	assert_int_equal(stats_get(s, -1, STATS_HITS), 3);
	assert_int_equal(stats_get(s, -1, STATS_FORWARDED), 2);
	assert_int_equal(stats_get(s, 1, STATS_FORWARDED), 1);
	assert_int_equal(stats_get(s, 0, STATS_MISSES), 0);
	assert_int_equal(stats_get(s, -1, STATS_MISSES), 0);
	stats_free(&s);
	assert_null(s);
}

static void test_names(void **state)
{
	static const char *const want[STATS_COUNTERS] = {
		"requests",        "hits",          "misses",       "stale",     "bypass",
		"upstream_errors", "invalidations", "local_grants", "forwarded", "revalidated",
		"coalesced",       "refreshes"
	};
	int c;

	(void)state;
	for (c = 0; c < STATS_COUNTERS; c++)
		assert_string_equal(stats_counter_name((enum stats_counter)c), want[c]);
}

static double num(const cJSON *obj, const char *name)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, name);

	assert_true(cJSON_IsNumber(it));
	return it->valuedouble;
}

static void test_json(void **state)
{
	struct stats *s = stats_new(3);
	const cJSON *total, *fams, *f, *it;
	cJSON *j;
	int c, n;

	(void)state;
	assert_non_null(s);
	stats_inc(s, 0, STATS_REQUESTS);
	stats_inc(s, 2, STATS_REQUESTS);
	stats_inc(s, 2, STATS_STALE);
	stats_inc(s, -1, STATS_LOCAL_GRANTS);
	j = stats_json(s, names);
	assert_non_null(j);
	assert_int_equal(cJSON_GetArraySize(j), 2);
	total = cJSON_GetObjectItemCaseSensitive(j, "total");
	fams = cJSON_GetObjectItemCaseSensitive(j, "families");
	assert_true(cJSON_IsObject(total));
	assert_true(cJSON_IsObject(fams));
	assert_int_equal(cJSON_GetArraySize(total), STATS_COUNTERS);
	for (c = 0; c < STATS_COUNTERS; c++)
		assert_non_null(cJSON_GetObjectItemCaseSensitive(
			total, stats_counter_name((enum stats_counter)c)));
	assert_true(num(total, "requests") == 2);
	assert_true(num(total, "stale") == 1);
	assert_true(num(total, "local_grants") == 1);
	assert_true(num(total, "hits") == 0);

	assert_int_equal(cJSON_GetArraySize(fams), 3);
	n = 0;
	cJSON_ArrayForEach(it, fams)
	{
		assert_string_equal(it->string, names[n]);
		assert_int_equal(cJSON_GetArraySize(it), STATS_COUNTERS);
		n++;
	}
	f = cJSON_GetObjectItemCaseSensitive(fams, "programs");
	assert_true(num(f, "requests") == 1);
	assert_true(num(f, "local_grants") == 0);
	f = cJSON_GetObjectItemCaseSensitive(fams, "entity_slices");
	assert_true(num(f, "requests") == 0);
	f = cJSON_GetObjectItemCaseSensitive(fams, "record_views");
	assert_true(num(f, "requests") == 1);
	assert_true(num(f, "stale") == 1);
	cJSON_Delete(j);
	stats_free(&s);
}

#define THREADS 4
#define PER_THREAD 100000

struct worker {
	struct stats *s;
	int family;
};

static void *hammer(void *arg)
{
	struct worker *w = arg;
	int i;

	for (i = 0; i < PER_THREAD; i++)
		stats_inc(w->s, w->family, STATS_REQUESTS);
	return NULL;
}

static void test_concurrent(void **state)
{
	struct stats *s = stats_new(2);
	struct worker w[THREADS];
	pthread_t t[THREADS];
	int i;

	(void)state;
	assert_non_null(s);
	for (i = 0; i < THREADS; i++) {
		/* Two threads share each family so per-family counts contend too. */
		w[i].s = s;
		w[i].family = i % 2;
		assert_int_equal(pthread_create(&t[i], NULL, hammer, &w[i]), 0);
	}
	for (i = 0; i < THREADS; i++)
		assert_int_equal(pthread_join(t[i], NULL), 0);
	assert_int_equal(stats_get(s, -1, STATS_REQUESTS),
			 (unsigned long long)THREADS * PER_THREAD);
	assert_int_equal(stats_get(s, 0, STATS_REQUESTS), 2ULL * PER_THREAD);
	assert_int_equal(stats_get(s, 1, STATS_REQUESTS), 2ULL * PER_THREAD);
	stats_free(&s);
}

static void test_bad_new(void **state)
{
	struct stats *s = stats_new(0);

	(void)state;
	assert_null(stats_new(-1));
	/* No families: only the total. */
	assert_non_null(s);
	stats_inc(s, -1, STATS_BYPASS);
	assert_int_equal(stats_get(s, -1, STATS_BYPASS), 1);
	stats_free(&s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_inc),     cmocka_unit_test(test_names),
		cmocka_unit_test(test_json),    cmocka_unit_test(test_concurrent),
		cmocka_unit_test(test_bad_new),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
