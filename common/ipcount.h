/*
 * ipcount: open connections per client address, for a per-address cap.
 *
 * A hash table of the addresses that have connections open, 16 shards
 * with a mutex each; an address leaves the table with its last
 * connection, so the table is as large as the set of connected clients.
 * IPv4-mapped IPv6 addresses count as their IPv4 address.
 */
#ifndef KD_IPCOUNT_H
#define KD_IPCOUNT_H

struct sockaddr;
struct ipcount;

struct ipcount *ipcount_new(void);
void ipcount_free(struct ipcount **t);

/* One more connection from sa: the number it now has open (0 when sa is not
 * an IP address, or no memory: such connections are not counted). */
unsigned ipcount_open(struct ipcount *t, const struct sockaddr *sa);
/* One connection from sa closed (one that ipcount_open() counted). */
void ipcount_close(struct ipcount *t, const struct sockaddr *sa);

#endif
