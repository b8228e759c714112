/*
 * traffic: the requests the front answered, counted by family, method,
 * status code and cache outcome, and how long each took.
 *
 * Lock-free on the request path: a series is found (or claimed) in a fixed
 * table by compare-and-swap, then counted on the thread's stripe.  The
 * table holds TRAFFIC_SERIES combinations; a request past that (it takes
 * hostile variety: the labels are all bounded) is counted as overflow.
 * Families, methods and outcomes are small numbers here; their names are
 * the caller's.
 */
#ifndef KD_TRAFFIC_H
#define KD_TRAFFIC_H

#include "histo.h"

#define TRAFFIC_SERIES 2048
#define TRAFFIC_FAMILIES_MAX 62 /* families 0..61, and -1 for none */
#define TRAFFIC_OUTCOMES_MAX 8

enum traffic_method {
	TRAFFIC_GET = 0,
	TRAFFIC_HEAD,
	TRAFFIC_POST,
	TRAFFIC_PUT,
	TRAFFIC_PATCH,
	TRAFFIC_DELETE,
	TRAFFIC_OPTIONS,
	TRAFFIC_OTHER, /* any other token a client sent: never the token itself */
	TRAFFIC_METHODS
};

struct traffic;

/* nfamilies <= TRAFFIC_FAMILIES_MAX, noutcomes <= TRAFFIC_OUTCOMES_MAX.
 * NULL on ENOMEM or EINVAL. */
struct traffic *traffic_new(int nfamilies, int noutcomes);
void traffic_free(struct traffic **t);

enum traffic_method traffic_method(const char *method);
const char *traffic_method_name(enum traffic_method m);

/* One answered request: family -1 for none; code 100..999 (others count as
 * 0); seconds from its first byte to its last. */
void traffic_count(struct traffic *t, int family, enum traffic_method m, unsigned code, int outcome,
		   double seconds);

/* Every series counted so far, in no particular order. */
typedef void (*traffic_fn)(void *arg, int family, enum traffic_method m, unsigned code, int outcome,
			   unsigned long long n);
void traffic_each(const struct traffic *t, traffic_fn fn, void *arg);
/* Requests that found the table full. */
unsigned long long traffic_overflow(const struct traffic *t);
/* Durations, one histogram series per outcome. */
void traffic_durations(const struct traffic *t, int outcome, struct histo_snapshot *out);

#endif
