/*
 * hitcache: direct-mapped slots, one entry each, with the thread's own HIT
 * responses (identity and gzip) rebuilt when Age moves, once a second.
 *
 * An entry that left the table (replaced, invalidated, evicted) is dropped
 * at the next lookup of its slot or by the sweep, so a thread holds a
 * replaced body a second at most beyond the table.
 */
#include "hitcache.h"

#include <microhttpd.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "deliver.h"
#include "entry.h"

#define SLOTS 64                   /* a power of two */
#define HITCACHE_MAGIC 0x48495443u /* "HITC" */

struct slot {
	struct entry *e; /* a reference, or NULL */
	struct MHD_Response *resp[2];
	int64_t resp_at[2];
};

struct hitcache {
	unsigned magic;
	struct slot s[SLOTS];
};

struct hitcache *hitcache_new(void)
{
	struct hitcache *hc = calloc(1, sizeof(*hc));

	if (hc != NULL)
		INIT_OBJ(hc, HITCACHE_MAGIC);
	return hc;
}

static void slot_clear(struct slot *sl)
{
	for (int i = 0; i < 2; i++) {
		if (sl->resp[i] != NULL)
			MHD_destroy_response(sl->resp[i]);
		sl->resp[i] = NULL;
	}
	entry_unref(&sl->e);
}

void hitcache_free(struct hitcache **hcp)
{
	struct hitcache *hc = *hcp;

	if (hc == NULL)
		return;
	CHECK_OBJ(hc, HITCACHE_MAGIC);
	for (int i = 0; i < SLOTS; i++)
		slot_clear(&hc->s[i]);
	FINI_OBJ(hc);
	free(hc);
	*hcp = NULL;
}

static struct slot *slot_of(struct hitcache *hc, uint64_t hash)
{
	CHECK_OBJ(hc, HITCACHE_MAGIC);
	/* The table's buckets use the low bits; these use others, so keys
	 * sharing a bucket need not share a slot. */
	return &hc->s[(hash >> 32) & (SLOTS - 1)];
}

struct entry *hitcache_get(struct hitcache *hc, const char *key, uint64_t hash)
{
	struct slot *sl = slot_of(hc, hash);

	if (sl->e == NULL)
		return NULL;
	if (!entry_current(sl->e)) {
		slot_clear(sl);
		return NULL;
	}
	if (strcmp(entry_key(sl->e), key) != 0)
		return NULL;
	entry_mark_used(sl->e);
	return sl->e;
}

void hitcache_keep(struct hitcache *hc, struct entry *e, uint64_t hash)
{
	struct slot *sl = slot_of(hc, hash);

	if (sl->e == e || entry_key(e) == NULL || !entry_current(e))
		return;
	slot_clear(sl);
	sl->e = entry_ref(e);
}

int hitcache_queue_hit(struct hitcache *hc, struct entry *e, uint64_t hash,
		       struct MHD_Connection *conn, int gzip, int64_t now)
{
	struct slot *sl = slot_of(hc, hash);
	int i = gzip && entry_gzip(e, &(size_t){ 0 }) != NULL ? 1 : 0;

	if (sl->e != e)
		return -1;
	/* Age moves once a second: so does the response. */
	if (sl->resp[i] == NULL || sl->resp_at[i] != now) {
		struct MHD_Response *n = deliver_response(e, i, "HIT", now);

		if (n == NULL)
			return 0;
		if (sl->resp[i] != NULL)
			MHD_destroy_response(sl->resp[i]);
		sl->resp[i] = n;
		sl->resp_at[i] = now;
	}
	return MHD_queue_response(conn, (unsigned)entry_status(e), sl->resp[i]) == MHD_YES;
}

void hitcache_sweep(struct hitcache *hc)
{
	for (int i = 0; i < SLOTS; i++)
		if (hc->s[i].e != NULL && !entry_current(hc->s[i].e))
			slot_clear(&hc->s[i]);
}
