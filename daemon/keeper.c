/*
 * keeper: one thread and a FIFO of jobs (store, refresh), plus a tick every
 * second for the periodic work.  The store lock orders file writes against
 * invalidations: a job checks its family generation and writes under it, an
 * invalidation bumps the generation and deletes under it, so a store can
 * never land after the write that made it stale.
 */
#include "keeper.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "gz.h"
#include "hot.h"
#include "log.h"
#include "policy.h"

#define GZIP_MIN 256   /* smaller bodies are not worth a Content-Encoding */
#define GZIP_LEVEL 6   /* zlib's default: most of level 9's ratio at a third of its cost */
#define TICK_SECONDS 1 /* how soon another process's purge is noticed */

enum job_kind { JOB_STORE, JOB_REFRESH };

struct job {
	enum job_kind kind;
	struct hot_entry *e;
	unsigned gen;
	keeper_done_fn done;
	void *arg;
	struct job *next;
};

struct keeper {
	const struct config *cfg;
	struct cache *cache;
	struct hot *hot;
	struct policy *policy;

	pthread_mutex_t store_lock; /* file writes vs. invalidations */

	pthread_mutex_t qlock;
	pthread_cond_t qcond;
	struct job *head, *tail;
	int stopping;
	pthread_t thread;
	int started;

	/* Keeper thread only. */
	int64_t next_maint;
	int64_t file_bytes; /* estimate between maintenance passes */

	atomic_ullong evicted, pruned, purged, write_errors;
};

static int64_t now_wall(void)
{
	return (int64_t)time(NULL);
}

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

/* ---- reads ---- */

/* An entry from a file row: the identity body is what memory keeps, the
 * stored gzip copy rides along. */
static struct hot_entry *from_row(const char *key, int family, struct cache_entry *row)
{
	struct hot_entry_init in = { 0 };
	void *identity = NULL;

	if (row->gzip) {
		if (gz_decompress(row->body, row->body_len, row->identity_len, &identity) < 0)
			return NULL;
		in.gz = row->body;
		in.gz_len = row->body_len;
	} else {
		identity = row->body;
	}
	row->body = NULL;
	in.key = key;
	in.family = family;
	in.path = "";
	in.status = row->status;
	in.headers = row->headers;
	in.headers_len = row->headers_len;
	in.body = identity;
	in.body_len = row->identity_len;
	in.stored_at = row->stored_at;
	in.expires_at = row->expires_at;
	return hot_entry_new(&in);
}

struct hot_entry *keeper_lookup(struct keeper *k, const char *key, int family)
{
	struct hot_entry *e = hot_get(k->hot, key);
	struct cache_entry *row = NULL;
	unsigned gen;
	int rc;

	if (e != NULL || k->cache == NULL)
		return e;
	/* Read before the file: an invalidation racing this read must win. */
	gen = hot_gen(k->hot, family);
	rc = cache_get(k->cache, key, &row);
	if (rc < 0)
		keeper_warn("lookup failed: %s", cache_errmsg(k->cache));
	if (rc != 1)
		return NULL;
	if ((e = from_row(key, family, row)) == NULL)
		keeper_warn("an entry of %s cannot be read back (damaged or out of memory); "
			    "fetching it again",
			    family_name(k, family));
	else
		hot_put(k->hot, e, gen);
	cache_entry_free(&row);
	return e;
}

/* ---- jobs ---- */

static void enqueue(struct keeper *k, enum job_kind kind, struct hot_entry *e, unsigned gen,
		    keeper_done_fn done, void *arg)
{
	struct job *j = calloc(1, sizeof(*j));

	if (j == NULL) {
		/* Not kept, but whoever waits for it still gets its answer. */
		if (done != NULL)
			done(arg, e);
		return;
	}
	j->kind = kind;
	j->e = hot_entry_ref(e);
	j->gen = gen;
	j->done = done;
	j->arg = arg;
	pthread_mutex_lock(&k->qlock);
	if (k->tail != NULL)
		k->tail->next = j;
	else
		k->head = j;
	k->tail = j;
	pthread_cond_signal(&k->qcond);
	pthread_mutex_unlock(&k->qlock);
}

void keeper_store(struct keeper *k, struct hot_entry *e, unsigned gen, keeper_done_fn done,
		  void *arg)
{
	if (done == NULL)
		hot_put(k->hot, e, gen);
	enqueue(k, JOB_STORE, e, gen, done, arg);
}

void keeper_refresh(struct keeper *k, struct hot_entry *e, unsigned gen, keeper_done_fn done,
		    void *arg)
{
	if (done == NULL)
		hot_put(k->hot, e, gen);
	enqueue(k, JOB_REFRESH, e, gen, done, arg);
}

/* The entry with a gzip copy when that is worth it, else e itself. */
static struct hot_entry *compressed(struct hot_entry *e)
{
	size_t len, gzlen = 0;
	const void *body = hot_entry_body(e, &len);
	struct hot_entry *n = NULL;
	void *gz = NULL;

	if (len >= GZIP_MIN && hot_entry_gzip(e, &gzlen) == NULL &&
	    gz_compress(body, len, GZIP_LEVEL, &gz, &gzlen) == 0) {
		if (gzlen < len)
			n = hot_entry_with_gzip(e, gz, gzlen); /* takes gz */
		else
			free(gz); /* incompressible: served as it is */
	}
	return n != NULL ? n : hot_entry_ref(e);
}

/* Memory and file, under the store lock, when gen is still current.  The
 * file write comes first when it matters: a client woken by done must find
 * the entry even when memory is too small to hold it. */
static void run_store(struct keeper *k, struct job *j)
{
	struct hot_entry *n = compressed(j->e);
	struct cache_entry row = { 0 };
	size_t len, gzlen;
	const void *body = hot_entry_body(n, &len), *gz = hot_entry_gzip(n, &gzlen);
	int fam = hot_entry_family(n);

	pthread_mutex_lock(&k->store_lock);
	if (hot_gen(k->hot, fam) == j->gen) {
		hot_put(k->hot, n, j->gen);
		if (k->cache != NULL) {
			row.status = hot_entry_status(n);
			row.headers = (char *)hot_entry_headers_text(n, &row.headers_len);
			row.gzip = gz != NULL;
			row.body = (void *)(gz != NULL ? gz : body);
			row.body_len = gz != NULL ? gzlen : len;
			row.identity_len = len;
			row.stored_at = hot_entry_stored_at(n);
			row.expires_at = hot_entry_expires_at(n);
			if (cache_put(k->cache, hot_entry_key(n), family_name(k, fam),
				      hot_entry_path(n), &row) < 0) {
				atomic_fetch_add(&k->write_errors, 1);
				keeper_warn("cannot store %s: %s", family_name(k, fam),
					    cache_errmsg(k->cache));
			} else {
				k->file_bytes += (int64_t)(strlen(hot_entry_key(n)) +
							   row.headers_len + row.body_len);
			}
		}
	}
	pthread_mutex_unlock(&k->store_lock);
	if (j->done != NULL)
		j->done(j->arg, n);
	hot_entry_unref(&n);
}

static void run_refresh(struct keeper *k, struct job *j)
{
	struct hot_entry *e = j->e;
	size_t hlen;
	const char *h = hot_entry_headers_text(e, &hlen);

	pthread_mutex_lock(&k->store_lock);
	if (hot_gen(k->hot, hot_entry_family(e)) == j->gen) {
		hot_put(k->hot, e, j->gen);
		if (k->cache != NULL &&
		    cache_refresh(k->cache, hot_entry_key(e), h, hlen, hot_entry_stored_at(e),
				  hot_entry_expires_at(e)) < 0) {
			atomic_fetch_add(&k->write_errors, 1);
			keeper_warn("cannot refresh %s: %s", family_name(k, hot_entry_family(e)),
				    cache_errmsg(k->cache));
		}
	}
	pthread_mutex_unlock(&k->store_lock);
	if (j->done != NULL)
		j->done(j->arg, e);
}

/* ---- invalidation and purges (callers' threads) ---- */

void keeper_invalidate(struct keeper *k, int family)
{
	pthread_mutex_lock(&k->store_lock);
	hot_invalidate(k->hot, family);
	if (k->cache != NULL && cache_invalidate_family(k->cache, family_name(k, family)) < 0)
		keeper_warn("cannot invalidate %s: %s", family_name(k, family),
			    cache_errmsg(k->cache));
	pthread_mutex_unlock(&k->store_lock);
}

long keeper_purge(struct keeper *k, enum cache_purge kind, const char *what)
{
	int family = -1, n = 0;

	if (kind == CACHE_PURGE_FAMILY) {
		for (int i = 0; i < policy_family_count(k->policy); i++)
			if (strcmp(family_name(k, i), what) == 0)
				family = i;
	}
	pthread_mutex_lock(&k->store_lock);
	/* Memory refills from the file, so dropping more than the purge names
	 * costs one read each; dropping less would serve what was purged. */
	hot_invalidate(k->hot, family);
	if (k->cache != NULL && (n = cache_purge(k->cache, kind, what, NULL, NULL)) < 0)
		keeper_warn("purge failed: %s", cache_errmsg(k->cache));
	pthread_mutex_unlock(&k->store_lock);
	if (n > 0)
		atomic_fetch_add(&k->purged, (unsigned long long)n);
	return n;
}

/* ---- the periodic work (keeper thread) ---- */

static void drop_key(void *arg, const char *key)
{
	hot_drop(arg, key);
}

static void maintain(struct keeper *k, int64_t now)
{
	char **keys = NULL;
	int n = hot_used_keys(k->hot, &keys), rc;
	int64_t entries = 0, bytes = 0;

	if (n > 0 && cache_touch(k->cache, (const char *const *)keys, (size_t)n, now) < 0)
		keeper_warn("cannot record use: %s", cache_errmsg(k->cache));
	for (int i = 0; i < n; i++)
		free(keys[i]);
	free(keys);
	pthread_mutex_lock(&k->store_lock);
	rc = cache_prune(k->cache, now - (int64_t)k->cfg->stale_if_error, drop_key, k->hot);
	if (rc > 0)
		atomic_fetch_add(&k->pruned, (unsigned long long)rc);
	rc = cache_evict(k->cache, (int64_t)k->cfg->max_size, drop_key, k->hot);
	if (rc > 0)
		atomic_fetch_add(&k->evicted, (unsigned long long)rc);
	pthread_mutex_unlock(&k->store_lock);
	if (rc < 0)
		keeper_warn("eviction failed: %s", cache_errmsg(k->cache));
	if (cache_vacuum(k->cache) < 0)
		keeper_warn("vacuum failed: %s", cache_errmsg(k->cache));
	if (cache_usage(k->cache, &entries, &bytes) == 0)
		k->file_bytes = bytes;
}

static void tick(struct keeper *k, int64_t now)
{
	int changed;

	if (k->cache == NULL)
		return;
	/* Another process (kaleidod --purge) wrote the file: what memory holds
	 * may be gone there. */
	if ((changed = cache_changed_elsewhere(k->cache)) == 1) {
		pthread_mutex_lock(&k->store_lock);
		hot_invalidate(k->hot, -1);
		pthread_mutex_unlock(&k->store_lock);
		log_info("cache: %s was changed by another process; reloading entries from it",
			 cache_path(k->cache));
	}
	if (now >= k->next_maint || k->file_bytes > (int64_t)k->cfg->max_size) {
		maintain(k, now);
		k->next_maint = now + k->cfg->maintenance_interval;
	}
}

static void *keeper_main(void *arg)
{
	struct keeper *k = arg;
	int64_t last_tick = 0;

	for (;;) {
		struct job *j;
		int64_t now;

		pthread_mutex_lock(&k->qlock);
		while (k->head == NULL && !k->stopping) {
			struct timespec ts;

			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_sec += TICK_SECONDS;
			if (pthread_cond_timedwait(&k->qcond, &k->qlock, &ts) == ETIMEDOUT)
				break;
		}
		j = k->head;
		if (j != NULL && (k->head = j->next) == NULL)
			k->tail = NULL;
		if (j == NULL && k->stopping) {
			pthread_mutex_unlock(&k->qlock);
			break;
		}
		pthread_mutex_unlock(&k->qlock);
		if (j != NULL) {
			if (j->kind == JOB_STORE)
				run_store(k, j);
			else
				run_refresh(k, j);
			hot_entry_unref(&j->e);
			free(j);
		}
		now = now_wall();
		if (now != last_tick || k->file_bytes > (int64_t)k->cfg->max_size) {
			last_tick = now;
			tick(k, now);
		}
	}
	return NULL;
}

struct keeper *keeper_new(const struct config *cfg, struct cache *cache, struct hot *hot,
			  struct policy *policy, char *err, size_t errlen)
{
	struct keeper *k = calloc(1, sizeof(*k));

	if (k == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	k->cfg = cfg;
	k->cache = cache;
	k->hot = hot;
	k->policy = policy;
	pthread_mutex_init(&k->store_lock, NULL);
	pthread_mutex_init(&k->qlock, NULL);
	pthread_cond_init(&k->qcond, NULL);
	/* The first pass runs at once: a file may come in over its limit or
	 * full of entries past the stale limit. */
	k->next_maint = 0;
	if (pthread_create(&k->thread, NULL, keeper_main, k) != 0) {
		snprintf(err, errlen, "cannot start the cache thread");
		keeper_free(&k);
		return NULL;
	}
	k->started = 1;
	return k;
}

void keeper_free(struct keeper **kp)
{
	struct keeper *k = *kp;

	if (k == NULL)
		return;
	if (k->started) {
		pthread_mutex_lock(&k->qlock);
		k->stopping = 1;
		pthread_cond_signal(&k->qcond);
		pthread_mutex_unlock(&k->qlock);
		pthread_join(k->thread, NULL);
	}
	pthread_mutex_destroy(&k->store_lock);
	pthread_mutex_destroy(&k->qlock);
	pthread_cond_destroy(&k->qcond);
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
