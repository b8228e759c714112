/*
 * Unit tests for common/localtoken.c: shape and uniqueness of local tokens.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
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

static enum localtoken_grant parse(const char *ct, const char *body)
{
	return localtoken_parse(ct, body, strlen(body));
}

static void test_parse_form(void **state)
{
	const char *form = "application/x-www-form-urlencoded";

	(void)state;
	assert_int_equal(parse(form, "grant_type=client_credentials&client_id=a&client_secret=b"),
			 LOCALTOKEN_CLIENT_CREDENTIALS);
	assert_int_equal(parse(NULL, "client_id=a&grant_type=client%5Fcredentials"),
			 LOCALTOKEN_CLIENT_CREDENTIALS);
	assert_int_equal(parse(form, "grant%5Ftype=refresh_token&refresh_token=kd_x"),
			 LOCALTOKEN_REFRESH);
	assert_int_equal(parse(form, "grant_type=refresh_token&refresh_token="),
			 LOCALTOKEN_UNSUPPORTED);
	assert_int_equal(parse(form, "grant_type=refresh_token"), LOCALTOKEN_UNSUPPORTED);
	assert_int_equal(parse(form, "grant_type=password&username=u"), LOCALTOKEN_UNSUPPORTED);
	assert_int_equal(parse(form, "client_id=a&client_secret=b"), LOCALTOKEN_MISSING);
	assert_int_equal(parse(form, ""), LOCALTOKEN_MISSING);
	assert_int_equal(parse(form, "&&grant_type&="), LOCALTOKEN_MISSING);
	/* The last grant_type wins, as with any repeated form field. */
	assert_int_equal(parse(form, "grant_type=password&grant_type=client_credentials"),
			 LOCALTOKEN_CLIENT_CREDENTIALS);
}

/* Empty keys and values, in a buffer with no NUL after it (ASan checks the
 * parser stays inside). */
static void test_parse_empty_fields_stay_in_bounds(void **state)
{
	const char body[] = "=&x=&grant_type=client_credentials&=";
	char *copy = malloc(sizeof(body) - 1);

	(void)state;
	assert_non_null(copy);
	memcpy(copy, body, sizeof(body) - 1);
	assert_int_equal(localtoken_parse(NULL, copy, sizeof(body) - 1),
			 LOCALTOKEN_CLIENT_CREDENTIALS);
	assert_int_equal(localtoken_parse(NULL, copy, 4), LOCALTOKEN_MISSING);
	free(copy);
}

static void test_parse_json(void **state)
{
	const char *json = "application/json; charset=utf-8";

	(void)state;
	assert_int_equal(parse(json, "{\"grant_type\":\"client_credentials\",\"client_id\":\"a\"}"),
			 LOCALTOKEN_CLIENT_CREDENTIALS);
	assert_int_equal(parse(json, "{\"grant_type\":\"refresh_token\",\"refresh_token\":\"x\"}"),
			 LOCALTOKEN_REFRESH);
	assert_int_equal(parse(json, "{\"grant_type\":\"refresh_token\",\"refresh_token\":1}"),
			 LOCALTOKEN_UNSUPPORTED);
	assert_int_equal(parse(json, "{\"grant_type\":7}"), LOCALTOKEN_MISSING);
	assert_int_equal(parse(json, "not json"), LOCALTOKEN_MISSING);
	/* A JSON body labelled as a form is read as a form: no grant_type. */
	assert_int_equal(parse(NULL, "{\"grant_type\":\"client_credentials\"}"),
			 LOCALTOKEN_MISSING);
}

static void test_answer(void **state)
{
	char *a = localtoken_answer(1234), *b = localtoken_answer(1234);

	(void)state;
	assert_non_null(a);
	assert_non_null(b);
	assert_non_null(strstr(a, "\"access_token\":\"kd_"));
	assert_non_null(strstr(a, "\"refresh_token\":\"kd_"));
	assert_non_null(strstr(a, "\"expires_in\":1234"));
	assert_non_null(strstr(a, "\"token_type\":\"bearer\""));
	assert_string_not_equal(a, b);
	free(a);
	free(b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_shape),
		cmocka_unit_test(test_distinct),
		cmocka_unit_test(test_alphabet_covered),
		cmocka_unit_test(test_short_buffer),
		cmocka_unit_test(test_parse_form),
		cmocka_unit_test(test_parse_empty_fields_stay_in_bounds),
		cmocka_unit_test(test_parse_json),
		cmocka_unit_test(test_answer),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
