/*
 * tokens: the gateway's local tokens, each bound to an account.
 *
 * A login hands out an access token (lifetime as configured) and a
 * refresh token (REFRESH_LIFETIME); both are random (localtoken_new: 256
 * bits) and live only in memory, so a restart logs everyone out, which
 * the SDKs handle by asking again.  Each token holds a reference to its
 * account, so a check returns who it is and what they may do in one
 * lookup.  A reload rebinds every token to the account of the same name
 * in the new set, and drops it when the account is gone or its secret
 * changed: revocation takes effect at once.
 *
 * Sharded by the token's own random characters, a mutex each; every
 * comparison of a presented token runs in constant time.  Time is the
 * caller's monotonic clock in seconds.
 */
#ifndef KD_TOKENS_H
#define KD_TOKENS_H

#include <stddef.h>

#include "localtoken.h"

#define TOKENS_REFRESH_LIFETIME (7 * 24 * 3600.0)

struct tokens;
struct account;
struct accounts;

/* max: live tokens at most (access and refresh each count). NULL on ENOMEM. */
struct tokens *tokens_new(size_t max);
void tokens_free(struct tokens **t);

/*
 * A new pair for account a: access and refresh each hold LOCALTOKEN_LEN
 * + 1 bytes.  0; -1 when no randomness or memory, or the store is full of
 * live tokens (expired ones are dropped first).
 */
int tokens_issue(struct tokens *t, struct account *a, double now, double lifetime, char *access,
		 char *refresh);

/* The account an access token belongs to, referenced (account_unref()
 * it), or NULL when the token is unknown, expired or revoked. */
struct account *tokens_check(struct tokens *t, const char *token, double now);

/* Trades a refresh token for a new pair (the old refresh token is used up).
 * The account, referenced, or NULL when the refresh token is not valid
 * (then nothing is issued); *full set when the store is full. */
struct account *tokens_refresh(struct tokens *t, const char *refresh, double now, double lifetime,
			       char *access, char *new_refresh, int *full);

/* After a reload: every token moves to the account of its name in now, or
 * goes when there is none or its secret changed.  The number dropped. */
size_t tokens_rebind(struct tokens *t, const struct accounts *now);

/* Drops expired tokens; the number dropped. */
size_t tokens_sweep(struct tokens *t, double now);
/* Live tokens (access and refresh). */
size_t tokens_count(struct tokens *t);

#endif
