/*
 * flight: at most one upstream fetch per cache key at a time.
 *
 * The first miss for a key starts a flight; every later miss for it joins
 * and waits (parked, like a client waiting for the API) instead of asking
 * the API again.  A flight is an upstream transfer nobody streams: its
 * answer goes to a collector (collect.c) alone, then is kept through the
 * keeper and handed to every waiter.  Refreshes kaleidod starts by itself (stale while
 * revalidate, refresh-ahead, warm-up) are flights with no waiters.  An
 * expired entry given at the start makes the fetch conditional; a 304 then
 * refreshes that entry instead of transferring the body again.
 */
#ifndef KD_FLIGHT_H
#define KD_FLIGHT_H

#include "upstream.h"

struct collected;
struct config;
struct hdr;
struct hot;
struct hot_entry;
struct keeper;
struct policy;
struct flights;
struct flight;

struct flights *flights_new(const struct config *cfg, struct upstream *up, struct keeper *keeper,
			    struct hot *hot, struct policy *policy);
/* Every flight must have ended (upstream_shutdown() ends them). */
void flights_free(struct flights **fs);
/* Waits up to seconds for every flight to end, its keeping included:
 * waiters are resumed only then, and libmicrohttpd must not stop with a
 * connection suspended.  1 when none runs. */
int flights_drain(struct flights *fs, double seconds);

struct flight_req {
	const char *key;
	int family;
	const char *target;        /* as the client sent it: path and query */
	const struct hdr *headers; /* end-to-end fields to send; NULL: none */
	struct hot_entry *stale;   /* the expired entry to revalidate, or NULL */
};

/*
 * The flight for rq->key: the running one, or a new one.  *started says
 * which.  A reference (flight_unref); NULL on ENOMEM or when the upstream
 * worker is gone.
 */
struct flight *flight_join(struct flights *fs, const struct flight_req *rq, int *started);
/* Starts a fetch nobody waits for, unless one runs for the key.  1 started,
 * 0 one was running, -1 failed. */
int flight_start(struct flights *fs, const struct flight_req *rq);

/* 0 when the flight has ended; otherwise calls park(arg) under the flight's
 * lock and returns 1: unpark(arg) follows once it ends.  One wait per arg. */
int flight_wait(struct flight *f, void (*park)(void *), void (*unpark)(void *), void *arg);
/* A waiter going away before the end (client gone). */
void flight_leave(struct flight *f, void *arg);
void flight_unref(struct flight **f);
/* The end-to-end fields the flight's fetch was sent with (for Vary). */
const struct hdr *flight_request(const struct flight *f);

enum flight_outcome {
	FLIGHT_ENTRY,  /* an answer (any status), in flight_entry(); maybe kept */
	FLIGHT_ERROR,  /* no answer: flight_error() */
	FLIGHT_DIRECT, /* too large to collect: each waiter fetches on its own */
};
/* After the end. */
enum flight_outcome flight_outcome(struct flight *f);
/* The answer; a 304 shows up as the refreshed entry, with *revalidated set.
 * Borrowed: valid while the caller holds its reference on f. */
struct hot_entry *flight_entry(struct flight *f, int *revalidated);
enum up_error flight_error(struct flight *f, const char **detail);

enum flight_note {
	FLIGHT_TOO_LARGE, /* its answer outgrew max_entry_size lately: fetch directly */
	FLIGHT_COOLDOWN,  /* a fetch of it failed lately: no background refresh */
};
/* What recent flights of key taught. */
int flight_noted(struct flights *fs, const char *key, enum flight_note what);

/*
 * A whole answer (COLLECT_WHOLE) of a transfer the front streamed itself
 * (a client's no-cache): turned into an entry, and kept when it is a
 * storable 200 and gen is still the family's generation.  A reference, or
 * NULL.  On the upstream worker, from the collector's done().
 */
struct hot_entry *flight_keep(struct flights *fs, const char *key, int family, const char *path,
			      unsigned gen, const struct collected *c);

#endif
