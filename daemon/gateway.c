/*
 * gateway: accounts in force, tokens, and the login threads.
 *
 * Locks: g->lock guards the accounts set pointer and the login queue;
 * tokens.c has its own shard locks, taken under g->lock only by a reload
 * (tokens_rebind) and never the other way round.
 */
#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <time.h>

#include "accounts.h"
#include "check.h"
#include "clock.h"
#include "config.h"
#include "gateway.h"
#include "localtoken.h"
#include "log.h"
#include "loginguard.h"
#include "tokens.h"

#define LOGIN_THREADS 2
#define MAX_TOKENS (256 * 1024)
#define FAILURE_REPORT 60.0 /* s between log lines about failed logins */

struct gw_login {
	unsigned magic;
#define LOGIN_MAGIC 0x6a11d0c5u
	struct gateway *g;
	struct localtoken_request req;
	void (*unpark)(void *);
	void *arg;
	enum gw_login_result result;
	char *answer;
	char ip[48];
	double retry_after;
	char name[ACCOUNTS_NAME_MAX + 1];
	STAILQ_ENTRY(gw_login) q;
};

#define UNTOLD_MAX 64

struct gateway {
	unsigned magic;
#define GATEWAY_MAGIC 0x3e7b0a91u
	const struct config *cfg;
	struct tokens *tokens;
	struct loginguard *guard;
	pthread_mutex_t lock;
	pthread_cond_t work;
	struct accounts *accounts; /* in force */
	STAILQ_HEAD(, gw_login) queue;
	int stopping;
	pthread_t threads[LOGIN_THREADS];
	int nthreads;
	/* Failed logins since the last report, and those refused unhashed
	 * (under lock). */
	unsigned long failures, guessing;
	double last_report;
	char last_failed[ACCOUNTS_NAME_MAX + 1];
	/* Failed logins by address not yet told to a cluster (under lock);
	 * past UNTOLD_MAX addresses, the rest go untold. */
	struct {
		char ip[48]; /* as a login has it */
		unsigned n;
	} untold[UNTOLD_MAX];
	int nuntold;
};

/* The tokens for a, as the endpoint's answer. */
static enum gw_login_result grant(struct gateway *g, struct account *a, struct gw_login *l)
{
	char access[LOCALTOKEN_LEN + 1], refresh[LOCALTOKEN_LEN + 1];
	enum gw_login_result r = GW_LOGIN_OK;

	if (tokens_issue(g->tokens, a, clock_mono(), g->cfg->token_lifetime, access, refresh) < 0)
		r = GW_LOGIN_FULL;
	else if ((l->answer = localtoken_answer_with(access, refresh, g->cfg->token_lifetime)) ==
		 NULL)
		r = GW_LOGIN_ERROR;
	explicit_bzero(access, sizeof(access));
	explicit_bzero(refresh, sizeof(refresh));
	if (r == GW_LOGIN_OK)
		account_count(a, ACCOUNT_LOGINS);
	return r;
}

static void note_failure(struct gateway *g, const char *name, const char *ip)
{
	int i;

	loginguard_failed(g->guard, ip, clock_mono());
	pthread_mutex_lock(&g->lock);
	for (i = 0; i < g->nuntold && strcmp(g->untold[i].ip, ip) != 0; i++)
		;
	if (i == g->nuntold && i < UNTOLD_MAX) {
		snprintf(g->untold[i].ip, sizeof(g->untold[i].ip), "%s", ip);
		g->untold[i].n = 0;
		g->nuntold++;
	}
	if (i < g->nuntold)
		g->untold[i].n++;
	g->failures++;
	snprintf(g->last_failed, sizeof(g->last_failed), "%s", name);
	pthread_mutex_unlock(&g->lock);
}

/* A client_credentials grant, on a login thread. */
static void check_login(struct gateway *g, struct gw_login *l)
{
	const char *id = l->req.client_id ? l->req.client_id : "";
	struct account *a = NULL;
	int ok;

	pthread_mutex_lock(&g->lock);
	if (accounts_find(g->accounts, id) != NULL)
		a = account_ref(accounts_find(g->accounts, id));
	pthread_mutex_unlock(&g->lock);
	ok = account_verify(a, l->req.client_secret ? l->req.client_secret : "");
	if (ok > 0) {
		snprintf(l->name, sizeof(l->name), "%s", account_name(a));
		l->result = grant(g, a, l);
	} else if (ok == 0) {
		l->result = GW_LOGIN_DENIED;
		if (a != NULL)
			account_count(a, ACCOUNT_LOGIN_FAILURES);
		/* A name is not a secret, but a typo may be one: only known names. */
		note_failure(g, a != NULL ? account_name(a) : "(unknown account)", l->ip);
	} else {
		l->result = GW_LOGIN_ERROR;
	}
	account_unref(&a);
}

static void *login_thread(void *arg)
{
	struct gateway *g = arg;

	pthread_mutex_lock(&g->lock);
	for (;;) {
		struct gw_login *l;
		int stopping;

		while (STAILQ_EMPTY(&g->queue) && !g->stopping)
			pthread_cond_wait(&g->work, &g->lock);
		if ((l = STAILQ_FIRST(&g->queue)) == NULL)
			break; /* stopping, and nothing left */
		STAILQ_REMOVE_HEAD(&g->queue, q);
		stopping = g->stopping;
		pthread_mutex_unlock(&g->lock);
		if (stopping)
			l->result = GW_LOGIN_STOPPING;
		else
			check_login(g, l);
		localtoken_request_clear(&l->req);
		/* Nothing of l after this: the request may run and free it. */
		l->unpark(l->arg);
		pthread_mutex_lock(&g->lock);
	}
	pthread_mutex_unlock(&g->lock);
	return NULL;
}

struct gateway *gateway_new(const struct config *cfg, char *err, size_t errlen)
{
	struct gateway *g = calloc(1, sizeof(*g));

	if (g == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	INIT_OBJ(g, GATEWAY_MAGIC);
	g->cfg = cfg;
	pthread_mutex_init(&g->lock, NULL);
	pthread_cond_init(&g->work, NULL);
	STAILQ_INIT(&g->queue);
	if (accounts_load(cfg->accounts_file, &g->accounts, err, errlen) < 0)
		goto fail;
	if ((g->tokens = tokens_new(MAX_TOKENS)) == NULL || (g->guard = loginguard_new()) == NULL) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	for (; g->nthreads < LOGIN_THREADS; g->nthreads++)
		if (pthread_create(&g->threads[g->nthreads], NULL, login_thread, g) != 0) {
			snprintf(err, errlen, "cannot start a login thread");
			goto fail;
		}
	g->last_report = clock_mono();
	return g;
fail:
	gateway_stop(g);
	gateway_free(&g);
	return NULL;
}

void gateway_stop(struct gateway *g)
{
	if (g == NULL)
		return;
	CHECK_OBJ(g, GATEWAY_MAGIC);
	pthread_mutex_lock(&g->lock);
	g->stopping = 1;
	pthread_cond_broadcast(&g->work);
	pthread_mutex_unlock(&g->lock);
	for (int i = 0; i < g->nthreads; i++)
		pthread_join(g->threads[i], NULL);
	g->nthreads = 0;
}

void gateway_free(struct gateway **gp)
{
	struct gateway *g = *gp;

	if (g == NULL)
		return;
	*gp = NULL;
	CHECK_OBJ(g, GATEWAY_MAGIC);
	ASSERT(g->nthreads == 0 && STAILQ_EMPTY(&g->queue));
	tokens_free(&g->tokens);
	loginguard_free(&g->guard);
	accounts_free(&g->accounts);
	pthread_cond_destroy(&g->work);
	pthread_mutex_destroy(&g->lock);
	FINI_OBJ(g);
	free(g);
}

int gateway_reload(struct gateway *g, size_t *naccounts, size_t *revoked, char *err, size_t errlen)
{
	struct accounts *next = NULL, *old;

	CHECK_OBJ(g, GATEWAY_MAGIC);
	if (accounts_load(g->cfg->accounts_file, &next, err, errlen) < 0)
		return -1;
	pthread_mutex_lock(&g->lock);
	accounts_carry(next, g->accounts);
	old = g->accounts;
	g->accounts = next;
	/* Under the lock, so no login grants a token for an account of the
	 * old set after its tokens were rebound. */
	*revoked = tokens_rebind(g->tokens, next);
	pthread_mutex_unlock(&g->lock);
	accounts_free(&old);
	*naccounts = accounts_count(next);
	return 0;
}

void gateway_tick(struct gateway *g)
{
	double now = clock_mono();
	unsigned long n = 0, guessing = 0;
	int swept = 0;
	char last[ACCOUNTS_NAME_MAX + 1] = "";

	CHECK_OBJ(g, GATEWAY_MAGIC);
	pthread_mutex_lock(&g->lock);
	if (now - g->last_report >= FAILURE_REPORT) {
		n = g->failures;
		guessing = g->guessing;
		memcpy(last, g->last_failed, sizeof(last));
		g->failures = 0;
		g->guessing = 0;
		swept = 1;
		g->last_report = now;
	}
	pthread_mutex_unlock(&g->lock);
	if (!swept)
		return;
	tokens_sweep(g->tokens, now);
	if (n > 0 || guessing > 0)
		log_warnx("%lu failed login%s in the last minute (the last for %s), and %lu "
			  "more refused unchecked from addresses that failed too often",
			  n, n == 1 ? "" : "s", n > 0 ? last : "none", guessing);
}

/* "Bearer TOKEN" (the scheme in any case), the token; else NULL. */
static const char *bearer(const char *v)
{
	if (v == NULL)
		return NULL;
	v += strspn(v, " \t");
	if (strncasecmp(v, "Bearer", 6) != 0 || (v[6] != ' ' && v[6] != '\t'))
		return NULL;
	v += 6;
	v += strspn(v, " \t");
	return *v != '\0' ? v : NULL;
}

const char *gateway_bearer(const char *x_kal_authorization, const char *authorization)
{
	const char *t = bearer(x_kal_authorization);

	return t != NULL ? t : bearer(authorization);
}

struct account *gateway_check(struct gateway *g, const char *token)
{
	CHECK_OBJ(g, GATEWAY_MAGIC);
	return tokens_check(g->tokens, token, clock_mono());
}

struct gw_login *gateway_login(struct gateway *g, struct localtoken_request *req, const char *ip,
			       void (*park)(void *), void (*unpark)(void *), void *arg, int *parked)
{
	struct gw_login *l = calloc(1, sizeof(*l));

	CHECK_OBJ(g, GATEWAY_MAGIC);
	*parked = 0;
	if (l == NULL) {
		localtoken_request_clear(req);
		return NULL;
	}
	INIT_OBJ(l, LOGIN_MAGIC);
	l->g = g;
	l->req = *req;
	memset(req, 0, sizeof(*req));
	l->unpark = unpark;
	l->arg = arg;
	snprintf(l->ip, sizeof(l->ip), "%s", ip);
	if (l->req.grant == LOCALTOKEN_REFRESH) {
		char access[LOCALTOKEN_LEN + 1], refresh[LOCALTOKEN_LEN + 1];
		int full = 0;
		struct account *a = tokens_refresh(g->tokens, l->req.refresh_token, clock_mono(),
						   g->cfg->token_lifetime, access, refresh, &full);

		l->result = full ? GW_LOGIN_FULL : a == NULL ? GW_LOGIN_DENIED : GW_LOGIN_OK;
		if (a != NULL) {
			snprintf(l->name, sizeof(l->name), "%s", account_name(a));
			account_count(a, ACCOUNT_LOGINS);
			if ((l->answer = localtoken_answer_with(access, refresh,
								g->cfg->token_lifetime)) == NULL)
				l->result = GW_LOGIN_ERROR;
		}
		account_unref(&a);
		explicit_bzero(access, sizeof(access));
		explicit_bzero(refresh, sizeof(refresh));
		localtoken_request_clear(&l->req);
		return l;
	}
	/* Before any hash: an address that failed too often waits. */
	if ((l->retry_after = loginguard_check(g->guard, ip, clock_mono())) > 0) {
		pthread_mutex_lock(&g->lock);
		g->guessing++;
		pthread_mutex_unlock(&g->lock);
		l->result = GW_LOGIN_GUESSING;
		localtoken_request_clear(&l->req);
		return l;
	}
	pthread_mutex_lock(&g->lock);
	if (g->stopping) {
		pthread_mutex_unlock(&g->lock);
		l->result = GW_LOGIN_STOPPING;
		localtoken_request_clear(&l->req);
		return l;
	}
	/* Parked before a login thread can see it, so its unpark finds it parked. */
	park(arg);
	*parked = 1;
	STAILQ_INSERT_TAIL(&g->queue, l, q);
	pthread_cond_signal(&g->work);
	pthread_mutex_unlock(&g->lock);
	return l;
}

enum gw_login_result gateway_login_result(struct gw_login **lp, char **answer, char *name,
					  size_t namelen, double *retry_after)
{
	struct gw_login *l = *lp;
	enum gw_login_result r;

	*lp = NULL;
	CHECK_OBJ(l, LOGIN_MAGIC);
	r = l->result;
	*answer = l->answer;
	*retry_after = l->retry_after;
	snprintf(name, namelen, "%s", l->name);
	localtoken_request_clear(&l->req);
	FINI_OBJ(l);
	free(l);
	return r;
}

void gateway_each_account(struct gateway *g, gateway_account_fn fn, void *arg)
{
	CHECK_OBJ(g, GATEWAY_MAGIC);
	pthread_mutex_lock(&g->lock);
	for (size_t i = 0; i < accounts_count(g->accounts); i++)
		fn(arg, accounts_at(g->accounts, i));
	pthread_mutex_unlock(&g->lock);
}

void gateway_take_untold(struct gateway *g, gateway_usage_fn fn, void *arg)
{
	CHECK_OBJ(g, GATEWAY_MAGIC);
	pthread_mutex_lock(&g->lock);
	for (size_t i = 0; i < accounts_count(g->accounts); i++) {
		struct account *a = accounts_at(g->accounts, i);
		unsigned n = account_take_untold(a);

		if (n > 0)
			fn(arg, account_name(a), n);
	}
	pthread_mutex_unlock(&g->lock);
}

void gateway_take_untold_failures(struct gateway *g, gateway_usage_fn fn, void *arg)
{
	CHECK_OBJ(g, GATEWAY_MAGIC);
	pthread_mutex_lock(&g->lock);
	for (int i = 0; i < g->nuntold; i++)
		fn(arg, g->untold[i].ip, g->untold[i].n);
	memset(g->untold, 0, sizeof(g->untold));
	g->nuntold = 0;
	pthread_mutex_unlock(&g->lock);
}

void gateway_failed_elsewhere(struct gateway *g, const char *ip, unsigned n)
{
	double now = clock_mono();

	CHECK_OBJ(g, GATEWAY_MAGIC);
	for (unsigned i = 0; i < n && i < (unsigned)LOGINGUARD_BURST; i++)
		loginguard_failed(g->guard, ip, now);
}

int gateway_spend(struct gateway *g, const char *name, unsigned n, double now)
{
	struct account *a;

	CHECK_OBJ(g, GATEWAY_MAGIC);
	pthread_mutex_lock(&g->lock);
	if ((a = accounts_find(g->accounts, name)) != NULL)
		account_spend(a, n, now);
	pthread_mutex_unlock(&g->lock);
	return a != NULL ? 0 : -1;
}

static void account_json(void *arg, const struct account *a)
{
	cJSON *one = cJSON_AddObjectToObject(arg, account_name(a));

	for (int c = 0; one != NULL && c < ACCOUNT_NCOUNTERS; c++)
		cJSON_AddNumberToObject(one, account_counter_name((enum account_counter)c),
					(double)account_counter(a, (enum account_counter)c));
}

size_t gateway_tokens(struct gateway *g)
{
	CHECK_OBJ(g, GATEWAY_MAGIC);
	return tokens_count(g->tokens);
}

void gateway_stats(struct gateway *g, struct cJSON *into)
{
	cJSON *all;

	CHECK_OBJ(g, GATEWAY_MAGIC);
	if (into == NULL)
		return;
	cJSON_AddNumberToObject(into, "tokens", (double)tokens_count(g->tokens));
	if ((all = cJSON_AddObjectToObject(into, "accounts")) != NULL)
		gateway_each_account(g, account_json, all);
}
