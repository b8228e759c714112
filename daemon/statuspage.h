/*
 * statuspage: GET /_kaleidod/, one self-contained HTML page for a person
 * with a browser: the upstream and its auth state, the hit ratio, each
 * family's entries, bytes and base-list age, the last warnings, uptime and
 * versions.  It works with JavaScript off (it reloads itself with a meta
 * refresh); with it on, /_kaleidod/status.js adds a purge button per
 * family that posts what /_kaleidod/purge takes.
 */
#ifndef KD_STATUSPAGE_H
#define KD_STATUSPAGE_H

#include <stddef.h>

struct front_deps;

/* What the page may load and talk to: its own script, this daemon. */
#define STATUSPAGE_CSP                                                                           \
	"default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; " \
	"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

/* The page (malloc'd) and its length; NULL on ENOMEM.  query is the
 * request's query string or NULL: refresh=N reloads every N s (0: never;
 * default 10). */
char *statuspage_html(const struct front_deps *d, const char *query, unsigned conns, size_t *len);
/* The script, malloc'd. */
char *statuspage_script(size_t *len);

#endif
