/*
 * test_hdr: header line parsing, hop-by-hop rules, and the serialised form
 * the cache stores.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "hdr.h"

static int add_line(struct hdr *h, const char *line)
{
	return hdr_add_line(h, line, strlen(line));
}

static void test_add_line_basic(void **state)
{
	struct hdr *h = hdr_new();

	(void)state;
	assert_non_null(h);
	assert_int_equal(add_line(h, "Content-Type: application/json\r\n"), 0);
	assert_int_equal(add_line(h, "X-Empty:\r\n"), 0);
	assert_int_equal(add_line(h, "X-Tabs:\t  a  b \t\r\n"), 0);
	assert_int_equal(add_line(h, "X-Bare-LF:v\n"), 0);
	assert_int_equal(add_line(h, "X-No-EOL: v2"), 0);
	assert_int_equal(add_line(h, "X-Colon: a: b\r\n"), 0);
	assert_int_equal(hdr_count(h), 6);
	assert_string_equal(hdr_name(h, 0), "Content-Type");
	assert_string_equal(hdr_value(h, 0), "application/json");
	assert_string_equal(hdr_value(h, 1), "");
	assert_string_equal(hdr_value(h, 2), "a  b");
	assert_string_equal(hdr_value(h, 3), "v");
	assert_string_equal(hdr_value(h, 4), "v2");
	assert_string_equal(hdr_value(h, 5), "a: b");
	hdr_free(&h);
	assert_null(h);
}

static void test_add_line_rejects(void **state)
{
	struct hdr *h = hdr_new();

	(void)state;
	assert_int_equal(add_line(h, "HTTP/1.1 200 OK\r\n"), -1); /* no colon */
	assert_int_equal(add_line(h, "\r\n"), -1);                /* end of headers */
	assert_int_equal(add_line(h, ""), -1);
	assert_int_equal(add_line(h, ": value\r\n"), -1);     /* empty name */
	assert_int_equal(add_line(h, "Bad Name: v\r\n"), -1); /* blank in name */
	assert_int_equal(add_line(h, "Name : v\r\n"), -1);    /* blank before colon */
	assert_int_equal(add_line(h, "Na\tme: v\r\n"), -1);
	assert_int_equal(add_line(h, "Na\x01me: v\r\n"), -1);          /* CTL */
	assert_int_equal(add_line(h, " folded continuation\r\n"), -1); /* obs-fold */
	assert_int_equal(add_line(h, "\tfolded: x\r\n"), -1);
	assert_int_equal(add_line(h, "X: a\rb\r\n"), -1);        /* bare CR inside */
	assert_int_equal(hdr_add_line(h, "X: a\0b\r\n", 8), -1); /* NUL inside */
	assert_int_equal(hdr_count(h), 0);
	hdr_free(&h);
}

static void test_add_rejects_crlf(void **state)
{
	struct hdr *h = hdr_new();

	(void)state;
	assert_int_equal(hdr_add(h, "X-A", 3, "ok", 2), 0);
	assert_int_equal(hdr_add(h, "X-A", 3, "a\r\nX-Evil: 1", 13), -1);
	assert_int_equal(hdr_add(h, "X-A", 3, "a\nb", 3), -1);
	assert_int_equal(hdr_add(h, "X-A", 3, "a\rb", 3), -1);
	assert_int_equal(hdr_add(h, "X-A", 3, "a\0b", 3), -1);
	assert_int_equal(hdr_add(h, "X\nA", 3, "v", 1), -1);
	assert_int_equal(hdr_add(h, "X:A", 3, "v", 1), -1);
	assert_int_equal(hdr_add(h, "", 0, "v", 1), -1);
	/* Lengths are honoured: a slice of a longer buffer. */
	assert_int_equal(hdr_add(h, "X-Bxxx", 3, "valuexxx", 5), 0);
	assert_int_equal(hdr_count(h), 2);
	assert_string_equal(hdr_name(h, 1), "X-B");
	assert_string_equal(hdr_value(h, 1), "value");
	hdr_free(&h);
}

static void test_get_remove_clear(void **state)
{
	struct hdr *h = hdr_new();

	(void)state;
	add_line(h, "Set-Cookie: a=1\r\n");
	add_line(h, "ETag: \"x\"\r\n");
	add_line(h, "set-cookie: b=2\r\n");
	assert_string_equal(hdr_get(h, "SET-COOKIE"), "a=1");
	assert_string_equal(hdr_get(h, "etag"), "\"x\"");
	assert_null(hdr_get(h, "Age"));
	assert_int_equal(hdr_remove(h, "Set-Cookie"), 2);
	assert_int_equal(hdr_count(h), 1);
	assert_string_equal(hdr_name(h, 0), "ETag");
	assert_int_equal(hdr_remove(h, "Set-Cookie"), 0);
	hdr_clear(h);
	assert_int_equal(hdr_count(h), 0);
	assert_null(hdr_get(h, "ETag"));
	/* Usable after clear. */
	assert_int_equal(add_line(h, "A: 1\r\n"), 0);
	assert_string_equal(hdr_get(h, "a"), "1");
	hdr_free(&h);
	hdr_free(&h); /* NULL is fine */
}

static void test_many_fields_keep_order(void **state)
{
	struct hdr *h = hdr_new();
	char name[32], value[32];

	(void)state;
	for (int i = 0; i < 100; i++) {
		int nl = snprintf(name, sizeof(name), "X-%d", i);
		int vl = snprintf(value, sizeof(value), "v%d", i);

		assert_int_equal(hdr_add(h, name, (size_t)nl, value, (size_t)vl), 0);
	}
	assert_int_equal(hdr_count(h), 100);
	assert_string_equal(hdr_name(h, 0), "X-0");
	assert_string_equal(hdr_value(h, 57), "v57");
	assert_string_equal(hdr_name(h, 99), "X-99");
	hdr_free(&h);
}

static void test_hop_by_hop(void **state)
{
	static const char *const fixed[] = {
		"Connection",
		"keep-alive",
		"PROXY-CONNECTION",
		"Proxy-Authenticate",
		"proxy-authorization",
		"TE",
		"Trailer",
		"transfer-encoding",
		"Upgrade",
	};

	(void)state;
	for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
		assert_true(hdr_is_hop_by_hop(fixed[i], NULL));
	assert_false(hdr_is_hop_by_hop("Content-Type", NULL));
	assert_false(hdr_is_hop_by_hop("Authorization", NULL));
	assert_false(hdr_is_hop_by_hop("Trailers", NULL));
	assert_false(hdr_is_hop_by_hop("X-Foo", "close"));
	assert_true(hdr_is_hop_by_hop("X-Foo", "close, x-foo"));
	assert_true(hdr_is_hop_by_hop("x-foo", "X-Foo"));
	assert_true(hdr_is_hop_by_hop("X-Bar", " ,\tX-Foo\t ,  X-Bar  ,"));
	assert_false(hdr_is_hop_by_hop("X-Fo", "X-Foo"));
	assert_false(hdr_is_hop_by_hop("X-Foo", "X-Fo"));
	assert_false(hdr_is_hop_by_hop("X-Foo", "X-Foo-Bar"));
	assert_false(hdr_is_hop_by_hop("X-Foo", ""));
}

static void test_copy_end_to_end(void **state)
{
	struct hdr *src = hdr_new(), *dst = hdr_new();
	static const char *const skip[] = { "Content-Length", NULL };

	(void)state;
	add_line(src, "Connection: keep-alive, X-Hop1\r\n");
	add_line(src, "Content-Type: text/csv\r\n");
	add_line(src, "X-Hop1: a\r\n");
	add_line(src, "Keep-Alive: timeout=5\r\n");
	add_line(src, "Transfer-Encoding: chunked\r\n");
	add_line(src, "Content-Length: 10\r\n");
	add_line(src, "X-End: 1\r\n");
	add_line(src, "connection: x-hop2\r\n"); /* a second Connection field counts too */
	add_line(src, "X-Hop2: b\r\n");
	add_line(src, "X-End: 2\r\n");
	add_line(dst, "Via: 1.1 kaleidod\r\n");

	assert_int_equal(hdr_copy_end_to_end(dst, src, skip), 0);
	assert_int_equal(hdr_count(dst), 4);
	assert_string_equal(hdr_name(dst, 0), "Via");
	assert_string_equal(hdr_name(dst, 1), "Content-Type");
	assert_string_equal(hdr_name(dst, 2), "X-End");
	assert_string_equal(hdr_value(dst, 2), "1");
	assert_string_equal(hdr_value(dst, 3), "2");

	/* No skip list: Content-Length passes. */
	hdr_clear(dst);
	assert_int_equal(hdr_copy_end_to_end(dst, src, NULL), 0);
	assert_string_equal(hdr_get(dst, "Content-Length"), "10");
	assert_null(hdr_get(dst, "X-Hop2"));
	hdr_free(&src);
	hdr_free(&dst);
}

static void test_serialize_round_trip(void **state)
{
	struct hdr *h = hdr_new(), *back;
	char *text;
	size_t len = 99;

	(void)state;
	assert_int_equal(hdr_add(h, "Content-Type", 12, "application/json", 16), 0);
	assert_int_equal(hdr_add(h, "X-Spaces", 8, "  lead and trail  ", 18), 0);
	assert_int_equal(hdr_add(h, "X-Empty", 7, "", 0), 0);
	assert_int_equal(hdr_add(h, "X-Colon", 7, "a: b", 4), 0);
	assert_int_equal(hdr_add(h, "X-Utf8", 6, "caf\xc3\xa9", 5), 0);
	text = hdr_serialize(h, &len);
	assert_non_null(text);
	assert_string_equal(text, "Content-Type: application/json\n"
				  "X-Spaces:   lead and trail  \n"
				  "X-Empty: \n"
				  "X-Colon: a: b\n"
				  "X-Utf8: caf\xc3\xa9\n");
	assert_int_equal(len, strlen(text));
	back = hdr_parse(text, len);
	assert_non_null(back);
	assert_int_equal(hdr_count(back), hdr_count(h));
	for (size_t i = 0; i < hdr_count(h); i++) {
		assert_string_equal(hdr_name(back, i), hdr_name(h, i));
		assert_string_equal(hdr_value(back, i), hdr_value(h, i));
	}
	free(text);
	hdr_free(&back);

	/* Empty list: empty text, parses back to an empty list. */
	hdr_clear(h);
	text = hdr_serialize(h, &len);
	assert_non_null(text);
	assert_int_equal(len, 0);
	back = hdr_parse(text, 0);
	assert_non_null(back);
	assert_int_equal(hdr_count(back), 0);
	free(text);
	hdr_free(&back);
	hdr_free(&h);
}

static void test_parse_malformed(void **state)
{
	static const char *const bad[] = {
		"A: 1",        /* unterminated last line */
		"A: 1\nB 2\n", /* no colon */
		"A:1\n",       /* no space after colon */
		"A:\n",        /* nothing after colon */
		": v\n",       /* empty name */
		"A: 1\n\n",    /* blank line */
		"A: 1\r\n",    /* CR kept in value */
		"Bad Name: v\n",
	};
	struct hdr *h;

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		h = hdr_parse(bad[i], strlen(bad[i]));
		if (h != NULL)
			fail_msg("accepted malformed block %zu: \"%s\"", i, bad[i]);
	}
	assert_null(hdr_parse("A: 1\0\n", 6));
	h = hdr_parse("A: 1\nB: 2\nignored", 10); /* the length bounds the block */
	assert_non_null(h);
	assert_int_equal(hdr_count(h), 2);
	hdr_free(&h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_add_line_basic),
		cmocka_unit_test(test_add_line_rejects),
		cmocka_unit_test(test_add_rejects_crlf),
		cmocka_unit_test(test_get_remove_clear),
		cmocka_unit_test(test_many_fields_keep_order),
		cmocka_unit_test(test_hop_by_hop),
		cmocka_unit_test(test_copy_end_to_end),
		cmocka_unit_test(test_serialize_round_trip),
		cmocka_unit_test(test_parse_malformed),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
