/*
 * Unit tests for common/localtoken.c: shape and uniqueness of local tokens.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "localtoken.h"

static void test_shape(void **state)
{
	char tok[LOCALTOKEN_LEN + 1];
	size_t i;

	(void)state;
	memset(tok, '#', sizeof(tok));
	assert_int_equal(localtoken_new(tok, sizeof(tok)), 0);
	assert_int_equal(strlen(tok), LOCALTOKEN_LEN);
	assert_int_equal(LOCALTOKEN_LEN, 46);
	assert_memory_equal(tok, "kd_", 3);
	for (i = 3; i < LOCALTOKEN_LEN; i++)
		if (strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
			   tok[i]) == NULL)
			fail_msg("byte %zu of %s is outside base64url", i, tok);
}

static void test_distinct(void **state)
{
	char a[LOCALTOKEN_LEN + 1], b[LOCALTOKEN_LEN + 1];

	(void)state;
	assert_int_equal(localtoken_new(a, sizeof(a)), 0);
	assert_int_equal(localtoken_new(b, sizeof(b)), 0);
	assert_string_not_equal(a, b);
}

/* Over many tokens every base64url character shows up, so the encoder uses
 * the whole alphabet (a wrong table or shift would miss some). */
static void test_alphabet_covered(void **state)
{
	char tok[LOCALTOKEN_LEN + 1];
	int seen[256] = { 0 }, i, n = 0;
	const char *p;

	(void)state;
	for (i = 0; i < 200; i++) {
		assert_int_equal(localtoken_new(tok, sizeof(tok)), 0);
		for (p = tok + 3; *p != '\0'; p++)
			seen[(unsigned char)*p] = 1;
	}
	for (i = 0; i < 256; i++)
		n += seen[i];
	assert_int_equal(n, 64);
}

static void test_short_buffer(void **state)
{
	char tok[LOCALTOKEN_LEN + 1];

	(void)state;
	memset(tok, '#', sizeof(tok));
	assert_int_equal(localtoken_new(tok, LOCALTOKEN_LEN), -1);
	assert_int_equal(localtoken_new(tok, 0), -1);
	/* Nothing was written. */
	assert_int_equal(tok[0], '#');
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_shape),
		cmocka_unit_test(test_distinct),
		cmocka_unit_test(test_alphabet_covered),
		cmocka_unit_test(test_short_buffer),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
