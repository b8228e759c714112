/*
 * coherence: what the cluster's messages and generations mean, with no I/O.
 *
 * Instances of kaleidod that share a Redis keep their caches coherent with
 * two things there: a generation counter per family (and one for prefix
 * purges), bumped by every invalidation and purge, and a channel on which
 * each bump is announced.  An instance applies what others announce; one
 * that was cut off compares the generations when it is back and drops every
 * family whose generation moved, so a lost message costs a refetch, never
 * stale data.  A generation is a count and a random nonce ("12:9f3a01c2"),
 * compared whole: a Redis that hands out a count again (restored from an
 * older snapshot, a replica promoted while behind, an evicted key) still
 * gives a different generation.  An epoch key tells a Redis restarted
 * empty (all generations gone) from one that kept them: a new epoch drops
 * everything.
 *
 * This module holds the generations an instance knows and decides what a
 * message or a catch-up asks of it; daemon/cluster.c does the talking.
 * One thread (the cluster thread) owns a struct coh; no locks inside.
 */
#ifndef KD_COHERENCE_H
#define KD_COHERENCE_H

#include <stddef.h>
#include <stdint.h>

#define COH_ORIGIN_LEN 16    /* hex characters naming an instance */
#define COH_GEN_MAX 40       /* bytes of a generation, "COUNT:NONCE" */
#define COH_PURGES "~purges" /* the generation of prefix purges; no family's name */

struct coh;

/* nfamilies names (borrowed for the object's life; at most 32); origin
 * names this instance in what it publishes.  NULL on ENOMEM. */
struct coh *coh_new(int nfamilies, const char *const *names, const char *origin);
void coh_free(struct coh **c);

/* Families whose generation is index i (0 .. nfamilies-1), then the purges'
 * (index nfamilies): their names, for the keys. */
int coh_count(const struct coh *c);
const char *coh_name(const struct coh *c, int i);

enum coh_verb {
	COH_NONE,       /* nothing to do: our own, or not ours to read */
	COH_INVALIDATE, /* drop family */
	COH_PURGE,      /* purge the prefix what */
};
struct coh_action {
	enum coh_verb verb;
	int family;       /* COH_INVALIDATE */
	const char *what; /* COH_PURGE: points into the message */
};

/*
 * A message from the channel: "inv GEN ORIGIN FAMILY" or "purge GEN ORIGIN
 * PREFIX".  Another instance's is an action; ours only moves what we know.
 * Returns 0, or -1 for a message that is not well formed (then COH_NONE).
 */
int coh_message(struct coh *c, const char *msg, size_t len, struct coh_action *out);

/* This instance bumped generation i to gen (the publishing script's
 * answer).  Only its count is kept, for coh_rewound(): what we know of the
 * generation still moves only with the channel. */
void coh_bumped(struct coh *c, int i, const char *gen);

/*
 * Before coh_catchup(), with the same arguments: the families whose count
 * went back under the same epoch, below one seen or bumped here (all of
 * them if the prefix purges' did):
 * a Redis restored from a snapshot, or a replica promoted while behind.
 * What such a Redis holds under those generations may predate writes this
 * instance heard of, so the caller bumps them again.  0 when none did.
 */
uint32_t coh_rewound(const struct coh *c, const char *epoch, const char *const *gens);
/* A generation's count ("12:9f3a01c2": 12), or 0 (NULL, or not one). */
unsigned long long coh_gen_count(const char *gen);

/*
 * After a (re)connection: the epoch and every generation as Redis holds them
 * now (gens[i] the text of index i's, NULL when absent: 0).  Sets in *drop
 * the families to invalidate and *purge_all when prefix purges were missed
 * (everything must go), then adopts them all.  The first catch-up of a
 * process, or a new epoch, drops every family: what the cache file holds
 * may be older than writes made elsewhere meanwhile.  Returns the number of
 * families dropped.
 */
int coh_catchup(struct coh *c, const char *epoch, const char *const *gens, uint32_t *drop,
		int *purge_all);

#endif
