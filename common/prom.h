/*
 * prom: writes the Prometheus text exposition format, version 0.0.4.
 *
 * A plain value type: zero it, write metric families into it, take the
 * text.  A failed allocation sticks (prom_take() then gives NULL), so the
 * writer checks once at the end rather than after every sample.
 *
 *   struct prom p = { 0 };
 *   prom_head(&p, "kaleidod_cache_entries", "gauge", "Entries in the cache file.");
 *   prom_u64(&p, "kaleidod_cache_entries", NULL, n);
 *   text = prom_take(&p, &len);
 */
#ifndef KD_PROM_H
#define KD_PROM_H

#include <stddef.h>

#include "histo.h"
#include "membuf.h"

struct prom {
	struct membuf mb;
	int oom;
};

/* A label set being built: k="v" pairs, values escaped as the format says. */
struct prom_labels {
	char s[512];
	size_t len;
	int cut; /* too long for s: prom_* write nothing with it */
};

void prom_labels_init(struct prom_labels *l);
/* Adds key="value"; keys are the caller's constants, values anything. */
void prom_label(struct prom_labels *l, const char *key, const char *value);

/* # HELP and # TYPE lines; type is counter, gauge, histogram or untyped. */
void prom_head(struct prom *p, const char *name, const char *type, const char *help);
/* One sample; labels may be NULL.  Counters are exact integers. */
void prom_u64(struct prom *p, const char *name, const struct prom_labels *labels,
	      unsigned long long v);
void prom_double(struct prom *p, const char *name, const struct prom_labels *labels, double v);
/* A histogram's _bucket (with le), _sum and _count samples. */
void prom_histogram(struct prom *p, const char *name, const struct prom_labels *labels,
		    const struct histo_snapshot *h);

/* The text (malloc'd, NUL-terminated; the caller frees it) and its length;
 * NULL if any write ran out of memory.  The prom is empty afterwards. */
char *prom_take(struct prom *p, size_t *len);

#endif
