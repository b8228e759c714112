/*
 * objtab: records by key in 64 shards, each a hash table under its own
 * mutex, plus one LRU list over the records that hold an entry.
 *
 * A record lives while it holds anything: an entry, a pending write, a
 * running fetch, or a note still in force.  A fetch lives while anyone holds
 * a reference: the record (while it is the key's current fetch), whoever
 * runs it, and every request that waits for it.  A fetch's state is guarded
 * by its key's shard lock, whether it is still in the record or not.
 *
 * Entries are charged to the LRU when they become a record's entry and
 * uncharged when they leave; the charged entry is recorded under the LRU
 * lock, so eviction, which holds that lock and only tries shard locks,
 * never reads a field of another lock.
 */
#include "objtab.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "clock.h"
#include "entry.h"
#include "hdr.h"

#define SHARD_BITS 6
#define NSHARDS (1u << SHARD_BITS)
#define MIN_BUCKETS 16

STAILQ_HEAD(waiters, objtab_waiter);

struct objtab_fetch {
	unsigned magic;
#define OBJTAB_FETCH_MAGIC 0x5be0c2d1u
	atomic_int refs;
	struct objtab *t;
	char *key;
	uint64_t hash;
	int family;
	unsigned gen;       /* the family's generation when it started */
	struct entry *base; /* the version it revalidates, or NULL */
	struct hdr *req;    /* the fields it was sent with */

	/* Under its shard's lock. */
	int done, attached;
	struct waiters waiters;
	/* Written before done is set, read after. */
	enum objtab_outcome outcome;
	struct entry *entry;
	int revalidated, err;
	char detail[512];
};

struct rec {
	char *key;
	uint64_t hash;
	int family;
	struct rec *hnext;
	/* Under the shard lock. */
	struct entry *entry;       /* current, in memory */
	struct entry *pending;     /* handed to the backend's write, not yet written */
	struct objtab_fetch *busy; /* the running fetch of the current generation */
	int64_t too_large_until, cooldown_until;
	/* Under the LRU lock. */
	struct entry *charged; /* the entry counted in the LRU, NULL when not in it */
	TAILQ_ENTRY(rec) lru;  /* head: most recently used */
};

struct shard {
	pthread_mutex_t lock;
	struct rec **buckets;
	size_t nbuckets, count;
	size_t noted; /* records with a note set: what objtab_sweep() visits */
};

struct objtab {
	struct shard shards[NSHARDS];
	pthread_mutex_t lru_lock;
	TAILQ_HEAD(lru_list, rec) lru;
	size_t bytes, entries, max_bytes;
	int nfamilies;
	atomic_uint *gen;
	struct objtab_backend be;
	unsigned (*stale_window)(const struct entry *e, void *arg);
	void *stale_arg;
	int64_t (*now)(void);
};

uint64_t objtab_hash(const char *key)
{
	uint64_t h = 1469598103934665603ULL; /* FNV-1a */

	for (; *key; key++)
		h = (h ^ (unsigned char)*key) * 1099511628211ULL;
	return h;
}

static struct shard *shard_of(struct objtab *t, uint64_t hash)
{
	return &t->shards[hash >> (64 - SHARD_BITS)];
}

static int64_t wall_now(void)
{
	return clock_wall();
}

struct objtab *objtab_new(const struct objtab_config *cfg)
{
	struct objtab *t = calloc(1, sizeof(*t));
	int nf = cfg->nfamilies > 0 ? cfg->nfamilies : 1;

	if (t == NULL)
		return NULL;
	t->max_bytes = cfg->max_bytes;
	t->nfamilies = cfg->nfamilies;
	t->stale_window = cfg->stale_window;
	t->stale_arg = cfg->stale_arg;
	t->now = cfg->now != NULL ? cfg->now : wall_now;
	pthread_mutex_init(&t->lru_lock, NULL);
	TAILQ_INIT(&t->lru);
	if ((t->gen = calloc((size_t)nf, sizeof(*t->gen))) == NULL) {
		free(t);
		return NULL;
	}
	for (unsigned i = 0; i < NSHARDS; i++) {
		struct shard *sh = &t->shards[i];

		pthread_mutex_init(&sh->lock, NULL);
		sh->nbuckets = MIN_BUCKETS;
		if ((sh->buckets = calloc(sh->nbuckets, sizeof(*sh->buckets))) == NULL) {
			objtab_free(&t);
			return NULL;
		}
	}
	return t;
}

void objtab_set_backend(struct objtab *t, const struct objtab_backend *b)
{
	t->be = *b;
}

static int fam_ok(const struct objtab *t, int family)
{
	return family >= 0 && family < t->nfamilies;
}

unsigned objtab_gen(struct objtab *t, int family)
{
	return fam_ok(t, family) ? atomic_load(&t->gen[family]) : 0;
}

/* ---- fetches ---- */

static void fetch_free(struct objtab_fetch *f)
{
	CHECK_OBJ(f, OBJTAB_FETCH_MAGIC);
	ASSERT(!f->attached && STAILQ_EMPTY(&f->waiters));
	entry_unref(&f->base);
	entry_unref(&f->entry);
	hdr_free(&f->req);
	free(f->key);
	FINI_OBJ(f);
	free(f);
}

struct objtab_fetch *objtab_fetch_ref(struct objtab_fetch *f)
{
	CHECK_OBJ(f, OBJTAB_FETCH_MAGIC);
	ASSERT(atomic_fetch_add(&f->refs, 1) > 0);
	return f;
}

void objtab_fetch_unref(struct objtab_fetch **fp)
{
	struct objtab_fetch *f = *fp;
	int was;

	if (f == NULL)
		return;
	*fp = NULL;
	CHECK_OBJ(f, OBJTAB_FETCH_MAGIC);
	was = atomic_fetch_sub(&f->refs, 1);
	ASSERT(was > 0);
	if (was == 1)
		fetch_free(f);
}

const char *objtab_fetch_key(const struct objtab_fetch *f)
{
	return f->key;
}

int objtab_fetch_family(const struct objtab_fetch *f)
{
	return f->family;
}

struct entry *objtab_fetch_base(const struct objtab_fetch *f)
{
	return f->base;
}

void objtab_fetch_set_request(struct objtab_fetch *f, struct hdr *adopted)
{
	CHECK_OBJ(f, OBJTAB_FETCH_MAGIC);
	hdr_free(&f->req);
	f->req = adopted;
}

const struct hdr *objtab_fetch_request(const struct objtab_fetch *f)
{
	return f->req;
}

/* ---- records (shard lock held) ---- */

static struct rec **slot(struct shard *sh, const char *key, uint64_t hash)
{
	struct rec **p = &sh->buckets[(size_t)hash & (sh->nbuckets - 1)];

	while (*p != NULL && ((*p)->hash != hash || strcmp((*p)->key, key) != 0))
		p = &(*p)->hnext;
	return p;
}

static void grow(struct shard *sh)
{
	size_t n = sh->nbuckets * 2;
	struct rec **nb = calloc(n, sizeof(*nb));

	if (nb == NULL)
		return; /* longer chains, still correct */
	for (size_t i = 0; i < sh->nbuckets; i++) {
		for (struct rec *r = sh->buckets[i], *next; r != NULL; r = next) {
			size_t b = (size_t)r->hash & (n - 1);

			next = r->hnext;
			r->hnext = nb[b];
			nb[b] = r;
		}
	}
	free(sh->buckets);
	sh->buckets = nb;
	sh->nbuckets = n;
}

static struct rec *find_or_add(struct shard *sh, const char *key, uint64_t hash, int family)
{
	struct rec **p = slot(sh, key, hash), *r;

	if (*p != NULL)
		return *p;
	if ((r = calloc(1, sizeof(*r))) == NULL || (r->key = strdup(key)) == NULL) {
		free(r);
		return NULL;
	}
	r->hash = hash;
	r->family = family;
	if (sh->count >= sh->nbuckets) {
		grow(sh);
		p = slot(sh, key, hash);
	}
	*p = r;
	sh->count++;
	return r;
}

static int has_notes(const struct rec *r)
{
	return r->too_large_until != 0 || r->cooldown_until != 0;
}

/* Frees r when it holds nothing any more (its notes past their time). */
static void maybe_free(struct shard *sh, struct rec *r, int64_t now)
{
	struct rec **p;

	if (r->entry != NULL || r->pending != NULL || r->busy != NULL)
		return;
	if (r->too_large_until > now || r->cooldown_until > now)
		return;
	if (has_notes(r))
		sh->noted--;
	p = slot(sh, r->key, r->hash);
	ASSERT(*p == r);
	*p = r->hnext;
	sh->count--;
	free(r->key);
	free(r);
}

/* The LRU's view of r: e charged (NULL: out of the list).  LRU lock held. */
static void charge_locked(struct objtab *t, struct rec *r, struct entry *e)
{
	if (r->charged != NULL) {
		t->bytes -= entry_size(r->charged);
		t->entries--;
		TAILQ_REMOVE(&t->lru, r, lru);
	}
	r->charged = e;
	if (e != NULL) {
		t->bytes += entry_size(e);
		t->entries++;
		TAILQ_INSERT_HEAD(&t->lru, r, lru);
	}
}

static void charge(struct objtab *t, struct rec *r, struct entry *e)
{
	pthread_mutex_lock(&t->lru_lock);
	charge_locked(t, r, e);
	pthread_mutex_unlock(&t->lru_lock);
}

/* r's entry leaves memory.  lru_held: the caller holds the LRU lock. */
static void drop_entry(struct objtab *t, struct rec *r, int lru_held)
{
	struct entry *e = r->entry;

	if (e == NULL)
		return;
	r->entry = NULL;
	if (lru_held)
		charge_locked(t, r, NULL);
	else
		charge(t, r, NULL);
	entry_set_current(e, 0);
	entry_unref(&e);
}

static void drop_pending(struct rec *r)
{
	entry_unref(&r->pending);
}

/* e becomes r's entry (one that does not fit still removes the older). */
static int install(struct objtab *t, struct rec *r, struct entry *e)
{
	struct entry *old = r->entry;

	if (entry_size(e) > t->max_bytes / 2) {
		drop_entry(t, r, 0);
		return 0;
	}
	r->entry = entry_ref(e);
	entry_set_current(e, 1);
	charge(t, r, e);
	if (old != NULL) {
		entry_set_current(old, 0);
		entry_unref(&old);
	}
	return 1;
}

/*
 * Evicts least recently used entries until the table fits.  Hits served
 * from a serve thread's own cache never move a record in the list, so they
 * set the entry's `touched` flag instead: such an entry gets a second
 * chance at the head (the CLOCK algorithm), once per pass.  The shard lock
 * is only tried, against the lock order; a busy shard's record is passed
 * over this time.
 */
static void make_room(struct objtab *t)
{
	int64_t now = t->now();
	size_t chances, busy = 0;
	struct rec *v;

	pthread_mutex_lock(&t->lru_lock);
	chances = t->entries;
	while (t->bytes > t->max_bytes && (v = TAILQ_LAST(&t->lru, lru_list)) != NULL &&
	       busy < t->entries) {
		struct shard *sh = shard_of(t, v->hash);

		if (chances > 0 && entry_take_touched(v->charged)) {
			chances--;
			TAILQ_REMOVE(&t->lru, v, lru);
			TAILQ_INSERT_HEAD(&t->lru, v, lru);
			continue;
		}
		if (pthread_mutex_trylock(&sh->lock) != 0) {
			busy++;
			TAILQ_REMOVE(&t->lru, v, lru);
			TAILQ_INSERT_HEAD(&t->lru, v, lru);
			continue;
		}
		ASSERT(v->entry == v->charged);
		drop_entry(t, v, 1);
		maybe_free(sh, v, now);
		pthread_mutex_unlock(&sh->lock);
	}
	pthread_mutex_unlock(&t->lru_lock);
}

/* A new fetch for r, attached (the record's reference) and one for the
 * caller.  Shard lock held. */
static struct objtab_fetch *fetch_new(struct objtab *t, struct rec *r, struct entry *base)
{
	struct objtab_fetch *f = calloc(1, sizeof(*f));

	if (f == NULL || (f->key = strdup(r->key)) == NULL) {
		free(f);
		return NULL;
	}
	INIT_OBJ(f, OBJTAB_FETCH_MAGIC);
	atomic_init(&f->refs, 2);
	STAILQ_INIT(&f->waiters);
	f->t = t;
	f->hash = r->hash;
	f->family = r->family;
	f->gen = objtab_gen(t, r->family);
	f->base = base != NULL && entry_status(base) == 200 ? entry_ref(base) : NULL;
	f->attached = 1;
	r->busy = f;
	return f;
}

/* Takes r's fetch out of the record (it may run on for its waiters). */
static void detach(struct rec *r)
{
	struct objtab_fetch *f = r->busy;

	if (f == NULL)
		return;
	r->busy = NULL;
	f->attached = 0;
	objtab_fetch_unref(&f); /* never the last: its runner holds one */
}

/* r's running fetch, unless an invalidation left it behind. */
static struct objtab_fetch *current_fetch(struct objtab *t, struct rec *r)
{
	if (r->busy != NULL && r->busy->gen != objtab_gen(t, r->family))
		detach(r);
	return r->busy;
}

static void queue(struct objtab_fetch *f, const struct objtab_ask *ask)
{
	struct objtab_waiter *w = ask->w;

	if (ask->park == NULL || w == NULL)
		return;
	ASSERT(!w->queued);
	w->queued = 1;
	STAILQ_INSERT_TAIL(&f->waiters, w, link);
	ask->park(w->arg);
}

/* ---- lookups ---- */

static void note(struct shard *sh, struct rec *r, int64_t *until, int64_t when)
{
	if (!has_notes(r))
		sh->noted++;
	*until = when;
}

/* The entry that answers for r: memory's, else one on its way to the file. */
static struct entry *held(struct rec *r)
{
	struct entry *e = r->entry != NULL ? r->entry : r->pending;

	return e != NULL && entry_status(e) == 200 ? e : NULL;
}

/* Reads key from the backend (no lock held) and keeps it in memory unless
 * memory got one meanwhile.  The entry read (a reference: it answers even
 * when memory has no room for it), or NULL, also when an invalidation came
 * between. */
static struct entry *load(struct objtab *t, struct shard *sh, const struct objtab_ask *ask)
{
	unsigned gen = objtab_gen(t, ask->family);
	struct entry *e = t->be.load(t->be.arg, ask->key, ask->family);
	struct rec *r;
	int kept = 0;

	if (e == NULL)
		return NULL;
	pthread_mutex_lock(&sh->lock);
	if (objtab_gen(t, ask->family) != gen) {
		entry_unref(&e);
	} else if ((r = find_or_add(sh, ask->key, ask->hash, ask->family)) != NULL) {
		if (r->entry == NULL && r->pending == NULL)
			kept = install(t, r, e);
		maybe_free(sh, r, ask->now);
	}
	pthread_mutex_unlock(&sh->lock);
	if (kept)
		make_room(t);
	return e;
}

/* What key's record holds for a lookup.  Shard lock held. */
static void look(struct objtab *t, struct shard *sh, const struct objtab_ask *ask, struct rec **r,
		 struct entry **e, struct objtab_fetch **f)
{
	*r = *slot(sh, ask->key, ask->hash);
	*e = *r != NULL ? held(*r) : NULL;
	*f = *r != NULL ? current_fetch(t, *r) : NULL;
}

enum objtab_verdict objtab_lookup(struct objtab *t, const struct objtab_ask *ask,
				  struct objtab_answer *ans)
{
	struct shard *sh = shard_of(t, ask->hash);
	int64_t now = ask->now;
	enum objtab_verdict v;
	struct objtab_fetch *f;
	struct rec *r;
	struct entry *e, *loaded = NULL;

	ans->entry = NULL;
	ans->fetch = NULL;
	pthread_mutex_lock(&sh->lock);
	look(t, sh, ask, &r, &e, &f);
	if (e == NULL && f == NULL && t->be.load != NULL) {
		/* Not in memory: the file, with no lock held. */
		pthread_mutex_unlock(&sh->lock);
		loaded = load(t, sh, ask);
		pthread_mutex_lock(&sh->lock);
		look(t, sh, ask, &r, &e, &f);
		if (e == NULL && f == NULL && loaded != NULL && entry_status(loaded) == 200)
			e = loaded; /* too large for memory, still the answer */
	}
	if (e != NULL && ask->usable != NULL && !ask->usable(e, ask->arg)) {
		v = OBJTAB_PASS; /* stored for requests unlike this one */
		goto out;
	}
	if (e != NULL && now < entry_expires_at(e)) {
		entry_mark_used(e);
		ans->entry = entry_ref(e);
		v = OBJTAB_HIT;
		goto out;
	}
	if (e != NULL)
		ans->entry = entry_ref(e); /* expired: the fallback if the API fails */
	if (ask->flags & OBJTAB_CACHED_ONLY) {
		v = OBJTAB_MISS;
		goto out;
	}
	if (e != NULL && t->stale_window != NULL &&
	    now < entry_expires_at(e) + (int64_t)t->stale_window(e, t->stale_arg)) {
		/* Served now; one fetch behind it brings it up to date, unless
		 * one runs or one just failed (then the stale copy is all
		 * there is for a while). */
		if (f == NULL &&
		    (r != NULL ||
		     (r = find_or_add(sh, ask->key, ask->hash, ask->family)) != NULL) &&
		    r->cooldown_until <= now)
			ans->fetch = fetch_new(t, r, e);
		v = OBJTAB_STALE;
		goto out;
	}
	if (f != NULL && !(ask->flags & OBJTAB_NO_WAIT)) {
		ans->fetch = objtab_fetch_ref(f);
		queue(f, ask);
		v = OBJTAB_BUSY;
		goto out;
	}
	if ((ask->flags & OBJTAB_NO_WAIT) || (r != NULL && r->too_large_until > now)) {
		v = OBJTAB_PASS;
		goto out;
	}
	v = OBJTAB_MISS;
	if (r == NULL && (r = find_or_add(sh, ask->key, ask->hash, ask->family)) == NULL)
		goto out;
	if ((ans->fetch = fetch_new(t, r, e)) != NULL)
		queue(ans->fetch, ask);
out:
	if (r != NULL)
		maybe_free(sh, r, now);
	pthread_mutex_unlock(&sh->lock);
	entry_unref(&loaded);
	return v;
}

struct objtab_fetch *objtab_fetch_start(struct objtab *t, const char *key, int family)
{
	uint64_t hash = objtab_hash(key);
	struct shard *sh = shard_of(t, hash);
	struct objtab_fetch *f = NULL;
	struct rec *r;

	pthread_mutex_lock(&sh->lock);
	if ((r = find_or_add(sh, key, hash, family)) != NULL) {
		if (current_fetch(t, r) == NULL)
			f = fetch_new(t, r, held(r));
		maybe_free(sh, r, t->now());
	}
	pthread_mutex_unlock(&sh->lock);
	return f;
}

void objtab_leave(struct objtab_fetch *f, struct objtab_waiter *w)
{
	struct shard *sh;

	CHECK_OBJ(f, OBJTAB_FETCH_MAGIC);
	sh = shard_of(f->t, f->hash);
	pthread_mutex_lock(&sh->lock);
	if (w->queued) {
		STAILQ_REMOVE(&f->waiters, w, objtab_waiter, link);
		w->queued = 0;
	}
	pthread_mutex_unlock(&sh->lock);
}

/* ---- the end of a fetch ---- */

/* Whether a 304 for base may replace what r holds: the same version, or
 * nothing.  A newer answer stored meanwhile stays. */
static int base_still_held(const struct rec *r, const struct entry *base)
{
	return r->entry == NULL || base == NULL || entry_same_body(r->entry, base);
}

void objtab_fetch_done(struct objtab *t, struct objtab_fetch *f, const struct objtab_result *res)
{
	struct shard *sh;
	struct waiters woken = STAILQ_HEAD_INITIALIZER(woken);
	struct objtab_waiter *w;
	struct entry *write = NULL;
	int storable = res->outcome == OBJTAB_ENTRY && res->keep, kept = 0;
	int64_t now = t->now();
	struct rec *r;

	CHECK_OBJ(f, OBJTAB_FETCH_MAGIC);
	sh = shard_of(t, f->hash);
	pthread_mutex_lock(&sh->lock);
	ASSERT(!f->done);
	f->outcome = res->outcome;
	if (res->outcome == OBJTAB_ENTRY) {
		AN(res->entry);
		f->entry = entry_ref(res->entry);
		f->revalidated = res->revalidated;
	} else if (res->outcome == OBJTAB_ERROR) {
		f->err = res->err;
		snprintf(f->detail, sizeof(f->detail), "%s", res->detail ? res->detail : "");
	}
	r = *slot(sh, f->key, f->hash);
	if (r == NULL)
		r = find_or_add(sh, f->key, f->hash, f->family);
	if (r != NULL) {
		/* Kept: in memory if it fits, and in the file either way. */
		if (storable && f->gen == objtab_gen(t, f->family) &&
		    entry_key(res->entry) != NULL &&
		    (!res->revalidated || base_still_held(r, f->base))) {
			kept = 1;
			install(t, r, res->entry);
		}
		if (kept && t->be.write != NULL) {
			entry_unref(&r->pending);
			r->pending = entry_ref(res->entry);
			write = entry_ref(res->entry);
		}
		/* Not kept (a failure, an error answer): background refreshes
		 * pause, or a stale entry would refetch on every hit. */
		if (res->outcome == OBJTAB_DIRECT)
			note(sh, r, &r->too_large_until, now + OBJTAB_TOO_LARGE_FOR);
		if (!storable)
			note(sh, r, &r->cooldown_until, now + OBJTAB_COOLDOWN_FOR);
		if (r->busy == f)
			detach(r);
		maybe_free(sh, r, now);
	}
	f->done = 1;
	STAILQ_CONCAT(&woken, &f->waiters);
	STAILQ_FOREACH(w, &woken, link)
	w->queued = 0;
	pthread_mutex_unlock(&sh->lock);
	if (kept)
		make_room(t);
	/* Queued for the file before the waiters wake: from then on a lookup
	 * finds it in memory, pending, or in the file. */
	if (write != NULL) {
		int64_t was_at = res->revalidated && f->base != NULL ? entry_stored_at(f->base) : 0;

		if (t->be.write(t->be.arg, write, f->gen, was_at) < 0)
			objtab_written(t, write);
		entry_unref(&write);
	}
	while ((w = STAILQ_FIRST(&woken)) != NULL) {
		STAILQ_REMOVE_HEAD(&woken, link);
		/* Nothing of w after this: its request may be gone. */
		w->unpark(w->arg);
	}
}

static int fetch_done(const struct objtab_fetch *f)
{
	struct shard *sh = shard_of(f->t, f->hash);
	int done;

	pthread_mutex_lock(&sh->lock);
	done = f->done;
	pthread_mutex_unlock(&sh->lock);
	return done;
}

enum objtab_outcome objtab_fetch_outcome(const struct objtab_fetch *f)
{
	CHECK_OBJ(f, OBJTAB_FETCH_MAGIC);
	/* Not ended (a waiter that could not wait): it fetches on its own. */
	return fetch_done(f) ? f->outcome : OBJTAB_DIRECT;
}

struct entry *objtab_fetch_entry(const struct objtab_fetch *f, int *revalidated)
{
	if (revalidated != NULL)
		*revalidated = f->revalidated;
	return f->entry;
}

int objtab_fetch_error(const struct objtab_fetch *f, const char **detail)
{
	if (detail != NULL)
		*detail = f->detail;
	return f->err;
}

/* ---- stores, drops, invalidation ---- */

int objtab_store(struct objtab *t, struct entry *e, unsigned gen, const struct entry *base,
		 int write)
{
	const char *key = entry_key(e);
	int family = entry_family(e), kept = 0;
	uint64_t hash;
	struct shard *sh;
	struct rec *r;

	if (key == NULL || !fam_ok(t, family))
		return 0;
	hash = objtab_hash(key);
	sh = shard_of(t, hash);
	pthread_mutex_lock(&sh->lock);
	if (objtab_gen(t, family) == gen && (r = find_or_add(sh, key, hash, family)) != NULL) {
		if (base == NULL || base_still_held(r, base)) {
			kept = 1;
			install(t, r, e);
		}
		write = write && kept && t->be.write != NULL;
		if (write) {
			entry_unref(&r->pending);
			r->pending = entry_ref(e);
		}
		maybe_free(sh, r, t->now());
	} else {
		write = 0;
	}
	pthread_mutex_unlock(&sh->lock);
	if (kept)
		make_room(t);
	if (write && t->be.write(t->be.arg, e, gen, 0) < 0)
		objtab_written(t, e);
	return kept;
}

void objtab_written(struct objtab *t, struct entry *e)
{
	uint64_t hash = objtab_hash(entry_key(e));
	struct shard *sh = shard_of(t, hash);
	struct rec *r;

	pthread_mutex_lock(&sh->lock);
	if ((r = *slot(sh, entry_key(e), hash)) != NULL && r->pending == e) {
		drop_pending(r);
		maybe_free(sh, r, t->now());
	}
	pthread_mutex_unlock(&sh->lock);
}

void objtab_drop(struct objtab *t, const char *key)
{
	uint64_t hash = objtab_hash(key);
	struct shard *sh = shard_of(t, hash);
	struct rec *r;

	pthread_mutex_lock(&sh->lock);
	if ((r = *slot(sh, key, hash)) != NULL) {
		drop_entry(t, r, 0);
		maybe_free(sh, r, t->now());
	}
	pthread_mutex_unlock(&sh->lock);
}

/* Visits every record of every shard, shard lock held; fn may free it. */
static void each_rec(struct objtab *t,
		     void (*fn)(struct objtab *, struct shard *, struct rec *, void *), void *arg,
		     int only_noted)
{
	for (unsigned i = 0; i < NSHARDS; i++) {
		struct shard *sh = &t->shards[i];

		pthread_mutex_lock(&sh->lock);
		if (!only_noted || sh->noted > 0)
			for (size_t b = 0; b < sh->nbuckets; b++)
				for (struct rec *r = sh->buckets[b], *next; r != NULL; r = next) {
					next = r->hnext;
					fn(t, sh, r, arg);
				}
		pthread_mutex_unlock(&sh->lock);
	}
}

static void forget(struct objtab *t, struct shard *sh, struct rec *r, void *arg)
{
	int family = *(const int *)arg;

	if (family >= 0 && r->family != family)
		return;
	drop_entry(t, r, 0);
	drop_pending(r);
	detach(r);
	maybe_free(sh, r, t->now());
}

void objtab_invalidate(struct objtab *t, int family)
{
	/* The generation moves first: a store racing the walk below either
	 * lands before it (and is dropped) or sees the new generation. */
	for (int i = 0; i < t->nfamilies; i++)
		if (family < 0 || i == family)
			atomic_fetch_add(&t->gen[i], 1);
	each_rec(t, forget, &family, 0);
}

struct used {
	char **keys;
	int n, cap, failed;
};

static void collect_used(struct objtab *t, struct shard *sh, struct rec *r, void *arg)
{
	struct used *u = arg;

	(void)t;
	(void)sh;
	if (u->failed || r->entry == NULL || !entry_take_used(r->entry))
		return;
	if (u->n == u->cap) {
		int ncap = u->cap ? u->cap * 2 : 32;
		char **nk = realloc(u->keys, (size_t)ncap * sizeof(*nk));

		if (nk == NULL) {
			u->failed = 1;
			return;
		}
		u->keys = nk;
		u->cap = ncap;
	}
	if ((u->keys[u->n] = strdup(r->key)) == NULL)
		u->failed = 1;
	else
		u->n++;
}

int objtab_used_keys(struct objtab *t, char ***keys)
{
	struct used u = { 0 };

	each_rec(t, collect_used, &u, 0);
	if (u.failed) {
		for (int i = 0; i < u.n; i++)
			free(u.keys[i]);
		free(u.keys);
		*keys = NULL;
		return -1;
	}
	*keys = u.keys;
	return u.n;
}

void objtab_usage(struct objtab *t, int64_t *entries, int64_t *bytes)
{
	pthread_mutex_lock(&t->lru_lock);
	*entries = (int64_t)t->entries;
	*bytes = (int64_t)t->bytes;
	pthread_mutex_unlock(&t->lru_lock);
}

static void expire_notes(struct objtab *t, struct shard *sh, struct rec *r, void *arg)
{
	int64_t now = *(const int64_t *)arg;

	if (!has_notes(r))
		return;
	if (r->too_large_until <= now)
		r->too_large_until = 0;
	if (r->cooldown_until <= now)
		r->cooldown_until = 0;
	if (!has_notes(r))
		sh->noted--;
	maybe_free(sh, r, now);
}

void objtab_sweep(struct objtab *t)
{
	int64_t now = t->now();

	each_rec(t, expire_notes, &now, 1);
}

void objtab_free(struct objtab **tp)
{
	struct objtab *t = *tp;

	if (t == NULL)
		return;
	for (unsigned i = 0; i < NSHARDS; i++) {
		struct shard *sh = &t->shards[i];

		for (size_t b = 0; sh->buckets != NULL && b < sh->nbuckets; b++)
			for (struct rec *r = sh->buckets[b], *next; r != NULL; r = next) {
				next = r->hnext;
				drop_entry(t, r, 0);
				drop_pending(r);
				detach(r);
				free(r->key);
				free(r);
			}
		free(sh->buckets);
		pthread_mutex_destroy(&sh->lock);
	}
	pthread_mutex_destroy(&t->lru_lock);
	free(t->gen);
	free(t);
	*tp = NULL;
}
