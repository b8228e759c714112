/* Unit tests for conneg: Accept-Encoding's gzip, If-None-Match's entity-tags. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "conneg.h"

static void test_accepts_gzip(void **state)
{
	static const char *const yes[] = {
		"gzip",
		"GZIP",
		"x-gzip",
		"deflate, gzip",
		" gzip ; q=0.5",
		"gzip;q=1",
		"gzip;Q=0.001",
		"*",
		"br, *;q=0.1",
		"identity, *",
		"gzip;q=0, gzip",     /* named twice: one admits it */
		"gzip;level=1;q=0.9", /* another parameter first */
		"br;q=0, gzip",
	};
	static const char *const no[] = {
		"",
		"identity",
		"deflate, br",
		"gzip;q=0",
		"gzip; q=0.000",
		"gzip;q=0, *", /* an explicit refusal beats the wildcard */
		"*;q=0",
		"x-gzip;q=0, *;q=1",
		"gzipx",
		"gzi",
		"agzip",
		"gzip;q=", /* no number: read as 0 */
		"gzip;q=abc",
		"gzip;q=-1",
		"gzip;q=2", /* beyond 1: not a qvalue */
		",,,",
	};

	(void)state;
	assert_false(conneg_accepts_gzip(NULL));
	for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
		if (!conneg_accepts_gzip(yes[i]))
			fail_msg("\"%s\" should admit gzip", yes[i]);
	}
	for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++) {
		if (conneg_accepts_gzip(no[i]))
			fail_msg("\"%s\" should not admit gzip", no[i]);
	}
}

static void test_etag_matches(void **state)
{
	(void)state;
	assert_false(conneg_etag_matches(NULL, "\"a\""));
	assert_false(conneg_etag_matches("\"a\"", NULL));
	assert_true(conneg_etag_matches("\"a\"", "\"a\""));
	assert_true(conneg_etag_matches("*", "\"a\""));
	assert_true(conneg_etag_matches(" \"x\", *", "\"a\""));
	/* the weak comparison: W/ on either side does not matter */
	assert_true(conneg_etag_matches("W/\"a\"", "\"a\""));
	assert_true(conneg_etag_matches("\"a\"", "W/\"a\""));
	assert_true(conneg_etag_matches("W/\"a\"", "W/\"a\""));
	/* lists, with and without blanks */
	assert_true(conneg_etag_matches("\"x\",\"a\"", "\"a\""));
	assert_true(conneg_etag_matches("\"x\" , W/\"a\" ,", "\"a\""));
	assert_false(conneg_etag_matches("\"x\", \"y\"", "\"a\""));
	/* quotes are part of the tag: no prefix or substring matches */
	assert_false(conneg_etag_matches("\"ab\"", "\"a\""));
	assert_false(conneg_etag_matches("\"a\"", "\"ab\""));
	assert_false(conneg_etag_matches("a", "\"a\""));
	/* a comma is a valid tag character: it does not split a quoted tag */
	assert_true(conneg_etag_matches("\"a,b\"", "\"a,b\""));
	assert_false(conneg_etag_matches("\"a,b\"", "\"a\""));
	assert_false(conneg_etag_matches("\"b\", \"a,b\"", "\"b,\""));
	/* nothing, or garbage, matches nothing */
	assert_false(conneg_etag_matches("", "\"a\""));
	assert_false(conneg_etag_matches(",,  ,", "\"a\""));
	assert_false(conneg_etag_matches("W/", "\"a\""));
	assert_false(conneg_etag_matches("\"unterminated", "\"a\""));
	assert_false(conneg_etag_matches("\"a\"", ""));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_accepts_gzip),
		cmocka_unit_test(test_etag_matches),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
