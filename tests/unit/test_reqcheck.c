/* Unit tests for reqcheck: targets, dot segments, field bytes, framing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "reqcheck.h"

static void test_targets(void **state)
{
	static const char *const good[] = {
		"/",
		"/programs",
		"/programs?x=1&y=..",
		"/a.b/c..d/.e",
		"/records/x%2ey",
		"/a//b",
		"/.well",
		"/..x",
		"/%2e%2e%2e",
	};
	static const char *const bad[] = {
		"/programs/../record_views",
		"/./programs",
		"/programs/.",
		"/programs/..",
		"/a/%2e%2e/b",
		"/a/%2E./b",
		"/a/.%2e?x",
		"/a\rb",
		"/a\nb",
		"/a b",
		"/a\tb",
		"/a\x7f",
	};

	(void)state;
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		assert_null(reqcheck_target(good[i]));
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_non_null(reqcheck_target(bad[i]));
}

static void test_fields(void **state)
{
	(void)state;
	assert_null(reqcheck_field("X-Fine", 6, "a b\tc", 5));
	assert_null(reqcheck_field("X-Empty", 7, "", 0));
	assert_null(reqcheck_field("X-Obs-Text", 10, "caf\xc3\xa9", 5));
	assert_non_null(reqcheck_field("X Bad", 5, "v", 1));
	assert_non_null(reqcheck_field("X:Bad", 5, "v", 1));
	assert_non_null(reqcheck_field("", 0, "v", 1));
	assert_non_null(reqcheck_field("X-Cr", 4, "a\rb", 3));
	assert_non_null(reqcheck_field("X-Nul", 5, "a\0b", 3));
	assert_non_null(reqcheck_field("X-Lf", 4, "a\nb", 3));
}

static void test_content_length(void **state)
{
	const char *one[] = { "12" }, *same[] = { "12", "12" }, *diff[] = { "12", "13" };
	const char *neg[] = { "-1" }, *empty[] = { "" }, *huge[] = { "99999999999999999999" };
	const char *sp[] = { "1 2" };

	(void)state;
	assert_null(reqcheck_content_length(one, 1));
	assert_null(reqcheck_content_length(same, 2));
	assert_non_null(reqcheck_content_length(diff, 2));
	assert_non_null(reqcheck_content_length(neg, 1));
	assert_non_null(reqcheck_content_length(empty, 1));
	assert_non_null(reqcheck_content_length(huge, 1));
	assert_non_null(reqcheck_content_length(sp, 1));
}

static void test_transfer_encoding(void **state)
{
	(void)state;
	assert_int_equal(reqcheck_transfer_encoding("chunked"), REQCHECK_TE_CHUNKED);
	assert_int_equal(reqcheck_transfer_encoding("Chunked"), REQCHECK_TE_CHUNKED);
	/* libmicrohttpd would not decode these as chunked: refused. */
	assert_int_equal(reqcheck_transfer_encoding("chunked "), REQCHECK_TE_BAD);
	assert_int_equal(reqcheck_transfer_encoding("chunked\t"), REQCHECK_TE_BAD);
	assert_int_equal(reqcheck_transfer_encoding(",chunked"), REQCHECK_TE_BAD);
	assert_int_equal(reqcheck_transfer_encoding("chunked,"), REQCHECK_TE_BAD);
	assert_int_equal(reqcheck_transfer_encoding("chunked, chunked"), REQCHECK_TE_BAD);
	assert_int_equal(reqcheck_transfer_encoding("xchunked"), REQCHECK_TE_BAD);
	assert_int_equal(reqcheck_transfer_encoding("chunked, identity"), REQCHECK_TE_BAD);
	assert_int_equal(reqcheck_transfer_encoding("identity, chunked"), REQCHECK_TE_UNSUPPORTED);
	assert_int_equal(reqcheck_transfer_encoding("gzip, chunked"), REQCHECK_TE_UNSUPPORTED);
	assert_int_equal(reqcheck_transfer_encoding(""), REQCHECK_TE_BAD);
	assert_int_equal(reqcheck_transfer_encoding(" , "), REQCHECK_TE_BAD);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_targets),
		cmocka_unit_test(test_fields),
		cmocka_unit_test(test_content_length),
		cmocka_unit_test(test_transfer_encoding),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
