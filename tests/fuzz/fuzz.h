/*
 * fuzz.h: what every libFuzzer harness under tests/fuzz/ shares.
 *
 * A harness is one LLVMFuzzerTestOneInput() that hands the input to one
 * parser the way the daemon does, then checks invariants that are cheap to
 * check.  A broken invariant prints what broke and abort()s, which libFuzzer
 * records as a crash with the input that caused it.  ASan catches a parser
 * that reads past the bytes it was given: every buffer here is allocated to
 * exactly its length.
 */
#ifndef KD_FUZZ_H
#define KD_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define FUZZ_CHECK(cond, ...)                                                                  \
	do {                                                                                   \
		if (!(cond)) {                                                                 \
			fprintf(stderr, "%s:%d: invariant broken: %s\n  ", __FILE__, __LINE__, \
				#cond);                                                        \
			fprintf(stderr, __VA_ARGS__);                                          \
			fputc('\n', stderr);                                                   \
			abort();                                                               \
		}                                                                              \
	} while (0)

/* Out of memory in a harness is not a finding. */
static inline void *fuzz_xmalloc(size_t n)
{
	void *p = malloc(n > 0 ? n : 1);

	if (p == NULL)
		abort();
	return p;
}

/* n bytes exactly, no terminator: a read past n is an ASan report. */
static inline char *fuzz_bytes(const void *p, size_t n)
{
	char *c = fuzz_xmalloc(n);

	if (n > 0)
		memcpy(c, p, n);
	return c;
}

/* The bytes of p up to n or the first NUL, NUL-terminated, in a block of exactly that size. */
static inline char *fuzz_cstr(const void *p, size_t n)
{
	const char *nul = memchr(p, '\0', n);
	size_t len = nul != NULL ? (size_t)(nul - (const char *)p) : n;
	char *c = fuzz_xmalloc(len + 1);

	if (len > 0)
		memcpy(c, p, len);
	c[len] = '\0';
	return c;
}

/* Splits data at NUL bytes: part i (0-based) as a fresh C string, or NULL
 * when there are fewer parts. */
static inline char *fuzz_part(const uint8_t *data, size_t size, int i)
{
	const uint8_t *p = data, *end = data + size;

	for (; i > 0; i--) {
		const uint8_t *nul = memchr(p, '\0', (size_t)(end - p));

		if (nul == NULL)
			return NULL;
		p = nul + 1;
	}
	return fuzz_cstr(p, (size_t)(end - p));
}

#endif
