/*
 * keeper: two threads, each with a FIFO of jobs.
 *
 * The prep thread compresses a new answer (the gzip copy the file stores
 * and memory serves) and hands it back: CPU work only, so a client never
 * waits for the disk.  The file thread writes, deletes, and does the
 * periodic work (a tick a second); SQLite's locks and a slow disk only ever
 * hold it up.
 *
 * Ordering: every file change runs on the file thread in FIFO order, so an
 * invalidation queued after a store deletes what that store wrote, and a
 * store queued after an invalidation sees the family's generation moved on
 * and writes nothing.  Until a store reaches the file, the object table
 * holds it as pending; until an invalidation's delete succeeds, the
 * family's "written at" time voids the rows it would delete.
 */
#include "keeper.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <time.h>

#include "check.h"
#include "clock.h"
#include "config.h"
#include "gz.h"
#include "entry.h"
#include "log.h"
#include "objtab.h"
#include "policy.h"

#define GZIP_MIN 256   /* smaller bodies are not worth a Content-Encoding */
#define GZIP_LEVEL 6   /* zlib's default: most of level 9's ratio at a third of its cost */
#define TICK_SECONDS 1 /* how soon another process's purge is noticed */
/* Answers waiting for a disk that is behind: beyond this they are kept in
 * memory only (and the drop is logged), rather than piling up. */
#define FILE_QUEUE_MAX ((size_t)128 * 1024 * 1024)

enum job_kind { JOB_COMPRESS, JOB_STORE, JOB_REFRESH, JOB_INVALIDATE, JOB_PURGE };

struct job {
	enum job_kind kind;
	struct entry *e; /* STORE, REFRESH */
	int64_t was_at;  /* REFRESH: stored_at of the version refreshed */
	unsigned gen;
	keeper_done_fn done;
	void *arg;
	struct keeper_purge *purge; /* PURGE: its ticket (a reference) */
	STAILQ_ENTRY(job) link;
};

struct jobq {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	pthread_cond_t drained; /* broadcast when the last job is done */
	STAILQ_HEAD(, job) jobs;
	size_t bytes;
	int stopping;
	pthread_t thread;
	int started;
};

struct keeper {
	const struct config *cfg;
	struct cache *cache;
	struct objtab *tab;
	struct policy *policy;

	struct jobq prep, file;
	pthread_mutex_t store_lock; /* file writes vs. purges from other threads */

	/* File thread only. */
	int64_t next_maint;
	int64_t file_bytes;     /* estimate between maintenance passes */
	uint32_t inval_pending; /* families whose delete failed: retried */

	atomic_uint inval_dirty; /* families written to, delete not yet run */
	atomic_int inval_queued; /* a JOB_INVALIDATE marker is in the queue */
	atomic_ullong inval_seq; /* invalidations so far */
	/* Per family: the last invalidation, and the last whose delete is
	 * committed.  While they differ, rows stored up to the family's
	 * written-at second may predate the write; once equal, the file holds
	 * none (the delete took them, and generations keep later pre-write
	 * answers out), so same-second rows are not voided for nothing. */
	atomic_ullong fam_latest[32], fam_done[32];
	/* Per family: invalidations under way (keeper_invalidate() between its
	 * first step and its last): every row read meanwhile is void. */
	atomic_int fam_busy[32];
	atomic_llong fam_written[32]; /* per family: rows stored until then may be void */

	/* Writes' answers waiting for their deletes to reach the file. */
	pthread_mutex_t wlock;
	unsigned long long durable_seq; /* invalidations whose deletes are committed */
	int waits_released;
	TAILQ_HEAD(durable_waits, durable_wait) waits;

	atomic_ullong evicted, pruned, purged, write_errors;
};

struct durable_wait {
	unsigned long long seq;     /* ULLONG_MAX for a purge's wait */
	struct keeper_purge *purge; /* a purge's wait: ended by its job, or at shutdown */
	struct timespec since;      /* CLOCK_MONOTONIC */
	void (*unpark)(void *);
	void *arg;
	TAILQ_ENTRY(durable_wait) link; /* k->waits, then the list to unpark */
};

/* A purge's ticket, shared by the caller and the file thread's job. */
struct keeper_purge {
	unsigned magic;
#define KEEPER_PURGE_MAGIC 0x50524745u /* "PRGE" */
	atomic_int refs;
	struct keeper *k;
	enum cache_purge kind;
	char *what;
	long result;               /* under k->wlock: KEEPER_PURGE_PENDING until done */
	struct durable_wait *wait; /* under k->wlock: the caller's, while parked */
};

static void durable(struct keeper *k, unsigned long long upto);
static void purge_finish(struct keeper_purge *t, long result);
static void purge_unref(struct keeper_purge **tp);

void keeper_warn(const char *fmt, ...)
{
	static atomic_llong last;
	static atomic_ulong hidden;
	long long now = (long long)time(NULL), prev = atomic_load(&last);
	unsigned long n;
	char msg[512];
	va_list ap;

	if (now - prev < 60 || !atomic_compare_exchange_strong(&last, &prev, now)) {
		atomic_fetch_add(&hidden, 1);
		return;
	}
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	n = atomic_exchange(&hidden, 0);
	if (n > 0)
		log_warnx("cache: %s (and %lu more cache errors in the last minute); answers "
			  "still come from the API",
			  msg, n);
	else
		log_warnx("cache: %s; answers still come from the API", msg);
}

static const char *family_name(struct keeper *k, int family)
{
	return policy_family_name(k->policy, family);
}

/* ---- queues ---- */

static void jobq_init(struct jobq *q)
{
	pthread_condattr_t ca;

	/* Waits are timed on the monotonic clock: a wall clock stepped back
	 * must not stall the ticks. */
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_mutex_init(&q->lock, NULL);
	STAILQ_INIT(&q->jobs);
	pthread_cond_init(&q->cond, &ca);
	pthread_cond_init(&q->drained, &ca);
	pthread_condattr_destroy(&ca);
}

static void job_free(struct job *j)
{
	entry_unref(&j->e);
	if (j->purge != NULL)
		purge_finish(j->purge, KEEPER_PURGE_PENDING); /* never ran: stopping */
	purge_unref(&j->purge);
	free(j);
}

static void jobq_push(struct jobq *q, struct job *j)
{
	pthread_mutex_lock(&q->lock);
	STAILQ_INSERT_TAIL(&q->jobs, j, link);
	q->bytes += j->e != NULL ? entry_size(j->e) : 0;
	pthread_cond_signal(&q->cond);
	pthread_mutex_unlock(&q->lock);
}

/* The next job, or NULL after waiting up to a tick (or once stopping and
 * empty: *stop is set then). */
static struct job *jobq_pop(struct jobq *q, int *stop)
{
	struct job *j;

	pthread_mutex_lock(&q->lock);
	if (STAILQ_EMPTY(&q->jobs) && !q->stopping) {
		struct timespec ts;

		clock_mono_deadline(&ts, (int64_t)TICK_SECONDS * 1000);
		pthread_cond_timedwait(&q->cond, &q->lock, &ts);
	}
	if ((j = STAILQ_FIRST(&q->jobs)) != NULL)
		STAILQ_REMOVE_HEAD(&q->jobs, link);
	*stop = j == NULL && q->stopping;
	pthread_mutex_unlock(&q->lock);
	return j;
}

/* The job has left q's accounting. */
static void jobq_done(struct jobq *q, struct job *j)
{
	pthread_mutex_lock(&q->lock);
	q->bytes -= j->e != NULL ? entry_size(j->e) : 0;
	if (STAILQ_EMPTY(&q->jobs))
		pthread_cond_broadcast(&q->drained);
	pthread_mutex_unlock(&q->lock);
}

static void jobq_stop(struct jobq *q)
{
	if (!q->started)
		return;
	pthread_mutex_lock(&q->lock);
	q->stopping = 1;
	pthread_cond_signal(&q->cond);
	pthread_mutex_unlock(&q->lock);
	pthread_join(q->thread, NULL);
	q->started = 0;
}

static void jobq_destroy(struct jobq *q)
{
	struct job *j;

	while ((j = STAILQ_FIRST(&q->jobs)) != NULL) {
		STAILQ_REMOVE_HEAD(&q->jobs, link);
		job_free(j);
	}
	pthread_mutex_destroy(&q->lock);
	pthread_cond_destroy(&q->cond);
	pthread_cond_destroy(&q->drained);
}

/* ---- reads ---- */

/* An entry from a file row: the identity body is what memory keeps, the
 * stored gzip copy rides along. */
static struct entry *from_row(const char *key, int family, struct cache_entry *row, size_t limit)
{
	struct entry_init in = { 0 };
	void *identity = NULL;

	/* The length comes from the file: a damaged one must not size a
	 * buffer beyond anything kaleidod would have stored. */
	if (row->gzip && row->identity_len > limit)
		return NULL;
	if (row->gzip) {
		if (gz_decompress(row->body, row->body_len, row->identity_len, &identity) < 0)
			return NULL;
		in.gz = row->body;
		in.gz_len = row->body_len;
		in.body_len = row->identity_len;
	} else {
		identity = row->body;
		in.body_len = row->body_len;
	}
	row->body = NULL;
	in.key = key;
	in.family = family;
	in.path = "";
	in.status = row->status;
	in.headers = row->headers;
	in.headers_len = row->headers_len;
	in.body = identity;
	in.stored_at = row->stored_at;
	in.expires_at = row->expires_at;
	return entry_new(&in);
}

/* The table's load: key's row, unless a write voided it.  Any thread. */
static struct entry *file_load(void *arg, const char *key, int family)
{
	struct keeper *k = arg;
	struct cache_entry *row = NULL;
	struct entry *e = NULL;
	unsigned long long done;
	int rc;

	if (k->cache == NULL || family < 0 || family >= 32)
		return NULL;
	/* Which deletes had run before the read: one that ends while the row
	 * is being read may have come too late for it. */
	done = atomic_load(&k->fam_done[family]);
	rc = cache_get(k->cache, key, &row);
	if (rc < 0)
		keeper_warn("lookup failed: %s", cache_errmsg(k->cache));
	if (rc != 1)
		return NULL;
	if (atomic_load(&k->fam_busy[family]) > 0 ||
	    (row->stored_at <= atomic_load(&k->fam_written[family]) &&
	     atomic_load(&k->fam_latest[family]) > done)) {
		/* A write is changing the family, or changed it and the
		 * row's delete had not reached the file when it was read (or
		 * failed): it is gone all the same. */
	} else if ((e = from_row(key, family, row, k->cfg->max_entry_size)) == NULL) {
		keeper_warn("an entry of %s cannot be read back (damaged or out of memory); "
			    "fetching it again",
			    family_name(k, family));
	}
	cache_entry_free(&row);
	return e;
}

/* ---- the prep thread: compress, memory, wake ---- */

static struct job *job_new(enum job_kind kind, struct entry *e, unsigned gen, keeper_done_fn done,
			   void *arg)
{
	struct job *j = calloc(1, sizeof(*j));

	if (j == NULL)
		return NULL;
	j->kind = kind;
	j->e = entry_ref(e);
	j->gen = gen;
	j->done = done;
	j->arg = arg;
	return j;
}

void keeper_compress(struct keeper *k, struct entry *e, keeper_done_fn done, void *arg)
{
	struct job *j = job_new(JOB_COMPRESS, e, 0, done, arg);

	if (j == NULL) {
		/* Served and kept as it is. */
		done(arg, e);
		return;
	}
	jobq_push(&k->prep, j);
}

/* The table's write: a kept entry goes to the file queue, unless the disk
 * is so far behind that it stays in memory only. */
static int file_write(void *arg, struct entry *e, unsigned gen, int64_t was_at)
{
	struct keeper *k = arg;
	struct job *j;
	size_t queued;

	if (k->cache == NULL || !k->file.started)
		return -1;
	pthread_mutex_lock(&k->file.lock);
	queued = k->file.bytes;
	pthread_mutex_unlock(&k->file.lock);
	if (queued > FILE_QUEUE_MAX) {
		atomic_fetch_add(&k->write_errors, 1);
		keeper_warn("the disk is behind (%zu bytes waiting); %s kept in memory only",
			    queued, family_name(k, entry_family(e)));
		return -1;
	}
	if ((j = job_new(was_at != 0 ? JOB_REFRESH : JOB_STORE, e, gen, NULL, NULL)) == NULL)
		return -1;
	j->was_at = was_at;
	jobq_push(&k->file, j);
	return 0;
}

void keeper_backend(struct keeper *k, struct objtab_backend *out)
{
	out->load = file_load;
	out->write = file_write;
	out->arg = k;
}

/* The entry with a gzip copy when that is worth it, else e itself. */
static struct entry *compressed(struct entry *e)
{
	size_t len, gzlen = 0;
	const void *body = entry_body(e, &len);
	struct entry *n = NULL;
	void *gz = NULL;

	if (len >= GZIP_MIN && entry_gzip(e, &gzlen) == NULL &&
	    gz_compress(body, len, GZIP_LEVEL, &gz, &gzlen) == 0) {
		if (gzlen < len)
			n = entry_with_gzip(e, gz, gzlen); /* takes gz */
		else
			free(gz); /* incompressible: served as it is */
	}
	return n != NULL ? n : entry_ref(e);
}

static void prep(struct keeper *k, struct job *j)
{
	struct entry *n = compressed(j->e);

	jobq_done(&k->prep, j);
	j->done(j->arg, n);
	entry_unref(&n);
	job_free(j);
}

static void *prep_main(void *arg)
{
	struct keeper *k = arg;
	struct job *j;
	int stop = 0;

	while (!stop)
		if ((j = jobq_pop(&k->prep, &stop)) != NULL)
			prep(k, j);
	return NULL;
}

/* ---- the file thread ---- */

/* Another process (kaleidod --purge) wrote the file: what memory holds, and
 * what is queued, may predate it.  File thread, store_lock held. */
static void changed_elsewhere(struct keeper *k)
{
	objtab_invalidate(k->tab, -1);
	log_info("cache: %s was changed by another process; reloading entries from it",
		 cache_path(k->cache));
}

/* 0, or -1 when the file refused the write. */
static int write_store(struct keeper *k, struct entry *n, unsigned gen)
{
	struct cache_entry row = { 0 };
	size_t len, gzlen;
	const void *body = entry_body(n, &len), *gz = entry_gzip(n, &gzlen);
	int fam = entry_family(n), rc = 0;

	row.status = entry_status(n);
	row.headers = (char *)entry_headers_text(n, &row.headers_len);
	row.gzip = gz != NULL;
	row.body = (void *)(gz != NULL ? gz : body);
	row.body_len = gz != NULL ? gzlen : len;
	row.identity_len = len;
	row.stored_at = entry_stored_at(n);
	row.expires_at = entry_expires_at(n);
	pthread_mutex_lock(&k->store_lock);
	if (objtab_gen(k->tab, fam) != gen) {
		/* a write or purge came after this answer was fetched */
	} else if ((rc = cache_put(k->cache, entry_key(n), family_name(k, fam), entry_path(n),
				   &row)) == -2) {
		/* Checked inside the write lock: a purge from another process
		 * committed while this waited.  The answer may predate it. */
		if (cache_changed_elsewhere(k->cache) == 1)
			changed_elsewhere(k);
		rc = 0;
	} else if (rc < 0) {
		atomic_fetch_add(&k->write_errors, 1);
		keeper_warn("cannot store %s: %s", family_name(k, fam), cache_errmsg(k->cache));
		/* An older version must not outlive a newer one not stored. */
		cache_forget(k->cache, entry_key(n));
	} else {
		k->file_bytes += (int64_t)(strlen(entry_key(n)) + row.headers_len + row.body_len);
	}
	pthread_mutex_unlock(&k->store_lock);
	return rc;
}

/* A 304 refreshes the version it was asked about; if the file holds
 * another (its store failed, or a newer one raced it), the whole entry is
 * written instead: its headers belong with its body. */
static int write_refresh(struct keeper *k, struct entry *e, int64_t was_at, unsigned gen)
{
	size_t hlen;
	const char *h = entry_headers_text(e, &hlen);
	int rc;

	pthread_mutex_lock(&k->store_lock);
	if (objtab_gen(k->tab, entry_family(e)) != gen) {
		pthread_mutex_unlock(&k->store_lock);
		return 0;
	}
	rc = cache_refresh(k->cache, entry_key(e), was_at, h, hlen, entry_stored_at(e),
			   entry_expires_at(e));
	pthread_mutex_unlock(&k->store_lock);
	if (rc == 0)
		return write_store(k, e, gen);
	if (rc < 0) {
		atomic_fetch_add(&k->write_errors, 1);
		keeper_warn("cannot refresh %s: %s", family_name(k, entry_family(e)),
			    cache_errmsg(k->cache));
	}
	return rc < 0 ? -1 : 0;
}

/* Deletes the rows of every family a write changed.  What fails stays
 * pending and is tried again every second (meanwhile the family's written-at
 * time voids the rows), and once more on the way out. */
static int write_invalidations(struct keeper *k)
{
	/* Read before the dirty bits: an invalidation counts itself after
	 * setting its bit, so every one up to `upto` is in todo (or pending). */
	unsigned long long upto = atomic_load(&k->inval_seq);
	uint32_t todo = atomic_exchange(&k->inval_dirty, 0) | k->inval_pending;
	int rc = 0;

	for (int i = 0; todo != 0 && i < policy_family_count(k->policy); i++) {
		if (!(todo & (1u << i)))
			continue;
		pthread_mutex_lock(&k->store_lock);
		if (cache_invalidate_family(k->cache, family_name(k, i)) < 0) {
			k->inval_pending |= 1u << i;
			keeper_warn("cannot invalidate %s (retrying): %s", family_name(k, i),
				    cache_errmsg(k->cache));
			rc = -1;
		} else {
			k->inval_pending &= ~(1u << i);
			if (atomic_load(&k->fam_done[i]) < upto)
				atomic_store(&k->fam_done[i], upto);
		}
		pthread_mutex_unlock(&k->store_lock);
	}
	if (k->inval_pending == 0)
		durable(k, upto);
	return rc;
}

unsigned long long keeper_invalidate(struct keeper *k, int family)
{
	unsigned long long seq;
	struct job *j;
	int64_t now = clock_wall();

	ASSERT(family >= 0 && family < 32);
	if (k->cache == NULL) {
		objtab_invalidate(k->tab, family);
		return 0;
	}
	/*
	 * The order matters.  While fam_busy is up, file_load() voids every
	 * row of the family, so a reader that misses memory cannot reload a
	 * row the write changed while the table forgets it.  The table then
	 * forgets the family and its generation moves, which voids stores
	 * still queued.  Only after that is the family marked for its delete
	 * and counted (fam_latest): a delete that takes the mark runs after
	 * the move, so it deletes any store that passed the old generation,
	 * and fam_done cannot reach this invalidation's number before.
	 */
	atomic_fetch_add(&k->fam_busy[family], 1);
	for (long long at = atomic_load(&k->fam_written[family]);
	     at < now && !atomic_compare_exchange_weak(&k->fam_written[family], &at, now);)
		;
	objtab_invalidate(k->tab, family);
	atomic_fetch_or(&k->inval_dirty, 1u << family);
	seq = atomic_fetch_add(&k->inval_seq, 1) + 1;
	for (unsigned long long at = atomic_load(&k->fam_latest[family]);
	     at < seq && !atomic_compare_exchange_weak(&k->fam_latest[family], &at, seq);)
		;
	atomic_fetch_sub(&k->fam_busy[family], 1);
	/* One marker in the queue stands for every write until it runs: a
	 * stream of writes against a locked file must not pile up jobs.  It
	 * keeps its place in the order: stores queued before it are deleted
	 * by it.  Without memory for it, the next tick does the delete. */
	if (atomic_exchange(&k->inval_queued, 1) == 0) {
		if ((j = job_new(JOB_INVALIDATE, NULL, 0, NULL, NULL)) == NULL)
			atomic_store(&k->inval_queued, 0);
		else
			jobq_push(&k->file, j);
	}
	return seq;
}

/* ---- writes' answers waiting for their deletes ---- */

/* Takes the waits that may end (all when every is set) off the list,
 * under wlock, into out. */
static void take_waits(struct keeper *k, int every, unsigned long long upto,
		       const struct timespec *older_than, struct durable_waits *out, size_t *n)
{
	struct durable_wait *w, *next;

	*n = 0;
	for (w = TAILQ_FIRST(&k->waits); w != NULL; w = next) {
		next = TAILQ_NEXT(w, link);
		/* A purge's wait ends with its job (it may take a while on a
		 * big file), or at shutdown. */
		if (every || (w->purge == NULL &&
			      (w->seq <= upto || (older_than != NULL &&
						  (w->since.tv_sec < older_than->tv_sec ||
						   (w->since.tv_sec == older_than->tv_sec &&
						    w->since.tv_nsec < older_than->tv_nsec)))))) {
			if (w->purge != NULL)
				w->purge->wait = NULL;
			TAILQ_REMOVE(&k->waits, w, link);
			TAILQ_INSERT_TAIL(out, w, link);
			(*n)++;
		}
	}
}

/* Unparks what take_waits() took, outside the lock. */
static void end_waits(struct durable_waits *list)
{
	struct durable_wait *w;

	while ((w = TAILQ_FIRST(list)) != NULL) {
		TAILQ_REMOVE(list, w, link);
		w->unpark(w->arg);
		free(w);
	}
}

/* The deletes of every invalidation up to `upto` are committed. */
static void durable(struct keeper *k, unsigned long long upto)
{
	struct durable_waits done = TAILQ_HEAD_INITIALIZER(done);
	size_t n;

	pthread_mutex_lock(&k->wlock);
	if (upto > k->durable_seq)
		k->durable_seq = upto;
	take_waits(k, 0, k->durable_seq, NULL, &done, &n);
	pthread_mutex_unlock(&k->wlock);
	end_waits(&done);
}

int keeper_await_durable(struct keeper *k, unsigned long long seq, void (*park)(void *),
			 void (*unpark)(void *), void *arg)
{
	struct durable_wait *w;
	int parked = 0;

	if (seq == 0 || k->cache == NULL)
		return 0;
	pthread_mutex_lock(&k->wlock);
	if (seq > k->durable_seq && !k->waits_released && (w = calloc(1, sizeof(*w))) != NULL) {
		w->seq = seq;
		clock_gettime(CLOCK_MONOTONIC, &w->since);
		w->unpark = unpark;
		w->arg = arg;
		/* Parked before anyone can see it, so the unpark comes after. */
		park(arg);
		TAILQ_INSERT_TAIL(&k->waits, w, link);
		parked = 1;
	}
	pthread_mutex_unlock(&k->wlock);
	return parked;
}

void keeper_expire_waits(struct keeper *k)
{
	struct durable_waits late = TAILQ_HEAD_INITIALIZER(late);
	struct timespec cut;
	size_t n;

	clock_gettime(CLOCK_MONOTONIC, &cut);
	cut.tv_sec -= KEEPER_DURABLE_WAIT;
	pthread_mutex_lock(&k->wlock);
	take_waits(k, 0, k->durable_seq, &cut, &late, &n);
	pthread_mutex_unlock(&k->wlock);
	/* The file thread warns why ("cannot invalidate ..."). */
	if (n > 0)
		log_debug("cache: %zu writes answered before the file took their invalidations", n);
	end_waits(&late);
}

void keeper_release_waits(struct keeper *k)
{
	struct durable_waits all = TAILQ_HEAD_INITIALIZER(all);
	size_t n;

	pthread_mutex_lock(&k->wlock);
	k->waits_released = 1;
	take_waits(k, 1, 0, NULL, &all, &n);
	pthread_mutex_unlock(&k->wlock);
	end_waits(&all);
}

/* The purge itself, on the file thread (or the caller's, without a file). */
static long purge_now(struct keeper *k, enum cache_purge kind, const char *what)
{
	int family = -1;
	long n = 0;

	if (kind == CACHE_PURGE_FAMILY) {
		for (int i = 0; i < policy_family_count(k->policy); i++)
			if (strcmp(family_name(k, i), what) == 0)
				family = i;
	}
	pthread_mutex_lock(&k->store_lock);
	/* Memory refills from the file, so dropping more than the purge names
	 * costs one read each; dropping less would serve what was purged.  The
	 * generation move also voids stores still queued. */
	objtab_invalidate(k->tab, family);
	if (k->cache != NULL && (n = cache_purge(k->cache, kind, what, NULL, NULL)) < 0)
		keeper_warn("purge failed: %s", cache_errmsg(k->cache));
	/* Once more now the rows are gone: a reader that missed memory
	 * meanwhile may have loaded one the purge was deleting. */
	if (k->cache != NULL)
		objtab_invalidate(k->tab, family);
	pthread_mutex_unlock(&k->store_lock);
	if (n > 0)
		atomic_fetch_add(&k->purged, (unsigned long long)n);
	return n;
}

static void purge_unref(struct keeper_purge **tp)
{
	struct keeper_purge *t = *tp;

	if (t == NULL)
		return;
	*tp = NULL;
	CHECK_OBJ(t, KEEPER_PURGE_MAGIC);
	if (atomic_fetch_sub(&t->refs, 1) == 1) {
		free(t->what);
		FINI_OBJ(t);
		free(t);
	}
}

/* Records the purge's count (once) and resumes its caller if parked. */
static void purge_finish(struct keeper_purge *t, long result)
{
	struct keeper *k = t->k;
	struct durable_wait *w;

	CHECK_OBJ(t, KEEPER_PURGE_MAGIC);
	pthread_mutex_lock(&k->wlock);
	if (t->result == KEEPER_PURGE_PENDING)
		t->result = result;
	if ((w = t->wait) != NULL) {
		t->wait = NULL;
		TAILQ_REMOVE(&k->waits, w, link);
	}
	pthread_mutex_unlock(&k->wlock);
	if (w != NULL) {
		w->unpark(w->arg);
		free(w);
	}
}

struct keeper_purge *keeper_purge_start(struct keeper *k, enum cache_purge kind, const char *what,
					void (*park)(void *), void (*unpark)(void *), void *arg,
					int *parked)
{
	struct keeper_purge *t = calloc(1, sizeof(*t));
	struct durable_wait *w = NULL;
	struct job *j = NULL;

	*parked = 0;
	if (t == NULL || (what != NULL && (t->what = strdup(what)) == NULL))
		goto fail;
	INIT_OBJ(t, KEEPER_PURGE_MAGIC);
	atomic_init(&t->refs, 1);
	t->k = k;
	t->kind = kind;
	t->result = KEEPER_PURGE_PENDING;
	/* Without a file thread, the purge is memory's alone: done at once. */
	if (k->cache == NULL || !k->file.started) {
		t->result = purge_now(k, kind, what);
		return t;
	}
	/* Queued behind every write before it, so the answers clients
	 * already have are in the file and purged, not written after it. */
	if ((w = calloc(1, sizeof(*w))) == NULL ||
	    (j = job_new(JOB_PURGE, NULL, 0, NULL, NULL)) == NULL)
		goto fail;
	w->seq = ULLONG_MAX;
	w->purge = t;
	clock_gettime(CLOCK_MONOTONIC, &w->since);
	w->unpark = unpark;
	w->arg = arg;
	atomic_fetch_add(&t->refs, 1);
	j->purge = t;
	pthread_mutex_lock(&k->wlock);
	if (k->waits_released) {
		/* stopping: nobody may park now, and the job may never run */
		pthread_mutex_unlock(&k->wlock);
		free(w);
		job_free(j);
		return t;
	}
	/* Parked before anyone can see it, so the unpark comes after. */
	park(arg);
	*parked = 1;
	t->wait = w;
	TAILQ_INSERT_TAIL(&k->waits, w, link);
	pthread_mutex_unlock(&k->wlock);
	jobq_push(&k->file, j);
	return t;
fail:
	free(w);
	if (j != NULL)
		free(j);
	if (t != NULL) {
		free(t->what);
		free(t);
	}
	return NULL;
}

long keeper_purge_result(struct keeper_purge **tp)
{
	struct keeper_purge *t = *tp;
	long n;

	CHECK_OBJ(t, KEEPER_PURGE_MAGIC);
	pthread_mutex_lock(&t->k->wlock);
	n = t->result;
	pthread_mutex_unlock(&t->k->wlock);
	purge_unref(tp);
	return n;
}

static void drop_key(void *arg, const char *key)
{
	objtab_drop(arg, key);
}

static int64_t max_bytes(const struct keeper *k)
{
	return k->cfg->max_size > (size_t)INT64_MAX ? INT64_MAX : (int64_t)k->cfg->max_size;
}

static void usage(struct keeper *k)
{
	int64_t entries = 0, bytes = 0;

	if (cache_usage(k->cache, &entries, &bytes) == 0)
		k->file_bytes = bytes;
}

/* Down to 90% of max_size, so a file at its limit is not evicted again for
 * every store that follows; the size estimate is read again after. */
static void evict(struct keeper *k)
{
	int rc;

	pthread_mutex_lock(&k->store_lock);
	rc = cache_evict(k->cache, max_bytes(k) / 10 * 9, drop_key, k->tab);
	pthread_mutex_unlock(&k->store_lock);
	if (rc > 0)
		atomic_fetch_add(&k->evicted, (unsigned long long)rc);
	if (rc < 0)
		keeper_warn("eviction failed: %s", cache_errmsg(k->cache));
	usage(k);
}
static void maintain(struct keeper *k, int64_t now)
{
	char **keys = NULL;
	int n = objtab_used_keys(k->tab, &keys), rc;

	if (n > 0 && cache_touch(k->cache, (const char *const *)keys, (size_t)n, now) < 0)
		keeper_warn("cannot record use: %s", cache_errmsg(k->cache));
	for (int i = 0; i < n; i++)
		free(keys[i]);
	free(keys);
	pthread_mutex_lock(&k->store_lock);
	rc = cache_prune(k->cache, now - (int64_t)k->cfg->stale_if_error, drop_key, k->tab);
	pthread_mutex_unlock(&k->store_lock);
	if (rc > 0)
		atomic_fetch_add(&k->pruned, (unsigned long long)rc);
	usage(k);
	if (k->file_bytes > max_bytes(k))
		evict(k);
	/* Vacuum frees pages, not entries: the estimate stands. */
	if (cache_vacuum(k->cache) < 0)
		keeper_warn("vacuum failed: %s", cache_errmsg(k->cache));
}

/* Once a second. */
static void tick(struct keeper *k, int64_t now)
{
	if (cache_changed_elsewhere(k->cache) == 1) {
		pthread_mutex_lock(&k->store_lock);
		changed_elsewhere(k);
		pthread_mutex_unlock(&k->store_lock);
	}
	if (k->inval_pending != 0)
		write_invalidations(k);
	if (now >= k->next_maint) {
		maintain(k, now);
		k->next_maint = now + k->cfg->maintenance_interval;
	} else if (k->file_bytes > max_bytes(k)) {
		evict(k);
	}
}

static int run_job(struct keeper *k, struct job *j)
{
	switch (j->kind) {
	case JOB_COMPRESS:
		break;
	case JOB_STORE:
		return write_store(k, j->e, j->gen);
	case JOB_REFRESH:
		return write_refresh(k, j->e, j->was_at, j->gen);
	case JOB_INVALIDATE:
		atomic_store(&k->inval_queued, 0);
		return write_invalidations(k);
	case JOB_PURGE: {
		long n = purge_now(k, j->purge->kind, j->purge->what);

		purge_finish(j->purge, n);
		return n < 0 ? -1 : 0;
	}
	}
	return 0;
}

static void *file_main(void *arg)
{
	struct keeper *k = arg;
	int64_t last_tick = 0;
	int stop = 0, failed = 0, dropped = 0;

	while (!stop) {
		struct job *j = jobq_pop(&k->file, &stop);
		int64_t now;
		int stopping;

		pthread_mutex_lock(&k->file.lock);
		stopping = k->file.stopping;
		pthread_mutex_unlock(&k->file.lock);
		/* Stopping with a file that refuses writes (locked by another
		 * process, a full disk): each try could wait out the busy
		 * timeout, so stores are given up rather than hold the exit.
		 * Deletes are not: a pre-write answer must not outlive us. */
		if (j != NULL && stopping && failed && j->kind != JOB_INVALIDATE)
			dropped++;
		else if (j != NULL)
			failed |= run_job(k, j) < 0 && stopping;
		if (j != NULL) {
			jobq_done(&k->file, j);
			/* In the file now, or given up: the table lets it go. */
			if (j->e != NULL)
				objtab_written(k->tab, j->e);
			job_free(j);
		}
		if (stopping)
			continue; /* no maintenance on the way out */
		now = clock_wall();
		if (now != last_tick) {
			last_tick = now;
			tick(k, now);
		}
	}
	if (k->inval_pending != 0 || atomic_load(&k->inval_dirty) != 0)
		write_invalidations(k);
	if (k->inval_pending != 0)
		log_warnx("cache: %s refused the deletes of lists that writes changed; after a "
			  "restart their old copies could be served: purge them with "
			  "kaleidod --purge FAMILY",
			  cache_path(k->cache));
	if (dropped > 0)
		log_warnx("cache: %s refused writes while stopping; %d answers were not written",
			  cache_path(k->cache), dropped);
	return NULL;
}

struct keeper *keeper_new(const struct config *cfg, struct cache *cache, struct objtab *tab,
			  struct policy *policy, char *err, size_t errlen)
{
	struct keeper *k = calloc(1, sizeof(*k));

	if (k == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	k->cfg = cfg;
	k->cache = cache;
	k->tab = tab;
	k->policy = policy;
	pthread_mutex_init(&k->store_lock, NULL);
	pthread_mutex_init(&k->wlock, NULL);
	TAILQ_INIT(&k->waits);
	jobq_init(&k->prep);
	jobq_init(&k->file);
	/* The first pass runs at once: a file may come in over its limit or
	 * full of entries past the stale limit. */
	k->next_maint = 0;
	if (pthread_create(&k->prep.thread, NULL, prep_main, k) != 0) {
		snprintf(err, errlen, "cannot start the cache threads");
		keeper_free(&k);
		return NULL;
	}
	k->prep.started = 1;
	if (cache != NULL) {
		if (pthread_create(&k->file.thread, NULL, file_main, k) != 0) {
			snprintf(err, errlen, "cannot start the cache threads");
			keeper_free(&k);
			return NULL;
		}
		k->file.started = 1;
	}
	return k;
}

void keeper_free(struct keeper **kp)
{
	struct keeper *k = *kp;

	if (k == NULL)
		return;
	/* Prep first: what it finishes goes on to the file queue, which the
	 * file thread then writes out before it stops, unless the file is
	 * locked by another process: then nothing waits for it any more. */
	jobq_stop(&k->prep);
	cache_give_up(k->cache);
	jobq_stop(&k->file);
	jobq_destroy(&k->prep);
	jobq_destroy(&k->file);
	keeper_release_waits(k);
	pthread_mutex_destroy(&k->wlock);
	pthread_mutex_destroy(&k->store_lock);
	free(k);
	*kp = NULL;
}

void keeper_counters(struct keeper *k, struct keeper_counters *out)
{
	out->evicted = atomic_load(&k->evicted);
	out->pruned = atomic_load(&k->pruned);
	out->purged = atomic_load(&k->purged);
	out->write_errors = atomic_load(&k->write_errors);
	out->max_bytes = (int64_t)k->cfg->max_size;
}
