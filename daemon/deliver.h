/*
 * deliver: what a stored entry becomes on the wire.
 *
 * Storage (entry.c, objtab.c) keeps an answer as the API gave it; this
 * module turns it into a libmicrohttpd response for one request: the stored fields, Age
 * (the API's plus the time stored), Vary and a weak ETag when a gzip copy
 * exists, the gzip or identity body, the conditional 304, and X-Cache.
 * Bodies are shared with the entry by reference, never copied.
 */
#ifndef KD_DELIVER_H
#define KD_DELIVER_H

#include <stdint.h>

struct MHD_Response;
struct entry;

/*
 * A new response for e as of now: the gzip body when gzip is set and e has
 * one, and X-Cache: xcache unless NULL.  The caller queues and destroys
 * it.  NULL on ENOMEM.
 */
struct MHD_Response *deliver_response(struct entry *e, int gzip, const char *xcache, int64_t now);
/* A 304 for a client that holds e's ETag: the validators and freshness
 * fields that the form it would get (gzip or not) carries.  NULL on ENOMEM. */
struct MHD_Response *deliver_not_modified(struct entry *e, int gzip, const char *xcache);

#endif
