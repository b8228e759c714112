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
/* POST /_kaleidod/purge with {"family": NAME} | {"prefix": "/path"} |
 * {"all": true}: malloc'd JSON {"purged": N}, or NULL with *status 400 and
 * the reason in why (then the caller words the error). */
char *admin_purge(const struct front_deps *d, const char *body, size_t len, unsigned *status,
		  const char **why);

#endif
