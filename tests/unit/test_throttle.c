/*
 * test_throttle: Retry-After in both forms and its bounds, a window per
 * family and one on everything, and the paced release after a window.
 * The clock is a plain number passed in.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <time.h>

#include "throttle.h"

#define NOW_WALL ((time_t)1767225600) /* Thu, 01 Jan 2026 00:00:00 GMT */

static void test_retry_after_forms(void **state)
{
	(void)state;
	assert_true(throttle_retry_after("30", NOW_WALL) == 30);
	assert_true(throttle_retry_after("0", NOW_WALL) == 1); /* at least a second */
	assert_true(throttle_retry_after("86400", NOW_WALL) == THROTTLE_MAX);
	assert_true(throttle_retry_after("99999999999999999999", NOW_WALL) == THROTTLE_MAX);
	/* An HTTP-date, in each of the three forms recipients must accept. */
	assert_true(throttle_retry_after("Thu, 01 Jan 2026 00:01:00 GMT", NOW_WALL) == 60);
	assert_true(throttle_retry_after("Thursday, 01-Jan-26 00:00:10 GMT", NOW_WALL) == 10);
	assert_true(throttle_retry_after("Thu Jan  1 00:00:20 2026", NOW_WALL) == 20);
	/* A date gone by: the shortest pause. */
	assert_true(throttle_retry_after("Wed, 31 Dec 2025 23:00:00 GMT", NOW_WALL) == 1);
	/* Absent or nonsense: the default. */
	assert_true(throttle_retry_after(NULL, NOW_WALL) == THROTTLE_DEFAULT);
	assert_true(throttle_retry_after("", NOW_WALL) == THROTTLE_DEFAULT);
	assert_true(throttle_retry_after("-5", NOW_WALL) == THROTTLE_DEFAULT);
	assert_true(throttle_retry_after("5s", NOW_WALL) == THROTTLE_DEFAULT);
	assert_true(throttle_retry_after("soon", NOW_WALL) == THROTTLE_DEFAULT);
}

static void test_family_window(void **state)
{
	struct throttle *t = throttle_new(3, 10);
	double left;

	(void)state;
	assert_non_null(t);
	assert_int_equal(throttle_check(t, 1, 100, &left), THROTTLE_GO);
	throttle_note(t, 1, 100, 30);
	assert_int_equal(throttle_check(t, 1, 110, &left), THROTTLE_REFUSE);
	assert_true(left == 20);
	assert_true(throttle_left(t, 1, 110) == 20);
	/* Other families and requests in none go on. */
	assert_int_equal(throttle_check(t, 0, 110, &left), THROTTLE_GO);
	assert_int_equal(throttle_check(t, -1, 110, &left), THROTTLE_GO);
	assert_true(throttle_left(t, 2, 110) == 0);
	/* A shorter note does not shorten the window; a longer one extends it. */
	throttle_note(t, 1, 110, 5);
	assert_true(throttle_left(t, 1, 110) == 20);
	throttle_note(t, 1, 110, 40);
	assert_true(throttle_left(t, 1, 110) == 40);
	throttle_free(&t);
	assert_null(t);
}

static void test_window_on_everything(void **state)
{
	struct throttle *t = throttle_new(3, 10);
	double left;

	(void)state;
	throttle_note(t, -1, 100, 10);
	for (int scope = -1; scope < 3; scope++) {
		assert_int_equal(throttle_check(t, scope, 105, &left), THROTTLE_REFUSE);
		assert_true(left == 5);
	}
	/* An out-of-range scope is everything too. */
	assert_int_equal(throttle_check(t, 7, 105, &left), THROTTLE_REFUSE);
	throttle_free(&t);
}

static void test_paced_release_after_the_window(void **state)
{
	struct throttle *t = throttle_new(2, 4); /* 4 a second: one every 0.25 s */
	double left, now = 100;
	int went = 0;

	(void)state;
	throttle_note(t, 0, now, 10);
	now = 110; /* the window just ended */
	assert_int_equal(throttle_check(t, 0, now, &left), THROTTLE_GO);
	assert_int_equal(throttle_check(t, 0, now, &left), THROTTLE_WAIT);
	assert_true(left == 0.25);
	/* Another family is not paced by this one's ramp. */
	assert_int_equal(throttle_check(t, 1, now, &left), THROTTLE_GO);
	assert_int_equal(throttle_check(t, 1, now, &left), THROTTLE_GO);
	/* Over two seconds of a busy caller, about 4 a second leave. */
	for (double at = now; at < now + 2; at += 0.01)
		went += throttle_check(t, 0, at, &left) == THROTTLE_GO;
	assert_in_range(went, 7, 9);
	/* After the ramp, no pacing at all. */
	now += THROTTLE_RAMP;
	for (int i = 0; i < 100; i++)
		assert_int_equal(throttle_check(t, 0, now, &left), THROTTLE_GO);
	throttle_free(&t);
}

static void test_paced_release_after_a_window_on_everything(void **state)
{
	struct throttle *t = throttle_new(2, 1);
	double left;

	(void)state;
	throttle_note(t, -1, 0, 5);
	assert_int_equal(throttle_check(t, 0, 5, &left), THROTTLE_GO);
	/* The pace on everything holds every family back. */
	assert_int_equal(throttle_check(t, 1, 5.5, &left), THROTTLE_WAIT);
	assert_true(left == 0.5);
	assert_int_equal(throttle_check(t, -1, 5.5, &left), THROTTLE_WAIT);
	assert_int_equal(throttle_check(t, 1, 6, &left), THROTTLE_GO);
	throttle_free(&t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_retry_after_forms),
		cmocka_unit_test(test_family_window),
		cmocka_unit_test(test_window_on_everything),
		cmocka_unit_test(test_paced_release_after_the_window),
		cmocka_unit_test(test_paced_release_after_a_window_on_everything),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
