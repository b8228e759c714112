/*
 * test_accounts: the accounts file (its fields, its errors with line
 * numbers, twins), secret checks through libxcrypt, scopes and path
 * prefixes, the rate bucket, counters carried across a reload, and the
 * file edits (add refuses a twin and keeps the file, remove).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <crypt.h>

#include "accounts.h"

static char dir[64];

static int setup(void **state)
{
	(void)state;
	snprintf(dir, sizeof(dir), "/tmp/kd-test-accounts-XXXXXX");
	return mkdtemp(dir) == NULL ? -1 : 0;
}

static int teardown(void **state)
{
	char cmd[128];

	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	return system(cmd) == 0 ? 0 : -1;
}

static const char *file_with(const char *text)
{
	static char path[128];
	FILE *f;

	snprintf(path, sizeof(path), "%s/accounts", dir);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	return path;
}

static char *hash_of(const char *secret)
{
	char err[256];
	char *h = accounts_hash_secret(secret, err, sizeof(err));

	assert_non_null(h);
	assert_true(strncmp(h, "$y$", 3) == 0);
	return h;
}

static void test_fields_and_verify(void **state)
{
	char text[1024], err[256];
	char *h1 = hash_of("s3cret"), *h2 = hash_of("other");
	struct accounts *as = NULL;
	struct account *a;

	(void)state;
	snprintf(
		text, sizeof(text),
		"# the lab\n\nzed:%s:read:/programs,/push/imports/:10/m:CN=zed,O=Lab:Zed: a robot\n"
		"amy:%s:read,write,admin:::::\n",
		h1, h2);
	assert_int_equal(accounts_load(file_with(text), &as, err, sizeof(err)), 0);
	assert_int_equal(accounts_count(as), 2);
	assert_string_equal(account_name(accounts_at(as, 0)), "amy"); /* sorted */
	a = accounts_find(as, "zed");
	assert_non_null(a);
	assert_null(accounts_find(as, "ze"));
	assert_string_equal(account_comment(a), "Zed: a robot"); /* ':' kept */
	assert_string_equal(account_cert(a), "CN=zed,O=Lab");
	assert_int_equal(account_scopes(a), ACCOUNTS_READ);
	assert_true(account_rate(a) > 0.166 && account_rate(a) < 0.167);
	assert_int_equal(account_verify(a, "s3cret"), 1);
	assert_int_equal(account_verify(a, "s3cre"), 0);
	assert_int_equal(account_verify(a, "other"), 0);
	assert_int_equal(account_verify(NULL, "s3cret"), 0); /* no such name */
	assert_string_equal(account_comment(accounts_find(as, "amy")), ":");
	assert_string_equal(account_cert(accounts_find(as, "amy")), "");
	accounts_free(&as);
	free(h1);
	free(h2);
}

static void test_errors_name_the_line(void **state)
{
	static const struct {
		const char *text, *want;
	} cases[] = {
		{ "a:$y$j9T$AhNRN5zr3BAzcOf6N6jKd0$s0qGE.3y7AJkgAkRJCubJUz1UtuW0wsL6xetpR9acr2:read::::\n"
		  "b:nohash:read::::\n",
		  ":2: the secret hash" },
		{ "bad name:$y$j9T$AhNRN5zr3BAzcOf6N6jKd0$s0qGE.3y7AJkgAkRJCubJUz1UtuW0wsL6xetpR9acr2:"
		  "read::::\n",
		  ":1: the name" },
		{ "a:$y$j9T$AhNRN5zr3BAzcOf6N6jKd0$s0qGE.3y7AJkgAkRJCubJUz1UtuW0wsL6xetpR9acr2:fly::::\n",
		  ":1: scopes" },
		{ "a:$y$j9T$AhNRN5zr3BAzcOf6N6jKd0$s0qGE.3y7AJkgAkRJCubJUz1UtuW0wsL6xetpR9acr2:read:x:::\n",
		  ":1: each path" },
		{ "a:$y$j9T$AhNRN5zr3BAzcOf6N6jKd0$s0qGE.3y7AJkgAkRJCubJUz1UtuW0wsL6xetpR9acr2:read::9/d::\n",
		  ":1: the rate" },
		{ "a:b:c\n", ":1: expected NAME:HASH" },
		/* Costs that would take gigabytes or hours a login (fuzz_accounts). */
		{ "a:$y$jIT$AhNRN5zr3B0$s0qGE.3y7AJkgAkRJCubJUz1UtuW0wsL6xetpR9acr2:read::::\n",
		  ":1: the secret hash asks too much" },
		{ "a:$y$jFT$AhNRN5zr3BAzcOf6N6jKd0$s0qGE.3y7AJkgAkRJCubJUz1UtuW0wsL6xetpR9acr2:"
		  "read::::\n",
		  ":1: the secret hash asks too much" },
		{ "a:$2b$31$abcdefghijklmnopqrstuuOlAXT1KlNtWQl4XN1ZynA9YJ0fkvxbS:read::::\n",
		  ":1: the secret hash asks too much" },
		{ "a:$6$rounds=999999999$salt$x:read::::\n", ":1: the secret hash asks too much" },
		{ "a:$y$j9T$AhNRN5zr3BAzcOf6N6jKd0$s0qGE.3y7AJkgAkRJCubJUz1UtuW0wsL6xetpR9acr2:read::::\n"
		  "a:$y$j9T$AhNRN5zr3BAzcOf6N6jKd0$s0qGE.3y7AJkgAkRJCubJUz1UtuW0wsL6xetpR9acr2:read::::\n",
		  "account 'a' appears twice" },
	};
	char err[256];

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct accounts *as = (struct accounts *)1;

		assert_int_equal(accounts_load(file_with(cases[i].text), &as, err, sizeof(err)),
				 -1);
		assert_null(as);
		if (strstr(err, cases[i].want) == NULL)
			fail_msg("case %zu: '%s' lacks '%s'", i, err, cases[i].want);
	}
}

/* Other methods libxcrypt verifies, at costs within the bounds, load and
 * verify; the same methods over the bounds were refused above. */
static void test_other_methods(void **state)
{
	static const struct {
		const char *prefix;
		unsigned long count;
	} methods[] = { { "$2b$", 8 }, { "$6$", 20000 }, { "$5$", 0 }, { "$1$", 0 }, { "$y$", 8 } };
	char salt[CRYPT_GENSALT_OUTPUT_SIZE], text[512], err[256];
	struct crypt_data cd;

	(void)state;
	for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
		struct accounts *as = NULL;
		const char *h;

		assert_non_null(crypt_gensalt_rn(methods[i].prefix, methods[i].count, NULL, 0, salt,
						 sizeof(salt)));
		memset(&cd, 0, sizeof(cd));
		h = crypt_r("open sesame", salt, &cd);
		assert_non_null(h);
		snprintf(text, sizeof(text), "m:%s:read::::\n", h);
		if (accounts_load(file_with(text), &as, err, sizeof(err)) < 0)
			fail_msg("%s: %s", methods[i].prefix, err);
		assert_int_equal(account_verify(accounts_find(as, "m"), "open sesame"), 1);
		assert_int_equal(account_verify(accounts_find(as, "m"), "open sesam"), 0);
		accounts_free(&as);
	}
}

static void test_scopes_and_paths(void **state)
{
	char text[512], err[256], *h = hash_of("x");
	struct accounts *as = NULL;
	struct account *r, *w, *p;

	(void)state;
	snprintf(text, sizeof(text),
		 "r:%s:read::::\nw:%s:write,admin::::\np:%s:read,write:/push/imports:::\n", h, h,
		 h);
	assert_int_equal(accounts_load(file_with(text), &as, err, sizeof(err)), 0);
	r = accounts_find(as, "r");
	w = accounts_find(as, "w");
	p = accounts_find(as, "p");
	assert_int_equal(account_allows(r, "GET", "/programs", 9, 0), ACCOUNTS_ALLOWED);
	assert_int_equal(account_allows(r, "HEAD", "/programs", 9, 0), ACCOUNTS_ALLOWED);
	assert_int_equal(account_allows(r, "POST", "/programs", 9, 0), ACCOUNTS_NEEDS_WRITE);
	assert_int_equal(account_allows(r, "OPTIONS", "/programs", 9, 0), ACCOUNTS_NEEDS_WRITE);
	assert_int_equal(account_allows(r, "GET", "/_kaleidod/stats", 16, 1), ACCOUNTS_NEEDS_ADMIN);
	assert_int_equal(account_allows(w, "GET", "/programs", 9, 0), ACCOUNTS_ALLOWED);
	assert_int_equal(account_allows(w, "DELETE", "/programs/1", 11, 0), ACCOUNTS_ALLOWED);
	assert_int_equal(account_allows(w, "GET", "/_kaleidod/stats", 16, 1), ACCOUNTS_ALLOWED);
	assert_int_equal(account_allows(p, "POST", "/push/imports", 13, 0), ACCOUNTS_ALLOWED);
	assert_int_equal(account_allows(p, "POST", "/push/imports/7", 15, 0), ACCOUNTS_ALLOWED);
	assert_int_equal(account_allows(p, "POST", "/push/importsX", 14, 0), ACCOUNTS_OUTSIDE);
	assert_int_equal(account_allows(p, "GET", "/push", 5, 0), ACCOUNTS_OUTSIDE);
	/* pathlen, not the NUL, ends the path (the query is not looked at). */
	assert_int_equal(account_allows(p, "GET", "/push/imports?x=/", 13, 0), ACCOUNTS_ALLOWED);
	assert_int_equal(accounts_parse_scopes("read,admin"), ACCOUNTS_READ | ACCOUNTS_ADMIN);
	assert_int_equal(accounts_parse_scopes("read,"), ACCOUNTS_READ);
	assert_int_equal(accounts_parse_scopes("reader"), 0);
	accounts_free(&as);
	free(h);
}

static void test_rate_bucket_and_carried_counters(void **state)
{
	char text[512], err[256], *h = hash_of("x");
	struct accounts *as = NULL, *next = NULL;
	struct account *a, *b;

	(void)state;
	snprintf(text, sizeof(text), "a:%s:read::3/s::\nb:%s:read::::\n", h, h);
	assert_int_equal(accounts_load(file_with(text), &as, err, sizeof(err)), 0);
	a = accounts_find(as, "a");
	b = accounts_find(as, "b");
	/* A burst of 3, then one every third of a second. */
	assert_true(account_take(a, 100.0) == 0);
	assert_true(account_take(a, 100.0) == 0);
	assert_true(account_take(a, 100.0) == 0);
	assert_true(account_take(a, 100.0) > 0.33 && account_take(a, 100.0) < 0.34);
	assert_true(account_take(a, 100.34) == 0);
	assert_true(account_take(a, 100.34) > 0);
	assert_true(account_take(b, 100.0) == 0); /* no limit */
	account_count(a, ACCOUNT_REQUESTS);
	account_count(a, ACCOUNT_REQUESTS);
	/* A reload: the same name keeps its counters and bucket, shared. */
	assert_int_equal(accounts_load(file_with(text), &next, err, sizeof(err)), 0);
	accounts_carry(next, as);
	assert_int_equal(account_counter(accounts_find(next, "a"), ACCOUNT_REQUESTS), 2);
	assert_true(account_take(accounts_find(next, "a"), 100.34) > 0);
	account_count(a, ACCOUNT_REQUESTS); /* a request still on the old account */
	assert_int_equal(account_counter(accounts_find(next, "a"), ACCOUNT_REQUESTS), 3);
	/* A reference outlives its set. */
	a = account_ref(a);
	accounts_free(&as);
	assert_string_equal(account_name(a), "a");
	account_unref(&a);
	assert_null(a);
	accounts_free(&next);
	free(h);
}

/* A cluster's shared limits: what the bucket gave out is told once, and
 * what others gave out is spent here, down to one bucket of debt. */
static void test_rate_shared_with_a_cluster(void **state)
{
	char text[512], err[256], *h = hash_of("x");
	struct accounts *as = NULL;
	struct account *a, *b;

	(void)state;
	snprintf(text, sizeof(text), "a:%s:read::4/s::\nb:%s:read::::\n", h, h);
	assert_int_equal(accounts_load(file_with(text), &as, err, sizeof(err)), 0);
	a = accounts_find(as, "a");
	b = accounts_find(as, "b");
	assert_int_equal(account_take_untold(a), 0);
	assert_true(account_take(a, 10.0) == 0);
	assert_true(account_take(a, 10.0) == 0);
	assert_int_equal(account_take_untold(a), 2);
	assert_int_equal(account_take_untold(a), 0); /* told once */
	/* Another instance let 2 through: 4 - 2 - 2 leaves none. */
	account_spend(a, 2, 10.0);
	assert_true(account_take(a, 10.0) > 0.24 && account_take(a, 10.0) < 0.26);
	assert_int_equal(account_take_untold(a), 0); /* a refusal is not a take */
	/* Debt: at most one bucket (4), paid back at the rate. */
	account_spend(a, 100, 10.0);
	assert_true(account_take(a, 10.0) > 1.24 && account_take(a, 10.0) < 1.26);
	assert_true(account_take(a, 11.25) == 0);
	/* No limit: nothing to tell, nothing to spend. */
	assert_true(account_take(b, 10.0) == 0);
	account_spend(b, 5, 10.0);
	assert_int_equal(account_take_untold(b), 0);
	assert_true(account_take(b, 10.0) == 0);
	accounts_free(&as);
	free(h);
}

static void test_file_edits(void **state)
{
	char path[128], err[256], *h = hash_of("x"), before[4096];
	struct accounts *as = NULL;
	struct stat st;
	FILE *f;
	size_t n;

	(void)state;
	snprintf(path, sizeof(path), "%s/edited", dir);
	unlink(path);
	assert_int_equal(
		accounts_file_add(path, "one", h, "read", "", "", NULL, "first", err, sizeof(err)),
		0);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	assert_int_equal(accounts_file_add(path, "two", h, "read,write", "/a,/b", "5/s", NULL, NULL,
					   err, sizeof(err)),
			 0);
	f = fopen(path, "r");
	n = fread(before, 1, sizeof(before) - 1, f);
	before[n] = '\0';
	fclose(f);
	/* A twin, a bad field, a comment with a newline: refused, file unchanged. */
	assert_int_equal(
		accounts_file_add(path, "one", h, "read", "", "", NULL, "", err, sizeof(err)), -1);
	assert_non_null(strstr(err, "exists already"));
	assert_int_equal(
		accounts_file_add(path, "three", h, "nope", "", "", NULL, "", err, sizeof(err)),
		-1);
	assert_int_equal(
		accounts_file_add(path, "four", h, "read", "", "", NULL, "a\nb", err, sizeof(err)),
		-1);
	f = fopen(path, "r");
	n = fread(before + 2048, 1, 2047, f);
	before[2048 + n] = '\0';
	fclose(f);
	assert_string_equal(before, before + 2048);
	assert_int_equal(accounts_file_remove(path, "one", err, sizeof(err)), 0);
	assert_int_equal(accounts_file_remove(path, "one", err, sizeof(err)), -1);
	assert_non_null(strstr(err, "no account 'one'"));
	assert_int_equal(accounts_load(path, &as, err, sizeof(err)), 0);
	assert_int_equal(accounts_count(as), 1);
	assert_string_equal(account_paths_text(accounts_at(as, 0)), "/a,/b");
	assert_string_equal(account_rate_text(accounts_at(as, 0)), "5/s");
	accounts_free(&as);
	free(h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fields_and_verify),
		cmocka_unit_test(test_errors_name_the_line),
		cmocka_unit_test(test_other_methods),
		cmocka_unit_test(test_scopes_and_paths),
		cmocka_unit_test(test_rate_bucket_and_carried_counters),
		cmocka_unit_test(test_rate_shared_with_a_cluster),
		cmocka_unit_test(test_file_edits),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
