/*
 * purgereq: what a POST /_kaleidod/purge body asks for; no HTTP, no cache.
 *
 * The body is one JSON object naming exactly one of {"family": NAME},
 * {"prefix": "/path"} or {"all": true}.  The parsing lives here, apart from
 * daemon/admin.c, so it can be tested and fuzzed (tests/fuzz/fuzz_purge.c)
 * without a daemon.  Whether a family name exists is the caller's question:
 * it needs the policy.
 *
 * What it answers (checked on every input by tests/fuzz/fuzz_purge.c):
 *
 *   {"all": true}                     0, CACHE_PURGE_ALL, what NULL
 *   {"family": "programs"}            0, CACHE_PURGE_FAMILY, what "programs"
 *   {"prefix": "/programs/1"}         0, CACHE_PURGE_PREFIX, what "/programs/1"
 *   {"all": false}, {"prefix": "x"},
 *   {"family": 3}                     -1, "family must be a name, prefix a path ..."
 *   {"all": true, "family": "x"}, {}  -1, "name exactly one of family, prefix or all"
 *   [], "all", not JSON               -1, "the body must be a JSON object"
 *   (out of memory)                   -2, why NULL
 */
#ifndef KD_PURGEREQ_H
#define KD_PURGEREQ_H

#include <stddef.h>

#include "cache.h"

struct purgereq {
	enum cache_purge kind;
	char *what; /* malloc'd family name or path prefix; NULL for CACHE_PURGE_ALL */
};

/*
 * Parses len bytes of body (no NUL needed).  0 with *out set (release it
 * with purgereq_clear()); -1 with the reason in *why (a static string,
 * worded to follow "bad purge request: "); -2 on ENOMEM with *why NULL.
 * On failure out->what is NULL.
 */
int purgereq_parse(const char *body, size_t len, struct purgereq *out, const char **why);

/* Frees out->what and NULLs it. */
void purgereq_clear(struct purgereq *out);

#endif
