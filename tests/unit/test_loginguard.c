/*
 * test_loginguard: a burst of failures, then the refill rate; addresses
 * apart; a full table still finds room.  The clock is a plain number.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>

#include "loginguard.h"

static void test_burst_then_rate(void **state)
{
	struct loginguard *g = loginguard_new();
	int i;

	(void)state;
	assert_non_null(g);
	for (i = 0; i < (int)LOGINGUARD_BURST; i++) {
		assert_true(loginguard_check(g, "10.0.0.1", 100) == 0);
		loginguard_failed(g, "10.0.0.1", 100);
	}
	/* Empty: refused for one refill step, others untouched. */
	assert_true(loginguard_check(g, "10.0.0.1", 100) > 5.9);
	assert_true(loginguard_check(g, "10.0.0.1", 100) <= 6.0);
	assert_true(loginguard_check(g, "10.0.0.2", 100) == 0);
	assert_true(loginguard_check(g, "::1", 100) == 0);
	/* One more try after 6 s, not two. */
	assert_true(loginguard_check(g, "10.0.0.1", 106) == 0);
	loginguard_failed(g, "10.0.0.1", 106);
	assert_true(loginguard_check(g, "10.0.0.1", 106) > 0);
	/* Quiet for a long time: the whole burst again, no more. */
	assert_true(loginguard_check(g, "10.0.0.1", 100000) == 0);
	for (i = 0; i < (int)LOGINGUARD_BURST; i++)
		loginguard_failed(g, "10.0.0.1", 100000);
	assert_true(loginguard_check(g, "10.0.0.1", 100000) > 0);
	loginguard_free(&g);
	assert_null(g);
}

static void test_full_table(void **state)
{
	struct loginguard *g = loginguard_new();
	char ip[64];

	(void)state;
	for (int i = 0; i < 3 * LOGINGUARD_SLOTS; i++) {
		snprintf(ip, sizeof(ip), "10.%d.%d.%d", i >> 16 & 255, i >> 8 & 255, i & 255);
		loginguard_failed(g, ip, (double)i);
	}
	/* The latest guesser is still tracked once its burst is spent. */
	for (int i = 0; i < (int)LOGINGUARD_BURST; i++)
		loginguard_failed(g, "192.0.2.9", 1e6);
	assert_true(loginguard_check(g, "192.0.2.9", 1e6) > 0);
	loginguard_free(&g);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_burst_then_rate),
		cmocka_unit_test(test_full_table),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
