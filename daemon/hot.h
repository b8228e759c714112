/*
 * hot: cache entries in memory.
 *
 * An entry is immutable: a 304, a new gzip copy or a new answer makes a new
 * entry that shares the bodies of the old one.  A lookup is a hash lookup
 * and a reference; turning an entry into an answer is deliver.c's job.  The
 * table is bounded by bytes; the least recently used entries leave first.
 *
 * It also keeps one generation number per family, bumped by every
 * invalidation and purge: an answer fetched under an older generation may
 * be served to the clients that waited for it, but is never kept.
 */
#ifndef KD_HOT_H
#define KD_HOT_H

#include <stddef.h>
#include <stdint.h>

struct hdr;
struct hot;
struct hot_entry;

/* ---- entries ---- */

struct hot_entry_init {
	const char *key; /* NULL for an answer that is never kept */
	int family;
	const char *path;
	long status;
	const char *headers; /* hdr_serialize() text */
	size_t headers_len;
	void *body; /* malloc'd, adopted (freed on failure too); may be NULL when body_len is 0 */
	size_t body_len;
	void *gz; /* malloc'd gzip member, adopted, or NULL */
	size_t gz_len;
	int64_t stored_at, expires_at;
};

/* NULL on ENOMEM (body and gz are freed). */
struct hot_entry *hot_entry_new(const struct hot_entry_init *in);
/* The same bodies with new headers and freshness (a 304).  NULL on ENOMEM. */
struct hot_entry *hot_entry_refreshed(const struct hot_entry *e, const char *headers,
				      size_t headers_len, int64_t stored_at, int64_t expires_at);
/* The same entry with a gzip copy (adopted; freed on failure).  NULL on ENOMEM. */
struct hot_entry *hot_entry_with_gzip(const struct hot_entry *e, void *gz, size_t gz_len);

struct hot_entry *hot_entry_ref(struct hot_entry *e);
void hot_entry_unref(struct hot_entry **e);

const char *hot_entry_key(const struct hot_entry *e);
const char *hot_entry_path(const struct hot_entry *e);
int hot_entry_family(const struct hot_entry *e);
long hot_entry_status(const struct hot_entry *e);
int64_t hot_entry_stored_at(const struct hot_entry *e);
int64_t hot_entry_expires_at(const struct hot_entry *e);
/* The API's Age when e was stored (0 without one). */
unsigned hot_entry_upstream_age(const struct hot_entry *e);
const struct hdr *hot_entry_headers(const struct hot_entry *e);
const char *hot_entry_headers_text(const struct hot_entry *e, size_t *len);
const void *hot_entry_body(const struct hot_entry *e, size_t *len);
const void *hot_entry_gzip(const struct hot_entry *e, size_t *len); /* NULL when none */
size_t hot_entry_size(const struct hot_entry *e);
/* e's Vary when it names a field besides Accept-Encoding, else NULL. */
const char *hot_entry_vary(const struct hot_entry *e);
/* Whether e is (now) the table's entry for its key: 1 or 0.  A lock-free
 * read, so the answer can be a moment old; an entry that left may be put
 * back (the same immutable answer, never one a write voided: generations
 * stop that), so callers ask again at every use. */
int hot_entry_current(struct hot_entry *e);
/* Records a hit that bypassed hot_get(), for both LRU orders. */
void hot_entry_mark_used(struct hot_entry *e);

/*
 * e's body (gzip set: its gzip copy, when it has one) as a counted
 * reference that outlives e: *ref goes to hot_body_release() once the
 * bytes are no longer read (a response's free callback).
 */
const void *hot_entry_body_ref(struct hot_entry *e, int gzip, size_t *len, void **ref);
void hot_body_release(void *ref);

/* ---- the table ---- */

struct hot *hot_new(size_t max_bytes, int nfamilies);
void hot_free(struct hot **h);

/* A reference to key's entry (marked used), or NULL. */
struct hot_entry *hot_get(struct hot *h, const char *key);
enum hot_put_mode {
	HOT_REPLACE,   /* a newer answer: whatever the key held goes */
	HOT_IF_ABSENT, /* a copy read back from the file: never over a newer one */
};
/* Keeps e (a reference is taken) under its key if gen is still its family's
 * generation and it fits (an entry that does not fit still removes an older
 * one it replaces).  1 kept, 0 not. */
int hot_put(struct hot *h, struct hot_entry *e, unsigned gen, enum hot_put_mode mode);
void hot_drop(struct hot *h, const char *key);

unsigned hot_gen(struct hot *h, int family);
/* Bumps the family's generation (all families when family < 0) and drops
 * its entries.  written_at > 0 (a write changed the family): file rows
 * stored at or before it are void from now on, deleted or not. */
void hot_invalidate(struct hot *h, int family, int64_t written_at);
int64_t hot_invalid_before(struct hot *h, int family);

/* Keys of entries used since the last call, for the file's LRU order.
 * *keys is a malloc'd array of malloc'd strings.  Returns the count, -1 ENOMEM. */
int hot_used_keys(struct hot *h, char ***keys);
void hot_usage(struct hot *h, int64_t *entries, int64_t *bytes);

/* The hash the table uses for keys (FNV-1a), for others keyed the same. */
uint64_t hot_key_hash(const char *key);

#endif
