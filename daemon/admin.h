/*
 * admin: the daemon's own endpoints under /_kaleidod/, as JSON text.
 */
#ifndef KD_ADMIN_H
#define KD_ADMIN_H

struct front_deps;

/* GET /_kaleidod/health: malloc'd JSON; *status 200. */
char *admin_health(const struct front_deps *d, unsigned *status);
/* GET /_kaleidod/stats: malloc'd JSON. */
char *admin_stats(const struct front_deps *d, unsigned *status);

#endif
