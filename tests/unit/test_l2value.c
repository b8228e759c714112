/*
 * test_l2value: the shared cache's values.  An entry survives the round
 * trip whole (status, headers, body, gzip copy, times), with or without a
 * gzip copy; the generations come first, where the lookup script reads
 * them; and every value that is not exactly what l2v_encode() makes (cut
 * anywhere, a length off by one, a bad field, a body over the bound, a
 * damaged gzip member) is refused rather than half read.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "entry.h"
#include "gz.h"
#include "hdr.h"
#include "l2value.h"

#define MAX_BODY (1u << 20)

static const char headers[] = "Content-Type: application/json\nETag: \"v1\"\n";

/* A 200 of body (and its gzip copy when gz), stored at 1000, expiring at 1300. */
static struct entry *make(const char *body, int gz)
{
	struct entry_init in = { 0 };
	size_t len = strlen(body);

	in.key = "GET\n/programs?";
	in.family = 0;
	in.path = "/programs";
	in.status = 200;
	in.headers = headers;
	in.headers_len = strlen(headers);
	in.body = malloc(len + 1);
	assert_non_null(in.body);
	memcpy(in.body, body, len + 1);
	in.body_len = len;
	if (gz)
		assert_int_equal(gz_compress(body, len, 6, &in.gz, &in.gz_len), 0);
	in.stored_at = 1000;
	in.expires_at = 1300;
	struct entry *e = entry_new(&in);
	assert_non_null(e);
	return e;
}

static void same(const struct entry *a, const struct entry *b)
{
	size_t la, lb;
	const void *ba = entry_body(a, &la), *bb = entry_body(b, &lb);

	assert_int_equal(entry_status(a), entry_status(b));
	assert_int_equal(entry_stored_at(a), entry_stored_at(b));
	assert_int_equal(entry_expires_at(a), entry_expires_at(b));
	assert_int_equal(la, lb);
	assert_memory_equal(ba, bb, la);
	assert_string_equal(entry_headers_text(a, &la), entry_headers_text(b, &lb));
	assert_string_equal(hdr_get(entry_headers(b), "ETag"), "\"v1\"");
	assert_string_equal(entry_path(b), "/programs");
	assert_string_equal(entry_key(b), "GET\n/programs?");
}

static struct entry *decode(const char *v, size_t len)
{
	return l2v_decode(v, len, MAX_BODY, "GET\n/programs?", 0, "/programs");
}

static void test_round_trip_with_and_without_gzip(void **state)
{
	(void)state;
	for (int gz = 0; gz <= 1; gz++) {
		struct entry *e = make("[{\"id\": 1, \"title\": \"Program 1\"}]", gz), *d;
		size_t len, zl;
		char *v = l2v_encode("3:ab12", "1:ff00", e, 1 << 20, &len);

		assert_non_null(v);
		/* the script reads the generations and the expiry first */
		assert_true(len > 14 && memcmp(v, "3:ab12|1:ff00|1300|", 19) == 0);
		d = decode(v, len);
		assert_non_null(d);
		same(e, d);
		assert_true((entry_gzip(d, &zl) != NULL) == gz);
		entry_unref(&d);
		entry_unref(&e);
		free(v);
	}
}

static void test_empty_body_and_empty_generations(void **state)
{
	struct entry *e = make("", 1), *d;
	size_t len;
	char *v = l2v_encode("", "", e, 1 << 20, &len);

	(void)state;
	assert_non_null(v);
	assert_true(v[0] == '|' && v[1] == '|');
	d = decode(v, len);
	assert_non_null(d);
	same(e, d);
	entry_unref(&d);
	entry_unref(&e);
	free(v);
}

static void test_what_cannot_be_encoded(void **state)
{
	struct entry *e = make("[1, 2, 3]", 0);
	size_t len;

	(void)state;
	assert_null(l2v_encode("1|2", "", e, 1 << 20, &len));
	assert_null(l2v_encode("", "a|", e, 1 << 20, &len));
	assert_null(l2v_encode("", "", e, 20, &len)); /* over max */
	entry_unref(&e);
}

/* Every prefix of a good value, and the value with a byte more. */
static void test_cut_anywhere_or_longer_is_refused(void **state)
{
	(void)state;
	for (int gz = 0; gz <= 1; gz++) {
		struct entry *e = make("[{\"id\": 1}, {\"id\": 2}]", gz);
		size_t len;
		char *v = l2v_encode("7:00", "", e, 1 << 20, &len), *longer;

		assert_non_null(v);
		for (size_t n = 0; n < len; n++)
			assert_null(decode(v, n));
		longer = malloc(len + 1);
		assert_non_null(longer);
		memcpy(longer, v, len);
		longer[len] = 'x';
		assert_null(decode(longer, len + 1));
		free(longer);
		free(v);
		entry_unref(&e);
	}
}

static void test_bad_fields_are_refused(void **state)
{
	static const char *const bad[] = {
		"a|b|x|1000|200|i|0|2|2|[]",                       /* expiry not a number */
		"a|b|-5|1000|200|i|0|2|2|[]",                      /* a sign */
		"a|b| 5|1000|200|i|0|2|2|[]",                      /* a blank */
		"a|b|1300|1000|99|i|0|2|2|[]",                     /* no such status */
		"a|b|1300|1000|1000|i|0|2|2|[]",                   /* nor this */
		"a|b|1300|1000|200|z|0|2|2|[]",                    /* unknown encoding */
		"a|b|1300|1000|200|i|0|3|2|[]",                    /* identity lengths differ */
		"a|b|1300|1000|200|g|0|2|2|[]",                    /* not a gzip member */
		"a|b|1300|1000|200|i|0|2|2",                       /* no body */
		"a|b|1300|1000|200|i|99999999999999999999|2|2|[]", /* overflow */
		"a|b|1300|1000|200|i|4|2|2|Bad\n[]",               /* headers that do not parse */
		"a|b|1300|1000|200|i|0|2|2|",
		"",
		"|",
		"a|b",
	};

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct entry *d = decode(bad[i], strlen(bad[i]));

		if (d != NULL)
			fail_msg("accepted: %s", bad[i]);
	}
	/* the same shape, well formed, is taken: the cases above fail for
	 * their one fault */
	static const char good[] = "a|b|1300|1000|200|i|0|2|2|[]";
	struct entry *d = decode(good, strlen(good));

	assert_non_null(d);
	entry_unref(&d);
}

static void test_a_body_over_the_bound_is_refused_before_inflating(void **state)
{
	char *big = malloc(MAX_BODY + 2), *v;
	struct entry *e, *d;
	size_t len;

	(void)state;
	assert_non_null(big);
	memset(big, 'a', MAX_BODY + 1);
	big[MAX_BODY + 1] = '\0';
	e = make(big, 1);
	v = l2v_encode("", "", e, 1 << 22, &len);
	assert_non_null(v);
	/* gzip makes it small; the declared size is what counts */
	assert_true(len < 10000);
	assert_null(decode(v, len));
	d = l2v_decode(v, len, MAX_BODY + 1, "k", 0, "/p");
	assert_non_null(d);
	entry_unref(&d);
	entry_unref(&e);
	free(v);
	free(big);
}

static void test_a_damaged_gzip_member_is_refused(void **state)
{
	struct entry *e = make("[{\"id\": 1, \"title\": \"Program 1\"}]", 1);
	size_t len;
	char *v = l2v_encode("", "", e, 1 << 20, &len);

	(void)state;
	assert_non_null(v);
	v[len - 12] ^= 0x55; /* in the deflate data or the CRC */
	assert_null(decode(v, len));
	free(v);
	entry_unref(&e);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trip_with_and_without_gzip),
		cmocka_unit_test(test_empty_body_and_empty_generations),
		cmocka_unit_test(test_what_cannot_be_encoded),
		cmocka_unit_test(test_cut_anywhere_or_longer_is_refused),
		cmocka_unit_test(test_bad_fields_are_refused),
		cmocka_unit_test(test_a_body_over_the_bound_is_refused_before_inflating),
		cmocka_unit_test(test_a_damaged_gzip_member_is_refused),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
