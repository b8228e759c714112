/*
 * tokens: a sharded hash table of live tokens.
 *
 * The bucket comes from a hash of the presented string; which bucket a
 * token falls in says nothing useful about a valid token (they are 256
 * random bits), and the comparisons inside a bucket take the same time
 * whatever the bytes, so a timing probe learns nothing.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "accounts.h"
#include "check.h"
#include "tokens.h"

#define SHARDS 16
#define BUCKETS 1024

struct tok {
	struct tok *next;
	char text[LOCALTOKEN_LEN + 1];
	int refresh; /* a refresh token: only tokens_refresh() takes it */
	double expires;
	struct account *acct; /* referenced */
};

struct shard {
	pthread_mutex_t lock;
	struct tok *b[BUCKETS];
};

struct tokens {
	unsigned magic;
#define TOKENS_MAGIC 0x70c3e115u
	size_t max;
	atomic_size_t n;
	struct shard s[SHARDS];
};

static uint64_t hash(const char *s)
{
	uint64_t h = 1469598103934665603ULL; /* FNV-1a */

	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ULL;
	return h;
}

static struct shard *shard_of(struct tokens *t, uint64_t h)
{
	return &t->s[h >> 60];
}

static struct tok **bucket_of(struct shard *sh, uint64_t h)
{
	return &sh->b[h % BUCKETS];
}

/* Equal, in a time that depends on neither string's bytes: a token is
 * always LOCALTOKEN_LEN long, a presented string is cut there. */
static int same(const char *stored, const char *presented)
{
	unsigned char d = 0;
	size_t i;

	for (i = 0; i < LOCALTOKEN_LEN; i++) {
		d |= (unsigned char)(stored[i] ^ presented[i]);
		if (presented[i] == '\0')
			break;
	}
	return d == 0 && i == LOCALTOKEN_LEN && presented[LOCALTOKEN_LEN] == '\0';
}

struct tokens *tokens_new(size_t max)
{
	struct tokens *t = calloc(1, sizeof(*t));

	if (t == NULL)
		return NULL;
	INIT_OBJ(t, TOKENS_MAGIC);
	t->max = max;
	atomic_init(&t->n, 0);
	for (int i = 0; i < SHARDS; i++)
		pthread_mutex_init(&t->s[i].lock, NULL);
	return t;
}

static void drop(struct tokens *t, struct tok **link)
{
	struct tok *k = *link;

	*link = k->next;
	account_unref(&k->acct);
	explicit_bzero(k->text, sizeof(k->text));
	free(k);
	atomic_fetch_sub(&t->n, 1);
}

void tokens_free(struct tokens **tp)
{
	struct tokens *t = *tp;

	if (t == NULL)
		return;
	*tp = NULL;
	CHECK_OBJ(t, TOKENS_MAGIC);
	for (int i = 0; i < SHARDS; i++) {
		for (int j = 0; j < BUCKETS; j++)
			while (t->s[i].b[j] != NULL)
				drop(t, &t->s[i].b[j]);
		pthread_mutex_destroy(&t->s[i].lock);
	}
	FINI_OBJ(t);
	free(t);
}

/* Walks every token of every shard; keep(tok, arg) says whether it stays. */
static size_t filter(struct tokens *t, int (*keep)(struct tok *, const void *), const void *arg)
{
	size_t dropped = 0;

	for (int i = 0; i < SHARDS; i++) {
		struct shard *sh = &t->s[i];

		pthread_mutex_lock(&sh->lock);
		for (int j = 0; j < BUCKETS; j++)
			for (struct tok **l = &sh->b[j]; *l != NULL;) {
				if (keep(*l, arg)) {
					l = &(*l)->next;
				} else {
					drop(t, l);
					dropped++;
				}
			}
		pthread_mutex_unlock(&sh->lock);
	}
	return dropped;
}

static int not_expired(struct tok *k, const void *arg)
{
	return k->expires > *(const double *)arg;
}

size_t tokens_sweep(struct tokens *t, double now)
{
	CHECK_OBJ(t, TOKENS_MAGIC);
	return filter(t, not_expired, &now);
}

static int rebind(struct tok *k, const void *arg)
{
	struct account *a = accounts_find(arg, account_name(k->acct));

	if (a == NULL || !account_same_secret(a, k->acct))
		return 0;
	if (a != k->acct) {
		account_unref(&k->acct);
		k->acct = account_ref(a);
	}
	return 1;
}

size_t tokens_rebind(struct tokens *t, const struct accounts *now)
{
	CHECK_OBJ(t, TOKENS_MAGIC);
	return filter(t, rebind, now);
}

size_t tokens_count(struct tokens *t)
{
	CHECK_OBJ(t, TOKENS_MAGIC);
	return atomic_load(&t->n);
}

/* Room for two more; a sweep first when the store is full. */
static int room(struct tokens *t, double now)
{
	if (atomic_load(&t->n) + 2 <= t->max)
		return 1;
	tokens_sweep(t, now);
	return atomic_load(&t->n) + 2 <= t->max;
}

static int add(struct tokens *t, struct account *a, const char *text, int refresh, double expires)
{
	uint64_t h = hash(text);
	struct shard *sh = shard_of(t, h);
	struct tok *k = calloc(1, sizeof(*k));

	if (k == NULL)
		return -1;
	memcpy(k->text, text, LOCALTOKEN_LEN + 1);
	k->refresh = refresh;
	k->expires = expires;
	k->acct = account_ref(a);
	pthread_mutex_lock(&sh->lock);
	k->next = *bucket_of(sh, h);
	*bucket_of(sh, h) = k;
	atomic_fetch_add(&t->n, 1);
	pthread_mutex_unlock(&sh->lock);
	return 0;
}

int tokens_issue(struct tokens *t, struct account *a, double now, double lifetime, char *access,
		 char *refresh)
{
	CHECK_OBJ(t, TOKENS_MAGIC);
	if (!room(t, now) || localtoken_new(access, LOCALTOKEN_LEN + 1) < 0 ||
	    localtoken_new(refresh, LOCALTOKEN_LEN + 1) < 0)
		return -1;
	if (add(t, a, access, 0, now + lifetime) < 0)
		return -1;
	/* Without its refresh token the pair still works until it expires. */
	if (add(t, a, refresh, 1, now + TOKENS_REFRESH_LIFETIME) < 0)
		refresh[0] = '\0';
	return 0;
}

/* Finds a live token of the kind; take: remove it.  The account, referenced. */
static struct account *find(struct tokens *t, const char *token, int refresh, double now, int take)
{
	uint64_t h = hash(token);
	struct shard *sh = shard_of(t, h);
	struct account *a = NULL;

	pthread_mutex_lock(&sh->lock);
	for (struct tok **l = bucket_of(sh, h); *l != NULL; l = &(*l)->next) {
		if (!same((*l)->text, token))
			continue;
		if ((*l)->refresh == refresh && (*l)->expires > now) {
			a = account_ref((*l)->acct);
			if (take)
				drop(t, l);
		}
		break;
	}
	pthread_mutex_unlock(&sh->lock);
	return a;
}

struct account *tokens_check(struct tokens *t, const char *token, double now)
{
	CHECK_OBJ(t, TOKENS_MAGIC);
	return find(t, token, 0, now, 0);
}

struct account *tokens_refresh(struct tokens *t, const char *refresh, double now, double lifetime,
			       char *access, char *new_refresh, int *full)
{
	struct account *a;

	CHECK_OBJ(t, TOKENS_MAGIC);
	*full = 0;
	if ((a = find(t, refresh, 1, now, 1)) == NULL)
		return NULL;
	if (tokens_issue(t, a, now, lifetime, access, new_refresh) < 0) {
		*full = 1;
		account_unref(&a);
	}
	return a;
}
