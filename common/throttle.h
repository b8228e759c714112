/*
 * throttle: what the API's 429 answers ask of kaleidod.
 *
 * A 429 closes a window on its scope: the request's family, or everything
 * when the request was in no family.  Inside a window nothing of that scope
 * goes to the API (the caller serves a stale copy or passes the 429 on).
 * When the window ends the scope does not open at once: for THROTTLE_RAMP
 * seconds its requests leave at most `rate` a second, so what piled up
 * behind the window does not hit the API in one burst.
 *
 * One mutex inside: the upstream worker notes and checks, the fronts ask
 * how long a window has left.  Time is the caller's monotonic clock in
 * seconds, so the unit tests drive it by hand.
 */
#ifndef KD_THROTTLE_H
#define KD_THROTTLE_H

#include <time.h>

#define THROTTLE_RAMP 10.0       /* s of paced release after a window */
#define THROTTLE_DEFAULT 5.0     /* s of a 429 without a usable Retry-After */
#define THROTTLE_MAX (15 * 60.0) /* s at most, whatever Retry-After says */

struct throttle;

/* nscopes families (0 .. nscopes-1) plus everything; rate: releases a
 * second after a window (at least 1).  NULL on ENOMEM. */
struct throttle *throttle_new(int nscopes, unsigned rate);
void throttle_free(struct throttle **t);

/*
 * Seconds a Retry-After value asks for: delta-seconds or an HTTP-date
 * (RFC 9110 10.2.3) against now_wall, within 1 .. THROTTLE_MAX;
 * THROTTLE_DEFAULT when value is NULL or neither.
 */
double throttle_retry_after(const char *value, time_t now_wall);

/* The API answered 429 to a request of scope (a family, or -1 for one in
 * none): nothing of it goes out until now + secs.  A later end wins. */
void throttle_note(struct throttle *t, int scope, double now, double secs);

enum throttle_verdict {
	THROTTLE_GO,     /* send it (counted against the release pace) */
	THROTTLE_WAIT,   /* the window ended lately: not before *left seconds */
	THROTTLE_REFUSE, /* inside a window: it ends in *left seconds */
};

/* Whether a request of scope may go to the API now (its family's window
 * and the window on everything both apply). */
enum throttle_verdict throttle_check(struct throttle *t, int scope, double now, double *left);

/* Seconds until scope's window ends, 0 when none is in force. */
double throttle_left(struct throttle *t, int scope, double now);

#endif
