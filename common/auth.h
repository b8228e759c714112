/*
 * auth: the upstream token, as a state machine with no I/O.
 *
 * It decides when a token request is due (first grant, refresh ahead of
 * expiry, retry after failure with capped exponential backoff and jitter),
 * builds its form body, and digests the answer.  The upstream worker performs
 * the HTTP and is the only caller of the mutating functions; the status
 * snapshot may be read from any thread.  Exactly one request is outstanding
 * at a time: auth_begin() refuses while one is.
 */
#ifndef KD_AUTH_H
#define KD_AUTH_H

#include <stddef.h>

struct auth;

enum auth_state {
	AUTH_STARTING = 0, /* no valid token, no failure since: the first grant, or a
			    * new one after auth_invalidate(), is pending */
	AUTH_OK,           /* a valid token is held */
	AUTH_FAILING,      /* last attempt failed and no valid token is held */
};

/* An empty client id or secret makes a machine that never asks: it is
 * FAILING with a reason saying what to set (auth_set_secret() can fix it). */
struct auth *auth_new(const char *client_id, const char *client_secret, unsigned retry_min,
		      unsigned retry_max);
void auth_free(struct auth **a);

/*
 * Replaces the client secret (after an operator fixed or rotated it) and
 * cancels any backoff wait, so the next auth_begin() tries at once.  The
 * token held, if any, stays in use.  0, or -1 on ENOMEM (nothing changed).
 */
int auth_set_secret(struct auth *a, const char *client_secret);

/*
 * If a token request is due at time now (seconds, monotonic clock) and none
 * is outstanding, marks one outstanding, writes a malloc'd form body to
 * *form (grant_type=client_credentials&client_id=..&client_secret=.. or
 * grant_type=refresh_token&refresh_token=..; values URL-encoded) and returns
 * 1.  Otherwise 0.  force asks for a request now even if not yet due (after
 * a 401), still never two at once and never inside a backoff wait without a
 * valid token.  The form may hold the secret: explicit_bzero it before free.
 */
int auth_begin(struct auth *a, double now, int force, char **form);

/*
 * Digests the outcome of the outstanding request: HTTP status and body, or a
 * transport error text (status 0).  On success stores the token and schedules
 * the refresh at expiry minus min(10% of the lifetime, 600 s); returns 0.  On
 * failure records the reason (never containing the secret), schedules the retry,
 * and returns -1.  A failed refresh_token grant falls back to client
 * credentials at once (next auth_begin) before backing off.  Also -1, changing
 * nothing, when no request is outstanding.
 */
int auth_finish(struct auth *a, double now, long status, const char *body, size_t len,
		const char *transport_error);

/*
 * The access token valid at now, or NULL.  *gen (may be NULL) receives a
 * number that changes with every new token, for auth_invalidate().  The
 * string stays valid until the next auth_finish(), auth_invalidate() or
 * auth_free(), so only the thread making those calls may hold on to it.
 */
const char *auth_token(struct auth *a, double now, unsigned *gen);

/* A request made with token generation gen was answered 401: forget that
 * token, and the refresh token (a 401 may mean it is revoked too), so the next
 * auth_begin(force) asks with the client credentials.  Ignored when gen is no
 * longer current. */
void auth_invalidate(struct auth *a, unsigned gen);

/* Seconds from now until auth_begin() has something to do; -1 when nothing is scheduled. */
double auth_next_due(struct auth *a, double now);

/* True while no token is held and a retry is being waited for: callers fail fast. */
int auth_in_backoff(struct auth *a, double now);
/* True while a request is outstanding. */
int auth_busy(struct auth *a);

struct auth_status {
	enum auth_state state;
	char last_error[256]; /* empty when none */
	double failing_since; /* wall-clock unix time of the first failure in a row; 0 after a success */
	double expires_at;       /* wall-clock unix time; 0 without a token */
	unsigned long grants;    /* client_credentials grants obtained */
	unsigned long refreshes; /* refresh_token grants obtained */
	unsigned long failures;
};
/* A consistent snapshot; thread-safe.  With no `now` given, validity is judged
 * at the caller's clock as estimated from the last call that passed one. */
void auth_status(struct auth *a, struct auth_status *out);

const char *auth_state_name(enum auth_state s);

#endif
