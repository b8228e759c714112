/*
 * cluster: coherence with the other instances through Redis.  See cluster.h.
 *
 * One thread, two connections (hiredis 0.14, synchronous, with timeouts):
 * "cmd" runs the publishing scripts and the catch-up reads, "sub" stays
 * subscribed to the channel.  The thread polls sub's socket and an eventfd
 * (serve threads' invalidations), pings sub once a second so a Redis that
 * stops answering is noticed within PONG_LIMIT_MS, and on any error drops
 * both connections and tries again with backoff.  What was not published
 * stays pending, so a write made while Redis is away is announced when it
 * is back; what this instance missed meanwhile, the generations tell.
 */
#include "cluster.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "clock.h"
#include "coherence.h"
#include "config.h"
#include "errbuf.h"
#include "gateway.h"
#include "keeper.h"
#include "log.h"
#include "objtab.h"
#include "policy.h"
#include "redislink.h"
#include "secret.h"

#define CLUSTER_MAGIC 0xc1a57e42u
#define IO_TIMEOUT_MS 1000 /* a connect or a command; then the link is dropped */
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define PING_EVERY_MS 1000
#define PONG_LIMIT_MS 3000    /* sub silent this long after a PING: Redis is gone */
#define LOG_EVERY_MS 60000    /* at most one "unreachable" line a minute */
#define FIRST_CONTACT_MS 2500 /* cluster_new() waits this long for the first */
#define MAX_PREFIXES 16       /* prefix purges pending; beyond, every family */
#define POLL_MS 100           /* the loop comes round at least this often (shared limits) */
#define USAGE_EVERY_MS 200    /* accounts' requests are told this often */
#define STOP_FLUSH_MS 1500    /* what is pending at stop goes out within this, or not */

/* A generation bumped and announced in one step (a script runs atomically),
 * so no instance can see the one without the other.  The generation is the
 * count and the publisher's nonce (coherence.h): never the same twice,
 * whatever Redis forgot. */
static const char bump_script[] =
	"local n = tonumber(string.match(redis.call('GET', KEYS[1]) or '', '^%d+')) or 0 "
	"local g = (n + 1) .. ':' .. ARGV[4] "
	"redis.call('SET', KEYS[1], g) "
	"redis.call('PUBLISH', KEYS[2], ARGV[1] .. ' ' .. g .. ' ' .. ARGV[2] .. ' ' .. ARGV[3]) "
	"return g";

struct cluster {
	unsigned magic;
	struct objtab *tab;
	struct keeper *keeper;
	struct gateway *gw; /* NULL: no accounts, no limits to share */
	int nfam;
	const char *names[CONFIG_MAX_FAMILIES]; /* the policy's, for serve threads */
	char *redis, *prefix, *password, *chan, *epoch_key;
	char *gen_keys[CONFIG_MAX_FAMILIES + 1];
	char host[256];
	unsigned port;              /* 0: host is a unix socket's path */
	struct rlink_target target; /* the above, the password and the origin */
	char origin[COH_ORIGIN_LEN + 1];
	int efd;
	pthread_t thr;
	int started;

	/* the thread's alone */
	struct coh *coh;
	redisContext *cmd, *sub;
	int backoff_ms;
	int64_t next_try, ping_sent, last_heard, logged_at, down_at;
	int ping_out, ever_up;
	int proven;        /* the link answered a PING since it was made */
	int dropped;       /* families the last join dropped, for its log line */
	unsigned attempts; /* failed since the last log line */
	int64_t publish_after, refused_logged; /* Redis refused a publish: wait */
	int64_t usage_at;                      /* accounts' requests last told */
	int publish_backoff_ms;
	uint64_t rng; /* backoff jitter */

	pthread_mutex_t lock; /* below; a leaf */
	pthread_cond_t first;
	int first_done, stop;
	uint32_t pend_fam;
	uint32_t pub_fam; /* taken from pend_fam by a flush not yet over */
	int pub_pfx;      /* prefixes likewise */
	char *pend_pfx[MAX_PREFIXES];
	int npfx;
	enum cluster_state state;
	double since;
	unsigned long long published, received, applied, catchups, connects, errors;
	unsigned long long shared_out, shared_in, failures_in;
	char last_error[160];
};

/* A number below span, from xorshift64 seeded by getrandom: the jitter that
 * keeps instances cut off together from coming back at once, and the
 * nonce that makes each generation unique. */
static int64_t rnd(struct cluster *c, int64_t span)
{
	c->rng ^= c->rng << 13;
	c->rng ^= c->rng >> 7;
	c->rng ^= c->rng << 17;
	return span > 0 ? (int64_t)(c->rng % (uint64_t)span) : 0;
}

/* Every family's bit. */
static uint32_t all_families(const struct cluster *c)
{
	return c->nfam >= 32 ? UINT32_MAX : (1u << c->nfam) - 1;
}

const char *cluster_state_name(enum cluster_state s)
{
	switch (s) {
	case CLUSTER_OFF:
		return "off";
	case CLUSTER_CONNECTING:
		return "connecting";
	case CLUSTER_UP:
		return "up";
	case CLUSTER_DOWN:
		return "down";
	}
	return "?";
}

/* --- the local side: what Redis tells us to do ----------------------------- */

static void drop_family(struct cluster *c, int family)
{
	keeper_invalidate(c->keeper, family);
}

static void nopark(void *arg)
{
	(void)arg;
}

static void purge_prefix(struct cluster *c, const char *what)
{
	int parked;
	struct keeper_purge *t = keeper_purge_start(c->keeper, CACHE_PURGE_PREFIX, what, nopark,
						    nopark, NULL, &parked);

	/* Nobody waits for a purge another instance asked for: the ticket is
	 * dropped, the file thread keeps its own reference until done.  One
	 * that cannot be queued (no memory) becomes every family dropped,
	 * which cannot fail: the generation already says it was applied. */
	if (t != NULL) {
		keeper_purge_result(&t);
		return;
	}
	for (int i = 0; i < c->nfam; i++)
		drop_family(c, i);
}

/* --- the link ----------------------------------------------------------- */

static void set_state(struct cluster *c, enum cluster_state s, const char *why)
{
	pthread_mutex_lock(&c->lock);
	if (c->state != s) {
		c->state = s;
		c->since = (double)time(NULL);
	}
	if (why != NULL)
		snprintf(c->last_error, sizeof(c->last_error), "%s", why);
	pthread_mutex_unlock(&c->lock);
}

static void hang_up(struct cluster *c)
{
	if (c->cmd != NULL)
		redisFree(c->cmd);
	if (c->sub != NULL)
		redisFree(c->sub);
	c->cmd = c->sub = NULL;
	c->ping_out = 0;
}

static redisReply *must(redisContext *ctx, char *why, size_t len, int argc, const char **argv)
{
	return rlink_must(ctx, why, len, argc, argv, NULL);
}

static redisContext *dial(struct cluster *c, const char *role, char *why, size_t len)
{
	return rlink_dial(&c->target, role, IO_TIMEOUT_MS, why, len);
}

static void apply(struct cluster *c, const struct coh_action *a)
{
	if (a->verb == COH_INVALIDATE)
		drop_family(c, a->family);
	else if (a->verb == COH_PURGE)
		purge_prefix(c, a->what);
	if (a->verb != COH_NONE) {
		pthread_mutex_lock(&c->lock);
		c->applied++;
		pthread_mutex_unlock(&c->lock);
	}
}

/* Subscribed first, then the generations read: an announcement made in
 * between is both seen in the generations and received, which costs at
 * most one refetch; none can fall between the two. */
static int join(struct cluster *c, char *why, size_t len, int *dropped)
{
	const char *argv[CONFIG_MAX_FAMILIES + 4];
	const char *gens[CONFIG_MAX_FAMILIES + 1];
	char epoch[33];
	redisReply *r;
	uint32_t drop, rewound;
	const char *ep;
	int n = coh_count(c->coh), purge_all;

	argv[0] = "SUBSCRIBE";
	argv[1] = c->chan;
	if ((r = must(c->sub, why, len, 2, argv)) == NULL)
		return -1;
	freeReplyObject(r);
	/* the epoch names this Redis's generations; set once, by whoever is first */
	rlink_random_hex(epoch, 16);
	argv[0] = "SET";
	argv[1] = c->epoch_key;
	argv[2] = epoch;
	argv[3] = "NX";
	if ((r = must(c->cmd, why, len, 4, argv)) == NULL)
		return -1;
	freeReplyObject(r);
	argv[0] = "MGET";
	argv[1] = c->epoch_key;
	for (int i = 0; i < n; i++)
		argv[2 + i] = c->gen_keys[i];
	if ((r = must(c->cmd, why, len, n + 2, argv)) == NULL)
		return -1;
	if (r->type != REDIS_REPLY_ARRAY || r->elements != (size_t)n + 1) {
		snprintf(why, len, "MGET: unexpected answer");
		freeReplyObject(r);
		return -1;
	}
	for (int i = 0; i < n; i++)
		gens[i] = r->element[i + 1]->type == REDIS_REPLY_STRING ? r->element[i + 1]->str :
									  NULL;
	ep = r->element[0]->type == REDIS_REPLY_STRING ? r->element[0]->str : NULL;
	rewound = coh_rewound(c->coh, ep, gens);
	*dropped = coh_catchup(c->coh, ep, gens, &drop, &purge_all);
	freeReplyObject(r);
	if (rewound != 0) {
		/* Bumped again before anything is read under them: the
		 * shared cache's values from before are invisible then. */
		log_warnx("cluster: redis %s went back in time (restored from a snapshot, or a "
			  "replica promoted while behind): %d families' generations are moved on "
			  "again",
			  c->redis, __builtin_popcount(rewound));
		pthread_mutex_lock(&c->lock);
		c->pend_fam |= rewound;
		pthread_mutex_unlock(&c->lock);
	}
	if (purge_all) {
		drop = all_families(c);
		*dropped = c->nfam;
	}
	for (int i = 0; i < c->nfam; i++)
		if (drop & (1u << i))
			drop_family(c, i);
	return 0;
}

static void note_down(struct cluster *c, const char *verb, const char *why)
{
	int64_t now = clock_mono_ms();

	pthread_mutex_lock(&c->lock);
	c->errors++;
	pthread_mutex_unlock(&c->lock);
	set_state(c, CLUSTER_DOWN, why);
	if (c->down_at == 0)
		c->down_at = now;
	c->attempts++;
	if (c->logged_at == 0 || now - c->logged_at >= LOG_EVERY_MS) {
		if (c->logged_at == 0)
			log_warnx(
				"cluster: %s redis %s (%s); serving from this instance's own cache, "
				"retrying",
				verb, c->redis, why);
		else
			log_warnx(
				"cluster: redis %s still unreachable (%s): %u attempts in the last "
				"minute; serving from this instance's own cache",
				c->redis, why, c->attempts);
		c->logged_at = now;
		c->attempts = 0;
	}
	c->next_try = now + c->backoff_ms + rnd(c, c->backoff_ms / 5 + 1);
	c->backoff_ms = c->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : c->backoff_ms * 2;
}

static void lost(struct cluster *c, const char *why)
{
	char copy[160];

	/* why may be a link's errstr, which hang_up() frees */
	snprintf(copy, sizeof(copy), "%s", why);
	hang_up(c);
	note_down(c, "lost", copy);
}

static void drain_sub(struct cluster *c);

static void attempt(struct cluster *c)
{
	char why[160] = "";
	int dropped = 0;

	if ((c->cmd = dial(c, "cmd", why, sizeof(why))) == NULL ||
	    (c->sub = dial(c, "sub", why, sizeof(why))) == NULL ||
	    join(c, why, sizeof(why), &dropped) < 0) {
		hang_up(c);
		note_down(c, "cannot reach", why);
		return;
	}
	pthread_mutex_lock(&c->lock);
	c->connects++;
	if (c->ever_up)
		c->catchups += (unsigned long long)dropped;
	pthread_mutex_unlock(&c->lock);
	set_state(c, CLUSTER_UP, "");
	if (!c->ever_up)
		log_info("cluster: joined through redis %s (prefix %s); %d families dropped from "
			 "this instance's cache, which may predate writes made elsewhere",
			 c->redis, c->prefix, dropped);
	c->ever_up = 1;
	c->dropped = dropped;
	c->proven = 0;
	c->last_heard = clock_mono_ms();
	/* Messages that came with the answer to SUBSCRIBE are already read. */
	drain_sub(c);
}

/* The link answered its first PING: now it counts as back (a link that
 * Redis drops right after each join keeps its backoff and its log rate). */
static void proven(struct cluster *c)
{
	if (c->down_at != 0)
		log_info("cluster: redis %s reachable again after %.1f s; %d families missed "
			 "changes and were dropped",
			 c->redis, (double)(clock_mono_ms() - c->down_at) / 1000, c->dropped);
	c->proven = 1;
	c->backoff_ms = BACKOFF_MIN_MS;
	c->logged_at = c->down_at = 0;
	c->attempts = 0;
}

/* Bumps generation idx and announces it.  0; -1 when the link failed; -2
 * when Redis refused (an ACL, a read-only replica, out of memory): the link
 * stays, the item waits.  why says which. */
static int publish(struct cluster *c, int idx, const char *verb, const char *what, char *why,
		   size_t len)
{
	char nonce[17];
	const char *argv[9] = { "EVAL",    bump_script, "2",  c->gen_keys[idx], c->chan, verb,
				c->origin, what,        nonce };
	redisReply *r;

	snprintf(nonce, sizeof(nonce), "%016llx", (unsigned long long)rnd(c, INT64_MAX));
	r = redisCommandArgv(c->cmd, 9, argv, NULL);

	if (r == NULL) {
		snprintf(why, len, "%s", c->cmd->errstr[0] ? c->cmd->errstr : "connection lost");
		return -1;
	}
	if (r->type == REDIS_REPLY_ERROR) {
		snprintf(why, len, "EVAL: %s", r->str != NULL ? r->str : "error");
		freeReplyObject(r);
		return -2;
	}
	/* What we know of the generation moves only with the channel, our own
	 * announcement included, which comes in order with the others'. */
	log_debug("cluster: published %s %s (generation %s)", verb, what,
		  r->type == REDIS_REPLY_STRING ? r->str : "?");
	/* ... but the count is remembered at once: a Redis that comes back
	 * below it went back in time (join()), even if our announcement
	 * never came round before it went. */
	if (r->type == REDIS_REPLY_STRING)
		coh_bumped(c->coh, idx, r->str);
	freeReplyObject(r);
	pthread_mutex_lock(&c->lock);
	c->published++;
	pthread_mutex_unlock(&c->lock);
	return 0;
}

/* Redis refused a publish: what is pending waits, with backoff, and the
 * reason is logged at most once a minute. */
static void refused(struct cluster *c, const char *why)
{
	int64_t now = clock_mono_ms();

	pthread_mutex_lock(&c->lock);
	c->errors++;
	snprintf(c->last_error, sizeof(c->last_error), "%s", why);
	pthread_mutex_unlock(&c->lock);
	if (c->refused_logged == 0 || now - c->refused_logged >= LOG_EVERY_MS) {
		log_warnx("cluster: redis %s refuses to publish (%s); this instance's "
			  "invalidations wait, the others keep their copies until their TTLs",
			  c->redis, why);
		c->refused_logged = now;
	}
	c->publish_backoff_ms = c->publish_backoff_ms == 0 ? BACKOFF_MIN_MS :
				c->publish_backoff_ms * 2 > BACKOFF_MAX_MS ?
							     BACKOFF_MAX_MS :
							     c->publish_backoff_ms * 2;
	c->publish_after = now + c->publish_backoff_ms;
}

/* Publishes what is pending until deadline; what is left (an error, or the
 * deadline) stays pending. */
static void flush(struct cluster *c, int64_t deadline)
{
	uint32_t fam;
	char *pfx[MAX_PREFIXES], why[160] = "";
	int npfx, rc = 0;

	pthread_mutex_lock(&c->lock);
	fam = c->pend_fam;
	c->pend_fam = 0;
	npfx = c->npfx;
	memcpy(pfx, c->pend_pfx, sizeof(pfx));
	c->npfx = 0;
	/* still unsettled (cluster_settled) until Redis has the bumps */
	c->pub_fam = fam;
	c->pub_pfx = npfx;
	pthread_mutex_unlock(&c->lock);
	for (int i = 0; i < c->nfam && rc == 0 && clock_mono_ms() < deadline; i++)
		if ((fam & (1u << i)) &&
		    (rc = publish(c, i, "inv", coh_name(c->coh, i), why, sizeof(why))) == 0)
			fam &= ~(1u << i);
	for (int j = 0; j < npfx && rc == 0 && clock_mono_ms() < deadline; j++)
		if ((rc = publish(c, c->nfam, "purge", pfx[j], why, sizeof(why))) == 0) {
			free(pfx[j]);
			pfx[j] = NULL;
		}
	/* What was not published goes back in the queue, ahead of nothing in
	 * particular: order does not matter, each is a bump. */
	pthread_mutex_lock(&c->lock);
	c->pend_fam |= fam;
	c->pub_fam = 0;
	c->pub_pfx = 0;
	for (int j = 0; j < npfx; j++) {
		if (pfx[j] == NULL)
			continue;
		if (c->npfx < MAX_PREFIXES) {
			c->pend_pfx[c->npfx++] = pfx[j];
		} else {
			c->pend_fam = all_families(c); /* too many: everything */
			free(pfx[j]);
		}
	}
	pthread_mutex_unlock(&c->lock);
	if (rc == -1)
		lost(c, why);
	else if (rc == -2)
		refused(c, why);
	else
		c->publish_backoff_ms = 0;
}

/* --- shared limits -------------------------------------------------------- */

struct usage {
	char *text; /* " NAME=N" each */
	size_t len, cap;
	unsigned long long total;
	int failed;
};

static void usage_one(void *arg, const char *name, unsigned n)
{
	struct usage *u = arg;
	char one[96];
	int k = snprintf(one, sizeof(one), " %s=%u", name, n);

	if (u->failed || k <= 0 || (size_t)k >= sizeof(one))
		return;
	if (u->len + (size_t)k + 1 > u->cap) {
		size_t cap = u->cap ? u->cap * 2 : 1024;
		char *t = realloc(u->text, cap);

		if (t == NULL) {
			u->failed = 1; /* told next time: the counts stay untold */
			return;
		}
		u->text = t;
		u->cap = cap;
	}
	memcpy(u->text + u->len, one, (size_t)k + 1);
	u->len += (size_t)k;
	u->total += n;
}

/* Publishes "VERB ORIGIN" and u's words, in messages of at most about
 * 4 KiB.  0, or -1 when the link failed (then lost). */
static int tell(struct cluster *c, const char *verb, const struct usage *u)
{
	size_t at = 0;

	while (at < u->len) {
		size_t end = at + 4000 < u->len ? at + 4000 : u->len;
		char *msg = NULL;
		redisReply *r;
		const char *argv[3] = { "PUBLISH", c->chan, NULL };

		while (end < u->len && u->text[end] != ' ')
			end--; /* whole NAME=N words */
		if (asprintf(&msg, "%s %s%.*s", verb, c->origin, (int)(end - at), u->text + at) < 0)
			return 0; /* told next time round, maybe: limits loosen, nothing breaks */
		argv[2] = msg;
		r = redisCommandArgv(c->cmd, 3, argv, NULL);
		free(msg);
		if (r == NULL) {
			lost(c, c->cmd->errstr[0] ? c->cmd->errstr : "connection lost");
			return -1;
		}
		freeReplyObject(r);
		at = end;
	}
	return 0;
}

/* Tells the others what the accounts did through this instance (requests,
 * and failed logins by address).  Lost with a failing link: limits then
 * loosen for a moment, and nobody gets an error. */
static void share_usage(struct cluster *c)
{
	struct usage used = { 0 }, failed = { 0 };
	int64_t now = clock_mono_ms();

	if (c->gw == NULL || now - c->usage_at < USAGE_EVERY_MS)
		return;
	c->usage_at = now;
	/* collected under the gateway's lock, told without it */
	gateway_take_untold(c->gw, usage_one, &used);
	gateway_take_untold_failures(c->gw, usage_one, &failed);
	if (tell(c, "use", &used) == 0 && c->cmd != NULL && tell(c, "fail", &failed) == 0) {
		pthread_mutex_lock(&c->lock);
		c->shared_out += used.total;
		pthread_mutex_unlock(&c->lock);
	}
	free(used.text);
	free(failed.text);
}

/* "use ORIGIN NAME=N ...": another instance's account requests, spent
 * here; "fail ORIGIN IP=N ...": its failed logins, counted here.  1 when
 * msg was one of those (well formed or not), 0 when it is something else. */
static int heard_usage(struct cluster *c, const char *msg, size_t len)
{
	struct timespec ts;
	int fail = len >= 5 && memcmp(msg, "fail ", 5) == 0;
	const char *p = msg + (fail ? 5 : 4), *end = msg + len;
	unsigned long long total = 0;

	if (!fail && (len < 4 || memcmp(msg, "use ", 4) != 0))
		return 0;
	if (c->gw == NULL || (size_t)(end - p) < COH_ORIGIN_LEN ||
	    memcmp(p, c->origin, COH_ORIGIN_LEN) == 0)
		return 1; /* no accounts here, or our own */
	clock_gettime(CLOCK_MONOTONIC, &ts);
	p += COH_ORIGIN_LEN;
	while (p < end && *p == ' ') {
		char name[80];
		const char *eq, *w = ++p;
		unsigned long n;
		char *stop;

		while (p < end && *p != ' ')
			p++;
		if ((eq = memchr(w, '=', (size_t)(p - w))) == NULL || eq == w ||
		    (size_t)(eq - w) >= sizeof(name))
			continue;
		memcpy(name, w, (size_t)(eq - w));
		name[eq - w] = '\0';
		n = strtoul(eq + 1, &stop, 10);
		if (stop != p || n == 0 || n > 1000000)
			continue;
		if (fail) {
			gateway_failed_elsewhere(c->gw, name, (unsigned)n);
			total += n;
		} else if (gateway_spend(c->gw, name, (unsigned)n,
					 (double)ts.tv_sec + (double)ts.tv_nsec / 1e9) == 0) {
			total += n;
		}
	}
	pthread_mutex_lock(&c->lock);
	if (fail)
		c->failures_in += total;
	else
		c->shared_in += total;
	pthread_mutex_unlock(&c->lock);
	return 1;
}

static void on_reply(struct cluster *c, redisReply *r)
{
	struct coh_action a;

	c->last_heard = clock_mono_ms();
	if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
	    r->element[0]->type != REDIS_REPLY_STRING)
		return;
	if (strcmp(r->element[0]->str, "pong") == 0) {
		c->ping_out = 0;
		if (!c->proven)
			proven(c);
		return;
	}
	if (strcmp(r->element[0]->str, "message") != 0 || r->elements != 3 ||
	    r->element[2]->type != REDIS_REPLY_STRING)
		return;
	if (heard_usage(c, r->element[2]->str, r->element[2]->len))
		return;
	if (coh_message(c->coh, r->element[2]->str, r->element[2]->len, &a) < 0) {
		log_debug("cluster: a message not ours to read on %s", c->chan);
		return;
	}
	if (a.verb != COH_NONE) {
		pthread_mutex_lock(&c->lock);
		c->received++;
		pthread_mutex_unlock(&c->lock);
		log_debug("cluster: applying %.*s", (int)r->element[2]->len, r->element[2]->str);
	}
	apply(c, &a);
}

/* Takes every whole reply hiredis has read on the subscribed link. */
static void drain_sub(struct cluster *c)
{
	void *r = NULL;

	while (c->sub != NULL) {
		if (redisGetReplyFromReader(c->sub, &r) != REDIS_OK) {
			lost(c, c->sub->errstr[0] ? c->sub->errstr : "protocol error");
			return;
		}
		if (r == NULL)
			return;
		on_reply(c, r);
		freeReplyObject(r);
	}
}

static void read_sub(struct cluster *c)
{
	if (redisBufferRead(c->sub) != REDIS_OK) {
		lost(c, c->sub->errstr[0] ? c->sub->errstr : "connection closed");
		return;
	}
	drain_sub(c);
}

/* A PING on the subscribed link each second; no answer in PONG_LIMIT_MS: lost. */
static void keepalive(struct cluster *c)
{
	int64_t now = clock_mono_ms();
	int done = 0;

	if (c->ping_out) {
		struct pollfd p = { c->sub->fd, POLLIN, 0 };

		if (now - c->ping_sent <= PONG_LIMIT_MS)
			return;
		/* The answer may be waiting unread (a slow flush kept the loop
		 * away): read before judging. */
		if (poll(&p, 1, 0) > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR)))
			read_sub(c);
		if (c->sub != NULL && c->ping_out)
			lost(c, "no answer to PING");
		return;
	}
	if (now - c->last_heard < PING_EVERY_MS)
		return;
	if (redisAppendCommand(c->sub, "PING") != REDIS_OK)
		goto fail;
	while (!done)
		if (redisBufferWrite(c->sub, &done) != REDIS_OK)
			goto fail;
	c->ping_out = 1;
	c->ping_sent = now;
	return;
fail:
	lost(c, c->sub->errstr[0] ? c->sub->errstr : "write failed");
}

static int stopping(struct cluster *c)
{
	int s;

	pthread_mutex_lock(&c->lock);
	s = c->stop;
	pthread_mutex_unlock(&c->lock);
	return s;
}

static int pending(struct cluster *c)
{
	int p;

	pthread_mutex_lock(&c->lock);
	p = c->pend_fam != 0 || c->npfx > 0;
	pthread_mutex_unlock(&c->lock);
	return p;
}

static void first_done(struct cluster *c)
{
	pthread_mutex_lock(&c->lock);
	if (!c->first_done) {
		c->first_done = 1;
		pthread_cond_broadcast(&c->first);
	}
	pthread_mutex_unlock(&c->lock);
}

static void *run(void *arg)
{
	struct cluster *c = arg;

	pthread_setname_np(pthread_self(), "kd-cluster");
	while (!stopping(c)) {
		struct pollfd p[2] = { { c->efd, POLLIN, 0 }, { -1, POLLIN, 0 } };
		int64_t now = clock_mono_ms(), wait = POLL_MS;
		uint64_t v;

		if (c->sub == NULL && now >= c->next_try) {
			attempt(c);
			first_done(c);
		}
		if (c->sub != NULL && pending(c) && now >= c->publish_after)
			flush(c, INT64_MAX);
		if (c->sub != NULL)
			share_usage(c);
		if (c->sub != NULL)
			keepalive(c);
		if (c->sub != NULL) {
			p[1].fd = c->sub->fd;
		} else if (c->next_try - now < wait) {
			wait = c->next_try > now ? c->next_try - now : 0;
		}
		if (poll(p, 2, (int)wait) < 0 && errno != EINTR)
			continue;
		if (p[0].revents & POLLIN)
			(void)!read(c->efd, &v, sizeof(v));
		if (c->sub != NULL && (p[1].revents & (POLLIN | POLLHUP | POLLERR)))
			read_sub(c);
	}
	/* Stopping: what this instance changed last still goes out if Redis
	 * answers now; otherwise it is lost with the process (the others keep
	 * their copies until the TTLs end). */
	if (c->sub != NULL && pending(c))
		flush(c, clock_mono_ms() + STOP_FLUSH_MS);
	hang_up(c);
	return NULL;
}

/* --- the interface ---------------------------------------------------------- */

void cluster_invalidated(struct cluster *c, int family)
{
	if (c == NULL)
		return;
	CHECK_OBJ(c, CLUSTER_MAGIC);
	pthread_mutex_lock(&c->lock);
	if (family < 0)
		c->pend_fam = all_families(c);
	else if (family < c->nfam)
		c->pend_fam |= 1u << family;
	pthread_mutex_unlock(&c->lock);
	(void)!write(c->efd, &(uint64_t){ 1 }, sizeof(uint64_t));
}

void cluster_purged(struct cluster *c, enum cache_purge kind, const char *what)
{
	char *copy;

	if (c == NULL)
		return;
	CHECK_OBJ(c, CLUSTER_MAGIC);
	if (kind != CACHE_PURGE_PREFIX) {
		/* a family's or everything: the generations carry it */
		int family = -1;

		for (int i = 0; kind == CACHE_PURGE_FAMILY && i < c->nfam; i++)
			if (strcmp(c->names[i], what) == 0)
				family = i;
		if (kind == CACHE_PURGE_FAMILY && family < 0)
			return;
		cluster_invalidated(c, family);
		return;
	}
	copy = strdup(what);
	pthread_mutex_lock(&c->lock);
	if (copy != NULL && c->npfx < MAX_PREFIXES) {
		c->pend_pfx[c->npfx++] = copy;
		copy = NULL;
	} else {
		/* more than the queue holds (or no memory): everything goes */
		c->pend_fam = all_families(c);
	}
	pthread_mutex_unlock(&c->lock);
	free(copy);
	(void)!write(c->efd, &(uint64_t){ 1 }, sizeof(uint64_t));
}

const struct rlink_target *cluster_target(struct cluster *c)
{
	CHECK_OBJ(c, CLUSTER_MAGIC);
	return &c->target;
}

const char *cluster_key_prefix(struct cluster *c)
{
	CHECK_OBJ(c, CLUSTER_MAGIC);
	return c->prefix;
}

const char *cluster_gen_key(struct cluster *c, int family)
{
	CHECK_OBJ(c, CLUSTER_MAGIC);
	ASSERT(family >= -1 && family < c->nfam);
	return c->gen_keys[family < 0 ? c->nfam : family];
}

int cluster_settled(struct cluster *c, int family)
{
	int yes;

	CHECK_OBJ(c, CLUSTER_MAGIC);
	ASSERT(family >= 0 && family < c->nfam);
	pthread_mutex_lock(&c->lock);
	yes = c->state == CLUSTER_UP && c->npfx == 0 && c->pub_pfx == 0 &&
	      !((c->pend_fam | c->pub_fam) & (1u << family));
	pthread_mutex_unlock(&c->lock);
	return yes;
}

void cluster_info(struct cluster *c, struct cluster_info *out)
{
	memset(out, 0, sizeof(*out));
	out->state = CLUSTER_OFF;
	if (c == NULL)
		return;
	CHECK_OBJ(c, CLUSTER_MAGIC);
	out->redis = c->redis;
	out->prefix = c->prefix;
	pthread_mutex_lock(&c->lock);
	out->state = c->state;
	out->since = c->since;
	out->published = c->published;
	out->received = c->received;
	out->applied = c->applied;
	out->catchups = c->catchups;
	out->connects = c->connects;
	out->errors = c->errors;
	out->shared_out = c->shared_out;
	out->shared_in = c->shared_in;
	out->failures_in = c->failures_in;
	out->pending = (unsigned)__builtin_popcount(c->pend_fam) + (unsigned)c->npfx;
	snprintf(out->last_error, sizeof(out->last_error), "%s", c->last_error);
	pthread_mutex_unlock(&c->lock);
}

/* kaleidod: and a hash of the API's URL and the client id: one namespace
 * per workspace, the same on every instance configured alike. */
char *cluster_default_prefix(const struct config *cfg)
{
	unsigned char d[32];
	char hex[17], *in = NULL, *out = NULL;
	int n = asprintf(&in, "%s\n%s", cfg->upstream_url,
			 cfg->client_id != NULL ? cfg->client_id : "");

	if (n < 0)
		return NULL;
	if (gnutls_hash_fast(GNUTLS_DIG_SHA256, in, (size_t)n, d) == 0) {
		rlink_hex(hex, d, 8);
		if (asprintf(&out, "kaleidod:%s", hex) < 0)
			out = NULL;
	}
	free(in);
	return out;
}

struct cluster *cluster_new(const struct config *cfg, struct policy *policy, struct objtab *tab,
			    struct keeper *keeper, struct gateway *gw, char *err, size_t errlen)
{
	struct cluster *c;
	pthread_condattr_t ca;
	struct timespec until;
	int rc;

	AN(cfg->cluster_redis);
	if ((c = calloc(1, sizeof(*c))) == NULL)
		goto nomem;
	INIT_OBJ(c, CLUSTER_MAGIC);
	c->efd = -1;
	c->tab = tab;
	c->keeper = keeper;
	c->gw = gw;
	c->nfam = policy_family_count(policy);
	ASSERT(c->nfam <= CONFIG_MAX_FAMILIES);
	c->state = CLUSTER_CONNECTING;
	c->since = (double)time(NULL);
	c->backoff_ms = BACKOFF_MIN_MS;
	pthread_mutex_init(&c->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&c->first, &ca);
	pthread_condattr_destroy(&ca);
	if (config_parse_redis(cfg->cluster_redis, c->host, sizeof(c->host), &c->port) < 0) {
		errbuf_set(err, errlen, "[cluster] redis: cannot read %s", cfg->cluster_redis);
		goto fail;
	}
	rlink_random_hex(c->origin, COH_ORIGIN_LEN / 2);
	if (getrandom(&c->rng, sizeof(c->rng), 0) != (ssize_t)sizeof(c->rng) || c->rng == 0)
		c->rng = (uint64_t)clock_mono_ms() | 1;
	for (int i = 0; i < c->nfam; i++)
		c->names[i] = policy_family_name(policy, i);
	if ((c->redis = strdup(cfg->cluster_redis)) == NULL ||
	    (c->prefix = cfg->cluster_prefix != NULL ? strdup(cfg->cluster_prefix) :
						       cluster_default_prefix(cfg)) == NULL ||
	    (cfg->cluster_password != NULL &&
	     (c->password = strdup(cfg->cluster_password)) == NULL) ||
	    asprintf(&c->chan, "%s:events", c->prefix) < 0 ||
	    asprintf(&c->epoch_key, "%s:epoch", c->prefix) < 0 ||
	    (c->coh = coh_new(c->nfam, c->names, c->origin)) == NULL)
		goto nomem;
	for (int i = 0; i < coh_count(c->coh); i++)
		if (asprintf(&c->gen_keys[i], "%s:gen:%s", c->prefix, coh_name(c->coh, i)) < 0) {
			c->gen_keys[i] = NULL;
			goto nomem;
		}
	if (c->password != NULL)
		log_add_secret(c->password);
	c->target.host = c->host;
	c->target.port = c->port;
	c->target.password = c->password;
	c->target.origin = c->origin;
	if ((c->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
		errbuf_set(err, errlen, "cluster: eventfd: %s", strerror(errno));
		goto fail;
	}
	if ((rc = pthread_create(&c->thr, NULL, run, c)) != 0) {
		errbuf_set(err, errlen, "cluster: cannot start its thread: %s", strerror(rc));
		goto fail;
	}
	c->started = 1;
	clock_mono_deadline(&until, FIRST_CONTACT_MS);
	pthread_mutex_lock(&c->lock);
	while (!c->first_done && pthread_cond_timedwait(&c->first, &c->lock, &until) == 0)
		;
	pthread_mutex_unlock(&c->lock);
	return c;
nomem:
	errbuf_set(err, errlen, "cluster: out of memory");
fail:
	cluster_free(&c);
	return NULL;
}

void cluster_free(struct cluster **cp)
{
	struct cluster *c = *cp;

	if (c == NULL)
		return;
	*cp = NULL;
	CHECK_OBJ(c, CLUSTER_MAGIC);
	if (c->started) {
		pthread_mutex_lock(&c->lock);
		c->stop = 1;
		pthread_mutex_unlock(&c->lock);
		(void)!write(c->efd, &(uint64_t){ 1 }, sizeof(uint64_t));
		pthread_join(c->thr, NULL);
	}
	hang_up(c);
	for (int i = 0; i < c->npfx; i++)
		free(c->pend_pfx[i]);
	for (int i = 0; i <= CONFIG_MAX_FAMILIES; i++)
		free(c->gen_keys[i]);
	if (c->password != NULL)
		log_forget_secret(c->password);
	secret_free(&c->password);
	coh_free(&c->coh);
	free(c->redis);
	free(c->prefix);
	free(c->chan);
	free(c->epoch_key);
	if (c->efd >= 0)
		close(c->efd);
	pthread_cond_destroy(&c->first);
	pthread_mutex_destroy(&c->lock);
	FINI_OBJ(c);
	free(c);
}
