/*
 * hot: the in-memory entries.  One mutex guards the table, the LRU list and
 * the generations; it is held for a hash lookup or a pointer swap, never
 * while building anything.  It stores; answers are built from entries by
 * deliver.c.
 *
 * Bodies live in reference-counted blobs: an entry holds its blobs, and so
 * does every response built from them (hot_entry_body_ref()), so a body
 * outlives an entry that was replaced while a slow client was still
 * reading it.
 */
#include "hot.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

#include "check.h"
#include "hdr.h"
#include "policy.h"

#define MIN_BUCKETS 64

struct blob {
	atomic_int refs;
	size_t len;
	void *data;
};

struct hot_entry {
	unsigned magic;
#define HOT_ENTRY_MAGIC 0x9d3e61a7u
	atomic_int refs;
	char *key, *path;
	int family;
	long status;
	char *headers_text;
	size_t headers_len;
	struct hdr *headers;
	const char *vary; /* its Vary, when it names more than Accept-Encoding */
	unsigned age0;    /* the API's Age when it was stored */
	struct blob *body, *gz;
	int64_t stored_at, expires_at;
	size_t size;

	/* Table links, under the table's lock. */
	struct hot_entry *hnext;
	TAILQ_ENTRY(hot_entry) lru; /* head: most recently used */
	/* Written under the lock, read without it: in_table by the serve
	 * threads' own caches (hitcache.c), used and touched by every hit. */
	atomic_int in_table;
	atomic_int used;    /* since the last hot_used_keys(): the file's LRU */
	atomic_int touched; /* since eviction last passed it: memory's second chance */
};

struct hot {
	pthread_mutex_t lock;
	struct hot_entry **buckets;
	size_t nbuckets, count, bytes, max_bytes;
	TAILQ_HEAD(hot_lru, hot_entry) lru;
	unsigned *gen;
	int64_t *written_at; /* per family: file rows stored until then are void */
	int nfamilies;
};

/* ---- blobs ---- */

static struct blob *blob_new(void *data, size_t len)
{
	struct blob *b = malloc(sizeof(*b));

	if (b == NULL) {
		free(data);
		return NULL;
	}
	atomic_init(&b->refs, 1);
	b->len = len;
	b->data = data;
	return b;
}

static struct blob *blob_ref(struct blob *b)
{
	if (b != NULL)
		atomic_fetch_add(&b->refs, 1);
	return b;
}

static void blob_unref(struct blob *b)
{
	if (b != NULL && atomic_fetch_sub(&b->refs, 1) == 1) {
		free(b->data);
		free(b);
	}
}

/* ---- entries ---- */

static struct hot_entry *entry_alloc(const char *key, const char *path, const char *headers,
				     size_t headers_len)
{
	struct hot_entry *e = calloc(1, sizeof(*e));

	if (e == NULL)
		return NULL;
	INIT_OBJ(e, HOT_ENTRY_MAGIC);
	atomic_init(&e->refs, 1);
	e->key = key != NULL ? strdup(key) : NULL;
	e->path = strdup(path != NULL ? path : "");
	e->headers_text = malloc(headers_len + 1);
	if ((key != NULL && e->key == NULL) || e->path == NULL || e->headers_text == NULL)
		goto fail;
	memcpy(e->headers_text, headers, headers_len);
	e->headers_text[headers_len] = '\0';
	e->headers_len = headers_len;
	if ((e->headers = hdr_parse(headers, headers_len)) == NULL)
		goto fail;
	e->age0 = policy_age(e->headers);
	e->vary = hdr_get(e->headers, "Vary");
	if (e->vary != NULL && !policy_vary_beyond_key(e->vary))
		e->vary = NULL;
	return e;
fail:
	free(e->key);
	free(e->path);
	free(e->headers_text);
	free(e);
	return NULL;
}

static void entry_size(struct hot_entry *e)
{
	e->size = sizeof(*e) + (e->key ? strlen(e->key) : 0) + e->headers_len * 2 +
		  (e->body ? e->body->len : 0) + (e->gz ? e->gz->len : 0);
}

static void entry_free(struct hot_entry *e)
{
	CHECK_OBJ(e, HOT_ENTRY_MAGIC);
	ASSERT(!atomic_load(&e->in_table));
	blob_unref(e->body);
	blob_unref(e->gz);
	hdr_free(&e->headers);
	free(e->headers_text);
	free(e->key);
	free(e->path);
	FINI_OBJ(e);
	free(e);
}

struct hot_entry *hot_entry_new(const struct hot_entry_init *in)
{
	struct hot_entry *e = entry_alloc(in->key, in->path, in->headers, in->headers_len);
	void *body = in->body;

	if (e == NULL)
		goto fail;
	if (body == NULL && (body = calloc(1, 1)) == NULL)
		goto fail;
	e->family = in->family;
	e->status = in->status;
	e->stored_at = in->stored_at;
	e->expires_at = in->expires_at;
	e->body = blob_new(body, in->body_len);
	body = NULL;
	if (in->gz != NULL)
		e->gz = blob_new(in->gz, in->gz_len);
	if (e->body == NULL || (in->gz != NULL && e->gz == NULL)) {
		entry_free(e);
		return NULL;
	}
	entry_size(e);
	return e;
fail:
	if (body != in->body)
		free(body);
	free(in->body);
	free(in->gz);
	if (e != NULL)
		entry_free(e);
	return NULL;
}

/* A copy sharing e's bodies, with other headers. */
static struct hot_entry *entry_derive(const struct hot_entry *e, const char *headers,
				      size_t headers_len)
{
	struct hot_entry *n = entry_alloc(e->key, e->path, headers, headers_len);

	if (n == NULL)
		return NULL;
	n->family = e->family;
	n->status = e->status;
	n->stored_at = e->stored_at;
	n->expires_at = e->expires_at;
	n->body = blob_ref(e->body);
	n->gz = blob_ref(e->gz);
	return n;
}

struct hot_entry *hot_entry_refreshed(const struct hot_entry *e, const char *headers,
				      size_t headers_len, int64_t stored_at, int64_t expires_at)
{
	struct hot_entry *n = entry_derive(e, headers, headers_len);

	if (n == NULL)
		return NULL;
	n->stored_at = stored_at;
	n->expires_at = expires_at;
	entry_size(n);
	return n;
}

struct hot_entry *hot_entry_with_gzip(const struct hot_entry *e, void *gz, size_t gz_len)
{
	struct hot_entry *n = entry_derive(e, e->headers_text, e->headers_len);

	if (n == NULL) {
		free(gz);
		return NULL;
	}
	blob_unref(n->gz);
	if ((n->gz = blob_new(gz, gz_len)) == NULL) {
		entry_free(n);
		return NULL;
	}
	entry_size(n);
	return n;
}

struct hot_entry *hot_entry_ref(struct hot_entry *e)
{
	if (e != NULL) {
		CHECK_OBJ(e, HOT_ENTRY_MAGIC);
		ASSERT(atomic_fetch_add(&e->refs, 1) > 0);
	}
	return e;
}

void hot_entry_unref(struct hot_entry **e)
{
	int was;

	if (e == NULL || *e == NULL)
		return;
	CHECK_OBJ(*e, HOT_ENTRY_MAGIC);
	was = atomic_fetch_sub(&(*e)->refs, 1);
	ASSERT(was > 0);
	if (was == 1)
		entry_free(*e);
	*e = NULL;
}

const char *hot_entry_key(const struct hot_entry *e)
{
	CHECK_OBJ(e, HOT_ENTRY_MAGIC);
	return e->key;
}

const char *hot_entry_path(const struct hot_entry *e)
{
	return e->path;
}

int hot_entry_family(const struct hot_entry *e)
{
	return e->family;
}

long hot_entry_status(const struct hot_entry *e)
{
	CHECK_OBJ(e, HOT_ENTRY_MAGIC);
	return e->status;
}

int64_t hot_entry_stored_at(const struct hot_entry *e)
{
	return e->stored_at;
}

int64_t hot_entry_expires_at(const struct hot_entry *e)
{
	return e->expires_at;
}

unsigned hot_entry_upstream_age(const struct hot_entry *e)
{
	return e->age0;
}

const struct hdr *hot_entry_headers(const struct hot_entry *e)
{
	return e->headers;
}

const char *hot_entry_headers_text(const struct hot_entry *e, size_t *len)
{
	CHECK_OBJ(e, HOT_ENTRY_MAGIC);
	*len = e->headers_len;
	return e->headers_text;
}

const void *hot_entry_body(const struct hot_entry *e, size_t *len)
{
	*len = e->body->len;
	return e->body->data;
}

const void *hot_entry_gzip(const struct hot_entry *e, size_t *len)
{
	*len = e->gz != NULL ? e->gz->len : 0;
	return e->gz != NULL ? e->gz->data : NULL;
}

size_t hot_entry_size(const struct hot_entry *e)
{
	return e->size;
}

const char *hot_entry_vary(const struct hot_entry *e)
{
	return e->vary;
}

int hot_entry_current(struct hot_entry *e)
{
	CHECK_OBJ(e, HOT_ENTRY_MAGIC);
	return atomic_load_explicit(&e->in_table, memory_order_acquire);
}

void hot_entry_mark_used(struct hot_entry *e)
{
	/* Read first: a store on every hit would bounce the line between
	 * threads; a flag already set costs a shared read. */
	if (!atomic_load_explicit(&e->used, memory_order_relaxed))
		atomic_store_explicit(&e->used, 1, memory_order_relaxed);
	if (!atomic_load_explicit(&e->touched, memory_order_relaxed))
		atomic_store_explicit(&e->touched, 1, memory_order_relaxed);
}

const void *hot_entry_body_ref(struct hot_entry *e, int gzip, size_t *len, void **ref)
{
	struct blob *b = gzip && e->gz != NULL ? e->gz : e->body;

	CHECK_OBJ(e, HOT_ENTRY_MAGIC);
	*ref = blob_ref(b);
	*len = b->len;
	return b->data;
}

void hot_body_release(void *ref)
{
	blob_unref(ref);
}

/* ---- the table ---- */

uint64_t hot_key_hash(const char *key)
{
	uint64_t h = 1469598103934665603ULL; /* FNV-1a */

	for (; *key; key++)
		h = (h ^ (unsigned char)*key) * 1099511628211ULL;
	return h;
}

struct hot *hot_new(size_t max_bytes, int nfamilies)
{
	struct hot *h = calloc(1, sizeof(*h));

	if (h == NULL)
		return NULL;
	pthread_mutex_init(&h->lock, NULL);
	TAILQ_INIT(&h->lru);
	h->max_bytes = max_bytes;
	h->nfamilies = nfamilies;
	h->nbuckets = MIN_BUCKETS;
	h->buckets = calloc(h->nbuckets, sizeof(*h->buckets));
	h->gen = calloc((size_t)(nfamilies > 0 ? nfamilies : 1), sizeof(*h->gen));
	h->written_at = calloc((size_t)(nfamilies > 0 ? nfamilies : 1), sizeof(*h->written_at));
	if (h->buckets == NULL || h->gen == NULL || h->written_at == NULL) {
		hot_free(&h);
		return NULL;
	}
	return h;
}

/* Moves e, in the table, to the head of the LRU list. */
static void lru_to_head(struct hot *h, struct hot_entry *e)
{
	if (TAILQ_FIRST(&h->lru) != e) {
		TAILQ_REMOVE(&h->lru, e, lru);
		TAILQ_INSERT_HEAD(&h->lru, e, lru);
	}
}

static struct hot_entry **slot(struct hot *h, const char *key)
{
	struct hot_entry **p = &h->buckets[(size_t)hot_key_hash(key) & (h->nbuckets - 1)];

	while (*p != NULL && strcmp((*p)->key, key) != 0)
		p = &(*p)->hnext;
	return p;
}

/* Unlinks e (found at *p) from the table; the caller unrefs it unlocked. */
static struct hot_entry *take(struct hot *h, struct hot_entry **p)
{
	struct hot_entry *e = *p;

	*p = e->hnext;
	e->hnext = NULL;
	TAILQ_REMOVE(&h->lru, e, lru);
	atomic_store_explicit(&e->in_table, 0, memory_order_release);
	h->count--;
	h->bytes -= e->size;
	return e;
}

/* Entries that left the table under the lock, released after it. */
struct graveyard {
	struct hot_entry **list;
	size_t n, cap;
};

static void bury(struct graveyard *g, struct hot_entry *e)
{
	if (g->n == g->cap) {
		size_t ncap = g->cap ? g->cap * 2 : 16;
		struct hot_entry **nl = realloc(g->list, ncap * sizeof(*nl));

		if (nl == NULL) {
			/* No room to defer: unref now; the lock is only held
			 * for our own pointers, and the free takes none. */
			hot_entry_unref(&e);
			return;
		}
		g->list = nl;
		g->cap = ncap;
	}
	g->list[g->n++] = e;
}

static void graveyard_empty(struct graveyard *g)
{
	for (size_t i = 0; i < g->n; i++)
		hot_entry_unref(&g->list[i]);
	free(g->list);
}

static void grow(struct hot *h)
{
	size_t n = h->nbuckets * 2;
	struct hot_entry **nb = calloc(n, sizeof(*nb));

	if (nb == NULL)
		return; /* longer chains, still correct */
	for (size_t i = 0; i < h->nbuckets; i++) {
		struct hot_entry *e = h->buckets[i], *next;

		for (; e != NULL; e = next) {
			size_t b = (size_t)hot_key_hash(e->key) & (n - 1);

			next = e->hnext;
			e->hnext = nb[b];
			nb[b] = e;
		}
	}
	free(h->buckets);
	h->buckets = nb;
	h->nbuckets = n;
}

void hot_free(struct hot **hp)
{
	struct hot *h = *hp;

	if (h == NULL)
		return;
	while (!TAILQ_EMPTY(&h->lru)) {
		struct hot_entry *e = take(h, slot(h, TAILQ_FIRST(&h->lru)->key));

		hot_entry_unref(&e);
	}
	free(h->buckets);
	free(h->gen);
	free(h->written_at);
	pthread_mutex_destroy(&h->lock);
	free(h);
	*hp = NULL;
}

struct hot_entry *hot_get(struct hot *h, const char *key)
{
	struct hot_entry *e;

	pthread_mutex_lock(&h->lock);
	if ((e = *slot(h, key)) != NULL) {
		lru_to_head(h, e);
		atomic_store_explicit(&e->used, 1, memory_order_relaxed);
		hot_entry_ref(e);
	}
	pthread_mutex_unlock(&h->lock);
	return e;
}

/*
 * Evicts least recently used entries until `need` more bytes fit.  Hits
 * served from a thread's own cache never move an entry in the LRU list, so
 * they set `touched` instead: such an entry gets a second chance at the
 * head (the CLOCK algorithm), once per pass over the list.
 */
static void make_room(struct hot *h, size_t need, struct graveyard *g)
{
	size_t chances = h->count;

	struct hot_entry *v;

	while (h->bytes + need > h->max_bytes && (v = TAILQ_LAST(&h->lru, hot_lru)) != NULL) {
		if (chances > 0 && atomic_exchange_explicit(&v->touched, 0, memory_order_relaxed)) {
			chances--;
			lru_to_head(h, v);
			continue;
		}
		bury(g, take(h, slot(h, v->key)));
	}
}

int hot_put(struct hot *h, struct hot_entry *e, unsigned gen, enum hot_put_mode mode)
{
	struct graveyard g = { 0 };
	struct hot_entry **p;
	int kept = 0;

	if (e->key == NULL)
		return 0;
	pthread_mutex_lock(&h->lock);
	if (atomic_load(&e->in_table) || e->family < 0 || e->family >= h->nfamilies ||
	    h->gen[e->family] != gen)
		goto out;
	p = slot(h, e->key);
	if (*p != NULL && mode == HOT_IF_ABSENT)
		goto out;
	if (*p != NULL)
		bury(&g, take(h, p));
	/* One entry may not push out more than half of everything else; but
	 * the older version it replaces must not stay either. */
	if (e->size > h->max_bytes / 2)
		goto out;
	make_room(h, e->size, &g);
	if (h->count >= h->nbuckets)
		grow(h);
	p = slot(h, e->key);
	e->hnext = NULL;
	*p = hot_entry_ref(e);
	atomic_store_explicit(&e->in_table, 1, memory_order_release);
	atomic_store_explicit(&e->used, 1, memory_order_relaxed);
	TAILQ_INSERT_HEAD(&h->lru, e, lru);
	h->count++;
	h->bytes += e->size;
	kept = 1;
out:
	pthread_mutex_unlock(&h->lock);
	graveyard_empty(&g);
	return kept;
}

void hot_drop(struct hot *h, const char *key)
{
	struct hot_entry *e = NULL, **p;

	pthread_mutex_lock(&h->lock);
	if (*(p = slot(h, key)) != NULL)
		e = take(h, p);
	pthread_mutex_unlock(&h->lock);
	hot_entry_unref(&e);
}

int64_t hot_invalid_before(struct hot *h, int family)
{
	int64_t t;

	if (family < 0 || family >= h->nfamilies)
		return 0;
	pthread_mutex_lock(&h->lock);
	t = h->written_at[family];
	pthread_mutex_unlock(&h->lock);
	return t;
}

unsigned hot_gen(struct hot *h, int family)
{
	unsigned g;

	if (family < 0 || family >= h->nfamilies)
		return 0;
	pthread_mutex_lock(&h->lock);
	g = h->gen[family];
	pthread_mutex_unlock(&h->lock);
	return g;
}

void hot_invalidate(struct hot *h, int family, int64_t written_at)
{
	struct graveyard g = { 0 };

	pthread_mutex_lock(&h->lock);
	for (int i = 0; i < h->nfamilies; i++) {
		if (family >= 0 && i != family)
			continue;
		h->gen[i]++;
		if (written_at > h->written_at[i])
			h->written_at[i] = written_at;
	}
	for (struct hot_entry *e = TAILQ_FIRST(&h->lru), *next; e != NULL; e = next) {
		next = TAILQ_NEXT(e, lru);
		if (family < 0 || e->family == family)
			bury(&g, take(h, slot(h, e->key)));
	}
	pthread_mutex_unlock(&h->lock);
	graveyard_empty(&g);
}

int hot_used_keys(struct hot *h, char ***keys)
{
	char **out = NULL;
	int n = 0, cap = 0, ret;
	struct hot_entry *e;

	pthread_mutex_lock(&h->lock);
	TAILQ_FOREACH(e, &h->lru, lru)
	{
		if (!atomic_load_explicit(&e->used, memory_order_relaxed))
			continue;
		if (n == cap) {
			int ncap = cap ? cap * 2 : 32;
			char **no = realloc(out, (size_t)ncap * sizeof(*no));

			if (no == NULL)
				goto nomem;
			out = no;
			cap = ncap;
		}
		if ((out[n] = strdup(e->key)) == NULL)
			goto nomem;
		n++;
		atomic_store_explicit(&e->used, 0, memory_order_relaxed);
	}
	pthread_mutex_unlock(&h->lock);
	*keys = out;
	return n;
nomem:
	ret = -1;
	pthread_mutex_unlock(&h->lock);
	for (int i = 0; i < n; i++)
		free(out[i]);
	free(out);
	*keys = NULL;
	return ret;
}

void hot_usage(struct hot *h, int64_t *entries, int64_t *bytes)
{
	pthread_mutex_lock(&h->lock);
	*entries = (int64_t)h->count;
	*bytes = (int64_t)h->bytes;
	pthread_mutex_unlock(&h->lock);
}
