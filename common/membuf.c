/*
 * membuf: see membuf.h.  Doubling keeps appends amortised O(1) for bodies
 * that arrive in 16 KiB pieces.
 */
#include "membuf.h"

#include <stdlib.h>
#include <string.h>

int membuf_append(struct membuf *b, const void *p, size_t n)
{
	if (n > (size_t)-1 - b->len - 1)
		return -1;
	if (b->len + n + 1 > b->cap) {
		size_t ncap = b->cap ? b->cap : 4096;
		char *d;

		while (ncap < b->len + n + 1)
			ncap *= 2;
		if (!b->secret) {
			if ((d = realloc(b->data, ncap)) == NULL)
				return -1;
		} else {
			/* realloc would free the old copy without wiping it. */
			if ((d = malloc(ncap)) == NULL)
				return -1;
			if (b->data != NULL) {
				memcpy(d, b->data, b->len);
				explicit_bzero(b->data, b->cap);
				free(b->data);
			}
		}
		b->data = d;
		b->cap = ncap;
	}
	if (n > 0)
		memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = '\0';
	return 0;
}

void membuf_free(struct membuf *b, int wipe)
{
	if ((wipe || b->secret) && b->data != NULL)
		explicit_bzero(b->data, b->cap);
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}
