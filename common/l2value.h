/*
 * l2value: an answer as the shared cache keeps it in Redis (daemon/l2.c).
 *
 *   FGEN|PGEN|EXPIRES|STORED|STATUS|ENC|HLEN|BLEN|ZLEN|HEADERS BODY
 *
 * FGEN and PGEN are the generations of the answer's family and of the
 * prefix purges it was fetched under (coherence.h; "" for none), first so
 * that the lookup script can judge a value without reading the rest, then
 * EXPIRES too; times are wall seconds.  HEADERS are HLEN bytes of
 * hdr_serialize() text; BODY is the gzip copy (ENC g: ZLEN bytes that
 * inflate to exactly BLEN) or the body itself (ENC i: ZLEN == BLEN).
 *
 * Redis is another program's memory: a value is checked whole before it
 * becomes an entry, and one that is not exactly this format is refused.
 */
#ifndef KD_L2VALUE_H
#define KD_L2VALUE_H

#include <stddef.h>

struct entry;

/* The value of e fetched under fgen and pgen, malloc'd, or NULL: a
 * generation with '|' or longer than 64 bytes, a value over max bytes,
 * ENOMEM. */
char *l2v_encode(const char *fgen, const char *pgen, const struct entry *e, size_t max,
		 size_t *len);

/* The entry the value v holds, for key (family's, at path), or NULL when
 * v is not a value l2v_encode() makes, or its body is over max_body bytes
 * (so a damaged value cannot make kaleidod inflate gigabytes), or ENOMEM. */
struct entry *l2v_decode(const char *v, size_t len, size_t max_body, const char *key, int family,
			 const char *path);

#endif
