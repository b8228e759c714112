/*
 * entry: one stored answer, immutable once made.
 *
 * Bodies live in reference-counted blobs: an entry holds its blobs, and so
 * does every response built from them (entry_body_ref()), so a body
 * outlives an entry that was replaced while a slow client was still
 * reading it.  A 304, a gzip copy or a new answer makes a new entry; the
 * only fields that change after creation are the table's flags below.
 */
#include "entry.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "hdr.h"
#include "policy.h"

struct blob {
	atomic_int refs;
	size_t len;
	void *data;
};

struct entry {
	unsigned magic;
#define ENTRY_MAGIC 0x9d3e61a7u
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

	/* Set by the object table (objtab.c), read without its locks:
	 * current by the serve threads' own caches (hitcache.c); used and
	 * touched by every hit. */
	atomic_int current;
	atomic_int used;    /* since objtab_used_keys() last ran: the file's LRU */
	atomic_int touched; /* since eviction last passed it: memory's second chance */
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

static struct entry *alloc_entry(const char *key, const char *path, const char *headers,
				 size_t headers_len)
{
	struct entry *e = calloc(1, sizeof(*e));

	if (e == NULL)
		return NULL;
	INIT_OBJ(e, ENTRY_MAGIC);
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

static void compute_size(struct entry *e)
{
	e->size = sizeof(*e) + (e->key ? strlen(e->key) : 0) + e->headers_len * 2 +
		  (e->body ? e->body->len : 0) + (e->gz ? e->gz->len : 0);
}

static void destroy(struct entry *e)
{
	CHECK_OBJ(e, ENTRY_MAGIC);
	ASSERT(!atomic_load(&e->current));
	blob_unref(e->body);
	blob_unref(e->gz);
	hdr_free(&e->headers);
	free(e->headers_text);
	free(e->key);
	free(e->path);
	FINI_OBJ(e);
	free(e);
}

struct entry *entry_new(const struct entry_init *in)
{
	struct entry *e = alloc_entry(in->key, in->path, in->headers, in->headers_len);
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
		destroy(e);
		return NULL;
	}
	compute_size(e);
	return e;
fail:
	if (body != in->body)
		free(body);
	free(in->body);
	free(in->gz);
	if (e != NULL)
		destroy(e);
	return NULL;
}

/* A copy sharing e's bodies, with other headers. */
static struct entry *derive(const struct entry *e, const char *headers, size_t headers_len)
{
	struct entry *n = alloc_entry(e->key, e->path, headers, headers_len);

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

struct entry *entry_refreshed(const struct entry *e, const char *headers, size_t headers_len,
			      int64_t stored_at, int64_t expires_at)
{
	struct entry *n = derive(e, headers, headers_len);

	if (n == NULL)
		return NULL;
	n->stored_at = stored_at;
	n->expires_at = expires_at;
	compute_size(n);
	return n;
}

struct entry *entry_with_gzip(const struct entry *e, void *gz, size_t gz_len)
{
	struct entry *n = derive(e, e->headers_text, e->headers_len);

	if (n == NULL) {
		free(gz);
		return NULL;
	}
	blob_unref(n->gz);
	if ((n->gz = blob_new(gz, gz_len)) == NULL) {
		destroy(n);
		return NULL;
	}
	compute_size(n);
	return n;
}

struct entry *entry_ref(struct entry *e)
{
	if (e != NULL) {
		CHECK_OBJ(e, ENTRY_MAGIC);
		ASSERT(atomic_fetch_add(&e->refs, 1) > 0);
	}
	return e;
}

void entry_unref(struct entry **e)
{
	int was;

	if (e == NULL || *e == NULL)
		return;
	CHECK_OBJ(*e, ENTRY_MAGIC);
	was = atomic_fetch_sub(&(*e)->refs, 1);
	ASSERT(was > 0);
	if (was == 1)
		destroy(*e);
	*e = NULL;
}

const char *entry_key(const struct entry *e)
{
	CHECK_OBJ(e, ENTRY_MAGIC);
	return e->key;
}

const char *entry_path(const struct entry *e)
{
	return e->path;
}

int entry_family(const struct entry *e)
{
	return e->family;
}

long entry_status(const struct entry *e)
{
	CHECK_OBJ(e, ENTRY_MAGIC);
	return e->status;
}

int64_t entry_stored_at(const struct entry *e)
{
	return e->stored_at;
}

int64_t entry_expires_at(const struct entry *e)
{
	return e->expires_at;
}

unsigned entry_upstream_age(const struct entry *e)
{
	return e->age0;
}

const struct hdr *entry_headers(const struct entry *e)
{
	return e->headers;
}

const char *entry_headers_text(const struct entry *e, size_t *len)
{
	CHECK_OBJ(e, ENTRY_MAGIC);
	*len = e->headers_len;
	return e->headers_text;
}

const void *entry_body(const struct entry *e, size_t *len)
{
	*len = e->body->len;
	return e->body->data;
}

const void *entry_gzip(const struct entry *e, size_t *len)
{
	*len = e->gz != NULL ? e->gz->len : 0;
	return e->gz != NULL ? e->gz->data : NULL;
}

size_t entry_size(const struct entry *e)
{
	return e->size;
}

const char *entry_vary(const struct entry *e)
{
	return e->vary;
}

int entry_current(struct entry *e)
{
	CHECK_OBJ(e, ENTRY_MAGIC);
	return atomic_load_explicit(&e->current, memory_order_acquire);
}

void entry_set_current(struct entry *e, int yes)
{
	CHECK_OBJ(e, ENTRY_MAGIC);
	atomic_store_explicit(&e->current, yes, memory_order_release);
	if (yes)
		atomic_store_explicit(&e->used, 1, memory_order_relaxed);
}

int entry_take_used(struct entry *e)
{
	return atomic_exchange_explicit(&e->used, 0, memory_order_relaxed);
}

int entry_take_touched(struct entry *e)
{
	return atomic_exchange_explicit(&e->touched, 0, memory_order_relaxed);
}

int entry_same_body(const struct entry *a, const struct entry *b)
{
	return a != NULL && b != NULL && a->body == b->body;
}

void entry_mark_used(struct entry *e)
{
	/* Read first: a store on every hit would bounce the line between
	 * threads; a flag already set costs a shared read. */
	if (!atomic_load_explicit(&e->used, memory_order_relaxed))
		atomic_store_explicit(&e->used, 1, memory_order_relaxed);
	if (!atomic_load_explicit(&e->touched, memory_order_relaxed))
		atomic_store_explicit(&e->touched, 1, memory_order_relaxed);
}

const void *entry_body_ref(struct entry *e, int gzip, size_t *len, void **ref)
{
	struct blob *b = gzip && e->gz != NULL ? e->gz : e->body;

	CHECK_OBJ(e, ENTRY_MAGIC);
	*ref = blob_ref(b);
	*len = b->len;
	return b->data;
}

void entry_body_release(void *ref)
{
	blob_unref(ref);
}
