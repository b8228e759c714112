/*
 * flight: the table of running fetches and what each one ended with.
 *
 * One lock guards the table and every flight's state: flights are few (one
 * per key being fetched) and each holds it for a few pointer moves.  A
 * flight's fetch delivers to a collector (collect.c) alone, whose done()
 * runs on the upstream worker at the end; the answer is turned into an
 * entry and kept (through the keeper) before any waiter is woken, so a
 * woken waiter and every later request find it.
 */
#include "flight.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <time.h>

#include "check.h"
#include "clock.h"
#include "collect.h"
#include "config.h"
#include "hdr.h"
#include "hot.h"
#include "keeper.h"
#include "policy.h"

struct waiter {
	void *arg;
	void (*unpark)(void *);
	STAILQ_ENTRY(waiter) link;
};
STAILQ_HEAD(waiters, waiter);

struct flight {
	unsigned magic;
#define FLIGHT_MAGIC 0x5be0c2d1u
	struct flights *fs;
	int refs; /* under fs->lock */
	char *key, *path;
	int family;
	unsigned gen;
	struct hot_entry *stale;
	struct hdr *req; /* the fields the fetch was sent with (Vary) */
	struct up_xfer *x;
	int done;
	enum flight_outcome outcome;
	struct hot_entry *entry;
	int revalidated;
	enum up_error err;
	char detail[512];
	struct waiters waiters;  /* resumed in arrival order */
	LIST_ENTRY(flight) link; /* the table, while running */
	int in_table;
};

/* What recent flights taught about a key, by hash: a small table where a
 * collision only costs a forgotten note. */
#define NOTES 256
#define TOO_LARGE_FOR 600 /* s a too-large key goes straight to the API */
#define COOLDOWN_FOR 10   /* s without background refreshes after a failed one */

struct note {
	uint64_t hash;
	int64_t too_large_until, cooldown_until;
};

struct flights {
	const struct config *cfg;
	struct upstream *up;
	struct keeper *keeper;
	struct hot *hot;
	struct policy *policy;
	pthread_mutex_t lock;
	pthread_cond_t idle; /* signalled when no flight runs */
	LIST_HEAD(, flight) running;
	int live;   /* flights not yet finished, in the table or not */
	int waking; /* finish() calls resuming waiters */
	struct note notes[NOTES];
};

/* Fields a kept answer must not replay: framing and per-hop details, and
 * cookies, which belong to one client and a flight answers many. */
/* (Date and Age stay: the API's Date is not rewritten, libmicrohttpd adds
 * none then; hot.c sends the API's Age plus the time stored.) */
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

struct flights *flights_new(const struct config *cfg, struct upstream *up, struct keeper *keeper,
			    struct hot *hot, struct policy *policy)
{
	struct flights *fs = calloc(1, sizeof(*fs));

	if (fs == NULL)
		return NULL;
	fs->cfg = cfg;
	fs->up = up;
	fs->keeper = keeper;
	fs->hot = hot;
	fs->policy = policy;
	pthread_mutex_init(&fs->lock, NULL);
	LIST_INIT(&fs->running);
	{
		pthread_condattr_t ca;

		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&fs->idle, &ca);
		pthread_condattr_destroy(&ca);
	}
	return fs;
}

void flights_free(struct flights **fsp)
{
	struct flights *fs = *fsp;

	if (fs == NULL)
		return;
	pthread_mutex_destroy(&fs->lock);
	pthread_cond_destroy(&fs->idle);
	free(fs);
	*fsp = NULL;
}

int flights_drain(struct flights *fs, double seconds)
{
	struct timespec ts;
	int idle;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += (time_t)seconds;
	ts.tv_nsec += (long)((seconds - (double)(time_t)seconds) * 1e9);
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&fs->lock);
	while ((fs->live > 0 || fs->waking > 0) &&
	       pthread_cond_timedwait(&fs->idle, &fs->lock, &ts) == 0)
		;
	idle = fs->live == 0 && fs->waking == 0;
	pthread_mutex_unlock(&fs->lock);
	return idle;
}

static void flight_free(struct flight *f)
{
	CHECK_OBJ(f, FLIGHT_MAGIC);
	ASSERT(f->refs == 0 && !f->in_table && STAILQ_EMPTY(&f->waiters));
	upstream_xfer_release(&f->x);
	hot_entry_unref(&f->stale);
	hot_entry_unref(&f->entry);
	hdr_free(&f->req);
	free(f->key);
	free(f->path);
	FINI_OBJ(f);
	free(f);
}

void flight_unref(struct flight **fp)
{
	struct flight *f = *fp;
	int left;

	if (f == NULL)
		return;
	CHECK_OBJ(f, FLIGHT_MAGIC);
	*fp = NULL;
	pthread_mutex_lock(&f->fs->lock);
	left = --f->refs;
	ASSERT(left >= 0);
	pthread_mutex_unlock(&f->fs->lock);
	if (left == 0)
		flight_free(f);
}

static void xfer_ref_free(void *arg)
{
	struct flight *f = arg;

	flight_unref(&f);
}

/* ---- notes ---- */

static void note(struct flights *fs, const char *key, int too_large_for, int cooldown_for)
{
	uint64_t h = hot_key_hash(key);
	struct note *n = &fs->notes[h % NOTES];
	int64_t now = clock_wall();

	pthread_mutex_lock(&fs->lock);
	if (n->hash != h)
		memset(n, 0, sizeof(*n));
	n->hash = h;
	if (too_large_for > 0)
		n->too_large_until = now + too_large_for;
	if (cooldown_for > 0)
		n->cooldown_until = now + cooldown_for;
	pthread_mutex_unlock(&fs->lock);
}

int flight_noted(struct flights *fs, const char *key, enum flight_note what)
{
	uint64_t h = hot_key_hash(key);
	const struct note *n = &fs->notes[h % NOTES];
	int64_t now = clock_wall();
	int yes;

	pthread_mutex_lock(&fs->lock);
	yes = n->hash == h &&
	      now < (what == FLIGHT_TOO_LARGE ? n->too_large_until : n->cooldown_until);
	pthread_mutex_unlock(&fs->lock);
	return yes;
}

/* ---- the end of a flight (upstream worker) ---- */

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

/* Seconds fresh from now, and the API's Age (see policy_answer_ttl()). */
static unsigned ttl_for(struct flights *fs, int family, const struct hdr *h, int64_t now,
			unsigned *age)
{
	return policy_answer_ttl(fs->policy, family, h, now, age);
}

/* A 304 to our conditional fetch: the expired entry, fresh again. */
static struct hot_entry *revalidated(struct flight *f, const struct collected *c)
{
	struct flights *fs = f->fs;
	size_t len;
	char *text = merge_304(hot_entry_headers(f->stale), c->headers, &len);
	struct hot_entry *e = NULL;
	int64_t now = clock_wall();

	if (text != NULL) {
		struct hdr *h = hdr_parse(text, len);
		unsigned age = 0, ttl = h != NULL ? ttl_for(fs, f->family, h, now, &age) : 0;

		hdr_free(&h);
		e = hot_entry_refreshed(f->stale, text, len, now, now + ttl);
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
static struct hot_entry *answered(struct flights *fs, const char *key, int family, const char *path,
				  const struct collected *c, const struct hdr *req)
{
	const struct hdr *h = c->headers;
	long status = c->status;
	int64_t now = clock_wall();
	unsigned age = 0;
	/* Only a framed answer is known to be whole: one the API ended by
	 * closing the connection is handed on, never kept. */
	unsigned ttl = status == 200 && c->framed ? ttl_for(fs, family, h, now, &age) : 0;
	struct hot_entry_init in = { 0 };
	struct hot_entry *e;
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
	e = hot_entry_new(&in);
	free((char *)in.headers);
	return e;
}

struct hot_entry *flight_keep(struct flights *fs, const char *key, int family, const char *path,
			      unsigned gen, const struct collected *c)
{
	struct hot_entry *e = answered(fs, key, family, path, c, NULL);

	if (e != NULL && hot_entry_key(e) != NULL)
		keeper_store(fs->keeper, e, gen, NULL, NULL);
	return e;
}

/* Takes f out of the table (if it is still there: a write may have
 * replaced it with a newer flight), dropping the table's reference; the
 * caller still holds one. */
static void unlink_locked(struct flights *fs, struct flight *f)
{
	if (!f->in_table)
		return;
	LIST_REMOVE(f, link);
	f->in_table = 0;
	f->refs--;
	ASSERT(f->refs > 0);
}

/* Takes f out of the table, marks it ended, wakes its waiters.  The
 * outcome is set before, so a woken waiter reads it complete. */
static void finish(struct flights *fs, struct flight *f)
{
	struct up_xfer *mine;
	struct waiters woken;
	struct waiter *w;

	CHECK_OBJ(f, FLIGHT_MAGIC);
	pthread_mutex_lock(&fs->lock);
	ASSERT(!f->done);
	f->done = 1;
	unlink_locked(fs, f);
	fs->live--;
	fs->waking++;
	STAILQ_INIT(&woken);
	STAILQ_CONCAT(&woken, &f->waiters);
	mine = f->x;
	f->x = NULL;
	pthread_mutex_unlock(&fs->lock);
	while ((w = STAILQ_FIRST(&woken)) != NULL) {
		STAILQ_REMOVE_HEAD(&woken, link);
		w->unpark(w->arg);
		free(w);
	}
	/* Idle only once every waiter is resumed: the server may stop then. */
	pthread_mutex_lock(&fs->lock);
	if (--fs->waking == 0 && fs->live == 0)
		pthread_cond_broadcast(&fs->idle);
	pthread_mutex_unlock(&fs->lock);
	upstream_xfer_release(&mine);
}

/* The keeper has the answer in memory and in the file: now the waiters. */
static void kept(void *arg, struct hot_entry *e)
{
	struct flight *f = arg;

	if (e != f->entry) {
		hot_entry_unref(&f->entry);
		f->entry = hot_entry_ref(e);
	}
	finish(f->fs, f);
	flight_unref(&f); /* the keeper job's */
}

/* The collector's done(), on the upstream worker: the fetch ended. */
static void on_collected(void *arg, const struct collected *c)
{
	struct flight *f = arg;
	struct flights *fs = f->fs;
	int keep = 0;

	CHECK_OBJ(f, FLIGHT_MAGIC);
	if (c->end == COLLECT_WHOLE) {
		if (c->status == 304 && f->stale != NULL) {
			f->entry = revalidated(f, c);
			f->revalidated = f->entry != NULL;
		} else {
			f->entry = answered(fs, f->key, f->family, f->path, c, f->req);
		}
		f->outcome = FLIGHT_ENTRY;
		if (f->entry == NULL) {
			f->outcome = FLIGHT_ERROR;
			f->err = UP_ERR_INTERNAL;
			snprintf(f->detail, sizeof(f->detail), "out of memory keeping the answer");
		} else {
			keep = hot_entry_key(f->entry) != NULL &&
			       hot_entry_expires_at(f->entry) > hot_entry_stored_at(f->entry);
		}
	} else if (c->end == COLLECT_TOO_LARGE) {
		f->outcome = FLIGHT_DIRECT;
		note(fs, f->key, TOO_LARGE_FOR, 0);
	} else {
		f->outcome = FLIGHT_ERROR;
		f->err = c->err;
		snprintf(f->detail, sizeof(f->detail), "%s", c->detail);
	}
	if (!keep) {
		/* Not kept (a failure, an error answer): background refreshes of
		 * this key pause, or a stale entry would refetch on every hit. */
		note(fs, f->key, 0, COOLDOWN_FOR);
		finish(fs, f);
		return;
	}
	/* Waiters wake once the answer is kept, so whoever asks next finds it. */
	pthread_mutex_lock(&fs->lock);
	f->refs++;
	pthread_mutex_unlock(&fs->lock);
	if (f->revalidated)
		keeper_refresh(fs->keeper, f->entry, hot_entry_stored_at(f->stale), f->gen, kept,
			       f);
	else
		keeper_store(fs->keeper, f->entry, f->gen, kept, f);
}

/* ---- starting ---- */

static struct hdr *fetch_headers(const struct flight_req *rq)
{
	struct hdr *h = hdr_new();
	const struct hdr *st = rq->stale != NULL ? hot_entry_headers(rq->stale) : NULL;
	const char *etag = st != NULL ? hdr_get(st, "ETag") : NULL;
	const char *lm = st != NULL ? hdr_get(st, "Last-Modified") : NULL;

	if (h == NULL ||
	    (rq->headers != NULL && hdr_copy_end_to_end(h, rq->headers, send_skip) < 0))
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

static struct flight *find(struct flights *fs, const char *key)
{
	struct flight *f;

	LIST_FOREACH(f, &fs->running, link)
	if (strcmp(f->key, key) == 0)
		return f;
	return NULL;
}

/* Called with fs->lock held; a new flight in the table (one ref: the
 * table's), or NULL. */
static struct flight *create(struct flights *fs, const struct flight_req *rq)
{
	struct flight *f = calloc(1, sizeof(*f));
	size_t plen = strcspn(rq->target, "?");

	if (f == NULL)
		return NULL;
	INIT_OBJ(f, FLIGHT_MAGIC);
	STAILQ_INIT(&f->waiters);
	f->fs = fs;
	f->refs = 1;
	f->family = rq->family;
	f->gen = hot_gen(fs->hot, rq->family);
	f->key = strdup(rq->key);
	f->path = strndup(rq->target, plen);
	if ((f->req = hdr_new()) != NULL && rq->headers != NULL &&
	    hdr_copy_end_to_end(f->req, rq->headers, NULL) < 0)
		hdr_free(&f->req);
	if (f->key == NULL || f->path == NULL || f->req == NULL) {
		hdr_free(&f->req);
		free(f->key);
		free(f->path);
		free(f);
		return NULL;
	}
	f->stale = hot_entry_ref(rq->stale);
	LIST_INSERT_HEAD(&fs->running, f, link);
	f->in_table = 1;
	fs->live++;
	return f;
}

/* Outside the lock: hands the fetch to the upstream worker. */
static void launch(struct flights *fs, struct flight *f, const struct flight_req *rq)
{
	struct up_request req = { 0 };
	struct up_sink sink;
	struct hdr *h = fetch_headers(rq);
	struct up_xfer *x = NULL;
	int nomem = h == NULL;

	req.method = "GET";
	req.target = rq->target;
	req.headers = h;
	req.accept_identity = 1; /* what the cache keeps; gzip is made here */
	pthread_mutex_lock(&fs->lock);
	f->refs++; /* the transfer's, released through the sink's free */
	pthread_mutex_unlock(&fs->lock);
	if (h != NULL &&
	    collect_sink(fs->cfg->max_entry_size, on_collected, xfer_ref_free, f, &sink) < 0) {
		hdr_free(&h);
		nomem = 1;
	}
	if (h != NULL)
		x = upstream_start(fs->up, &req, NULL, &sink);
	else
		xfer_ref_free(f);
	hdr_free(&h);
	if (x == NULL) {
		/* Never started, so never ends by itself: end it here. */
		f->outcome = FLIGHT_ERROR;
		f->err = UP_ERR_INTERNAL;
		snprintf(f->detail, sizeof(f->detail), "%s",
			 nomem ? "out of memory" :
				 "the upstream request could not start (out of memory, or "
				 "kaleidod is stopping)");
		finish(fs, f);
		return;
	}
	pthread_mutex_lock(&fs->lock);
	if (f->done) {
		pthread_mutex_unlock(&fs->lock);
		upstream_xfer_release(&x);
		return;
	}
	f->x = x;
	pthread_mutex_unlock(&fs->lock);
}

struct flight *flight_join(struct flights *fs, const struct flight_req *rq, int *started)
{
	struct flight *f;
	pthread_mutex_lock(&fs->lock);
	if ((f = find(fs, rq->key)) != NULL) {
		if (f->gen == hot_gen(fs->hot, rq->family)) {
			f->refs++;
			pthread_mutex_unlock(&fs->lock);
			*started = 0;
			return f;
		}
		/* Started before a write to its family: its answer may predate
		 * the write.  Its waiters keep it; newcomers get a new fetch. */
		unlink_locked(fs, f);
	}
	if ((f = create(fs, rq)) == NULL) {
		pthread_mutex_unlock(&fs->lock);
		return NULL;
	}
	f->refs++; /* the caller's */
	pthread_mutex_unlock(&fs->lock);
	*started = 1;
	launch(fs, f, rq);
	return f;
}

int flight_start(struct flights *fs, const struct flight_req *rq)
{
	int started;
	struct flight *f = flight_join(fs, rq, &started);

	if (f == NULL)
		return -1;
	flight_unref(&f);
	return started;
}

const struct hdr *flight_request(const struct flight *f)
{
	return f->req;
}

int flight_wait(struct flight *f, void (*park)(void *), void (*unpark)(void *), void *arg)
{
	struct waiter *w;

	CHECK_OBJ(f, FLIGHT_MAGIC);
	pthread_mutex_lock(&f->fs->lock);
	if (f->done) {
		pthread_mutex_unlock(&f->fs->lock);
		return 0;
	}
	if ((w = calloc(1, sizeof(*w))) == NULL) {
		pthread_mutex_unlock(&f->fs->lock);
		return 0; /* the caller sees no outcome yet and fetches on its own */
	}
	w->arg = arg;
	w->unpark = unpark;
	STAILQ_INSERT_TAIL(&f->waiters, w, link);
	park(arg);
	pthread_mutex_unlock(&f->fs->lock);
	return 1;
}

void flight_leave(struct flight *f, void *arg)
{
	struct waiter *gone = NULL;

	CHECK_OBJ(f, FLIGHT_MAGIC);
	pthread_mutex_lock(&f->fs->lock);
	STAILQ_FOREACH(gone, &f->waiters, link)
	if (gone->arg == arg)
		break;
	if (gone != NULL)
		STAILQ_REMOVE(&f->waiters, gone, waiter, link);
	pthread_mutex_unlock(&f->fs->lock);
	free(gone);
}

enum flight_outcome flight_outcome(struct flight *f)
{
	int done;

	pthread_mutex_lock(&f->fs->lock);
	done = f->done;
	pthread_mutex_unlock(&f->fs->lock);
	/* Not ended (a waiter that could not wait): it fetches on its own. */
	return done ? f->outcome : FLIGHT_DIRECT;
}

struct hot_entry *flight_entry(struct flight *f, int *reval)
{
	if (reval != NULL)
		*reval = f->revalidated;
	return f->entry;
}

enum up_error flight_error(struct flight *f, const char **detail)
{
	if (detail != NULL)
		*detail = f->detail;
	return f->err;
}
