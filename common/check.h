/*
 * check.h: invariant checks that stay on in release builds.
 *
 * An impossible state is a bug, and going on past it turns the bug into
 * wrong data served to someone later; so these abort at once, naming the
 * condition, and are not compiled out by NDEBUG (Varnish's vas.h idea).
 * Expected failures (a full disk, a refused connection) are return values,
 * never these.
 *
 * Objects that cross a module or thread boundary carry a magic number set
 * at creation and cleared when freed (Varnish's miniobj.h): CHECK_OBJ()
 * at the boundary catches a wrong pointer, a freed object and a stray
 * write over the header in one compare.
 */
#ifndef KD_CHECK_H
#define KD_CHECK_H

#include <stdio.h>
#include <stdlib.h>

__attribute__((noreturn, cold)) static inline void check_fail(const char *func, const char *file,
							      int line, const char *cond)
{
	fprintf(stderr, "kaleidod: assertion failed in %s() at %s:%d: %s\n", func, file, line,
		cond);
	fflush(stderr);
	abort();
}

/* cond must hold. */
#define ASSERT(cond) \
	(__builtin_expect(!!(cond), 1) ? (void)0 : check_fail(__func__, __FILE__, __LINE__, #cond))
/* x is zero (a call that returns 0 on success, a pointer that must be NULL). */
#define AZ(x) ASSERT((x) == 0)
/* x is not zero (a pointer that must be set). */
#define AN(x) ASSERT((x) != 0)
/* p is a live object of the kind whose magic is m. */
#define CHECK_OBJ(p, m) ASSERT((p) != NULL && (p)->magic == (m))
/* The same for a pointer that may be NULL. */
#define CHECK_OBJ_ORNULL(p, m) ASSERT((p) == NULL || (p)->magic == (m))
/* Sets the magic of a new object, and clears it from one about to be freed. */
#define INIT_OBJ(p, m) ((p)->magic = (m))
#define FINI_OBJ(p) ((p)->magic = 0)

#endif
