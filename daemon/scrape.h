/*
 * scrape: GET /_kaleidod/metrics, the Prometheus text exposition (0.0.4)
 * of everything an operator graphs or alerts on.  Names, units and labels
 * are in docs/operations.md; every family has # HELP and # TYPE.
 */
#ifndef KD_SCRAPE_H
#define KD_SCRAPE_H

#include <stddef.h>

struct front_deps;

/* The exposition (malloc'd, NUL-terminated) and its length; NULL on ENOMEM.
 * conns: the front's open client connections. */
char *scrape_metrics(const struct front_deps *d, unsigned conns, size_t *len);

#endif
