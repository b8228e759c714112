/*
 * cluster: several kaleidod instances for one workspace, kept coherent
 * through the Redis named by [cluster] redis.
 *
 * Every invalidation and purge made here is published (a generation bumped
 * and announced, coherence.h), and what the others publish is applied here:
 * the family is dropped from memory and from the file, or the prefix purged.
 * After a gap the generations tell what was missed.  One thread talks to
 * Redis (kd-cluster): nothing that serves a client ever waits for Redis, so
 * with Redis down or slow each instance goes on from its own cache, stale
 * at most by the TTLs, and its own invalidations wait to be published.
 *
 * A gateway's accounts also share their rate limits: five times a second
 * each instance announces how many requests each account made through it
 * ("use ORIGIN NAME=N ..."), and the others spend as many from their own
 * buckets; failed logins by address likewise ("fail ORIGIN IP=N ...").
 * With Redis away each instance limits alone.
 */
#ifndef KD_CLUSTER_H
#define KD_CLUSTER_H

#include "cache.h"

struct cluster;
struct config;
struct gateway;
struct keeper;
struct objtab;
struct policy;

/*
 * Starts the cluster thread and waits (at most about two seconds) for the
 * first contact, so that an instance whose Redis is up has caught up
 * before it serves.  An unreachable Redis is not an error: the thread keeps
 * trying.  NULL with a message in err on a setup error (ENOMEM, threads).
 */
struct cluster *cluster_new(const struct config *cfg, struct policy *policy, struct objtab *tab,
			    struct keeper *keeper, struct gateway *gw, char *err, size_t errlen);
/* Publishes what is pending if Redis answers at once, then stops. */
void cluster_free(struct cluster **c);

/* This instance invalidated family (-1: every family): tell the others.
 * Never blocks; c may be NULL (no cluster). */
void cluster_invalidated(struct cluster *c, int family);
/* This instance purged: tell the others.  Never blocks; c may be NULL. */
void cluster_purged(struct cluster *c, enum cache_purge kind, const char *what);

/* For the shared cache (l2.h), which talks to the same Redis: where it
 * is, the keys' namespace, and the Redis key of family's generation
 * (family -1: the prefix purges'). */
struct rlink_target;
const struct rlink_target *cluster_target(struct cluster *c);
const char *cluster_key_prefix(struct cluster *c);
const char *cluster_gen_key(struct cluster *c, int family);
/* 1 when Redis is reached and nothing this instance did to family (nor a
 * prefix purge) still waits to be published: only then does Redis's
 * generation for family say what this instance knows.  Lock-light; from
 * any thread. */
int cluster_settled(struct cluster *c, int family);

/* The key namespace when [cluster] prefix is not set: "kaleidod:" and 16
 * hex digits of a SHA-256 of the API's URL and the client id, the same on
 * every instance of one workspace.  Allocated; NULL on ENOMEM. */
char *cluster_default_prefix(const struct config *cfg);

enum cluster_state {
	CLUSTER_OFF,        /* no [cluster] redis */
	CLUSTER_CONNECTING, /* no contact yet since the start */
	CLUSTER_UP,
	CLUSTER_DOWN, /* lost, or refused: serving alone, retrying */
};
const char *cluster_state_name(enum cluster_state s);

struct cluster_info {
	enum cluster_state state;
	double since;       /* wall-clock time of the last change of state */
	const char *redis;  /* as configured (never a password) */
	const char *prefix; /* the keys' namespace */
	unsigned long long published, received, applied, catchups, connects, errors;
	unsigned long long shared_out, shared_in; /* account requests told, and heard of */
	unsigned long long failures_in;           /* failed logins heard of */
	unsigned pending;                         /* invalidations waiting for Redis */
	char last_error[160];                     /* why the last attempt failed; "" */
};
/* A snapshot; c may be NULL (state CLUSTER_OFF, the rest zero). */
void cluster_info(struct cluster *c, struct cluster_info *out);

#endif
