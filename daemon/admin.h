/*
 * admin: the daemon's own endpoints under /_kaleidod/, as JSON text.
 */
#ifndef KD_ADMIN_H
#define KD_ADMIN_H

#include <stddef.h>

struct front_deps;

/* GET /_kaleidod/health: malloc'd JSON; *status 200. */
char *admin_health(const struct front_deps *d, unsigned *status);
/* GET /_kaleidod/stats: malloc'd JSON. */
char *admin_stats(const struct front_deps *d, unsigned *status);
/*
 * POST /_kaleidod/purge with {"family": NAME} | {"prefix": "/path"} |
 * {"all": true}, in two halves around the wait for the file thread
 * (keeper_purge_start()): the first reads the body and starts the purge,
 * parking the caller when it runs on the file thread (*parked); NULL with
 * *status (400, 500) and the reason in why (the caller words the error).
 * The second, once resumed, gives the malloc'd JSON {"purged": N}, or NULL
 * with *status 500 or 503 and why.
 */
struct keeper_purge;
struct keeper_purge *admin_purge_start(const struct front_deps *d, const char *body, size_t len,
				       void (*park)(void *), void (*unpark)(void *), void *arg,
				       int *parked, unsigned *status, const char **why);
char *admin_purge_answer(struct keeper_purge **t, unsigned *status, const char **why);

#endif
