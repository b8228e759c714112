/*
 * membuf: a growable byte buffer, for bodies kept in memory whole (answers
 * collected for the cache, token answers, small request bodies).
 *
 * A plain value type: embed it zeroed, append, and free.  The data is kept
 * NUL-terminated (one byte beyond len) so text bodies can be parsed in place.
 */
#ifndef KD_MEMBUF_H
#define KD_MEMBUF_H

#include <stddef.h>

struct membuf {
	char *data;
	size_t len;
	size_t cap;
	int secret; /* set before the first append: growth wipes the old block */
};

/* Appends n bytes, doubling the capacity as needed.  0, or -1 on ENOMEM
 * (the buffer is left as it was). */
int membuf_append(struct membuf *b, const void *p, size_t n);

/* Frees the data and zeroes the buffer (keeping .secret); wipe, or .secret,
 * overwrites the bytes first. */
void membuf_free(struct membuf *b, int wipe);

#endif
