/*
 * gateway: who is asking, for the shared-lab gateway.
 *
 * Owns the accounts in force (swapped on reload), the local tokens, and
 * the login threads: a secret is checked with yescrypt, slow by design,
 * so never on a thread that serves clients.  A login parks its request;
 * a login thread checks the secret, issues the tokens and unparks it.
 *
 * Exists only when [gateway] accounts is set; without it kaleidod is the
 * personal daemon and hands any local client a token.
 */
#ifndef KD_GATEWAY_H
#define KD_GATEWAY_H

#include <stddef.h>

struct config;
struct account;
struct localtoken_request;
struct gateway;
struct gw_login;

/* Loads cfg->accounts_file and starts the login threads.  NULL with why. */
struct gateway *gateway_new(const struct config *cfg, char *err, size_t errlen);
/* Answers every login still queued ("stopping") and stops the threads;
 * no request stays parked on the gateway after it. */
void gateway_stop(struct gateway *g);
void gateway_free(struct gateway **g);

/* Reads the accounts file again; tokens of removed accounts and of changed
 * secrets are revoked at once.  0 (*naccounts, *revoked set), or -1 with
 * why (the accounts in force stay). */
int gateway_reload(struct gateway *g, size_t *naccounts, size_t *revoked, char *err, size_t errlen);
/* Drops expired tokens; called now and then. */
void gateway_tick(struct gateway *g);

/* The bearer token of a request (X-Kal-Authorization preferred over
 * Authorization), or NULL when neither carries one. */
const char *gateway_bearer(const char *x_kal_authorization, const char *authorization);
/* The account a token belongs to, referenced, or NULL. */
struct account *gateway_check(struct gateway *g, const char *token);

enum gw_login_result {
	GW_LOGIN_OK,       /* *answer: the token answer (JSON) */
	GW_LOGIN_DENIED,   /* unknown account, wrong secret, or a refresh token not valid */
	GW_LOGIN_GUESSING, /* too many failures from the address: refused unhashed */
	GW_LOGIN_FULL,     /* too many live tokens */
	GW_LOGIN_STOPPING, /* the daemon is stopping */
	GW_LOGIN_ERROR,    /* no memory or randomness */
};

/*
 * Starts a token request from client address ip: a refresh is answered at
 * once (*parked 0), and so is a login from an address that failed too
 * often (loginguard.c); a client_credentials grant parks the caller
 * (park(arg)) and a login thread unparks it (unpark(arg)) once done.
 * Takes the request's fields (req is cleared).  NULL on ENOMEM.
 */
struct gw_login *gateway_login(struct gateway *g, struct localtoken_request *req, const char *ip,
			       void (*park)(void *), void (*unpark)(void *), void *arg,
			       int *parked);
/* Once unparked (or not parked): the result, the answer (malloc'd), the
 * account's name (for the audit trail; "" when none) and, for GUESSING,
 * the seconds until the address may try again; frees the login. */
enum gw_login_result gateway_login_result(struct gw_login **l, char **answer, char *name,
					  size_t namelen, double *retry_after);

/* Adds {"tokens": N, "accounts": {"NAME": {"requests": N, ...}, ...}} to
 * into (a cJSON object; nothing when NULL), for /_kaleidod/stats. */
struct cJSON;
void gateway_stats(struct gateway *g, struct cJSON *into);
/* fn once per account of the current file, under the gateway's lock (fn
 * must not call back into the gateway). */
struct account;
typedef void (*gateway_account_fn)(void *arg, const struct account *a);
void gateway_each_account(struct gateway *g, gateway_account_fn fn, void *arg);

/* For a cluster's shared limits: fn(arg, name, n) for each account that
 * took n > 0 tokens since the last call (account_take_untold()); fn runs
 * under the gateway's lock and must not block. */
typedef void (*gateway_usage_fn)(void *arg, const char *name, unsigned n);
void gateway_take_untold(struct gateway *g, gateway_usage_fn fn, void *arg);
/* Another instance's n requests of the named account, spent from its
 * bucket here (now on CLOCK_MONOTONIC, as requests are).  0, or -1 when
 * this instance has no such account. */
int gateway_spend(struct gateway *g, const char *name, unsigned n, double now);
/* The same for failed logins: fn(arg, ip, n) for each address with n
 * failures since the last call, and another instance's n failures from
 * ip counted here (the guard of failed logins is the cluster's). */
void gateway_take_untold_failures(struct gateway *g, gateway_usage_fn fn, void *arg);
void gateway_failed_elsewhere(struct gateway *g, const char *ip, unsigned n);
/* Tokens (access and refresh) issued and still valid. */
size_t gateway_tokens(struct gateway *g);

#endif
