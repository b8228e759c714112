/*
 * auth: the upstream token state machine.
 *
 * Owns the client secret, the access and refresh tokens and the schedule of
 * the next token request.  It performs no I/O: the upstream worker asks
 * auth_begin() for a form body, does the POST, and hands the answer to
 * auth_finish().  Keeping the HTTP out makes every timing rule testable with
 * a fake clock.
 *
 * Times called `now` are the caller's monotonic clock.  The status snapshot
 * reports wall-clock times, so every call records the offset between the
 * wall clock and the caller's clock.
 *
 * Secrets live in malloc'd copies that are zeroed before they are freed, and
 * every failure reason is scrubbed of them before it is stored.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>

#include "auth.h"
#include "secret.h"

#define DEFAULT_LIFETIME 3600.0
#define LIFETIME_MIN 1.0
#define LIFETIME_MAX (366.0 * 86400.0)
#define REFRESH_LEAD_MAX 600.0
#define BODY_EXCERPT 120

enum grant { GRANT_CLIENT, GRANT_REFRESH };

struct auth {
	pthread_mutex_t mtx;
	char *client_id;
	char *secret;
	char *secret_esc; /* the secret URL-encoded, as an echoed form shows it */
	double retry_min, retry_max;
	unsigned seed; /* rand_r state for the backoff jitter */

	char *access;      /* NULL without a token */
	char *refresh;     /* NULL without a refresh token */
	unsigned gen;      /* bumped with every new access token */
	double expiry;     /* caller clock */
	double refresh_at; /* caller clock */

	int busy; /* a request is outstanding */
	enum grant busy_grant;
	int retry_set; /* after a failure: wait for retry_at */
	double retry_at;
	unsigned nfail; /* consecutive failures of client grants: the backoff step */

	double wall_offset; /* wall clock minus caller clock, from the last call */
	int last_failed;    /* the last finished request failed */
	char last_error[256];
	double failing_since; /* wall clock */
	unsigned long grants, refreshes, failures;
};

static int token_chars_ok(const char *t)
{
	for (; *t != '\0'; t++)
		if (*t <= ' ' || *t > '~')
			return 0;
	return 1;
}

static double wall_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Called under the lock by every function that is given `now`. */
static void note_clock(struct auth *a, double now)
{
	a->wall_offset = wall_now() - now;
}

static int token_valid(const struct auth *a, double now)
{
	return a->access != NULL && now < a->expiry;
}

/*
 * Without a client id or secret there is nothing to ask the API with: say so
 * as the failure, and wait (forever, or until auth_set_secret()) instead of
 * sending empty credentials on every backoff step.
 */
static void no_credentials_check(struct auth *a)
{
	if (a->client_id[0] != '\0' && a->secret[0] != '\0')
		return;
	a->retry_set = 1;
	a->retry_at = INFINITY;
	a->last_failed = 1;
	a->failing_since = wall_now();
	snprintf(a->last_error, sizeof(a->last_error),
		 "no API client credentials: set KALEIDOSCOPE_API_CLIENT_ID and "
		 "KALEIDOSCOPE_API_CLIENT_SECRET (or client_secret_file)");
}

struct auth *auth_new(const char *client_id, const char *client_secret, unsigned retry_min,
		      unsigned retry_max)
{
	struct auth *a = NULL;
	char *esc = NULL;
	struct timespec ts;

	if (client_id == NULL || client_secret == NULL) {
		errno = EINVAL;
		return NULL;
	}
	a = calloc(1, sizeof(*a));
	if (a == NULL)
		goto fail;
	if (pthread_mutex_init(&a->mtx, NULL) != 0) {
		free(a);
		a = NULL;
		goto fail;
	}
	a->client_id = strdup(client_id);
	a->secret = strdup(client_secret);
	esc = curl_easy_escape(NULL, client_secret, 0);
	if (a->client_id == NULL || a->secret == NULL || esc == NULL)
		goto fail;
	/* curl's buffer must be freed by curl: copy it to keep one free path. */
	a->secret_esc = strdup(esc);
	if (a->secret_esc == NULL)
		goto fail;
	explicit_bzero(esc, strlen(esc));
	curl_free(esc);
	esc = NULL;

	/* A zero minimum would retry in a tight loop. */
	a->retry_min = retry_min > 0 ? retry_min : 1;
	a->retry_max = retry_max > a->retry_min ? retry_max : a->retry_min;
	if (getrandom(&a->seed, sizeof(a->seed), GRND_NONBLOCK) != (ssize_t)sizeof(a->seed)) {
		clock_gettime(CLOCK_MONOTONIC, &ts);
		a->seed = (unsigned)ts.tv_nsec ^ (unsigned)ts.tv_sec;
	}
	no_credentials_check(a);
	return a;
fail:
	if (esc != NULL) {
		explicit_bzero(esc, strlen(esc));
		curl_free(esc);
	}
	auth_free(&a);
	errno = ENOMEM;
	return NULL;
}

void auth_free(struct auth **ap)
{
	struct auth *a = *ap;

	if (a == NULL)
		return;
	free(a->client_id);
	secret_free(&a->secret);
	secret_free(&a->secret_esc);
	secret_free(&a->access);
	secret_free(&a->refresh);
	pthread_mutex_destroy(&a->mtx);
	free(a);
	*ap = NULL;
}

int auth_set_secret(struct auth *a, const char *client_secret)
{
	char *copy = strdup(client_secret), *esc = NULL, *esc_copy = NULL;
	int rc = -1;

	if (copy == NULL || (esc = curl_easy_escape(NULL, client_secret, 0)) == NULL ||
	    (esc_copy = strdup(esc)) == NULL)
		goto out;
	pthread_mutex_lock(&a->mtx);
	secret_free(&a->secret);
	secret_free(&a->secret_esc);
	a->secret = copy;
	a->secret_esc = esc_copy;
	copy = esc_copy = NULL;
	/* A new secret deserves an attempt now, not after the backoff. */
	a->nfail = 0;
	a->retry_set = 0;
	no_credentials_check(a);
	pthread_mutex_unlock(&a->mtx);
	rc = 0;
out:
	if (esc != NULL) {
		explicit_bzero(esc, strlen(esc));
		curl_free(esc);
	}
	secret_free(&copy);
	secret_free(&esc_copy);
	return rc;
}

/* The form for the grant, malloc'd; NULL on ENOMEM. */
static char *build_form(const struct auth *a, enum grant g)
{
	char *e1 = NULL, *e2 = NULL, *form = NULL;
	size_t n;

	if (g == GRANT_REFRESH) {
		e1 = curl_easy_escape(NULL, a->refresh, 0);
		if (e1 == NULL)
			goto fail;
		n = strlen("grant_type=refresh_token&refresh_token=") + strlen(e1) + 1;
		form = malloc(n);
		if (form == NULL)
			goto fail;
		snprintf(form, n, "grant_type=refresh_token&refresh_token=%s", e1);
	} else {
		e1 = curl_easy_escape(NULL, a->client_id, 0);
		e2 = curl_easy_escape(NULL, a->secret, 0);
		if (e1 == NULL || e2 == NULL)
			goto fail;
		n = strlen("grant_type=client_credentials&client_id=&client_secret=") + strlen(e1) +
		    strlen(e2) + 1;
		form = malloc(n);
		if (form == NULL)
			goto fail;
		snprintf(form, n, "grant_type=client_credentials&client_id=%s&client_secret=%s", e1,
			 e2);
	}
fail:
	if (e1 != NULL) {
		explicit_bzero(e1, strlen(e1));
		curl_free(e1);
	}
	if (e2 != NULL) {
		explicit_bzero(e2, strlen(e2));
		curl_free(e2);
	}
	return form;
}

int auth_begin(struct auth *a, double now, int force, char **form)
{
	int due, ret = 0;
	enum grant g;

	*form = NULL;
	pthread_mutex_lock(&a->mtx);
	note_clock(a, now);
	if (a->busy)
		goto out;
	if (a->retry_set) {
		/* A forced request may cut a wait short only while the old token
		 * still serves; without one, callers are failing fast anyway. */
		due = now >= a->retry_at || (force && token_valid(a, now));
	} else if (token_valid(a, now)) {
		due = force || now >= a->refresh_at;
	} else {
		due = 1;
	}
	if (!due)
		goto out;
	g = a->refresh != NULL ? GRANT_REFRESH : GRANT_CLIENT;
	*form = build_form(a, g);
	if (*form == NULL)
		goto out;
	a->busy = 1;
	a->busy_grant = g;
	a->retry_set = 0;
	ret = 1;
out:
	pthread_mutex_unlock(&a->mtx);
	return ret;
}

/* s with every occurrence of needle replaced by "***"; malloc'd, NULL on ENOMEM. */
static char *replace_all(const char *s, const char *needle)
{
	size_t nl, count = 0, len;
	const char *p, *q;
	char *out, *w;

	if (needle == NULL || *needle == '\0')
		return strdup(s);
	nl = strlen(needle);
	for (p = s; (q = strstr(p, needle)) != NULL; p = q + nl)
		count++;
	len = strlen(s) + count * 3 + 1; /* an upper bound: needles shrink or grow to 3 */
	out = malloc(len);
	if (out == NULL)
		return NULL;
	w = out;
	for (p = s; (q = strstr(p, needle)) != NULL; p = q + nl) {
		memcpy(w, p, (size_t)(q - p));
		w += q - p;
		memcpy(w, "***", 3);
		w += 3;
	}
	strcpy(w, p);
	return out;
}

/*
 * s with the secret and every token in sight replaced by "***"; malloc'd,
 * NULL on ENOMEM.
 */
static char *scrub(const struct auth *a, const char *s, const char *got_access,
		   const char *got_refresh)
{
	const char *needles[] = { a->secret,  a->secret_esc, a->access,
				  a->refresh, got_access,    got_refresh };
	char *cur, *next;
	size_t i;

	cur = strdup(s);
	for (i = 0; cur != NULL && i < sizeof(needles) / sizeof(needles[0]); i++) {
		next = replace_all(cur, needles[i]);
		explicit_bzero(cur, strlen(cur));
		free(cur);
		cur = next;
	}
	return cur;
}

static size_t longest_secret(const struct auth *a)
{
	const char *needles[] = { a->secret, a->secret_esc, a->access, a->refresh };
	size_t i, n, max = 0;

	for (i = 0; i < sizeof(needles) / sizeof(needles[0]); i++) {
		n = needles[i] != NULL ? strlen(needles[i]) : 0;
		if (n > max)
			max = n;
	}
	return max;
}

/* The length of raw[0..n) without a tail that starts one of the secrets
 * (raw is cut there too). */
static size_t cut_partial_secrets(const struct auth *a, char *raw, size_t n)
{
	const char *needles[] = { a->secret, a->secret_esc, a->access, a->refresh };
	int again = 1;

	while (again) {
		again = 0;
		for (size_t i = 0; i < sizeof(needles) / sizeof(needles[0]); i++) {
			size_t nl = needles[i] != NULL ? strlen(needles[i]) : 0;

			for (size_t k = nl > 0 ? nl - 1 : 0; k > 0; k--) {
				if (k <= n && memcmp(raw + n - k, needles[i], k) == 0) {
					n -= k;
					explicit_bzero(raw + n, k);
					again = 1;
					break;
				}
			}
		}
	}
	return n;
}

/*
 * The first BODY_EXCERPT bytes of an error body, cut on a UTF-8 boundary,
 * with control characters made visible as '?' so the reason stays one line.
 * It is scrubbed before it is cut, so a cut never leaves part of a secret;
 * that is why a little more than the excerpt is read.  0, or -1 on ENOMEM.
 */
static int body_excerpt(const struct auth *a, char *dst, const char *body, size_t len)
{
	size_t n = BODY_EXCERPT + longest_secret(a), i;
	char *raw, *clean;

	if (body == NULL)
		len = 0;
	if (n > len)
		n = len;
	raw = malloc(n + 1);
	if (raw == NULL)
		return -1;
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)body[i];
		raw[i] = c < 0x20 || c == 0x7F ? '?' : (char)c;
	}
	raw[n] = '\0';
	/* A secret cut by the window's end is no whole secret to scrub, and the
	 * scrubbing before it shortens the text enough to pull that part into
	 * the excerpt: end the window before any such start of a secret. */
	n = cut_partial_secrets(a, raw, n);
	clean = scrub(a, raw, NULL, NULL);
	explicit_bzero(raw, n);
	free(raw);
	if (clean == NULL)
		return -1;
	n = strlen(clean);
	if (n > BODY_EXCERPT) {
		n = BODY_EXCERPT;
		while (n > 0 && ((unsigned char)clean[n] & 0xC0) == 0x80)
			n--;
	}
	memcpy(dst, clean, n);
	dst[n] = '\0';
	free(clean);
	return 0;
}

/* Stores the failure reason in last_error, scrubbed whole before it is cut
 * to fit. */
static void set_reason(struct auth *a, const char *reason, const char *got_access,
		       const char *got_refresh)
{
	char *clean = scrub(a, reason, got_access, got_refresh);

	if (clean == NULL) {
		snprintf(a->last_error, sizeof(a->last_error),
			 "token request failed (out of memory while recording why)");
		return;
	}
	snprintf(a->last_error, sizeof(a->last_error), "%s", clean);
	free(clean);
}

/* A string member that is present and non-empty, else NULL. */
static const char *json_string(const cJSON *obj, const char *name)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, name);

	if (!cJSON_IsString(it) || it->valuestring == NULL || it->valuestring[0] == '\0')
		return NULL;
	return it->valuestring;
}

static void record_failure(struct auth *a, double now, const char *reason, const char *got_access,
			   const char *got_refresh)
{
	double step, delay;

	set_reason(a, reason, got_access, got_refresh);
	a->failures++;
	if (!a->last_failed)
		a->failing_since = now + a->wall_offset;
	a->last_failed = 1;
	a->retry_set = 1;
	if (a->busy_grant == GRANT_REFRESH) {
		/* The refresh token is likely dead; the client credentials may not
		 * be, so try them at once before backing off. */
		secret_free(&a->refresh);
		a->retry_at = now;
		return;
	}
	step = a->retry_min * ldexp(1.0, a->nfail < 60 ? (int)a->nfail : 60);
	if (step > a->retry_max)
		step = a->retry_max;
	delay = step * (0.5 + 0.5 * (double)rand_r(&a->seed) / (double)RAND_MAX);
	a->retry_at = now + delay;
	if (a->nfail < 60)
		a->nfail++;
}

int auth_finish(struct auth *a, double now, long status, const char *body, size_t len,
		const char *transport_error)
{
	char excerpt[BODY_EXCERPT + 1], reason[512];
	const char *got_access = NULL, *got_refresh = NULL;
	char *new_access = NULL, *new_refresh = NULL;
	const cJSON *exp;
	cJSON *json = NULL;
	double lifetime = DEFAULT_LIFETIME, lead;
	int ret = -1;

	pthread_mutex_lock(&a->mtx);
	note_clock(a, now);
	if (!a->busy)
		goto out; /* nothing outstanding: a caller bug; change nothing */

	if (status == 0) {
		snprintf(reason, sizeof(reason), "token endpoint unreachable: %s",
			 transport_error != NULL ? transport_error : "unknown error");
		goto fail;
	}
	if (status < 200 || status > 299) {
		if (body_excerpt(a, excerpt, body, len) == 0)
			snprintf(reason, sizeof(reason), "token endpoint answered %ld: %s", status,
				 excerpt);
		else
			snprintf(reason, sizeof(reason), "token endpoint answered %ld", status);
		goto fail;
	}
	json = body != NULL ? cJSON_ParseWithLength(body, len) : NULL;
	if (!cJSON_IsObject(json)) {
		snprintf(reason, sizeof(reason),
			 "token endpoint answered %ld with a body that is not a JSON object",
			 status);
		goto fail;
	}
	got_access = json_string(json, "access_token");
	got_refresh = json_string(json, "refresh_token");
	if (got_access == NULL) {
		snprintf(reason, sizeof(reason),
			 "token endpoint answered %ld without an access_token", status);
		goto fail;
	}
	/* Tokens go into header lines: printable ASCII only, no spaces. */
	if (!token_chars_ok(got_access) || (got_refresh != NULL && !token_chars_ok(got_refresh))) {
		snprintf(reason, sizeof(reason),
			 "token endpoint answered %ld with a token holding characters a header "
			 "cannot carry",
			 status);
		goto fail;
	}
	exp = cJSON_GetObjectItemCaseSensitive(json, "expires_in");
	/* A lifetime that is no lifetime (zero, negative, infinite) counts as
	 * absent: honouring it would mean a token request every second, or
	 * never a refresh.  If the token really is dead, the API's 401 says so
	 * (and such re-authentication is rate-limited upstream). */
	if (cJSON_IsNumber(exp) && isfinite(exp->valuedouble) && exp->valuedouble > 0)
		lifetime = exp->valuedouble < LIFETIME_MIN ? LIFETIME_MIN :
			   exp->valuedouble > LIFETIME_MAX ? LIFETIME_MAX :
							     exp->valuedouble;

	new_access = strdup(got_access);
	new_refresh = got_refresh != NULL ? strdup(got_refresh) : NULL;
	if (new_access == NULL || (got_refresh != NULL && new_refresh == NULL)) {
		snprintf(reason, sizeof(reason), "out of memory storing the token");
		goto fail;
	}

	secret_free(&a->access);
	a->access = new_access;
	new_access = NULL;
	/* A refresh answer without a refresh token leaves the old one usable;
	 * a client grant without one leaves none. */
	if (new_refresh != NULL || a->busy_grant == GRANT_CLIENT) {
		secret_free(&a->refresh);
		a->refresh = new_refresh;
		new_refresh = NULL;
	}
	a->gen++;
	a->expiry = now + lifetime;
	lead = 0.10 * lifetime < REFRESH_LEAD_MAX ? 0.10 * lifetime : REFRESH_LEAD_MAX;
	a->refresh_at = a->expiry - lead;
	if (a->busy_grant == GRANT_REFRESH)
		a->refreshes++;
	else
		a->grants++;
	a->retry_set = 0;
	a->nfail = 0;
	a->last_failed = 0;
	a->failing_since = 0;
	a->last_error[0] = '\0';
	ret = 0;
	goto done;
fail:
	record_failure(a, now, reason, got_access, got_refresh);
done:
	a->busy = 0;
out:
	secret_free(&new_access);
	secret_free(&new_refresh);
	if (json != NULL) {
		/* cJSON frees without zeroing; wipe the tokens it parsed. */
		if (got_access != NULL)
			explicit_bzero((char *)got_access, strlen(got_access));
		if (got_refresh != NULL)
			explicit_bzero((char *)got_refresh, strlen(got_refresh));
		cJSON_Delete(json);
	}
	pthread_mutex_unlock(&a->mtx);
	return ret;
}

const char *auth_token(struct auth *a, double now, unsigned *gen)
{
	const char *t = NULL;

	pthread_mutex_lock(&a->mtx);
	note_clock(a, now);
	if (token_valid(a, now))
		t = a->access;
	if (gen != NULL)
		*gen = a->gen;
	pthread_mutex_unlock(&a->mtx);
	return t;
}

void auth_invalidate(struct auth *a, unsigned gen)
{
	pthread_mutex_lock(&a->mtx);
	/* After a 401 the refresh token may be revoked too: start afresh from
	 * the client credentials. */
	if (gen == a->gen && a->access != NULL) {
		secret_free(&a->access);
		secret_free(&a->refresh);
	}
	pthread_mutex_unlock(&a->mtx);
}

double auth_next_due(struct auth *a, double now)
{
	double d;

	pthread_mutex_lock(&a->mtx);
	note_clock(a, now);
	if (a->busy)
		d = -1;
	else if (a->retry_set)
		d = a->retry_at - now;
	else if (token_valid(a, now))
		d = a->refresh_at - now;
	else
		d = 0;
	pthread_mutex_unlock(&a->mtx);
	return d > 0 || d == -1 ? d : 0;
}

int auth_in_backoff(struct auth *a, double now)
{
	int r;

	pthread_mutex_lock(&a->mtx);
	note_clock(a, now);
	r = !a->busy && a->retry_set && now < a->retry_at && !token_valid(a, now);
	pthread_mutex_unlock(&a->mtx);
	return r;
}

int auth_busy(struct auth *a)
{
	int r;

	pthread_mutex_lock(&a->mtx);
	r = a->busy;
	pthread_mutex_unlock(&a->mtx);
	return r;
}

void auth_status(struct auth *a, struct auth_status *out)
{
	double now;

	pthread_mutex_lock(&a->mtx);
	/* No `now` here: estimate the caller's clock from the last offset. */
	now = wall_now() - a->wall_offset;
	memset(out, 0, sizeof(*out));
	if (token_valid(a, now)) {
		out->state = AUTH_OK;
		out->expires_at = a->expiry + a->wall_offset;
	} else if (a->last_failed) {
		out->state = AUTH_FAILING;
	} else {
		out->state = AUTH_STARTING;
	}
	snprintf(out->last_error, sizeof(out->last_error), "%s", a->last_error);
	out->failing_since = a->failing_since;
	out->grants = a->grants;
	out->refreshes = a->refreshes;
	out->failures = a->failures;
	pthread_mutex_unlock(&a->mtx);
}

const char *auth_state_name(enum auth_state s)
{
	switch (s) {
	case AUTH_STARTING:
		return "starting";
	case AUTH_OK:
		return "ok";
	case AUTH_FAILING:
		return "failing";
	}
	return "unknown";
}
