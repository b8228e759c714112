/*
 * Unit tests for common/auth.c: the token state machine, driven with a fake
 * monotonic clock and canned token-endpoint answers.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "auth.h"

#define ID "client 1"
#define SECRET "S3CR3T"

static struct auth *new_auth(unsigned rmin, unsigned rmax)
{
	struct auth *a = auth_new(ID, SECRET, rmin, rmax);

	assert_non_null(a);
	return a;
}

/* Begins a request at now, which must be due, and returns its form. */
static char *begin(struct auth *a, double now, int force)
{
	char *form = NULL;

	assert_int_equal(auth_begin(a, now, force, &form), 1);
	assert_non_null(form);
	return form;
}

static void begin_ok(struct auth *a, double now, const char *want_prefix)
{
	char *form = begin(a, now, 0);

	assert_true(strncmp(form, want_prefix, strlen(want_prefix)) == 0);
	free(form);
}

static int finish_json(struct auth *a, double now, long status, const char *body)
{
	return auth_finish(a, now, status, body, strlen(body), NULL);
}

static int near(double x, double want)
{
	return x > want - 1e-6 && x < want + 1e-6;
}

static const char CC[] = "grant_type=client_credentials&";
static const char RT[] = "grant_type=refresh_token&";

/* A fresh auth holding access token "AT1" (and refresh "RT1") from now = 0. */
static struct auth *with_token(unsigned rmin, unsigned rmax, int with_refresh)
{
	struct auth *a = new_auth(rmin, rmax);

	begin_ok(a, 0, CC);
	assert_int_equal(finish_json(a, 0, 200,
				     with_refresh ?
					     "{\"access_token\":\"AT1\",\"refresh_token\":\"RT1\","
					     "\"expires_in\":3600,\"token_type\":\"bearer\"}" :
					     "{\"access_token\":\"AT1\",\"expires_in\":3600}"),
			 0);
	return a;
}

static void test_first_begin_form(void **state)
{
	struct auth *a = auth_new("id 1", "a&b=c d", 1, 60);
	struct auth_status st;
	char *form = NULL;

	(void)state;
	assert_non_null(a);
	auth_status(a, &st);
	assert_int_equal(st.state, AUTH_STARTING);
	assert_string_equal(st.last_error, "");
	assert_null(auth_token(a, 0, NULL));
	assert_true(auth_next_due(a, 0) == 0);
	assert_int_equal(auth_busy(a), 0);
	assert_int_equal(auth_begin(a, 0, 0, &form), 1);
	assert_string_equal(
		form, "grant_type=client_credentials&client_id=id%201&client_secret=a%26b%3Dc%20d");
	assert_int_equal(auth_busy(a), 1);
	free(form);
	auth_free(&a);
	assert_null(a);
}

static void test_success_schedule(void **state)
{
	static const struct {
		const char *lifetime;
		double refresh_at, expiry;
	} cases[] = {
		{ "3600", 3240, 3600 },
		{ "100", 90, 100 },
		{ "100000", 100000 - 600, 100000 },
	};
	char body[128];
	struct auth_status st;
	struct auth *a;
	unsigned gen = 0;
	double t0 = 1000, wall;
	char *form = NULL;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		a = new_auth(1, 60);
		begin_ok(a, t0, CC);
		snprintf(body, sizeof(body), "{\"access_token\":\"tok\",\"expires_in\":%s}",
			 cases[i].lifetime);
		assert_int_equal(finish_json(a, t0, 200, body), 0);
		assert_int_equal(auth_busy(a), 0);
		assert_string_equal(auth_token(a, t0, &gen), "tok");
		assert_int_not_equal(gen, 0);
		wall = (double)time(NULL);
		auth_status(a, &st);
		assert_int_equal(st.state, AUTH_OK);
		assert_int_equal(st.grants, 1);
		assert_int_equal(st.refreshes, 0);
		assert_int_equal(st.failures, 0);
		assert_true(st.failing_since == 0);
		assert_true(st.expires_at > wall + cases[i].expiry - 5 &&
			    st.expires_at < wall + cases[i].expiry + 5);

		assert_true(near(auth_next_due(a, t0), cases[i].refresh_at));
		assert_int_equal(auth_begin(a, t0 + cases[i].refresh_at - 0.01, 0, &form), 0);
		assert_null(form);
		assert_true(near(auth_next_due(a, t0 + cases[i].refresh_at - 1), 1));
		assert_string_equal(auth_token(a, t0 + cases[i].expiry - 0.01, NULL), "tok");
		assert_null(auth_token(a, t0 + cases[i].expiry, NULL));
		/* No refresh token was given: the refresh asks with the credentials. */
		begin_ok(a, t0 + cases[i].refresh_at, CC);
		auth_free(&a);
	}
}

/* Grants a token whose answer carries expires_in_json (NULL: none) at 0 and
 * checks it is valid until, and not at, the lifetime kaleidod took. */
static void expect_lifetime(const char *expires_in_json, double lifetime)
{
	struct auth *a = new_auth(1, 60);
	char body[128];

	if (expires_in_json != NULL)
		snprintf(body, sizeof(body), "{\"access_token\":\"tok\",\"expires_in\":%s}",
			 expires_in_json);
	else
		snprintf(body, sizeof(body), "{\"access_token\":\"tok\"}");
	begin_ok(a, 0, CC);
	assert_int_equal(finish_json(a, 0, 200, body), 0);
	assert_non_null(auth_token(a, lifetime - 0.5, NULL));
	assert_null(auth_token(a, lifetime, NULL));
	auth_free(&a);
}

static void test_expires_in_default_and_clamp(void **state)
{
	struct auth *a = new_auth(1, 60);

	(void)state;
	begin_ok(a, 0, CC);
	assert_int_equal(finish_json(a, 0, 200, "{\"access_token\":\"tok\"}"), 0);
	assert_true(near(auth_next_due(a, 0), 3240));
	auth_free(&a);
	expect_lifetime(NULL, 3600);
	/* Zero, negative or infinite (1e999) is no lifetime: the default, not a
	 * token request every second, nor never a refresh. */
	expect_lifetime("0", 3600);
	expect_lifetime("-5", 3600);
	expect_lifetime("1e999", 3600);
	/* A short real one is honoured (at least 1 s); a huge one is capped. */
	expect_lifetime("0.2", 1);
	expect_lifetime("42", 42);
	expect_lifetime("1e12", 366.0 * 86400);
}

/* A token is put in a header line: one with CR/LF or spaces is refused. */
/* An error body echoing the form-encoded secret twice: scrubbing the first
 * copy must not pull part of a second, cut by the excerpt's window, into
 * the reason (found by tests/fuzz/fuzz_auth). */
static void test_no_partial_secret_in_reason(void **state)
{
	const char *secret = "kd-Fz5ecr3t/Q9+x", *esc = "kd-Fz5ecr3t%2FQ9%2Bx";
	struct auth_status st;
	char body[400];
	char *form = NULL;

	(void)state;
	for (int pad = 80; pad < 140; pad++) {
		struct auth *a = auth_new("id", secret, 1, 60);

		assert_non_null(a);
		assert_int_equal(auth_begin(a, 0, 0, &form), 1);
		free(form);
		snprintf(body, sizeof(body), "%s%*s%s", esc, pad, "", esc);
		auth_finish(a, 0, 400, body, strlen(body), NULL);
		auth_status(a, &st);
		for (size_t i = 0; i + 6 <= strlen(esc); i++) {
			char piece[7];

			memcpy(piece, esc + i, 6);
			piece[6] = '\0';
			assert_null(strstr(st.last_error, piece));
		}
		auth_free(&a);
	}
}

static void test_token_charset(void **state)
{
	struct auth *a = new_auth(1, 60);
	struct auth_status st;

	(void)state;
	begin_ok(a, 0, CC);
	assert_int_equal(finish_json(a, 0, 200, "{\"access_token\":\"tok\\r\\nX-Evil: 1\"}"), -1);
	assert_null(auth_token(a, 1, NULL));
	auth_status(a, &st);
	assert_non_null(strstr(st.last_error, "cannot carry"));
	auth_free(&a);
}

static void test_refresh_uses_refresh_grant(void **state)
{
	struct auth *a = new_auth(1, 60);
	struct auth_status st;
	unsigned g1, g2;
	char *form;

	(void)state;
	begin_ok(a, 0, CC);
	assert_int_equal(
		finish_json(a, 0, 200, "{\"access_token\":\"AT1\",\"refresh_token\":\"R+/=1\"}"),
		0);
	assert_non_null(auth_token(a, 0, &g1));
	form = begin(a, 3240, 0);
	assert_string_equal(form, "grant_type=refresh_token&refresh_token=R%2B%2F%3D1");
	free(form);
	/* The old token still serves while the refresh is outstanding. */
	assert_string_equal(auth_token(a, 3241, NULL), "AT1");
	assert_int_equal(
		finish_json(a, 3241, 200, "{\"access_token\":\"AT2\",\"expires_in\":3600}"), 0);
	assert_string_equal(auth_token(a, 3241, &g2), "AT2");
	assert_int_not_equal(g1, g2);
	auth_status(a, &st);
	assert_int_equal(st.grants, 1);
	assert_int_equal(st.refreshes, 1);
	/* The answer had no refresh token: the old one stays in use. */
	assert_true(near(auth_next_due(a, 3241), 3240));
	begin_ok(a, 3241 + 3240, RT);
	auth_free(&a);
}

static void test_failed_refresh_falls_back(void **state)
{
	struct auth *a = with_token(10, 60, 1);
	struct auth_status st;
	double d;

	(void)state;
	begin_ok(a, 3240, RT);
	assert_int_equal(finish_json(a, 3240, 400, "{\"error\":\"invalid_grant\"}"), -1);
	/* The token is still valid: OK, but the failure is on record. */
	auth_status(a, &st);
	assert_int_equal(st.state, AUTH_OK);
	assert_int_equal(st.failures, 1);
	assert_true(st.failing_since > 0);
	assert_non_null(strstr(st.last_error, "400"));
	assert_string_equal(auth_token(a, 3240, NULL), "AT1");
	/* Client credentials are due at once, without backoff. */
	assert_true(auth_next_due(a, 3240) == 0);
	begin_ok(a, 3240, CC);
	assert_int_equal(finish_json(a, 3240, 503, "busy"), -1);
	/* That failing too backs off, and the token still serves. */
	d = auth_next_due(a, 3240);
	assert_true(d >= 5 && d <= 10);
	assert_int_equal(auth_in_backoff(a, 3240), 0);
	auth_status(a, &st);
	assert_int_equal(st.state, AUTH_OK);
	assert_int_equal(st.failures, 2);
	/* Once the token expires inside the wait, callers fail fast. */
	auth_free(&a);

	a = with_token(1000, 1000, 1);
	begin_ok(a, 3590, RT);
	assert_int_equal(finish_json(a, 3590, 401, ""), -1);
	begin_ok(a, 3590, CC);
	assert_int_equal(finish_json(a, 3590, 401, ""), -1);
	assert_int_equal(auth_in_backoff(a, 3599), 0);
	assert_int_equal(auth_in_backoff(a, 3600), 1);
	auth_status(a, &st);
	assert_int_equal(st.state, AUTH_FAILING);
	auth_free(&a);
}

static void test_failure_backoff(void **state)
{
	/* Expected [low, high] of each delay with min 10, max 60. */
	static const double lim[][2] = {
		{ 5, 10 }, { 10, 20 }, { 20, 40 }, { 30, 60 }, { 30, 60 }
	};
	struct auth *a = new_auth(10, 60);
	struct auth_status st;
	double now = 0, d, first_since = 0;
	char *form = NULL;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(lim) / sizeof(lim[0]); i++) {
		begin_ok(a, now, CC);
		assert_int_equal(auth_finish(a, now, 0, NULL, 0, "connection refused"), -1);
		auth_status(a, &st);
		assert_int_equal(st.state, AUTH_FAILING);
		assert_int_equal(st.failures, i + 1);
		assert_string_equal(st.last_error,
				    "token endpoint unreachable: connection refused");
		if (i == 0)
			first_since = st.failing_since;
		assert_true(st.failing_since > 0 && st.failing_since == first_since);
		d = auth_next_due(a, now);
		assert_true(d >= lim[i][0] && d <= lim[i][1]);
		assert_int_equal(auth_in_backoff(a, now), 1);
		/* Not due yet, and force does not cut the wait short. */
		assert_int_equal(auth_begin(a, now + d / 2, 0, &form), 0);
		assert_int_equal(auth_begin(a, now + d / 2, 1, &form), 0);
		assert_null(form);
		now += d;
		assert_int_equal(auth_in_backoff(a, now), 0);
	}
	/* Success resets the failure run and the backoff step. */
	begin_ok(a, now, CC);
	assert_int_equal(finish_json(a, now, 200, "{\"access_token\":\"tok\",\"expires_in\":10}"),
			 0);
	auth_status(a, &st);
	assert_int_equal(st.state, AUTH_OK);
	assert_true(st.failing_since == 0);
	assert_string_equal(st.last_error, "");
	now += 10;
	begin_ok(a, now, CC);
	assert_int_equal(finish_json(a, now, 500, "oops"), -1);
	d = auth_next_due(a, now);
	assert_true(d >= 5 && d <= 10);
	auth_status(a, &st);
	assert_true(st.failing_since > 0);
	auth_free(&a);
}

static void test_backoff_jitter_varies(void **state)
{
	struct auth *a;
	double d, first = -1;
	int i, differ = 0;

	(void)state;
	for (i = 0; i < 20; i++) {
		a = new_auth(100, 100);
		begin_ok(a, 0, CC);
		assert_int_equal(finish_json(a, 0, 500, "x"), -1);
		d = auth_next_due(a, 0);
		assert_true(d >= 50 && d <= 100);
		if (first < 0)
			first = d;
		else if (d != first)
			differ = 1;
		auth_free(&a);
	}
	assert_true(differ);
}

static void test_one_outstanding(void **state)
{
	struct auth *a = new_auth(1, 60);
	char *form = NULL;

	(void)state;
	begin_ok(a, 0, CC);
	assert_int_equal(auth_begin(a, 0, 0, &form), 0);
	assert_int_equal(auth_begin(a, 5, 1, &form), 0);
	assert_null(form);
	assert_true(auth_next_due(a, 0) == -1);
	assert_int_equal(auth_busy(a), 1);
	assert_int_equal(auth_in_backoff(a, 0), 0);
	assert_int_equal(finish_json(a, 0, 200, "{\"access_token\":\"tok\"}"), 0);
	assert_int_equal(auth_busy(a), 0);
	/* Nothing outstanding any more: a second finish is refused. */
	assert_int_equal(finish_json(a, 0, 200, "{\"access_token\":\"other\"}"), -1);
	assert_string_equal(auth_token(a, 0, NULL), "tok");
	auth_free(&a);
}

static void test_invalidate(void **state)
{
	struct auth *a = with_token(1, 60, 1);
	struct auth_status st;
	unsigned g1, g2;
	char *form = NULL;

	(void)state;
	assert_non_null(auth_token(a, 10, &g1));
	/* A valid token held: force asks for a new one before it is due. */
	form = begin(a, 10, 1);
	assert_true(strncmp(form, RT, strlen(RT)) == 0);
	free(form);
	assert_int_equal(
		finish_json(a, 10, 200, "{\"access_token\":\"AT2\",\"refresh_token\":\"RT2\"}"), 0);
	assert_int_equal(auth_begin(a, 11, 0, &form), 0);
	assert_non_null(auth_token(a, 11, &g2));
	assert_int_not_equal(g1, g2);
	/* A 401 seen with the old generation says nothing about the new token. */
	auth_invalidate(a, g1);
	assert_string_equal(auth_token(a, 11, NULL), "AT2");
	auth_invalidate(a, g2);
	assert_null(auth_token(a, 11, NULL));
	auth_status(a, &st);
	assert_int_not_equal(st.state, AUTH_OK);
	assert_true(st.expires_at == 0);
	/* Both tokens are gone: the next request uses the client credentials. */
	assert_true(auth_next_due(a, 11) == 0);
	form = begin(a, 11, 1);
	assert_non_null(strstr(form, "client_secret=" SECRET));
	free(form);
	auth_free(&a);
}

static void test_force(void **state)
{
	struct auth *a = with_token(1, 60, 0);
	char *form = NULL;
	unsigned gen;

	(void)state;
	assert_int_equal(auth_begin(a, 5, 0, &form), 0);
	form = begin(a, 5, 1);
	free(form);
	assert_int_equal(finish_json(a, 5, 500, "down"), -1);
	/* The token still serves, so a forced request may cut the wait. */
	assert_int_equal(auth_in_backoff(a, 5), 0);
	form = begin(a, 5, 1);
	free(form);
	assert_int_equal(finish_json(a, 5, 500, "down"), -1);
	/* Without a token, the wait is binding. */
	assert_non_null(auth_token(a, 5, &gen));
	auth_invalidate(a, gen);
	assert_null(auth_token(a, 5, NULL));
	assert_int_equal(auth_in_backoff(a, 5), 1);
	assert_int_equal(auth_begin(a, 5, 1, &form), 0);
	assert_null(form);
	auth_free(&a);
}

static void assert_clean(struct auth *a, const char *needle)
{
	struct auth_status st;

	auth_status(a, &st);
	assert_int_not_equal(st.last_error[0], '\0');
	if (strstr(st.last_error, needle) != NULL)
		fail_msg("reason leaks %s: %s", needle, st.last_error);
}

static void test_reason_scrubbed(void **state)
{
	struct auth *a = new_auth(1, 60);
	struct auth_status st;
	char body[300];

	(void)state;
	begin_ok(a, 0, CC);
	assert_int_equal(finish_json(a, 0, 401, "{\"error\":\"bad secret S3CR3T\"}"), -1);
	assert_clean(a, "S3CR3T");
	auth_status(a, &st);
	assert_string_equal(st.last_error,
			    "token endpoint answered 401: {\"error\":\"bad secret ***\"}");

	/* A secret straddling the excerpt's cut leaves no part behind. */
	memset(body, 'x', sizeof(body));
	memcpy(body + 117, SECRET, strlen(SECRET));
	begin_ok(a, 100, CC);
	assert_int_equal(auth_finish(a, 100, 400, body, sizeof(body), NULL), -1);
	assert_clean(a, "S3C");

	/* Nor in a transport error. */
	begin_ok(a, 200, CC);
	assert_int_equal(auth_finish(a, 200, 0, NULL, 0, "proxy said S3CR3T"), -1);
	assert_clean(a, "S3CR3T");

	/* Nor a token: one held, one refreshing, one just received. */
	begin_ok(a, 300, CC);
	assert_int_equal(
		finish_json(a, 300, 200,
			    "{\"access_token\":\"ACC-TOKEN\",\"refresh_token\":\"REF-TOKEN\"}"),
		0);
	begin_ok(a, 300 + 3240, RT);
	assert_int_equal(finish_json(a, 3540, 400, "ACC-TOKEN REF-TOKEN"), -1);
	assert_clean(a, "ACC-TOKEN");
	assert_clean(a, "REF-TOKEN");
	auth_free(&a);

	/* The secret raw, and as an echoed form shows it, URL-encoded. */
	a = auth_new(ID, "p&ss word", 1, 60);
	assert_non_null(a);
	begin_ok(a, 0, CC);
	assert_int_equal(finish_json(a, 0, 400, "got client_secret=p%26ss%20word"), -1);
	assert_clean(a, "p%26ss%20word");
	begin_ok(a, 100, CC);
	assert_int_equal(finish_json(a, 100, 400, "got p&ss word"), -1);
	assert_clean(a, "p&ss word");
	auth_free(&a);
}

static void test_bad_answers(void **state)
{
	struct auth *a = new_auth(1, 60);
	struct auth_status st;

	(void)state;
	begin_ok(a, 0, CC);
	assert_int_equal(finish_json(a, 0, 200, "<html>hello</html>"), -1);
	auth_status(a, &st);
	assert_int_equal(st.state, AUTH_FAILING);
	assert_non_null(strstr(st.last_error, "not a JSON"));
	assert_null(auth_token(a, 0, NULL));

	begin_ok(a, 100, CC);
	assert_int_equal(finish_json(a, 100, 200, "{\"token_type\":\"bearer\"}"), -1);
	auth_status(a, &st);
	assert_string_equal(st.last_error, "token endpoint answered 200 without an access_token");

	begin_ok(a, 200, CC);
	assert_int_equal(finish_json(a, 200, 200, "{\"access_token\":\"\"}"), -1);
	begin_ok(a, 300, CC);
	assert_int_equal(finish_json(a, 300, 200, "{\"access_token\":42}"), -1);
	begin_ok(a, 400, CC);
	assert_int_equal(auth_finish(a, 400, 200, NULL, 0, NULL), -1);

	/* Control characters do not break the reason's line. */
	begin_ok(a, 500, CC);
	assert_int_equal(finish_json(a, 500, 500, "line1\nline2\r\x1b"), -1);
	auth_status(a, &st);
	assert_string_equal(st.last_error, "token endpoint answered 500: line1?line2??");
	assert_int_equal(st.failures, 6);
	assert_int_equal(st.grants, 0);
	auth_free(&a);
}

/* A fixed secret (SIGHUP) is tried at once, not after the backoff wait. */
static void test_set_secret_cancels_backoff(void **state)
{
	struct auth *a = new_auth(60, 600);
	char *form = NULL;

	(void)state;
	begin_ok(a, 0, CC);
	assert_int_equal(finish_json(a, 0, 401, "{\"detail\":\"bad\"}"), -1);
	assert_true(auth_in_backoff(a, 1));
	assert_int_equal(auth_begin(a, 1, 0, &form), 0);
	assert_int_equal(auth_set_secret(a, "N3W-S3CR3T"), 0);
	assert_false(auth_in_backoff(a, 1));
	form = begin(a, 1, 0);
	assert_non_null(strstr(form, "client_secret=N3W-S3CR3T"));
	assert_null(strstr(form, "client_secret=S3CR3T"));
	free(form);
	assert_int_equal(finish_json(a, 1, 200, "{\"access_token\":\"AT2\"}"), 0);
	assert_string_equal(auth_token(a, 2, NULL), "AT2");
	auth_free(&a);
}

/* Empty credentials are a failure stated once, not a request on every step. */
static void test_no_credentials_never_asks(void **state)
{
	struct auth *a = auth_new("id", "", 1, 2);
	struct auth_status st;
	char *form = NULL;

	(void)state;
	assert_non_null(a);
	auth_status(a, &st);
	assert_int_equal(st.state, AUTH_FAILING);
	assert_non_null(strstr(st.last_error, "KALEIDOSCOPE_API_CLIENT_SECRET"));
	assert_true(st.failing_since > 0);
	for (double t = 0; t < 10000; t += 500)
		assert_int_equal(auth_begin(a, t, 1, &form), 0);
	assert_true(auth_in_backoff(a, 10000));
	assert_int_equal(auth_set_secret(a, "now-set"), 0);
	form = begin(a, 10001, 0);
	assert_non_null(strstr(form, "client_secret=now-set"));
	free(form);
	auth_free(&a);

	a = auth_new("", "secret", 1, 2);
	assert_int_equal(auth_begin(a, 0, 0, &form), 0);
	assert_int_equal(auth_set_secret(a, "other"), 0); /* still no client id */
	assert_int_equal(auth_begin(a, 1, 0, &form), 0);
	auth_free(&a);
}

static void test_state_names(void **state)
{
	(void)state;
	assert_string_equal(auth_state_name(AUTH_STARTING), "starting");
	assert_string_equal(auth_state_name(AUTH_OK), "ok");
	assert_string_equal(auth_state_name(AUTH_FAILING), "failing");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_first_begin_form),
		cmocka_unit_test(test_success_schedule),
		cmocka_unit_test(test_expires_in_default_and_clamp),
		cmocka_unit_test(test_token_charset),
		cmocka_unit_test(test_no_partial_secret_in_reason),
		cmocka_unit_test(test_refresh_uses_refresh_grant),
		cmocka_unit_test(test_failed_refresh_falls_back),
		cmocka_unit_test(test_failure_backoff),
		cmocka_unit_test(test_backoff_jitter_varies),
		cmocka_unit_test(test_one_outstanding),
		cmocka_unit_test(test_invalidate),
		cmocka_unit_test(test_force),
		cmocka_unit_test(test_reason_scrubbed),
		cmocka_unit_test(test_bad_answers),
		cmocka_unit_test(test_set_secret_cancels_backoff),
		cmocka_unit_test(test_no_credentials_never_asks),
		cmocka_unit_test(test_state_names),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
