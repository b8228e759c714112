/*
 * secret.h: a malloc'd string that held a secret (a client secret, a
 * token, a password, a form or a line carrying one) is wiped before its
 * memory goes back to the allocator, so no later allocation or core dump
 * finds it.  One definition for every module that holds such strings.
 */
#ifndef KD_SECRET_H
#define KD_SECRET_H

#include <stdlib.h>
#include <string.h>

/* Wipes and frees *p (NULL is fine) and sets it to NULL. */
static inline void secret_free(char **p)
{
	if (*p == NULL)
		return;
	explicit_bzero(*p, strlen(*p));
	free(*p);
	*p = NULL;
}

#endif
