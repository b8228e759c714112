/*
 * gz: gzip bodies (RFC 1952) through zlib, in one call each way.
 *
 * Cached answers are stored compressed once and served either way: as they
 * are to clients that accept gzip, inflated for the rest.
 */
#ifndef KD_GZ_H
#define KD_GZ_H

#include <stddef.h>

/* Compresses len bytes at level (1..9) into a malloc'd gzip member.
 * 0, or -1 (out of memory, zlib error). */
int gz_compress(const void *in, size_t len, int level, void **out, size_t *outlen);

/*
 * Inflates a gzip member that must expand to exactly expect bytes (what the
 * cache recorded): a damaged or truncated member, trailing garbage, or any
 * other size is an error, never a short body.  *out is malloc'd with a NUL
 * after the expect bytes.  0 or -1.
 */
int gz_decompress(const void *in, size_t len, size_t expect, void **out);

#endif
