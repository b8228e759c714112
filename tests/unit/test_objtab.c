/*
 * test_objtab: the object table with a fake clock and a fake file.
 *
 * One fetch per key however many ask (and every waiter woken once, also
 * when the fetch fails), the cooldown after a failure, a waiter leaving,
 * invalidation racing a fetch (the old answer reaches its waiters and is
 * never kept), a 304 merged only into the version it revalidated, eviction
 * with its second chance, entries on their way to the file, loads from it
 * (and an invalidation during one), the lookup flags, and many threads at
 * once for the sanitizers.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "entry.h"
#include "objtab.h"

#define NFAM 3
#define WINDOW 60 /* s of stale-while-revalidate in these tests */
#define T0 1000000
#define JSON_HDR "Content-Type: application/json\n" /* hdr_serialize() text */

static int64_t now_s = T0;

static int64_t fake_now(void)
{
	return now_s;
}

static unsigned fixed_window(const struct entry *e, void *arg)
{
	(void)e;
	(void)arg;
	return WINDOW;
}

/* ---- the fake file ---- */

#define FILE_ROWS 16
#define QUEUE_MAX 32

struct fx {
	struct objtab *t;
	struct entry *rows[FILE_ROWS];  /* what the file holds */
	struct entry *queue[QUEUE_MAX]; /* handed to write, not yet written */
	int nq, loads, writes, refuse;
	unsigned last_gen;
	int64_t last_was_at;
	int invalidate_in_load; /* family to invalidate while a load runs, or -1 */
};

static struct entry *file_load(void *arg, const char *key, int family)
{
	struct fx *fx = arg;

	(void)family;
	fx->loads++;
	if (fx->invalidate_in_load >= 0)
		objtab_invalidate(fx->t, fx->invalidate_in_load);
	for (int i = 0; i < FILE_ROWS; i++)
		if (fx->rows[i] != NULL && strcmp(entry_key(fx->rows[i]), key) == 0)
			return entry_ref(fx->rows[i]);
	return NULL;
}

static int file_write(void *arg, struct entry *e, unsigned gen, int64_t was_at)
{
	struct fx *fx = arg;

	if (fx->refuse)
		return -1;
	assert_true(fx->nq < QUEUE_MAX);
	fx->writes++;
	fx->last_gen = gen;
	fx->last_was_at = was_at;
	fx->queue[fx->nq++] = entry_ref(e);
	return 0;
}

/* The file thread's turn: every queued entry lands, then is written. */
static void file_flush(struct fx *fx)
{
	for (int i = 0; i < fx->nq; i++) {
		struct entry *e = fx->queue[i];
		int slot = -1;

		for (int j = 0; j < FILE_ROWS; j++)
			if (fx->rows[j] != NULL &&
			    strcmp(entry_key(fx->rows[j]), entry_key(e)) == 0)
				slot = j;
		for (int j = 0; slot < 0 && j < FILE_ROWS; j++)
			if (fx->rows[j] == NULL)
				slot = j;
		assert_true(slot >= 0);
		entry_unref(&fx->rows[slot]);
		fx->rows[slot] = entry_ref(e);
		objtab_written(fx->t, e);
		entry_unref(&fx->queue[i]);
	}
	fx->nq = 0;
}

static struct fx *fx_new(size_t max_bytes, int with_file)
{
	struct objtab_config cfg = {
		.max_bytes = max_bytes,
		.nfamilies = NFAM,
		.stale_window = fixed_window,
		.now = fake_now,
	};
	struct fx *fx = calloc(1, sizeof(*fx));

	assert_non_null(fx);
	now_s = T0;
	fx->invalidate_in_load = -1;
	fx->t = objtab_new(&cfg);
	assert_non_null(fx->t);
	if (with_file) {
		struct objtab_backend be = { file_load, file_write, fx };

		objtab_set_backend(fx->t, &be);
	}
	return fx;
}

static void fx_free(struct fx *fx)
{
	for (int i = 0; i < fx->nq; i++)
		entry_unref(&fx->queue[i]);
	objtab_free(&fx->t);
	for (int i = 0; i < FILE_ROWS; i++)
		entry_unref(&fx->rows[i]);
	free(fx);
}

/* ---- entries and requests ---- */

static struct entry *mk_entry(const char *key, int family, long status, size_t body_len,
			      int64_t ttl)
{
	struct entry_init in = {
		.key = key,
		.family = family,
		.path = "/programs",
		.status = status,
		.headers = JSON_HDR,
		.body = malloc(body_len + 1),
		.body_len = body_len,
		.stored_at = now_s,
		.expires_at = now_s + ttl,
	};
	struct entry *e;

	assert_non_null(in.body);
	in.headers_len = strlen(in.headers);
	memset(in.body, 'x', body_len);
	e = entry_new(&in);
	assert_non_null(e);
	return e;
}

/* A request: parked while it waits, woken once. */
struct req {
	struct objtab_waiter w;
	int parked, woken;
	int usable; /* what the Vary check says */
	int left;   /* it went away before the end */
};

static void req_park(void *arg)
{
	((struct req *)arg)->parked++;
}

static void req_unpark(void *arg)
{
	((struct req *)arg)->woken++;
}

static int req_usable(const struct entry *e, void *arg)
{
	(void)e;
	return ((struct req *)arg)->usable;
}

static void req_init(struct req *r)
{
	memset(r, 0, sizeof(*r));
	r->usable = 1;
	r->w.unpark = req_unpark;
	r->w.arg = r;
}

static enum objtab_verdict ask(struct fx *fx, const char *key, int family, unsigned flags,
			       struct req *rq, struct objtab_answer *ans)
{
	struct objtab_ask a = {
		.key = key,
		.hash = objtab_hash(key),
		.family = family,
		.now = now_s,
		.flags = flags,
		.usable = rq != NULL ? req_usable : NULL,
		.arg = rq,
		.park = rq != NULL ? req_park : NULL,
		.w = rq != NULL ? &rq->w : NULL,
	};

	return objtab_lookup(fx->t, &a, ans);
}

static void answer_free(struct objtab_answer *ans)
{
	entry_unref(&ans->entry);
	objtab_fetch_unref(&ans->fetch);
}

/* Ends f with e (kept when keep is set). */
static void done_entry(struct fx *fx, struct objtab_fetch *f, struct entry *e, int keep,
		       int revalidated)
{
	struct objtab_result res = {
		.outcome = OBJTAB_ENTRY,
		.entry = e,
		.keep = keep,
		.revalidated = revalidated,
	};

	objtab_fetch_done(fx->t, f, &res);
}

static void done_other(struct fx *fx, struct objtab_fetch *f, enum objtab_outcome outcome)
{
	struct objtab_result res = {
		.outcome = outcome,
		.err = 502,
		.detail = "the API did not answer",
	};

	objtab_fetch_done(fx->t, f, &res);
}

/* key's verdict for a plain request that then goes away, and its entry. */
static enum objtab_verdict peek(struct fx *fx, const char *key, int family, struct entry **e)
{
	struct objtab_answer ans;
	struct req rq;
	enum objtab_verdict v;

	req_init(&rq);
	v = ask(fx, key, family, OBJTAB_CACHED_ONLY, &rq, &ans);
	assert_int_equal(rq.parked, 0);
	if (e != NULL)
		*e = ans.entry;
	else
		entry_unref(&ans.entry);
	assert_null(ans.fetch);
	return v;
}

/* Stores a fresh entry for key through the table; returns a reference. */
static struct entry *put(struct fx *fx, const char *key, int family, size_t body_len, int64_t ttl)
{
	struct entry *e = mk_entry(key, family, 200, body_len, ttl);

	assert_int_equal(objtab_store(fx->t, e, objtab_gen(fx->t, family), NULL, 1), 1);
	return e;
}

/* ---- coalescing ---- */

static void test_miss_coalesces_and_wakes_every_waiter_once(void **state)
{
	struct fx *fx = fx_new(1 << 20, 1);
	struct req a, b, c;
	struct objtab_answer aa, ab, ac;
	struct entry *e, *hit;
	int reval = -1;

	(void)state;
	req_init(&a);
	req_init(&b);
	req_init(&c);
	assert_int_equal(ask(fx, "k", 0, 0, &a, &aa), OBJTAB_MISS);
	assert_non_null(aa.fetch);
	assert_null(aa.entry);
	assert_string_equal(objtab_fetch_key(aa.fetch), "k");
	assert_int_equal(objtab_fetch_family(aa.fetch), 0);
	assert_null(objtab_fetch_base(aa.fetch));
	assert_int_equal(a.parked, 1);
	/* Not ended yet: a waiter that looked would go alone. */
	assert_int_equal(objtab_fetch_outcome(aa.fetch), OBJTAB_DIRECT);

	assert_int_equal(ask(fx, "k", 0, 0, &b, &ab), OBJTAB_BUSY);
	assert_int_equal(ask(fx, "k", 0, 0, &c, &ac), OBJTAB_BUSY);
	assert_ptr_equal(ab.fetch, aa.fetch);
	assert_ptr_equal(ac.fetch, aa.fetch);
	assert_int_equal(b.parked + c.parked, 2);
	assert_int_equal(a.woken + b.woken + c.woken, 0);
	assert_int_equal(fx->loads, 1); /* the file was asked once, on the miss */

	e = mk_entry("k", 0, 200, 100, 60);
	done_entry(fx, aa.fetch, e, 1, 0);
	assert_int_equal(a.woken, 1);
	assert_int_equal(b.woken, 1);
	assert_int_equal(c.woken, 1);
	assert_int_equal(a.w.queued + b.w.queued + c.w.queued, 0);
	assert_int_equal(objtab_fetch_outcome(ab.fetch), OBJTAB_ENTRY);
	assert_ptr_equal(objtab_fetch_entry(ab.fetch, &reval), e);
	assert_int_equal(reval, 0);
	/* Kept: current in memory and queued for the file. */
	assert_true(entry_current(e));
	assert_int_equal(fx->writes, 1);
	assert_int_equal(fx->last_gen, objtab_gen(fx->t, 0));
	assert_int_equal(fx->last_was_at, 0);
	assert_int_equal(peek(fx, "k", 0, &hit), OBJTAB_HIT);
	assert_ptr_equal(hit, e);
	entry_unref(&hit);
	/* A later request finds it with no fetch and no wait. */
	answer_free(&ab);
	req_init(&a);
	assert_int_equal(ask(fx, "k", 0, 0, &a, &ab), OBJTAB_HIT);
	assert_null(ab.fetch);
	assert_int_equal(a.parked, 0);
	answer_free(&ab);

	answer_free(&aa);
	objtab_fetch_unref(&ac.fetch);
	entry_unref(&e);
	file_flush(fx);
	fx_free(fx);
}

static void test_failed_fetch_reaches_every_waiter(void **state)
{
	struct fx *fx = fx_new(1 << 20, 1);
	struct req a, b;
	struct objtab_answer aa, ab;
	const char *detail = NULL;

	(void)state;
	req_init(&a);
	req_init(&b);
	assert_int_equal(ask(fx, "k", 1, 0, &a, &aa), OBJTAB_MISS);
	assert_int_equal(ask(fx, "k", 1, 0, &b, &ab), OBJTAB_BUSY);
	done_other(fx, aa.fetch, OBJTAB_ERROR);
	assert_int_equal(a.woken, 1);
	assert_int_equal(b.woken, 1);
	assert_int_equal(objtab_fetch_outcome(ab.fetch), OBJTAB_ERROR);
	assert_int_equal(objtab_fetch_error(ab.fetch, &detail), 502);
	assert_string_equal(detail, "the API did not answer");
	assert_int_equal(fx->writes, 0);
	/* Nothing was kept; the next request starts a fetch of its own. */
	answer_free(&ab);
	req_init(&b);
	assert_int_equal(ask(fx, "k", 1, 0, &b, &ab), OBJTAB_MISS);
	assert_non_null(ab.fetch);
	assert_ptr_not_equal(ab.fetch, aa.fetch);
	done_other(fx, ab.fetch, OBJTAB_ERROR);
	answer_free(&aa);
	answer_free(&ab);
	fx_free(fx);
}

static void test_error_answer_reaches_waiters_and_is_not_kept(void **state)
{
	struct fx *fx = fx_new(1 << 20, 1);
	struct req a, b;
	struct objtab_answer aa, ab;
	struct entry *e = mk_entry("k", 0, 503, 10, 0);

	(void)state;
	req_init(&a);
	req_init(&b);
	assert_int_equal(ask(fx, "k", 0, 0, &a, &aa), OBJTAB_MISS);
	assert_int_equal(ask(fx, "k", 0, 0, &b, &ab), OBJTAB_BUSY);
	done_entry(fx, aa.fetch, e, 0, 0);
	assert_int_equal(a.woken + b.woken, 2);
	assert_ptr_equal(objtab_fetch_entry(ab.fetch, NULL), e);
	assert_false(entry_current(e));
	assert_int_equal(fx->writes, 0);
	assert_int_equal(peek(fx, "k", 0, NULL), OBJTAB_MISS);
	answer_free(&aa);
	answer_free(&ab);
	entry_unref(&e);
	fx_free(fx);
}

static void test_waiter_that_leaves_is_not_woken(void **state)
{
	struct fx *fx = fx_new(1 << 20, 0);
	struct req a, b;
	struct objtab_answer aa, ab;
	struct entry *e = mk_entry("k", 0, 200, 10, 60);

	(void)state;
	req_init(&a);
	req_init(&b);
	assert_int_equal(ask(fx, "k", 0, 0, &a, &aa), OBJTAB_MISS);
	assert_int_equal(ask(fx, "k", 0, 0, &b, &ab), OBJTAB_BUSY);
	assert_int_equal(b.w.queued, 1);
	objtab_leave(ab.fetch, &b.w);
	assert_int_equal(b.w.queued, 0);
	objtab_leave(ab.fetch, &b.w); /* twice is harmless */
	objtab_fetch_unref(&ab.fetch);
	done_entry(fx, aa.fetch, e, 1, 0);
	assert_int_equal(a.woken, 1);
	assert_int_equal(b.woken, 0);
	answer_free(&aa);
	entry_unref(&e);
	fx_free(fx);
}

/* ---- staleness and the cooldown ---- */

static void test_stale_entry_gets_one_refresh_then_cools_down_after_failure(void **state)
{
	struct fx *fx = fx_new(1 << 20, 0);
	struct objtab_answer a1, a2;
	struct req r1, r2;
	struct entry *e = put(fx, "k", 0, 10, 30), *fresh;

	(void)state;
	req_init(&r1);
	req_init(&r2);
	now_s += 31; /* expired, within the window */
	assert_int_equal(ask(fx, "k", 0, 0, &r1, &a1), OBJTAB_STALE);
	assert_ptr_equal(a1.entry, e);
	assert_non_null(a1.fetch);
	assert_ptr_equal(objtab_fetch_base(a1.fetch), e); /* validators go with it */
	assert_int_equal(r1.parked, 0);                   /* served now, not parked */
	/* One refresh: the next stale request gets the copy and no fetch. */
	assert_int_equal(ask(fx, "k", 0, 0, &r2, &a2), OBJTAB_STALE);
	assert_null(a2.fetch);
	answer_free(&a2);

	done_other(fx, a1.fetch, OBJTAB_ERROR);
	answer_free(&a1);
	assert_true(entry_current(e)); /* a failure keeps the old copy */
	/* Cooling down: stale copies, no refresh. */
	now_s += OBJTAB_COOLDOWN_FOR - 1;
	assert_int_equal(ask(fx, "k", 0, 0, &r2, &a2), OBJTAB_STALE);
	assert_null(a2.fetch);
	answer_free(&a2);
	objtab_sweep(fx->t);
	now_s += 1;
	objtab_sweep(fx->t);
	assert_int_equal(ask(fx, "k", 0, 0, &r2, &a2), OBJTAB_STALE);
	assert_non_null(a2.fetch);
	fresh = mk_entry("k", 0, 200, 10, 30);
	done_entry(fx, a2.fetch, fresh, 1, 0);
	answer_free(&a2);
	assert_false(entry_current(e));
	assert_true(entry_current(fresh));
	assert_int_equal(ask(fx, "k", 0, 0, &r2, &a2), OBJTAB_HIT);
	assert_ptr_equal(a2.entry, fresh);
	answer_free(&a2);
	entry_unref(&fresh);
	entry_unref(&e);
	fx_free(fx);
}

static void test_expired_past_window_waits_with_stale_fallback(void **state)
{
	struct fx *fx = fx_new(1 << 20, 0);
	struct objtab_answer a;
	struct req r;
	struct entry *e = put(fx, "k", 2, 10, 30);

	(void)state;
	req_init(&r);
	now_s += 30 + WINDOW;
	assert_int_equal(ask(fx, "k", 2, 0, &r, &a), OBJTAB_MISS);
	assert_ptr_equal(a.entry, e); /* stale-if-error */
	assert_ptr_equal(objtab_fetch_base(a.fetch), e);
	assert_int_equal(r.parked, 1);
	done_other(fx, a.fetch, OBJTAB_ERROR);
	assert_int_equal(r.woken, 1);
	answer_free(&a);
	entry_unref(&e);
	fx_free(fx);
}

/* ---- invalidation ---- */

static void test_invalidation_racing_a_fetch(void **state)
{
	struct fx *fx = fx_new(1 << 20, 1);
	struct req a, b, c;
	struct objtab_answer aa, ab, ac;
	struct entry *old, *nw, *other = put(fx, "other", 1, 10, 60);
	unsigned gen0 = objtab_gen(fx->t, 0);

	(void)state;
	req_init(&a);
	req_init(&b);
	req_init(&c);
	assert_int_equal(ask(fx, "k", 0, 0, &a, &aa), OBJTAB_MISS);
	objtab_invalidate(fx->t, 0);
	assert_int_equal(objtab_gen(fx->t, 0), gen0 + 1);
	assert_true(entry_current(other)); /* another family is untouched */
	/* A newcomer does not join the fetch begun before the write. */
	assert_int_equal(ask(fx, "k", 0, 0, &b, &ab), OBJTAB_MISS);
	assert_ptr_not_equal(ab.fetch, aa.fetch);
	/* The old answer reaches its waiter, and is not kept. */
	old = mk_entry("k", 0, 200, 10, 60);
	done_entry(fx, aa.fetch, old, 1, 0);
	assert_int_equal(a.woken, 1);
	assert_int_equal(b.woken, 0);
	assert_ptr_equal(objtab_fetch_entry(aa.fetch, NULL), old);
	assert_false(entry_current(old));
	assert_int_equal(fx->writes, 1); /* only "other" */
	assert_int_equal(ask(fx, "k", 0, 0, &c, &ac), OBJTAB_BUSY);
	assert_ptr_equal(ac.fetch, ab.fetch);
	/* An answer fetched outside the table under the old generation: refused. */
	assert_int_equal(objtab_store(fx->t, old, gen0, NULL, 1), 0);
	assert_false(entry_current(old));
	nw = mk_entry("k", 0, 200, 10, 60);
	done_entry(fx, ab.fetch, nw, 1, 0);
	assert_int_equal(b.woken + c.woken, 2);
	assert_true(entry_current(nw));
	assert_int_equal(fx->last_gen, gen0 + 1);
	objtab_invalidate(fx->t, -1);
	assert_false(entry_current(nw));
	assert_false(entry_current(other));
	assert_int_equal(peek(fx, "k", 0, NULL), OBJTAB_MISS);
	answer_free(&aa);
	answer_free(&ab);
	answer_free(&ac);
	entry_unref(&old);
	entry_unref(&nw);
	entry_unref(&other);
	file_flush(fx); /* written after the invalidation: objtab_written of a stranger */
	fx_free(fx);
}

/* ---- 304s ---- */

static void test_304_refreshes_the_version_it_revalidated(void **state)
{
	struct fx *fx = fx_new(1 << 20, 1);
	struct objtab_answer a;
	struct req r;
	struct entry *v1 = put(fx, "k", 0, 10, 30), *v1b, *hit;
	int64_t stored = entry_stored_at(v1);
	int reval = 0;

	(void)state;
	req_init(&r);
	now_s += 30 + WINDOW;
	assert_int_equal(ask(fx, "k", 0, 0, &r, &a), OBJTAB_MISS);
	assert_ptr_equal(objtab_fetch_base(a.fetch), v1);
	v1b = entry_refreshed(v1, JSON_HDR, strlen(JSON_HDR), now_s, now_s + 30);
	assert_non_null(v1b);
	done_entry(fx, a.fetch, v1b, 1, 1);
	assert_ptr_equal(objtab_fetch_entry(a.fetch, &reval), v1b);
	assert_int_equal(reval, 1);
	assert_true(entry_current(v1b));
	assert_false(entry_current(v1));
	assert_int_equal(fx->last_was_at, stored); /* the file refreshes that row */
	assert_int_equal(peek(fx, "k", 0, &hit), OBJTAB_HIT);
	assert_ptr_equal(hit, v1b);
	entry_unref(&hit);
	answer_free(&a);
	entry_unref(&v1);
	entry_unref(&v1b);
	file_flush(fx);
	fx_free(fx);
}

static void test_304_never_replaces_a_newer_answer(void **state)
{
	struct fx *fx = fx_new(1 << 20, 1);
	struct objtab_answer a;
	struct req r;
	struct entry *v1 = put(fx, "k", 0, 10, 30), *v1b, *v2, *v3, *hit;

	(void)state;
	req_init(&r);
	now_s += 30 + WINDOW;
	assert_int_equal(ask(fx, "k", 0, 0, &r, &a), OBJTAB_MISS);
	/* A newer answer lands while the revalidation runs. */
	v2 = put(fx, "k", 0, 20, 30);
	v1b = entry_refreshed(v1, JSON_HDR, strlen(JSON_HDR), now_s, now_s + 30);
	assert_non_null(v1b);
	done_entry(fx, a.fetch, v1b, 1, 1);
	assert_int_equal(r.woken, 1); /* still told its answer */
	assert_false(entry_current(v1b));
	assert_true(entry_current(v2));
	assert_int_equal(fx->writes, 2); /* v1 and v2, not v1b */
	assert_int_equal(peek(fx, "k", 0, &hit), OBJTAB_HIT);
	assert_ptr_equal(hit, v2);
	entry_unref(&hit);
	/* The same rule for a store with a base: v1 is no longer held. */
	v3 = mk_entry("k", 0, 200, 30, 30);
	assert_int_equal(objtab_store(fx->t, v3, objtab_gen(fx->t, 0), v1, 1), 0);
	assert_int_equal(objtab_store(fx->t, v3, objtab_gen(fx->t, 0), v2, 1), 1);
	assert_true(entry_current(v3));
	answer_free(&a);
	entry_unref(&v1);
	entry_unref(&v1b);
	entry_unref(&v2);
	entry_unref(&v3);
	file_flush(fx);
	fx_free(fx);
}

/* ---- memory ---- */

static void test_eviction_keeps_bytes_under_the_limit_with_second_chance(void **state)
{
	struct entry *probe = mk_entry("k0", 0, 200, 1000, 60);
	size_t sz = entry_size(probe);
	struct fx *fx = fx_new(3 * sz + sz / 2, 0);
	struct entry *e[5];
	int64_t n, bytes;
	char key[8];

	(void)state;
	entry_unref(&probe);
	for (int i = 0; i < 3; i++) {
		snprintf(key, sizeof(key), "k%d", i);
		e[i] = put(fx, key, 0, 1000, 60);
	}
	objtab_usage(fx->t, &n, &bytes);
	assert_int_equal(n, 3);
	assert_int_equal(bytes, 3 * sz);
	/* k0 is oldest; a hit outside the table (a thread's own cache)
	 * marks it, so it gets a second chance and k1 goes instead. */
	entry_mark_used(e[0]);
	e[3] = put(fx, "k3", 0, 1000, 60);
	objtab_usage(fx->t, &n, &bytes);
	assert_true((size_t)bytes <= 3 * sz + sz / 2);
	assert_int_equal(n, 3);
	assert_true(entry_current(e[0]));
	assert_false(entry_current(e[1]));
	assert_true(entry_current(e[2]));
	assert_true(entry_current(e[3]));
	assert_int_equal(peek(fx, "k1", 0, NULL), OBJTAB_MISS);
	/* A second chance is used once: with k2 and k3 hit through the
	 * table (which marks them too), k0 is the one that goes next. */
	assert_int_equal(peek(fx, "k2", 0, NULL), OBJTAB_HIT);
	assert_int_equal(peek(fx, "k3", 0, NULL), OBJTAB_HIT);
	e[4] = put(fx, "k4", 0, 1000, 60);
	assert_false(entry_current(e[0]));
	assert_true(entry_current(e[2]));
	assert_true(entry_current(e[3]));
	assert_true(entry_current(e[4]));
	for (int i = 0; i < 5; i++)
		entry_unref(&e[i]);
	fx_free(fx);
}

static void test_entry_too_large_for_memory(void **state)
{
	struct fx *fx = fx_new(8192, 1);
	struct entry *small = put(fx, "k", 0, 100, 60), *big, *hit;
	int64_t n, bytes;

	(void)state;
	file_flush(fx);
	/* More than half the memory: not kept there, and the older version
	 * leaves too (it is no longer the answer). */
	big = mk_entry("k", 0, 200, 5000, 60);
	assert_int_equal(objtab_store(fx->t, big, objtab_gen(fx->t, 0), NULL, 1), 1);
	assert_false(entry_current(small));
	assert_false(entry_current(big));
	objtab_usage(fx->t, &n, &bytes);
	assert_int_equal(n, 0);
	assert_int_equal(bytes, 0);
	/* On its way to the file it still answers. */
	assert_int_equal(peek(fx, "k", 0, &hit), OBJTAB_HIT);
	assert_ptr_equal(hit, big);
	entry_unref(&hit);
	assert_int_equal(fx->loads, 0);
	/* Once written, it comes from the file each time. */
	file_flush(fx);
	assert_int_equal(peek(fx, "k", 0, &hit), OBJTAB_HIT);
	assert_ptr_equal(hit, big);
	entry_unref(&hit);
	assert_int_equal(peek(fx, "k", 0, NULL), OBJTAB_HIT);
	assert_int_equal(fx->loads, 2);
	assert_false(entry_current(big));
	entry_unref(&small);
	entry_unref(&big);
	fx_free(fx);
}

static void test_direct_answer_passes_for_a_while(void **state)
{
	struct fx *fx = fx_new(1 << 20, 0);
	struct req a, b;
	struct objtab_answer aa, ab;

	(void)state;
	req_init(&a);
	req_init(&b);
	assert_int_equal(ask(fx, "k", 0, 0, &a, &aa), OBJTAB_MISS);
	assert_int_equal(ask(fx, "k", 0, 0, &b, &ab), OBJTAB_BUSY);
	done_other(fx, aa.fetch, OBJTAB_DIRECT);
	assert_int_equal(a.woken + b.woken, 2);
	assert_int_equal(objtab_fetch_outcome(ab.fetch), OBJTAB_DIRECT);
	answer_free(&aa);
	answer_free(&ab);
	now_s += OBJTAB_TOO_LARGE_FOR - 1;
	objtab_sweep(fx->t);
	req_init(&a);
	assert_int_equal(ask(fx, "k", 0, 0, &a, &aa), OBJTAB_PASS);
	assert_null(aa.fetch);
	assert_int_equal(a.parked, 0);
	now_s += 1;
	objtab_sweep(fx->t);
	assert_int_equal(ask(fx, "k", 0, 0, &a, &aa), OBJTAB_MISS);
	assert_non_null(aa.fetch);
	done_other(fx, aa.fetch, OBJTAB_ERROR);
	answer_free(&aa);
	fx_free(fx);
}

/* ---- the file ---- */

static void test_pending_write_answers_until_written(void **state)
{
	struct fx *fx = fx_new(1 << 20, 1);
	struct entry *e = put(fx, "k", 0, 10, 60), *hit;

	(void)state;
	assert_int_equal(fx->writes, 1);
	/* Evicted from memory before the file has it: still found. */
	objtab_drop(fx->t, "k");
	assert_false(entry_current(e));
	assert_int_equal(peek(fx, "k", 0, &hit), OBJTAB_HIT);
	assert_ptr_equal(hit, e);
	entry_unref(&hit);
	assert_int_equal(fx->loads, 0);
	/* Written: from the file, and back in memory. */
	file_flush(fx);
	assert_int_equal(peek(fx, "k", 0, &hit), OBJTAB_HIT);
	assert_ptr_equal(hit, e);
	assert_true(entry_current(e));
	entry_unref(&hit);
	assert_int_equal(peek(fx, "k", 0, NULL), OBJTAB_HIT);
	assert_int_equal(fx->loads, 1);
	entry_unref(&e);
	fx_free(fx);
}

static void test_refused_write_leaves_nothing_pending(void **state)
{
	struct fx *fx = fx_new(1 << 20, 1);
	struct entry *e;

	(void)state;
	fx->refuse = 1;
	e = put(fx, "k", 0, 10, 60);
	objtab_drop(fx->t, "k");
	assert_int_equal(peek(fx, "k", 0, NULL), OBJTAB_MISS);
	assert_int_equal(fx->loads, 1);
	entry_unref(&e);
	fx_free(fx);
}

static void test_invalidation_during_a_load_is_not_undone(void **state)
{
	struct fx *fx = fx_new(1 << 20, 1);
	struct entry *e = put(fx, "k", 0, 10, 60);
	struct objtab_answer a;
	struct req r;

	(void)state;
	file_flush(fx);
	objtab_drop(fx->t, "k");
	/* A write elsewhere invalidates the family while the row is read:
	 * the row read is the old version and must not come back. */
	fx->invalidate_in_load = 0;
	req_init(&r);
	assert_int_equal(ask(fx, "k", 0, 0, &r, &a), OBJTAB_MISS);
	assert_null(a.entry);
	assert_non_null(a.fetch);
	assert_false(entry_current(e));
	done_other(fx, a.fetch, OBJTAB_ERROR);
	answer_free(&a);
	entry_unref(&e);
	fx_free(fx);
}

/* ---- lookup flags ---- */

static void test_cached_only_never_fetches_or_waits(void **state)
{
	struct fx *fx = fx_new(1 << 20, 0);
	struct objtab_answer a, b;
	struct req r, w;
	struct entry *e;

	(void)state;
	req_init(&r);
	req_init(&w);
	assert_int_equal(ask(fx, "k", 0, OBJTAB_CACHED_ONLY, &r, &a), OBJTAB_MISS);
	assert_null(a.fetch);
	assert_int_equal(r.parked, 0);
	/* Not while a fetch runs either. */
	assert_int_equal(ask(fx, "k", 0, 0, &w, &b), OBJTAB_MISS);
	assert_int_equal(ask(fx, "k", 0, OBJTAB_CACHED_ONLY, &r, &a), OBJTAB_MISS);
	assert_null(a.fetch);
	assert_int_equal(r.parked, 0);
	done_other(fx, b.fetch, OBJTAB_ERROR);
	answer_free(&b);
	/* An expired copy comes back as the MISS's entry, with no refresh. */
	e = put(fx, "k", 0, 10, 1);
	now_s += 2;
	assert_int_equal(ask(fx, "k", 0, OBJTAB_CACHED_ONLY, &r, &a), OBJTAB_MISS);
	assert_ptr_equal(a.entry, e);
	assert_null(a.fetch);
	answer_free(&a);
	entry_unref(&e);
	fx_free(fx);
}

static void test_no_wait_passes_instead_of_waiting(void **state)
{
	struct fx *fx = fx_new(1 << 20, 0);
	struct objtab_answer a, b;
	struct req r, w;
	struct entry *e;

	(void)state;
	req_init(&r);
	req_init(&w);
	assert_int_equal(ask(fx, "k", 0, OBJTAB_NO_WAIT, &r, &a), OBJTAB_PASS);
	assert_null(a.fetch);
	assert_int_equal(ask(fx, "k", 0, 0, &w, &b), OBJTAB_MISS);
	assert_int_equal(ask(fx, "k", 0, OBJTAB_NO_WAIT, &r, &a), OBJTAB_PASS);
	assert_null(a.fetch);
	assert_int_equal(r.parked, 0);
	done_other(fx, b.fetch, OBJTAB_ERROR);
	answer_free(&b);
	/* A stale hit may still start the refresh. */
	e = put(fx, "k2", 0, 10, 1);
	now_s += 2;
	assert_int_equal(ask(fx, "k2", 0, OBJTAB_NO_WAIT, &r, &a), OBJTAB_STALE);
	assert_non_null(a.fetch);
	done_other(fx, a.fetch, OBJTAB_ERROR);
	answer_free(&a);
	entry_unref(&e);
	fx_free(fx);
}

static void test_entry_for_other_requests_passes(void **state)
{
	struct fx *fx = fx_new(1 << 20, 0);
	struct entry *e = put(fx, "k", 0, 10, 60);
	struct objtab_answer a;
	struct req r;

	(void)state;
	req_init(&r);
	r.usable = 0; /* its Vary names a field this request differs in */
	assert_int_equal(ask(fx, "k", 0, 0, &r, &a), OBJTAB_PASS);
	assert_null(a.entry);
	assert_null(a.fetch);
	assert_int_equal(r.parked, 0);
	entry_unref(&e);
	fx_free(fx);
}

/* ---- warm-up and refresh-ahead ---- */

static void test_fetch_start_runs_one_per_key(void **state)
{
	struct fx *fx = fx_new(1 << 20, 0);
	struct objtab_fetch *f, *g;
	struct objtab_answer a;
	struct req r;
	struct entry *e;

	(void)state;
	req_init(&r);
	f = objtab_fetch_start(fx->t, "k", 1);
	assert_non_null(f);
	assert_null(objtab_fetch_start(fx->t, "k", 1));
	/* A request joins it. */
	assert_int_equal(ask(fx, "k", 1, 0, &r, &a), OBJTAB_BUSY);
	assert_ptr_equal(a.fetch, f);
	e = mk_entry("k", 1, 200, 10, 60);
	done_entry(fx, f, e, 1, 0);
	assert_int_equal(r.woken, 1);
	objtab_fetch_unref(&f);
	answer_free(&a);
	/* With an entry held, the next one revalidates it. */
	g = objtab_fetch_start(fx->t, "k", 1);
	assert_non_null(g);
	assert_ptr_equal(objtab_fetch_base(g), e);
	done_other(fx, g, OBJTAB_ERROR);
	objtab_fetch_unref(&g);
	assert_true(entry_current(e));
	entry_unref(&e);
	fx_free(fx);
}

static void test_used_keys_reports_each_use_once(void **state)
{
	struct fx *fx = fx_new(1 << 20, 0);
	struct entry *a = put(fx, "a", 0, 10, 60), *b = put(fx, "b", 0, 10, 60);
	char **keys = NULL;
	int n;

	(void)state;
	n = objtab_used_keys(fx->t, &keys);
	assert_int_equal(n, 2); /* both are new to the table */
	for (int i = 0; i < n; i++)
		free(keys[i]);
	free(keys);
	assert_int_equal(objtab_used_keys(fx->t, &keys), 0);
	free(keys);
	assert_int_equal(peek(fx, "b", 0, NULL), OBJTAB_HIT);
	assert_int_equal(objtab_used_keys(fx->t, &keys), 1);
	assert_string_equal(keys[0], "b");
	free(keys[0]);
	free(keys);
	entry_unref(&a);
	entry_unref(&b);
	fx_free(fx);
}

/* ---- many threads ---- */

#define THREADS 4
#define ROUNDS 20000
#define KEYS 4

struct worker {
	struct fx *fx;
	unsigned seed;
	struct req *mine; /* one per round */
	pthread_barrier_t *start;
	int woken_wrong; /* wake-ups missing or doubled: must stay 0 */
};

static unsigned rnd(unsigned *s)
{
	*s = *s * 1103515245u + 12345u;
	return *s >> 16;
}

/*
 * Each round asks for a random key; a MISS is fetched at once (a stored
 * answer, an error, or after an invalidation), a BUSY leaves again or
 * waits for whoever runs that fetch.  The counts check that no wake-up is
 * lost or doubled, and the sanitizers watch the locks.
 */
static void *work(void *arg)
{
	struct worker *wk = arg;
	struct objtab_fetch **held = calloc(ROUNDS, sizeof(*held));
	int nheld = 0;

	assert_non_null(held);
	pthread_barrier_wait(wk->start); /* all at once, or they barely meet */
	for (int i = 0; i < ROUNDS; i++) {
		struct objtab_answer ans;
		struct req *rq = &wk->mine[i];
		char key[8];
		unsigned k = rnd(&wk->seed) % KEYS, what = rnd(&wk->seed) % 16;
		int family = (int)(k % NFAM);
		struct objtab_ask a;

		snprintf(key, sizeof(key), "k%u", k);
		req_init(rq);
		a = (struct objtab_ask){ .key = key,
					 .hash = objtab_hash(key),
					 .family = family,
					 .now = T0,
					 .park = req_park,
					 .w = &rq->w };
		switch (objtab_lookup(wk->fx->t, &a, &ans)) {
		case OBJTAB_MISS:
			if (ans.fetch == NULL)
				break;
			/* The fetch runs a while, so others join it. */
			for (int y = 0; y < 8; y++)
				sched_yield();
			if (what == 0)
				objtab_invalidate(wk->fx->t, family);
			if (what < 3) {
				done_other(wk->fx, ans.fetch, OBJTAB_ERROR);
			} else {
				struct entry *e = mk_entry(key, family, 200, 64, 3600);

				done_entry(wk->fx, ans.fetch, e, 1, 0);
				entry_unref(&e);
			}
			/* Its own fetch: woken before done returned. */
			if (rq->woken != 1)
				wk->woken_wrong++;
			break;
		case OBJTAB_BUSY:
			if (what < 8) {
				objtab_leave(ans.fetch, &rq->w);
				rq->left = 1; /* woken at most once */
			} else {
				held[nheld++] = objtab_fetch_ref(ans.fetch);
			}
			break;
		default: /* a hit: writes and evictions make the next misses */
			if (what == 1)
				objtab_invalidate(wk->fx->t, family);
			else if (what < 4)
				objtab_drop(wk->fx->t, key);
			break;
		}
		answer_free(&ans);
	}
	for (int i = 0; i < nheld; i++)
		objtab_fetch_unref(&held[i]);
	free(held);
	return NULL;
}

static void test_many_threads_lose_no_wakeup(void **state)
{
	struct fx *fx = fx_new(16 * 1024, 0); /* small: eviction runs all along */
	pthread_t th[THREADS];
	struct worker wk[THREADS];
	pthread_barrier_t start;
	int64_t n, bytes;

	(void)state;
	assert_int_equal(pthread_barrier_init(&start, NULL, THREADS), 0);
	for (int i = 0; i < THREADS; i++) {
		wk[i] = (struct worker){ .fx = fx, .seed = 7u + (unsigned)i, .start = &start };
		wk[i].mine = calloc(ROUNDS, sizeof(*wk[i].mine));
		assert_non_null(wk[i].mine);
		assert_int_equal(pthread_create(&th[i], NULL, work, &wk[i]), 0);
	}
	for (int i = 0; i < THREADS; i++)
		assert_int_equal(pthread_join(th[i], NULL), 0);
	pthread_barrier_destroy(&start);
	/* Every fetch ended in the round that started it, so once all have
	 * joined, each wait is settled: a waiter that stayed was woken once,
	 * one that left at most once (the end may have come first). */
	for (int i = 0; i < THREADS; i++) {
		for (int j = 0; j < ROUNDS; j++) {
			const struct req *rq = &wk[i].mine[j];

			if (rq->parked == 1 && !rq->left && rq->woken != 1)
				wk[i].woken_wrong++;
			if (rq->woken > 1 || rq->parked > 1 || rq->w.queued)
				wk[i].woken_wrong++;
		}
		assert_int_equal(wk[i].woken_wrong, 0);
		free(wk[i].mine);
	}
	objtab_usage(fx->t, &n, &bytes);
	assert_true(n <= KEYS);
	assert_true(bytes <= 16 * 1024);
	fx_free(fx);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_miss_coalesces_and_wakes_every_waiter_once),
		cmocka_unit_test(test_failed_fetch_reaches_every_waiter),
		cmocka_unit_test(test_error_answer_reaches_waiters_and_is_not_kept),
		cmocka_unit_test(test_waiter_that_leaves_is_not_woken),
		cmocka_unit_test(test_stale_entry_gets_one_refresh_then_cools_down_after_failure),
		cmocka_unit_test(test_expired_past_window_waits_with_stale_fallback),
		cmocka_unit_test(test_invalidation_racing_a_fetch),
		cmocka_unit_test(test_304_refreshes_the_version_it_revalidated),
		cmocka_unit_test(test_304_never_replaces_a_newer_answer),
		cmocka_unit_test(test_eviction_keeps_bytes_under_the_limit_with_second_chance),
		cmocka_unit_test(test_entry_too_large_for_memory),
		cmocka_unit_test(test_direct_answer_passes_for_a_while),
		cmocka_unit_test(test_pending_write_answers_until_written),
		cmocka_unit_test(test_refused_write_leaves_nothing_pending),
		cmocka_unit_test(test_invalidation_during_a_load_is_not_undone),
		cmocka_unit_test(test_cached_only_never_fetches_or_waits),
		cmocka_unit_test(test_no_wait_passes_instead_of_waiting),
		cmocka_unit_test(test_entry_for_other_requests_passes),
		cmocka_unit_test(test_fetch_start_runs_one_per_key),
		cmocka_unit_test(test_used_keys_reports_each_use_once),
		cmocka_unit_test(test_many_threads_lose_no_wakeup),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
