/*
 * flight: one upstream fetch for the object table.
 *
 * A flight holds its table fetch, the transfer, and the collector's end
 * until objtab_fetch_done() has run: references from its launcher, the
 * transfer (released through the sink's free) and the compressing job.
 * The flights count the live ones, so that shutdown can wait for every
 * waiter to be resumed.
 */
#include "flight.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "clock.h"
#include "collect.h"
#include "config.h"
#include "entry.h"
#include "hdr.h"
#include "keeper.h"
#include "l2.h"
#include "objtab.h"
#include "policy.h"

struct flight {
	unsigned magic;
#define FLIGHT_MAGIC 0x5be0c2d2u
	atomic_int refs;
	struct flights *fs;
	struct objtab_fetch *f; /* a reference */
	char *path;
	struct up_xfer *x; /* under fs->lock; released at the end */
	int ended;         /* under fs->lock */
	struct objtab_result res;
	char detail[512];
	/* until the transfer starts (the shared cache is asked first) */
	char *target;
	struct hdr *h;
	struct l2_ticket *ticket; /* the cluster's lease on the key, held */
};

struct flights {
	const struct config *cfg;
	struct upstream *up;
	struct keeper *keeper;
	struct objtab *tab;
	struct policy *policy;
	struct l2 *l2; /* NULL: no shared cache */
	pthread_mutex_t lock;
	pthread_cond_t idle; /* signalled when no flight runs */
	int live;            /* flights not yet ended */
};

struct flights *flights_new(const struct config *cfg, struct upstream *up, struct keeper *keeper,
			    struct objtab *tab, struct policy *policy)
{
	struct flights *fs = calloc(1, sizeof(*fs));
	pthread_condattr_t ca;

	if (fs == NULL)
		return NULL;
	fs->cfg = cfg;
	fs->up = up;
	fs->keeper = keeper;
	fs->tab = tab;
	fs->policy = policy;
	pthread_mutex_init(&fs->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&fs->idle, &ca);
	pthread_condattr_destroy(&ca);
	return fs;
}

void flights_free(struct flights **fsp)
{
	struct flights *fs = *fsp;

	if (fs == NULL)
		return;
	ASSERT(fs->live == 0);
	pthread_mutex_destroy(&fs->lock);
	pthread_cond_destroy(&fs->idle);
	free(fs);
	*fsp = NULL;
}

int flights_drain(struct flights *fs, double seconds)
{
	struct timespec ts;
	int idle;

	clock_mono_deadline(&ts, (int64_t)(seconds * 1000));
	pthread_mutex_lock(&fs->lock);
	while (fs->live > 0 && pthread_cond_timedwait(&fs->idle, &fs->lock, &ts) == 0)
		;
	idle = fs->live == 0;
	pthread_mutex_unlock(&fs->lock);
	return idle;
}

static struct flight *flight_ref(struct flight *fl)
{
	CHECK_OBJ(fl, FLIGHT_MAGIC);
	atomic_fetch_add(&fl->refs, 1);
	return fl;
}

static void flight_unref(struct flight **flp)
{
	struct flight *fl = *flp;

	if (fl == NULL)
		return;
	*flp = NULL;
	CHECK_OBJ(fl, FLIGHT_MAGIC);
	if (atomic_fetch_sub(&fl->refs, 1) != 1)
		return;
	ASSERT(fl->x == NULL);
	ASSERT(fl->ticket == NULL);
	hdr_free(&fl->h);
	free(fl->target);
	entry_unref(&fl->res.entry);
	objtab_fetch_unref(&fl->f);
	free(fl->path);
	FINI_OBJ(fl);
	free(fl);
}

static void xfer_ref_free(void *arg)
{
	struct flight *fl = arg;

	flight_unref(&fl);
}

/* Fields a kept answer must not replay: framing and per-hop details, and
 * cookies, which belong to one client and a flight answers many. */
/* (Date and Age stay: the API's Date is not rewritten, libmicrohttpd adds
 * none then; deliver.c sends the API's Age plus the time stored.) */
static const char *const keep_skip[] = { "Content-Length", "Content-Encoding", "Set-Cookie",
					 "Warning",        "X-Cache",          NULL };
/* What a shared fetch must not carry from the client that started it. */
static const char *const send_skip[] = { "If-None-Match",
					 "If-Modified-Since",
					 "If-Match",
					 "If-Unmodified-Since",
					 "If-Range",
					 "Cache-Control",
					 "Pragma",
					 "Range",
					 NULL };

/* The stored headers with the 304's fields in place of theirs. */
static char *merge_304(const struct hdr *stored, const struct hdr *fresh, size_t *len)
{
	struct hdr *upd = hdr_new(), *out = hdr_new();
	char *text = NULL;

	if (upd == NULL || out == NULL || hdr_copy_end_to_end(upd, fresh, keep_skip) < 0)
		goto done;
	for (size_t i = 0; i < hdr_count(stored); i++) {
		const char *n = hdr_name(stored, i), *v = hdr_value(stored, i);

		if (hdr_get(upd, n) == NULL && hdr_add(out, n, strlen(n), v, strlen(v)) < 0)
			goto done;
	}
	for (size_t i = 0; i < hdr_count(upd); i++) {
		const char *n = hdr_name(upd, i), *v = hdr_value(upd, i);

		if (hdr_add(out, n, strlen(n), v, strlen(v)) < 0)
			goto done;
	}
	text = hdr_serialize(out, len);
done:
	hdr_free(&upd);
	hdr_free(&out);
	return text;
}

/* A 304 to our conditional fetch: its base, fresh again. */
static struct entry *revalidated(struct flights *fs, int family, struct entry *base,
				 const struct collected *c)
{
	size_t len;
	char *text = merge_304(entry_headers(base), c->headers, &len);
	struct entry *e = NULL;
	int64_t now = clock_wall();

	if (text != NULL) {
		struct hdr *h = hdr_parse(text, len);
		unsigned age = 0,
			 ttl = h != NULL ? policy_answer_ttl(fs->policy, family, h, now, &age) : 0;

		hdr_free(&h);
		e = entry_refreshed(base, text, len, now, now + ttl);
		free(text);
	}
	return e;
}

static const char *hdr_field(void *arg, const char *name)
{
	return hdr_get(arg, name);
}

/* A whole answer: kept when it is a storable 200, and not a variant for
 * fields the fetch carried (req; NULL: unknown), handed over either way. */
static struct entry *answered(struct flights *fs, const char *key, int family, const char *path,
			      const struct collected *c, const struct hdr *req)
{
	const struct hdr *h = c->headers;
	long status = c->status;
	int64_t now = clock_wall();
	unsigned age = 0;
	/* Only a framed answer is known to be whole: one the API ended by
	 * closing the connection is handed on, never kept. */
	unsigned ttl = status == 200 && c->framed ?
			       policy_answer_ttl(fs->policy, family, h, now, &age) :
			       0;
	struct entry_init in = { 0 };
	struct entry *e;
	struct hdr *keep = hdr_new();

	ASSERT(c->end == COLLECT_WHOLE);
	if (keep == NULL || hdr_copy_end_to_end(keep, h, keep_skip) < 0) {
		hdr_free(&keep);
		return NULL;
	}
	in.body_len = c->len;
	if ((in.body = malloc(in.body_len + 1)) == NULL) {
		hdr_free(&keep);
		return NULL;
	}
	memcpy(in.body, c->body, in.body_len);
	const char *vary = hdr_get(h, "Vary");

	if (vary != NULL && policy_vary_beyond_key(vary) &&
	    (req == NULL || policy_vary_carried(vary, hdr_field, (void *)req)))
		ttl = 0;
	in.key = ttl > 0 ? key : NULL;
	in.family = family;
	in.path = path;
	in.status = status;
	in.headers = hdr_serialize(keep, &in.headers_len);
	in.stored_at = now;
	in.expires_at = now + ttl;
	hdr_free(&keep);
	if (in.headers == NULL) {
		free(in.body);
		return NULL;
	}
	e = entry_new(&in);
	free((char *)in.headers);
	return e;
}

/* A streamed answer on its way to the file: compressed first. */
struct streamed {
	struct flights *fs;
	struct entry *e;
	unsigned gen;
};

static void streamed_compressed(void *arg, struct entry *z)
{
	struct streamed *st = arg;

	/* Over the copy in memory, unless a newer answer replaced it. */
	objtab_store(st->fs->tab, z, st->gen, st->e, 1);
	entry_unref(&st->e);
	free(st);
}

void flight_keep_streamed(struct flights *fs, const char *key, int family, const char *path,
			  unsigned gen, const struct collected *c)
{
	struct entry *e = answered(fs, key, family, path, c, NULL);
	struct streamed *st;

	if (e != NULL && entry_key(e) != NULL && objtab_store(fs->tab, e, gen, NULL, 0) &&
	    (st = calloc(1, sizeof(*st))) != NULL) {
		st->fs = fs;
		st->e = entry_ref(e);
		st->gen = gen;
		keeper_compress(fs->keeper, e, streamed_compressed, st);
	}
	entry_unref(&e);
}

/* ---- the end of a flight ---- */

/* Hands the result to the table (which keeps it and wakes the waiters),
 * then counts the flight out. */
static void end(struct flight *fl)
{
	struct flights *fs = fl->fs;
	struct up_xfer *mine;

	/* The cluster gets what this instance keeps, and its lease back. */
	if (fl->ticket != NULL)
		l2_store(fs->l2, &fl->ticket,
			 fl->res.outcome == OBJTAB_ENTRY && fl->res.keep ? fl->res.entry : NULL);
	objtab_fetch_done(fs->tab, fl->f, &fl->res);
	pthread_mutex_lock(&fs->lock);
	fl->ended = 1;
	mine = fl->x;
	fl->x = NULL;
	/* Idle only once every waiter is resumed: the server may stop then. */
	if (--fs->live == 0)
		pthread_cond_broadcast(&fs->idle);
	pthread_mutex_unlock(&fs->lock);
	upstream_xfer_release(&mine);
}

/* The compressed answer, on the keeper's compressing thread. */
static void compressed(void *arg, struct entry *e)
{
	struct flight *fl = arg;

	if (e != fl->res.entry) {
		entry_unref(&fl->res.entry);
		fl->res.entry = entry_ref(e);
	}
	end(fl);
	flight_unref(&fl); /* the compressing job's */
}

/* The collector's done(), on the upstream worker: the fetch ended. */
static void on_collected(void *arg, const struct collected *c)
{
	struct flight *fl = arg;
	struct flights *fs = fl->fs;
	struct objtab_result *res = &fl->res;
	struct entry *base = objtab_fetch_base(fl->f);
	int family = objtab_fetch_family(fl->f);

	CHECK_OBJ(fl, FLIGHT_MAGIC);
	if (c->end == COLLECT_WHOLE) {
		res->outcome = OBJTAB_ENTRY;
		if (c->status == 304 && base != NULL) {
			res->entry = revalidated(fs, family, base, c);
			res->revalidated = res->entry != NULL;
		} else {
			res->entry = answered(fs, objtab_fetch_key(fl->f), family, fl->path, c,
					      objtab_fetch_request(fl->f));
		}
		if (res->entry == NULL) {
			res->outcome = OBJTAB_ERROR;
			res->err = UP_ERR_INTERNAL;
			res->detail = "out of memory keeping the answer";
		} else {
			res->keep = entry_key(res->entry) != NULL &&
				    entry_expires_at(res->entry) > entry_stored_at(res->entry);
		}
	} else if (c->end == COLLECT_TOO_LARGE) {
		res->outcome = OBJTAB_DIRECT;
	} else {
		res->outcome = OBJTAB_ERROR;
		res->err = (int)c->err;
		snprintf(fl->detail, sizeof(fl->detail), "%s", c->detail);
		res->detail = fl->detail;
	}
	if (!res->keep) {
		end(fl);
		return;
	}
	/* A new body gets its gzip copy first (a 304's base has one), so
	 * every waiter and every later hit can be served compressed. */
	if (res->revalidated) {
		end(fl);
		return;
	}
	keeper_compress(fs->keeper, res->entry, compressed, flight_ref(fl));
}

/* ---- starting ---- */

/* The fields a fetch is sent with: the client's, less what belongs to it
 * alone, plus the base's validators. */
static struct hdr *fetch_headers(const struct hdr *client, const struct entry *base)
{
	struct hdr *h = hdr_new();
	const struct hdr *st = base != NULL ? entry_headers(base) : NULL;
	const char *etag = st != NULL ? hdr_get(st, "ETag") : NULL;
	const char *lm = st != NULL ? hdr_get(st, "Last-Modified") : NULL;

	if (h == NULL || (client != NULL && hdr_copy_end_to_end(h, client, send_skip) < 0))
		goto fail;
	if (etag != NULL && hdr_add(h, "If-None-Match", 13, etag, strlen(etag)) < 0)
		goto fail;
	if (lm != NULL && hdr_add(h, "If-Modified-Since", 17, lm, strlen(lm)) < 0)
		goto fail;
	return h;
fail:
	hdr_free(&h);
	return NULL;
}

/* Sends the flight to the API (fl->h, fl->target), or ends it. */
static void go(struct flight *fl)
{
	struct flights *fs = fl->fs;
	struct up_request req = { 0 };
	struct up_sink sink;
	struct up_xfer *x = NULL;
	const char *why = "out of memory";

	req.method = "GET";
	req.target = fl->target;
	req.headers = fl->h;
	req.accept_identity = 1; /* what the cache keeps; gzip is made here */
	req.scope = objtab_fetch_family(fl->f);
	if (fl->h != NULL && fl->target != NULL &&
	    collect_sink(fs->cfg->max_entry_size, on_collected, xfer_ref_free, flight_ref(fl),
			 &sink) == 0) {
		x = upstream_start(fs->up, &req, NULL, &sink);
		if (x == NULL)
			why = "the upstream request could not start (out of memory, or kaleidod "
			      "is stopping)";
	} else if (fl->h != NULL && fl->target != NULL) {
		flight_unref(&(struct flight *){ fl }); /* the sink's, never given */
	}
	hdr_free(&fl->h);
	if (x == NULL) {
		/* Never started, so never ends by itself: end it here. */
		fl->res.outcome = OBJTAB_ERROR;
		fl->res.err = UP_ERR_INTERNAL;
		snprintf(fl->detail, sizeof(fl->detail), "%s", why);
		fl->res.detail = fl->detail;
		end(fl);
		return;
	}
	pthread_mutex_lock(&fs->lock);
	if (!fl->ended) {
		fl->x = x;
		x = NULL;
	}
	pthread_mutex_unlock(&fs->lock);
	upstream_xfer_release(&x);
}

/* The shared cache's answer, on its thread. */
static void on_l2(void *arg, enum l2_answer a, struct entry *e, struct l2_ticket *t)
{
	struct flight *fl = arg;

	CHECK_OBJ(fl, FLIGHT_MAGIC);
	/* Redis keeps only the answer for requests that do not carry the
	 * fields it varies on (answered() keeps no other); this fetch's
	 * waiters may carry them: then the API answers them. */
	if (a == L2_HIT && entry_vary(e) != NULL &&
	    (objtab_fetch_request(fl->f) == NULL ||
	     policy_vary_carried(entry_vary(e), hdr_field, (void *)objtab_fetch_request(fl->f)))) {
		entry_unref(&e);
		a = L2_ALONE;
	}
	if (a == L2_HIT) {
		/* As if the API had answered, gzip copy included: kept here
		 * too (the entry's expiry is the one the fetcher gave it). */
		fl->res.outcome = OBJTAB_ENTRY;
		fl->res.entry = e;
		fl->res.keep = 1;
		end(fl);
	} else {
		fl->ticket = t;
		go(fl);
	}
	flight_unref(&fl); /* the lookup's */
}

void flights_set_l2(struct flights *fs, struct l2 *l2)
{
	fs->l2 = l2;
}

void flight_run(struct flights *fs, struct objtab_fetch *f, const char *target,
		const struct hdr *headers)
{
	struct flight *fl = calloc(1, sizeof(*fl));
	struct hdr *sent = NULL;

	pthread_mutex_lock(&fs->lock);
	fs->live++;
	pthread_mutex_unlock(&fs->lock);
	if (fl == NULL) {
		struct objtab_result res = { .outcome = OBJTAB_ERROR,
					     .err = UP_ERR_INTERNAL,
					     .detail = "out of memory" };

		objtab_fetch_done(fs->tab, f, &res);
		pthread_mutex_lock(&fs->lock);
		if (--fs->live == 0)
			pthread_cond_broadcast(&fs->idle);
		pthread_mutex_unlock(&fs->lock);
		return;
	}
	INIT_OBJ(fl, FLIGHT_MAGIC);
	atomic_init(&fl->refs, 1);
	fl->fs = fs;
	fl->f = f;
	objtab_fetch_ref(f);
	fl->path = strndup(target, strcspn(target, "?"));
	fl->target = strdup(target);
	/* What the fetch carried, for the waiters' Vary. */
	if ((sent = hdr_new()) != NULL && headers != NULL &&
	    hdr_copy_end_to_end(sent, headers, NULL) < 0)
		hdr_free(&sent);
	if (sent != NULL)
		objtab_fetch_set_request(f, sent);
	if (fl->path != NULL && sent != NULL)
		fl->h = fetch_headers(headers, objtab_fetch_base(f));
	/* With a shared cache, the cluster first: another instance may have
	 * the answer, or be fetching it. */
	if (fs->l2 != NULL && fl->h != NULL && fl->target != NULL)
		l2_lookup(fs->l2, objtab_fetch_key(f), objtab_fetch_family(f), fl->path, on_l2,
			  flight_ref(fl));
	else
		go(fl);
	flight_unref(&fl);
}
