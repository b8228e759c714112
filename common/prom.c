/*
 * prom: the Prometheus text format, 0.0.4 (prom.h).
 *
 * The format's rules that matter here: a family's # HELP and # TYPE come
 * once, before its samples; label values escape \, " and newline; HELP
 * text escapes \ and newline; a histogram's buckets are cumulative and end
 * with le="+Inf", equal to _count.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prom.h"

static void put(struct prom *p, const char *s, size_t n)
{
	if (!p->oom && membuf_append(&p->mb, s, n) < 0)
		p->oom = 1;
}

static void puts_(struct prom *p, const char *s)
{
	put(p, s, strlen(s));
}

/* s with each of the characters in special escaped by a backslash, a
 * newline written as \n. */
static void put_escaped(struct prom *p, const char *s, const char *special)
{
	for (const char *run = s;; s++) {
		if (*s != '\0' && *s != '\n' && strchr(special, *s) == NULL)
			continue;
		put(p, run, (size_t)(s - run));
		if (*s == '\0')
			return;
		put(p, *s == '\n' ? "\\n" : "\\", *s == '\n' ? 2 : 1);
		if (*s != '\n')
			put(p, s, 1);
		run = s + 1;
	}
}

void prom_labels_init(struct prom_labels *l)
{
	l->s[0] = '\0';
	l->len = 0;
	l->cut = 0;
}

static void lput(struct prom_labels *l, const char *s, size_t n)
{
	if (l->cut || l->len + n >= sizeof(l->s)) {
		l->cut = 1;
		return;
	}
	memcpy(l->s + l->len, s, n);
	l->len += n;
	l->s[l->len] = '\0';
}

void prom_label(struct prom_labels *l, const char *key, const char *value)
{
	if (l->len > 0)
		lput(l, ",", 1);
	lput(l, key, strlen(key));
	lput(l, "=\"", 2);
	for (const char *v = value; *v != '\0'; v++) {
		if (*v == '\\' || *v == '"')
			lput(l, "\\", 1);
		if (*v == '\n')
			lput(l, "\\n", 2);
		else
			lput(l, v, 1);
	}
	lput(l, "\"", 1);
}

void prom_head(struct prom *p, const char *name, const char *type, const char *help)
{
	puts_(p, "# HELP ");
	puts_(p, name);
	puts_(p, " ");
	put_escaped(p, help, "\\");
	puts_(p, "\n# TYPE ");
	puts_(p, name);
	puts_(p, " ");
	puts_(p, type);
	puts_(p, "\n");
}

/* name{labels[,extra]} and a space: extra is a pre-built pair (le="..."). */
static int sample_start(struct prom *p, const char *name, const struct prom_labels *l,
			const char *extra)
{
	int have = l != NULL && l->len > 0;

	if (l != NULL && l->cut)
		return -1;
	puts_(p, name);
	if (have || extra != NULL) {
		puts_(p, "{");
		if (have)
			put(p, l->s, l->len);
		if (have && extra != NULL)
			puts_(p, ",");
		if (extra != NULL)
			puts_(p, extra);
		puts_(p, "}");
	}
	puts_(p, " ");
	return 0;
}

static void put_u64(struct prom *p, unsigned long long v)
{
	char num[24];

	put(p, num, (size_t)snprintf(num, sizeof(num), "%llu\n", v));
}

void prom_u64(struct prom *p, const char *name, const struct prom_labels *labels,
	      unsigned long long v)
{
	if (sample_start(p, name, labels, NULL) == 0)
		put_u64(p, v);
}

void prom_double(struct prom *p, const char *name, const struct prom_labels *labels, double v)
{
	char num[40];

	if (sample_start(p, name, labels, NULL) < 0)
		return;
	if (isnan(v))
		snprintf(num, sizeof(num), "NaN\n");
	else if (isinf(v))
		snprintf(num, sizeof(num), "%s\n", v > 0 ? "+Inf" : "-Inf");
	else
		snprintf(num, sizeof(num), "%.17g\n", v);
	puts_(p, num);
}

void prom_histogram(struct prom *p, const char *name, const struct prom_labels *labels,
		    const struct histo_snapshot *h)
{
	char series[128], le[32];

	snprintf(series, sizeof(series), "%s_bucket", name);
	for (int b = 0; b < HISTO_BOUNDS; b++) {
		snprintf(le, sizeof(le), "le=\"%g\"", histo_bounds[b]);
		if (sample_start(p, series, labels, le) == 0)
			put_u64(p, h->le[b]);
	}
	if (sample_start(p, series, labels, "le=\"+Inf\"") == 0)
		put_u64(p, h->count);
	snprintf(series, sizeof(series), "%s_sum", name);
	prom_double(p, series, labels, h->sum);
	snprintf(series, sizeof(series), "%s_count", name);
	prom_u64(p, series, labels, h->count);
}

char *prom_take(struct prom *p, size_t *len)
{
	char *text = p->mb.data;

	*len = p->mb.len;
	if (p->oom || text == NULL) {
		membuf_free(&p->mb, 0);
		text = p->oom ? NULL : strdup("");
		*len = 0;
	}
	p->mb = (struct membuf){ 0 };
	p->oom = 0;
	return text;
}
