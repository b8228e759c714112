/*
 * test_tokens: issue, check, expiry, refresh (once), rebinding on a reload
 * (removed account, changed secret, new scopes), the store's limit, and
 * the sweep.  The clock is a plain number.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "accounts.h"
#include "tokens.h"

static char path[64];

/* A set from text (NAME:HASH:... lines) through a file. */
static struct accounts *set_of(const char *text)
{
	struct accounts *as = NULL;
	char err[256];
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	if (accounts_load(path, &as, err, sizeof(err)) < 0)
		fail_msg("%s", err);
	return as;
}

#define H1 "$y$j9T$AhNRN5zr3BAzcOf6N6jKd0$s0qGE.3y7AJkgAkRJCubJUz1UtuW0wsL6xetpR9acr2"
#define H2 "$y$j9T$oRYAssm6nZB23EReWbFed1$P3wxQvTzbXuxbnsIXDdvSo9u/CsOnFLuoTIdIpLOIz2"

static int setup(void **state)
{
	int fd;

	(void)state;
	snprintf(path, sizeof(path), "/tmp/kd-test-tokens-XXXXXX");
	fd = mkstemp(path);
	if (fd < 0)
		return -1;
	close(fd);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	return unlink(path);
}

static void test_issue_check_expire(void **state)
{
	struct accounts *as = set_of("amy:" H1 ":read::::\n");
	struct tokens *t = tokens_new(100);
	char access[LOCALTOKEN_LEN + 1], refresh[LOCALTOKEN_LEN + 1], wrong[LOCALTOKEN_LEN + 2];
	struct account *a;

	(void)state;
	assert_int_equal(tokens_issue(t, accounts_find(as, "amy"), 1000, 60, access, refresh), 0);
	assert_int_equal(strlen(access), LOCALTOKEN_LEN);
	assert_int_equal(tokens_count(t), 2);
	a = tokens_check(t, access, 1059.9);
	assert_non_null(a);
	assert_string_equal(account_name(a), "amy");
	account_unref(&a);
	/* A refresh token is no access token; near misses are nothing. */
	assert_null(tokens_check(t, refresh, 1001));
	memcpy(wrong, access, sizeof(access));
	wrong[LOCALTOKEN_LEN - 1] ^= 1;
	assert_null(tokens_check(t, wrong, 1001));
	wrong[LOCALTOKEN_LEN - 1] ^= 1;
	wrong[LOCALTOKEN_LEN] = 'x';
	wrong[LOCALTOKEN_LEN + 1] = '\0';
	assert_null(tokens_check(t, wrong, 1001)); /* longer */
	wrong[LOCALTOKEN_LEN - 1] = '\0';
	assert_null(tokens_check(t, wrong, 1001)); /* shorter */
	assert_null(tokens_check(t, "", 1001));
	/* Expired. */
	assert_null(tokens_check(t, access, 1060));
	assert_int_equal(tokens_sweep(t, 1060), 1);
	assert_int_equal(tokens_count(t), 1); /* the refresh token lives on */
	tokens_free(&t);
	accounts_free(&as);
}

static void test_refresh_once(void **state)
{
	struct accounts *as = set_of("amy:" H1 ":read::::\n");
	struct tokens *t = tokens_new(100);
	char access[LOCALTOKEN_LEN + 1], refresh[LOCALTOKEN_LEN + 1];
	char access2[LOCALTOKEN_LEN + 1], refresh2[LOCALTOKEN_LEN + 1];
	struct account *a;
	int full;

	(void)state;
	assert_int_equal(tokens_issue(t, accounts_find(as, "amy"), 1000, 60, access, refresh), 0);
	/* Long after the access token expired, the refresh token still works. */
	a = tokens_refresh(t, refresh, 5000, 60, access2, refresh2, &full);
	assert_non_null(a);
	assert_int_equal(full, 0);
	account_unref(&a);
	assert_string_not_equal(access, access2);
	assert_non_null((a = tokens_check(t, access2, 5001)));
	account_unref(&a);
	/* Used up; an access token cannot refresh. */
	assert_null(tokens_refresh(t, refresh, 5001, 60, access, refresh, &full));
	assert_null(tokens_refresh(t, access2, 5001, 60, access, refresh, &full));
	/* A refresh token expires too. */
	assert_null(tokens_refresh(t, refresh2, 5000 + TOKENS_REFRESH_LIFETIME, 60, access, refresh,
				   &full));
	tokens_free(&t);
	accounts_free(&as);
}

static void test_rebind_on_reload(void **state)
{
	struct accounts *as =
		set_of("amy:" H1 ":read::::\nbob:" H1 ":read::::\ncat:" H1 ":read::::\n");
	struct accounts *next;
	struct tokens *t = tokens_new(100);
	char amy[LOCALTOKEN_LEN + 1], bob[LOCALTOKEN_LEN + 1], cat[LOCALTOKEN_LEN + 1];
	char r[LOCALTOKEN_LEN + 1];
	struct account *a;

	(void)state;
	assert_int_equal(tokens_issue(t, accounts_find(as, "amy"), 0, 60, amy, r), 0);
	assert_int_equal(tokens_issue(t, accounts_find(as, "bob"), 0, 60, bob, r), 0);
	assert_int_equal(tokens_issue(t, accounts_find(as, "cat"), 0, 60, cat, r), 0);
	/* amy gains write, bob's secret changes, cat is removed. */
	next = set_of("amy:" H1 ":read,write::::\nbob:" H2 ":read::::\n");
	assert_int_equal(tokens_rebind(t, next), 4); /* bob's and cat's pairs */
	accounts_free(&as);
	a = tokens_check(t, amy, 1);
	assert_non_null(a);
	assert_int_equal(account_scopes(a), ACCOUNTS_READ | ACCOUNTS_WRITE);
	account_unref(&a);
	assert_null(tokens_check(t, bob, 1));
	assert_null(tokens_check(t, cat, 1));
	tokens_free(&t);
	accounts_free(&next);
}

static void test_full_store(void **state)
{
	struct accounts *as = set_of("amy:" H1 ":read::::\n");
	struct tokens *t = tokens_new(4);
	char a[LOCALTOKEN_LEN + 1], r[LOCALTOKEN_LEN + 1];

	(void)state;
	assert_int_equal(tokens_issue(t, accounts_find(as, "amy"), 0, 10, a, r), 0);
	assert_int_equal(tokens_issue(t, accounts_find(as, "amy"), 0, 10, a, r), 0);
	assert_int_equal(tokens_issue(t, accounts_find(as, "amy"), 5, 10, a, r), -1);
	/* Once the access tokens expired, the sweep makes room (the refresh
	 * tokens stay: they are live). */
	assert_int_equal(tokens_count(t), 4);
	tokens_free(&t);
	t = tokens_new(3);
	assert_int_equal(tokens_issue(t, accounts_find(as, "amy"), 0, 10, a, r), 0);
	assert_int_equal(tokens_issue(t, accounts_find(as, "amy"), 1e7, 10, a, r), 0);
	assert_int_equal(tokens_count(t), 2);
	tokens_free(&t);
	accounts_free(&as);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_issue_check_expire),
		cmocka_unit_test(test_refresh_once),
		cmocka_unit_test(test_rebind_on_reload),
		cmocka_unit_test(test_full_store),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
