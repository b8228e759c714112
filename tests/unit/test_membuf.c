/* Unit tests for membuf: growth, NUL termination, wipe. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "membuf.h"

static void test_append_grows_and_terminates(void **state)
{
	struct membuf b = { 0 };
	char chunk[1000];

	(void)state;
	memset(chunk, 'x', sizeof(chunk));
	for (int i = 0; i < 100; i++)
		assert_int_equal(membuf_append(&b, chunk, sizeof(chunk)), 0);
	assert_int_equal(b.len, 100000);
	assert_true(b.cap > b.len);
	assert_int_equal(b.data[b.len], '\0');
	assert_int_equal(b.data[99999], 'x');
	membuf_free(&b, 0);
	assert_null(b.data);
	assert_int_equal(b.len, 0);
}

static void test_binary_and_empty(void **state)
{
	struct membuf b = { 0 };
	const char bin[] = { 'a', '\0', 'b' };

	(void)state;
	assert_int_equal(membuf_append(&b, NULL, 0), 0);
	assert_int_equal(b.len, 0);
	assert_non_null(b.data);
	assert_string_equal(b.data, "");
	assert_int_equal(membuf_append(&b, bin, sizeof(bin)), 0);
	assert_memory_equal(b.data, bin, sizeof(bin));
	assert_int_equal(b.len, 3);
	membuf_free(&b, 1);
	assert_null(b.data);
}

static void test_overflow_refused(void **state)
{
	struct membuf b = { 0 };

	(void)state;
	assert_int_equal(membuf_append(&b, "ab", 2), 0);
	assert_int_equal(membuf_append(&b, "x", (size_t)-1), -1);
	assert_int_equal(b.len, 2); /* left as it was */
	assert_string_equal(b.data, "ab");
	membuf_free(&b, 0);
}

/* A secret buffer grows by copy-and-wipe; its content must survive that. */
static void test_secret_growth_keeps_content(void **state)
{
	struct membuf b = { .secret = 1 };
	char chunk[3000];

	(void)state;
	for (int i = 0; i < 10; i++) {
		memset(chunk, 'a' + i, sizeof(chunk));
		assert_int_equal(membuf_append(&b, chunk, sizeof(chunk)), 0);
	}
	assert_int_equal(b.len, 30000);
	for (int i = 0; i < 10; i++)
		assert_int_equal(b.data[i * 3000 + 1500], 'a' + i);
	membuf_free(&b, 0);
	assert_null(b.data);
	assert_int_equal(b.secret, 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_append_grows_and_terminates),
		cmocka_unit_test(test_binary_and_empty),
		cmocka_unit_test(test_overflow_refused),
		cmocka_unit_test(test_secret_growth_keeps_content),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
