/*
 * l2: the shared cache level and the shared token in Redis.  See l2.h.
 *
 * A request is a job on one queue; the thread takes them in order, and a
 * job that finds a lease taken waits on a second list, due again after
 * POLL_MS.  A lookup the thread answers L2_FETCH becomes the fetch's
 * ticket, and comes back as a store.  Scripts do the work, so that what is
 * read and what is written are judged in one atomic step:
 *
 *   look:  the value if its generations are current and it is not
 *          expired (1); else the lease if free or ours (2); else ask
 *          alone if the holder had nothing to share (4); else "wait" (3);
 *   keep:  the value SET ... EX if the generations the fetch began
 *          under are still current; the lease deleted if still ours;
 *   token_look, token_keep: the same for the upstream token.
 *
 * The values themselves are l2value.h's.
 */
#include "l2.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <time.h>

#include "check.h"
#include "clock.h"
#include "cluster.h"
#include "coherence.h"
#include "config.h"
#include "entry.h"
#include "errbuf.h"
#include "l2value.h"
#include "log.h"
#include "redislink.h"
#include "secret.h"
#include "upstream.h"

#define L2_MAGIC 0x12ca4e01u
#define JOB_MAGIC 0x12ca4e02u
#define IO_TIMEOUT_MS 250 /* a command; then the link is dropped and fetches go alone */
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define LEASE_MS 10000      /* one instance's fetch of a key; then another may try */
#define POLL_MS 10          /* a waiting lookup asks again this often */
#define WAIT_MAX_MS 11000   /* past the lease: the holder is gone, fetch alone */
#define MAX_EX (30 * 86400) /* no value stays longer (s) */
#define LOG_EVERY_MS 60000
#define MAX_VALUE (32u << 20) /* larger answers are not shared */
static const char look_script[] =
	"local f = redis.call('GET', KEYS[1]) or '' "
	"local p = redis.call('GET', KEYS[2]) or '' "
	"local v = redis.call('GET', KEYS[3]) "
	"if v then "
	"  local vf, vp, x = string.match(v, '^([^|]*)|([^|]*)|(%d+)|') "
	"  if vf == f and vp == p and tonumber(x) > tonumber(ARGV[1]) then return {1, f, p, v} end "
	"end "
	"local l = redis.call('GET', KEYS[4]) "
	"if l == ARGV[3] then return {2, f, p} end " /* ours: a retried lookup */
	"if l == 'pass' then return {4, f, p} end "
	"if redis.call('SET', KEYS[4], ARGV[3], 'NX', 'PX', ARGV[2]) then return {2, f, p} end "
	"return {3, f, p}";

/* Nothing to keep (ARGV[5] absent): the lease becomes "pass" for a
 * moment, so that the instances waiting on it ask the API at once
 * instead of taking the lease in turn for an answer nobody can share. */
static const char keep_script[] = "local kept = 0 "
				  "if ARGV[5] and (redis.call('GET', KEYS[1]) or '') == ARGV[1] "
				  "   and (redis.call('GET', KEYS[2]) or '') == ARGV[2] then "
				  "  redis.call('SET', KEYS[3], ARGV[5], 'EX', ARGV[4]) kept = 1 "
				  "end "
				  "if redis.call('GET', KEYS[4]) == ARGV[3] then "
				  "  if ARGV[5] then redis.call('DEL', KEYS[4]) "
				  "  else redis.call('SET', KEYS[4], 'pass', 'PX', 2000) end "
				  "end "
				  "return kept";

/* A value this instance could not take goes, unless it changed since. */
static const char drop_script[] =
	"if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end return 1";

/*
 * share_token: the token another instance got (KEYS[1]), with what is left
 * of it in ms (Redis's clock, not the hosts'), unless it is the one the
 * asker holds (ARGV[1], its SHA-1: it failed or is due), which is dropped;
 * else the lease (ours already: a retried ask), unless the last holder
 * failed ("fail": ask alone at once); else "wait".
 */
static const char token_look_script[] =
	"local t = redis.call('GET', KEYS[1]) "
	"if t then "
	"  if redis.sha1hex(t) == ARGV[1] then redis.call('DEL', KEYS[1]) "
	"  else "
	"    local left = redis.call('PTTL', KEYS[1]) "
	"    if left > 30000 then return {1, t, left} end "
	"  end "
	"end "
	"local l = redis.call('GET', KEYS[2]) "
	"if l == ARGV[3] then return {2} end "
	"if l == 'fail' then return {4} end "
	"if redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[2]) then return {2} end "
	"return {3}";

/* The token got (ARGV[2], kept ARGV[3] s), stored only while the lease is
 * still ours (else another instance took over, and may have stored a
 * newer one); no token: "fail" for a moment, so the waiters go at once. */
static const char token_keep_script[] =
	"if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end "
	"if ARGV[2] then "
	"  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) redis.call('DEL', KEYS[2]) "
	"  return 1 "
	"end "
	"redis.call('SET', KEYS[2], 'fail', 'PX', 2000) "
	"return 0";

enum job_kind { J_LOOKUP, J_STORE, J_TOKEN_ASK, J_TOKEN_GOT };

struct l2_ticket {
	unsigned magic;
	TAILQ_ENTRY(l2_ticket) link;
	enum job_kind kind;
	char *key, *path, *vkey, *lkey; /* the cache key; Redis's value and lease keys */
	int family;
	l2_answer_fn fn;
	void *arg;
	int64_t first_ms, due_ms;
	int waited;
	char fgen[COH_GEN_MAX + 1], pgen[COH_GEN_MAX + 1];
	char token[33];      /* the lease's value: ours alone */
	struct entry *e;     /* J_STORE: to keep, or NULL */
	struct upstream *up; /* J_TOKEN_ASK: where the answer goes */
	char held[41];       /* J_TOKEN_ASK: SHA-1 of the token not to hand back; "" none */
	char *secret;        /* J_TOKEN_GOT: the token got, or NULL; wiped */
	int64_t expires;     /* J_TOKEN_GOT: its expiry, wall seconds */
};
TAILQ_HEAD(jobq, l2_ticket);

struct l2 {
	unsigned magic;
	struct cluster *c;
	int tok_lease_ms; /* a login's longest (connect_timeout + timeout) and a margin */
	char *tok_key, *tok_lkey;
	char tok_lease[33];    /* the token lease this instance holds; "" none */
	unsigned stale_window; /* kept this long past expiry */
	size_t max_body;       /* [cache] max_entry_size: larger is not an answer we keep */
	pthread_t thr;
	int started;

	/* the thread's alone */
	redisContext *ctx;
	int backoff_ms;
	int64_t next_try, logged_at;

	pthread_mutex_t lock; /* below; a leaf */
	pthread_cond_t cond;
	struct jobq ready, waiting;
	int stop;
	struct l2_info info;
};

static void count(struct l2 *l, unsigned long long *field)
{
	pthread_mutex_lock(&l->lock);
	(*field)++;
	pthread_mutex_unlock(&l->lock);
}

static void job_free(struct l2_ticket **jp)
{
	struct l2_ticket *j = *jp;

	if (j == NULL)
		return;
	*jp = NULL;
	CHECK_OBJ(j, JOB_MAGIC);
	entry_unref(&j->e);
	secret_free(&j->secret);
	free(j->key);
	free(j->path);
	free(j->vkey);
	free(j->lkey);
	FINI_OBJ(j);
	free(j);
}

/* j goes back on the waiting list, due again in POLL_MS; waits counts the
 * jobs that had to wait, once each. */
static void wait_again(struct l2 *l, struct l2_ticket *j, unsigned long long *waits)
{
	if (!j->waited) {
		j->waited = 1;
		count(l, waits);
	}
	j->due_ms = clock_mono_ms() + POLL_MS;
	pthread_mutex_lock(&l->lock);
	TAILQ_INSERT_TAIL(&l->waiting, j, link);
	pthread_mutex_unlock(&l->lock);
}

/* The answer, once; the job is the ticket of an L2_FETCH, else freed. */
static void answer(struct l2 *l, struct l2_ticket *j, enum l2_answer a, struct entry *e)
{
	l2_answer_fn fn = j->fn;
	void *arg = j->arg;

	count(l, a == L2_HIT ? &l->info.hits : a == L2_FETCH ? &l->info.fetches : &l->info.alone);
	if (a != L2_FETCH)
		job_free(&j);
	fn(arg, a, e, j);
}

/* --- the link --------------------------------------------------------------- */

static void drop_link(struct l2 *l, const char *why)
{
	int64_t now = clock_mono_ms();

	count(l, &l->info.errors);
	if (l->ctx != NULL) {
		redisFree(l->ctx);
		l->ctx = NULL;
	}
	/* The cluster thread logs Redis unreachable; this says what failed
	 * here, at most once a minute. */
	if (l->logged_at == 0 || now - l->logged_at >= LOG_EVERY_MS) {
		log_warnx("[cluster] Redis, for the shared cache or token: %s; this instance asks "
			  "the API alone meanwhile",
			  why);
		l->logged_at = now;
	}
	l->next_try = now + l->backoff_ms;
	l->backoff_ms = l->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : l->backoff_ms * 2;
}

static int link_up(struct l2 *l)
{
	char why[160];

	if (l->ctx != NULL)
		return 1;
	if (clock_mono_ms() < l->next_try)
		return 0;
	if ((l->ctx = rlink_dial(cluster_target(l->c), "l2", IO_TIMEOUT_MS, why, sizeof(why))) ==
	    NULL) {
		drop_link(l, why);
		return 0;
	}
	l->backoff_ms = BACKOFF_MIN_MS;
	return 1;
}

/*
 * A command on the link, made if need be.  A link idle across a Redis
 * restart is found dead only by using it: then one new link and one more
 * try, so the first fetch after Redis is back is not sent alone.  NULL with
 * the link dropped (and logged) on failure.
 */
static redisReply *call(struct l2 *l, int argc, const char **argv, const size_t *lens)
{
	char why[160];
	redisReply *r;
	int fresh = l->ctx == NULL;

	if (!link_up(l))
		return NULL;
	r = rlink_must(l->ctx, why, sizeof(why), argc, argv, lens);
	/* Only a link found closed is retried: after a timeout Redis may
	 * have run the command, and it would wait twice as long. */
	if (r == NULL && !fresh &&
	    (l->ctx->err == REDIS_ERR_EOF ||
	     (l->ctx->err == REDIS_ERR_IO && (errno == EPIPE || errno == ECONNRESET)))) {
		redisFree(l->ctx);
		l->ctx = NULL;
		if (link_up(l))
			r = rlink_must(l->ctx, why, sizeof(why), argc, argv, lens);
	}
	if (r == NULL && l->ctx != NULL)
		drop_link(l, why);
	return r;
}

/* --- the work ---------------------------------------------------------------- */

static int copy_gen(char *dst, const redisReply *r)
{
	if (r->type != REDIS_REPLY_STRING || r->len > COH_GEN_MAX)
		return -1;
	memcpy(dst, r->str, r->len);
	dst[r->len] = '\0';
	return 0;
}

static void lookup(struct l2 *l, struct l2_ticket *j)
{
	char now[24], lease[16];
	const char *argv[] = { "EVAL",
			       look_script,
			       "4",
			       cluster_gen_key(l->c, j->family),
			       cluster_gen_key(l->c, -1),
			       j->vkey,
			       j->lkey,
			       now,
			       lease,
			       j->token };
	redisReply *r;
	struct entry *e = NULL;
	char *bad = NULL;
	size_t bad_len = 0;
	long long verdict;

	if (!cluster_settled(l->c, j->family)) {
		answer(l, j, L2_ALONE, NULL);
		return;
	}
	snprintf(now, sizeof(now), "%" PRId64, clock_wall());
	snprintf(lease, sizeof(lease), "%d", LEASE_MS);
	if ((r = call(l, 10, argv, NULL)) == NULL) {
		answer(l, j, L2_ALONE, NULL);
		return;
	}
	if (r->type != REDIS_REPLY_ARRAY || r->elements < 3 ||
	    r->element[0]->type != REDIS_REPLY_INTEGER || copy_gen(j->fgen, r->element[1]) < 0 ||
	    copy_gen(j->pgen, r->element[2]) < 0) {
		freeReplyObject(r);
		drop_link(l, "the lookup script's answer is not what it returns");
		answer(l, j, L2_ALONE, NULL);
		return;
	}
	verdict = r->element[0]->integer;
	if (verdict == 1 && r->elements == 4 && r->element[3]->type == REDIS_REPLY_STRING) {
		e = l2v_decode(r->element[3]->str, r->element[3]->len, l->max_body, j->key,
			       j->family, j->path);
		if (e == NULL && (bad = malloc(r->element[3]->len + 1)) != NULL) {
			bad_len = r->element[3]->len;
			memcpy(bad, r->element[3]->str, bad_len);
		}
	}
	freeReplyObject(r);
	if (verdict == 1 && e == NULL && bad == NULL) {
		answer(l, j, L2_ALONE, NULL); /* not even memory to drop it */
		return;
	}
	if (verdict == 1) {
		if (e != NULL) {
			answer(l, j, L2_HIT, e);
			return;
		}
		/* Not a value this instance can take (damaged, or a body over
		 * its max_entry_size): it goes, unless replaced meanwhile, and
		 * this fetch asks the API (no lease: the next lookup takes one). */
		const char *del[] = { "EVAL", drop_script, "1", j->vkey, bad };
		size_t lens[] = { 4, strlen(drop_script), 1, strlen(j->vkey), bad_len };

		count(l, &l->info.errors);
		if ((r = call(l, 5, del, lens)) != NULL)
			freeReplyObject(r);
		free(bad);
		log_warnx("[cluster] shared cache: the value in Redis for %s is not one this "
			  "instance can take (damaged, or larger than its [cache] max_entry_size); "
			  "removed",
			  j->path);
		answer(l, j, L2_ALONE, NULL);
		return;
	}
	if (verdict == 2) {
		answer(l, j, L2_FETCH, NULL);
		return;
	}
	if (verdict == 4) { /* the holder got nothing the cluster can share */
		answer(l, j, L2_ALONE, NULL);
		return;
	}
	/* Another instance fetches it: wait for its answer, but not past
	 * its lease (then it is gone, or slower than the cluster waits). */
	if (clock_mono_ms() - j->first_ms >= WAIT_MAX_MS) {
		answer(l, j, L2_ALONE, NULL);
		return;
	}
	wait_again(l, j, &l->info.waits);
}

static void keep(struct l2 *l, struct l2_ticket *j)
{
	char exs[16];
	size_t vlen = 0;
	unsigned ex = 0;
	char *v = NULL;
	/* ARGV: fgen, pgen, token, ex[, value] */
	const char *argv[12] = { "EVAL",
				 keep_script,
				 "4",
				 cluster_gen_key(l->c, j->family),
				 cluster_gen_key(l->c, -1),
				 j->vkey,
				 j->lkey,
				 j->fgen,
				 j->pgen,
				 j->token,
				 exs };
	size_t lens[12];
	int argc = 11;
	redisReply *r;

	/* Not while an invalidation of ours is unpublished: Redis's
	 * generation would not yet say what this instance knows. */
	if (j->e != NULL && cluster_settled(l->c, j->family) &&
	    entry_expires_at(j->e) > clock_wall()) {
		int64_t left = entry_expires_at(j->e) - clock_wall() + (int64_t)l->stale_window;

		ex = left > MAX_EX ? MAX_EX : (unsigned)left;
		v = l2v_encode(j->fgen, j->pgen, j->e, MAX_VALUE, &vlen);
	}
	snprintf(exs, sizeof(exs), "%u", ex);
	for (int i = 0; i < argc; i++)
		lens[i] = strlen(argv[i]);
	if (v != NULL) {
		argv[argc] = v;
		lens[argc++] = vlen;
	}
	/* failed: the lease runs out by itself */
	r = call(l, argc, argv, lens);
	free(v);
	if (r == NULL)
		return;
	if (r->type == REDIS_REPLY_INTEGER && r->integer == 1)
		count(l, &l->info.stored);
	freeReplyObject(r);
}

/* --- the shared token --------------------------------------------------------- */

/* The token answer for t (len bytes) with left_ms to live, as the API's
 * endpoint would give it (no refresh token: each instance renews by asking
 * the cluster again).  NULL when t is not a token a header can carry (then
 * the asker logs in itself), or ENOMEM. */
static char *token_answer(const char *t, size_t len, long long left_ms)
{
	char *tok, *out = NULL;
	cJSON *o;

	if (len == 0 || len > 8192 || left_ms <= 0)
		return NULL;
	for (size_t i = 0; i < len; i++)
		if (t[i] <= ' ' || t[i] > '~')
			return NULL;
	if ((tok = strndup(t, len)) == NULL)
		return NULL;
	/* Redis drops it a minute before it expires (token_got) */
	if ((o = cJSON_CreateObject()) != NULL && cJSON_AddStringToObject(o, "access_token", tok) &&
	    cJSON_AddStringToObject(o, "token_type", "Bearer") &&
	    cJSON_AddNumberToObject(o, "expires_in", (double)(left_ms / 1000 + 60)))
		out = cJSON_PrintUnformatted(o);
	/* the tree holds the token too: wiped before it is freed */
	if (o != NULL && o->child != NULL && o->child->valuestring != NULL)
		explicit_bzero(o->child->valuestring, strlen(o->child->valuestring));
	cJSON_Delete(o);
	secret_free(&tok);
	return out;
}

static void token_reply(struct l2_ticket *j, const char *body)
{
	upstream_broker_answer(j->up, body);
}

static void token_ask(struct l2 *l, struct l2_ticket *j)
{
	char lease[16];
	const char *argv[] = { "EVAL",      token_look_script, "2",   l->tok_key,
			       l->tok_lkey, j->held,           lease, j->token };
	redisReply *r;
	char *body = NULL;
	long long verdict = 0;

	if (j->first_ms == 0)
		j->first_ms = clock_mono_ms(); /* the wait counts from the first try */
	snprintf(lease, sizeof(lease), "%d", l->tok_lease_ms);
	if ((r = call(l, 8, argv, NULL)) == NULL) {
		token_reply(j, NULL);
		job_free(&j);
		return;
	}
	if (r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
	    r->element[0]->type == REDIS_REPLY_INTEGER)
		verdict = r->element[0]->integer;
	if (verdict == 1 && r->elements == 3 && r->element[1]->type == REDIS_REPLY_STRING &&
	    r->element[2]->type == REDIS_REPLY_INTEGER) {
		body = token_answer(r->element[1]->str, r->element[1]->len, r->element[2]->integer);
		explicit_bzero(r->element[1]->str, r->element[1]->len);
		if (body != NULL)
			count(l, &l->info.token_shared);
	}
	freeReplyObject(r);
	if (verdict == 3 && clock_mono_ms() - j->first_ms < l->tok_lease_ms + 2000) {
		/* another instance is asking the API: its token, soon */
		wait_again(l, j, &l->info.token_waits);
		return;
	}
	if (verdict == 2)
		snprintf(l->tok_lease, sizeof(l->tok_lease), "%s", j->token);
	token_reply(j, body); /* NULL: ask the API */
	secret_free(&body);
	job_free(&j);
}

static void token_got(struct l2 *l, struct l2_ticket *j)
{
	char ex[24];
	const char *argv[8] = { "EVAL",     token_keep_script, "2",
				l->tok_key, l->tok_lkey,       l->tok_lease };
	int argc = 6;
	int64_t left = j->expires - clock_wall();
	redisReply *r;

	if (l->tok_lease[0] == '\0') {
		job_free(&j); /* asked the API without a lease: nothing to give back */
		return;
	}
	if (j->secret != NULL && left > 60) {
		/* gone from Redis a minute before it expires */
		snprintf(ex, sizeof(ex), "%" PRId64, left - 60);
		argv[argc++] = j->secret;
		argv[argc++] = ex;
	}
	/* ARGV: lease[, token, ex]; no token marks the lease "fail" */
	if ((r = call(l, argc, argv, NULL)) != NULL) {
		if (r->type == REDIS_REPLY_INTEGER && r->integer == 1)
			count(l, &l->info.token_stored);
		freeReplyObject(r);
	}
	l->tok_lease[0] = '\0';
	job_free(&j);
}

/* Queues j for the thread: 1, or 0 when stopping (j stays the caller's). */
static int enqueue(struct l2 *l, struct l2_ticket *j)
{
	int stop;

	pthread_mutex_lock(&l->lock);
	stop = l->stop;
	if (!stop) {
		TAILQ_INSERT_TAIL(&l->ready, j, link);
		pthread_cond_signal(&l->cond);
	}
	pthread_mutex_unlock(&l->lock);
	return !stop;
}

static void queue_job(struct l2 *l, struct l2_ticket *j)
{
	if (enqueue(l, j))
		return;
	if (j->kind == J_TOKEN_ASK)
		token_reply(j, NULL);
	job_free(&j);
}

/* A job with a lease value of its own; NULL on ENOMEM. */
static struct l2_ticket *new_job(enum job_kind kind)
{
	struct l2_ticket *j = calloc(1, sizeof(*j));

	if (j == NULL)
		return NULL;
	INIT_OBJ(j, JOB_MAGIC);
	j->kind = kind;
	rlink_random_hex(j->token, (sizeof(j->token) - 1) / 2);
	return j;
}

void l2_token_ask(void *arg, struct upstream *up, const char *held)
{
	struct l2 *l = arg;
	struct l2_ticket *j = new_job(J_TOKEN_ASK);
	unsigned char d[20];

	CHECK_OBJ(l, L2_MAGIC);
	if (j == NULL) {
		upstream_broker_answer(up, NULL);
		return;
	}
	j->up = up;
	if (held != NULL && gnutls_hash_fast(GNUTLS_DIG_SHA1, held, strlen(held), d) == 0)
		rlink_hex(j->held, d, sizeof(d));
	queue_job(l, j);
}

void l2_token_got(void *arg, const char *token, double expires_at)
{
	struct l2 *l = arg;
	struct l2_ticket *j = new_job(J_TOKEN_GOT);

	CHECK_OBJ(l, L2_MAGIC);
	if (j == NULL)
		return; /* the lease runs out by itself */
	j->expires = (int64_t)expires_at;
	if (token != NULL && (j->secret = strdup(token)) == NULL) {
		job_free(&j);
		return;
	}
	queue_job(l, j);
}

/* The next job, or NULL at stop; waits for one to be due. */
static struct l2_ticket *next_job(struct l2 *l)
{
	struct l2_ticket *j = NULL;

	pthread_mutex_lock(&l->lock);
	while (!l->stop) {
		int64_t now = clock_mono_ms(), due = INT64_MAX;
		struct timespec ts;

		/* A waiting lookup that is due goes first: a steady stream of
		 * new ones must not starve it past its lease. */
		TAILQ_FOREACH(j, &l->waiting, link)
		{
			if (j->due_ms <= now)
				break;
			if (j->due_ms < due)
				due = j->due_ms;
		}
		if (j != NULL) {
			TAILQ_REMOVE(&l->waiting, j, link);
			break;
		}
		if ((j = TAILQ_FIRST(&l->ready)) != NULL) {
			TAILQ_REMOVE(&l->ready, j, link);
			break;
		}
		if (due == INT64_MAX) {
			pthread_cond_wait(&l->cond, &l->lock);
			continue;
		}
		ts.tv_sec = (time_t)(due / 1000);
		ts.tv_nsec = (long)(due % 1000) * 1000000L;
		pthread_cond_timedwait(&l->cond, &l->lock, &ts);
	}
	pthread_mutex_unlock(&l->lock);
	return j;
}

static void *run(void *arg)
{
	struct l2 *l = arg;
	struct l2_ticket *j;

	pthread_setname_np(pthread_self(), "kd-l2");
	while ((j = next_job(l)) != NULL) {
		CHECK_OBJ(j, JOB_MAGIC);
		if (j->kind == J_LOOKUP) {
			lookup(l, j);
		} else if (j->kind == J_TOKEN_ASK) {
			token_ask(l, j);
		} else if (j->kind == J_TOKEN_GOT) {
			token_got(l, j);
		} else {
			keep(l, j);
			job_free(&j);
		}
	}
	return NULL;
}

/* --- the interface ----------------------------------------------------------- */

void l2_lookup(struct l2 *l, const char *key, int family, const char *path, l2_answer_fn fn,
	       void *arg)
{
	struct l2_ticket *j = new_job(J_LOOKUP);
	unsigned char d[32];
	char h[65];

	CHECK_OBJ(l, L2_MAGIC);
	if (j == NULL) {
		count(l, &l->info.alone);
		fn(arg, L2_ALONE, NULL, NULL);
		return;
	}
	j->family = family;
	j->fn = fn;
	j->arg = arg;
	j->first_ms = clock_mono_ms();
	if (gnutls_hash_fast(GNUTLS_DIG_SHA256, key, strlen(key), d) != 0) {
		answer(l, j, L2_ALONE, NULL);
		return;
	}
	rlink_hex(h, d, sizeof(d));
	if (asprintf(&j->vkey, "%s:l2:%s", cluster_key_prefix(l->c), h) < 0)
		j->vkey = NULL;
	if (asprintf(&j->lkey, "%s:l2:%s:lease", cluster_key_prefix(l->c), h) < 0)
		j->lkey = NULL;
	j->key = strdup(key);
	j->path = strdup(path);
	if (j->vkey == NULL || j->lkey == NULL || j->key == NULL || j->path == NULL) {
		answer(l, j, L2_ALONE, NULL);
		return;
	}
	count(l, &l->info.lookups);
	if (!enqueue(l, j))
		answer(l, j, L2_ALONE, NULL);
}

void l2_store(struct l2 *l, struct l2_ticket **tp, struct entry *e)
{
	struct l2_ticket *j = *tp;

	*tp = NULL;
	CHECK_OBJ(l, L2_MAGIC);
	CHECK_OBJ(j, JOB_MAGIC);
	j->kind = J_STORE;
	j->e = e != NULL ? entry_ref(e) : NULL;
	queue_job(l, j); /* stopping: the lease runs out by itself */
}

void l2_info(struct l2 *l, struct l2_info *out)
{
	memset(out, 0, sizeof(*out));
	if (l == NULL)
		return;
	CHECK_OBJ(l, L2_MAGIC);
	pthread_mutex_lock(&l->lock);
	*out = l->info;
	pthread_mutex_unlock(&l->lock);
}

struct l2 *l2_new(const struct config *cfg)
{
	struct l2 *l = calloc(1, sizeof(*l));
	pthread_condattr_t ca;

	if (l == NULL)
		return NULL;
	INIT_OBJ(l, L2_MAGIC);
	l->stale_window = cfg->stale_while_revalidate;
	l->tok_lease_ms = (int)(cfg->connect_timeout + cfg->timeout) * 1000 + 5000;
	l->max_body = cfg->max_entry_size;
	l->backoff_ms = BACKOFF_MIN_MS;
	TAILQ_INIT(&l->ready);
	TAILQ_INIT(&l->waiting);
	pthread_mutex_init(&l->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&l->cond, &ca);
	pthread_condattr_destroy(&ca);
	return l;
}

int l2_start(struct l2 *l, struct cluster *c, char *err, size_t errlen)
{
	int rc;

	CHECK_OBJ(l, L2_MAGIC);
	AN(c);
	l->c = c;
	if (asprintf(&l->tok_key, "%s:token", cluster_key_prefix(c)) < 0 ||
	    asprintf(&l->tok_lkey, "%s:token:lease", cluster_key_prefix(c)) < 0) {
		errbuf_set(err, errlen, "shared cache: out of memory");
		return -1;
	}
	if ((rc = pthread_create(&l->thr, NULL, run, l)) != 0) {
		errbuf_set(err, errlen, "shared cache: cannot start its thread: %s", strerror(rc));
		return -1;
	}
	pthread_mutex_lock(&l->lock);
	l->started = 1;
	pthread_mutex_unlock(&l->lock);
	return 0;
}

void l2_stop(struct l2 *l)
{
	struct jobq left = TAILQ_HEAD_INITIALIZER(left);
	struct l2_ticket *j;
	int started;

	if (l == NULL)
		return;
	CHECK_OBJ(l, L2_MAGIC);
	pthread_mutex_lock(&l->lock);
	l->stop = 1;
	started = l->started;
	l->started = 0;
	pthread_cond_signal(&l->cond);
	pthread_mutex_unlock(&l->lock);
	if (started)
		pthread_join(l->thr, NULL);
	/* No new job is queued once stop is set; what is left is answered. */
	pthread_mutex_lock(&l->lock);
	TAILQ_CONCAT(&left, &l->ready, link);
	TAILQ_CONCAT(&left, &l->waiting, link);
	pthread_mutex_unlock(&l->lock);
	while ((j = TAILQ_FIRST(&left)) != NULL) {
		TAILQ_REMOVE(&left, j, link);
		if (j->kind == J_LOOKUP) {
			answer(l, j, L2_ALONE, NULL); /* frees it */
			continue;
		}
		if (j->kind == J_TOKEN_ASK)
			token_reply(j, NULL);
		job_free(&j);
	}
}

void l2_free(struct l2 **lp)
{
	struct l2 *l = *lp;

	if (l == NULL)
		return;
	*lp = NULL;
	l2_stop(l);
	free(l->tok_key);
	free(l->tok_lkey);
	if (l->ctx != NULL)
		redisFree(l->ctx);
	pthread_cond_destroy(&l->cond);
	pthread_mutex_destroy(&l->lock);
	FINI_OBJ(l);
	free(l);
}
