/*
 * entry: one stored answer (status, fields, body and maybe a gzip copy).
 *
 * An entry is immutable: a 304, a new gzip copy or a new answer makes a new
 * entry that shares the bodies of the old one.  Entries are counted
 * references; the object table (objtab.h) holds the current one per key,
 * and turning one into an HTTP answer is deliver.c's job.
 */
#ifndef KD_ENTRY_H
#define KD_ENTRY_H

#include <stddef.h>
#include <stdint.h>

struct hdr;
struct entry;

struct entry_init {
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
struct entry *entry_new(const struct entry_init *in);
/* The same bodies with new headers and freshness (a 304).  NULL on ENOMEM. */
struct entry *entry_refreshed(const struct entry *e, const char *headers, size_t headers_len,
			      int64_t stored_at, int64_t expires_at);
/* The same entry with a gzip copy (adopted; freed on failure).  NULL on ENOMEM. */
struct entry *entry_with_gzip(const struct entry *e, void *gz, size_t gz_len);

struct entry *entry_ref(struct entry *e);
void entry_unref(struct entry **e);

const char *entry_key(const struct entry *e);
const char *entry_path(const struct entry *e);
int entry_family(const struct entry *e);
long entry_status(const struct entry *e);
int64_t entry_stored_at(const struct entry *e);
int64_t entry_expires_at(const struct entry *e);
/* The API's Age when e was stored (0 without one). */
unsigned entry_upstream_age(const struct entry *e);
const struct hdr *entry_headers(const struct entry *e);
const char *entry_headers_text(const struct entry *e, size_t *len);
const void *entry_body(const struct entry *e, size_t *len);
const void *entry_gzip(const struct entry *e, size_t *len); /* NULL when none */
size_t entry_size(const struct entry *e);
/* e's Vary when it names a field besides Accept-Encoding, else NULL. */
const char *entry_vary(const struct entry *e);
/* Whether e is (now) the table's entry for its key: 1 or 0.  A lock-free
 * read, so the answer can be a moment old; an entry that left may be put
 * back (the same immutable answer, never one a write voided: generations
 * stop that), so callers ask again at every use. */
int entry_current(struct entry *e);
/* Records a hit that bypassed the table, for both LRU orders. */
void entry_mark_used(struct entry *e);
/* Whether a and b carry the same body (one is derived from the other). */
int entry_same_body(const struct entry *a, const struct entry *b);

/* For the object table alone: its flags on e. */
void entry_set_current(struct entry *e, int yes);
int entry_take_used(struct entry *e);    /* the used flag, cleared */
int entry_take_touched(struct entry *e); /* the touched flag, cleared */

/*
 * e's body (gzip set: its gzip copy, when it has one) as a counted
 * reference that outlives e: *ref goes to entry_body_release() once the
 * bytes are no longer read (a response's free callback).
 */
const void *entry_body_ref(struct entry *e, int gzip, size_t *len, void **ref);
void entry_body_release(void *ref);

#endif
