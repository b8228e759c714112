/*
 * loginguard: failed logins per client address, checked before any hash.
 *
 * yescrypt makes each check of a secret cost milliseconds of CPU on
 * purpose, so a guesser must not get one per request: each address has a
 * bucket of LOGINGUARD_BURST failures, refilled at LOGINGUARD_RATE a
 * second; a login from an address whose bucket is empty is refused at
 * once, unhashed, and a correct login from another address is not held
 * up at all.
 *
 * A fixed table (LOGINGUARD_SLOTS addresses; past that the longest-quiet
 * of a few candidates makes room), one mutex; time is the caller's
 * monotonic clock in seconds.
 */
#ifndef KD_LOGINGUARD_H
#define KD_LOGINGUARD_H

#define LOGINGUARD_SLOTS 4096
#define LOGINGUARD_BURST 10.0     /* failures an address may make at once */
#define LOGINGUARD_RATE (1 / 6.0) /* then one every 6 s */

struct loginguard;

struct loginguard *loginguard_new(void);
void loginguard_free(struct loginguard **g);

/* 0 when a login from ip may be checked now, else the seconds until one may. */
double loginguard_check(struct loginguard *g, const char *ip, double now);
/* A login from ip failed (a wrong secret or an unknown account). */
void loginguard_failed(struct loginguard *g, const char *ip, double now);

#endif
